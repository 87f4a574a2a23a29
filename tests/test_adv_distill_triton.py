"""Triton ``adv_distill_fwd_triton`` (the fused ADIM generator step) against the float64 autograd of
the reference composition ``adkernels.reference.adversarial.adversarial_distillation_loss``.

The op returns per-row terms whose sum is the reference loss (reduction "mean" with per-source
means, "sum" without) and the gradients of that sum. Runs on CPU under the Triton interpreter
(conftest sets TRITON_INTERPRET=1 where there is no CUDA): shapes stay tiny, and the multi-block
loop over C is covered by lowering DISTILL_BLOCK.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

pytest.importorskip("triton")

from hypothesis import given, settings, strategies as st  # noqa: E402

from adkernels import _backend  # noqa: E402
from adkernels.reference.adversarial import adversarial_distillation_loss  # noqa: E402

from helpers import assert_close_to_gt  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if not _backend.backend_available("triton", torch.device(DEVICE)):
    pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1 (set by conftest before the first @triton.jit)",
                allow_module_level=True)

import adkernels.triton.adversarial as tadv  # noqa: E402

OP = torch.ops.adkernels.adv_distill_fwd_triton
PARAMS = {"softmax": 0, "binary_tree": 1}
MODES = {"minimax": 1, "nonsat": 2}
DIVS = {"kl": 0, "reverse_kl": 1, "jsd": 2}
WEIGHTS = (0.5, 1.0, 2.0)


@contextlib.contextmanager
def block(n):
    old = tadv.DISTILL_BLOCK
    tadv.DISTILL_BLOCK = n
    try:
        yield
    finally:
        tadv.DISTILL_BLOCK = old


def make(N, C, param, dtype, seed=0, scale=2.0, sources=None):
    g = torch.Generator().manual_seed(seed)
    K = 3 if param == "softmax" else 2
    x = (torch.randn(N, C, generator=g, dtype=torch.float64) * scale).to(dtype).to(DEVICE)
    o = (torch.randn(N, C, generator=g, dtype=torch.float64) * scale).to(dtype).to(DEVICE)
    d = (torch.randn(N, C, K, generator=g, dtype=torch.float64) * scale).to(dtype).to(DEVICE)
    src = sources if sources is not None else torch.randint(1, 3, (N,), generator=g)
    so = torch.tensor([int(torch.randint(0, 2**40, (1,), generator=g)), 7 * seed], dtype=torch.int64)
    return x, o, d, src.to(DEVICE), so.to(DEVICE)


def fast(x, o, d, src, so, *, tau, hard, param, mode, mean, kd, T, div, grads=(True, True, True)):
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    tau_t = torch.tensor(tau, dtype=acc, device=x.device)
    return OP(x, o, d, src, tau_t, so, hard, *WEIGHTS, PARAMS[param], MODES[mode], mean, kd, T, DIVS[div], *grads)


def reference(x, o, d, src, so, *, tau, hard, param, mode, mean, kd, T, div, cast=None):
    """(loss, (d/dx, d/do, d/dd)) of the reference on the inputs (cast to ``cast`` first if given)."""
    xs = [(t if cast is None else t.to(cast)).detach().requires_grad_() for t in (x, o, d)]
    tau_t = torch.tensor(tau, dtype=torch.float64 if xs[0].dtype == torch.float64 else torch.float32)
    loss = adversarial_distillation_loss(*xs, src, so.cpu(), tau=tau_t, hard=hard, weights=WEIGHTS, kd_weight=kd,
                                         temperature=T, mode=mode, parameterization=param,
                                         reduction="mean" if mean else "sum", divergence=div)
    gs = torch.autograd.grad(loss, xs, allow_unused=True, materialize_grads=True)
    return loss.detach(), gs


def check64(N, C, *, param="softmax", mode="minimax", hard=False, mean=True, kd=0.7, T=2.0, div="kl", tau=0.7,
            seed=0, sources=None, scale=2.0):
    x, o, d, src, so = make(N, C, param, torch.float64, seed, scale, sources)
    kw = dict(tau=tau, hard=hard, param=param, mode=mode, mean=mean, kd=kd, T=T, div=div)
    rows, gx, go, gd = fast(x, o, d, src, so, **kw)
    loss, (rx, ro, rd) = reference(x, o, d, src, so, **kw)
    assert rows.shape == (N,) and rows.dtype == torch.float64
    for t in (rows, gx, go, gd):
        assert torch.isfinite(t).all()
    torch.testing.assert_close(rows.sum(), loss, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(gx, rx, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(go, ro, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(gd, rd, atol=1e-10, rtol=1e-9)
    if kd == 0:
        assert (go == 0).all()
    return rows, gx, go, gd


# (param, mode, hard, kd, div, C): every parameterization x mode x hard, each divergence, kd off,
# odd C (1, 7, 33)
CASES = [
    ("softmax", "minimax", False, 0.7, "kl", 7),
    ("softmax", "minimax", True, 0.7, "reverse_kl", 7),
    ("softmax", "nonsat", False, 1.3, "jsd", 33),
    ("softmax", "nonsat", True, 0.0, "kl", 7),
    ("binary_tree", "minimax", False, 0.0, "kl", 33),
    ("binary_tree", "minimax", True, 0.7, "jsd", 7),
    ("binary_tree", "nonsat", False, 0.7, "reverse_kl", 7),
    ("binary_tree", "nonsat", True, 1.3, "kl", 33),
    ("softmax", "minimax", False, 0.7, "jsd", 1),
    ("binary_tree", "nonsat", True, 0.7, "kl", 1),
]


@pytest.mark.parametrize("param,mode,hard,kd,div,C", CASES)
def test_float64_matches_reference_autograd(param, mode, hard, kd, div, C):
    check64(4, C, param=param, mode=mode, hard=hard, kd=kd, div=div, seed=C)


@pytest.mark.parametrize("hard", [False, True])
def test_several_blocks_per_row(hard):
    # C = 40 in blocks of 16: three blocks, a partial last one; the argmax may sit in any block
    with block(16):
        check64(3, 40, hard=hard, div="jsd", seed=5)


def test_sum_reduction_and_one_row():
    check64(3, 7, mean=False, mode="nonsat", seed=2)
    check64(1, 7, mean=True, seed=3, sources=torch.tensor([2]))
    check64(1, 5, mean=False, hard=True, param="binary_tree", seed=4, sources=torch.tensor([1]))


def test_per_source_means_use_batch_counts():
    # three STUDENT rows and one TEACHER row: rows scaled by w/3 and w/1
    src = torch.tensor([1, 1, 2, 1])
    rows, *_ = check64(4, 7, sources=src, kd=0.0, seed=6)
    rows_sum, *_ = check64(4, 7, sources=src, kd=0.0, seed=6, mean=False)
    torch.testing.assert_close(rows * torch.tensor([3.0, 3.0, 1.0, 3.0], dtype=torch.float64), rows_sum)


def test_sharp_samples():
    # tau = 0.1 and large logits: the soft sample is nearly one-hot, exp underflows to 0
    check64(3, 7, tau=0.1, scale=20.0, seed=8)
    check64(3, 7, tau=0.1, scale=20.0, seed=8, hard=True, mode="nonsat", T=0.5, div="reverse_kl")


@pytest.mark.parametrize("dtype,hard,param", [(torch.float32, False, "softmax"), (torch.float32, True, "binary_tree"),
                                              (torch.bfloat16, False, "binary_tree"), (torch.float16, False, "softmax")],
                         ids=str)
def test_low_precision_within_reference_error(dtype, hard, param):
    N, C = 4, 9
    x, o, d, src, so = make(N, C, param, dtype, seed=11)
    kw = dict(tau=0.8, hard=hard, param=param, mode="nonsat", mean=True, kd=0.6, T=1.5, div="jsd")
    rows, gx, go, gd = fast(x, o, d, src, so, **kw)
    assert rows.dtype == torch.float32
    assert gx.dtype == go.dtype == gd.dtype == dtype
    lr, gr = reference(x, o, d, src, so, **kw)
    lg, gg = reference(x, o, d, src, so, cast=torch.float64, **kw)
    assert_close_to_gt(rows.sum(), lr, lg, dtype, name="loss")
    for a, b, c, name in zip((gx, go, gd), gr, gg, ("grad_gen", "grad_other", "grad_d")):
        assert torch.isfinite(a).all()
        assert_close_to_gt(a, b, c, dtype, name=name)


def test_gradients_not_asked_are_empty():
    x, o, d, src, so = make(3, 7, "softmax", torch.float64, seed=12)
    kw = dict(tau=0.7, hard=False, param="softmax", mode="minimax", mean=True, kd=0.7, T=2.0, div="kl")
    rows, gx, go, gd = fast(x, o, d, src, so, **kw)
    for grads in [(False, False, False), (False, True, False), (True, False, True)]:
        r2, *gs = fast(x, o, d, src, so, grads=grads, **kw)
        torch.testing.assert_close(r2, rows, atol=0, rtol=0)
        for want, got, full in zip(grads, gs, (gx, go, gd)):
            if want:
                torch.testing.assert_close(got, full, atol=0, rtol=0)
            else:
                assert got.numel() == 0 and got.dtype == x.dtype


def test_grad_other_is_zero_without_kd():
    x, o, d, src, so = make(2, 7, "binary_tree", torch.float32, seed=13)
    _, _, go, _ = fast(x, o, d, src, so, tau=1.0, hard=True, param="binary_tree", mode="minimax", mean=False, kd=0.0,
                       T=1.0, div="kl")
    assert go.shape == o.shape and (go == 0).all()


def test_bad_source_gives_nan_rows():
    x, o, d, _, so = make(3, 7, "softmax", torch.float32, seed=14)
    src = torch.tensor([1, 0, 2], device=DEVICE)
    rows, gx, go, gd = fast(x, o, d, src, so, tau=1.0, hard=False, param="softmax", mode="minimax", mean=True,
                            kd=0.5, T=1.0, div="kl")
    assert torch.isnan(rows[1]) and torch.isnan(gx[1]).all() and torch.isnan(gd[1]).all()
    assert torch.isfinite(rows[[0, 2]]).all() and torch.isfinite(gx[[0, 2]]).all()
    assert torch.isfinite(go).all()  # the KD term does not involve the source


def test_empty_batch():
    x, o, d, src, so = make(0, 7, "softmax", torch.float32)
    rows, gx, go, gd = fast(x, o, d, src, so, tau=1.0, hard=True, param="softmax", mode="minimax", mean=True, kd=0.5,
                            T=1.0, div="kl")
    assert rows.shape == (0,) and gx.shape == (0, 7) and go.shape == (0, 7) and gd.shape == (0, 7, 3)


def test_bad_arguments_raise():
    x, o, d, src, so = make(2, 5, "softmax", torch.float32)
    kw = dict(tau=1.0, hard=False, param="softmax", mean=True, kd=0.5, T=1.0, div="kl")
    with pytest.raises(ValueError, match="mode must be 1"):
        OP(x, o, d, src, torch.tensor(1.0), so, False, *WEIGHTS, 0, 0, True, 0.5, 1.0, 0, True, True, True)
    with pytest.raises(ValueError, match=r"d must be a contiguous \[2, 5, 2\]"):
        fast(x, o, d, src, so, mode="minimax", **{**kw, "param": "binary_tree"})
    with pytest.raises(ValueError, match="other must be contiguous"):
        fast(x, o.t().contiguous().t(), d, src, so, mode="minimax", **kw)
    with pytest.raises(ValueError, match="source must be an int64"):
        fast(x, o, d, src.int(), so, mode="minimax", **kw)
    with pytest.raises(ValueError, match="seed_offset must be int64"):
        fast(x, o, d, src, so[:1], mode="minimax", **kw)
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        fast(x, o, d, src, so, mode="minimax", **{**kw, "T": 0.0})
    with pytest.raises(ValueError, match="kd_weight must be finite and >= 0"):
        fast(x, o, d, src, so, mode="minimax", **{**kw, "kd": -1.0})
    with pytest.raises(ValueError, match=r"no labels \(C = 0\)"):
        fast(x[:, :0], o[:, :0], d[:, :0], src, so, mode="minimax", **kw)


@settings(max_examples=6, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 12), seed=st.integers(0, 2**20), param=st.sampled_from(list(PARAMS)),
       mode=st.sampled_from(list(MODES)), hard=st.booleans(), kd=st.sampled_from([0.0, 0.9]),
       div=st.sampled_from(list(DIVS)), tau=st.floats(0.2, 5.0), T=st.floats(0.5, 4.0))
def test_hypothesis_float64(N, C, seed, param, mode, hard, kd, div, tau, T):
    check64(N, C, param=param, mode=mode, hard=hard, kd=kd, div=div, tau=tau, T=T, seed=seed)


def test_opcheck():
    x, o, d, src, so = make(3, 5, "binary_tree", torch.float32, seed=15)
    args = (x, o, d, src, torch.tensor(0.9), so, True, *WEIGHTS, 1, 2, True, 0.5, 2.0, 2, True, True, True)
    torch.library.opcheck(OP.default, args)


def test_matches_the_cpu_op():
    if DEVICE != "cpu" or not torch._C._dispatch_has_kernel_for_dispatch_key("adkernels::adv_distill_fwd", "CPU"):
        pytest.skip("needs CPU tensors and the CPU kernel of adv_distill_fwd")
    for dtype, hard, param, kd, div in [(torch.float64, False, "softmax", 0.7, "jsd"),
                                        (torch.float32, True, "binary_tree", 0.0, "kl")]:
        x, o, d, src, so = make(4, 37, param, dtype, seed=16)
        args = (hard, *WEIGHTS, PARAMS[param], 2, True, kd, 1.5, DIVS[div], True, True, True)
        tau = torch.tensor(0.6, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        got = OP(x, o, d, src, tau, so, *args)
        want = torch.ops.adkernels.adv_distill_fwd(x, o, d, src, tau, so, *args)
        tol = 1e-12 if dtype == torch.float64 else 1e-6
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=tol, rtol=tol)
