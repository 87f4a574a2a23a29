"""Plain-PyTorch implementations of every op: the executable specification used by tests."""
from .attacks import pgd_step, sign_step
from .kd import kd_loss, kd_loss_rows

__all__ = ["kd_loss", "kd_loss_rows"]
__all__ += ["sign_step", "pgd_step"]
from .attacks import random_start  # noqa: E402
from .gumbel import gumbel_softmax  # noqa: E402

__all__ += ["random_start", "gumbel_softmax"]
