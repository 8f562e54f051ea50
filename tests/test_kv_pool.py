"""The KV pool: blocks from one budget, reference counted, and attention through
scattered block tables equal to the model's own forward over the whole text."""

from __future__ import annotations

import pytest
import torch
from test_fused_decoder import tiny_llama

from arbridge.engine.kv_pool import KVPool
from arbridge.engine.runner import ModelRunner


def new_pool(blocks: int = 8) -> KVPool:
    return KVPool(num_layers=2, kv_heads=1, head_dim=2, block_tokens=4, num_blocks=blocks,
                  dtype=torch.float32, device="cpu")


def test_blocks_go_out_lowest_first_and_come_back_when_nobody_holds_them():
    pool = new_pool()
    assert pool.usable == 7 and pool.allocate(3) == [1, 2, 3]  # block 0 pads short rows
    pool.share([2])
    pool.release([1, 2, 3])
    assert pool.free == 6 and pool.refs[2] == 1  # 2 is still held once
    assert pool.allocate(2) == [1, 3]
    with pytest.raises(MemoryError, match="5 blocks wanted, 4 free"):
        pool.allocate(5)
    pool.release([2])
    with pytest.raises(RuntimeError, match="released more often than held"):
        pool.release([2])


def test_a_block_is_zeroed_on_first_use_whatever_the_allocator_left_there():
    pool = new_pool()
    pool.data.fill_(float("nan"))  # as an allocator's recycled memory might be
    (block,) = pool.allocate(1)
    assert not pool.data[:, :, block].isnan().any()
    pool.data[:, :, block] = 7.0
    pool.release([block])
    assert pool.allocate(1) == [block]  # reused: its old (finite) contents are masked


@pytest.mark.parametrize("fused, kernel", [(True, True), (True, False), (False, False)])
def test_attention_through_scattered_tables_equals_the_whole_text_at_once(fused, kernel):
    """Two rows prefilled in ragged chunks and decoded through block tables that are
    out of order and interleaved: the logits equal the model's own forward, no cache,
    whether decode attention runs in the paged kernel or on gathered blocks."""
    model = tiny_llama()
    runner = ModelRunner(model, context_length=64, fused=fused, attention_kernel=kernel)
    with torch.inference_mode():
        runner.prepare()
        # The kernel builds wherever `make setup` ran (g++ and ninja are among its
        # Debian packages): a silent fallback here would hide a broken build.
        assert (runner.attention_kernel is not None) == kernel
        pool = runner.new_pool(1 << 20, block_tokens=4)
        blocks = pool.allocate(10)
        tables = [blocks[0::2][::-1], blocks[1::2]]
        torch.manual_seed(0)
        texts = [torch.randint(0, 97, (17,)), torch.randint(0, 97, (13,))]
        got = [[], []]
        done = [0, 0]
        for width in (6, 9):  # two prefill passes, then single-token steps
            chunks = [t[d:d + width] for t, d in zip(texts, done, strict=True)]
            ids = torch.zeros(2, width, dtype=torch.long)
            for i, chunk in enumerate(chunks):
                ids[i, :len(chunk)] = chunk
            logits = runner.forward(pool, tables, ids, list(done), keep=width)
            for i, chunk in enumerate(chunks):
                got[i] += list(logits[i, :len(chunk)])
                done[i] += len(chunk)
        while done[0] < 17:
            ids = torch.stack([texts[0][done[0]], texts[1][min(done[1], 12)]])[:, None]
            logits = runner.forward(pool, tables, ids, [done[0], min(done[1], 12)])
            got[0].append(logits[0, -1])
            done[0] += 1
        for i, text in enumerate(texts):
            expected = model(text[None]).logits[0]
            torch.testing.assert_close(torch.stack(got[i][:len(text)]), expected,
                                       rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("length", [1, 37, 300])
def test_the_bfloat16_kernel_rounds_where_sdpa_does(length):
    """bfloat16 decode attention in the paged kernel against SDPA's own CPU kernel on
    the same keys and values gathered densely: the same roundings, so most outputs are
    the same bfloat16 number (the sums run in another order; rounding the normalised
    weights instead, as float32 does, matches 6 in 10) and none is more than a step away."""
    from arbridge.engine import paged_attention

    kernel = paged_attention.load()
    assert kernel is not None
    g = torch.Generator().manual_seed(length)
    rows, heads, kv_heads, dim, block = 3, 9, 3, 64, 16
    per_row = -(-length // block)
    keys, values = (torch.randn(rows * per_row + 2, kv_heads, block, dim, generator=g)
                    .to(torch.bfloat16) for _ in range(2))
    tables = (torch.randperm(rows * per_row, generator=g) + 2).view(rows, per_row)
    query = torch.randn(rows, heads, dim, generator=g).to(torch.bfloat16)
    lengths = torch.full((rows,), length, dtype=torch.long)
    got = kernel.paged_decode_attention(query, keys, values, tables, lengths, dim ** -0.5)

    def dense(store):  # [rows, kv_heads, length, dim]
        return store[tables].transpose(1, 2).flatten(2, 3)[:, :, :length]

    expected = torch.nn.functional.scaled_dot_product_attention(
        query[:, :, None], dense(keys), dense(values), enable_gqa=True)[:, :, 0]
    assert got.dtype == torch.bfloat16
    same = (got == expected).float().mean().item()
    assert same > 0.75, same
    torch.testing.assert_close(got.float(), expected.float(), rtol=1 / 64, atol=1 / 256)


def test_the_float32_kernel_merges_its_token_chunks_into_sdpas_numbers():
    """In float32 the kernel splits each row's keys into runs of 128 tokens read in
    parallel and merges their softmaxes; rows of different lengths (one shorter than a
    run, one of several runs and a part) must still give what SDPA gives each alone."""
    from arbridge.engine import paged_attention

    kernel = paged_attention.load()
    assert kernel is not None
    g = torch.Generator().manual_seed(7)
    heads, kv_heads, dim, block = 9, 3, 64, 16
    lengths = [1, 100, 129, 300]
    per_row = -(-max(lengths) // block)
    rows = len(lengths)
    keys, values = (torch.randn(rows * per_row + 1, kv_heads, block, dim, generator=g)
                    for _ in range(2))
    tables = (torch.randperm(rows * per_row, generator=g) + 1).view(rows, per_row)
    query = torch.randn(rows, heads, dim, generator=g)
    got = kernel.paged_decode_attention(query, keys, values, tables, torch.tensor(lengths),
                                        dim ** -0.5)
    for row, length in enumerate(lengths):
        def dense(store, row=row, length=length):  # [1, kv_heads, length, dim]
            return store[tables[row]].transpose(0, 1).flatten(1, 2)[None, :, :length]

        expected = torch.nn.functional.scaled_dot_product_attention(
            query[row, :, None][None], dense(keys), dense(values), enable_gqa=True)[0, :, 0]
        torch.testing.assert_close(got[row], expected, rtol=1e-5, atol=1e-5)
