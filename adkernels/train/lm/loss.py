"""Token-level distillation losses on final hidden states and lm_head weights.

Every loss here returns a **sum over counted tokens** (labels != ignore_index); the caller
divides by the number of counted tokens of the global batch, so that data-parallel ranks
holding different numbers of counted tokens still compute the gradient of one global mean.
No function here builds ``[tokens, V]`` logits:

- :func:`kd_sum`: :func:`adkernels.fused_linear_kd_loss` (chunked lm_head + KD, one pass per
  chunk of rows), ``alpha * T^2 * D(p_t^T || p_s^T) + (1 - alpha) * CE`` with ``D`` in
  kl / reverse_kl / jsd (the GKD divergences; ``beta`` weights the JSD mixture).
- :func:`ce_sum`: next-token cross entropy through the same fused op with ``alpha = 0`` and a
  one-column all-zero "teacher" (its logits are all zero, its divergence term is multiplied by
  0 and its matmul costs ``O(chunk x V)`` flops): the chunked CE the teacher and the baseline
  student are trained with.
- :func:`topk_kd_sum`: the sparse offline teacher (top-k ids and log-probabilities read from
  shards) through the fused-linear form of ``adkernels.topk_kd_loss``.
- :func:`vocab_parallel_kd_sum`: lm_heads split by vocabulary over a process group (tensor
  parallelism) through :func:`adkernels.vocab_parallel_kd_loss`.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

import adkernels

from .data import IGNORE_INDEX

# Names the fused-linear form of the sparse top-k KD op may be exported under.
TOPK_FUSED_NAMES = ("fused_linear_topk_kd_loss", "topk_fused_linear_kd_loss")


def _flat(h: Tensor) -> Tensor:
    return h.reshape(-1, h.shape[-1])


def kd_sum(student_hidden: Tensor, student_weight: Tensor, teacher_hidden: Tensor, teacher_weight: Tensor,
           labels: Optional[Tensor], *, temperature: float = 1.0, alpha: float = 0.5, divergence: str = "kl",
           beta: float = 0.5, ignore_index: int = IGNORE_INDEX, chunk_size: Optional[int] = None,
           student_bias: Optional[Tensor] = None, teacher_bias: Optional[Tensor] = None) -> Tensor:
    """Sum over counted tokens of the KD loss (see the module doc)."""
    return adkernels.fused_linear_kd_loss(
        _flat(student_hidden), student_weight, _flat(teacher_hidden).detach(), teacher_weight.detach(),
        None if labels is None else labels.reshape(-1),
        student_bias=student_bias, teacher_bias=None if teacher_bias is None else teacher_bias.detach(),
        chunk_size=chunk_size, temperature=temperature, alpha=alpha, divergence=divergence, beta=beta,
        ignore_index=ignore_index, reduction="sum")


def ce_sum(hidden: Tensor, weight: Tensor, labels: Tensor, *, ignore_index: int = IGNORE_INDEX,
           chunk_size: Optional[int] = None, bias: Optional[Tensor] = None) -> Tensor:
    """Sum over counted tokens of the next-token cross entropy, chunked (no full logits)."""
    h = _flat(hidden)
    zero_h = h.new_zeros(h.shape[0], 1)
    zero_w = weight.new_zeros(weight.shape[0], 1).to(h.dtype)
    return adkernels.fused_linear_kd_loss(
        h, weight, zero_h, zero_w, labels.reshape(-1), student_bias=bias, chunk_size=chunk_size,
        alpha=0.0, ignore_index=ignore_index, reduction="sum")


def topk_fused_op():
    """The fused-linear sparse KD op, or raise NotImplementedError naming what is missing."""
    for name in TOPK_FUSED_NAMES:
        fn = getattr(adkernels, name, None)
        if fn is not None:
            return fn
    raise NotImplementedError(
        "distill_lm with --teacher-logits needs the sparse top-k KD op in its fused-linear form "
        f"(adkernels.{TOPK_FUSED_NAMES[0]}, built on adkernels.topk_kd_loss), which this build of "
        "adkernels does not provide yet; the shards themselves are written and read "
        "(adkernels precompute-teacher, adkernels.train.lm.TeacherShards)")


def topk_kd_sum(student_hidden: Tensor, student_weight: Tensor, topk_ids: Tensor, topk_logprobs: Tensor,
                labels: Optional[Tensor], *, temperature: float = 1.0, alpha: float = 0.5,
                divergence: str = "kl", beta: float = 0.5, ignore_index: int = IGNORE_INDEX,
                chunk_size: Optional[int] = None, topk_tail: Optional[str] = None,
                student_bias: Optional[Tensor] = None) -> Tensor:
    """Sum over counted tokens of the KD loss against a sparse (top-k) teacher.

    ``topk_tail``: ``"renorm"`` (KL over the teacher's top-k support, both distributions
    renormalized on it) or ``"bucket"`` (the mass outside the top k as one more bin); None:
    the op's default.
    """
    import inspect

    fn = topk_fused_op()
    params = inspect.signature(fn).parameters
    k = topk_ids.shape[-1]
    opts = dict(temperature=temperature, alpha=alpha, ignore_index=ignore_index, reduction="sum")
    if divergence != "kl" or "divergence" in params:
        if "divergence" not in params:
            raise ValueError(f"the sparse top-k KD op supports only divergence='kl', got {divergence!r}")
        opts.update(divergence=divergence, beta=beta)
    for name, val in (("chunk_size", chunk_size), ("tail", topk_tail), ("student_bias", student_bias)):
        if val is not None:
            opts[name] = val
    return fn(_flat(student_hidden), student_weight, topk_ids.reshape(-1, k), topk_logprobs.reshape(-1, k),
              None if labels is None else labels.reshape(-1), **opts)


def vocab_parallel_kd_sum(student_hidden: Tensor, student_weight_shard: Tensor, teacher_hidden: Tensor,
                          teacher_weight_shard: Tensor, labels: Optional[Tensor], *, group=None,
                          vocab_start_index: Optional[int] = None,
                          temperature: float = 1.0, alpha: float = 0.5, divergence: str = "kl",
                          beta: float = 0.5, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """KD sum with vocab-parallel lm_heads: this rank holds rows ``[start, start + V_local)``
    of both lm_head weights (tensor parallelism over ``group``, e.g.
    ``mesh.get_group("tp")``); hidden states are replicated over the group.

    Each rank makes only its ``[rows, V_local]`` logit slices (``1 / world`` of the full logits)
    and :func:`adkernels.vocab_parallel_kd_loss` all-reduces a few numbers per row, never the
    logits; the result equals :func:`kd_sum` on the gathered weights, on every rank. The
    hidden-state gradient of each rank is its slice's contribution: sum it over the group (as
    a row-parallel layer does) to get the full gradient.
    """
    zs = _flat(student_hidden) @ student_weight_shard.t()
    zt = _flat(teacher_hidden).detach() @ teacher_weight_shard.detach().t()
    return adkernels.vocab_parallel_kd_loss(
        zs, zt, None if labels is None else labels.reshape(-1), group=group,
        vocab_start_index=vocab_start_index, temperature=temperature, alpha=alpha,
        divergence=divergence, beta=beta, ignore_index=ignore_index, reduction="sum")


def vocab_shard(weight: Tensor, group=None):
    """This rank's rows of a ``[V, H]`` lm_head weight under vocab (tensor) parallelism over
    ``group`` (a process group, e.g. ``mesh.get_group("tp")`` of a DeviceMesh): the
    ``torch.chunk`` split (ranks get ``ceil(V / world)`` rows, the last ones fewer), as
    ``(weight_shard, vocab_start_index)``."""
    import torch.distributed as dist

    world, rank = dist.get_world_size(group), dist.get_rank(group)
    V = weight.shape[0]
    step = -(-V // world)
    start = min(V, rank * step)
    return weight[start:min(V, start + step)], start


def counted(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    return (labels != ignore_index).sum()
