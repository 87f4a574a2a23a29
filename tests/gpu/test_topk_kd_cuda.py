"""topk_kd_loss on CUDA tensors: the CUDA C++ kernel and the Triton kernel against the reference
(skipped without CUDA; see tests/gpu/test_kd_cuda.py for the conventions)."""
from __future__ import annotations

import pytest
import torch

import adkernels
from adkernels.reference.topk_kd import topk_kd_loss as ref_topk

from helpers import assert_close_to_gt, grads, require_backend

pytestmark = pytest.mark.gpu


def make(n, v, k, dtype, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, v, generator=g, dtype=torch.float64) * scale
    t = 0.5 * s + torch.randn(n, v, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, v, (n,), generator=g)
    y[::4] = -100
    lt, ids = torch.log_softmax(t, -1).topk(k, -1)
    return s.to(dtype).cuda(), ids.cuda(), lt.float().cuda() if dtype != torch.float64 else lt.cuda(), y.cuda()


def run(backend, s, ids, lt, y, **kw):
    s = s.detach().clone().requires_grad_()
    if backend == "reference":
        loss = ref_topk(s, ids, lt, y, **kw)
    else:
        with adkernels.use_backend(backend):
            loss = adkernels.topk_kd_loss(s, ids, lt, y, **kw)
    return loss.detach(), grads(loss, [s])[0]


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(41, 1271, 37), (5, 32000, 64), (3, 128256, 512), (4, 50, 50)])
@pytest.mark.parametrize("tail", ["renorm", "bucket"])
def test_matches_reference(backend, dtype, shape, tail):
    require_backend(backend)
    n, v, k = shape
    s, ids, lt, y = make(n, v, k, dtype)
    kw = dict(temperature=2.0, alpha=0.5, label_smoothing=0.1, tail=tail)
    lf, gf = run(backend, s, ids, lt, y, **kw)
    lr, gr = run("reference", s, ids, lt, y, **kw)
    lg, gg = run("reference", s.double(), ids, lt.double(), y, **kw)
    assert_close_to_gt(lf, lr, lg, dtype, name="loss")
    assert_close_to_gt(gf, gr, gg, dtype, name="grad")


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gradcheck(backend):
    require_backend(backend)
    s, ids, lt, y = make(3, 9, 4, torch.float64)
    f = lambda a: adkernels.topk_kd_loss(a, ids, lt, y, temperature=1.7, alpha=0.5, tail="bucket")
    with adkernels.use_backend(backend):
        assert torch.autograd.gradcheck(f, (s.requires_grad_(),))
