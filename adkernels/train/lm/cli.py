"""Command lines of the LLM-distillation recipe.

- ``python -m adkernels.train.lm [options]`` (and ``adkernels train --recipe distill_lm``
  where the trainer's recipe registry is present): runs :func:`adkernels.train.lm.run`.
  Options are the fields of :class:`DistillLMConfig` with dashes
  (``--teacher-steps 300 --divergence jsd --teacher-logits shards/``).
- ``adkernels precompute-teacher --teacher RUN/teacher --out shards/ [-k 32]``: writes the
  teacher's top-k shards for the recipe's training windows (resumable).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from typing import List, Optional


def _field_type(f):
    from .config import DistillLMConfig

    hints = typing.get_type_hints(DistillLMConfig)
    t = hints[f.name]
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if args else t


def add_recipe_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add one ``--flag`` per :class:`DistillLMConfig` field (defaults from the dataclass)."""
    from .config import DistillLMConfig

    for f in dataclasses.fields(DistillLMConfig):
        if f.name == "recipe":
            continue
        t = _field_type(f)
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if t is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            parser.add_argument(flag, type=t, default=default, help=f"(default: {default})")
    return parser


def config_from_args(args):
    from .config import DistillLMConfig

    names = {f.name for f in dataclasses.fields(DistillLMConfig)} - {"recipe"}
    return DistillLMConfig(**{k: v for k, v in vars(args).items() if k in names})


def train_main(argv: Optional[List[str]] = None) -> int:
    from .recipe import run

    parser = add_recipe_arguments(argparse.ArgumentParser(
        prog="python -m adkernels.train.lm", description="distill_lm: distill a causal-LM teacher into a smaller student"))
    cfg = config_from_args(parser.parse_args(argv))
    res = run(cfg)
    return 0 if res else 1


def add_precompute_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--teacher", required=True,
                   help="a trained teacher: a distill_lm phase directory (RUN/teacher, with final/ and config.json)")
    p.add_argument("--out", required=True, help="directory of the shards (created; reruns resume)")
    p.add_argument("-k", "--k", type=int, default=32, help="top-k kept per position (default 32)")
    p.add_argument("--shard-windows", type=int, default=16, help="windows per shard (default 16; "
                   "use the recipe's --shard-windows)")
    p.add_argument("--split", choices=("train", "val"), default="train")
    p.add_argument("--seq-len", type=int, default=None, help="default: the teacher's seq_len")
    p.add_argument("--prompt-len", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=None, help="use only the first N tokens of the split")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--fp16", action="store_true", help="store log-probabilities as float16 (half the size)")
    p.add_argument("--max-shards", type=int, default=None, help="stop after writing this many new shards")
    p.add_argument("--threads", type=int, default=None)
    return p


def precompute_main(args) -> int:
    import torch

    from .data import WindowDataset, token_stream
    from .models import GPT
    from .recipe import load_teacher, teacher_config_from
    from .shards import precompute_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    tcfg = teacher_config_from(args.teacher)
    teacher = load_teacher(args.teacher, GPT(tcfg))
    ds = WindowDataset(token_stream(args.split, args.max_tokens), args.seq_len or tcfg.seq_len, args.prompt_len)
    rank, world = 0, 1
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    out = precompute_teacher(teacher, ds, args.out, k=args.k, shard_windows=args.shard_windows,
                             batch_size=args.batch_size,
                             logprob_dtype=torch.float16 if args.fp16 else torch.float32,
                             meta=dict(split=args.split, teacher=str(args.teacher), max_tokens=args.max_tokens),
                             rank=rank, world=world, max_shards=args.max_shards)
    print(json.dumps(out))
    return 0


def precompute_cli(argv: Optional[List[str]] = None) -> int:
    p = add_precompute_arguments(argparse.ArgumentParser(prog="adkernels precompute-teacher",
                                                         description="write top-k teacher shards (safetensors)"))
    return precompute_main(p.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())
