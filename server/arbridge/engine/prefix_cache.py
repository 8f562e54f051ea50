"""Prompt-prefix KV reuse: prefill only what a new prompt does not share.

AR prompts repeat themselves: every caption request carries the same system
prompt and often the same scene, and every dialogue turn's prompt extends
the previous turn's. The keys and values of a token depend only on the
tokens before it, so a prompt that starts like an earlier one can start
from that prompt's cached KV and prefill only the rest.

The cache is a tree of fixed-size token blocks: a block is found by its
parent block's id and its own tokens (exact match, no hashing shortcuts),
holds that block's keys and values for every layer, and is evicted least
recently used once the byte budget is spent. Every use touches a chain from
its deepest block up, so parents always outlive their children.

Requests with dense features skip it: their first positions are
soft-prompt embeddings, not tokens, so equal ids do not mean equal KV.
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass

import torch

from arbridge.engine.kv_cache import SlotKVCache


@dataclass(eq=False)
class _Block:
    id: int
    kv: torch.Tensor  # [layers, 2, kv_heads, block, head_dim]


class PrefixCache:
    def __init__(self, budget_bytes: int, block_tokens: int = 8):
        self.budget_bytes = budget_bytes
        self.block = block_tokens
        self.bytes = 0
        self._blocks: collections.OrderedDict[tuple[int, tuple[int, ...]], _Block] = \
            collections.OrderedDict()  # least recently used first
        self._ids = itertools.count(1)
        self.reused_tokens = 0  # prompt tokens whose KV came from here
        self.prefilled_tokens = 0  # prompt tokens that looked here and were computed

    def __len__(self) -> int:
        return len(self._blocks)

    def _chain(self, ids: list[int]) -> list[tuple[tuple[int, tuple[int, ...]], _Block]]:
        """The cached blocks that start `ids`, in order."""
        chain, parent = [], 0
        for start in range(0, len(ids) - self.block + 1, self.block):
            key = (parent, tuple(ids[start:start + self.block]))
            block = self._blocks.get(key)
            if block is None:
                break
            chain.append((key, block))
            parent = block.id
        return chain

    def _touch(self, keys: list) -> None:
        """Mark a chain used, deepest block first: a parent always ends up more
        recent than its children, so eviction takes leaves before the blocks
        they hang from and never leaves an unreachable block holding memory."""
        for key in reversed(keys):
            self._blocks.move_to_end(key)

    def load(self, ids: list[int], cache: SlotKVCache, row: int) -> int:
        """Write the longest cached prefix of `ids` into `row` of `cache`.

        Returns how many tokens it wrote: at most len(ids) - 1, because the
        last prompt token must still run to give the first logits.
        """
        chain = self._chain(ids)
        count = max(0, min(len(chain) * self.block, len(ids) - 1))
        if count:
            self._touch([key for key, _ in chain])
            stacked = torch.cat([block.kv for _, block in chain], dim=3)[:, :, :, :count]
            cache.write_row(row, stacked)
        # Two counters, each only growing, for the metrics thread to read.
        self.reused_tokens += count
        self.prefilled_tokens += len(ids) - count
        return count

    def store(self, ids: list[int], cache: SlotKVCache, row: int) -> None:
        """Keep the full blocks of a prompt just prefilled in `row`, as many
        as fit beside the blocks it extends (never evicting those)."""
        chain = self._chain(ids)
        keys = [key for key, _ in chain]
        self._touch(keys)
        first_new = len(chain) * self.block
        wanted = (len(ids) - first_new) // self.block
        if wanted <= 0 or self.budget_bytes <= 0:
            return
        layer = cache.layers[0]
        size = (len(cache.layers) * 2 * layer.keys.shape[1] * self.block * layer.keys.shape[3]
                * layer.keys.element_size())
        held = sum(block.kv.numel() * block.kv.element_size() for _, block in chain)
        count = min(wanted, (self.budget_bytes - held) // size)
        if count <= 0:
            return
        fresh = cache.read_row(row, first_new, first_new + count * self.block)
        parent = chain[-1][1].id if chain else 0
        for i in range(count):
            # Room comes from other chains: this one is the most recent.
            self._evict(self.budget_bytes - size)
            block = _Block(next(self._ids),
                           fresh[:, :, :, i * self.block:(i + 1) * self.block].clone())
            start = first_new + i * self.block
            key = (parent, tuple(ids[start:start + self.block]))
            self._blocks[key] = block
            keys.append(key)
            self.bytes += size
            parent = block.id
        self._touch(keys)

    def _evict(self, keep_bytes: int) -> None:
        while self.bytes > keep_bytes and self._blocks:
            _, block = self._blocks.popitem(last=False)
            self.bytes -= block.kv.numel() * block.kv.element_size()
