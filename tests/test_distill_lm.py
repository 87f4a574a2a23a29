"""distill_lm (LLM distillation recipe), one process: data, model, losses, recipe, resume, shards."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

import adkernels
from adkernels.train.lm import checkpoint as ckpt
from adkernels.train.lm.config import DistillLMConfig
from adkernels.train.lm.data import (
    BOS, EOS, IGNORE_INDEX, PAD, VOCAB_SIZE, WindowDataset, batches, block_order, corpus_documents, decode,
    is_validation, token_stream,
)
from adkernels.train.lm.loss import TOPK_FUSED_NAMES, ce_sum, kd_sum, topk_fused_op, topk_kd_sum
from adkernels.train.lm.models import GPT, GPTConfig, HFCausalLM, check_causal_lm
from adkernels.train.lm.recipe import Objective, run, train_phase, DistContext, datasets
from adkernels.train.lm.shards import TeacherShards, precompute_teacher, shard_name, topk_logprobs

HAS_TOPK = any(getattr(adkernels, n, None) is not None for n in TOPK_FUSED_NAMES)


def tiny_cfg(out, **kw):
    base = dict(out_dir=str(out), seq_len=16, batch_size=4, max_train_tokens=6000, max_val_tokens=400,
                teacher_layers=1, teacher_dim=32, teacher_heads=2, student_layers=1, student_dim=16,
                student_heads=2, teacher_steps=4, student_steps=4, warmup=1, log_every=0, ckpt_every=2,
                shard_windows=16, threads=1, alpha=0.5, temperature=2.0)
    base.update(kw)
    return DistillLMConfig(**base)


# ---- data -----------------------------------------------------------------------------------------

def test_corpus_split_is_deterministic_and_disjoint():
    docs = corpus_documents()
    assert len(docs) > 50 and sum(len(t) for _, t in docs) > 300_000  # a real corpus, not a stub
    val = [n for n, _ in docs if is_validation(n)]
    train = [n for n, _ in docs if not is_validation(n)]
    assert val and train and not set(val) & set(train)
    tr, va = token_stream("train"), token_stream("val")
    assert tr.numel() > 5 * va.numel() > 0
    assert int(tr.max()) <= EOS and int(tr.min()) >= 0
    assert (tr == BOS).sum() == len(train) and (va == EOS).sum() == len(val)
    assert torch.equal(tr, token_stream("train"))
    assert "statement" in decode(tr[:2000])
    with pytest.raises(ValueError, match="split"):
        token_stream("test")


def test_windows_shift_pad_and_prompt_mask():
    toks = torch.arange(10)
    ds = WindowDataset(toks, seq_len=4)
    assert len(ds) == 3  # 9 targets -> windows of 4, 4, 1
    x, y = ds.window(0)
    assert x.tolist() == [0, 1, 2, 3] and y.tolist() == [1, 2, 3, 4]
    x, y = ds.window(2)
    assert x.tolist() == [8, PAD, PAD, PAD] and y.tolist() == [9] + [IGNORE_INDEX] * 3
    x, y = WindowDataset(toks, seq_len=4, prompt_len=2).window(1)
    assert y.tolist() == [IGNORE_INDEX, IGNORE_INDEX, 7, 8]
    with pytest.raises(IndexError):
        ds.window(3)


def test_block_order_and_resumable_rank_batches():
    assert sorted(block_order(50, 8, seed=3, epoch=1, mix=2)) == list(range(50))
    order = block_order(48, 8, seed=3, epoch=1, mix=2)  # 6 blocks, taken 2 at a time
    assert sorted(order) == list(range(48))
    for i in range(0, 48, 16):
        assert len({j // 8 for j in order[i:i + 16]}) <= 2  # a group of 2 blocks at a time
    assert len({j // 8 for j in order[:16]}) == 2  # ... mixed together
    assert order != block_order(50, 8, seed=3, epoch=2, mix=2)
    full = [idx for _, idx in zip(range(30), batches(50, 6, 8, seed=1))]
    resumed = [idx for _, idx in zip(range(10), batches(50, 6, 8, seed=1, start_step=20))]
    assert [i for _, i in full[20:30]] == [i for _, i in resumed]
    r0 = [i for _, (_, i) in zip(range(30), batches(50, 6, 8, seed=1, rank=0, world=2))]
    r1 = [i for _, (_, i) in zip(range(30), batches(50, 6, 8, seed=1, rank=1, world=2))]
    assert [a + b for a, b in zip(r0, r1)] == [i for _, i in full]
    with pytest.raises(ValueError, match="divisible"):
        next(batches(50, 5, 8, seed=1, world=2))


# ---- model ----------------------------------------------------------------------------------------

def test_gpt_is_causal_and_follows_protocol():
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=2, d_model=32, n_head=4, seq_len=12))
    check_causal_lm(m)
    x = torch.randint(0, 256, (2, 12))
    h = m.hidden_states(x)
    assert h.shape == (2, 12, 32) and m.lm_head.weight.shape == (VOCAB_SIZE, 32)
    x2 = x.clone()
    x2[:, 7:] = (x2[:, 7:] + 1) % 256
    h2 = m.hidden_states(x2)
    torch.testing.assert_close(h[:, :7], h2[:, :7])
    assert not torch.allclose(h[:, 7:], h2[:, 7:])
    torch.testing.assert_close(m(x), h @ m.lm_head.weight.t())
    with pytest.raises(ValueError, match="seq_len"):
        m.hidden_states(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(TypeError, match="hidden_states"):
        check_causal_lm(torch.nn.Linear(3, 3))


def test_hf_adapter_if_transformers_installed():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=VOCAB_SIZE, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    model = HFCausalLM(transformers.GPT2LMHeadModel(cfg))
    check_causal_lm(model)
    x = torch.randint(0, 256, (2, 8))
    h = model.hidden_states(x)
    torch.testing.assert_close(model.lm_head(h), model.model(x).logits, rtol=1e-4, atol=1e-4)


# ---- losses ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd"])
def test_kd_sum_matches_eager_logits(divergence):
    g = torch.Generator().manual_seed(1)
    hs = torch.randn(2, 5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    ws = torch.randn(VOCAB_SIZE, 8, generator=g, dtype=torch.float64, requires_grad=True)
    ht = torch.randn(2, 5, 12, generator=g, dtype=torch.float64)
    wt = torch.randn(VOCAB_SIZE, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, VOCAB_SIZE, (2, 5), generator=g)
    y[0, :2] = IGNORE_INDEX  # prompt / padding
    opts = dict(temperature=2.0, alpha=0.3, divergence=divergence, beta=0.4)
    got = kd_sum(hs, ws, ht, wt, y, chunk_size=3, **opts)
    got.backward()
    g1 = (hs.grad.clone(), ws.grad.clone())
    hs.grad = ws.grad = None
    with adkernels.use_backend("reference"):
        want = adkernels.kd_loss((hs @ ws.t()).reshape(-1, VOCAB_SIZE), (ht @ wt.t()).reshape(-1, VOCAB_SIZE),
                                 y.reshape(-1), reduction="sum", **opts)
    want.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g1[0], hs.grad)
    torch.testing.assert_close(g1[1], ws.grad)
    assert g1[0][0, :2].abs().max() == 0  # ignored positions get no gradient


def test_ce_sum_matches_cross_entropy():
    g = torch.Generator().manual_seed(2)
    h = torch.randn(3, 7, 16, generator=g, requires_grad=True)
    w = torch.randn(VOCAB_SIZE, 16, generator=g, requires_grad=True)
    y = torch.randint(0, VOCAB_SIZE, (3, 7), generator=g)
    y[1, 3:] = IGNORE_INDEX
    got = ce_sum(h, w, y, chunk_size=5)
    gh, gw = torch.autograd.grad(got, (h, w))
    want = F.cross_entropy((h @ w.t()).reshape(-1, VOCAB_SIZE), y.reshape(-1), reduction="sum")
    wh, ww = torch.autograd.grad(want, (h, w))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gh, wh, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, ww, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(HAS_TOPK, reason="the fused-linear top-k KD op is available")
def test_topk_path_names_the_missing_op():
    with pytest.raises(NotImplementedError, match=TOPK_FUSED_NAMES[0]):
        topk_fused_op()


@pytest.mark.skipif(not HAS_TOPK, reason="the fused-linear top-k KD op has not landed")
def test_topk_kd_sum_full_support_equals_dense_kd():
    g = torch.Generator().manual_seed(3)
    V = 40
    hs = torch.randn(6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    ws = torch.randn(V, 8, generator=g, dtype=torch.float64)
    zt = torch.randn(6, V, generator=g, dtype=torch.float64)
    lp, ids = zt.log_softmax(-1).topk(V, -1)
    y = torch.randint(0, V, (6,), generator=g)
    got = topk_kd_sum(hs, ws, ids, lp, y, temperature=2.0, alpha=0.5, topk_tail="renorm")
    with adkernels.use_backend("reference"):
        want = adkernels.kd_loss(hs @ ws.t(), zt, y, temperature=2.0, alpha=0.5, reduction="sum")
    torch.testing.assert_close(got, want)


# ---- recipe ---------------------------------------------------------------------------------------

def test_recipe_end_to_end_tiny(tmp_path):
    res = run(tiny_cfg(tmp_path), echo=lambda s: None)
    summary = res["summary"]
    assert set(summary) == {"teacher", "scratch", "distill"}
    for name, r in summary.items():
        # the 4 steps train: training loss falls, and the validation CE beats a uniform guess over
        # the vocabulary (log 259 = 5.56 nats) by a margin (measured: teacher 5.23, students 5.42)
        curve = [loss for _, loss in res[name]["curve"]]
        assert curve[-1] < curve[0], (name, curve)
        assert r["val_ce"] < math.log(VOCAB_SIZE) - 0.05, (name, r)
        assert r["val_ppl"] == pytest.approx(math.exp(r["val_ce"]), rel=1e-6)
    assert summary["teacher"]["val_ce"] < summary["scratch"]["val_ce"]  # the wider model learns faster
    assert len(res["distill"]["curve"]) == 4
    assert json.load(open(tmp_path / "summary.json"))["distill"]["val_ppl"] == summary["distill"]["val_ppl"]
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert {r["phase"] for r in rows} == {"teacher", "scratch", "distill"}
    # a second run loads the finished phases instead of training them again
    again = run(tiny_cfg(tmp_path), echo=lambda s: None)
    assert again["teacher"]["resumed_final"] and again["distill"]["resumed_final"]
    assert again["summary"]["distill"]["val_ppl"] == pytest.approx(summary["distill"]["val_ppl"], rel=1e-9)


def _model_state(phase_dir, cfg):
    m = GPT(cfg)
    ckpt.load(os.path.join(phase_dir, "final"), Objective(m))
    return m.state_dict()


def test_resume_after_kill_is_exact_and_loses_no_step(tmp_path):
    steps = dict(student_steps=6, phases="scratch", ckpt_every=2)
    full = run(tiny_cfg(tmp_path / "full", **steps), echo=lambda s: None)
    # "killed" after step 3: the newest complete checkpoint is step 2; a half-written one is left behind
    part = run(tiny_cfg(tmp_path / "part", stop_after=3, **steps), echo=lambda s: None)
    assert part["scratch"]["stopped"] == 3
    root = tmp_path / "part" / "scratch" / "ckpt"
    assert ckpt.latest(str(root))[0] == 2
    (root / "step_00000004.tmp").mkdir()
    (root / "step_00000004.tmp" / "junk").write_text("partial write")
    rest = run(tiny_cfg(tmp_path / "part", **steps), echo=lambda s: None)
    curve_full = full["scratch"]["curve"]
    curve = part["scratch"]["curve"][:2] + rest["scratch"]["curve"]
    assert [s for s, _ in rest["scratch"]["curve"]] == [3, 4, 5, 6]  # step 3 is redone, none skipped
    assert curve == curve_full  # bit-exact
    cfg = tiny_cfg(tmp_path).student_config()
    a, b = _model_state(tmp_path / "full" / "scratch", cfg), _model_state(tmp_path / "part" / "scratch", cfg)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert rest["scratch"]["val_ppl"] == full["scratch"]["val_ppl"]


def test_distilled_loss_uses_the_teacher(tmp_path):
    """alpha = 1, T = 1: the distill loss is KL(teacher || student) of the trained teacher."""
    cfg = tiny_cfg(tmp_path, phases="teacher", teacher_steps=2)
    run(cfg, echo=lambda s: None)
    ctx = DistContext()
    train, val = datasets(cfg)
    teacher = GPT(cfg.teacher_config())
    ckpt.load(str(tmp_path / "teacher" / "final"), Objective(teacher))
    torch.manual_seed(cfg.seed + 2)
    student = GPT(cfg.student_config())
    x, y = train.batch(next(batches(len(train), cfg.batch_size, cfg.shard_windows, cfg.seed))[1])
    with torch.no_grad():
        want = F.kl_div(student(x).log_softmax(-1), teacher(x).log_softmax(-1), log_target=True,
                        reduction="sum") / (y != IGNORE_INDEX).sum()
    kd_cfg = tiny_cfg(tmp_path / "d", alpha=1.0, temperature=1.0, student_steps=1, ckpt_every=0, warmup=0,
                      grad_clip=0.0)
    tobj = Objective(teacher)
    res = train_phase("distill", student, kd_cfg, ctx, train, val, steps=1, lr=1e-9, kind="kd", teacher=tobj)
    assert res["curve"][0][1] == pytest.approx(float(want), rel=1e-4)


def test_config_errors():
    with pytest.raises(ValueError, match="divergence"):
        DistillLMConfig(divergence="js").validate()
    with pytest.raises(ValueError, match="phases"):
        DistillLMConfig(phases="teacher,student").validate()


def test_distill_needs_a_teacher(tmp_path):
    with pytest.raises(ValueError, match="trained teacher"):
        run(tiny_cfg(tmp_path, phases="distill"), echo=lambda s: None)


# ---- sparse teacher shards ------------------------------------------------------------------------

def test_topk_logprobs_chunked():
    g = torch.Generator().manual_seed(4)
    h, w = torch.randn(2, 9, 8, generator=g), torch.randn(30, 8, generator=g)
    ids, lp = topk_logprobs(h, w, k=5, chunk=4)
    v, i = (h @ w.t()).log_softmax(-1).topk(5, -1)
    assert torch.equal(ids, i)
    torch.testing.assert_close(lp, v)


def test_precompute_shards_resume_and_stream(tmp_path):
    torch.manual_seed(0)
    teacher = GPT(GPTConfig(n_layer=1, d_model=16, n_head=2, seq_len=8))
    ds = WindowDataset(token_stream("train", 600), seq_len=8)  # 75 windows -> shards of 16: 5
    out = str(tmp_path / "shards")
    r1 = precompute_teacher(teacher, ds, out, k=4, shard_windows=16, max_shards=2, log=lambda s: None)
    assert r1["written"] == 2 and r1["num_shards"] == 5
    reader = TeacherShards(out)
    assert reader.missing() == [2, 3, 4]
    with pytest.raises(FileNotFoundError, match="precompute-teacher"):
        reader.check_dataset(ds)
    mtime = os.path.getmtime(os.path.join(out, shard_name(0)))
    r2 = precompute_teacher(teacher, ds, out, k=4, shard_windows=16, log=lambda s: None)
    assert (r2["written"], r2["skipped"]) == (3, 2)
    assert os.path.getmtime(os.path.join(out, shard_name(0))) == mtime  # complete shards are not rewritten
    assert not [f for f in os.listdir(out) if ".tmp" in f]
    reader = TeacherShards(out, cache=1)
    reader.check_dataset(ds)
    idx = [0, 17, 74]
    ids, lps = reader.get(idx)
    x, _ = ds.batch(idx)
    with torch.no_grad():
        want_ids, want_lp = topk_logprobs(teacher.hidden_states(x), teacher.lm_head.weight, 4)
    assert torch.equal(ids, want_ids) and ids.dtype == torch.int64
    torch.testing.assert_close(lps, want_lp)
    # streaming: the recipe's block order reads each shard once per epoch
    reader = TeacherShards(out, cache=3)
    for _, b in zip(range(len(ds) // 5), batches(len(ds), 5, 16, seed=0, mix=2)):
        reader.get(b[1])
    assert reader.loads == 5  # one epoch in groups of 2 shards: each shard is read once
    with pytest.raises(ValueError, match="other settings"):
        precompute_teacher(teacher, ds, out, k=8, shard_windows=16, log=lambda s: None)
    with pytest.raises(ValueError, match="windows"):
        reader.check_dataset(WindowDataset(token_stream("train", 600), seq_len=4))


def test_cli_precompute_teacher_and_recipe_error_without_op(tmp_path, capsys):
    from adkernels.cli import main

    cfg = tiny_cfg(tmp_path / "run", phases="teacher", teacher_steps=1, max_train_tokens=1200)
    run(cfg, echo=lambda s: None)
    rc = main(["precompute-teacher", "--teacher", str(tmp_path / "run" / "teacher"), "--out",
               str(tmp_path / "sh"), "-k", "4", "--shard-windows", "16", "--max-tokens", "1200"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["written"] == 5
    cfg2 = tiny_cfg(tmp_path / "run2", phases="distill", teacher_logits=str(tmp_path / "sh"),
                    max_train_tokens=1200, student_steps=2)
    if HAS_TOPK:
        res = run(cfg2, echo=lambda s: None)
        assert res["summary"]["distill"]["val_ppl"] > 1
    else:
        with pytest.raises(NotImplementedError, match="fused_linear_topk_kd_loss"):
            run(cfg2, echo=lambda s: None)
