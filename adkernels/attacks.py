"""Model-level adversarial attacks on the fused steps: :func:`fgsm` and :func:`pgd`.

    fgsm   x_adv = clamp(x + s * eps * sign(grad_x L(f(x), y')), lo, hi)
    pgd    x_0 = x (or a random point of the eps-ball, ``random_start``),
           x_{t+1} = pgd_step(x_t, s * grad_x L(f(x_t), y'), x, alpha, eps, norm, lo, hi)

with ``L`` the cross entropy summed over the batch (or ``loss_fn``), ``s = +1`` (ascent,
untargeted) or ``s = -1`` (descent toward a target class), and ``y'`` chosen by ``labels``:

- ``"true"``: the given labels ``y``. With ``targeted=True``, ``y`` holds the target classes and
  the attack descends ``L(f(x), y)``.
- ``"pred"``: the model's prediction on the clean input, ``argmax f(x)`` (``y`` is not used and
  may be None). Kurakin et al. ("Adversarial Machine Learning at Scale", ICLR 2017) show that
  one-step examples crafted from the *true* label leak it: ``sign(grad)`` is strongly
  correlated with ``y`` (a linear classifier reads the label off the perturbation alone; see
  tests/test_label_leaking.py), so a model adversarially trained on them classifies adversarial
  inputs better than clean ones. Crafting from the prediction carries no more information about
  ``y`` than the model already has. Untargeted (ascent) only.
- ``"least_likely"``: the clean least-likely class ``y_LL = argmin f(x)``, and the step is always
  *targeted* toward it (descent, whatever ``targeted`` says): Kurakin et al.'s "step l.l."
  ``x_adv = clamp(x - eps * sign(grad_x L(f(x), y_LL)), lo, hi)``, and for :func:`pgd` their
  "iter. l.l." method (Kurakin, Goodfellow, Bengio, "Adversarial examples in the physical world",
  2016), with ``y_LL`` computed once on the clean input and kept for every step.

The model runs in eval mode during the attack (every submodule's own train/eval flag is
restored afterwards, also when the attack raises), only the gradient with respect to the input
is computed (``torch.autograd.grad``: parameters' ``.grad`` and ``requires_grad`` are left as
they are), and no graph outlives a step. A ``DistributedDataParallel`` model is attacked through
its ``.module``: no DDP hooks or collectives run during the attack; each rank attacks its own
inputs.

Precision: the adversarial state is float32 (float64 for float64 inputs) whatever the model
runs in. Under ``torch.autocast`` the model computes in bf16/fp16 and its input gradient comes
back in float32; a model whose parameters are bf16/fp16 gets ``x_adv`` cast to their dtype (or to
``input_dtype``) at its input, and the state stays fp32. Keeping x_adv itself in bf16 would be
wrong: bf16 has 8 significant bits, so its spacing is 2^-8 = 1/256 on [0.5, 1) and 1/128 on
[1, 2); near 1 a bf16 x_adv moves in increments of about two steps of 1/255, and steps of 2/255
or eps of 8/255 would be rounded away or doubled. The result is returned in x's dtype.
"""
from __future__ import annotations

import numbers
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ops import attacks as _ops

Number = Union[int, float]
LABELS = ("true", "pred", "least_likely")

__all__ = ["fgsm", "pgd"]


# ---- checks -------------------------------------------------------------------------------------

def _check_x(op: str, x) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{op}: x must be a floating tensor (images as float in [lo, hi]), got {x.dtype}; "
                        f"convert it first, e.g. x.float() / 255")
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have a batch dimension [N, ...], got a 0-d tensor")


def _check_labels(op: str, labels, targeted, y, x: Tensor) -> None:
    if labels not in LABELS:
        raise ValueError(f"{op}: labels must be one of {LABELS}, got {labels!r}")
    if not isinstance(targeted, bool):
        raise TypeError(f"{op}: targeted must be True or False, got {targeted!r}")
    if labels == "pred" and targeted:
        raise ValueError(f"{op}: labels='pred' with targeted=True would step toward the model's own prediction; "
                         f"use labels='true' with target classes in y, or labels='least_likely'")
    if labels == "true":
        if y is None:
            raise ValueError(f"{op}: y is required with labels='true' (or pass labels='pred' / 'least_likely' "
                             f"to craft from the model's predictions)")
        if not isinstance(y, Tensor):
            raise TypeError(f"{op}: y must be a torch.Tensor, got {type(y).__name__}")
        if y.dim() < 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"{op}: y must have x's batch size {x.shape[0]} in its first dimension, "
                             f"got shape {tuple(y.shape)}")
        if y.device != x.device:
            raise ValueError(f"{op}: y is on {y.device} but x is on {x.device}; move them to one device")


def _check_scalar(op: str, name: str, v, x: Tensor):
    """eps / alpha: a finite number >= 0 or a per-sample tensor (checked >= 0); returns it
    unchanged for the ops (which take both forms)."""
    _ops._per_sample(op, name, v, x, True)
    return v.detach() if isinstance(v, Tensor) else float(v)


def _check_steps(op: str, steps) -> int:
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool):
        raise TypeError(f"{op}: steps must be an int >= 0, got {steps!r}")
    if steps < 0:
        raise ValueError(f"{op}: steps must be >= 0, got {steps}")
    return int(steps)


# ---- the model side -----------------------------------------------------------------------------

def _unwrap(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def _input_dtype(net: nn.Module, x: Tensor, input_dtype):
    if input_dtype is not None:
        return input_dtype
    if torch.is_autocast_enabled(x.device.type):
        return None  # autocast casts inside the model
    for p in net.parameters():
        if p.dtype.is_floating_point:
            return p.dtype if p.dtype in (torch.float16, torch.bfloat16) else None
    return None


class _EvalMode:
    """Every submodule in eval mode inside the block; each one's own flag restored after."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc):
        for m, mode in self.modes:
            m.training = mode
        return False


class _Attack:
    """What one attack call needs to compute input gradients."""

    def __init__(self, op, model, x, y, labels, targeted, loss_fn, input_dtype):
        if torch.is_inference_mode_enabled():
            raise RuntimeError(f"{op} needs input gradients: call it outside torch.inference_mode() "
                               f"(torch.no_grad() is fine)")
        self.net = _unwrap(model)
        self.dtype = _input_dtype(self.net, x, input_dtype)
        self.loss_fn = loss_fn
        self.y = y
        self.labels = labels
        # least_likely is a targeted step toward y_LL (Kurakin et al.'s step l.l. / iter. l.l.)
        self.descend = targeted or labels == "least_likely"

    def forward(self, x_state: Tensor) -> Tensor:
        return self.net(x_state if self.dtype is None else x_state.to(self.dtype))

    def clean_labels(self, logits: Tensor) -> None:
        """y' from the clean logits for labels='pred' / 'least_likely'."""
        if self.labels == "pred":
            self.y = logits.detach().argmax(dim=1)
        elif self.labels == "least_likely":
            self.y = logits.detach().argmin(dim=1)

    def loss(self, logits: Tensor) -> Tensor:
        if self.loss_fn is None:
            loss = F.cross_entropy(logits.float(), self.y, reduction="sum")
        else:
            loss = self.loss_fn(logits, self.y)
            if not isinstance(loss, Tensor):
                raise TypeError(f"loss_fn must return a tensor, got {type(loss).__name__}")
            if loss.dim() > 0:  # per-sample losses: their sum keeps samples independent
                loss = loss.sum()
        return -loss if self.descend else loss

    def grad(self, x_state: Tensor, need_labels: bool = False) -> Tensor:
        """d loss / d x at x_state; the graph is freed before returning."""
        with torch.enable_grad():
            xin = x_state.detach().requires_grad_(True)
            logits = self.forward(xin)
            if need_labels:
                self.clean_labels(logits)
            (g,) = torch.autograd.grad(self.loss(logits), (xin,))
        return g

    def logits(self, x_state: Tensor) -> Tensor:
        with torch.no_grad():
            return self.forward(x_state).detach()


def _state(x: Tensor) -> Tuple[Tensor, Tensor]:
    """(x_nat, x_adv): the clean input and a copy to work on, float32 (float64 kept), in x's
    memory format."""
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    x_nat = x.detach().to(dt)
    return x_nat, x_nat.clone(memory_format=torch.preserve_format)


def _result(x_adv: Tensor, x: Tensor, attack: _Attack, return_logits: bool):
    out = x_adv if x_adv.dtype == x.dtype else x_adv.to(x.dtype)
    if return_logits:
        return out, attack.logits(x_adv)
    return out


# ---- public API ---------------------------------------------------------------------------------

def fgsm(model: nn.Module, x: Tensor, y: Optional[Tensor], eps: Union[Number, Tensor], *,
         labels: str = "true", targeted: bool = False, lo=None, hi=None,
         loss_fn: Optional[Callable[[Tensor, Tensor], Tensor]] = None, return_logits: bool = False,
         input_dtype: Optional[torch.dtype] = None):
    r"""Fast gradient sign method: ``clamp(x + s * eps * sign(grad_x L(f(x), y')), lo, hi)``.

    One forward and backward through ``model`` and one fused :func:`adkernels.sign_step_`.

    Args:
        model: an ``nn.Module`` returning logits ``[N, K]`` (class dimension 1); may be wrapped in
            ``DistributedDataParallel`` and may run under ``torch.autocast``.
        x: ``[N, ...]`` floating input (any memory format, e.g. channels_last).
        y: ``[N]`` int64 labels (target classes with ``targeted=True``); required with
            ``labels="true"``, not used (may be None) otherwise.
        eps: the step (= the linf radius), a number >= 0 or a per-sample ``[N]`` tensor.
        labels: ``"true"``, ``"pred"`` (clean prediction, avoids label leaking) or
            ``"least_likely"`` (clean argmin; a targeted step toward it): see the module doc.
        targeted: descend the loss of ``y`` (step toward class ``y``) instead of ascending.
        lo, hi: the valid input box: None, numbers, or tensors broadcastable to x (per-channel
            ``[1, C, 1, 1]`` bounds of normalized images).
        loss_fn: ``loss_fn(logits, labels)`` returning per-sample losses or their sum (default:
            cross entropy, summed; a mean would scale the gradient by 1/N, which does not change the
            sign step).
        return_logits: also return ``model(x_adv)`` (eval mode, no grad).
        input_dtype: the dtype x_adv is cast to at the model's input (default: the model's
            parameter dtype when that is fp16 / bf16 and autocast is off, else no cast).

    Returns:
        ``x_adv`` (x's shape, dtype and memory format, detached), or ``(x_adv, logits)``.

    Example:
        >>> import torch, adkernels
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x = torch.rand(2, 4); y = torch.tensor([0, 2])
        >>> x_adv = adkernels.attacks.fgsm(model, x, y, 0.1, lo=0.0, hi=1.0)
        >>> bool((x_adv - x).abs().max() <= 0.1 + 1e-7), x_adv.shape
        (True, torch.Size([2, 4]))
    """
    op = "fgsm"
    _check_x(op, x)
    _check_labels(op, labels, targeted, y, x)
    eps = _check_scalar(op, "eps", eps, x)
    _ops._bounds(op, lo, hi, x, None, True)
    attack = _Attack(op, model, x, y, labels, targeted, loss_fn, input_dtype)
    x_nat, x_adv = _state(x)
    with _EvalMode(model):
        g = attack.grad(x_adv, need_labels=labels != "true")
        _ops.sign_step_(x_adv, g, eps, lo=lo, hi=hi)
        del g
        return _result(x_adv, x, attack, return_logits)


def pgd(model: nn.Module, x: Tensor, y: Optional[Tensor], eps: Union[Number, Tensor],
        alpha: Union[Number, Tensor], steps: int, *, norm: str = "linf", random_start: bool = True,
        labels: str = "true", targeted: bool = False, lo=None, hi=None,
        generator: Optional[torch.Generator] = None,
        loss_fn: Optional[Callable[[Tensor, Tensor], Tensor]] = None, return_logits: bool = False,
        input_dtype: Optional[torch.dtype] = None):
    r"""Projected gradient descent (Madry et al.) in the linf or l2 ball on the fused steps.

    ``x_0 = x`` or, with ``random_start``, :func:`adkernels.random_start` (uniform in the ball,
    inside the box); then ``steps`` times ``x_{t+1} = pgd_step_(x_t, s * grad, x, alpha, eps)``:
    ascent (linf: ``alpha * sign(grad)``; l2: ``alpha * grad / ||grad||_2``), projection onto the
    eps-ball around x, then the box ``[lo, hi]``. One forward + input-only backward and one fused
    in-place step per iteration; x_adv is one fp32 buffer updated in place.

    Args:
        model, x, y, labels, targeted, lo, hi, loss_fn, return_logits, input_dtype: as in
            :func:`fgsm` (``labels="least_likely"`` is the iterative least-likely class method,
            with y_LL from the clean input).
        eps: the radius, a number >= 0 or a per-sample ``[N]`` tensor.
        alpha: the step size, a number >= 0 or a per-sample ``[N]`` tensor.
        steps: number of iterations (>= 0; 0 returns the start point).
        norm: ``"linf"`` or ``"l2"``.
        random_start: start from a uniform random point of the ball (Madry et al.) instead of x.
        generator: a ``torch.Generator`` for the random start.

    Returns:
        ``x_adv`` (x's shape, dtype and memory format, detached), or ``(x_adv, logits)`` with
        the logits of the returned x_adv.

    Example:
        >>> import torch, adkernels
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x = torch.rand(2, 4); y = torch.tensor([0, 2])
        >>> x_adv = adkernels.attacks.pgd(model, x, y, 0.1, 0.025, 10, random_start=False, lo=0.0, hi=1.0)
        >>> bool((x_adv - x).abs().max() <= 0.1 + 1e-7)
        True
    """
    op = "pgd"
    _check_x(op, x)
    _check_labels(op, labels, targeted, y, x)
    eps = _check_scalar(op, "eps", eps, x)
    alpha = _check_scalar(op, "alpha", alpha, x)
    steps = _check_steps(op, steps)
    _ops._norm_id(op, norm)
    if not isinstance(random_start, bool):
        raise TypeError(f"{op}: random_start must be True or False, got {random_start!r}")
    _ops._bounds(op, lo, hi, x, None, True)
    attack = _Attack(op, model, x, y, labels, targeted, loss_fn, input_dtype)
    x_nat, x_adv = _state(x)
    with _EvalMode(model):
        need_labels = labels != "true"
        if random_start:
            if need_labels:  # y' comes from the clean input, not from the random start
                attack.clean_labels(attack.logits(x_nat))
                need_labels = False
            x_adv = _random_start(op, x_nat, x_adv, eps, norm, lo, hi, generator)
        elif need_labels and steps == 0:
            need_labels = False
        for _ in range(steps):
            g = attack.grad(x_adv, need_labels=need_labels)  # step 0 at x: its logits give y'
            need_labels = False
            _ops.pgd_step_(x_adv, g, x_nat, alpha, eps, norm=norm, lo=lo, hi=hi, validate=False)
            del g
        return _result(x_adv, x, attack, return_logits)


def _random_start(op, x_nat: Tensor, x_adv: Tensor, eps, norm, lo, hi, generator) -> Tensor:
    """x_adv (a copy of x_nat) moved to a uniform random point of the eps-ball, inside the box:
    adkernels.random_start_ in place (no new buffer), in-kernel Philox keyed from ``generator``."""
    import adkernels

    fn_ = getattr(adkernels, "random_start_", None)
    if fn_ is not None:
        return fn_(x_adv, eps, norm=norm, lo=lo, hi=hi, generator=generator, validate=False)
    fn = getattr(adkernels, "random_start", None)
    if fn is None:
        raise NotImplementedError(f"{op}: random_start=True needs adkernels.random_start, which this build "
                                  f"does not have; pass random_start=False")
    x0 = fn(x_nat, eps, norm=norm, lo=lo, hi=hi, generator=generator).detach()
    return x_adv.copy_(x0)  # keeps the state's dtype and memory format
