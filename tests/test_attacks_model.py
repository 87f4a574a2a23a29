"""adkernels.attacks.fgsm / pgd: step-for-step equality with a plain-PyTorch loop, invariants
(ball, box), per-sample eps vs scalars, batch consistency, label modes, model state (eval mode
restored, no parameter gradients, no graph kept), DDP, autocast, bf16 models, channels_last,
bad input, and attack strength on a small trained model (PGD < FGSM < clean accuracy)."""
from __future__ import annotations

import copy
import os
import weakref

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

import adkernels
from adkernels import attacks

pytestmark = pytest.mark.skipif(not adkernels._C_loaded(), reason="C++ extension not built")
HAS_RANDOM_START = hasattr(adkernels, "random_start")


# ---- models and data ----------------------------------------------------------------------------

def cnn(c=3, hw=6, k=5, seed=0, bn=True):
    torch.manual_seed(seed)
    layers = [nn.Conv2d(c, 4, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * hw * hw, k)]
    m = nn.Sequential(*layers)
    if bn:  # non-trivial running statistics, so eval and train mode differ
        with torch.no_grad():
            m[1].running_mean.uniform_(-0.2, 0.2)
            m[1].running_var.uniform_(0.5, 1.5)
    return m


def data(n=4, c=3, hw=6, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, hw, hw, generator=g), torch.randint(0, k, (n,), generator=g)


def bounds(kind, c):
    if kind == "none":
        return None, None
    if kind == "scalar":
        return 0.0, 1.0
    lo = -torch.linspace(0.0, 0.3, c).view(1, c, 1, 1)  # per-channel, as for normalized images
    return lo, 1.0 - lo


# ---- the plain-PyTorch loop (torch ops only): the specification the helpers must match ---------

def torch_pgd(model, x, y, eps, alpha, steps, *, norm="linf", lo=None, hi=None, descend=False):
    model.eval()
    n = x.shape[0]
    col = (n,) + (1,) * (x.dim() - 1)
    eps = torch.as_tensor(eps, dtype=x.dtype).reshape(-1).expand(n).reshape(col)
    alpha = torch.as_tensor(alpha, dtype=x.dtype).reshape(-1).expand(n).reshape(col)
    lo_t = None if lo is None else torch.as_tensor(lo, dtype=x.dtype)
    hi_t = None if hi is None else torch.as_tensor(hi, dtype=x.dtype)
    xa = x.clone()
    for _ in range(steps):
        xi = xa.clone().requires_grad_(True)
        loss = F.cross_entropy(model(xi), y, reduction="sum")
        (g,) = torch.autograd.grad(-loss if descend else loss, xi)
        if norm == "linf":
            v = xa + alpha * torch.sign(g)
            v = torch.min(torch.max(v, x - eps), x + eps)
        else:
            gn = torch.linalg.vector_norm(g.reshape(n, -1), dim=1).reshape(col)
            v = xa + alpha * g / torch.where(gn > 0, gn, torch.ones_like(gn))
            d = v - x
            dn = torch.linalg.vector_norm(d.reshape(n, -1), dim=1).reshape(col)
            scale = torch.where(dn > eps, eps / torch.where(dn > 0, dn, torch.ones_like(dn)), torch.ones_like(dn))
            v = x + d * scale
        xa = v if lo_t is None and hi_t is None else torch.clamp(v, lo_t, hi_t)
    return xa


def torch_fgsm(model, x, y, eps, *, lo=None, hi=None, descend=False):
    """One linf step of size eps from x: clamp(x + eps * sign(g), lo, hi) (the ball clamp is a no-op)."""
    return torch_pgd(model, x, y, eps, eps, 1, norm="linf", lo=lo, hi=hi, descend=descend)


def ulp(t):
    return torch.finfo(torch.float32).eps * t.abs().clamp_min(1.0)


# ---- equality with the plain loop ---------------------------------------------------------------

@settings(max_examples=12)
@given(n=st.integers(1, 4), c=st.integers(1, 3), hw=st.integers(2, 5), steps=st.integers(0, 4),
       norm=st.sampled_from(["linf", "l2"]), bkind=st.sampled_from(["none", "scalar", "channel"]),
       per_sample=st.booleans(), targeted=st.booleans(), seed=st.integers(0, 2**16))
def test_pgd_equals_plain_torch_loop_step_for_step(n, c, hw, steps, norm, bkind, per_sample, targeted, seed):
    """fp32: bit-identical to the plain loop for linf (sign, min/max, clamp round the same way);
    l2 to 1e-6 (the kernel's per-sample norms sum in another order)."""
    model = cnn(c, hw, seed=seed)
    x, y = data(n, c, hw, seed=seed)
    lo, hi = bounds(bkind, c)
    if norm == "linf":
        eps, alpha = (torch.linspace(2, 12, n) / 255 if per_sample else 8 / 255), 2 / 255
    else:
        eps, alpha = (torch.linspace(0.2, 1.0, n) if per_sample else 0.5), 0.2
    want = torch_pgd(model, x, y, eps, alpha, steps, norm=norm, lo=lo, hi=hi, descend=targeted)
    got = attacks.pgd(model, x, y, eps, alpha, steps, norm=norm, lo=lo, hi=hi, targeted=targeted,
                      random_start=False)
    if norm == "linf":
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("bkind", ["none", "scalar", "channel"])
@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm_equals_plain_torch(bkind, targeted):
    model = cnn()
    x, y = data(6)
    lo, hi = bounds(bkind, 3)
    eps = torch.tensor([0.0, 1, 2, 4, 8, 16]) / 255
    got = attacks.fgsm(model, x, y, eps, lo=lo, hi=hi, targeted=targeted)
    assert torch.equal(got, torch_fgsm(model, x, y, eps, lo=lo, hi=hi, descend=targeted))
    assert torch.equal(got[0], x[0])  # eps 0 leaves the sample as it is


# ---- invariants ---------------------------------------------------------------------------------

def check_ball_and_box(x_adv, x, eps, norm, lo, hi):
    n = x.shape[0]
    e = torch.as_tensor(eps, dtype=torch.float32).reshape(-1).expand(n)
    d = (x_adv - x).reshape(n, -1)
    if norm == "linf":
        assert bool((d.abs().amax(1) <= e + ulp(x).reshape(n, -1).amax(1)).all())
    else:
        assert bool((torch.linalg.vector_norm(d, dim=1) <= e * (1 + 4 * torch.finfo(torch.float32).eps) + 1e-7).all())
    if lo is not None:
        assert bool((x_adv >= torch.as_tensor(lo)).all()) and bool((x_adv <= torch.as_tensor(hi)).all())


@settings(max_examples=12)
@given(n=st.integers(1, 4), steps=st.integers(1, 5), norm=st.sampled_from(["linf", "l2"]),
       bkind=st.sampled_from(["none", "scalar", "channel"]), labels=st.sampled_from(["true", "pred", "least_likely"]),
       eps=st.floats(0.0, 0.5), ratio=st.floats(0.0, 2.0), start=st.booleans(), seed=st.integers(0, 2**16))
def test_pgd_stays_in_ball_and_box(n, steps, norm, bkind, labels, eps, ratio, start, seed):
    if start and not HAS_RANDOM_START:
        start = False
    model = cnn(seed=seed)
    x, y = data(n, seed=seed)
    lo, hi = bounds(bkind, 3)
    x_adv = attacks.pgd(model, x, y, eps, eps * ratio, steps, norm=norm, lo=lo, hi=hi, labels=labels,
                        random_start=start, generator=torch.Generator().manual_seed(seed))
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    check_ball_and_box(x_adv, x, eps, norm, lo, hi)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_per_sample_eps_equals_scalar_eps_row_by_row(norm):
    model = cnn()
    x, y = data(5)
    eps = torch.tensor([0.0, 0.01, 0.03, 0.1, 0.3])
    alpha = eps / 3
    got = attacks.pgd(model, x, y, eps, alpha, 4, norm=norm, lo=0.0, hi=1.0, random_start=False)
    got_fgsm = attacks.fgsm(model, x, y, eps, lo=0.0, hi=1.0)
    for i in range(5):
        want = attacks.pgd(model, x, y, eps[i].item(), alpha[i].item(), 4, norm=norm, lo=0.0, hi=1.0,
                           random_start=False)
        assert torch.equal(got[i], want[i]), i
        assert torch.equal(got_fgsm[i], attacks.fgsm(model, x, y, eps[i].item(), lo=0.0, hi=1.0)[i]), i


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("labels", ["true", "pred", "least_likely"])
def test_batch_equals_samples_attacked_alone(norm, labels):
    """Summed loss, eval mode (BatchNorm uses running stats): samples do not interact. A sample
    alone runs other matmul/conv blockings than the batch, so allow rounding (l2 also rescales
    by a norm), but the linf sign steps agree exactly here."""
    model = cnn()
    x, y = data(6)
    eps, alpha = (8 / 255, 2 / 255) if norm == "linf" else (0.5, 0.2)
    got = attacks.pgd(model, x, y, eps, alpha, 5, norm=norm, lo=0.0, hi=1.0, labels=labels, random_start=False)
    alone = torch.cat([attacks.pgd(model, x[i:i + 1], y[i:i + 1], eps, alpha, 5, norm=norm, lo=0.0, hi=1.0,
                                   labels=labels, random_start=False) for i in range(6)])
    torch.testing.assert_close(got, alone, atol=1e-6 if norm == "l2" else 0.0, rtol=0)


# ---- labels ---------------------------------------------------------------------------------------

def test_label_modes_use_the_clean_prediction_and_argmin():
    model = cnn()
    x, _ = data(8)
    with torch.no_grad():
        model.eval()
        logits = model(x)
    pred, ll = logits.argmax(1), logits.argmin(1)
    for f, args in ((attacks.fgsm, (0.05,)), (attacks.pgd, (0.05, 0.02, 3))):
        kw = dict(lo=0.0, hi=1.0) if f is attacks.fgsm else dict(lo=0.0, hi=1.0, random_start=False)
        assert torch.equal(f(model, x, None, *args, labels="pred", **kw), f(model, x, pred, *args, **kw))
        # least_likely: a targeted step toward the clean argmin, whatever `targeted` says
        want = f(model, x, ll, *args, targeted=True, **kw)
        assert torch.equal(f(model, x, None, *args, labels="least_likely", **kw), want)
        assert torch.equal(f(model, x, None, *args, labels="least_likely", targeted=True, **kw), want)
        # y is ignored in these modes
        assert torch.equal(f(model, x, (pred + 1) % 5, *args, labels="pred", **kw), f(model, x, pred, *args, **kw))


def test_least_likely_pgd_moves_toward_y_ll_and_untargeted_away_from_y():
    model = cnn(bn=False)
    x, y = data(16)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    ll = logits.argmin(1)
    x_ll = attacks.pgd(model, x, None, 0.3, 0.05, 10, labels="least_likely", random_start=False, lo=0.0, hi=1.0)
    x_up = attacks.pgd(model, x, y, 0.3, 0.05, 10, random_start=False, lo=0.0, hi=1.0)
    with torch.no_grad():
        lp_ll = F.log_softmax(model(x_ll), 1).gather(1, ll[:, None])
        lp_up = F.log_softmax(model(x_up), 1).gather(1, y[:, None])
    assert bool((lp_ll > F.log_softmax(logits, 1).gather(1, ll[:, None])).all())
    assert bool((lp_up < F.log_softmax(logits, 1).gather(1, y[:, None])).all())


def test_return_logits_are_the_models_logits_at_x_adv():
    model = cnn()
    x, y = data(4)
    x_adv, logits = attacks.pgd(model, x, y, 0.1, 0.03, 3, random_start=False, return_logits=True)
    model.eval()
    with torch.no_grad():
        assert torch.equal(logits, model(x_adv))
    x_adv, logits = attacks.fgsm(model, x, y, 0.1, return_logits=True)
    with torch.no_grad():
        assert torch.equal(logits, model(x_adv))
    assert not logits.requires_grad


def test_custom_loss_fn_per_sample_or_summed():
    model = cnn()
    x, y = data(4)
    a = attacks.pgd(model, x, y, 0.1, 0.03, 3, random_start=False,
                    loss_fn=lambda z, t: F.cross_entropy(z, t, reduction="none"))
    b = attacks.pgd(model, x, y, 0.1, 0.03, 3, random_start=False)
    assert torch.equal(a, b)
    # a margin loss gives another attack
    c = attacks.pgd(model, x, y, 0.1, 0.03, 3, random_start=False,
                    loss_fn=lambda z, t: -z.gather(1, t[:, None]).squeeze(1))
    assert not torch.equal(b, c)


# ---- model state ----------------------------------------------------------------------------------

def test_modes_restored_per_submodule_and_eval_during_the_attack():
    model = cnn()
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a training model keeps its own flag
    seen = []
    model.register_forward_pre_hook(lambda m, inp: seen.append(all(not s.training for s in m.modules())))
    x, y = data(4)
    attacks.pgd(model, x, y, 0.1, 0.03, 3, random_start=False)
    attacks.fgsm(model, x, y, 0.1)
    assert seen and all(seen)
    assert model.training and not model[1].training and model[3].training


def test_modes_restored_when_the_attack_raises():
    model = cnn()
    model.train()

    class Boom(nn.Module):
        def forward(self, z):
            raise RuntimeError("boom")

    model.append(Boom())
    x, y = data(2)
    for f, args in ((attacks.pgd, (0.1, 0.03, 2)), (attacks.fgsm, (0.1,))):
        kw = dict(random_start=False) if f is attacks.pgd else {}
        with pytest.raises(RuntimeError, match="boom"):
            f(model, x, y, *args, **kw)
        assert all(m.training for m in model.modules())


def test_no_parameter_gradients_and_flags_untouched():
    model = cnn()
    model[0].weight.requires_grad_(False)  # a frozen parameter stays frozen
    before = {k: p.requires_grad for k, p in model.named_parameters()}
    x, y = data(4)
    attacks.pgd(model, x, y, 0.1, 0.03, 3, random_start=False)
    attacks.fgsm(model, x, y, 0.1, labels="pred")
    assert all(p.grad is None for p in model.parameters())
    assert {k: p.requires_grad for k, p in model.named_parameters()} == before
    # existing .grad (accumulating over micro-batches) is left as it was
    F.cross_entropy(model(x), y).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    attacks.pgd(model, x, y, 0.1, 0.03, 3, random_start=False)
    for k, p in model.named_parameters():
        if k in grads:
            assert torch.equal(p.grad, grads[k]), k
    assert x.grad is None and not x.requires_grad


def test_no_graph_is_kept_between_steps():
    """Every tensor saved for backward is released before the next forward starts."""
    live = weakref.WeakSet()

    class Saved:
        def __init__(self, t):
            self.t = t

    def pack(t):
        s = Saved(t)
        live.add(s)
        return s

    at_forward = []
    model = cnn()
    model.register_forward_pre_hook(lambda m, inp: at_forward.append(len(live)))
    x, y = data(4)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda s: s.t):
        x_adv = attacks.pgd(model, x, y, 0.1, 0.03, 4, random_start=False, return_logits=True)[0]
    assert at_forward == [0] * 5 and len(live) == 0
    assert x_adv.grad_fn is None


def test_works_under_no_grad_and_refuses_inference_mode():
    model = cnn()
    x, y = data(3)
    want = attacks.pgd(model, x, y, 0.1, 0.03, 2, random_start=False)
    with torch.no_grad():
        assert torch.equal(attacks.pgd(model, x, y, 0.1, 0.03, 2, random_start=False), want)
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match="inference_mode"):
            attacks.pgd(model, x, y, 0.1, 0.03, 2, random_start=False)


def test_ddp_wrapped_model(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    if dist.is_initialized():
        pytest.skip("a process group is already initialized")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = cnn()
        plain = copy.deepcopy(model)
        ddp = DDP(model)
        ddp.train()
        x, y = data(4)
        got = attacks.pgd(ddp, x, y, 0.1, 0.03, 3, random_start=False)
        assert torch.equal(got, attacks.pgd(plain, x, y, 0.1, 0.03, 3, random_start=False))
        assert torch.equal(attacks.fgsm(ddp, x, y, 0.1, labels="least_likely"),
                           attacks.fgsm(plain, x, y, 0.1, labels="least_likely"))
        assert ddp.training and all(p.grad is None for p in ddp.parameters())
        # a training step on the adversarial batch still works (reducer state intact)
        for _ in range(2):
            F.cross_entropy(ddp(attacks.pgd(ddp, x, y, 0.1, 0.03, 2, random_start=False)), y).backward()
        assert all(p.grad is not None for p in ddp.parameters())
    finally:
        dist.destroy_process_group()


# ---- precision and layout ---------------------------------------------------------------------------

def test_autocast_bf16_model_fp32_state():
    model = cnn(bn=False)
    x, y = data(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv, logits = attacks.pgd(model, x, y, 8 / 255, 2 / 255, 3, random_start=False, lo=0.0, hi=1.0,
                                    return_logits=True)
        x_f = attacks.fgsm(model, x, y, 8 / 255, lo=0.0, hi=1.0)
    assert logits.dtype == torch.bfloat16
    for xa in (x_adv, x_f):
        assert xa.dtype == torch.float32
        check_ball_and_box(xa, x, 8 / 255, "linf", 0.0, 1.0)
    # fp32 steps of 2/255 are kept exactly: every moved element moved by a multiple of 2/255
    # (up to fp32 rounding), which a bf16 state could not hold near 1
    d = (x_adv - x)[(x_adv > 0) & (x_adv < 1)] * (255 / 2)
    assert float((d - d.round()).abs().max()) < 1e-3


def test_bf16_parameter_model_gets_a_cast_input():
    model = cnn(bn=False).to(torch.bfloat16)
    x, y = data(4)
    x_adv = attacks.pgd(model, x, y, 8 / 255, 2 / 255, 3, random_start=False, lo=0.0, hi=1.0)
    assert x_adv.dtype == torch.float32
    check_ball_and_box(x_adv, x, 8 / 255, "linf", 0.0, 1.0)
    assert all(p.grad is None for p in model.parameters())
    # bf16 input x: the state is fp32, the result comes back in bf16
    xb = attacks.fgsm(model, x.bfloat16(), y, 8 / 255, lo=0.0, hi=1.0)
    assert xb.dtype == torch.bfloat16


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_channels_last_input_keeps_its_format_and_values(norm):
    model = cnn()
    x, y = data(4)
    xc = x.to(memory_format=torch.channels_last)
    lo, hi = bounds("channel", 3)
    eps, alpha = (8 / 255, 2 / 255) if norm == "linf" else (0.5, 0.2)
    got = attacks.pgd(model, xc, y, eps, alpha, 3, norm=norm, lo=lo, hi=hi, random_start=False)
    assert got.is_contiguous(memory_format=torch.channels_last)
    want = attacks.pgd(model, x, y, eps, alpha, 3, norm=norm, lo=lo, hi=hi, random_start=False)
    torch.testing.assert_close(got, want, atol=1e-6 if norm == "l2" else 0.0, rtol=0)
    got_f = attacks.fgsm(model, xc, y, eps, lo=lo, hi=hi)
    assert got_f.is_contiguous(memory_format=torch.channels_last)


def test_float64_input_is_attacked_in_float64():
    model = cnn().double()
    x, y = data(3)
    x = x.double()
    got = attacks.pgd(model, x, y, 0.1, 0.03, 3, random_start=False)
    assert got.dtype == torch.float64
    assert torch.equal(got, torch_pgd(model, x, y, 0.1, 0.03, 3))


def test_empty_batch_and_zero_steps():
    model = cnn()
    x, y = data(3)
    assert torch.equal(attacks.pgd(model, x, y, 0.1, 0.03, 0, random_start=False), x)
    e = attacks.pgd(model, x[:0], y[:0], 0.1, 0.03, 2, random_start=False)
    assert e.shape == (0, 3, 6, 6)


# ---- random start ---------------------------------------------------------------------------------

@pytest.mark.skipif(not HAS_RANDOM_START, reason="adkernels.random_start not in this build")
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_is_in_the_ball_and_reproducible(norm):
    model = cnn()
    x, y = data(4)
    eps = 8 / 255 if norm == "linf" else 0.5
    a = attacks.pgd(model, x, y, eps, eps / 4, 0, norm=norm, lo=0.0, hi=1.0,
                    generator=torch.Generator().manual_seed(1))
    b = attacks.pgd(model, x, y, eps, eps / 4, 0, norm=norm, lo=0.0, hi=1.0,
                    generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, x)
    check_ball_and_box(a, x, eps, norm, 0.0, 1.0)
    xc = x.to(memory_format=torch.channels_last)
    c = attacks.pgd(model, xc, y, eps, eps / 4, 2, norm=norm, lo=0.0, hi=1.0,
                    generator=torch.Generator().manual_seed(1))
    assert c.is_contiguous(memory_format=torch.channels_last)
    check_ball_and_box(c, x, eps, norm, 0.0, 1.0)
    # the random start follows the layout-independent Philox stream: same values (l2: to the
    # rounding of per-sample norms summed in another order)
    torch.testing.assert_close(c, attacks.pgd(model, x, y, eps, eps / 4, 2, norm=norm, lo=0.0, hi=1.0,
                                              generator=torch.Generator().manual_seed(1)),
                               atol=1e-6 if norm == "l2" else 0.0, rtol=0)
    # labels='pred' takes the prediction at the clean input, not at the random start
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(1)
    p1 = attacks.pgd(model, x, None, eps, eps / 4, 3, norm=norm, labels="pred", generator=torch.Generator().manual_seed(2))
    p2 = attacks.pgd(model, x, pred, eps, eps / 4, 3, norm=norm, generator=torch.Generator().manual_seed(2))
    assert torch.equal(p1, p2)
    # the default generator: torch.manual_seed makes it reproducible
    torch.manual_seed(3)
    d1 = attacks.pgd(model, x, y, eps, eps / 4, 1, norm=norm)
    torch.manual_seed(3)
    assert torch.equal(d1, attacks.pgd(model, x, y, eps, eps / 4, 1, norm=norm))


@pytest.mark.skipif(HAS_RANDOM_START, reason="adkernels.random_start exists")
def test_random_start_without_the_op_says_so():
    model = cnn()
    x, y = data(2)
    with pytest.raises(NotImplementedError, match="random_start=False"):
        attacks.pgd(model, x, y, 0.1, 0.03, 1)


# ---- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda m, x, y: attacks.pgd(m, x, y, -0.1, 0.01, 2, random_start=False), "eps must be"),
    (lambda m, x, y: attacks.pgd(m, x, y, torch.tensor([0.1, -0.1, 0.1]), 0.01, 2, random_start=False), "eps must be"),
    (lambda m, x, y: attacks.fgsm(m, x, y, -1.0), "eps must be"),
    (lambda m, x, y: attacks.pgd(m, x, y, 0.1, -0.01, 2, random_start=False), "alpha must be"),
    (lambda m, x, y: attacks.pgd(m, x, y, 0.1, 0.01, -1, random_start=False), "steps must be >= 0"),
    (lambda m, x, y: attacks.pgd(m, x, y, 0.1, 0.01, 2.5, random_start=False), "steps must be an int"),
    (lambda m, x, y: attacks.pgd(m, x, y, 0.1, 0.01, 2, lo=1.0, hi=0.0, random_start=False), "lo must be <= hi"),
    (lambda m, x, y: attacks.fgsm(m, x, y, 0.1, lo=torch.ones(1, 3, 1, 1), hi=torch.zeros(1, 3, 1, 1)), "lo must be <= hi"),
    (lambda m, x, y: attacks.pgd(m, x, y[:2], 0.1, 0.01, 2, random_start=False), "batch size 3"),
    (lambda m, x, y: attacks.fgsm(m, x, y, torch.full((2,), 0.1)), r"per-sample tensor of shape \[3\]"),
    (lambda m, x, y: attacks.fgsm(m, (x * 255).to(torch.uint8), y, 0.1), "floating tensor"),
    (lambda m, x, y: attacks.fgsm(m, x, None, 0.1), "y is required with labels='true'"),
    (lambda m, x, y: attacks.pgd(m, x, None, 0.1, 0.01, 2, random_start=False), "y is required"),
    (lambda m, x, y: attacks.fgsm(m, x, y, 0.1, labels="random"), "labels must be one of"),
    (lambda m, x, y: attacks.fgsm(m, x, y, 0.1, labels="pred", targeted=True), "labels='pred' with targeted=True"),
    (lambda m, x, y: attacks.pgd(m, x, y, 0.1, 0.01, 2, norm="l1", random_start=False), "norm must be"),
])
def test_bad_input_gives_a_clear_error(call, match):
    model = cnn()
    x, y = data(3)
    with pytest.raises((ValueError, TypeError), match=match):
        call(model, x, y)


# ---- attack strength on a trained model ---------------------------------------------------------------

def _digits():
    """sklearn's 8x8 digits (1797 images shipped with scikit-learn) scaled to [0, 1]."""
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(d.target)


def _train_digits_cnn(seed=0, epochs=6):
    x, y = _digits()
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    tr, te = perm[:1400], perm[1400:]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8 * 16, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(tr), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[tr[idx]]), y[tr[idx]]).backward()
            opt.step()
    return model, x[te], y[te]


def test_pgd_is_stronger_than_fgsm_which_beats_clean():
    """A small CNN trained on digits, attacked at eps 0.15 on [0, 1] pixels (397 test images).
    Measured over training seeds 0-4: clean 0.90-0.95, FGSM 0.18-0.23, PGD-10 (alpha eps/4, no
    random start) 0.11-0.15; FGSM - PGD was 0.058-0.106 and clean - FGSM >= 0.69. The model is
    nearly linear in its input at this scale, so FGSM is already strong; the asserted margins
    are about half the smallest measured gaps."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, x, y = _train_digits_cnn(seed=int(os.environ.get("ADK_TEST_SEED", "0")))
    model.eval()
    acc = lambda z: float((model(z).argmax(1) == y).float().mean())  # noqa: E731
    eps = 0.15
    with torch.no_grad():
        clean = acc(x)
        a_fgsm = acc(attacks.fgsm(model, x, y, eps, lo=0.0, hi=1.0))
        a_pgd = acc(attacks.pgd(model, x, y, eps, eps / 4, 10, lo=0.0, hi=1.0, random_start=False))
    print(f"clean {clean:.3f} fgsm {a_fgsm:.3f} pgd {a_pgd:.3f}")
    assert clean > 0.85
    assert a_fgsm < clean - 0.35
    assert a_pgd < a_fgsm - 0.03
