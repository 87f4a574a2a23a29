"""Adversarial losses: hand-derived values, Lemma 4.3, reference gradcheck, CPU kernel vs reference
(hypothesis), opcheck, torch.compile, bad input. Triton: tests/test_adversarial_triton.py."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, strategies as st

import adkernels
from adkernels import REAL, STUDENT, TEACHER

from helpers import assert_close_to_gt, grads

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
PARAMS = {"softmax": 3, "binary_tree": 2}
needs_cpp = pytest.mark.skipif(not adkernels._C_loaded(), reason="C++ extension not built")
BACKENDS = ["reference"] + (["cpu"] if adkernels._C_loaded() else [])


def source_loss(backend, which, z, src, **kw):
    fn = adkernels.discriminator_loss if which == "disc" else adkernels.generator_loss
    with adkernels.use_backend(backend):
        return fn(z, src, **kw)


def make(n, k, dtype, *, scale=3.0, seed=0, generator=False):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, k, generator=g, dtype=torch.float64) * scale).to(dtype)
    src = torch.randint(1 if generator else 0, 3, (n,), generator=g)
    return z, src


def compare_source(backend, which, z, src, *, weight=None, **kw):
    """backend vs the reference in z's dtype, both judged against float64."""
    dtype = z.dtype
    outs = []
    for b, x in ((backend, z), ("reference", z), ("reference", z.double())):
        x = x.detach().clone().requires_grad_()
        loss = source_loss(b, which, x, src, **kw)
        w = None if weight is None else weight.to(loss.dtype)
        outs.append((loss.detach(), grads(loss, [x], w)[0]))
    (lf, gf), (lr, gr), (lg, gg) = outs
    assert lf.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert gf.dtype == dtype and gf.shape == z.shape
    assert_close_to_gt(lf, lr, lg, dtype, name=f"{backend} loss")
    assert_close_to_gt(gf, gr, gg, dtype, name=f"{backend} grad")
    return lf, gf


# ---- hand-derived values --------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_values_softmax(backend):
    z = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)  # D_i = 1/3 everywhere
    src = torch.tensor([REAL, STUDENT, TEACHER])
    loss = source_loss(backend, "disc", z, src, weights=(2.0, 1.0, 0.5))
    assert loss.item() == pytest.approx(3.5 * math.log(3))
    loss.backward()
    # d(-w log p_src)/dz = w (p - onehot)
    want = torch.tensor([[2 * (1 / 3 - 1), 2 / 3, 2 / 3], [1 / 3, 1 / 3 - 1, 1 / 3], [1 / 6, 1 / 6, 0.5 * (1 / 3 - 1)]],
                        dtype=torch.float64)
    torch.testing.assert_close(z.grad, want)
    # generator rows: minimax +log(1/3); nonsat -log(1 - 1/3) = log 1.5, per-source means
    gsrc = torch.tensor([STUDENT, STUDENT, TEACHER])
    mm = source_loss(backend, "gen", z, gsrc, mode="minimax", weights=(9.0, 1.0, 2.0))
    assert mm.item() == pytest.approx(3 * math.log(1 / 3))
    ns = source_loss(backend, "gen", z, gsrc, mode="nonsat", weights=(9.0, 1.0, 2.0), reduction="sum")
    assert ns.item() == pytest.approx(4 * math.log(1.5))


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_values_binary_tree(backend):
    # a = log 3: s(a) = 3/4, s(-a) = 1/4; b = 0: s(b) = 1/2
    z = torch.tensor([[math.log(3), 0.0]] * 3, dtype=torch.float64, requires_grad=True)
    src = torch.tensor([REAL, STUDENT, TEACHER])
    rows = source_loss(backend, "disc", z, src, parameterization="binary_tree", reduction="none")
    torch.testing.assert_close(rows, -torch.tensor([math.log(0.75), math.log(0.125), math.log(0.125)],
                                                   dtype=torch.float64))
    rows.sum().backward()
    # -log s(a): -(1 - s(a)) = -1/4 ; -log s(-a) - log s(+-b): (s(a), -+(1 - s(+-b)))
    want = torch.tensor([[-0.25, 0.0], [0.75, -0.5], [0.75, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(z.grad, want)
    gsrc = torch.tensor([STUDENT, TEACHER, TEACHER])
    ns = source_loss(backend, "gen", z.detach(), gsrc, mode="nonsat", parameterization="binary_tree",
                     reduction="none")
    torch.testing.assert_close(ns, -torch.log1p(-torch.full((3,), 0.125, dtype=torch.float64)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_source_means_and_absent_sources(backend):
    z, _ = make(5, 3, torch.float64, seed=1)
    logp = torch.log_softmax(z, -1)
    src = torch.tensor([REAL, REAL, REAL, TEACHER, TEACHER])  # no STUDENT rows
    got = source_loss(backend, "disc", z, src, weights=(1.0, 5.0, 0.5))
    want = -(logp[:3, 0].mean() + 0.5 * logp[3:, 2].mean())
    torch.testing.assert_close(got, want)
    for n in (0,):
        e, es = make(n, 3, torch.float64)
        e.requires_grad_()
        loss = source_loss(backend, "disc", e, es)
        assert loss.item() == 0.0 and not torch.isnan(loss)
        loss.backward()
        assert e.grad.shape == (0, 3)
    only_real = torch.zeros(5, dtype=torch.long)
    assert torch.isfinite(source_loss(backend, "disc", z, only_real))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("param", list(PARAMS))
def test_lemma_4_3_optimal_discriminator(backend, param):
    """With D_i(y) = lambda_i p_i(y) / sum_j lambda_j p_j(y) (Lemma 4.3) the loss on a batch whose
    per-source label frequencies are p_i equals the closed form -sum_i lambda_i sum_y p_i(y) log D_i(y),
    and D is a stationary point: the gradient w.r.t. the per-label logits vanishes."""
    lam = torch.tensor([1.0, 0.6, 0.3], dtype=torch.float64)
    counts = torch.tensor([[3, 1, 4, 2], [1, 5, 2, 2], [2, 2, 1, 5]])  # counts[i, y]
    p = counts.double() / counts.sum(1, keepdim=True)
    D = lam[:, None] * p / (lam[:, None] * p).sum(0, keepdim=True)  # [3, Y]
    closed = -(lam[:, None] * p * D.log()).sum()
    if param == "softmax":
        logits_y = D.log().t().clone()  # [Y, 3]: softmax recovers D
    else:
        # D_r = s(a), D_s / D_t = s(b) / s(-b)
        a = torch.log(D[0] / (1 - D[0]))
        b = torch.log(D[1] / D[2])
        logits_y = torch.stack([a, b], -1)
    logits_y.requires_grad_()
    src = torch.cat([torch.full((int(counts[i].sum()),), i) for i in range(3)])
    label = torch.cat([torch.repeat_interleave(torch.arange(4), counts[i]) for i in range(3)])
    loss = source_loss(backend, "disc", logits_y[label], src, weights=tuple(lam.tolist()), parameterization=param)
    torch.testing.assert_close(loss, closed)
    (g,) = torch.autograd.grad(loss, logits_y)
    torch.testing.assert_close(g, torch.zeros_like(g), atol=1e-12, rtol=0)
    # any other discriminator does worse (D is the optimum)
    other = source_loss(backend, "disc", (logits_y + 0.1 * torch.randn_like(logits_y))[label], src,
                        weights=tuple(lam.tolist()), parameterization=param)
    assert other.item() > loss.item()


# ---- reference and CPU kernel against it -----------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("param", list(PARAMS))
@pytest.mark.parametrize("which", ["disc", "minimax", "nonsat"])
def test_gradcheck_float64(backend, param, which):
    z, src = make(7, PARAMS[param], torch.float64, generator=which != "disc")
    z.requires_grad_()
    kw = dict(weights=(0.7, 1.3, 0.4), parameterization=param)
    if which != "disc":
        kw["mode"] = which
    for red in ("mean", "none"):
        f = lambda x: source_loss(backend, "disc" if which == "disc" else "gen", x, src, reduction=red, **kw)
        assert torch.autograd.gradcheck(f, (z,))


@needs_cpp
@given(
    n=st.integers(0, 300),
    param=st.sampled_from(list(PARAMS)),
    which=st.sampled_from(["disc", "minimax", "nonsat"]),
    dtype=st.sampled_from(DTYPES),
    scale=st.sampled_from([1.0, 30.0, 1e4]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    weights=st.sampled_from([(1.0, 1.0, 1.0), (0.0, 2.0, 0.5), (1.5, 0.0, 0.0)]),
    seed=st.integers(0, 2 ** 16),
)
def test_cpu_matches_reference(n, param, which, dtype, scale, reduction, weights, seed):
    if dtype == torch.float16:
        scale = min(scale, 3e3)
    z, src = make(n, PARAMS[param], dtype, scale=scale, seed=seed, generator=which != "disc")
    kw = dict(weights=weights, parameterization=param, reduction=reduction)
    if which != "disc":
        kw["mode"] = which
    w = torch.rand(n, generator=torch.Generator().manual_seed(seed)) + 0.5 if reduction == "none" else None
    lf, gf = compare_source("cpu", "disc" if which == "disc" else "gen", z, src, weight=w, **kw)
    assert torch.isfinite(lf).all() and torch.isfinite(gf).all()


@needs_cpp
def test_cpu_leading_dims_non_contiguous_and_extremes():
    z = torch.randn(3, 4, 3)
    src = torch.randint(0, 3, (3, 4))
    lf, gf = compare_source("cpu", "disc", z, src, reduction="none", weight=torch.rand(3, 4) + 0.5)
    assert lf.shape == (3, 4)
    zt = torch.randn(3, 40).t()[::2]  # [20, 3], transposed and strided
    assert not zt.is_contiguous()
    compare_source("cpu", "gen", zt, torch.randint(1, 3, (20,)), mode="nonsat")
    big = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [0.0, 0.0, -1e4]])
    for which, s in (("disc", torch.tensor([1, 0, 2])), ("gen", torch.tensor([1, 2, 2]))):
        for mode in ("minimax", "nonsat"):
            lf, gf = compare_source("cpu", which, big, s, reduction="none", **({"mode": mode} if which == "gen" else {}))
            assert torch.isfinite(lf).all() and torch.isfinite(gf).all()


@needs_cpp
@pytest.mark.parametrize("isa", ["default", "avx2", "avx512"])
def test_cpu_isa_variants_agree(isa, monkeypatch):
    z, src = make(1000, 3, torch.float32, seed=3)
    r, f = torch.randn(5000), torch.randn(5003)
    base = torch.ops.adkernels.adv_source_fwd(z, src, 1.0, 0.5, 2.0, 0, 0, True, True)
    bb = torch.ops.adkernels.adv_binary_fwd(r, f, 0, 0, 0.9, 0.1, 0.2, False, True, True)
    monkeypatch.setenv("ADKERNELS_CPU_ISA", isa)
    other = torch.ops.adkernels.adv_source_fwd(z, src, 1.0, 0.5, 2.0, 0, 0, True, True)
    ob = torch.ops.adkernels.adv_binary_fwd(r, f, 0, 0, 0.9, 0.1, 0.2, False, True, True)
    for a, b in zip(base + bb, other + ob):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=2e-6)


@needs_cpp
def test_kernels_write_every_output():
    """Poisoned heap: an output the kernel forgot to write would show up as NaN."""
    z, src = make(517, 2, torch.float32, seed=4)
    for _ in range(3):
        poison = torch.full((517 * 8,), float("nan"))
        del poison
        rows, g = torch.ops.adkernels.adv_source_fwd(z, src, 1.0, 1.0, 1.0, 1, 0, True, True)
        assert torch.isfinite(rows).all() and torch.isfinite(g).all()
        poison = torch.full((3 * 9000,), float("nan"))
        del poison
        out, gr, gf = torch.ops.adkernels.adv_binary_fwd(torch.randn(9000), torch.randn(9000), 4, 0, 1.0, 1.0, 1.0,
                                                         True, True, True)
        assert torch.isfinite(out).all() and torch.isfinite(gr).all() and torch.isfinite(gf).all()


@needs_cpp
def test_opcheck():
    z, src = make(37, 3, torch.float32)
    zb, gsrc = make(37, 2, torch.float64, generator=True)
    for args in [
        (z, src, 1.0, 0.5, 2.0, 0, 0, True, True),
        (z, src, 1.0, 1.0, 1.0, 0, 0, False, False),
        (zb, gsrc, 0.0, 1.0, 2.0, 1, 2, True, True),
        (z.bfloat16(), gsrc, 0.0, 1.0, 2.0, 0, 1, False, True),
    ]:
        torch.library.opcheck(torch.ops.adkernels.adv_source_fwd.default, args)
    r, f = torch.randn(50), torch.randn(60)
    for args in [
        (r, f, 0, 0, 0.9, 0.02, 1 / 60, False, True, True),
        (None, f, 0, 2, 1.0, 1.0, 1.0, True, False, True),
        (f, f.clone(), 4, 1, 1.0, 1.0, 1.0, True, True, True),
        (r.double(), f.double(), 1, 0, 1.0, 1.0, 1.0, False, True, False),
    ]:
        torch.library.opcheck(torch.ops.adkernels.adv_binary_fwd.default, args)


@needs_cpp
@pytest.mark.parametrize("compiler", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_torch_compile_fullgraph(compiler):
    torch._dynamo.reset()
    z, src = make(40, 3, torch.float32)
    zb, gsrc = make(40, 2, torch.float32, generator=True)
    r, f = torch.randn(30), torch.randn(30)
    inputs = [z.requires_grad_(), zb.requires_grad_(), r.requires_grad_(), f.requires_grad_()]

    def fn(z, zb, r, f):
        return (adkernels.discriminator_loss(z, src, weights=(1.0, 0.5, 0.5)) * 3
                + adkernels.generator_loss(zb, gsrc, mode="nonsat", parameterization="binary_tree")
                + adkernels.binary_adversarial_loss(r, f, kind="relativistic", real_label=0.9))

    cf = torch.compile(fn, backend=compiler, fullgraph=True)
    with adkernels.use_backend("cpu"):
        lc = cf(*inputs)
        le = fn(*inputs)
    torch.testing.assert_close(lc, le)
    for a, b in zip(grads(lc, inputs, torch.ones_like(lc)), grads(le, inputs, torch.ones_like(le))):
        torch.testing.assert_close(a, b)


@needs_cpp
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_retain_graph_backward_twice(reduction):
    z, src = make(9, 3, torch.float32)
    z.requires_grad_()
    loss = adkernels.discriminator_loss(z, src, reduction=reduction).sum()
    g1 = torch.autograd.grad(loss, z, retain_graph=True)[0]
    g2 = torch.autograd.grad(loss * 3, z, retain_graph=True)[0]
    g3 = torch.autograd.grad(loss, z)[0]
    torch.testing.assert_close(g2, 3 * g1)
    torch.testing.assert_close(g3, g1)


# ---- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_source_values(backend):
    z, src = make(4, 3, torch.float32)
    for v in (3, -1):
        bad = src.clone()
        bad[2] = v
        with adkernels.use_backend(backend), pytest.raises(ValueError, match=rf"source\[2\] = {v}"):
            adkernels.discriminator_loss(z, bad)
    gen = torch.tensor([1, 2, 0, 1])
    with adkernels.use_backend(backend), pytest.raises(ValueError, match=r"source\[2\] = 0 \(REAL\)"):
        adkernels.generator_loss(z, gen)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(parameterization="binary_tree"), ValueError, r"\[N, 2\].*parameterization='softmax'"),
        (dict(parameterization="tree"), ValueError, "parameterization"),
        (dict(weights=(1.0, -0.5, 1.0)), ValueError, r"weights\[1\].*>= 0"),
        (dict(weights=(1.0, 1.0)), ValueError, "three numbers"),
        (dict(weights=(1.0, float("nan"), 1.0)), ValueError, r"weights\[1\]"),
        (dict(reduction="batchmean"), ValueError, "reduction"),
    ],
)
def test_bad_options(kwargs, exc, match):
    z, src = make(4, 3, torch.float32)
    with pytest.raises(exc, match=match):
        adkernels.discriminator_loss(z, src, **kwargs)


def test_bad_tensors():
    z, src = make(4, 3, torch.float32)
    with pytest.raises(ValueError, match="leading shape"):
        adkernels.discriminator_loss(z, src[:3])
    with pytest.raises(TypeError, match="integer"):
        adkernels.discriminator_loss(z, src.float())
    with pytest.raises(TypeError, match="d_logits"):
        adkernels.discriminator_loss(z.long(), src)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        adkernels.discriminator_loss(torch.randn(4, 4), src)
    with pytest.raises(ValueError, match="mode"):
        adkernels.generator_loss(z, src.clamp(min=1), mode="saturating")


# ---- label_conditioned_scores ------------------------------------------------------------------------

def test_label_conditioned_scores():
    d = torch.randn(5, 7, 3, dtype=torch.float64, requires_grad=True)
    y = torch.softmax(torch.randn(5, 7, dtype=torch.float64), -1).requires_grad_()
    out = adkernels.label_conditioned_scores(d, y)
    torch.testing.assert_close(out, torch.einsum("nck,nc->nk", d, y))
    assert torch.autograd.gradcheck(adkernels.label_conditioned_scores, (d, y))
    hard = torch.nn.functional.one_hot(torch.tensor([0, 3, 6, 1, 2]), 7).double()
    torch.testing.assert_close(adkernels.label_conditioned_scores(d, hard), d[torch.arange(5), [0, 3, 6, 1, 2]])
    e = adkernels.label_conditioned_scores(torch.randn(0, 7, 2), torch.randn(0, 7))
    assert e.shape == (0, 2)
    with pytest.raises(ValueError, match=r"labels must be \[N, C\]"):
        adkernels.label_conditioned_scores(d, y[:, :6])
    with pytest.raises(ValueError, match=r"\[N, C, K\]"):
        adkernels.label_conditioned_scores(d[0], y)
    with pytest.raises(TypeError, match="float64"):
        adkernels.label_conditioned_scores(d.float(), y)


# ---- binary_adversarial_loss -------------------------------------------------------------------------

BIN_CASES = [(k, s) for k in ("bce", "hinge", "lsgan", "wgan", "relativistic") for s in ("discriminator", "generator")]
BIN_CASES.append(("bce", "generator_nonsat"))


def binary(backend, r, f, **kw):
    with adkernels.use_backend(backend):
        return adkernels.binary_adversarial_loss(r, f, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_binary_hand_values(backend):
    z = torch.zeros(4, dtype=torch.float64)
    one = torch.ones(4, dtype=torch.float64)
    L2 = math.log(2)
    assert binary(backend, z, z).item() == pytest.approx(2 * L2)  # BCE(0, 1) + BCE(0, 0)
    assert binary(backend, None, z, side="generator").item() == pytest.approx(-L2)
    assert binary(backend, None, z, side="generator_nonsat").item() == pytest.approx(L2)
    # one-sided smoothing at y = 0.9 on r = log 9 (s(r) = 0.9): the minimum, BCE = binary entropy
    r9 = torch.full((4,), math.log(9), dtype=torch.float64)
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert binary(backend, r9, torch.full((2,), -1e4, dtype=torch.float64), real_label=0.9).item() == pytest.approx(h)
    assert binary(backend, 0.5 * one, -0.5 * one, kind="hinge").item() == pytest.approx(1.0)
    assert binary(backend, None, 2 * one, kind="hinge", side="generator").item() == pytest.approx(-2.0)
    assert binary(backend, 3 * one, 2 * one, kind="lsgan", real_label=0.5).item() == pytest.approx(0.5 * 6.25 + 2)
    assert binary(backend, None, 3 * one, kind="lsgan", side="generator").item() == pytest.approx(2.0)
    assert binary(backend, 3 * one, 2 * one, kind="wgan").item() == pytest.approx(-1.0)
    assert binary(backend, 3 * one, 2 * one, kind="wgan", reduction="sum").item() == pytest.approx(-4.0)
    rel = binary(backend, 3 * one, 2 * one, kind="relativistic", reduction="none")
    torch.testing.assert_close(rel, torch.full((4,), math.log1p(math.exp(-1)), dtype=torch.float64))
    relg = binary(backend, 3 * one, 2 * one, kind="relativistic", side="generator")
    assert relg.item() == pytest.approx(math.log1p(math.exp(1)))
    # gradients: hinge real term -1 where r < 1, fake +1 where f > -1; means over 4 and 2
    r = torch.tensor([0.0, 2.0, 0.5, 1.0], dtype=torch.float64, requires_grad=True)
    f = torch.tensor([-2.0, 0.0], dtype=torch.float64, requires_grad=True)
    binary(backend, r, f, kind="hinge").backward()
    torch.testing.assert_close(r.grad, torch.tensor([-0.25, 0, -0.25, 0], dtype=torch.float64))
    torch.testing.assert_close(f.grad, torch.tensor([0, 0.5], dtype=torch.float64))


@needs_cpp
@given(
    mr=st.integers(0, 9000),
    mf=st.integers(0, 9000),
    case=st.sampled_from(BIN_CASES),
    dtype=st.sampled_from(DTYPES),
    scale=st.sampled_from([1.0, 30.0, 1e4]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    smooth=st.booleans(),
    grads_of=st.sampled_from(["rf", "r", "f"]),
    seed=st.integers(0, 2 ** 16),
)
def test_binary_cpu_matches_reference(mr, mf, case, dtype, scale, reduction, smooth, grads_of, seed):
    kind, side = case
    if dtype == torch.float16:
        scale = min(scale, 3e3)
    if kind in ("lsgan", "wgan", "hinge") and scale > 100:
        scale = 30.0  # polynomial losses of 1e4 scores: 1e8, beyond any relative tolerance of a sum
    if kind == "relativistic" or reduction == "none":
        mr = mf
    uses_real = side == "discriminator" or kind == "relativistic"
    y = 0.9 if smooth and side == "discriminator" and kind in ("bce", "lsgan", "relativistic") else 1.0
    g = torch.Generator().manual_seed(seed)
    r = (torch.randn(mr, generator=g, dtype=torch.float64) * scale).to(dtype)
    f = (torch.randn(mf, generator=g, dtype=torch.float64) * scale).to(dtype)
    outs = []
    for b, x, z in (("cpu", r, f), ("reference", r, f), ("reference", r.double(), f.double())):
        x = x.clone().requires_grad_("r" in grads_of and uses_real)
        z = z.clone().requires_grad_("f" in grads_of)
        loss = binary(b, x if uses_real else None, z, kind=kind, side=side, real_label=y, reduction=reduction)
        inputs = [t for t in (x, z) if t.requires_grad]
        w = torch.rand(loss.shape, generator=torch.Generator().manual_seed(1), dtype=loss.dtype) + 0.5
        outs.append((loss.detach(), grads(loss, inputs, w) if loss.requires_grad else ()))
    (lf, gf), (lr, gr), (lg, gg) = outs
    assert lf.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert lf.shape == lr.shape
    # sums of many terms: the float32 budget grows with the number of terms
    k = 2.0 if reduction == "none" else 2.0 + math.sqrt(max(mr, mf))
    assert_close_to_gt(lf, lr, lg, dtype, k=k, name="loss")
    for a, b, c in zip(gf, gr, gg):
        assert a.dtype == dtype
        assert_close_to_gt(a, b, c, dtype, name="grad")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kind="gan"), "kind"),
        (dict(side="both"), "side"),
        (dict(kind="hinge", side="generator_nonsat"), "generator_nonsat"),
        (dict(real_label=0.0), r"real_label must be in \(0, 1\]"),
        (dict(real_label=0.9, kind="wgan"), "one-sided label smoothing"),
        (dict(real_label=0.9, side="generator"), "one-sided label smoothing"),
        (dict(reduction="batchmean"), "reduction"),
    ],
)
def test_binary_bad_options(kwargs, match):
    r, f = torch.randn(4), torch.randn(4)
    with pytest.raises(ValueError, match=match):
        adkernels.binary_adversarial_loss(r, f, **kwargs)


def test_binary_bad_tensors():
    r, f = torch.randn(4), torch.randn(5)
    adkernels.binary_adversarial_loss(r, f)  # unpaired kinds accept different sizes
    with pytest.raises(ValueError, match="same shape.*relativistic pairs"):
        adkernels.binary_adversarial_loss(r, f, kind="relativistic")
    with pytest.raises(ValueError, match="same shape.*reduction='none'"):
        adkernels.binary_adversarial_loss(r, f, reduction="none")
    with pytest.raises(ValueError, match="needs real_scores"):
        adkernels.binary_adversarial_loss(None, f)
    with pytest.raises(TypeError, match="real_scores is torch.float64"):
        adkernels.binary_adversarial_loss(r.double(), f)
    with pytest.raises(TypeError, match="fake_scores"):
        adkernels.binary_adversarial_loss(r, f.long())
