"""End-to-end PGD benchmark: ``adkernels.attacks.pgd`` against torchattacks.PGD on a small CNN.

    python benchmarks/bench_pgd_e2e.py [--quick] [--batch 128] [--size 32] [--steps 10]
                                       [--device cpu|cuda] [--out benchmarks/results]

PGD-10 (linf, eps 8/255, alpha 2/255, box [0, 1], no random start so every variant takes the
same path) on a 4-layer CNN (conv 32 / 64 stride 2 / 128 stride 2, global average pool,
linear 10), float32 images [N, 3, S, S], contiguous and channels_last (model converted too):
  adkernels     adkernels.attacks.pgd: one fp32 x_adv buffer, fused in-place pgd_step_
  torchattacks  torchattacks.PGD(model, eps, alpha, steps, random_start=False)
  eager         the same attack written with torch ops (sign, add, max / min, clamp), as in
                tests/test_attacks_model.py
  model_only    the 10 forward + input-gradient passes alone (no update): the floor of any
                PGD implementation with this model; (variant - model_only) / steps is what one
                update costs on top of the model
Before timing, results are compared: adkernels must be bit-identical to the eager loop (the
same rounding: x_adv + alpha * sign(g), then max / min, then clamp); torchattacks projects as
``x + clamp(x_adv - x, -eps, eps)``, which rounds differently by an ulp, so its difference is
reported (max |diff|, share of identical elements, share of identical predictions).

torchattacks is not a dependency of adkernels: install it for this benchmark only with
``pip install --no-deps torchattacks`` (--no-deps so pip does not replace torch). Without it
the torchattacks rows are skipped with a message.

Results: pgd_e2e[_quick].csv and bench_pgd_e2e[_quick].png under --out, and a printed table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adkernels import attacks  # noqa: E402
from common import busy_note, env_info, print_table, save_bar_chart, time_fns, write_csv  # noqa: E402

EPS, ALPHA = 8.0 / 255, 2.0 / 255


def small_cnn(width=32, classes=10, seed=0):
    torch.manual_seed(seed)
    w = width
    return nn.Sequential(
        nn.Conv2d(3, w, 3, padding=1), nn.ReLU(),
        nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, classes),
    )


def eager_pgd(model, x, y, eps, alpha, steps, lo=0.0, hi=1.0):
    """PGD-linf in torch ops (summed cross entropy, sign step, ball then box)."""
    model.eval()
    xa = x.clone()
    for _ in range(steps):
        xi = xa.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xi), y, reduction="sum"), xi)
        v = xa + alpha * torch.sign(g)
        xa = torch.clamp(torch.min(torch.max(v, x - eps), x + eps), lo, hi)
    return xa


def model_only(model, x, y, steps):
    model.eval()
    for _ in range(steps):
        xi = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xi), y, reduction="sum"), xi)


def load_torchattacks():
    try:
        import torchattacks
    except Exception as e:  # noqa: BLE001  missing, or broken against this torch
        print(f"torchattacks not available ({type(e).__name__}: {e}); skipping its rows. "
              f"Install it for this benchmark only: pip install --no-deps torchattacks")
        return None
    return torchattacks


def bench_case(batch, size, width, steps, layout, device, *, repeats, ta=None):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    model = small_cnn(width).to(device)
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    model.eval()

    fns = {
        "adkernels": lambda: attacks.pgd(model, x, y, EPS, ALPHA, steps, lo=0.0, hi=1.0, random_start=False),
        "eager": lambda: eager_pgd(model, x, y, EPS, ALPHA, steps),
        "model_only": lambda: model_only(model, x, y, steps),
    }
    ours, want = fns["adkernels"](), fns["eager"]()
    if not torch.equal(ours, want):
        raise SystemExit(f"{layout}: adkernels.attacks.pgd is not bit-identical to the eager loop "
                         f"(max diff {(ours - want).abs().max().item():.3g})")
    row = {"batch": batch, "size": size, "width": width, "steps": steps, "layout": layout,
           "channels_last_kept": ours.is_contiguous(memory_format=torch.channels_last)}
    if ta is not None:
        atk = ta.PGD(model, eps=EPS, alpha=ALPHA, steps=steps, random_start=False)
        fns["torchattacks"] = lambda: atk(x, y)
        theirs = fns["torchattacks"]()
        with torch.no_grad():
            same_pred = (model(ours).argmax(1) == model(theirs).argmax(1)).float().mean().item()
        row.update(ta_max_abs_diff=(ours - theirs).abs().max().item(),
                   ta_identical_share=(ours == theirs).float().mean().item(),
                   ta_same_prediction_share=same_pred)
    with torch.no_grad():
        row["clean_acc_vs_random_labels"] = (model(x).argmax(1) == y).float().mean().item()
        row["adv_acc_vs_random_labels"] = (model(ours).argmax(1) == y).float().mean().item()
    t = time_fns(fns, warmup=1, repeats=repeats, device=device)
    for k, v in t.items():
        row[f"{k}_ms"] = v.median
    row["torchattacks_ms"] = row.get("torchattacks_ms", float("nan"))
    row["torchattacks_over_adkernels"] = row["torchattacks_ms"] / row["adkernels_ms"]
    row["eager_over_adkernels"] = row["eager_ms"] / row["adkernels_ms"]
    row["adkernels_over_model_only"] = row["adkernels_ms"] / row["model_only_ms"]
    per = lambda k: (row[f"{k}_ms"] - row["model_only_ms"]) / max(steps, 1)  # noqa: E731
    row["update_ms_adkernels"] = per("adkernels")
    row["update_ms_torchattacks"] = per("torchattacks")
    row["update_ms_eager"] = per("eager")
    return row


SERIES = [("adkernels_ms", "adkernels.attacks.pgd"), ("torchattacks_ms", "torchattacks.PGD"),
          ("eager_ms", "eager torch loop"), ("model_only_ms", "model passes only (floor)")]


def plot(rows, path, title):
    labels = [f"{r['layout']}\n[{r['batch']}, 3, {r['size']}, {r['size']}]" for r in rows]
    ylabel = f"ms per PGD-{rows[0]['steps']} attack" if rows else "ms per PGD attack"
    return save_bar_chart(rows, path, SERIES, labels, title=title, ylabel=ylabel, log=False)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="batch 8, 16x16, width 8, 2 repeats")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = p.parse_args(argv)
    batch = a.batch or (8 if a.quick else 128)
    size = a.size or (16 if a.quick else 32)
    width = a.width or (8 if a.quick else 32)
    repeats = a.repeats or (2 if a.quick else 5)
    info = env_info(a.device)
    print("adkernels end-to-end PGD benchmark:", ", ".join(f"{k}={v}" for k, v in info.items()))
    note = busy_note(info["threads"])
    if note:
        print(note)
    ta = load_torchattacks()
    t_start = time.perf_counter()
    rows = []
    for layout in ("contiguous", "channels_last"):
        rows.append(bench_case(batch, size, width, a.steps, layout, a.device, repeats=repeats, ta=ta))
    cols = ["layout", "adkernels_ms", "torchattacks_ms", "eager_ms", "model_only_ms",
            "torchattacks_over_adkernels", "eager_over_adkernels", "adkernels_over_model_only"]
    print_table(rows, cols, title=f"PGD-{a.steps}, [{batch}, 3, {size}, {size}] fp32, CNN width {width}; ms per attack")
    cols = ["layout", "update_ms_adkernels", "update_ms_torchattacks", "update_ms_eager", "ta_max_abs_diff",
            "ta_identical_share", "ta_same_prediction_share", "channels_last_kept"]
    print_table(rows, cols, title="per-update cost on top of the model passes (ms); agreement with torchattacks")
    out = Path(a.out)
    suffix = "_quick" if a.quick else ""
    csv = write_csv([dict(r, **{k: v for k, v in info.items() if k != "load_avg_1m"},
                          load_avg_1m_at_start=info["load_avg_1m"]) for r in rows], out / f"pgd_e2e{suffix}.csv")
    png = out / f"bench_pgd_e2e{suffix}.png"
    plot(rows, png, f"{info['cpu']}, {info['threads']} threads, torch {info['torch']}, load {info['load_avg_1m']}")
    print(f"\nwrote {csv}, {png} ({time.perf_counter() - t_start:.0f} s)")
    return rows


if __name__ == "__main__":
    main()
