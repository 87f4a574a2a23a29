"""Reference discriminator / generator / GAN losses in plain PyTorch (autograd gives the gradients).

The executable specification of adkernels.ops.adversarial; see that module for the formulas.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

REAL, STUDENT, TEACHER = 0, 1, 2


def _cdt(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def source_log_probs(d_logits: torch.Tensor, parameterization: str = "softmax") -> torch.Tensor:
    """log D_i for i = REAL, STUDENT, TEACHER: ``[N, 3]`` from ``[N, 3]`` (softmax) or ``[N, 2]``
    (binary_tree: log D_r = log s(a), log D_s = log s(-a) + log s(b), log D_t = log s(-a) + log s(-b))."""
    z = d_logits.to(_cdt(d_logits))
    if parameterization == "softmax":
        return F.log_softmax(z, dim=-1)
    a, b = z[..., 0], z[..., 1]
    la, lna = F.logsigmoid(a), F.logsigmoid(-a)
    return torch.stack([la, lna + F.logsigmoid(b), lna + F.logsigmoid(-b)], dim=-1)


def _reduce(rows, source, weights, reduction, sources):
    w = torch.tensor(weights, dtype=rows.dtype, device=rows.device)
    rows = rows * w[source]
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    total = rows.new_zeros(())
    for i in sources:  # per-source means (Algorithm 1): an absent source adds 0
        mask = source == i
        total = total + torch.where(mask, rows, torch.zeros_like(rows)).sum() / mask.sum().clamp(min=1)
    return total


def discriminator_loss(d_logits, source, *, weights=(1.0, 1.0, 1.0), parameterization="softmax",
                       reduction="mean"):
    """``-sum_i weights[i] * mean_{n: source_n = i} log D_i(n)`` (per-source means)."""
    logd = source_log_probs(d_logits, parameterization)
    src = source.long()
    rows = -logd.gather(-1, src.unsqueeze(-1)).squeeze(-1)
    return _reduce(rows, src, weights, reduction, (REAL, STUDENT, TEACHER))


def generator_loss(d_logits, source, *, mode="minimax", weights=(1.0, 1.0, 1.0), parameterization="softmax",
                   reduction="mean"):
    """minimax: ``+w log D_src``; nonsat: ``-w log(1 - D_src)``, per-source means over 1 and 2."""
    logd = source_log_probs(d_logits, parameterization)
    src = source.long()
    own = logd.gather(-1, src.unsqueeze(-1)).squeeze(-1)
    if mode == "minimax":
        rows = own
    else:
        # log(1 - D_src) = log of the sum of the other two leaves
        others = logd.masked_fill(F.one_hot(src, 3).bool(), float("-inf"))
        rows = -torch.logsumexp(others, dim=-1)
    return _reduce(rows, src, weights, reduction, (STUDENT, TEACHER))


def label_conditioned_scores(d_label_logits, labels):
    """``scores[n, k] = sum_c labels[n, c] * d_label_logits[n, c, k]``."""
    return torch.einsum("nck,nc->nk", d_label_logits, labels)


def _terms(kind, side, real, fake, real_label):
    """(real terms or None, fake / pair terms), elementwise, in the compute dtype."""
    y = real_label
    sp = F.softplus
    if kind == "relativistic":
        d = real - fake
        if side == "discriminator":
            return None, y * sp(-d) + (1 - y) * sp(d)
        return None, sp(d)
    if side == "discriminator":
        if kind == "bce":
            return y * sp(-real) + (1 - y) * sp(real), sp(fake)
        if kind == "hinge":
            return F.relu(1 - real), F.relu(1 + fake)
        if kind == "lsgan":
            return 0.5 * (real - y) ** 2, 0.5 * fake ** 2
        return -real, fake  # wgan
    if kind == "bce":
        return None, (-sp(fake) if side == "generator" else sp(-fake))
    if kind == "lsgan":
        return None, 0.5 * (fake - 1) ** 2
    return None, -fake  # hinge, wgan


def binary_adversarial_loss(real_scores, fake_scores, *, kind="bce", side="discriminator", real_label=1.0,
                            reduction="mean"):
    """Reference of ``adkernels.binary_adversarial_loss`` (same contract)."""
    fake = fake_scores.to(_cdt(fake_scores))
    real = None if real_scores is None else real_scores.to(_cdt(real_scores))
    rt, ft = _terms(kind, side, real, fake, float(real_label))
    if reduction == "none":
        return ft if rt is None else rt + ft
    red = (lambda t: t.sum()) if reduction == "sum" else (lambda t: t.sum() / max(t.numel(), 1))
    out = red(ft)
    if rt is not None:
        out = red(rt) + out
    return out


def adversarial_distillation_loss(gen_logits, other_logits, d_label_logits, source, seed_offset, *, tau,
                                  hard=False, weights=(1.0, 1.0, 1.0), kd_weight=1.0, temperature=1.0,
                                  mode="minimax", parameterization="softmax", reduction="mean",
                                  divergence="kl"):
    """Reference ADIM generator step: the composition of the reference ops with the noise of the
    stream ``seed_offset`` (element ``(n, c)`` is index ``n * C + c``)::

        y = gumbel_softmax(gen_logits, seed_offset, tau, hard)
        L = generator_loss(label_conditioned_scores(d_label_logits, y), source, ...)
            + kd_weight * kd_loss(gen_logits, other_logits, temperature, divergence)   (batchmean)

    Computed in float32 (float64 for float64 inputs); with ``reduction="none"`` the KD term (a
    batch mean) is added to every row, as the composition broadcasts it.
    """
    from .gumbel import gumbel_softmax
    from .kd import kd_loss

    cdt = _cdt(gen_logits)
    y = gumbel_softmax(gen_logits.to(cdt), seed_offset, tau, hard, -1)
    scores = label_conditioned_scores(d_label_logits.to(cdt), y)
    out = generator_loss(scores, source, mode=mode, weights=weights, parameterization=parameterization,
                         reduction=reduction)
    if kd_weight:
        out = out + kd_weight * kd_loss(gen_logits.to(cdt), other_logits.to(cdt), temperature=temperature,
                                        divergence=divergence)
    return out
