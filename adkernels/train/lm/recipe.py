"""The ``distill_lm`` recipe: a causal-LM teacher distilled into a smaller student.

Phases (``--phases``, default all three, in this order; each writes ``<out>/<phase>/``):

1. ``teacher``: train the teacher with next-token cross entropy.
2. ``scratch``: train the student with cross entropy only (the baseline).
3. ``distill``: train a student of the same size and the same initialization on the same
   batches with ``alpha * T^2 * D(p_t^T || p_s^T) + (1 - alpha) * CE`` through
   :func:`adkernels.fused_linear_kd_loss` on the final hidden states and lm_head weights
   (no ``[tokens, V]`` logits); or, with ``teacher_logits`` set, against precomputed sparse
   top-k teacher shards (``adkernels precompute-teacher``) through the fused-linear top-k KD op.

and reports the validation perplexity of the three models. Every loss is a token mean over
the counted tokens of the global batch (labels equal to ``ignore_index``: padding and the
first ``prompt_len`` tokens of a window, are not counted), so 1 process and K processes with
the same global batch compute the same gradient.

Under ``torchrun`` the teacher and the student are sharded with FSDP2
(``torch.distributed.fsdp.fully_shard``, one unit per transformer block plus the root;
gloo on CPU, NCCL on GPU) or replicated with DDP (``dist="ddp"``). Checkpoints are DCP
(sharded, atomic, resumable: see :mod:`.checkpoint`); a phase resumes from its newest
complete checkpoint, and a finished phase (``<phase>/final``) is loaded, not retrained.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor, nn

from . import checkpoint as ckpt
from .data import IGNORE_INDEX, PAD, VOCAB_SIZE, WindowDataset, batches, token_stream
from .loss import ce_sum, kd_sum, topk_fused_op, topk_kd_sum
from .config import PHASES, DistillLMConfig  # noqa: F401  (re-exported)
from .models import GPT, GPTConfig, check_causal_lm

# ---- distributed context ----------------------------------------------------------------------

@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    mode: str = "none"  # none | fsdp | ddp
    mesh: object = None
    device: torch.device = torch.device("cpu")

    def all_sum(self, x: Tensor) -> Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(x)
        return x

    def barrier(self):
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def setup_distributed(mode: str = "auto") -> DistContext:
    """Initialize the default process group under torchrun (env WORLD_SIZE > 1)."""
    import torch.distributed as dist

    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() \
        else torch.device("cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
    if world <= 1 or mode == "none":
        return DistContext(device=device)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (world,))
    chosen = "fsdp" if mode == "auto" else mode
    return DistContext(rank=dist.get_rank(), world=world, mode=chosen, mesh=mesh, device=device)


# ---- the objective module (what FSDP / DDP wrap) -----------------------------------------------

class Objective(nn.Module):
    """Wraps a :class:`CausalLM` so every loss runs inside ``forward`` (where FSDP2 has the
    lm_head weight unsharded and DDP sees the parameters used).

    ``forward(input_ids, labels, mode, ...)`` returns the loss **sum** over counted tokens:
    ``mode="ce"``, ``"kd"`` (``teacher_hidden``, ``teacher_weight``), ``"topk"``
    (``topk_ids``, ``topk_logprobs``); ``mode="hidden"`` returns ``(hidden, lm_head.weight)``
    (the teacher side).
    """

    def __init__(self, model: nn.Module, kd: Optional[dict] = None, chunk_size: Optional[int] = None,
                 topk_tail: Optional[str] = None):
        super().__init__()
        check_causal_lm(model)
        self.model = model
        self.kd = dict(kd or {})
        self.chunk_size = chunk_size
        self.topk_tail = topk_tail

    def forward(self, input_ids: Tensor, labels: Optional[Tensor] = None, mode: str = "ce",
                teacher_hidden: Optional[Tensor] = None, teacher_weight: Optional[Tensor] = None,
                topk_ids: Optional[Tensor] = None, topk_logprobs: Optional[Tensor] = None):
        h = self.model.hidden_states(input_ids)
        w = self.model.lm_head.weight
        b = getattr(self.model.lm_head, "bias", None)
        if mode == "hidden":
            return h, w
        if mode == "ce":
            return ce_sum(h, w, labels, chunk_size=self.chunk_size, bias=b)
        if mode == "kd":
            return kd_sum(h, w, teacher_hidden, teacher_weight, labels, chunk_size=self.chunk_size,
                          student_bias=b, **self.kd)
        if mode == "topk":
            return topk_kd_sum(h, w, topk_ids, topk_logprobs, labels, chunk_size=self.chunk_size,
                               topk_tail=self.topk_tail, student_bias=b, **self.kd)
        raise ValueError(f"unknown mode {mode!r}")


def wrap(obj: Objective, ctx: DistContext, frozen: bool = False) -> nn.Module:
    """FSDP2 (one unit per ``model.shard_units()`` entry, then the root) or DDP or nothing."""
    if ctx.mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        units = obj.model.shard_units() if hasattr(obj.model, "shard_units") else []
        for u in units:
            fully_shard(u, mesh=ctx.mesh)
        fully_shard(obj, mesh=ctx.mesh, reshard_after_forward=not frozen)
        return obj
    if ctx.mode == "ddp" and not frozen:
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(obj, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    return obj


def _reshard(obj) -> None:
    if hasattr(obj, "reshard"):
        obj.reshard()


def lr_at(step: int, total: int, base: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup then cosine decay to ``min_ratio * base``."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


# ---- evaluation --------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(obj: nn.Module, data: WindowDataset, ctx: DistContext, batch_size: int) -> Dict[str, float]:
    """Token-mean CE and perplexity over every validation window (all ranks run the same
    number of forward calls: a rank out of windows runs an all-ignored dummy window)."""
    was = obj.training
    obj.eval()
    n = len(data)
    local = max(1, batch_size // ctx.world)
    glob = local * ctx.world
    tot = torch.zeros(2, dtype=torch.float64)
    for a in range(0, n, glob):
        idx = list(range(a, min(n, a + glob)))[ctx.rank * local:(ctx.rank + 1) * local]
        if idx:
            x, y = data.batch(idx)
        else:
            x = torch.full((1, data.seq_len), PAD, dtype=torch.long)
            y = torch.full((1, data.seq_len), IGNORE_INDEX, dtype=torch.long)
        s = obj(x.to(ctx.device), y.to(ctx.device), mode="ce")
        tot[0] += float(s)
        tot[1] += int((y != IGNORE_INDEX).sum())
    ctx.all_sum(tot)
    obj.train(was)
    ce = (tot[0] / tot[1].clamp(min=1)).item()
    return dict(val_ce=ce, val_ppl=math.exp(min(ce, 50.0)), val_tokens=int(tot[1]))


# ---- one training phase ------------------------------------------------------------------------

class _Logger:
    def __init__(self, ctx: DistContext, path: Optional[str], echo: Callable[[str], None] = print):
        self.ctx, self.path, self.echo = ctx, path, echo

    def metric(self, **row):
        if self.ctx.rank == 0 and self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def say(self, msg: str):
        if self.ctx.rank == 0:
            self.echo(msg)


def _phase_done(phase_dir: str) -> bool:
    return os.path.isdir(os.path.join(phase_dir, "final"))


def train_phase(name: str, model: nn.Module, cfg: DistillLMConfig, ctx: DistContext, train: WindowDataset,
                val: WindowDataset, *, steps: int, lr: float, kind: str, teacher: Optional[nn.Module] = None,
                shards=None, log: Optional[_Logger] = None) -> Dict:
    """Train ``model`` for ``steps`` global steps (resuming from the newest checkpoint of the
    phase) and evaluate it. ``kind`` in ce | kd | topk. Returns the phase summary (with the
    loss curve)."""
    log = log or _Logger(ctx, None)
    phase_dir = os.path.join(cfg.out_dir, name)
    kd = dict(temperature=cfg.temperature, alpha=cfg.alpha, divergence=cfg.divergence, beta=cfg.beta)
    obj = wrap(Objective(model, kd=kd, chunk_size=cfg.chunk_size, topk_tail=cfg.topk_tail), ctx)
    if ctx.rank == 0:
        os.makedirs(phase_dir, exist_ok=True)
        cfg_json = dict(model=model.config.to_dict()) if hasattr(model, "config") and hasattr(model.config, "to_dict") else {}
        with open(os.path.join(phase_dir, "config.json"), "w") as f:
            json.dump(dict(cfg_json, kind=kind, recipe=dataclasses.asdict(cfg)), f, indent=1, default=str)
    if _phase_done(phase_dir):
        ckpt.load(os.path.join(phase_dir, "final"), obj)
        res = evaluate(obj, val, ctx, cfg.batch_size)
        log.say(f"[{name}] already trained ({phase_dir}/final): val ppl {res['val_ppl']:.3f}")
        return dict(phase=name, resumed_final=True, curve=[], **res)
    opt = torch.optim.AdamW(obj.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    start = 0
    found = ckpt.latest(os.path.join(phase_dir, "ckpt"))
    if found is not None:
        state = ckpt.load(found[1], obj, opt)
        start = int(state["step"])
        log.say(f"[{name}] resumed from {found[1]} at step {start}")
    curve: List = []
    t0 = time.perf_counter()
    tokens = 0
    step = start
    it = batches(len(train), cfg.batch_size, cfg.shard_windows, cfg.seed, start_step=start,
                 rank=ctx.rank, world=ctx.world, mix=cfg.shard_mix)
    obj.train()
    if teacher is not None:
        teacher.eval()
    while step < steps:
        step, idx = next(it)
        x, y = train.batch(idx)
        x, y = x.to(ctx.device), y.to(ctx.device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, cfg.warmup, cfg.min_lr_ratio)
        count = ctx.all_sum(torch.tensor([(y != IGNORE_INDEX).sum().item()], dtype=torch.float64))
        denom = max(1.0, float(count.item()))
        if kind == "kd":
            with torch.no_grad():
                h_t, w_t = teacher(x, mode="hidden")
            s = obj(x, y, mode="kd", teacher_hidden=h_t, teacher_weight=w_t)
            del h_t, w_t
            _reshard(teacher)
        elif kind == "topk":
            ids, lps = shards.get(idx)
            s = obj(x, y, mode="topk", topk_ids=ids.to(ctx.device), topk_logprobs=lps.to(ctx.device))
        else:
            s = obj(x, y, mode="ce")
        # FSDP / DDP average gradients over ranks: scale so the average is the global token mean.
        (s * (ctx.world / denom)).backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(obj.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = ctx.all_sum(s.detach().double().reshape(1)).item() / denom
        if not math.isfinite(loss):
            raise FloatingPointError(f"[{name}] non-finite loss {loss} at step {step}")
        tokens += int(x.numel()) * ctx.world
        step += 1
        curve.append((step, loss))
        log.metric(phase=name, step=step, loss=loss, lr=opt.param_groups[0]["lr"])
        if cfg.log_every and (step % cfg.log_every == 0 or step == steps):
            dt = time.perf_counter() - t0
            log.say(f"[{name}] step {step}/{steps} loss {loss:.4f} ({tokens / max(dt, 1e-9):.0f} tok/s)")
        if cfg.eval_every and step % cfg.eval_every == 0 and step < steps:
            res = evaluate(obj, val, ctx, cfg.batch_size)
            log.metric(phase=name, step=step, **res)
            log.say(f"[{name}] step {step} val ppl {res['val_ppl']:.3f}")
        if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == steps:
            ckpt.save(os.path.join(phase_dir, "ckpt"), step, obj, opt, keep=cfg.keep_ckpts)
        if cfg.stop_after is not None and step >= cfg.stop_after and step < steps:
            log.say(f"[{name}] stopping after step {step} (stop_after)")
            return dict(phase=name, stopped=step, curve=curve)
    seconds = time.perf_counter() - t0
    res = evaluate(obj, val, ctx, cfg.batch_size)
    ckpt.save_to(os.path.join(phase_dir, "final"), obj, None, dict(step=steps, **res))
    out = dict(phase=name, steps=steps, seconds=seconds, tokens_per_s=tokens / max(seconds, 1e-9), curve=curve,
               **res)
    log.metric(final=True, **{k: v for k, v in out.items() if k not in ("curve", "steps")}, step=steps)
    log.say(f"[{name}] done: {steps} steps in {seconds:.1f}s, val ppl {res['val_ppl']:.3f}")
    return out


def load_teacher(path: str, model: nn.Module, ctx: Optional[DistContext] = None) -> nn.Module:
    """Load a finished phase (``<phase_dir>/final`` or that directory) into ``model``."""
    ctx = ctx or DistContext()
    final = path if os.path.basename(os.path.normpath(path)) == "final" else os.path.join(path, "final")
    obj = Objective(model)
    ckpt.load(final, obj)
    return model


def teacher_config_from(path: str) -> GPTConfig:
    """The GPTConfig saved with a teacher phase directory."""
    d = path if os.path.basename(os.path.normpath(path)) != "final" else os.path.dirname(os.path.normpath(path))
    with open(os.path.join(d, "config.json")) as f:
        return GPTConfig(**json.load(f)["model"])


# ---- the whole recipe --------------------------------------------------------------------------

def datasets(cfg: DistillLMConfig):
    train = WindowDataset(token_stream("train", cfg.max_train_tokens), cfg.seq_len, cfg.prompt_len)
    val = WindowDataset(token_stream("val", cfg.max_val_tokens), cfg.seq_len, cfg.prompt_len)
    return train, val


def run(cfg: DistillLMConfig, *, teacher: Optional[nn.Module] = None, student_factory=None,
        echo: Callable[[str], None] = print) -> Dict:
    """Run the recipe; returns ``{"teacher": {...}, "scratch": {...}, "distill": {...}}``
    (each with val_ppl, val_ce, seconds, loss curve).

    ``teacher``: an already trained :class:`CausalLM` to use instead of the ``teacher`` phase;
    ``student_factory``: a function returning a fresh student (default: the built-in GPT of
    ``cfg.student_config()``, seeded with ``cfg.seed`` so both students start equal).
    """
    cfg.validate()
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, teacher, student_factory, echo)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: DistillLMConfig, teacher, student_factory, echo) -> Dict:
    ctx = setup_distributed(cfg.dist)
    if ctx.rank == 0:
        os.makedirs(cfg.out_dir, exist_ok=True)
    ctx.barrier()
    log = _Logger(ctx, os.path.join(cfg.out_dir, "metrics.jsonl"), echo)
    if ctx.world > 1:
        log.say(f"distill_lm: {ctx.world} processes, {ctx.mode.upper()} ({'gloo' if ctx.device.type == 'cpu' else 'nccl'})")
    train, val = datasets(cfg)
    log.say(f"distill_lm: corpus pydoc_data.topics, {train.tokens.numel()} train / {val.tokens.numel()} val "
            f"byte tokens, {len(train)} x {cfg.seq_len}-token train windows, V={VOCAB_SIZE}")
    phases = cfg.phase_list()
    results: Dict[str, Dict] = {}
    shards = None
    if cfg.teacher_logits:
        from .shards import TeacherShards

        shards = TeacherShards(cfg.teacher_logits, cache=cfg.shard_mix + 1)
        shards.check_dataset(train)
        if "distill" in phases:
            topk_fused_op()  # fail before training anything when the op is missing

    # phase 1: the teacher (trained here, loaded from --teacher-ckpt, or given from Python)
    tcfg = cfg.teacher_config()
    tdir = cfg.teacher_ckpt or os.path.join(cfg.out_dir, "teacher")
    if teacher is None and "teacher" in phases and not cfg.teacher_ckpt:
        torch.manual_seed(cfg.seed + 1)
        results["teacher"] = train_phase("teacher", GPT(tcfg), cfg, ctx, train, val, steps=cfg.teacher_steps,
                                         lr=cfg.teacher_lr or cfg.lr, kind="ce", log=log)
        if "stopped" in results["teacher"]:
            return results

    def new_student():
        torch.manual_seed(cfg.seed + 2)
        return student_factory() if student_factory is not None else GPT(cfg.student_config())

    if "scratch" in phases:
        results["scratch"] = train_phase("scratch", new_student(), cfg, ctx, train, val, steps=cfg.student_steps,
                                         lr=cfg.lr, kind="ce", log=log)
        if "stopped" in results["scratch"]:
            return results
    if "distill" in phases:
        if shards is not None:
            results["distill"] = train_phase("distill", new_student(), cfg, ctx, train, val,
                                             steps=cfg.student_steps, lr=cfg.lr, kind="topk", shards=shards, log=log)
        else:
            if teacher is None:  # the trained teacher, reloaded unsharded (then sharded again below)
                if not _phase_done(tdir):
                    raise ValueError(f"the distill phase needs a trained teacher and {tdir}/final does not exist: "
                                     "run the teacher phase, pass --teacher-ckpt DIR, or --teacher-logits PATH")
                teacher = load_teacher(tdir, GPT(teacher_config_from(tdir)))
            for p in teacher.parameters():
                p.requires_grad_(False)
            tobj = wrap(Objective(teacher), ctx, frozen=True)
            if "teacher" not in results:
                results["teacher"] = dict(phase="teacher", **evaluate(tobj, val, ctx, cfg.batch_size))
            results["distill"] = train_phase("distill", new_student(), cfg, ctx, train, val, steps=cfg.student_steps,
                                             lr=cfg.lr, kind="kd", teacher=tobj, log=log)
    summary = {k: {m: v for m, v in r.items() if m != "curve"} for k, r in results.items()}
    results["summary"] = summary
    if ctx.rank == 0:
        with open(os.path.join(cfg.out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        rows = [f"{k:8s} val ppl {r['val_ppl']:.3f}" for k, r in summary.items() if "val_ppl" in r]
        log.say("distill_lm validation perplexity:\n  " + "\n  ".join(rows))
    return results


def run_registered(cfg: DistillLMConfig) -> Dict:
    """``run`` in the shape the trainer's registry expects (``adkernels train --recipe distill_lm``)."""
    res = run(cfg)
    final = {f"{k}_val_ppl": float(r["val_ppl"]) for k, r in res.get("summary", {}).items() if "val_ppl" in r}
    stopped = any("stopped" in r for k, r in res.items() if k != "summary")
    return dict(out_dir=cfg.out_dir, final=final, stopped=stopped, phases=res.get("summary", {}))
