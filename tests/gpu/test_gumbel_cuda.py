"""gumbel_softmax on CUDA tensors: the CUDA C++ and Triton kernels against the reference (same
uniforms for the same (seed, offset, element); values to rounding of log / exp), the CPU kernel
on the same stream, hard samples, backward, a tensor tau under torch.compile.

Skipped where CUDA is not available (conftest); a missing backend skips, or fails under
ADKERNELS_REQUIRE_GPU_BACKENDS=1 (benchmarks/gpu_suite.sh).
"""
from __future__ import annotations

import pytest
import torch

import adkernels
from adkernels.ops.gumbel import draw_seed_offset
from adkernels.reference import gumbel as ref

from helpers import TOL, require_backend

pytestmark = pytest.mark.gpu
DEVICE = "cuda"


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1), (5, 37), (3, 5000), (64, 10)])
@pytest.mark.parametrize("hard", [False, True])
def test_matches_reference(backend, dtype, shape, hard):
    require_backend(backend, DEVICE)
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(DEVICE, dtype).requires_grad_(True)
    dy = torch.randn(shape, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    torch.manual_seed(3)
    with adkernels.use_backend(backend):
        y = adkernels.gumbel_softmax(x, 0.7, hard)
    torch.manual_seed(3)
    so = draw_seed_offset("t", None, torch.device(DEVICE))
    want = ref.gumbel_softmax(x, so, 0.7, hard)
    atol, rtol = TOL[dtype]
    if hard:
        assert torch.equal(y, want)
    else:
        torch.testing.assert_close(y.double(), want.double(), atol=atol, rtol=rtol)
    (gx,) = torch.autograd.grad(y, x, dy)
    (gw,) = torch.autograd.grad(want, x, dy)
    torch.testing.assert_close(gx.double(), gw.double(), atol=4 * atol, rtol=4 * rtol)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_same_noise_as_cpu(backend):
    require_backend(backend, DEVICE)
    x = torch.zeros(4, 300, dtype=torch.float64)
    so = torch.tensor([2 ** 61 + 5, 77])
    fwd = torch.ops.adkernels.gumbel_softmax_fwd
    if backend == "triton":
        import adkernels.triton.gumbel  # noqa: F401

        fwd = torch.ops.adkernels.gumbel_softmax_fwd_triton
    tau = torch.tensor(1.0, dtype=torch.float64)
    y_gpu, _ = fwd(x.to(DEVICE), tau.to(DEVICE), so.to(DEVICE), False, False)
    y_cpu, _ = torch.ops.adkernels.gumbel_softmax_fwd(x, tau, so, False, False)
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, atol=1e-13, rtol=1e-12)


def test_compile_tensor_tau_cuda():
    require_backend("cuda", DEVICE)
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    x = torch.randn(8, 100, device=DEVICE)
    cnt = CompileCounterWithBackend("inductor")
    f = torch.compile(lambda x, t: adkernels.gumbel_softmax(x, t), backend=cnt, fullgraph=True)
    for step in range(3):
        y = f(x, torch.tensor(adkernels.temperature_schedule(step, 3), device=DEVICE))
        assert torch.isfinite(y).all()
    assert cnt.frame_count == 1
