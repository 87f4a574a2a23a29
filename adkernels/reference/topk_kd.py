"""Reference sparse-teacher KD loss (``topk_kd_loss``) in plain PyTorch; autograd gives its gradients.

Per row, with student logits z [V], the teacher's top-k ids S = {i_1..i_k} (distinct) and its
log-probabilities lt_1..lt_k (from the teacher's full softmax at temperature 1):

  renorm   student bins  b_j = z_{i_j}                      j = 1..k
           teacher bins  a_j = lt_j
  bucket   the same k bins plus one tail bin (only when k < V):
           b_tail = logsumexp_{c not in S} z_c   (the student's remaining mass, as a logit)
           a_tail = log(max(0, 1 - sum_j exp(lt_j)))   (the teacher's remaining mass)

  u = softmax(b / T), q = softmax(a / T) over the bins, and
  L = alpha T^2 KL(q || u) + (1 - alpha) CE_ls(target, softmax(z))

At T = 1 the bins are exact: u_j = p_s(i_j) (renorm: renormalized over S), u_tail = the
student's mass outside S. The temperature softens the bin distributions (the tail bin counts
as one token); for renorm that equals softmax(z / T) and the teacher's softmax at T
restricted to S and renormalized, since lt_j = z_t(i_j) - const.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

TAILS = ("renorm", "bucket")


def _kl_rows(q: torch.Tensor, lq: torch.Tensor, lu: torch.Tensor) -> torch.Tensor:
    diff = torch.where(q > 0, lq - lu, torch.zeros_like(lq))
    return (q * diff).sum(-1)


def topk_kd_loss_rows(student, ids, teacher_logprobs, target=None, *, temperature=1.0, alpha=1.0,
                      ignore_index=-100, label_smoothing=0.0, tail="renorm"):
    """Per-row losses for [N, V] logits, [N, K] ids and log-probabilities (ignored rows give 0)."""
    cdt = torch.float64 if student.dtype == torch.float64 else torch.float32
    z = student.to(cdt)
    N, V = z.shape
    K = ids.shape[-1]
    lt = teacher_logprobs.to(cdt)
    rows = z.new_zeros(N)
    ids = ids.long()
    if alpha > 0 and K > 0:
        b = z.gather(1, ids)
        a = lt
        if tail == "bucket" and K < V:
            in_support = torch.zeros(N, V, dtype=torch.bool, device=z.device).scatter_(1, ids, True)
            b_tail = torch.logsumexp(z.masked_fill(in_support, float("-inf")), dim=-1, keepdim=True)
            rest = (1 - lt.exp().sum(-1, keepdim=True)).clamp_min(0)
            a_tail = torch.where(rest > 0, rest.clamp_min(torch.finfo(cdt).tiny).log(),
                                 torch.full_like(rest, float("-inf")))
            b = torch.cat([b, b_tail], -1)
            a = torch.cat([a, a_tail], -1)
        lu = F.log_softmax(b / temperature, -1)
        lq = F.log_softmax(a / temperature, -1)
        rows = rows + alpha * temperature**2 * _kl_rows(lq.exp(), lq, lu)
    if target is not None and alpha < 1:
        ce = F.cross_entropy(z, target.long(), ignore_index=ignore_index, reduction="none",
                             label_smoothing=label_smoothing)
        rows = rows + (1 - alpha) * ce
    if target is not None:
        rows = torch.where(target == ignore_index, torch.zeros_like(rows), rows)
    return rows


def topk_kd_loss(student_logits, teacher_topk_ids, teacher_topk_logprobs, target=None, *,
                 reduction="batchmean", ignore_index=-100, **options):
    """Reference ``topk_kd_loss`` over ``[..., V]`` logits (same contract as ``adkernels.topk_kd_loss``)."""
    from ..ops._validate import reduce_rows

    V = student_logits.shape[-1]
    K = teacher_topk_ids.shape[-1]
    n = student_logits.shape[:-1].numel()
    z = student_logits.reshape(n, V)
    ids = teacher_topk_ids.reshape(n, K)
    lt = teacher_topk_logprobs.reshape(n, K)
    tg = None if target is None else target.reshape(-1)
    rows = topk_kd_loss_rows(z, ids, lt, tg, ignore_index=ignore_index, **options)
    count = torch.tensor(z.shape[0], device=z.device) if tg is None else (tg != ignore_index).sum()
    out = reduce_rows(rows, count, reduction)
    return out.reshape(student_logits.shape[:-1]) if reduction == "none" else out
