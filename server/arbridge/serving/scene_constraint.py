"""Scene-constrained decoding: the reply may not name an object the scene lacks.

The lexicon's object nouns (serving/lexicon.py) are tokenized once per model, in
every form a reply could write them (" sofa", "sofa", " Sofa", "Sofa", plurals,
synonyms). For a request with a scene, the forms that name none of the scene's
objects become `BannedWords`, which the engine keeps out of the logits of that
request's rows only (engine/constraints.py).
"""

from __future__ import annotations

import re
from dataclasses import replace

from arbridge.engine.constraints import BannedWords, CaptionRules
from arbridge.generation import SamplingConfig
from arbridge.serving.lexicon import all_object_words, forms, names_of
from arbridge.serving.scene_text import noun_phrase
from arbridge.serving.wearer_frame import place
from arbridge.v1 import types_pb2 as pb

HARD = float("inf")
# Penalties from here on are a mask: no logit gap in a real model is this wide.
HARD_FROM = 1e4
# Captions get these unless the request says otherwise (`arbridge eval` measured them).
CAPTION_NO_REPEAT_NGRAM = 4
CAPTION_MAX_SENTENCES = 1
CAPTION_REPEAT_WORDS = 6  # the scorer's loop: any 6 words twice (tools/caption_score.py)
# The place rules are for scenes a sentence can name: beyond this many distinct
# labels, or names longer than this many tokens, the noun mask alone applies (the
# rules' per-step work grows with both, and every stream in the batch would wait).
MAX_RULE_LABELS = 24
MAX_NAME_TOKENS = 8
MAX_PHRASE_TOKENS = 16


# What each placement makes false to say right after naming the object.
_DIRECTION_WORDS = {"to the left": ("left",), "to the right": ("right",),
                    "ahead": ("ahead", "front"), "behind": ("behind", "rear", "back")}
_DISTANCE_WORDS = {"near": ("near", "close"), "far": ("far", "distant")}


class SceneConstraint:
    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._word_ids = {}  # spatial word -> its one-token forms
        for words in (*_DIRECTION_WORDS.values(), *_DISTANCE_WORDS.values()):
            for word in words:
                ids = tokenizer([f" {word}", f" {word.capitalize()}", f" {word.upper()}"],
                                add_special_tokens=False).input_ids
                self._word_ids[word] = {seq[0] for seq in ids if len(seq) == 1}
        # Tokens that end a sentence or the reply: held back until all objects are named.
        decoded = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        self._enders = frozenset(
            [i for i, text in enumerate(decoded) if any(c in text for c in ".!?\n")] +
            [i for i in (tokenizer.eos_token_id,) if i is not None])
        # A caption says where things are in words; copying the scene text's metres
        # is where a small model starts reeling off numbers. Bare whitespace tokens are
        # what it writes instead once digits are masked (", , and").
        # Compass words are no place in the wearer's frame ("to the east").
        compass = {seq[0] for seq in tokenizer(
            [f"{s}{w}" for w in ("north", "south", "east", "west") for s in ("", " ")],
            add_special_tokens=False).input_ids if len(seq) == 1}
        self._never = frozenset(i for i, text in enumerate(decoded)
                                if any(c.isnumeric() for c in text)
                                or (text and not text.strip() and "\n" not in text)
                                or i in compass)
        self._claims = tuple(
            frozenset(t for words in table.values() for w in words for t in self._word_ids[w])
            for table in (_DIRECTION_WORDS, _DISTANCE_WORDS))
        self._punctuation = frozenset(i for i, text in enumerate(decoded)
                                      if text.strip() and all(not c.isalnum() and
                                                              not c.isspace() for c in text))
        # " to the" must go on with a side ("to the left"), in lower case.
        lead = tokenizer(" to the", add_special_tokens=False).input_ids
        self._place_lead = tuple(lead) if len(lead) == 2 else ()
        self._place_words = frozenset(
            seq[0] for seq in tokenizer([f" {w}" for w in ("left", "right", "front", "rear",
                                                           "back")],
                                        add_special_tokens=False).input_ids if len(seq) == 1)
        # The indefinite articles that open a phrase naming an object.
        articles = {word: {seq[0] for seq in tokenizer([word, f" {word}"],
                                                       add_special_tokens=False).input_ids
                           if len(seq) == 1}
                    for word in ("a", "A", "an", "An")}
        self._articles = frozenset().union(*articles.values())
        self._vowel_articles = frozenset(articles["an"] | articles["An"])
        forms = sorted(all_object_words())
        variants = [(form, v) for form in forms
                    for v in {f" {form}", form, f" {form.capitalize()}", form.capitalize()}]
        ids = tokenizer([v for _, v in variants], add_special_tokens=False).input_ids
        self._sequences: dict[str, list[tuple[int, ...]]] = {}
        for (form, _), seq in zip(variants, ids, strict=True):
            self._sequences.setdefault(form, []).append(tuple(seq))
        # Every form banned; a request takes its scene's names out of a copy (faster
        # than building the table anew: it is on the way to the first token).
        self._all = BannedWords.of([seq for seqs in self._sequences.values() for seq in seqs],
                                   HARD)

    def banned(self, scene: pb.SceneFeatures, penalty: float) -> BannedWords:
        allowed: set[str] = set()
        for obj in scene.objects:
            allowed |= names_of(obj.label)
            # Every word of the scene's own labels stays sayable: a "dog bed" without a
            # dog must not come out as "the grey bed", an "e-scooter" as "e-scootercar".
            allowed |= {form for word in re.findall(r"[a-z]+", obj.label.lower())
                        for form in forms(word)}
        table = dict(self._all.by_prefix)
        for form in allowed & self._sequences.keys():
            for seq in self._sequences[form]:
                prefix = seq[:-1]
                rest = table.get(prefix, frozenset()) - {seq[-1]}
                if rest:
                    table[prefix] = rest
                else:
                    table.pop(prefix, None)
        return BannedWords(table, HARD if penalty >= HARD_FROM else penalty,
                           self._all.longest_prefix)

    def caption_rules(self, scene: pb.SceneFeatures) -> CaptionRules | None:
        """Directions and distances that are false for each named object, and no
        sentence end before every object is named (objects that share a label count
        once, and only what is false for all of them is masked)."""
        groups: dict[str, list[pb.SceneObject]] = {}
        for obj in scene.objects:
            groups.setdefault(obj.label.strip().lower(), []).append(obj)
        if not groups or len(groups) > MAX_RULE_LABELS:
            return None
        names: dict[tuple[int, ...], int] = {}
        wrong: list[frozenset[int]] = []
        phrases = []
        for index, (label, objects) in enumerate(groups.items()):
            # The phrases the scene text uses for these objects, and the bare label.
            texts = sorted({noun_phrase(o).lower() for o in objects} | {label})
            ids = self._tokenizer([f" {t}" for t in texts], add_special_tokens=False).input_ids
            phrases.append(tuple((tuple(seq), t[:1] in "aeiou")
                                 for t, seq in zip(texts, ids, strict=True)
                                 if 0 < len(seq) <= MAX_PHRASE_TOKENS))
            forms = sorted(names_of(label))
            variants = [v for f in forms for v in (f" {f}", f" {f.capitalize()}")]
            for seq in self._tokenizer(variants, add_special_tokens=False).input_ids:
                if len(seq) <= MAX_NAME_TOKENS:
                    names[tuple(seq)] = index
            false_for_all = None
            for obj in objects:
                false = set()
                if obj.HasField("pose"):
                    p = place(obj.pose, scene.camera_pose)
                    for direction, words in _DIRECTION_WORDS.items():
                        if direction != p.direction:
                            false |= {t for w in words for t in self._word_ids[w]}
                    for band, words in _DISTANCE_WORDS.items():
                        if band != p.distance_band:
                            false |= {t for w in words for t in self._word_ids[w]}
                false_for_all = false if false_for_all is None else false_for_all & false
            wrong.append(frozenset(false_for_all or ()))
        return CaptionRules(names, tuple(wrong), self._enders, self._never,
                           phrases=tuple(phrases), articles=self._articles,
                           vowel_articles=self._vowel_articles,
                           once_per_mention=self._claims, place_lead=self._place_lead,
                           place_words=self._place_words,
                           repeat_words=CAPTION_REPEAT_WORDS, punctuation=self._punctuation)

    def apply(self, cfg: SamplingConfig, scene: pb.SceneFeatures | None, caption: bool,
              asked: float | None) -> SamplingConfig:
        """`cfg` with the request's constraints resolved (`asked`: its scene_constraint,
        None for the default): a caption gets a hard mask of absent nouns, its caption
        rules and no repeated 4-grams; a dialogue turn about a scene the hard mask only
        (place rules are caption rules)."""
        no_repeat = cfg.no_repeat_ngram or (CAPTION_NO_REPEAT_NGRAM if caption else 0)
        # Both captions and dialogue about a scene: on Ask questions, masking absent
        # nouns took "is there a ...?" answers from 65 % to 95 % right (tune split of
        # `make eval`). A request sets scene_constraint 0 to talk about anything.
        penalty = HARD if asked is None else asked
        banned = self.banned(scene, penalty) if scene is not None and penalty > 0 else None
        rules = (self.caption_rules(scene)
                 if caption and scene is not None and penalty >= HARD_FROM else None)
        return replace(cfg, no_repeat_ngram=no_repeat, banned=banned, caption_rules=rules)
