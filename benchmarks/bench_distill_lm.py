"""bench_distill_lm: one LLM-distillation step, fused-linear KD vs eager logits + KD.

Shape of the issue: vocabulary V = 128256 (Llama 3), 8192 tokens per step (16 sequences of 512),
hidden size 1024; the transformer is scaled down (1 layer of the built-in GPT for both the
student and the frozen teacher), not the vocabulary, so the lm_head and the loss dominate the
way they do in real LLM distillation. Loss: ``alpha T^2 KL(p_t^T || p_s^T) + (1 - alpha) CE``
with T = 2, alpha = 0.5.

Variants (same models, same inputs):
- ``fused``: ``adkernels.fused_linear_kd_loss`` on the final hidden states and lm_head weights
  (the distill_lm recipe's path): logits exist only a chunk of rows at a time.
- ``eager``: logits ``h @ W.T`` for student and teacher, then the loss as people write it
  (log_softmax, kl_div, cross_entropy), autograd backward.
- ``logits+kd_loss``: the same logits, then ``adkernels.kd_loss`` (fused loss, but the
  ``[tokens, V]`` logits are still materialized).

Measured (all in this run, the commit and load average recorded next to the numbers):
- loss peak memory: peak extra resident memory of the loss forward + backward given the hidden
  states (``common.peak_memory``: a fresh subprocess, VmHWM - VmRSS). Eager needs about six
  ``[tokens, V]`` fp32 buffers (over 24 GiB at 8192 x 128256), more than this machine can
  spare next to the other jobs on it, so eager is measured at two smaller token counts and
  its peak at 8192 is extrapolated linearly (it is linear in tokens: every buffer is
  ``[tokens, V]``); the measured points are in the CSV too.
- step throughput: tokens/s of a whole step (student forward, frozen teacher forward, loss,
  backward to every student parameter; no optimizer step, the same for all variants). fused
  runs at 8192 tokens; eager and logits+kd_loss at the largest token count whose predicted peak
  fits in 60% of the available memory (tokens/s of a step is flat in the token count once the
  matmuls are large).

Targets (issue 6): loss peak memory fused <= 1/4 of eager; tokens/s fused >= eager.
``--quick``: tiny shapes (V=4096, H=128, 256 tokens), a few seconds (smoke test).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import adkernels  # noqa: E402
from adkernels.train.lm.models import GPT, GPTConfig  # noqa: E402
from common import (  # noqa: E402
    busy_note,
    env_info,
    mem_available_bytes,
    pass_miss,
    peak_memory,
    print_table,
    time_fns,
    write_csv,
)

TEMPERATURE = 2.0
ALPHA = 0.5
GiB = float(1 << 30)
FULL = dict(V=128256, H=1024, tokens=8192, seq=512, layers=1, heads=16)
QUICK = dict(V=4096, H=128, tokens=256, seq=64, layers=1, heads=4)
TARGETS = {"loss_mem_ratio": 0.25, "tokens_per_s_ratio": 1.0}
IMPLS = ("fused", "eager", "logits+kd_loss")


def eager_loss(hs, ws, ht, wt, y):
    zs = hs @ ws.t()
    with torch.no_grad():
        zt = ht @ wt.t()
    lps = F.log_softmax(zs / TEMPERATURE, dim=-1)
    lpt = F.log_softmax(zt / TEMPERATURE, dim=-1)
    kd = F.kl_div(lps, lpt, reduction="batchmean", log_target=True) * (TEMPERATURE * TEMPERATURE)
    return ALPHA * kd + (1 - ALPHA) * F.cross_entropy(zs, y)


def logits_kd_loss(hs, ws, ht, wt, y):
    zs = hs @ ws.t()
    with torch.no_grad():
        zt = ht @ wt.t()
    return adkernels.kd_loss(zs, zt, y, temperature=TEMPERATURE, alpha=ALPHA)


def fused_loss(hs, ws, ht, wt, y):
    return adkernels.fused_linear_kd_loss(hs, ws, ht.detach(), wt.detach(), y, temperature=TEMPERATURE, alpha=ALPHA)


LOSSES = {"fused": fused_loss, "eager": eager_loss, "logits+kd_loss": logits_kd_loss}


def _models(V, H, seq, layers, heads, seed=0):
    torch.manual_seed(seed)
    student = GPT(GPTConfig(vocab_size=V, seq_len=seq, n_layer=layers, n_head=heads, d_model=H))
    teacher = GPT(GPTConfig(vocab_size=V, seq_len=seq, n_layer=layers, n_head=heads, d_model=H))
    for p in teacher.parameters():
        p.requires_grad_(False)
    with torch.no_grad():  # logits of a realistic spread (std ~2) rather than ~0.02 * sqrt(H)
        for m in (student, teacher):
            m.lm_head.weight.normal_(0.0, 2.0 / math.sqrt(H))
    return student, teacher


def make_loss_case(impl: str, V: int, H: int, tokens: int, seed: int = 0, **_):
    """Inputs of the loss alone (hidden states given); returns the measured call (fwd + bwd)."""
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(tokens, H, generator=g).requires_grad_()
    ht = torch.randn(tokens, H, generator=g)
    ws = (torch.randn(V, H, generator=g) * (2.0 / math.sqrt(H))).requires_grad_()
    wt = torch.randn(V, H, generator=g) * (2.0 / math.sqrt(H))
    y = torch.randint(0, V, (tokens,), generator=g)
    fn = LOSSES[impl]

    def run():
        loss = fn(hs, ws, ht, wt, y)
        return loss, torch.autograd.grad(loss, [hs, ws])
    return run


def make_step_case(impl: str, V: int, H: int, tokens: int, seq: int, layers: int, heads: int, seed: int = 0):
    """A whole distillation step (student + teacher forward, loss, backward); returns the call."""
    student, teacher = _models(V, H, seq, layers, heads, seed)
    g = torch.Generator().manual_seed(seed + 1)
    B = max(1, tokens // seq)
    x = torch.randint(0, V, (B, seq), generator=g)
    y = torch.randint(0, V, (B * seq,), generator=g)
    fn = LOSSES[impl]

    def run():
        student.zero_grad(set_to_none=True)
        hs = student.hidden_states(x).reshape(-1, H)
        with torch.no_grad():
            ht = teacher.hidden_states(x).reshape(-1, H)
        loss = fn(hs, student.lm_head.weight, ht, teacher.lm_head.weight, y)
        loss.backward()
        return loss.detach()
    return run, student


def check(shape):
    """The three losses agree (loss and student gradients) at a small token count."""
    small = dict(shape, tokens=min(shape["tokens"], 128))
    outs = {impl: make_loss_case(impl, **small)() for impl in IMPLS}
    ref_l, ref_g = outs["eager"]
    errs = {}
    for impl in ("fused", "logits+kd_loss"):
        lo, gr = outs[impl]
        le = abs(lo.item() - ref_l.item()) / abs(ref_l.item())
        ge = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(gr, ref_g))
        if not (le < 1e-4 and ge < 1e-3):
            raise SystemExit(f"FAIL {impl}: loss rel err {le:.3g}, grad rel err {ge:.3g} against eager")
        errs[impl] = (le, ge)
    return errs


def step_rows(shape, tokens_by_impl, repeats):
    """Time one step per variant; returns rows with tokens_per_s."""
    rows = []
    for impl in IMPLS:
        n = tokens_by_impl[impl]
        run, _ = make_step_case(impl, shape["V"], shape["H"], n, shape["seq"], shape["layers"], shape["heads"])
        warm_run, _ = make_step_case(impl, shape["V"], shape["H"], shape["seq"], shape["seq"], shape["layers"],
                                     shape["heads"])
        warm_run()  # libraries, thread pool; the timed call is not the first of its kind
        del warm_run
        t = time_fns({impl: run}, warmup=0, repeats=repeats)[impl]
        del run
        rows.append(dict(part="step", impl=impl, tokens=n, V=shape["V"], H=shape["H"], step_ms=t.median,
                         tokens_per_s=n / (t.median / 1e3), spread=t.spread))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes, seconds (smoke test)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--repeats", type=int, default=None, help="timed steps per variant (default 1; quick 2)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--mem-fraction", type=float, default=0.6,
                    help="eager runs at the largest token count predicted to fit in this share of MemAvailable")
    args = ap.parse_args(argv)
    shape = dict(QUICK if args.quick else FULL)
    repeats = args.repeats or (2 if args.quick else 1)
    suffix = "_quick" if args.quick else ""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    here = str(Path(__file__).resolve())
    t_start = time.perf_counter()
    info = env_info()
    print("bench_distill_lm: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    note = busy_note(torch.get_num_threads())
    if note:
        print(note)
    print(f"shape: V={shape['V']}, hidden={shape['H']}, {shape['tokens']} tokens ({shape['tokens'] // shape['seq']} x "
          f"{shape['seq']}), {shape['layers']}-layer GPT student and teacher, T={TEMPERATURE}, alpha={ALPHA}")
    errs = check(shape)
    print("checked against eager at 128 tokens: " + ", ".join(
        f"{k}: loss err {v[0]:.2g}, grad err {v[1]:.2g}" for k, v in errs.items()))
    V, H, N = shape["V"], shape["H"], shape["tokens"]
    logits_gib = N * V * 4 / GiB
    rows = []
    notes = []

    # ---- loss peak memory
    mem = {}
    if not args.no_memory:
        kw = dict(V=V, H=H)
        warm = dict(kw, tokens=8)
        mem["fused"] = peak_memory(here, "make_loss_case", dict(kw, impl="fused", tokens=N),
                                   warm_kwargs=dict(warm, impl="fused"))["peak_extra_bytes"]
        pts = {}
        for impl in ("eager", "logits+kd_loss"):
            n1, n2 = (N // 8, N // 4) if not args.quick else (N // 2, N)
            p1 = peak_memory(here, "make_loss_case", dict(kw, impl=impl, tokens=n1), warm_kwargs=dict(warm, impl=impl))
            p2 = peak_memory(here, "make_loss_case", dict(kw, impl=impl, tokens=n2), warm_kwargs=dict(warm, impl=impl))
            a, b = p1["peak_extra_bytes"], p2["peak_extra_bytes"]
            per = (b - a) / (n2 - n1)
            mem[impl] = b + per * (N - n2)
            pts[impl] = (n1, a, n2, b, per)
            how = "measured" if n2 == N else f"extrapolated from {n1} and {n2} tokens ({a / GiB:.2f} and {b / GiB:.2f} GiB)"
            print(f"  {impl}: loss peak {mem[impl] / GiB:.2f} GiB at {N} tokens, {how}", flush=True)
        print(f"  fused: loss peak {mem['fused'] / GiB:.2f} GiB at {N} tokens, measured", flush=True)
        for impl in IMPLS:
            r = dict(part="loss", impl=impl, tokens=N, V=V, H=H, peak_GiB=mem[impl] / GiB,
                     peak_logit_buffers=mem[impl] / GiB / logits_gib,
                     method="measured" if impl == "fused" or pts[impl][2] == N else "extrapolated")
            if impl in pts:
                r.update(measured_tokens=f"{pts[impl][0]};{pts[impl][2]}",
                         measured_GiB=f"{pts[impl][1] / GiB:.3f};{pts[impl][3] / GiB:.3f}")
            rows.append(r)

    # ---- step throughput
    avail = mem_available_bytes() or 8 * (1 << 30)
    n_eager = N
    if "eager" in mem:
        per_tok = max(pts["eager"][4], pts["logits+kd_loss"][4])
        base = 3 * V * H * 4  # weights + weight gradient
        while n_eager > shape["seq"] and base + per_tok * n_eager > args.mem_fraction * avail:
            n_eager //= 2
        if n_eager < N:
            notes.append(f"eager step timed at {n_eager} tokens (predicted peak at {N}: "
                         f"{(base + per_tok * N) / GiB:.1f} GiB; MemAvailable {avail / GiB:.1f} GiB)")
    elif not args.quick:
        n_eager = N // 4
        notes.append(f"eager step timed at {n_eager} tokens (no memory prediction with --no-memory)")
    srows = step_rows(shape, {impl: N if impl == "fused" else n_eager for impl in IMPLS}, repeats)
    tps = {r["impl"]: r["tokens_per_s"] for r in srows}
    for r in srows:
        print(f"  step {r['impl']}: {r['tokens']} tokens in {r['step_ms'] / 1e3:.2f} s -> {r['tokens_per_s']:.0f} "
              "tokens/s", flush=True)
    rows += srows
    for r in rows:
        r.update(commit=info["commit"], load_avg_1m=info["load_avg_1m"], threads=info["threads"])

    print_table([r for r in rows if r["part"] == "loss"], ["impl", "tokens", "peak_GiB", "peak_logit_buffers", "method"],
                f"loss forward + backward, peak extra memory (one [{N}, {V}] fp32 buffer = {logits_gib:.2f} GiB)")
    print_table([r for r in rows if r["part"] == "step"], ["impl", "tokens", "step_ms", "tokens_per_s", "spread"],
                "whole distillation step (student + teacher forward, loss, backward)")
    for n in notes:
        print("note: " + n)
    verdicts = [(f"tokens/s fused / eager = {tps['fused'] / tps['eager']:.2f} >= {TARGETS['tokens_per_s_ratio']}",
                 tps["fused"] / tps["eager"] >= TARGETS["tokens_per_s_ratio"])]
    if mem:
        ratio = mem["fused"] / mem["eager"]
        verdicts.insert(0, (f"loss peak memory fused / eager = {ratio:.3f} <= {TARGETS['loss_mem_ratio']}",
                            ratio <= TARGETS["loss_mem_ratio"]))
    print()
    for text, ok in verdicts:
        print(f"{pass_miss(ok)}  {text}")
    csv = write_csv(rows, out / f"distill_lm{suffix}.csv")
    png = plot(rows, out / f"distill_lm{suffix}.png", f"distillation step, V={V}, H={H}, {N} tokens "
               f"({info['commit']}, load {info['load_avg_1m']})")
    print(f"\nwrote {csv}" + (f" and {png}" if png else "") + f" in {time.perf_counter() - t_start:.0f} s")
    return rows


def plot(rows, path, title):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    loss = [r for r in rows if r["part"] == "loss"]
    step = [r for r in rows if r["part"] == "step"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    if loss:
        ax = axes[0]
        ax.bar([r["impl"] for r in loss], [r["peak_GiB"] for r in loss],
               color=["tab:green" if r["impl"] == "fused" else "tab:gray" for r in loss])
        for i, r in enumerate(loss):
            ax.text(i, r["peak_GiB"], f"{r['peak_GiB']:.3g}" + ("*" if r["method"] == "extrapolated" else ""),
                    ha="center", va="bottom")
        ax.set_ylabel("loss fwd+bwd peak extra memory, GiB")
        ax.set_title("loss peak memory (* extrapolated)")
    ax = axes[1]
    ax.bar([r["impl"] for r in step], [r["tokens_per_s"] for r in step],
           color=["tab:green" if r["impl"] == "fused" else "tab:gray" for r in step])
    ax.set_ylabel("tokens / s (whole step)")
    ax.set_title("step throughput")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
