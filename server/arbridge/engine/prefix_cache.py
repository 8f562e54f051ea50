"""Prompt-prefix KV reuse: prefill only what a new prompt does not share.

AR prompts repeat themselves: every caption request carries the same system
prompt and often the same scene, and every dialogue turn's prompt extends
the previous turn's. The keys and values of a token depend only on the
tokens before it, so a prompt that starts like an earlier one can start
from that prompt's cached KV and prefill only the rest.

The cache is an index over blocks of the KV pool (kv_pool.py), not a copy: a
full block of a prompt just read is remembered by its parent block's id and its
own tokens (exact match, no hashing shortcuts), and the cache holds one
reference to it. A new prompt that starts the same way takes references to the
same blocks, so its table starts with them and nothing is copied. Blocks only
the cache holds are evicted least recently used, when the pool needs room or the
cache is over its own cap (`prefix_cache_mb`). Every use touches a chain from its
deepest block up, so parents always outlive their children.

Requests with dense features skip it: their first positions are
soft-prompt embeddings, not tokens, so equal ids do not mean equal KV.
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass

from arbridge.engine.kv_pool import KVPool

_Key = tuple[int, tuple[int, ...]]  # (parent entry's id or 0, the block's tokens)


@dataclass(frozen=True)
class _Entry:
    # Its own id, never reused: pool block ids are, and a child keyed by a block id
    # could match under a different parent once that block is evicted and reused.
    id: int
    block: int


class PrefixCache:
    def __init__(self, pool: KVPool, max_blocks: int):
        self.pool = pool
        self.block = pool.block_tokens
        self.max_blocks = max_blocks
        self._blocks: collections.OrderedDict[_Key, _Entry] = collections.OrderedDict()
        self._ids = itertools.count(1)
        self.reused_tokens = 0  # prompt tokens whose KV came from here
        self.prefilled_tokens = 0  # prompt tokens that looked here and were computed

    def __len__(self) -> int:
        return len(self._blocks)

    def _chain(self, ids: list[int]) -> list[tuple[_Key, _Entry]]:
        """The cached blocks that start `ids`, in order."""
        chain, parent = [], 0
        for start in range(0, len(ids) - self.block + 1, self.block):
            key = (parent, tuple(ids[start:start + self.block]))
            entry = self._blocks.get(key)
            if entry is None:
                break
            chain.append((key, entry))
            parent = entry.id
        return chain

    def _touch(self, keys: list[_Key]) -> None:
        """Mark a chain used, deepest block first: a parent always ends up more
        recent than its children, so eviction takes leaves before the blocks
        they hang from and never leaves an unreachable block holding memory."""
        for key in reversed(keys):
            self._blocks.move_to_end(key)

    def lookup(self, ids: list[int]) -> tuple[list[int], int]:
        """(blocks, tokens): the cached blocks that start `ids`, each now also held
        by the caller, and how many tokens of `ids` they cover: at most
        len(ids) - 1, because the last prompt token must still run to give the
        first logits (its block, if cached, is shared: written only after a copy)."""
        chain = self._chain(ids)
        count = max(0, min(len(chain) * self.block, len(ids) - 1))
        blocks = [entry.block for _, entry in chain][:self.pool.blocks_for(count)]
        if blocks:
            self._touch([key for key, _ in chain])
            self.pool.share(blocks)
        # Two counters, each only growing, for the metrics thread to read.
        self.reused_tokens += count
        self.prefilled_tokens += len(ids) - count
        return blocks, count

    def store(self, ids: list[int], blocks: list[int]) -> None:
        """Remember the full blocks of `ids`, whose KV is in `blocks` (a table)."""
        parent, keys = 0, []
        for i in range(min(len(ids) // self.block, len(blocks))):
            key = (parent, tuple(ids[i * self.block:(i + 1) * self.block]))
            entry = self._blocks.get(key)
            if entry is None:
                if len(self._blocks) >= self.max_blocks and not self.evict(1, keep=keys):
                    break
                entry = self._blocks[key] = _Entry(next(self._ids), blocks[i])
                self.pool.share([entry.block])
            keys.append(key)
            parent = entry.id
        self._touch(keys)

    @property
    def evictable(self) -> int:
        """Blocks only the cache holds: the pool can have them back."""
        return sum(1 for entry in self._blocks.values() if self.pool.refs[entry.block] == 1)

    def evict(self, count: int, keep: list[_Key] = ()) -> int:
        """Give back up to `count` blocks nobody else holds, least recently used
        first; returns how many."""
        freed, keep = 0, set(keep)
        for key, entry in list(self._blocks.items()):
            if freed >= count:
                break
            if self.pool.refs[entry.block] == 1 and key not in keep:
                del self._blocks[key]
                self.pool.release([entry.block])
                freed += 1
        return freed

    def clear(self) -> None:
        """Forget everything (the pool was reset)."""
        self._blocks.clear()
