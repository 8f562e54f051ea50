"""Every sequence's keys and values, in fixed-size blocks from one budget.

The pool is one tensor per layer, [blocks, kv_heads, block_tokens, head_dim] for
keys and the same for values, sized once from a byte budget (`kv_cache_mb`). A
sequence holds a list of block ids (its block table): token p lives in block
`table[p // block_tokens]` at offset `p % block_tokens`. So memory depends on how
many tokens are cached now, not on how long the longest prompt ever was, and a
finished sequence's blocks are free for the next one at once.

Blocks are reference counted: the prompt of a request with several returned
sequences, and prefixes kept by the prefix cache, are blocks that several
sequences hold. A shared block is never written: a sequence about to write into
one gets its own copy first (copy on write, `PagedKVCache.writable`).

Block 0 is never handed out: short rows of a batch pad their tables with it, and
padding positions write their throw-away keys there. Free blocks go out lowest
id first, and the tensor comes from `torch.empty`: on a CPU the pages of blocks
never used are never touched, so the process grows only as far as the busiest
moment needed, inside the budget.

Decode attention (one new token per row) reads the blocks where they lie, through
the compiled kernel of `paged_attention.py`: within a block a head's tokens are
contiguous, so each (row, head) reads one run per block. Prompt chunks, and decode
where the kernel is not available, gather a batch's blocks into one [rows,
kv_heads, tokens, head_dim] tensor per layer (a copy) for SDPA or the model's own
attention. The candidates measured are in the README.
"""

from __future__ import annotations

import heapq

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

# Without a setting: on a CPU the pool takes at most this, or a quarter of the memory
# available at start, whichever is less (about 33,000 SmolLM2 tokens in float32).
CPU_DEFAULT_BYTES = 1536 << 20
# On a GPU: this share of the memory free once the weights are loaded.
GPU_DEFAULT_SHARE = 0.6
# Passes reading at most this many tokens a row attend in the paged kernel (a decode
# step: the last token and a draft to verify); longer ones gather blocks for SDPA.
DECODE_QUERIES = 17


def default_budget_bytes(device) -> int:
    """The pool's size when `kv_cache_mb` is 0 (auto)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * GPU_DEFAULT_SHARE)
    available = CPU_DEFAULT_BYTES * 4
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) << 10
    except OSError:
        pass
    return min(CPU_DEFAULT_BYTES, available // 4)


class KVPool:
    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, block_tokens: int,
                 num_blocks: int, dtype: torch.dtype, device):
        if num_blocks < 2:
            raise ValueError(f"a KV pool needs at least 2 blocks, got {num_blocks}")
        self.num_layers, self.kv_heads, self.head_dim = num_layers, kv_heads, head_dim
        self.block_tokens, self.num_blocks = block_tokens, num_blocks
        self.dtype, self.device = dtype, torch.device(device)
        # One allocation for keys and values of every layer: on a CPU it is far above
        # malloc's mmap threshold, so untouched blocks cost no resident memory.
        self.data = torch.empty((num_layers, 2, num_blocks, kv_heads, block_tokens, head_dim),
                                dtype=dtype, device=self.device)
        # Each layer's (keys, values) views, made once: the decode kernels take them
        # every layer of every step (three selects each time otherwise).
        self.layer_stores = [(self.data[i, 0], self.data[i, 1]) for i in range(num_layers)]
        self.refs = [0] * num_blocks
        self._free = list(range(1, num_blocks))  # a heap: lowest id first
        # Blocks below this id have been zeroed once (no NaN garbage), block 0 too.
        # Not here: this may run on another thread than the scheduler's, and a
        # kernel run there starts a second OpenMP team that slows every step after
        # (measured: decode at batch 1 from 33 to 42 ms per token on 2 cores).
        self._zeroed = 0

    @staticmethod
    def bytes_per_block(num_layers: int, kv_heads: int, head_dim: int, block_tokens: int,
                        dtype: torch.dtype) -> int:
        return (num_layers * 2 * block_tokens * kv_heads * head_dim
                * torch.empty((), dtype=dtype).element_size())

    @property
    def block_bytes(self) -> int:
        return self.bytes_per_block(self.num_layers, self.kv_heads, self.head_dim,
                                    self.block_tokens, self.dtype)

    @property
    def usable(self) -> int:
        """Blocks a sequence can ever hold (all but the padding block)."""
        return self.num_blocks - 1

    @property
    def free(self) -> int:
        return len(self._free)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_tokens)

    # -- references -------------------------------------------------------------------
    def allocate(self, count: int) -> list[int]:
        if count > len(self._free):
            raise MemoryError(f"KV pool: {count} blocks wanted, {len(self._free)} free")
        blocks = [heapq.heappop(self._free) for _ in range(count)]
        if not self._zeroed:
            self.data[:, :, 0].zero_()
            self._zeroed = 1
        for block in blocks:
            self.refs[block] = 1
            if block >= self._zeroed:
                # First use: memory from the allocator may hold anything, and a NaN
                # there would survive the attention mask (NaN * 0 is NaN).
                self.data[:, :, block].zero_()
        self._zeroed = max(self._zeroed, max(blocks, default=0) + 1)
        return blocks

    def share(self, blocks: list[int]) -> None:
        for block in blocks:
            self.refs[block] += 1

    def release(self, blocks: list[int]) -> None:
        for block in blocks:
            self.refs[block] -= 1
            if self.refs[block] == 0:
                heapq.heappush(self._free, block)
            elif self.refs[block] < 0:
                raise RuntimeError(f"KV block {block} released more often than held")

    def copy_block(self, src: int, dst: int) -> None:
        self.data[:, :, dst] = self.data[:, :, src]

    def reset(self) -> None:
        """Every block free (after a failed step: nobody holds anything any more)."""
        self.refs = [0] * self.num_blocks
        self._free = list(range(1, self.num_blocks))

    # -- copies in and out (tools and tests) ------------------------------------------
    def read(self, blocks: list[int], length: int) -> torch.Tensor:
        """Positions 0..length-1 of a table as [layers, 2, kv_heads, length, head_dim]."""
        ids = torch.tensor(blocks, device=self.device)
        gathered = self.data.index_select(2, ids).transpose(2, 3)  # [.., kv_heads, blocks, ..]
        return gathered.flatten(3, 4)[:, :, :, :length]


class _PagedLayer(CacheLayerMixin):
    is_sliding = False
    is_compileable = False

    def __init__(self, owner: PagedKVCache, index: int):
        super().__init__()
        self.owner, self.index = owner, index
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:
        pass

    def update(self, key_states, value_states, *args, **kwargs):
        return self.owner.write_and_read(self.index, key_states, value_states)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.read_length, 0

    def get_seq_length(self) -> int:
        return self.owner.read_length

    def get_max_length(self) -> int:
        return -1


class PagedKVCache(Cache):
    """One forward pass's view of the pool, in transformers' Cache API: attention
    layers call `update(key, value, layer)` with the new tokens' keys and values
    and get back every key and value their rows attend over; the fused decoder
    calls `decode_attention` for one new token per row instead."""

    def __init__(self, pool: KVPool, kernel=None):
        self.pool = pool
        self.kernel = kernel  # paged_attention's module, or None
        super().__init__(layers=[_PagedLayer(self, i) for i in range(pool.num_layers)])
        self.blocks: torch.Tensor | None = None  # [rows * q] block of each new token
        self.offsets: torch.Tensor | None = None  # [rows * q] its place in the block
        self.tables: torch.Tensor | None = None  # [rows, blocks read]
        self.lengths: torch.Tensor | None = None  # [rows * q] positions each query reads
        self.rows = 0
        self.read_length = 0

    def prepare(self, tables: list[list[int]], starts: list[int], q_len: int,
                read_length: int) -> None:
        """Rows with block tables `tables` write q_len tokens from `starts` and read
        positions 0..read_length-1."""
        pool, bs = self.pool, self.pool.block_tokens
        width = max(pool.blocks_for(max(s + q_len for s in starts)), pool.blocks_for(read_length))
        # Rows short of blocks (padding past their chunk) point at block 0.
        padded = [table[:width] + [0] * (width - len(table)) for table in tables]
        device = pool.device
        table_t = torch.tensor(padded, device=device)
        starts_t = torch.tensor(starts, device=device)
        positions = starts_t[:, None] + torch.arange(q_len, device=device)[None, :]
        self.blocks = table_t.gather(1, positions // bs).flatten()
        self.offsets = (positions % bs).flatten()
        self.rows, self.read_length = len(tables), read_length
        self.tables = table_t[:, :pool.blocks_for(read_length)].contiguous()
        self.lengths = None
        if q_len <= DECODE_QUERIES:
            # Each query of a row reads the positions up to its own (a draft being
            # verified is causal): one kernel row per (row, query).
            self.lengths = (positions.flatten() + 1).clamp_(max=read_length)
            if q_len > 1:
                self.tables = self.tables.repeat_interleave(q_len, 0)

    def _write(self, layer: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pool = self.pool
        if self.kernel is not None and key_states.dtype == pool.dtype \
                and key_states.device.type == "cpu":
            # One call for both, reading the states where they lie.
            self.kernel.write_kv(*pool.layer_stores[layer], key_states, value_states,
                                 self.blocks, self.offsets)
            return
        for which, states in ((0, key_states), (1, value_states)):
            store = pool.data[layer, which]  # [blocks, kv_heads, block_tokens, head_dim]
            # [rows, heads, q, dim] -> one [heads, dim] per new token.
            store[self.blocks, :, self.offsets] = states.transpose(1, 2).reshape(
                -1, pool.kv_heads, pool.head_dim).to(store.dtype)

    def write_and_read(self, layer: int, key_states: torch.Tensor,
                       value_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool = self.pool
        self._write(layer, key_states, value_states)
        out = []
        for which in (0, 1):
            read = pool.data[layer, which].index_select(0, self.tables.flatten())
            read = read.view(self.rows, -1, pool.kv_heads, pool.block_tokens, pool.head_dim)
            read = read.transpose(1, 2).flatten(2, 3)  # [rows, heads, tokens, dim]: a copy
            out.append(read[:, :, :self.read_length])
        return out[0], out[1]

    def can_attend_decode(self, query: torch.Tensor) -> bool:
        """True when `decode_attention` runs this pass: at most DECODE_QUERIES new
        tokens per row, float32 or bfloat16 on the CPU, the kernel built."""
        return self.kernel is not None and self.lengths is not None and \
            query.dtype == self.pool.dtype and query.device.type == "cpu" and \
            query.dtype in (torch.float32, torch.bfloat16)

    def decode_attention(self, layer: int, query: torch.Tensor, key_states: torch.Tensor,
                         value_states: torch.Tensor, scale: float) -> torch.Tensor:
        """Write the new keys and values, then attend from the pool's blocks:
        query [rows, heads, q, dim] -> [rows, heads, q, dim] (q: the last token and
        its draft, at most DECODE_QUERIES)."""
        self._write(layer, key_states, value_states)
        rows, heads, q_len, dim = query.shape
        flat = query.transpose(1, 2).reshape(rows * q_len, heads, dim).contiguous()
        out = self.kernel.paged_decode_attention(flat, *self.pool.layer_stores[layer],
                                                 self.tables, self.lengths, scale)
        return out.view(rows, q_len, heads, dim).transpose(1, 2)

    def rotary_decode_attention(self, layer: int, fused: torch.Tensor, cos: torch.Tensor,
                                sin: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
        """`decode_attention` from a layer's fused q/k/v projection [rows, q, heads +
        2 kv_heads, dim], rotary included (cos and sin [rows, q, 1, dim], as the fused
        decoder builds them), in one kernel call -> [rows, q, heads * dim]."""
        return self.kernel.rotary_decode_attention(fused, cos, sin,
                                                   *self.pool.layer_stores[layer],
                                                   self.blocks, self.offsets, self.tables,
                                                   self.lengths, heads, scale)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.read_length
