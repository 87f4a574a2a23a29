"""Smoke runs of the benchmark scripts at tiny shapes: they import, check fused results against
eager inside, and produce rows (timings themselves are benchmarks, not tests)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import adkernels

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

needs_cpp = pytest.mark.skipif(not adkernels._C_loaded(), reason="C++ extension not built")


@needs_cpp
def test_bench_kd_tiny_case():
    import bench_kd

    row = bench_kd.bench_kd_case(64, 300, torch.float32, "cpu", repeats=1, teacher_grad=False,
                                 use_compile=False, breakdown=False, measure_memory=False)
    assert row["fused_ms"] > 0 and row["eager_ms"] > 0 and row["floor_ms"] > 0
    assert row["loss_err"] < 1e-4 and row["grad_err"] < 1e-4


@needs_cpp
def test_bench_attacks_tiny_case():
    import bench_attacks

    row = bench_attacks.bench_case("linf", torch.float32, "scalar", (4, 3, 8, 8), "cpu", repeats=1, use_compile=False)
    assert row["fused_ms"] > 0 and row["eager_ms"] > 0


@needs_cpp
def test_bench_pgd_e2e_tiny_case():
    import bench_pgd_e2e

    row = bench_pgd_e2e.bench_case(2, 8, 4, 2, "channels_last", "cpu", repeats=1, ta=None)  # checks equality inside
    assert row["adkernels_ms"] > 0 and row["model_only_ms"] > 0 and row["channels_last_kept"]


@needs_cpp
def test_bench_distill_lm_tiny_case():
    import bench_distill_lm

    shape = dict(V=300, H=16, tokens=32, seq=16, layers=1, heads=2)
    errs = bench_distill_lm.check(shape)  # raises when a variant disagrees with eager
    assert set(errs) == {"fused", "logits+kd_loss"}
    rows = bench_distill_lm.step_rows(shape, {impl: 32 for impl in bench_distill_lm.IMPLS}, repeats=1)
    assert [r["impl"] for r in rows] == list(bench_distill_lm.IMPLS)
    assert all(r["tokens_per_s"] > 0 for r in rows)


@needs_cpp
def test_bench_adversarial_tiny_case():
    import bench_adversarial

    for row in (bench_adversarial.disc_case(300, "binary_tree", torch.float32, "cpu", repeats=1, use_compile=False),
                bench_adversarial.binary_case(300, "bce", torch.float32, "cpu", repeats=1, use_compile=False)):
        assert row["fused_ms"] > 0 and row["eager_ms"] > 0 and row["floor_ms"] > 0
        assert row["loss_err"] < 1e-4 and row["grad_err"] < 1e-4


@needs_cpp
def test_bench_topk_kd_tiny_case():
    import bench_topk_kd

    row = bench_topk_kd.bench_case(32, 300, 16, torch.float32, "cpu", repeats=1, use_compile=False)
    assert row["fused_ms"] > 0 and row["eager_ms"] > 0 and row["floor_ms"] > 0
    assert row["loss_err"] < 1e-4 and row["grad_err"] < 1e-4


@needs_cpp
def test_bench_soft_ce_tiny_case():
    import bench_soft_ce

    for dtype in (torch.float32, torch.bfloat16):
        row = bench_soft_ce.bench_case(32, 300, dtype, "cpu", repeats=1, use_compile=False)
        assert row["fused_ms"] > 0 and row["eager_ms"] > 0 and row["floor_ms"] > 0
        assert row["loss_err"] < 2e-2 and row["grad_err"] < 2e-2


@needs_cpp
def test_bench_gumbel_tiny_case():
    import bench_gumbel

    for dtype in (torch.float32, torch.bfloat16):  # checks the fused forward against the reference inside
        row = bench_gumbel.bench_case((16, 300), dtype, "cpu", repeats=1)
        assert row["fused_ms"] > 0 and row["eager_ms"] > 0 and row["floor_ms"] > 0
