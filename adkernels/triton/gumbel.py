"""Triton Philox helpers and Gumbel-Softmax: ``torch.ops.adkernels.gumbel_softmax_{fwd,bwd}_triton``,
the twins of the C++ ops (csrc/ops.cpp) with the formulas of gumbel_math.h.

Reusable ``@triton.jit`` helpers (the Triton side of csrc/include/adkernels/philox.h):

    philox_uniform(bits)                 uint32 -> u in [2^-32, 1 - 2^-24] (tl.rand's map, 0 raised)
    philox_bits(seed, offset, e)         lane e % 4 of tl.randint4x(seed, offset + e // 4)
    gumbel_noise(seed, offset, e, ACC)   -log(-log u_e): the per-element Gumbel noise a fused
                                         kernel calls (same u as the CPU / CUDA kernels)
    philox_normal(seed, offset, e, ACC)  Box-Muller normal of element e (pairs of lanes)
    gumbel_online_block(...)             one column block of a sample's first pass: online
                                         max / sum of exp((x + g) / tau), first argmax

Forward: one program per row, column-blocked: pass 1 regenerates noise per block and keeps an
online max / sum of exp of z = (x + g) / tau (and the first argmax for hard), pass 2 regenerates
it and writes y (hard: the one-hot, plus the soft y when the backward needs it). Backward: one
program per row, dot = sum(dy * y) then dx = y * (dy - dot) / tau. Loads are upcast to fp32
(fp64 for fp64 logits) right after ``tl.load``.
"""
from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._backend import triton_interpret
from ..ops.gumbel import gumbel_softmax_bwd_fake, gumbel_softmax_fwd_fake

# Columns per block (tests may lower it).
BLOCK = 4096


@triton.jit
def philox_uniform(bits):
    s = bits.to(tl.int32, bitcast=True)
    s = tl.where(s < 0, ~s, s)
    u = s.to(tl.float32) * 4.6566127342e-10
    return tl.maximum(u, 2.3283064365386963e-10)


@triton.jit
def philox_bits(seed, offset, e):
    r0, r1, r2, r3 = tl.randint4x(seed, offset + (e >> 2))
    lane = e & 3
    return tl.where(lane == 0, r0, tl.where(lane == 1, r1, tl.where(lane == 2, r2, r3)))


@triton.jit
def gumbel_noise(seed, offset, e, ACC: tl.constexpr):
    u = philox_uniform(philox_bits(seed, offset, e)).to(ACC)
    return 0.0 - tl.log(0.0 - tl.log(u))


@triton.jit
def philox_normal(seed, offset, e, ACC: tl.constexpr):
    r0, r1, r2, r3 = tl.randint4x(seed, offset + (e >> 2))
    lane = e & 3
    first = lane < 2
    ua = philox_uniform(tl.where(first, r0, r2)).to(ACC)
    ub = philox_uniform(tl.where(first, r1, r3)).to(ACC)
    r = tl.sqrt(-2.0 * tl.log(ua))
    th = 6.283185307179586 * ub
    return tl.where((lane & 1) == 1, r * tl.sin(th), r * tl.cos(th))


@triton.jit
def gumbel_online_block(x, j, n, base, seed, offset, inv, m, s, best, best_idx, HARD: tl.constexpr,
                        ACC: tl.constexpr):
    """One column block of a Gumbel-Softmax row's first pass: z = (x + g) / tau at columns ``j``
    (< n valid; noise of element ``base + j``), folded into the per-lane running max ``m`` and
    sum ``s`` of exp(z - m), and (HARD) the row's first argmax so far. Returns (m, s, best, best_idx)."""
    z = (x + gumbel_noise(seed, offset, base + j, ACC)) * inv
    z = tl.where(j < n, z, float("-inf"))
    m_new = tl.maximum(m, z)
    safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    s = s * tl.exp(m - safe) + tl.exp(z - safe)
    if HARD:
        bm = tl.max(z, axis=0)
        bi = tl.min(tl.where(z == bm, j, n), axis=0)
        take = bm > best
        best_idx = tl.where(take, bi, best_idx)
        best = tl.where(take, bm, best)
    return m_new, s, best, best_idx


@triton.jit
def _fwd_kernel(x_ptr, y_ptr, ys_ptr, tau_ptr, so_ptr, V,
                HARD: tl.constexpr, SAVE_SOFT: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    seed = tl.load(so_ptr)
    offset = tl.load(so_ptr + 1)
    inv = 1.0 / tl.load(tau_ptr).to(ACC)
    cols = tl.arange(0, BLOCK).to(tl.int64)
    base = row * V
    m = tl.full([BLOCK], float("-inf"), ACC)
    s = tl.zeros([BLOCK], ACC)
    best = tl.max(m, axis=0)
    best_idx = base * 0
    for start in range(0, V, BLOCK):
        j = start + cols
        mask = j < V
        x = tl.load(x_ptr + base + j, mask=mask, other=0.0).to(ACC)
        m, s, best, best_idx = gumbel_online_block(x, j, V, base, seed, offset, inv, m, s, best, best_idx, HARD, ACC)
    mx = tl.max(m, axis=0)
    total = tl.sum(s * tl.exp(m - mx), axis=0)
    rs = 1.0 / total
    for start in range(0, V, BLOCK):
        j = start + cols
        mask = j < V
        if HARD:
            tl.store(y_ptr + base + j, tl.where(j == best_idx, 1.0, 0.0).to(y_ptr.dtype.element_ty), mask=mask)
        if SAVE_SOFT or not HARD:
            x = tl.load(x_ptr + base + j, mask=mask, other=0.0).to(ACC)
            z = (x + gumbel_noise(seed, offset, base + j, ACC)) * inv
            y = tl.exp(z - mx) * rs
            if HARD:
                tl.store(ys_ptr + base + j, y.to(ys_ptr.dtype.element_ty), mask=mask)
            else:
                tl.store(y_ptr + base + j, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(y_ptr, dy_ptr, dx_ptr, tau_ptr, V, ACC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    inv = 1.0 / tl.load(tau_ptr).to(ACC)
    cols = tl.arange(0, BLOCK).to(tl.int64)
    base = row * V
    acc = tl.zeros([BLOCK], ACC)
    for start in range(0, V, BLOCK):
        j = start + cols
        mask = j < V
        y = tl.load(y_ptr + base + j, mask=mask, other=0.0).to(ACC)
        dy = tl.load(dy_ptr + base + j, mask=mask, other=0.0).to(ACC)
        acc += y * dy
    dot = tl.sum(acc, axis=0)
    for start in range(0, V, BLOCK):
        j = start + cols
        mask = j < V
        y = tl.load(y_ptr + base + j, mask=mask, other=0.0).to(ACC)
        dy = tl.load(dy_ptr + base + j, mask=mask, other=0.0).to(ACC)
        tl.store(dx_ptr + base + j, (y * (dy - dot) * inv).to(dx_ptr.dtype.element_ty), mask=mask)


_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check(op, x, tau):
    if x.dim() != 2 or x.dtype not in _DTYPES or not x.is_contiguous():
        raise ValueError(f"{op}: expected a contiguous [N, V] float tensor, got {tuple(x.shape)} {x.dtype}")
    if tau.numel() != 1 or not tau.dtype.is_floating_point or tau.device != x.device:
        raise ValueError(f"{op}: tau must be a one-element float tensor on {x.device}")
    if x.device.type == "cpu" and not triton_interpret():
        raise RuntimeError(f"{op}: Triton runs CPU tensors only in interpreter mode; set TRITON_INTERPRET=1 "
                           "before importing adkernels.triton, or use a CUDA device")


def _block(V):
    return max(16, min(triton.next_power_of_2(max(V, 1)), int(BLOCK)))


def _acc(x):
    return tl.float64 if x.dtype == torch.float64 else tl.float32


@torch.library.custom_op("adkernels::gumbel_softmax_fwd_triton", mutates_args=())
def gumbel_softmax_fwd_triton(logits: Tensor, tau: Tensor, seed_offset: Tensor, hard: bool,
                              save_soft: bool) -> Tuple[Tensor, Tensor]:
    """Triton ``gumbel_softmax_fwd``."""
    _check("gumbel_softmax_fwd_triton", logits, tau)
    if seed_offset.numel() != 2 or seed_offset.dtype != torch.int64 or seed_offset.device != logits.device:
        raise ValueError(f"gumbel_softmax_fwd_triton: seed_offset must be int64[2] on {logits.device}")
    y = torch.empty_like(logits)
    y_soft = torch.empty_like(logits) if hard and save_soft else logits.new_empty((0,))
    N, V = logits.shape
    if N and V:
        blk = _block(V)
        _fwd_kernel[(N,)](logits, y, y_soft if hard and save_soft else y, tau, seed_offset.contiguous(), V,
                          HARD=hard, SAVE_SOFT=hard and save_soft, ACC=_acc(logits), BLOCK=blk,
                          num_warps=8 if blk >= 2048 else 4)
    return y, y_soft


@torch.library.custom_op("adkernels::gumbel_softmax_bwd_triton", mutates_args=())
def gumbel_softmax_bwd_triton(y: Tensor, grad_y: Tensor, tau: Tensor) -> Tensor:
    """Triton ``gumbel_softmax_bwd``: y * (grad_y - sum(grad_y * y)) / tau per row."""
    _check("gumbel_softmax_bwd_triton", y, tau)
    if grad_y.shape != y.shape or grad_y.dtype != y.dtype or not grad_y.is_contiguous():
        raise ValueError("gumbel_softmax_bwd_triton: grad_y must be contiguous with y's shape and dtype")
    dx = torch.empty_like(y)
    N, V = y.shape
    if N and V:
        blk = _block(V)
        _bwd_kernel[(N,)](y, grad_y, dx, tau, V, ACC=_acc(y), BLOCK=blk, num_warps=8 if blk >= 2048 else 4)
    return dx


gumbel_softmax_fwd_triton.register_fake(gumbel_softmax_fwd_fake)
gumbel_softmax_bwd_triton.register_fake(gumbel_softmax_bwd_fake)
