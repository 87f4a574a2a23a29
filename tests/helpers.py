"""Shared test utilities: tolerances and the low-precision comparison pattern."""
from __future__ import annotations

import torch

# (atol, rtol) for comparing a backend with the reference in the same dtype.
TOL = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def grads(loss, inputs, weight=None):
    """Gradients of sum(loss * weight) (weight != 1: not the last layer), zeros for unused inputs."""
    if weight is None:
        weight = torch.full_like(loss, 2.0)
    return torch.autograd.grad((loss * weight).sum(), inputs, allow_unused=True, materialize_grads=True)


def assert_close_to_gt(fast, ref, gt, dtype, k=2.0, name=""):
    """|gt - fast| <= k * |gt - ref| + tol elementwise (gt computed in float64).

    In float32/float64 this is a plain tolerance check against gt; in half precision the
    reference run in the same dtype sets the error budget (flash-attention's pattern).
    """
    atol, rtol = TOL[dtype]
    fast, ref, gt = fast.double(), ref.double(), gt.double()
    same_inf = torch.isinf(gt) & (fast == gt)
    err = (fast - gt).abs()
    budget = k * (ref - gt).abs() + atol + rtol * gt.abs()
    ok = same_inf | (err <= budget) | (torch.isnan(gt) & torch.isnan(fast))
    if not bool(ok.all()):
        idx = (~ok).nonzero()[0].tolist()
        i = tuple(idx)
        raise AssertionError(
            f"{name}: {int((~ok).sum())} of {ok.numel()} elements off; first at {i}: "
            f"fast={fast[i].item()!r} ref={ref[i].item()!r} gt={gt[i].item()!r} budget={budget[i].item()!r}"
        )


def require_backend(backend: str, device: str = "cuda") -> None:
    """Skip (or fail, under ADKERNELS_REQUIRE_GPU_BACKENDS=1, as benchmarks/gpu_suite.sh sets)
    when ``backend`` cannot run on ``device`` tensors here, so a broken build cannot pass as
    skipped tests."""
    import importlib.util
    import os

    import pytest

    import adkernels
    from adkernels import _backend

    why = None
    if backend == "cuda" and not adkernels._cuda_loaded():
        why = f"CUDA extension not built: {adkernels._cuda_error or adkernels._C_error}"
    elif backend == "triton" and importlib.util.find_spec("triton") is None:
        why = "triton is not installed"
    elif not _backend.backend_available(backend, torch.device(device)):
        why = f"backend {backend!r} is not available for {device} tensors"
    if why is None:
        with adkernels.use_backend(backend):
            got = _backend.resolve(torch.device(device))
        if got != backend:
            why = f"backend {backend!r} resolves to {got!r}"
    if why is not None:
        if os.environ.get("ADKERNELS_REQUIRE_GPU_BACKENDS", "0") == "1":
            pytest.fail(why)
        pytest.skip(why)
