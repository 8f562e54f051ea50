"""Scene-constrained decoding and no-repeat n-grams, inside the batched engine."""

from __future__ import annotations

import asyncio

import pytest
from test_batching import Engine

from arbridge.engine.constraints import BannedWords, CaptionRules, repeated_ngram_tokens
from arbridge.generation import SamplingConfig
from arbridge.models.loader import load_model
from arbridge.serving.scene_constraint import SceneConstraint
from arbridge.v1 import types_pb2 as pb


def _masked(rules: CaptionRules, generated: list[int]) -> set[int]:
    """Every token the rules mask next (the union of a step's parts; `allowed` aside)."""
    step = rules.step(generated)
    return step.banned.union(*step.static)


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


async def test_a_begun_phrase_is_completed_inside_the_batch(loaded):
    plain = SamplingConfig(max_new_tokens=12, ignore_eos=True)
    with Engine(loaded) as engine:
        free = await _tokens(engine, "The red chair", plain)
        # Make the free run's third token an "article", and (100, 101) the only phrase:
        # 100 is also a banned word, which a scene phrase under way overrides.
        article = free[2]
        phrase = tuple(t for t in (100, 101, 102) if t != article)[:2]
        rules = CaptionRules({phrase[1:]: 0}, (frozenset(),), once=False, no_stutter=False,
                            phrases=(((phrase, False),),), articles=frozenset({article}))
        cfg = SamplingConfig(max_new_tokens=12, ignore_eos=True, caption_rules=rules,
                             banned=BannedWords.of([phrase[:1]], float("inf")))
        constrained, mate = await asyncio.gather(
            _tokens(engine, "The red chair", cfg), _tokens(engine, "The red chair", plain))
    assert mate == free  # batch-mates are unaffected
    assert constrained[:5] == [*free[:3], *phrase]
    assert phrase[0] not in constrained[5:]  # the ban holds again once the phrase is done


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


def _banned_word(tok, banned, word: str) -> bool:
    """Whether the mask keeps `word` out (its last token, after the others)."""
    ids = tok(word, add_special_tokens=False).input_ids
    return ids[-1] in banned.next_banned(ids[:-1])


def test_scene_constraint_bans_only_absent_objects(loaded):
    constraint = SceneConstraint(loaded.tokenizer)
    scene = pb.SceneFeatures(objects=[pb.SceneObject(label="sofa"),
                                      pb.SceneObject(label="coffee table")])
    banned = constraint.banned(scene, penalty=float("inf"))

    def is_banned(word: str) -> bool:
        return _banned_word(loaded.tokenizer, banned, word)

    for word in (" television", " Television", " dogs", "lamp"):
        assert is_banned(word), word
    for word in (" sofa", " couch", " tables", " coffee table"):
        assert not is_banned(word), word
    cfg = constraint.apply(SamplingConfig(), scene, caption=True, asked=None)
    assert cfg.banned is not None and cfg.no_repeat_ngram == 4
    off = constraint.apply(SamplingConfig(), scene, caption=True, asked=0.0)
    assert off.banned is None
    # Dialogue about a scene: the noun mask, but none of the caption-only rules.
    dialogue = constraint.apply(SamplingConfig(), scene, caption=False, asked=None)
    assert dialogue.banned is not None and dialogue.no_repeat_ngram == 0
    assert dialogue.caption_rules is None
    chat = constraint.apply(SamplingConfig(), scene, caption=False, asked=0.0)
    assert chat.banned is None
    assert constraint.apply(SamplingConfig(), None, caption=False, asked=None).banned is None


def test_a_scene_s_own_label_words_stay_sayable(loaded):
    """The field saw "yoga bat" and "The grey bed" for a dog bed: every word of the
    scene's labels may be written, other absent nouns may not."""
    constraint = SceneConstraint(loaded.tokenizer)
    scene = pb.SceneFeatures(objects=[pb.SceneObject(label="dog bed"),
                                      pb.SceneObject(label="e-scooter")])
    banned = constraint.banned(scene, penalty=float("inf"))

    def is_banned(word: str) -> bool:
        return _banned_word(loaded.tokenizer, banned, word)

    for word in (" dog", " bed", " scooter", " dogs"):
        assert not is_banned(word), word
    for word in (" cat", " car", " sofa"):
        assert is_banned(word), word


def test_caption_rules_mask_false_places_and_early_ends():
    # Object 0 is named by (1,) or (2, 3); object 1 by (4,). After naming object 0 the
    # token 10 ("right", false for it) is masked for `window` tokens; 99 (a sentence end)
    # until both are named; 7 (a digit) always.
    names = {(1,): 0, (2, 3): 0, (4,): 1}
    wrong = (frozenset({10}), frozenset({11}))
    rules = CaptionRules(names, wrong, until_all=frozenset({99}), never=frozenset({7}),
                        window=2, once=False, no_stutter=False)
    assert _masked(rules, []) == {99, 7}
    assert _masked(rules, [5, 2, 3]) == {10, 99, 7}
    assert _masked(rules, [2, 3, 5, 5]) == {99, 7}  # the mention is out of the window
    assert _masked(rules, [1, 4]) == {11, 7}  # the latest mention decides; all named
    # `once`: object 0, named, may not be named again (in either of its forms).
    once = CaptionRules(names, wrong, window=2, no_stutter=False)
    assert _masked(once, [1, 5, 5]) == {1}
    assert _masked(once, [1, 5, 2]) == {1, 3}
    # No stutter: the last token may not come again at once, and only at once.
    stutter = CaptionRules(names, wrong, window=2, once=False)
    assert _masked(stutter, [5, 6]) == {6}
    assert 5 not in _masked(stutter, [5, 6])


def test_caption_rules_say_each_place_once_per_mention():
    # 20/21 are directions, 30 a distance: after naming object 0 and saying 20, no
    # direction may follow until the next mention; the distance still may.
    names = {(1,): 0, (4,): 1}
    rules = CaptionRules(names, (frozenset(), frozenset()), once=False, no_stutter=False,
                        once_per_mention=(frozenset({20, 21}), frozenset({30})))
    assert _masked(rules, [1, 5]) == set()
    assert _masked(rules, [1, 20, 5]) == {20, 21}
    assert _masked(rules, [1, 20, 5, 30, 5]) == {20, 21, 30}
    assert _masked(rules, [1, 20, 30, 4, 5]) == set()  # a new mention starts afresh


def test_caption_rules_complete_a_phrase_of_an_unnamed_object():
    # Article 50 ("a") and 51 ("an"). Object 0's phrases: (60, 61, 62) "red wood chair"
    # and (62,) "chair"; object 1's: (70, 71) "open box", vowel-initial.
    names = {(62,): 0, (71,): 1}
    phrases = ((((60, 61, 62), False), ((62,), False)), (((70, 71), True),))
    rules = CaptionRules(names, (frozenset(), frozenset()), once=False, no_stutter=False,
                        phrases=phrases, articles=frozenset({50, 51}),
                        vowel_articles=frozenset({51}))
    assert rules.step([]).allowed is None  # nothing under way
    assert rules.step([50]).allowed == {60, 62}  # "a" -> a consonant phrase
    assert rules.step([51]).allowed == {70}  # "an" -> the vowel one
    assert rules.step([50, 60]).allowed == {61}
    assert rules.step([50, 60, 61, 62]).allowed is None  # complete: free again
    assert rules.step([50, 62, 8, 50]).allowed == {70}  # the chair is named: the box
    assert rules.step([50, 62, 8, 51, 70, 71, 9, 50]).allowed is None  # all named
    assert rules.step([50, 9]).allowed is None  # written without the rule: left alone


def test_caption_rules_let_to_the_go_on_only_with_a_true_side():
    # 1 names object 0 (on the left: 41 "right" is false for it). 40/41/42 are the
    # sides "left"/"right"/"front" (one direction group with 43 "ahead"), 30 a distance;
    # (9, 10) is " to the".
    names = {(1,): 0}
    rules = CaptionRules(names, (frozenset({41, 42}),), once=False, no_stutter=False,
                        once_per_mention=(frozenset({40, 41, 42, 43}), frozenset({30})),
                        place_lead=(9, 10), place_words=frozenset({40, 41, 42}))
    assert rules.step([1, 9, 10]).allowed == {40}  # not "to the far", not "to the right"
    assert rules.step([1, 30, 9, 10]).allowed == {40}  # a distance first changes nothing
    assert rules.step([9, 10]).allowed == {40, 41, 42}  # before any mention: any side
    assert rules.step([1, 9]).allowed is None  # "to" alone is free
    # Once the direction is said ("ahead" too), "to the" may not start again.
    assert 9 in rules.step([1, 40, 8]).banned
    assert 9 in rules.step([1, 43]).banned
    assert 9 not in rules.step([1, 30]).banned
    assert 9 not in rules.step([1, 40, 8, 1]).banned  # a new mention starts afresh


def test_caption_rules_say_no_six_words_twice_punctuation_aside():
    # 7 is a comma: "5 6 2 3 4 , 8" then "5 6 2 3 4" may not go on with 8.
    rules = CaptionRules({}, (), once=False, no_stutter=False, repeat_words=6,
                        punctuation=frozenset({7}))
    said = [5, 6, 2, 3, 4, 7, 8, 11]
    assert 8 in rules.step(said + [5, 6, 2, 3, 4]).banned
    assert 8 in rules.step(said + [5, 6, 7, 2, 3, 4]).banned  # a comma hides nothing
    assert 8 not in rules.step(said + [6, 6, 2, 3, 4]).banned  # five words differ


def test_allowed_tokens_avoid_a_repeat_where_another_is_left():
    from arbridge.engine.sampling import logit_rules
    names = {(1,): 0}
    rules = CaptionRules(names, (frozenset(),), once=False, no_stutter=False,
                        place_lead=(9, 10), place_words=frozenset({40, 41}))
    cfg = SamplingConfig(no_repeat_ngram=3, caption_rules=rules)
    # "to the 40" was said: after "to the" again, 41 is left; where 41 is the only
    # side allowed, the repeat is the lesser harm and stays allowed.
    out = logit_rules([(cfg, 0, [1, 9, 10, 40, 1, 9, 10])], "cpu", 64)
    assert out.allow[2].tolist() == [41]
    only_40 = CaptionRules(names, (frozenset({41}),), once=False, no_stutter=False,
                          place_lead=(9, 10), place_words=frozenset({40, 41}))
    out = logit_rules([(SamplingConfig(no_repeat_ngram=3, caption_rules=only_40), 0,
                         [1, 9, 10, 40, 1, 9, 10])], "cpu", 64)
    assert out.allow[2].tolist() == [40]


def test_caption_rules_follow_the_geometry(loaded):
    constraint = SceneConstraint(loaded.tokenizer)
    tok = loaded.tokenizer
    scene = pb.SceneFeatures(camera_pose=pb.Pose(rotation=pb.Quaternion(w=1.0)), objects=[
        pb.SceneObject(label="lamp", pose=pb.Pose(position=pb.Vec3(x=-2.0, z=1.0)))])
    rules = constraint.caption_rules(scene)
    after_lamp = _masked(rules, tok(" lamp", add_special_tokens=False).input_ids)
    for word in (" right", " ahead", " behind"):
        ids = tok(word, add_special_tokens=False).input_ids
        if len(ids) == 1:  # the tiny tokenizer splits some words; SmolLM2's does not
            assert ids[0] in after_lamp, word
    left = tok(" left", add_special_tokens=False).input_ids
    assert len(left) > 1 or left[0] not in after_lamp
    assert tok.eos_token_id in _masked(rules, [])  # the lamp is not named yet
