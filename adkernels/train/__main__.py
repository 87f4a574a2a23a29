"""``python -m adkernels.train ...`` and ``torchrun --nproc_per_node=K -m adkernels.train ...``."""
import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
