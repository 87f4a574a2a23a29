r"""Sparse-teacher distillation: ``topk_kd_loss`` and ``fused_linear_topk_kd_loss``.

The teacher is given only as its top-k: column ids ``[..., k]`` and their log-probabilities
``[..., k]`` (log softmax of the teacher's logits at temperature 1, e.g. stored offline). Per
row, with student logits z and support S = the k ids:

- ``tail="renorm"``: bins are the k support columns. Student bins ``b_j = z_{i_j}``, teacher
  bins ``a_j = lt_j``.
- ``tail="bucket"``: the same k bins plus one bin for everything outside S: student
  ``b_tail = logsumexp_{c not in S} z_c`` (the student's remaining mass), teacher
  ``a_tail = log(max(0, 1 - sum_j exp(lt_j)))`` (the teacher's remaining mass). When k = V there
  is no tail and bucket equals renorm.

Then ``u = softmax(b / T)``, ``q = softmax(a / T)`` over the bins and

    L = alpha * T^2 * KL(q || u) + (1 - alpha) * CE_ls(target, softmax(z))

At T = 1 the bins are exact probabilities: the student's ``u_j = p_s(i_j)`` (renorm:
renormalized over S) and its tail bin is its mass outside S. The temperature is applied to the
bin distributions: for renorm this equals ``softmax(z / T)`` and the teacher's softmax at T
restricted to S and renormalized (since ``lt_j / T = z_t(i_j) / T - const``); for bucket the
tail counts as one token at every temperature (the teacher's tail logits are unknown, so its
tail cannot be softened token by token; the student's is treated the same way so that a student
equal to the teacher has zero loss at every T).

Gradients: ``d L / d z_{i_j} = alpha T (u_j - q_j)`` on the support, ``alpha T (u_tail - q_tail)
exp(z_c - b_tail)`` on a tail column c (bucket), plus the CE part; made in the forward (one pass
over the row), scaled in the backward. The teacher's log-probabilities get no gradient.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .. import _backend
from .._backend import resolve
from ._validate import (
    _graph_is_kept,
    check_float_tensor,
    check_same,
    check_positive,
    check_reduction,
    check_target,
    check_target_range,
    check_unit_interval,
    reduce_rows,
    scale_row_grads,
)

from .fused_linear_kd import _linear, default_chunk_size  # the row-chunking rule of fused_linear_kd_loss

TAILS = {"renorm": 0, "bucket": 1}


# ---- low-level op: fake kernel and backend kernels ----------------------------------------------

def topk_kd_fwd_fake(student, ids, teacher_logprobs, target, temperature, alpha, ignore_index, label_smoothing,
                     tail, grad_student):
    """Shapes of ``topk_kd_fwd`` (shared by the C++ op and the Triton op)."""
    loss_dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
    loss = student.new_empty((student.shape[0],), dtype=loss_dtype)
    gs = torch.empty_like(student) if grad_student else student.new_empty((0,))
    return loss, gs


if _backend.has_cpp():
    torch.library.register_fake("adkernels::topk_kd_fwd")(topk_kd_fwd_fake)


def _topk_kernel(backend: str):
    if backend in ("cpu", "cuda"):
        return torch.ops.adkernels.topk_kd_fwd
    if backend == "triton":
        from ..triton import topk_kd as triton_topk_kd  # noqa: F401  defines adkernels::topk_kd_fwd_triton

        return torch.ops.adkernels.topk_kd_fwd_triton
    raise AssertionError(backend)


# ---- checks ----------------------------------------------------------------------------------------

def _topk_options(op, temperature, alpha, ignore_index, label_smoothing, reduction, tail, target):
    temperature = check_positive(op, "temperature", temperature)
    alpha = check_unit_interval(op, "alpha", alpha)
    label_smoothing = check_unit_interval(op, "label_smoothing", label_smoothing)
    check_reduction(op, reduction)
    if tail not in TAILS:
        raise ValueError(f"{op}: tail must be one of {tuple(TAILS)}, got {tail!r}")
    if alpha < 1 and target is None:
        raise ValueError(f"{op}: alpha={alpha} < 1 mixes in cross entropy, which needs target; pass target or alpha=1.0")
    return dict(temperature=temperature, alpha=alpha, ignore_index=int(ignore_index),
                label_smoothing=label_smoothing, tail=tail)


def _check_teacher(op: str, ids, logprobs, leading: torch.Size, V: int, like: Tensor):
    """Validate the teacher's top-k pair; returns ([N, K] int64 ids, [N, K] float32/64 log-probs)."""
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"{op}: teacher_topk_ids must be an integer tensor of column ids (int64), got "
                        f"{getattr(ids, 'dtype', type(ids).__name__)}")
    check_float_tensor("teacher_topk_logprobs", logprobs, op)
    if ids.dim() < 1 or ids.shape[:-1] != leading:
        raise ValueError(f"{op}: teacher_topk_ids must be [..., k] with the logits' leading shape {tuple(leading)}, "
                         f"got {tuple(ids.shape)}")
    if logprobs.shape != ids.shape:
        raise ValueError(f"{op}: teacher_topk_logprobs must have teacher_topk_ids' shape {tuple(ids.shape)}, "
                         f"got {tuple(logprobs.shape)}")
    for name, t in (("teacher_topk_ids", ids), ("teacher_topk_logprobs", logprobs)):
        if t.device != like.device:
            raise ValueError(f"{op}: {name} is on {t.device} but the logits are on {like.device}")
    if logprobs.requires_grad:
        raise ValueError(f"{op}: teacher_topk_logprobs requires grad, but the teacher gets no gradient here; "
                         "pass teacher_topk_logprobs.detach()")
    K = ids.shape[-1]
    if K > V:
        raise ValueError(f"{op}: k = {K} teacher ids per row exceed the vocabulary V = {V}; keep k <= V")
    acc = torch.float64 if like.dtype == torch.float64 else torch.float32
    n = leading.numel()
    ids2 = ids.reshape(n, K).long().contiguous()
    lt2 = logprobs.detach().reshape(n, K).to(acc).contiguous()
    if ids2.numel() and not torch.compiler.is_compiling():
        if bool(ids2.amin() < 0) or bool(ids2.amax() >= V):
            bad = (ids2 < 0) | (ids2 >= V)
            r, c = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{op}: teacher_topk_ids[{r}, {c}] = {int(ids2[r, c])} is out of range [0, {V})")
        if K > 1:
            srt = ids2.sort(-1).values
            dup = srt[:, 1:] == srt[:, :-1]
            if bool(dup.any()):
                r = int(dup.nonzero()[0, 0])
                raise ValueError(f"{op}: teacher_topk_ids has a repeated id in row {r}; the k ids of a row must be "
                                 "distinct (as torch.topk gives)")
    return ids2, lt2


def _count(target: Optional[Tensor], n: int, ignore_index: int, device) -> Tensor:
    if target is None:
        return torch.full((), n, dtype=torch.int64, device=device)
    return (target != ignore_index).sum()


# ---- topk_kd_loss -----------------------------------------------------------------------------------

class TopkKDFunction(torch.autograd.Function):
    """Autograd over ``torch.ops.adkernels.topk_kd_fwd`` (or its Triton twin) on [N, V] logits."""

    @staticmethod
    def forward(ctx, student, ids, logprobs, target, count, temperature, alpha, ignore_index, label_smoothing,
                tail, reduction, backend):
        rows, gs = _topk_kernel(backend)(student, ids, logprobs, target, temperature, alpha, ignore_index,
                                         label_smoothing, TAILS[tail], ctx.needs_input_grad[0])
        ctx.save_for_backward(gs, count)
        ctx.reduction = reduction
        return reduce_rows(rows, count, reduction)

    @staticmethod
    def backward(ctx, grad):
        gs, count = ctx.saved_tensors
        (ds,) = scale_row_grads(grad, count, ctx.reduction, gs if ctx.needs_input_grad[0] else None)
        return (ds,) + (None,) * 11


def topk_kd_loss(
    student_logits: Tensor,
    teacher_topk_ids: Tensor,
    teacher_topk_logprobs: Tensor,
    target: Optional[Tensor] = None,
    *,
    temperature: float = 1.0,
    alpha: float = 1.0,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "batchmean",
    tail: str = "renorm",
) -> Tensor:
    r"""Distillation from a teacher given only as its top-k log-probabilities, fused in one pass per row.

    ``L_n = alpha * T^2 * KL(q || u) + (1 - alpha) * CE_ls(target_n, softmax(z_n))`` over the
    teacher's k support columns (``tail="renorm"``) or those plus one bucket for the remaining
    mass (``tail="bucket"``); the exact bins and how T applies are in the module doc.

    Args:
        student_logits: ``[..., V]`` float32/float64/float16/bfloat16.
        teacher_topk_ids: ``[..., k]`` integer column ids, distinct per row, in ``[0, V)``, k <= V.
        teacher_topk_logprobs: ``[..., k]`` the teacher's log-probabilities at those ids (log
            softmax of its logits at T = 1; any float dtype, used in float32 (float64 for
            float64 logits)). No gradient: pass it detached. ``-inf`` entries are allowed
            (zero teacher probability).
        target: ``[...]`` int64 or None; needed when ``alpha < 1``; rows equal to
            ``ignore_index`` contribute nothing.
        temperature: T > 0, applied to the bin distributions (teacher ``softmax(lt / T)`` over
            the bins); the KL is scaled by T^2 as in Hinton KD.
        alpha: weight of the KL term in [0, 1]; ``1 - alpha`` weights the hard-label CE (at T = 1).
        label_smoothing: smoothing of the CE term, as ``F.cross_entropy``.
        reduction: ``"batchmean"`` / ``"mean"`` (divide by the counted rows; 0 if none),
            ``"sum"``, ``"none"`` (per-row losses ``[...]``).
        tail: ``"renorm"`` or ``"bucket"``.

    Out-of-range or repeated ids and out-of-range targets raise a ValueError in eager mode;
    under ``torch.compile`` those checks (they read values) are skipped, the CPU kernel still
    raises for out-of-range values, and results for such rows are undefined on CUDA / Triton.
    Bucket precision: the student's tail mass is exact on CPU (a sum over the tail's own
    terms) and on CUDA / Triton is the row's total minus the support in float64, resolved to
    about 1e-12 of the row's mass. A teacher tail > 0 against a student tail of exactly 0 (all
    tail logits -inf, or more than ~87 below the row's maximum in float32) gives an infinite
    loss, as KL does.

    Returns:
        float32 loss (float64 for float64 inputs).

    Example:
        >>> import torch, adkernels
        >>> s = torch.randn(4, 100, requires_grad=True)
        >>> lt, ids = torch.log_softmax(torch.randn(4, 100), -1).topk(8, dim=-1)
        >>> loss = adkernels.topk_kd_loss(s, ids, lt, temperature=2.0, tail="bucket")
        >>> loss.backward(); s.grad.shape
        torch.Size([4, 100])
    """
    op = "topk_kd_loss"
    check_float_tensor("student_logits", student_logits, op)
    if student_logits.dim() < 1:
        raise ValueError(f"{op}: student_logits must be [..., V], got a 0-dim tensor")
    opts = _topk_options(op, temperature, alpha, ignore_index, label_smoothing, reduction, tail, target)
    V = student_logits.shape[-1]
    leading = student_logits.shape[:-1]
    ids, lt = _check_teacher(op, teacher_topk_ids, teacher_topk_logprobs, leading, V, student_logits)
    if target is not None:
        check_target(op, target, leading, student_logits.device)
        target = target.reshape(-1).long()
        check_target_range(op, target, V, opts["ignore_index"])
    z = student_logits.reshape(-1, V).contiguous()
    backend = resolve(z.device)
    if backend == "reference":
        from ..reference.topk_kd import topk_kd_loss as ref

        out = ref(z, ids, lt, target, reduction=reduction, **opts)
        return out.reshape(leading) if reduction == "none" else out
    count = _count(target, z.shape[0], opts["ignore_index"], z.device)
    out = TopkKDFunction.apply(z, ids, lt, target, count, opts["temperature"], opts["alpha"], opts["ignore_index"],
                               opts["label_smoothing"], opts["tail"], reduction, backend)
    return out.reshape(leading) if reduction == "none" else out


class TopkKDLoss(nn.Module):
    """``nn.Module`` form of :func:`topk_kd_loss`; the options are fixed at construction.

    >>> import torch, adkernels
    >>> crit = adkernels.TopkKDLoss(temperature=2.0, tail="bucket")
    >>> lt, ids = torch.log_softmax(torch.randn(2, 50), -1).topk(5, dim=-1)
    >>> crit(torch.randn(2, 50), ids, lt).shape
    torch.Size([])
    """

    def __init__(self, *, temperature=1.0, alpha=1.0, ignore_index=-100, label_smoothing=0.0,
                 reduction="batchmean", tail="renorm"):
        super().__init__()
        self.options = dict(temperature=temperature, alpha=alpha, ignore_index=ignore_index,
                            label_smoothing=label_smoothing, reduction=reduction, tail=tail)
        _topk_options("TopkKDLoss", temperature, alpha, ignore_index, label_smoothing, reduction, tail,
                      target=0 if alpha < 1 else None)

    def forward(self, student_logits, teacher_topk_ids, teacher_topk_logprobs, target=None):
        return topk_kd_loss(student_logits, teacher_topk_ids, teacher_topk_logprobs, target, **self.options)

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


# ---- fused_linear_topk_kd_loss ----------------------------------------------------------------------

def _chunked_topk(x, w, b, ids, lt, target, opts, chunk, backend, row_scale, need):
    """Per-row losses and (optionally) gradients to (x, w, b) scaled per row by ``row_scale``
    (None: no gradients; 0-dim or [N]). Chunks of rows as fused_linear_kd_loss; weight and bias
    gradients accumulate in fp32 (fp64 for fp64)."""
    n = x.shape[0]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    rows = torch.empty(n, dtype=acc, device=x.device)
    want = row_scale is not None and any(need)
    gx = torch.empty_like(x) if want and need[0] else None
    gw = torch.zeros(w.shape, dtype=acc, device=w.device) if want and need[1] else None
    gb = torch.zeros(b.shape, dtype=acc, device=b.device) if want and need[2] else None
    kernel = _topk_kernel(backend)
    for a in range(0, n, chunk):
        e = min(a + chunk, n)
        z = _linear(x[a:e], w, b)
        tg = None if target is None else target[a:e]
        r, gz = kernel(z, ids[a:e], lt[a:e], tg, opts["temperature"], opts["alpha"], opts["ignore_index"],
                       opts["label_smoothing"], TAILS[opts["tail"]], want)
        rows[a:e] = r
        if not want:
            continue
        scale = row_scale if row_scale.dim() == 0 else row_scale[a:e].unsqueeze(-1)
        gz = (gz * scale).to(x.dtype)
        if gx is not None:
            gx[a:e] = gz @ w
        if gw is not None:
            gw.addmm_(gz.t().to(acc), x[a:e].to(acc))
        if gb is not None:
            gb.add_(gz.sum(0, dtype=acc))
    gw = None if gw is None else gw.to(w.dtype)
    gb = None if gb is None else gb.to(b.dtype)
    return rows, (gx, gw, gb)


class FusedLinearTopkKDFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, ids, lt, target, count, opts, reduction, chunk, backend):
        need = tuple(ctx.needs_input_grad[:3])
        ctx.reduction, ctx.opts, ctx.chunk, ctx.backend, ctx.need = reduction, opts, chunk, backend, need
        if reduction == "none":  # the per-row grad_output is known only in backward: recompute there
            rows, _ = _chunked_topk(x, w, b, ids, lt, target, opts, chunk, backend, None, need)
            ctx.save_for_backward(x, w, b, ids, lt, target)
            return rows
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        scale = count.new_ones((), dtype=acc) if reduction == "sum" else 1.0 / count.clamp(min=1).to(acc)
        rows, g = _chunked_topk(x, w, b, ids, lt, target, opts, chunk, backend, scale if any(need) else None, need)
        ctx.save_for_backward(*[t for t in g if t is not None])
        total = rows.sum()
        return total if reduction == "sum" else total * scale

    @staticmethod
    def backward(ctx, grad):
        need = ctx.need
        if ctx.reduction == "none":
            x, w, b, ids, lt, target = ctx.saved_tensors
            _, g = _chunked_topk(x, w, b, ids, lt, target, ctx.opts, ctx.chunk, ctx.backend, grad, need)
        else:
            saved = iter(ctx.saved_tensors)
            g = [next(saved) if n else None for n in need]
            if _graph_is_kept():
                g = [None if t is None else (t * grad).to(t.dtype) for t in g]
            else:
                g = [None if t is None else t.mul_(grad) for t in g]
        return (*g,) + (None,) * 8


def fused_linear_topk_kd_loss(
    student_input: Tensor,
    student_weight: Tensor,
    teacher_topk_ids: Tensor,
    teacher_topk_logprobs: Tensor,
    target: Optional[Tensor] = None,
    *,
    student_bias: Optional[Tensor] = None,
    chunk_size: Optional[int] = None,
    **opts,
) -> Tensor:
    r"""``topk_kd_loss(x @ W.T + b, ids, logprobs, target, **opts)`` without the full [N, V] logits.

    Rows are processed in chunks (the rule of :func:`fused_linear_kd_loss`,
    ``adkernels.ops.fused_linear_kd.default_chunk_size``): per chunk one matmul makes the
    logits, ``topk_kd_fwd`` turns them into losses and logit gradients, which are contracted at
    once into gradients of the hidden states, weight and bias. Peak extra memory O(chunk x V).

    Args:
        student_input: ``[..., H]``; student_weight ``[V, H]``; student_bias ``[V]`` or None.
        teacher_topk_ids, teacher_topk_logprobs: ``[..., k]`` as in :func:`topk_kd_loss`.
        chunk_size: rows per chunk (None: the default rule).
        **opts: the options of :func:`topk_kd_loss` (temperature, alpha, ignore_index,
            label_smoothing, reduction, tail).

    Example:
        >>> import torch, adkernels
        >>> x, w = torch.randn(8, 16, requires_grad=True), torch.randn(100, 16, requires_grad=True)
        >>> lt, ids = torch.log_softmax(torch.randn(8, 100), -1).topk(4, dim=-1)
        >>> loss = adkernels.fused_linear_topk_kd_loss(x, w, ids, lt, temperature=2.0, tail="bucket")
        >>> loss.backward(); w.grad.shape
        torch.Size([100, 16])
    """
    op = "fused_linear_topk_kd_loss"
    unknown = set(opts) - {"temperature", "alpha", "ignore_index", "label_smoothing", "reduction", "tail"}
    if unknown:
        raise TypeError(f"{op}: unexpected options {sorted(unknown)}")
    reduction = opts.pop("reduction", "batchmean")
    o = dict(temperature=1.0, alpha=1.0, ignore_index=-100, label_smoothing=0.0, tail="renorm")
    o.update(opts)
    named = [("student_input", student_input), ("student_weight", student_weight)]
    if student_bias is not None:
        named.append(("student_bias", student_bias))
    for name, t in named:
        check_float_tensor(name, t, op)
        check_same(op, "student_input", student_input, name, t)
    if student_weight.dim() != 2:
        raise ValueError(f"{op}: student_weight must be [V, H], got {tuple(student_weight.shape)}")
    V, H = student_weight.shape
    if student_input.dim() < 1 or student_input.shape[-1] != H:
        raise ValueError(f"{op}: student_input must be [..., {H}] to match student_weight [V, {H}], "
                         f"got {tuple(student_input.shape)}")
    if student_bias is not None and student_bias.shape != (V,):
        raise ValueError(f"{op}: student_bias must be [V] = [{V}], got {tuple(student_bias.shape)}")
    opts = _topk_options(op, o["temperature"], o["alpha"], o["ignore_index"], o["label_smoothing"], reduction,
                         o["tail"], target)
    leading = student_input.shape[:-1]
    x = student_input.reshape(-1, H)
    ids, lt = _check_teacher(op, teacher_topk_ids, teacher_topk_logprobs, leading, V, student_input)
    n = x.shape[0]
    if target is not None:
        check_target(op, target, leading, x.device)
        target = target.reshape(-1).long()
        check_target_range(op, target, V, opts["ignore_index"])
    if chunk_size is None:
        chunk = default_chunk_size(n, V, H)
    else:
        if int(chunk_size) < 1:
            raise ValueError(f"{op}: chunk_size must be >= 1, got {chunk_size}")
        chunk = int(chunk_size)
    backend = resolve(x.device)
    if backend == "reference":
        from ..reference.topk_kd import topk_kd_loss as ref

        out = ref(_linear(x, student_weight, student_bias), ids, lt, target, reduction=reduction, **opts)
        return out.reshape(leading) if reduction == "none" else out
    count = _count(target, n, opts["ignore_index"], x.device)
    out = FusedLinearTopkKDFunction.apply(x, student_weight, student_bias, ids, lt, target, count, opts, reduction,
                                          chunk, backend)
    return out.reshape(leading) if reduction == "none" else out
