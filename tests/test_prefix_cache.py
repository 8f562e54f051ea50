"""The prefix cache's block tree: exact matches only, bounded, parents last to go."""

from __future__ import annotations

import torch

from arbridge.engine.kv_cache import SlotKVCache
from arbridge.engine.prefix_cache import PrefixCache

LAYERS, HEADS, DIM = 2, 1, 2


def filled_row(cache: SlotKVCache, ids: list[int]) -> int:
    """A row whose KV at position p encodes (layer, k/v, ids[:p+1]) uniquely."""
    row = cache.add_row(len(ids))
    cache.prepare(row, 1, torch.tensor([0]), q_len=len(ids), read_length=len(ids))
    for layer in range(LAYERS):
        key = torch.tensor([[float(sum(ids[:p + 1]) + 1000 * layer)] * DIM
                            for p in range(len(ids))])[None, None]
        cache.layers[layer].update(key, -key, layer)
    return row


def new_cache() -> SlotKVCache:
    return SlotKVCache(LAYERS, slots=2, capacity=8)


def test_a_prompt_reuses_only_whole_blocks_that_match_from_the_start():
    store = PrefixCache(budget_bytes=1 << 20, block_tokens=4)
    source = new_cache()
    first = list(range(1, 11))  # 10 tokens: two full blocks
    store.store(first, source, filled_row(source, first))
    assert len(store) == 2

    target = new_cache()
    row = target.add_row(0)
    assert store.load(first[:6] + [99, 98, 97], target, row) == 4  # 2nd block differs
    assert torch.equal(target.read_row(row, 0, 4), source.read_row(0, 0, 4))
    assert store.load([0] + first[1:], new_cache(), 0) == 0  # first token differs
    # The same block of tokens after a different prefix is a different block.
    assert store.load([7, 7, 7, 7] + first[4:8], new_cache(), 0) == 0


def test_a_fully_cached_prompt_still_leaves_its_last_token_to_run():
    store = PrefixCache(budget_bytes=1 << 20, block_tokens=4)
    source = new_cache()
    ids = list(range(1, 9))
    store.store(ids, source, filled_row(source, ids))
    target = new_cache()
    row = target.add_row(0)
    assert store.load(ids, target, row) == 7
    assert torch.equal(target.read_row(row, 0, 7), source.read_row(0, 0, 7))
    assert store.reused_tokens == 7 and store.prompt_tokens == 8


def test_the_budget_evicts_least_recent_blocks_children_before_parents():
    block_bytes = LAYERS * 2 * HEADS * 4 * DIM * 4  # float32
    store = PrefixCache(budget_bytes=3 * block_bytes, block_tokens=4)
    cache = new_cache()
    a = list(range(1, 9))  # blocks a1, a2
    store.store(a, cache, filled_row(cache, a))
    b = list(range(20, 28))  # blocks b1, b2: a1 goes first (least recent), then...
    store.store(b, cache, filled_row(cache, b))
    assert store.bytes <= store.budget_bytes and len(store) == 3
    assert store.load(b, new_cache(), 0) == 7  # b survives whole
    assert store.load(a, new_cache(), 0) == 0  # a lost its first block: a2 unreachable
    c = list(range(40, 44))
    store.store(c, cache, filled_row(cache, c))
    # The orphan a2 was evicted before b's blocks, which a lookup touched.
    assert store.load(b, new_cache(), 0) == 7


def test_nothing_is_kept_without_a_budget():
    store = PrefixCache(budget_bytes=0, block_tokens=4)
    cache = new_cache()
    ids = list(range(1, 9))
    store.store(ids, cache, filled_row(cache, ids))
    assert len(store) == 0 and store.bytes == 0
