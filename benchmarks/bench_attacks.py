"""Benchmark of the fused attack steps ``adkernels.sign_step`` and ``adkernels.pgd_step``.

    python benchmarks/bench_attacks.py [--quick] [--device cpu|cuda] [--shape 64,3,224,224]
                                       [--no-compile] [--out benchmarks/results]

Cases, at [64, 3, 224, 224] float32 x / x_adv / x_nat with a float32 or bfloat16 gradient,
step 2/255, eps 8/255 (l2: step 0.5, eps 2.0), box [0, 1]; one linf row with per-channel
bounds [1, 3, 1, 1] of normalized images:
  fused     adkernels.<op> (returns a new tensor)
  inplace   adkernels.<op>_ (writes x_adv in place: no fresh output buffer)
  eager     the composition people write (sign, mul, add, clamp / min / max; l2: vector_norm,
            div, where), in eager PyTorch; sign(g) is cast to fp32 first (see eager_sign)
  compile   torch.compile (inductor, static shapes) of that composition
  compile_  torch.compile of ``x_adv.copy_(composition)``: inductor writes into x_adv, the
            counterpart of the in-place form
  floor     bytes that must move (read x, grad (and x_nat for pgd); write x_adv) over the
            copy bandwidth (``dst.copy_(src)``) measured in this run, round robin with the ops
  floor_new the floor of an op that returns a new tensor: the inputs read at copy bandwidth
            plus allocating and writing a fresh output (``torch.empty(n).fill_(1)``, timed in
            the same rounds). Large fresh buffers are new mmaps whose pages the OS zeroes on
            first touch, which costs about as much as the step itself on this kind of machine;
            the in-place form does not pay it
Before timing, the fused result is checked against the eager composition (bit-identical for
sign / linf, to 1e-6 for l2); a mismatch stops the benchmark.

Targets (issue 4; printed PASS/MISS per row): fused >= 5x faster than eager, >= 1.2x faster
than torch.compile (functional vs functional; in-place vs compile_ in the next column), within
2x of the floor (functional vs floor_new, in-place vs floor).

Results: attacks[_quick].csv and bench_attacks[_quick].png under --out (quick runs get the
suffix so they never overwrite a full run's files), and a printed table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import adkernels  # noqa: E402
from common import (  # noqa: E402
    busy_note,
    copy_probe,
    dtype_name,
    fresh_write_probe,
    env_info,
    pass_miss,
    print_table,
    save_bar_chart,
    time_fns,
    write_csv,
)

STEP, EPS = 2.0 / 255, 8.0 / 255
L2_STEP, L2_EPS = 0.5, 2.0
TARGETS = {"eager_over_fused": 5.0, "compile_over_fused": 1.2, "fused_over_floor": 2.0}
MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])


# ---- the eager compositions ---------------------------------------------------------------------

# sign(g) is cast to x's dtype before the multiply: with a bf16 gradient, step * sign(g) would
# otherwise be rounded to bf16 (2/255 becomes 0.00784302 instead of 0.00784314).
def eager_sign(x, g, step, lo, hi):
    return torch.clamp(x + step * torch.sign(g).to(x.dtype), lo, hi)


def eager_linf(x_adv, g, x_nat, step, eps, lo, hi):
    v = x_adv + step * torch.sign(g).to(x_adv.dtype)
    v = torch.min(torch.max(v, x_nat - eps), x_nat + eps)
    return torch.clamp(v, lo, hi)


def eager_l2(x_adv, g, x_nat, step, eps, lo, hi):
    n = x_adv.shape[0]
    g = g.float()
    gn = torch.linalg.vector_norm(g.reshape(n, -1), dim=1).view(n, 1, 1, 1)
    v = x_adv + step * g / torch.where(gn > 0, gn, torch.ones_like(gn))
    delta = v - x_nat
    dn = torch.linalg.vector_norm(delta.reshape(n, -1), dim=1).view(n, 1, 1, 1)
    scale = torch.where(dn > eps, eps / torch.where(dn > 0, dn, torch.ones_like(dn)), torch.ones_like(dn))
    return torch.clamp(x_nat + delta * scale, lo, hi)


# ---- cases --------------------------------------------------------------------------------------

def make_inputs(shape, grad_dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_nat = torch.rand(shape, generator=g)
    x_adv = (x_nat + (torch.rand(shape, generator=g) - 0.5) * (2 * EPS)).clamp(0, 1)
    grad = torch.randn(shape, generator=g)
    return x_adv.to(device), grad.to(grad_dtype).to(device), x_nat.to(device)


def cases(shape, device):
    """(name, grad dtype, bounds kind) of every row."""
    out = []
    for gd in (torch.float32, torch.bfloat16):
        out += [("sign_step", gd, "box"), ("pgd_linf", gd, "box"), ("pgd_l2", gd, "box")]
    out.append(("pgd_linf", torch.float32, "per-channel"))
    return out


def bounds_of(kind, shape, device):
    if kind == "box":
        return 0.0, 1.0
    c = shape[1]
    lo = ((0 - MEAN[:c]) / STD[:c]).view(1, c, 1, 1).to(device)
    hi = ((1 - MEAN[:c]) / STD[:c]).view(1, c, 1, 1).to(device)
    return lo, hi


def bench_case(op, grad_dtype, bkind, shape, device, *, repeats, use_compile):
    x_adv, grad, x_nat = make_inputs(shape, grad_dtype, device)
    lo, hi = bounds_of(bkind, shape, device)
    if bkind != "box":  # normalized inputs: x in the normalized box
        x_adv = (x_adv - MEAN.view(1, -1, 1, 1).to(device)) / STD.view(1, -1, 1, 1).to(device)
        x_nat = (x_nat - MEAN.view(1, -1, 1, 1).to(device)) / STD.view(1, -1, 1, 1).to(device)
    state = x_adv.clone()
    if op == "sign_step":
        fused = lambda: adkernels.sign_step(x_adv, grad, STEP, lo=lo, hi=hi)  # noqa: E731
        inplace = lambda: adkernels.sign_step_(state, grad, STEP, lo=lo, hi=hi)  # noqa: E731
        eager_fn, args = eager_sign, (x_adv, grad, STEP, lo, hi)
        moved = x_adv.numel() * (x_adv.element_size() * 2 + grad.element_size())
    else:
        norm = "l2" if op == "pgd_l2" else "linf"
        step, eps = (L2_STEP, L2_EPS) if norm == "l2" else (STEP, EPS)
        fused = lambda: adkernels.pgd_step(x_adv, grad, x_nat, step, eps, norm=norm, lo=lo, hi=hi)  # noqa: E731
        inplace = lambda: adkernels.pgd_step_(state, grad, x_nat, step, eps, norm=norm, lo=lo, hi=hi)  # noqa: E731
        eager_fn = eager_l2 if norm == "l2" else eager_linf
        args = (x_adv, grad, x_nat, step, eps, lo, hi)
        moved = x_adv.numel() * (x_adv.element_size() * 3 + grad.element_size())

    # correctness against the eager composition, before any timing
    want, got = eager_fn(*args), fused()
    if op == "pgd_l2":
        err = (want - got).abs().max().item()
        if not err <= 1e-6:
            raise SystemExit(f"{op}: fused differs from eager by {err}")
    elif not torch.equal(want, got):
        raise SystemExit(f"{op} ({dtype_name(grad_dtype)} grad, {bkind}): fused is not bit-identical to eager")
    del want, got

    fns = {"fused": fused, "inplace": inplace, "eager": lambda: eager_fn(*args)}
    compile_s = float("nan")
    if use_compile:
        torch._dynamo.reset()
        compiled = torch.compile(eager_fn, dynamic=False)
        t0 = time.perf_counter()
        compiled(*args)
        compile_s = time.perf_counter() - t0
        fns["compile"] = lambda: compiled(*args)
        compiled_ = torch.compile(lambda st, *rest: st.copy_(eager_fn(st, *rest)), dynamic=False)
        state2 = x_adv.clone()
        compiled_(state2, *args[1:])
        fns["compile_"] = lambda: compiled_(state2, *args[1:])
    copy_fn, copy_bytes = copy_probe(moved, device)
    fns["copy"] = copy_fn
    out_bytes = x_adv.numel() * x_adv.element_size()
    fns["fresh"], _ = fresh_write_probe(out_bytes, device)
    t = time_fns(fns, warmup=2, repeats=repeats, device=device)
    bw = copy_bytes / (t["copy"].median * 1e-3)
    floor_ms = moved / bw * 1e3
    floor_new_ms = (moved - out_bytes) / bw * 1e3 + t["fresh"].median
    row = {
        "op": op, "grad": dtype_name(grad_dtype), "bounds": bkind, "shape": "x".join(map(str, shape)),
        "fused_ms": t["fused"].median, "inplace_ms": t["inplace"].median, "eager_ms": t["eager"].median,
        "compile_ms": t["compile"].median if "compile" in t else float("nan"),
        "compile_inplace_ms": t["compile_"].median if "compile_" in t else float("nan"),
        "floor_ms": floor_ms, "floor_new_ms": floor_new_ms,
        "copy_GBps": bw / 1e9, "MB_moved": moved / 1e6, "compile_s": compile_s,
        "fused_spread": t["fused"].spread,
    }
    row["eager_over_fused"] = row["eager_ms"] / row["fused_ms"]
    row["eager_over_inplace"] = row["eager_ms"] / row["inplace_ms"]
    row["compile_over_fused"] = row["compile_ms"] / row["fused_ms"]
    row["compile__over_inplace"] = row["compile_inplace_ms"] / row["inplace_ms"]
    row["fused_over_floor_new"] = row["fused_ms"] / floor_new_ms
    row["inplace_over_floor"] = row["inplace_ms"] / floor_ms
    ok = lambda v, k, above: pass_miss(v >= TARGETS[k] if above else v <= TARGETS[k]) if v == v else "-"  # noqa: E731
    row["targets_fused"] = "/".join([ok(row["eager_over_fused"], "eager_over_fused", True),
                                     ok(row["compile_over_fused"], "compile_over_fused", True),
                                     ok(row["fused_over_floor_new"], "fused_over_floor", False)])
    row["targets_inplace"] = "/".join([ok(row["eager_over_inplace"], "eager_over_fused", True),
                                       ok(row["compile__over_inplace"], "compile_over_fused", True),
                                       ok(row["inplace_over_floor"], "fused_over_floor", False)])
    return row


SERIES = [("fused_ms", "fused"), ("inplace_ms", "fused in-place"), ("eager_ms", "eager PyTorch"),
          ("compile_ms", "torch.compile"), ("compile_inplace_ms", "torch.compile, in place"),
          ("floor_new_ms", "floor, new output"), ("floor_ms", "floor, in place")]


def plot(rows, path, title):
    labels = [f"{r['op']}\n{r['grad']} grad\n{r['bounds']}" for r in rows]
    head = f"attack steps at {rows[0]['shape']} fp32 x_adv" if rows else "attack steps"
    return save_bar_chart(rows, path, SERIES, labels, title=f"{head}\n{title}", ylabel="ms per step (log)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="[8, 3, 64, 64], 3 repeats, no compile")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shape", default=None, help="N,C,H,W (default 64,3,224,224)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = p.parse_args(argv)
    shape = tuple(int(s) for s in a.shape.split(",")) if a.shape else ((8, 3, 64, 64) if a.quick else (64, 3, 224, 224))
    repeats = a.repeats or (3 if a.quick else 7)
    use_compile = not (a.no_compile or a.quick)
    info = env_info(a.device)
    print("adkernels attack-step benchmark:", ", ".join(f"{k}={v}" for k, v in info.items()))
    note = busy_note(info["threads"])
    if note:
        print(note)
    t_start = time.perf_counter()
    rows = []
    for op, gd, bkind in cases(shape, a.device):
        rows.append(bench_case(op, gd, bkind, shape, a.device, repeats=repeats, use_compile=use_compile))
        r = rows[-1]
        print(f"  {op:9s} {r['grad']} {bkind:11s} fused {r['fused_ms']:.2f} ms, in-place {r['inplace_ms']:.2f}, "
              f"eager {r['eager_ms']:.2f}, compile {r['compile_ms']:.2f} / {r['compile_inplace_ms']:.2f}, "
              f"floor {r['floor_new_ms']:.2f} / {r['floor_ms']:.2f}", flush=True)
    cols = ["op", "grad", "bounds", "fused_ms", "inplace_ms", "eager_ms", "compile_ms", "compile_inplace_ms",
            "floor_new_ms", "floor_ms", "targets_fused", "targets_inplace"]
    print_table(rows, cols, title=f"{'x'.join(map(str, shape))} fp32 x_adv, times in ms")
    cols = ["op", "grad", "bounds", "eager_over_fused", "compile_over_fused", "fused_over_floor_new",
            "eager_over_inplace", "compile__over_inplace", "inplace_over_floor"]
    print_table(rows, cols, title=f"ratios; targets: eager >= {TARGETS['eager_over_fused']}x, compile >= "
                f"{TARGETS['compile_over_fused']}x, <= {TARGETS['fused_over_floor']}x the floor "
                "(targets_* above: eager/compile/floor)")
    out = Path(a.out)
    suffix = "_quick" if a.quick else ""
    csv = write_csv([dict(r, **{k: v for k, v in info.items() if k != "load_avg_1m"}) for r in rows],
                    out / f"attacks{suffix}.csv")
    png = out / f"bench_attacks{suffix}.png"
    plot(rows, png, f"{info['cpu']}, {info['threads']} threads, torch {info['torch']}"
         + (f", {info.get('gpu')}" if a.device == "cuda" else ""))
    print(f"\nwrote {csv}, {png} ({time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
