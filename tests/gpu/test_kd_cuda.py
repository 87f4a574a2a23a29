"""kd_loss on CUDA tensors: the CUDA C++ kernel and the Triton kernel against the reference.

Skipped where CUDA is not available (conftest). Where it is, a backend that is missing (the
CUDA extension not built, Triton not installed) skips its tests, or fails them when
ADKERNELS_REQUIRE_GPU_BACKENDS=1 (set by benchmarks/gpu_suite.sh, so that a broken build
cannot pass as skipped tests).

Each comparison judges the backend and the reference in the same dtype against a float64
reference on the same (rounded) inputs (tests/helpers.py: assert_close_to_gt).
"""
from __future__ import annotations


import pytest
import torch

import adkernels
from adkernels import _backend
from adkernels.reference import kd_loss as ref_kd_loss

from helpers import assert_close_to_gt, grads, require_backend

pytestmark = pytest.mark.gpu

DEVICE = "cuda"
BACKENDS = ["cuda", "triton"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
DIVS = ["kl", "reverse_kl", "jsd"]
DIV_ID = {"kl": 0, "reverse_kl": 1, "jsd": 2}
# Odd vocabularies (not multiples of a block or vector width) and the sizes of real LMs.
SHAPES = [(41, 1271), (5, 32000), (3, 128256)]


def require(backend: str, device: str = DEVICE) -> None:
    require_backend(backend, device)


def make(n, v, dtype, *, device=None, scale=3.0, seed=0, ignore="none", ignore_index=-100, neg_inf=False):
    """Student and (correlated) teacher logits, targets; optional -inf at the same places in both."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, v, generator=g, dtype=torch.float64) * scale
    t = 0.6 * s + 0.8 * scale * torch.randn(n, v, generator=g, dtype=torch.float64)
    y = torch.randint(0, max(v, 1), (n,), generator=g)
    if neg_inf and v > 1:
        mask = torch.rand(n, v, generator=g) < 0.3
        mask[torch.arange(n), y] = False  # the target (so one entry per row) stays finite
        s = s.masked_fill(mask, float("-inf"))
        t = t.masked_fill(mask, float("-inf"))
    if ignore == "some":
        y[torch.rand(n, generator=g) < 0.4] = ignore_index
    elif ignore == "alternate":
        y[::2] = ignore_index
    elif ignore == "all":
        y[:] = ignore_index
    device = device or DEVICE
    return s.to(dtype).to(device), t.to(dtype).to(device), y.to(device)


def run(backend, s, t, y, need, weight=None, **kw):
    """Loss and the gradients of sum(loss * weight) asked for by ``need`` ("s", "t" or "st")."""
    s = s.detach().requires_grad_("s" in need)  # detach, not clone: keeps the strides
    t = t.detach().requires_grad_("t" in need)
    if backend == "reference":
        loss = ref_kd_loss(s, t, y, **kw)
    else:
        with adkernels.use_backend(backend):
            loss = adkernels.kd_loss(s, t, y, **kw)
    inputs = [x for x, c in ((s, "s"), (t, "t")) if c in need]
    w = weight.to(loss.dtype) if weight is not None else None
    return loss.detach(), grads(loss, inputs, w) if inputs else ()


def compare(backend, s, t, y, need="s", weight=None, **kw):
    """``backend`` vs the reference in the same dtype, both judged against float64."""
    dtype = s.dtype
    loss_f, g_f = run(backend, s, t, y, need, weight, **kw)
    loss_r, g_r = run("reference", s, t, y, need, weight, **kw)
    loss_g, g_g = run("reference", s.double(), t.double(), y, need, weight, **kw)
    assert loss_f.device.type == torch.device(DEVICE).type
    assert loss_f.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert loss_f.shape == loss_r.shape
    assert_close_to_gt(loss_f, loss_r, loss_g, dtype, name=f"{backend} loss")
    for name, a, b, c in zip(need, g_f, g_r, g_g):
        assert a.dtype == dtype and a.shape == s.shape and a.device == s.device
        assert_close_to_gt(a, b, c, dtype, name=f"{backend} d {name}")
    return loss_f, g_f


# (temperature, alpha, beta, label_smoothing, ignore pattern, gradients asked for)
OPTIONS = {
    "hinton": (1.0, 1.0, 0.5, 0.0, "none", "s"),
    "mixed_ce": (2.0, 0.5, 0.5, 0.1, "some", "st"),
    "hot_teacher": (4.0, 0.8, 0.2, 0.0, "alternate", "t"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("div", DIVS)
@pytest.mark.parametrize("n,v", SHAPES)
@pytest.mark.parametrize("opts", list(OPTIONS))
def test_matches_reference(backend, dtype, div, n, v, opts):
    require(backend)
    T, alpha, beta, ls, ignore, need = OPTIONS[opts]
    s, t, y = make(n, v, dtype, seed=100 * DIV_ID[div] + 10 * list(OPTIONS).index(opts) + n, ignore=ignore)
    compare(backend, s, t, y, need, temperature=T, alpha=alpha, divergence=div, beta=beta,
            label_smoothing=ls, reduction="sum")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["batchmean", "mean", "sum", "none"])
@pytest.mark.parametrize("ignore", ["none", "some", "alternate", "all"])
@pytest.mark.parametrize("ignore_index", [-100, 3])
def test_ignore_patterns_and_reductions(backend, reduction, ignore, ignore_index):
    require(backend)
    s, t, y = make(13, 1271, torch.float32, seed=5, ignore=ignore, ignore_index=ignore_index)
    g = torch.Generator().manual_seed(1)
    weight = torch.rand(13, generator=g).add_(0.5).to(DEVICE) if reduction == "none" else None
    loss, (gs, gt) = compare(backend, s, t, y, "st", weight, temperature=2.0, alpha=0.4, divergence="jsd",
                             beta=0.3, ignore_index=ignore_index, label_smoothing=0.1, reduction=reduction)
    ignored = y == ignore_index
    assert (gs[ignored] == 0).all() and (gt[ignored] == 0).all()
    if reduction == "none":
        assert (loss[ignored] == 0).all()
    if ignore == "all":
        assert (loss == 0).all() and not torch.isnan(loss).any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("div", DIVS)
@pytest.mark.parametrize("v", [1271, 32000])
def test_neg_inf_masks(backend, dtype, div, v):
    """-inf at the same places in both logits (a masked vocabulary) contributes nothing."""
    require(backend)
    s, t, y = make(7, v, dtype, seed=v + DIV_ID[div], ignore="some", neg_inf=True)
    loss, g = compare(backend, s, t, y, "st", temperature=2.0, alpha=0.6, divergence=div, reduction="none",
                      weight=torch.rand(7, device=DEVICE) + 0.5)
    assert torch.isfinite(loss).all() and all(torch.isfinite(x).all() for x in g)
    masked = torch.isinf(s)
    assert all((x[masked] == 0).all() for x in g)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("div", DIVS)
@pytest.mark.parametrize("scale", [30.0, 1e4 / 3])
def test_extreme_logits(backend, div, scale):
    require(backend)
    s, t, y = make(9, 1271, torch.float32, scale=scale, seed=2, ignore="some")
    loss, g = compare(backend, s, t, y, "st", temperature=3.0, alpha=0.7, divergence=div, label_smoothing=0.1)
    assert torch.isfinite(loss).all() and all(torch.isfinite(x).all() for x in g)


@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_dims_non_contiguous_and_small_v(backend):
    require(backend)
    for v in (1, 2, 7, 33, 129, 1025):  # below, at and just past the block sizes
        s, t, y = make(6, v, torch.float32, seed=v, ignore="some")
        compare(backend, s, t, y, "st", temperature=1.5, alpha=0.5, divergence="kl", label_smoothing=0.1)
    s, t, y = make(12, 333, torch.bfloat16, seed=4)
    compare(backend, s.view(3, 4, 333), t.view(3, 4, 333), y.view(3, 4), "st", temperature=2.0, alpha=0.5,
            reduction="none", weight=torch.rand(3, 4, device=DEVICE))
    sv = torch.randn(333, 24, device=DEVICE).t()[::2]  # [12, 333], transposed
    tv = torch.randn(12, 666, device=DEVICE)[:, ::2]  # [12, 333], strided columns
    assert not sv.is_contiguous() and not tv.is_contiguous()
    compare(backend, sv, tv, y, "st", temperature=2.0, alpha=0.5, divergence="reverse_kl")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    require(backend)
    for n, v in ((0, 7), (0, 32000)):
        s, t, y = make(n, v, torch.float32)
        for reduction in ("batchmean", "sum", "none"):
            loss, (gs, gt) = run(backend, s, t, y, "st", alpha=0.5, reduction=reduction)
            assert loss.shape == ((0,) if reduction == "none" else ())
            assert not torch.isnan(loss).any() and gs.shape == s.shape and gt.shape == t.shape


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("div", DIVS)
def test_gradcheck_float64(backend, div):
    require(backend)
    s, t, y = make(4, 37, torch.float64, seed=3)
    y[1] = -100
    s.requires_grad_()
    t.requires_grad_()
    f = lambda a, b: adkernels.kd_loss(a, b, y, temperature=1.7, alpha=0.6, divergence=div, beta=0.3,
                                       label_smoothing=0.1, reduction="sum")
    with adkernels.use_backend(backend):
        assert torch.autograd.gradcheck(f, (s, t))


# ---- the op itself ---------------------------------------------------------------------------------

OP_CASES = [
    # (dtype, ignore, T, alpha, div, beta, ls, grad_s, grad_t)
    (torch.float32, "some", 2.0, 0.5, 2, 0.5, 0.1, True, True),
    (torch.float32, None, 1.0, 1.0, 0, 0.5, 0.0, True, False),
    (torch.float32, None, 1.0, 1.0, 1, 0.5, 0.0, False, True),
    (torch.float32, "some", 3.0, 0.6, 0, 0.5, 0.0, True, True),
    (torch.float32, "none", 1.0, 1.0, 1, 0.5, 0.0, True, True),
    (torch.bfloat16, "some", 1.0, 0.3, 1, 0.5, 0.0, False, True),
    (torch.float16, "all", 4.0, 0.0, 0, 0.5, 0.2, True, True),
    (torch.float64, "some", 3.0, 0.7, 2, 0.2, 0.1, True, True),
    (torch.float64, "none", 0.5, 0.0, 0, 0.5, 0.1, True, True),
]


@pytest.mark.parametrize("case", OP_CASES)
@pytest.mark.parametrize("v", [45, 1271, 32000])
def test_cuda_op_matches_cpu_op(case, v):
    """The CUDA kernel and the CPU kernel of kd_fwd (same contract), all outputs, fresh memory."""
    require("cuda")
    dtype, ignore, T, alpha, div, beta, ls, want_s, want_t = case
    s, t, y = make(6, v, dtype, seed=11, ignore=ignore or "none")
    y = None if ignore is None else y
    args = (s, t, y, T, alpha, div, beta, -100, ls, want_s, want_t)
    # NaN left in the caching allocator: an output the kernel forgets to write shows up.
    torch.full((4 * 6 * v,), float("nan"), device=DEVICE, dtype=torch.float64)
    loss, gs, gt = torch.ops.adkernels.kd_fwd(*args)
    c_loss, c_gs, c_gt = torch.ops.adkernels.kd_fwd(*[a.cpu() if isinstance(a, torch.Tensor) else a for a in args])
    assert loss.is_cuda and loss.dtype == c_loss.dtype and loss.shape == (6,)
    assert torch.isfinite(loss).all()
    for got, want, asked in ((gs, c_gs, want_s), (gt, c_gt, want_t)):
        assert got.is_cuda and got.dtype == dtype and got.shape == (want.shape if asked else (0,))
        assert torch.isfinite(got).all()
    if y is not None:
        ignored = y == -100
        assert (loss[ignored] == 0).all()
        for got, asked in ((gs, want_s), (gt, want_t)):
            if asked:
                assert (got[ignored] == 0).all()
    tol = dict(atol=1e-12, rtol=1e-10) if dtype == torch.float64 else dict(atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(loss.cpu(), c_loss, **tol)
    low = dict(atol=2 ** -7, rtol=2 ** -7) if dtype in (torch.float16, torch.bfloat16) else tol
    for got, want in ((gs, c_gs), (gt, c_gt)):
        torch.testing.assert_close(got.cpu(), want, **low)


def test_cuda_op_edge_shapes_and_bad_target():
    require("cuda")
    op = torch.ops.adkernels.kd_fwd
    for n, v in ((0, 7), (3, 0), (0, 0)):
        s = torch.randn(n, v, device=DEVICE)
        loss, gs, gt = op(s, s.clone(), None, 1.0, 1.0, 0, 0.5, -100, 0.0, True, False)
        assert loss.shape == (n,) and (loss == 0).all()
        assert gs.shape == (n, v) and gt.shape == (0,)
    s, t, y = make(2, 1, torch.float32)  # V = 1: every distribution is a point mass
    for x in op(s, t, y, 2.0, 0.5, 2, 0.5, -100, 0.1, True, True):
        torch.testing.assert_close(x, torch.zeros_like(x), atol=1e-6, rtol=0)
    # No host sync to check targets in the op (kd_loss checks them): a bad row is NaN.
    s, t, y = make(3, 10, torch.float32)
    y[1] = 10
    loss, gs, _ = op(s, t, y, 1.0, 0.5, 0, 0.5, -100, 0.0, True, False)
    assert torch.isnan(loss[1]) and torch.isnan(gs[1]).all()
    assert torch.isfinite(loss[[0, 2]]).all() and torch.isfinite(gs[[0, 2]]).all()
    with pytest.raises(ValueError, match="out of range"):
        adkernels.kd_loss(s, t, y, alpha=0.5)


def test_cuda_op_rejects_bad_input():
    require("cuda")
    op = torch.ops.adkernels.kd_fwd
    s, t, y = make(3, 10, torch.float32)
    with pytest.raises(RuntimeError, match="same shape"):
        op(s, t[:, :5].contiguous(), y, 1.0, 0.5, 0, 0.5, -100, 0.0, True, False)
    with pytest.raises(RuntimeError, match="dtypes differ"):
        op(s, t.double(), y, 1.0, 0.5, 0, 0.5, -100, 0.0, True, False)
    with pytest.raises(RuntimeError, match="contiguous"):
        op(s.t(), t.t(), None, 1.0, 1.0, 0, 0.5, -100, 0.0, True, False)
    with pytest.raises(RuntimeError, match="same CUDA device"):
        op(s, t.cpu(), None, 1.0, 1.0, 0, 0.5, -100, 0.0, True, False)
    with pytest.raises(RuntimeError, match="target"):
        op(s, t, y.cpu(), 1.0, 0.5, 0, 0.5, -100, 0.0, True, False)
    with pytest.raises(RuntimeError, match="divergence"):
        op(s, t, y, 1.0, 0.5, 3, 0.5, -100, 0.0, True, False)
    with pytest.raises(RuntimeError, match="temperature"):
        op(s, t, y, 0.0, 0.5, 0, 0.5, -100, 0.0, True, False)


def _op_for(backend):
    require(backend)
    if backend == "cuda":
        return torch.ops.adkernels.kd_fwd.default
    import adkernels.triton.kd  # noqa: F401  defines adkernels::kd_fwd_triton

    return torch.ops.adkernels.kd_fwd_triton.default


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck(backend, dtype):
    op = _op_for(backend)
    s, t, y = make(5, 1271, dtype, seed=5, ignore="some")
    for args in [
        (s, t, y, 2.0, 0.5, 2, 0.3, -100, 0.1, True, True),
        (s, t, None, 1.0, 1.0, 0, 0.5, -100, 0.0, True, False),
        (s, t, None, 1.0, 1.0, 1, 0.5, -100, 0.0, False, True),
    ]:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    require(backend)
    torch._dynamo.reset()
    s, t, y = make(6, 1271, torch.float32, seed=9, ignore="some")
    s.requires_grad_()
    t.requires_grad_()

    def f(a, b, c):
        return adkernels.kd_loss(a, b, c, temperature=2.0, alpha=0.5, divergence="jsd") * 3

    cf = torch.compile(f, fullgraph=True)
    with adkernels.use_backend(backend):
        lc = cf(s, t, y)
        le = f(s, t, y)
    torch.testing.assert_close(lc, le)
    for a, b in zip(grads(lc, [s, t], torch.ones_like(lc)), grads(le, [s, t], torch.ones_like(le))):
        torch.testing.assert_close(a, b)


def test_auto_picks_cuda_kernels():
    require("cuda")
    with adkernels.use_backend("auto"):
        assert _backend.resolve(torch.device(DEVICE)) == "cuda"


def test_runs_on_current_device_and_stream():
    """Launches go to the current stream; results equal a default-stream run."""
    require("cuda")
    s, t, y = make(8, 32000, torch.bfloat16, seed=1, ignore="some")
    args = (s, t, y, 2.0, 0.5, 0, 0.5, -100, 0.1, True, True)
    want = torch.ops.adkernels.kd_fwd(*args)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = torch.ops.adkernels.kd_fwd(*args)
    torch.cuda.current_stream().wait_stream(side)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
