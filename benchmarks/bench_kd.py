"""Benchmark of ``adkernels.kd_loss`` and ``adkernels.fused_linear_kd_loss``.

    python benchmarks/bench_kd.py [--quick] [--device cpu|cuda] [--out benchmarks/results]

Part 1, kd_loss forward + backward (Hinton KD + CE: temperature 2, alpha 0.5, target given),
at N=4096 rows for V in {4096, 32000, 128256} (fewer rows at 128256, printed), fp32 and bf16:
  fused     adkernels.kd_loss
  eager     log_softmax + kl_div(batchmean, log_target) * T^2 + cross_entropy, on the input
            dtype as a user would write it
  compile   torch.compile (inductor, static shapes) of that composition
  floor     bytes that must move (read both logits once, write the student gradient once;
            the teacher gradient too with --teacher-grad) over the copy bandwidth measured in
            this run on a buffer of the logits' size
  exp-bound exponentials the fused kernel evaluates (counted from csrc/cpu/kd_kernels.cpp)
            over the in-cache torch.exp rate measured in this run; a bare torch.exp over the
            N x V elements (memory streaming included) is reported next to it
Before timing, the fused loss and gradients are checked against the eager composition (run
in fp32 on upcast inputs for bf16); a mismatch stops the benchmark.

Part 2, fused_linear_kd_loss (lm_head + KD, frozen teacher, gradients to the student hidden
states and weight) against eager (logits = x @ W.T, then the composition): peak extra memory
(see common.py for how it is measured) and time, at N=4096, H=1024, V=128256 fp32, with N
lowered only if the eager path would not fit in memory (printed).

Targets (printed PASS/MISS): at [4096, 32000] fp32 the fused kd_loss is >= 5x faster than
eager, >= 2x faster than torch.compile and within 3x of the floor; fused-linear peak memory is
<= 1/4 of eager.

Results: kd_loss[_quick].csv, fused_linear_kd[_quick].csv and bench_kd[_quick].png under
--out (quick runs get the suffix so they never overwrite a full run's files).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import adkernels  # noqa: E402  (after torch: the extension links against torch's libraries)
from common import (  # noqa: E402
    busy_note,
    copy_probe,
    dtype_name,
    env_info,
    exp_big_probe,
    exp_cache_probe,
    fresh_write_probe,
    fmt,
    grouped_bars,
    mem_available_bytes,
    pass_miss,
    peak_memory,
    print_table,
    time_fns,
    write_csv,
)

TEMPERATURE = 2.0
ALPHA = 0.5
LOGIT_STD = 2.0
TARGET_CASE = (4096, 32000, torch.float32)
TARGETS = {"eager_over_fused": 5.0, "compile_over_fused": 2.0, "fused_over_floor": 3.0, "linear_mem_ratio": 0.25}
GiB = float(1 << 30)


# ---- what is compared -------------------------------------------------------------------------

def eager_kd(s, t, y, temperature: float = TEMPERATURE, alpha: float = ALPHA):
    """Hinton KD + CE as people write it; batchmean = our batchmean when no row is ignored."""
    lps = F.log_softmax(s / temperature, dim=-1)
    lpt = F.log_softmax(t / temperature, dim=-1)
    kd = F.kl_div(lps, lpt, reduction="batchmean", log_target=True) * (temperature * temperature)
    ce = F.cross_entropy(s, y)
    return alpha * kd + (1.0 - alpha) * ce


def fused_kd(s, t, y, temperature: float = TEMPERATURE, alpha: float = ALPHA):
    return adkernels.kd_loss(s, t, y, temperature=temperature, alpha=alpha)


def exps_per_element(temperature: float, alpha: float, has_target: bool) -> int:
    """Exponentials per logit position evaluated by the CPU kernel (csrc/cpu/kd_kernels.cpp), kl.

    Phase B evaluates exp((z_s - m_s) / T) and exp((z_t - m_t) / T) when the divergence is on
    (alpha > 0), and with CE at T != 1 also exp(z_s - m_s), stored for the CE gradient. At
    T == 1 the CE reuses the student exponentials. Keep in step with the kernel.
    """
    need_div = alpha > 0
    need_ce = alpha < 1 and has_target
    same_t = temperature == 1.0
    n = 2 if need_div else (1 if need_ce and same_t else 0)
    if need_ce and not same_t:
        n += 1
    return n


def _grads(loss, inputs):
    return torch.autograd.grad(loss, inputs)


def _make_inputs(N, V, dtype, device, teacher_grad, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = (LOGIT_STD * torch.randn(N, V, generator=g)).to(device=device, dtype=dtype).requires_grad_()
    t = (LOGIT_STD * torch.randn(N, V, generator=g)).to(device=device, dtype=dtype)
    if teacher_grad:
        t.requires_grad_()
    y = torch.randint(0, V, (N,), generator=g).to(device)
    return s, t, y


def make_kd_case(impl: str, N: int, V: int, dtype: str = "fp32", device: str = "cpu", teacher_grad: bool = False):
    """Inputs of one kd_loss step; returns the measured call (forward + backward). For peak memory."""
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    s, t, y = _make_inputs(N, V, dt, device, teacher_grad)
    inputs = [s, t] if teacher_grad else [s]
    fn = {"fused": fused_kd, "eager": eager_kd}[impl]

    def run():
        loss = fn(s, t, y)
        return loss, _grads(loss, inputs)
    return run


def _rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


TOL = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (1e-3, 1.6e-2), torch.float16: (1e-3, 4e-3)}  # (loss, grad)


def check_kd(fused_out, ref_fn, s, t, y, inputs, dtype, label):
    """Compare fused (loss, grads) with the eager composition in fp32; raise on mismatch."""
    if dtype == torch.float32:
        ref_loss = ref_fn()
        ref_grads = _grads(ref_loss, inputs)
    else:
        s32 = s.detach().float().requires_grad_()
        t32 = t.detach().float().requires_grad_(t.requires_grad)
        ins32 = [s32, t32] if t.requires_grad else [s32]
        ref_loss = eager_kd(s32, t32, y)
        ref_grads = _grads(ref_loss, ins32)
        del s32, t32
    loss, grads = fused_out
    loss_err = abs(loss.item() - ref_loss.item()) / max(abs(ref_loss.item()), 1e-30)
    grad_err = max(_rel_err(g, r) for g, r in zip(grads, ref_grads))
    tol_loss, tol_grad = TOL[dtype]
    if not (loss_err <= tol_loss and grad_err <= tol_grad and math.isfinite(loss.item())):
        raise SystemExit(
            f"FAIL {label}: fused kd_loss disagrees with the eager composition: loss {loss.item():.8g} vs "
            f"{ref_loss.item():.8g} (rel err {loss_err:.3g}, tol {tol_loss}), grad max err / max|grad| "
            f"{grad_err:.3g} (tol {tol_grad})"
        )
    return loss_err, grad_err


# ---- part 1: kd_loss --------------------------------------------------------------------------

def bench_kd_case(N, V, dtype, device, *, repeats, teacher_grad, use_compile, breakdown,
                  measure_memory):
    label = f"[{N}, {V}] {dtype_name(dtype)}"
    s, t, y = _make_inputs(N, V, dtype, device, teacher_grad)
    inputs = [s, t] if teacher_grad else [s]

    def fused():
        loss = fused_kd(s, t, y)
        return loss, _grads(loss, inputs)

    def eager():
        loss = eager_kd(s, t, y)
        return loss, _grads(loss, inputs)

    variants = {"fused": fused, "eager": eager}
    compiled = None
    compile_s = float("nan")
    if use_compile:
        torch._dynamo.reset()
        compiled = torch.compile(eager_kd, dynamic=False)

        def compiled_fn():
            loss = compiled(s, t, y)
            return loss, _grads(loss, inputs)

        t0 = time.perf_counter()
        compiled_fn()  # compiles forward and backward
        compile_s = time.perf_counter() - t0
        variants["compile"] = compiled_fn

    # correctness before timing (this call also warms the fused path up)
    loss_err, grad_err = check_kd(fused(), lambda: eager_kd(s, t, y), s, t, y, inputs, dtype, label)
    if compiled is not None and dtype == torch.float32:
        c_loss, _ = variants["compile"]()
        e_loss = eager_kd(s, t, y)
        if abs(c_loss.item() - e_loss.item()) > 1e-3 * abs(e_loss.item()):
            raise SystemExit(f"FAIL {label}: torch.compile composition gives {c_loss.item()} vs eager {e_loss.item()}")

    def fused_fwd():  # forward only; the kernel still makes the gradient (requires_grad inputs)
        return fused_kd(s, t, y)

    variants["fused_fwd"] = fused_fwd
    if breakdown:
        # the same kernel with fewer exponentials per element: T = 1 (CE reuses e_s), no CE
        variants["fused_T1"] = lambda: (lambda l: (l, _grads(l, inputs)))(fused_kd(s, t, y, temperature=1.0))
        variants["fused_noCE"] = lambda: (lambda l: (l, _grads(l, inputs)))(fused_kd(s, t, y, alpha=1.0))

    # the floors, timed round robin with the ops so that all see the same load on the machine
    elem = s.element_size()
    logit_bytes = N * V * elem
    copy_fn, copy_bytes = copy_probe(logit_bytes, device)
    exp_cache_fn, exp_cache_n = exp_cache_probe(device)
    src, dst = copy_fn.buffers
    exp_big_fn, _ = exp_big_probe(src, dst)  # N x V fp32 elements when the logits are fp32
    fresh_fn, _ = fresh_write_probe(logit_bytes, device)
    variants.update(copy=copy_fn, exp_cache=exp_cache_fn, exp_big=exp_big_fn, fresh_write=fresh_fn,
                    write=lambda: dst.fill_(1.0))
    times = time_fns(variants, warmup=1, repeats=repeats, device=device)
    del copy_fn, exp_big_fn, src, dst
    variants.clear()

    copy_bps = copy_bytes / (times["copy"].median * 1e-3)
    floor_bytes = (2 + len(inputs)) * logit_bytes + N * 8
    floor_ms = floor_bytes / copy_bps * 1e3
    exp_rate = exp_cache_n / (times["exp_cache"].median * 1e-3)
    n_exp = exps_per_element(TEMPERATURE, ALPHA, True)
    exp_bound_ms = n_exp * N * V / exp_rate * 1e3
    exp_big_ms = times["exp_big"].median * N * V / max(1, logit_bytes // 4)  # per N x V elements

    row = {
        "N": N, "V": V, "dtype": dtype_name(dtype),
        "fused_ms": times["fused"].median, "fused_fwd_ms": times["fused_fwd"].median,
        "eager_ms": times["eager"].median,
        "compile_ms": times["compile"].median if "compile" in times else float("nan"),
        "floor_ms": floor_ms, "exp_bound_ms": exp_bound_ms, "exp_big_ms": exp_big_ms,
        "eager/fused": times["eager"].median / times["fused"].median,
        "compile/fused": times["compile"].median / times["fused"].median if "compile" in times else float("nan"),
        "fused/floor": times["fused"].median / floor_ms,
        "fused/exp_bound": times["fused"].median / exp_bound_ms,
        "exp_per_elem": n_exp,
        "floor_GB": floor_bytes / 1e9, "copy_GBps": copy_bps / 1e9, "exp_rate_Gps": exp_rate / 1e9,
        "fresh_write_ms": times["fresh_write"].median, "write_ms": times["write"].median,
        "fused_min_ms": times["fused"].min, "fused_max_ms": times["fused"].max,
        "max_spread": max(times[k].spread for k in ("fused", "eager", "compile", "copy") if k in times),
        "compile_s": compile_s, "loss_err": loss_err, "grad_err": grad_err,
    }
    if measure_memory:
        here = str(Path(__file__).resolve())
        for impl in ("fused", "eager"):
            kw = dict(impl=impl, V=V, dtype=dtype_name(dtype), device=str(device), teacher_grad=teacher_grad)
            m = peak_memory(here, "make_kd_case", dict(N=N, **kw), warm_kwargs=dict(N=8, **kw), device=device)
            row[f"{impl}_peak_GiB"] = m["peak_extra_bytes"] / GiB
        row["logits_GiB"] = logit_bytes / GiB
    if breakdown:
        row["fused_T1_ms"] = times["fused_T1"].median
        row["fused_noCE_ms"] = times["fused_noCE"].median
    del s, t, y, variants, compiled
    if use_compile:
        torch._dynamo.reset()
    return row


def kd_cases(quick: bool):
    if quick:
        return [(256, 4096), (128, 32000)], (torch.float32, torch.bfloat16)
    return [(4096, 4096), (4096, 32000), (2048, 128256)], (torch.float32, torch.bfloat16)


# ---- part 2: fused_linear_kd_loss -------------------------------------------------------------

def make_linear_case(impl: str, N: int, H: int, V: int, dtype: str = "fp32", device: str = "cpu", seed: int = 0):
    """Inputs of one lm_head + KD step; returns the measured call (forward + backward)."""
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(N, H, generator=g).to(device=device, dtype=dt).requires_grad_()
    ws = (torch.randn(V, H, generator=g) * (LOGIT_STD / math.sqrt(H))).to(device=device, dtype=dt).requires_grad_()
    xt = torch.randn(N, H, generator=g).to(device=device, dtype=dt)
    wt = (torch.randn(V, H, generator=g) * (LOGIT_STD / math.sqrt(H))).to(device=device, dtype=dt)
    y = torch.randint(0, V, (N,), generator=g).to(device)

    if impl == "fused":
        def run():
            loss = adkernels.fused_linear_kd_loss(xs, ws, xt, wt, y, temperature=TEMPERATURE, alpha=ALPHA)
            return loss, torch.autograd.grad(loss, [xs, ws])
    elif impl == "eager":
        def run():
            zs = xs @ ws.t()
            with torch.no_grad():
                zt = xt @ wt.t()
            loss = eager_kd(zs, zt, y)
            return loss, torch.autograd.grad(loss, [xs, ws])
    else:
        raise ValueError(impl)
    return run


def fused_linear_available() -> tuple:
    try:
        make_linear_case("fused", 4, 8, 16)()
        return True, ""
    except NotImplementedError:
        return False, "adkernels.fused_linear_kd_loss raises NotImplementedError"


def check_linear(N, H, V, device):
    fl, fg = make_linear_case("fused", N, H, V, device=device)()
    el, eg = make_linear_case("eager", N, H, V, device=device)()
    loss_err = abs(fl.item() - el.item()) / abs(el.item())
    grad_err = max(_rel_err(a, b) for a, b in zip(fg, eg))
    if not (loss_err <= 1e-4 and grad_err <= 1e-3):
        raise SystemExit(f"FAIL fused_linear_kd_loss [{N}, {H}, {V}]: loss rel err {loss_err:.3g}, "
                         f"grad err {grad_err:.3g} against eager")
    return loss_err, grad_err


def bench_linear(quick: bool, device: str, repeats: int):
    here = str(Path(__file__).resolve())
    H, V = (128, 4096) if quick else (1024, 128256)
    n_want = 256 if quick else 4096
    notes = []
    warm = dict(N=8, H=H, V=V, device=device)  # + impl: a small call of the same path first
    loss_err, grad_err = check_linear(64 if quick else 256, H, V, device)

    # Eager peak is linear in N: measure it at two small N, predict the wanted N, and lower N
    # only if the prediction (plus the inputs) would not fit in 70% of the available memory.
    n_run = n_want
    if not quick and torch.device(device).type == "cpu":
        p1 = peak_memory(here, "make_linear_case", dict(impl="eager", N=256, H=H, V=V, device=device),
                         warm_kwargs=dict(impl="eager", **warm))
        p2 = peak_memory(here, "make_linear_case", dict(impl="eager", N=512, H=H, V=V, device=device),
                         warm_kwargs=dict(impl="eager", **warm))
        per_row = (p2["peak_extra_bytes"] - p1["peak_extra_bytes"]) / 256
        fixed = p1["peak_extra_bytes"] - 256 * per_row
        inputs = 2 * V * H * 4 + 2 * n_want * H * 4
        avail = mem_available_bytes() or 0
        while n_run > 256 and fixed + per_row * n_run + inputs > 0.7 * avail:
            n_run //= 2
        predicted = fixed + per_row * n_want + inputs
        if n_run != n_want:
            notes.append(f"N lowered from {n_want} to {n_run}: eager would need about {predicted / GiB:.1f} GiB "
                         f"(measured {per_row * 1024 / GiB:.2f} GiB per 1024 rows at N=256/512) and "
                         f"{avail / GiB:.1f} GiB are available")
        else:
            notes.append(f"eager predicted peak at N={n_want}: {predicted / GiB:.1f} GiB of {avail / GiB:.1f} GiB available")

    args = dict(N=n_run, H=H, V=V, device=device)
    mem = {impl: peak_memory(here, "make_linear_case", dict(impl=impl, **args),
                             warm_kwargs=dict(impl=impl, **warm), device=device)
           for impl in ("fused", "eager")}
    runs = {impl: make_linear_case(impl, **args) for impl in ("fused", "eager")}
    times = time_fns(runs, warmup=1 if quick else 0, repeats=repeats, device=device)
    del runs
    fused_mem, eager_mem = mem["fused"]["peak_extra_bytes"], mem["eager"]["peak_extra_bytes"]
    row = {
        "N": n_run, "H": H, "V": V, "dtype": "fp32",
        "fused_ms": times["fused"].median, "eager_ms": times["eager"].median,
        "eager/fused": times["eager"].median / times["fused"].median,
        "fused_peak_GiB": fused_mem / GiB, "eager_peak_GiB": eager_mem / GiB,
        "mem_ratio": fused_mem / eager_mem,
        "logits_GiB": n_run * V * 4 / GiB,
        "max_spread": max(t.spread for t in times.values()),
        "repeats": repeats, "loss_err": loss_err, "grad_err": grad_err,
        "mem_method": mem["fused"]["method"],
    }
    return row, notes


# ---- plot -------------------------------------------------------------------------------------

KD_SERIES = [("fused_ms", "fused adkernels.kd_loss"), ("eager_ms", "eager PyTorch"),
             ("compile_ms", "torch.compile"), ("floor_ms", "bandwidth floor"), ("exp_bound_ms", "exp-bound")]


def plot(kd_rows, lin_row, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = 2 if lin_row else 1
    fig, axes = plt.subplots(1, ncols, figsize=(7 * ncols + 3, 4.8), gridspec_kw={"width_ratios": [3, 1][:ncols]})
    axes = [axes] if ncols == 1 else list(axes)
    ax = axes[0]
    grouped_bars(ax, kd_rows, KD_SERIES, [f"{r['N']}x{r['V']}\n{r['dtype']}" for r in kd_rows], legend="best")
    ax.set_ylabel("forward + backward, ms (log)")
    ax.set_title(f"kd_loss, T={TEMPERATURE}, alpha={ALPHA} (KD + CE)")
    if lin_row:
        ax = axes[1]
        vals = [lin_row["eager_peak_GiB"], lin_row["fused_peak_GiB"]]
        bars = ax.bar(["eager", "fused"], vals, color=["tab:orange", "tab:blue"])
        for b, ms in zip(bars, (lin_row["eager_ms"], lin_row["fused_ms"])):
            ax.annotate(f"{ms / 1e3:.1f} s", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("peak extra memory, GiB")
        ax.set_title(f"linear + KD, N={lin_row['N']} H={lin_row['H']} V={lin_row['V']}", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- main -------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, < 60 s (smoke test)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per variant (default 5, quick 3)")
    ap.add_argument("--linear-repeats", type=int, default=None, help="timed rounds for fused-linear (default 2)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--no-linear", action="store_true", help="skip the fused_linear_kd_loss part")
    ap.add_argument("--teacher-grad", action="store_true", help="the teacher logits require grad as well")
    args = ap.parse_args(argv)

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    repeats = args.repeats or (3 if args.quick else 5)
    lin_repeats = args.linear_repeats or (3 if args.quick else 2)
    suffix = "_quick" if args.quick else ""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    info = env_info(device)
    backend = adkernels._backend.resolve(torch.device(device))
    print("bench_kd: " + ", ".join(f"{k}={v}" for k, v in info.items()) + f", kd_loss backend={backend}")
    if device == "cpu" and backend != "cpu":
        print(f"warning: the compiled CPU extension is not loaded ({adkernels._C_error}); timing the {backend} backend")
    note = busy_note(torch.get_num_threads())
    if note:
        print(note)

    # ---- part 1
    print(f"kd kernel exps per element at T={TEMPERATURE} with CE: "
          f"{exps_per_element(TEMPERATURE, ALPHA, True)} (counted from csrc/cpu/kd_kernels.cpp)")
    shapes, dtypes = kd_cases(args.quick)
    if not args.quick:
        print(f"note: V=128256 runs at N={shapes[-1][0]}, not 4096, to keep the full run within minutes on a "
              "small CPU and leave memory to others: eager holds ~5 logit-sized fp32 buffers at its peak "
              "(column eager_peak_GiB), ~10 GiB extra at 4096 x 128256, plus 4 GiB of inputs")
    kd_rows = []
    for N, V in shapes:
        for dtype in dtypes:
            breakdown = (N, V, dtype) == TARGET_CASE
            row = bench_kd_case(N, V, dtype, device, repeats=repeats, teacher_grad=args.teacher_grad,
                                use_compile=not args.no_compile, breakdown=breakdown,
                                measure_memory=not args.quick)
            row["load_avg_1m"] = info["load_avg_1m"]
            row["commit"] = info["commit"]
            kd_rows.append(row)
            print(f"  [{N}, {V}] {row['dtype']}: fused {fmt(row['fused_ms'])} ms, eager {fmt(row['eager_ms'])} ms, "
                  f"compile {fmt(row['compile_ms'])} ms, floor {fmt(row['floor_ms'])} ms "
                  f"(checked: loss err {row['loss_err']:.2g}, grad err {row['grad_err']:.2g})", flush=True)
    cols = ["N", "V", "dtype", "fused_ms", "eager_ms", "compile_ms", "floor_ms", "exp_bound_ms", "exp_big_ms",
            "eager/fused", "compile/fused", "fused/floor", "fused/exp_bound", "fused_fwd_ms", "copy_GBps",
            "max_spread"] + (["fused_peak_GiB", "eager_peak_GiB"] if not args.quick else [])
    print_table(kd_rows, cols, f"kd_loss forward+backward, T={TEMPERATURE}, alpha={ALPHA}, CE target, "
                               f"{'student+teacher' if args.teacher_grad else 'student'} gradient (median ms)")
    kd_csv = write_csv(kd_rows, out / f"kd_loss{suffix}.csv")

    verdicts = []
    tgt = [r for r in kd_rows if (r["N"], r["V"], r["dtype"]) == (TARGET_CASE[0], TARGET_CASE[1], "fp32")]
    if tgt:
        r = tgt[0]
        verdicts += [
            (f"kd_loss [4096, 32000] fp32 eager/fused = {r['eager/fused']:.2f} >= {TARGETS['eager_over_fused']}",
             r["eager/fused"] >= TARGETS["eager_over_fused"]),
            (f"kd_loss [4096, 32000] fp32 compile/fused = {r['compile/fused']:.2f} >= {TARGETS['compile_over_fused']}",
             r["compile/fused"] >= TARGETS["compile_over_fused"]),
            (f"kd_loss [4096, 32000] fp32 fused/floor = {r['fused/floor']:.2f} <= {TARGETS['fused_over_floor']}",
             r["fused/floor"] <= TARGETS["fused_over_floor"]),
        ]
        nv = r["N"] * r["V"]
        per_exp = 1e3 * nv / (r["exp_rate_Gps"] * 1e9)  # ms for one exp per element, in cache
        moved = (5, 3) if not args.teacher_grad else (8, 4)
        print(f"\nwhere the time goes at [4096, 32000] fp32 (fused {r['fused_ms']:.1f} ms):")
        print(f"  bytes: floor {r['floor_GB']:.2f} GB -> {r['floor_ms']:.1f} ms at {r['copy_GBps']:.1f} GB/s (copy); "
              f"the fused step moves {moved[0]}/{moved[1]} of that: the backward reads and writes the "
              "forward-made gradient once more to scale it")
        print(f"  forward (kernel, makes the gradient) {r['fused_fwd_ms']:.1f} ms; backward (gradient scaling) "
              f"{r['fused_ms'] - r['fused_fwd_ms']:.1f} ms")
        print(f"  first touch: writing {r['N'] * r['V'] * 4 / 1e9:.2f} GB into a fresh allocation takes "
              f"{r['fresh_write_ms']:.1f} ms vs {r['write_ms']:.1f} ms into an existing one (page faults); the "
              f"fused step's peak extra memory is {r['fused_peak_GiB'] / r['logits_GiB']:.1f} logit-sized buffers, "
              "each a fresh allocation on every call")
        print(f"  exp: {r['exp_per_elem']} per element -> {r['exp_bound_ms']:.1f} ms at the in-cache torch.exp rate "
              f"{r['exp_rate_Gps']:.2f} G/s ({per_exp:.1f} ms per exp per element); bare torch.exp over N x V: "
              f"{r['exp_big_ms']:.1f} ms")
        n_t1, n_noce = exps_per_element(1.0, ALPHA, True), exps_per_element(TEMPERATURE, 1.0, True)
        if "fused_T1_ms" in r and r["exp_per_elem"] > n_t1:
            d = (r["fused_ms"] - r["fused_T1_ms"]) / (r["exp_per_elem"] - n_t1)
            print(f"  same kernel with fewer exps: T=1 ({n_t1}/element) {r['fused_T1_ms']:.1f} ms, no CE "
                  f"({n_noce}/element) {r['fused_noCE_ms']:.1f} ms -> each exp per element costs about {d:.1f} ms "
                  "in the kernel (T=1 also skips the 1/T scaling)")
        rest = r["fused_ms"] - r["exp_bound_ms"] - r["floor_ms"] * moved[0] / moved[1]
        print(f"  left after exp-bound time and the step's own bytes at copy speed: {rest:.1f} ms (first touch "
              "of new buffers, the passes over each row's cached buffers: max, divergence sums, gradient "
              "arithmetic)")

    # ---- part 2
    lin_row = None
    lin_csv = None
    if not args.no_linear:
        ok, why = fused_linear_available()
        if not ok:
            print(f"\nfused_linear_kd_loss: skipped ({why}); the benchmark code is ready")
        else:
            lin_row, notes = bench_linear(args.quick, device, lin_repeats)
            lin_row["load_avg_1m"] = info["load_avg_1m"]
            lin_row["commit"] = info["commit"]
            for n in notes:
                print("note: " + n)
            print_table([lin_row], ["N", "H", "V", "dtype", "fused_ms", "eager_ms", "eager/fused", "fused_peak_GiB",
                                    "eager_peak_GiB", "mem_ratio", "logits_GiB", "max_spread", "repeats"],
                        "fused_linear_kd_loss forward+backward (frozen teacher), peak extra memory "
                        f"[{lin_row['mem_method']}]")
            lin_csv = write_csv([lin_row], out / f"fused_linear_kd{suffix}.csv")
            verdicts.append((f"fused_linear_kd_loss peak memory fused/eager = {lin_row['mem_ratio']:.3f} <= "
                             f"{TARGETS['linear_mem_ratio']}", lin_row["mem_ratio"] <= TARGETS["linear_mem_ratio"]))

    png = out / f"bench_kd{suffix}.png"
    plot(kd_rows, lin_row, png, f"{info['cpu']}, {info['threads']} threads, torch {info['torch']}, "
         f"adkernels {info['commit']}, load average {info['load_avg_1m']}"
         + (" (quick shapes)" if args.quick else ""))
    if verdicts:
        print("\ntargets" + (" (quick shapes: informational only)" if args.quick else "") + ":")
        for text, ok in verdicts:
            print(f"  {pass_miss(ok)}  {text}")
    note_end = busy_note(torch.get_num_threads())
    if note_end:
        print(note_end.replace("before", "after"))
    print(f"\nwrote {kd_csv}" + (f", {lin_csv}" if lin_csv else "") + f", {png} ({time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
