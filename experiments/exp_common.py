"""Helpers shared by the experiment scripts of experiments 2-5 (gumbel_ngs.py, label_leaking.py,
fast_at.py, fused_vs_reference.py): run a recipe, load its trained model, evaluate under attack,
record the code version and machine load, and put a results table into experiments/README.md
between ``<!-- table: ... -->`` / ``<!-- end table -->`` markers.
"""
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from adkernels import train as T  # noqa: E402


def one_thread():
    """Every experiment runs on one thread (the machine is shared): torch and OpenMP."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


def code_version() -> dict:
    """HEAD commit, whether adkernels/ or csrc/ differ from it, and the build's mtime."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception:  # pragma: no cover - no git
            return ""

    dirty = [ln.split(maxsplit=1)[-1] for ln in git("status", "--porcelain", "--", "adkernels", "csrc").splitlines()]
    so = [f for f in os.listdir(os.path.join(ROOT, "adkernels")) if f.startswith("_C") and f.endswith(".so")]
    so_mtime = (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(os.path.getmtime(os.path.join(ROOT, "adkernels", so[0]))))
                if so else None)
    import hashlib

    diff = git("diff", "HEAD", "--", "adkernels", "csrc")
    return {"commit": git("rev-parse", "HEAD"), "uncommitted_in_adkernels_csrc": dirty,
            "uncommitted_diff_sha1": hashlib.sha1(diff.encode()).hexdigest() if diff else None,
            "extension_built": so_mtime, "adversarial_distillation_loss": adl_impl()}


def adl_impl() -> str:
    """Whether ``adversarial_distillation_loss`` runs the fused ``adv_distill_fwd`` kernel in
    this process or the composition of the separate ops."""
    import inspect

    import adkernels.ops.adversarial as adv

    try:
        src = inspect.getsource(adv)
    except OSError:  # pragma: no cover
        return "unknown"
    has_op = hasattr(torch.ops.adkernels, "adv_distill_fwd")
    return "fused kernel (adv_distill_fwd)" if has_op and '_kernel("adv_distill_fwd"' in src else "composition of ops"


def load_avg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "?"


def make_cfg(recipe: str, **kw):
    return T.make_config(T.get_recipe(recipe).config_cls, {"recipe": recipe, "num_threads": 1, "progress": False,
                                                           **kw})


def run(cfg, recipe_cls=None) -> dict:
    """Train ``cfg`` (with ``recipe_cls`` if given: a subclass of a built-in recipe); return the
    loop's result plus the eval records of metrics.jsonl."""
    t0 = time.time()
    res = T.train(cfg, recipe_cls) if recipe_cls is not None else T.run(cfg)
    res["wall_total_s"] = round(time.time() - t0, 2)
    res["evals"] = read_evals(cfg.out_dir)
    return res


def read_evals(out_dir: str) -> list:
    path = os.path.join(out_dir, "metrics.jsonl")
    return [r for r in map(json.loads, open(path)) if r.get("type") == "eval"]


def read_train(out_dir: str) -> list:
    path = os.path.join(out_dir, "metrics.jsonl")
    return [r for r in map(json.loads, open(path)) if r.get("type") == "train"]


def load_model(cfg, name: str = "student"):
    """The trained ``name`` model of a finished run (rebuilt from its config, weights from the
    run's checkpoint.safetensors), in eval mode."""
    from safetensors.torch import load_file

    from adkernels.train.data import load_split
    from adkernels.train.models import build_classifier

    shape = load_split(cfg.data, cfg.n_train, 1, cfg.data_seed).image_shape
    classes = 10
    net = build_classifier(cfg.student, shape, classes, hidden=cfg.student_hidden, dropout=cfg.student_dropout)
    tensors = load_file(os.path.join(cfg.out_dir, "checkpoint.safetensors"))
    prefix = f"model/{name}/"
    net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return net.eval()


@torch.no_grad()
def accuracy(net, x, y, batch: int = 500) -> float:
    net.eval()
    return sum((net(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item() for i in range(0, len(x), batch)) / len(x)


def attacked_accuracy(net, x, y, attack, batch: int = 250) -> float:
    """Accuracy on ``attack(net, xb, yb)`` examples, batch by batch (model in eval mode)."""
    correct = 0
    for i in range(0, len(x), batch):
        xa = attack(net, x[i:i + batch], y[i:i + batch])
        with torch.no_grad():
            net.eval()
            correct += (net(xa).argmax(1) == y[i:i + batch]).sum().item()
    return correct / len(x)


def append_jsonl(path: str, rec: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def read_jsonl(path: str) -> list:
    return [json.loads(ln) for ln in open(path) if ln.strip()] if os.path.exists(path) else []


def update_readme(md_rel: str, text: str, readme: str = os.path.join(ROOT, "experiments", "README.md")) -> bool:
    """Replace what lies between ``<!-- table: <md_rel> -->`` and the next ``<!-- end table -->``
    in the README with ``text``; False (README untouched) if the markers are not there."""
    start = f"<!-- table: {md_rel} -->"
    if not os.path.exists(readme):
        return False
    doc = open(readme).read()
    i = doc.find(start)
    if i < 0:
        return False
    j = doc.find("<!-- end table -->", i)
    if j < 0:
        return False
    new = doc[:i + len(start)] + "\n" + text.rstrip("\n") + "\n" + doc[j:]
    if new != doc:
        with open(readme, "w") as f:
            f.write(new)
    return True


def write_table(out: str, name: str, text: str, readme: bool) -> str:
    """Write ``out/<name>.md`` and, if ``readme``, copy it into the README's marked block."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{name}.md")
    with open(path, "w") as f:
        f.write(text.rstrip("\n") + "\n")
    if readme:
        rel = os.path.relpath(path, ROOT)
        if not update_readme(rel, text):
            print(f"(README has no '<!-- table: {rel} -->' block; table only in {path})")
    return path
