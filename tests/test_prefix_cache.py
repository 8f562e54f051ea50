"""The prefix cache over the KV pool: exact matches only, shared blocks rather than
copies, bounded, evicting only blocks nobody else holds, and never matching a chain
whose parent block was evicted and its id reused."""

from __future__ import annotations

import torch

from arbridge.engine.kv_pool import KVPool
from arbridge.engine.prefix_cache import PrefixCache

BLOCK = 4


def new_pool(blocks: int = 16) -> KVPool:
    return KVPool(num_layers=1, kv_heads=1, head_dim=2, block_tokens=BLOCK, num_blocks=blocks,
                  dtype=torch.float32, device="cpu")


def read(pool: KVPool, ids: list[int]) -> list[int]:
    """A prompt 'prefilled': its blocks, each tagged with the tokens it holds."""
    blocks = pool.allocate(pool.blocks_for(len(ids)))
    for i, block in enumerate(blocks):
        pool.data[0, 0, block, 0, :, 0] = sum(ids[:(i + 1) * BLOCK])
    return blocks


def test_a_prompt_shares_only_whole_blocks_that_match_from_the_start():
    pool = new_pool()
    cache = PrefixCache(pool, max_blocks=8)
    first = list(range(1, 11))  # 10 tokens: two full blocks, a partial third
    blocks = read(pool, first)
    cache.store(first, blocks)
    assert len(cache) == 2 and pool.refs[blocks[0]] == 2 and pool.refs[blocks[2]] == 1

    got, count = cache.lookup(first[:6] + [99, 98, 97])  # the 2nd block differs
    assert (got, count) == (blocks[:1], 4)
    assert pool.refs[blocks[0]] == 3  # the same block, held by one more: no copy
    assert cache.lookup([0] + first[1:]) == ([], 0)  # the first token differs
    # The same block of tokens after a different prefix is a different block.
    assert cache.lookup([7, 7, 7, 7] + first[4:8]) == ([], 0)


def test_a_fully_cached_prompt_still_leaves_its_last_token_to_run():
    pool = new_pool()
    cache = PrefixCache(pool, max_blocks=8)
    ids = list(range(1, 9))
    cache.store(ids, read(pool, ids))
    got, count = cache.lookup(ids)
    assert count == 7 and len(got) == 2  # its last block is shared: written after a copy
    assert cache.reused_tokens == 7 and cache.prefilled_tokens == 1


def test_only_blocks_nobody_else_holds_are_evicted_least_recent_first():
    pool = new_pool()
    cache = PrefixCache(pool, max_blocks=3)
    a, b = list(range(1, 9)), list(range(20, 28))
    a_blocks, b_blocks = read(pool, a), read(pool, b)
    cache.store(a, a_blocks)
    pool.release(a_blocks)  # a's request ended: only the cache holds a's blocks
    cache.store(b, b_blocks)  # b's request still runs and holds its own
    # Three at most: room for b's second block came from a's leaf, not its root.
    held, count = cache.lookup(a)
    assert len(cache) == 3 and count == 4
    assert cache.evictable == 0  # a's root is held by that lookup, b's by b
    pool.release(held)
    assert cache.evictable == 1
    assert cache.evict(5) == 1 and pool.refs[a_blocks[0]] == 0  # back in the pool
    assert cache.lookup(b)[1] == 7  # b's blocks, still held by b, stay


def test_a_reused_block_id_never_revives_an_evicted_chain():
    pool = new_pool(blocks=4)  # three usable blocks
    cache = PrefixCache(pool, max_blocks=8)
    a = list(range(1, 9))
    a_blocks = read(pool, a)
    cache.store(a, a_blocks)
    pool.release(a_blocks)
    # a's root goes first (made the least recent by hand: a leaf held elsewhere would
    # be skipped the same way)...
    root = next(key for key in cache._blocks if key[0] == 0)
    cache._blocks.move_to_end(root, last=False)
    assert cache.evict(1) == 1 and len(cache) == 1 and root not in cache._blocks
    # ...and its block id is handed out again, for a different first block.
    c = [50, 51, 52, 53] + a[4:8]
    c_blocks = read(pool, c[:4])
    assert c_blocks == a_blocks[:1]
    cache.store(c[:4], c_blocks)
    # a's leaf, tokens a[4:8], must not match after c's root: its parent was a's root.
    assert cache.lookup(c)[1] == 4
