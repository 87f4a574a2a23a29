r"""Training on soft targets: ``soft_target_cross_entropy`` and ``ada_lab_targets``.

``soft_target_cross_entropy(logits, soft_targets)`` per row:

    L = -sum_k q_k log softmax(z)_k = Q * lse(z) - sum_k q_k z_k,     Q = sum_k q_k

fused: one pass over the row makes the loss and both gradients ``dL/dz = softmax(z) * Q - q`` and
``dL/dq = lse(z) - z``; the backward only scales them. Targets must be non-negative. They need
not sum to 1: the formula above is applied as is (a row summing to s weighs like s rows of a
normalized target; its logit gradient still sums to 0 over the row). ``0 * log 0 = 0``: a zero
target on a ``-inf`` logit contributes nothing; a positive target on a ``-inf`` logit gives an
infinite loss.

``ada_lab_targets`` builds ADA-Lab-style refined targets for adversarial training (see its
docstring); train on them with ``soft_target_cross_entropy``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _backend
from .._backend import resolve
from ._validate import check_float_tensor, check_positive, check_reduction, check_same, check_target, check_target_range

SOFT_CE_REDUCTIONS = ("mean", "batchmean", "sum", "none")


# ---- low-level ops: fake kernels and backend kernels ----------------------------------------------

def soft_ce_fwd_fake(logits, targets, grad_logits, grad_targets, grad_scale):
    """Shapes of ``soft_ce_fwd`` (shared by the C++ op and the Triton op)."""
    loss_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    loss = logits.new_empty((logits.shape[0],), dtype=loss_dtype)
    gz = torch.empty_like(logits) if grad_logits else logits.new_empty((0,))
    gq = torch.empty_like(targets) if grad_targets else targets.new_empty((0,))
    return loss, gz, gq


def ada_lab_targets_fake(logits_adv, logits_aa, target, max_weight, gamma, bias, temperature):
    """Shapes of ``ada_lab_targets`` (shared by the C++ op and the Triton op)."""
    w_dtype = torch.float64 if logits_adv.dtype == torch.float64 else torch.float32
    return torch.empty_like(logits_adv), logits_adv.new_empty((logits_adv.shape[0],), dtype=w_dtype)


if _backend.has_cpp():
    torch.library.register_fake("adkernels::soft_ce_fwd")(soft_ce_fwd_fake)
    torch.library.register_fake("adkernels::ada_lab_targets")(ada_lab_targets_fake)


def _triton_ops():
    from ..triton import soft_ce as triton_soft_ce  # noqa: F401  defines the *_triton ops

    return torch.ops.adkernels.soft_ce_fwd_triton, torch.ops.adkernels.ada_lab_targets_triton


def _soft_ce_kernel(backend: str):
    if backend in ("cpu", "cuda"):
        return torch.ops.adkernels.soft_ce_fwd
    if backend == "triton":
        return _triton_ops()[0]
    raise AssertionError(backend)


def _ada_lab_kernel(backend: str):
    if backend in ("cpu", "cuda"):
        return torch.ops.adkernels.ada_lab_targets
    if backend == "triton":
        return _triton_ops()[1]
    raise AssertionError(backend)


def _check_pair(op, a_name, a, b_name, b):
    check_float_tensor(a_name, a, op)
    check_float_tensor(b_name, b, op)
    check_same(op, a_name, a, b_name, b)
    if a.dim() < 1 or a.shape != b.shape:
        raise ValueError(f"{op}: {a_name} and {b_name} must have the same shape [..., V], got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")


# ---- soft_target_cross_entropy ------------------------------------------------------------------------

class SoftCEFunction(torch.autograd.Function):
    """Autograd over ``soft_ce_fwd`` (or its Triton twin) on [N, V] inputs."""

    @staticmethod
    def forward(ctx, logits, targets, reduction, backend):
        # The reduction's factor (1 / N for a mean: N is known here, no data-dependent count)
        # goes into the kernel, so the usual backward (grad_output = 1) returns the gradient
        # as made, without another pass over [N, V].
        n = logits.shape[0]
        scale = 1.0 / max(n, 1) if reduction in ("mean", "batchmean") else 1.0
        rows, gz, gq = _soft_ce_kernel(backend)(logits, targets, ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                                                scale)
        ctx.save_for_backward(gz, gq)
        ctx.reduction = reduction
        if reduction == "none":
            return rows
        total = rows.sum()
        return total if reduction == "sum" else total * scale

    @staticmethod
    def backward(ctx, grad):
        from ._validate import _graph_is_kept

        gz, gq = ctx.saved_tensors
        scale = grad.unsqueeze(-1) if ctx.reduction == "none" else grad
        keep = _graph_is_kept()
        # grad_output == 1 (loss.backward() on the loss itself): nothing to scale. Eager only:
        # the test reads a value.
        unit = not keep and ctx.reduction != "none" and bool(grad == 1)
        out = []
        for g, need in ((gz, ctx.needs_input_grad[0]), (gq, ctx.needs_input_grad[1])):
            if not need:
                out.append(None)
            elif unit:
                out.append(g)
            elif keep:
                out.append((g * scale).to(g.dtype))
            else:  # the graph is freed after this backward: scale the saved gradient in place
                out.append(g.mul_(scale))
        return out[0], out[1], None, None


def soft_target_cross_entropy(logits: Tensor, soft_targets: Tensor, *, reduction: str = "mean",
                              check_targets: bool = True) -> Tensor:
    r"""Cross entropy against soft targets, fused: ``L_n = -sum_k q_{n,k} log softmax(z_n)_k``.

    Equal to ``-(soft_targets * logits.log_softmax(-1)).sum(-1)`` (and to
    ``F.cross_entropy(logits, soft_targets)`` for float targets), in one pass per row; the
    gradients ``softmax(z) * sum(q) - q`` (logits) and ``lse(z) - z`` (targets, when they require
    grad) are made in the forward.

    Args:
        logits: ``[..., V]`` float32/float64/float16/bfloat16.
        soft_targets: ``[..., V]``, same dtype and device, non-negative. Rows need not sum to 1:
            the formula is applied as is, so a row summing to s counts like s normalized rows
            (use ``q / q.sum(-1, keepdim=True)`` to normalize).
        reduction: ``"mean"`` (over rows; ``"batchmean"`` is the same), ``"sum"`` or ``"none"``
            (per-row losses ``[...]``).
        check_targets: raise a ValueError on negative targets (eager only: the check reads
            values, so it is skipped under ``torch.compile``, where negative targets are simply
            used in the formula).

    Returns:
        float32 loss (float64 for float64 inputs).

    Example:
        >>> import torch, adkernels
        >>> z = torch.randn(4, 10, requires_grad=True)
        >>> q = torch.softmax(torch.randn(4, 10), -1)
        >>> loss = adkernels.soft_target_cross_entropy(z, q)
        >>> torch.allclose(loss, torch.nn.functional.cross_entropy(z, q))
        True
        >>> loss.backward(); z.grad.shape
        torch.Size([4, 10])
    """
    op = "soft_target_cross_entropy"
    _check_pair(op, "logits", logits, "soft_targets", soft_targets)
    if reduction not in SOFT_CE_REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {SOFT_CE_REDUCTIONS}, got {reduction!r}")
    if check_targets and soft_targets.numel() and not torch.compiler.is_compiling():
        # one read-only reduction (no [N, V] mask) unless a negative target is there to locate
        if bool(soft_targets.detach().amin() < 0):
            idx = tuple(int(i) for i in (soft_targets.detach() < 0).nonzero()[0])
            raise ValueError(f"{op}: soft_targets{list(idx)} = {soft_targets[idx].item():.4g} is negative; soft "
                             "targets must be >= 0 (a probability vector per row, or non-negative weights)")
    V = logits.shape[-1]
    leading = logits.shape[:-1]
    n = leading.numel()
    z = logits.reshape(n, V).contiguous()
    q = soft_targets.reshape(n, V).contiguous()
    backend = resolve(z.device)
    if backend == "reference":
        from ..reference.soft_ce import soft_target_cross_entropy as ref

        return ref(logits, soft_targets, reduction=reduction)
    out = SoftCEFunction.apply(z, q, reduction, backend)
    return out.reshape(leading) if reduction == "none" else out


class SoftTargetCrossEntropy(torch.nn.Module):
    """``nn.Module`` form of :func:`soft_target_cross_entropy`.

    >>> import torch, adkernels
    >>> crit = adkernels.SoftTargetCrossEntropy(reduction="sum")
    >>> crit(torch.randn(2, 5), torch.full((2, 5), 0.2)).shape
    torch.Size([])
    """

    def __init__(self, *, reduction: str = "mean"):
        super().__init__()
        check_reduction("SoftTargetCrossEntropy", reduction)
        self.reduction = reduction

    def forward(self, logits, soft_targets):
        return soft_target_cross_entropy(logits, soft_targets, reduction=self.reduction)


# ---- ada_lab_targets --------------------------------------------------------------------------------------

def ada_lab_targets(
    logits_adv: Tensor,
    logits_aa: Tensor,
    target: Tensor,
    *,
    max_weight: float = 0.5,
    gamma: float = 10.0,
    bias: float = 0.0,
    temperature: float = 1.0,
    return_weight: bool = False,
):
    r"""ADA-Lab-style refined soft targets for adversarial training (a reconstruction; see below).

    Per example with label y (one pass over the two logit rows):

        p      = softmax(logits_adv)                       prediction at the adversarial example
        m      = p_y - max_{k != y} p_k                    probabilistic margin, in [-1, 1]
        w      = max_weight * sigmoid(-gamma * (m - bias))
        q      = softmax(logits_aa / temperature)          prediction at the adversary's adversary
        target = (1 - w) * onehot(y) + w * q

    **What this is.** ADA-Lab ("Adversary's adversary can be a good friend: Revisiting labels of
    low-margin examples to reconcile accuracy and robustness", Kim, Jung, Song, Neurocomputing
    672, 2026) is public only as its abstract. The abstract says: (1) margin-based AT reweights
    examples by importance (gradient magnitude) but ignores gradient direction; (2) ADA-Lab
    refines the labels of low-margin adversarial examples with the "adversary's adversary", an
    input that encodes the gradient-descent direction at x_adv; (3) the importance, estimated
    from the distance to the decision boundary, adaptively controls how much the label is
    interpolated. The formulas above are our reconstruction from that and the methods it builds
    on, not the paper's own equations:

    - the margin and the sigmoid weight follow MAIL (Wang et al., "Probabilistic Margins for
      Instance Reweighting in Adversarial Training", NeurIPS 2021): the probabilistic margin
      ``PM = p_y - max_{k != y} p_k`` at x_adv and a weight ``sigmoid(-gamma (PM - bias))`` that
      is large for examples near or across the decision boundary (low margin);
    - the adversary's adversary is a step *back* from x_adv along the descent direction of the
      loss, as the helper example of HAT (Rade and Moosavi-Dezfooli, "Reducing Excessive Margin
      to Achieve a Better Accuracy vs. Robustness Trade-off", ICLR 2022) steps beyond x_adv along
      the ascent direction, here with the opposite sign;
    - the target interpolates the one-hot label with a model prediction, as ADR
      (Wu et al., "Annealing Self-Distillation Rectification Improves Adversarial Training",
      ICLR 2024) interpolates with a (temperature-scaled) teacher's prediction.

    **Forming x_aa** (with ``adkernels.sign_step``; the model in eval mode, no parameter gradients):

        x_aa = Proj(x_adv - step * sign(grad_x CE(f(x_adv), y)))

    i.e. ``sign_step(x_adv, grad, -step, lo=0, hi=1)`` (then, optionally, a projection onto the
    eps-ball around x_nat with ``pgd_step``). Example::

        x_adv = x_adv.detach().requires_grad_()
        logits_adv = model(x_adv)
        grad, = torch.autograd.grad(F.cross_entropy(logits_adv, y), x_adv)
        x_aa = adkernels.sign_step(x_adv.detach(), grad, -2 / 255, lo=0.0, hi=1.0)
        with torch.no_grad():
            q_target = adkernels.ada_lab_targets(logits_adv.detach(), model(x_aa), y)
        loss = adkernels.soft_target_cross_entropy(model(x_adv), q_target)

    Args:
        logits_adv: ``[..., V]`` logits at the adversarial examples x_adv.
        logits_aa: ``[..., V]`` logits at the adversary's adversary x_aa (same dtype, device).
        target: ``[...]`` int64 labels in ``[0, V)``.
        max_weight: the largest share of the label moved to q, in [0, 1]. Default 0.5: the
            true class keeps at least half of the target mass, so the refined label never
            changes the class it names (the ADR-style interpolation keeps the label's argmax),
            while low-margin examples still move up to half of it.
        gamma: slope of the sigmoid (>= 0). Default 10: the weight goes from 0.99 to 0.01 of
            max_weight as the margin crosses a window of about +-0.46 around ``bias``, so
            confidently correct examples (m near 1) get almost no refinement and misclassified
            ones (m < 0) nearly the full ``max_weight``; gamma = 0 gives the constant
            ``max_weight / 2``.
        bias: margin at which the weight is half of max_weight, in [-1, 1]. Default 0: the
            decision boundary at x_adv (m = 0 means the true class ties with the runner-up).
        temperature: T > 0 softening q (T > 1 spreads the helper's prediction, as ADR's
            temperature-scaled teacher). Default 1: the model's own prediction at x_aa.
        return_weight: also return the per-example weight ``w`` (float32; float64 for float64).

    Returns:
        The targets ``[..., V]`` in the logits' dtype (and ``w [...]`` if asked). They carry no
        gradient: the result is detached from both logit tensors (targets are labels, not part
        of the graph), so pass them to :func:`soft_target_cross_entropy` as constants.

    Example:
        >>> import torch, adkernels
        >>> za, zb, y = torch.randn(3, 5), torch.randn(3, 5), torch.tensor([0, 2, 4])
        >>> t = adkernels.ada_lab_targets(za, zb, y)
        >>> torch.allclose(t.sum(-1), torch.ones(3)), bool((t.argmax(-1) == y).all())
        (True, True)
    """
    op = "ada_lab_targets"
    _check_pair(op, "logits_adv", logits_adv, "logits_aa", logits_aa)
    max_weight = float(max_weight)
    if not (0.0 <= max_weight <= 1.0):
        raise ValueError(f"{op}: max_weight must be in [0, 1], got {max_weight}")
    gamma = float(gamma)
    if not (gamma >= 0 and gamma < float("inf")):
        raise ValueError(f"{op}: gamma must be a finite number >= 0, got {gamma}")
    bias = float(bias)
    if not (-1.0 <= bias <= 1.0):
        raise ValueError(f"{op}: bias must be in [-1, 1] (the range of the margin), got {bias}")
    temperature = check_positive(op, "temperature", temperature)
    V = logits_adv.shape[-1]
    leading = logits_adv.shape[:-1]
    if V < 1:
        raise ValueError(f"{op}: the logits need at least one class, got shape {tuple(logits_adv.shape)}")
    check_target(op, target, leading, logits_adv.device)
    n = leading.numel()
    y = target.reshape(n).long().contiguous()
    check_target_range(op, y, V, ignore_index=-(2**62))
    za = logits_adv.detach().reshape(n, V).contiguous()
    zb = logits_aa.detach().reshape(n, V).contiguous()
    backend = resolve(za.device)
    if backend == "reference":
        from ..reference.soft_ce import ada_lab_targets as ref

        return ref(logits_adv.detach(), logits_aa.detach(), target, max_weight=max_weight, gamma=gamma, bias=bias,
                   temperature=temperature, return_weight=return_weight)
    out, w = _ada_lab_kernel(backend)(za, zb, y, max_weight, gamma, bias, temperature)
    out = out.reshape(logits_adv.shape)
    return (out, w.reshape(leading)) if return_weight else out
