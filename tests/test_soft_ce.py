"""soft_target_cross_entropy and ada_lab_targets: the reference against torch / hand formulas,
every backend here (cpu, triton interpreter) against the reference, opcheck, compile, errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import adkernels
from adkernels import _backend
from adkernels.reference import soft_ce as R

from helpers import assert_close_to_gt, grads

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
needs_cpp = pytest.mark.skipif(not adkernels._C_loaded(), reason="C++ extension not built")
HAS_TRITON = _backend.has_triton() and _backend.backend_available("triton", torch.device("cpu"))
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="Triton interpreter not available")
BACKENDS = [pytest.param("cpu", marks=needs_cpp), pytest.param("triton", marks=needs_triton)]


def make(n, v, dtype, *, scale=3.0, seed=0, normalized=True, sparse=False, neg_inf=False):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, v, generator=g, dtype=torch.float64) * scale
    q = torch.rand(n, v, generator=g, dtype=torch.float64)
    if sparse:
        q = torch.where(torch.rand(n, v, generator=g) < 0.5, torch.zeros_like(q), q)
    if normalized:
        q = q / q.sum(-1, keepdim=True).clamp_min(1e-12)
    if neg_inf:
        mask = (torch.rand(n, v, generator=g) < 0.3) & (q == 0)
        z = z.masked_fill(mask, float("-inf"))
    return z.to(dtype), q.to(dtype)


def run(backend, z, q, *, q_grad=True, **kw):
    z = z.detach().clone().requires_grad_()
    q = q.detach().clone().requires_grad_(q_grad)
    if backend == "reference":
        loss = R.soft_target_cross_entropy(z, q, **kw)
    else:
        with adkernels.use_backend(backend):
            loss = adkernels.soft_target_cross_entropy(z, q, **kw)
    return loss.detach(), grads(loss, [z, q] if q_grad else [z])


def compare(backend, z, q, **kw):
    dtype = z.dtype
    lf, gf = run(backend, z, q, **kw)
    lr, gr = run("reference", z, q, **kw)
    lg, gg = run("reference", z.double(), q.double(), **kw)
    assert lf.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close_to_gt(lf, lr, lg, dtype, name=f"{backend} loss")
    for name, a, b, c in zip(("d logits", "d targets"), gf, gr, gg):
        assert a.dtype == dtype
        assert_close_to_gt(a, b, c, dtype, name=f"{backend} {name}")


# ---- soft_target_cross_entropy: reference -----------------------------------------------------------

def test_reference_matches_torch_cross_entropy():
    z, q = make(6, 11, torch.float64)
    torch.testing.assert_close(R.soft_target_cross_entropy(z, q), F.cross_entropy(z, q))
    # unnormalized targets: the formula as is, Q lse - sum q z
    q2 = q * 3.0
    want = (q2.sum(-1) * torch.logsumexp(z, -1) - (q2 * z).sum(-1))
    torch.testing.assert_close(R.soft_target_cross_entropy(z, q2, reduction="none"), want)


def test_reference_gradcheck():
    z, q = make(4, 7, torch.float64, normalized=False)
    assert torch.autograd.gradcheck(lambda a, b: R.soft_target_cross_entropy(a, b, reduction="sum"),
                                    (z.requires_grad_(), q.requires_grad_()))


# ---- soft_target_cross_entropy: backends -----------------------------------------------------------------

@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=needs_cpp),
                                     pytest.param("triton", marks=[needs_triton, pytest.mark.slow])])
def test_gradcheck(backend):
    z, q = make(3, 9, torch.float64, normalized=False)
    for red in ("mean", "none"):
        with adkernels.use_backend(backend):
            assert torch.autograd.gradcheck(lambda a, b: adkernels.soft_target_cross_entropy(a, b, reduction=red),
                                            (z.clone().requires_grad_(), q.clone().requires_grad_()))


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_weird_shape(dtype):
    z, q = make(41, 1271, dtype)
    compare("cpu", z, q)


@needs_cpp
@given(n=st.integers(0, 8), v=st.integers(1, 300), dtype=st.sampled_from(DTYPES), scale=st.sampled_from([1.0, 30.0, 1e4]),
       normalized=st.booleans(), sparse=st.booleans(), neg_inf=st.booleans(),
       reduction=st.sampled_from(["mean", "sum", "none"]), seed=st.integers(0, 2**16))
def test_cpu_matches_reference(n, v, dtype, scale, normalized, sparse, neg_inf, reduction, seed):
    if dtype == torch.float16:
        scale = min(scale, 3e3)
    z, q = make(n, v, dtype, scale=scale, seed=seed, normalized=normalized, sparse=sparse, neg_inf=neg_inf)
    compare("cpu", z, q, reduction=reduction)


@needs_triton
@settings(max_examples=10)
@given(n=st.integers(0, 4), v=st.integers(1, 70), dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
       normalized=st.booleans(), sparse=st.booleans(), neg_inf=st.booleans(), seed=st.integers(0, 2**16))
def test_triton_matches_reference(n, v, dtype, normalized, sparse, neg_inf, seed):
    z, q = make(n, v, dtype, seed=seed, normalized=normalized, sparse=sparse, neg_inf=neg_inf)
    compare("triton", z, q)


@needs_triton
def test_triton_multi_block():
    import adkernels.triton.soft_ce as ts

    old, ts.MAX_BLOCK = ts.MAX_BLOCK, 16
    try:
        z, q = make(3, 77, torch.float32, sparse=True, neg_inf=True)
        compare("triton", z, q)
        za, zb = make(3, 77, torch.float32)
        y = torch.tensor([0, 40, 76])
        ada_compare("triton", za, zb * 5, y, temperature=2.0)
    finally:
        ts.MAX_BLOCK = old


@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_dims_noncontiguous_empty(backend):
    z = torch.randn(2, 3, 10)
    q = torch.softmax(torch.randn(2, 3, 10), -1)
    compare(backend, z, q, reduction="none")
    zt = torch.randn(10, 8).t()  # [8, 10] non-contiguous
    qt = torch.softmax(torch.randn(10, 8), 0).t()
    assert not zt.is_contiguous() and not qt.is_contiguous()
    compare(backend, zt, qt)
    loss, (gz, gq) = run(backend, torch.randn(0, 10), torch.rand(0, 10))
    assert loss.item() == 0.0 and gz.shape == (0, 10)


@needs_cpp
def test_kernel_writes_every_output():
    z, q = make(7, 50, torch.float32)
    for _ in range(3):
        poison = torch.full((7 * 50 * 4,), float("nan"))
        del poison
        loss, gz, gq = torch.ops.adkernels.soft_ce_fwd(z, q, True, True, 1.0)
        assert torch.isfinite(loss).all() and torch.isfinite(gz).all() and torch.isfinite(gq).all()


def _opcheck(soft_op, ada_op):
    z, q = make(5, 19, torch.float32)
    for args in [(z, q, True, True, 1.0), (z, q, True, False, 0.25), (z.double(), q.double(), False, True, 1.0)]:
        torch.library.opcheck(soft_op, args)
    za, zb = make(5, 19, torch.float32)
    y = torch.randint(0, 19, (5,))
    for args in [(za, zb, y, 0.5, 10.0, 0.0, 1.0), (za.double(), zb.double(), y, 1.0, 0.0, 0.3, 2.0)]:
        torch.library.opcheck(ada_op, args)


@needs_cpp
def test_opcheck_cpp():
    _opcheck(torch.ops.adkernels.soft_ce_fwd.default, torch.ops.adkernels.ada_lab_targets.default)


@needs_triton
def test_opcheck_triton():
    import adkernels.triton.soft_ce  # noqa: F401

    _opcheck(torch.ops.adkernels.soft_ce_fwd_triton.default, torch.ops.adkernels.ada_lab_targets_triton.default)


@needs_cpp
@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(compiler):
    torch._dynamo.reset()
    z, q = make(6, 37, torch.float32)
    za, zb = make(6, 37, torch.float32, seed=1)
    y = torch.randint(0, 37, (6,))
    z.requires_grad_()

    def f(a, b, c, d, e):
        t = adkernels.ada_lab_targets(c, d, e)
        return adkernels.soft_target_cross_entropy(a, b) * 3 + adkernels.soft_target_cross_entropy(a, t)

    cf = torch.compile(f, backend=compiler, fullgraph=True)
    with adkernels.use_backend("cpu"):
        lc, le = cf(z, q, za, zb, y), f(z, q, za, zb, y)
    torch.testing.assert_close(lc, le)
    torch.testing.assert_close(grads(lc, [z], torch.ones_like(lc))[0], grads(le, [z], torch.ones_like(le))[0])


@needs_cpp
def test_retain_graph_and_module():
    z, q = make(4, 9, torch.float32)
    z.requires_grad_()
    loss = adkernels.soft_target_cross_entropy(z, q)
    (g1,) = torch.autograd.grad(loss, [z], retain_graph=True)
    (g2,) = torch.autograd.grad(loss * 3, [z])
    torch.testing.assert_close(g2, 3 * g1)
    m = adkernels.SoftTargetCrossEntropy(reduction="sum")
    torch.testing.assert_close(m(z, q), adkernels.soft_target_cross_entropy(z, q, reduction="sum"))


def test_soft_ce_bad_input():
    z, q = make(3, 5, torch.float32)
    bad = q.clone()
    bad[1, 2] = -0.1
    with pytest.raises(ValueError, match=r"soft_targets\[1, 2\].*negative"):
        adkernels.soft_target_cross_entropy(z, bad)
    adkernels.soft_target_cross_entropy(z, bad, check_targets=False)  # opt-out: the formula as is
    with pytest.raises(ValueError, match="same shape"):
        adkernels.soft_target_cross_entropy(z, q[:, :4])
    with pytest.raises(TypeError, match="dtype|float64"):
        adkernels.soft_target_cross_entropy(z, q.double())
    with pytest.raises(TypeError, match="soft_targets"):
        adkernels.soft_target_cross_entropy(z, torch.ones(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction"):
        adkernels.soft_target_cross_entropy(z, q, reduction="avg")


# ---- ada_lab_targets ---------------------------------------------------------------------------------------------

def ada_hand(za, zb, y, max_weight, gamma, bias, T):
    """Straight from the formula, one row at a time, float64."""
    out = torch.zeros(za.shape, dtype=torch.float64)
    ws = []
    for i in range(za.shape[0]):
        p = za[i].double().softmax(-1)
        others = torch.cat([p[: y[i]], p[y[i] + 1:]])
        m = p[y[i]] - (others.max() if others.numel() else 0.0)
        w = max_weight / (1 + torch.exp(gamma * (m - bias)))
        q = (zb[i].double() / T).softmax(-1)
        onehot = torch.zeros_like(q)
        onehot[y[i]] = 1
        out[i] = (1 - w) * onehot + w * q
        ws.append(w)
    return out, torch.stack(ws)


def test_ada_lab_reference_matches_formula():
    za, zb = make(6, 9, torch.float64)
    y = torch.tensor([0, 3, 8, 2, 2, 5])
    for kw in (dict(max_weight=0.5, gamma=10.0, bias=0.0, temperature=1.0),
               dict(max_weight=1.0, gamma=3.0, bias=-0.4, temperature=2.5)):
        got, w = R.ada_lab_targets(za, zb, y, return_weight=True, **kw)
        want, ww = ada_hand(za, zb, y, kw["max_weight"], kw["gamma"], kw["bias"], kw["temperature"])
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(w, ww)
        torch.testing.assert_close(got.sum(-1), torch.ones(6, dtype=torch.float64))
    # a confidently correct example keeps (almost) its one-hot label; a misclassified one moves
    za2 = torch.tensor([[20.0, 0.0, 0.0], [0.0, 20.0, 0.0]], dtype=torch.float64)
    t, w = R.ada_lab_targets(za2, torch.zeros_like(za2), torch.tensor([0, 0]), return_weight=True)
    assert w[0] < 1e-4 and w[1] > 0.49


def ada_run(backend, za, zb, y, **kw):
    if backend == "reference":
        return R.ada_lab_targets(za, zb, y, return_weight=True, **kw)
    with adkernels.use_backend(backend):
        return adkernels.ada_lab_targets(za, zb, y, return_weight=True, **kw)


def ada_compare(backend, za, zb, y, **kw):
    dtype = za.dtype
    tf, wf = ada_run(backend, za, zb, y, **kw)
    tr, wr = ada_run("reference", za, zb, y, **kw)
    tg, wg = ada_run("reference", za.double(), zb.double(), y, **kw)
    assert tf.dtype == dtype and not tf.requires_grad
    assert_close_to_gt(tf, tr, tg, dtype, name=f"{backend} targets")
    assert_close_to_gt(wf, wr, wg, dtype, name=f"{backend} weight")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ada_lab_backends(backend, dtype):
    za, zb = make(41, 127, dtype)
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 127, (41,), generator=g)
    ada_compare(backend, za, zb, y, max_weight=0.8, gamma=5.0, bias=0.1, temperature=2.0)
    # +-1e4 logits and -inf entries (not at the label)
    za2, zb2 = make(7, 30, dtype, scale=1e4 if dtype != torch.float16 else 3e3, seed=2, neg_inf=True, sparse=True)
    y2 = torch.arange(7) * 4
    za2[torch.arange(7), y2] = 1.0
    ada_compare(backend, za2, zb2.clamp_min(-1e3), y2)


@needs_cpp
@given(n=st.integers(0, 8), v=st.integers(1, 200), dtype=st.sampled_from(DTYPES),
       max_weight=st.floats(0.0, 1.0), gamma=st.floats(0.0, 50.0), bias=st.floats(-1.0, 1.0), T=st.floats(0.2, 10.0),
       seed=st.integers(0, 2**16))
def test_ada_lab_cpu_matches_reference(n, v, dtype, max_weight, gamma, bias, T, seed):
    za, zb = make(n, v, dtype, seed=seed)
    y = torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(seed))
    ada_compare("cpu", za, zb, y, max_weight=max_weight, gamma=gamma, bias=bias, temperature=T)


def test_ada_lab_detached_and_leading_dims():
    za, zb = make(6, 5, torch.float32)
    za = za.reshape(2, 3, 5).requires_grad_()
    zb = zb.reshape(2, 3, 5).requires_grad_()
    y = torch.randint(0, 5, (2, 3))
    t, w = adkernels.ada_lab_targets(za, zb, y, return_weight=True)
    assert t.shape == (2, 3, 5) and w.shape == (2, 3) and not t.requires_grad
    t0 = adkernels.ada_lab_targets(torch.randn(0, 5), torch.randn(0, 5), torch.zeros(0, dtype=torch.long))
    assert t0.shape == (0, 5)


def test_ada_lab_bad_input():
    za, zb = make(3, 5, torch.float32)
    y = torch.tensor([0, 1, 2])
    for kw, match in [(dict(temperature=0.0), "temperature"), (dict(temperature=-1.0), "temperature"),
                      (dict(max_weight=1.5), "max_weight"), (dict(gamma=-1.0), "gamma"), (dict(bias=2.0), "bias")]:
        with pytest.raises(ValueError, match=match):
            adkernels.ada_lab_targets(za, zb, y, **kw)
    with pytest.raises(ValueError, match=r"target\[1\] = 5"):
        adkernels.ada_lab_targets(za, zb, torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match="same shape"):
        adkernels.ada_lab_targets(za, zb[:, :4], y)
    with pytest.raises(ValueError, match="leading shape"):
        adkernels.ada_lab_targets(za, zb, y[:2])
    with pytest.raises(TypeError, match="integer"):
        adkernels.ada_lab_targets(za, zb, y.float())


@needs_cpp
def test_ada_lab_cpp_kernel_checks_labels():
    za, zb = make(2, 4, torch.float32)
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.adkernels.ada_lab_targets(za, zb, torch.tensor([0, 4]), 0.5, 10.0, 0.0, 1.0)
