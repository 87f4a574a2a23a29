"""Triton soft-target cross entropy and ADA-Lab targets: ``torch.ops.adkernels.soft_ce_fwd_triton``
and ``torch.ops.adkernels.ada_lab_targets_triton``, twins of the C++ ops (csrc/ops.cpp) with the
same formulas (kd_math.h: soft_ce_*, ada_lab_*; adkernels/reference/soft_ce.py).

One program per row, column-blocked over V. soft_ce: pass 1 online max / sum of exp, sum q and
sum q z; pass 2 the two gradients. ada_lab: pass 1 online max / sum of exp of z_adv, the max of
z_adv without column y, online max / sum of exp of z_aa / T; pass 2 the targets.
Loads are upcast to float32 (float64 for float64 inputs) right after ``tl.load``.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor

from .._backend import triton_interpret
from ..ops.soft_ce import ada_lab_targets_fake, soft_ce_fwd_fake
from .kd import _quiet_interpreter

MAX_BLOCK = 4096  # largest column block (tests lower it to cover multi-block rows)

_NEG_INF = tl.constexpr(float("-inf"))


@triton.jit
def _online(m, s, x, scale):
    """(max, sum exp((. - max) * scale)) after adding block x (lanes at -inf add nothing)."""
    m_new = tl.maximum(m, tl.max(x, axis=0))
    m_ref = tl.where(m_new == _NEG_INF, 0.0, m_new)
    s = s * tl.exp((m - m_ref) * scale) + tl.sum(tl.exp((x - m_ref) * scale), axis=0)
    return m_new, s


@triton.jit
def _soft_ce_kernel(z_ptr, q_ptr, loss_ptr, gz_ptr, gq_ptr, V, grad_scale: tl.float64,
                    ACC: tl.constexpr, WRITE_GZ: tl.constexpr, WRITE_GQ: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * V
    q_row = q_ptr + row * V
    offs = tl.arange(0, BLOCK)
    m = tl.full([], _NEG_INF, ACC)
    s = tl.zeros([], ACC)
    qsum = tl.zeros([], ACC)
    qz = tl.zeros([], ACC)
    for start in range(0, V, BLOCK):
        cols = start + offs
        mask = cols < V
        z = tl.load(z_row + cols, mask=mask, other=_NEG_INF).to(ACC)
        q = tl.load(q_row + cols, mask=mask, other=0.0).to(ACC)
        m, s = _online(m, s, z, 1.0)
        qsum += tl.sum(q, axis=0)
        qz += tl.sum(tl.where(q > 0, q * z, 0.0), axis=0)  # soft_ce_qz
    lse = m + tl.log(s)
    tl.store(loss_ptr + row, (qsum * lse - qz).to(loss_ptr.dtype.element_ty))  # soft_ce_value
    if WRITE_GZ or WRITE_GQ:
        gs = tl.full([], grad_scale, ACC)
        for start in range(0, V, BLOCK):
            cols = start + offs
            mask = cols < V
            z = tl.load(z_row + cols, mask=mask, other=_NEG_INF).to(ACC)
            q = tl.load(q_row + cols, mask=mask, other=0.0).to(ACC)
            if WRITE_GZ:
                p = tl.exp(z - lse)
                tl.store(gz_ptr + row * V + cols, (gs * (p * qsum - q)).to(gz_ptr.dtype.element_ty), mask=mask)
            if WRITE_GQ:
                d = lse - z  # soft_ce_grad_target: 0 where q = 0 and z = -inf
                d = tl.where(z > _NEG_INF, d, tl.where(q > 0, d, 0.0))
                tl.store(gq_ptr + row * V + cols, (gs * d).to(gq_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _ada_lab_kernel(za_ptr, zb_ptr, y_ptr, out_ptr, w_ptr, V,
                    max_weight: tl.float64, gamma: tl.float64, bias: tl.float64, temperature: tl.float64,
                    ACC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    za_row = za_ptr + row * V
    zb_row = zb_ptr + row * V
    out_row = out_ptr + row * V
    offs = tl.arange(0, BLOCK)
    y = tl.load(y_ptr + row)
    bad = (y < 0) | (y >= V)  # not checked on the host: such a row comes out NaN
    invT = 1.0 / tl.full([], temperature, ACC)
    ma = tl.full([], _NEG_INF, ACC)
    sa = tl.zeros([], ACC)
    other = tl.full([], _NEG_INF, ACC)
    mb = tl.full([], _NEG_INF, ACC)
    sb = tl.zeros([], ACC)
    for start in range(0, V, BLOCK):
        cols = start + offs
        mask = cols < V
        za = tl.load(za_row + cols, mask=mask, other=_NEG_INF).to(ACC)
        zb = tl.load(zb_row + cols, mask=mask, other=_NEG_INF).to(ACC)
        ma, sa = _online(ma, sa, za, 1.0)
        other = tl.maximum(other, tl.max(tl.where(cols == y, _NEG_INF, za), axis=0))
        mb, sb = _online(mb, sb, zb, invT)
    lse_a = ma + tl.log(sa)
    z_y = tl.load(za_row + tl.where(bad, 0, y)).to(ACC)
    margin = tl.exp(z_y - lse_a) - tl.exp(other - lse_a)
    g = tl.full([], gamma, ACC)
    w = tl.full([], max_weight, ACC) / (1.0 + tl.exp(g * (margin - tl.full([], bias, ACC))))  # ada_lab_weight
    w = tl.where(bad, float("nan"), w)
    tl.store(w_ptr + row, w.to(w_ptr.dtype.element_ty))
    mb_ref = tl.where(mb == _NEG_INF, 0.0, mb)
    inv_sb = 1.0 / sb
    for start in range(0, V, BLOCK):
        cols = start + offs
        mask = cols < V
        zb = tl.load(zb_row + cols, mask=mask, other=_NEG_INF).to(ACC)
        q = tl.exp((zb - mb_ref) * invT) * inv_sb
        onehot = tl.where(cols == y, 1.0, 0.0)
        t = (1.0 - w) * onehot + w * q  # ada_lab_target
        tl.store(out_row + cols, t.to(out_ptr.dtype.element_ty), mask=mask)


_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_pair(op, a, b):
    if a.dim() != 2 or a.shape != b.shape or a.dtype != b.dtype or a.dtype not in _DTYPES:
        raise ValueError(f"{op}: inputs must be [N, V] of one shape and float dtype, got {tuple(a.shape)} {a.dtype} "
                         f"and {tuple(b.shape)} {b.dtype}")
    if not (a.is_contiguous() and b.is_contiguous()):
        raise ValueError(f"{op}: inputs must be contiguous")
    if a.device.type == "cpu" and not triton_interpret():
        raise RuntimeError(f"{op}: Triton runs CPU tensors only in interpreter mode; set TRITON_INTERPRET=1 before "
                           "importing adkernels.triton, or use a CUDA device")


def _block(V):
    return max(16, min(triton.next_power_of_2(V), int(MAX_BLOCK)))


def _acc(x):
    return tl.float64 if x.dtype == torch.float64 else tl.float32


@torch.library.custom_op("adkernels::soft_ce_fwd_triton", mutates_args=())
def soft_ce_fwd_triton(logits: Tensor, targets: Tensor, grad_logits: bool, grad_targets: bool, grad_scale: float
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """Triton ``soft_ce_fwd``: (loss [N], grad_scale * d loss_n / d logits or empty, grad_scale * d loss_n /
    d targets or empty)."""
    _check_pair("soft_ce_fwd_triton", logits, targets)
    loss, gz, gq = soft_ce_fwd_fake(logits, targets, grad_logits, grad_targets, grad_scale)
    N, V = logits.shape
    if N == 0 or V == 0:
        return loss.zero_(), gz, gq
    BLOCK = _block(V)
    with _quiet_interpreter():
        _soft_ce_kernel[(N,)](logits, targets, loss, gz if grad_logits else loss, gq if grad_targets else loss, V, float(grad_scale),
                              ACC=_acc(logits), WRITE_GZ=bool(grad_logits), WRITE_GQ=bool(grad_targets), BLOCK=BLOCK,
                              num_warps=4 if BLOCK <= 1024 else 8)
    return loss, gz, gq


@torch.library.custom_op("adkernels::ada_lab_targets_triton", mutates_args=())
def ada_lab_targets_triton(logits_adv: Tensor, logits_aa: Tensor, target: Tensor, max_weight: float, gamma: float,
                           bias: float, temperature: float) -> tuple[Tensor, Tensor]:
    """Triton ``ada_lab_targets``: (targets [N, V] in the input dtype, weight [N])."""
    _check_pair("ada_lab_targets_triton", logits_adv, logits_aa)
    N, V = logits_adv.shape
    if target.dim() != 1 or target.shape[0] != N:
        raise ValueError(f"ada_lab_targets_triton: target must have shape [{N}], got {tuple(target.shape)}")
    if not temperature > 0:
        raise ValueError(f"ada_lab_targets_triton: temperature must be > 0, got {temperature}")
    out, w = ada_lab_targets_fake(logits_adv, logits_aa, target, max_weight, gamma, bias, temperature)
    if N == 0 or V == 0:
        return out, w
    BLOCK = _block(V)
    with _quiet_interpreter():
        _ada_lab_kernel[(N,)](logits_adv, logits_aa, target.to(torch.int64).contiguous(), out, w, V,
                              float(max_weight), float(gamma), float(bias), float(temperature),
                              ACC=_acc(logits_adv), BLOCK=BLOCK, num_warps=4 if BLOCK <= 1024 else 8)
    return out, w


soft_ce_fwd_triton.register_fake(soft_ce_fwd_fake)
ada_lab_targets_triton.register_fake(ada_lab_targets_fake)
