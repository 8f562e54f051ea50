"""Speculative decoding: drafts verified in the decode pass leave the text unchanged."""

from __future__ import annotations

import asyncio

import pytest
from test_batching import PROMPTS, Engine, loaded, reference_greedy  # noqa: F401

from arbridge.engine.speculation import DraftLength, can_speculate, lookup, propose
from arbridge.generation import SamplingConfig

from tiny_model import slow_down


def test_lookup_proposes_what_followed_the_latest_longest_match():
    context = [5, 6, 7, 1, 2, 9, 5, 6, 7, 3, 4, 8, 5, 6, 7]
    assert lookup(context, 2) == [3, 4]  # the latest "5 6 7", not the first
    assert lookup([1, 2, 3, 9, 2, 3, 4, 1, 2, 3], 3) == [9, 2, 3]  # 3-gram beats 2-gram
    assert lookup([1, 2, 3, 4], 5) == []  # nothing repeats
    assert lookup([7, 8, 7], 4) == [8, 7]  # down to one token
    assert lookup(context, 0) == []


def test_draft_length_grows_when_kept_and_shrinks_when_not():
    length = DraftLength(8)
    assert length.current == 4
    length.update(4, 4)
    assert length.current == 6
    length.update(6, 6)
    length.update(8, 8)
    assert length.current == 8  # never past the limit
    for _ in range(10):
        length.update(length.current, 0)
    assert length.current == 1  # never below one


def test_drafting_stops_where_it_does_not_pay_and_probes_now_and_then():
    # A drafted pass costs twice a plain one here: it pays from one kept token a pass.
    length = DraftLength(8, cost=2.0)
    assert length.worth_it()  # optimistic at first
    for _ in range(5):
        length.update(4, 0)  # nothing kept
    decisions = [length.worth_it() for _ in range(16)]
    assert decisions.count(True) == 2 and decisions[7] and decisions[15]  # the probes
    for _ in range(5):
        length.update(4, 4)  # guesses good again (a probe found them)
    assert length.worth_it()
    cheap = DraftLength(8, cost=1.0)  # on a CPU where reading more positions is free
    for _ in range(5):
        cheap.update(4, 0)
    assert cheap.worth_it()


def test_no_drafts_nor_probes_where_even_one_kept_token_cannot_pay():
    # A CPU whose one-row kernel is far ahead of its few-row one: a pass reading one
    # drafted token costs 2.3 plain ones, eight 4.6 (as int8 weights measure on an EPYC).
    dear = DraftLength(8, cost=4.6, cost_one=2.3)
    assert dear.cost_of(1) == pytest.approx(2.3) and dear.cost_of(8) == pytest.approx(4.6)
    assert not any(dear.worth_it() for _ in range(32))  # not even a probe
    # Where one drafted token is cheap, drafts of the length that pays go on.
    mixed = DraftLength(8, cost=3.0, cost_one=1.2)
    for proposed in (4, 3, 2):
        mixed.update(proposed, 1)  # one kept a pass
    assert mixed.current == 1 and mixed.worth_it()  # 1 + ~1 kept >= 1.2
    mixed.current = 8
    assert not mixed.worth_it()  # 1 + ~1 kept < 3.0: eight drafted tokens do not pay


def test_only_exactly_verifiable_requests_are_drafted_for():
    assert can_speculate(SamplingConfig())
    assert not can_speculate(SamplingConfig(temperature=0.7))
    assert not can_speculate(SamplingConfig(repetition_penalty=1.3))
    assert not can_speculate(SamplingConfig(num_return_sequences=2))
    # A composed reply has one token per position, whatever the temperature.
    assert can_speculate(SamplingConfig(temperature=0.7, forced=(4, 5, 2)))


def test_a_forced_reply_drafts_its_next_known_tokens():
    cfg = SamplingConfig(forced=(10, 11, 12, 13, 2))
    assert propose(cfg, [1, 2], [10], DraftLength(8), room=10, forced_limit=3) == [11, 12, 13]
    assert propose(cfg, [1, 2], [10, 11, 12], DraftLength(8), room=1, forced_limit=3) == [13]
    assert propose(cfg, [1, 2], [10], DraftLength(8), room=0, forced_limit=3) == []


async def test_greedy_text_is_the_same_with_drafts(loaded):  # noqa: F811
    """Every prompt, alone and together, gives the reference greedy text with drafts
    on, and drafts were really read and some kept (the path ran)."""
    cfg = SamplingConfig(max_new_tokens=24)
    with Engine(loaded, speculative_tokens=8) as eng:
        # Draft at every chance, as where it is free.
        eng.scheduler.draft_cost = eng.scheduler.draft_cost_one = 1.0
        alone = [await eng.run(p, cfg) for p in PROMPTS]
        drafted, kept = eng.scheduler.drafted, eng.scheduler.kept
        undo = slow_down(loaded.model, 0.003)
        try:
            together = await asyncio.gather(*(eng.run(p, cfg) for p in PROMPTS[:2]))
        finally:
            undo()
    for prompt, got in zip(PROMPTS, alone, strict=True):
        assert got[0] == reference_greedy(loaded, prompt, 24), prompt
    for prompt, got in zip(PROMPTS[:2], together, strict=True):
        assert got[0] == reference_greedy(loaded, prompt, 24), prompt
    assert drafted > 0 and 0 < kept <= drafted, (drafted, kept)
    # Fewer passes than tokens: kept drafts came out of passes already run.
    assert len(eng.batch_sizes) < len(PROMPTS) * 23 + 2 * 23


async def test_a_forced_reply_comes_out_whole_in_a_few_passes(loaded):  # noqa: F811
    eos = loaded.tokenizer.eos_token_id
    forced = tuple(loaded.tokenizer(" a red chair to the left and a lamp far away").input_ids)
    cfg = SamplingConfig(max_new_tokens=40, forced=(*forced, eos), logprobs=True)
    with Engine(loaded, speculative_tokens=8, speculative_forced_tokens=16) as eng:
        ids = loaded.tokenizer(PROMPTS[0]).input_ids
        tokens, logprobs = [], []
        async for out in eng.engine.submit(ids, cfg):
            tokens += [t for _, t, _ in out.tokens]
            logprobs += [lp for _, _, lp in out.tokens]
        passes = len(eng.batch_sizes)
    assert tokens == list(forced)
    assert all(lp is not None and lp <= 0 for lp in logprobs)  # the model's own numbers
    # The first token comes from the prompt's pass; each decode pass reads 16 known
    # tokens and keeps them and the model's own one after (one a pass without drafts).
    assert passes == -(-len(forced) // 17), passes


async def test_the_reply_limit_is_kept_mid_draft(loaded):  # noqa: F811
    cfg = SamplingConfig(max_new_tokens=5)
    with Engine(loaded, speculative_tokens=8) as eng:
        got = await eng.run(PROMPTS[1], cfg)
    assert got[0] == reference_greedy(loaded, PROMPTS[1], 5)


@pytest.mark.parametrize("rows", [0, 1])
async def test_wide_batches_do_not_draft(loaded, rows):  # noqa: F811
    cfg = SamplingConfig(max_new_tokens=12)
    undo = slow_down(loaded.model, 0.003)
    try:
        with Engine(loaded, speculative_tokens=8, speculative_rows=rows) as eng:
            runs = [eng.run(p, cfg) for p in PROMPTS[:3]]
            got = await asyncio.gather(*runs)
            drafted = eng.scheduler.drafted
    finally:
        undo()
    for prompt, tokens in zip(PROMPTS, got, strict=False):
        assert tokens[0] == reference_greedy(loaded, prompt, 12)
    if rows == 0:
        assert drafted == 0
