"""Reference Philox stream, Gumbel noise and Gumbel-Softmax: the executable specification.

The stream (csrc/include/adkernels/philox.h has the same text): a random op takes
``seed_offset = (seed, offset)`` (int64[2]); element ``e`` of its flattened element order
uses lane ``e % 4`` of Philox4x32-10 with key ``seed`` (lo, hi 32-bit words) and counter
``(lo32(offset + e // 4), hi32(offset + e // 4), 0, 0)`` (Triton's ``tl.randint4x``), and maps
those 32 bits to ``u`` in ``[2^-32, 1 - 2^-24]`` as ``tl.rand`` does, with its zero raised to
2^-32. Here it runs in numpy uint64 arithmetic (exact), so the kernels can be compared with it
bit for bit.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK = 0xFFFFFFFF
ROUNDS = 10
UNIFORM_SCALE = np.float32(4.6566127342e-10)
UNIFORM_MIN = np.float32(2.0 ** -32)


def philox4x32(seed: int, ctr: np.ndarray):
    """Philox4x32-10 outputs (four uint64 arrays holding uint32 values) for int counters ``ctr``."""
    seed = int(seed) & ((1 << 64) - 1)
    ctr = np.asarray(ctr).astype(np.uint64)
    m = np.uint64(MASK)
    c0 = ctr & m
    c1 = ctr >> np.uint64(32)
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    k0, k1 = seed & MASK, seed >> 32
    for _ in range(ROUNDS):
        p0 = c0 * np.uint64(M0)  # < 2^64: exact in uint64
        p2 = c2 * np.uint64(M1)
        c0, c1, c2, c3 = (
            (p2 >> np.uint64(32)) ^ c1 ^ np.uint64(k0),
            p2 & m,
            (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1),
            p0 & m,
        )
        k0, k1 = (k0 + W0) & MASK, (k1 + W1) & MASK
    return c0, c1, c2, c3


def bits_to_uniform(bits: np.ndarray) -> np.ndarray:
    """uint32 values -> float32 u in [2^-32, 1 - 2^-24] (tl.rand's mapping, zero raised)."""
    s = np.asarray(bits).astype(np.uint32).view(np.int32)
    s = np.where(s < 0, ~s, s)
    u = s.astype(np.float32) * UNIFORM_SCALE
    return np.maximum(u, UNIFORM_MIN)


def _seed_offset(seed_offset):
    if isinstance(seed_offset, Tensor):
        seed_offset = seed_offset.tolist()
    seed, offset = (int(v) for v in seed_offset)
    return seed, offset


def uniform(seed_offset, n: int, start: int = 0) -> Tensor:
    """float32 ``u`` of elements ``start .. start + n - 1`` of the stream ``seed_offset``."""
    seed, offset = _seed_offset(seed_offset)
    if n == 0:
        return torch.empty(0, dtype=torch.float32)
    first, last = start // 4, (start + n - 1) // 4
    lanes = philox4x32(seed, offset + np.arange(first, last + 1, dtype=np.int64))
    u = bits_to_uniform(np.stack(lanes, axis=1).reshape(-1))
    return torch.from_numpy(np.ascontiguousarray(u[start - 4 * first:start - 4 * first + n]))


def gumbel_noise(seed_offset, n: int, dtype=torch.float32) -> Tensor:
    """``g = -log(-log u)`` of elements 0 .. n-1, computed in ``dtype`` (float32 or float64)."""
    u = uniform(seed_offset, n).to(dtype)
    return -torch.log(-torch.log(u))


def normal(seed_offset, n: int, dtype=torch.float32) -> Tensor:
    """Box-Muller normals of elements 0 .. n-1: lanes (0, 1) and (2, 3) of a counter are the
    pairs ``r cos(2 pi u_b), r sin(2 pi u_b)`` with ``r = sqrt(-2 log u_a)``; in ``dtype``."""
    m = -(-n // 4) * 4
    u = uniform(seed_offset, m).to(dtype).reshape(-1, 2, 2)
    r = torch.sqrt(-2.0 * torch.log(u[..., 0]))
    th = (2 * math.pi) * u[..., 1]
    z = torch.stack([r * torch.cos(th), r * torch.sin(th)], dim=-1)
    return z.reshape(-1)[:n]


def gumbel_softmax(logits: Tensor, seed_offset, tau=1.0, hard: bool = False, dim: int = -1) -> Tensor:
    """``softmax((logits + g) / tau)`` along ``dim`` with the stream's noise; ``hard``: the
    one-hot of the argmax forward, the soft y's gradient backward (straight-through).

    The noise of an element is the one of its index in ``logits.movedim(dim, -1)`` flattened
    (row-major). Computed in float32 (float64 for float64 logits); returns logits' dtype.
    Differentiable in logits (torch autograd).
    """
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.movedim(dim, -1)
    g = gumbel_noise(seed_offset, x.numel(), acc).to(logits.device).reshape(x.shape)
    tau_t = torch.as_tensor(tau, dtype=acc, device=logits.device).detach()
    z = (x.to(acc) + g) / tau_t
    y = torch.softmax(z, dim=-1)
    if hard:  # the first index of the largest noisy logit
        idx = z.argmax(dim=-1, keepdim=True)
        y_hard = torch.zeros_like(y).scatter_(-1, idx, 1.0)
        y = y_hard - y.detach() + y
        # exact one-hot values forward (y_hard - y + y can differ from y_hard by rounding)
        y = y + (y_hard - y).detach()
    return y.to(logits.dtype).movedim(-1, dim)
