"""kd_loss: reference gradcheck, CPU kernel vs reference (hypothesis), opcheck, compile, errors."""
from __future__ import annotations


import pytest
import torch
from hypothesis import given, strategies as st

import adkernels
from adkernels.reference import kd_loss as ref_kd_loss

from helpers import assert_close_to_gt, grads

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DIVS = ["kl", "reverse_kl", "jsd"]
needs_cpp = pytest.mark.skipif(not adkernels._C_loaded(), reason="C++ extension not built")


def make(n, v, dtype, scale=3.0, seed=0, teacher_grad=False, leading=None):
    g = torch.Generator().manual_seed(seed)
    shape = (n, v) if leading is None else (*leading, v)
    s = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_()
    t = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_(teacher_grad)
    y = torch.randint(0, v, shape[:-1], generator=g)
    return s, t, y


def run(backend, s, t, y, **kw):
    with adkernels.use_backend(backend):
        loss = adkernels.kd_loss(s, t, y, **kw)
    inputs = [s] + ([t] if t.requires_grad else [])
    return loss, grads(loss, inputs)


def compare(s, t, y, backend="cpu", **kw):
    """backend vs reference (same dtype), both judged against float64 ground truth."""
    dtype = s.dtype
    loss_f, g_f = run(backend, s, t, y, **kw)
    loss_r, g_r = run("reference", s, t, y, **kw)
    s64 = s.detach().double().requires_grad_()
    t64 = t.detach().double().requires_grad_(t.requires_grad)
    loss_g, g_g = run("reference", s64, t64, y, **kw)
    assert loss_f.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close_to_gt(loss_f.detach(), loss_r.detach(), loss_g.detach(), dtype, name="loss")
    for name, a, b, c in zip(("d student", "d teacher"), g_f, g_r, g_g):
        assert a.dtype == dtype
        assert_close_to_gt(a, b, c, dtype, name=name)


# ---- reference: the spec -----------------------------------------------------------------------

@pytest.mark.parametrize("div", DIVS)
@pytest.mark.parametrize("alpha,ls", [(1.0, 0.0), (0.5, 0.1), (0.0, 0.2)])
def test_reference_gradcheck(div, alpha, ls):
    s, t, y = make(5, 7, torch.float64, teacher_grad=True)
    y[1] = -100
    f = lambda a, b: ref_kd_loss(a, b, y, temperature=1.7, alpha=alpha, divergence=div, beta=0.3,
                                 label_smoothing=ls, reduction="sum")
    assert torch.autograd.gradcheck(f, (s, t))


def test_reference_matches_torch_hinton():
    s, t, y = make(6, 11, torch.float64)
    T = 3.0
    expect = torch.nn.functional.kl_div(
        torch.log_softmax(s / T, -1), torch.log_softmax(t / T, -1), reduction="batchmean", log_target=True
    ) * T * T * 0.7 + 0.3 * torch.nn.functional.cross_entropy(s, y, label_smoothing=0.05)
    got = ref_kd_loss(s, t, y, temperature=T, alpha=0.7, label_smoothing=0.05)
    torch.testing.assert_close(got, expect)


def test_reference_jsd_limits():
    # JSD of identical distributions is 0; KL of identical is 0.
    s, _, _ = make(4, 9, torch.float64)
    for div in DIVS:
        assert ref_kd_loss(s, s.detach(), divergence=div).abs().item() < 1e-12


# ---- CPU kernel ----------------------------------------------------------------------------------

@needs_cpp
@pytest.mark.parametrize("div", DIVS)
@pytest.mark.parametrize("alpha,ls,T", [(1.0, 0.0, 1.0), (0.5, 0.1, 2.0), (0.0, 0.0, 4.0), (0.3, 0.0, 1.0)])
def test_cpu_gradcheck(div, alpha, ls, T):
    s, t, y = make(4, 9, torch.float64, teacher_grad=True)
    y[2] = -100
    for red in ("batchmean", "none"):
        f = lambda a, b: adkernels.kd_loss(a, b, y, temperature=T, alpha=alpha, divergence=div,
                                           label_smoothing=ls, reduction=red)
        with adkernels.use_backend("cpu"):
            assert torch.autograd.gradcheck(f, (s, t))


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("div", DIVS)
@pytest.mark.parametrize("teacher_grad", [False, True])
def test_cpu_weird_shape(dtype, div, teacher_grad):
    s, t, y = make(41, 1271, dtype, teacher_grad=teacher_grad)
    y[::5] = -100
    compare(s, t, y, temperature=2.0, alpha=0.5, divergence=div, label_smoothing=0.1)


@needs_cpp
@given(
    n=st.integers(0, 9),
    v=st.integers(1, 300),
    dtype=st.sampled_from(DTYPES),
    div=st.sampled_from(DIVS),
    T=st.floats(0.5, 20.0),
    alpha=st.sampled_from([0.0, 0.25, 1.0]),
    ls=st.sampled_from([0.0, 0.1]),
    beta=st.floats(0.05, 0.95),
    scale=st.sampled_from([1.0, 30.0, 1e4]),
    ignore=st.sampled_from(["none", "some", "all"]),
    teacher_grad=st.booleans(),
    reduction=st.sampled_from(["batchmean", "mean", "sum", "none"]),
    seed=st.integers(0, 2**16),
)
def test_cpu_matches_reference(n, v, dtype, div, T, alpha, ls, beta, scale, ignore, teacher_grad, reduction, seed):
    if dtype == torch.float16:
        scale = min(scale, 3e3)  # beyond fp16 range after conversion
    s, t, y = make(n, v, dtype, scale=scale, seed=seed, teacher_grad=teacher_grad)
    if ignore == "some":
        y[::2] = -100
    elif ignore == "all":
        y[:] = -100
    compare(s, t, y, temperature=T, alpha=alpha, divergence=div, beta=beta, label_smoothing=ls, reduction=reduction)


@needs_cpp
@given(v=st.integers(2, 200), div=st.sampled_from(DIVS), dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       seed=st.integers(0, 1000))
def test_cpu_neg_inf_masks(v, div, dtype, seed):
    """-inf entries at the same positions in both logits (masked vocabulary) contribute 0."""
    s, t, y = make(6, v, dtype, seed=seed, teacher_grad=True)
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(6, v, generator=g) < 0.3
    mask[:, 0] = False  # at least one finite entry per row
    y = torch.where(mask.gather(1, y[:, None])[:, 0], torch.zeros_like(y), y)
    with torch.no_grad():
        s.masked_fill_(mask, float("-inf"))
        t.masked_fill_(mask, float("-inf"))
    loss, g_f = run("cpu", s, t, y, temperature=2.0, alpha=0.6, divergence=div)
    assert torch.isfinite(loss).all() and all(torch.isfinite(x).all() for x in g_f)
    compare(s, t, y, temperature=2.0, alpha=0.6, divergence=div)


@needs_cpp
def test_cpu_leading_dims_and_strides():
    s, t, y = make(0, 33, torch.float32, leading=(3, 5), teacher_grad=True)
    compare(s, t, y, temperature=2.0, alpha=0.5, reduction="none")
    # non-contiguous: a transposed view and a strided slice
    sv = torch.randn(33, 24).t()[::2].detach().requires_grad_()  # [12, 33], transposed
    tv = torch.randn(24, 66)[:12, ::2].detach()  # [12, 33], strided columns
    assert sv.shape == tv.shape and not sv.is_contiguous() and not tv.is_contiguous()
    yv = torch.randint(0, 33, (12,))
    compare(sv, tv, yv, temperature=1.5, alpha=0.5)


@needs_cpp
@pytest.mark.parametrize("isa", ["default", "avx2", "avx512"])
def test_cpu_isa_variants_agree(isa, monkeypatch):
    s, t, y = make(17, 333, torch.float32, teacher_grad=True)
    base, gb = run("cpu", s, t, y, temperature=2.0, alpha=0.5, divergence="jsd", label_smoothing=0.1)
    monkeypatch.setenv("ADKERNELS_CPU_ISA", isa)
    assert torch.ops.adkernels.cpu_isa() in {"default": {"DEFAULT"}, "avx2": {"DEFAULT", "AVX2"},
                                             "avx512": {"DEFAULT", "AVX2", "AVX512"}}[isa]
    other, go = run("cpu", s, t, y, temperature=2.0, alpha=0.5, divergence="jsd", label_smoothing=0.1)
    torch.testing.assert_close(other, base, atol=2e-6, rtol=2e-6)
    for a, b in zip(go, gb):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=2e-6)


@needs_cpp
def test_empty_and_all_ignored_give_zero():
    for n in (0, 3):
        s, t, y = make(n, 8, torch.float32)
        y[:] = -100
        loss, (gs,) = run("cpu", s, t, y, alpha=0.5)
        assert loss.item() == 0.0 and not torch.isnan(loss)
        assert gs.shape == s.shape and (gs == 0).all()


@needs_cpp
def test_kernel_writes_every_output():
    """Poisoned heap: outputs the kernel forgot to write would show up as NaN."""
    s, t, y = make(7, 50, torch.float32, teacher_grad=True)
    y[3] = -100
    for _ in range(3):
        poison = torch.full((7 * 50 * 4,), float("nan"))
        del poison
        loss, gs, gt = torch.ops.adkernels.kd_fwd(s.detach(), t.detach(), y, 2.0, 0.5, 2, 0.5, -100, 0.1, True, True)
        assert torch.isfinite(loss).all() and torch.isfinite(gs).all() and torch.isfinite(gt).all()
        assert (gs[3] == 0).all() and (gt[3] == 0).all() and loss[3] == 0


@needs_cpp
def test_opcheck():
    s, t, y = make(5, 19, torch.float32)
    for args in [
        (s.detach(), t.detach(), y, 2.0, 0.5, 0, 0.5, -100, 0.1, True, True),
        (s.detach(), t.detach(), None, 1.0, 1.0, 2, 0.3, -100, 0.0, True, False),
        (s.detach().double(), t.detach().double(), y, 3.0, 0.2, 1, 0.5, -100, 0.0, False, True),
    ]:
        torch.library.opcheck(torch.ops.adkernels.kd_fwd.default, args)


@needs_cpp
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    s, t, y = make(6, 37, torch.float32, teacher_grad=True)
    y[0] = -100

    def f(a, b, c):
        return adkernels.kd_loss(a, b, c, temperature=2.0, alpha=0.5, divergence="jsd") * 3

    cf = torch.compile(f, backend=backend, fullgraph=True)
    with adkernels.use_backend("cpu"):
        lc = cf(s, t, y)
        le = f(s, t, y)
    torch.testing.assert_close(lc, le)
    gc = grads(lc, [s, t], weight=torch.ones_like(lc))
    ge = grads(le, [s, t], weight=torch.ones_like(le))
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b)


def test_kdloss_module():
    s, t, y = make(4, 10, torch.float32)
    m = adkernels.KDLoss(temperature=2.0, alpha=0.5)
    torch.testing.assert_close(m(s, t, y), adkernels.kd_loss(s, t, y, temperature=2.0, alpha=0.5))
    assert "temperature=2.0" in repr(m)


# ---- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(alpha=1.5), ValueError, "alpha"),
        (dict(beta=1.0, divergence="jsd"), ValueError, "beta"),
        (dict(divergence="l2"), ValueError, "divergence"),
        (dict(label_smoothing=-0.1), ValueError, "label_smoothing"),
        (dict(reduction="avg"), ValueError, "reduction"),
    ],
)
def test_bad_options(kwargs, exc, match):
    s, t, y = make(3, 5, torch.float32)
    with pytest.raises(exc, match=match):
        adkernels.kd_loss(s, t, y, **kwargs)


def test_bad_tensors():
    s, t, y = make(3, 5, torch.float32)
    with pytest.raises(ValueError, match="same shape"):
        adkernels.kd_loss(s, torch.randn(3, 6), y)
    with pytest.raises(TypeError, match="dtype|float64|bfloat16"):
        adkernels.kd_loss(s, t.double(), y)
    with pytest.raises(TypeError, match="student_logits"):
        adkernels.kd_loss(torch.ones(3, 5, dtype=torch.long), t, y)
    with pytest.raises(ValueError, match="needs target"):
        adkernels.kd_loss(s, t, None, alpha=0.5)
    with pytest.raises(ValueError, match="leading shape"):
        adkernels.kd_loss(s, t, y[:2])
    with pytest.raises(TypeError, match="integer"):
        adkernels.kd_loss(s, t, y.float())
    bad = y.clone()
    bad[1] = 5
    for backend in ("cpu", "reference"):
        with adkernels.use_backend(backend), pytest.raises(ValueError, match=r"target\[1\] = 5"):
            adkernels.kd_loss(s, t, bad)
    with pytest.raises(ValueError, match="backend"):
        adkernels.use_backend("gpu").__enter__()


def test_backend_fallback_warns_once():
    s, t, _ = make(2, 5, torch.float32)
    if torch.cuda.is_available():
        pytest.skip("cuda backend exists here")
    with adkernels.use_backend("cuda"), pytest.warns(UserWarning, match="not available"):
        a = adkernels.kd_loss(s, t)
    torch.testing.assert_close(a, ref_kd_loss(s, t))


@needs_cpp
def test_jsd_denormal_probabilities_stay_finite():
    """p_t denormal and p_s = 0: beta p_t underflows, log M would be -inf; the term is dropped."""
    s = torch.tensor([[0.0, -200.0]])
    t = torch.tensor([[0.0, -103.5]])
    for beta in (0.1, 0.5):
        loss, gs, gt = torch.ops.adkernels.kd_fwd(s, t, None, 1.0, 1.0, 2, beta, -100, 0.0, True, True)
        for x in (loss, gs, gt):
            torch.testing.assert_close(x, torch.zeros_like(x), atol=1e-6, rtol=0)


@needs_cpp
@pytest.mark.parametrize("reduction", ["batchmean", "none"])
def test_retain_graph_backward_twice(reduction):
    """The saved gradient is scaled in place only when the graph is freed afterwards."""
    s, t, y = make(4, 9, torch.float32, teacher_grad=True)
    loss = adkernels.kd_loss(s, t, y, alpha=0.5, reduction=reduction).sum()
    g1 = torch.autograd.grad(loss, [s, t], retain_graph=True)
    g2 = torch.autograd.grad(loss * 3, [s, t], retain_graph=True)
    g3 = torch.autograd.grad(loss, [s, t])
    for a, b, c in zip(g1, g2, g3):
        torch.testing.assert_close(b, 3 * a)
        torch.testing.assert_close(c, a)
