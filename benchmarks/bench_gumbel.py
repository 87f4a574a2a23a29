"""Benchmark of ``adkernels.gumbel_softmax`` (forward + backward).

    python benchmarks/bench_gumbel.py [--quick] [--device cpu|cuda] [--no-compile]
                                      [--out benchmarks/results]

Cases: logits [4096, 32000] and [65536, 10], float32 and bfloat16, tau = 0.5, soft samples,
forward then backward with a given upstream gradient (a new one per call is not needed: the
backward reads y and dy once):
  fused     adkernels.gumbel_softmax (noise made in the kernel; backward from the saved y)
  eager     torch.nn.functional.gumbel_softmax in eager PyTorch (exponential_ noise tensor,
            log, add, div, softmax; autograd's softmax backward)
  compile   torch.compile (inductor) of F.gumbel_softmax, forward and backward
  floor     the bytes fwd + bwd must move at the copy bandwidth measured in the same rounds:
            read logits, write y (forward); read y and dy, write dx (backward)
Before timing, the fused forward is checked against the reference (same noise) to 1e-5
(fp32) / 2e-2 (bf16); a mismatch stops the benchmark.

Targets (printed PASS/MISS) at [4096, 32000] on the CPU: fused >= 5x eager, >= 2x torch.compile.
Results: gumbel[_quick].csv and bench_gumbel[_quick].png under --out, and a printed table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import adkernels  # noqa: E402
from common import (  # noqa: E402
    busy_note, copy_probe, dtype_name, env_info, pass_miss, print_table, save_bar_chart, time_fns, write_csv,
)

TAU = 0.5
TARGETS = {"eager_over_fused": 5.0, "compile_over_fused": 2.0}


def fwd_bwd(fn, x, dy):
    def run():
        x.grad = None
        y = fn(x)
        y.backward(dy)
        return y
    return run


def check(x, device):
    from adkernels.ops.gumbel import draw_seed_offset
    from adkernels.reference.gumbel import gumbel_softmax as ref

    xs = x.detach()[:64]
    torch.manual_seed(1)
    got = adkernels.gumbel_softmax(xs, TAU)
    torch.manual_seed(1)
    so = draw_seed_offset("bench", None, xs.device)
    want = ref(xs, so, TAU)
    tol = 1e-5 if x.dtype == torch.float32 else 2e-2
    err = (got.double() - want.double()).abs().max().item()
    if not err <= tol:
        raise SystemExit(f"fused result differs from the reference by {err} (> {tol}); not timing")


def bench_case(shape, dtype, device="cpu", repeats=5, compiled=None):
    """One row: fwd + bwd times (ms) of fused / eager / compile (when ``compiled`` is given) and
    the copy floor, and their ratios; checks the fused result against the reference first."""
    device = torch.device(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(shape, generator=g).to(device=device, dtype=dtype).requires_grad_(True)
    dy = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    check(x, device)
    nbytes = x.numel() * x.element_size() * 5  # fwd: read x, write y; bwd: read y, dy, write dx
    floor_fn, moved = copy_probe(nbytes // 2, device)
    fns = {
        "fused": fwd_bwd(lambda t: adkernels.gumbel_softmax(t, TAU), x, dy),
        "eager": fwd_bwd(lambda t: F.gumbel_softmax(t, TAU), x, dy),
        "floor": floor_fn,
    }
    if compiled is not None:
        fns["compile"] = fwd_bwd(compiled, x, dy)
    t = time_fns(fns, warmup=1, repeats=repeats, device=device)
    row = {"shape": "x".join(map(str, shape)), "dtype": dtype_name(dtype),
           "fused_ms": t["fused"].median, "eager_ms": t["eager"].median,
           "compile_ms": t["compile"].median if "compile" in t else float("nan"),
           "floor_ms": t["floor"].median * nbytes / moved,
           "fused_spread": t["fused"].spread}
    row["eager_over_fused"] = row["eager_ms"] / row["fused_ms"]
    row["compile_over_fused"] = row["compile_ms"] / row["fused_ms"]
    row["fused_over_floor"] = row["fused_ms"] / row["floor_ms"]
    if tuple(shape) == (4096, 32000):
        row["target"] = " ".join(f"{k}>={v}:{pass_miss(row[k] >= v)}" for k, v in TARGETS.items() if row[k] == row[k])
    return row


SERIES = [("fused_ms", "fused"), ("eager_ms", "eager"), ("compile_ms", "compile"), ("floor_ms", "floor")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes, few repeats (smoke test)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = p.parse_args(argv)
    device = torch.device(a.device)
    shapes = [(64, 3000), (2048, 10)] if a.quick else [(4096, 32000), (65536, 10)]
    repeats = a.repeats or (2 if a.quick else 5)
    info = env_info(device)
    note = busy_note(torch.get_num_threads())
    rows = []
    compiled = None if a.no_compile else torch.compile(lambda x: F.gumbel_softmax(x, TAU))
    for shape in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            row = bench_case(shape, dtype, device, repeats, compiled)
            row.update(info)
            rows.append(row)
    cols = ["shape", "dtype", "fused_ms", "eager_ms", "compile_ms", "floor_ms", "eager_over_fused",
            "compile_over_fused", "fused_over_floor", "target"]
    print_table(rows, cols, title=f"gumbel_softmax fwd+bwd, tau={TAU}, {device} "
                f"({info['threads']} threads, load {info['load_avg_1m']}, commit {info['commit']})")
    if note:
        print(note)
    suffix = "_quick" if a.quick else ""
    out = Path(a.out)
    path = write_csv(rows, out / f"gumbel{suffix}.csv")
    print(f"wrote {path}")
    png = save_bar_chart(rows, out / f"bench_gumbel{suffix}.png", SERIES, [f"{r['shape']}\n{r['dtype']}" for r in rows],
                         title=f"gumbel_softmax on {device}, load {info['load_avg_1m']}", ylabel="ms (fwd + bwd)")
    if png:
        print(f"wrote {png}")
    return rows


if __name__ == "__main__":
    main()
