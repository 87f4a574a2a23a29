"""Benchmark of ``adkernels.topk_kd_loss`` (sparse-teacher KD), forward + backward.

    python benchmarks/bench_topk_kd.py [--quick] [--device cpu|cuda] [--out benchmarks/results]

Cases: k in {8, 64, 512} at V = 32000 (N = 4096) and V = 128256 (N = 1024, so that the eager
path's [N, V] temporaries fit next to everything else on a small box; printed), fp32,
tail="bucket" (it needs the whole row: the CE-free renorm form only touches k columns per row
plus the zero gradient), T = 2, alpha = 1; plus renorm at k = 64. Compared:
  fused    adkernels.topk_kd_loss
  eager    the composition people write: logsumexp over the row, gather of the k logits, the
           (k + 1)-bin log-probabilities, log_softmax at T, KL, autograd backward
  compile  torch.compile (inductor, static shapes) of that composition
  floor    read the logits once and write their gradient once at the copy bandwidth measured
           in this run (the ids and log-probabilities are k / V of that and not counted)
Before timing, the fused loss and gradient are checked against the eager composition.
Results: topk_kd[_quick].csv and bench_topk_kd[_quick].png under --out.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import adkernels  # noqa: E402
from common import (  # noqa: E402
    busy_note, copy_probe, dtype_name, env_info, print_table, save_bar_chart, time_fns, write_csv,
)

TEMPERATURE = 2.0


def eager_topk(z, ids, lt, temperature: float = TEMPERATURE, tail: str = "bucket"):
    """Sparse-teacher KD as written with torch ops (batchmean, alpha = 1)."""
    zf = z.float()
    zk = zf.gather(-1, ids)
    if tail == "bucket":
        lse = torch.logsumexp(zf, -1, keepdim=True)
        ls = zk - lse
        rest_s = (1 - ls.exp().sum(-1, keepdim=True)).clamp_min(1e-30).log()
        rest_t = (1 - lt.exp().sum(-1, keepdim=True)).clamp_min(1e-30).log()
        b, a = torch.cat([ls, rest_s], -1), torch.cat([lt, rest_t], -1)
    else:
        b, a = zk, lt
    lu = F.log_softmax(b / temperature, -1)
    lq = F.log_softmax(a / temperature, -1)
    return (lq.exp() * (lq - lu)).sum(-1).mean() * temperature**2


def fused_topk(z, ids, lt, temperature: float = TEMPERATURE, tail: str = "bucket"):
    return adkernels.topk_kd_loss(z, ids, lt, temperature=temperature, tail=tail)


def make_inputs(N, V, k, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = (2.0 * torch.randn(N, V, generator=g)).to(device=device, dtype=dtype).requires_grad_()
    # a peaked teacher, so that its top-k holds most (not all) of its mass
    t = 4.0 * torch.randn(N, V, generator=g)
    lt, ids = torch.log_softmax(t, -1).topk(k, -1)
    return z, ids.to(device), lt.to(device)


def bench_case(N, V, k, dtype, device, *, tail="bucket", repeats=3, use_compile=True):
    z, ids, lt = make_inputs(N, V, k, dtype, device)

    def step(fn):
        def run():
            loss = fn(z, ids, lt, tail=tail)
            return loss, torch.autograd.grad(loss, [z])[0]
        return run

    variants = {"fused": step(fused_topk), "eager": step(eager_topk)}
    # correctness first (the fused call also warms up)
    (lf, gf), (le, ge) = variants["fused"](), variants["eager"]()
    loss_err = abs(lf.item() - le.item()) / max(abs(le.item()), 1e-30)
    grad_err = ((gf.float() - ge.float()).abs().max() / ge.float().abs().max().clamp_min(1e-30)).item()
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    if not (loss_err <= tol and grad_err <= tol):
        raise SystemExit(f"FAIL [{N}, {V}] k={k} {tail}: fused vs eager loss err {loss_err:.3g}, grad err {grad_err:.3g}")
    del lf, gf, le, ge
    compile_s = float("nan")
    if use_compile:
        torch._dynamo.reset()
        comp = torch.compile(eager_topk, dynamic=False)
        t0 = time.perf_counter()
        step(comp)()
        compile_s = time.perf_counter() - t0
        variants["compile"] = step(comp)
    nbytes = 2 * N * V * z.element_size()  # read logits, write their gradient
    floor_fn, moved = copy_probe(N * V * z.element_size(), device)
    variants["floor"] = floor_fn
    times = time_fns(variants, warmup=1, repeats=repeats, device=device)
    floor_ms = times["floor"].median * nbytes / moved
    row = {
        "N": N, "V": V, "k": k, "tail": tail, "dtype": dtype_name(dtype),
        "fused_ms": times["fused"].median, "eager_ms": times["eager"].median,
        "compile_ms": times["compile"].median if "compile" in times else float("nan"),
        "floor_ms": floor_ms, "compile_s": compile_s, "loss_err": loss_err, "grad_err": grad_err,
        "fused_spread": times["fused"].spread,
    }
    row["eager_over_fused"] = row["eager_ms"] / row["fused_ms"]
    row["compile_over_fused"] = row["compile_ms"] / row["fused_ms"]
    row["fused_over_floor"] = row["fused_ms"] / row["floor_ms"]
    return row


def cases(quick: bool):
    if quick:
        return [(256, 2000, 8, "bucket"), (256, 2000, 64, "bucket"), (256, 2000, 64, "renorm")]
    out = [(4096, 32000, k, "bucket") for k in (8, 64, 512)]
    out.append((4096, 32000, 64, "renorm"))
    out += [(1024, 128256, k, "bucket") for k in (8, 64, 512)]
    return out


SERIES = [("fused_ms", "adkernels"), ("eager_ms", "eager"), ("compile_ms", "torch.compile"),
          ("floor_ms", "copy floor")]


def plot(rows, path, title):
    labels = [f"[{r['N']},{r['V']}]\nk={r['k']} {r['tail']}" for r in rows]
    return save_bar_chart(rows, path, SERIES, labels, title=title, ylabel="ms (fwd + bwd)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes (smoke test)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args(argv)
    info = env_info(args.device)
    print("env:", info)
    note = busy_note(torch.get_num_threads())
    if note:
        print(note)
    rows = []
    for N, V, k, tail in cases(args.quick):
        row = bench_case(N, V, k, torch.float32, args.device, tail=tail, repeats=args.repeats,
                         use_compile=not args.no_compile)
        row.update(commit=info["commit"], load_avg_1m=info["load_avg_1m"])
        rows.append(row)
        print_table([row], ["N", "V", "k", "tail", "fused_ms", "eager_ms", "compile_ms", "floor_ms",
                            "eager_over_fused", "compile_over_fused", "fused_over_floor"])
    suffix = "_quick" if args.quick else ""
    out = Path(args.out)
    write_csv(rows, out / f"topk_kd{suffix}.csv")
    print_table(rows, ["N", "V", "k", "tail", "fused_ms", "eager_ms", "compile_ms", "floor_ms", "eager_over_fused",
                       "compile_over_fused", "fused_over_floor"], title="topk_kd_loss fwd+bwd, fp32, T=2")
    plot(rows, out / f"bench_topk_kd{suffix}.png",
         f"topk_kd_loss fwd+bwd fp32 ({info['cpu'] if args.device == 'cpu' else info.get('gpu')}, "
         f"{info['threads']} threads, load {info['load_avg_1m']})")
    return rows


if __name__ == "__main__":
    main()
