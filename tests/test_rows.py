"""RowTable: owners follow the cache's swap-remove."""

from __future__ import annotations

from arbridge.engine.kv_cache import SlotKVCache
from arbridge.engine.rows import RowTable


def test_owners_move_with_their_rows():
    table = RowTable(SlotKVCache(num_layers=1, slots=2, capacity=8))
    for name, length in (("a", 1), ("b", 2), ("c", 3), ("d", 4)):
        table.add(name, length)
    assert table.remove(table.row_of("b")) == "d"  # the last row filled the hole
    assert list(table) == ["a", "d", "c"] and table.cache.lengths == [1, 4, 3]
    assert table.remove(table.row_of("c")) is None  # the last row itself: nothing moves
    assert list(table) == ["a", "d"] and table.cache.lengths == [1, 4]
    assert "c" not in table and len(table) == 2 and list(table)[1] == "d"
