"""Scoring a caption against the scene it describes, by rules a person would check.

- coverage: the share of the scene's objects the caption names (whole words,
  plurals, synonyms and head nouns from the lexicon);
- hallucination: the caption names a lexicon object the scene does not hold;
- spatial claims: each left / right / ahead / behind / near / far said about a
  named object, checked against the geometry in the frame the prompt uses;
- perspective: the wearer is "you" (or the caption is neutral), never "I"/"my";
- degeneration: a loop (a span repeated three times in a row, or 6 words twice),
  and the length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from arbridge.serving.lexicon import all_object_words, names_of
from arbridge.serving.wearer_frame import place
from arbridge.v1 import types_pb2 as pb

_WORDS = re.compile(r"[a-z]+(?:'[a-z]+)?")
_FIRST_PERSON = re.compile(r"\b(i|i'm|i've|i'd|i'll|me|my|mine|myself)\b")
# Spatial words -> the claim they make.
_SPATIAL = [
    (re.compile(r"\b(on|to) (your|the) left\b|\bleft\b"), "left"),
    (re.compile(r"\b(on|to) (your|the) right\b|\bright\b(?! now)"), "right"),
    (re.compile(r"\bahead\b|\bin front\b|\bstraight on\b"), "ahead"),
    (re.compile(r"\bbehind\b"), "behind"),
    (re.compile(r"\bnear\b|\bclose\b|\bnext to you\b|\bnearby\b"), "near"),
    (re.compile(r"\bfar\b|\bdistant\b|\bin the distance\b"), "far"),
]
_OBJECT_WORDS = all_object_words()


@dataclass
class Claim:
    object_id: str
    claim: str
    correct: bool


@dataclass
class CaptionScore:
    objects: int
    named: int
    hallucinated: list[str] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    first_person: bool = False
    loop: bool = False
    words: int = 0

    @property
    def coverage(self) -> float:
        return self.named / self.objects if self.objects else 1.0


def _words(text: str) -> list[str]:
    return _WORDS.findall(text.lower().replace("’", "'"))


def _mentions(words: list[str], names: set[str]) -> list[int]:
    """Word positions where any of `names` (one or more words) starts."""
    hits = []
    for name in names:
        parts = name.split()
        for i in range(len(words) - len(parts) + 1):
            if words[i:i + len(parts)] == parts:
                hits.append(i)
    return hits


def has_loop(words: list[str]) -> bool:
    """The caption repeats itself: a span of 1-8 words three times in a row ("a window
    with a window with a window"), or any 6 words twice. A list that says "is behind
    you" of three different objects is not a loop."""
    for period in range(1, 9):
        for i in range(len(words) - 3 * period + 1):
            span = words[i:i + period]
            if span == words[i + period:i + 2 * period] == words[i + 2 * period:
                                                                  i + 3 * period]:
                return True
    seen: set[tuple[str, ...]] = set()
    for i in range(len(words) - 5):
        gram = tuple(words[i:i + 6])
        if gram in seen:
            return True
        seen.add(gram)
    return False


def _truth(obj: pb.SceneObject, camera: pb.Pose) -> set[str]:
    p = place(obj.pose, camera)
    truth = {"to the left": {"left"}, "to the right": {"right"}, "ahead": {"ahead"},
             "behind": {"behind"}}[p.direction]
    if p.distance_band == "near":
        truth = truth | {"near"}
    elif p.distance_band == "far":
        truth = truth | {"far"}
    return truth


def score_caption(text: str, scene: pb.SceneFeatures) -> CaptionScore:
    words = _words(text)
    objects = list(scene.objects)
    allowed: set[str] = set()
    positions: dict[str, list[int]] = {}
    for obj in objects:
        names = names_of(obj.label)
        allowed |= names
        positions[obj.id] = _mentions(words, names)
    result = CaptionScore(objects=len(objects),
                          named=sum(1 for obj in objects if positions[obj.id]),
                          words=len(words))
    # Lexicon nouns named although absent (multi-word ones first, so "coffee table"
    # in the scene does not make "table" a hallucination and vice versa).
    covered = set()
    for name in sorted(_OBJECT_WORDS - allowed, key=lambda n: -len(n.split())):
        for i in _mentions(words, {name}):
            span = set(range(i, i + len(name.split())))
            if not span & covered:
                result.hallucinated.append(name)
                covered |= span
    # Spatial claims: each spatial phrase in a clause is about the nearest named
    # object in that clause (by word distance).
    for clause in re.split(r"[.;!?\n]|,\s*(?:and|while|with)\b|\bwhile\b", text.lower()):
        cw = _words(clause)
        named = [(i, obj) for obj in objects for i in _mentions(cw, names_of(obj.label))]
        if not named:
            continue
        joined = " ".join(cw)
        for pattern, claim in _SPATIAL:
            for m in pattern.finditer(joined):
                at = len(joined[:m.start()].split())
                _, obj = min(named, key=lambda item: abs(item[0] - at))
                result.claims.append(Claim(obj.id, claim, claim in _truth(obj,
                                                                          scene.camera_pose)))
    result.first_person = bool(_FIRST_PERSON.search(text.lower().replace("’", "'")))
    result.loop = has_loop(words)
    return result


@dataclass
class Summary:
    captions: int = 0
    coverage: float = 0.0
    hallucination_rate: float = 0.0  # share of captions with at least one
    claims_per_caption: float = 0.0
    claims_correct: float = 0.0
    first_person_rate: float = 0.0
    loop_rate: float = 0.0
    mean_words: float = 0.0

    def row(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in vars(self).items()}


def summarize(scores: list[CaptionScore]) -> Summary:
    n = len(scores)
    if not n:
        return Summary()
    claims = [c for s in scores for c in s.claims]
    return Summary(
        captions=n,
        coverage=sum(s.coverage for s in scores) / n,
        hallucination_rate=sum(1 for s in scores if s.hallucinated) / n,
        claims_per_caption=len(claims) / n,
        claims_correct=sum(c.correct for c in claims) / len(claims) if claims else 0.0,
        first_person_rate=sum(s.first_person for s in scores) / n,
        loop_rate=sum(s.loop for s in scores) / n,
        mean_words=sum(s.words for s in scores) / n)
