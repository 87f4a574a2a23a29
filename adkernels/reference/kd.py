"""Reference KD loss in plain PyTorch (autograd gives its gradients)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DIVERGENCES = ("kl", "reverse_kl", "jsd")


def _kl_rows(p: torch.Tensor, logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """sum_i p_i (log p_i - log q_i) with 0 log 0 = 0 (also where log q = -inf)."""
    diff = torch.where(p > 0, logp - logq, torch.zeros_like(logp))
    return (p * diff).sum(-1)


def kd_loss_rows(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor | None,
    *,
    temperature: float = 1.0,
    alpha: float = 1.0,
    divergence: str = "kl",
    beta: float = 0.5,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-row loss ``alpha T^2 D(p_t^T, p_s^T) + (1 - alpha) CE_ls(target, p_s)`` for [N, V] logits.

    Computed in float32 (float64 for float64 inputs); ignored rows give 0.
    """
    cdt = torch.float64 if student.dtype == torch.float64 else torch.float32
    zs, zt = student.to(cdt), teacher.to(cdt)
    rows = zs.new_zeros(zs.shape[:-1])
    if alpha > 0:
        lps = F.log_softmax(zs / temperature, dim=-1)
        lpt = F.log_softmax(zt / temperature, dim=-1)
        ps, pt = lps.exp(), lpt.exp()
        if divergence == "kl":
            d = _kl_rows(pt, lpt, lps)
        elif divergence == "reverse_kl":
            d = _kl_rows(ps, lps, lpt)
        elif divergence == "jsd":
            # log M; entries where both p are 0 are masked first (logaddexp(-inf, -inf) has a NaN
            # gradient) and contribute nothing below.
            live = (ps > 0) | (pt > 0)
            zero = torch.zeros_like(lps)
            lm = torch.logaddexp(torch.where(live, lpt, zero) + math.log(beta),
                                 torch.where(live, lps, zero) + math.log1p(-beta))
            d = beta * _kl_rows(pt, lpt, lm) + (1 - beta) * _kl_rows(ps, lps, lm)
        else:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
        rows = rows + alpha * temperature**2 * d
    if target is not None and alpha < 1:
        ce = F.cross_entropy(
            zs, target.long(), ignore_index=ignore_index, reduction="none", label_smoothing=label_smoothing
        )
        rows = rows + (1 - alpha) * ce
    if target is not None:
        rows = torch.where(target == ignore_index, torch.zeros_like(rows), rows)
    return rows


def kd_loss(student_logits, teacher_logits, target=None, *, reduction="batchmean", ignore_index=-100, **options):
    """Reference ``kd_loss`` over ``[..., V]`` logits (same contract as ``adkernels.kd_loss``)."""
    from ..ops._validate import reduce_rows

    V = student_logits.shape[-1]
    s = student_logits.reshape(-1, V)
    t = teacher_logits.reshape(-1, V)
    tg = None if target is None else target.reshape(-1)
    rows = kd_loss_rows(s, t, tg, ignore_index=ignore_index, **options)
    if tg is None:
        count = torch.tensor(s.shape[0], device=s.device)
    else:
        count = (tg != ignore_index).sum()
    out = reduce_rows(rows, count, reduction)
    return out.reshape(student_logits.shape[:-1]) if reduction == "none" else out
