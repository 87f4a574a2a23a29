"""Reference FGSM / PGD steps in plain PyTorch: the executable specification of the attack ops.

Everything is computed in x's dtype (float32 or float64); ``grad`` may be lower precision (only
its sign, or its direction for l2, is used). ``step`` / ``eps`` are numbers or per-sample
tensors (``[N]``, ``[N, 1, ..., 1]`` or one element); ``lo`` / ``hi`` numbers or tensors
broadcastable to x, cast to x's dtype.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def _per_sample(v, x: Tensor) -> Tensor:
    """A number or per-sample tensor as [N, 1, ..., 1] in x's dtype (broadcasts against x)."""
    n = x.shape[0]
    shape = (n,) + (1,) * (x.dim() - 1)
    if isinstance(v, Tensor):
        return v.to(device=x.device, dtype=x.dtype).reshape(-1).expand(n).reshape(shape)
    return torch.full(shape, float(v), dtype=x.dtype, device=x.device)


def _bound(v, x: Tensor):
    if v is None:
        return None
    return torch.as_tensor(v, dtype=x.dtype, device=x.device)


def box(v: Tensor, lo=None, hi=None) -> Tensor:
    """``torch.clamp(v, lo, hi)`` with bounds cast to v's dtype (None: that side unbounded)."""
    lo, hi = _bound(lo, v), _bound(hi, v)
    if lo is None and hi is None:
        return v
    return torch.clamp(v, min=lo, max=hi)


def sign_step(x: Tensor, grad: Tensor, step, *, lo=None, hi=None) -> Tensor:
    """FGSM step ``clamp(x + step * sign(grad), lo, hi)`` with sign(0) = 0."""
    step = _per_sample(step, x)
    return box(x + step * torch.sign(grad).to(x.dtype), lo, hi)


def _norms(t: Tensor) -> Tensor:
    shape = (t.shape[0],) + (1,) * (t.dim() - 1)
    flat = t.reshape(t.shape[0], math.prod(t.shape[1:]))
    return torch.linalg.vector_norm(flat, dim=1).reshape(shape)


def pgd_step(x_adv: Tensor, grad: Tensor, x_nat: Tensor, step, eps, *, norm: str = "linf",
             lo=None, hi=None) -> Tensor:
    """PGD step: ascent, projection onto the eps-ball around x_nat, then the box.

    linf: ``clamp(clamp(x_adv + step * sign(grad), x_nat - eps, x_nat + eps), lo, hi)``.
    l2:   ``u = grad / ||grad||`` (0 where ||grad|| = 0), ``delta = x_adv + step * u - x_nat``,
          ``clamp(x_nat + delta * min(1, eps / ||delta||), lo, hi)``; norms per sample.
    """
    step = _per_sample(step, x_adv)
    eps = _per_sample(eps, x_adv)
    if norm == "linf":
        v = x_adv + step * torch.sign(grad).to(x_adv.dtype)
        v = torch.clamp(v, min=x_nat - eps, max=x_nat + eps)
        return box(v, lo, hi)
    if norm == "l2":
        g = grad.to(x_adv.dtype)
        gn = _norms(g)
        u = g / torch.where(gn > 0, gn, torch.ones_like(gn))
        delta = (x_adv + step * u) - x_nat
        dn = _norms(delta)
        scale = torch.where(dn > eps, eps / torch.where(dn > 0, dn, torch.ones_like(dn)), torch.ones_like(dn))
        return box(x_nat + delta * scale, lo, hi)
    raise ValueError(f"pgd_step: norm must be 'linf' or 'l2', got {norm!r}")



# The radius uniform of sample n (l2) is lane 0 of counter offset + RADIUS_STREAM + n, far from
# the element counters offset + e // 4.
RADIUS_STREAM = 1 << 62


def random_noise(shape, seed_offset, *, norm: str = "linf", dtype=torch.float64):
    """(t, u_r): the per-element noise of random_start for inputs of ``shape`` = [N, ...]
    (element e = the row-major index) in ``dtype``, and the per-sample radius uniforms [N].

    linf: ``t_e = 2 u_e - 1``.  l2: ``t`` = the stream's Box-Muller normals.
    """
    from .gumbel import _seed_offset, normal, uniform

    n, total = shape[0], math.prod(shape)
    if norm == "linf":
        t = 2.0 * uniform(seed_offset, total).to(dtype) - 1.0
    else:
        t = normal(seed_offset, total, dtype)
    seed, offset = _seed_offset(seed_offset)
    u_r = [uniform((seed, offset + RADIUS_STREAM + i), 1) for i in range(n)]
    u_r = torch.cat(u_r).to(dtype) if n else torch.empty(0, dtype=dtype)
    return t.reshape(shape), u_r


def random_start(x: Tensor, eps, seed_offset, *, norm: str = "linf", lo=None, hi=None) -> Tensor:
    """Random start of an attack: ``clamp(x + scale * t, lo, hi)`` in x's dtype, with
    (t, u_r) = :func:`random_noise`, D = elements per sample and per sample n:

    linf: ``scale = eps_n``: x + delta with delta uniform in [-eps, eps] per element.
    l2:   ``scale = eps_n * u_r^(1/D) / ||t_n||_2`` (``u_r^(1/D) = exp(log(u_r) / D)``; 0 if the
          norm is 0): delta uniform in the l2 ball of radius eps_n in D dimensions (a Gaussian
          direction, radius eps * u^(1/D)).
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"random_start: norm must be 'linf' or 'l2', got {norm!r}")
    t, u_r = random_noise(tuple(x.shape), seed_offset, norm=norm, dtype=x.dtype)
    t, u_r = t.to(x.device), u_r.to(x.device)
    eps = _per_sample(eps, x)
    if norm == "linf" or x.numel() == 0:
        return box(x + eps * t, lo, hi)
    n = x.shape[0]
    d = x.numel() // n
    ss = (t * t).reshape(n, d).sum(dim=1)
    root = torch.exp(torch.log(u_r) / d)
    scale = torch.where(ss > 0, eps.reshape(-1) * root / torch.sqrt(torch.where(ss > 0, ss, 1.0)), 0.0)
    return box(x + scale.reshape(eps.shape) * t, lo, hi)
