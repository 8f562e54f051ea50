"""A preallocated, slot-based KV cache that many sequences share.

Every sequence being decoded owns one row ("slot") of per-layer key and value
buffers shaped [slots, kv_heads, capacity, head_dim]. A forward pass writes
each row's new keys and values at that row's own positions, so sequences of
different lengths decode together in one batch; the attention mask (built by
the model runner) hides each row's unused tail.

Nothing is copied per step. Copies happen only when a sequence joins (its
prefilled cache moves in), leaves (the last row moves into the hole, so
active rows stay 0..n-1), or a buffer doubles in size (amortised).

The class plugs into transformers through its Cache API: attention layers
call `update(key, value, layer_idx)` and get back the keys and values to
attend over.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class _SlotLayer(CacheLayerMixin):
    is_sliding = False
    is_compileable = False

    def __init__(self, owner: SlotKVCache):
        super().__init__()
        self.owner = owner

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        o = self.owner
        shape = (o.slots, key_states.shape[1], o.capacity, key_states.shape[3])
        self.keys = torch.zeros(shape, dtype=key_states.dtype, device=key_states.device)
        vshape = (o.slots, value_states.shape[1], o.capacity, value_states.shape[3])
        self.values = torch.zeros(vshape, dtype=value_states.dtype, device=value_states.device)
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        o = self.owner
        self._fit(o.slots, o.capacity)
        rows, positions = o.write_rows, o.write_positions  # [B, q] each
        # Advanced indices around a slice: the indexed view is [B, q, heads, dim].
        self.keys[rows, :, positions] = key_states.transpose(1, 2).to(self.keys.dtype)
        self.values[rows, :, positions] = value_states.transpose(1, 2).to(self.values.dtype)
        first, count, kv = o.read_first, o.read_rows, o.read_length
        return (self.keys[first:first + count, :, :kv],
                self.values[first:first + count, :, :kv])

    def _fit(self, slots: int, capacity: int) -> None:
        s, h, c, d = self.keys.shape
        if s >= slots and c >= capacity:
            return
        keys = self.keys.new_zeros((max(s, slots), h, max(c, capacity), d))
        values = self.values.new_zeros((max(s, slots), self.values.shape[1], max(c, capacity),
                                        self.values.shape[3]))
        keys[:s, :, :c] = self.keys
        values[:s, :, :c] = self.values
        self.keys, self.values = keys, values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.read_length, 0

    def get_seq_length(self) -> int:
        return self.owner.read_length

    def get_max_length(self) -> int:
        return -1


class SlotKVCache(Cache):
    def __init__(self, num_layers: int, slots: int = 4, capacity: int = 256,
                 max_capacity: int = 1 << 20):
        self.slots = slots
        self.capacity = capacity
        self.max_capacity = max_capacity
        super().__init__(layers=[_SlotLayer(self) for _ in range(num_layers)])
        self.lengths: list[int] = []  # cached tokens per active row
        self.write_rows = self.write_positions = None
        self.read_first = self.read_rows = self.read_length = 0

    @property
    def rows(self) -> int:
        return len(self.lengths)

    # -- growth ---------------------------------------------------------------------
    def reserve(self, rows: int, length: int) -> None:
        """Make room for `rows` rows of up to `length` tokens (doubling)."""
        while self.slots < rows:
            self.slots *= 2
        if length > self.max_capacity:
            raise ValueError(f"sequence of {length} tokens exceeds the cache limit "
                             f"{self.max_capacity}")
        while self.capacity < length:
            self.capacity = min(self.capacity * 2, self.max_capacity)

    # -- one forward pass -------------------------------------------------------------
    def prepare(self, first: int, count: int, starts: torch.Tensor, q_len: int,
                read_length: int) -> None:
        """Rows first..first+count-1 write q_len tokens from their `starts`."""
        device = starts.device
        offsets = torch.arange(q_len, device=device)
        # Padding past the window (ragged prefill) is parked on the last slot.
        self.write_positions = (starts[:, None] + offsets[None, :]).clamp_(
            max=self.max_capacity - 1)
        self.write_rows = torch.arange(first, first + count, device=device)[:, None].expand(
            count, q_len)
        self.read_first, self.read_rows = first, count
        self.read_length = min(read_length, self.max_capacity)
        self.reserve(first + count, self.read_length)

    # -- moving rows ------------------------------------------------------------------
    def add_row(self, length: int) -> int:
        self.lengths.append(length)
        self.reserve(len(self.lengths), length + 1)
        return len(self.lengths) - 1

    def copy_row_from(self, other: SlotKVCache, src: int, dst: int, length: int) -> None:
        for mine, theirs in zip(self.layers, other.layers, strict=True):
            if not theirs.is_initialized:
                continue
            if not mine.is_initialized:
                mine.lazy_initialization(theirs.keys[:1], theirs.values[:1])
            mine._fit(self.slots, self.capacity)
            mine.keys[dst, :, :length] = theirs.keys[src, :, :length]
            mine.values[dst, :, :length] = theirs.values[src, :, :length]

    def write_row(self, row: int, kv: torch.Tensor) -> None:
        """Fill positions 0..n-1 of `row` from kv [layers, 2, kv_heads, n, head_dim]."""
        length = kv.shape[3]
        self.reserve(self.rows, length + 1)
        for layer, (keys, values) in zip(self.layers, kv, strict=True):
            if not layer.is_initialized:
                layer.lazy_initialization(keys[None], values[None])
            layer._fit(self.slots, self.capacity)
            layer.keys[row, :, :length] = keys
            layer.values[row, :, :length] = values

    def read_row(self, row: int, start: int, end: int) -> torch.Tensor:
        """Positions start..end-1 of `row` as [layers, 2, kv_heads, n, head_dim]."""
        return torch.stack([torch.stack((layer.keys[row, :, start:end],
                                         layer.values[row, :, start:end]))
                            for layer in self.layers])

    def remove_row(self, row: int) -> int | None:
        """Drop a row; the last row moves into its place. Returns the moved row's
        old index (now `row`), or None if the removed row was the last."""
        last = len(self.lengths) - 1
        if row != last:
            length = self.lengths[last]
            for layer in self.layers:
                if layer.is_initialized:
                    # Rows added since the last forward pass may lie past the
                    # buffers (they grow lazily): grow them first.
                    layer._fit(self.slots, self.capacity)
                    layer.keys[row, :, :length] = layer.keys[last, :, :length]
                    layer.values[row, :, :length] = layer.values[last, :, :length]
            self.lengths[row] = length
        self.lengths.pop()
        return last if row != last else None
