"""gumbel_softmax / temperature_schedule and the Philox stream: the numpy Philox against Triton's
randint4x and hand properties, exact uniforms on every backend, CPU and Triton (interpreter) vs
the reference, argmax frequencies (chi-square), finiteness at extreme logits and temperatures,
gradcheck, straight-through, opcheck, torch.compile with a changing tensor tau, bad input."""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import adkernels
from adkernels import _backend
from adkernels.ops.gumbel import draw_seed_offset
from adkernels.reference import gumbel as ref
from helpers import TOL

needs_cpp = pytest.mark.skipif(not adkernels._C_loaded(), reason="C++ extension not built")
needs_triton = pytest.mark.skipif(
    not (importlib.util.find_spec("triton") and _backend.backend_available("triton", torch.device("cpu"))),
    reason="Triton (interpreter) not available",
)
BACKENDS = [pytest.param("cpu", marks=needs_cpp), pytest.param("triton", marks=needs_triton)]
ALL = BACKENDS + ["reference"]


def run(backend, *args, seed=0, **kw):
    torch.manual_seed(seed)
    with adkernels.use_backend(backend):
        return adkernels.gumbel_softmax(*args, **kw)


def stream_of(seed, device="cpu"):
    torch.manual_seed(seed)
    return draw_seed_offset("t", None, torch.device(device))


# ---- the stream --------------------------------------------------------------------------------

def test_uniform_mapping_edges():
    bits = np.array([0, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 1], dtype=np.uint64)
    u = ref.bits_to_uniform(bits)
    assert u[0] == np.float32(2.0 ** -32) and u[1] == np.float32(2.0 ** -32)  # tl.rand gives 0 here
    assert u[2] < 1 and u[3] < 1 and u[2] == np.float32(0.99999994)
    g = -np.log(-np.log(u.astype(np.float64)))
    assert np.isfinite(g).all()
    # f32 path as the kernels compute it
    g32 = -np.log(-np.log(u))
    assert np.isfinite(g32).all()


def test_philox_known_answer():
    # Random123's known-answer vector for Philox4x32-10, counter 0 and key 0.
    lanes = ref.philox4x32(0, np.array([0]))
    assert [int(v[0]) for v in lanes] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@needs_triton
def test_philox_matches_triton_randint4x():
    import triton
    import triton.language as tl

    @triton.jit
    def k(out, seed, off, N: tl.constexpr):
        i = tl.arange(0, N).to(tl.int64)
        a, b, c, d = tl.randint4x(seed, off + i)
        tl.store(out + i * 4, a.to(tl.int64) & 0xFFFFFFFF)
        tl.store(out + i * 4 + 1, b.to(tl.int64) & 0xFFFFFFFF)
        tl.store(out + i * 4 + 2, c.to(tl.int64) & 0xFFFFFFFF)
        tl.store(out + i * 4 + 3, d.to(tl.int64) & 0xFFFFFFFF)

    out = torch.zeros(64, dtype=torch.int64)
    seed, off = (1 << 61) + 12345, (1 << 40) + 7
    k[(1,)](out, seed, off, 16)
    want = np.stack(ref.philox4x32(seed, off + np.arange(16)), 1).reshape(-1).astype(np.int64)
    assert (out.numpy() == want).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_bit_identical(backend):
    # softmax at tau = 1 over a row of zeros in float64: y_j / y_0 = exp(g_j - g_0), so g is
    # recovered to ~1e-15 and each u to ~1e-13 relative; a different u (2^-31 apart at least
    # in [0.5, 1)) would be ~1e-9 off. Comparing the recovered u with the reference's exact u
    # rounded to float32 checks the kernels draw the same uniforms.
    x = torch.zeros(3, 257, dtype=torch.float64)
    y = run(backend, x, 1.0, seed=11)
    so = stream_of(11)
    u_ref = ref.uniform(so, x.numel()).double().reshape(3, 257)
    g_ref = -torch.log(-torch.log(u_ref))
    g = torch.log(y) - torch.log(y[:, :1]) + g_ref[:, :1]
    u = torch.exp(-torch.exp(-g))
    assert torch.equal(u.float(), u_ref.float())


# ---- backends vs the reference ---------------------------------------------------------------------

SHAPES = [(1, 1), (4, 7), (3, 33), (2, 3, 5), (5, 1000), (2, 41, 3)]


def compare(backend, shape, dtype, tau, hard, dim, seed, noncontig=False, block=None, monkeypatch=None):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)
    if noncontig:
        x = x.transpose(0, -1).contiguous().transpose(0, -1)
    x.requires_grad_(True)
    dy = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    got = run(backend, x, tau, hard, dim, seed=seed)
    (gx,) = torch.autograd.grad(got, x, dy)
    want = run("reference", x, tau, hard, dim, seed=seed)
    (wx,) = torch.autograd.grad(want, x, dy)
    x64 = x.detach().double().requires_grad_(True)
    gt = run("reference", x64, tau, hard, dim, seed=seed)
    (gtx,) = torch.autograd.grad(gt, x64, dy.double())
    assert got.dtype == dtype and got.shape == x.shape
    atol, rtol = TOL[dtype]
    if hard:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got.double(), want.double(), atol=atol, rtol=rtol)
    k = 2.0 if dtype in (torch.float16, torch.bfloat16) else 0.0
    err = (gx.double() - gtx).abs()
    budget = k * (wx.double() - gtx).abs() + 4 * atol + rtol * gtx.abs()
    assert bool((err <= budget).all()), f"grad off by {err.max().item()}"


@needs_cpp
@given(shape=st.sampled_from(SHAPES), dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16,
                                                             torch.float16]),
       tau=st.sampled_from([0.1, 0.5, 1.0, 3.0]), hard=st.booleans(), dim=st.sampled_from([-1, 0]),
       seed=st.integers(0, 2 ** 16), noncontig=st.booleans())
def test_cpu_matches_reference(shape, dtype, tau, hard, dim, seed, noncontig):
    compare("cpu", shape, dtype, tau, hard, dim, seed, noncontig)


@needs_triton
@settings(max_examples=8)
@given(shape=st.sampled_from(SHAPES[:4]), dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
       tau=st.sampled_from([0.5, 1.0, 3.0]), hard=st.booleans(), dim=st.sampled_from([-1, 0]),
       seed=st.integers(0, 2 ** 16))
def test_triton_matches_reference(shape, dtype, tau, hard, dim, seed):
    compare("triton", shape, dtype, tau, hard, dim, seed)


@needs_triton
def test_triton_multi_block(monkeypatch):
    from adkernels.triton import gumbel as tg

    monkeypatch.setattr(tg, "BLOCK", 16)
    for hard in (False, True):
        compare("triton", (3, 53), torch.float32, 0.7, hard, -1, 5)


# ---- distribution, finiteness --------------------------------------------------------------------

@needs_cpp
def test_argmax_frequencies_chi_square():
    # Hard samples are categorical(softmax(logits)): 200k draws of a 6-way row, chi-square with
    # 5 degrees of freedom at p = 0.001 (critical value 20.5); the reference draws the same noise.
    logits = torch.tensor([0.0, 1.0, -1.0, 2.0, 0.5, -3.0])
    x = logits.expand(200_000, 6)
    counts = run("cpu", x, 1.0, True, seed=123).sum(dim=0).double()
    expect = torch.softmax(logits.double(), 0) * x.shape[0]
    chi2 = ((counts - expect) ** 2 / expect).sum().item()
    assert chi2 < 20.5, (counts, expect)
    # power: the same counts against a slightly wrong distribution must fail the test
    wrong = torch.softmax(logits.double() * 1.05, 0) * x.shape[0]
    assert ((counts - wrong) ** 2 / wrong).sum().item() > 20.5


def _finite_check(backend, n_rows, seed):
    g = torch.Generator().manual_seed(seed)
    V = 100
    x = (torch.rand(n_rows, V, generator=g) * 2 - 1) * 1e4
    x[:, ::7] = 1e4
    x[:, 3::11] = -1e4
    x.requires_grad_(True)
    for tau in (0.05, 1.0, 20.0):
        y = run(backend, x, tau, seed=seed)
        assert torch.isfinite(y).all() and torch.allclose(y.sum(-1), torch.ones(n_rows), atol=1e-4)
        (gx,) = torch.autograd.grad(y, x, torch.randn_like(y))
        assert torch.isfinite(gx).all()


@needs_cpp
def test_no_nan_inf_1e6():
    _finite_check("cpu", 10_000, 0)


@needs_cpp
@pytest.mark.slow
def test_no_nan_inf_1e7():
    _finite_check("cpu", 100_000, 1)


# ---- autograd, API ----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ALL)
def test_gradcheck_float64(backend):
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)

    def f(x):
        torch.manual_seed(4)  # the same noise at every evaluation
        with adkernels.use_backend(backend):
            return adkernels.gumbel_softmax(x, 0.7)

    assert torch.autograd.gradcheck(f, (x,))
    # backward formula from the saved y
    y = f(x)
    dy = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, dy)
    want = y * (dy - (dy * y).sum(-1, keepdim=True)) / 0.7
    torch.testing.assert_close(gx, want.detach())


@pytest.mark.parametrize("backend", ALL)
def test_hard_straight_through(backend):
    x = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    yh = run(backend, x, 0.5, True, seed=2)
    ys = run(backend, x, 0.5, False, seed=2)
    assert torch.equal(yh.sum(-1), torch.ones(4, dtype=torch.float64))
    assert torch.equal(yh.argmax(-1), ys.argmax(-1)) and set(yh.unique().tolist()) <= {0.0, 1.0}
    dy = torch.randn(4, 9, dtype=torch.float64)
    (gh,) = torch.autograd.grad(yh, x, dy)
    (gs,) = torch.autograd.grad(ys, x, dy)
    torch.testing.assert_close(gh, gs)


@pytest.mark.parametrize("backend", ALL)
def test_seeding_dims_and_empty(backend):
    x = torch.randn(3, 5, 4)
    a, b = run(backend, x, 1.0, seed=1), run(backend, x, 1.0, seed=1)
    assert torch.equal(a, b)
    with adkernels.use_backend(backend):
        c = adkernels.gumbel_softmax(x)
    assert not torch.equal(a, c)
    gen = torch.Generator().manual_seed(3)
    with adkernels.use_backend(backend):
        d1 = adkernels.gumbel_softmax(x, generator=gen)
        gen.manual_seed(3)
        d2 = adkernels.gumbel_softmax(x, generator=gen)
    assert torch.equal(d1, d2)
    # dim 1 equals dim -1 of the moved tensor (the noise follows logits.movedim(dim, -1))
    y1 = run(backend, x, 2.0, False, 1, seed=5)
    ym = run(backend, x.movedim(1, -1), 2.0, seed=5)
    torch.testing.assert_close(y1, ym.movedim(-1, 1))
    assert run(backend, torch.zeros(0, 5), 1.0).shape == (0, 5)
    assert run(backend, torch.zeros(3, 0), 1.0).shape == (3, 0)
    assert torch.equal(run(backend, torch.tensor(2.0), 1.0), torch.tensor(1.0))


def test_temperature_schedule():
    s = adkernels.temperature_schedule
    assert s(0, 100) == 10.0 and math.isclose(s(100, 100), 0.1) and math.isclose(s(50, 100), 1.0)
    assert math.isclose(s(-5, 100), 10.0) and math.isclose(s(10 ** 6, 100), 0.1)
    assert math.isclose(s(25, 100) / s(24, 100), s(75, 100) / s(74, 100))  # constant factor
    t = s(torch.tensor([0.0, 50.0, 100.0]), 100, 2.0, 0.5)
    torch.testing.assert_close(t, torch.tensor([2.0, 1.0, 0.5]))
    with pytest.raises(ValueError, match="end"):
        s(1, 10, end=0.0)
    with pytest.raises(ValueError, match="total"):
        s(1, 0)


def test_distribution_matches_torch():
    # Same law as F.gumbel_softmax (different generator): mean of soft samples agrees.
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0]]).expand(40_000, 4)
    torch.manual_seed(0)
    ours = adkernels.gumbel_softmax(logits, 0.8).mean(0)
    theirs = F.gumbel_softmax(logits, 0.8).mean(0)
    torch.testing.assert_close(ours, theirs, atol=6e-3, rtol=0)


# ---- opcheck, compile, bad input ---------------------------------------------------------------

def _op_args():
    x = torch.randn(3, 11)
    so = torch.tensor([5, 9])
    t32, t64 = torch.tensor(0.5), torch.tensor(0.5, dtype=torch.float64)
    return [("fwd", (x, t32, so, False, False)), ("fwd", (x, t32, so, True, True)),
            ("fwd", (x.double(), t64, so, True, False)), ("fwd", (x.bfloat16(), t32, so, False, False)),
            ("bwd", (torch.softmax(x, -1), torch.randn(3, 11), t32))]


@needs_cpp
def test_opcheck_cpp():
    for kind, args in _op_args():
        torch.library.opcheck(getattr(torch.ops.adkernels, f"gumbel_softmax_{kind}").default, args)


@needs_triton
def test_opcheck_triton():
    import adkernels.triton.gumbel  # noqa: F401

    for kind, args in _op_args()[:2] + _op_args()[-1:]:
        torch.library.opcheck(getattr(torch.ops.adkernels, f"gumbel_softmax_{kind}_triton").default, args)


@needs_cpp
def test_torch_compile_tensor_tau_no_recompile():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    x = torch.randn(4, 10, requires_grad=True)

    def f(x, tau):
        y = adkernels.gumbel_softmax(x, tau, hard=True)
        return (y * torch.arange(10.0)).sum()

    cnt = CompileCounterWithBackend("aot_eager")
    cf = torch.compile(f, backend=cnt, fullgraph=True)
    with adkernels.use_backend("cpu"):
        for step in range(3):
            tau = torch.tensor(adkernels.temperature_schedule(step, 3))
            torch.manual_seed(step)
            out = cf(x, tau)
            (gc,) = torch.autograd.grad(out, x)
            torch.manual_seed(step)
            (ge,) = torch.autograd.grad(f(x, tau), x)
            torch.testing.assert_close(gc, ge)
    assert cnt.frame_count == 1, f"recompiled: {cnt.frame_count} frames"


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=needs_cpp), "reference"])
def test_bad_input(backend):
    x = torch.randn(2, 5)
    with adkernels.use_backend(backend):
        for tau in (0.0, -1.0, float("nan"), float("inf"), torch.tensor(0.0), torch.tensor(float("nan"))):
            with pytest.raises(ValueError, match="tau must be"):
                adkernels.gumbel_softmax(x, tau)
        cases = [
            (lambda: adkernels.gumbel_softmax(x.long(), 1.0), TypeError, "logits must be float"),
            (lambda: adkernels.gumbel_softmax(x, "1"), TypeError, "tau must be a number"),
            (lambda: adkernels.gumbel_softmax(x, torch.ones(2)), ValueError, "one-element"),
            (lambda: adkernels.gumbel_softmax(x, 1.0, dim=2), ValueError, "dim must be"),
            (lambda: adkernels.gumbel_softmax(x, 1.0, hard=1), TypeError, "hard must be a bool"),
            (lambda: adkernels.gumbel_softmax(x, 1.0, generator=1), TypeError, "generator"),
        ]
        for fn, exc, match in cases:
            with pytest.raises(exc, match=match):
                fn()


@needs_cpp
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_long_rows(hard, dtype):
    # rows longer than the kernel's 2048-column chunk, V not a multiple of 4 (rows start
    # mid-counter), and a dim that is not the last
    compare("cpu", (3, 4501), dtype, 0.8, hard, -1, 9)
    compare("cpu", (2411, 3), dtype, 2.0, hard, 0, 10)
