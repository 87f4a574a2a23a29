"""vocab_parallel_kd_loss on 2 CPU processes (gloo) against kd_loss on the gathered logits.

One spawn runs every case on both ranks; each rank saves its loss and gradient slices (or the
error it raised) to a file, and the tests below compare them in this process with the
reference ``kd_loss`` on the full logits.
"""
from __future__ import annotations

import datetime
import math
import os

import pytest
import torch

import adkernels

WORLD = 2
RED = ("batchmean", "mean", "sum", "none")


def _cases():
    cases = []
    i = 0
    for V in (16, 37):  # 8 + 8 and 19 + 18 columns
        for div in ("kl", "reverse_kl", "jsd"):
            for ls in (0.0, 0.1):
                cases.append(dict(
                    name=f"{div}-V{V}-ls{ls}-{RED[i % 4]}", V=V, lead=(6,),
                    opts=dict(divergence=div, temperature=2.0, alpha=0.5, label_smoothing=ls,
                              reduction=RED[i % 4]),
                    target="some_ignored", teacher_grad=True))
                i += 1
    for red in RED:
        cases.append(dict(name=f"kl-no-target-T1-{red}", V=16, lead=(5,),
                          opts=dict(reduction=red), target=None, teacher_grad=False))
    cases += [
        dict(name="ce-only-alpha0", V=37, lead=(5,),
             opts=dict(alpha=0.0, label_smoothing=0.2, temperature=3.0), target="some_ignored",
             teacher_grad=True),
        dict(name="jsd-beta0.2-3d", V=37, lead=(2, 3),
             opts=dict(divergence="jsd", beta=0.2, temperature=0.5, alpha=0.7, reduction="none"),
             target="some_ignored", teacher_grad=True),
        dict(name="ignore-index-inside-range", V=16, lead=(6,),
             opts=dict(alpha=0.25, ignore_index=3, temperature=1.5), target="ignore3",
             teacher_grad=True),
        dict(name="all-ignored", V=16, lead=(4,), opts=dict(alpha=0.5, reduction="mean"),
             target="all_ignored", teacher_grad=True),
        dict(name="empty-batch", V=16, lead=(0,), opts=dict(alpha=0.5, label_smoothing=0.1),
             target="some_ignored", teacher_grad=True),
        dict(name="kl-teacher-masked-vocab", V=16, lead=(4,),
             opts=dict(divergence="kl", temperature=2.0), target=None, teacher_grad=False,
             teacher_neg_inf=True),
        dict(name="swapped-slices", V=37, lead=(5,),
             opts=dict(divergence="reverse_kl", alpha=0.5, label_smoothing=0.1, temperature=2.0),
             target="some_ignored", teacher_grad=True, split="swapped"),
        dict(name="float32", V=37, lead=(6,), dtype=torch.float32,
             opts=dict(divergence="jsd", alpha=0.5, temperature=2.0, label_smoothing=0.1),
             target="some_ignored", teacher_grad=True),
        dict(name="bfloat16", V=16, lead=(6,), dtype=torch.bfloat16,
             opts=dict(alpha=0.5, temperature=2.0), target="some_ignored", teacher_grad=True),
    ]
    return cases


CASES = _cases()


def _slices(case, rank):
    """(start, width) of each rank's columns, and whether vocab_start_index is passed."""
    V = case["V"]
    w0 = (V + 1) // 2
    if case.get("split") == "swapped":  # rank 0 holds the upper columns
        layout = [(V - w0, w0), (0, V - w0)]
        return layout[rank], True
    layout = [(0, w0), (w0, V - w0)]
    return layout[rank], False


def _data(case, index):
    """Full logits and target of a case (same on every rank and in the parent)."""
    g = torch.Generator().manual_seed(1000 + index)
    V, lead = case["V"], case["lead"]
    dtype = case.get("dtype", torch.float64)
    zs = (torch.randn(*lead, V, generator=g, dtype=torch.float64) * 2).to(dtype)
    zt = (torch.randn(*lead, V, generator=g, dtype=torch.float64) * 2).to(dtype)
    if case.get("teacher_neg_inf"):
        zt[..., 2] = -math.inf
        zt[..., 12] = -math.inf
    y = None
    kind = case["target"]
    if kind is not None:
        y = torch.randint(0, V, lead, generator=g)
        flat = y.view(-1)
        if kind == "some_ignored" and flat.numel() > 1:
            flat[1] = -100
            flat[-1] = V - 1  # the last column: on the last rank's slice
        elif kind == "ignore3":
            flat[0] = 3
            flat[2] = 3
        elif kind == "all_ignored":
            flat[:] = -100
    return zs, zt, y


def _worker(rank, init_file, out_dir):
    import torch.distributed as dist

    import adkernels

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    results = {}
    try:
        for index, case in enumerate(CASES):
            zs, zt, y = _data(case, index)
            (start, width), explicit = _slices(case, rank)
            s = zs[..., start:start + width].clone().requires_grad_()
            t = zt[..., start:start + width].clone().requires_grad_(case["teacher_grad"])
            loss = adkernels.vocab_parallel_kd_loss(
                s, t, y, vocab_start_index=start if explicit else None, **case["opts"])
            (loss.sum() if loss.dim() else loss).backward()
            results[case["name"]] = dict(
                loss=loss.detach(), gs=s.grad, gt=t.grad if case["teacher_grad"] else None)

        # One collective that checks the layout runs before any other, so these errors are
        # raised on both ranks alike and leave no rank waiting.
        errors = {}
        s = torch.randn(4, 8, dtype=torch.float64)

        def record(name, fn):
            try:
                fn()
                errors[name] = None
            except Exception as e:  # noqa: BLE001
                errors[name] = f"{type(e).__name__}: {e}"

        record("target_out_of_range", lambda: adkernels.vocab_parallel_kd_loss(
            s, s, torch.tensor([0, 1, 16, 2]), alpha=0.5))
        record("rows_differ", lambda: adkernels.vocab_parallel_kd_loss(
            s[: 3 + rank], s[: 3 + rank]))
        record("gap_in_slices", lambda: adkernels.vocab_parallel_kd_loss(
            s, s, vocab_start_index=8 * rank + 1))
        record("start_on_one_rank_only", lambda: adkernels.vocab_parallel_kd_loss(
            s, s, vocab_start_index=0 if rank == 0 else None))
        # World size 1: a group holding only this rank, with the full logits.
        groups = [dist.new_group([0]), dist.new_group([1])]
        zs, zt, y = _data(CASES[0], 0)
        zs = zs.clone().requires_grad_()
        zt = zt.clone().requires_grad_()
        loss = adkernels.vocab_parallel_kd_loss(zs, zt, y, group=groups[rank], **CASES[0]["opts"])
        (loss.sum() if loss.dim() else loss).backward()
        results["world1"] = dict(loss=loss.detach(), gs=zs.grad, gt=zt.grad)
        record("not_in_group", lambda: adkernels.vocab_parallel_kd_loss(s, s, group=groups[1 - rank]))
        results["errors"] = errors
    finally:
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    import torch.multiprocessing as mp

    d = tmp_path_factory.mktemp("vocab_parallel")
    mp.spawn(_worker, args=(str(d / "store"), str(d)), nprocs=WORLD, join=True)
    return [torch.load(d / f"rank{r}.pt") for r in range(WORLD)]


def _reference(case, index):
    zs, zt, y = _data(case, index)
    zs = zs.clone().requires_grad_()
    zt = zt.clone().requires_grad_(case["teacher_grad"])
    with adkernels.use_backend("reference"):
        loss = adkernels.kd_loss(zs, zt, y, **case["opts"])
    (loss.sum() if loss.dim() else loss).backward()
    gt = zt.grad
    if case["teacher_grad"] and gt is None:  # alpha = 0: the loss does not depend on the teacher
        gt = torch.zeros_like(zt)
    return loss.detach(), zs.grad, gt


def _tol(case):
    dtype = case.get("dtype", torch.float64)
    if dtype == torch.float64:
        return dict(rtol=1e-10, atol=1e-12)
    if dtype == torch.float32:
        return dict(rtol=1e-5, atol=1e-6)
    return dict(rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c["name"] for c in CASES])
def test_matches_kd_loss_on_gathered_logits(ranks, index):
    case = CASES[index]
    loss, gs, gt = _reference(case, index)
    tol = _tol(case)
    for rank, res in enumerate(ranks):
        got = res[case["name"]]
        assert got["loss"].dtype == loss.dtype
        assert got["loss"].shape == loss.shape
        torch.testing.assert_close(got["loss"], loss, **tol)
        (start, width), _ = _slices(case, rank)
        assert got["gs"].dtype == gs.dtype
        torch.testing.assert_close(got["gs"], gs[..., start:start + width], **tol)
        if case["teacher_grad"]:
            torch.testing.assert_close(got["gt"], gt[..., start:start + width], **tol)
    if case["lead"][0] > 0:
        assert torch.isfinite(loss).all()
    # Both ranks return the same loss.
    torch.testing.assert_close(ranks[0][case["name"]]["loss"], ranks[1][case["name"]]["loss"],
                               rtol=0, atol=0)


def test_all_ignored_is_zero_not_nan(ranks):
    for res in ranks:
        got = res["all-ignored"]
        assert got["loss"].item() == 0.0
        assert not got["gs"].any() and not got["gt"].any()


def test_world_size_one_group(ranks):
    loss, gs, gt = _reference(CASES[0], 0)
    for res in ranks:
        got = res["world1"]
        torch.testing.assert_close(got["loss"], loss, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got["gs"], gs, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got["gt"], gt, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name, needle", [
    ("target_out_of_range", "out of range [0, 16)"),
    ("rows_differ", "same rows"),
    ("gap_in_slices", "do not tile"),
    ("start_on_one_rank_only", "on every rank"),
    ("not_in_group", "not a member"),
])
def test_errors_on_every_rank(ranks, name, needle):
    for res in ranks:
        msg = res["errors"][name]
        assert msg is not None, f"{name}: no error raised"
        assert needle in msg, msg


def test_requires_initialized_process_group():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        adkernels.vocab_parallel_kd_loss(torch.randn(2, 4), torch.randn(2, 4))


def test_option_errors_before_any_collective():
    with pytest.raises(ValueError, match="needs target"):
        adkernels.vocab_parallel_kd_loss(torch.randn(2, 4), torch.randn(2, 4), alpha=0.5)
    with pytest.raises(ValueError, match="divergence"):
        adkernels.vocab_parallel_kd_loss(torch.randn(2, 4), torch.randn(2, 4), divergence="js")
    with pytest.raises(ValueError, match="same shape"):
        adkernels.vocab_parallel_kd_loss(torch.randn(2, 4), torch.randn(2, 5))
