"""Decode attention over KV blocks: the candidates, timed on this machine.

`arbridge attention-bench` times one layer's decode attention (one query per row,
SmolLM2's 9 query heads over 3 KV heads of 64) for batches and context lengths a
server meets, reading keys and values:

- dense: from per-row buffers [rows, heads, capacity, dim] (the layout before the
  KV pool: no copy, but memory for every row at the longest length);
- gather: from pool blocks [blocks, block_tokens, heads, dim] through block tables,
  one `index_select` per tensor into a contiguous batch, then the same SDPA
  (what the engine runs), at 16, 64 and 256 tokens a block;
- view: a single row whose blocks are consecutive, read as a view (the engine's
  batch-1 case when its blocks came out in order).

Not a test: it prints milliseconds per layer and the ratio to dense.
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


def _case(rows: int, length: int, block_sizes) -> dict:
    query = torch.randn(rows, HEADS, 1, DIM)
    mask = torch.ones(rows, 1, 1, length, dtype=torch.bool)
    dense = torch.randn(2, max(rows, 16), KV_HEADS, length + 256, DIM)
    result = {"rows": rows, "tokens": length, "dense": _time(lambda: _attend(
        query, dense[0, :rows, :, :length], dense[1, :rows, :, :length], mask))}
    for bs in block_sizes:
        per_row = -(-length // bs)
        pool = torch.randn(2, rows * per_row + 8, bs, KV_HEADS, DIM)
        tables = torch.randperm(rows * per_row + 7)[:rows * per_row] + 1

        def gathered(i, pool=pool, tables=tables):
            return pool[i].index_select(0, tables).view(rows, -1, KV_HEADS, DIM)[
                :, :length].transpose(1, 2)

        result[f"gather/{bs}"] = _time(lambda g=gathered: _attend(query, g(0), g(1), mask))
        if rows == 1:
            def viewed(i, pool=pool, per_row=per_row):
                return pool[i, 1:1 + per_row].view(1, -1, KV_HEADS, DIM)[:, :length].transpose(
                    1, 2)

            result[f"view/{bs}"] = _time(lambda v=viewed: _attend(query, v(0), v(1), mask))
    return result


def run_attention_bench(block_sizes=(16, 64, 256)) -> list[dict]:
    torch.manual_seed(0)
    with torch.inference_mode():
        return [_case(rows, length, block_sizes) for rows, length in CASES]


def format_report(results: list[dict]) -> str:
    lines = ["decode attention, one layer, float32, ms (ratio to dense)"]
    for r in results:
        cells = [f"{name} {ms:.2f} ({ms / r['dense']:.2f}x)"
                 for name, ms in r.items() if name not in ("rows", "tokens", "dense")]
        lines.append(f"  {r['rows']:>2} rows x {r['tokens']:>4} tokens: dense {r['dense']:.2f}; "
                     + ", ".join(cells))
    return "\n".join(lines)
