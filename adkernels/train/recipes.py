"""The built-in recipes. Every loss goes through an adkernels op.

A recipe builds its models and optimizers, lists the phase of each pass over the training set
per epoch (``passes``), and computes one step's loss (``step``); the loop in ``loop.py`` does the
rest. Recipes that need an op this build lacks raise NotImplementedError naming it at start.

ADIB / ADIM follow Algorithm 1 of Wang et al. (adversarial distillation): per round (one epoch)
``d_passes`` discriminator passes, ``t_passes`` teacher passes, ``s_passes`` student passes; the
generators' label vectors are Gumbel-Softmax samples of their logits (temperature annealed
exponentially from ``tau_start`` to ``tau_end`` over the main epochs; ``--no-gumbel``: the plain
softmax, "ADIM-NGS"), scored by the discriminator with gradients flowing back through the
sample (the pathwise, reparameterized estimator). Student and teacher distill into each other
with ``kd_loss`` (KL at ``temperature``; the authors' code used an MSE on logits) with weights
``kd_weight_s`` / ``kd_weight_t`` (small). Per step one minibatch serves as the real, the
student and the teacher batch (n_r = n_s = n_t). NGAN is the student against a binary
discriminator, with no teacher.
"""
import warnings

import torch
import torch.nn.functional as F

from .loop import accuracy, hit_rate, predict, top_class_share, unwrap, wrap_ddp
from .models import Discriminator, build_classifier


def adk_op(name: str, recipe: str):
    """``adkernels.<name>`` (dotted names allowed), or NotImplementedError naming it."""
    import adkernels

    obj = adkernels
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise NotImplementedError(
                f"recipe {recipe!r} needs adkernels.{name}, which this build of adkernels does not have yet")
    return obj


class Recipe:
    needs: tuple = ()

    def __init__(self, cfg, data, device, dist):
        self.cfg, self.data, self.device, self.dist = cfg, data, device, dist
        self.ops = {n.split(".")[-1]: adk_op(n, cfg.recipe) for n in self.needs}
        self.models, self.optimizers = {}, {}
        self.student = self.add("student", self.make_student(), cfg.lr)

    def make_student(self):
        c, d = self.cfg, self.data
        return build_classifier(c.student, d.image_shape, d.num_classes, hidden=c.student_hidden,
                                dropout=c.student_dropout)

    def add(self, name, model, lr):
        model = wrap_ddp(model.to(self.device), self.dist, self.device)
        self.models[name] = model
        self.optimizers[name] = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=self.cfg.weight_decay)
        return model

    def pretrain_epochs(self) -> int:
        return 0

    def n_epochs(self) -> int:
        return self.pretrain_epochs() + self.cfg.epochs

    def passes(self, epoch):
        return ["student"]

    def evaluate(self, data) -> dict:
        out = {"student_acc": accuracy(self.student, data.x_test, data.y_test, self.cfg.eval_batch_size)}
        if "teacher" in self.models:
            out["teacher_acc"] = accuracy(self.models["teacher"], data.x_test, data.y_test, self.cfg.eval_batch_size)
        return out


class CE(Recipe):
    def step(self, phase, x, y, ctx):
        return F.cross_entropy(self.student(x), y), "student", {}


class LabelSmoothing(Recipe):
    def step(self, phase, x, y, ctx):
        return F.cross_entropy(self.student(x), y, label_smoothing=self.cfg.smoothing), "student", {}


class WithTeacher(Recipe):
    def __init__(self, cfg, data, device, dist):
        super().__init__(cfg, data, device, dist)
        teacher = build_classifier(cfg.teacher, data.image_shape, data.num_classes, dropout=cfg.teacher_dropout,
                                   width=cfg.teacher_width, fc=cfg.teacher_fc, hidden=cfg.student_hidden)
        self.teacher = self.add("teacher", teacher, cfg.teacher_lr)

    def pretrain_epochs(self):
        return self.cfg.pretrain_epochs

    def pretrain_step(self, phase, x, y):
        name = phase[:-len("_ce")]
        return F.cross_entropy(self.models[name](x), y), name, {}


class KD(WithTeacher):
    """Hinton et al. ("DISTN"): teacher trained with CE first, then the student on
    ``alpha * T^2 KL(p_t^T || p_s^T) + (1 - alpha) CE`` (``adkernels.kd_loss``)."""

    needs = ("kd_loss",)

    def passes(self, epoch):
        return ["teacher_ce"] if epoch < self.pretrain_epochs() else ["student"]

    def evaluate(self, data):
        # the teacher is frozen after pretraining: measure it once more, then reuse the number
        if getattr(self, "_teacher_acc", None) is None:
            self._teacher_acc = accuracy(self.teacher, data.x_test, data.y_test, self.cfg.eval_batch_size)
        return {"student_acc": accuracy(self.student, data.x_test, data.y_test, self.cfg.eval_batch_size),
                "teacher_acc": self._teacher_acc}

    def step(self, phase, x, y, ctx):
        if phase != "student":
            self._teacher_acc = None
            return self.pretrain_step(phase, x, y)
        if self.teacher.training:  # frozen teacher: eval mode (no dropout) for its soft targets
            self.teacher.eval()
        with torch.no_grad():
            t = self.teacher(x)
        c = self.cfg
        loss = self.ops["kd_loss"](self.student(x), t, y, temperature=c.temperature, alpha=c.alpha,
                                   divergence=c.divergence)
        return loss, "student", {}


class Adversarial(WithTeacher):
    """NGAN, ADIB and ADIM. See the module docstring."""

    needs = ("kd_loss", "gumbel_softmax", "temperature_schedule", "label_conditioned_scores")
    three_way = False
    has_teacher = True

    def __init__(self, cfg, data, device, dist):
        if self.three_way:
            self.needs = self.needs + ("discriminator_loss", "generator_loss")
        else:
            self.needs = self.needs + ("binary_adversarial_loss",)
        if not cfg.gumbel:
            self.needs = tuple(n for n in self.needs if n not in ("gumbel_softmax", "temperature_schedule"))
        if cfg.disc_form == "concat":
            self.needs = tuple(n for n in self.needs if n != "label_conditioned_scores")
        if self.has_teacher:
            super().__init__(cfg, data, device, dist)
        else:
            Recipe.__init__(self, cfg, data, device, dist)
        outputs = (3 if cfg.parameterization == "softmax" else 2) if self.three_way else 1
        disc = Discriminator(data.image_shape, data.num_classes, outputs, cfg.disc_form, cfg.d_width, cfg.d_fc,
                             cfg.d_dropout)
        self.disc = self.add("disc", disc, cfg.d_lr)
        self.weights = (cfg.weight_real, cfg.weight_student, cfg.weight_teacher)
        self._spread, self._collapse_warned = set(), set()  # models seen spread out / warned about

    def pretrain_epochs(self):
        return self.cfg.pretrain_epochs

    def passes(self, epoch):
        c = self.cfg
        if epoch < self.pretrain_epochs():
            return (["teacher_ce"] if self.has_teacher else []) + ["student_ce"]
        return ["disc"] * c.d_passes + (["teacher"] * c.t_passes if self.has_teacher else []) + ["student"] * c.s_passes

    def tau(self, ctx):
        step, total = ctx.main_progress
        return float(self.ops["temperature_schedule"](step, total, start=self.cfg.tau_start, end=self.cfg.tau_end))

    def label_vector(self, logits, ctx):
        if self.cfg.gumbel:
            return self.ops["gumbel_softmax"](logits, tau=self.tau(ctx), hard=self.cfg.hard)
        return torch.softmax(logits, dim=-1)

    def step(self, phase, x, y, ctx):
        if phase.endswith("_ce"):
            return self.pretrain_step(phase, x, y)
        if phase == "disc":
            return self.disc_step(x, y, ctx)
        return self.generator_step(phase, x, y, ctx)

    def disc_step(self, x, y, ctx):
        n, k = len(x), self.data.num_classes
        real = F.one_hot(y, k).to(x.dtype)
        with torch.no_grad():
            fakes = [self.label_vector(self.student(x), ctx)]
            if self.has_teacher:
                fakes.append(self.label_vector(self.teacher(x), ctx))
        labels = torch.cat([real] + fakes)
        scores = self.disc(x.repeat(len(labels) // n, *([1] * (x.dim() - 1))), labels)
        if self.three_way:
            source = torch.arange(3, device=x.device).repeat_interleave(n)
            loss = self.ops["discriminator_loss"](scores, source, weights=self.weights,
                                                  parameterization=self.cfg.parameterization)
        else:
            loss = self.ops["binary_adversarial_loss"](scores[:n, 0], scores[n:, 0], kind="bce",
                                                       side="discriminator")
        return loss, "disc", self.disc_metrics(scores.detach(), n)

    def disc_metrics(self, scores, n):
        """D's accuracy per source on this batch (rows: real, student[, teacher]; n each):
        argmax of the source logits (softmax) or the real-vs-fake decision (binary)."""
        names = ["real", "student"] + (["teacher"] if self.has_teacher else [])
        if self.three_way and self.cfg.parameterization == "softmax":
            pred = scores.argmax(1)
        elif self.three_way:  # binary_tree: a = real-vs-fake, b = student-vs-teacher
            pred = torch.where(scores[:, 0] > 0, 0, torch.where(scores[:, 1] > 0, 1, 2))
        else:
            pred = torch.where(scores[:, 0] > 0, 0, 1)
        out = {} if self.three_way else {"d_real": torch.sigmoid(scores[:n, 0]).mean()}
        for i, name in enumerate(names):
            want = i if self.three_way else min(i, 1)
            out[f"d_acc_{name}"] = (pred[i * n:(i + 1) * n] == want).float().mean()
        return out

    def evaluate(self, data):
        """Test accuracy of the student (and teacher), plus ``<model>_top_class``: the share of its
        test predictions in its most predicted class. The adversarial game can collapse a generator
        onto one label (the minimax ``log D`` is unbounded below); a warning says so once per model
        when that share, having been lower at an earlier evaluation, is more than twice the largest
        true class share and above one half (an untrained model that predicts one class is not
        warned about)."""
        out = {}
        true_top = top_class_share(data.y_test, data.num_classes)
        for name in ("student", "teacher") if self.has_teacher else ("student",):
            pred = predict(self.models[name], data.x_test, self.cfg.eval_batch_size)
            out[f"{name}_acc"] = hit_rate(pred, data.y_test)
            out[f"{name}_top_class"] = top = top_class_share(pred, data.num_classes)
            if top <= max(0.5, 2 * true_top):
                self._spread.add(name)
            elif name in self._spread and name not in self._collapse_warned and self.dist.rank == 0:
                self._collapse_warned.add(name)
                warnings.warn(
                    f"{self.cfg.recipe}: {top:.0%} of the {name}'s test predictions are one class (the most "
                    f"common true class is {true_top:.0%} of the test set): the adversarial game has probably "
                    "collapsed onto one label; --gen-mode nonsat or --ce-weight 1.0 avoided this in our runs "
                    "(experiments/README.md, Table 1 at n = 1000)", RuntimeWarning, stacklevel=2)
        return out

    def use_fused(self):
        c = self.cfg
        return (c.fused and self.three_way and self.has_teacher and c.gumbel and c.disc_form == "label_conditioned"
                and hasattr(__import__("adkernels"), "adversarial_distillation_loss"))

    def fused_generator_step(self, who, x, y, ctx):
        """The same loss as ``generator_step`` (same Gumbel noise) through
        ``adkernels.adversarial_distillation_loss``: sample, scoring, generator loss and KD."""
        c = self.cfg
        logits = self.models[who](x)
        other_logits = self.targets_of(who, x)
        per_label = self.disc(x)
        source = torch.full((len(x),), 1 if who == "student" else 2, dtype=torch.long, device=x.device)
        tau = self.tau(ctx)
        loss = adk_op("adversarial_distillation_loss", c.recipe)(
            logits, other_logits, per_label, source, tau=tau, hard=c.hard, weights=self.weights,
            kd_weight=c.kd_weight_s if who == "student" else c.kd_weight_t, temperature=c.temperature,
            mode=c.gen_mode, parameterization=c.parameterization)
        if c.ce_weight:
            loss = loss + c.ce_weight * F.cross_entropy(logits, y)
        return loss, who, {"tau": tau}

    def generator_step(self, who, x, y, ctx):
        if self.use_fused():
            return self.fused_generator_step(who, x, y, ctx)
        c = self.cfg
        logits = self.models[who](x)
        other_logits = self.targets_of(who, x)
        if c.disc_form == "label_conditioned":  # D's per-label logits first: the RNG order of the fused step
            per_label = self.disc(x)
            sample = self.label_vector(logits, ctx)
            scores = self.ops["label_conditioned_scores"](per_label, sample)
        else:
            sample = self.label_vector(logits, ctx)
            scores = self.disc(x, sample)
        if self.three_way:
            source = torch.full((len(x),), 1 if who == "student" else 2, dtype=torch.long, device=x.device)
            adv = self.ops["generator_loss"](scores, source, mode=c.gen_mode, weights=self.weights,
                                             parameterization=c.parameterization)
        else:
            side = "generator" if c.gen_mode == "minimax" else "generator_nonsat"
            adv = self.ops["binary_adversarial_loss"](None, scores[:, 0], kind="bce", side=side)
        loss = adv
        metrics = {"adv": adv.detach()}
        if other_logits is not None:
            w = c.kd_weight_s if who == "student" else c.kd_weight_t
            kd = self.ops["kd_loss"](logits, other_logits, temperature=c.temperature)
            loss = loss + w * kd
            metrics["kd"] = kd.detach()
        if c.ce_weight:
            loss = loss + c.ce_weight * F.cross_entropy(logits, y)
        if c.gumbel:
            metrics["tau"] = self.tau(ctx)
        return loss, who, metrics

    def targets_of(self, who, x):
        """The other model's logits (no grad, eval mode: no dropout on the soft targets)."""
        if not self.has_teacher:
            return None
        other = self.teacher if who == "student" else self.student
        was = other.training
        other.eval()
        with torch.no_grad():
            out = other(x)
        other.train(was)
        return out


class NGAN(Adversarial):
    has_teacher = False

    def __init__(self, cfg, data, device, dist):
        self.needs = tuple(n for n in Adversarial.needs if n != "kd_loss")
        super().__init__(cfg, data, device, dist)


class ADIB(Adversarial):
    three_way = False


class ADIM(Adversarial):
    three_way = True


# ---- adversarial training -------------------------------------------------------------------

class AdvTrain(Recipe):
    """Adversarial training of a classifier on inputs in [0, 1] (eval: clean and PGD accuracy)."""

    needs = ("attacks.pgd", "random_start")

    def eps(self):
        return self.cfg.eps

    def evaluate(self, data):
        out = super().evaluate(data)
        c = self.cfg
        if c.eval_pgd_steps:
            pgd = self.ops["pgd"]
            eps = c.eps if c.eval_eps < 0 else c.eval_eps
            x, y = data.x_test[:c.eval_n], data.y_test[:c.eval_n]
            net = unwrap(self.student)
            correct = 0
            for i in range(0, len(x), c.eval_batch_size):
                xa = pgd(net, x[i:i + c.eval_batch_size], y[i:i + c.eval_batch_size], eps, 2.5 * eps / c.eval_pgd_steps,
                         c.eval_pgd_steps, random_start=True, lo=0.0, hi=1.0)
                with torch.no_grad():
                    net.eval()
                    correct += (net(xa).argmax(1) == y[i:i + c.eval_batch_size]).sum().item()
                    net.train()
            out[f"pgd{c.eval_pgd_steps}_acc"] = correct / max(1, len(x))
        return out


class FGSMAT(AdvTrain):
    """Wong, Rice, Kolter, "Fast is better than free": a uniform random start in the eps-ball,
    one FGSM step of alpha = 1.25 eps from it, projected back onto the ball (one ``pgd_step_``)."""

    needs = ("attacks.pgd", "random_start", "pgd_step_")

    def step(self, phase, x, y, ctx):
        c = self.cfg
        alpha = c.alpha or 1.25 * c.eps
        net = unwrap(self.student)
        target = y
        if c.attack_labels != "true":
            with torch.no_grad():
                logits = net(x)
            target = logits.argmax(1) if c.attack_labels == "pred" else logits.argmin(1)
        x_adv = self.ops["random_start"](x, c.eps, lo=0.0, hi=1.0).detach().requires_grad_(True)
        loss_a = F.cross_entropy(net(x_adv), target)
        if c.attack_labels == "least_likely":
            loss_a = -loss_a
        (g,) = torch.autograd.grad(loss_a, x_adv)
        x_adv = x_adv.detach()
        self.ops["pgd_step_"](x_adv, g, x, alpha, c.eps, lo=0.0, hi=1.0)
        return F.cross_entropy(self.student(x_adv), y), "student", {}


class PGDAT(AdvTrain):
    """Madry et al.: train on PGD examples (random start, ``steps`` steps of alpha = 2.5 eps / steps)."""

    def step(self, phase, x, y, ctx):
        c = self.cfg
        alpha = c.alpha or 2.5 * c.eps / c.steps
        x_adv = self.ops["pgd"](self.student, x, y, c.eps, alpha, c.steps, random_start=True, labels=c.attack_labels,
                                lo=0.0, hi=1.0)
        return F.cross_entropy(self.student(x_adv), y), "student", {}


class AdaLab(AdvTrain):
    """ADA-Lab-style label refinement (a reconstruction; the paper's text beyond its abstract is
    not public): PGD example x_adv, the adversary's adversary x_aa one descent step back from it,
    targets from ``adkernels.ada_lab_targets``, loss ``adkernels.soft_target_cross_entropy``."""

    needs = ("attacks.pgd", "random_start", "pgd_step", "ada_lab_targets", "soft_target_cross_entropy")

    def step(self, phase, x, y, ctx):
        c = self.cfg
        alpha = c.alpha or 2.5 * c.eps / c.steps
        net = unwrap(self.student)
        x_adv = self.ops["pgd"](self.student, x, y, c.eps, alpha, c.steps, random_start=True, lo=0.0, hi=1.0)
        xg = x_adv.detach().requires_grad_(True)
        was = net.training
        net.eval()
        (g,) = torch.autograd.grad(F.cross_entropy(net(xg), y), xg)
        x_aa = self.ops["pgd_step"](x_adv, -g, x, c.aa_step or alpha, c.eps, lo=0.0, hi=1.0)
        with torch.no_grad():
            logits_aa = net(x_aa)
        net.train(was)
        logits = self.student(x_adv)
        q = self.ops["ada_lab_targets"](logits.detach(), logits_aa, y, max_weight=c.max_weight, gamma=c.gamma,
                                        bias=c.bias, temperature=c.label_temperature)
        return self.ops["soft_target_cross_entropy"](logits, q), "student", {}


RECIPE_CLASSES = {
    "ce": CE, "label_smoothing": LabelSmoothing, "kd": KD, "ngan": NGAN, "adib": ADIB, "adim": ADIM,
    "fgsm_at": FGSMAT, "pgd_at": PGDAT, "ada_lab": AdaLab,
}
