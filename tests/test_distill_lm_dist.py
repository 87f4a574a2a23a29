"""distill_lm on 2 CPU processes (gloo): FSDP2 and DDP give the loss curve of 1 process with the
same global batch, an FSDP run killed mid-phase resumes exactly from its sharded DCP checkpoint,
and the vocab-parallel loss on a DeviceMesh equals the single-process fused-linear loss.

One spawn runs every case on both ranks and saves the results; the tests compare them with
runs in this process.
"""
from __future__ import annotations

import datetime
import os

import pytest
import torch

WORLD = 2


def _cfg(out, **kw):
    from test_distill_lm import tiny_cfg

    return tiny_cfg(out, **kw)


QUICK = dict(teacher_steps=2, student_steps=2)


def _worker(rank, init_file, out_dir, full):
    import sys

    import torch.distributed as dist

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=120))
    from torch.distributed.device_mesh import init_device_mesh

    from adkernels.train.lm.loss import kd_sum, vocab_parallel_kd_sum, vocab_shard
    from adkernels.train.lm.recipe import run

    quiet = dict(echo=lambda s: None)
    res = {}
    try:
        fsdp = run(_cfg(os.path.join(out_dir, "fsdp"), **({} if full else QUICK)), **quiet)
        res["fsdp"] = {k: v["curve"] for k, v in fsdp.items() if k != "summary"}
        res["fsdp_summary"] = fsdp["summary"]
        if full:
            steps = dict(student_steps=6, phases="scratch", ckpt_every=2)
            part = run(_cfg(os.path.join(out_dir, "resume"), stop_after=3, **steps), **quiet)
            rest = run(_cfg(os.path.join(out_dir, "resume"), **steps), **quiet)
            res["resume"] = part["scratch"]["curve"][:2] + rest["scratch"]["curve"]
            ddp = run(_cfg(os.path.join(out_dir, "ddp"), phases="scratch", dist="ddp"), **quiet)
            res["ddp"] = ddp["scratch"]["curve"]

        # vocab-parallel lm_heads on a 1-D "tp" mesh
        mesh = init_device_mesh("cpu", (WORLD,), mesh_dim_names=("tp",))
        group = mesh.get_group("tp")
        g = torch.Generator().manual_seed(5)
        V = 259
        hs = torch.randn(3, 4, 8, generator=g, dtype=torch.float64)
        ws = torch.randn(V, 8, generator=g, dtype=torch.float64)
        ht = torch.randn(3, 4, 12, generator=g, dtype=torch.float64)
        wt = torch.randn(V, 12, generator=g, dtype=torch.float64)
        y = torch.randint(0, V, (3, 4), generator=g)
        y[0, 0] = -100
        out = {}
        for div in (("kl", "jsd") if full else ("kl",)):
            opts = dict(temperature=2.0, alpha=0.4, divergence=div)
            w_local, start = vocab_shard(ws, group)
            w_local = w_local.clone().requires_grad_()
            h = hs.clone().requires_grad_()
            t_local, _ = vocab_shard(wt, group)
            loss = vocab_parallel_kd_sum(h, w_local, ht, t_local, y, group=group, vocab_start_index=start, **opts)
            loss.backward()
            gh = h.grad.clone()
            dist.all_reduce(gh, group=group)  # row-parallel: the hidden gradient is a sum of slices
            h2 = hs.clone().requires_grad_()
            w2 = ws.clone().requires_grad_()
            want = kd_sum(h2, w2, ht, wt, y, **opts)
            want.backward()
            out[div] = dict(loss=loss.item(), want=want.item(), gh=(gh - h2.grad).abs().max().item(),
                            gw=(w_local.grad - w2.grad[start:start + w_local.shape[0]]).abs().max().item(),
                            rows=w_local.shape[0])
        res["vocab_parallel"] = out
    finally:
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()


def _spawn(d, full):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(str(d / "store"), str(d), full), nprocs=WORLD, join=True)
    return [torch.load(d / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return _spawn(tmp_path_factory.mktemp("distill_lm_quick"), False)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return _spawn(tmp_path_factory.mktemp("distill_lm_full"), True)


def _single(d, **kw):
    from adkernels.train.lm.recipe import run

    res = run(_cfg(d, **kw), echo=lambda s: None)
    return {k: v["curve"] for k, v in res.items() if k != "summary"}, res["summary"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return _single(tmp_path_factory.mktemp("distill_lm_single"))


def _close(a, b, rtol=2e-5):
    assert [s for s, _ in a] == [s for s, _ in b]
    for (s, x), (_, y) in zip(a, b):
        assert abs(x - y) <= rtol * abs(y) + 1e-6, (s, x, y)


def test_quick_fsdp_and_vocab_parallel_two_processes(quick, tmp_path):
    """Default run: FSDP2 over 2 gloo processes, 2 steps of every phase (the frozen FSDP teacher
    included), against 1 process; and the vocab-parallel lm_head loss (kl)."""
    curves, summary = _single(tmp_path, **QUICK)
    for phase in ("teacher", "scratch", "distill"):
        assert len(curves[phase]) == 2
        for res in quick:
            _close(res["fsdp"][phase], curves[phase])
        assert quick[0]["fsdp_summary"][phase]["val_ppl"] == pytest.approx(summary[phase]["val_ppl"], rel=1e-4)
    r = quick[0]["vocab_parallel"]["kl"]
    assert r["loss"] == pytest.approx(r["want"], rel=1e-10) and r["gh"] < 1e-10 and r["gw"] < 1e-10


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["teacher", "scratch", "distill"])
def test_fsdp_two_processes_same_loss_curve_as_one(ranks, single, phase):
    curves, _ = single
    assert len(curves[phase]) == 4
    for res in ranks:
        _close(res["fsdp"][phase], curves[phase])
    assert ranks[0]["fsdp"][phase] == ranks[1]["fsdp"][phase]  # every rank reports the global loss


@pytest.mark.slow
def test_fsdp_validation_perplexity_matches(ranks, single):
    _, summary = single
    for phase, r in summary.items():
        assert ranks[0]["fsdp_summary"][phase]["val_ppl"] == pytest.approx(r["val_ppl"], rel=1e-4)
        assert ranks[0]["fsdp_summary"][phase]["val_tokens"] == r["val_tokens"]


@pytest.mark.slow
def test_fsdp_resume_after_kill(ranks, tmp_path):
    from adkernels.train.lm.recipe import run

    full = run(_cfg(tmp_path, student_steps=6, phases="scratch", ckpt_every=2), echo=lambda s: None)
    for res in ranks:
        assert [s for s, _ in res["resume"]] == [1, 2, 3, 4, 5, 6]
        _close(res["resume"], full["scratch"]["curve"])


@pytest.mark.slow
def test_ddp_two_processes_same_loss_curve(ranks, single):
    curves, _ = single
    for res in ranks:
        _close(res["ddp"], curves["scratch"])


@pytest.mark.slow
@pytest.mark.parametrize("div", ["kl", "jsd"])
def test_vocab_parallel_lm_head_matches_fused_linear(ranks, div):
    assert [r["vocab_parallel"][div]["rows"] for r in ranks] == [130, 129]  # V = 259 split unevenly
    for res in ranks:
        r = res["vocab_parallel"][div]
        assert r["loss"] == pytest.approx(r["want"], rel=1e-10)
        assert r["gh"] < 1e-10 and r["gw"] < 1e-10
