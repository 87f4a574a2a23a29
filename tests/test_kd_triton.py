"""Triton kd_fwd (``torch.ops.adkernels.kd_fwd_triton``) against the reference and the C++ op.

Runs on CPU under the Triton interpreter (conftest sets TRITON_INTERPRET=1 where there is no
CUDA), on the GPU otherwise. The interpreter is slow: shapes stay small, and multi-block rows
are covered by lowering ``adkernels.triton.kd.MAX_BLOCK`` instead of using large V.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

from hypothesis import given, strategies as st  # noqa: E402

import adkernels  # noqa: E402
from adkernels import _backend  # noqa: E402
from adkernels.reference import kd_loss as ref_kd_loss  # noqa: E402

from helpers import assert_close_to_gt, grads  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if not _backend.backend_available("triton", torch.device(DEVICE)):
    pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1 (set by conftest before the first @triton.jit)",
                allow_module_level=True)

import adkernels.triton.kd as tkd  # noqa: E402

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DIVS = ["kl", "reverse_kl", "jsd"]
DIV_ID = {"kl": 0, "reverse_kl": 1, "jsd": 2}
needs_cpp = pytest.mark.skipif(not adkernels._C_loaded(), reason="C++ extension not built")


@contextlib.contextmanager
def max_block(block):
    old = tkd.MAX_BLOCK
    tkd.MAX_BLOCK = block
    try:
        yield
    finally:
        tkd.MAX_BLOCK = old


def make(n, v, dtype, *, scale=3.0, seed=0, neg_inf=False, ignore="none", ignore_index=-100):
    """Logits (randn * scale, clamped to +-3 scale), targets, optional -inf at the same places."""
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(n, v, generator=g, dtype=torch.float64).clamp(-3, 3) * scale)
    t = (torch.randn(n, v, generator=g, dtype=torch.float64).clamp(-3, 3) * scale)
    y = torch.randint(0, v, (n,), generator=g)
    if neg_inf and v > 1:
        mask = torch.rand(n, v, generator=g) < 0.3
        mask[torch.arange(n), y] = False  # the target and so at least one entry per row stay finite
        s = s.masked_fill(mask, float("-inf"))
        t = t.masked_fill(mask, float("-inf"))
    if ignore == "some":
        y[torch.rand(n, generator=g) < 0.4] = ignore_index
    elif ignore == "all":
        y[:] = ignore_index
    return s.to(dtype).to(DEVICE), t.to(dtype).to(DEVICE), y.to(DEVICE)


def run(backend, s, t, y, need, weight, **kw):
    """Loss and the gradients asked for by ``need`` ("s", "t" or "st") of sum(loss * weight)."""
    s = s.detach().clone().requires_grad_("s" in need)
    t = t.detach().clone().requires_grad_("t" in need)
    with adkernels.use_backend(backend):
        loss = adkernels.kd_loss(s, t, y, **kw) if backend != "reference" else ref_kd_loss(s, t, y, **kw)
    inputs = [x for x, c in ((s, "s"), (t, "t")) if c in need]
    if not loss.requires_grad:  # the reference with alpha = 0 never touches the teacher
        return loss.detach(), tuple(torch.zeros_like(x) for x in inputs)
    w = weight.to(loss.dtype) if weight is not None else None
    return loss.detach(), grads(loss, inputs, w)


def compare(s, t, y, need="s", weight=None, **kw):
    """Triton vs reference (same dtype), both judged against the float64 reference."""
    dtype = s.dtype
    loss_f, g_f = run("triton", s, t, y, need, weight, **kw)
    loss_r, g_r = run("reference", s, t, y, need, weight, **kw)
    loss_g, g_g = run("reference", s.double(), t.double(), y, need, weight, **kw)
    assert loss_f.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert loss_f.shape == loss_r.shape
    assert_close_to_gt(loss_f, loss_r, loss_g, dtype, name="loss")
    for name, a, b, c in zip(need, g_f, g_r, g_g):
        assert a.dtype == dtype and a.shape == s.shape
        assert_close_to_gt(a, b, c, dtype, name=f"d {name}")


# ---- kd_loss on the Triton backend vs the reference -------------------------------------------------

@given(
    n=st.integers(0, 5),
    v=st.integers(1, 300),
    dtype=st.sampled_from(DTYPES),
    div=st.sampled_from(DIVS),
    T=st.sampled_from([0.5, 1.0, 20.0]) | st.floats(0.5, 20.0),
    alpha=st.sampled_from([0.0, 0.3, 1.0]),
    beta=st.sampled_from([0.5]) | st.floats(0.05, 0.95),
    ls=st.sampled_from([0.0, 0.1]),
    scale=st.sampled_from([1.0, 30.0, 1e4 / 3]),
    ignore=st.sampled_from(["none", "some", "all", "no_target"]),
    ignore_index=st.sampled_from([-100, 1]),
    neg_inf=st.booleans(),
    need=st.sampled_from(["s", "st", "t"]),
    reduction=st.sampled_from(["batchmean", "mean", "sum", "none"]),
    block=st.sampled_from([16, 64, 4096]),
    seed=st.integers(0, 2**16),
)
def test_triton_matches_reference(n, v, dtype, div, T, alpha, beta, ls, scale, ignore, ignore_index,
                                  neg_inf, need, reduction, block, seed):
    if ignore == "no_target":
        alpha = 1.0  # CE needs a target
    if neg_inf:
        ls = 0.0  # smoothing puts weight on the -inf logits: an infinite loss, in every backend
    s, t, y = make(n, v, dtype, scale=scale, seed=seed, neg_inf=neg_inf,
                   ignore="none" if ignore == "no_target" else ignore, ignore_index=ignore_index)
    if ignore == "no_target":
        y = None
    # grad_output != 1: a random weight per row ("none"), or 2 for the reduced loss.
    g = torch.Generator().manual_seed(seed + 1)
    weight = torch.rand(n, generator=g).add_(0.5).to(DEVICE) if reduction == "none" else None
    with max_block(block):
        compare(s, t, y, need, weight, temperature=T, alpha=alpha, divergence=div, beta=beta,
                ignore_index=ignore_index, label_smoothing=ls, reduction=reduction)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("div", DIVS)
def test_multi_block_rows(dtype, div):
    """Rows of 11 blocks of 32 with a partial last one; CE at T != 1 with smoothing, teacher grad."""
    s, t, y = make(3, 333, dtype, scale=5.0, seed=DIV_ID[div], ignore="some")
    with max_block(32):
        compare(s, t, y, "st", temperature=2.5, alpha=0.3, divergence=div, beta=0.3, label_smoothing=0.1)


@pytest.mark.parametrize("div", DIVS)
def test_leading_dims_and_neg_inf_blocks(div):
    """[B, S, V] logits; a whole block of -inf in every row (masked vocabulary)."""
    s, t, y = make(6, 80, torch.float32, seed=7)
    s[:, 16:32] = float("-inf")
    t[:, 16:32] = float("-inf")
    y = y % 16
    with max_block(16):
        for red in ("none", "sum"):
            compare(s.view(2, 3, 80), t.view(2, 3, 80), y.view(2, 3), "st",
                    torch.rand(2, 3).to(DEVICE) if red == "none" else None,
                    temperature=3.0, alpha=0.5, divergence=div, reduction=red)


def test_gradcheck_float64():
    """Gradients against finite differences (JSD: the most involved; the others are checked
    against the reference above)."""
    s, t, y = make(2, 5, torch.float64, seed=3)
    y[1] = -100
    s.requires_grad_()
    t.requires_grad_()
    f = lambda a, b: adkernels.kd_loss(a, b, y, temperature=1.7, alpha=0.6, divergence="jsd", beta=0.3,
                                       label_smoothing=0.1, reduction="sum")
    with adkernels.use_backend("triton"):
        assert torch.autograd.gradcheck(f, (s, t))


def test_jsd_denormal_probabilities_stay_finite():
    """p_t denormal (lpt ~ -103.5 in float32) and p_s = 0: beta * p_t underflows to 0, and a plain
    log(beta p_t + (1-beta) p_s) would be -inf, making p_t (lpt - log M) infinite."""
    s = torch.tensor([[0.0, -200.0]], device=DEVICE)
    t = torch.tensor([[0.0, -103.5]], device=DEVICE)
    for beta in (0.1, 0.5):
        loss, gs, gt = torch.ops.adkernels.kd_fwd_triton(s, t, None, 1.0, 1.0, 2, beta, -100, 0.0, True, True)
        for x in (loss, gs, gt):
            torch.testing.assert_close(x, torch.zeros_like(x), atol=1e-6, rtol=0)


def test_all_ignored_and_empty_give_zero():
    for n in (0, 3):
        s, t, y = make(n, 8, torch.float32, ignore="all")
        s.requires_grad_()
        with adkernels.use_backend("triton"):
            loss = adkernels.kd_loss(s, t, y, alpha=0.5)
        (gs,) = grads(loss, [s])
        assert loss.item() == 0.0
        assert gs.shape == s.shape and (gs == 0).all()


# ---- the op itself ---------------------------------------------------------------------------------

@pytest.fixture
def poisoned_outputs(monkeypatch):
    """NaN in every output the op allocates: whatever the kernel does not write stays NaN."""
    real = tkd.kd_fwd_fake

    def poisoned(*args):
        outs = real(*args)
        for x in outs:
            x.fill_(float("nan"))
        return outs

    monkeypatch.setattr(tkd, "kd_fwd_fake", poisoned)


OP_CASES = [
    # (dtype, target kind, T, alpha, div, beta, ls, grad_s, grad_t)
    (torch.float32, "some", 2.0, 0.5, 2, 0.5, 0.1, True, True),
    (torch.float32, None, 1.0, 1.0, 0, 0.5, 0.0, True, False),
    (torch.bfloat16, "some", 1.0, 0.3, 1, 0.5, 0.0, False, True),
    (torch.float16, "all", 4.0, 0.0, 0, 0.5, 0.2, True, True),
    (torch.float64, "some", 3.0, 0.7, 2, 0.2, 0.1, True, True),
]


@needs_cpp
@pytest.mark.parametrize("case", OP_CASES)
def test_op_writes_every_output_and_matches_cpp_op(case, poisoned_outputs):
    dtype, kind, T, alpha, div, beta, ls, want_s, want_t = case
    s, t, y = make(5, 45, dtype, seed=11, ignore=kind or "none")
    y = None if kind is None else y
    args = (s, t, y, T, alpha, div, beta, -100, ls, want_s, want_t)
    with max_block(16):
        loss, gs, gt = torch.ops.adkernels.kd_fwd_triton(*args)
    c_loss, c_gs, c_gt = torch.ops.adkernels.kd_fwd(*[a.cpu() if isinstance(a, torch.Tensor) else a for a in args])
    assert loss.dtype == c_loss.dtype and loss.shape == (5,)
    assert torch.isfinite(loss).all()
    for got, want, asked in ((gs, c_gs, want_s), (gt, c_gt, want_t)):
        assert got.dtype == dtype and got.shape == (want.shape if asked else (0,))
        assert torch.isfinite(got).all()
    if y is not None:
        ignored = (y == -100).cpu()
        assert (loss.cpu()[ignored] == 0).all()
        for got, asked in ((gs, want_s), (gt, want_t)):
            if asked:
                assert (got.cpu()[ignored] == 0).all()
    tol = dict(atol=1e-12, rtol=1e-12) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss.cpu(), c_loss, **tol)
    low = dict(atol=2 ** -7, rtol=2 ** -7) if dtype in (torch.float16, torch.bfloat16) else tol
    for got, want in ((gs, c_gs), (gt, c_gt)):
        torch.testing.assert_close(got.cpu(), want, **low)


@needs_cpp
def test_op_schema_matches_kd_fwd():
    a = torch.ops.adkernels.kd_fwd.default._schema
    b = torch.ops.adkernels.kd_fwd_triton.default._schema
    assert [(x.name, str(x.type)) for x in a.arguments] == [(x.name, str(x.type)) for x in b.arguments]
    assert [str(x.type) for x in a.returns] == [str(x.type) for x in b.returns]


def test_op_edge_shapes():
    for n, v in ((0, 7), (3, 0), (0, 0)):
        s = torch.randn(n, v, device=DEVICE)
        loss, gs, gt = torch.ops.adkernels.kd_fwd_triton(s, s.clone(), None, 1.0, 1.0, 0, 0.5, -100, 0.0, True, False)
        assert loss.shape == (n,) and (loss == 0).all()
        assert gs.shape == (n, v) and gt.shape == (0,)
    s, t, y = make(2, 1, torch.float32)  # V = 1: every distribution is a point mass
    loss, gs, gt = torch.ops.adkernels.kd_fwd_triton(s, t, y, 2.0, 0.5, 2, 0.5, -100, 0.1, True, True)
    for x in (loss, gs, gt):
        torch.testing.assert_close(x, torch.zeros_like(x), atol=1e-6, rtol=0)


def test_op_out_of_range_target_is_nan():
    """No host sync to check targets in the op (kd_loss checks them): a bad row is NaN."""
    s, t, y = make(3, 10, torch.float32)
    y[1] = 10
    loss, gs, _ = torch.ops.adkernels.kd_fwd_triton(s, t, y, 1.0, 0.5, 0, 0.5, -100, 0.0, True, False)
    assert torch.isnan(loss[1]) and torch.isnan(gs[1]).all()
    assert torch.isfinite(loss[[0, 2]]).all() and torch.isfinite(gs[[0, 2]]).all()


def test_op_rejects_bad_input():
    s, t, y = make(3, 10, torch.float32)
    op = torch.ops.adkernels.kd_fwd_triton
    with pytest.raises(ValueError, match="same shape"):
        op(s, t[:, :5].contiguous(), y, 1.0, 0.5, 0, 0.5, -100, 0.0, True, False)
    with pytest.raises(TypeError, match="float"):
        op(s, t.double(), y, 1.0, 0.5, 0, 0.5, -100, 0.0, True, False)
    with pytest.raises(ValueError, match="contiguous"):
        op(s.t(), t.t(), None, 1.0, 1.0, 0, 0.5, -100, 0.0, True, False)
    with pytest.raises(ValueError, match="divergence"):
        op(s, t, y, 1.0, 0.5, 3, 0.5, -100, 0.0, True, False)
    with pytest.raises(ValueError, match="temperature"):
        op(s, t, y, 0.0, 0.5, 0, 0.5, -100, 0.0, True, False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    s, t, y = make(4, 21, dtype, seed=5, ignore="some")
    op = torch.ops.adkernels.kd_fwd_triton.default
    torch.library.opcheck(op, (s, t, y, 2.0, 0.5, 2, 0.3, -100, 0.1, True, True))
    torch.library.opcheck(op, (s, t, None, 1.0, 1.0, 1, 0.5, -100, 0.0, False, True))


# ---- the compiled (GPU) path, without a GPU ------------------------------------------------------------

_COMPILE_SCRIPT = textwrap.dedent(
    """
    import triton, triton.language as tl
    from triton.backends.compiler import GPUTarget
    from adkernels.triton.kd import _kd_fwd_kernel

    def sig(p, loss):
        return {"s_ptr": p, "t_ptr": p, "y_ptr": "*i64", "loss_ptr": loss, "gs_ptr": p, "gt_ptr": p,
                "V": "i32", "ignore_index": "i32", "temperature": "fp64", "alpha": "fp64",
                "beta": "fp64", "label_smoothing": "fp64"}

    names = ["ACC", "DIV", "NEED_DIV", "NEED_CE", "SAME_T", "NEED_ZSUM", "HAS_TARGET", "WRITE_GS",
             "WRITE_GT", "BLOCK"]
    for p, loss, vals in [("*fp64", "*fp64", (tl.float64, 2, True, True, False, True, True, True, True, 4096)),
                          ("*bf16", "*fp32", (tl.float32, 0, True, True, True, False, True, True, False, 4096))]:
        src = triton.compiler.ASTSource(
            fn=_kd_fwd_kernel, signature={**sig(p, loss), **{k: "constexpr" for k in names}},
            constexprs=dict(zip(names, vals)))
        triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
    print("compiled")
    """
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run the compiled kernel")
def test_kernel_compiles_for_gpu():
    """The interpreter accepts code that the compiler rejects (non-constexpr globals, loop-carried
    type changes): compile two variants for sm_90 to PTX/cubin, without launching them."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    r = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, cwd=root, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-4000:]
