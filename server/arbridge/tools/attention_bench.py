"""Decode attention over KV blocks: the candidates, timed on this machine.

`arbridge attention-bench` times one layer's decode attention (one query per row,
SmolLM2's 9 query heads over 3 KV heads of 64) for batches and context lengths a
server meets, reading keys and values:

- dense: from per-row buffers [rows, heads, capacity, dim] (the layout before the
  KV pool: no copy, but memory for every row at the longest length);
- gather: from pool blocks [blocks, heads, block_tokens, dim] through block tables,
  `index_select` into a contiguous batch (a copy), then the same SDPA: what runs
  for prompt chunks, and for decode without the kernel;
- kernel: `engine/csrc/paged_attention.cpp` reading the blocks where they lie
  (what the engine runs for decode), at 16 and 64 tokens a block.

Block tables are shuffled, as a busy pool's are. Not a test: it prints
milliseconds per layer and the ratio to dense.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

HEADS, KV_HEADS, DIM = 9, 3, 64
CASES = ((1, 512), (1, 4096), (8, 512), (32, 512), (16, 2048))


def _time(fn, reps: int = 30) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - started) / reps * 1e3


def _attend(query, keys, values, mask):
    return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, enable_gqa=True)


def _case(rows: int, length: int, block_sizes, kernel) -> dict:
    query = torch.randn(rows, HEADS, 1, DIM)
    mask = torch.ones(rows, 1, 1, length, dtype=torch.bool)
    dense = torch.randn(2, max(rows, 16), KV_HEADS, length + 256, DIM)
    result = {"rows": rows, "tokens": length, "dense": _time(lambda: _attend(
        query, dense[0, :rows, :, :length], dense[1, :rows, :, :length], mask))}
    for bs in block_sizes:
        per_row = -(-length // bs)
        pool = torch.randn(2, rows * per_row + 8, KV_HEADS, bs, DIM)
        tables = (torch.randperm(rows * per_row + 7)[:rows * per_row] + 1).view(rows, per_row)

        def gathered(i, pool=pool, tables=tables, per_row=per_row, bs=bs):
            read = pool[i].index_select(0, tables.flatten()).view(rows, per_row, KV_HEADS, bs,
                                                                  DIM)
            return read.transpose(1, 2).flatten(2, 3)[:, :, :length]

        result[f"gather/{bs}"] = _time(lambda g=gathered: _attend(query, g(0), g(1), mask))
        if kernel is not None:
            lengths = torch.full((rows,), length, dtype=torch.long)
            flat_query = query[:, :, 0].contiguous()
            result[f"kernel/{bs}"] = _time(
                lambda pool=pool, tables=tables, q=flat_query, n=lengths:
                kernel.paged_decode_attention(q, pool[0], pool[1], tables.contiguous(), n,
                                              DIM ** -0.5))
    return result


def run_attention_bench(block_sizes=(16, 64)) -> list[dict]:
    from arbridge.engine import paged_attention

    kernel = paged_attention.load()
    torch.manual_seed(0)
    with torch.inference_mode():
        return [_case(rows, length, block_sizes, kernel) for rows, length in CASES]


def format_report(results: list[dict]) -> str:
    lines = ["decode attention, one layer, float32, ms (ratio to dense)"]
    for r in results:
        cells = [f"{name} {ms:.2f} ({ms / r['dense']:.2f}x)"
                 for name, ms in r.items() if name not in ("rows", "tokens", "dense")]
        lines.append(f"  {r['rows']:>2} rows x {r['tokens']:>4} tokens: dense {r['dense']:.2f}; "
                     + ", ".join(cells))
    return "\n".join(lines)
