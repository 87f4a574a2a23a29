"""Training-curve plots (matplotlib, headless) from a run's metrics.jsonl."""
import json
import os


def _records(path):
    with open(path) as f:
        return [json.loads(ln) for ln in f if ln.strip()]


def plot_run(metrics_path: str, out_png: str, title: str = "") -> str:
    """Loss per phase against step (left) and eval accuracies against epoch (right)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ""
    recs = _records(metrics_path)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    phases = sorted({r["phase"] for r in recs if r["type"] == "train"})
    for ph in phases:
        rs = [r for r in recs if r["type"] == "train" and r["phase"] == ph]
        a.plot([r["step"] for r in rs], [r["loss"] for r in rs], ".", ms=3, label=ph)
    a.set_xlabel("step")
    a.set_ylabel("training loss")
    a.legend(fontsize=8)
    ev = [r for r in recs if r["type"] == "eval"]
    for key in sorted({k for r in ev for k in r if k.endswith("_acc")}):
        b.plot([r["epoch"] for r in ev if key in r], [r[key] for r in ev if key in r], "o-", ms=3, label=key)
    b.set_xlabel("epoch")
    b.set_ylabel("test accuracy")
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def plot_compare(runs: dict, out_png: str, key: str = "student_acc", title: str = "") -> str:
    """Test accuracy against epoch for several runs: ``runs`` maps a label to a metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, path in runs.items():
        ev = [r for r in _records(path) if r["type"] == "eval" and key in r]
        ax.plot([r["epoch"] for r in ev], [r[key] for r in ev], "o-", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(key.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
