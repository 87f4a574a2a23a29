"""``python -m adkernels.train.lm``: the distill_lm recipe (see adkernels.train.lm.recipe)."""
import sys

if __name__ == "__main__":
    from .cli import train_main

    sys.exit(train_main())
