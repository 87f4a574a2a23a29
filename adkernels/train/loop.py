"""The training loop: one function, :func:`train`, readable top to bottom.

A recipe (``recipes.py``) owns its models and optimizers and says, per epoch, which phase each
pass over the training set runs (``passes(epoch)``: e.g. ADIM's 20 discriminator, 10 teacher and
10 student passes); ``step(phase, x, y, ctx)`` returns the loss and which optimizer it trains.
The loop does everything else: data order, DDP, the NaN guard, logging, eval, checkpoints.

Position in a run is (epoch, step in epoch); the sample order of each pass is a pure function of
(seed, epoch, pass), so a checkpoint of the position, the models, the optimizers and the RNG
states resumes a run exactly (same next batch, same dropout masks and Gumbel noise).
"""
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as tdist

from . import checkpoint as ckpt
from .config import config_dict
from .data import batch_indices, epoch_order, load_split, steps_per_pass


class NonFiniteLossError(RuntimeError):
    pass


# ---- distributed ------------------------------------------------------------------------------

class Dist:
    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self.owns_group = False

    def setup(self, device_kind: str):
        if self.enabled and not tdist.is_initialized():
            tdist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
            self.owns_group = True
        return self

    def any_true(self, flag: bool) -> bool:
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0])
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather_rng(self):
        s = torch.get_rng_state()
        if not self.enabled:
            return [s]
        out = [None] * self.world
        tdist.all_gather_object(out, s)
        return out

    def barrier(self):
        if self.enabled:
            tdist.barrier()

    def close(self):
        if self.owns_group and tdist.is_initialized():
            tdist.destroy_process_group()


def wrap_ddp(model, dist: Dist, device):
    if not dist.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(m):
    return m.module if hasattr(m, "module") else m


# ---- helpers ----------------------------------------------------------------------------------

def _device(cfg, dist):
    kind = cfg.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        return torch.device("cuda", dist.local_rank)
    return torch.device(kind)


def _seed_all(seed: int):
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _grads_finite(optimizer) -> bool:
    norms = [p.grad.detach().float().norm() for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    return bool(torch.isfinite(torch.stack(norms).sum()).item()) if norms else True


@torch.no_grad()
def predict(model, x, batch_size: int = 500) -> torch.Tensor:
    """The model's predicted classes on ``x`` in eval mode (its train/eval flag is put back)."""
    net = unwrap(model)
    was = net.training
    net.eval()
    try:
        return torch.cat([net(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
                         or [torch.empty(0, dtype=torch.long, device=x.device)])
    finally:
        net.train(was)


def hit_rate(pred: torch.Tensor, y: torch.Tensor) -> float:
    """The share of ``pred`` equal to ``y`` (0 for no rows)."""
    return (pred == y).sum().item() / max(1, len(y))


def accuracy(model, x, y, batch_size: int = 500) -> float:
    return hit_rate(predict(model, x, batch_size), y)


def top_class_share(pred: torch.Tensor, classes: int) -> float:
    """The share of ``pred`` that falls in its most frequent class (1.0: one class for all)."""
    return torch.bincount(pred, minlength=classes).max().item() / len(pred) if len(pred) else 0.0


class Context:
    """What a recipe step may read: progress through the run (for annealing) and the config."""

    def __init__(self, cfg, total_steps, main_start):
        self.cfg, self.total_steps, self.main_start = cfg, total_steps, main_start
        self.global_step = 0
        self.epoch = 0

    @property
    def main_progress(self):
        """(step, total) within the main (non-pretraining) epochs."""
        return max(0, self.global_step - self.main_start), max(1, self.total_steps - self.main_start)


def default_out_dir(cfg) -> str:
    return os.path.join("runs", f"{cfg.recipe}-{cfg.data}-n{cfg.n_train}-s{cfg.seed}")


# ---- the loop ---------------------------------------------------------------------------------

def train(cfg, recipe_cls) -> dict:
    """Train ``recipe_cls`` with ``cfg``; return the final metrics (rank 0's view)."""
    dist = Dist()
    device = _device(cfg, dist)
    dist.setup(device.type)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    import contextlib

    import adkernels

    backend = adkernels.use_backend(cfg.backend) if cfg.backend != "auto" else contextlib.nullcontext()
    try:
        with backend:
            return _train(cfg, recipe_cls, dist, device)
    finally:
        dist.close()


def _train(cfg, recipe_cls, dist, device) -> dict:
    rank0 = dist.rank == 0
    if cfg.batch_size % dist.world:
        raise SystemExit(f"--batch-size {cfg.batch_size} must be divisible by the {dist.world} processes")
    out_dir = cfg.out_dir or default_out_dir(cfg)
    ckpt_path = os.path.join(out_dir, ckpt.CKPT_NAME)
    metrics_path = os.path.join(out_dir, "metrics.jsonl")

    _seed_all(cfg.seed)
    data = load_split(cfg.data, cfg.n_train, cfg.n_test, cfg.data_seed)
    data.x_train, data.y_train = data.x_train.to(device), data.y_train.to(device)
    data.x_test, data.y_test = data.x_test.to(device), data.y_test.to(device)
    recipe = recipe_cls(cfg, data, device, dist)  # same seed on every rank: identical initial models
    if dist.rank:  # dropout / Gumbel noise differ per rank (rank 0 keeps the single-process stream)
        torch.manual_seed(cfg.seed + 7919 * dist.rank)

    n = len(data.x_train)
    spp = steps_per_pass(n, cfg.batch_size)
    n_epochs = recipe.n_epochs()
    epoch_len = [len(recipe.passes(e)) * spp for e in range(n_epochs)]
    total = sum(epoch_len)
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    main_start = sum(epoch_len[:recipe.pretrain_epochs()])
    ctx = Context(cfg, total, main_start)

    epoch, start_step, global_step, skipped, history = 0, 0, 0, 0, []
    if cfg.resume and os.path.exists(ckpt_path):
        state, rng = ckpt.load(ckpt_path, recipe.models, recipe.optimizers, device)
        epoch, start_step, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        skipped, history = state["skipped"], state["history"]
        r = dist.rank if dist.rank in rng["torch"] else 0
        ckpt.set_rng_state(state["rng"], rng["torch"][r], rng["cuda"].get(r))
        if rank0:
            print(f"resumed from {ckpt_path} at epoch {epoch}, step {start_step} of the epoch "
                  f"(global step {global_step})", file=sys.stderr)
    elif cfg.resume and rank0:
        print(f"--resume: no checkpoint at {ckpt_path}; starting fresh", file=sys.stderr)

    if rank0:
        os.makedirs(out_dir, exist_ok=True)
        _truncate_metrics(metrics_path, global_step)
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(config_dict(cfg), f, indent=1)
    log = open(metrics_path, "a") if rank0 else None

    def emit(rec):
        if log:
            log.write(json.dumps(rec) + "\n")
            log.flush()

    def save(ep, step_in_epoch):
        rngs = dist.gather_rng()
        if rank0:
            state = {"epoch": ep, "step_in_epoch": step_in_epoch, "global_step": global_step,
                     "skipped": skipped, "history": history, "rng": ckpt.rng_state(),
                     "config": config_dict(cfg)}
            cuda = [torch.cuda.get_rng_state()] if device.type == "cuda" else None
            ckpt.save(ckpt_path, recipe.models, recipe.optimizers, state, rngs, cuda)
        dist.barrier()

    bar = _progress(total, global_step, rank0 and cfg.progress)
    inject = {int(s) for s in cfg.inject_nan.split(",") if s.strip()}
    streak, t0, stopped = 0, time.time(), False
    while epoch < n_epochs and not stopped:
        passes = recipe.passes(epoch)
        ctx.epoch = epoch
        order, order_pass = None, -1
        pos = start_step  # next step of this epoch
        for s in range(start_step, epoch_len[epoch]):
            if global_step >= total:
                break
            pos = s + 1
            p, b = divmod(s, spp)
            if p != order_pass:
                order, order_pass = epoch_order(n, cfg.seed, epoch, p).to(device), p
            idx = batch_indices(order, b, cfg.batch_size, dist.rank, dist.world)
            x, y = data.x_train[idx], data.y_train[idx]
            ctx.global_step = global_step
            phase = passes[p]
            loss, opt_name, metrics = recipe.step(phase, x, y, ctx)
            if global_step + 1 in inject:
                loss = loss * float("nan")
            opt = recipe.optimizers[opt_name]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            lval = float(loss.detach())
            bad = dist.any_true(not (math.isfinite(lval) and _grads_finite(opt)))
            global_step += 1
            if bad:
                skipped += 1
                streak += 1
                opt.zero_grad(set_to_none=True)
                emit({"type": "skip", "step": global_step, "epoch": epoch, "phase": phase, "loss": lval})
                if streak >= cfg.nan_patience:
                    if bar:
                        bar.close()
                    raise NonFiniteLossError(
                        f"the loss (or its gradient) was NaN/inf for {streak} consecutive steps "
                        f"(last: global step {global_step}, epoch {epoch}, phase {phase!r}); {skipped} steps "
                        f"skipped in all. Lower the learning rate (--lr), check the data, or raise "
                        f"--nan-patience. The last good checkpoint (if any) is {ckpt_path}.")
            else:
                streak = 0
                opt.step()
            if global_step % cfg.log_every == 0 or global_step == total:
                emit({"type": "train", "step": global_step, "epoch": epoch, "phase": phase,
                      "loss": lval, **{k: float(v) for k, v in metrics.items()}})
            if bar:
                bar.update(1)
                bar.set_postfix_str(f"ep {epoch} {phase} loss {lval:.4f}", refresh=False)
            if cfg.ckpt_every and global_step % cfg.ckpt_every == 0:
                save(epoch, s + 1)
            if cfg.stop_after and global_step == cfg.stop_after:
                save(epoch, s + 1)
                stopped = True
                break
        if stopped:
            break
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            ev = {"type": "eval", "epoch": epoch, "step": global_step, "phase": passes[-1],
                  "time": round(time.time() - t0, 3), "skipped": skipped, **recipe.evaluate(data)}
        history.append(ev)
        emit(ev)
        if bar:
            bar.write("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in ev.items() if k not in ("type", "time")))
        if pos < epoch_len[epoch]:  # --max-steps ended the run inside this epoch
            save(epoch, pos)
            break
        epoch, start_step = epoch + 1, 0
        save(epoch, 0)
        if global_step >= total:
            break
    if bar:
        bar.close()
    if log:
        log.close()
    result = {"out_dir": out_dir, "global_step": global_step, "skipped": skipped, "stopped": stopped,
              "wall_s": round(time.time() - t0, 3), "final": history[-1] if history else {}}
    if rank0 and not stopped and cfg.plots and history:
        from .plots import plot_run

        result["plot"] = plot_run(metrics_path, os.path.join(out_dir, "curves.png"), title=cfg.recipe)
    return result


def _truncate_metrics(path, global_step):
    """Drop records a killed run wrote after the checkpoint it is resumed from."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= global_step]
    if global_step == 0:
        keep = []
    with open(path, "w") as f:
        f.writelines(keep)


def _progress(total, initial, enabled):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, dynamic_ncols=True, leave=True, file=sys.stderr)
