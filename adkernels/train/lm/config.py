"""Options of the ``distill_lm`` recipe (a light module: the trainer's registry imports it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from .data import VOCAB_SIZE
from .models import GPTConfig

PHASES = ("teacher", "scratch", "distill")


@dataclass
class DistillLMConfig:
    """Options of the ``distill_lm`` recipe (CLI flags: the same names with dashes)."""

    recipe: str = "distill_lm"
    out_dir: str = "runs/distill_lm"
    phases: str = "teacher,scratch,distill"
    # data
    seq_len: int = 128
    batch_size: int = 16  # global batch, in windows of seq_len tokens
    prompt_len: int = 0  # labels of the first prompt_len positions are ignored
    max_train_tokens: Optional[int] = None
    max_val_tokens: Optional[int] = None
    # models (built-in GPT)
    teacher_layers: int = 3
    teacher_dim: int = 128
    teacher_heads: int = 4
    student_layers: int = 2
    student_dim: int = 64
    student_heads: int = 4
    teacher_ckpt: Optional[str] = None  # a finished teacher phase directory to reuse
    # optimization
    teacher_steps: int = 300
    student_steps: int = 300
    lr: float = 3e-3
    teacher_lr: Optional[float] = None
    warmup: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # distillation
    temperature: float = 1.0
    alpha: float = 0.5
    divergence: str = "kl"
    beta: float = 0.5
    chunk_size: Optional[int] = None
    teacher_logits: Optional[str] = None  # precomputed top-k teacher shards
    topk_tail: Optional[str] = None  # top-k op: "renorm" (KL over the top-k support) or "bucket" (+ tail mass)
    shard_windows: int = 16  # windows per data block (and per teacher shard)
    shard_mix: int = 8  # blocks shuffled together (teacher shards held in memory at a time)
    # runtime
    seed: int = 0
    dist: str = "auto"  # auto | fsdp | ddp | none
    eval_every: int = 0  # 0: evaluate at the end of each phase only
    ckpt_every: int = 100
    keep_ckpts: int = 2
    log_every: int = 25
    threads: Optional[int] = None
    stop_after: Optional[int] = None  # stop a phase after this global step (simulates a kill)

    def teacher_config(self) -> GPTConfig:
        return GPTConfig(vocab_size=VOCAB_SIZE, seq_len=self.seq_len, n_layer=self.teacher_layers,
                         n_head=self.teacher_heads, d_model=self.teacher_dim)

    def student_config(self) -> GPTConfig:
        return GPTConfig(vocab_size=VOCAB_SIZE, seq_len=self.seq_len, n_layer=self.student_layers,
                         n_head=self.student_heads, d_model=self.student_dim)

    def validate(self) -> None:
        bad = [p for p in self.phase_list() if p not in PHASES]
        if bad:
            raise ValueError(f"phases must be among {PHASES}, got {bad}")
        if self.divergence not in ("kl", "reverse_kl", "jsd"):
            raise ValueError(f"divergence must be kl, reverse_kl or jsd, got {self.divergence!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.dist not in ("auto", "fsdp", "ddp", "none"):
            raise ValueError(f"dist must be auto, fsdp, ddp or none, got {self.dist!r}")

    def phase_list(self) -> List[str]:
        return [p.strip() for p in self.phases.split(",") if p.strip()]
