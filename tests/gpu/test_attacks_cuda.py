"""sign_step / pgd_step on CUDA tensors: the CUDA C++ kernels and the Triton kernels against the
reference (bit-identical for sign / linf: the products step * sign(g) are exact, so FMA
contraction cannot change the rounding; to a few ulps for l2, whose norms are reduced in another
order), against the CPU kernel, in-place forms, per-sample tensors, invariants.

Skipped where CUDA is not available (conftest). A backend that is missing skips its tests, or
fails them under ADKERNELS_REQUIRE_GPU_BACKENDS=1 (benchmarks/gpu_suite.sh).
"""
from __future__ import annotations


import pytest
import torch

import adkernels
from adkernels.reference import attacks as ref

from helpers import require_backend

pytestmark = pytest.mark.gpu

DEVICE = "cuda"
BACKENDS = ["cuda", "triton"]
BOUNDS = ["none", "scalar", "channel", "element", "sample", "mixed"]


def require(backend: str) -> None:
    require_backend(backend, DEVICE)


def make(shape, dtype=torch.float32, grad_dtype=None, seed=0, layout="contiguous"):
    g = torch.Generator().manual_seed(seed)
    x_nat = torch.rand(shape, generator=g, dtype=torch.float64)
    x_adv = (x_nat + (torch.rand(shape, generator=g, dtype=torch.float64) - 0.5) * 0.1).clamp(0, 1)
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    grad[torch.rand(shape, generator=g) < 0.2] = 0.0
    if shape[0] > 1:
        grad[0] = 0.0
    out = [x_adv.to(dtype), grad.to(grad_dtype or dtype), x_nat.to(dtype)]
    out = [t.to(DEVICE) for t in out]
    if layout == "channels_last":
        out = [t.contiguous(memory_format=torch.channels_last) for t in out]
    return out


def bounds(kind, shape, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    c = shape[1]
    if kind == "none":
        return None, None
    if kind == "scalar":
        return 0.2, 0.8
    if kind == "channel":
        lo = torch.rand(1, c, 1, 1, generator=g, dtype=dtype) * 0.4
        return lo.to(DEVICE), (lo + 0.4).to(DEVICE)
    if kind == "element":
        lo = torch.rand(shape[1:], generator=g, dtype=dtype) * 0.4
        return lo.to(DEVICE), (lo + 0.5).to(DEVICE)
    if kind == "sample":
        lo = torch.rand(shape[0], 1, 1, 1, generator=g, dtype=dtype) * 0.4
        return lo.to(DEVICE), (lo + 0.3).to(DEVICE)
    if kind == "mixed":
        return 0.1, (torch.rand(c, 1, 1, generator=g, dtype=dtype) * 0.3 + 0.6).to(DEVICE)
    raise AssertionError(kind)


def l2_close(a, b):
    tol = 8 * torch.finfo(a.dtype).eps
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def on_cpu(v):
    return v.cpu() if isinstance(v, torch.Tensor) else v


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("grad_dtype", [None, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind", BOUNDS)
@pytest.mark.parametrize("shape", [(5, 3, 17, 19), (64, 3, 32, 32), (1, 3, 224, 224)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_matches_reference(backend, dtype, grad_dtype, kind, shape, layout):
    require(backend)
    x_adv, grad, x_nat = make(shape, dtype, grad_dtype, seed=sum(shape), layout=layout)
    lo, hi = bounds(kind, shape)
    n = shape[0]
    step = torch.rand(n, generator=torch.Generator().manual_seed(2), dtype=torch.float64).mul(0.05).to(DEVICE)
    with adkernels.use_backend(backend):
        got_s = adkernels.sign_step(x_adv, grad, step, lo=lo, hi=hi)
        got_l = adkernels.pgd_step(x_adv, grad, x_nat, step, 0.03, lo=lo, hi=hi)
        got_2 = adkernels.pgd_step(x_adv, grad, x_nat, step * 20, 0.5, norm="l2", lo=lo, hi=hi)
    assert torch.equal(got_s, ref.sign_step(x_adv, grad, step, lo=lo, hi=hi))
    assert torch.equal(got_l, ref.pgd_step(x_adv, grad, x_nat, step, 0.03, lo=lo, hi=hi))
    l2_close(got_2, ref.pgd_step(x_adv, grad, x_nat, step * 20, 0.5, norm="l2", lo=lo, hi=hi))
    if layout == "channels_last":
        assert got_l.is_contiguous(memory_format=torch.channels_last)
    # the same numbers as the CPU kernel
    if adkernels._C_loaded():
        with adkernels.use_backend("cpu"):
            cpu_l = adkernels.pgd_step(x_adv.cpu(), grad.cpu(), x_nat.cpu(), step.cpu(), 0.03,
                                       lo=on_cpu(lo), hi=on_cpu(hi))
        assert torch.equal(got_l.cpu(), cpu_l)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", ["sign", "linf", "l2"])
def test_inplace_and_per_sample(backend, norm):
    require(backend)
    shape = (6, 3, 40, 40)
    x_adv, grad, x_nat = make(shape, grad_dtype=torch.bfloat16, seed=3)
    lo, hi = bounds("channel", shape)
    step = torch.tensor([0.0, 0.01, 0.02, 0.5, 0.03, 0.1], device=DEVICE)
    eps = torch.tensor([0.02, 0.0, 0.05, 0.3, 1.0, 0.04], device=DEVICE)

    def call(xa, g, xn, s, e, inplace=False):
        if norm == "sign":
            return (adkernels.sign_step_ if inplace else adkernels.sign_step)(xa, g, s, lo=lo, hi=hi)
        return (adkernels.pgd_step_ if inplace else adkernels.pgd_step)(xa, g, xn, s, e, norm=norm, lo=lo, hi=hi)

    with adkernels.use_backend(backend):
        batch = call(x_adv, grad, x_nat, step, eps)
        x = x_adv.clone()
        assert call(x, grad, x_nat, step, eps, inplace=True) is x
        assert torch.equal(x, batch)
        for i in range(shape[0]):
            alone = call(x_adv[i:i + 1], grad[i:i + 1], x_nat[i:i + 1], float(step[i]), float(eps[i]))
            assert torch.equal(batch[i:i + 1], alone), i


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_invariants(backend, norm):
    require(backend)
    shape = (8, 3, 64, 64)
    x_adv, grad, x_nat = make(shape, seed=4)
    eps = torch.tensor([0.0, 0.01, 0.03, 0.1, 0.5, 1.0, 2.0, 8.0], device=DEVICE)
    x = x_nat.clone()
    with adkernels.use_backend(backend):
        for i in range(5):
            grad = torch.randn(shape, device=DEVICE)
            x = adkernels.pgd_step(x, grad, x_nat, eps / 3, eps, norm=norm, lo=0.0, hi=1.0)
    d = (x - x_nat).reshape(8, -1)
    ulp = torch.finfo(torch.float32).eps
    if norm == "linf":
        assert bool((d.abs().amax(1) <= eps + ulp).all())
    else:
        assert bool((torch.linalg.vector_norm(d, dim=1) <= eps * (1 + 1e-5) + ulp * d.shape[1] ** 0.5).all())
    assert bool(((x >= 0) & (x <= 1)).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    require(backend)
    x = torch.zeros(0, 3, 8, 8, device=DEVICE)
    with adkernels.use_backend(backend):
        assert adkernels.pgd_step(x, x, x, 0.1, 0.1, norm="l2", lo=0.0, hi=1.0).shape == x.shape
        assert adkernels.sign_step_(x, x, 0.1) is x


def test_opcheck_cuda():
    require("cuda")
    x_adv, grad, x_nat = make((3, 2, 5, 4), grad_dtype=torch.bfloat16)
    step = torch.tensor([0.01, 0.02, 0.0], device=DEVICE)
    eps = torch.tensor([0.03, 0.0, 0.05], device=DEVICE)
    lo, hi = torch.tensor([0.1, 0.2], device=DEVICE), torch.tensor([0.8, 0.9], device=DEVICE)
    ops = torch.ops.adkernels
    torch.library.opcheck(ops.sign_step.default, (x_adv, grad, step, lo, hi, 20))
    torch.library.opcheck(ops.sign_step_.default, (x_adv.clone(), grad, step, None, None, 1))
    torch.library.opcheck(ops.pgd_step.default, (x_adv, grad, x_nat, step, eps, 1, lo, hi, 20))
    torch.library.opcheck(ops.pgd_step_.default, (x_adv.clone(), grad, x_nat, step, eps, 0, lo, hi, 20))


# ---- random_start ------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bound", ["none", "scalar", "channel"])
def test_random_start_matches_reference(backend, norm, dtype, bound):
    require(backend)
    shape = (3, 3, 9, 7)
    x, _, _ = make(shape, dtype)
    lo, hi = bounds(bound, shape, dtype)
    eps = torch.tensor([0.1, 0.0, 0.05], dtype=dtype, device=DEVICE)
    torch.manual_seed(4)
    with adkernels.use_backend(backend):
        got = adkernels.random_start(x, eps, norm=norm, lo=lo, hi=hi)
    torch.manual_seed(4)
    with adkernels.use_backend("reference"):
        want = adkernels.random_start(x, eps, norm=norm, lo=lo, hi=hi)
    if norm == "linf":  # the product is rounded before the add on every backend
        assert torch.equal(got, want)
    else:
        tol = 8 * torch.finfo(dtype).eps
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    y = x.clone()
    torch.manual_seed(4)
    with adkernels.use_backend(backend):
        adkernels.random_start_(y, eps, norm=norm, lo=lo, hi=hi)
    assert torch.equal(y, got)
