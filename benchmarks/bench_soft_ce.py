"""Benchmark of ``adkernels.soft_target_cross_entropy``, forward + backward (logit gradient).

    python benchmarks/bench_soft_ce.py [--quick] [--device cpu|cuda] [--out benchmarks/results]

Cases: [4096, 32000] (LM vocabulary) and [65536, 10] (CIFAR-sized classes, many rows), fp32 and
bf16. Compared:
  fused    adkernels.soft_target_cross_entropy (reduction="mean")
  eager    -(q * log_softmax(z)).sum(-1).mean(), autograd backward
  compile  torch.compile (inductor, static shapes) of that
  floor    read logits and targets once, write the logit gradient once, at the copy bandwidth
           measured in this run
Before timing, the fused loss and gradient are checked against eager (in fp32 for bf16).
Results: soft_ce[_quick].csv and bench_soft_ce[_quick].png under --out.
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


def eager_soft_ce(z, q):
    return -(q * F.log_softmax(z, dim=-1)).sum(-1).mean()


def fused_soft_ce(z, q):
    return adkernels.soft_target_cross_entropy(z, q)


def make_inputs(N, V, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = (2.0 * torch.randn(N, V, generator=g)).to(device=device, dtype=dtype).requires_grad_()
    q = torch.softmax(torch.randn(N, V, generator=g), -1).to(device=device, dtype=dtype)
    return z, q


def bench_case(N, V, dtype, device, *, repeats=3, use_compile=True):
    z, q = make_inputs(N, V, dtype, device)

    def step(fn):
        def run():
            loss = fn(z, q)
            return loss, torch.autograd.grad(loss, [z])[0]
        return run

    variants = {"fused": step(fused_soft_ce), "eager": step(eager_soft_ce)}
    lf, gf = variants["fused"]()
    z32 = z.detach().float().requires_grad_()
    le = eager_soft_ce(z32, q.float())
    (ge,) = torch.autograd.grad(le, [z32])
    loss_err = abs(lf.item() - le.item()) / max(abs(le.item()), 1e-30)
    grad_err = ((gf.float() - ge).abs().max() / ge.abs().max().clamp_min(1e-30)).item()
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    if not (loss_err <= tol and grad_err <= tol):
        raise SystemExit(f"FAIL [{N}, {V}] {dtype_name(dtype)}: fused vs eager loss err {loss_err:.3g}, grad err {grad_err:.3g}")
    del lf, gf, le, ge, z32
    compile_s = float("nan")
    if use_compile:
        torch._dynamo.reset()
        comp = torch.compile(eager_soft_ce, dynamic=False)
        t0 = time.perf_counter()
        step(comp)()
        compile_s = time.perf_counter() - t0
        variants["compile"] = step(comp)
    nbytes = 3 * N * V * z.element_size()  # read z and q, write dz
    floor_fn, moved = copy_probe(N * V * z.element_size(), device)
    variants["floor"] = floor_fn
    times = time_fns(variants, warmup=1, repeats=repeats, device=device)
    row = {
        "N": N, "V": V, "dtype": dtype_name(dtype),
        "fused_ms": times["fused"].median, "eager_ms": times["eager"].median,
        "compile_ms": times["compile"].median if "compile" in times else float("nan"),
        "floor_ms": times["floor"].median * nbytes / moved, "compile_s": compile_s,
        "loss_err": loss_err, "grad_err": grad_err, "fused_spread": times["fused"].spread,
    }
    row["eager_over_fused"] = row["eager_ms"] / row["fused_ms"]
    row["compile_over_fused"] = row["compile_ms"] / row["fused_ms"]
    row["fused_over_floor"] = row["fused_ms"] / row["floor_ms"]
    return row


def cases(quick: bool):
    shapes = [(256, 2000), (4096, 10)] if quick else [(4096, 32000), (65536, 10)]
    return [(n, v, dt) for n, v in shapes for dt in (torch.float32, torch.bfloat16)]


COLUMNS = ["N", "V", "dtype", "fused_ms", "eager_ms", "compile_ms", "floor_ms", "eager_over_fused",
           "compile_over_fused", "fused_over_floor"]


SERIES = [("fused_ms", "adkernels"), ("eager_ms", "eager"), ("compile_ms", "torch.compile"),
          ("floor_ms", "copy floor")]


def plot(rows, path, title):
    labels = [f"[{r['N']},{r['V']}]\n{r['dtype']}" for r in rows]
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
    for N, V, dt in cases(args.quick):
        row = bench_case(N, V, dt, args.device, repeats=args.repeats, use_compile=not args.no_compile)
        row.update(commit=info["commit"], load_avg_1m=info["load_avg_1m"])
        rows.append(row)
        print_table([row], COLUMNS)
    suffix = "_quick" if args.quick else ""
    out = Path(args.out)
    write_csv(rows, out / f"soft_ce{suffix}.csv")
    print_table(rows, COLUMNS, title="soft_target_cross_entropy fwd+bwd")
    plot(rows, out / f"bench_soft_ce{suffix}.png",
         f"soft_target_cross_entropy fwd+bwd ({info['cpu'] if args.device == 'cpu' else info.get('gpu')}, "
         f"{info['threads']} threads, load {info['load_avg_1m']})")
    return rows


if __name__ == "__main__":
    main()
