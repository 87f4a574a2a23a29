"""Benchmark of ``adkernels.discriminator_loss``, ``adkernels.binary_adversarial_loss`` and the fused
ADIM generator step ``adkernels.adversarial_distillation_loss``.

    python benchmarks/bench_adversarial.py [--quick] [--device cpu|cuda] [--out benchmarks/results]

Part 1, three-way discriminator loss, forward + backward, at N = 1M rows (quick: 16384), weights
(1, 0.5, 0.5), per-source means, softmax [N, 3] fp32 / bf16 and binary_tree [N, 2] fp32:
  fused     adkernels.discriminator_loss
  eager     log_softmax (or the log-sigmoid tree) + gather + a masked mean per source, as a user
            would write it
  compile   torch.compile (inductor, static shapes) of that composition
  floor     bytes that must move (read d_logits and source, write the gradient) over the copy
            bandwidth measured in the same run, round robin with the variants
Part 2, binary_adversarial_loss (bce discriminator with one-sided smoothing 0.9, and
relativistic), M = 1M real and 1M fake scores (quick: 16384), same four columns (eager:
``F.binary_cross_entropy_with_logits`` twice / on r - f).
Part 3, adversarial_distillation_loss (the ADIM student step: Gumbel-Softmax sample at tau 1, D's
per-label logits [N, C, 3] scoring it, three-way minimax generator loss, KL at T = 3, weight 1),
forward + backward to the student logits and D, N = 4096, C = 10 / 1000 / 32000 fp32 (quick:
smaller):
  fused     adkernels.adversarial_distillation_loss (one kernel)
  composed  the separate adkernels ops: gumbel_softmax, label_conditioned_scores, generator_loss,
            kd_loss
  eager     F.gumbel_softmax + torch.bmm + log_softmax / gather / per-source means + F.kl_div
  compile   torch.compile of eager; floor: read s, t, d and write ds, dd at the copy bandwidth
Before timing, fused results are checked against the eager composition (fp32 on upcast
inputs; part 3: against the composed ops with the same noise, as eager's noise differs); a
mismatch stops the benchmark.

Target (printed PASS/MISS): discriminator_loss softmax fp32 at N = 1M is >= 3x faster than eager.
Results: adversarial[_quick].csv and bench_adversarial[_quick].png under --out.
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
    busy_note,
    copy_probe,
    dtype_name,
    env_info,
    fmt,
    pass_miss,
    print_table,
    save_bar_chart,
    time_fns,
    write_csv,
)

WEIGHTS = (1.0, 0.5, 0.5)
TARGET = 3.0  # eager / fused for discriminator_loss softmax fp32 at N = 1M


# ---- what is compared -------------------------------------------------------------------------

def eager_disc(z, src, param="softmax", weights=WEIGHTS):
    """-sum_i w_i mean_{source = i} log D_i, as people write it."""
    if param == "softmax":
        logd = F.log_softmax(z.float(), dim=-1)
    else:
        a, b = z[:, 0].float(), z[:, 1].float()
        la, lna = F.logsigmoid(a), F.logsigmoid(-a)
        logd = torch.stack([la, lna + F.logsigmoid(b), lna + F.logsigmoid(-b)], dim=-1)
    own = logd.gather(1, src[:, None]).squeeze(1)
    loss = z.new_zeros((), dtype=torch.float32)
    for i, w in enumerate(weights):
        m = src == i
        loss = loss - w * torch.where(m, own, 0.0).sum() / m.sum().clamp(min=1)
    return loss


def fused_disc(z, src, param="softmax"):
    return adkernels.discriminator_loss(z, src, weights=WEIGHTS, parameterization=param)


def eager_binary(r, f, kind):
    if kind == "bce":
        return (F.binary_cross_entropy_with_logits(r.float(), torch.full_like(r, 0.9, dtype=torch.float32))
                + F.binary_cross_entropy_with_logits(f.float(), torch.zeros_like(f, dtype=torch.float32)))
    d = (r - f).float()
    return F.binary_cross_entropy_with_logits(d, torch.full_like(d, 0.9))


def fused_binary(r, f, kind):
    return adkernels.binary_adversarial_loss(r, f, kind=kind, real_label=0.9)


def _grads(loss, inputs):
    return torch.autograd.grad(loss, inputs)


def _rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-30)).item()


def _check(fused_fn, eager_fn, inputs, label):
    up = [x.detach().float().requires_grad_() if x.is_floating_point() else x for x in inputs]
    lf = fused_fn(*inputs)
    gf = _grads(lf, [x for x in inputs if x.is_floating_point()])
    le = eager_fn(*up)
    ge = _grads(le, [x for x in up if x.is_floating_point()])
    loss_err = abs(lf.item() - le.item()) / max(abs(le.item()), 1e-30)
    grad_err = max(_rel_err(a, b) for a, b in zip(gf, ge))
    tol = 1e-4 if inputs[0].dtype == torch.float32 else 2e-2
    if loss_err > tol or grad_err > tol:
        raise SystemExit(f"FAIL {label}: fused vs eager loss err {loss_err:.3g}, grad err {grad_err:.3g}")
    return loss_err, grad_err


def bench_case(name, label, inputs, fused_fn, eager_fn, floor_bytes, device, *, repeats, use_compile,
               grad_inputs=None, composed_fn=None, check=None):
    """fused vs eager (vs torch.compile of eager, vs composed_fn: the separate adkernels ops) vs
    the floor; ``check()`` (default: fused against eager on fp32 inputs) returns (loss, grad) errors."""
    if grad_inputs is None:
        grad_inputs = [x for x in inputs if x.is_floating_point()]
    variants = {
        "fused": lambda: _grads(fused_fn(*inputs), grad_inputs),
        "eager": lambda: _grads(eager_fn(*inputs), grad_inputs),
    }
    if composed_fn is not None:
        variants["composed"] = lambda: _grads(composed_fn(*inputs), grad_inputs)
    compile_s = float("nan")
    if use_compile:
        torch._dynamo.reset()
        compiled = torch.compile(eager_fn, dynamic=False)
        t0 = time.perf_counter()
        _grads(compiled(*inputs), grad_inputs)
        compile_s = time.perf_counter() - t0
        variants["compile"] = lambda: _grads(compiled(*inputs), grad_inputs)
    loss_err, grad_err = check() if check is not None else _check(fused_fn, eager_fn, inputs, label)
    variants["fused_fwd"] = lambda: fused_fn(*inputs)
    copy_fn, copy_bytes = copy_probe(floor_bytes, device)
    variants["copy"] = copy_fn
    times = time_fns(variants, warmup=1, repeats=repeats, device=device)
    copy_bps = copy_bytes / (times["copy"].median * 1e-3)
    floor_ms = floor_bytes / copy_bps * 1e3
    row = {
        "op": name, "case": label,
        "fused_ms": times["fused"].median, "fused_fwd_ms": times["fused_fwd"].median,
        "eager_ms": times["eager"].median,
        "compile_ms": times["compile"].median if "compile" in times else float("nan"),
        "floor_ms": floor_ms,
        "eager/fused": times["eager"].median / times["fused"].median,
        "compile/fused": times["compile"].median / times["fused"].median if "compile" in times else float("nan"),
        "composed_ms": times["composed"].median if "composed" in times else float("nan"),
        "composed/fused": times["composed"].median / times["fused"].median if "composed" in times else float("nan"),
        "fused/floor": times["fused"].median / floor_ms,
        "copy_GBps": copy_bps / 1e9,
        "max_spread": max(times[k].spread for k in ("fused", "eager", "compile", "composed", "copy") if k in times),
        "compile_s": compile_s, "loss_err": loss_err, "grad_err": grad_err,
    }
    if use_compile:
        torch._dynamo.reset()
    return row


def disc_case(N, param, dtype, device, *, repeats, use_compile, seed=0):
    g = torch.Generator().manual_seed(seed)
    K = 3 if param == "softmax" else 2
    z = (torch.randn(N, K, generator=g) * 2).to(dtype).to(device).requires_grad_()
    src = torch.randint(0, 3, (N,), generator=g).to(device)
    floor_bytes = N * (2 * K * z.element_size() + 8)  # read z and source, write dz
    label = f"N={N} {param} {dtype_name(dtype)}"
    return bench_case("discriminator_loss", label, [z, src], lambda a, b: fused_disc(a, b, param),
                      lambda a, b: eager_disc(a, b, param), floor_bytes, device, repeats=repeats,
                      use_compile=use_compile)


def binary_case(M, kind, dtype, device, *, repeats, use_compile, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = (torch.randn(M, generator=g) * 2).to(dtype).to(device).requires_grad_()
    f = (torch.randn(M, generator=g) * 2).to(dtype).to(device).requires_grad_()
    floor_bytes = 4 * M * r.element_size()  # read r and f, write both gradients
    label = f"M={M} {kind} {dtype_name(dtype)}"
    return bench_case("binary_adversarial_loss", label, [r, f], lambda a, b: fused_binary(a, b, kind),
                      lambda a, b: eager_binary(a, b, kind), floor_bytes, device, repeats=repeats,
                      use_compile=use_compile)


# ---- part 3: the fused ADIM generator step ----------------------------------------------------

ADIM = dict(tau=1.0, weights=(1.0, 1.0, 1.0), kd_weight=1.0, temperature=3.0)


def eager_adim(s, t, d, src):
    """The ADIM student step as people write it in PyTorch: F.gumbel_softmax, a batched product
    with D's per-label logits, the three-way log-softmax generator loss (per-source means), KL."""
    y = F.gumbel_softmax(s.float(), tau=ADIM["tau"])
    scores = torch.bmm(y.unsqueeze(1), d.float()).squeeze(1)
    own = F.log_softmax(scores, dim=-1).gather(1, src[:, None]).squeeze(1)
    adv = scores.new_zeros(())
    for i, w in enumerate(ADIM["weights"]):
        if i:
            m = src == i
            adv = adv + w * torch.where(m, own, 0.0).sum() / m.sum().clamp(min=1)
    T = ADIM["temperature"]
    kd = F.kl_div(F.log_softmax(s.float() / T, -1), F.log_softmax(t.float() / T, -1), log_target=True,
                  reduction="batchmean") * T * T
    return adv + ADIM["kd_weight"] * kd


def fused_adim(s, t, d, src):
    return adkernels.adversarial_distillation_loss(s, t, d, src, **ADIM)


def composed_adim(s, t, d, src):
    """The same step through the separate adkernels ops (gumbel_softmax, label_conditioned_scores,
    generator_loss, kd_loss)."""
    from adkernels.ops.adversarial import _composition

    tau = torch.tensor(ADIM["tau"])
    return _composition(s, t, d, src, tau, False, ADIM["weights"], ADIM["kd_weight"], ADIM["temperature"], None,
                        "minimax", "softmax", "mean", "kl")


def adim_case(N, C, dtype, device, *, repeats, use_compile, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(N, C, generator=g) * 2).to(dtype).to(device).requires_grad_()
    t = (torch.randn(N, C, generator=g) * 2).to(dtype).to(device)
    d = torch.randn(N, C, 3, generator=g).to(dtype).to(device).requires_grad_()
    src = torch.randint(1, 3, (N,), generator=g).to(device)
    floor_bytes = N * C * (3 + 2 * 3) * s.element_size()  # read s, t, d; write ds, dd

    def check():  # fused against the composition with the same noise (eager's noise differs)
        torch.manual_seed(1)
        lf = fused_adim(s, t, d, src)
        gf = _grads(lf, [s, d])
        torch.manual_seed(1)
        lc = composed_adim(s, t, d, src)
        gc = _grads(lc, [s, d])
        loss_err = abs(lf.item() - lc.item()) / max(abs(lc.item()), 1e-30)
        grad_err = max(_rel_err(a, b) for a, b in zip(gf, gc))
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        if loss_err > tol or grad_err > tol:
            raise SystemExit(f"FAIL adim N={N} C={C}: fused vs composed loss err {loss_err:.3g}, grad err {grad_err:.3g}")
        return loss_err, grad_err

    label = f"N={N} C={C} {dtype_name(dtype)}"
    return bench_case("adversarial_distillation_loss", label, [s, t, d, src], fused_adim, eager_adim, floor_bytes,
                      device, repeats=repeats, use_compile=use_compile, grad_inputs=[s, d], composed_fn=composed_adim,
                      check=check)


SERIES = [("fused_ms", "fused adkernels"), ("composed_ms", "separate adkernels ops"),
          ("eager_ms", "eager PyTorch"), ("compile_ms", "torch.compile"), ("floor_ms", "bandwidth floor")]


def plot(rows, path, title):
    labels = [f"{r['op'].replace('_loss', '')}\n{r['case']}" for r in rows]
    return save_bar_chart(rows, path, SERIES, labels, title=title, ylabel="forward + backward, ms (log)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes (smoke test)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per variant (default 7, quick 3)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    args = ap.parse_args(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    repeats = args.repeats or (3 if args.quick else 7)
    suffix = "_quick" if args.quick else ""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    info = env_info(device)
    backend = adkernels._backend.resolve(torch.device(device))
    print("bench_adversarial: " + ", ".join(f"{k}={v}" for k, v in info.items()) + f", backend={backend}")
    note = busy_note(torch.get_num_threads())
    if note:
        print(note)
    N = 16384 if args.quick else 1 << 20
    rows = []
    use_compile = not args.no_compile
    for param, dtype in (("softmax", torch.float32), ("softmax", torch.bfloat16), ("binary_tree", torch.float32)):
        rows.append(disc_case(N, param, dtype, device, repeats=repeats, use_compile=use_compile))
        print(f"  {rows[-1]['op']} {rows[-1]['case']}: fused {fmt(rows[-1]['fused_ms'])} ms, eager "
              f"{fmt(rows[-1]['eager_ms'])} ms", flush=True)
    for kind in ("bce", "relativistic"):
        rows.append(binary_case(N, kind, torch.float32, device, repeats=repeats, use_compile=use_compile))
        print(f"  {rows[-1]['op']} {rows[-1]['case']}: fused {fmt(rows[-1]['fused_ms'])} ms, eager "
              f"{fmt(rows[-1]['eager_ms'])} ms", flush=True)
    adim_shapes = [(512, 10), (512, 100), (64, 1000)] if args.quick else [(4096, 10), (4096, 1000), (4096, 32000)]
    for n_rows, C in adim_shapes:
        r = adim_case(n_rows, C, torch.float32, device, repeats=min(repeats, 3) if C >= 32000 else repeats,
                      use_compile=use_compile)
        rows.append(r)
        print(f"  {r['op']} {r['case']}: fused {fmt(r['fused_ms'])} ms, composed {fmt(r['composed_ms'])} ms, "
              f"eager {fmt(r['eager_ms'])} ms", flush=True)
    for r in rows:
        r["load_avg_1m"] = info["load_avg_1m"]
        r["commit"] = info["commit"]
        r["threads"] = info["threads"]
    cols = ["op", "case", "fused_ms", "composed_ms", "eager_ms", "compile_ms", "floor_ms", "composed/fused",
            "eager/fused", "compile/fused", "fused/floor", "fused_fwd_ms", "copy_GBps", "max_spread"]
    print_table(rows, cols, "forward + backward (median ms)")
    csv_path = write_csv(rows, out / f"adversarial{suffix}.csv")
    png = out / f"bench_adversarial{suffix}.png"
    plot(rows, png, f"{info['cpu']}, {info['threads']} threads, torch {info['torch']}, adkernels {info['commit']}, "
         f"load average {info['load_avg_1m']}" + (" (quick shapes)" if args.quick else ""))
    t = rows[0]
    ok = t["eager/fused"] >= TARGET
    print("\ntarget" + (" (quick shapes: informational only)" if args.quick else "") + ":")
    print(f"  {pass_miss(ok)}  discriminator_loss {t['case']} eager/fused = {t['eager/fused']:.2f} >= {TARGET}")
    note_end = busy_note(torch.get_num_threads())
    if note_end:
        print(note_end.replace("before", "after"))
    print(f"\nwrote {csv_path}, {png} ({time.perf_counter() - t_start:.0f} s)")
    return rows


if __name__ == "__main__":
    main()
