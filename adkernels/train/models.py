"""The paper's MNIST models and a small CNN for adversarial training.

- ``MLP``: student, 784-800-800-10, ReLU, dropout (keep 0.88 -> p = 0.12).
- ``LeNet``: teacher, conv5x5x32 - pool - conv5x5x64 - pool - fc1024 - dropout 0.5 - fc10
  ("same" padding as the authors' TensorFlow LeNet, so 28 -> 14 -> 7).
- ``Discriminator``: a LeNet-style scorer of (image, label vector) pairs.
  ``form="label_conditioned"``: the LeNet body gives per-label source logits ``[N, C, K]`` and
  the score is their contraction with the label vector, ``adkernels.label_conditioned_scores``
  (the authors' per-label sigmoid scorer generalized to K outputs; a one-hot label picks a row).
  ``form="concat"``: the label vector is concatenated to the LeNet features before the fc layers.
- ``SmallCNN``: conv3x3x32 - conv3x3x32 - pool - conv3x3x64 - conv3x3x64 - pool - fc200 - fc10.
"""
import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    def __init__(self, in_features: int, classes: int, hidden: int = 800, dropout: float = 0.12):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.net(x)


class LeNetBody(nn.Module):
    def __init__(self, image_shape, width: int = 32, fc: int = 1024, dropout: float = 0.5):
        super().__init__()
        c, h, w = image_shape
        self.conv1 = nn.Conv2d(c, width, 5, padding=2)
        self.conv2 = nn.Conv2d(width, 2 * width, 5, padding=2)
        self.out_features = 2 * width * (h // 4) * (w // 4)
        self.fc = nn.Linear(self.out_features, fc)
        self.drop = nn.Dropout(dropout)
        self.fc_features = fc

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.drop(F.relu(self.fc(x.flatten(1))))


class LeNet(nn.Module):
    def __init__(self, image_shape, classes: int, width: int = 32, fc: int = 1024, dropout: float = 0.5):
        super().__init__()
        self.body = LeNetBody(image_shape, width, fc, dropout)
        self.head = nn.Linear(fc, classes)

    def forward(self, x):
        return self.head(self.body(x))


class Discriminator(nn.Module):
    """Scores (image, label vector) pairs: returns ``[N, K]`` source logits.

    K = 3 for ADIM's softmax discriminator, 2 for its binary-tree form, 1 for the binary
    discriminator of NGAN / ADIB (a real-vs-fake logit).
    """

    def __init__(self, image_shape, classes: int, outputs: int, form: str = "label_conditioned",
                 width: int = 32, fc: int = 1024, dropout: float = 0.5):
        super().__init__()
        if form not in ("label_conditioned", "concat"):
            raise ValueError(f"disc_form must be label_conditioned or concat, got {form!r}")
        self.form, self.classes, self.outputs = form, classes, outputs
        self.body = LeNetBody(image_shape, width, fc, dropout)
        if form == "label_conditioned":
            self.head = nn.Linear(fc, classes * outputs)
        else:
            self.head = nn.Sequential(nn.Linear(fc + classes, 256), nn.ReLU(), nn.Linear(256, outputs))

    def forward(self, x, labels=None):
        """``[N, K]`` scores of (x, labels); with ``labels=None`` (label_conditioned form) the
        per-label source logits ``[N, C, K]`` themselves."""
        h = self.body(x)
        if self.form == "concat":
            return self.head(torch.cat([h, labels.to(h.dtype)], dim=1))
        from .. import label_conditioned_scores  # the fused contraction op (adkernels.ops.adversarial)

        per_label = self.head(h).view(-1, self.classes, self.outputs)
        if labels is None:
            return per_label
        return label_conditioned_scores(per_label, labels.to(per_label.dtype))


class SmallCNN(nn.Module):
    def __init__(self, image_shape, classes: int, width: int = 32, dropout: float = 0.0):
        super().__init__()
        c, h, w = image_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * (h // 4) * (w // 4), 200), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(200, classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def build_classifier(kind: str, image_shape, classes: int, *, hidden: int = 800, dropout: float = 0.12,
                     width: int = 32, fc: int = 1024) -> nn.Module:
    if kind == "mlp":
        n = 1
        for s in image_shape:
            n *= s
        return MLP(n, classes, hidden, dropout)
    if kind == "lenet":
        return LeNet(image_shape, classes, width, fc, dropout)
    if kind == "cnn":
        return SmallCNN(image_shape, classes, width, dropout)
    raise SystemExit(f"unknown model {kind!r}: use mlp, lenet or cnn")
