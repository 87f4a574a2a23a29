"""Discriminator and adversarial losses: ``discriminator_loss``, ``generator_loss`` (the three-way
discriminator of ADIM, softmax or two-binary "tree"), ``label_conditioned_scores`` and
``binary_adversarial_loss`` (the GAN loss zoo).

Sources are numbered ``REAL = 0``, ``STUDENT = 1``, ``TEACHER = 2``. With the leaves'
log-probabilities ``log D_i`` of a row (softmax over ``[N, 3]``, or from ``[N, 2]`` logits
``(a, b)``: ``log D_r = log s(a)``, ``log D_s = log s(-a) + log s(b)``,
``log D_t = log s(-a) + log s(-b)``):

    discriminator   L = -sum_i w_i mean_{n: source_n = i} log D_i(n)
    generator       minimax  L = +sum_i w_i mean_{n: source_n = i} log D_i(n)        (i = 1, 2)
                    nonsat   L = -sum_i w_i mean_{n: source_n = i} log(1 - D_i(n))

"mean" takes per-source means as Algorithm 1 of the paper does (a source absent from the batch
adds 0); "sum" sums ``w_src * loss_n``; "none" returns those per-row terms. ``log(1 - D_src)`` is
the log-sum-exp of the other two leaves' log-probabilities, stable for any finite logits (no
``log1p(-exp(log D))`` cancellation). The kernels (CPU C++, CUDA, Triton) make the loss and the
gradient of each row in one pass over the logits, already scaled by ``w_src / count_src``
(counts come from a pass over ``source``); backward only multiplies by the incoming gradient.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence

import torch
from torch import Tensor

from .. import _backend
from .._backend import resolve
from ._validate import _graph_is_kept, check_float_tensor, check_same, scale_row_grads

REAL, STUDENT, TEACHER = 0, 1, 2
PARAMETERIZATIONS = {"softmax": 0, "binary_tree": 1}
LOGITS_PER_ROW = {"softmax": 3, "binary_tree": 2}
GEN_MODES = {"minimax": 1, "nonsat": 2}
SOURCE_REDUCTIONS = ("mean", "sum", "none")
KINDS = {"bce": 0, "hinge": 1, "lsgan": 2, "wgan": 3, "relativistic": 4}
SIDES = {"discriminator": 0, "generator": 1, "generator_nonsat": 2}
CHUNK = 4096  # elements per partial sum of adv_binary_fwd (csrc/cpu/adversarial_args.h)
INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


# ---- low-level ops: fake kernels and backend kernels ------------------------------------------

def adv_source_fwd_fake(d_logits, source, w_real, w_student, w_teacher, parameterization, mode,
                        per_source_mean, need_grad):
    """Shapes of ``adv_source_fwd`` (shared by the C++ op and the Triton op)."""
    loss_dtype = torch.float64 if d_logits.dtype == torch.float64 else torch.float32
    rows = d_logits.new_empty((d_logits.shape[0],), dtype=loss_dtype)
    grad = torch.empty_like(d_logits) if need_grad else d_logits.new_empty((0,))
    return rows, grad


def binary_size(real, fake, kind):
    """M, the number of (paired) elements of ``adv_binary_fwd``."""
    if real is None or kind == KINDS["relativistic"]:
        return fake.shape[0]
    return torch.sym_max(real.shape[0], fake.shape[0])


def adv_binary_fwd_fake(real, fake, kind, side, real_label, real_scale, fake_scale, per_element, grad_real,
                        grad_fake):
    """Shapes of ``adv_binary_fwd`` (shared by the C++ op and the Triton op)."""
    loss_dtype = torch.float64 if fake.dtype == torch.float64 else torch.float32
    M = binary_size(real, fake, kind)
    out = fake.new_empty((M if per_element else (M + CHUNK - 1) // CHUNK,), dtype=loss_dtype)
    gr = torch.empty_like(real) if grad_real else fake.new_empty((0,))
    gf = torch.empty_like(fake) if grad_fake else fake.new_empty((0,))
    return out, gr, gf


if _backend.has_cpp():
    torch.library.register_fake("adkernels::adv_source_fwd")(adv_source_fwd_fake)
    torch.library.register_fake("adkernels::adv_binary_fwd")(adv_binary_fwd_fake)


def _kernel(name: str, backend: str):
    if backend in ("cpu", "cuda"):
        return getattr(torch.ops.adkernels, name)
    if backend == "triton":
        from ..triton import adversarial as triton_adversarial  # noqa: F401  defines adkernels::*_triton

        return getattr(torch.ops.adkernels, name + "_triton")
    raise AssertionError(backend)


# ---- validation ---------------------------------------------------------------------------------

def _check_choice(op, name, value, choices):
    if value not in choices:
        raise ValueError(f"{op}: {name} must be one of {tuple(choices)}, got {value!r}")


def _check_weights(op: str, weights) -> tuple:
    if isinstance(weights, Tensor):
        weights = weights.tolist()
    if not isinstance(weights, Sequence) or len(weights) != 3:
        raise ValueError(f"{op}: weights must be three numbers (REAL, STUDENT, TEACHER), got {weights!r}")
    out = []
    for i, w in enumerate(weights):
        if not isinstance(w, numbers.Real) or not math.isfinite(float(w)) or float(w) < 0:
            raise ValueError(
                f"{op}: weights[{i}] must be a finite number >= 0, got {w!r} (a negative weight would turn "
                f"the player's objective around; use the other side's loss instead)"
            )
        out.append(float(w))
    return tuple(out)


def _check_source(op: str, source, leading, device) -> None:
    if not isinstance(source, Tensor):
        raise TypeError(f"{op}: source must be a torch.Tensor of source ids (0 REAL, 1 STUDENT, 2 TEACHER), "
                        f"got {type(source).__name__}")
    if source.dtype not in INT_DTYPES:
        raise TypeError(f"{op}: source must hold integer source ids (int64), got {source.dtype}")
    if source.shape != leading:
        raise ValueError(f"{op}: source must have d_logits' leading shape {tuple(leading)}, got {tuple(source.shape)}")
    if source.device != device:
        raise ValueError(f"{op}: source is on {source.device} but d_logits is on {device}; move them to one device")


def _check_source_values(op: str, source: Tensor, generator: bool) -> None:
    """Eager-only (reads values): every source id is valid. The CPU kernel checks on its own."""
    if source.numel() == 0 or torch.compiler.is_compiling():
        return
    lo = 1 if generator else 0
    bad = (source < lo) | (source > 2)
    if bool(bad.any()):
        idx = int(bad.nonzero()[0, 0])
        v = int(source[idx])
        if generator and v == 0:
            raise ValueError(f"generator_loss: source[{idx}] = 0 (REAL): generator rows must be 1 (STUDENT) or "
                             f"2 (TEACHER); real rows belong in discriminator_loss")
        raise ValueError(f"source[{idx}] = {v} is not a source: use 0 (REAL), 1 (STUDENT) or 2 (TEACHER)")


def _prepare_source(op, d_logits, source, weights, parameterization, reduction):
    check_float_tensor("d_logits", d_logits, op)
    _check_choice(op, "parameterization", parameterization, PARAMETERIZATIONS)
    _check_choice(op, "reduction", reduction, SOURCE_REDUCTIONS)
    K = LOGITS_PER_ROW[parameterization]
    if d_logits.dim() < 1 or d_logits.shape[-1] != K:
        other = "binary_tree" if parameterization == "softmax" else "softmax"
        raise ValueError(
            f"{op}: parameterization={parameterization!r} needs d_logits of shape [N, {K}], got "
            f"{tuple(d_logits.shape)} (a last dimension of {LOGITS_PER_ROW[other]} is parameterization={other!r})"
        )
    leading = d_logits.shape[:-1]
    _check_source(op, source, leading, d_logits.device)
    weights = _check_weights(op, weights)
    return K, leading, weights


class SourceLossFunction(torch.autograd.Function):
    """Autograd over ``adv_source_fwd`` (or its Triton twin): gradient made in the forward."""

    @staticmethod
    def forward(ctx, d_logits, source, w_real, w_student, w_teacher, param, mode, reduction, backend):
        rows, g = _kernel("adv_source_fwd", backend)(
            d_logits, source, w_real, w_student, w_teacher, param, mode, reduction == "mean",
            ctx.needs_input_grad[0],
        )
        ctx.save_for_backward(g)
        ctx.reduction = reduction
        return rows if reduction == "none" else rows.sum()

    @staticmethod
    def backward(ctx, grad):
        (g,) = ctx.saved_tensors
        dz = None
        if ctx.needs_input_grad[0]:
            dz = _scale(grad, g, ctx.reduction)
        return dz, None, None, None, None, None, None, None, None


def _scale(grad: Tensor, g: Tensor, reduction: str) -> Tensor:
    """The saved per-row gradient times the incoming gradient (nothing to do when that is a CPU 1.0
    and the graph is freed: the loss was the last layer)."""
    if (reduction != "none" and grad.device.type == "cpu" and not torch.compiler.is_compiling()
            and not _graph_is_kept() and float(grad) == 1.0):
        return g
    (out,) = scale_row_grads(grad, None, "none" if reduction == "none" else "sum", g)
    return out


def _source_loss(op, d_logits, source, *, mode, weights, parameterization, reduction):
    K, leading, weights = _prepare_source(op, d_logits, source, weights, parameterization, reduction)
    z = d_logits.reshape(-1, K).contiguous()
    src = source.reshape(-1).long().contiguous()
    backend = resolve(z.device)
    if backend != "cpu":  # the CPU kernel checks source values itself (also under torch.compile)
        _check_source_values(op, src, generator=mode != 0)
    if backend == "reference":
        from ..reference import adversarial as ref

        if mode == 0:
            out = ref.discriminator_loss(z, src, weights=weights, parameterization=parameterization,
                                         reduction=reduction)
        else:
            out = ref.generator_loss(z, src, mode="minimax" if mode == 1 else "nonsat", weights=weights,
                                     parameterization=parameterization, reduction=reduction)
    else:
        out = SourceLossFunction.apply(z, src, *weights, PARAMETERIZATIONS[parameterization], mode, reduction,
                                       backend)
    return out.reshape(leading) if reduction == "none" else out


def discriminator_loss(
    d_logits: Tensor,
    source: Tensor,
    *,
    weights: Sequence[float] = (1.0, 1.0, 1.0),
    parameterization: str = "softmax",
    reduction: str = "mean",
) -> Tensor:
    r"""Loss of the three-way discriminator of ADIM: ``-sum_i w_i mean_{n: source_n = i} log D_i(n)``.

    Args:
        d_logits: ``[..., 3]`` (``parameterization="softmax"``) or ``[..., 2]`` (``"binary_tree"``:
            logit ``a`` for real-vs-fake and ``b`` for student-vs-teacher, the paper's two binary
            discriminators; ``D_r = s(a)``, ``D_s = s(-a) s(b)``, ``D_t = s(-a) s(-b)``).
            float32/float64/float16/bfloat16.
        source: ``[...]`` integer ids, ``REAL = 0``, ``STUDENT = 1``, ``TEACHER = 2``, for the labels
            the discriminator scored (real labels, the student's or the teacher's samples).
        weights: ``(w_real, w_student, w_teacher)``, finite and >= 0 (lambda_r, lambda_s, lambda_t).
        parameterization: ``"softmax"`` or ``"binary_tree"``.
        reduction: ``"mean"`` (per-source means, summed: Algorithm 1; an absent source adds 0),
            ``"sum"`` (``sum_n w_src log ...``) or ``"none"`` (per-row ``-w_src log D_src``).

    Returns:
        float32 loss (float64 for float64 input); gradients to ``d_logits``.

    Example:
        >>> import torch, adkernels
        >>> z = torch.randn(6, 3, requires_grad=True)
        >>> src = torch.tensor([adkernels.REAL, adkernels.STUDENT, adkernels.TEACHER, 0, 1, 2])
        >>> loss = adkernels.discriminator_loss(z, src, weights=(1.0, 0.5, 0.5))
        >>> loss.backward()
        >>> z.grad.shape
        torch.Size([6, 3])
    """
    return _source_loss("discriminator_loss", d_logits, source, mode=0, weights=weights,
                        parameterization=parameterization, reduction=reduction)


def generator_loss(
    d_logits: Tensor,
    source: Tensor,
    *,
    mode: str = "minimax",
    weights: Sequence[float] = (1.0, 1.0, 1.0),
    parameterization: str = "softmax",
    reduction: str = "mean",
) -> Tensor:
    r"""Generator (student / teacher) side of the three-way game.

    ``minimax``: ``sum_i w_i mean_{n: source_n = i} log D_i(n)`` (the generator minimizes the
    discriminator's objective, as in Algorithm 1); ``nonsat``: ``-sum_i w_i mean log(1 - D_i(n))``,
    the non-saturating variant, with ``log(1 - D_src)`` computed as the log-sum-exp of the other
    leaves. Rows must come from the student (1) or the teacher (2); a REAL (0) row is an error.
    Arguments as :func:`discriminator_loss` (``weights[0]`` is unused).

    Example:
        >>> import torch, adkernels
        >>> z = torch.randn(4, 2, requires_grad=True)
        >>> src = torch.tensor([1, 1, 2, 2])
        >>> adkernels.generator_loss(z, src, mode="nonsat", parameterization="binary_tree").backward()
        >>> z.grad.shape
        torch.Size([4, 2])
    """
    _check_choice("generator_loss", "mode", mode, GEN_MODES)
    return _source_loss("generator_loss", d_logits, source, mode=GEN_MODES[mode], weights=weights,
                        parameterization=parameterization, reduction=reduction)


# ---- label-conditioned scores -------------------------------------------------------------------

def label_conditioned_scores(d_label_logits: Tensor, labels: Tensor) -> Tensor:
    r"""``scores[n, k] = sum_c labels[n, c] * d_label_logits[n, c, k]``: a discriminator's per-label
    source logits ``[N, C, K]`` contracted with a (soft, e.g. Gumbel-Softmax) label vector ``[N, C]``,
    so a sampled label is scored by D with gradients to both.

    No custom kernel: this is a batched matrix-vector product (``torch.bmm`` of ``[N, 1, C]`` by
    ``[N, C, K]``), which BLAS already does in one pass over ``d_label_logits``; its backward is two
    more batched products. Measured on the 2-core CPU (busy): forward at N = 4096, C = 10 / 1000 and
    N = 512, C = 32000 (K = 3) took 1.0-1.4x the time of copying ``d_label_logits`` once (the floor of
    any kernel that reads it), while ``(labels[..., None] * d).sum(1)`` took 2-4x. A fused version
    pays off only inside a larger fused step (``adversarial_distillation_loss``).

    Args:
        d_label_logits: ``[N, C, K]`` float tensor (K = 3 for softmax, 2 for binary_tree scores).
        labels: ``[N, C]``, same dtype and device (one-hot or soft labels).

    Returns:
        ``[N, K]`` in the input dtype.

    Example:
        >>> import torch, adkernels
        >>> d = torch.randn(4, 10, 3); y = torch.softmax(torch.randn(4, 10), -1)
        >>> adkernels.label_conditioned_scores(d, y).shape
        torch.Size([4, 3])
    """
    op = "label_conditioned_scores"
    check_float_tensor("d_label_logits", d_label_logits, op)
    check_float_tensor("labels", labels, op)
    check_same(op, "d_label_logits", d_label_logits, "labels", labels)
    if d_label_logits.dim() != 3:
        raise ValueError(f"{op}: d_label_logits must be [N, C, K], got {tuple(d_label_logits.shape)}")
    N, C, _ = d_label_logits.shape
    if tuple(labels.shape) != (N, C):
        raise ValueError(f"{op}: labels must be [N, C] = [{N}, {C}] to match d_label_logits "
                         f"{tuple(d_label_logits.shape)}, got {tuple(labels.shape)}")
    return torch.bmm(labels.unsqueeze(1), d_label_logits).squeeze(1)


# ---- binary (real vs fake) losses ---------------------------------------------------------------

class BinaryLossFunction(torch.autograd.Function):
    """Autograd over ``adv_binary_fwd`` (or its Triton twin): gradients made in the forward."""

    @staticmethod
    def forward(ctx, real, fake, kind, side, real_label, real_scale, fake_scale, per_element, backend):
        need_r = real is not None and ctx.needs_input_grad[0]
        out, gr, gf = _kernel("adv_binary_fwd", backend)(
            real, fake, kind, side, real_label, real_scale, fake_scale, per_element, need_r,
            ctx.needs_input_grad[1],
        )
        ctx.save_for_backward(gr, gf)
        ctx.per_element = per_element
        return out if per_element else out.sum()

    @staticmethod
    def backward(ctx, grad):
        gr, gf = ctx.saved_tensors
        red = "none" if ctx.per_element else "sum"
        dr = _scale_flat(grad, gr, red) if ctx.needs_input_grad[0] else None
        df = _scale_flat(grad, gf, red) if ctx.needs_input_grad[1] else None
        return dr, df, None, None, None, None, None, None, None


def _scale_flat(grad, g, reduction):
    if reduction == "none":
        return g * grad if _graph_is_kept() else g.mul_(grad)
    return _scale(grad, g, reduction)


def binary_adversarial_loss(
    real_scores: Optional[Tensor],
    fake_scores: Tensor,
    *,
    kind: str = "bce",
    side: str = "discriminator",
    real_label: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    r"""GAN losses on raw discriminator scores (logits), fused: one pass, gradients made in it.

    With ``sp = softplus``, ``s = sigmoid``, ``r`` real and ``f`` fake scores, ``y = real_label``:

    ============  ==========================================  ===========================
    kind          discriminator                               generator
    ============  ==========================================  ===========================
    bce           ``y sp(-r) + (1-y) sp(r)`` + ``sp(f)``      ``-sp(f)`` = log(1 - D(G))
                  (= BCE(r, y) + BCE(f, 0))                   nonsat: ``sp(-f)`` = -log D(G)
    hinge         ``relu(1 - r)`` + ``relu(1 + f)``           ``-f``
    lsgan         ``(r - y)^2 / 2`` + ``f^2 / 2``             ``(f - 1)^2 / 2``
    wgan          ``-r`` + ``f``                              ``-f``
    relativistic  ``y sp(-(r-f)) + (1-y) sp(r-f)``            ``sp(r - f)`` = -log s(f - r)
    ============  ==========================================  ===========================

    ``side="generator_nonsat"`` exists for bce only (the other generator losses do not saturate).

    Args:
        real_scores: scores of real samples, any shape; may be None for the generator side of
            non-relativistic kinds (unused there). Relativistic (RSGAN) pairs rows: same shape as
            ``fake_scores``.
        fake_scores: scores of generated samples, any shape, same dtype and device.
        kind, side: as the table.
        real_label: target of real samples in (0, 1]; below 1 is one-sided label smoothing
            (discriminator side of bce, lsgan, relativistic only).
        reduction: ``"mean"`` (mean of the real terms + mean of the fake terms; pairs: one mean),
            ``"sum"``, or ``"none"`` (per-element real term + fake term, shapes must match; for
            generator sides the fake terms) in ``fake_scores``' shape.

    Returns:
        float32 loss (float64 for float64 input); gradients to whichever scores require them.

    Example:
        >>> import torch, adkernels
        >>> r = torch.randn(8, requires_grad=True); f = torch.randn(8, requires_grad=True)
        >>> adkernels.binary_adversarial_loss(r, f, kind="hinge").backward()
        >>> adkernels.binary_adversarial_loss(None, f, side="generator_nonsat").shape
        torch.Size([])
    """
    op = "binary_adversarial_loss"
    _check_choice(op, "kind", kind, KINDS)
    _check_choice(op, "side", side, SIDES)
    _check_choice(op, "reduction", reduction, SOURCE_REDUCTIONS)
    if side == "generator_nonsat" and kind != "bce":
        raise ValueError(f"{op}: side='generator_nonsat' exists for kind='bce' only; {kind!r} generators use "
                         f"side='generator'")
    real_label = float(real_label)
    if not (math.isfinite(real_label) and 0 < real_label <= 1):
        raise ValueError(f"{op}: real_label must be in (0, 1], got {real_label}")
    if real_label != 1.0 and (side != "discriminator" or kind not in ("bce", "lsgan", "relativistic")):
        raise ValueError(f"{op}: real_label < 1 (one-sided label smoothing) applies to the discriminator side of "
                         f"bce, lsgan and relativistic only, got kind={kind!r}, side={side!r}")
    check_float_tensor("fake_scores", fake_scores, op)
    uses_real = side == "discriminator" or kind == "relativistic"
    if real_scores is None:
        if uses_real:
            raise ValueError(f"{op}: kind={kind!r}, side={side!r} needs real_scores")
    else:
        check_float_tensor("real_scores", real_scores, op)
        check_same(op, "real_scores", real_scores, "fake_scores", fake_scores)
        paired = kind == "relativistic" or (reduction == "none" and uses_real)
        if paired and real_scores.shape != fake_scores.shape:
            why = "relativistic pairs real and fake rows" if kind == "relativistic" else "reduction='none' adds them"
            raise ValueError(f"{op}: real_scores and fake_scores must have the same shape ({why}), got "
                             f"{tuple(real_scores.shape)} and {tuple(fake_scores.shape)}")
    real = real_scores if uses_real else None
    backend = resolve(fake_scores.device)
    if backend == "reference":
        from ..reference.adversarial import binary_adversarial_loss as ref

        return ref(real, fake_scores, kind=kind, side=side, real_label=real_label, reduction=reduction)
    f = fake_scores.reshape(-1).contiguous()
    r = None if real is None else real.reshape(-1).contiguous()
    mean = reduction == "mean"
    fs = 1.0 / max(f.shape[0], 1) if mean else 1.0
    rs = 1.0 / max(r.shape[0], 1) if (mean and r is not None) else 1.0
    out = BinaryLossFunction.apply(r, f, KINDS[kind], SIDES[side], real_label, rs, fs, reduction == "none", backend)
    return out.reshape(fake_scores.shape) if reduction == "none" else out


# ---- the ADIM student / teacher step ------------------------------------------------------------

def adv_distill_fwd_fake(gen, other, d, source, tau, seed_offset, hard, w_real, w_student, w_teacher,
                         parameterization, mode, per_source_mean, kd_weight, temperature, divergence, grad_gen,
                         grad_other, grad_d):
    """Shapes of ``adv_distill_fwd`` (shared by the C++ op and the Triton op)."""
    loss_dtype = torch.float64 if gen.dtype == torch.float64 else torch.float32
    rows = gen.new_empty((gen.shape[0],), dtype=loss_dtype)
    gg = torch.empty_like(gen) if grad_gen else gen.new_empty((0,))
    go = torch.empty_like(other) if grad_other else gen.new_empty((0,))
    gd = torch.empty_like(d) if grad_d else gen.new_empty((0,))
    return rows, gg, go, gd


if _backend.has_cpp() and hasattr(torch.ops.adkernels, "adv_distill_fwd"):
    torch.library.register_fake("adkernels::adv_distill_fwd")(adv_distill_fwd_fake)


class DistillFunction(torch.autograd.Function):
    """Autograd over ``adv_distill_fwd`` (or its Triton twin): all gradients made in the forward
    pass, scaled in backward by the incoming gradient."""

    @staticmethod
    def forward(ctx, gen, other, d, source, tau, seed_offset, hard, weights, param, mode, per_source_mean,
                kd_weight, temperature, divergence, backend):
        need = ctx.needs_input_grad
        rows, gg, go, gd = _kernel("adv_distill_fwd", backend)(
            gen, other, d, source, tau, seed_offset, hard, *weights, param, mode, per_source_mean, kd_weight,
            temperature, divergence, need[0], need[1], need[2],
        )
        ctx.save_for_backward(gg, go, gd)
        return rows.sum()

    @staticmethod
    def backward(ctx, grad):
        gg, go, gd = ctx.saved_tensors
        need = ctx.needs_input_grad
        out = [_scale(grad, g, "sum") if need[i] else None for i, g in enumerate((gg, go, gd))]
        return (*out, *([None] * 12))


def adversarial_distillation_loss(
    gen_logits: Tensor,
    other_logits: Tensor,
    d_label_logits: Tensor,
    source: Tensor,
    *,
    tau,
    hard: bool = False,
    weights: Sequence[float] = (1.0, 1.0, 1.0),
    kd_weight: float = 1.0,
    temperature: float = 1.0,
    generator: Optional[torch.Generator] = None,
    mode: str = "minimax",
    parameterization: str = "softmax",
    reduction: str = "mean",
    divergence: str = "kl",
) -> Tensor:
    r"""The student (or teacher) step of ADIM (Algorithm 1 with the Gumbel-Softmax trick), fused:

    ``y = gumbel_softmax(gen_logits, tau, hard)`` over the label dimension C,
    ``s = label_conditioned_scores(d_label_logits, y)`` (D scores the sampled label),
    ``L = generator_loss(s, source, mode, weights, parameterization, reduction)
    + kd_weight * kd_loss(gen_logits, other_logits, temperature, divergence)``.

    One kernel (CPU C++, CUDA, Triton) makes, per row, the Gumbel noise inside it (the stream of
    :func:`gumbel_softmax`: the same ``(seed, offset)`` pair is drawn from ``generator`` once, so
    this op and that composition see the same noise), the sample, D's scores, the three-way
    generator loss, the KD term and every gradient (to ``gen_logits``, ``d_label_logits`` and,
    when it requires one, ``other_logits``), without an ``[N, C]`` sample or an ``[N, C, K]``
    product in memory. Its value and gradients equal the composition (tested).
    ``reduction="none"`` and a ``d_label_logits`` dtype other than ``gen_logits``' run the
    composition of the separate ops instead (same result).

    Args:
        gen_logits: ``[N, C]`` logits of the player being trained (student or teacher).
        other_logits: ``[N, C]`` logits of the other player (the KD target; it gets a gradient if
            it requires one), same dtype and device.
        d_label_logits: ``[N, C, K]`` the discriminator's per-label source logits (K = 3 softmax,
            2 binary_tree).
        source: ``[N]`` ids of the player being trained, 1 (STUDENT) or 2 (TEACHER).
        tau: Gumbel-Softmax temperature > 0, a number or a one-element tensor (see
            :func:`temperature_schedule`; a tensor does not recompile under torch.compile).
        hard: straight-through one-hot samples (D scores the one-hot; gradients flow through the
            soft sample).
        weights, mode, parameterization, reduction: as :func:`generator_loss`.
        kd_weight, temperature, divergence: weight (>= 0; 0 drops the term), temperature and
            divergence of the KD term (``kd_loss`` with ``reduction="batchmean"``; jsd with beta 0.5).
        generator: torch.Generator for the noise (default: torch's default generator).

    Example:
        >>> import torch, adkernels
        >>> s = torch.randn(4, 10, requires_grad=True); t = torch.randn(4, 10)
        >>> d = torch.randn(4, 10, 3, requires_grad=True)
        >>> src = torch.full((4,), adkernels.STUDENT)
        >>> loss = adkernels.adversarial_distillation_loss(s, t, d, src, tau=1.0, kd_weight=0.5)
        >>> loss.backward()
        >>> s.grad.shape, d.grad.shape
        (torch.Size([4, 10]), torch.Size([4, 10, 3]))
    """
    op = "adversarial_distillation_loss"
    check_float_tensor("gen_logits", gen_logits, op)
    if gen_logits.dim() != 2:
        raise ValueError(f"{op}: gen_logits must be [N, C], got {tuple(gen_logits.shape)}")
    check_float_tensor("other_logits", other_logits, op)
    check_same(op, "gen_logits", gen_logits, "other_logits", other_logits)
    if other_logits.shape != gen_logits.shape:
        raise ValueError(f"{op}: other_logits must have gen_logits' shape {tuple(gen_logits.shape)}, got "
                         f"{tuple(other_logits.shape)}")
    check_float_tensor("d_label_logits", d_label_logits, op)
    _check_choice(op, "parameterization", parameterization, PARAMETERIZATIONS)
    _check_choice(op, "mode", mode, GEN_MODES)
    _check_choice(op, "reduction", reduction, SOURCE_REDUCTIONS)
    from .kd import DIVERGENCES

    _check_choice(op, "divergence", divergence, DIVERGENCES)
    K = LOGITS_PER_ROW[parameterization]
    N, C = gen_logits.shape
    if d_label_logits.dim() != 3 or tuple(d_label_logits.shape) != (N, C, K):
        raise ValueError(f"{op}: d_label_logits must be [N, C, {K}] = [{N}, {C}, {K}] for "
                         f"parameterization={parameterization!r}, got {tuple(d_label_logits.shape)}")
    if d_label_logits.device != gen_logits.device:
        raise ValueError(f"{op}: d_label_logits is on {d_label_logits.device} but gen_logits is on "
                         f"{gen_logits.device}; move them to one device")
    _check_source(op, source, gen_logits.shape[:1], gen_logits.device)
    weights = _check_weights(op, weights)
    kd_weight = float(kd_weight)
    if not (math.isfinite(kd_weight) and kd_weight >= 0):
        raise ValueError(f"{op}: kd_weight must be a finite number >= 0, got {kd_weight}")
    temperature = float(temperature)
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"{op}: temperature must be a finite number > 0, got {temperature}")
    if not isinstance(hard, bool):
        raise TypeError(f"{op}: hard must be a bool, got {type(hard).__name__}")
    if C == 0:
        raise ValueError(f"{op}: gen_logits has no labels (C = 0); a Gumbel-Softmax sample needs C >= 1")
    from .gumbel import _tau_tensor, draw_seed_offset

    acc = torch.float64 if gen_logits.dtype == torch.float64 else torch.float32
    tau_t = _tau_tensor(op, tau, gen_logits, acc)
    if reduction == "none" or d_label_logits.dtype != gen_logits.dtype:
        return _composition(gen_logits, other_logits, d_label_logits, source, tau_t, hard, weights, kd_weight,
                            temperature, generator, mode, parameterization, reduction, divergence)
    src = source.reshape(-1).long().contiguous()
    backend = resolve(gen_logits.device)
    if backend != "cpu":  # the CPU kernel checks source values itself (also under torch.compile)
        _check_source_values(op, src, generator=True)
    seed_offset = draw_seed_offset(op, generator, gen_logits.device)
    if backend == "reference":
        from ..reference.adversarial import adversarial_distillation_loss as ref

        out = ref(gen_logits, other_logits, d_label_logits, src, seed_offset, tau=tau_t, hard=hard, weights=weights,
                  kd_weight=kd_weight, temperature=temperature, mode=mode, parameterization=parameterization,
                  reduction=reduction, divergence=divergence)
        return out
    return DistillFunction.apply(
        gen_logits.contiguous(), other_logits.contiguous(), d_label_logits.contiguous(), src, tau_t, seed_offset,
        hard, weights, PARAMETERIZATIONS[parameterization], GEN_MODES[mode], reduction == "mean", kd_weight,
        temperature, DIVERGENCES[divergence], backend,
    )


def _composition(gen_logits, other_logits, d_label_logits, source, tau, hard, weights, kd_weight, temperature,
                 generator, mode, parameterization, reduction, divergence):
    """The unfused form: the public ops one after the other (same noise as the fused kernel)."""
    from .gumbel import gumbel_softmax
    from .kd import kd_loss

    y = gumbel_softmax(gen_logits, tau, hard, -1, generator=generator)
    scores = label_conditioned_scores(d_label_logits, y.to(d_label_logits.dtype))
    adv = generator_loss(scores, source, mode=mode, weights=weights, parameterization=parameterization,
                         reduction=reduction)
    if kd_weight == 0:
        return adv
    kd = kd_loss(gen_logits, other_logits, temperature=temperature, divergence=divergence)
    return adv + kd_weight * kd
