"""Gumbel-Softmax and the counter-based random stream of adkernels' random ops.

Random ops (``gumbel_softmax``, ``random_start``) make their noise inside the kernel from a
Philox stream keyed by ``seed_offset`` = int64[2] ``(seed, offset)``, drawn at each call by
:func:`draw_seed_offset` from the generator (torch's default generator of the tensors' device
when None) as ``torch.randint(0, 2**62, (2,))``: ``torch.manual_seed`` reproduces results and
successive calls draw new pairs. Element ``e`` uses lane ``e % 4`` of Philox4x32-10 at counter
``offset + e // 4`` (Triton's ``tl.randint4x``), mapped to ``u`` strictly inside (0, 1) (see
csrc/include/adkernels/philox.h); every backend draws the same ``u`` for the same
(seed, offset, element).
"""
from __future__ import annotations

from typing import Optional

import torch

SEED_BOUND = 2 ** 62


def draw_seed_offset(op: str, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    """A fresh ``(seed, offset)`` int64[2] tensor on ``device`` from ``generator`` (or torch's
    default generator of ``device``); it never leaves the device, so drawing it does not sync."""
    if generator is None:
        return torch.randint(0, SEED_BOUND, (2,), dtype=torch.int64, device=device)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{op}: generator must be a torch.Generator or None, got {type(generator).__name__}")
    so = torch.randint(0, SEED_BOUND, (2,), dtype=torch.int64, device=generator.device, generator=generator)
    return so.to(device)


# ---- gumbel_softmax ----------------------------------------------------------------------------

import math  # noqa: E402
import numbers  # noqa: E402
from typing import Union  # noqa: E402

from torch import Tensor  # noqa: E402

from .. import _backend  # noqa: E402
from .._backend import resolve  # noqa: E402
from ._validate import check_float_tensor  # noqa: E402


def gumbel_softmax_fwd_fake(logits, tau, seed_offset, hard, save_soft):
    y = torch.empty_like(logits)
    y_soft = torch.empty_like(logits) if hard and save_soft else logits.new_empty((0,))
    return y, y_soft


def gumbel_softmax_bwd_fake(y, grad_y, tau):
    return torch.empty_like(y)


if _backend.has_cpp() and hasattr(torch.ops.adkernels, "gumbel_softmax_fwd"):
    torch.library.register_fake("adkernels::gumbel_softmax_fwd")(gumbel_softmax_fwd_fake)
    torch.library.register_fake("adkernels::gumbel_softmax_bwd")(gumbel_softmax_bwd_fake)


def _kernels(backend: str):
    if backend in ("cpu", "cuda"):
        return torch.ops.adkernels.gumbel_softmax_fwd, torch.ops.adkernels.gumbel_softmax_bwd
    if backend == "triton":
        from ..triton import gumbel as triton_gumbel  # noqa: F401  defines adkernels::gumbel_softmax_*_triton

        return torch.ops.adkernels.gumbel_softmax_fwd_triton, torch.ops.adkernels.gumbel_softmax_bwd_triton
    raise AssertionError(backend)


class GumbelSoftmaxFunction(torch.autograd.Function):
    """Autograd over ``gumbel_softmax_fwd`` / ``_bwd`` on [N, V] logits (the custom ops are what
    torch.compile sees). Backward uses only the saved soft y and tau."""

    @staticmethod
    def forward(ctx, logits, tau, seed_offset, hard, backend):
        fwd, _ = _kernels(backend)
        need = ctx.needs_input_grad[0]
        y, y_soft = fwd(logits, tau, seed_offset, hard, need)
        ctx.save_for_backward(y_soft if hard else y, tau)
        ctx.backend = backend
        return y

    @staticmethod
    def backward(ctx, grad_y):
        y, tau = ctx.saved_tensors
        _, bwd = _kernels(ctx.backend)
        return bwd(y, grad_y.contiguous(), tau), None, None, None, None


def _tau_tensor(op: str, tau, logits: Tensor, acc: torch.dtype) -> Tensor:
    """tau as a 0-dim tensor of the compute dtype on the logits' device. A tensor tau is used as
    data (a new value under torch.compile does not recompile); it gets no gradient."""
    if isinstance(tau, Tensor):
        if tau.numel() != 1 or not tau.dtype.is_floating_point:
            raise ValueError(f"{op}: tau must be a number or a one-element floating tensor, got "
                             f"{tuple(tau.shape)} {tau.dtype}")
        if not torch.compiler.is_compiling() and tau.device.type != "meta":
            v = float(tau.detach().reshape(()).item())
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{op}: tau must be finite and > 0, got {v}")
        return tau.detach().reshape(()).to(device=logits.device, dtype=acc)
    if not isinstance(tau, numbers.Real) or isinstance(tau, bool):
        raise TypeError(f"{op}: tau must be a number or a one-element tensor, got {type(tau).__name__}")
    v = float(tau)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{op}: tau must be finite and > 0, got {v} (a temperature schedule should stay "
                         "above 0: see temperature_schedule)")
    return torch.full((), v, dtype=acc, device=logits.device)


def gumbel_softmax(logits: Tensor, tau: Union[float, Tensor] = 1.0, hard: bool = False, dim: int = -1, *,
                   generator: Optional[torch.Generator] = None) -> Tensor:
    r"""Gumbel-Softmax (concrete) sample, a drop-in for ``torch.nn.functional.gumbel_softmax``.

    ``y = softmax((logits + g) / tau)`` along ``dim`` with ``g = -log(-log u)``, ``u`` strictly
    inside (0, 1) from a counter-based Philox stream made inside the kernel (no noise tensor in
    memory); never inf or NaN for finite logits. ``hard=True``: the forward value is the one-hot
    of the (first) argmax of ``(logits + g) / tau``, the gradient is the soft y's
    (straight-through). Backward: ``dlogits = y * (dy - sum(dy * y)) / tau`` from the saved soft
    y.

    Randomness: each call draws ``(seed, offset)`` from ``generator`` (torch's default generator
    of the logits' device when None), so ``torch.manual_seed`` reproduces a sample and successive
    calls differ; the noise of an element is that of its row-major index in
    ``logits.movedim(dim, -1)`` (csrc/include/adkernels/philox.h), identical on every backend.
    The samples differ from torch's (another generator), not their distribution.

    Args:
        logits: ``[..., V, ...]`` float32 / float64 / float16 / bfloat16 (computed in float32,
            float64 for float64).
        tau: temperature > 0, a number or a one-element tensor (a tensor is read as data, so a
            schedule under torch.compile does not recompile; it gets no gradient).
        hard: straight-through one-hot samples.
        dim: the category dimension.
        generator: a ``torch.Generator`` to draw the stream's (seed, offset) from.

    Returns:
        a tensor of logits' shape and dtype.

    Example:
        >>> import torch, adkernels
        >>> logits = torch.randn(2, 5, requires_grad=True)
        >>> y = adkernels.gumbel_softmax(logits, tau=0.5, hard=True)
        >>> y.sum(dim=-1)
        tensor([1., 1.], grad_fn=<SumBackward1>)
        >>> (y * torch.arange(5.0)).sum().backward(); logits.grad.shape
        torch.Size([2, 5])
    """
    op = "gumbel_softmax"
    check_float_tensor("logits", logits, op)
    if not isinstance(hard, bool):
        raise TypeError(f"{op}: hard must be a bool, got {type(hard).__name__}")
    if logits.dim() == 0:
        return gumbel_softmax(logits.reshape(1), tau, hard, 0, generator=generator).reshape(())
    if not isinstance(dim, int) or not -logits.dim() <= dim < logits.dim():
        raise ValueError(f"{op}: dim must be an int in [{-logits.dim()}, {logits.dim() - 1}], got {dim!r}")
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    tau_t = _tau_tensor(op, tau, logits, acc)
    seed_offset = draw_seed_offset(op, generator, logits.device)
    backend = resolve(logits.device, implemented=("cuda", "triton", "cpu", "reference"))
    if backend == "reference":
        from ..reference.gumbel import gumbel_softmax as ref

        return ref(logits, seed_offset, tau_t, hard, dim)
    x = logits.movedim(dim, -1)
    shape = x.shape
    V = shape[-1]
    x2 = x.reshape(math.prod(shape[:-1]), V).contiguous()
    y = GumbelSoftmaxFunction.apply(x2, tau_t, seed_offset, hard, backend)
    return y.reshape(shape).movedim(-1, dim)


def temperature_schedule(step, total, start: float = 10.0, end: float = 0.1):
    r"""Exponentially annealed Gumbel-Softmax temperature (KDGAN: 10 -> 0.1).

    ``tau(step) = start * (end / start) ** (clamp(step, 0, total) / total)``: ``start`` at step 0,
    ``end`` from step ``total`` on, a constant factor per step in between (geometric
    interpolation). ``step`` may be a number (returns a float) or a tensor (returns a tensor of
    its shape, float32 unless step is float64): pass the tensor to :func:`gumbel_softmax` so a
    compiled training step does not recompile as tau changes.

    Example:
        >>> import adkernels
        >>> [round(adkernels.temperature_schedule(s, 100), 4) for s in (0, 50, 100, 200)]
        [10.0, 1.0, 0.1, 0.1]
    """
    op = "temperature_schedule"
    for name, v in (("start", start), ("end", end)):
        if not isinstance(v, numbers.Real) or not (math.isfinite(float(v)) and float(v) > 0):
            raise ValueError(f"{op}: {name} must be a finite number > 0, got {v!r}")
    if not isinstance(total, numbers.Real) or isinstance(total, bool) or not (math.isfinite(total) and total > 0):
        raise ValueError(f"{op}: total must be a finite number > 0 (steps of the annealing), got {total!r}")
    ratio = float(end) / float(start)
    if isinstance(step, Tensor):
        dt = step.dtype if step.dtype == torch.float64 else torch.float32
        frac = step.to(dt).clamp(0, total) / total
        return float(start) * torch.pow(torch.tensor(ratio, dtype=dt, device=step.device), frac)
    if not isinstance(step, numbers.Real) or isinstance(step, bool):
        raise TypeError(f"{op}: step must be a number or a tensor, got {type(step).__name__}")
    frac = min(max(float(step), 0.0), float(total)) / float(total)
    return float(start) * ratio ** frac
