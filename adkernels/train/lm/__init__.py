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

Names are imported on first use (``adkernels.train.lm.run``), so the command line stays quick.
"""
from importlib import import_module

_EXPORTS = {
    "BOS": "data", "EOS": "data", "PAD": "data", "VOCAB_SIZE": "data", "WindowDataset": "data",
    "token_stream": "data",
    "ce_sum": "loss", "kd_sum": "loss", "topk_kd_sum": "loss", "vocab_parallel_kd_sum": "loss",
    "GPT": "models", "GPTConfig": "models", "CausalLM": "models", "HFCausalLM": "models",
    "check_causal_lm": "models",
    "DistillLMConfig": "config", "Objective": "recipe", "evaluate": "recipe", "run": "recipe",
    "train_phase": "recipe",
    "TeacherShards": "shards", "precompute_teacher": "shards",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)


def _register() -> None:
    """Register ``distill_lm`` with the trainer's recipe registry (when there is one)."""
    try:
        from .. import RECIPES, register_recipe
    except ImportError:  # adkernels.train without a registry: python -m adkernels.train.lm still works
        return
    if "distill_lm" in RECIPES:
        return
    from .config import DistillLMConfig

    def run_distill_lm(cfg):
        from .recipe import run_registered

        return run_registered(cfg)

    register_recipe("distill_lm", DistillLMConfig, run_distill_lm,
                    help="LLM distillation: byte-level GPT teacher -> smaller student (fused-linear KD, FSDP2)")


_register()
