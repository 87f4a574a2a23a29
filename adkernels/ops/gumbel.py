"""Gumbel-Softmax and the counter-based random stream of adkernels' random ops.

Random ops (``gumbel_softmax``, ``random_start``) make their noise inside the kernel from a
Philox stream keyed by ``seed_offset`` = int64[2] ``(seed, offset)``, drawn at each call by
:func:`draw_seed_offset` from the generator (torch's default generator of the tensors' device
when None) as ``torch.randint(0, 2**62, (2,))``: ``torch.manual_seed`` reproduces results and
successive calls draw new pairs. Element ``e`` uses lane ``e % 4`` of Philox4x32-10 at counter
``offset + e // 4`` (Triton's ``tl.randint4x``), mapped to ``u`` strictly inside (0, 1) (see
csrc/include/adkernels/philox.h); every backend draws the same ``u`` for the same
(seed, offset, element).
"""
from __future__ import annotations

from typing import Optional

import torch

SEED_BOUND = 2 ** 62


def draw_seed_offset(op: str, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    """A fresh ``(seed, offset)`` int64[2] tensor on ``device`` from ``generator`` (or torch's
    default generator of ``device``); it never leaves the device, so drawing it does not sync."""
    if generator is None:
        return torch.randint(0, SEED_BOUND, (2,), dtype=torch.int64, device=device)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{op}: generator must be a torch.Generator or None, got {type(generator).__name__}")
    so = torch.randint(0, SEED_BOUND, (2,), dtype=torch.int64, device=generator.device, generator=generator)
    return so.to(device)
