"""Which sequence owns each row of a slot KV cache.

`SlotKVCache` keeps its active rows at 0..n-1: removing a row moves the last
one into the hole. `RowTable` pairs a cache with its rows' owners and applies
that same move to them, so the swap-remove lives in one place.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from arbridge.engine.kv_cache import SlotKVCache

Owner = TypeVar("Owner")


class RowTable(Generic[Owner]):
    def __init__(self, cache: SlotKVCache):
        self.cache = cache
        self._owners: list[Owner] = []

    def add(self, owner: Owner, length: int) -> int:
        """A new last row holding `length` cached tokens (none written yet)."""
        row = self.cache.add_row(length)
        self._owners.append(owner)
        return row

    def remove(self, row: int) -> Owner | None:
        """Free `row`; returns the owner that moved into it (the old last row), if any."""
        moved = self.cache.remove_row(row)
        last = self._owners.pop()
        if moved is None:
            return None
        self._owners[row] = last
        return last

    def row_of(self, owner: Owner) -> int:
        return self._owners.index(owner)

    def __len__(self) -> int:
        return len(self._owners)

    def __iter__(self) -> Iterator[Owner]:
        return iter(self._owners)

    def __contains__(self, owner: object) -> bool:
        return owner in self._owners
