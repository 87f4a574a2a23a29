"""Backend choice: ``auto`` / ``cuda`` / ``triton`` / ``cpu`` / ``reference``.

``auto`` picks cuda -> triton -> reference for CUDA tensors and cpu -> reference for CPU
tensors. ``use_backend(name)`` (a context manager) overrides it; the ``ADKERNELS_BACKEND``
environment variable sets the default when adkernels is imported. A backend that is missing
for an op falls back along the ``auto`` order; every backend computes the same contract, so
a fallback never changes what is computed (only how fast).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings

import torch

BACKENDS = ("auto", "cuda", "triton", "cpu", "reference")

_default = os.environ.get("ADKERNELS_BACKEND", "auto").strip().lower() or "auto"
if _default not in BACKENDS:
    raise ValueError(f"ADKERNELS_BACKEND={_default!r} is not one of {BACKENDS}")
_stack: list[str] = []
_warned: set = set()


def _check(name: str) -> str:
    name = str(name).strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str):
    """Run the ops inside the ``with`` block on backend ``name``.

    >>> import adkernels
    >>> with adkernels.use_backend("reference"):
    ...     adkernels.current_backend()
    'reference'
    """
    _stack.append(_check(name))
    try:
        yield
    finally:
        _stack.pop()


def current_backend() -> str:
    return _stack[-1] if _stack else _default


def set_default_backend(name: str) -> None:
    global _default
    _default = _check(name)


# ---- what was built / is importable ---------------------------------------------------------

def has_cpp() -> bool:
    from . import _C_loaded

    return _C_loaded()


def has_cuda_kernels() -> bool:
    from . import _cuda_loaded

    return _cuda_loaded() and torch.cuda.is_available()


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def backend_available(name: str, device: torch.device) -> bool:
    if name == "reference":
        return True
    if name == "cpu":
        return device.type == "cpu" and has_cpp()
    if name == "cuda":
        return device.type == "cuda" and has_cuda_kernels()
    if name == "triton":
        return has_triton() and (device.type == "cuda" or (device.type == "cpu" and triton_interpret()))
    return False


def resolve(device: torch.device, implemented=("cuda", "triton", "cpu", "reference")) -> str:
    """The backend an op runs on for tensors on ``device``."""
    want = current_backend()
    order = ["cuda", "triton", "reference"] if device.type == "cuda" else ["cpu", "reference"]
    if want != "auto":
        if want in implemented and backend_available(want, device):
            return want
        key = (want, device.type)
        if key not in _warned:
            _warned.add(key)
            warnings.warn(
                f"adkernels: backend {want!r} is not available for {device.type} tensors here; "
                f"falling back to {order} (same results, different speed)",
                stacklevel=3,
            )
    for name in order:
        if name in implemented and backend_available(name, device):
            return name
    return "reference"
