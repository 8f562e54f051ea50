"""The scheduler's policy without a model: admission by KV blocks, preemption and
resume by recompute, blocks back on finish, cancel and error, shared prefix blocks,
refusal of what could never fit.

The model is a stand-in (as vLLM's scheduler tests use one): every next token is a
function of all the tokens a row has cached, read back through its block table, so
a lost, stale or misplaced block changes the reply, and replies can be compared
between a roomy pool and one where requests are preempted and read again.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from arbridge.engine.async_engine import AsyncEngine
from arbridge.engine.kv_pool import KVPool, PagedKVCache
from arbridge.engine.scheduler import Scheduler, TooLargeForKV
from arbridge.generation import SamplingConfig

from conftest import wait_for, wait_idle

VOCAB = 61
BLOCK = 4


class CachedTokensModel:
    """ModelRunner's face, without a model: keys are the token ids themselves."""

    device, dtype, vocab_size, fused = torch.device("cpu"), torch.float32, VOCAB, None

    def __init__(self, fail_on_pass: int = 0):
        self.passes = 0
        self.fail_on_pass = fail_on_pass

    def prepare(self) -> None:
        pass

    def attention_tokens(self) -> float:
        return 1000.0

    def new_pool(self, budget_bytes: int, block_tokens: int = 16) -> KVPool:
        per_block = KVPool.bytes_per_block(1, 1, 1, block_tokens, torch.float32)
        return KVPool(1, 1, 1, block_tokens, max(2, budget_bytes // per_block), torch.float32,
                      "cpu")

    def forward(self, pool, tables, input_ids, starts, keep=1, inputs_embeds=None):
        self.passes += 1
        if self.passes == self.fail_on_pass:
            raise RuntimeError("simulated device failure")
        rows, q_len = input_ids.shape
        cache = PagedKVCache(pool)
        cache.prepare(tables, starts, q_len, max(starts) + q_len)
        ids = input_ids.float()[:, None, :, None]
        keys, _ = cache.write_and_read(0, ids, ids)  # [rows, 1, positions, 1]
        positions = torch.tensor(starts)[:, None] + torch.arange(q_len)[None, :]
        seen = torch.arange(keys.shape[2])[None, None, :] <= positions[:, :, None]
        weights = torch.arange(1, keys.shape[2] + 1, dtype=torch.float32)  # order matters
        totals = (keys[:, 0, :, 0][:, None, :] * weights * seen).sum(-1).long()
        # Every token possible (seeded sampling has something to choose), one likeliest.
        distance = (torch.arange(VOCAB) - ((totals * 7 + 3) % VOCAB)[..., None]) % VOCAB
        logits = -0.2 * distance.float()
        return logits[:, -keep:] if isinstance(keep, int) else logits[:, keep]


def blocks_bytes(blocks: int) -> int:
    return blocks * KVPool.bytes_per_block(1, 1, 1, BLOCK, torch.float32)


class Engine:
    def __init__(self, blocks: int = 1000, model: CachedTokensModel | None = None, **kwargs):
        self.model = model or CachedTokensModel()
        self.scheduler = Scheduler(None, None, context_length=512, runner=self.model,
                                   kv_cache_bytes=blocks_bytes(blocks), kv_block_tokens=BLOCK,
                                   **kwargs)
        self.engine = AsyncEngine(self.scheduler)
        self.preempted: list[int] = []  # arrival numbers, in preemption order
        preempt = self.scheduler._preempt

        def record(req):
            self.preempted.append(req.arrival)
            preempt(req)

        self.scheduler._preempt = record

    def __enter__(self):
        self.scheduler.start()
        self.scheduler.ready.wait()
        return self

    def __exit__(self, *exc):
        self.scheduler.stop()

    async def run(self, ids: list[int], cfg: SamplingConfig, peer: str = "") -> list[list[int]]:
        tokens: list[list[int]] = [[] for _ in range(cfg.num_return_sequences)]
        async for out in self.engine.submit(ids, cfg, peer=peer):
            for index, token, _ in out.tokens:
                tokens[index].append(token)
        return tokens


PROMPTS = [[(i * 5 + j * 3) % VOCAB for j in range(n)] for i, n in
           enumerate((9, 23, 5, 17, 30, 12))]


async def test_a_pool_too_small_for_everyone_gives_the_same_replies_by_recompute():
    cfg = SamplingConfig(max_new_tokens=40)
    with Engine() as roomy:
        expected = await asyncio.gather(*(roomy.run(p, cfg) for p in PROMPTS))
        assert roomy.preempted == []
    # About three requests' worth of blocks for six: the newest are preempted.
    with Engine(blocks=3 * 18 + 2, max_active=6) as tight:
        got = await asyncio.gather(*(tight.run(p, cfg) for p in PROMPTS))
        await wait_idle(tight.scheduler)
        assert tight.scheduler.kv_blocks["used"] == 0
    assert got == expected
    assert len(tight.preempted) >= 2
    # The first to arrive is never the one to go while a newer one holds blocks.
    assert 1 not in tight.preempted


async def test_several_sequences_share_the_prompt_and_survive_preemption():
    seeded = SamplingConfig(max_new_tokens=20, temperature=1.0, seed=11, num_return_sequences=3)
    greedy = SamplingConfig(max_new_tokens=40)
    with Engine() as roomy:
        expected = await roomy.run(PROMPTS[4], seeded)
    # Room for the sampler alone (3 x 13 blocks), not beside two greedy requests.
    with Engine(blocks=40, max_active=4) as tight:
        results = await asyncio.gather(tight.run(PROMPTS[1], greedy),
                                       tight.run(PROMPTS[3], greedy),
                                       tight.run(PROMPTS[4], seeded))
        assert 3 in tight.preempted  # the sampler, the newest, was read again
    assert results[2] == expected
    assert len({tuple(seq) for seq in expected}) > 1


async def test_admission_waits_for_blocks_and_a_waiting_request_gets_no_promise():
    """A prompt is admitted only when its blocks fit beside the promises already made;
    until then it waits in the queue (not refused, not run)."""
    cfg = SamplingConfig(max_new_tokens=8)
    long = [i % VOCAB for i in range(60)]  # 15 blocks
    with Engine(blocks=26, max_active=4, model=CachedTokensModel()) as eng:
        model = eng.model
        slow = model.forward

        def forward(*args, **kwargs):
            import time
            time.sleep(0.01)
            return slow(*args, **kwargs)

        model.forward = forward
        first = asyncio.ensure_future(eng.run(long, cfg))
        await wait_for(lambda: eng.scheduler.load == (1, 0), 5, "the first admitted")
        second = asyncio.ensure_future(eng.run(long[::-1], cfg))
        await wait_for(lambda: eng.scheduler.load[1] == 1, 5, "the second waits")
        assert eng.scheduler.load == (1, 1)
        await asyncio.gather(first, second)


async def test_blocks_go_back_on_finish_cancel_and_a_failed_step():
    with Engine(model=CachedTokensModel(fail_on_pass=40)) as eng:
        pool = eng.scheduler.pool
        await eng.run(PROMPTS[0], SamplingConfig(max_new_tokens=5))
        assert eng.scheduler.kv_blocks["used"] == 0
        stream = eng.engine.submit(PROMPTS[1], SamplingConfig(max_new_tokens=400))
        async for out in stream:
            if out.tokens:
                break
        stream.cancel()
        await wait_idle(eng.scheduler)
        assert pool.free == pool.usable
        reasons = []
        async for out in eng.engine.submit(PROMPTS[2], SamplingConfig(max_new_tokens=400)):
            reasons += [f.error for f in out.finished]
        assert reasons == ["RuntimeError: simulated device failure"]
        await wait_for(lambda: pool.free == pool.usable, 5, "the pool reset")
        assert all(r == 0 for r in pool.refs)


async def test_prompts_sharing_a_start_share_its_blocks():
    shared = PROMPTS[4]  # 30 tokens: 7 full blocks
    cfg = SamplingConfig(max_new_tokens=3)
    with Engine(prefix_cache_bytes=blocks_bytes(100)) as eng:
        alone = await eng.run(shared + [1, 2, 3], cfg)
        cached = len(eng.scheduler.prefix_cache)
        tables = []
        # 32 tokens, all in cached blocks: the last must still run, in a copy of the 8th.
        stream = eng.engine.submit(shared + [1, 2], SamplingConfig(max_new_tokens=200))
        async for out in stream:
            if out.tokens:
                tables = eng.scheduler.call(
                    lambda: [list(s.blocks) for s in eng.scheduler._decoding]).result()
                break
        stream.cancel()
        await wait_idle(eng.scheduler)
        cache_blocks = {e.block for e in eng.scheduler.prefix_cache._blocks.values()}
    assert cached == 8 and len(tables) == 1  # 33 tokens: 8 full blocks
    # The second prompt holds the same 7 blocks, and its own copy of the 8th.
    assert set(tables[0][:7]) <= cache_blocks and tables[0][7] not in cache_blocks
    with Engine() as plain:
        assert await plain.run(shared + [1, 2, 3], cfg) == alone


async def test_one_client_s_burst_does_not_crowd_out_another_s_request():
    cfg = SamplingConfig(max_new_tokens=30)
    order = []
    with Engine(max_active=2) as eng:
        async def run(name, peer):
            await eng.run(PROMPTS[0], cfg, peer=peer)
            order.append(name)

        burst = [asyncio.ensure_future(run(f"a{i}", "10.0.0.1")) for i in range(5)]
        await asyncio.sleep(0)
        lone = asyncio.ensure_future(run("b", "10.0.0.2"))
        await asyncio.gather(*burst, lone)
    assert order.index("b") <= 3, order


def test_a_request_that_could_never_fit_is_refused_before_it_runs():
    scheduler = Scheduler(None, None, context_length=512, runner=CachedTokensModel(),
                          kv_cache_bytes=blocks_bytes(21), kv_block_tokens=BLOCK)
    from arbridge.engine.requests import RequestHandle

    def handle(new: int, n: int = 1) -> RequestHandle:
        return RequestHandle(prompt_ids=list(range(20)), sink=lambda out: None,
                             sampling=SamplingConfig(max_new_tokens=new,
                                                     num_return_sequences=n))

    scheduler.submit(handle(60))  # 80 tokens: 20 blocks of the 20 usable
    with pytest.raises(TooLargeForKV, match=r"max_tokens: 1 sequence\(s\) of up to 84 "
                                            r"tokens \(a 20-token prompt and 64 new\)"):
        scheduler.submit(handle(64))
    scheduler.submit(handle(20, n=2))  # 2 x 10 blocks: each could be read again alone
    with pytest.raises(TooLargeForKV, match="3 sequence"):
        scheduler.submit(handle(20, n=3))
    assert scheduler.load == (0, 2)

