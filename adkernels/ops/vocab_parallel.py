r"""Vocab-parallel KD loss: ``kd_loss`` over logits whose vocabulary is split across ranks.

Under tensor parallelism the output projection is split by vocabulary: rank ``r`` of a process
group holds the columns ``[start_r, start_r + V_r)`` of both the student and the teacher
logits. :func:`vocab_parallel_kd_loss` returns, on every rank, the loss that
:func:`adkernels.kd_loss` gives on the gathered ``[..., V]`` logits, and the gradient of each
local slice is the matching slice of the gathered gradient. The logits never travel: each
rank reduces its slice to a few numbers per row and only those are all-reduced.

Per row, with ``s = z_s / T`` and ``t = z_t / T`` (formulas of ``kd_math.h``)::

    round 1 (MAX)  m_s = max z_s, m_t = max z_t
    round 2 (SUM)  S_s = sum exp((z_s - m_s) / T), S_t = sum exp((z_t - m_t) / T)
                   kl:  sum e_t (x_t - x_s)      reverse_kl: sum e_s (x_s - x_t)
                   CE:  sum exp(z_s - m_s) (T != 1), z_s[target], sum z_s (smoothing)
    round 3 (SUM)  jsd only: sum p_t (log p_t - log M), sum p_s (log p_s - log M)

where ``x = (z - m) / T`` and ``e = exp(x)``; ``kl`` and ``reverse_kl`` need two collectives
per call, ``jsd`` three (its ``log M`` needs the normalized probabilities). Each carries at
most 6 numbers per row. Before them, one all-gather of 3 integers per rank (slice start, slice
width, row count) checks that the slices tile ``[0, V)`` and that every rank has the same
rows: an O(world) cost.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ._validate import (
    check_logit_pair,
    check_target,
    check_target_range,
    reduce_rows,
    scale_row_grads,
)

_OP = "vocab_parallel_kd_loss"


def _dist():
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError(f"{_OP}: this PyTorch build has no torch.distributed support")
    if not dist.is_initialized():
        raise RuntimeError(
            f"{_OP}: torch.distributed is not initialized; call "
            "torch.distributed.init_process_group(...) first (also for a single process: "
            "world_size=1), or use adkernels.kd_loss on unsplit logits"
        )
    return dist


def _all_reduce(x: Tensor, op, group) -> Tensor:
    if x.numel() > 0:
        import torch.distributed as dist

        dist.all_reduce(x, op=op, group=group)
    return x


def _row_max(x: Tensor) -> Tensor:
    if x.shape[-1] == 0:  # a rank may hold no columns at all
        return x.new_full(x.shape[:-1], -math.inf)
    return x.amax(-1)


def _layout(group, local_v: int, rows: int, vocab_start_index: Optional[int], device):
    """All-gather (start, width, rows) of every rank; returns (start, V) of this rank's slice."""
    dist = _dist()
    if group is None:
        group = dist.group.WORLD
    rank = dist.get_rank(group)
    if rank < 0:
        raise RuntimeError(f"{_OP}: this process is not a member of the given group")
    world = dist.get_world_size(group)
    start = -1 if vocab_start_index is None else int(vocab_start_index)
    if vocab_start_index is not None and start < 0:
        raise ValueError(f"{_OP}: vocab_start_index must be >= 0, got {start}")
    mine = torch.tensor([start, local_v, rows], dtype=torch.int64, device=device)
    if world == 1:
        table = [mine.tolist()]
    else:
        parts = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(parts, mine, group=group)
        table = [p.tolist() for p in parts]
    # Every rank sees the same table, so every rank raises the same error (no rank is left
    # waiting in a later collective).
    if len({r[2] for r in table}) != 1:
        raise ValueError(
            f"{_OP}: every rank must hold the same rows; the ranks have "
            f"{[r[2] for r in table]} rows (leading dims of the logits)"
        )
    given = [r[0] >= 0 for r in table]
    if any(given) and not all(given):
        raise ValueError(f"{_OP}: pass vocab_start_index on every rank of the group or on none")
    if not any(given):  # contiguous slices in rank order
        starts = [sum(r[1] for r in table[:i]) for i in range(world)]
    else:
        starts = [r[0] for r in table]
        pos = 0
        for s, w in sorted((r[0], r[1]) for r in table):
            if s != pos:
                raise ValueError(
                    f"{_OP}: the vocabulary slices (vocab_start_index, width) = "
                    f"{[(r[0], r[1]) for r in table]} do not tile [0, V) without gaps or overlaps"
                )
            pos += w
    V = sum(r[1] for r in table)
    return group, starts[rank], V


class _VocabParallelKD(torch.autograd.Function):
    """Forward: the loss and the local gradient slices (3 small collectives); backward: a scale."""

    @staticmethod
    def forward(ctx, student, teacher, target, count, group, start, V, temperature, alpha,
                divergence, beta, ignore_index, label_smoothing, reduction):
        import torch.distributed as dist

        need_gs, need_gt = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        cdt = torch.float64 if student.dtype == torch.float64 else torch.float32
        N, Vl = student.shape
        T, invT = temperature, 1.0 / temperature
        need_div = alpha > 0
        need_ce = alpha < 1 and target is not None
        ls = label_smoothing
        need_e1 = need_ce and T != 1.0
        need_zsum = need_ce and ls > 0

        zs = student.to(cdt)
        zt = teacher.to(cdt) if need_div else None

        # Round 1: row maxima.
        maxima = [_row_max(zs)] + ([_row_max(zt)] if need_div else [])
        m = _all_reduce(torch.stack(maxima), dist.ReduceOp.MAX, group)
        ms = m[0].unsqueeze(-1)
        mt = m[1].unsqueeze(-1) if need_div else None

        # Round 2: normalizers, kl / reverse_kl sums, CE pieces.
        xs = (zs - ms).mul_(invT)
        es = xs.exp()
        sums = [es.sum(-1)]
        xt = et = None
        if need_div:
            xt = (zt - mt).mul_(invT)
            et = xt.exp()
            sums.append(et.sum(-1))
            if divergence == "kl":
                sums.append(torch.where(et > 0, et * (xt - xs), 0.0).sum(-1))
            elif divergence == "reverse_kl":
                sums.append(torch.where(es > 0, es * (xs - xt), 0.0).sum(-1))
        in_slice = local_y = None
        if need_ce:
            local_y = target - start
            in_slice = (local_y >= 0) & (local_y < Vl) & (target != ignore_index)
            idx = torch.where(in_slice, local_y, 0).unsqueeze(-1)
            zy = zs.gather(-1, idx).squeeze(-1) if Vl > 0 else zs.new_zeros(N)
            sums.append(torch.where(in_slice, zy, 0.0))
            if need_e1:
                sums.append((zs - ms).exp_().sum(-1))
            if need_zsum:
                sums.append(zs.sum(-1))
        S = list(_all_reduce(torch.stack(sums), dist.ReduceOp.SUM, group).unbind(0))
        ss = S.pop(0)
        if need_div:
            st = S.pop(0)
            dsum = S.pop(0) if divergence != "jsd" else None
        if need_ce:
            zy = S.pop(0)
            s1 = S.pop(0) if need_e1 else ss
            zsum = S.pop(0) if need_zsum else None
        log_ss = ss.log()

        rows = zs.new_zeros(N)
        gs = zs.new_zeros(N, Vl) if need_gs else None
        gt = zs.new_zeros(N, Vl) if need_gt else None
        if need_div:
            log_st = st.log()
            lps = xs.sub_(log_ss.unsqueeze(-1))  # xs is not needed any more
            lpt = xt.sub_(log_st.unsqueeze(-1))
            ps = es.div_(ss.unsqueeze(-1))
            pt = et.div_(st.unsqueeze(-1))
            if divergence == "kl":
                acc = dsum / st - log_st + log_ss
                d = acc
                if need_gs:
                    ds = ps - pt
                if need_gt:
                    dt = torch.where(pt > 0, pt * ((lpt - lps) - acc.unsqueeze(-1)), 0.0)
            elif divergence == "reverse_kl":
                acc = dsum / ss - log_ss + log_st
                d = acc
                if need_gs:
                    ds = torch.where(ps > 0, ps * ((lps - lpt) - acc.unsqueeze(-1)), 0.0)
                if need_gt:
                    dt = pt - ps
            else:
                # Round 3 (jsd): the two M-relative sums need the normalized probabilities.
                lm = torch.logaddexp(lpt + math.log(beta), lps + math.log1p(-beta))
                kt = torch.where(pt > 0, pt * (lpt - lm), 0.0)
                ks = torch.where(ps > 0, ps * (lps - lm), 0.0)
                acc = _all_reduce(torch.stack([kt.sum(-1), ks.sum(-1)]), dist.ReduceOp.SUM, group)
                acc_t, acc_s = acc[0], acc[1]
                d = beta * acc_t + (1 - beta) * acc_s
                if need_gs:
                    ds = (1 - beta) * torch.where(ps > 0, ps * ((lps - lm) - acc_s.unsqueeze(-1)), 0.0)
                if need_gt:
                    dt = beta * torch.where(pt > 0, pt * ((lpt - lm) - acc_t.unsqueeze(-1)), 0.0)
            rows = rows + alpha * T * T * d
            kdiv = alpha * T  # d/dz = (1/T) d/ds
            if need_gs:
                gs.add_(ds, alpha=kdiv)
            if need_gt:
                gt.add_(dt, alpha=kdiv)
        if need_ce:
            lse1 = m[0] + s1.log()
            ce = lse1 - (1 - ls) * zy
            if need_zsum:
                ce = ce - ls * zsum / V
            rows = rows + (1 - alpha) * ce
            if need_gs:
                kce = 1 - alpha
                q = (zs - lse1.unsqueeze(-1)).exp_()  # softmax(z_s) at temperature 1
                gs.add_(q.sub_(ls / V), alpha=kce)
                hit = in_slice.nonzero().squeeze(-1)
                if Vl > 0 and hit.numel() > 0:
                    gs[hit, local_y[hit]] -= kce * (1 - ls)
        if target is not None:
            keep = target != ignore_index
            rows = torch.where(keep, rows, 0.0)
            if need_gs:
                gs = torch.where(keep.unsqueeze(-1), gs, 0.0)
            if need_gt:
                gt = torch.where(keep.unsqueeze(-1), gt, 0.0)
        gs = gs.to(student.dtype) if need_gs else student.new_empty((0,))
        gt = gt.to(teacher.dtype) if need_gt else teacher.new_empty((0,))
        ctx.save_for_backward(gs, gt, count)
        ctx.reduction = reduction
        return reduce_rows(rows, count, reduction)

    @staticmethod
    def backward(ctx, grad):
        gs, gt, count = ctx.saved_tensors
        ds, dt = scale_row_grads(grad, count, ctx.reduction, gs if ctx.needs_input_grad[0] else None,
                                 gt if ctx.needs_input_grad[1] else None)
        return (ds, dt) + (None,) * 12


def vocab_parallel_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Optional[Tensor] = None,
    *,
    group=None,
    temperature: float = 1.0,
    alpha: float = 1.0,
    divergence: str = "kl",
    beta: float = 0.5,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "batchmean",
    vocab_start_index: Optional[int] = None,
) -> Tensor:
    r"""``kd_loss`` over logits split by vocabulary across the ranks of ``group``.

    ``L_n = alpha * T^2 * D(p_t^T, p_s^T) + (1 - alpha) * CE_ls(target_n, p_s)``, exactly as
    :func:`adkernels.kd_loss` on the gathered logits ``[..., V]``; every rank gets the same
    loss, and the gradient of each rank's slice is that slice of the gathered gradient (the
    backward needs no communication). Only per-row numbers are all-reduced (row maxima, sums
    of exponentials, divergence partial sums, the target logit, the sum of logits): two
    collectives of ``[k, N]`` for ``kl`` / ``reverse_kl``, three for ``jsd``, plus one
    all-gather of three integers per rank that checks the layout.

    Every rank of the group must call this with the same options, the same rows and the same
    ``target``.

    Args:
        student_logits: ``[..., V_local]``, this rank's columns of the student logits.
        teacher_logits: ``[..., V_local]``, the same columns of the teacher logits; gets a
            gradient when it requires one.
        target: ``[...]`` int64 **global** class indices in ``[0, V)``, or None (needed when
            ``alpha < 1``); rows equal to ``ignore_index`` contribute nothing.
        group: the tensor-parallel process group (default: the world group). Its collectives
            run on the logits' device (gloo for CPU tensors, NCCL for CUDA ones).
        vocab_start_index: the first global column of this rank's slice. None (default): the
            slices are contiguous in group-rank order, rank ``r`` starting after the widths of
            ranks ``0..r-1`` (widths may differ, e.g. 19 + 18 for V = 37). When given, it must
            be given on every rank and the slices must tile ``[0, V)``.
        temperature, alpha, divergence, beta, ignore_index, label_smoothing, reduction: as
            :func:`adkernels.kd_loss`.

    Returns:
        The loss (float32; float64 for float64 logits), the same on every rank: a scalar, or
        ``[...]`` per-row losses for ``reduction="none"``.

    Raises:
        RuntimeError: torch.distributed is not initialized (call
            ``torch.distributed.init_process_group``), or this process is not in ``group``.
        ValueError: bad options or shapes, ranks with different rows, slices that do not tile
            ``[0, V)``, a target outside ``[0, V)``.

    Example (run on each of 2 ranks, e.g. with ``torchrun --nproc-per-node 2``)::

        import torch, torch.distributed as dist, adkernels
        dist.init_process_group("gloo")
        r, V = dist.get_rank(), 32000
        torch.manual_seed(0)  # same full logits on both ranks, for the example only
        zs, zt = torch.randn(8, V), torch.randn(8, V)
        y = torch.randint(0, V, (8,))
        s = zs[:, r * V // 2:(r + 1) * V // 2].clone().requires_grad_()
        t = zt[:, r * V // 2:(r + 1) * V // 2]
        loss = adkernels.vocab_parallel_kd_loss(s, t, y, temperature=2.0, alpha=0.5)
        loss.backward()  # s.grad is this rank's slice of the full gradient
        # loss == adkernels.kd_loss(zs, zt, y, temperature=2.0, alpha=0.5) on every rank
    """
    from .kd import _count, _kd_options

    op = _OP
    check_logit_pair(op, student_logits, teacher_logits, "V_local")
    opts = _kd_options(op, temperature, alpha, divergence, beta, ignore_index, label_smoothing, reduction, target)
    Vl = student_logits.shape[-1]
    leading = student_logits.shape[:-1]
    if target is not None:
        check_target(op, target, leading, student_logits.device)
        target = target.reshape(-1).long()
    s = student_logits.reshape(-1, Vl)
    t = teacher_logits.reshape(-1, Vl)
    group, start, V = _layout(group, Vl, s.shape[0], vocab_start_index, s.device)
    if V == 0:
        raise ValueError(f"{op}: the logits have no columns on any rank (V = 0)")
    if target is not None:
        check_target_range(op, target, V, opts["ignore_index"])
    count = _count(target, s.shape[0], opts["ignore_index"], s.device)
    out = _VocabParallelKD.apply(
        s, t, target, count, group, start, V, opts["temperature"], opts["alpha"], opts["divergence"],
        opts["beta"], opts["ignore_index"], opts["label_smoothing"], reduction,
    )
    return out.reshape(leading) if reduction == "none" else out
