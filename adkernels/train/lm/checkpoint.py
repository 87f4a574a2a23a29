"""Sharded, atomic, resumable checkpoints through ``torch.distributed.checkpoint`` (DCP).

``save`` writes every rank's shards (FSDP2 DTensor shards, or the whole state in one
process) into ``<root>/step_XXXXXXXX.tmp`` and, once all ranks are done, rank 0 renames it to
``<root>/step_XXXXXXXX``: a directory without ``.tmp`` is always complete, and a run killed
mid-save leaves only a ``.tmp`` that ``latest`` ignores and the next save replaces. A
checkpoint holds the model and optimizer state (DCP reshards it on load, so a run may resume
on another number of ranks) and ``trainer_state.json`` (step and anything JSON-able).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import Optional, Tuple

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

_STEP = re.compile(r"^step_(\d{8})$")
STATE = "trainer_state.json"


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _dist() else 0


def _barrier() -> None:
    if _dist():
        dist.barrier()


def step_dir(root: str, step: int) -> str:
    return os.path.join(root, f"step_{step:08d}")


def latest(root: str) -> Optional[Tuple[int, str]]:
    """``(step, path)`` of the newest complete checkpoint under ``root``, or None."""
    if not os.path.isdir(root):
        return None
    steps = [int(m.group(1)) for m in (_STEP.match(d) for d in os.listdir(root)) if m]
    if not steps:
        return None
    s = max(steps)
    return s, step_dir(root, s)


def _fsync_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def save_to(final: str, model, optimizer=None, state: Optional[dict] = None) -> str:
    """Atomically write a checkpoint directory ``final`` (collective: every rank calls it)."""
    tmp = final.rstrip("/") + ".tmp"
    if _rank() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    _barrier()
    if optimizer is not None:
        msd, osd = get_state_dict(model, optimizer)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=tmp)
    else:
        dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=tmp)
    _barrier()
    if _rank() == 0:
        _fsync_json(os.path.join(tmp, STATE), dict(state or {}))
        if os.path.exists(final):  # a complete checkpoint under the same name: replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
    _barrier()
    return final


def save(root: str, step: int, model, optimizer=None, state: Optional[dict] = None, keep: int = 2) -> str:
    """Save step ``step`` under ``root`` and keep the newest ``keep`` (collective)."""
    final = save_to(step_dir(root, step), model, optimizer, dict(state or {}, step=step))
    if _rank() == 0 and keep > 0:
        done = sorted(int(m.group(1)) for m in (_STEP.match(d) for d in os.listdir(root)) if m)
        for s in done[:-keep]:
            shutil.rmtree(step_dir(root, s), ignore_errors=True)
    _barrier()
    return final


def load(path: str, model, optimizer=None, strict: bool = True) -> dict:
    """Load a checkpoint directory into ``model`` (and ``optimizer``); returns its trainer
    state (collective)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    opts = StateDictOptions(strict=strict)
    if optimizer is not None:
        msd, osd = get_state_dict(model, optimizer)
        sd = {"model": msd, "optim": osd}
        dcp.load(sd, checkpoint_id=path)
        set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"], options=opts)
    else:
        sd = {"model": get_model_state_dict(model)}
        dcp.load(sd, checkpoint_id=path)
        set_model_state_dict(model, sd["model"], options=opts)
    spath = os.path.join(path, STATE)
    if os.path.exists(spath):
        with open(spath) as f:
            return json.load(f)
    return {}
