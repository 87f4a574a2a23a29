"""Triton adversarial losses (``adv_source_fwd_triton``, ``adv_binary_fwd_triton``) against the reference.

Runs on CPU under the Triton interpreter (conftest sets TRITON_INTERPRET=1 where there is no
CUDA), on the GPU otherwise. Shapes stay small (the interpreter is slow); the multi-block and
multi-chunk paths are covered by lowering the block sizes.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

pytest.importorskip("triton")

from hypothesis import given, settings, strategies as st  # noqa: E402

import adkernels  # noqa: E402
from adkernels import _backend  # noqa: E402

from helpers import assert_close_to_gt, grads  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if not _backend.backend_available("triton", torch.device(DEVICE)):
    pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1 (set by conftest before the first @triton.jit)",
                allow_module_level=True)

import adkernels.triton.adversarial as tadv  # noqa: E402

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
PARAMS = {"softmax": 3, "binary_tree": 2}


@contextlib.contextmanager
def small_blocks():
    """Blocks of 16 rows / 256 elements and chunks of 512: the multi-block paths at small sizes."""
    import adkernels.ops.adversarial as oadv

    old = tadv.ROWS_BLOCK, tadv.ELEM_BLOCK, tadv.CHUNK, oadv.CHUNK
    tadv.ROWS_BLOCK, tadv.ELEM_BLOCK, tadv.CHUNK, oadv.CHUNK = 16, 256, 512, 512
    try:
        yield
    finally:
        tadv.ROWS_BLOCK, tadv.ELEM_BLOCK, tadv.CHUNK, oadv.CHUNK = old


def run(backend, fn, inputs, *args, weight=None, **kw):
    xs = [x.detach().clone().requires_grad_() for x in inputs]
    with adkernels.use_backend(backend):
        loss = fn(*xs, *args, **kw) if len(xs) > 1 else fn(xs[0], *args, **kw)
    w = None if weight is None else weight.to(loss.dtype)
    return loss.detach(), grads(loss, xs, w)


def compare(fn, inputs, *args, weight=None, **kw):
    dtype = inputs[0].dtype
    lf, gf = run("triton", fn, inputs, *args, weight=weight, **kw)
    lr, gr = run("reference", fn, inputs, *args, weight=weight, **kw)
    lg, gg = run("reference", fn, [x.double() for x in inputs], *args, weight=weight, **kw)
    assert lf.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close_to_gt(lf, lr, lg, dtype, k=4.0, name="triton loss")
    for a, b, c in zip(gf, gr, gg):
        assert a.dtype == dtype
        assert_close_to_gt(a, b, c, dtype, name="triton grad")
    return lf, gf


@settings(max_examples=12)
@given(
    n=st.integers(0, 40),
    param=st.sampled_from(list(PARAMS)),
    which=st.sampled_from(["disc", "minimax", "nonsat"]),
    dtype=st.sampled_from(DTYPES),
    scale=st.sampled_from([1.0, 30.0, 1e4]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    seed=st.integers(0, 2 ** 16),
)
def test_source_losses_match_reference(n, param, which, dtype, scale, reduction, seed):
    if dtype == torch.float16:
        scale = min(scale, 3e3)
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, PARAMS[param], generator=g, dtype=torch.float64) * scale).to(dtype).to(DEVICE)
    src = torch.randint(0 if which == "disc" else 1, 3, (n,), generator=g).to(DEVICE)
    w = torch.rand(n, generator=g).add(0.5).to(DEVICE) if reduction == "none" else None
    kw = dict(weights=(0.5, 1.0, 2.0), parameterization=param, reduction=reduction)
    with small_blocks():
        if which == "disc":
            compare(adkernels.discriminator_loss, [z], src, weight=w, **kw)
        else:
            compare(adkernels.generator_loss, [z], src, weight=w, mode=which, **kw)


@settings(max_examples=10)
@given(
    m=st.integers(0, 600),
    extra=st.integers(0, 300),
    case=st.sampled_from([("bce", "discriminator"), ("bce", "generator"), ("bce", "generator_nonsat"),
                          ("hinge", "discriminator"), ("lsgan", "discriminator"), ("lsgan", "generator"),
                          ("wgan", "discriminator"), ("relativistic", "discriminator"),
                          ("relativistic", "generator")]),
    dtype=st.sampled_from(DTYPES),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    seed=st.integers(0, 2 ** 16),
)
def test_binary_losses_match_reference(m, extra, case, dtype, reduction, seed):
    kind, side = case
    uses_real = side == "discriminator" or kind == "relativistic"
    mr = m if (kind == "relativistic" or reduction == "none") else m + extra
    g = torch.Generator().manual_seed(seed)
    r = (torch.randn(mr, generator=g, dtype=torch.float64) * 3).to(dtype).to(DEVICE)
    f = (torch.randn(m, generator=g, dtype=torch.float64) * 3).to(dtype).to(DEVICE)
    y = 0.9 if side == "discriminator" and kind != "hinge" and kind != "wgan" else 1.0
    w = torch.rand(m, generator=g).add(0.5).to(DEVICE) if reduction == "none" else None
    fn = adkernels.binary_adversarial_loss
    kw = dict(kind=kind, side=side, real_label=y, reduction=reduction)
    with small_blocks():
        if uses_real:
            compare(fn, [r, f], weight=w, **kw)
        else:
            compare(lambda x, **k: fn(None, x, **k), [f], weight=w, **kw)


def test_bad_source_ids_give_nan_rows_and_the_op_checks():
    z = torch.randn(5, 3, device=DEVICE)
    src = torch.tensor([0, 1, 7, 2, -1], device=DEVICE)
    rows, g = torch.ops.adkernels.adv_source_fwd_triton(z, src, 1.0, 1.0, 1.0, 0, 0, True, True)
    bad = torch.tensor([False, False, True, False, True], device=DEVICE)
    assert torch.isnan(rows[bad]).all() and torch.isfinite(rows[~bad]).all()
    assert torch.isnan(g[bad]).all() and torch.isfinite(g[~bad]).all()
    rows, _ = torch.ops.adkernels.adv_source_fwd_triton(z, src.clamp(0, 2), 1.0, 1.0, 1.0, 0, 1, False, False)
    assert torch.isnan(rows[src.clamp(0, 2) == 0]).all()  # REAL rows in a generator mode
    with adkernels.use_backend("triton"), pytest.raises(ValueError, match=r"source\[2\] = 7"):
        adkernels.discriminator_loss(z, src)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_opcheck(dtype):
    z = torch.randn(21, 3, device=DEVICE).to(dtype)
    zb = torch.randn(21, 2, device=DEVICE).to(dtype)
    src = torch.randint(0, 3, (21,), device=DEVICE)
    gsrc = torch.randint(1, 3, (21,), device=DEVICE)
    for args in [(z, src, 1.0, 0.5, 2.0, 0, 0, True, True), (zb, gsrc, 0.0, 1.0, 1.0, 1, 2, False, True)]:
        torch.library.opcheck(torch.ops.adkernels.adv_source_fwd_triton.default, args)
    r, f = torch.randn(30, device=DEVICE).to(dtype), torch.randn(30, device=DEVICE).to(dtype)
    for args in [(r, f, 0, 0, 0.9, 1 / 30, 1 / 30, False, True, True), (None, f, 0, 2, 1.0, 1.0, 1.0, True, False, True),
                 (r, f, 4, 1, 1.0, 1.0, 1.0, True, True, True)]:
        torch.library.opcheck(torch.ops.adkernels.adv_binary_fwd_triton.default, args)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    z = torch.randn(20, 3, device=DEVICE, requires_grad=True)
    src = torch.randint(0, 3, (20,), device=DEVICE)
    r = torch.randn(20, device=DEVICE, requires_grad=True)

    def fn(z, r):
        return adkernels.discriminator_loss(z, src) * 2 + adkernels.binary_adversarial_loss(r, r * 0.5, kind="lsgan")

    cf = torch.compile(fn, backend="aot_eager", fullgraph=True)
    with adkernels.use_backend("triton"):
        lc, le = cf(z, r), fn(z, r)
    torch.testing.assert_close(lc, le)
    for a, b in zip(grads(lc, [z, r], torch.ones_like(lc)), grads(le, [z, r], torch.ones_like(le))):
        torch.testing.assert_close(a, b)
