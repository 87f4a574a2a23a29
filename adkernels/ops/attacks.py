"""Fused adversarial-example steps: ``sign_step`` (FGSM) and ``pgd_step`` (linf / l2), with
in-place forms ``sign_step_`` / ``pgd_step_``.

    sign_step   x' = clamp(x + step * sign(grad), lo, hi)                      sign(0) = 0
    pgd linf    x' = clamp(clamp(x_adv + step * sign(grad), x_nat - eps, x_nat + eps), lo, hi)
    pgd l2      u = grad / ||grad||_2 (0 if the norm is 0),  delta = x_adv + step * u - x_nat,
                x' = clamp(x_nat + delta * min(1, eps / ||delta||_2), lo, hi)

Norms are per sample (over all but the first dimension). The eps-ball projection comes before
the box clamp. sign / linf is one pass over memory (read x, grad, x_nat; write x'); l2 is one
per-sample reduction (||g||^2, <x_adv - x_nat, g>, ||x_adv - x_nat||^2 together) plus one pass.

These are attack updates, not differentiable functions: the result never requires grad.

**Prefer the in-place forms in attack loops.** The functional forms return a new tensor; on CPU
a large new buffer is a fresh mapping whose pages the OS zeroes on first touch, which here costs
more than the step itself (benchmarks/bench_attacks.py at [64, 3, 224, 224] on 2 cores: the
in-place steps run at the copy-bandwidth floor, the functional ones at the floor of an op that
returns a new tensor, about 3x slower: 22 ms vs 7.5 ms for a linf step). ``pgd_step_`` keeps
x_adv's storage and memory format.

**Keep the adversarial state in float32** (or float64): x / x_adv / x_nat must be fp32 or fp64
and the result has their dtype, while ``grad`` may be fp32, fp16 or bf16 (the gradient of a
bf16 / autocast model). bf16 has 8 significant bits, so its spacing is 2^-8 = 1/256 on [0.5, 1)
and 1/128 on [1, 2): near 1 a bf16 x_adv moves in increments of about two steps of 1/255, and
steps of 2/255 or eps of 8/255 would be rounded away or doubled. Cast the model input with
``x_adv.to(torch.bfloat16)`` (or let autocast do it) and keep x_adv itself in fp32.

Bounds ``lo`` / ``hi``: numbers, or tensors broadcastable to x (e.g. per-channel ``[1, C, 1, 1]``
bounds of normalized images). They are cast to x's dtype and reduced to the smallest repeating
block the kernels index directly: a scalar, one value per channel, or a per-element block of a
sample; a bound with size-1 dimensions between its non-1 ones (e.g. ``[C, 1, W]``) is expanded
over those dimensions (memory: prod of x's sizes from its first to its last non-1 dimension),
never over the batch unless it varies along it.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import torch
from torch import Tensor

from .. import _backend
from .._backend import resolve

Number = Union[int, float]
NORMS = {"linf": 0, "inf": 0, "l2": 1}
X_DTYPES = (torch.float32, torch.float64)
GRAD_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# ---- low-level ops: fake kernels and backend kernels ---------------------------------------------

def sign_step_fake(x, grad, step, lo, hi, bound_inner):
    return torch.empty_like(x)


def sign_step_inplace_fake(x, grad, step, lo, hi, bound_inner):
    return None


def pgd_step_fake(x_adv, grad, x_nat, step, eps, norm, lo, hi, bound_inner):
    return torch.empty_like(x_adv)


def pgd_step_inplace_fake(x_adv, grad, x_nat, step, eps, norm, lo, hi, bound_inner):
    return None


def random_start_fake(x, eps, seed_offset, norm, lo, hi, bound_inner):
    return torch.empty_like(x)


def random_start_inplace_fake(x, eps, seed_offset, norm, lo, hi, bound_inner):
    return None


if _backend.has_cpp():
    torch.library.register_fake("adkernels::sign_step")(sign_step_fake)
    torch.library.register_fake("adkernels::sign_step_")(sign_step_inplace_fake)
    torch.library.register_fake("adkernels::pgd_step")(pgd_step_fake)
    torch.library.register_fake("adkernels::pgd_step_")(pgd_step_inplace_fake)
    torch.library.register_fake("adkernels::random_start")(random_start_fake)
    torch.library.register_fake("adkernels::random_start_")(random_start_inplace_fake)


def _kernel(name: str, backend: str):
    if backend in ("cpu", "cuda"):
        return getattr(torch.ops.adkernels, name)
    if backend == "triton":
        from ..triton import attacks as triton_attacks  # noqa: F401  defines adkernels::*_triton

        return getattr(torch.ops.adkernels, name[:-1] + "_triton_" if name.endswith("_") else name + "_triton")
    raise AssertionError(backend)


# ---- validation ---------------------------------------------------------------------------------

def _eager() -> bool:
    return not torch.compiler.is_compiling()


def _check_state(op: str, name: str, t) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in X_DTYPES:
        hint = (" Keep the adversarial state in float32: bf16/fp16 spacing near 1 is ~2 steps of 1/255; "
                "cast the model input instead" if t.dtype in (torch.float16, torch.bfloat16) else "")
        raise TypeError(f"{op}: {name} must be float32 or float64, got {t.dtype}.{hint}")
    if t.dim() < 1:
        raise ValueError(f"{op}: {name} must have a batch dimension [N, ...], got a 0-d tensor")


def _check_like(op: str, name: str, t, ref_name: str, ref: Tensor, dtypes) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{op}: {name} must be one of {[str(d) for d in dtypes]}, got {t.dtype}")
    if t.shape != ref.shape:
        raise ValueError(f"{op}: {name} must have {ref_name}'s shape {tuple(ref.shape)}, got {tuple(t.shape)}")
    if t.device != ref.device:
        raise ValueError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; move them to one device")


def _per_sample(op: str, name: str, v, x: Tensor, validate: bool) -> Tensor:
    """A number >= 0 or a per-sample tensor as a contiguous [N] tensor of x's dtype."""
    n = x.shape[0]
    if isinstance(v, Tensor):
        if v.device != x.device:
            raise ValueError(f"{op}: {name} is on {v.device} but x is on {x.device}; move them to one device")
        if not (v.dtype.is_floating_point or v.dtype in (torch.int64, torch.int32)):
            raise TypeError(f"{op}: {name} must be a number or a floating tensor, got {v.dtype}")
        if not (v.numel() == 1 or (v.dim() >= 1 and v.shape[0] == n and v.numel() == n)):
            raise ValueError(
                f"{op}: {name} must be a number or a per-sample tensor of shape [{n}] (or [{n}, 1, ...]), "
                f"got shape {tuple(v.shape)}"
            )
        t = v.detach().reshape(-1).to(x.dtype).expand(n).contiguous()
        if validate and _eager() and t.numel() and not bool(((t >= 0) & torch.isfinite(t)).all()):
            raise ValueError(f"{op}: {name} must be finite and >= 0 for every sample, got min {t.min().item()}")
        return t
    if not isinstance(v, numbers.Real) or isinstance(v, bool):
        raise TypeError(f"{op}: {name} must be a number or a per-sample tensor, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{op}: {name} must be a finite number >= 0, got {v}")
    return torch.full((n,), v, dtype=x.dtype, device=x.device)


def _bound_tensor(op: str, name: str, v, x: Tensor) -> Optional[Tensor]:
    if v is None:
        return None
    if isinstance(v, Tensor):
        if v.device != x.device:
            raise ValueError(f"{op}: {name} is on {v.device} but x is on {x.device}; move them to one device")
        if v.dtype.is_complex or v.dtype == torch.bool:
            raise TypeError(f"{op}: {name} must be a real tensor, got {v.dtype}")
        if v.dim() > x.dim() or any(b not in (1, s) for b, s in zip(v.shape[::-1], x.shape[::-1])):
            raise ValueError(f"{op}: {name} of shape {tuple(v.shape)} does not broadcast to x's shape {tuple(x.shape)}")
        return v.detach().to(x.dtype)
    return torch.full((), _number(op, name, v), dtype=x.dtype, device=x.device)


def _number(op: str, name: str, v) -> float:
    if not isinstance(v, numbers.Real) or isinstance(v, bool):
        raise TypeError(f"{op}: {name} must be None, a number or a tensor, got {type(v).__name__}")
    v = float(v)
    if math.isnan(v):
        raise ValueError(f"{op}: {name} must not be NaN")
    return v


def _bounds(op: str, lo, hi, x: Tensor, perm, validate: bool):
    """(lo [B], hi [B], bound_inner) for the kernels, or (None, None, 1) without bounds.

    ``perm``: the dimension order x is walked in (None: as it is).
    """
    if lo is None and hi is None:
        return None, None, 1
    if not isinstance(lo, Tensor) and not isinstance(hi, Tensor):  # numbers: no tensor work to check
        lo_f = -math.inf if lo is None else _number(op, "lo", lo)
        hi_f = math.inf if hi is None else _number(op, "hi", hi)
        if lo_f > hi_f:
            raise ValueError(f"{op}: lo must be <= hi everywhere, got lo={lo_f} > hi={hi_f}")
        if x.numel() == 0:
            return None, None, 1
        return (torch.full((1,), lo_f, dtype=x.dtype, device=x.device),
                torch.full((1,), hi_f, dtype=x.dtype, device=x.device), 1)
    lo_t, hi_t = _bound_tensor(op, "lo", lo, x), _bound_tensor(op, "hi", hi, x)
    inf = torch.full((), math.inf, dtype=x.dtype, device=x.device)
    lo_t = -inf if lo_t is None else lo_t
    hi_t = inf if hi_t is None else hi_t
    if validate and _eager():
        bad = lo_t > hi_t
        if bool(bad.any()):
            i = tuple(bad.nonzero()[0].tolist())
            lo_b, hi_b = torch.broadcast_tensors(lo_t, hi_t)
            raise ValueError(f"{op}: lo must be <= hi everywhere, got lo={lo_b[i].item()} > hi={hi_b[i].item()} "
                             f"at index {i} of their broadcast shape {tuple(bad.shape)}")
    if x.numel() == 0:
        return None, None, 1
    lo_t, hi_t = torch.broadcast_tensors(lo_t, hi_t)
    shape = (1,) * (x.dim() - lo_t.dim()) + tuple(lo_t.shape)
    lo_t, hi_t = lo_t.reshape(shape), hi_t.reshape(shape)
    xs = tuple(x.shape)
    if perm is not None:
        lo_t, hi_t = lo_t.permute(perm), hi_t.permute(perm)
        shape = tuple(shape[p] for p in perm)
        xs = tuple(xs[p] for p in perm)
    varying = [d for d, s in enumerate(shape) if s != 1]
    if not varying:
        return lo_t.reshape(1).contiguous(), hi_t.reshape(1).contiguous(), 1
    first, last = varying[0], varying[-1]
    inner = math.prod(xs[last + 1:])
    block = xs[first:last + 1]
    # Drop the leading and trailing size-1 dimensions, expand the block in between to x's sizes.
    idx = (0,) * first + (Ellipsis,) + (0,) * (len(xs) - last - 1)
    lo_b = lo_t[idx].expand(block).contiguous().reshape(-1)
    hi_b = hi_t[idx].expand(block).contiguous().reshape(-1)
    B = lo_b.numel()
    if inner == 1 and 1 < B < 512:
        # A short pattern that changes every element (per-channel bounds of a channels_last
        # input: B = C) would cut the CPU kernel's runs to B elements: repeat it k times
        # (k a divisor of x.numel() / B, so the pattern still tiles x) for runs of >= 512.
        m = x.numel() // B
        k = next((d for d in range(-(-512 // B), 4097) if m % d == 0), 1)
        lo_b, hi_b = lo_b.repeat(k), hi_b.repeat(k)
    return lo_b, hi_b, max(int(inner), 1)


def _walk_order(x: Tensor):
    """None: x is contiguous; a permutation (batch first) under which x is contiguous (e.g.
    channels_last -> NHWC); False: x is not dense, so it is copied."""
    if x.is_contiguous():
        return None
    if x.dim() >= 2:
        perm = [0] + sorted(range(1, x.dim()), key=lambda d: x.stride(d), reverse=True)
        if x.permute(perm).is_contiguous():
            return perm
    return False


def _ordered(t: Tensor, perm) -> Tensor:
    return (t if not perm else t.permute(perm)).contiguous()


def _inverse(perm):
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv


def _check_common(op, x_name, x, grad, step, lo, hi, validate, x_nat=None, eps=None):
    _check_state(op, x_name, x)
    _check_like(op, "grad", grad, x_name, x, GRAD_DTYPES)
    if x_nat is not None:
        _check_state(op, "x_nat", x_nat)
        _check_like(op, "x_nat", x_nat, x_name, x, (x.dtype,))
    step_t = _per_sample(op, "step", step, x, validate)
    eps_t = None if eps is None else _per_sample(op, "eps", eps, x, validate)
    return step_t, eps_t


def _norm_id(op: str, norm) -> int:
    key = norm
    if isinstance(norm, numbers.Real) and not isinstance(norm, bool):
        key = {math.inf: "linf", 2: "l2"}.get(float(norm), norm)
    if key not in NORMS:
        raise ValueError(f"{op}: norm must be 'linf' or 'l2', got {norm!r}")
    return NORMS[key]


def _run(name: str, backend: str, x: Tensor, tensors, scalars, lo, hi, op: str, validate: bool, inplace: bool):
    """Calls the kernel ``name`` on x / tensors in x's walk order; returns the result (or x)."""
    perm = _walk_order(x)
    if perm is False and inplace:  # not dense: compute out of place, copy back
        res = _run(name[:-1], backend, x, tensors, scalars, lo, hi, op, validate, False)
        with torch.no_grad():
            x.copy_(res)
        return x
    lo_b, hi_b, inner = _bounds(op, lo, hi, x, perm or None, validate)
    xd = x.detach()
    others = [_ordered(t.detach(), perm) for t in tensors]
    fn = _kernel(name, backend)
    if inplace:
        fn(xd if not perm else xd.permute(perm), *others, *scalars, lo_b, hi_b, inner)
        return x
    out = fn(_ordered(xd, perm), *others, *scalars, lo_b, hi_b, inner)
    return out.permute(_inverse(perm)) if perm else out


# ---- public API ---------------------------------------------------------------------------------

def sign_step(x: Tensor, grad: Tensor, step: Union[Number, Tensor], *, lo=None, hi=None,
              validate: bool = True) -> Tensor:
    r"""FGSM step ``clamp(x + step * sign(grad), lo, hi)`` in one pass (sign(0) = 0).

    Args:
        x: ``[N, ...]`` float32 / float64 (the adversarial state; see the module doc for why not bf16).
        grad: x's shape; float32, float64, float16 or bfloat16 (only its sign is used).
        step: a number >= 0, or per-sample ``[N]`` tensor (``[N, 1, ..., 1]`` and one element work too).
        lo, hi: None, numbers, or tensors broadcastable to x (per-channel ``[1, C, 1, 1]`` bounds of
            normalized inputs); either may be None (unbounded on that side).
        validate: check tensor ``step`` >= 0 and ``lo <= hi`` (reads values, so on CUDA it
            synchronizes; skipped under torch.compile).

    Returns:
        a new tensor of x's dtype and memory format, not requiring grad.

    Example:
        >>> import torch, adkernels
        >>> x = torch.tensor([[0.5, 0.0, 1.0]]); g = torch.tensor([[1.0, 0.0, -2.0]])
        >>> adkernels.sign_step(x, g, 0.25, lo=0.0, hi=1.0)
        tensor([[0.7500, 0.0000, 0.7500]])
    """
    op = "sign_step"
    step_t, _ = _check_common(op, "x", x, grad, step, lo, hi, validate)
    backend = resolve(x.device)
    if backend == "reference":
        _bounds(op, lo, hi, x, None, validate)
        from ..reference.attacks import sign_step as ref

        return ref(x.detach(), grad.detach(), step_t, lo=lo, hi=hi)
    return _run("sign_step", backend, x, [grad], [step_t], lo, hi, op, validate, False)


def sign_step_(x: Tensor, grad: Tensor, step: Union[Number, Tensor], *, lo=None, hi=None,
               validate: bool = True) -> Tensor:
    """In-place :func:`sign_step`: writes the result into ``x`` and returns ``x``.

    >>> import torch, adkernels
    >>> x = torch.zeros(2, 3); _ = adkernels.sign_step_(x, torch.ones(2, 3), 0.5)
    >>> x
    tensor([[0.5000, 0.5000, 0.5000],
            [0.5000, 0.5000, 0.5000]])
    """
    op = "sign_step_"
    step_t, _ = _check_common(op, "x", x, grad, step, lo, hi, validate)
    backend = resolve(x.device)
    if backend == "reference":
        _bounds(op, lo, hi, x, None, validate)
        from ..reference.attacks import sign_step as ref

        with torch.no_grad():
            x.copy_(ref(x.detach(), grad.detach(), step_t, lo=lo, hi=hi))
        return x
    return _run("sign_step_", backend, x, [grad], [step_t], lo, hi, op, validate, True)


def pgd_step(x_adv: Tensor, grad: Tensor, x_nat: Tensor, step: Union[Number, Tensor],
             eps: Union[Number, Tensor], *, norm: str = "linf", lo=None, hi=None,
             validate: bool = True) -> Tensor:
    r"""One PGD step: ascent, projection onto the eps-ball around x_nat, then the box.

    ``linf``: ``clamp(clamp(x_adv + step * sign(grad), x_nat - eps, x_nat + eps), lo, hi)``, one pass.
    ``l2``: ``u = grad / ||grad||_2`` (0 where the norm is 0), ``delta = x_adv + step * u - x_nat``,
    ``clamp(x_nat + delta * min(1, eps / ||delta||_2), lo, hi)``; norms per sample; one reduction
    plus one pass.

    Args:
        x_adv: ``[N, ...]`` float32 / float64, the current adversarial example.
        grad: x_adv's shape; float32, float64, float16 or bfloat16.
        x_nat: the clean input, x_adv's shape and dtype.
        step, eps: numbers >= 0 or per-sample ``[N]`` tensors.
        norm: ``"linf"`` or ``"l2"`` (``float("inf")`` and ``2`` are accepted too).
        lo, hi, validate: as in :func:`sign_step`.

    Returns:
        a new tensor of x_adv's dtype and memory format, not requiring grad.

    Example:
        >>> import torch, adkernels
        >>> x0 = torch.full((1, 4), 0.5); g = torch.tensor([[3.0, 0.0, 0.0, -4.0]])
        >>> adkernels.pgd_step(x0, g, x0, 1.0, 0.5, norm="l2")
        tensor([[0.8000, 0.5000, 0.5000, 0.1000]])
    """
    op = "pgd_step"
    norm_id = _norm_id(op, norm)
    step_t, eps_t = _check_common(op, "x_adv", x_adv, grad, step, lo, hi, validate, x_nat, eps)
    backend = resolve(x_adv.device)
    if backend == "reference":
        _bounds(op, lo, hi, x_adv, None, validate)
        from ..reference.attacks import pgd_step as ref

        return ref(x_adv.detach(), grad.detach(), x_nat.detach(), step_t, eps_t,
                   norm=("linf", "l2")[norm_id], lo=lo, hi=hi)
    return _run("pgd_step", backend, x_adv, [grad, x_nat], [step_t, eps_t, norm_id], lo, hi, op, validate, False)


def pgd_step_(x_adv: Tensor, grad: Tensor, x_nat: Tensor, step: Union[Number, Tensor],
              eps: Union[Number, Tensor], *, norm: str = "linf", lo=None, hi=None,
              validate: bool = True) -> Tensor:
    """In-place :func:`pgd_step`: writes the result into ``x_adv`` and returns it.

    >>> import torch, adkernels
    >>> x0 = torch.zeros(1, 3); xa = x0.clone()
    >>> for _ in range(3):
    ...     _ = adkernels.pgd_step_(xa, torch.tensor([[1.0, -1.0, 0.0]]), x0, 0.25, 0.6)
    >>> xa
    tensor([[ 0.6000, -0.6000,  0.0000]])
    """
    op = "pgd_step_"
    norm_id = _norm_id(op, norm)
    step_t, eps_t = _check_common(op, "x_adv", x_adv, grad, step, lo, hi, validate, x_nat, eps)
    backend = resolve(x_adv.device)
    if backend == "reference":
        _bounds(op, lo, hi, x_adv, None, validate)
        from ..reference.attacks import pgd_step as ref

        with torch.no_grad():
            x_adv.copy_(ref(x_adv.detach(), grad.detach(), x_nat.detach(), step_t, eps_t,
                            norm=("linf", "l2")[norm_id], lo=lo, hi=hi))
        return x_adv
    return _run("pgd_step_", backend, x_adv, [grad, x_nat], [step_t, eps_t, norm_id], lo, hi, op, validate, True)


def _random_start(op: str, x: Tensor, eps, norm, lo, hi, generator, validate: bool, inplace: bool) -> Tensor:
    from .gumbel import draw_seed_offset

    _check_state(op, "x", x)
    norm_id = _norm_id(op, norm)
    eps_t = _per_sample(op, "eps", eps, x, validate)
    seed_offset = draw_seed_offset(op, generator, x.device)
    backend = resolve(x.device, implemented=("triton", "cpu", "reference"))
    if backend == "reference":
        _bounds(op, lo, hi, x, None, validate)
        from ..reference.attacks import random_start as ref

        out = ref(x.detach(), eps_t, seed_offset, norm=("linf", "l2")[norm_id], lo=lo, hi=hi)
    else:
        # The noise of an element follows its row-major index, whatever x's memory layout.
        xc = x.detach().contiguous()
        lo_b, hi_b, inner = _bounds(op, lo, hi, xc, None, validate)
        if inplace and x.is_contiguous():
            _kernel("random_start_", backend)(x.detach(), eps_t, seed_offset, norm_id, lo_b, hi_b, inner)
            return x
        out = _kernel("random_start", backend)(xc, eps_t, seed_offset, norm_id, lo_b, hi_b, inner)
    if inplace:
        with torch.no_grad():
            x.copy_(out)
        return x
    if not x.is_contiguous():
        out = torch.empty_like(x).copy_(out)
    return out


def random_start(x: Tensor, eps: Union[Number, Tensor], *, norm: str = "linf", lo=None, hi=None,
                 generator: Optional[torch.Generator] = None, validate: bool = True) -> Tensor:
    r"""Random start of an attack: ``clamp(x + delta, lo, hi)`` with delta uniform in the eps-ball.

    ``linf``: ``delta_e = eps * (2 u_e - 1)``, uniform in ``[-eps, eps]`` per element (one pass).
    ``l2``: uniform in the l2 ball of radius eps in ``D`` = elements-per-sample dimensions:
    ``delta = eps * u^(1/D) * z / ||z||_2`` with ``z`` standard normals (Box-Muller) and ``u`` one
    uniform per sample (one per-sample reduction of ``||z||^2`` plus one pass that regenerates
    ``z`` from its counters; no noise tensor in memory).

    The noise comes from a counter-based Philox stream inside the kernel, keyed by a
    ``(seed, offset)`` pair drawn from ``generator`` (torch's default generator of x's device
    when None) at each call: ``torch.manual_seed`` makes the result reproducible, successive calls
    differ, and every backend (cpu, cuda, triton, reference) draws the same uniforms for the same
    pair (l2 normals agree to rounding). An element's noise follows its row-major index, so the
    result does not depend on x's memory layout. See csrc/include/adkernels/philox.h.

    Args:
        x: ``[N, ...]`` float32 / float64, the clean input.
        eps: radius, a number >= 0 or a per-sample ``[N]`` tensor.
        norm: ``"linf"`` or ``"l2"`` (``float("inf")`` and ``2`` are accepted too).
        lo, hi, validate: as in :func:`sign_step` (the box is applied after the ball).
        generator: a ``torch.Generator`` to draw the stream's (seed, offset) from.

    Returns:
        a new tensor of x's dtype and memory format, not requiring grad.

    Example:
        >>> import torch, adkernels
        >>> x = torch.full((2, 3), 0.5)
        >>> _ = torch.manual_seed(0); a = adkernels.random_start(x, 0.1, lo=0.0, hi=1.0)
        >>> _ = torch.manual_seed(0); b = adkernels.random_start(x, 0.1, lo=0.0, hi=1.0)
        >>> bool(torch.equal(a, b)), bool(((a - x).abs() <= 0.1).all())
        (True, True)
    """
    return _random_start("random_start", x, eps, norm, lo, hi, generator, validate, False)


def random_start_(x: Tensor, eps: Union[Number, Tensor], *, norm: str = "linf", lo=None, hi=None,
                  generator: Optional[torch.Generator] = None, validate: bool = True) -> Tensor:
    """In-place :func:`random_start`: writes ``clamp(x + delta, lo, hi)`` into ``x`` and returns it
    (the same values as :func:`random_start` with the same generator state).

    >>> import torch, adkernels
    >>> x = torch.zeros(1, 4, dtype=torch.float64)
    >>> _ = adkernels.random_start_(x, 0.5, norm="l2")
    >>> bool(x.norm() <= 0.5)
    True
    """
    return _random_start("random_start_", x, eps, norm, lo, hi, generator, validate, True)
