"""topk_kd_loss / fused_linear_topk_kd_loss: the reference (spec) against independent formulas,
every backend here (cpu, triton interpreter) against the reference, opcheck, compile, errors."""
from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings, strategies as st

import adkernels
from adkernels import _backend
from adkernels.reference.topk_kd import topk_kd_loss as ref_topk

from helpers import assert_close_to_gt, grads

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TAILS = ["renorm", "bucket"]
needs_cpp = pytest.mark.skipif(not adkernels._C_loaded(), reason="C++ extension not built")
HAS_TRITON = _backend.has_triton() and _backend.backend_available("triton", torch.device("cpu"))
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="Triton interpreter not available")
BACKENDS = [pytest.param("cpu", marks=needs_cpp), pytest.param("triton", marks=needs_triton)]


def make(n, v, k, dtype, *, scale=3.0, seed=0, leading=None, neg_inf=False):
    """Student logits, the top-k of a correlated teacher's log-softmax (float32), targets."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, v) if leading is None else (*leading, v)
    s = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    t = 0.5 * s + torch.randn(shape, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, v, shape[:-1], generator=g)
    if neg_inf and v > 1:
        mask = torch.rand(shape, generator=g) < 0.3
        mask.scatter_(-1, y.unsqueeze(-1), False)
        s = s.masked_fill(mask, float("-inf"))
    lt, ids = torch.log_softmax(t, -1).topk(k, dim=-1)
    lt = lt.float() if dtype != torch.float64 else lt
    return s.to(dtype).requires_grad_(), ids, lt, y


def run(backend, s, ids, lt, y, **kw):
    s = s.detach().clone().requires_grad_()
    if backend == "reference":
        loss = ref_topk(s, ids, lt, y, **kw)
    else:
        with adkernels.use_backend(backend):
            loss = adkernels.topk_kd_loss(s, ids, lt, y, **kw)
    if not loss.requires_grad:  # the reference with k = 0 and alpha = 1 never touches the logits
        return loss.detach(), torch.zeros_like(s)
    return loss.detach(), grads(loss, [s])[0]


def compare(backend, s, ids, lt, y, **kw):
    dtype = s.dtype
    lf, gf = run(backend, s, ids, lt, y, **kw)
    lr, gr = run("reference", s, ids, lt, y, **kw)
    lg, gg = run("reference", s.detach().double(), ids, lt.double(), y, **kw)
    assert lf.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert gf.dtype == dtype and gf.shape == s.shape
    assert_close_to_gt(lf, lr, lg, dtype, name=f"{backend} loss")
    assert_close_to_gt(gf, gr, gg, dtype, name=f"{backend} grad")


# ---- the reference against independent formulas ------------------------------------------------------

@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("T", [1.0, 2.5])
def test_reference_full_support_is_kd_loss(tail, T):
    """k = V: the teacher's top-k is the whole softmax, so both tails give kd_loss exactly."""
    g = torch.Generator().manual_seed(1)
    s = torch.randn(6, 13, generator=g, dtype=torch.float64)
    t = torch.randn(6, 13, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 13, (6,), generator=g)
    lt, ids = torch.log_softmax(t, -1).topk(13, -1)
    got = ref_topk(s, ids, lt, y, temperature=T, alpha=0.7, label_smoothing=0.1, tail=tail)
    want = adkernels.reference.kd_loss(s, t, y, temperature=T, alpha=0.7, label_smoothing=0.1)
    torch.testing.assert_close(got, want)


def test_reference_bucket_at_t1_is_coarsened_kl():
    """T = 1 bucket: KL between the (k + 1)-bin coarsenings of the two full distributions."""
    g = torch.Generator().manual_seed(2)
    s = torch.randn(5, 30, generator=g, dtype=torch.float64) * 2
    t = torch.randn(5, 30, generator=g, dtype=torch.float64) * 2
    pt, ps = t.softmax(-1), s.softmax(-1)
    lt, ids = pt.log().topk(6, -1)
    qs = torch.cat([pt.gather(1, ids), 1 - pt.gather(1, ids).sum(-1, keepdim=True)], -1)
    us = torch.cat([ps.gather(1, ids), 1 - ps.gather(1, ids).sum(-1, keepdim=True)], -1)
    want = (qs * (qs.log() - us.log())).sum(-1)
    got = ref_topk(s, ids, lt, tail="bucket", reduction="none")
    torch.testing.assert_close(got, want)
    # renorm: KL of the renormalized restrictions
    qr, ur = qs[:, :-1] / qs[:, :-1].sum(-1, keepdim=True), us[:, :-1] / us[:, :-1].sum(-1, keepdim=True)
    torch.testing.assert_close(ref_topk(s, ids, lt, tail="renorm", reduction="none"),
                               (qr * (qr.log() - ur.log())).sum(-1))


@pytest.mark.parametrize("tail", TAILS)
def test_reference_zero_when_student_matches(tail):
    s, ids, lt, _ = make(4, 20, 5, torch.float64)
    lt = torch.log_softmax(s.detach(), -1).gather(1, ids)
    for T in (0.5, 1.0, 3.0):
        assert ref_topk(s, ids, lt, temperature=T, tail=tail).abs().item() < 1e-12


@pytest.mark.parametrize("tail", TAILS)
def test_reference_gradcheck(tail):
    s, ids, lt, y = make(4, 11, 4, torch.float64)
    y[1] = -100
    f = lambda a: ref_topk(a, ids, lt, y, temperature=1.7, alpha=0.6, label_smoothing=0.1, tail=tail, reduction="sum")
    assert torch.autograd.gradcheck(f, (s,))


# ---- backends against the reference ----------------------------------------------------------------------

@needs_cpp
@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("T,alpha,ls", [(1.0, 1.0, 0.0), (2.0, 0.5, 0.1), (0.5, 0.0, 0.0)])
def test_cpu_gradcheck(tail, T, alpha, ls):
    _gradcheck("cpu", tail, T, alpha, ls, ("batchmean", "none"))


@needs_triton
@pytest.mark.slow
@pytest.mark.parametrize("tail", TAILS)
def test_triton_gradcheck(tail):
    # slow under the interpreter: one option set; test_triton_matches_reference covers the rest
    _gradcheck("triton", tail, 2.0, 0.5, 0.1, ("sum",))


def _gradcheck(backend, tail, T, alpha, ls, reductions):
    s, ids, lt, y = make(3, 9, 4, torch.float64)
    y[2] = -100
    for red in reductions:
        f = lambda a: adkernels.topk_kd_loss(a, ids, lt, y, temperature=T, alpha=alpha, label_smoothing=ls,
                                             tail=tail, reduction=red)
        with adkernels.use_backend(backend):
            assert torch.autograd.gradcheck(f, (s,))


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tail", TAILS)
def test_cpu_weird_shape(dtype, tail):
    s, ids, lt, y = make(41, 1271, 37, dtype)
    y[::5] = -100
    compare("cpu", s, ids, lt, y, temperature=2.0, alpha=0.5, label_smoothing=0.1, tail=tail)


@needs_cpp
@given(
    n=st.integers(0, 7), v=st.integers(1, 200), kfrac=st.floats(0.0, 1.0), dtype=st.sampled_from(DTYPES),
    T=st.floats(0.3, 8.0), alpha=st.sampled_from([0.0, 0.4, 1.0]), ls=st.sampled_from([0.0, 0.1]),
    scale=st.sampled_from([1.0, 20.0]), tail=st.sampled_from(TAILS), ignore=st.sampled_from(["none", "some", "all"]),
    reduction=st.sampled_from(["batchmean", "sum", "none"]), seed=st.integers(0, 2**16),
)
def test_cpu_matches_reference(n, v, kfrac, dtype, T, alpha, ls, scale, tail, ignore, reduction, seed):
    k = int(round(kfrac * v))
    s, ids, lt, y = make(n, v, k, dtype, scale=scale, seed=seed)
    if ignore == "some":
        y[::2] = -100
    elif ignore == "all":
        y[:] = -100
    compare("cpu", s, ids, lt, y, temperature=T, alpha=alpha, label_smoothing=ls, tail=tail, reduction=reduction)


@needs_triton
@settings(max_examples=10)
@given(
    n=st.integers(0, 4), v=st.integers(1, 70), kfrac=st.floats(0.0, 1.0),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]), T=st.floats(0.3, 8.0),
    alpha=st.sampled_from([0.0, 0.4, 1.0]), ls=st.sampled_from([0.0, 0.1]), tail=st.sampled_from(TAILS),
    seed=st.integers(0, 2**16),
)
def test_triton_matches_reference(n, v, kfrac, dtype, T, alpha, ls, tail, seed):
    k = int(round(kfrac * v))
    s, ids, lt, y = make(n, v, k, dtype, seed=seed)
    y[::3] = -100
    compare("triton", s, ids, lt, y, temperature=T, alpha=alpha, label_smoothing=ls, tail=tail)


@contextlib.contextmanager
def small_triton_blocks():
    import adkernels.triton.topk_kd as tk

    old = tk.MAX_BLOCK, tk.MAX_KBLOCK
    tk.MAX_BLOCK, tk.MAX_KBLOCK = 16, 16
    try:
        yield
    finally:
        tk.MAX_BLOCK, tk.MAX_KBLOCK = old


@needs_triton
@pytest.mark.parametrize("tail", TAILS)
def test_triton_multi_block(tail):
    s, ids, lt, y = make(3, 77, 40, torch.float32)
    with small_triton_blocks():
        compare("triton", s, ids, lt, y, temperature=1.5, alpha=0.5, label_smoothing=0.1, tail=tail)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tail", TAILS)
def test_neg_inf_and_extreme_logits(backend, tail):
    # -inf student logits outside the support and at some support columns the teacher gives 0
    s, ids, lt, y = make(6, 40, 6, torch.float32, neg_inf=True, seed=3)
    with torch.no_grad():
        s.scatter_(1, ids, torch.randn(6, 6))  # the support stays live (else KL is inf)
    lt = lt.clone()
    lt[:, -1] = float("-inf")  # zero teacher probability on one support column
    lf, gf = run(backend, s, ids, lt, y, temperature=2.0, alpha=0.5, tail=tail)
    assert torch.isfinite(lf) and torch.isfinite(gf).all()
    compare(backend, s, ids, lt, y, temperature=2.0, alpha=0.5, tail=tail)
    # +-1e4 logits: no overflow, results match the float64 reference
    s2, ids2, lt2, y2 = make(5, 30, 7, torch.float32, scale=1e4, seed=4)
    compare(backend, s2, ids2, lt2, y2, temperature=3.0, alpha=0.5, tail=tail)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bucket_student_tail_is_not_cancelled(backend):
    """Support holds all but ~1e-9 of the student's mass; the tail bin still matches float64."""
    z = torch.zeros(2, 64)
    z[:, 8:] = -25.0  # tail mass ~ 56 e^-25 / 8 ~ 1e-10 of the row
    t = torch.zeros(2, 64)
    t[:, 8:] = -5.0
    lt, ids = torch.log_softmax(t, -1).topk(8, -1)
    compare(backend, z.requires_grad_(), ids, lt, None, tail="bucket", temperature=2.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_dims_noncontiguous_and_empty(backend):
    s, ids, lt, y = make(0, 33, 4, torch.float32, leading=(3, 5))
    compare(backend, s, ids, lt, y, alpha=0.5, reduction="none")
    s0, ids0, lt0, y0 = make(0, 33, 4, torch.float32)
    loss, g = run(backend, s0, ids0, lt0, y0, alpha=0.5)
    assert loss.item() == 0.0 and g.shape == (0, 33)
    base = torch.randn(33, 24).t()[::2]  # [12, 33] non-contiguous
    assert not base.is_contiguous()
    lt1, ids1 = torch.log_softmax(torch.randn(12, 33), -1).topk(5, -1)
    ids1 = ids1.t().contiguous().t()  # non-contiguous ids and log-probs
    lt1 = lt1.t().contiguous().t()
    compare(backend, base.detach().requires_grad_(), ids1, lt1, torch.randint(0, 33, (12,)), temperature=1.5,
            alpha=0.5, tail="bucket")


@needs_cpp
def test_kernel_writes_every_output():
    s, ids, lt, y = make(7, 50, 6, torch.float32)
    y[3] = -100
    for tail in (0, 1):
        for alpha in (1.0, 0.5):
            poison = torch.full((7 * 50 * 4,), float("nan"))
            del poison
            loss, g = torch.ops.adkernels.topk_kd_fwd(s.detach(), ids, lt, y, 2.0, alpha, -100, 0.1, tail, True)
            assert torch.isfinite(loss).all() and torch.isfinite(g).all()
            assert (g[3] == 0).all() and loss[3] == 0


@needs_cpp
def test_isa_variants_agree(monkeypatch):
    s, ids, lt, y = make(9, 333, 20, torch.float32)
    base = run("cpu", s, ids, lt, y, temperature=2.0, alpha=0.5, tail="bucket")
    for isa in ("default", "avx2"):
        monkeypatch.setenv("ADKERNELS_CPU_ISA", isa)
        other = run("cpu", s, ids, lt, y, temperature=2.0, alpha=0.5, tail="bucket")
        for a, b in zip(other, base):
            torch.testing.assert_close(a, b, atol=2e-6, rtol=2e-6)


def _opcheck_args(double=False):
    s, ids, lt, y = make(5, 19, 4, torch.float64 if double else torch.float32)
    return [
        (s.detach(), ids, lt, y, 2.0, 0.5, -100, 0.1, 1, True),
        (s.detach(), ids, lt, None, 1.0, 1.0, -100, 0.0, 0, True),
        (s.detach(), ids, lt, y, 3.0, 0.2, -100, 0.0, 1, False),
    ]


@needs_cpp
def test_opcheck_cpp():
    for args in _opcheck_args() + _opcheck_args(double=True):
        torch.library.opcheck(torch.ops.adkernels.topk_kd_fwd.default, args)


@needs_triton
def test_opcheck_triton():
    import adkernels.triton.topk_kd  # noqa: F401

    for args in _opcheck_args():
        torch.library.opcheck(torch.ops.adkernels.topk_kd_fwd_triton.default, args)


@needs_cpp
@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(compiler):
    torch._dynamo.reset()
    s, ids, lt, y = make(6, 37, 5, torch.float32)
    y[0] = -100

    def f(a, i, l_, c):
        return adkernels.topk_kd_loss(a, i, l_, c, temperature=2.0, alpha=0.5, tail="bucket") * 3

    cf = torch.compile(f, backend=compiler, fullgraph=True)
    with adkernels.use_backend("cpu"):
        lc, le = cf(s, ids, lt, y), f(s, ids, lt, y)
    torch.testing.assert_close(lc, le)
    torch.testing.assert_close(grads(lc, [s], torch.ones_like(lc))[0], grads(le, [s], torch.ones_like(le))[0])


@needs_cpp
def test_retain_graph_and_module():
    s, ids, lt, y = make(4, 20, 5, torch.float32)
    loss = adkernels.topk_kd_loss(s, ids, lt, y, alpha=0.5, tail="bucket")
    (g1,) = torch.autograd.grad(loss, [s], retain_graph=True)
    (g2,) = torch.autograd.grad(loss * 3, [s])
    torch.testing.assert_close(g2, 3 * g1)
    m = adkernels.TopkKDLoss(temperature=2.0, tail="bucket")
    torch.testing.assert_close(m(s, ids, lt), adkernels.topk_kd_loss(s, ids, lt, temperature=2.0, tail="bucket"))
    assert "bucket" in repr(m)


# ---- fused linear ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=needs_cpp), "reference"])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
def test_fused_linear_matches_materialized(backend, reduction):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 9, 16, generator=g, dtype=torch.float64).requires_grad_()
    w = torch.randn(70, 16, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(70, generator=g, dtype=torch.float64).requires_grad_()
    lt, ids = torch.log_softmax(torch.randn(2, 9, 70, generator=g, dtype=torch.float64), -1).topk(6, -1)
    y = torch.randint(0, 70, (2, 9), generator=g)
    y[0, 3] = -100
    kw = dict(temperature=2.0, alpha=0.6, label_smoothing=0.1, tail="bucket", reduction=reduction)
    with adkernels.use_backend(backend):
        got = adkernels.fused_linear_topk_kd_loss(x, w, ids, lt, y, student_bias=b, chunk_size=4, **kw)
    want = ref_topk(x @ w.t() + b, ids, lt, y, **kw)
    torch.testing.assert_close(got, want)
    gw = torch.full_like(want, 1.5)
    for a, c in zip(torch.autograd.grad(got, [x, w, b], gw), torch.autograd.grad(want, [x, w, b], gw)):
        torch.testing.assert_close(a, c)


# ---- bad input -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=0.0), "temperature"), (dict(temperature=-1.0), "temperature"),
    (dict(alpha=1.5), "alpha"), (dict(tail="rest"), "tail"), (dict(reduction="avg"), "reduction"),
    (dict(label_smoothing=2.0), "label_smoothing"),
])
def test_bad_options(kwargs, match):
    s, ids, lt, y = make(3, 10, 4, torch.float32)
    with pytest.raises(ValueError, match=match):
        adkernels.topk_kd_loss(s, ids, lt, y, **kwargs)


def test_bad_tensors():
    s, ids, lt, y = make(3, 10, 4, torch.float32)
    bad = ids.clone()
    bad[1, 2] = 10
    with pytest.raises(ValueError, match=r"teacher_topk_ids\[1, 2\] = 10 is out of range"):
        adkernels.topk_kd_loss(s, bad, lt)
    bad[1, 2] = -1
    with pytest.raises(ValueError, match="out of range"):
        adkernels.topk_kd_loss(s, bad, lt)
    dup = ids.clone()
    dup[2, 1] = dup[2, 0]
    with pytest.raises(ValueError, match="repeated id in row 2"):
        adkernels.topk_kd_loss(s, dup, lt)
    lt11, ids11 = torch.randn(3, 11).topk(11, -1)
    with pytest.raises(ValueError, match="exceed the vocabulary"):
        adkernels.topk_kd_loss(s, ids11, lt11)
    with pytest.raises(ValueError, match="teacher_topk_logprobs must have"):
        adkernels.topk_kd_loss(s, ids, lt[:, :3])
    with pytest.raises(ValueError, match="leading shape"):
        adkernels.topk_kd_loss(s, ids[:2], lt[:2])
    with pytest.raises(TypeError, match="integer"):
        adkernels.topk_kd_loss(s, ids.float(), lt)
    with pytest.raises(ValueError, match="detach"):
        adkernels.topk_kd_loss(s, ids, lt.clone().requires_grad_())
    with pytest.raises(ValueError, match="needs target"):
        adkernels.topk_kd_loss(s, ids, lt, alpha=0.5)
    yb = y.clone()
    yb[0] = 10
    with pytest.raises(ValueError, match=r"target\[0\] = 10"):
        adkernels.topk_kd_loss(s, ids, lt, yb, alpha=0.5)
    with pytest.raises(ValueError, match="student_weight"):
        adkernels.fused_linear_topk_kd_loss(torch.randn(3, 4), torch.randn(10, 5), ids, lt)
    with pytest.raises(TypeError, match="unexpected options"):
        adkernels.fused_linear_topk_kd_loss(torch.randn(3, 4), torch.randn(10, 4), ids, lt, divergence="jsd")


@needs_cpp
def test_cpp_kernel_checks_ids():
    s, ids, lt, _ = make(2, 10, 3, torch.float32)
    bad = ids.clone()
    bad[0, 0] = 99
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.adkernels.topk_kd_fwd(s.detach(), bad, lt, None, 1.0, 1.0, -100, 0.0, 0, True)
