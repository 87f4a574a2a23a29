"""fused_linear_kd_loss against kd_loss on materialized logits."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

import adkernels
from adkernels.ops.fused_linear_kd import default_chunk_size
from adkernels.reference import kd_loss as ref_kd_loss

from helpers import TOL

needs_cpp = pytest.mark.skipif(not adkernels._C_loaded(), reason="C++ extension not built")


def setup_case(n, hs, ht, v, dtype, bias, seed=0, teacher_grad=False, leading=None):
    g = torch.Generator().manual_seed(seed)
    lead = (n,) if leading is None else leading
    r = lambda *shape: (torch.randn(*shape, generator=g, dtype=torch.float64) / shape[-1] ** 0.25).to(dtype)
    xs, ws = r(*lead, hs).requires_grad_(), r(v, hs).requires_grad_()
    xt, wt = r(*lead, ht).requires_grad_(teacher_grad), r(v, ht).requires_grad_(teacher_grad)
    bs = r(v).requires_grad_() if bias else None
    bt = r(v).requires_grad_(teacher_grad) if bias else None
    y = torch.randint(0, v, lead, generator=g)
    return xs, ws, bs, xt, wt, bt, y


@needs_cpp
@given(
    n=st.integers(0, 20),
    v=st.integers(1, 90),
    bias=st.booleans(),
    teacher_grad=st.booleans(),
    chunk=st.sampled_from([None, 1, 3, 64]),
    reduction=st.sampled_from(["batchmean", "sum", "none"]),
    div=st.sampled_from(["kl", "reverse_kl", "jsd"]),
    dtype=st.sampled_from([torch.float64, torch.float32]),
    seed=st.integers(0, 1000),
)
def test_matches_materialized(n, v, bias, teacher_grad, chunk, reduction, div, dtype, seed):
    xs, ws, bs, xt, wt, bt, y = setup_case(n, 8, 12, v, dtype, bias, seed, teacher_grad)
    y[::3] = -100
    kw = dict(temperature=2.0, alpha=0.5, divergence=div, label_smoothing=0.1, reduction=reduction)
    inputs = [t for t in (xs, ws, bs, xt, wt, bt) if t is not None and t.requires_grad]
    fused = adkernels.fused_linear_kd_loss(xs, ws, xt, wt, y, student_bias=bs, teacher_bias=bt, chunk_size=chunk, **kw)
    ref = ref_kd_loss(F.linear(xs, ws, bs), F.linear(xt, wt, bt), y, **kw)
    w = torch.rand_like(ref) + 0.5  # grad_output != 1 (per row for "none")
    gf = torch.autograd.grad((fused * w).sum(), inputs, allow_unused=True, materialize_grads=True)
    gr = torch.autograd.grad((ref * w).sum(), inputs, allow_unused=True, materialize_grads=True)
    atol, rtol = TOL[dtype]
    atol, rtol = atol * 10, rtol * 10
    torch.testing.assert_close(fused, ref, atol=atol, rtol=rtol)
    for a, b in zip(gf, gr):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


@needs_cpp
def test_bf16_and_leading_dims():
    xs, ws, bs, xt, wt, bt, y = setup_case(0, 16, 16, 300, torch.bfloat16, True, leading=(2, 7))
    loss = adkernels.fused_linear_kd_loss(xs, ws, xt, wt, y, student_bias=bs, teacher_bias=bt, temperature=2.0,
                                          alpha=0.5, reduction="none")
    assert loss.shape == (2, 7) and loss.dtype == torch.float32
    loss.sum().backward()
    assert ws.grad.dtype == torch.bfloat16 and xs.grad.shape == xs.shape
    ref = ref_kd_loss(F.linear(xs.float(), ws.float(), bs.float()), F.linear(xt.float(), wt.float(), bt.float()), y,
                      temperature=2.0, alpha=0.5, reduction="none")
    torch.testing.assert_close(loss, ref, atol=0.05, rtol=0.05)


def test_chunk_rule():
    assert default_chunk_size(4096, 128256, 1024) == 261  # floor: 32M logits per chunk
    assert default_chunk_size(10, 50, 100) == 10
    assert default_chunk_size(0, 10, 10) == 1
    assert default_chunk_size(100000, 32000, 4096) == 16384  # ~N x H logits per chunk
    assert default_chunk_size(100000, 128256, 512) == 512


@needs_cpp
def test_frozen_teacher_costs_no_teacher_grads():
    xs, ws, bs, xt, wt, bt, y = setup_case(6, 8, 8, 30, torch.float32, False)
    loss = adkernels.fused_linear_kd_loss(xs, ws, xt, wt, temperature=2.0)
    loss.backward()
    assert xt.grad is None and wt.grad is None and xs.grad is not None


def test_bad_input():
    xs, ws, bs, xt, wt, bt, y = setup_case(4, 8, 12, 30, torch.float32, False)
    with pytest.raises(ValueError, match="share the vocabulary"):
        adkernels.fused_linear_kd_loss(xs, ws, xt, wt[:20])
    with pytest.raises(ValueError, match="teacher_input"):
        adkernels.fused_linear_kd_loss(xs, ws, xt[:, :5], wt)
    with pytest.raises(ValueError, match="chunk_size"):
        adkernels.fused_linear_kd_loss(xs, ws, xt, wt, chunk_size=0)
    with pytest.raises(ValueError, match="student_bias"):
        adkernels.fused_linear_kd_loss(xs, ws, xt, wt, student_bias=torch.zeros(3))
    with pytest.raises(TypeError, match="teacher_weight"):
        adkernels.fused_linear_kd_loss(xs, ws, xt, wt.double())
    with pytest.raises(ValueError, match="temperature"):
        adkernels.fused_linear_kd_loss(xs, ws, xt, wt, temperature=-1)


def test_module_form():
    xs, ws, bs, xt, wt, bt, y = setup_case(4, 8, 12, 30, torch.float32, False)
    m = adkernels.FusedLinearKDLoss(temperature=2.0, alpha=0.5)
    torch.testing.assert_close(m(xs, ws, xt, wt, y),
                               adkernels.fused_linear_kd_loss(xs, ws, xt, wt, y, temperature=2.0, alpha=0.5))


@needs_cpp
def test_retain_graph_backward_twice():
    xs, ws, bs, xt, wt, bt, y = setup_case(6, 8, 8, 30, torch.float32, True, teacher_grad=True)
    loss = adkernels.fused_linear_kd_loss(xs, ws, xt, wt, y, student_bias=bs, teacher_bias=bt, alpha=0.5)
    inputs = [xs, ws, bs, xt, wt, bt]
    g1 = torch.autograd.grad(loss, inputs, retain_graph=True)
    g2 = torch.autograd.grad(loss * 2, inputs, retain_graph=True)
    g3 = torch.autograd.grad(loss, inputs)
    for a, b, c in zip(g1, g2, g3):
        torch.testing.assert_close(b, 2 * a)
        torch.testing.assert_close(c, a)
