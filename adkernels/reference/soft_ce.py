"""Reference soft-target cross entropy and ADA-Lab-style targets in plain PyTorch (the spec).

soft_target_cross_entropy, per row: ``L = -sum_k q_k log softmax(z)_k`` with the convention
``0 * log 0 = 0`` (a zero target on a ``-inf`` logit adds nothing). Targets need not sum to 1:
with ``Q = sum_k q_k`` the loss is ``Q * lse(z) - sum_k q_k z_k`` and its gradient
``softmax(z) * Q - q`` (for rows summing to 1 the usual ``softmax(z) - q``).

ada_lab_targets, per row with label y:
    p = softmax(z_adv), margin m = p_y - max_{k != y} p_k           (in [-1, 1])
    w = max_weight * sigmoid(-gamma * (m - bias))
    q = softmax(z_aa / T)
    target = (1 - w) * onehot(y) + w * q
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _acc(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def soft_ce_rows(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row soft-target cross entropy of ``[N, V]`` inputs in float32 (float64 for float64)."""
    cdt = _acc(logits)
    z, q = logits.to(cdt), targets.to(cdt)
    logp = F.log_softmax(z, dim=-1)
    logp = torch.where((q == 0) & torch.isneginf(logp), torch.zeros_like(logp), logp)
    return -(q * logp).sum(-1)


def soft_target_cross_entropy(logits, soft_targets, *, reduction="mean"):
    """Reference ``soft_target_cross_entropy`` over ``[..., V]`` (same contract as the adkernels op)."""
    V = logits.shape[-1]
    n = logits.shape[:-1].numel()
    rows = soft_ce_rows(logits.reshape(n, V), soft_targets.reshape(n, V))
    if reduction == "none":
        return rows.reshape(logits.shape[:-1])
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / max(n, 1)


def ada_lab_targets(logits_adv, logits_aa, target, *, max_weight=0.5, gamma=10.0, bias=0.0, temperature=1.0,
                    return_weight=False):
    """Reference ``ada_lab_targets`` over ``[..., V]`` logits and ``[...]`` labels (no gradient)."""
    with torch.no_grad():
        cdt = _acc(logits_adv)
        V = logits_adv.shape[-1]
        n = logits_adv.shape[:-1].numel()
        za = logits_adv.reshape(n, V).to(cdt)
        zb = logits_aa.reshape(n, V).to(cdt)
        y = target.reshape(n, 1).long()
        p = za.softmax(-1)
        p_y = p.gather(1, y)[:, 0]
        other = p.scatter(1, y, float("-inf")).amax(-1) if V > 1 else torch.zeros_like(p_y)
        w = max_weight * torch.sigmoid(-gamma * ((p_y - other) - bias))
        q = (zb / temperature).softmax(-1)
        onehot = torch.zeros_like(q).scatter_(1, y, 1.0)
        out = (1 - w[:, None]) * onehot + w[:, None] * q
        out = out.to(logits_adv.dtype).reshape(logits_adv.shape)
        w = w.reshape(logits_adv.shape[:-1])
    return (out, w) if return_weight else out
