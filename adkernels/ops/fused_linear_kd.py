"""``fused_linear_kd_loss``: lm_head projection + KD loss without materializing [N, V] logits.

Rows are processed in chunks: for each chunk the student and teacher logits are made with one
matmul each, ``kd_fwd`` turns them into per-row losses and logit gradients in one pass, and
the logit gradients are immediately contracted back into gradients of the hidden states,
weights and biases. Peak extra memory is O(chunk x V) (two logit chunks and two gradient
chunks), never O(N x V).

Chunk rule (``chunk_size=None``): ``next_pow2(ceil(N / ceil(V / H)))`` rows, H the larger hidden
size, so a chunk of logits holds about as many numbers as the hidden-state input itself
(N x H); but at least ``2^25 / V`` rows (32M logits, 128 MB in fp32), so that the matmuls stay
large and the weight gradient ([V, H], updated once per chunk) is not re-read too often;
clamped to [1, N]. At N=4096, H=1024, V=128256 that is 261 rows (134 MB per fp32 logit chunk,
against 2.1 GB for the full logits).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .._backend import resolve
from ._validate import _graph_is_kept, check_float_tensor, check_same, check_target, check_target_range
from .kd import DIVERGENCES, _count, _kd_kernel, _kd_options


MIN_CHUNK_LOGITS = 1 << 25


def default_chunk_size(n: int, vocab: int, hidden: int) -> int:
    """Rows per chunk: keeps a chunk of logits about the size of the [N, H] input."""
    if n <= 0:
        return 1
    factor = max(1, math.ceil(vocab / max(hidden, 1)))
    rows = math.ceil(n / factor)
    rows = max(1 << (rows - 1).bit_length(), MIN_CHUNK_LOGITS // max(vocab, 1))
    return max(1, min(n, rows))


def _linear(x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    return torch.addmm(b, x, w.t()) if b is not None else x @ w.t()


def _chunked(xs, ws, bs, xt, wt, bt, target, opts, chunk, backend, row_scale, need):
    """Per-row losses and (optionally) gradients, scaled per row by ``row_scale``.

    need: booleans for (xs, ws, bs, xt, wt, bt). row_scale: None (no gradients), a 0-dim tensor,
    or an [N] tensor. Weight and bias gradients accumulate in fp32 (fp64 for fp64).
    """
    n = xs.shape[0]
    acc = torch.float64 if xs.dtype == torch.float64 else torch.float32
    rows = torch.empty(n, dtype=acc, device=xs.device)
    want = row_scale is not None
    g = [None] * 6
    if want:
        if need[0]:
            g[0] = torch.empty_like(xs)
        if need[1]:
            g[1] = torch.zeros(ws.shape, dtype=acc, device=ws.device)
        if need[2]:
            g[2] = torch.zeros(bs.shape, dtype=acc, device=bs.device)
        if need[3]:
            g[3] = torch.empty_like(xt)
        if need[4]:
            g[4] = torch.zeros(wt.shape, dtype=acc, device=wt.device)
        if need[5]:
            g[5] = torch.zeros(bt.shape, dtype=acc, device=bt.device)
    need_s = want and any(need[:3])
    need_t = want and any(need[3:])
    kernel = _kd_kernel(backend)
    div = DIVERGENCES[opts["divergence"]]
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        zs = _linear(xs[a:b], ws, bs)
        zt = _linear(xt[a:b], wt, bt)
        tg = None if target is None else target[a:b]
        r, gs, gt = kernel(zs, zt, tg, opts["temperature"], opts["alpha"], div, opts["beta"],
                           opts["ignore_index"], opts["label_smoothing"], need_s, need_t)
        rows[a:b] = r
        if not want:
            continue
        scale = row_scale if row_scale.dim() == 0 else row_scale[a:b].unsqueeze(-1)
        for side, grad, x, w, (ix, iw, ib) in (("s", gs, xs, ws, (0, 1, 2)), ("t", gt, xt, wt, (3, 4, 5))):
            if grad.numel() == 0:
                continue
            grad = (grad * scale).to(x.dtype)
            if need[ix]:
                g[ix][a:b] = grad @ w
            if need[iw]:
                g[iw].addmm_(grad.t().to(acc), x[a:b].to(acc))
            if need[ib]:
                g[ib].add_(grad.sum(0, dtype=acc))
    if want:
        for i, ref in ((1, ws), (2, bs), (4, wt), (5, bt)):
            if g[i] is not None:
                g[i] = g[i].to(ref.dtype)
    return rows, g


class FusedLinearKDFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xs, ws, bs, xt, wt, bt, target, count, opts, reduction, chunk, backend):
        need = tuple(ctx.needs_input_grad[:6])
        ctx.reduction, ctx.opts, ctx.chunk, ctx.backend, ctx.need = reduction, opts, chunk, backend, need
        if reduction == "none":
            # Per-row grad_output is known only in backward: recompute there.
            rows, _ = _chunked(xs, ws, bs, xt, wt, bt, target, opts, chunk, backend, None, need)
            ctx.save_for_backward(xs, ws, bs, xt, wt, bt, target)
            return rows
        scale = (1.0 / count.clamp(min=1).to(torch.float64)) if reduction != "sum" else count.new_ones((), dtype=torch.float64)
        scale = scale.to(torch.float64 if xs.dtype == torch.float64 else torch.float32)
        rows, g = _chunked(xs, ws, bs, xt, wt, bt, target, opts, chunk, backend, scale if any(need) else None, need)
        ctx.save_for_backward(*[t for t in g if t is not None])
        total = rows.sum()
        return total if reduction == "sum" else total * scale

    @staticmethod
    def backward(ctx, grad):
        need = ctx.need
        if ctx.reduction == "none":
            xs, ws, bs, xt, wt, bt, target = ctx.saved_tensors
            _, g = _chunked(xs, ws, bs, xt, wt, bt, target, ctx.opts, ctx.chunk, ctx.backend, grad, need)
        else:
            saved = iter(ctx.saved_tensors)
            g = [next(saved) if n else None for n in need]
            if _graph_is_kept():
                g = [None if t is None else (t * grad).to(t.dtype) for t in g]
            else:  # the graph is freed after this backward: scale the saved gradients in place
                g = [None if t is None else t.mul_(grad) for t in g]
        return (*g, None, None, None, None, None, None)


def fused_linear_kd_loss(
    student_input: Tensor,
    student_weight: Tensor,
    teacher_input: Tensor,
    teacher_weight: Tensor,
    target: Optional[Tensor] = None,
    *,
    student_bias: Optional[Tensor] = None,
    teacher_bias: Optional[Tensor] = None,
    chunk_size: Optional[int] = None,
    temperature: float = 1.0,
    alpha: float = 1.0,
    divergence: str = "kl",
    beta: float = 0.5,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "batchmean",
) -> Tensor:
    r"""``kd_loss(x_s @ W_s.T + b_s, x_t @ W_t.T + b_t, target, ...)`` without the full logits.

    Args:
        student_input: ``[..., H_s]`` hidden states; student_weight ``[V, H_s]``; student_bias ``[V]``.
        teacher_input: ``[..., H_t]`` with the same leading shape; teacher_weight ``[V, H_t]``.
        target: ``[...]`` int64 or None; the KD options and reductions are those of :func:`kd_loss`.
        chunk_size: rows per chunk (see the module doc for the default rule).

    Gradients flow to every input, weight and bias that requires one (a frozen teacher costs
    nothing extra). All inputs share one floating dtype and device.

    Example:
        >>> import torch, adkernels
        >>> xs, ws = torch.randn(8, 16, requires_grad=True), torch.randn(100, 16, requires_grad=True)
        >>> xt, wt = torch.randn(8, 32), torch.randn(100, 32)
        >>> loss = adkernels.fused_linear_kd_loss(xs, ws, xt, wt, temperature=2.0)
        >>> loss.backward(); ws.grad.shape
        torch.Size([100, 16])
    """
    op = "fused_linear_kd_loss"
    named = [("student_input", student_input), ("student_weight", student_weight),
             ("teacher_input", teacher_input), ("teacher_weight", teacher_weight)]
    if student_bias is not None:
        named.append(("student_bias", student_bias))
    if teacher_bias is not None:
        named.append(("teacher_bias", teacher_bias))
    for name, t in named:
        check_float_tensor(name, t, op)
        check_same(op, "student_input", student_input, name, t)
    if student_weight.dim() != 2 or teacher_weight.dim() != 2:
        raise ValueError(f"{op}: student_weight and teacher_weight must be [V, H], got "
                         f"{tuple(student_weight.shape)} and {tuple(teacher_weight.shape)}")
    V = student_weight.shape[0]
    if teacher_weight.shape[0] != V:
        raise ValueError(f"{op}: student_weight has V={V} rows but teacher_weight has {teacher_weight.shape[0]}; "
                         "both heads must share the vocabulary")
    for name, x, w in (("student_input", student_input, student_weight), ("teacher_input", teacher_input, teacher_weight)):
        if x.dim() < 1 or x.shape[-1] != w.shape[1]:
            raise ValueError(f"{op}: {name} must be [..., {w.shape[1]}] to match its weight [V, {w.shape[1]}], "
                             f"got {tuple(x.shape)}")
    if student_input.shape[:-1] != teacher_input.shape[:-1]:
        raise ValueError(f"{op}: student_input and teacher_input must share leading shape, got "
                         f"{tuple(student_input.shape[:-1])} and {tuple(teacher_input.shape[:-1])}")
    for name, b in (("student_bias", student_bias), ("teacher_bias", teacher_bias)):
        if b is not None and b.shape != (V,):
            raise ValueError(f"{op}: {name} must be [V] = [{V}], got {tuple(b.shape)}")
    opts = _kd_options(op, temperature, alpha, divergence, beta, ignore_index, label_smoothing, reduction, target)
    leading = student_input.shape[:-1]
    xs = student_input.reshape(-1, student_input.shape[-1])
    xt = teacher_input.reshape(-1, teacher_input.shape[-1])
    n = xs.shape[0]
    if target is not None:
        check_target(op, target, leading, xs.device)
        target = target.reshape(-1).long()
        check_target_range(op, target, V, opts["ignore_index"])
    if chunk_size is None:
        chunk = default_chunk_size(n, V, max(xs.shape[1], xt.shape[1]))
    else:
        if int(chunk_size) < 1:
            raise ValueError(f"{op}: chunk_size must be >= 1, got {chunk_size}")
        chunk = int(chunk_size)
    backend = resolve(xs.device)
    if backend == "reference":
        from ..reference.kd import kd_loss as ref

        return ref(_linear(xs, student_weight, student_bias), _linear(xt, teacher_weight, teacher_bias),
                   target, reduction=reduction, **opts).reshape(leading if reduction == "none" else ())
    count = _count(target, n, opts["ignore_index"], xs.device)
    out = FusedLinearKDFunction.apply(xs, student_weight, student_bias, xt, teacher_weight, teacher_bias,
                                      target, count, opts, reduction, chunk, backend)
    return out.reshape(leading) if reduction == "none" else out


class FusedLinearKDLoss(nn.Module):
    """``nn.Module`` form of :func:`fused_linear_kd_loss`.

    >>> import torch, adkernels
    >>> crit = adkernels.FusedLinearKDLoss(temperature=2.0)
    >>> crit(torch.randn(4, 8), torch.randn(50, 8), torch.randn(4, 8), torch.randn(50, 8)).dim()
    0
    """

    def __init__(self, *, chunk_size=None, **kd_options):
        super().__init__()
        self.chunk_size = chunk_size
        self.kd_options = kd_options

    def forward(self, student_input, student_weight, teacher_input, teacher_weight, target=None,
                student_bias=None, teacher_bias=None):
        return fused_linear_kd_loss(student_input, student_weight, teacher_input, teacher_weight, target,
                                    student_bias=student_bias, teacher_bias=teacher_bias,
                                    chunk_size=self.chunk_size, **self.kd_options)
