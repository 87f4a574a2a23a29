"""adkernels: fused kernels for adversarial distillation and adversarial training."""
from __future__ import annotations

__version__ = "0.1.0"

import torch  # noqa: F401  loads libc10/libtorch, which the compiled extensions link against

_C_error: Exception | None = None
_cuda_error: Exception | None = None
try:
    from . import _C  # noqa: F401  registers torch.ops.adkernels.* (schemas + CPU kernels)
except ImportError as e:  # pure-Python install: reference (and Triton) backends only
    _C_error = e
try:
    from . import _C_cuda  # noqa: F401  CUDA kernels, where built
except ImportError as e:
    _cuda_error = e


def _C_loaded() -> bool:
    return _C_error is None


def _cuda_loaded() -> bool:
    return _C_error is None and _cuda_error is None


from ._backend import current_backend, set_default_backend, use_backend  # noqa: E402
from ._info import info  # noqa: E402
from .ops.kd import (  # noqa: E402
    FusedLinearKDLoss,
    KDLoss,
    fused_linear_kd_loss,
    kd_loss,
    vocab_parallel_kd_loss,
)
from .ops.attacks import pgd_step, pgd_step_, sign_step, sign_step_  # noqa: E402
from .ops.attacks import random_start, random_start_  # noqa: E402
from .ops.gumbel import gumbel_softmax, temperature_schedule  # noqa: E402
from .ops.topk_kd import TopkKDLoss, fused_linear_topk_kd_loss, topk_kd_loss  # noqa: E402
from .ops.soft_ce import SoftTargetCrossEntropy, ada_lab_targets, soft_target_cross_entropy  # noqa: E402
from .ops.adversarial import (  # noqa: E402
    REAL,
    STUDENT,
    TEACHER,
    adversarial_distillation_loss,
    binary_adversarial_loss,
    discriminator_loss,
    generator_loss,
    label_conditioned_scores,
)
from . import attacks  # noqa: E402  model-level fgsm / pgd (adkernels.attacks.*)

__all__ = [
    "kd_loss",
    "KDLoss",
    "fused_linear_kd_loss",
    "FusedLinearKDLoss",
    "vocab_parallel_kd_loss",
    "sign_step",
    "sign_step_",
    "pgd_step",
    "pgd_step_",
    "random_start",
    "random_start_",
    "gumbel_softmax",
    "temperature_schedule",
    "topk_kd_loss",
    "TopkKDLoss",
    "fused_linear_topk_kd_loss",
    "soft_target_cross_entropy",
    "SoftTargetCrossEntropy",
    "ada_lab_targets",
    "REAL",
    "STUDENT",
    "TEACHER",
    "discriminator_loss",
    "generator_loss",
    "label_conditioned_scores",
    "binary_adversarial_loss",
    "adversarial_distillation_loss",
    "attacks",
    "use_backend",
    "current_backend",
    "set_default_backend",
    "info",
]
