"""Sparse offline teacher: top-k (ids, log-probabilities) shards in safetensors.

Layout of a shard directory::

    manifest.json                 k, seq_len, vocab_size, shard_windows, num_windows, split, ...
    shard_00000.safetensors       ids [S, T, k] int32, logprobs [S, T, k] float32 (or float16)
    shard_00001.safetensors       ...

Shard ``i`` holds windows ``[i * S, (i + 1) * S)`` of the dataset (see
:class:`adkernels.train.lm.data.WindowDataset`); position ``t`` of a window holds the
teacher's k most likely next tokens after ``input_ids[:t + 1]`` and their log-probabilities
under the full softmax at temperature 1 (so ``1 - sum(exp(logprobs))`` is the mass outside
the top k). The teacher's logits are made ``chunk`` rows at a time, never for a whole shard.

Writing is resumable and atomic: each shard is written to ``<name>.tmp`` and renamed, so a
shard file that exists is complete, and a rerun skips it. The manifest is written first; a
rerun with different settings (k, seq_len, ...) into the same directory is refused.

Reading streams: :class:`TeacherShards` holds at most ``cache`` shards in memory; with the
recipe's block order (one shard's windows after another) that is one shard at a time.
"""
from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

MANIFEST = "manifest.json"
FORMAT = "adkernels-topk-teacher/1"


def _safetensors():
    try:
        import safetensors.torch as st
    except ImportError as e:  # pragma: no cover - safetensors is a dependency (Makefile DEPS)
        raise ImportError("teacher shards need the 'safetensors' package: pip install safetensors") from e
    return st


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


def _atomic_json(path: str, obj) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@torch.no_grad()
def topk_logprobs(hidden: Tensor, weight: Tensor, k: int, chunk: int = 1024,
                  bias: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Top-k of ``log_softmax(hidden @ weight.T + bias)`` per row, ``chunk`` rows at a time.

    >>> ids, lp = topk_logprobs(torch.randn(5, 8), torch.randn(20, 8), k=3)
    >>> ids.shape, bool((lp.exp().sum(-1) <= 1 + 1e-6).all())
    (torch.Size([5, 3]), True)
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    n = h.shape[0]
    ids = torch.empty(n, k, dtype=torch.int64, device=h.device)
    lps = torch.empty(n, k, dtype=torch.float32, device=h.device)
    for a in range(0, n, chunk):
        z = (h[a:a + chunk] @ weight.t()).float()
        if bias is not None:
            z = z + bias.float()
        v, i = z.log_softmax(-1).topk(k, dim=-1)
        ids[a:a + chunk], lps[a:a + chunk] = i, v
    return ids.reshape(*hidden.shape[:-1], k), lps.reshape(*hidden.shape[:-1], k)


def precompute_teacher(teacher, dataset, out_dir: str, *, k: int = 32, shard_windows: int = 64,
                       batch_size: int = 8, logprob_dtype: torch.dtype = torch.float32,
                       meta: Optional[Dict] = None, rank: int = 0, world: int = 1,
                       log: Callable[[str], None] = print, max_shards: Optional[int] = None) -> Dict:
    """Write the top-k shards of ``teacher`` (a :class:`CausalLM`) over ``dataset``.

    Skips shards that already exist (resume); rank ``r`` of ``world`` writes shards
    ``r, r + world, ...``. ``max_shards`` stops after writing that many new shards (to test
    resuming). Returns ``{"written": n, "skipped": m, "seconds": s}``.
    """
    st = _safetensors()
    vocab = int(teacher.lm_head.weight.shape[0])
    if k < 1 or k > vocab:
        raise ValueError(f"k must be in [1, V={vocab}], got {k}")
    n = len(dataset)
    num_shards = -(-n // shard_windows)
    manifest = dict(format=FORMAT, k=k, seq_len=dataset.seq_len, prompt_len=dataset.prompt_len,
                    vocab_size=vocab, shard_windows=shard_windows, num_windows=n, num_shards=num_shards,
                    logprob_dtype=str(logprob_dtype).replace("torch.", ""), **(meta or {}))
    os.makedirs(out_dir, exist_ok=True)
    mpath = os.path.join(out_dir, MANIFEST)
    if os.path.exists(mpath):
        with open(mpath) as f:
            old = json.load(f)
        diff = {key: (old.get(key), val) for key, val in manifest.items() if old.get(key) != val}
        if diff:
            raise ValueError(f"{out_dir} holds shards made with other settings {diff} (old, new); "
                             "use a new directory or delete it")
    elif rank == 0:
        _atomic_json(mpath, manifest)
    was_training = teacher.training
    teacher.eval()
    t0 = time.perf_counter()
    written = skipped = 0
    try:
        for i in range(rank, num_shards, world):
            path = os.path.join(out_dir, shard_name(i))
            if os.path.exists(path):
                skipped += 1
                continue
            if max_shards is not None and written >= max_shards:
                break
            lo, hi = i * shard_windows, min(n, (i + 1) * shard_windows)
            ids_all, lp_all = [], []
            for a in range(lo, hi, batch_size):
                x, _ = dataset.batch(range(a, min(hi, a + batch_size)))
                with torch.no_grad():
                    h = teacher.hidden_states(x)
                    bias = getattr(teacher.lm_head, "bias", None)
                    ids, lps = topk_logprobs(h, teacher.lm_head.weight, k, bias=bias)
                ids_all.append(ids.to(torch.int32))
                lp_all.append(lps.to(logprob_dtype))
            tensors = {"ids": torch.cat(ids_all).contiguous(), "logprobs": torch.cat(lp_all).contiguous()}
            tmp = f"{path}.tmp.{os.getpid()}"
            st.save_file(tensors, tmp, metadata={"first_window": str(lo), "num_windows": str(hi - lo),
                                                 "format": FORMAT})
            os.replace(tmp, path)
            written += 1
            log(f"precompute-teacher: {shard_name(i)} windows [{lo}, {hi}) ({written} written, "
                f"{time.perf_counter() - t0:.1f}s)")
    finally:
        teacher.train(was_training)
    return dict(written=written, skipped=skipped, num_shards=num_shards, seconds=time.perf_counter() - t0)


class TeacherShards:
    """Streaming reader of the shards :func:`precompute_teacher` writes.

    ``get(indices)`` returns ``(ids [B, T, k] int64, logprobs [B, T, k] float32)`` for window
    indices of the dataset the shards were made for; at most ``cache`` shards are held.
    """

    def __init__(self, path: str, cache: int = 2):
        mpath = os.path.join(path, MANIFEST)
        if not os.path.exists(mpath):
            raise FileNotFoundError(f"{path} is not a teacher shard directory (no {MANIFEST}); "
                                    "make one with `adkernels precompute-teacher`")
        with open(mpath) as f:
            self.manifest = json.load(f)
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{mpath}: unknown format {self.manifest.get('format')!r}")
        self.path = path
        self.k = int(self.manifest["k"])
        self.seq_len = int(self.manifest["seq_len"])
        self.shard_windows = int(self.manifest["shard_windows"])
        self.num_windows = int(self.manifest["num_windows"])
        self._cache: "OrderedDict[int, Dict[str, Tensor]]" = OrderedDict()
        self._cap = max(1, cache)
        self.loads = 0

    def missing(self):
        """Shard numbers not written yet."""
        return [i for i in range(int(self.manifest["num_shards"]))
                if not os.path.exists(os.path.join(self.path, shard_name(i)))]

    def check_dataset(self, dataset) -> None:
        if dataset.seq_len != self.seq_len or len(dataset) != self.num_windows:
            raise ValueError(f"teacher shards {self.path} were made for {self.num_windows} windows of "
                             f"{self.seq_len} tokens; this dataset has {len(dataset)} windows of "
                             f"{dataset.seq_len} (use the same --seq-len and data options)")
        missing = self.missing()
        if missing:
            raise FileNotFoundError(f"teacher shards {self.path}: {len(missing)} shard(s) not written yet "
                                    f"(first: {shard_name(missing[0])}); rerun `adkernels precompute-teacher` "
                                    "to finish them (it resumes)")

    def _shard(self, i: int) -> Dict[str, Tensor]:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        path = os.path.join(self.path, shard_name(i))
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} missing; rerun `adkernels precompute-teacher` (it resumes)")
        data = _safetensors().load_file(path)
        self.loads += 1
        self._cache[i] = data
        while len(self._cache) > self._cap:
            self._cache.popitem(last=False)
        return data

    def get(self, indices) -> Tuple[Tensor, Tensor]:
        ids, lps = [], []
        for w in indices:
            w = int(w)
            if not 0 <= w < self.num_windows:
                raise IndexError(f"window {w} out of range [0, {self.num_windows})")
            s, j = divmod(w, self.shard_windows)
            d = self._shard(s)
            ids.append(d["ids"][j])
            lps.append(d["logprobs"][j])
        return torch.stack(ids).long(), torch.stack(lps).float()
