"""The engine batches every stream into one forward pass, without changing outputs."""

from __future__ import annotations

import asyncio
import functools
import time

import pytest
import torch

from arbridge.engine.async_engine import AsyncEngine
from arbridge.engine.scheduler import Scheduler
from arbridge.generation import SamplingConfig
from arbridge.models.loader import load_model

from conftest import wait_for, wait_idle
from tiny_model import build_tiny_llama, slow_down

PROMPTS = [
    "The red chair",
    "A lamp is far to the right; the kitchen is small",
    "日本語のテキスト",
    "Objects in view, nearest first: chair, table, lamp, window, door. User: what is ahead?",
    "door",
    "The glass table stands near the window and the lamp",
]


@pytest.fixture(scope="module", params=["gpt2", "llama", "gpt2/transformers-forward",
                                        "llama/transformers-forward"])
def loaded(request, tiny_model_dir, tmp_path_factory):
    """Both families, each through the fused decoder and through the model's
    own forward (the path every other architecture takes)."""
    family, _, forward = request.param.partition("/")
    if family == "gpt2":
        path = tiny_model_dir
    else:
        path = build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    lm = load_model(str(path), cache_dir=tmp_path_factory.mktemp("cache"))
    lm.fused_decoder = not forward
    return lm


class Engine:
    def __init__(self, loaded, **kwargs):
        kwargs.setdefault("fused_decoder", loaded.fused_decoder)
        self.scheduler = Scheduler(loaded.model, loaded.tokenizer,
                                   context_length=loaded.info.context_length, **kwargs)
        self.tokenizer = loaded.tokenizer
        self.engine = AsyncEngine(self.scheduler)
        self.batch_sizes: list[int] = []  # rows of every decode pass, as the metric sees it
        self.scheduler.on_decode_step = self.batch_sizes.append

    def __enter__(self):
        self.scheduler.start()
        self.scheduler.call(lambda: None).result()  # the runner is prepared
        assert (self.scheduler.runner.fused is not None) == self.scheduler.runner._want_fused
        return self

    def __exit__(self, *exc):
        self.scheduler.stop()

    async def run(self, prompt: str, cfg: SamplingConfig) -> dict[int, list[int]]:
        ids = self.tokenizer(prompt).input_ids
        tokens: dict[int, list[int]] = {i: [] for i in range(cfg.num_return_sequences)}
        async for out in self.engine.submit(ids, cfg):
            for index, token, _ in out.tokens:
                tokens[index].append(token)
        return tokens


def reference_greedy(loaded, prompt: str, n: int) -> list[int]:
    ids = loaded.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = loaded.model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, ids.input_ids.shape[1]:].tolist()


async def test_concurrent_greedy_equals_each_alone(loaded):
    cfg = SamplingConfig(max_new_tokens=20)
    undo = slow_down(loaded.model, 0.005)  # so all six are admitted before the first finishes
    try:
        with Engine(loaded, max_active=8) as eng:
            together = await asyncio.gather(*(eng.run(p, cfg) for p in PROMPTS))
    finally:
        undo()
    assert max(eng.batch_sizes) >= 4  # really decoded in one batch
    for prompt, got in zip(PROMPTS, together, strict=True):
        assert got[0] == reference_greedy(loaded, prompt, 20), prompt


async def test_seeded_sampling_is_independent_of_the_batch(loaded):
    cfg = SamplingConfig(max_new_tokens=16, temperature=0.9, top_k=50, top_p=0.95,
                         repetition_penalty=1.2, seed=42, num_return_sequences=2)
    with Engine(loaded) as eng:
        alone = await eng.run(PROMPTS[0], cfg)
    other = SamplingConfig(max_new_tokens=30, temperature=1.0, seed=7)
    with Engine(loaded) as eng:
        crowd = await asyncio.gather(eng.run(PROMPTS[0], cfg),
                                     *(eng.run(p, other) for p in PROMPTS[1:]))
    assert crowd[0] == alone
    assert alone[0] != alone[1]  # the two sequences sample independently


async def test_long_prompt_prefilled_in_chunks_gives_the_same_text(loaded):
    prompt = " ".join(PROMPTS * 3)
    cfg = SamplingConfig(max_new_tokens=12)
    with Engine(loaded, prefill_chunk_tokens=16) as eng:
        short = asyncio.ensure_future(eng.run("The red chair", SamplingConfig(max_new_tokens=40)))
        got = await eng.run(prompt, cfg)
        await short
    assert len(loaded.tokenizer(prompt).input_ids) > 100  # several chunks
    assert got[0] == reference_greedy(loaded, prompt, 12)


async def test_streams_join_and_leave_mid_flight(loaded):
    """A request arriving while others decode starts at once and changes nothing."""
    undo = slow_down(loaded.model, 0.01)  # the long stream decodes for >= 0.4 s
    try:
        with Engine(loaded, max_active=4) as eng:
            long_times: list[float] = []  # when each of its tokens arrived

            async def run_long() -> list[int]:
                tokens = []
                ids = loaded.tokenizer(PROMPTS[1]).input_ids
                async for out in eng.engine.submit(ids, SamplingConfig(max_new_tokens=40)):
                    for _, token, _ in out.tokens:
                        long_times.append(time.perf_counter())
                        tokens.append(token)
                return tokens

            long = asyncio.ensure_future(run_long())
            await wait_for(lambda: long_times, 10, "the long stream's first token")
            joined = time.perf_counter()
            short = await eng.run(PROMPTS[2], SamplingConfig(max_new_tokens=5))
            late = await eng.run(PROMPTS[3], SamplingConfig(max_new_tokens=10))
            left = time.perf_counter()
            long_tokens = await long
            await wait_idle(eng.scheduler)  # the last request leaves at the next turn
    finally:
        undo()
    # The long stream was decoding before the others joined and went on after they
    # left, and meanwhile they shared its forward passes.
    before = sum(t < joined for t in long_times)
    after = sum(t > left for t in long_times)
    assert before >= 1 and after >= 5, (before, after, len(long_times))
    assert max(eng.batch_sizes) >= 2, eng.batch_sizes
    assert short[0] == reference_greedy(loaded, PROMPTS[2], 5)
    assert late[0] == reference_greedy(loaded, PROMPTS[3], 10)
    assert long_tokens == reference_greedy(loaded, PROMPTS[1], 40)


async def test_a_failing_step_ends_requests_with_error_and_the_engine_recovers(loaded):
    from arbridge.generation import FinishReason

    # The input embedding runs in every forward pass, fused path or transformers'.
    head = loaded.model.get_input_embeddings()
    forward = head.forward
    calls = {"n": 0}

    @functools.wraps(forward)
    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated device failure")
        return forward(*args, **kwargs)

    head.forward = flaky
    try:
        with Engine(loaded) as eng:
            ids = loaded.tokenizer(PROMPTS[0]).input_ids
            reasons = []
            async for out in eng.engine.submit(ids, SamplingConfig(max_new_tokens=10)):
                reasons += [(f.reason, f.error) for f in out.finished]
            assert reasons == [(FinishReason.ERROR, "RuntimeError: simulated device failure")]
            after = await eng.run(PROMPTS[2], SamplingConfig(max_new_tokens=5))
    finally:
        head.forward = forward
    assert after[0] == reference_greedy(loaded, PROMPTS[2], 5)


def test_a_burst_between_turns_fills_free_slots_before_the_queue(tiny_loaded):
    """Requests that arrive before the scheduler's next turn are not refused while
    slots stand empty: capacity is max_active + max_queue, then QueueFull."""
    from arbridge.engine.requests import RequestHandle
    from arbridge.engine.scheduler import QueueFull

    scheduler = Scheduler(tiny_loaded.model, tiny_loaded.tokenizer,
                          context_length=tiny_loaded.info.context_length,
                          max_active=3, max_queue=2)  # never started: no turn runs
    handles = [RequestHandle(prompt_ids=[1, 2], sampling=SamplingConfig(max_new_tokens=4),
                             sink=lambda out: None) for _ in range(6)]
    for handle in handles[:5]:
        scheduler.submit(handle)
    assert scheduler.load == (0, 5)
    with pytest.raises(QueueFull) as err:
        scheduler.submit(handles[5])
    assert err.value.retry_after_s > 0


# -- prompt-prefix reuse ---------------------------------------------------------------
SHARED = "Objects in view, nearest first: chair, table, lamp, window, door. " * 3


async def test_prompts_sharing_a_prefix_reuse_its_kv_and_give_the_same_text(loaded):
    cfg = SamplingConfig(max_new_tokens=12)
    questions = [SHARED + q for q in ("User: what is ahead?", "User: where is the lamp?",
                                      "The red chair", SHARED)]
    with Engine(loaded, prefix_cache_bytes=1 << 20) as eng:
        first = await eng.run(questions[0], cfg)  # fills the cache
        cache = eng.scheduler.prefix_cache
        assert cache.reused_tokens == 0 and len(cache) > 0
        rest = await asyncio.gather(*(eng.run(q, cfg) for q in questions[1:]))
        again = await eng.run(questions[0], cfg)  # the whole prompt is cached now
        shared_len = len(loaded.tokenizer(SHARED).input_ids)
        # Each later prompt found at least the shared text's full blocks.
        assert cache.reused_tokens >= 4 * (shared_len // cache.block * cache.block)
    for prompt, got in zip(questions, [first, *rest], strict=True):
        assert got[0] == reference_greedy(loaded, prompt, 12), prompt
    assert again == first


async def test_a_seeded_sample_is_the_same_with_and_without_prefix_reuse(loaded):
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.9, top_k=20, seed=5)
    prompt = SHARED + "User: and behind me?"
    with Engine(loaded) as eng:
        plain = await eng.run(prompt, cfg)
    with Engine(loaded, prefix_cache_bytes=1 << 20) as eng:
        await eng.run(SHARED, SamplingConfig(max_new_tokens=2))
        reused = await eng.run(prompt, cfg)
        assert eng.scheduler.prefix_cache.reused_tokens > 0
    assert reused == plain


async def test_a_short_prompt_is_not_stuck_behind_long_ones(loaded):
    """Three ~200-token prompts are being read when a 5-token one arrives: the short
    one's first token comes before any long one's (the turn's prefill budget is shared,
    not spent on the first rows), and every reply is the same as alone."""
    longs = [" ".join([p] * n) for p, n in ((PROMPTS[1], 14), (PROMPTS[3], 7),
                                             (PROMPTS[5], 16))]
    assert all(150 < len(loaded.tokenizer(p).input_ids) < 250 for p in longs)
    cfg = SamplingConfig(max_new_tokens=3)
    firsts: list[str] = []
    undo = slow_down(loaded.model, 0.01)
    try:
        with Engine(loaded, max_active=8, prefill_chunk_tokens=32,
                    prefill_prompt_tokens=16) as eng:
            async def run(name: str, prompt: str) -> list[int]:
                tokens = []
                async for out in eng.engine.submit(loaded.tokenizer(prompt).input_ids, cfg):
                    for _, token, _ in out.tokens:
                        if not tokens:
                            firsts.append(name)
                        tokens.append(token)
                return tokens

            tasks = [asyncio.ensure_future(run(f"long{i}", p)) for i, p in enumerate(longs)]
            await wait_for(lambda: eng.scheduler.load[0] == 3, 5, "the long ones admitted")
            short = asyncio.ensure_future(run("short", "The red chair"))
            results = await asyncio.gather(*tasks, short)
    finally:
        undo()
    assert firsts[0] == "short", firsts
    for prompt, tokens in zip([*longs, "The red chair"], results, strict=True):
        assert tokens == reference_greedy(loaded, prompt, 3)


async def test_one_client_s_burst_does_not_keep_another_s_request_waiting(loaded):
    """Two slots; client A queues five requests, then client B one: B's is admitted at
    the first free slots (with A's third, when two free together), ahead of the rest
    of A's queue, not after all of it."""
    cfg = SamplingConfig(max_new_tokens=6)
    order: list[str] = []
    undo = slow_down(loaded.model, 0.01)
    try:
        with Engine(loaded, max_active=2) as eng:
            async def run(name: str, peer: str) -> None:
                ids = loaded.tokenizer("The red chair").input_ids
                async for out in eng.engine.submit(ids, cfg, peer=peer):
                    if out.tokens and name not in order:
                        order.append(name)

            burst = [asyncio.ensure_future(run(f"a{i}", "ipv4:10.0.0.1")) for i in range(5)]
            await wait_for(lambda: eng.scheduler.load == (2, 3), 5, "A's burst queued")
            lone = asyncio.ensure_future(run("b", "ipv4:10.0.0.2"))
            await asyncio.gather(*burst, lone)
    finally:
        undo()
    assert order.index("b") < order.index("a3"), order


async def test_a_parked_request_leaves_when_its_sequences_are_stopped_or_cancelled(loaded):
    """Paused requests are parked (out of the batch, keeping their blocks); one whose
    sequence the output side then ends (a stop string in a token made before the pause)
    and one cancelled both leave the engine, their blocks with them; a resumed one goes
    on."""
    undo = slow_down(loaded.model, 0.01)
    try:
        with Engine(loaded, max_active=4) as eng:
            ids = loaded.tokenizer("The red chair").input_ids
            streams = [eng.engine.submit(ids, SamplingConfig(max_new_tokens=200))
                       for _ in range(3)]
            readers = [asyncio.ensure_future(collect_steps(s)) for s in streams]
            await wait_for(lambda: eng.scheduler.load == (3, 0), 5, "all three decoding")
            for stream in streams:
                stream.pause()
            await wait_for(lambda: eng.scheduler.parked == 3, 5, "all three parked")
            assert all(req.blocks for req in eng.scheduler._parked)
            streams[0].stop_sequence(0)
            streams[1].cancel()
            streams[2].resume()
            await wait_for(lambda: eng.scheduler.parked == 0, 5,
                           lambda: f"still parked: {eng.scheduler.parked}")
            # The first one's reader ended its sequence itself: nothing more comes to it.
            readers[0].cancel()
            steps = await asyncio.wait_for(asyncio.gather(*readers[1:]), 30)
            await wait_idle(eng.scheduler)
            assert eng.scheduler.kv_blocks["used"] == 0  # every block back in the pool
    finally:
        undo()
    assert sum(len(s.tokens) for s in steps[1]) == 200  # the resumed one finished


async def collect_steps(stream) -> list:
    return [out async for out in stream]


# -- the KV pool: blocks, sharing, preemption --------------------------------------------
def pool_bytes(loaded, blocks: int, block_tokens: int) -> int:
    """The kv_cache_bytes that make a pool of exactly `blocks` blocks."""
    from arbridge.engine.kv_pool import KVPool
    from arbridge.engine.runner import ModelRunner

    runner = ModelRunner(loaded.model, loaded.info.context_length, fused=False)
    kv_heads, head_dim = runner.kv_geometry()
    return blocks * KVPool.bytes_per_block(runner.num_layers, kv_heads, head_dim,
                                           block_tokens, runner.dtype)


async def test_a_pool_too_small_for_everyone_preempts_and_recomputes_the_same_text(loaded):
    """Six greedy requests and two seeded samplers of 4 sequences, decoding together in a
    pool that holds about two of them: the newest are preempted, read again from their
    prompt and what they already sent, and every output is what it is alone."""
    greedy = SamplingConfig(max_new_tokens=40)
    seeded = SamplingConfig(max_new_tokens=24, temperature=0.9, top_k=40, seed=3,
                            num_return_sequences=4)
    with Engine(loaded) as eng:
        alone = [await eng.run(PROMPTS[4], seeded), await eng.run(PROMPTS[0], seeded)]
    undo = slow_down(loaded.model, 0.002)
    try:
        with Engine(loaded, max_active=8, kv_block_tokens=4,
                    kv_cache_bytes=pool_bytes(loaded, 41, 4)) as eng:
            runs = [eng.run(p, greedy) for p in PROMPTS] + \
                [eng.run(PROMPTS[4], seeded), eng.run(PROMPTS[0], seeded)]
            together = await asyncio.gather(*runs)
            assert eng.scheduler.preemptions >= 2
            assert eng.scheduler.kv_blocks["used"] == 0  # every block back in the pool
    finally:
        undo()
    for prompt, got in zip(PROMPTS, together[:len(PROMPTS)], strict=True):
        assert got[0] == reference_greedy(loaded, prompt, 40), prompt
    assert together[len(PROMPTS):] == alone


async def test_returned_sequences_share_the_prompt_s_blocks(loaded):
    """Four sequences of one request hold the prompt's full blocks once, not four
    times; only the last, partial block is copied, by each sequence that writes."""
    undo = slow_down(loaded.model, 0.01)
    try:
        with Engine(loaded, kv_block_tokens=4) as eng:
            ids = loaded.tokenizer(" ".join(PROMPTS)).input_ids
            cfg = SamplingConfig(max_new_tokens=30, temperature=1.0, seed=1,
                                 num_return_sequences=4)
            reader = asyncio.ensure_future(collect_steps(eng.engine.submit(ids, cfg)))
            await wait_for(lambda: sum(len(s.generated) for s in eng.scheduler._decoding) >= 8,
                           10, "four sequences decoding")
            tables = eng.scheduler.call(
                lambda: [list(s.blocks) for s in eng.scheduler._decoding]).result()
            await reader
    finally:
        undo()
    full = len(ids) // 4
    assert len(tables) == 4 and all(t[:full] == tables[0][:full] for t in tables)
    assert len({t[full] for t in tables}) == 4  # each its own copy of the partial block


async def test_a_request_that_could_never_fit_is_refused_naming_the_limit(loaded):
    from arbridge.engine.scheduler import TooLargeForKV

    with Engine(loaded, kv_block_tokens=4, kv_cache_bytes=pool_bytes(loaded, 11, 4)) as eng:
        ids = loaded.tokenizer(PROMPTS[0]).input_ids
        with pytest.raises(TooLargeForKV, match=r"max_tokens: 1 sequence\(s\) .* "
                                               r"kv_cache_mb holds"):
            eng.engine.submit(ids, SamplingConfig(max_new_tokens=60))
        # What fits alone runs, even in a pool this small.
        got = await eng.run(PROMPTS[0], SamplingConfig(max_new_tokens=30))
    assert got[0] == reference_greedy(loaded, PROMPTS[0], 30)


async def test_blocks_go_back_when_requests_finish_are_cancelled_or_fail(loaded):
    undo = slow_down(loaded.model, 0.01)
    try:
        with Engine(loaded, max_active=4) as eng:
            ids = loaded.tokenizer(PROMPTS[1]).input_ids
            done = eng.run(PROMPTS[0], SamplingConfig(max_new_tokens=5))
            cancelled = eng.engine.submit(ids, SamplingConfig(max_new_tokens=500))
            reader = asyncio.ensure_future(collect_steps(cancelled))
            await done
            await wait_for(lambda: eng.scheduler.kv_blocks["used"] > 0, 5, "decoding")
            cancelled.cancel()
            await reader
            await wait_idle(eng.scheduler)
            assert eng.scheduler.kv_blocks == {"free": eng.scheduler.pool.usable, "used": 0,
                                               "prefix_cache": 0}
    finally:
        undo()
