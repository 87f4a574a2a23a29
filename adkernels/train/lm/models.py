"""Causal language models for distillation: a protocol, a small built-in GPT, a HF adapter.

The recipe needs only two things of a model (:class:`CausalLM`):

- ``hidden_states(input_ids [B, T]) -> [B, T, H]``: the final hidden states, after the last
  norm, i.e. exactly what the output projection multiplies;
- ``lm_head.weight [V, H]`` (and optionally ``lm_head.bias [V]``).

so the loss can run :func:`adkernels.fused_linear_kd_loss` on ``(hidden, weight)`` and never
hold ``[tokens, V]`` logits. Any ``nn.Module`` with these two members works;
:class:`HFCausalLM` wraps a Hugging Face ``AutoModelForCausalLM`` (only where ``transformers``
is installed: it is an optional extra).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@runtime_checkable
class CausalLM(Protocol):
    """What the distillation recipe needs of a model."""

    lm_head: nn.Linear

    def hidden_states(self, input_ids: Tensor) -> Tensor:  # [B, T] -> [B, T, H]
        ...


def check_causal_lm(model, name: str = "model") -> None:
    """Raise a clear error when ``model`` does not follow :class:`CausalLM`."""
    if not callable(getattr(model, "hidden_states", None)):
        raise TypeError(f"{name} ({type(model).__name__}) has no hidden_states(input_ids) method; "
                        "wrap it (see adkernels.train.lm.HFCausalLM) or add one returning the final "
                        "hidden states [B, T, H]")
    w = getattr(getattr(model, "lm_head", None), "weight", None)
    if not isinstance(w, Tensor) or w.dim() != 2:
        raise TypeError(f"{name} ({type(model).__name__}) has no lm_head.weight of shape [V, H]")


@dataclass
class GPTConfig:
    vocab_size: int = 259
    seq_len: int = 128
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 128
    mlp_ratio: int = 4

    def to_dict(self):
        return asdict(self)


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        d = cfg.d_model
        if d % cfg.n_head:
            raise ValueError(f"d_model {d} must be divisible by n_head {cfg.n_head}")
        self.n_head = cfg.n_head
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, cfg.mlp_ratio * d)
        self.out = nn.Linear(cfg.mlp_ratio * d, d)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=-1)
        q, k, v = (t.view(B, T, self.n_head, D // self.n_head).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """A small GPT (pre-LN, learned positions, causal attention through
    ``F.scaled_dot_product_attention``, untied lm_head), following :class:`CausalLM`.

    >>> m = GPT(GPTConfig(n_layer=1, d_model=32, n_head=2, seq_len=16))
    >>> m.hidden_states(torch.zeros(2, 8, dtype=torch.long)).shape, tuple(m.lm_head.weight.shape)
    (torch.Size([2, 8, 32]), (259, 32))
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self):
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                s = std / math.sqrt(2 * self.config.n_layer) if name.endswith(("proj.weight", "out.weight")) else std
                nn.init.normal_(p, 0.0, s)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def hidden_states(self, input_ids: Tensor) -> Tensor:
        T = input_ids.shape[1]
        if T > self.config.seq_len:
            raise ValueError(f"sequence length {T} exceeds the model's seq_len {self.config.seq_len}")
        x = self.tok(input_ids) + self.pos(torch.arange(T, device=input_ids.device))
        for b in self.blocks:
            x = b(x)
        return self.ln_f(x)

    def forward(self, input_ids: Tensor) -> Tensor:
        """Logits ``[B, T, V]`` (for generation and small-vocabulary checks; the recipe's
        losses use :meth:`hidden_states` + ``lm_head.weight`` instead)."""
        return self.lm_head(self.hidden_states(input_ids))

    def shard_units(self):
        """Submodules that FSDP shards one by one (the root holds the rest)."""
        return list(self.blocks)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_new_tokens: int, temperature: float = 1.0,
                 generator=None) -> Tensor:
        x = input_ids
        for _ in range(max_new_tokens):
            logits = self(x[:, -self.config.seq_len:])[:, -1] / max(temperature, 1e-6)
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            x = torch.cat([x, nxt], 1)
        return x


class HFCausalLM(nn.Module):
    """Adapter: a Hugging Face ``AutoModelForCausalLM`` as a :class:`CausalLM`.

    ``hidden_states`` runs the model's base (``model.get_decoder()`` or
    ``model.base_model``) and returns its last hidden state (which already includes the final
    norm in HF decoders); ``lm_head`` is ``model.get_output_embeddings()``. Needs
    ``transformers`` (optional): ``HFCausalLM.from_pretrained(name_or_path)``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        head = model.get_output_embeddings()
        if head is None or not hasattr(head, "weight"):
            raise TypeError(f"{type(model).__name__} has no output embeddings (lm_head)")
        self.lm_head = head

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs) -> "HFCausalLM":
        try:
            from transformers import AutoModelForCausalLM
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("HFCausalLM needs the optional 'transformers' package: "
                              "pip install transformers") from e
        return cls(AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs))

    def _base(self):
        get = getattr(self.model, "get_decoder", None)
        base = get() if callable(get) else None
        return base if base is not None else self.model.base_model

    def hidden_states(self, input_ids: Tensor, attention_mask=None) -> Tensor:
        out = self._base()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.lm_head(self.hidden_states(input_ids))

    def shard_units(self):
        base = self._base()
        layers = getattr(base, "layers", None) or getattr(base, "h", None)
        return list(layers) if layers is not None else []


def build_model(cfg: GPTConfig) -> GPT:
    return GPT(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
