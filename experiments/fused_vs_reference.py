"""Experiment 5: fused vs eager. The same ADIM run (same seed, data, settings) with the adkernels
ops on their default backend (``auto``: the C++ CPU kernels here) and on their plain-PyTorch
reference implementations (``--backend reference``, i.e. ``adkernels.use_backend("reference")``;
``ADKERNELS_BACKEND=reference`` does the same from the environment).

Records per run: wall time per epoch (from the loop's eval timestamps; an epoch's time includes
its test-set evaluation), separately for CE pretraining epochs and adversarial rounds; and the
per-step training losses (``log_every=1``) and per-epoch test accuracies, so that the two
backends' curves can be compared: the table gives the largest absolute difference between them
for each seed. The code version (HEAD commit, files of adkernels/ or csrc/ that differ from it,
build time of the extension) is stored with every run: the ADIM generator op
(``adversarial_distillation_loss``) may be a composition of the other ops or a fused kernel
depending on the commit.

Backends run alternately (seed 0 auto, seed 0 reference, seed 1 auto, ...) so that load changes
on the shared machine hit both. Appends to ``--out``/runs.jsonl; writes
``--out``/fused_vs_reference.md (and its README block).

    python experiments/fused_vs_reference.py --seeds 0 1
    python experiments/fused_vs_reference.py --quick
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import exp_common as C  # noqa: E402

BACKENDS = ("auto", "reference")


def epoch_times(evals):
    t = [r["time"] for r in evals]
    return [round(b - a, 3) for a, b in zip([0.0] + t[:-1], t)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(C.ROOT, "experiments", "results", "fused_vs_reference"))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--data", default="mnist")
    p.add_argument("--n-train", type=int, default=100)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--pretrain", type=int, default=10)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--passes", type=int, nargs=3, default=[2, 1, 1], metavar=("D", "T", "S"))
    p.add_argument("--quick", action="store_true", help="tiny run (seconds), results under --out only")
    a = p.parse_args(argv)
    if a.quick:
        a.data, a.n_train, a.n_test, a.pretrain, a.rounds, a.passes = "digits", 50, 200, 1, 1, [1, 1, 1]
    C.one_thread()
    version = C.code_version()
    readme, log, tag, done = C.start_sweep(a, p, skip=("out", "seeds"), key="backend", commit=version["commit"])
    for seed, backend in C.pending(a.seeds, BACKENDS, done):
        cfg = C.adim_cfg(a, seed=seed, backend=backend, log_every=1,
                         out_dir=os.path.join(a.out, "runs", f"{backend}-s{seed}"))
        print(f"== ADIM backend={backend} seed {seed} (load {C.load_avg()})", flush=True)
        res = C.run(cfg)
        ev = res["evals"]
        et = epoch_times(ev)
        rec = {"backend": backend, "seed": seed, "tag": tag, "wall_s": res["wall_s"],
               "pretrain_s_per_epoch": round(statistics.mean(et[:a.pretrain]), 3) if a.pretrain else None,
               "round_s": round(statistics.mean(et[a.pretrain:]), 3), "epoch_s": et,
               "student_curve": [r["student_acc"] for r in ev], "teacher_curve": [r["teacher_acc"] for r in ev],
               "losses": [r["loss"] for r in C.read_train(cfg.out_dir)], "load_avg_after": C.load_avg(),
               "code": version, "config": C.saved_config(cfg)}
        C.append_jsonl(log, rec)
        print(f"   wall {res['wall_s']:.1f} s  pretrain {rec['pretrain_s_per_epoch']} s/ep  round "
              f"{rec['round_s']} s  final student {ev[-1]['student_acc']:.4f}", flush=True)
    C.show_table(a.out, "fused_vs_reference", table(C.read_jsonl(log)), readme)
    return 0


def table(rows):
    lines = ["| seed | commit | s / pretraining epoch: auto / reference | s / ADIM round: auto / reference | "
             "run wall s: auto / reference | max abs diff, student test acc | max abs diff, teacher test acc | "
             "max abs diff, per-step loss (steps) | final student acc: auto / reference | settings |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    pairs = {}
    for r in rows:
        key = (r["seed"], r["code"]["commit"], bool(r["code"]["uncommitted_in_adkernels_csrc"]), str(r["tag"]))
        pairs.setdefault(key, {})[r["backend"]] = r
    for (seed, commit, dirty, _), d in pairs.items():
        if set(d) != set(BACKENDS):
            continue
        f, r = d["auto"], d["reference"]
        da = max(abs(x - y) for x, y in zip(f["student_curve"], r["student_curve"]))
        dt = max(abs(x - y) for x, y in zip(f["teacher_curve"], r["teacher_curve"]))
        dl = max(abs(x - y) for x, y in zip(f["losses"], r["losses"])) if f["losses"] else float("nan")
        t = f["tag"]
        s = (f"{t['data']} n={t['n_train']} (test {t['n_test']}), batch {t['batch_size']}, pretrain {t['pretrain']} ep, "
             f"{t['rounds']} rounds of {'/'.join(map(str, t['passes']))}; load {f['load_avg_after']} / "
             f"{r['load_avg_after']}")

        def pr(k):
            return f"{f[k]:.2f} / {r[k]:.2f}" if f[k] is not None else "-"

        lines.append(f"| {seed} | {commit[:10]}{' + uncommitted' if dirty else ''} | {pr('pretrain_s_per_epoch')} | "
                     f"{pr('round_s')} | {f['wall_s']:.1f} / {r['wall_s']:.1f} | {da:.4f} | {dt:.4f} | "
                     f"{dl:.2e} ({len(f['losses'])}) | {f['student_curve'][-1]:.4f} / {r['student_curve'][-1]:.4f} | "
                     f"{s} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
