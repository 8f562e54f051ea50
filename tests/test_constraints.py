"""Scene-constrained decoding and no-repeat n-grams, inside the batched engine."""

from __future__ import annotations

import asyncio

import pytest

from arbridge.engine.constraints import BannedWords, repeated_ngram_tokens
from arbridge.engine.sampling import SamplingConfig
from arbridge.models.loader import load_model
from arbridge.serving.scene_constraint import SceneConstraint
from arbridge.v1 import types_pb2 as pb

from test_batching import Engine


def test_banned_words_table():
    banned = BannedWords.of([(5,), (7, 8), (7, 9, 10)], penalty=float("inf"))
    assert banned.next_banned([]) == {5}
    assert banned.next_banned([1, 7]) == {5, 8}
    assert banned.next_banned([7, 9]) == {5, 10}
    assert banned.next_banned([9]) == {5}  # 9 alone is no prefix


def test_repeated_ngram_tokens():
    assert repeated_ngram_tokens([1, 2, 3, 1, 2], 3) == {3}
    assert repeated_ngram_tokens([1, 2, 3, 1, 2], 4) == set()
    assert repeated_ngram_tokens([4, 4, 4], 2) == {4}
    assert repeated_ngram_tokens([1, 2], 1) == set()


@pytest.fixture(scope="module")
def loaded(tiny_model_dir, tmp_path_factory):
    lm = load_model(str(tiny_model_dir), cache_dir=tmp_path_factory.mktemp("cache"))
    lm.fused_decoder = True
    return lm


async def _tokens(engine: Engine, prompt: str, cfg: SamplingConfig) -> list[int]:
    return (await engine.run(prompt, cfg))[0]


async def test_a_banned_word_never_appears_and_nothing_else_changes(loaded):
    plain = SamplingConfig(max_new_tokens=24, ignore_eos=True)
    with Engine(loaded) as engine:
        free = await _tokens(engine, "The red chair", plain)
        # Ban a one-token word the free run used, and a two-token one it used later.
        one = free[3]
        first = next(i for i in range(6, len(free) - 1) if free[i] != one)
        two = (free[first], free[first + 1])
        banned = BannedWords.of([(one,), two], penalty=float("inf"))
        cfg = SamplingConfig(max_new_tokens=24, ignore_eos=True, banned=banned)
        # A batch-mate without constraints runs beside the constrained request.
        constrained, mate = await asyncio.gather(
            _tokens(engine, "The red chair", cfg), _tokens(engine, "The red chair", plain))
    assert mate == free  # batch-mates are unaffected
    assert one not in constrained
    assert all((a, b) != two for a, b in zip(constrained, constrained[1:], strict=False))
    # Greedy output is unchanged up to the first banned token.
    assert constrained[:3] == free[:3] and constrained[3] != one


async def test_no_repeat_ngram_stops_a_loop(loaded):
    with Engine(loaded) as engine:
        free = await _tokens(engine, "lamp lamp lamp", SamplingConfig(max_new_tokens=40,
                                                                      ignore_eos=True))
        cfg = SamplingConfig(max_new_tokens=40, ignore_eos=True, no_repeat_ngram=3)
        capped = await _tokens(engine, "lamp lamp lamp", cfg)
    grams = [tuple(free[i:i + 3]) for i in range(len(free) - 2)]
    assert len(set(grams)) < len(grams)  # the free run repeats itself (a random model loops)
    grams = [tuple(capped[i:i + 3]) for i in range(len(capped) - 2)]
    assert len(set(grams)) == len(grams)


def test_scene_constraint_bans_only_absent_objects(loaded):
    constraint = SceneConstraint(loaded.tokenizer)
    scene = pb.SceneFeatures(objects=[pb.SceneObject(label="sofa"),
                                      pb.SceneObject(label="coffee table")])
    banned = constraint.banned(scene, penalty=float("inf"))
    tok = loaded.tokenizer

    def is_banned(word: str) -> bool:
        ids = tok(word, add_special_tokens=False).input_ids
        return ids[-1] in banned.next_banned(ids[:-1])

    for word in (" television", " Television", " dogs", "lamp"):
        assert is_banned(word), word
    for word in (" sofa", " couch", " tables", " coffee table"):
        assert not is_banned(word), word
    cfg = constraint.apply(SamplingConfig(), scene, caption=True)
    assert cfg.banned is not None and cfg.no_repeat_ngram == 4
    off = constraint.apply(SamplingConfig(scene_constraint=0.0), scene, caption=True)
    assert off.banned is None
    dialogue = constraint.apply(SamplingConfig(), scene, caption=False)
    assert dialogue.banned is None and dialogue.no_repeat_ngram == 0
