"""adversarial_distillation_loss: equal (value and gradients) to the composition of
gumbel_softmax + label_conditioned_scores + generator_loss + kd_loss with the same noise."""
from __future__ import annotations

import pytest
import torch

import adkernels
from adkernels.ops.gumbel import draw_seed_offset
from adkernels.reference.gumbel import gumbel_softmax as ref_gumbel_softmax


def composition(s, t, d, src, *, tau, hard, gen, weights, kd_weight, temperature, mode, parameterization):
    if hasattr(adkernels, "gumbel_softmax"):
        y = adkernels.gumbel_softmax(s, tau, hard, -1, generator=gen)
    else:
        y = ref_gumbel_softmax(s, draw_seed_offset("test", gen, s.device), tau, hard, -1)
    scores = adkernels.label_conditioned_scores(d, y)
    adv = adkernels.generator_loss(scores, src, mode=mode, weights=weights, parameterization=parameterization)
    return adv + kd_weight * adkernels.kd_loss(s, t, temperature=temperature)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("param,mode,hard", [("softmax", "minimax", False), ("binary_tree", "nonsat", True),
                                             ("softmax", "nonsat", True)])
def test_equals_the_composition(backend, param, mode, hard):
    if backend == "cpu" and not adkernels._C_loaded():
        pytest.skip("C++ extension not built")
    K = 3 if param == "softmax" else 2
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 11, generator=g, dtype=torch.float64).requires_grad_()
    t = torch.randn(6, 11, generator=g, dtype=torch.float64).requires_grad_()
    d = torch.randn(6, 11, K, generator=g, dtype=torch.float64).requires_grad_()
    src = torch.tensor([1, 1, 2, 1, 2, 2])
    kw = dict(tau=0.7, hard=hard, weights=(1.0, 0.8, 0.4), kd_weight=0.3, temperature=2.0, mode=mode,
              parameterization=param)
    with adkernels.use_backend(backend):
        a = adkernels.adversarial_distillation_loss(s, t, d, src, generator=torch.Generator().manual_seed(5), **kw)
        b = composition(s, t, d, src, gen=torch.Generator().manual_seed(5), **kw)
        c = adkernels.adversarial_distillation_loss(s, t, d, src, generator=torch.Generator().manual_seed(6), **kw)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert a.item() != c.item()  # a different stream gives a different sample
    for x, y in zip(torch.autograd.grad(a, [s, t, d]), torch.autograd.grad(b, [s, t, d])):
        torch.testing.assert_close(x, y, atol=0, rtol=0)


def test_gradcheck_and_errors():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(3, 5, generator=g, dtype=torch.float64).requires_grad_()
    t = torch.randn(3, 5, generator=g, dtype=torch.float64)
    d = torch.randn(3, 5, 3, generator=g, dtype=torch.float64).requires_grad_()
    src = torch.tensor([1, 2, 2])

    def f(s, d):  # the same noise on every call
        return adkernels.adversarial_distillation_loss(s, t, d, src, tau=0.5, kd_weight=0.5,
                                                       generator=torch.Generator().manual_seed(3))

    assert torch.autograd.gradcheck(f, (s, d))
    with pytest.raises(ValueError, match=r"d_label_logits must be \[N, C, 3\]"):
        adkernels.adversarial_distillation_loss(s, t, d[..., :2], src, tau=1.0)
    with pytest.raises(ValueError, match="tau"):
        adkernels.adversarial_distillation_loss(s, t, d, src, tau=0.0)
    with pytest.raises(ValueError, match=r"source\[0\] = 0 \(REAL\)"):
        adkernels.adversarial_distillation_loss(s, t, d, torch.tensor([0, 1, 2]), tau=1.0)
