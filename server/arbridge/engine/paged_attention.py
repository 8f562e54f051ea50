"""ArBridge's decode attention over KV pool blocks, compiled for this CPU.

Attention reading a batch's blocks through `index_select` copies every key and
value it reads (measured: 2-3x dense rows per layer at 32 rows). The kernel in
`csrc/paged_attention.h` reads them where they lie instead, one query per row,
one task per (row, KV head, run of 128 tokens in float32), as fast as SDPA over
dense rows (`arbridge attention-bench`); from the fused decoder it also applies
rotary and writes the new keys and values, in the same call. It is built with the
machine's own compiler and flags, in one module with the other kernels
(`native_kernels.py`). float32 and bfloat16 (in bfloat16 it rounds where SDPA's CPU kernel does).
Without a compiler, or on GPUs and for other dtypes, decode attention gathers the
blocks and calls SDPA.
"""

from __future__ import annotations

from pathlib import Path

from arbridge.engine import native_kernels


def load(cache_dir: Path | None = None):
    """The compiled kernel module, or None (with the reason logged)."""
    return native_kernels.load("decode attention gathers KV blocks instead", cache_dir)
