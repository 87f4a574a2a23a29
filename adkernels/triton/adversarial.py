"""Triton adversarial losses: ``adkernels::adv_source_fwd_triton`` and ``adkernels::adv_binary_fwd_triton``,
the twins of the C++ ops (same contracts, csrc/ops.cpp; same formulas, adversarial_math.h).

adv_source_fwd: a count kernel (per-source counts, atomics on three int64 counters), then one
program per block of rows: a row's 2-3 logits, its source, the scaled loss and gradient.
Source ids outside {0, 1, 2} ({1, 2} for generator modes) give NaN rows (no host check: it
would synchronize; the Python op checks eagerly).
adv_binary_fwd: one program per chunk of 4096 elements, walked in blocks; per-element terms or
one partial sum per chunk.
Everything is computed in float32 (float64 for float64 inputs).
"""
import contextlib
import math
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._backend import triton_interpret
from ..ops.adversarial import CHUNK, adv_binary_fwd_fake, adv_distill_fwd_fake, adv_source_fwd_fake, binary_size
from .gumbel import gumbel_noise, gumbel_online_block
from .kd import _prob_and_log

ROWS_BLOCK = 1024
ELEM_BLOCK = 1024


@triton.jit
def _log1p(x):
    # log(1 + x) for x in [0, 1]: the series where 1 + x would round x away.
    return tl.where(x < 1e-4, x - 0.5 * x * x, tl.log(1.0 + x))


@triton.jit
def _softplus(x):
    return tl.maximum(x, 0.0) + _log1p(tl.exp(-tl.abs(x)))


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _count_kernel(src_ptr, counts_ptr, N, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    s = tl.load(src_ptr + offs, mask=offs < N, other=-1)
    tl.atomic_add(counts_ptr + 0, tl.sum((s == 0).to(tl.int64), axis=0))
    tl.atomic_add(counts_ptr + 1, tl.sum((s == 1).to(tl.int64), axis=0))
    tl.atomic_add(counts_ptr + 2, tl.sum((s == 2).to(tl.int64), axis=0))


@triton.jit
def _source_row(z0, z1, z2, m0, m1, m2, c, K: tl.constexpr, MODE: tl.constexpr):
    """adv_source_row (adversarial_math.h), elementwise: the scaled loss and gradient (g0, g1, g2)
    of rows with logits (z0, z1[, z2]) (K = 3 softmax, 2 binary tree; g2 = 0 for K = 2), one-hot
    source indicator (m0, m1, m2) and scale c."""
    if K == 3:
        mx = tl.maximum(tl.maximum(z0, z1), z2)
        e0 = tl.exp(z0 - mx)
        e1 = tl.exp(z1 - mx)
        e2 = tl.exp(z2 - mx)
        S = e0 + e1 + e2
        logS = tl.log(S)
        L0 = (z0 - mx) - logS  # not z - lse: lse rounds at the magnitude of z
        L1 = (z1 - mx) - logS
        L2 = (z2 - mx) - logS
        p0 = e0 / S
        p1 = e1 / S
        p2 = e2 / S
    else:
        spa = _softplus(z0)
        spna = _softplus(-z0)
        spb = _softplus(z1)
        spnb = _softplus(-z1)
        L0 = -spna
        L1 = -spa - spnb
        L2 = -spa - spb
        sa = _sigmoid(z0)
        sna = _sigmoid(-z0)
        sb = _sigmoid(z1)
        snb = _sigmoid(-z1)
    if MODE == 2:
        big = 1e30
        o0 = L0 - m0 * big
        o1 = L1 - m1 * big
        o2 = L2 - m2 * big
        mo = tl.maximum(tl.maximum(o0, o1), o2)
        f0 = tl.exp(o0 - mo)
        f1 = tl.exp(o1 - mo)
        f2 = tl.exp(o2 - mo)
        so = f0 + f1 + f2
        loss = -c * (mo + tl.log(so))
        u0 = -f0 / so
        u1 = -f1 / so
        u2 = -f2 / so
    else:
        if MODE == 0:
            sgn = -1.0
        else:
            sgn = 1.0
        own = tl.where(m0 != 0, L0, 0.0) + tl.where(m1 != 0, L1, 0.0) + tl.where(m2 != 0, L2, 0.0)
        loss = c * sgn * own
        u0 = sgn * m0
        u1 = sgn * m1
        u2 = sgn * m2
    if K == 3:
        su = u0 + u1 + u2
        g0 = c * (u0 - p0 * su)
        g1 = c * (u1 - p1 * su)
        g2 = c * (u2 - p2 * su)
    else:
        g0 = c * (u0 * sna - (u1 + u2) * sa)
        g1 = c * (u1 * snb - u2 * sb)
        g2 = tl.zeros_like(g0)
    return loss, g0, g1, g2


@triton.jit
def _source_kernel(
    z_ptr, src_ptr, counts_ptr, rows_ptr, g_ptr, N,
    w0: tl.float64, w1: tl.float64, w2: tl.float64,
    K: tl.constexpr, MODE: tl.constexpr, MEAN: tl.constexpr, WRITE_G: tl.constexpr,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    s = tl.load(src_ptr + offs, mask=mask, other=1)
    c0 = tl.full([], w0, ACC)
    c1 = tl.full([], w1, ACC)
    c2 = tl.full([], w2, ACC)
    if MEAN:
        c0 = c0 / tl.maximum(tl.load(counts_ptr + 0), 1).to(ACC)
        c1 = c1 / tl.maximum(tl.load(counts_ptr + 1), 1).to(ACC)
        c2 = c2 / tl.maximum(tl.load(counts_ptr + 2), 1).to(ACC)
    m0 = (s == 0).to(ACC)
    m1 = (s == 1).to(ACC)
    m2 = (s == 2).to(ACC)
    c = tl.where(s == 0, c0, tl.where(s == 1, c1, c2))
    bad = (s < 0) | (s > 2)
    if MODE != 0:
        bad = bad | (s == 0)  # generator rows are STUDENT or TEACHER
    z0 = tl.load(z_ptr + offs * K + 0, mask=mask, other=0.0).to(ACC)
    z1 = tl.load(z_ptr + offs * K + 1, mask=mask, other=0.0).to(ACC)
    if K == 3:
        z2 = tl.load(z_ptr + offs * K + 2, mask=mask, other=0.0).to(ACC)
    else:
        z2 = tl.zeros_like(z0)
    loss, g0, g1, g2 = _source_row(z0, z1, z2, m0, m1, m2, c, K, MODE)
    loss = tl.where(bad, float("nan"), loss)
    tl.store(rows_ptr + offs, loss.to(rows_ptr.dtype.element_ty), mask=mask)
    if WRITE_G:
        if K == 3:
            g2 = tl.where(bad, float("nan"), g2)
            tl.store(g_ptr + offs * K + 2, g2.to(g_ptr.dtype.element_ty), mask=mask)
        g0 = tl.where(bad, float("nan"), g0)
        g1 = tl.where(bad, float("nan"), g1)
        tl.store(g_ptr + offs * K + 0, g0.to(g_ptr.dtype.element_ty), mask=mask)
        tl.store(g_ptr + offs * K + 1, g1.to(g_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _binary_term(x, y, KIND: tl.constexpr, ROLE: tl.constexpr):
    """(loss, d loss / dx) of one role (0 D real, 1 D fake, 2 G minimax, 3 G nonsat); as adv_binary_term."""
    if KIND == 0 or KIND == 4:
        s = _sigmoid(x)
        if ROLE == 0:
            loss = y * _softplus(-x) + (1.0 - y) * _softplus(x)
            grad = s - y
        elif ROLE == 1 or (KIND == 4 and ROLE == 2):
            loss = _softplus(x)
            grad = s
        elif ROLE == 2:
            loss = -_softplus(x)
            grad = -s
        else:
            loss = _softplus(-x)
            grad = s - 1.0
    elif KIND == 1:
        if ROLE == 0:
            loss = tl.maximum(1.0 - x, 0.0)
            grad = tl.where(1.0 - x > 0, -1.0, 0.0)
        elif ROLE == 1:
            loss = tl.maximum(1.0 + x, 0.0)
            grad = tl.where(1.0 + x > 0, 1.0, 0.0)
        else:
            loss = -x
            grad = tl.full(x.shape, -1.0, x.dtype)
    elif KIND == 2:
        if ROLE == 0:
            d = x - y
        elif ROLE == 1:
            d = x
        else:
            d = x - 1.0
        loss = 0.5 * d * d
        grad = d
    else:
        if ROLE == 1:
            sgn = 1.0
        else:
            sgn = -1.0
        loss = sgn * x
        grad = tl.full(x.shape, sgn, x.dtype)
    return loss, grad


@triton.jit
def _binary_kernel(
    r_ptr, f_ptr, out_ptr, gr_ptr, gf_ptr, Mr, Mf,
    real_label: tl.float64, real_scale: tl.float64, fake_scale: tl.float64,
    KIND: tl.constexpr, FAKE_ROLE: tl.constexpr, HAS_REAL: tl.constexpr, PER_ELEMENT: tl.constexpr,
    WRITE_GR: tl.constexpr, WRITE_GF: tl.constexpr, ACC: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr,
):
    ch = tl.program_id(0).to(tl.int64)
    y = tl.full([], real_label, ACC)
    rs = tl.full([], real_scale, ACC)
    fs = tl.full([], fake_scale, ACC)
    acc = tl.zeros([BLOCK], ACC)
    for start in range(0, CHUNK, BLOCK):
        offs = ch * CHUNK + start + tl.arange(0, BLOCK)
        mf = offs < Mf
        f = tl.load(f_ptr + offs, mask=mf, other=0.0).to(ACC)
        if KIND == 4:
            r = tl.load(r_ptr + offs, mask=mf, other=0.0).to(ACC)
            if FAKE_ROLE == 1:
                lt, gt = _binary_term(r - f, y, KIND, 0)
            else:
                lt, gt = _binary_term(r - f, y, KIND, 2)
            term = tl.where(mf, fs * lt, 0.0)
            g = fs * gt
            if WRITE_GR:
                tl.store(gr_ptr + offs, g.to(gr_ptr.dtype.element_ty), mask=mf)
            if WRITE_GF:
                tl.store(gf_ptr + offs, (-g).to(gf_ptr.dtype.element_ty), mask=mf)
            live = mf
        else:
            lf, gf = _binary_term(f, y, KIND, FAKE_ROLE)
            term = tl.where(mf, fs * lf, 0.0)
            if WRITE_GF:
                tl.store(gf_ptr + offs, (fs * gf).to(gf_ptr.dtype.element_ty), mask=mf)
            live = mf
            if HAS_REAL:
                mr = offs < Mr
                r = tl.load(r_ptr + offs, mask=mr, other=0.0).to(ACC)
                lr, gr = _binary_term(r, y, KIND, 0)
                term += tl.where(mr, rs * lr, 0.0)
                if WRITE_GR:
                    tl.store(gr_ptr + offs, (rs * gr).to(gr_ptr.dtype.element_ty), mask=mr)
                live = live | mr
        if PER_ELEMENT:
            tl.store(out_ptr + offs, term.to(out_ptr.dtype.element_ty), mask=live)
        else:
            acc += term
    if not PER_ELEMENT:
        tl.store(out_ptr + ch, tl.sum(acc, axis=0).to(out_ptr.dtype.element_ty))


_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _quiet_interpreter():
    # The interpreter runs kernels in numpy, which warns about overflows in exp that the
    # formulas take on purpose (exp(-x) = inf gives sigmoid 0).
    if triton_interpret():
        import numpy as np

        return np.errstate(all="ignore")
    return contextlib.nullcontext()


def _check_device(op, t):
    if t.device.type == "cpu" and not triton_interpret():
        raise RuntimeError(f"{op}: Triton runs CPU tensors only in interpreter mode; set TRITON_INTERPRET=1 "
                           f"before importing adkernels.triton, or use a CUDA device")


@torch.library.custom_op("adkernels::adv_source_fwd_triton", mutates_args=())
def adv_source_fwd_triton(
    d_logits: Tensor, source: Tensor, w_real: float, w_student: float, w_teacher: float,
    parameterization: int, mode: int, per_source_mean: bool, need_grad: bool,
) -> tuple[Tensor, Tensor]:
    """Triton ``adv_source_fwd`` (contract: csrc/ops.cpp)."""
    op = "adv_source_fwd_triton"
    if parameterization not in (0, 1):
        raise ValueError(f"{op}: parameterization must be 0 (softmax) or 1 (binary_tree), got {parameterization}")
    if mode not in (0, 1, 2):
        raise ValueError(f"{op}: mode must be 0, 1 or 2, got {mode}")
    K = 3 if parameterization == 0 else 2
    if d_logits.dim() != 2 or d_logits.shape[1] != K:
        raise ValueError(f"{op}: d_logits must be [N, {K}], got {tuple(d_logits.shape)}")
    if d_logits.dtype not in _DTYPES or not d_logits.is_contiguous():
        raise ValueError(f"{op}: d_logits must be contiguous float32/float64/float16/bfloat16")
    N = d_logits.shape[0]
    if source.shape != (N,) or source.dtype != torch.int64 or source.device != d_logits.device:
        raise ValueError(f"{op}: source must be an int64 [{N}] tensor on d_logits' device")
    _check_device(op, d_logits)
    rows, grad = adv_source_fwd_fake(d_logits, source, w_real, w_student, w_teacher, parameterization, mode,
                                     per_source_mean, need_grad)
    if N == 0:
        return rows, grad
    source = source.contiguous()
    counts = torch.zeros(3, dtype=torch.int64, device=d_logits.device)
    grid = (triton.cdiv(N, ROWS_BLOCK),)
    with _quiet_interpreter():
        if per_source_mean:
            _count_kernel[grid](source, counts, N, BLOCK=ROWS_BLOCK)
        _source_kernel[grid](
            d_logits, source, counts, rows, grad if need_grad else rows, N,
            float(w_real), float(w_student), float(w_teacher),
            K=K, MODE=int(mode), MEAN=bool(per_source_mean), WRITE_G=bool(need_grad),
            ACC=tl.float64 if d_logits.dtype == torch.float64 else tl.float32, BLOCK=ROWS_BLOCK,
        )
    return rows, grad


adv_source_fwd_triton.register_fake(adv_source_fwd_fake)


@torch.library.custom_op("adkernels::adv_binary_fwd_triton", mutates_args=())
def adv_binary_fwd_triton(
    real: Optional[Tensor], fake: Tensor, kind: int, side: int, real_label: float, real_scale: float,
    fake_scale: float, per_element: bool, grad_real: bool, grad_fake: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Triton ``adv_binary_fwd`` (contract: csrc/ops.cpp)."""
    op = "adv_binary_fwd_triton"
    if kind not in range(5) or side not in range(3) or (side == 2 and kind != 0):
        raise ValueError(f"{op}: bad kind/side ({kind}, {side})")
    if fake.dim() != 1 or fake.dtype not in _DTYPES or not fake.is_contiguous():
        raise ValueError(f"{op}: fake must be a contiguous 1-d float tensor")
    rel = kind == 4
    uses_real = side == 0 or rel
    if uses_real and real is None:
        raise ValueError(f"{op}: real scores are needed for this kind and side")
    if not uses_real:
        real = None
    if real is not None:
        if real.dim() != 1 or real.dtype != fake.dtype or not real.is_contiguous() or real.device != fake.device:
            raise ValueError(f"{op}: real must be a contiguous 1-d tensor of fake's dtype and device")
        if (rel or per_element) and real.shape != fake.shape:
            raise ValueError(f"{op}: real and fake sizes differ: {real.shape[0]} and {fake.shape[0]}")
    if grad_real and real is None:
        raise ValueError(f"{op}: grad_real asked without real scores")
    _check_device(op, fake)
    out, gr, gf = adv_binary_fwd_fake(real, fake, kind, side, real_label, real_scale, fake_scale, per_element,
                                      grad_real, grad_fake)
    M = binary_size(real, fake, kind)
    if M == 0:
        return out, gr, gf
    fake_role = 1 if side == 0 else (2 if side == 1 else 3)
    with _quiet_interpreter():
        _binary_kernel[(triton.cdiv(M, CHUNK),)](
            real if real is not None else fake, fake, out, gr if grad_real else out, gf if grad_fake else out,
            0 if real is None else real.shape[0], fake.shape[0],
            float(real_label), float(real_scale), float(fake_scale),
            KIND=int(kind), FAKE_ROLE=fake_role, HAS_REAL=real is not None, PER_ELEMENT=bool(per_element),
            WRITE_GR=bool(grad_real), WRITE_GF=bool(grad_fake),
            ACC=tl.float64 if fake.dtype == torch.float64 else tl.float32, CHUNK=CHUNK, BLOCK=ELEM_BLOCK,
        )
    return out, gr, gf


adv_binary_fwd_triton.register_fake(adv_binary_fwd_fake)


# ---- adv_distill_fwd: the fused ADIM generator step ----------------------------------------------
# One program per row, the C labels walked in blocks of DISTILL_BLOCK (tests lower it); the
# Gumbel noise is regenerated in every pass (gumbel_noise of triton/gumbel.py: the same stream
# as gumbel_softmax, element (n, c) at index n * C + c), never stored:
#   1  online max / sum of exp of z = (x + g) / tau and its first argmax (hard); with KD the
#      online max / sum of exp of x / T and other / T
#   2  the scores s_k = sum_c y_fwd_c d[n, c, k] (hard: d[n, argmax, k]) and the divergence's
#      two sums; then the row's loss and a = dl/ds (_source_row, scaled by c_src)
#   3  sb = sum_c y_soft_c b_c, b_c = sum_k a_k d[n, c, k]   (only for grad_gen)
#   4  the gradients (adversarial_math.h adv_distill_*, kd_math.h kd_div_grads)
DISTILL_BLOCK = 1024


@triton.jit
def _kd_div_terms(ps, pt, lps, lpt, DIV: tl.constexpr):
    """kd_div_terms (kd_math.h, beta = 0.5): one block's contributions to (acc_t, acc_s)."""
    if DIV == 0:
        vt = tl.where(pt > 0, pt * (lpt - lps), 0.0)
        vs = tl.zeros_like(vt)
    elif DIV == 1:
        vs = tl.where(ps > 0, ps * (lps - lpt), 0.0)
        vt = tl.zeros_like(vs)
    else:
        mix = 0.5 * pt + 0.5 * ps
        lm = tl.log(mix)
        vt = tl.where((mix > 0) & (pt > 0), pt * (lpt - lm), 0.0)
        vs = tl.where((mix > 0) & (ps > 0), ps * (lps - lm), 0.0)
    return tl.sum(vt, axis=0), tl.sum(vs, axis=0)


@triton.jit
def _kd_div_grads(ps, pt, lps, lpt, acc_t, acc_s, DIV: tl.constexpr):
    """kd_div_grads (kd_math.h, beta = 0.5): dD/ds, dD/dt of the scaled logits."""
    if DIV == 0:
        ds = ps - pt
        dt = tl.where(pt > 0, pt * ((lpt - lps) - acc_t), 0.0)
    elif DIV == 1:
        ds = tl.where(ps > 0, ps * ((lps - lpt) - acc_s), 0.0)
        dt = pt - ps
    else:
        mix = 0.5 * pt + 0.5 * ps
        lm = tl.log(mix)
        ds = 0.5 * tl.where(ps > 0, ps * (tl.where(mix > 0, lps - lm, 0.0) - acc_s), 0.0)
        dt = 0.5 * tl.where(pt > 0, pt * (tl.where(mix > 0, lpt - lm, 0.0) - acc_t), 0.0)
    return ds, dt


@triton.jit
def _distill_kernel(
    x_ptr, o_ptr, d_ptr, src_ptr, counts_ptr, tau_ptr, so_ptr, rows_ptr, gx_ptr, go_ptr, gd_ptr, C,
    w0: tl.float64, w1: tl.float64, w2: tl.float64, kd_scale: tl.float64, temperature: tl.float64,
    K: tl.constexpr, MODE: tl.constexpr, MEAN: tl.constexpr, HARD: tl.constexpr, KD: tl.constexpr,
    DIV: tl.constexpr, WRITE_GX: tl.constexpr, WRITE_GO: tl.constexpr, WRITE_GD: tl.constexpr,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    seed = tl.load(so_ptr)
    offset = tl.load(so_ptr + 1)
    inv = 1.0 / tl.load(tau_ptr).to(ACC)
    cols = tl.arange(0, BLOCK).to(tl.int64)
    base = row * C
    T = tl.full([], temperature, ACC)
    invT = 1.0 / T

    # ---- 1: online (max, sum exp) of z (per lane), first argmax; KD normalizers -------------
    m = tl.full([BLOCK], float("-inf"), ACC)
    s = tl.zeros([BLOCK], ACC)
    best = tl.max(m, axis=0)
    best_idx = base * 0
    ms = tl.full([], float("-inf"), ACC)  # max of x (x / T has its max at the same place)
    ss = tl.zeros([], ACC)                # sum exp((x - ms) / T)
    mt = tl.full([], float("-inf"), ACC)
    st = tl.zeros([], ACC)
    for start in range(0, C, BLOCK):
        j = start + cols
        mask = j < C
        x = tl.load(x_ptr + base + j, mask=mask, other=0.0).to(ACC)
        m, s, best, best_idx = gumbel_online_block(x, j, C, base, seed, offset, inv, m, s, best, best_idx, HARD, ACC)
        if KD:
            xs = tl.where(mask, x, float("-inf"))
            ms_new = tl.maximum(ms, tl.max(xs, axis=0))
            ms_ref = tl.where(ms_new == float("-inf"), 0.0, ms_new)
            ss = ss * tl.exp((ms - ms_ref) * invT) + tl.sum(tl.exp((xs - ms_ref) * invT), axis=0)
            ms = ms_new
            xt = tl.load(o_ptr + base + j, mask=mask, other=float("-inf")).to(ACC)
            mt_new = tl.maximum(mt, tl.max(xt, axis=0))
            mt_ref = tl.where(mt_new == float("-inf"), 0.0, mt_new)
            st = st * tl.exp((mt - mt_ref) * invT) + tl.sum(tl.exp((xt - mt_ref) * invT), axis=0)
            mt = mt_new
    mx = tl.max(m, axis=0)
    rs = 1.0 / tl.sum(s * tl.exp(m - mx), axis=0)
    inv_ss = 1.0 / ss
    log_ss = tl.log(ss)
    inv_st = 1.0 / st
    log_st = tl.log(st)

    # ---- 2: scores s_k and the divergence sums; the row's loss and a = dl/ds ----------------
    v0 = tl.zeros([BLOCK], ACC)
    v1 = tl.zeros([BLOCK], ACC)
    v2 = tl.zeros([BLOCK], ACC)
    acc_t = tl.zeros([], ACC)
    acc_s = tl.zeros([], ACC)
    if (not HARD) or KD:
        for start in range(0, C, BLOCK):
            j = start + cols
            mask = j < C
            x = tl.load(x_ptr + base + j, mask=mask, other=0.0).to(ACC)
            if not HARD:
                z = (x + gumbel_noise(seed, offset, base + j, ACC)) * inv
                y = tl.where(mask, tl.exp(z - mx) * rs, 0.0)
                dp = d_ptr + (base + j) * K
                v0 += y * tl.load(dp, mask=mask, other=0.0).to(ACC)
                v1 += y * tl.load(dp + 1, mask=mask, other=0.0).to(ACC)
                if K == 3:
                    v2 += y * tl.load(dp + 2, mask=mask, other=0.0).to(ACC)
            if KD:
                ps, lps = _prob_and_log(tl.where(mask, x, float("-inf")), ms, invT, inv_ss, log_ss)
                xt = tl.load(o_ptr + base + j, mask=mask, other=float("-inf")).to(ACC)
                pt, lpt = _prob_and_log(xt, mt, invT, inv_st, log_st)
                bt, bs = _kd_div_terms(ps, pt, lps, lpt, DIV)
                acc_t += bt
                acc_s += bs
    if HARD:
        # y_fwd is the one-hot of the first argmax: s = d[n, argmax] (C = 0: no label, s = 0)
        # (its own name: a scalar pointer named like the block pointers of the loops below would
        # be a loop-carried variable whose type changes, which the GPU compiler rejects)
        d_best = d_ptr + (base + best_idx) * K
        live = best_idx < C
        s0 = tl.load(d_best, mask=live, other=0.0).to(ACC)
        s1 = tl.load(d_best + 1, mask=live, other=0.0).to(ACC)
        if K == 3:
            s2 = tl.load(d_best + 2, mask=live, other=0.0).to(ACC)
        else:
            s2 = tl.zeros([], ACC)
    else:
        s0 = tl.sum(v0, axis=0)
        s1 = tl.sum(v1, axis=0)
        s2 = tl.sum(v2, axis=0)
    src = tl.load(src_ptr + row)
    bad = (src < 1) | (src > 2)
    c1 = tl.full([], w1, ACC)
    c2 = tl.full([], w2, ACC)
    if MEAN:
        c1 = c1 / tl.maximum(tl.load(counts_ptr + 1), 1).to(ACC)
        c2 = c2 / tl.maximum(tl.load(counts_ptr + 2), 1).to(ACC)
    c = tl.where(src == 1, c1, c2)
    m1 = (src == 1).to(ACC)
    m2 = (src == 2).to(ACC)
    loss, a0, a1, a2 = _source_row(s0, s1, s2, m1 * 0.0, m1, m2, c, K, MODE)
    # a bad source id: NaN row and NaN adversarial gradients (no host check: it would synchronize)
    loss = tl.where(bad, float("nan"), loss)
    a0 = tl.where(bad, float("nan"), a0)
    a1 = tl.where(bad, float("nan"), a1)
    a2 = tl.where(bad, float("nan"), a2)
    kds = tl.full([], kd_scale, ACC)
    if KD:
        if DIV == 0:
            dv = acc_t
        elif DIV == 1:
            dv = acc_s
        else:
            dv = 0.5 * acc_t + 0.5 * acc_s
        loss += kds * T * T * dv
    tl.store(rows_ptr + row, loss.to(rows_ptr.dtype.element_ty))

    # ---- 3: sb = sum_c y_soft_c b_c ------------------------------------------------------------
    sb = tl.zeros([], ACC)
    if WRITE_GX:
        vb = tl.zeros([BLOCK], ACC)
        for start in range(0, C, BLOCK):
            j = start + cols
            mask = j < C
            x = tl.load(x_ptr + base + j, mask=mask, other=0.0).to(ACC)
            z = (x + gumbel_noise(seed, offset, base + j, ACC)) * inv
            y = tl.where(mask, tl.exp(z - mx) * rs, 0.0)
            dp = d_ptr + (base + j) * K
            b = a0 * tl.load(dp, mask=mask, other=0.0).to(ACC) + a1 * tl.load(dp + 1, mask=mask, other=0.0).to(ACC)
            if K == 3:
                b += a2 * tl.load(dp + 2, mask=mask, other=0.0).to(ACC)
            vb += y * b
        sb = tl.sum(vb, axis=0)

    # ---- 4: gradients --------------------------------------------------------------------------
    if WRITE_GX or WRITE_GO or WRITE_GD:
        kdT = kds * T
        for start in range(0, C, BLOCK):
            j = start + cols
            mask = j < C
            x = tl.load(x_ptr + base + j, mask=mask, other=0.0).to(ACC)
            if WRITE_GX or (WRITE_GD and not HARD):
                z = (x + gumbel_noise(seed, offset, base + j, ACC)) * inv
                y = tl.where(mask, tl.exp(z - mx) * rs, 0.0)
            else:
                y = tl.zeros([BLOCK], ACC)
            if HARD:
                yf = tl.where(j == best_idx, 1.0, 0.0).to(ACC)
            else:
                yf = y
            dp = d_ptr + (base + j) * K
            if WRITE_GX:
                b = a0 * tl.load(dp, mask=mask, other=0.0).to(ACC) + a1 * tl.load(dp + 1, mask=mask, other=0.0).to(ACC)
                if K == 3:
                    b += a2 * tl.load(dp + 2, mask=mask, other=0.0).to(ACC)
                gx = y * (b - sb) * inv
            if KD:
                ps, lps = _prob_and_log(tl.where(mask, x, float("-inf")), ms, invT, inv_ss, log_ss)
                xt = tl.load(o_ptr + base + j, mask=mask, other=float("-inf")).to(ACC)
                pt, lpt = _prob_and_log(xt, mt, invT, inv_st, log_st)
                ds, dt = _kd_div_grads(ps, pt, lps, lpt, acc_t, acc_s, DIV)
                if WRITE_GX:
                    gx += kdT * ds
                go = kdT * dt
            else:
                go = tl.zeros([BLOCK], ACC)
            if WRITE_GX:
                tl.store(gx_ptr + base + j, gx.to(gx_ptr.dtype.element_ty), mask=mask)
            if WRITE_GO:
                tl.store(go_ptr + base + j, go.to(go_ptr.dtype.element_ty), mask=mask)
            if WRITE_GD:
                gp = gd_ptr + (base + j) * K
                tl.store(gp, (yf * a0).to(gd_ptr.dtype.element_ty), mask=mask)
                tl.store(gp + 1, (yf * a1).to(gd_ptr.dtype.element_ty), mask=mask)
                if K == 3:
                    tl.store(gp + 2, (yf * a2).to(gd_ptr.dtype.element_ty), mask=mask)


@torch.library.custom_op("adkernels::adv_distill_fwd_triton", mutates_args=())
def adv_distill_fwd_triton(
    gen: Tensor, other: Tensor, d: Tensor, source: Tensor, tau: Tensor, seed_offset: Tensor, hard: bool,
    w_real: float, w_student: float, w_teacher: float, parameterization: int, mode: int, per_source_mean: bool,
    kd_weight: float, temperature: float, divergence: int, grad_gen: bool, grad_other: bool, grad_d: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Triton ``adv_distill_fwd`` (contract: csrc/ops.cpp)."""
    op = "adv_distill_fwd_triton"
    if parameterization not in (0, 1):
        raise ValueError(f"{op}: parameterization must be 0 (softmax) or 1 (binary_tree), got {parameterization}")
    if mode not in (1, 2):
        raise ValueError(f"{op}: mode must be 1 (minimax) or 2 (nonsat), got {mode}")
    if divergence not in (0, 1, 2):
        raise ValueError(f"{op}: divergence must be 0 (kl), 1 (reverse_kl) or 2 (jsd), got {divergence}")
    if not (math.isfinite(kd_weight) and kd_weight >= 0):
        raise ValueError(f"{op}: kd_weight must be finite and >= 0, got {kd_weight}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"{op}: temperature must be finite and > 0, got {temperature}")
    K = 3 if parameterization == 0 else 2
    if gen.dim() != 2 or gen.dtype not in _DTYPES or not gen.is_contiguous():
        raise ValueError(f"{op}: gen must be a contiguous [N, C] float32/float64/float16/bfloat16 tensor, got "
                         f"{tuple(gen.shape)} {gen.dtype}")
    N, C = gen.shape
    if other.shape != gen.shape or other.dtype != gen.dtype or not other.is_contiguous() or other.device != gen.device:
        raise ValueError(f"{op}: other must be contiguous with gen's shape {tuple(gen.shape)}, dtype and device, got "
                         f"{tuple(other.shape)} {other.dtype}")
    if d.shape != (N, C, K) or d.dtype != gen.dtype or not d.is_contiguous() or d.device != gen.device:
        raise ValueError(f"{op}: d must be a contiguous [{N}, {C}, {K}] tensor of gen's dtype and device, got "
                         f"{tuple(d.shape)} {d.dtype}")
    if source.shape != (N,) or source.dtype != torch.int64 or source.device != gen.device:
        raise ValueError(f"{op}: source must be an int64 [{N}] tensor on gen's device")
    if tau.numel() != 1 or not tau.dtype.is_floating_point or tau.device != gen.device:
        raise ValueError(f"{op}: tau must be a one-element float tensor on {gen.device}")
    if seed_offset.numel() != 2 or seed_offset.dtype != torch.int64 or seed_offset.device != gen.device:
        raise ValueError(f"{op}: seed_offset must be int64[2] on {gen.device}")
    _check_device(op, gen)
    rows, gg, go, gd = adv_distill_fwd_fake(gen, other, d, source, tau, seed_offset, hard, w_real, w_student,
                                            w_teacher, parameterization, mode, per_source_mean, kd_weight,
                                            temperature, divergence, grad_gen, grad_other, grad_d)
    if N == 0:
        return rows, gg, go, gd
    if C == 0:
        raise ValueError(f"{op}: gen has no labels (C = 0): a Gumbel-Softmax sample needs C >= 1")
    source = source.contiguous()
    counts = torch.zeros(3, dtype=torch.int64, device=gen.device)
    kd = kd_weight != 0
    blk = max(16, min(triton.next_power_of_2(max(C, 1)), int(DISTILL_BLOCK)))
    with _quiet_interpreter():
        if per_source_mean:
            _count_kernel[(triton.cdiv(N, ROWS_BLOCK),)](source, counts, N, BLOCK=ROWS_BLOCK)
        _distill_kernel[(N,)](
            gen, other, d, source, counts, tau, seed_offset.contiguous(), rows,
            gg if grad_gen else rows, go if grad_other else rows, gd if grad_d else rows, C,
            float(w_real), float(w_student), float(w_teacher), float(kd_weight) / N,
            float(temperature),
            K=K, MODE=int(mode), MEAN=bool(per_source_mean), HARD=bool(hard), KD=kd, DIV=int(divergence),
            WRITE_GX=bool(grad_gen), WRITE_GO=bool(grad_other), WRITE_GD=bool(grad_d),
            ACC=tl.float64 if gen.dtype == torch.float64 else tl.float32, BLOCK=blk,
            num_warps=8 if blk >= 2048 else 4,
        )
    return rows, gg, go, gd


adv_distill_fwd_triton.register_fake(adv_distill_fwd_fake)
