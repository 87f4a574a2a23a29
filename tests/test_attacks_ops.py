"""sign_step / pgd_step: reference vs hand values, CPU and Triton (interpreter) vs the reference
(bit-exact for sign / linf, to rounding for l2), invariants, batch consistency, per-sample
tensors vs scalars, layouts, in-place forms, opcheck, torch.compile, bad input."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from hypothesis import given, settings, strategies as st

import adkernels
from adkernels import _backend
from adkernels.reference import attacks as ref

needs_cpp = pytest.mark.skipif(not adkernels._C_loaded(), reason="C++ extension not built")
needs_triton = pytest.mark.skipif(
    not (importlib.util.find_spec("triton") and _backend.backend_available("triton", torch.device("cpu"))),
    reason="Triton (interpreter) not available",
)
BACKENDS = [pytest.param("cpu", marks=needs_cpp), pytest.param("triton", marks=needs_triton)]
BOUNDS = ["none", "scalar", "lo_only", "channel", "element", "sample", "mixed", "gap"]


def with_backend(backend, fn, *args, **kw):
    with adkernels.use_backend(backend):
        return fn(*args, **kw)


def make_bounds(kind, shape, g, dtype=torch.float32):
    """(lo, hi) of the given kind for inputs in [0, 1) of ``shape`` = [N, C, ...]."""
    n, c = shape[0], shape[1]
    if kind == "none":
        return None, None
    if kind == "scalar":
        return 0.2, 0.8
    if kind == "lo_only":
        return 0.3, None
    if kind == "channel":  # normalized-image bounds, [1, C, 1, ...]
        lo = torch.rand((1, c) + (1,) * (len(shape) - 2), generator=g, dtype=dtype) * 0.4
        return lo, lo + 0.4
    if kind == "element":  # one bound per element of a sample, broadcast over the batch
        lo = torch.rand(shape[1:], generator=g, dtype=dtype) * 0.4
        return lo, lo + 0.5
    if kind == "sample":  # varies along the batch: [N, 1, ...]
        lo = torch.rand((n,) + (1,) * (len(shape) - 1), generator=g, dtype=dtype) * 0.4
        return lo, lo + 0.3
    if kind == "mixed":  # scalar lo, per-channel hi
        return 0.1, torch.rand((c,) + (1,) * (len(shape) - 2), generator=g, dtype=dtype) * 0.3 + 0.6
    if kind == "gap":  # a size-1 dimension between varying ones: [C, 1, W]
        if len(shape) < 4:
            return 0.2, 0.8
        lo = torch.rand((c, 1, shape[3]), generator=g, dtype=dtype) * 0.4
        return lo, lo + 0.45
    raise AssertionError(kind)


def make(shape, dtype=torch.float32, grad_dtype=None, seed=0, zeros=0.2, layout="contiguous", at_ball=True):
    """x_nat in [0, 1), x_adv inside (or on) a ball around it, a gradient with some exact zeros."""
    g = torch.Generator().manual_seed(seed)
    x_nat = torch.rand(shape, generator=g, dtype=torch.float64)
    x_adv = (x_nat + (torch.rand(shape, generator=g, dtype=torch.float64) - 0.5) * 0.1).clamp(0, 1)
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    grad[torch.rand(shape, generator=g) < zeros] = 0.0
    if shape[0] > 1 and at_ball:
        grad[0] = 0.0  # a sample with a zero gradient (l2: u = 0)
    x_nat, x_adv = x_nat.to(dtype), x_adv.to(dtype)
    grad = grad.to(grad_dtype or dtype)
    if layout == "channels_last" and len(shape) == 4:
        x_nat, x_adv, grad = (t.contiguous(memory_format=torch.channels_last) for t in (x_nat, x_adv, grad))
    elif layout == "strided":
        big = [s * 2 if i == len(shape) - 1 else s for i, s in enumerate(shape)]
        def spread(t):
            out = torch.zeros(big, dtype=t.dtype)
            out[..., ::2] = t
            return out[..., ::2]
        x_nat, x_adv, grad = spread(x_nat), spread(x_adv), spread(grad)
        assert shape[-1] == 1 or x_adv.numel() == 0 or not x_adv.is_contiguous()
    return x_adv, grad, x_nat


def assert_equal(a, b, name=""):
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    if not torch.equal(a, b):
        diff = (a.double() - b.double()).abs()
        raise AssertionError(f"{name}: not bit-identical: {int((diff > 0).sum())} elements differ, "
                             f"max diff {diff.max().item()!r}")


def l2_close(a, b):
    # l2 reduces in a different order than torch.linalg.vector_norm: a few ulps of the values.
    tol = 4 * torch.finfo(a.dtype).eps
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


# ---- reference: hand values ------------------------------------------------------------------------

def test_reference_hand_values():
    x = torch.tensor([[0.5, 0.5, 0.9, 0.1]])
    g = torch.tensor([[2.0, 0.0, 1.0, -3.0]])
    torch.testing.assert_close(ref.sign_step(x, g, 0.25), torch.tensor([[0.75, 0.5, 1.15, -0.15]]))
    torch.testing.assert_close(ref.sign_step(x, g, 0.25, lo=0.0, hi=1.0), torch.tensor([[0.75, 0.5, 1.0, 0.0]]))
    # linf: step 0.25 from x_adv, ball of 0.1 around x_nat, then the box
    xn = torch.tensor([[0.5, 0.5, 0.95, 0.05]])
    torch.testing.assert_close(ref.pgd_step(x, g, xn, 0.25, 0.1, lo=0.0, hi=1.0),
                               torch.tensor([[0.6, 0.5, 1.0, 0.0]]))
    # l2: grad (3, 4) has norm 5; a step of 1 moves by (0.6, 0.8); eps 0.5 halves the delta
    x0 = torch.zeros(1, 2, dtype=torch.float64)
    g2 = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    f64 = dict(dtype=torch.float64)
    torch.testing.assert_close(ref.pgd_step(x0, g2, x0, 1.0, 2.0, norm="l2"), torch.tensor([[0.6, 0.8]], **f64))
    torch.testing.assert_close(ref.pgd_step(x0, g2, x0, 1.0, 0.5, norm="l2"), torch.tensor([[0.3, 0.4]], **f64))
    # zero gradient: no move (l2: u = 0, not NaN)
    z = torch.zeros(1, 2, dtype=torch.float64)
    assert ref.pgd_step(x0 + 0.1, z, x0, 1.0, 0.5, norm="l2").tolist() == [[0.1, 0.1]]
    # per-sample step / eps
    xs = torch.zeros(2, 1)
    out = ref.pgd_step(xs, torch.ones(2, 1), xs, torch.tensor([0.1, 0.5]), torch.tensor([1.0, 0.2]))
    torch.testing.assert_close(out, torch.tensor([[0.1], [0.2]]))


@needs_cpp
def test_public_doc_examples_and_no_grad():
    x = torch.tensor([[0.5, 0.0, 1.0]], requires_grad=True)
    out = adkernels.sign_step(x, torch.tensor([[1.0, 0.0, -2.0]]), 0.25, lo=0.0, hi=1.0)
    assert not out.requires_grad
    assert out.tolist() == [[0.75, 0.0, 0.75]]


# ---- backends vs reference ---------------------------------------------------------------------

SHAPES = st.sampled_from([(0, 3, 4, 4), (1, 1, 1, 1), (2, 3, 5, 7), (3, 2, 9, 11), (5, 3, 17), (4, 37), (2, 3, 33, 33)])


def compare_all(backend, shape, dtype, grad_dtype, bounds, layout, step_kind, eps_value, seed):
    x_adv, grad, x_nat = make(shape, dtype, grad_dtype, seed=seed, layout=layout)
    g = torch.Generator().manual_seed(seed + 1)
    lo, hi = make_bounds(bounds, shape, g, dtype=torch.float32 if seed % 2 else dtype)
    n = shape[0]
    step = 0.03 if step_kind == "scalar" else torch.rand(n, generator=g, dtype=torch.float64) * 0.05
    eps = eps_value if step_kind == "scalar" else torch.full((n,), eps_value, dtype=torch.float32)
    got = with_backend(backend, adkernels.sign_step, x_adv, grad, step, lo=lo, hi=hi)
    assert_equal(got, ref.sign_step(x_adv, grad, step, lo=lo, hi=hi), "sign_step")
    got = with_backend(backend, adkernels.pgd_step, x_adv, grad, x_nat, step, eps, lo=lo, hi=hi)
    assert_equal(got, ref.pgd_step(x_adv, grad, x_nat, step, eps, lo=lo, hi=hi), "pgd linf")
    if layout == "channels_last" and x_adv.dim() == 4:
        assert got.is_contiguous(memory_format=torch.channels_last)
    l2_step = step * 20
    got = with_backend(backend, adkernels.pgd_step, x_adv, grad, x_nat, l2_step, eps * 10, norm="l2", lo=lo, hi=hi)
    l2_close(got, ref.pgd_step(x_adv, grad, x_nat, l2_step, eps * 10, norm="l2", lo=lo, hi=hi))


@needs_cpp
@given(shape=SHAPES, dtype=st.sampled_from([torch.float32, torch.float64]),
       grad_dtype=st.sampled_from([None, torch.bfloat16, torch.float16, torch.float32]),
       bounds=st.sampled_from(BOUNDS), layout=st.sampled_from(["contiguous", "channels_last", "strided"]),
       step_kind=st.sampled_from(["scalar", "tensor"]), eps_value=st.sampled_from([0.0, 0.02, 0.05]),
       seed=st.integers(0, 1000))
def test_cpu_matches_reference(shape, dtype, grad_dtype, bounds, layout, step_kind, eps_value, seed):
    compare_all("cpu", shape, dtype, grad_dtype, bounds, layout, step_kind, eps_value, seed)


@needs_triton
@settings(max_examples=12)
@given(shape=SHAPES, dtype=st.sampled_from([torch.float32, torch.float64]),
       grad_dtype=st.sampled_from([None, torch.bfloat16]),
       bounds=st.sampled_from(BOUNDS), layout=st.sampled_from(["contiguous", "channels_last", "strided"]),
       step_kind=st.sampled_from(["scalar", "tensor"]), eps_value=st.sampled_from([0.0, 0.05]),
       seed=st.integers(0, 1000))
def test_triton_matches_reference(shape, dtype, grad_dtype, bounds, layout, step_kind, eps_value, seed):
    compare_all("triton", shape, dtype, grad_dtype, bounds, layout, step_kind, eps_value, seed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_segment_paths(backend, monkeypatch):
    """Samples longer than a kernel chunk / block, per-element bounds wrapping mid-chunk."""
    if backend == "triton":
        from adkernels.triton import attacks as ta

        monkeypatch.setattr(ta, "BLOCK", 512)
        monkeypatch.setattr(ta, "L2_BLOCK", 512)
    shape = (3, 3, 41, 53)  # D = 6519: several 2048-element chunks, odd tails
    x_adv, grad, x_nat = make(shape, grad_dtype=torch.bfloat16, seed=3)
    for kind in ("channel", "element", "gap"):
        lo, hi = make_bounds(kind, shape, torch.Generator().manual_seed(1))
        got = with_backend(backend, adkernels.pgd_step, x_adv, grad, x_nat, 0.01, 0.03, lo=lo, hi=hi)
        assert_equal(got, ref.pgd_step(x_adv, grad, x_nat, 0.01, 0.03, lo=lo, hi=hi), kind)
        got = with_backend(backend, adkernels.pgd_step, x_adv, grad, x_nat, 0.5, 1.0, norm="l2", lo=lo, hi=hi)
        l2_close(got, ref.pgd_step(x_adv, grad, x_nat, 0.5, 1.0, norm="l2", lo=lo, hi=hi))


# ---- invariants, per-sample tensors, batch consistency ----------------------------------------------

def ulp(t):
    return torch.finfo(t.dtype).eps * t.abs().clamp(min=1.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_invariants_over_steps(backend, norm):
    """Ten steps: the iterate stays in the eps-ball (up to rounding of x) and in the box."""
    shape = (6, 3, 8, 8)
    x_adv, grad, x_nat = make(shape, seed=7)
    x_adv = x_nat.clone()
    lo, hi = make_bounds("channel", shape, torch.Generator().manual_seed(2))
    lo_t = torch.as_tensor(lo).expand(shape)
    hi_t = torch.as_tensor(hi).expand(shape)
    eps = torch.tensor([0.0, 0.01, 0.03, 0.1, 0.5, 2.0]) * (10 if norm == "l2" else 1)
    step = eps / 4 + 0.001
    x_nat = torch.max(torch.min(x_nat, hi_t), lo_t)  # a clean input inside the box
    x_adv = x_nat.clone()
    for i in range(10):
        grad = torch.randn(shape, generator=torch.Generator().manual_seed(i))
        x_adv = with_backend(backend, adkernels.pgd_step, x_adv, grad, x_nat, step, eps, norm=norm, lo=lo, hi=hi)
        d = (x_adv - x_nat).reshape(6, -1)
        if norm == "linf":
            bound = eps[:, None] + ulp(x_nat.reshape(6, -1))
            assert bool((d.abs() <= bound).all())
        else:
            tol = eps * 1e-6 + (ulp(x_nat.reshape(6, -1)) ** 2).sum(1).sqrt()
            assert bool((torch.linalg.vector_norm(d, dim=1) <= eps + tol).all())
        assert bool(((x_adv >= lo_t) & (x_adv <= hi_t)).all())
    assert bool((x_adv[0] == x_nat[0]).all())  # eps = 0 never moves


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", ["sign", "linf", "l2"])
def test_per_sample_tensors_equal_scalars_and_batch_consistency(backend, norm):
    """A batch with per-sample step / eps equals each sample attacked alone with scalars."""
    shape = (5, 3, 7, 9)
    x_adv, grad, x_nat = make(shape, grad_dtype=torch.bfloat16, seed=11)
    lo, hi = make_bounds("channel", shape, torch.Generator().manual_seed(5))
    step = torch.tensor([0.0, 0.01, 0.02, 0.5, 0.03])
    eps = torch.tensor([0.02, 0.0, 0.05, 0.3, 1.0])

    def call(xa, g, xn, s, e):
        if norm == "sign":
            return adkernels.sign_step(xa, g, s, lo=lo, hi=hi)
        return adkernels.pgd_step(xa, g, xn, s, e, norm=norm, lo=lo, hi=hi)

    with adkernels.use_backend(backend):
        batch = call(x_adv, grad, x_nat, step, eps)
        for n in range(shape[0]):
            alone = call(x_adv[n:n + 1], grad[n:n + 1], x_nat[n:n + 1], float(step[n]), float(eps[n]))
            assert_equal(batch[n:n + 1], alone, f"sample {n}")


# ---- in-place forms, ISA variants, empty batches ------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_inplace_equals_functional(backend, layout):
    shape = (3, 3, 6, 5)
    x_adv, grad, x_nat = make(shape, grad_dtype=torch.float16, seed=4, layout=layout)
    lo, hi = make_bounds("mixed", shape, torch.Generator().manual_seed(0))
    with adkernels.use_backend(backend):
        want = adkernels.sign_step(x_adv, grad, 0.02, lo=lo, hi=hi)
        x = x_adv.clone()
        ptr = x.data_ptr()
        assert adkernels.sign_step_(x, grad, 0.02, lo=lo, hi=hi) is x
        assert_equal(x, want, "sign_step_")
        assert x.data_ptr() == ptr and x.stride() == x_adv.clone().stride()
        for norm in ("linf", "l2"):
            want = adkernels.pgd_step(x_adv, grad, x_nat, 0.02, 0.04, norm=norm, lo=lo, hi=hi)
            x = x_adv.clone()
            assert adkernels.pgd_step_(x, grad, x_nat, 0.02, 0.04, norm=norm, lo=lo, hi=hi) is x
            assert_equal(x, want, f"pgd_step_ {norm}")


@needs_cpp
@pytest.mark.parametrize("isa", ["default", "avx2"])
def test_cpu_isa_variants_agree(isa, monkeypatch):
    shape = (4, 3, 19, 23)
    x_adv, grad, x_nat = make(shape, grad_dtype=torch.bfloat16, seed=9)
    lo, hi = make_bounds("element", shape, torch.Generator().manual_seed(3))
    args = (x_adv, grad, x_nat, 0.01, 0.03)
    base = [with_backend("cpu", adkernels.pgd_step, *args, norm=n, lo=lo, hi=hi) for n in ("linf", "l2")]
    monkeypatch.setenv("ADKERNELS_CPU_ISA", isa)
    other = [with_backend("cpu", adkernels.pgd_step, *args, norm=n, lo=lo, hi=hi) for n in ("linf", "l2")]
    assert_equal(other[0], base[0], "linf")
    l2_close(other[1], base[1])


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_empty_batch(backend):
    x = torch.zeros(0, 3, 4, 4)
    out = with_backend(backend, adkernels.pgd_step, x, x, x, 0.1, torch.zeros(0), norm="l2", lo=0.0, hi=1.0)
    assert out.shape == x.shape
    assert with_backend(backend, adkernels.sign_step_, x, x, torch.zeros(0)) is x


# ---- opcheck, torch.compile -------------------------------------------------------------------------

def op_args(kind):
    x_adv, grad, x_nat = make((3, 2, 5, 4), grad_dtype=torch.bfloat16, seed=1)
    step = torch.tensor([0.01, 0.02, 0.0])
    eps = torch.tensor([0.03, 0.0, 0.05])
    lo, hi = torch.tensor([0.1, 0.2]), torch.tensor([0.8, 0.9])
    if kind == "sign":
        return [(x_adv, grad, step, None, None, 1), (x_adv, grad, step, lo, hi, 20)]
    return [(x_adv, grad, x_nat, step, eps, 0, lo, hi, 20), (x_adv, grad, x_nat, step, eps, 1, None, None, 1),
            (x_adv.double(), grad, x_nat.double(), step.double(), eps.double(), 1, lo.double(), hi.double(), 20)]


@needs_cpp
@pytest.mark.parametrize("name", ["sign_step", "sign_step_", "pgd_step", "pgd_step_"])
def test_opcheck_cpp(name):
    op = getattr(torch.ops.adkernels, name).default
    for args in op_args("sign" if name.startswith("sign") else "pgd"):
        args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(op, args)


@needs_triton
@pytest.mark.parametrize("name", ["sign_step_triton", "sign_step_triton_", "pgd_step_triton", "pgd_step_triton_"])
def test_opcheck_triton(name):
    import adkernels.triton.attacks  # noqa: F401

    op = getattr(torch.ops.adkernels, name).default
    for args in op_args("sign" if name.startswith("sign") else "pgd"):
        args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(op, args)


@needs_cpp
def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    shape = (4, 3, 6, 6)
    x_adv, grad, x_nat = make(shape, seed=2)
    lo, hi = make_bounds("channel", shape, torch.Generator().manual_seed(0))
    eps = torch.tensor([0.01, 0.02, 0.03, 0.0])

    def step_fn(xa, g, xn, e):
        y = adkernels.pgd_step(xa, g, xn, e / 4, e, norm="linf", lo=lo, hi=hi)
        y = adkernels.pgd_step(y, g, xn, 0.5, 0.2, norm="l2", lo=lo, hi=hi)
        return adkernels.sign_step(y, g, 0.01, lo=lo, hi=hi)

    with adkernels.use_backend("cpu"):
        eager = step_fn(x_adv, grad, x_nat, eps)
        compiled = torch.compile(step_fn, backend="aot_eager", fullgraph=True)(x_adv, grad, x_nat, eps)

        def inplace_fn(xa, g, xn):
            adkernels.pgd_step_(xa, g, xn, 0.01, 0.03, lo=lo, hi=hi)
            return xa * 1

        a, b = x_adv.clone(), x_adv.clone()
        out_c = torch.compile(inplace_fn, backend="aot_eager", fullgraph=True)(a, grad, x_nat)
        out_e = inplace_fn(b, grad, x_nat)
    assert_equal(compiled, eager, "compiled step")
    assert_equal(a, b, "compiled in-place")
    assert_equal(out_c, out_e, "compiled in-place output")


# ---- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=needs_cpp), "reference"])
def test_bad_input(backend):
    x_adv, grad, x_nat = make((2, 3, 4, 4))
    with adkernels.use_backend(backend):
        cases = [
            (lambda: adkernels.pgd_step(x_adv, grad, x_nat, 0.1, -0.1), ValueError, "eps"),
            (lambda: adkernels.pgd_step(x_adv, grad, x_nat, 0.1, torch.tensor([0.1, -1.0])), ValueError, "eps"),
            (lambda: adkernels.sign_step(x_adv, grad, -0.1), ValueError, "step"),
            (lambda: adkernels.sign_step(x_adv, grad, float("nan")), ValueError, "step"),
            (lambda: adkernels.sign_step(x_adv, grad, torch.tensor([0.1, 0.2, 0.3])), ValueError, "step"),
            (lambda: adkernels.sign_step(x_adv, grad, 0.1, lo=0.9, hi=0.1), ValueError, "lo must be <= hi"),
            (lambda: adkernels.sign_step(x_adv, grad, 0.1, lo=torch.ones(1, 3, 1, 1), hi=torch.zeros(3, 1, 1)),
             ValueError, "lo must be <= hi"),
            (lambda: adkernels.sign_step(x_adv, grad, 0.1, lo=torch.zeros(5)), ValueError, "lo of shape"),
            (lambda: adkernels.sign_step(x_adv, grad[:1], 0.1), ValueError, "grad must have x's shape"),
            (lambda: adkernels.pgd_step(x_adv, grad, x_nat[..., :2], 0.1, 0.1), ValueError, "x_nat must have"),
            (lambda: adkernels.sign_step(x_adv.long(), grad, 0.1), TypeError, "x must be float32 or float64"),
            (lambda: adkernels.sign_step(x_adv.bfloat16(), grad, 0.1), TypeError,
             "Keep the adversarial state in float32"),
            (lambda: adkernels.sign_step(x_adv, grad.long(), 0.1), TypeError, "grad must be"),
            (lambda: adkernels.pgd_step(x_adv, grad, x_nat.double(), 0.1, 0.1), TypeError, "x_nat must be"),
            (lambda: adkernels.sign_step(x_adv, grad, "0.1"), TypeError, "step must be a number"),
            (lambda: adkernels.pgd_step(x_adv, grad, x_nat, 0.1, 0.1, norm="l1"), ValueError, "norm"),
            (lambda: adkernels.sign_step(torch.tensor(1.0), torch.tensor(1.0), 0.1), ValueError, "batch dimension"),
            (lambda: adkernels.sign_step(x_adv, grad.to("meta"), 0.1), ValueError, "grad is on meta"),
            (lambda: adkernels.sign_step(x_adv, grad, torch.zeros(2, device="meta")), ValueError, "step is on meta"),
            (lambda: adkernels.sign_step(x_adv, grad, 0.1, lo=torch.zeros(3, 1, 1, device="meta")), ValueError,
             "lo is on meta"),
        ]
        for fn, exc, match in cases:
            with pytest.raises(exc, match=match):
                fn()


# ---- random_start ---------------------------------------------------------------------------------------

from adkernels.reference import gumbel as ref_random  # noqa: E402

RS_BACKENDS = BACKENDS + ["reference"]


def rs_with_seed(backend, fn, x, eps, seed=7, **kw):
    torch.manual_seed(seed)
    return with_backend(backend, fn, x, eps, **kw)


def test_random_start_reference_distribution():
    # linf: uniform in [-eps, eps] per element (mean 0, variance eps^2 / 3).
    so = torch.tensor([11, 5])
    d = ref.random_start(torch.zeros(4, 50000, dtype=torch.float64), 0.5, so)
    assert d.abs().max() < 0.5
    assert abs(d.mean().item()) < 3 * 0.5 / (3 * d.numel()) ** 0.5
    assert abs(d.var().item() - 0.25 / 3) < 0.002
    # l2: (||delta|| / eps)^D is uniform on (0, 1) and the direction is isotropic.
    n, dim = 4000, 3
    d = ref.random_start(torch.zeros(n, dim, dtype=torch.float64), 2.0, so, norm="l2")
    r = (d.norm(dim=1) / 2.0) ** dim
    assert r.max() <= 1.0 and r.min() > 0
    ks = (torch.sort(r).values - torch.arange(1, n + 1, dtype=torch.float64) / n).abs().max().item()
    assert ks < 1.63 / n ** 0.5  # Kolmogorov-Smirnov at 1%
    assert (d.mean(dim=0).abs() < 4 * 2.0 / n ** 0.5).all()


def test_random_start_reference_is_philox():
    # The linf noise at eps = 1 around 0 is exactly 2u - 1 in float64 (exact for these u).
    so = torch.tensor([2 ** 61 + 3, 2 ** 40 + 1])
    d = ref.random_start(torch.zeros(3, 7, dtype=torch.float64), 1.0, so)
    u = ref_random.uniform(so, 21).double().reshape(3, 7)
    assert torch.equal(d, 2 * u - 1)
    assert bool(((u > 0) & (u < 1)).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_start_uniforms_bit_identical(backend):
    # eps = 1 around 0 in float64: the result is exactly 2u - 1, so this compares the kernels' u.
    x = torch.zeros(5, 3, 11, dtype=torch.float64)
    got = rs_with_seed(backend, adkernels.random_start, x, 1.0, seed=3)
    torch.manual_seed(3)
    so = adkernels.ops.gumbel.draw_seed_offset("t", None, x.device)
    u = ref_random.uniform(so, x.numel()).double().reshape(x.shape)
    assert_equal(got, 2 * u - 1, "u")


@needs_cpp
@given(shape=st.sampled_from([(1, 1), (3, 5), (2, 3, 4, 5), (4, 1, 7, 3), (2, 4099), (3, 2, 9, 9)]),
       dtype=st.sampled_from([torch.float32, torch.float64]), norm=st.sampled_from(["linf", "l2"]),
       bounds=st.sampled_from(BOUNDS), layout=st.sampled_from(["contiguous", "channels_last", "strided"]),
       eps_kind=st.sampled_from(["scalar", "tensor"]), seed=st.integers(0, 2 ** 16))
def test_random_start_cpu_matches_reference(shape, dtype, norm, bounds, layout, eps_kind, seed):
    compare_random_start("cpu", shape, dtype, norm, bounds, layout, eps_kind, seed)


@needs_triton
@settings(max_examples=10)
@given(shape=st.sampled_from([(1, 1), (3, 5), (2, 3, 4, 5), (2, 2, 5, 3)]),
       dtype=st.sampled_from([torch.float32, torch.float64]), norm=st.sampled_from(["linf", "l2"]),
       bounds=st.sampled_from(BOUNDS), layout=st.sampled_from(["contiguous", "channels_last"]),
       eps_kind=st.sampled_from(["scalar", "tensor"]), seed=st.integers(0, 2 ** 16))
def test_random_start_triton_matches_reference(shape, dtype, norm, bounds, layout, eps_kind, seed):
    compare_random_start("triton", shape, dtype, norm, bounds, layout, eps_kind, seed)


def compare_random_start(backend, shape, dtype, norm, bounds, layout, eps_kind, seed):
    x, _, _ = make(shape, dtype=dtype, seed=seed, layout=layout)
    g = torch.Generator().manual_seed(seed)
    lo, hi = make_bounds(bounds, shape, g, dtype)
    eps = 0.1 if eps_kind == "scalar" else torch.rand(shape[0], generator=g, dtype=dtype) * 0.2
    want = rs_with_seed("reference", adkernels.random_start, x, eps, seed=seed, norm=norm, lo=lo, hi=hi)
    got = rs_with_seed(backend, adkernels.random_start, x, eps, seed=seed, norm=norm, lo=lo, hi=hi)
    if layout == "channels_last" and len(shape) == 4:
        assert got.is_contiguous(memory_format=torch.channels_last)
    if norm == "linf":
        assert_equal(got, want, "random_start linf")
    else:  # log / cos / sin and the sum order differ by rounding
        l2_close(got, want)
    if bounds != "none":  # the box may move x itself: the ball holds without it
        return
    d = (got.double() - x.double()).reshape(shape[0], -1)
    e = torch.as_tensor(eps, dtype=torch.float64).reshape(-1, 1)
    tol = 4 * torch.finfo(dtype).eps
    assert bool((d.abs().max(dim=1).values <= e.reshape(-1) + tol).all() if norm == "linf"
                else (d.norm(dim=1) <= e.reshape(-1) * (1 + tol) + tol).all())


@pytest.mark.parametrize("backend", RS_BACKENDS)
def test_random_start_seeding_and_inplace(backend):
    x, _, _ = make((3, 2, 4, 4), seed=1)
    a = rs_with_seed(backend, adkernels.random_start, x, 0.1, seed=5, norm="l2", lo=0.0, hi=1.0)
    b = rs_with_seed(backend, adkernels.random_start, x, 0.1, seed=5, norm="l2", lo=0.0, hi=1.0)
    assert_equal(a, b, "same seed")
    c = with_backend(backend, adkernels.random_start, x, 0.1, norm="l2", lo=0.0, hi=1.0)
    assert not torch.equal(a, c), "successive calls must draw new noise"
    gen = torch.Generator().manual_seed(9)
    d1 = with_backend(backend, adkernels.random_start, x, 0.1, generator=gen)
    gen.manual_seed(9)
    d2 = with_backend(backend, adkernels.random_start, x, 0.1, generator=gen)
    assert_equal(d1, d2, "generator")
    for layout in ("contiguous", "channels_last", "strided"):
        xl, _, _ = make((3, 2, 4, 4), seed=1, layout=layout)
        y = xl.clone()
        torch.manual_seed(5)
        assert with_backend(backend, adkernels.random_start_, y, 0.1, norm="l2", lo=0.0, hi=1.0) is y
        assert_equal(y.contiguous(), a, f"in-place {layout}")
    assert not a.requires_grad


@pytest.mark.parametrize("backend", RS_BACKENDS)
def test_random_start_empty_and_zero_eps(backend):
    x = torch.zeros(0, 3, 4)
    assert with_backend(backend, adkernels.random_start, x, 0.1, norm="l2", lo=0.0, hi=1.0).shape == x.shape
    x, _, _ = make((2, 3, 5))
    for norm in ("linf", "l2"):
        assert_equal(with_backend(backend, adkernels.random_start, x, 0.0, norm=norm), x, "eps 0")


@needs_cpp
@pytest.mark.parametrize("name", ["random_start", "random_start_"])
def test_random_start_opcheck_cpp(name):
    op = getattr(torch.ops.adkernels, name).default
    x, _, _ = make((3, 2, 5, 4), seed=1)
    eps = torch.tensor([0.03, 0.0, 0.05])
    so = torch.tensor([123, 456])
    lo, hi = torch.tensor([0.1, 0.2]), torch.tensor([0.8, 0.9])
    for args in [(x, eps, so, 0, lo, hi, 20), (x, eps, so, 1, None, None, 1),
                 (x.double(), eps.double(), so, 1, lo.double(), hi.double(), 20)]:
        torch.library.opcheck(op, tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args))


@needs_triton
@pytest.mark.parametrize("name", ["random_start_triton", "random_start_triton_"])
def test_random_start_opcheck_triton(name):
    import adkernels.triton.attacks  # noqa: F401

    op = getattr(torch.ops.adkernels, name).default
    x, _, _ = make((3, 2, 5, 4), seed=1)
    eps = torch.tensor([0.03, 0.0, 0.05])
    so = torch.tensor([123, 456])
    lo, hi = torch.tensor([0.1, 0.2]), torch.tensor([0.8, 0.9])
    for args in [(x, eps, so, 0, lo, hi, 20), (x, eps, so, 1, None, None, 1)]:
        torch.library.opcheck(op, tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args))


@needs_cpp
def test_random_start_torch_compile_fullgraph():
    torch._dynamo.reset()
    x, _, _ = make((4, 3, 6, 6), seed=2)

    def fn(x):
        return adkernels.random_start(x, 0.03, norm="l2", lo=0.0, hi=1.0) - x

    with adkernels.use_backend("cpu"):
        torch.manual_seed(0)
        eager = fn(x)
        torch.manual_seed(0)
        compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)(x)
    assert_equal(compiled, eager, "compiled random_start")


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=needs_cpp), "reference"])
def test_random_start_bad_input(backend):
    x, _, _ = make((2, 3, 4))
    with adkernels.use_backend(backend):
        cases = [
            (lambda: adkernels.random_start(x, -0.1), ValueError, "eps"),
            (lambda: adkernels.random_start(x, torch.tensor([0.1, float("nan")])), ValueError, "eps"),
            (lambda: adkernels.random_start(x, torch.tensor([0.1, 0.2, 0.3])), ValueError, "eps"),
            (lambda: adkernels.random_start(x, 0.1, norm="l1"), ValueError, "norm"),
            (lambda: adkernels.random_start(x.bfloat16(), 0.1), TypeError, "x must be float32 or float64"),
            (lambda: adkernels.random_start(x, 0.1, lo=1.0, hi=0.0), ValueError, "lo must be <= hi"),
            (lambda: adkernels.random_start(x, 0.1, generator=3), TypeError, "generator"),
            (lambda: adkernels.random_start(torch.tensor(1.0), 0.1), ValueError, "batch dimension"),
        ]
        for fn, exc, match in cases:
            with pytest.raises(exc, match=match):
                fn()
