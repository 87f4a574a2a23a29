"""Triton KD-loss forward: ``torch.ops.adkernels.kd_fwd_triton``, the twin of ``kd_fwd``.

Same contract as the C++ op (csrc/ops.cpp) and the same formulas (kd_math.h): per row,

    loss = alpha T^2 D(p_t^T, p_s^T) + (1 - alpha) CE_ls(target, p_s)

with D = kl (0), reverse_kl (1) or jsd (2, weight beta), and the gradients
d loss_row / d student, d loss_row / d teacher made in the same launch.

One program per row, column-blocked over V (BLOCK columns at a time, so any V works):
  1. online max and sum of exp for z_s / T and z_t / T (and z_s at T = 1 for the CE when
     T != 1; sum of z_s for label smoothing)
  2. the divergence's two sums acc_t / acc_s (they need the normalizers of 1)
  3. the gradients (they need the sums of 2), written in the input dtype
Logits are read once per pass; everything is computed in float32 (float64 for float64
inputs: loads are upcast right after ``tl.load``; float arguments travel as float64).
"""
import contextlib
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._backend import triton_interpret
from ..ops.kd import kd_fwd_fake

# Largest column block. Rows longer than this are walked in several blocks; tests lower it
# (it is read at every call) to cover the multi-block path on small V.
MAX_BLOCK = 4096

_NEG_INF = tl.constexpr(float("-inf"))


@triton.jit
def _prob_and_log(z, m, invT, inv_sum, log_sum):
    """p = softmax(z / T) and log p of a block, from the row's max m and sum of exp."""
    x = (z - m) * invT
    return tl.exp(x) * inv_sum, x - log_sum


@triton.jit
def _kd_fwd_kernel(
    s_ptr, t_ptr, y_ptr, loss_ptr, gs_ptr, gt_ptr,
    V, ignore_index,
    temperature: tl.float64, alpha: tl.float64, beta: tl.float64, label_smoothing: tl.float64,
    ACC: tl.constexpr,        # tl.float32, or tl.float64 for float64 inputs
    DIV: tl.constexpr,        # 0 kl, 1 reverse_kl, 2 jsd
    NEED_DIV: tl.constexpr,   # alpha > 0
    NEED_CE: tl.constexpr,    # alpha < 1 and a target
    SAME_T: tl.constexpr,     # temperature == 1: the CE reuses the student's softmax at T
    NEED_ZSUM: tl.constexpr,  # NEED_CE and label_smoothing > 0
    HAS_TARGET: tl.constexpr,
    WRITE_GS: tl.constexpr,
    WRITE_GT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + row * V
    t_row = t_ptr + row * V
    gs_row = gs_ptr + row * V
    gt_row = gt_ptr + row * V
    offs = tl.arange(0, BLOCK)

    y = -1
    bad = False
    if HAS_TARGET:
        y = tl.load(y_ptr + row)
        if y == ignore_index:
            tl.store(loss_ptr + row, tl.zeros([], loss_ptr.dtype.element_ty))
            for start in range(0, V, BLOCK):
                cols = start + offs
                mask = cols < V
                if WRITE_GS:
                    tl.store(gs_row + cols, tl.zeros([BLOCK], gs_ptr.dtype.element_ty), mask=mask)
                if WRITE_GT:
                    tl.store(gt_row + cols, tl.zeros([BLOCK], gt_ptr.dtype.element_ty), mask=mask)
            return
        # No host-side range check (it would synchronize): a target outside [0, V) that is
        # not ignore_index gives a NaN loss and NaN gradients for its row.
        bad = (y < 0) | (y >= V)

    T = tl.full([], temperature, ACC)
    invT = 1.0 / T
    a = tl.full([], alpha, ACC)
    b = tl.full([], beta, ACC)
    ls = tl.full([], label_smoothing, ACC)

    # ---- pass 1: online (max, sum exp) of z_s / T, z_t / T, and z_s at T = 1 -------------
    ms = tl.full([], _NEG_INF, ACC)  # max of raw z_s (z / T has its max at the same place)
    ss = tl.zeros([], ACC)           # sum exp((z_s - ms) / T)
    s1 = tl.zeros([], ACC)           # sum exp(z_s - ms)         (CE with T != 1)
    mt = tl.full([], _NEG_INF, ACC)
    st = tl.zeros([], ACC)
    zsum = tl.zeros([], ACC)
    for start in range(0, V, BLOCK):
        cols = start + offs
        mask = cols < V
        zs = tl.load(s_row + cols, mask=mask, other=_NEG_INF).to(ACC)
        m_new = tl.maximum(ms, tl.max(zs, axis=0))
        m_ref = tl.where(m_new == _NEG_INF, 0.0, m_new)  # all -inf so far: keep exp() finite
        ss = ss * tl.exp((ms - m_ref) * invT) + tl.sum(tl.exp((zs - m_ref) * invT), axis=0)
        if NEED_CE:
            if not SAME_T:
                s1 = s1 * tl.exp(ms - m_ref) + tl.sum(tl.exp(zs - m_ref), axis=0)
        if NEED_ZSUM:
            zsum += tl.sum(tl.where(mask, zs, 0.0), axis=0)
        ms = m_new
        if NEED_DIV:
            zt = tl.load(t_row + cols, mask=mask, other=_NEG_INF).to(ACC)
            mt_new = tl.maximum(mt, tl.max(zt, axis=0))
            mt_ref = tl.where(mt_new == _NEG_INF, 0.0, mt_new)
            st = st * tl.exp((mt - mt_ref) * invT) + tl.sum(tl.exp((zt - mt_ref) * invT), axis=0)
            mt = mt_new
    log_ss = tl.log(ss)
    inv_ss = 1.0 / ss
    log_st = tl.log(st)
    inv_st = 1.0 / st

    # ---- pass 2: the divergence's two sums ----------------------------------------------
    acc_t = tl.zeros([], ACC)
    acc_s = tl.zeros([], ACC)
    if NEED_DIV:
        vt = tl.zeros([BLOCK], ACC)
        vs = tl.zeros([BLOCK], ACC)
        for start in range(0, V, BLOCK):
            cols = start + offs
            mask = cols < V
            zs = tl.load(s_row + cols, mask=mask, other=_NEG_INF).to(ACC)
            zt = tl.load(t_row + cols, mask=mask, other=_NEG_INF).to(ACC)
            ps, lps = _prob_and_log(zs, ms, invT, inv_ss, log_ss)
            pt, lpt = _prob_and_log(zt, mt, invT, inv_st, log_st)
            # p > 0 guards give 0 log 0 = 0 (also on masked lanes, where p = 0).
            if DIV == 0:
                vt += tl.where(pt > 0, pt * (lpt - lps), 0.0)
            elif DIV == 1:
                vs += tl.where(ps > 0, ps * (lps - lpt), 0.0)
            else:
                # As kd_math.h: where M underflows to 0 (denormal p) the terms are dropped,
                # since log M would be -inf.
                mix = b * pt + (1.0 - b) * ps
                lm = tl.log(mix)
                vt += tl.where((mix > 0) & (pt > 0), pt * (lpt - lm), 0.0)
                vs += tl.where((mix > 0) & (ps > 0), ps * (lps - lm), 0.0)
        acc_t = tl.sum(vt, axis=0)
        acc_s = tl.sum(vs, axis=0)

    # ---- the loss row --------------------------------------------------------------------
    loss = tl.zeros([], ACC)
    if NEED_DIV:
        if DIV == 0:
            d = acc_t
        elif DIV == 1:
            d = acc_s
        else:
            d = b * acc_t + (1.0 - b) * acc_s
        loss += a * T * T * d
    inv_s1 = inv_ss
    if NEED_CE:
        if SAME_T:
            lse1 = ms + log_ss
        else:
            lse1 = ms + tl.log(s1)
            inv_s1 = 1.0 / s1
        y_safe = tl.where(bad, 0, y)
        z_y = tl.load(s_row + y_safe).to(ACC)
        ce = lse1 - (1.0 - ls) * z_y
        if NEED_ZSUM:
            ce -= ls * zsum / V
        loss += (1.0 - a) * ce
    if HAS_TARGET:
        loss = tl.where(bad, float("nan"), loss)
    tl.store(loss_ptr + row, loss.to(loss_ptr.dtype.element_ty))

    # ---- pass 3: gradients -----------------------------------------------------------------
    if WRITE_GS or WRITE_GT:
        kdiv = a * T
        kce = 1.0 - a
        smooth = ls / V
        for start in range(0, V, BLOCK):
            cols = start + offs
            mask = cols < V
            zs = tl.load(s_row + cols, mask=mask, other=_NEG_INF).to(ACC)
            g_s = tl.zeros([BLOCK], ACC)
            g_t = tl.zeros([BLOCK], ACC)
            if NEED_DIV:
                zt = tl.load(t_row + cols, mask=mask, other=_NEG_INF).to(ACC)
                ps, lps = _prob_and_log(zs, ms, invT, inv_ss, log_ss)
                pt, lpt = _prob_and_log(zt, mt, invT, inv_st, log_st)
                if DIV == 0:
                    ds = ps - pt
                    dt = tl.where(pt > 0, pt * ((lpt - lps) - acc_t), 0.0)
                elif DIV == 1:
                    ds = tl.where(ps > 0, ps * ((lps - lpt) - acc_s), 0.0)
                    dt = pt - ps
                else:
                    mix = b * pt + (1.0 - b) * ps
                    lm = tl.log(mix)
                    ds = (1.0 - b) * tl.where(ps > 0, ps * (tl.where(mix > 0, lps - lm, 0.0) - acc_s), 0.0)
                    dt = b * tl.where(pt > 0, pt * (tl.where(mix > 0, lpt - lm, 0.0) - acc_t), 0.0)
                g_s = kdiv * ds
                g_t = kdiv * dt
            if NEED_CE:
                if SAME_T:
                    q = tl.exp((zs - ms) * invT) * inv_ss
                else:
                    q = tl.exp(zs - ms) * inv_s1
                g_s = g_s + kce * (q - smooth)
                g_s = g_s - tl.where(cols == y, kce * (1.0 - ls), 0.0)
            if HAS_TARGET:
                g_s = tl.where(bad, float("nan"), g_s)
                g_t = tl.where(bad, float("nan"), g_t)
            if WRITE_GS:
                tl.store(gs_row + cols, g_s.to(gs_ptr.dtype.element_ty), mask=mask)
            if WRITE_GT:
                tl.store(gt_row + cols, g_t.to(gt_ptr.dtype.element_ty), mask=mask)


_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _block(V: int) -> int:
    return max(16, min(triton.next_power_of_2(V), int(MAX_BLOCK)))


@torch.library.custom_op("adkernels::kd_fwd_triton", mutates_args=())
def kd_fwd_triton(
    student: Tensor,
    teacher: Tensor,
    target: Optional[Tensor],
    temperature: float,
    alpha: float,
    divergence: int,
    beta: float,
    ignore_index: int,
    label_smoothing: float,
    grad_student: bool,
    grad_teacher: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Triton ``kd_fwd``: (loss [N] fp32 (fp64 for fp64 input), d loss_n / d student or an
    empty tensor, d loss_n / d teacher or an empty tensor). Rows whose target is
    ``ignore_index`` give 0 loss and zero gradients; ``target=None`` means no CE, no ignoring."""
    if student.dim() != 2 or student.shape != teacher.shape:
        raise ValueError(
            f"kd_fwd_triton: student and teacher must be [N, V] of the same shape, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    if student.dtype != teacher.dtype or student.dtype not in _DTYPES:
        raise TypeError(
            f"kd_fwd_triton: student and teacher must share one of float32/float64/float16/bfloat16, "
            f"got {student.dtype} and {teacher.dtype}"
        )
    if student.device != teacher.device:
        raise ValueError(f"kd_fwd_triton: student is on {student.device} but teacher is on {teacher.device}")
    if not temperature > 0:
        raise ValueError(f"kd_fwd_triton: temperature must be > 0, got {temperature}")
    if divergence not in (0, 1, 2):
        raise ValueError(f"kd_fwd_triton: divergence must be 0 (kl), 1 (reverse_kl) or 2 (jsd), got {divergence}")
    if not (student.is_contiguous() and teacher.is_contiguous()):
        raise ValueError("kd_fwd_triton: student and teacher must be contiguous")
    if student.device.type == "cpu" and not triton_interpret():
        raise RuntimeError(
            "kd_fwd_triton: Triton runs CPU tensors only in interpreter mode; set TRITON_INTERPRET=1 "
            "before importing adkernels.triton, or use a CUDA device"
        )
    N, V = student.shape
    if target is not None:
        if target.dim() != 1 or target.shape[0] != N:
            raise ValueError(f"kd_fwd_triton: target must have shape [{N}], got {tuple(target.shape)}")
        if target.device != student.device:
            raise ValueError(f"kd_fwd_triton: target is on {target.device} but the logits are on {student.device}")
        target = target.to(torch.int64).contiguous()
    loss, gs, gt = kd_fwd_fake(student, teacher, target, temperature, alpha, divergence, beta,
                               ignore_index, label_smoothing, grad_student, grad_teacher)
    if N == 0 or V == 0:
        loss.zero_()
        return loss, gs, gt
    need_div = alpha > 0
    need_ce = alpha < 1 and target is not None
    # The temperature only enters the divergence: without it, run the CE at T = 1 directly.
    T = float(temperature) if need_div else 1.0
    BLOCK = _block(V)
    with _quiet_interpreter():
        _launch(student, teacher, target, loss, gs if grad_student else None, gt if grad_teacher else None,
                T, alpha, divergence, beta, ignore_index, label_smoothing, need_div, need_ce, BLOCK)
    return loss, gs, gt


def _quiet_interpreter():
    # The interpreter runs the kernel in numpy, which warns about the -inf - -inf and log(0)
    # that the kernel computes on purpose (masked lanes, p = 0) and then discards.
    if triton_interpret():
        import numpy as np

        return np.errstate(all="ignore")
    return contextlib.nullcontext()


def _launch(student, teacher, target, loss, gs, gt, T, alpha, divergence, beta, ignore_index,
            label_smoothing, need_div, need_ce, BLOCK):
    N, V = student.shape
    _kd_fwd_kernel[(N,)](
        student, teacher, target if target is not None else loss, loss,
        gs if gs is not None else loss, gt if gt is not None else loss,
        V, int(ignore_index),
        T, float(alpha), float(beta), float(label_smoothing),
        ACC=tl.float64 if student.dtype == torch.float64 else tl.float32,
        DIV=int(divergence),
        NEED_DIV=need_div,
        NEED_CE=need_ce,
        SAME_T=T == 1.0,
        NEED_ZSUM=need_ce and label_smoothing > 0,
        HAS_TARGET=target is not None,
        WRITE_GS=gs is not None,
        WRITE_GT=gt is not None,
        BLOCK=BLOCK,
        num_warps=4 if BLOCK <= 1024 else 8,
    )


kd_fwd_triton.register_fake(kd_fwd_fake)
