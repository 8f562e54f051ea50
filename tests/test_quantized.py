"""int8 weight-only decoding (`--dtype int8`): close to float32, the same alone or batched."""

from __future__ import annotations

import asyncio

import pytest
import torch
import torch.nn.functional as F
from test_batching import PROMPTS, Engine
from test_fused_decoder import MODELS, run_passes

from arbridge.engine.fused_decoder import FusedDecoder
from arbridge.engine.matmul_layouts import PROMPT_ROWS, Projection, quantize_int8
from arbridge.engine.runner import ModelRunner
from arbridge.generation import SamplingConfig
from arbridge.models.loader import load_model

from tiny_model import build_tiny_llama, slow_down

# Bound on int8 logits against float32 on the tiny models, as a fraction of the
# largest float32 logit: measured 0.4-1.2 % (per-channel int8 weights, bfloat16
# activations into each matmul), so 3 % fails on any real arithmetic slip.
LOGIT_BOUND = 0.03


def test_quantize_int8_is_exact_per_channel_and_symmetric():
    torch.manual_seed(0)
    weight = torch.randn(40, 24) * torch.linspace(0.01, 10, 40)[:, None]
    q, scales = quantize_int8(weight)
    assert q.dtype == torch.int8 and scales.dtype == torch.bfloat16
    assert q.abs().amax(dim=1).min() >= 126  # every row uses its whole range
    restored = q.float() * scales.float()[:, None]
    # Rounding to the nearest step: at most half a step off per element.
    assert ((restored - weight).abs() <= scales.float()[:, None] / 2 + 1e-6).all()


@pytest.mark.parametrize("name", ["llama", "llama-mha-biases", "gpt2"])
def test_int8_logits_stay_close_to_float32(name):
    model = MODELS[name]()
    with torch.inference_mode():
        expected = run_passes(ModelRunner(model, context_length=128, fused=False))
        runner = ModelRunner(model, context_length=128, quantize="int8")
        runner.prepare()
        got = run_passes(runner)
    projections = runner.fused.projections()
    assert all(p.weight is None and p.int8.dtype == torch.int8 for p in projections)
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == torch.float32
        error = (a - b).abs().max() / b.abs().max()
        assert 0 < error < LOGIT_BOUND, error  # quantized (not float32), and close
        # The ranking the sampler sees: the float32 top token is int8's top 3.
        top3 = a.topk(3, dim=-1).indices
        agree = (top3 == b.argmax(-1, keepdim=True)).any(-1).float().mean()
        assert agree >= 0.9, agree


def test_int8_prompt_and_decode_kernels_agree():
    """A prompt's many rows take a dequantized copy, decode rows the int8
    kernel: the same arithmetic, so a row's result does not depend on which."""
    torch.manual_seed(0)
    weight, bias = torch.randn(48, 32), torch.randn(48)
    proj = Projection(weight, bias, quantize="int8")
    rows = PROMPT_ROWS + 4
    x = torch.randn(rows, 32)
    by_prompt_path = proj(x)  # the dequantized copy
    by_decode_path = torch.cat([proj(x[i:i + 1]) for i in range(rows)])  # the int8 kernel
    torch.testing.assert_close(by_prompt_path, by_decode_path, rtol=1e-2, atol=1e-2)
    assert (by_prompt_path == by_decode_path).float().mean() > 0.95


def test_int8_needs_a_model_the_fused_decoder_runs():
    from test_fused_decoder import tiny_llama

    model = tiny_llama(hidden_act="gelu")
    assert "activation" in FusedDecoder.unsupported_reason(model)
    runner = ModelRunner(model, context_length=128, quantize="int8")
    with pytest.raises(ValueError, match="int8 weights: activation"):
        runner.prepare()
    with pytest.raises(ValueError, match="only in the fused decoder"):
        ModelRunner(model, context_length=128, fused=False, quantize="int8")


def test_int8_refused_on_a_gpu_and_with_the_models_own_forward():
    from arbridge.config import load_settings
    from arbridge.engine.matmul_layouts import int8_supported

    assert int8_supported("cpu") == ""
    assert "runs on the CPU; on a GPU use bfloat16" in int8_supported("cuda:0")
    with pytest.raises(ValueError, match="dtype int8 needs fused_decoder = true"):
        load_settings(None, dtype="int8", fused_decoder=False)
    with pytest.raises(ValueError, match="dtype int8 runs on the CPU, not device 'cuda'"):
        load_settings(None, dtype="int8", device="cuda")


def test_an_engine_that_cannot_start_says_why_instead_of_hanging():
    from test_fused_decoder import tiny_llama

    from arbridge.engine.scheduler import Scheduler

    model = tiny_llama(hidden_act="gelu")
    scheduler = Scheduler(model, None, context_length=128, quantize="int8")
    scheduler.start()
    try:
        assert scheduler.ready.wait(30)
        assert isinstance(scheduler.start_error, ValueError)
        assert "int8 weights: activation gelu" in str(scheduler.start_error)
    finally:
        scheduler.stop()


@pytest.fixture(scope="module")
def int8_llama(tmp_path_factory):
    path = build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    lm = load_model(str(path), cache_dir=tmp_path_factory.mktemp("cache"), device="cpu",
                    dtype="int8")
    assert lm.quantize == "int8" and lm.info.dtype == "int8"
    lm.fused_decoder = True
    return lm


async def test_int8_batched_greedy_equals_each_alone(int8_llama):
    cfg = SamplingConfig(max_new_tokens=20)
    with Engine(int8_llama, quantize="int8") as eng:
        alone = [await eng.run(p, cfg) for p in PROMPTS]
    assert max(eng.batch_sizes) == 1
    undo = slow_down(int8_llama.model, 0.005)  # all six admitted before the first ends
    try:
        with Engine(int8_llama, quantize="int8", max_active=8,
                    prefill_chunk_tokens=16) as eng:
            together = await asyncio.gather(*(eng.run(p, cfg) for p in PROMPTS))
    finally:
        undo()
    assert max(eng.batch_sizes) >= 4  # really decoded in one batch
    assert eng.scheduler.runner.fused.lm_head.weight is None  # and really in int8
    assert together == alone


def test_perplexity_of_the_fixed_text_under_int8_stays_near_float32(tmp_path):
    from arbridge.tools.perplexity import perplexity

    path = build_tiny_llama(tmp_path / "tiny-llama")
    text = " ".join(PROMPTS[:2] + PROMPTS[3:])
    scores = {}
    for dtype in ("float32", "int8", "int8-activations"):
        lm = load_model(str(path), cache_dir=tmp_path / "cache", device="cpu",
                        dtype=dtype[:4] if dtype.startswith("int8") else dtype)
        scores[dtype], tokens = perplexity(lm, text,
                                           int8_activations=dtype == "int8-activations")
    assert tokens > 20
    assert scores["float32"] > 1 and scores["int8"] != scores["float32"]
    assert abs(scores["int8"] / scores["float32"] - 1) < 0.05, scores
    if scores["int8-activations"] != scores["int8"]:  # the kernel built here
        assert abs(scores["int8-activations"] / scores["float32"] - 1) < 0.05, scores


async def test_int8_activations_keep_the_text_with_drafts_and_in_batches(int8_llama):
    """int8 activations quantize each row alone and sum in integers, so a pass over a
    draft, or over several streams, gives each row what a pass over it alone would:
    guessed drafts are on for them (not for bfloat16 activations), and the text is
    the same with and without drafts, alone and batched."""
    from arbridge.engine.matmul_layouts import KernelChoice

    cfg = SamplingConfig(max_new_tokens=20)
    choice = KernelChoice(int8_activations=True)
    with Engine(int8_llama, quantize="int8", matmul_kernels=choice) as eng:
        if not eng.scheduler.runner.int8_activations():
            pytest.skip("no compiler here")
        plain = [await eng.run(p, cfg) for p in PROMPTS]
    with Engine(int8_llama, quantize="int8", speculative_tokens=8) as eng:
        assert not eng.scheduler.lookup_drafts  # bfloat16 activations: no guessed drafts
    with Engine(int8_llama, quantize="int8", matmul_kernels=choice,
                speculative_tokens=32) as eng:
        # drafts past the paged kernel's 17 positions attend through SDPA: not exact
        assert not eng.scheduler.lookup_drafts
    with Engine(int8_llama, quantize="int8", matmul_kernels=choice,
                speculative_tokens=8) as eng:
        assert eng.scheduler.lookup_drafts
        eng.scheduler.draft_cost = eng.scheduler.draft_cost_one = 1.0  # draft at every chance
        drafted = [await eng.run(p, cfg) for p in PROMPTS]
        assert 0 < eng.scheduler.kept <= eng.scheduler.drafted
    undo = slow_down(int8_llama.model, 0.005)  # all six admitted before the first ends
    try:
        with Engine(int8_llama, quantize="int8", matmul_kernels=choice, max_active=8,
                    prefill_chunk_tokens=16) as eng:
            together = await asyncio.gather(*(eng.run(p, cfg) for p in PROMPTS))
    finally:
        undo()
    assert max(eng.batch_sizes) >= 4
    assert drafted == plain and together == plain


def test_int8_activations_give_a_row_the_same_logits_in_any_pass():
    """What makes drafts exact with int8 activations: a draft pass's rows, and a
    batch's rows, equal one-token passes over the same positions, bit for bit."""
    int8_activations = True
    from arbridge.engine.matmul_layouts import KernelChoice

    model = MODELS["llama"]()
    torch.manual_seed(3)
    prompts = [torch.randint(0, 97, (1, n)) for n in (9, 6)]
    follow = torch.randint(0, 97, (1, 4))
    with torch.inference_mode():
        runner = ModelRunner(model, context_length=128, quantize="int8",
                             matmul_kernels=KernelChoice(int8_activations=int8_activations))
        runner.prepare()
        if not runner.int8_activations():
            pytest.skip("no compiler here")

        def fresh():
            pool = runner.new_pool(1 << 20, block_tokens=4)
            tables = [pool.allocate(8) for _ in prompts]
            for table, prompt in zip(tables, prompts, strict=True):
                runner.forward(pool, [table], prompt, [0])
            return pool, tables

        pool, tables = fresh()
        one_by_one = torch.cat([runner.forward(pool, tables[:1], follow[:, i:i + 1], [9 + i])
                                for i in range(4)], 1)
        pool, tables = fresh()
        drafted = runner.forward(pool, tables[:1], follow, [9], keep=4)
        pool, tables = fresh()
        batched = runner.forward(pool, tables, torch.cat([follow[:, :1]] * 2), [9, 6])
        # Beside a prompt chunk: the decode row padded into a pass of 2 x 120 rows (the
        # prompts' kernels, SDPA over gathered blocks)
        pool, tables = fresh()
        chunk = torch.randint(0, 97, (1, 120))
        table = pool.allocate(32)
        mixed = runner.forward(pool, [tables[0], table],
                               torch.cat([F.pad(follow[:, :1], (0, 119)), chunk]), [9, 0],
                               keep=torch.tensor([0]))
    assert torch.equal(drafted, one_by_one)
    assert torch.equal(batched[:1], one_by_one[:, :1])
    torch.testing.assert_close(mixed[:1], one_by_one[:, :1], rtol=1e-5, atol=1e-5)
    assert one_by_one.abs().max() > 0.1
