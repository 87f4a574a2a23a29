"""adversarial_distillation_loss: the fused ADIM generator step (adv_distill_fwd) against the
reference composition (gumbel_softmax + label_conditioned_scores + generator_loss + kd_loss with
the same noise): values and gradients, dtypes, odd shapes, multi-chunk rows, poisoned heap,
opcheck, torch.compile, bad input. The Triton op's own tests: tests/test_adv_distill_triton.py."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import adkernels
from adkernels.ops.gumbel import draw_seed_offset
from adkernels.reference import adversarial as ref

from helpers import assert_close_to_gt

needs_cpp = pytest.mark.skipif(not adkernels._C_loaded(), reason="C++ extension not built")
K_OF = {"softmax": 3, "binary_tree": 2}


def composition(s, t, d, src, *, tau, hard, gen, weights, kd_weight, temperature, mode, parameterization,
                reduction="mean", divergence="kl"):
    """The public ops one after the other (the unfused form a user would write)."""
    y = adkernels.gumbel_softmax(s, tau, hard, -1, generator=gen)
    scores = adkernels.label_conditioned_scores(d, y.to(d.dtype))
    adv = adkernels.generator_loss(scores, src, mode=mode, weights=weights, parameterization=parameterization,
                                   reduction=reduction)
    return adv + kd_weight * adkernels.kd_loss(s, t, temperature=temperature, divergence=divergence)


def backends():
    out = ["reference"]
    if adkernels._C_loaded():
        out.append("cpu")
    return out


def make(N, C, param, dtype, seed=0, scale=2.0, other_grad=True):
    g = torch.Generator().manual_seed(seed)
    s = (scale * torch.randn(N, C, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    t = (scale * torch.randn(N, C, generator=g, dtype=torch.float64)).to(dtype).requires_grad_(other_grad)
    d = torch.randn(N, C, K_OF[param], generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    src = torch.randint(1, 3, (N,), generator=g)
    return s, t, d, src


def run(backend, s, t, d, src, seed=5, **kw):
    xs = [x.detach().clone().requires_grad_(x.requires_grad) for x in (s, t, d)]
    with adkernels.use_backend(backend):
        loss = adkernels.adversarial_distillation_loss(*xs, src, generator=torch.Generator().manual_seed(seed), **kw)
    want = [x for x in xs if x.requires_grad]
    gs = torch.autograd.grad(2.0 * loss, want, allow_unused=True, materialize_grads=True)
    return loss.detach(), list(gs)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("param,mode,hard", [("softmax", "minimax", False), ("binary_tree", "nonsat", True),
                                             ("softmax", "nonsat", True), ("binary_tree", "minimax", False)])
def test_equals_the_composition(backend, param, mode, hard):
    s, t, d, src = make(6, 11, param, torch.float64)
    kw = dict(tau=0.7, hard=hard, weights=(1.0, 0.8, 0.4), kd_weight=0.3, temperature=2.0, mode=mode,
              parameterization=param)
    with adkernels.use_backend(backend):
        a = adkernels.adversarial_distillation_loss(s, t, d, src, generator=torch.Generator().manual_seed(5), **kw)
        b = composition(s, t, d, src, gen=torch.Generator().manual_seed(5), **kw)
        c = adkernels.adversarial_distillation_loss(s, t, d, src, generator=torch.Generator().manual_seed(6), **kw)
    torch.testing.assert_close(a, b, atol=1e-13, rtol=1e-13)
    assert a.item() != c.item()  # a different stream gives a different sample
    for x, y in zip(torch.autograd.grad(a, [s, t, d]), torch.autograd.grad(b, [s, t, d])):
        torch.testing.assert_close(x, y, atol=1e-13, rtol=1e-12)


@needs_cpp
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    N=st.integers(1, 9),
    C=st.sampled_from([1, 2, 3, 7, 16, 17, 33, 100]),
    param=st.sampled_from(["softmax", "binary_tree"]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
    hard=st.booleans(),
    mode=st.sampled_from(["minimax", "nonsat"]),
    kd_weight=st.sampled_from([0.0, 0.1, 1.0]),
    divergence=st.sampled_from(["kl", "reverse_kl", "jsd"]),
    temperature=st.sampled_from([0.5, 1.0, 3.0]),
    tau=st.sampled_from([0.1, 1.0, 10.0]),
    reduction=st.sampled_from(["mean", "sum"]),
    other_grad=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_cpu_matches_reference(N, C, param, dtype, hard, mode, kd_weight, divergence, temperature, tau, reduction,
                               other_grad, seed):
    s, t, d, src = make(N, C, param, dtype, seed=seed, other_grad=other_grad)
    kw = dict(tau=tau, hard=hard, weights=(1.0, 0.7, 0.4), kd_weight=kd_weight, temperature=temperature, mode=mode,
              parameterization=param, reduction=reduction, divergence=divergence)
    lf, gf = run("cpu", s, t, d, src, **kw)
    lr, gr = run("reference", s, t, d, src, **kw)
    lg, gg = run("reference", s.double(), t.double(), d.double(), src, **kw)
    assert_close_to_gt(lf, lr, lg, dtype, name="loss")
    for name, a, b, c in zip(["gen", "other", "d"] if other_grad else ["gen", "d"], gf, gr, gg):
        assert a.dtype == dtype
        assert_close_to_gt(a, b, c, dtype, name=f"grad {name}")


@needs_cpp
@pytest.mark.parametrize("param", ["softmax", "binary_tree"])
@pytest.mark.parametrize("hard", [False, True])
def test_long_rows_span_chunks(param, hard):
    """C > the kernel's Philox chunk (2048) and d chunk (512 labels): every chunk boundary."""
    s, t, d, src = make(3, 2500, param, torch.float32, seed=3)
    kw = dict(tau=0.5, hard=hard, kd_weight=0.5, temperature=2.0, parameterization=param, divergence="jsd")
    lf, gf = run("cpu", s, t, d, src, **kw)
    lg, gg = run("reference", s.double(), t.double(), d.double(), src, **kw)
    assert_close_to_gt(lf, lf, lg, torch.float32, name="loss")
    for a, c in zip(gf, gg):
        assert_close_to_gt(a, a, c, torch.float32, name="grad")


@needs_cpp
def test_extreme_logits_and_tau_stay_finite():
    s, t, d, src = make(4, 37, "softmax", torch.float32)
    with torch.no_grad():
        s[0] = 1e4
        s[1, ::2] = -1e4
        t[2] = -1e4
        d[3] = 50.0
    for tau in (0.05, 20.0):
        for mode in ("minimax", "nonsat"):
            loss, gs = run("cpu", s, t, d, src, tau=tau, mode=mode, kd_weight=1.0, temperature=3.0)
            assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in gs)


@needs_cpp
def test_kernel_writes_every_output():
    """Poisoned heap: an output element the kernel forgot to write would show up as NaN."""
    s, t, d, src = make(7, 50, "softmax", torch.float32)
    tau, so = torch.tensor(0.8), torch.tensor([3, 9])
    for hard in (False, True):
        for kd_weight in (0.0, 0.5):
            poison = torch.full((7 * 50 * 3 * 4,), float("nan"))
            del poison
            rows, gg, go, gd = torch.ops.adkernels.adv_distill_fwd(
                s.detach(), t.detach(), d.detach(), src, tau, so, hard, 1.0, 1.0, 1.0, 0, 1, True, kd_weight, 2.0, 0,
                True, True, True)
            for x in (rows, gg, go, gd):
                assert torch.isfinite(x).all()
            if kd_weight == 0:
                assert (go == 0).all()


@needs_cpp
def test_opcheck():
    s, t, d, src = make(5, 13, "binary_tree", torch.float32)
    args = (s.detach(), t.detach(), d.detach(), src, torch.tensor(0.5), torch.tensor([1, 2]), True, 1.0, 0.5, 0.5,
            1, 2, True, 0.3, 2.0, 2, True, True, True)
    torch.library.opcheck(torch.ops.adkernels.adv_distill_fwd.default, args)


def test_gradcheck():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(3, 5, generator=g, dtype=torch.float64).requires_grad_()
    t = torch.randn(3, 5, generator=g, dtype=torch.float64).requires_grad_()
    d = torch.randn(3, 5, 3, generator=g, dtype=torch.float64).requires_grad_()
    src = torch.tensor([1, 2, 2])
    for backend in backends():
        def f(s, t, d):  # the same noise on every call
            with adkernels.use_backend(backend):
                return adkernels.adversarial_distillation_loss(s, t, d, src, tau=0.5, kd_weight=0.5, mode="nonsat",
                                                               generator=torch.Generator().manual_seed(3))

        assert torch.autograd.gradcheck(f, (s, t, d))


@needs_cpp
def test_reference_stream_equals_gumbel_softmax():
    """The fused kernel's noise is gumbel_softmax's: with D scoring only label 0, the softmax
    generator loss depends on the sample through y_0 alone, so equal losses mean equal samples."""
    s, t, d, src = make(4, 9, "softmax", torch.float32)
    with adkernels.use_backend("cpu"):
        fused = adkernels.adversarial_distillation_loss(s, t, d, src, tau=0.3, kd_weight=0.0, reduction="sum",
                                                        generator=torch.Generator().manual_seed(11))
        comp = composition(s, t, d, src, tau=0.3, hard=False, gen=torch.Generator().manual_seed(11),
                           weights=(1.0, 1.0, 1.0), kd_weight=0.0, temperature=1.0, mode="minimax",
                           parameterization="softmax", reduction="sum")
    torch.testing.assert_close(fused, comp, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", backends())
def test_unfused_forms_equal_the_composition(backend):
    """reduction='none' and a D of another dtype run the composition: same values."""
    s, t, d, src = make(5, 8, "softmax", torch.float32)
    kw = dict(tau=1.0, hard=False, weights=(1.0, 1.0, 1.0), kd_weight=0.2, temperature=1.0, mode="minimax",
              parameterization="softmax")
    with adkernels.use_backend(backend):
        a = adkernels.adversarial_distillation_loss(s, t, d, src, reduction="none",
                                                    generator=torch.Generator().manual_seed(2), **kw)
        b = composition(s, t, d, src, reduction="none", gen=torch.Generator().manual_seed(2), **kw)
        torch.testing.assert_close(a, b)
        dd = d.double().detach().requires_grad_()
        c = adkernels.adversarial_distillation_loss(s, t, dd, src, generator=torch.Generator().manual_seed(2), **kw)
        e = composition(s, t, dd, src, gen=torch.Generator().manual_seed(2), **kw)
        torch.testing.assert_close(c, e)


@needs_cpp
def test_torch_compile_tensor_tau_no_recompile():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    s, t, d, src = make(4, 10, "softmax", torch.float32)

    def f(s, t, d, tau):
        return adkernels.adversarial_distillation_loss(s, t, d, src, tau=tau, hard=True, kd_weight=0.5)

    cnt = CompileCounterWithBackend("aot_eager")
    cf = torch.compile(f, backend=cnt, fullgraph=True)
    with adkernels.use_backend("cpu"):
        for step in range(3):
            tau = torch.tensor(adkernels.temperature_schedule(step, 3))
            torch.manual_seed(step)
            out = cf(s, t, d, tau)
            gc = torch.autograd.grad(out, [s, t, d])
            torch.manual_seed(step)
            ge = torch.autograd.grad(f(s, t, d, tau), [s, t, d])
            for a, b in zip(gc, ge):
                torch.testing.assert_close(a, b)
    assert cnt.frame_count == 1, f"recompiled: {cnt.frame_count} frames"


@pytest.mark.parametrize("backend", backends())
def test_bad_input(backend):
    s, t, d, src = make(3, 5, "softmax", torch.float32)
    f = adkernels.adversarial_distillation_loss
    cases = [
        (lambda: f(s, t, d[..., :2], src, tau=1.0), ValueError, r"d_label_logits must be \[N, C, 3\]"),
        (lambda: f(s, t, d, src, tau=1.0, parameterization="binary_tree"), ValueError, r"\[N, C, 2\]"),
        (lambda: f(s, t[:, :4], d, src, tau=1.0), ValueError, "other_logits must have gen_logits' shape"),
        (lambda: f(s, t.double(), d, src, tau=1.0), (TypeError, ValueError), "other_logits"),
        (lambda: f(s, t, d, src, tau=0.0), ValueError, "tau must be"),
        (lambda: f(s, t, d, src, tau=float("nan")), ValueError, "tau must be"),
        (lambda: f(s, t, d, src, tau=torch.tensor(-1.0)), ValueError, "tau must be"),
        (lambda: f(s, t, d, torch.tensor([1, 0, 2]), tau=1.0), ValueError, "REAL"),
        (lambda: f(s, t, d, torch.tensor([1, 3, 2]), tau=1.0), ValueError, "not a source"),
        (lambda: f(s, t, d, src[:2], tau=1.0), ValueError, "source must have"),
        (lambda: f(s, t, d, src.float(), tau=1.0), TypeError, "integer source ids"),
        (lambda: f(s, t, d, src, tau=1.0, kd_weight=-1.0), ValueError, "kd_weight"),
        (lambda: f(s, t, d, src, tau=1.0, temperature=0.0), ValueError, "temperature"),
        (lambda: f(s, t, d, src, tau=1.0, mode="bogus"), ValueError, "mode must be one of"),
        (lambda: f(s, t, d, src, tau=1.0, divergence="l2"), ValueError, "divergence must be one of"),
        (lambda: f(s, t, d, src, tau=1.0, weights=(1.0, -1.0, 1.0)), ValueError, "weights"),
        (lambda: f(s, t, d, src, tau=1.0, hard=1), TypeError, "hard must be a bool"),
        (lambda: f(s[:, :0], t[:, :0], d[:, :0], src, tau=1.0), ValueError, "C = 0"),
    ]
    with adkernels.use_backend(backend):
        for fn, exc, msg in cases:
            with pytest.raises(exc, match=msg):
                fn()
