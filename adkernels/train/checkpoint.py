"""Checkpoints: one safetensors file, written atomically (tmp file, fsync, os.replace, fsync dir).

Tensors: ``model/<name>/<param>``, ``optim/<name>/<param index>/<key>`` (Adam moments and step
counts), ``rng/torch/<rank>`` (and ``rng/cuda/<rank>``). Everything else (position in the run:
epoch, step in epoch, global step; the optimizers' param groups; numpy / python RNG states; the
config; counters) is JSON in the file's metadata under ``"state"``. One file, one rename: a kill
at any moment leaves either the previous or the new checkpoint, never a mix.
"""
import json
import os
import random

import numpy as np
import torch

CKPT_NAME = "checkpoint.safetensors"


def _require():
    try:
        import safetensors.torch as st
    except ImportError:
        raise SystemExit("checkpoints need safetensors: pip install safetensors (or pip install 'adkernels[train]')") from None
    return st


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": _np_state(np.random.get_state())}


def _np_state(s):
    return [s[0], s[1].tolist(), int(s[2]), int(s[3]), float(s[4])]


def set_rng_state(d: dict, torch_state: torch.Tensor, cuda_state=None) -> None:
    py = d["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = d["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch_state)
    if cuda_state is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda_state)


def _unwrap(m):
    return m.module if hasattr(m, "module") else m


def save(path: str, models: dict, optimizers: dict, state: dict, torch_rng: list, cuda_rng=None) -> None:
    """Write a checkpoint; ``torch_rng`` holds each rank's CPU RNG state (uint8 tensors)."""
    st = _require()
    tensors = {}
    for name, m in models.items():
        for k, v in _unwrap(m).state_dict().items():
            tensors[f"model/{name}/{k}"] = v.detach().cpu().contiguous()
    groups = {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        groups[name] = sd["param_groups"]
        for idx, pstate in sd["state"].items():
            for k, v in pstate.items():
                if not torch.is_tensor(v):
                    v = torch.tensor(v)
                tensors[f"optim/{name}/{idx}/{k}"] = v.detach().cpu().contiguous()
    for r, s in enumerate(torch_rng):
        tensors[f"rng/torch/{r}"] = s.cpu().contiguous()
    for r, s in enumerate(cuda_rng or []):
        tensors[f"rng/cuda/{r}"] = s.cpu().contiguous()
    meta = {"state": json.dumps({**state, "optim_groups": groups})}
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    st.save_file(tensors, tmp, metadata=meta)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: str, models: dict, optimizers: dict, device) -> tuple:
    """Load models and optimizers in place; return (state dict, {kind: {rank: rng tensor}})."""
    st = _require()
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        state = json.loads(f.metadata()["state"])
    tensors = st.load_file(path)
    for name, m in models.items():
        prefix = f"model/{name}/"
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        _unwrap(m).load_state_dict(sd)
    for name, opt in optimizers.items():
        prefix = f"optim/{name}/"
        per = {}
        for k, v in tensors.items():
            if k.startswith(prefix):
                idx, key = k[len(prefix):].split("/", 1)
                per.setdefault(int(idx), {})[key] = v.to(device) if key != "step" else v
        opt.load_state_dict({"state": per, "param_groups": state["optim_groups"][name]})
    rng = {"torch": {}, "cuda": {}}
    for k, v in tensors.items():
        if k.startswith("rng/"):
            _, kind, r = k.split("/")
            rng[kind][int(r)] = v
    return state, rng
