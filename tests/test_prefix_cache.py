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
    assert store.reused_tokens == 7 and store.prefilled_tokens == 1


def reachable(store: PrefixCache) -> bool:
    """Every cached block hangs from the root or from another cached block."""
    ids = {block.id for block in store._blocks.values()}
    return all(parent == 0 or parent in ids for parent, _ in store._blocks)


def test_the_budget_evicts_leaves_first_and_never_strands_a_block():
    block_bytes = LAYERS * 2 * HEADS * 4 * DIM * 4  # float32
    store = PrefixCache(budget_bytes=3 * block_bytes, block_tokens=4)
    cache = new_cache()
    a = list(range(1, 9))  # blocks a1, a2
    store.store(a, cache, filled_row(cache, a))
    b = list(range(20, 28))  # b1, b2: room comes from a's leaf, not its root
    store.store(b, cache, filled_row(cache, b))
    assert store.bytes <= store.budget_bytes and len(store) == 3 and reachable(store)
    assert store.load(b, new_cache(), 0) == 7
    assert store.load(a, new_cache(), 0) == 4  # a kept its first block
    # A prompt longer than the budget keeps what fits and evicts other chains'
    # leaves first; it never evicts the blocks it is extending.
    long = list(range(20, 40))  # b1, b2 and three more
    store.store(long, cache, filled_row(cache, long))
    assert store.bytes <= store.budget_bytes and reachable(store)
    assert store.load(long, new_cache(), 0) == 12


def test_random_traffic_keeps_the_tree_whole_and_within_budget():
    import random

    rng = random.Random(0)
    block_bytes = LAYERS * 2 * HEADS * 4 * DIM * 4
    store = PrefixCache(budget_bytes=7 * block_bytes, block_tokens=4)
    cache = SlotKVCache(LAYERS, slots=64, capacity=32)
    for _ in range(60):
        ids = [rng.choice((1, 2)) for _ in range(rng.randint(1, 24))]
        target = new_cache()
        target.add_row(0)
        got = store.load(ids, target, 0)
        if got:  # what came back is exactly what this prompt's KV would be
            reference = new_cache()
            assert torch.equal(target.read_row(0, 0, got),
                               reference.read_row(filled_row(reference, ids), 0, got))
        store.store(ids, cache, filled_row(cache, ids))
        assert store.bytes <= store.budget_bytes and reachable(store)
    assert store.reused_tokens > 0


def test_nothing_is_kept_without_a_budget():
    store = PrefixCache(budget_bytes=0, block_tokens=4)
    cache = new_cache()
    ids = list(range(1, 9))
    store.store(ids, cache, filled_row(cache, ids))
    assert len(store) == 0 and store.bytes == 0
