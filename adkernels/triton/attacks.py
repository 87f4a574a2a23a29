"""Triton FGSM / PGD steps: ``torch.ops.adkernels.{sign_step,pgd_step}_triton`` and the in-place
``..._triton_`` forms, the twins of the C++ ops in csrc/ops.cpp with the formulas of
attack_math.h:

    sign   x' = box(x + step * sign(g))
    linf   x' = box(clamp(x_adv + step * sign(g), x_nat - eps, x_nat + eps))
    l2     x' = box(x_nat + (x_adv + c g - x_nat) * scale),  c = step / ||g||,
           scale = min(1, eps / ||delta||), ||delta||^2 = ||d||^2 + 2 c <d, g> + c^2 ||g||^2

sign / linf: one program per BLOCK elements of the flattened [N * D] tensor (per-sample step /
eps and the bounds are gathered per element: bound[(i // bound_inner) % B]). l2: one program per
sample, a reduction loop over D then a writing loop. Loads are upcast to x's dtype (float32 or
float64) right after ``tl.load``.
"""
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._backend import triton_interpret
from ..ops.attacks import (
    pgd_step_fake,
    pgd_step_inplace_fake,
    sign_step_fake,
    sign_step_inplace_fake,
)

# Elements per program (sign / linf) and per loop iteration (l2). Tests may lower them.
BLOCK = 1024
L2_BLOCK = 2048


@triton.jit
def _box(v, lo_ptr, hi_ptr, offs, mask, B, inner, HAS_BOUNDS: tl.constexpr, ACC: tl.constexpr):
    if HAS_BOUNDS:
        b = (offs // inner) % B
        lo = tl.load(lo_ptr + b, mask=mask, other=0.0).to(ACC)
        hi = tl.load(hi_ptr + b, mask=mask, other=0.0).to(ACC)
        v = tl.minimum(tl.maximum(v, lo), hi)
    return v


@triton.jit
def _sign(g, ACC: tl.constexpr):
    return (g > 0).to(ACC) - (g < 0).to(ACC)


@triton.jit
def _pointwise_kernel(x_ptr, g_ptr, xn_ptr, out_ptr, step_ptr, eps_ptr, lo_ptr, hi_ptr,
                      total, D, B, inner,
                      LINF: tl.constexpr, HAS_BOUNDS: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < total
    n = offs // D
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)
    step = tl.load(step_ptr + n, mask=mask, other=0.0).to(ACC)
    v = x + step * _sign(g, ACC)
    if LINF:
        xn = tl.load(xn_ptr + offs, mask=mask, other=0.0).to(ACC)
        eps = tl.load(eps_ptr + n, mask=mask, other=0.0).to(ACC)
        v = tl.minimum(tl.maximum(v, xn - eps), xn + eps)
    v = _box(v, lo_ptr, hi_ptr, offs, mask, B, inner, HAS_BOUNDS, ACC)
    tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _l2_kernel(x_ptr, g_ptr, xn_ptr, out_ptr, step_ptr, eps_ptr, lo_ptr, hi_ptr,
               D, B, inner,
               HAS_BOUNDS: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    base = n * D
    cols = tl.arange(0, BLOCK).to(tl.int64)
    vgg = tl.zeros([BLOCK], ACC)
    vdg = tl.zeros([BLOCK], ACC)
    vdd = tl.zeros([BLOCK], ACC)
    for start in range(0, D, BLOCK):
        offs = base + start + cols
        mask = start + cols < D
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)
        xn = tl.load(xn_ptr + offs, mask=mask, other=0.0).to(ACC)
        d = x - xn
        vgg += g * g
        vdg += d * g
        vdd += d * d
    gg = tl.sum(vgg, axis=0)
    dg = tl.sum(vdg, axis=0)
    dd = tl.sum(vdd, axis=0)
    step = tl.load(step_ptr + n).to(ACC)
    eps = tl.load(eps_ptr + n).to(ACC)
    gnorm = tl.sqrt(gg)
    coef = tl.where(gnorm > 0, step / tl.where(gnorm > 0, gnorm, 1.0), 0.0)
    nn = dd + 2.0 * coef * dg + coef * coef * gg
    nn = tl.maximum(nn, 0.0)
    dnorm = tl.sqrt(nn)
    scale = tl.where(dnorm > eps, eps / tl.where(dnorm > 0, dnorm, 1.0), 1.0)
    for start in range(0, D, BLOCK):
        offs = base + start + cols
        mask = start + cols < D
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)
        xn = tl.load(xn_ptr + offs, mask=mask, other=0.0).to(ACC)
        delta = (x + coef * g) - xn
        v = _box(xn + delta * scale, lo_ptr, hi_ptr, offs, mask, B, inner, HAS_BOUNDS, ACC)
        tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=mask)


_X_DTYPES = (torch.float32, torch.float64)
_G_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check(op, x, grad, x_nat, step, eps, lo, hi, bound_inner):
    if x.dim() < 1 or x.dtype not in _X_DTYPES:
        raise TypeError(f"{op}: x must be a float32/float64 tensor [N, ...], got {x.dtype} of shape {tuple(x.shape)}")
    if grad.shape != x.shape or grad.dtype not in _G_DTYPES:
        raise ValueError(f"{op}: grad must have x's shape {tuple(x.shape)} and a float dtype, got "
                         f"{tuple(grad.shape)} {grad.dtype}")
    tensors = [grad, step] + ([x_nat] if x_nat is not None else []) + ([eps] if eps is not None else [])
    tensors += [t for t in (lo, hi) if t is not None]
    if any(t.device != x.device for t in tensors):
        raise ValueError(f"{op}: every tensor must be on x's device {x.device}")
    if not all(t.is_contiguous() for t in [x] + tensors):
        raise ValueError(f"{op}: tensors must be contiguous")
    n = x.shape[0]
    for name, t in (("step", step), ("eps", eps)):
        if t is not None and (t.shape != (n,) or t.dtype != x.dtype):
            raise ValueError(f"{op}: {name} must be [{n}] of x's dtype, got {tuple(t.shape)} {t.dtype}")
    if x_nat is not None and (x_nat.shape != x.shape or x_nat.dtype != x.dtype):
        raise ValueError(f"{op}: x_nat must have x_adv's shape and dtype")
    if (lo is None) != (hi is None):
        raise ValueError(f"{op}: pass both lo and hi or neither")
    if lo is not None:
        if lo.dim() != 1 or lo.shape != hi.shape or lo.numel() < 1 or lo.dtype != x.dtype or hi.dtype != x.dtype:
            raise ValueError(f"{op}: lo and hi must be 1-d [B] tensors of x's dtype")
        if bound_inner < 1 or x.numel() % (lo.numel() * bound_inner) != 0:
            raise ValueError(f"{op}: bounds of {lo.numel()} values every {bound_inner} elements do not tile x")
    if x.device.type == "cpu" and not triton_interpret():
        raise RuntimeError(f"{op}: Triton runs CPU tensors only in interpreter mode; set TRITON_INTERPRET=1 "
                           "before importing adkernels.triton, or use a CUDA device")


def _launch(x, grad, x_nat, out, step, eps, norm, lo, hi, bound_inner):
    n = x.shape[0]
    total = x.numel()
    if total == 0:
        return
    D = total // n
    acc = tl.float64 if x.dtype == torch.float64 else tl.float32
    has_bounds = lo is not None
    B = lo.numel() if has_bounds else 1
    lo_arg = lo if has_bounds else step
    hi_arg = hi if has_bounds else step
    if norm == 1:
        blk = max(16, min(triton.next_power_of_2(D), int(L2_BLOCK)))
        _l2_kernel[(n,)](x, grad, x_nat, out, step, eps, lo_arg, hi_arg, D, B, bound_inner,
                         HAS_BOUNDS=has_bounds, ACC=acc, BLOCK=blk, num_warps=8 if blk >= 2048 else 4)
    else:
        blk = int(BLOCK)
        grid = (triton.cdiv(total, blk),)
        _pointwise_kernel[grid](x, grad, x_nat if x_nat is not None else x, out, step,
                                eps if eps is not None else step, lo_arg, hi_arg, total, D, B, bound_inner,
                                LINF=norm == 0, HAS_BOUNDS=has_bounds, ACC=acc, BLOCK=blk, num_warps=4)


@torch.library.custom_op("adkernels::sign_step_triton", mutates_args=())
def sign_step_triton(x: Tensor, grad: Tensor, step: Tensor, lo: Optional[Tensor], hi: Optional[Tensor],
                     bound_inner: int) -> Tensor:
    """Triton ``sign_step``: ``box(x + step[n] * sign(grad))`` as a new tensor."""
    _check("sign_step_triton", x, grad, None, step, None, lo, hi, bound_inner)
    out = torch.empty_like(x)
    _launch(x, grad, None, out, step, None, -1, lo, hi, bound_inner)
    return out


@torch.library.custom_op("adkernels::sign_step_triton_", mutates_args=("x",))
def sign_step_triton_(x: Tensor, grad: Tensor, step: Tensor, lo: Optional[Tensor], hi: Optional[Tensor],
                      bound_inner: int) -> None:
    """In-place Triton ``sign_step``: writes into x."""
    _check("sign_step_triton_", x, grad, None, step, None, lo, hi, bound_inner)
    _launch(x, grad, None, x, step, None, -1, lo, hi, bound_inner)


@torch.library.custom_op("adkernels::pgd_step_triton", mutates_args=())
def pgd_step_triton(x_adv: Tensor, grad: Tensor, x_nat: Tensor, step: Tensor, eps: Tensor, norm: int,
                    lo: Optional[Tensor], hi: Optional[Tensor], bound_inner: int) -> Tensor:
    """Triton ``pgd_step`` (norm 0 = linf, 1 = l2) as a new tensor."""
    if norm not in (0, 1):
        raise ValueError(f"pgd_step_triton: norm must be 0 (linf) or 1 (l2), got {norm}")
    _check("pgd_step_triton", x_adv, grad, x_nat, step, eps, lo, hi, bound_inner)
    out = torch.empty_like(x_adv)
    _launch(x_adv, grad, x_nat, out, step, eps, norm, lo, hi, bound_inner)
    return out


@torch.library.custom_op("adkernels::pgd_step_triton_", mutates_args=("x_adv",))
def pgd_step_triton_(x_adv: Tensor, grad: Tensor, x_nat: Tensor, step: Tensor, eps: Tensor, norm: int,
                     lo: Optional[Tensor], hi: Optional[Tensor], bound_inner: int) -> None:
    """In-place Triton ``pgd_step``: writes into x_adv (l2 reads a sample fully before writing it)."""
    if norm not in (0, 1):
        raise ValueError(f"pgd_step_triton_: norm must be 0 (linf) or 1 (l2), got {norm}")
    _check("pgd_step_triton_", x_adv, grad, x_nat, step, eps, lo, hi, bound_inner)
    _launch(x_adv, grad, x_nat, x_adv, step, eps, norm, lo, hi, bound_inner)


sign_step_triton.register_fake(sign_step_fake)
sign_step_triton_.register_fake(sign_step_inplace_fake)
pgd_step_triton.register_fake(pgd_step_fake)
pgd_step_triton_.register_fake(pgd_step_inplace_fake)


# ---- random_start ----------------------------------------------------------------------------------
# linf: one program per BLOCK elements, t = 2u - 1 from the Philox stream (adkernels/triton/gumbel.py
# helpers, the same u as the C++ kernels), x' = box(x + eps[n] * t). l2: one program per sample,
# ||z||^2 over Box-Muller normals, then a writing loop that regenerates z:
# x' = box(x + scale * z), scale = eps * u_r^(1/D) / ||z||. The product is rounded before the add
# (no FMA contraction: launched with enable_fp_fusion=False on GPUs) as in the reference.

from .gumbel import philox_bits, philox_normal, philox_uniform  # noqa: E402

RADIUS_STREAM = 1 << 62


@triton.jit
def _random_linf_kernel(x_ptr, out_ptr, eps_ptr, so_ptr, lo_ptr, hi_ptr, total, D, B, inner,
                        HAS_BOUNDS: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < total
    n = offs // D
    seed = tl.load(so_ptr)
    offset = tl.load(so_ptr + 1)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
    t = 2.0 * philox_uniform(philox_bits(seed, offset, offs)).to(ACC) - 1.0
    eps = tl.load(eps_ptr + n, mask=mask, other=0.0).to(ACC)
    d = eps * t
    v = _box(x + d, lo_ptr, hi_ptr, offs, mask, B, inner, HAS_BOUNDS, ACC)
    tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _random_l2_kernel(x_ptr, out_ptr, eps_ptr, so_ptr, lo_ptr, hi_ptr, D, B, inner,
                      HAS_BOUNDS: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    base = n * D
    cols = tl.arange(0, BLOCK).to(tl.int64)
    seed = tl.load(so_ptr)
    offset = tl.load(so_ptr + 1)
    vss = tl.zeros([BLOCK], ACC)
    for start in range(0, D, BLOCK):
        offs = base + start + cols
        mask = start + cols < D
        z = tl.where(mask, philox_normal(seed, offset, offs, ACC), 0.0)
        vss += z * z
    ss = tl.sum(vss, axis=0)
    r0, _r1, _r2, _r3 = tl.randint4x(seed, offset + 4611686018427387904 + n + cols * 0)
    u_r = tl.max(tl.where(cols == 0, philox_uniform(r0).to(ACC), 0.0), axis=0)
    root = tl.exp(tl.log(u_r) / (D + 0.0))  # D may arrive as a constexpr (D == 1)
    eps = tl.load(eps_ptr + n).to(ACC)
    scale = tl.where(ss > 0, eps * root / tl.sqrt(tl.where(ss > 0, ss, 1.0)), 0.0)
    for start in range(0, D, BLOCK):
        offs = base + start + cols
        mask = start + cols < D
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
        d = scale * philox_normal(seed, offset, offs, ACC)
        v = _box(x + d, lo_ptr, hi_ptr, offs, mask, B, inner, HAS_BOUNDS, ACC)
        tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=mask)


def _launch_random(x, out, eps, seed_offset, norm, lo, hi, bound_inner):
    n = x.shape[0]
    total = x.numel()
    if total == 0:
        return
    D = total // n
    acc = tl.float64 if x.dtype == torch.float64 else tl.float32
    has_bounds = lo is not None
    B = lo.numel() if has_bounds else 1
    lo_arg = lo if has_bounds else eps
    hi_arg = hi if has_bounds else eps
    so = seed_offset.contiguous()
    extra = {} if triton_interpret() else {"enable_fp_fusion": False}
    if norm == 1:
        blk = max(16, min(triton.next_power_of_2(D), int(L2_BLOCK)))
        _random_l2_kernel[(n,)](x, out, eps, so, lo_arg, hi_arg, D, B, bound_inner,
                                HAS_BOUNDS=has_bounds, ACC=acc, BLOCK=blk, num_warps=8 if blk >= 2048 else 4,
                                **extra)
    else:
        blk = int(BLOCK)
        _random_linf_kernel[(triton.cdiv(total, blk),)](x, out, eps, so, lo_arg, hi_arg, total, D, B, bound_inner,
                                                        HAS_BOUNDS=has_bounds, ACC=acc, BLOCK=blk, num_warps=4,
                                                        **extra)


def _check_random(op, x, eps, seed_offset, norm, lo, hi, bound_inner):
    if norm not in (0, 1):
        raise ValueError(f"{op}: norm must be 0 (linf) or 1 (l2), got {norm}")
    if seed_offset.numel() != 2 or seed_offset.dtype != torch.int64 or seed_offset.device != x.device:
        raise ValueError(f"{op}: seed_offset must be int64[2] on x's device {x.device}")
    # x stands in for grad and eps for step: the shared checks cover x, eps and the bounds.
    _check(op, x, x, None, eps, None, lo, hi, bound_inner)


@torch.library.custom_op("adkernels::random_start_triton", mutates_args=())
def random_start_triton(x: Tensor, eps: Tensor, seed_offset: Tensor, norm: int, lo: Optional[Tensor],
                        hi: Optional[Tensor], bound_inner: int) -> Tensor:
    """Triton ``random_start`` (norm 0 = linf, 1 = l2) as a new tensor."""
    _check_random("random_start_triton", x, eps, seed_offset, norm, lo, hi, bound_inner)
    out = torch.empty_like(x)
    _launch_random(x, out, eps, seed_offset, norm, lo, hi, bound_inner)
    return out


@torch.library.custom_op("adkernels::random_start_triton_", mutates_args=("x",))
def random_start_triton_(x: Tensor, eps: Tensor, seed_offset: Tensor, norm: int, lo: Optional[Tensor],
                         hi: Optional[Tensor], bound_inner: int) -> None:
    """In-place Triton ``random_start``: writes into x (l2 reads nothing of x before its pass)."""
    _check_random("random_start_triton_", x, eps, seed_offset, norm, lo, hi, bound_inner)
    _launch_random(x, x, eps, seed_offset, norm, lo, hi, bound_inner)


def _random_start_fake(x, eps, seed_offset, norm, lo, hi, bound_inner):
    return torch.empty_like(x)


def _random_start_inplace_fake(x, eps, seed_offset, norm, lo, hi, bound_inner):
    return None


random_start_triton.register_fake(_random_start_fake)
random_start_triton_.register_fake(_random_start_inplace_fake)
