"""``adkernels.info()``: versions, built backends, CPU ISA, CUDA / Triton availability."""
from __future__ import annotations

import platform

import torch


def info(print_out: bool = True) -> dict:
    """Collect (and print) what this install can run.

    >>> import adkernels
    >>> sorted(adkernels.info(print_out=False))[:3]
    ['adkernels', 'backends', 'cpu_extension']
    """
    from . import __version__, _C_error, _cuda_error, _backend

    d = {
        "adkernels": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_extension": _C_error is None,
        "cpu_isa": torch.ops.adkernels.cpu_isa() if _C_error is None else None,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda_extension": _C_error is None and _cuda_error is None,
        "cuda_available": torch.cuda.is_available(),
        "triton": None,
        "triton_interpret": _backend.triton_interpret(),
        "default_backend": _backend.current_backend(),
    }
    if _backend.has_triton():
        import triton

        d["triton"] = triton.__version__
    backends = ["reference"]
    if d["cpu_extension"]:
        backends.append("cpu")
    if d["cuda_extension"]:
        backends.append("cuda")
    if d["triton"]:
        backends.append("triton")
    d["backends"] = backends
    if _C_error is not None:
        d["cpu_extension_error"] = str(_C_error)
    if print_out:
        width = max(len(k) for k in d)
        for k, v in d.items():
            print(f"{k:<{width}}  {v}")
    return d
