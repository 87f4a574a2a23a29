"""soft_target_cross_entropy and ada_lab_targets on CUDA tensors: the CUDA C++ kernels and the
Triton kernels against the reference (skipped without CUDA; conventions of test_kd_cuda.py)."""
from __future__ import annotations

import pytest
import torch

import adkernels
from adkernels.reference import soft_ce as R

from helpers import assert_close_to_gt, grads, require_backend

pytestmark = pytest.mark.gpu


def make(n, v, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, v, generator=g, dtype=torch.float64) * 3
    q = torch.rand(n, v, generator=g, dtype=torch.float64)
    q = q / q.sum(-1, keepdim=True)
    return z.to(dtype).cuda(), q.to(dtype).cuda()


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(41, 1271), (5, 32000), (300, 10)])
def test_soft_ce_matches_reference(backend, dtype, shape):
    require_backend(backend)
    z, q = make(*shape, dtype)

    def run(be, a, b):
        a = a.detach().clone().requires_grad_()
        b = b.detach().clone().requires_grad_()
        if be == "reference":
            loss = R.soft_target_cross_entropy(a, b, reduction="none")
        else:
            with adkernels.use_backend(be):
                loss = adkernels.soft_target_cross_entropy(a, b, reduction="none")
        return loss.detach(), grads(loss, [a, b])

    lf, gf = run(backend, z, q)
    lr, gr = run("reference", z, q)
    lg, gg = run("reference", z.double(), q.double())
    assert_close_to_gt(lf, lr, lg, dtype, name="loss")
    for a, b, c in zip(gf, gr, gg):
        assert_close_to_gt(a, b, c, dtype, name="grad")


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_ada_lab_matches_reference(backend, dtype):
    require_backend(backend)
    za, zb = make(300, 1000, dtype)
    y = torch.randint(0, 1000, (300,), device="cuda")
    kw = dict(max_weight=0.7, gamma=8.0, bias=0.1, temperature=2.0, return_weight=True)
    with adkernels.use_backend(backend):
        tf, wf = adkernels.ada_lab_targets(za, zb, y, **kw)
    tr, wr = R.ada_lab_targets(za, zb, y, **kw)
    tg, wg = R.ada_lab_targets(za.double(), zb.double(), y, **kw)
    assert_close_to_gt(tf, tr, tg, dtype, name="targets")
    assert_close_to_gt(wf, wr, wg, dtype, name="weight")
