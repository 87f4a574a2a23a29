"""Experiment 3: label leaking in FGSM adversarial training (Kurakin, Goodfellow, Bengio, ICLR 2017).

Trains the small CNN with ``fgsm_at`` (random start, one step of alpha = 1.25 eps) twice on the
same data, seed and schedule: the training attack crafted from the true labels
(``--attack-labels true``) and from the model's predicted labels (``--attack-labels pred``); and,
for reference, the same CNN with plain cross entropy (``ce``, no attack). Then on held-out
digits of the same bundled subset:

- clean accuracy (every held-out digit);
- FGSM accuracy at the training eps (one step of eps, no random start: Kurakin's attack), the
  attack crafted from the true labels and from the model's predictions. Label leaking shows as
  a model that is *more* accurate on true-label FGSM inputs than on clean ones;
- the sign-gradient linear probe (as in tests/test_label_leaking.py): a logistic regression on
  ``sign(grad_x CE(f(x), y'))`` alone (no image), fit on half of the first ``--probe-n``
  held-out digits and scored on the other half, for y' = true and y' = pred: how much of the
  label the one-step perturbation carries.

Appends one JSON line per (method, seed) to ``--out``/runs.jsonl and writes
``--out``/label_leaking.md (and its README block).

    python experiments/label_leaking.py            # the README numbers
    python experiments/label_leaking.py --quick    # seconds
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import exp_common as C  # noqa: E402
import torch  # noqa: E402
from fast_at import ramped  # noqa: E402

from adkernels import attacks  # noqa: E402
from adkernels.train.data import load_split, steps_per_pass  # noqa: E402
from adkernels.train.recipes import RECIPE_CLASSES  # noqa: E402

METHODS = {"ce": ("ce", None), "fgsm_true": ("fgsm_at", "true"), "fgsm_pred": ("fgsm_at", "pred")}
LABEL = {"ce": "CE (no attack)", "fgsm_true": "FGSM-AT, true labels", "fgsm_pred": "FGSM-AT, predicted labels"}


def probe(net, x, y, seed: int) -> dict:
    """Accuracy of a logistic regression reading y off sign(grad) (true / pred labels)."""
    from sklearn.linear_model import LogisticRegression

    half = len(x) // 2
    out = {}
    for labels in ("true", "pred"):
        # no box: x_adv - x = eps * sign(grad) exactly (a [0, 1] clamp would hide the sign at 0-pixels)
        feat = torch.sign(attacks.fgsm(net, x, y, 1.0, labels=labels) - x).reshape(len(x), -1).numpy()
        clf = LogisticRegression(max_iter=1000, random_state=seed).fit(feat[:half], y[:half].numpy())
        out[f"probe_{labels}"] = float(clf.score(feat[half:], y[half:].numpy()))
    return out


def evaluate(net, data, a, seed):
    x, y = data.x_test, data.y_test
    ev = {"clean_acc": C.accuracy(net, x, y)}
    for labels in ("true", "pred"):
        ev[f"fgsm_{labels}_acc"] = C.fgsm_accuracy(net, x, y, a.eps, labels)
    ev.update(probe(net, x[:a.probe_n], y[:a.probe_n], seed))
    return ev


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(C.ROOT, "experiments", "results", "label_leaking"))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--data", default="mnist")
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--eps-ramp", type=int, default=2, help="epochs of linear eps ramp-up (0: none)")
    p.add_argument("--probe-n", type=int, default=2000, help="held-out digits for the probe (half fit, half score)")
    p.add_argument("--pgd-check", type=int, default=0, metavar="N",
                   help="only evaluate the finished runs' models under PGD-40 (eps, step 0.01, random start) on "
                        "the first N held-out digits; writes --out/pgd_check.jsonl")
    p.add_argument("--quick", action="store_true", help="tiny run (seconds), results under --out only")
    a = p.parse_args(argv)
    if a.pgd_check:
        return pgd_check(a)
    if a.quick:
        a.data, a.n_train, a.epochs, a.eps, a.eps_ramp, a.probe_n = "digits", 200, 2, 0.1, 0, 400
    C.one_thread()
    readme, log, tag, done = C.start_sweep(a, p)
    data = load_split(a.data, a.n_train, 0, 0)
    ramp_steps = a.eps_ramp * steps_per_pass(a.n_train, a.batch_size)
    for seed, m in C.pending(a.seeds, a.methods, done):
        recipe, labels = METHODS[m]
        kw = dict(data=a.data, n_train=a.n_train, n_test=500, batch_size=a.batch_size, epochs=a.epochs, lr=a.lr,
                  seed=seed, out_dir=os.path.join(a.out, "runs", f"{m}-s{seed}"), plots=not a.quick,
                  student="cnn", student_dropout=0.0)
        if labels:
            kw.update(eps=a.eps, attack_labels=labels, eval_pgd_steps=0, weight_decay=0.0)
        else:
            kw.update(weight_decay=0.0)
        cfg = C.make_cfg(recipe, **kw)
        print(f"== {m} seed {seed} (load {C.load_avg()})", flush=True)
        cls = ramped(RECIPE_CLASSES[recipe], ramp_steps) if labels else None
        res = C.run(cfg, cls)
        ev = evaluate(C.load_model(cfg), data, a, seed)
        rec = {"method": m, "seed": seed, "tag": tag, "train_wall_s": res["wall_s"], "steps": res["global_step"],
               "n_test": len(data.x_test), **ev, "curve": [r["student_acc"] for r in res["evals"]],
               **C.provenance(cfg)}
        C.append_jsonl(log, rec)
        print("   " + "  ".join(f"{k} {v:.4f}" for k, v in ev.items()), flush=True)
    C.show_table(a.out, "label_leaking", table(C.read_jsonl(log)), readme)
    return 0


def pgd_check(a):
    """PGD-40 accuracy of every finished run's model (is one-step robustness real robustness?)."""
    C.one_thread()
    out = []
    for r in C.read_jsonl(os.path.join(a.out, "runs.jsonl")):
        kw = {k: v for k, v in r["config"].items() if k != "recipe"}
        cfg = C.make_cfg(r["config"]["recipe"], **kw, out_dir=os.path.join(a.out, "runs", f"{r['method']}-s{r['seed']}"))
        data = load_split(cfg.data, cfg.n_train, 0, cfg.data_seed)
        x, y = data.x_test[:a.pgd_check], data.y_test[:a.pgd_check]
        eps = r["tag"]["eps"]
        acc = C.pgd_accuracy(C.load_model(cfg), x, y, eps, 0.01, 40, r["seed"])
        rec = {"method": r["method"], "seed": r["seed"], "eps": eps, "n": len(x), "pgd40_acc": acc,
               "epochs": r["tag"]["epochs"]}
        print(rec, flush=True)
        out.append(rec)
    with open(os.path.join(a.out, "pgd_check.jsonl"), "w") as f:
        f.writelines(json.dumps(o) + "\n" for o in out)
    return 0


def table(rows):
    cols = [("clean_acc", "clean acc %"), ("fgsm_true_acc", "FGSM (true-label) acc %"),
            ("fgsm_pred_acc", "FGSM (pred-label) acc %"), ("probe_true", "probe on sign grad, true labels %"),
            ("probe_pred", "probe on sign grad, pred labels %")]
    lines = ["| training | seeds | " + " | ".join(c[1] for c in cols) + " | settings |",
             "|---|---|" + "---|" * len(cols) + "---|"]
    for t, m, rs in C.groups(rows, LABEL):
        def f(k):
            return C.mean_sd([100 * r[k] for r in rs])

        s = (f"{t['data']} n={t['n_train']}, {rs[0]['n_test']} test, {t['epochs']} ep, batch {t['batch_size']}, "
             f"eps {t['eps']} (ramp {t['eps_ramp']} ep), probe {t['probe_n']}, seeds {C.seed_list(rs)}")
        lines.append(f"| {LABEL[m]} | {len(rs)} | " + " | ".join(f(c[0]) for c in cols) + f" | {s} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
