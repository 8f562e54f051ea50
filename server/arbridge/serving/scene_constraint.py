"""Scene-constrained decoding: the reply may not name an object the scene lacks.

The lexicon's object nouns (serving/lexicon.py) are tokenized once per model, in
every form a reply could write them (" sofa", "sofa", " Sofa", "Sofa", plurals,
synonyms). For a request with a scene, the forms that name none of the scene's
objects become `BannedWords`, which the engine keeps out of the logits of that
request's rows only (engine/constraints.py).
"""

from __future__ import annotations

from dataclasses import replace

from arbridge.engine.constraints import BannedWords
from arbridge.engine.sampling import SamplingConfig
from arbridge.serving.lexicon import all_object_words, names_of
from arbridge.v1 import types_pb2 as pb

HARD = float("inf")
# Penalties from here on are a mask: no logit gap in a real model is this wide.
HARD_FROM = 1e4
# Captions get these unless the request says otherwise (`arbridge eval` measured them).
CAPTION_NO_REPEAT_NGRAM = 4
CAPTION_MAX_SENTENCES = 1


class SceneConstraint:
    def __init__(self, tokenizer):
        forms = sorted(all_object_words())
        variants = [(form, v) for form in forms
                    for v in {f" {form}", form, f" {form.capitalize()}", form.capitalize()}]
        ids = tokenizer([v for _, v in variants], add_special_tokens=False).input_ids
        self._sequences: dict[str, list[tuple[int, ...]]] = {}
        for (form, _), seq in zip(variants, ids, strict=True):
            self._sequences.setdefault(form, []).append(tuple(seq))

    def banned(self, scene: pb.SceneFeatures, penalty: float) -> BannedWords:
        allowed: set[str] = set()
        for obj in scene.objects:
            allowed |= names_of(obj.label)
        sequences = [seq for form, seqs in self._sequences.items() if form not in allowed
                     for seq in seqs]
        return BannedWords.of(sequences, HARD if penalty >= HARD_FROM else penalty)

    def apply(self, cfg: SamplingConfig, scene: pb.SceneFeatures | None,
              caption: bool, supported: bool = True) -> SamplingConfig:
        """`cfg` with the request's constraints resolved: a caption defaults to a hard
        mask and no repeated 4-grams, a dialogue turn to neither; a backend without
        them (`supported` False) gets none (an explicit ask was refused earlier)."""
        if not supported:
            return cfg
        no_repeat = cfg.no_repeat_ngram or (CAPTION_NO_REPEAT_NGRAM if caption else 0)
        penalty = cfg.scene_constraint
        if penalty is None:
            penalty = HARD if caption else 0.0
        banned = self.banned(scene, penalty) if scene is not None and penalty > 0 else None
        sentences = cfg.max_sentences or (CAPTION_MAX_SENTENCES if caption else 0)
        return replace(cfg, no_repeat_ngram=no_repeat, banned=banned, max_sentences=sentences)
