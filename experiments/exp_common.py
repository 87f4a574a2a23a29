"""Helpers shared by the experiment scripts of experiments 2-5 (gumbel_ngs.py, label_leaking.py,
fast_at.py, fused_vs_reference.py): resume a sweep (which runs of runs.jsonl are done), run a
recipe, load its trained model, evaluate under attack, record the code version and machine load,
group a sweep's records into table rows, and put a results table into experiments/README.md
between ``<!-- table: ... -->`` / ``<!-- end table -->`` markers.
"""
import json
import os
import statistics
import subprocess
import sys
import time
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from adkernels import attacks  # noqa: E402
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


class Sweep(NamedTuple):
    """Where a resumable sweep of runs stands (see :func:`start_sweep`)."""
    readme: bool  # update the README table at the end
    log: str  # its runs.jsonl
    tag: dict  # the settings every record of this sweep carries
    done: set  # (name, seed) pairs already in the log with this tag


def start_sweep(args, parser, skip=("out", "methods", "seeds"), key: str = "method", commit=None) -> Sweep:
    """The state of the sweep that ``args`` (parsed by ``parser``) asks for: whether it updates the
    README (a full run, no ``--quick``, into the parser's default ``--out``), ``--out``/runs.jsonl,
    its tag (the options less ``skip``, those that choose which runs to do rather than how they
    run; records with equal tags belong to one sweep) and the ``(record[key], seed)`` pairs already
    logged with that tag (and at ``commit``, if given), which a rerun skips."""
    readme = not args.quick and os.path.abspath(args.out) == os.path.abspath(parser.get_default("out"))
    log = os.path.join(args.out, "runs.jsonl")
    tag = {k: v for k, v in vars(args).items() if k not in skip}
    done = {(r[key], r["seed"]) for r in read_jsonl(log)
            if r["tag"] == tag and (commit is None or r["code"]["commit"] == commit)}
    return Sweep(readme, log, tag, done)


def pending(seeds, names, done):
    """``(seed, name)`` for every seed and, within it, every name in order, leaving out the pairs in
    ``done`` (``(name, seed)``, as :func:`start_sweep` gives them)."""
    for seed in seeds:
        for name in names:
            if (name, seed) not in done:
                yield seed, name


def saved_config(cfg) -> dict:
    """The fields of ``cfg`` stored with a run's record (all but its ``out_dir``)."""
    return {k: v for k, v in vars(cfg).items() if k != "out_dir"}


def provenance(cfg) -> dict:
    """The last fields of a run's record: machine load now, the code version and the config."""
    return {"load_avg": load_avg(), "code": code_version(), "config": saved_config(cfg)}


def make_cfg(recipe: str, **kw):
    return T.make_config(T.get_recipe(recipe).config_cls, {"recipe": recipe, "num_threads": 1, "progress": False,
                                                           **kw})


def adim_cfg(args, **kw):
    """The ADIM config of the options gumbel_ngs.py and fused_vs_reference.py share (``--data``,
    ``--n-train``, ``--n-test``, ``--batch-size``, ``--pretrain`` CE epochs, ``--rounds`` of
    Algorithm 1, ``--passes D T S``; plots unless ``--quick``), plus the fields ``kw``."""
    return make_cfg("adim", data=args.data, n_train=args.n_train, n_test=args.n_test, batch_size=args.batch_size,
                    pretrain_epochs=args.pretrain, epochs=args.rounds, d_passes=args.passes[0],
                    t_passes=args.passes[1], s_passes=args.passes[2], plots=not args.quick, **kw)


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


def fgsm_accuracy(net, x, y, eps: float, labels: str = "true") -> float:
    """Accuracy on FGSM examples (one step of ``eps``, no random start, box [0, 1]) crafted from the
    ``labels`` ("true" or "pred")."""
    return attacked_accuracy(net, x, y, lambda m, xb, yb: attacks.fgsm(m, xb, yb, eps, labels=labels, lo=0.0, hi=1.0))


def pgd_accuracy(net, x, y, eps: float, alpha: float, steps: int, seed: int) -> float:
    """Robust accuracy under linf PGD (``steps`` steps of ``alpha``, random start, box [0, 1]); the
    random starts come from a generator seeded with ``1000 + seed``."""
    gen = torch.Generator().manual_seed(1000 + seed)
    return attacked_accuracy(net, x, y, lambda m, xb, yb: attacks.pgd(m, xb, yb, eps, alpha, steps, random_start=True,
                                                                      lo=0.0, hi=1.0, generator=gen))


def append_jsonl(path: str, rec: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def read_jsonl(path: str) -> list:
    return [json.loads(ln) for ln in open(path) if ln.strip()] if os.path.exists(path) else []


def groups(rows, names, keep=None):
    """A table's row groups: for every distinct ``tag`` of ``rows`` (in order of first appearance)
    and every method of ``names`` (in that order), ``(tag, method, its rows)``, the rows being those
    of that tag and method (and passing ``keep``, if given); empty groups are left out."""
    tags = []
    for r in rows:
        if r["tag"] not in tags:
            tags.append(r["tag"])
    for tag in tags:
        for m in names:
            rs = [r for r in rows if r["method"] == m and r["tag"] == tag and (keep is None or keep(r))]
            if rs:
                yield tag, m, rs


def mean_sd(values, nd: int = 1) -> str:
    """``mean`` or, for more than one value, ``mean +- stdev``, with ``nd`` decimals."""
    return f"{statistics.mean(values):.{nd}f}" + (f" +- {statistics.stdev(values):.{nd}f}" if len(values) > 1 else "")


def seed_list(rs) -> str:
    """The seeds of the records ``rs``, comma-separated."""
    return ",".join(str(r["seed"]) for r in rs)


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


def show_table(out: str, name: str, text: str, readme: bool) -> str:
    """Print a results table, then :func:`write_table` it."""
    print(text)
    return write_table(out, name, text, readme)
