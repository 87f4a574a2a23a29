"""Triton sparse-teacher KD forward: ``torch.ops.adkernels.topk_kd_fwd_triton``, the twin of ``topk_kd_fwd``.

Same contract as the C++ op (csrc/ops.cpp) and the same formulas (kd_math.h, the module doc of
adkernels/ops/topk_kd.py). One program per row, column-blocked over V:
  1. max m of the row (only when the CE or the bucket needs the whole row)
  2. S = sum exp(z - m), accumulated in float64 (the bucket's tail is S minus the support's
     terms, which are the same float32 numbers: the cancellation is exact to ~1e-12 of S);
     sum of z for label smoothing
  3. the k support columns in blocks: maxima of the student bins z and teacher bins lt, the
     support's share of S, the teacher's mass, the tail bins (bucket); then the bins' sums
     of exp((x - max) / T)
  4. the KL sum over the support blocks
  5. the dense gradient (CE part and the tail bin's share), a barrier, then the k support
     columns overwritten with alpha T (u - q) + their CE part
Loads are upcast to float32 (float64 for float64 inputs) right after ``tl.load``.
"""
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._backend import triton_interpret
from ..ops.topk_kd import topk_kd_fwd_fake
from .kd import _quiet_interpreter

MAX_BLOCK = 4096   # largest column block (tests lower it to cover multi-block rows)
MAX_KBLOCK = 1024  # largest block of support columns

_NEG_INF = tl.constexpr(float("-inf"))


@triton.jit
def _kl_term(q, lq, lu):
    return tl.where(q > 0, q * (lq - lu), 0.0)


@triton.jit
def _topk_kd_fwd_kernel(
    z_ptr, ids_ptr, lt_ptr, y_ptr, loss_ptr, g_ptr,
    V, K, ignore_index,
    temperature: tl.float64, alpha: tl.float64, label_smoothing: tl.float64,
    ACC: tl.constexpr,
    NEED_DIV: tl.constexpr,   # alpha > 0 and K > 0
    NEED_CE: tl.constexpr,    # alpha < 1 and a target
    BUCKET: tl.constexpr,     # tail = bucket and K < V
    NEED_ZSUM: tl.constexpr,
    HAS_TARGET: tl.constexpr,
    WRITE_G: tl.constexpr,
    BLOCK: tl.constexpr,
    KBLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * V
    g_row = g_ptr + row * V
    ids_row = ids_ptr + row * K
    lt_row = lt_ptr + row * K
    offs = tl.arange(0, BLOCK)
    koffs = tl.arange(0, KBLOCK)

    y = -1
    bad = False
    if HAS_TARGET:
        y = tl.load(y_ptr + row)
        if y == ignore_index:
            tl.store(loss_ptr + row, tl.zeros([], loss_ptr.dtype.element_ty))
            if WRITE_G:
                for start in range(0, V, BLOCK):
                    cols = start + offs
                    tl.store(g_row + cols, tl.zeros([BLOCK], g_ptr.dtype.element_ty), mask=cols < V)
            return
        bad = (y < 0) | (y >= V)  # not checked on the host: such a row comes out NaN

    T = tl.full([], temperature, ACC)
    invT = 1.0 / T
    a = tl.full([], alpha, ACC)
    ls = tl.full([], label_smoothing, ACC)
    kce = tl.zeros([], ACC)
    if NEED_CE:
        kce = 1.0 - a
    kdiv = a * T

    # ---- 1, 2: max and float64 sum of exp over the row ---------------------------------------
    m = tl.zeros([], ACC)
    S64 = tl.zeros([], tl.float64)
    zsum = tl.zeros([], ACC)
    if NEED_CE or BUCKET:
        m = tl.full([], _NEG_INF, ACC)
        for start in range(0, V, BLOCK):
            cols = start + offs
            z = tl.load(z_row + cols, mask=cols < V, other=_NEG_INF).to(ACC)
            m = tl.maximum(m, tl.max(z, axis=0))
        m = tl.where(m == _NEG_INF, 0.0, m)
        for start in range(0, V, BLOCK):
            cols = start + offs
            z = tl.load(z_row + cols, mask=cols < V, other=_NEG_INF).to(ACC)
            S64 += tl.sum(tl.exp(z - m).to(tl.float64), axis=0)
            if NEED_ZSUM:
                zsum += tl.sum(tl.where(cols < V, z, 0.0), axis=0)
    S = S64.to(ACC)
    lse1 = m + tl.log(S)

    # ---- 3: support bins. Bin log-probabilities at T are (x - max) / T - log sum exp((. - max) / T):
    # scaled after subtracting the max, so that large logits keep their differences exact.
    mu = tl.zeros([], ACC)
    mq = tl.zeros([], ACC)
    log_su = tl.zeros([], ACC)
    log_sq = tl.zeros([], ACC)
    tail_coef = tl.zeros([], ACC)
    kl = tl.zeros([], ACC)
    if NEED_DIV:
        mu = tl.full([], _NEG_INF, ACC)
        mq = tl.full([], _NEG_INF, ACC)
        supp64 = tl.zeros([], tl.float64)
        q_mass = tl.zeros([], ACC)
        for kstart in range(0, K, KBLOCK):
            ks = kstart + koffs
            kmask = ks < K
            ids = tl.load(ids_row + ks, mask=kmask, other=0)
            zk = tl.load(z_row + ids, mask=kmask, other=_NEG_INF).to(ACC)
            lt = tl.load(lt_row + ks, mask=kmask, other=_NEG_INF).to(ACC)
            mu = tl.maximum(mu, tl.max(zk, axis=0))
            mq = tl.maximum(mq, tl.max(lt, axis=0))
            q_mass += tl.sum(tl.exp(lt), axis=0)
            if BUCKET:
                supp64 += tl.sum(tl.exp(zk - m).to(tl.float64), axis=0)
        tail_log = tl.full([], _NEG_INF, ACC)
        lq_tail = tl.full([], _NEG_INF, ACC)
        s_tail = tl.zeros([], ACC)
        if BUCKET:
            s_tail = tl.maximum(S64 - supp64, 0.0).to(ACC)
            tail_log = tl.where(s_tail > 0, m + tl.log(s_tail), _NEG_INF)
            q_tail = tl.maximum(1.0 - q_mass, 0.0)
            lq_tail = tl.where(q_tail > 0, tl.log(q_tail), _NEG_INF)
            mu = tl.maximum(mu, tail_log)
            mq = tl.maximum(mq, lq_tail)
        mu = tl.where(mu == _NEG_INF, 0.0, mu)
        mq = tl.where(mq == _NEG_INF, 0.0, mq)
        su = tl.zeros([], ACC)
        sq = tl.zeros([], ACC)
        for kstart in range(0, K, KBLOCK):
            ks = kstart + koffs
            kmask = ks < K
            ids = tl.load(ids_row + ks, mask=kmask, other=0)
            zk = tl.load(z_row + ids, mask=kmask, other=_NEG_INF).to(ACC)
            lt = tl.load(lt_row + ks, mask=kmask, other=_NEG_INF).to(ACC)
            su += tl.sum(tl.exp((zk - mu) * invT), axis=0)
            sq += tl.sum(tl.exp((lt - mq) * invT), axis=0)
        if BUCKET:
            su += tl.exp((tail_log - mu) * invT)
            sq += tl.exp((lq_tail - mq) * invT)
        log_su = tl.log(su)
        log_sq = tl.log(sq)
        if BUCKET:
            lu_t = (tail_log - mu) * invT - log_su
            lq_t = (lq_tail - mq) * invT - log_sq
            q_t = tl.exp(lq_t)
            kl += _kl_term(q_t, lq_t, lu_t)
            tail_coef = tl.where(s_tail > 0, kdiv * (tl.exp(lu_t) - q_t) / s_tail, 0.0)
        # ---- 4: KL over the support ----------------------------------------------------------------
        for kstart in range(0, K, KBLOCK):
            ks = kstart + koffs
            kmask = ks < K
            ids = tl.load(ids_row + ks, mask=kmask, other=0)
            zk = tl.load(z_row + ids, mask=kmask, other=0.0).to(ACC)
            lt = tl.load(lt_row + ks, mask=kmask, other=_NEG_INF).to(ACC)
            lu = (zk - mu) * invT - log_su
            lq = (lt - mq) * invT - log_sq
            kl += tl.sum(tl.where(kmask, _kl_term(tl.exp(lq), lq, lu), 0.0), axis=0)

    loss = tl.zeros([], ACC)
    if NEED_DIV:
        loss += a * T * T * kl
    if NEED_CE:
        y_safe = tl.where(bad, 0, y)
        z_y = tl.load(z_row + y_safe).to(ACC)
        ce = lse1 - (1.0 - ls) * z_y
        if NEED_ZSUM:
            ce -= ls * zsum / V
        loss += kce * ce
    if HAS_TARGET:
        loss = tl.where(bad, float("nan"), loss)
    tl.store(loss_ptr + row, loss.to(loss_ptr.dtype.element_ty))

    # ---- 5: gradients --------------------------------------------------------------------------------
    if WRITE_G:
        smooth = ls / V
        c = kce / S + tail_coef
        hit = kce * (1.0 - ls)
        for start in range(0, V, BLOCK):
            cols = start + offs
            mask = cols < V
            g = tl.zeros([BLOCK], ACC)
            if NEED_CE or BUCKET:
                z = tl.load(z_row + cols, mask=mask, other=_NEG_INF).to(ACC)
                g = c * tl.exp(z - m) - kce * smooth
                g = g - tl.where(cols == y, hit, 0.0)
            if HAS_TARGET:
                g = tl.where(bad, float("nan"), g)
            tl.store(g_row + cols, g.to(g_ptr.dtype.element_ty), mask=mask)
        if NEED_DIV:
            tl.debug_barrier()  # the support columns below overwrite the dense values above
            for kstart in range(0, K, KBLOCK):
                ks = kstart + koffs
                kmask = ks < K
                ids = tl.load(ids_row + ks, mask=kmask, other=0)
                zk = tl.load(z_row + ids, mask=kmask, other=0.0).to(ACC)
                lt = tl.load(lt_row + ks, mask=kmask, other=_NEG_INF).to(ACC)
                gk = kdiv * (tl.exp((zk - mu) * invT - log_su) - tl.exp((lt - mq) * invT - log_sq))
                if NEED_CE:
                    gk += kce * (tl.exp(zk - m) / S - smooth)
                    gk = gk - tl.where(ids == y, hit, 0.0)
                if HAS_TARGET:
                    gk = tl.where(bad, float("nan"), gk)
                tl.store(g_row + ids, gk.to(g_ptr.dtype.element_ty), mask=kmask)


_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@torch.library.custom_op("adkernels::topk_kd_fwd_triton", mutates_args=())
def topk_kd_fwd_triton(
    student: Tensor,
    ids: Tensor,
    teacher_logprobs: Tensor,
    target: Optional[Tensor],
    temperature: float,
    alpha: float,
    ignore_index: int,
    label_smoothing: float,
    tail: int,
    grad_student: bool,
) -> tuple[Tensor, Tensor]:
    """Triton ``topk_kd_fwd``: (loss [N] fp32 (fp64 for fp64), d loss_n / d student or an empty tensor)."""
    if student.dim() != 2 or student.dtype not in _DTYPES:
        raise ValueError(f"topk_kd_fwd_triton: student must be [N, V] float, got {tuple(student.shape)} {student.dtype}")
    N, V = student.shape
    acc = torch.float64 if student.dtype == torch.float64 else torch.float32
    if ids.dim() != 2 or ids.shape[0] != N or ids.dtype != torch.int64:
        raise ValueError(f"topk_kd_fwd_triton: ids must be int64 [N, K] with N = {N}, got {tuple(ids.shape)} {ids.dtype}")
    K = ids.shape[1]
    if K > V:
        raise ValueError(f"topk_kd_fwd_triton: k = {K} exceeds the vocabulary V = {V}")
    if teacher_logprobs.shape != ids.shape or teacher_logprobs.dtype != acc:
        raise ValueError(f"topk_kd_fwd_triton: teacher_logprobs must be [N, K] {acc}, got "
                         f"{tuple(teacher_logprobs.shape)} {teacher_logprobs.dtype}")
    if not (student.is_contiguous() and ids.is_contiguous() and teacher_logprobs.is_contiguous()):
        raise ValueError("topk_kd_fwd_triton: inputs must be contiguous")
    if not temperature > 0:
        raise ValueError(f"topk_kd_fwd_triton: temperature must be > 0, got {temperature}")
    if tail not in (0, 1):
        raise ValueError(f"topk_kd_fwd_triton: tail must be 0 (renorm) or 1 (bucket), got {tail}")
    if student.device.type == "cpu" and not triton_interpret():
        raise RuntimeError("topk_kd_fwd_triton: Triton runs CPU tensors only in interpreter mode; set "
                           "TRITON_INTERPRET=1 before importing adkernels.triton, or use a CUDA device")
    if target is not None:
        if target.dim() != 1 or target.shape[0] != N:
            raise ValueError(f"topk_kd_fwd_triton: target must have shape [{N}], got {tuple(target.shape)}")
        target = target.to(torch.int64).contiguous()
    loss, g = topk_kd_fwd_fake(student, ids, teacher_logprobs, target, temperature, alpha, ignore_index,
                               label_smoothing, tail, grad_student)
    if N == 0 or V == 0:
        loss.zero_()
        return loss, g
    need_div = alpha > 0 and K > 0
    need_ce = alpha < 1 and target is not None
    BLOCK = max(16, min(triton.next_power_of_2(V), int(MAX_BLOCK)))
    KBLOCK = max(16, min(triton.next_power_of_2(max(K, 1)), int(MAX_KBLOCK)))
    with _quiet_interpreter():
        _topk_kd_fwd_kernel[(N,)](
            student, ids, teacher_logprobs, target if target is not None else loss, loss,
            g if grad_student else loss,
            V, K, int(ignore_index),
            float(temperature), float(alpha), float(label_smoothing),
            ACC=tl.float64 if acc == torch.float64 else tl.float32,
            NEED_DIV=need_div,
            NEED_CE=need_ce,
            BUCKET=need_div and tail == 1 and K < V,
            NEED_ZSUM=need_ce and label_smoothing > 0,
            HAS_TARGET=target is not None,
            WRITE_G=bool(grad_student),
            BLOCK=BLOCK,
            KBLOCK=KBLOCK,
            num_warps=4 if BLOCK <= 1024 else 8,
        )
    return loss, g


topk_kd_fwd_triton.register_fake(topk_kd_fwd_fake)
