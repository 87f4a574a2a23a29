"""LLM distillation: the ``distill_lm`` recipe and its parts.

- :mod:`.data`: the bundled English corpus (``pydoc_data.topics``), byte tokens, windows.
- :mod:`.models`: the :class:`CausalLM` protocol (``hidden_states`` + ``lm_head.weight``),
  the built-in :class:`GPT`, :class:`HFCausalLM` (optional ``transformers``).
- :mod:`.loss`: token-sum losses on hidden states + lm_head weights (fused-linear KD, CE,
  sparse top-k KD, vocab-parallel KD).
- :mod:`.shards`: precomputed sparse teacher shards (write, stream).
- :mod:`.checkpoint`: DCP checkpoints (sharded, atomic, resumable).
- :mod:`.recipe`: :class:`DistillLMConfig`, :func:`run` (teacher, scratch and distilled
  students; FSDP2 or DDP under torchrun).
"""
from .data import BOS, EOS, PAD, VOCAB_SIZE, WindowDataset, token_stream
from .loss import ce_sum, kd_sum, topk_kd_sum, vocab_parallel_kd_sum
from .models import GPT, CausalLM, GPTConfig, HFCausalLM, check_causal_lm
from .recipe import DistillLMConfig, Objective, evaluate, run, train_phase
from .shards import TeacherShards, precompute_teacher

__all__ = [
    "BOS", "EOS", "PAD", "VOCAB_SIZE", "WindowDataset", "token_stream",
    "ce_sum", "kd_sum", "topk_kd_sum", "vocab_parallel_kd_sum",
    "GPT", "GPTConfig", "CausalLM", "HFCausalLM", "check_causal_lm",
    "DistillLMConfig", "Objective", "evaluate", "run", "train_phase",
    "TeacherShards", "precompute_teacher",
]
