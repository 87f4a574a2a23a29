"""Knowledge-distillation losses: ``kd_loss``, ``fused_linear_kd_loss``, ``vocab_parallel_kd_loss``.

The per-row loss (DESIGN.md) is

    L = alpha * T^2 * D(p_t^T, p_s^T) + (1 - alpha) * CE_ls(target, p_s)

with ``p^T = softmax(z / T)``, ``D`` one of ``kl`` (KL(p_t || p_s), Hinton), ``reverse_kl``
(KL(p_s || p_t)) or ``jsd`` (beta KL(p_t || M) + (1 - beta) KL(p_s || M), M = beta p_t +
(1 - beta) p_s), and CE at temperature 1 with label smoothing. The kernels make the gradient
in the forward pass (one pass over V per row, online softmax); backward only scales it.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .. import _backend
from .._backend import resolve
from ._validate import (
    check_logit_pair,
    check_positive,
    check_reduction,
    check_target,
    check_target_range,
    check_unit_interval,
    reduce_rows,
    scale_row_grads,
)

DIVERGENCES = {"kl": 0, "reverse_kl": 1, "jsd": 2}


# ---- low-level op: fake kernels and backend kernels ------------------------------------------

def kd_fwd_fake(student, teacher, target, temperature, alpha, divergence, beta, ignore_index,
                label_smoothing, grad_student, grad_teacher):
    """Shapes of ``kd_fwd`` (shared by the C++ op and the Triton op)."""
    n = student.shape[0]
    loss_dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
    loss = student.new_empty((n,), dtype=loss_dtype)
    gs = torch.empty_like(student) if grad_student else student.new_empty((0,))
    gt = torch.empty_like(teacher) if grad_teacher else teacher.new_empty((0,))
    return loss, gs, gt


if _backend.has_cpp():
    torch.library.register_fake("adkernels::kd_fwd")(kd_fwd_fake)


def _kd_kernel(backend: str):
    if backend in ("cpu", "cuda"):
        return torch.ops.adkernels.kd_fwd
    if backend == "triton":
        from ..triton import kd as triton_kd  # noqa: F401  defines adkernels::kd_fwd_triton

        return torch.ops.adkernels.kd_fwd_triton
    raise AssertionError(backend)


# ---- options ----------------------------------------------------------------------------------

def _kd_options(op, temperature, alpha, divergence, beta, ignore_index, label_smoothing, reduction, target):
    temperature = check_positive(op, "temperature", temperature)
    alpha = check_unit_interval(op, "alpha", alpha)
    if divergence not in DIVERGENCES:
        raise ValueError(f"{op}: divergence must be one of {tuple(DIVERGENCES)}, got {divergence!r}")
    beta = check_unit_interval(op, "beta", beta, open_low=True, open_high=True)
    label_smoothing = check_unit_interval(op, "label_smoothing", label_smoothing)
    check_reduction(op, reduction)
    if alpha < 1 and target is None:
        raise ValueError(f"{op}: alpha={alpha} < 1 mixes in cross entropy, which needs target; pass target or alpha=1.0")
    return dict(
        temperature=temperature, alpha=alpha, divergence=divergence, beta=beta,
        ignore_index=int(ignore_index), label_smoothing=label_smoothing,
    )


def _count(target: Optional[Tensor], n: int, ignore_index: int, device) -> Tensor:
    if target is None:
        return torch.full((), n, dtype=torch.int64, device=device)
    return (target != ignore_index).sum()


# ---- kd_loss ----------------------------------------------------------------------------------

class KDFunction(torch.autograd.Function):
    """Autograd over ``torch.ops.adkernels.kd_fwd`` (or its Triton twin) on [N, V] logits."""

    @staticmethod
    def forward(ctx, student, teacher, target, count, temperature, alpha, divergence, beta,
                ignore_index, label_smoothing, reduction, backend):
        need_s, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        rows, gs, gt = _kd_kernel(backend)(
            student, teacher, target, temperature, alpha, DIVERGENCES[divergence], beta,
            ignore_index, label_smoothing, need_s, need_t,
        )
        ctx.save_for_backward(gs, gt, count)
        ctx.reduction = reduction
        return reduce_rows(rows, count, reduction)

    @staticmethod
    def backward(ctx, grad):
        gs, gt, count = ctx.saved_tensors
        ds, dt = scale_row_grads(grad, count, ctx.reduction, gs if ctx.needs_input_grad[0] else None,
                                 gt if ctx.needs_input_grad[1] else None)
        return ds, dt, None, None, None, None, None, None, None, None, None, None


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Optional[Tensor] = None,
    *,
    temperature: float = 1.0,
    alpha: float = 1.0,
    divergence: str = "kl",
    beta: float = 0.5,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "batchmean",
) -> Tensor:
    r"""Distillation loss of student logits against teacher logits, fused in one pass per row.

    ``L_n = alpha * T^2 * D(p_t^T, p_s^T) + (1 - alpha) * CE_ls(target_n, p_s)``

    Args:
        student_logits: ``[..., V]`` float32/float64/float16/bfloat16.
        teacher_logits: ``[..., V]``, same dtype and device. Gets a gradient when it requires one
            (a teacher that learns from the student, as in ADIM).
        target: ``[...]`` int64 class indices, or None. Needed when ``alpha < 1``; rows equal to
            ``ignore_index`` contribute nothing to either term. Values outside ``[0, V)`` raise a
            ValueError; inside ``torch.compile`` that check (it reads values) is skipped, the CPU
            kernel still raises, and the CUDA / Triton kernels give NaN for such rows.
        temperature: T > 0; both distributions are softened by T and the divergence is scaled
            by T^2 (Hinton et al.).
        alpha: weight of the divergence in [0, 1]; ``1 - alpha`` weights the cross entropy.
        divergence: ``"kl"`` (KL(p_t || p_s)), ``"reverse_kl"`` (KL(p_s || p_t)) or ``"jsd"``.
        beta: JSD mixture weight in (0, 1).
        label_smoothing: smoothing of the CE term, as ``F.cross_entropy``.
        reduction: ``"batchmean"`` / ``"mean"`` (divide by counted rows; 0 if none is counted),
            ``"sum"``, or ``"none"`` (per-row losses of shape ``[...]``).

    Returns:
        float32 loss (float64 for float64 inputs).

    Example:
        >>> import torch, adkernels
        >>> s = torch.randn(4, 10, requires_grad=True); t = torch.randn(4, 10)
        >>> y = torch.tensor([1, 2, -100, 3])
        >>> loss = adkernels.kd_loss(s, t, y, temperature=2.0, alpha=0.5)
        >>> loss.backward()
        >>> s.grad.shape
        torch.Size([4, 10])
    """
    op = "kd_loss"
    check_logit_pair(op, student_logits, teacher_logits)
    opts = _kd_options(op, temperature, alpha, divergence, beta, ignore_index, label_smoothing, reduction, target)
    V = student_logits.shape[-1]
    leading = student_logits.shape[:-1]
    if target is not None:
        check_target(op, target, leading, student_logits.device)
        target = target.reshape(-1).long()
        check_target_range(op, target, V, opts["ignore_index"])
    s = student_logits.reshape(-1, V).contiguous()
    t = teacher_logits.reshape(-1, V).contiguous()
    backend = resolve(s.device)
    if backend == "reference":
        from ..reference.kd import kd_loss as ref

        return ref(student_logits, teacher_logits, target if target is None else target.reshape(leading),
                   reduction=reduction, **opts)
    count = _count(target, s.shape[0], opts["ignore_index"], s.device)
    out = KDFunction.apply(
        s, t, target, count, opts["temperature"], opts["alpha"], opts["divergence"], opts["beta"],
        opts["ignore_index"], opts["label_smoothing"], reduction, backend,
    )
    return out.reshape(leading) if reduction == "none" else out


class KDLoss(nn.Module):
    """``nn.Module`` form of :func:`kd_loss`; the options are fixed at construction.

    >>> import torch, adkernels
    >>> crit = adkernels.KDLoss(temperature=4.0)
    >>> crit(torch.randn(2, 5), torch.randn(2, 5)).shape
    torch.Size([])
    """

    def __init__(self, *, temperature=1.0, alpha=1.0, divergence="kl", beta=0.5, ignore_index=-100,
                 label_smoothing=0.0, reduction="batchmean"):
        super().__init__()
        self.options = dict(temperature=temperature, alpha=alpha, divergence=divergence, beta=beta,
                            ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction)
        _kd_options("KDLoss", temperature, alpha, divergence, beta, ignore_index, label_smoothing,
                    reduction, target=0 if alpha < 1 else None)

    def forward(self, student_logits, teacher_logits, target=None):
        return kd_loss(student_logits, teacher_logits, target, **self.options)

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


from .fused_linear_kd import FusedLinearKDLoss, fused_linear_kd_loss  # noqa: E402,F401
from .vocab_parallel import vocab_parallel_kd_loss  # noqa: E402,F401
