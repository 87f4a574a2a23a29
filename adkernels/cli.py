"""The ``adkernels`` command: ``adkernels info`` and ``adkernels bench``."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # adkernels.train parses the recipe's own options
        from .train import main as train_main

        return train_main(argv[1:])
    if argv[:1] == ["precompute-teacher"]:  # parses its own options (adkernels precompute-teacher --help)
        from .train.lm.cli import precompute_cli

        return precompute_cli(argv[1:])
    parser = argparse.ArgumentParser(prog="adkernels", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("train", help="train with a recipe (adkernels train --recipe adim --help; --list-recipes)")
    sub.add_parser("info", help="versions, built backends, CPU ISA, CUDA/Triton availability")
    sub.add_parser("precompute-teacher", help="write a distill_lm teacher's top-k log-probabilities as safetensors "
                   "shards (resumable; read by adkernels train --recipe distill_lm --teacher-logits DIR)")
    bench = sub.add_parser("bench", help="run a benchmark script from benchmarks/ (source checkout)")
    bench.add_argument("name", nargs="?", default="kd", help="benchmark name: kd")
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")
    args = parser.parse_args(argv)
    if args.cmd == "info":
        import adkernels

        adkernels.info()
        return 0
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "benchmarks", f"bench_{args.name}.py")
    if not os.path.exists(script):
        parser.error(f"no benchmark {args.name!r}: {script} does not exist (benchmarks ship with the source tree)")
    return subprocess.call([sys.executable, script, *args.rest])


if __name__ == "__main__":
    sys.exit(main())
