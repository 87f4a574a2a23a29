"""adkernels.train: the thin trainer (recipes, models, data, one loop, checkpoints, DDP).

Run it::

    adkernels train --recipe adim --data mnist --n-train 100 --epochs 3
    python -m adkernels.train --recipe kd --config run.toml --seed 1
    torchrun --nproc_per_node=2 -m adkernels.train --recipe ce --data digits --n-train 500

Every field of a recipe's config dataclass is an option (``n_train`` -> ``--n-train``, booleans
``--gumbel`` / ``--no-gumbel``); a ``--config`` TOML (stdlib) or YAML (needs pyyaml) file gives
defaults that the command line overrides. ``adkernels train --list-recipes`` lists the recipes.

Recipes: ``ce``, ``label_smoothing``, ``kd`` (Hinton "DISTN"), ``ngan``, ``adib``, ``adim``
(Algorithm 1 of the adversarial distillation paper), ``fgsm_at`` (Wong et al., random start,
alpha = 1.25 eps), ``pgd_at`` (Madry et al.), ``ada_lab``. Outputs under ``--out-dir``
(default ``runs/<recipe>-<data>-n<n>-s<seed>``): ``metrics.jsonl`` (train / eval / skip records),
``checkpoint.safetensors`` (atomic; ``--resume`` continues exactly), ``curves.png``,
``config.json``.

Adding a recipe (e.g. ``distill_lm`` in ``adkernels/train/lm/``)::

    from dataclasses import dataclass
    from adkernels.train import TrainConfig, register_recipe

    @dataclass
    class DistillLMConfig(TrainConfig):      # or any dataclass with a ``recipe`` field
        recipe: str = "distill_lm"
        model: str = "tiny"

    def run_distill_lm(cfg) -> dict:         # trains, returns a dict of results
        ...

    register_recipe("distill_lm", DistillLMConfig, run_distill_lm, help="LLM distillation")

The package ``adkernels.train.lm`` is imported (if it exists) before recipes are looked up, so
registering at its import time is enough. A recipe reusing this loop instead subclasses
``recipes.Recipe`` and registers ``functools.partial(train, recipe_cls=MyRecipe)``.
"""
import functools
import sys

from .config import (  # noqa: F401
    RECIPES, ADIBConfig, ADIMConfig, AdaLabConfig, AdversarialConfig, AdvTrainConfig, CEConfig, FGSMATConfig,
    KDConfig, LabelSmoothingConfig, NGANConfig, PGDATConfig, TeacherConfig, TrainConfig, get_recipe,
    load_config_file, make_config, parse_args, register_recipe,
)
from .loop import NonFiniteLossError, train  # noqa: F401

_BUILTIN = {
    "ce": (CEConfig, "cross entropy (baseline)"),
    "label_smoothing": (LabelSmoothingConfig, "cross entropy with label smoothing"),
    "kd": (KDConfig, "Hinton knowledge distillation (DISTN) from a LeNet teacher trained first"),
    "ngan": (NGANConfig, "student vs a binary discriminator of (image, label vector) pairs"),
    "adib": (ADIBConfig, "adversarial distillation, binary discriminator (Algorithm 1)"),
    "adim": (ADIMConfig, "adversarial distillation, three-way discriminator (Algorithm 1)"),
    "fgsm_at": (FGSMATConfig, "fast FGSM adversarial training (random start, alpha = 1.25 eps)"),
    "pgd_at": (PGDATConfig, "PGD adversarial training"),
    "ada_lab": (AdaLabConfig, "adversarial training on ADA-Lab-refined labels"),
}


def _register_builtins():
    from .recipes import RECIPE_CLASSES

    for name, (cls, help_) in _BUILTIN.items():
        if name not in RECIPES:
            register_recipe(name, cls, functools.partial(train, recipe_cls=RECIPE_CLASSES[name]), help=help_)


_plugins_loaded = False


def _load_plugins():
    """Register the built-in recipes, then import ``adkernels.train.lm`` if present."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    _register_builtins()
    try:
        import importlib

        importlib.import_module(".lm", __name__)
    except ModuleNotFoundError as e:
        if e.name != __name__ + ".lm":
            print(f"adkernels.train: adkernels.train.lm not loaded ({e})", file=sys.stderr)
    except Exception as e:  # a broken plugin must not take the built-in recipes down
        print(f"adkernels.train: adkernels.train.lm failed to import: {e!r}", file=sys.stderr)


def run(cfg) -> dict:
    """Train with a config object (from ``parse_args`` or built directly)."""
    return get_recipe(cfg.recipe).run_fn(cfg)


def main(argv=None) -> int:
    cfg = parse_args(argv)
    try:
        result = run(cfg)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except NotImplementedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 4
    import os

    if os.environ.get("RANK", "0") != "0":
        return 0
    final = result.get("final", {})
    if final and not result.get("stopped"):
        print("final: " + "  ".join(f"{k}={v:.4f}" for k, v in final.items() if isinstance(v, float)))
    print(f"outputs in {result['out_dir']}")
    return 0


__all__ = [
    "TrainConfig", "CEConfig", "LabelSmoothingConfig", "TeacherConfig", "KDConfig", "AdversarialConfig",
    "NGANConfig", "ADIBConfig", "ADIMConfig", "AdvTrainConfig", "FGSMATConfig", "PGDATConfig", "AdaLabConfig",
    "RECIPES", "register_recipe", "get_recipe", "parse_args", "load_config_file", "make_config", "train", "run",
    "main", "NonFiniteLossError",
]
