"""A real English corpus that ships with Python, byte-level tokens, a deterministic split.

The corpus is the documentation text of the standard library's ``pydoc_data.topics`` (the
language reference topics that ``help("assert")`` prints: 79 documents, about 465 KB of
English and code). Nothing is downloaded.

Tokens are UTF-8 bytes (ids 0..255) plus three specials: ``PAD`` (256), ``BOS`` (257),
``EOS`` (258), so ``VOCAB_SIZE = 259``. Each document becomes ``BOS bytes EOS``; documents
are split into train and validation by a hash of their name (``crc32(name) % 10 == 0`` goes
to validation), so the split does not depend on dictionary order or Python's hash seed.

A split's token stream (its documents concatenated in sorted-name order) is cut into
non-overlapping windows of ``seq_len + 1`` tokens; window ``i`` gives ``input_ids = w[:-1]``
and ``labels = w[1:]``. The last, partial window is padded with ``PAD`` and its padded
labels are ``ignore_index``; the first ``prompt_len`` labels of every window may also be
ignored (prompt tokens that the loss must not count).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import torch
from torch import Tensor

PAD, BOS, EOS = 256, 257, 258
VOCAB_SIZE = 259
IGNORE_INDEX = -100


def corpus_documents() -> List[Tuple[str, str]]:
    """``[(name, text)]`` of the bundled corpus, sorted by name."""
    from pydoc_data.topics import topics

    return sorted(topics.items())


def is_validation(name: str, val_every: int = 10) -> bool:
    return zlib.crc32(name.encode("utf-8")) % val_every == 0


def encode(text: str) -> List[int]:
    """Byte-level tokens of ``text`` (without BOS/EOS)."""
    return list(text.encode("utf-8"))


def decode(ids) -> str:
    """Text of byte tokens; specials and padding are dropped."""
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


def token_stream(split: str, max_tokens: Optional[int] = None) -> Tensor:
    """All tokens of ``split`` ("train" or "val") as one int64 tensor."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    ids: List[int] = []
    for name, text in corpus_documents():
        if is_validation(name) == (split == "val"):
            ids.append(BOS)
            ids.extend(encode(text))
            ids.append(EOS)
    out = torch.tensor(ids, dtype=torch.int64)
    return out[:max_tokens] if max_tokens is not None else out


@dataclass
class WindowDataset:
    """Fixed, non-overlapping windows of a token stream (deterministic indexing)."""

    tokens: Tensor
    seq_len: int
    prompt_len: int = 0
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self):
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {self.seq_len}")
        if not 0 <= self.prompt_len < self.seq_len:
            raise ValueError(f"prompt_len must be in [0, seq_len), got {self.prompt_len}")

    def __len__(self) -> int:
        n = self.tokens.numel()
        return max(0, -(-(n - 1) // self.seq_len)) if n > 1 else 0

    def window(self, i: int) -> Tuple[Tensor, Tensor]:
        """``(input_ids [T], labels [T])`` of window ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range [0, {len(self)})")
        T = self.seq_len
        a = i * T
        w = self.tokens[a:a + T + 1]
        x = torch.full((T,), PAD, dtype=torch.int64)
        y = torch.full((T,), self.ignore_index, dtype=torch.int64)
        x[: w.numel() - 1] = w[:-1]
        y[: w.numel() - 1] = w[1:]
        if self.prompt_len:
            y[: self.prompt_len] = self.ignore_index
        return x, y

    def batch(self, indices) -> Tuple[Tensor, Tensor]:
        xs, ys = zip(*(self.window(int(i)) for i in indices))
        return torch.stack(xs), torch.stack(ys)


def block_order(n: int, block: int, seed: int, epoch: int, mix: int = 8) -> List[int]:
    """Shuffled order of ``range(n)`` made for streaming blocks of ``block`` consecutive indices.

    The blocks are shuffled, then taken ``mix`` at a time, and the indices of each group of
    ``mix`` blocks are shuffled together. A reader of precomputed teacher shards of ``block``
    windows needs only ``mix`` shards at a time, while a batch still mixes windows from
    ``mix`` random places of the corpus. A function of its arguments only, so a resumed run
    sees the same order.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    blocks = torch.randperm(-(-n // block), generator=g).tolist() if n else []
    out: List[int] = []
    for a in range(0, len(blocks), max(1, mix)):
        idx = torch.cat([torch.arange(b * block, min(n, (b + 1) * block)) for b in blocks[a:a + max(1, mix)]])
        out.extend(idx[torch.randperm(idx.numel(), generator=g)].tolist())
    return out


def batches(n: int, batch_size: int, block: int, seed: int, start_step: int = 0,
            rank: int = 0, world: int = 1, mix: int = 8) -> Iterator[Tuple[int, List[int]]]:
    """Endless ``(step, window indices)`` from ``start_step`` on: global batches of
    ``batch_size`` windows taken in :func:`block_order` epoch after epoch (an epoch's last
    incomplete batch is dropped); rank ``r`` of ``world`` gets the ``r``-th contiguous slice
    of each global batch. Step ``s`` always gets the same windows, so resuming at a step is
    exact.
    """
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} must be divisible by the world size {world}")
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ValueError(f"dataset has {n} windows, fewer than one batch of {batch_size}")
    local = batch_size // world
    step = start_step
    epoch = step // per_epoch
    order = block_order(n, block, seed, epoch, mix)
    while True:
        e, k = divmod(step, per_epoch)
        if e != epoch:
            epoch, order = e, block_order(n, block, seed, e, mix)
        glob = order[k * batch_size:(k + 1) * batch_size]
        yield step, glob[rank * local:(rank + 1) * local]
        step += 1
