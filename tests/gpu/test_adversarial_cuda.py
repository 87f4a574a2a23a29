"""Adversarial losses on CUDA tensors: the CUDA C++ kernels and the Triton kernels against the
reference, and the CUDA ops against the CPU ops (same contract).

Skipped where CUDA is not available (conftest); a missing backend skips, or fails under
ADKERNELS_REQUIRE_GPU_BACKENDS=1 (benchmarks/gpu_suite.sh).
"""
from __future__ import annotations

import pytest
import torch

import adkernels
from adkernels.reference import adversarial as ref  # noqa: F401  (the reference backend)

from helpers import assert_close_to_gt, grads, require_backend

pytestmark = pytest.mark.gpu

DEVICE = "cuda"
BACKENDS = ["cuda", "triton"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
PARAMS = {"softmax": 3, "binary_tree": 2}


def run(backend, fn, inputs, *args, weight=None, **kw):
    xs = [x.detach().clone().requires_grad_() for x in inputs]
    with adkernels.use_backend(backend):
        loss = fn(*xs, *args, **kw)
    w = None if weight is None else weight.to(loss.dtype)
    return loss.detach(), grads(loss, xs, w)


def compare(backend, fn, inputs, *args, weight=None, k=2.0, **kw):
    dtype = inputs[0].dtype
    lf, gf = run(backend, fn, inputs, *args, weight=weight, **kw)
    lr, gr = run("reference", fn, inputs, *args, weight=weight, **kw)
    lg, gg = run("reference", fn, [x.double() for x in inputs], *args, weight=weight, **kw)
    assert lf.device.type == "cuda"
    assert_close_to_gt(lf, lr, lg, dtype, k=k, name=f"{backend} loss")
    for a, b, c in zip(gf, gr, gg):
        assert a.dtype == dtype and a.device.type == "cuda"
        assert_close_to_gt(a, b, c, dtype, name=f"{backend} grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("param", list(PARAMS))
@pytest.mark.parametrize("which", ["disc", "minimax", "nonsat"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("n", [1, 1000, 100_003])
def test_source_losses(backend, dtype, param, which, reduction, n):
    require_backend(backend)
    g = torch.Generator().manual_seed(n)
    z = (torch.randn(n, PARAMS[param], generator=g, dtype=torch.float64) * 4).to(dtype).to(DEVICE)
    src = torch.randint(0 if which == "disc" else 1, 3, (n,), generator=g).to(DEVICE)
    w = torch.rand(n, generator=g).add(0.5).to(DEVICE) if reduction == "none" else None
    kw = dict(weights=(0.5, 1.0, 2.0), parameterization=param, reduction=reduction)
    k = 2.0 + (n ** 0.5 if reduction != "none" else 0.0)  # sums of n rows
    if which == "disc":
        compare(backend, adkernels.discriminator_loss, [z], src, weight=w, k=k, **kw)
    else:
        compare(backend, adkernels.generator_loss, [z], src, weight=w, k=k, mode=which, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind,side", [("bce", "discriminator"), ("bce", "generator_nonsat"), ("hinge", "discriminator"),
                                       ("lsgan", "generator"), ("wgan", "discriminator"),
                                       ("relativistic", "discriminator"), ("relativistic", "generator")])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_binary_losses(backend, dtype, kind, side, reduction):
    require_backend(backend)
    m = 70_001
    mr = m if (kind == "relativistic" or reduction == "none") else m + 1234
    g = torch.Generator().manual_seed(3)
    r = (torch.randn(mr, generator=g, dtype=torch.float64) * 3).to(dtype).to(DEVICE)
    f = (torch.randn(m, generator=g, dtype=torch.float64) * 3).to(dtype).to(DEVICE)
    y = 0.9 if side == "discriminator" and kind in ("bce", "lsgan", "relativistic") else 1.0
    w = torch.rand(m, generator=g).add(0.5).to(DEVICE) if reduction == "none" else None
    kw = dict(kind=kind, side=side, real_label=y, reduction=reduction)
    k = 2.0 + (m ** 0.5 if reduction != "none" else 0.0)
    if side == "discriminator" or kind == "relativistic":
        compare(backend, adkernels.binary_adversarial_loss, [r, f], weight=w, k=k, **kw)
    else:
        compare(backend, lambda x, **kk: adkernels.binary_adversarial_loss(None, x, **kk), [f], weight=w, k=k, **kw)


def test_cuda_ops_match_cpu_ops_and_write_every_output():
    require_backend("cuda")
    z = torch.randn(5000, 3)
    src = torch.randint(0, 3, (5000,))
    torch.full((4 * 5000 * 8,), float("nan"), device=DEVICE)  # poison the caching allocator
    for args in [(z, src, 1.0, 0.5, 2.0, 0, 0, True, True), (z[:, :2].contiguous(), src.clamp(min=1), 0.0, 1.0, 1.0,
                                                          1, 2, False, True)]:
        got = torch.ops.adkernels.adv_source_fwd(*[a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args])
        want = torch.ops.adkernels.adv_source_fwd(*args)
        for a, b in zip(got, want):
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a.cpu(), b, atol=1e-6, rtol=1e-5)
    r, f = torch.randn(9000), torch.randn(8000)
    for args in [(r, f, 0, 0, 0.9, 1 / 9000, 1 / 8000, False, True, True), (None, f, 0, 2, 1.0, 1.0, 1.0, True, False, True)]:
        got = torch.ops.adkernels.adv_binary_fwd(*[a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args])
        want = torch.ops.adkernels.adv_binary_fwd(*args)
        for a, b in zip(got, want):
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a.cpu(), b, atol=1e-5, rtol=1e-5)


def test_cuda_bad_source_gives_nan_rows():
    require_backend("cuda")
    z = torch.randn(4, 3, device=DEVICE)
    src = torch.tensor([0, 5, 1, 2], device=DEVICE)
    rows, g = torch.ops.adkernels.adv_source_fwd(z, src, 1.0, 1.0, 1.0, 0, 0, True, True)
    assert torch.isnan(rows[1]) and torch.isnan(g[1]).all() and torch.isfinite(rows[[0, 2, 3]]).all()
    with adkernels.use_backend("cuda"), pytest.raises(ValueError, match=r"source\[1\] = 5"):
        adkernels.discriminator_loss(z, src)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_opcheck(dtype):
    require_backend("cuda")
    z = torch.randn(37, 3, device=DEVICE).to(dtype)
    src = torch.randint(0, 3, (37,), device=DEVICE)
    torch.library.opcheck(torch.ops.adkernels.adv_source_fwd.default, (z, src, 1.0, 0.5, 2.0, 0, 0, True, True))
    r, f = torch.randn(50, device=DEVICE).to(dtype), torch.randn(60, device=DEVICE).to(dtype)
    torch.library.opcheck(torch.ops.adkernels.adv_binary_fwd.default, (r, f, 0, 0, 0.9, 0.02, 1 / 60, False, True, True))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    require_backend(backend)
    torch._dynamo.reset()
    z = torch.randn(64, 2, device=DEVICE, requires_grad=True)
    src = torch.randint(1, 3, (64,), device=DEVICE)
    r = torch.randn(64, device=DEVICE, requires_grad=True)

    def fn(z, r):
        return (adkernels.generator_loss(z, src, mode="nonsat", parameterization="binary_tree")
                + adkernels.binary_adversarial_loss(r, r * 0.5, kind="hinge"))

    cf = torch.compile(fn, fullgraph=True)
    with adkernels.use_backend(backend):
        lc, le = cf(z, r), fn(z, r)
    torch.testing.assert_close(lc, le)


# ---- adv_distill_fwd: the fused ADIM generator step (the raw ops, CUDA C++ and Triton) ----------

DISTILL_MODES = {"minimax": 1, "nonsat": 2}
DISTILL_DIVS = {"kl": 0, "reverse_kl": 1, "jsd": 2}
DISTILL_WEIGHTS = (0.5, 1.0, 2.0)


def distill_op(backend):
    require_backend(backend)
    if backend == "triton":
        import adkernels.triton.adversarial  # noqa: F401  defines adkernels::adv_distill_fwd_triton

        return torch.ops.adkernels.adv_distill_fwd_triton
    return torch.ops.adkernels.adv_distill_fwd


def distill_inputs(N, C, param, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(N, C, generator=g, dtype=torch.float64) * 2).to(dtype).to(DEVICE)
    o = (torch.randn(N, C, generator=g, dtype=torch.float64) * 2).to(dtype).to(DEVICE)
    d = (torch.randn(N, C, PARAMS[param], generator=g, dtype=torch.float64) * 2).to(dtype).to(DEVICE)
    src = torch.randint(1, 3, (N,), generator=g).to(DEVICE)
    so = torch.tensor([seed * 1000003 + 17, 3 * seed], dtype=torch.int64, device=DEVICE)
    return x, o, d, src, so


def distill_reference(x, o, d, src, so, cast, tau, hard, param, mode, mean, kd, T, div):
    xs = [(t if cast is None else t.to(cast)).detach().requires_grad_() for t in (x, o, d)]
    acc = torch.float64 if xs[0].dtype == torch.float64 else torch.float32
    loss = ref.adversarial_distillation_loss(
        *xs, src, so, tau=torch.tensor(tau, dtype=acc, device=DEVICE), hard=hard, weights=DISTILL_WEIGHTS,
        kd_weight=kd, temperature=T, mode=mode, parameterization=param, reduction="mean" if mean else "sum",
        divergence=div)
    return loss.detach(), torch.autograd.grad(loss, xs, allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("param,mode,hard,kd,div", [("softmax", "minimax", False, 0.7, "kl"),
                                                    ("softmax", "nonsat", True, 0.0, "kl"),
                                                    ("binary_tree", "nonsat", False, 1.3, "jsd"),
                                                    ("binary_tree", "minimax", True, 0.7, "reverse_kl")])
@pytest.mark.parametrize("C", [1, 10, 1000, 5003])
def test_adv_distill_fwd(backend, dtype, param, mode, hard, kd, div, C):
    op = distill_op(backend)
    N = 257
    x, o, d, src, so = distill_inputs(N, C, param, dtype, seed=C)
    mean = C != 10
    kw = dict(tau=0.7, hard=hard, param=param, mode=mode, mean=mean, kd=kd, T=2.0, div=div)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    rows, gx, go, gd = op(x, o, d, src, torch.tensor(0.7, dtype=acc, device=DEVICE), so, hard, *DISTILL_WEIGHTS,
                          0 if param == "softmax" else 1, DISTILL_MODES[mode], mean, kd, 2.0, DISTILL_DIVS[div],
                          True, True, True)
    assert rows.device == x.device and rows.dtype == acc and rows.shape == (N,)
    lr, gr = distill_reference(x, o, d, src, so, None, **kw)
    lg, gg = distill_reference(x, o, d, src, so, torch.float64, **kw)
    assert_close_to_gt(rows.sum(), lr, lg, dtype, k=2.0 + N ** 0.5, name=f"{backend} loss")
    for a, b, c, name in zip((gx, go, gd), gr, gg, ("grad_gen", "grad_other", "grad_d")):
        assert a.dtype == dtype and a.shape == b.shape and torch.isfinite(a).all()
        assert_close_to_gt(a, b, c, dtype, name=f"{backend} {name}")
    if kd == 0:
        assert (go == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_adv_distill_fwd_bad_source_and_empty_grads(backend):
    op = distill_op(backend)
    x, o, d, _, so = distill_inputs(3, 50, "softmax", torch.float32, seed=1)
    src = torch.tensor([1, 0, 2], device=DEVICE)
    tau = torch.tensor(1.0, device=DEVICE)
    rows, gx, go, gd = op(x, o, d, src, tau, so, False, 1.0, 1.0, 1.0, 0, 1, True, 0.5, 1.0, 0, True, True, True)
    assert torch.isnan(rows[1]) and torch.isnan(gx[1]).all() and torch.isnan(gd[1]).all()
    assert torch.isfinite(rows[[0, 2]]).all() and torch.isfinite(gx[[0, 2]]).all() and torch.isfinite(go).all()
    r2, gx2, go2, gd2 = op(x, o, d, src, tau, so, False, 1.0, 1.0, 1.0, 0, 1, True, 0.5, 1.0, 0, False, True, False)
    torch.testing.assert_close(r2, rows, equal_nan=True)
    torch.testing.assert_close(go2, go)
    assert gx2.numel() == 0 and gd2.numel() == 0


def test_adv_distill_fwd_cuda_matches_cpu_op_and_writes_every_output():
    require_backend("cuda")
    if not torch._C._dispatch_has_kernel_for_dispatch_key("adkernels::adv_distill_fwd", "CPU"):
        pytest.skip("no CPU kernel of adv_distill_fwd in this build")
    x, o, d, src, so = distill_inputs(300, 700, "binary_tree", torch.float32, seed=2)
    torch.full((8 * 300 * 700 * 4,), float("nan"), device=DEVICE)  # poison the caching allocator
    for hard, kd, div in [(False, 0.5, 2), (True, 0.0, 0)]:
        args = (hard, 0.5, 1.0, 2.0, 1, 2, True, kd, 1.5, div, True, True, True)
        got = torch.ops.adkernels.adv_distill_fwd(x, o, d, src, torch.tensor(0.5, device=DEVICE), so, *args)
        want = torch.ops.adkernels.adv_distill_fwd(x.cpu(), o.cpu(), d.cpu(), src.cpu(), torch.tensor(0.5), so.cpu(),
                                                   *args)
        for a, b in zip(got, want):
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a.cpu(), b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_adv_distill_fwd_opcheck(dtype):
    op = distill_op("cuda")
    x, o, d, src, so = distill_inputs(5, 37, "softmax", dtype, seed=3)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    args = (x, o, d, src, torch.tensor(0.8, dtype=acc, device=DEVICE), so, True, 1.0, 0.5, 2.0, 0, 2, True, 0.7, 2.0, 1,
            True, True, True)
    torch.library.opcheck(op.default, args)
