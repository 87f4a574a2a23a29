"""Label leaking (Kurakin, Goodfellow, Bengio, "Adversarial Machine Learning at Scale", ICLR 2017).

A one-step FGSM perturbation crafted from the *true* label, ``sign(grad_x CE(f(x), y))``, carries
the label: a linear classifier trained on the perturbations alone (not the images) reads ``y``
off them almost perfectly, even when the model ``f`` itself is often wrong. Crafted from the
model's predicted label (``labels="pred"``) or toward the least-likely class
(``labels="least_likely"``), the perturbation only carries what the model knows, so the probe
does much worse. The probe here is a logistic regression on the sign pattern, on sklearn's
digits, with a deliberately weak MLP (trained 15 full-batch steps on 150 images: ~78-85% test
accuracy) so that predicted labels differ from true ones.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adkernels
from adkernels import attacks

pytestmark = pytest.mark.skipif(not adkernels._C_loaded(), reason="C++ extension not built")


def _probe_accuracies(seed: int):
    datasets = pytest.importorskip("sklearn.datasets")
    linear_model = pytest.importorskip("sklearn.linear_model")
    d = datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    fit, rest = perm[:150], perm[150:]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(15):
        opt.zero_grad()
        F.cross_entropy(model(x[fit]), y[fit]).backward()
        opt.step()
    xs, ys = x[rest], y[rest]
    model.eval()
    with torch.no_grad():
        model_acc = float((model(xs).argmax(1) == ys).float().mean())
    half = len(rest) // 2
    probe = {}
    for labels in ("true", "pred", "least_likely"):
        # no box: x_adv - x is exactly eps * sign(grad) (a [0, 1] clamp would hide the sign of
        # every pixel already at 0)
        x_adv = attacks.fgsm(model, xs, ys, 1.0, labels=labels)
        feat = torch.sign(x_adv - xs).reshape(len(xs), -1).numpy()
        clf = linear_model.LogisticRegression(max_iter=500).fit(feat[:half], ys[:half].numpy())
        probe[labels] = clf.score(feat[half:], ys[half:].numpy())
    return model_acc, probe


def test_true_label_fgsm_leaks_the_label_pred_and_least_likely_do_much_less():
    """Measured over seeds 0-4 (823 probe-test images, chance 0.10): model accuracy 0.77-0.85;
    probe on true-label perturbations 0.999-1.000, on predicted-label ones 0.79-0.86 (about the
    model's accuracy), on least-likely ones 0.75-0.80. Gaps true - pred >= 0.14 and
    true - least_likely >= 0.20; asserted with about half those margins."""
    seed = int(os.environ.get("ADK_TEST_SEED", "0"))
    model_acc, probe = _probe_accuracies(seed)
    print(f"model {model_acc:.3f} probe {probe}")
    assert model_acc < 0.9  # the model must make errors, or pred labels would equal true ones
    assert probe["true"] > 0.95  # far above chance (0.1) and above the model itself
    assert probe["true"] > model_acc + 0.08
    assert probe["pred"] < probe["true"] - 0.07
    assert probe["least_likely"] < probe["true"] - 0.1
    assert probe["pred"] < model_acc + 0.1
