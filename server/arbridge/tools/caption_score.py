"""Scoring a caption against the scene it describes, by rules a person would check.

- coverage: the share of the scene's objects the caption names (whole words,
  plurals, synonyms and head nouns from the lexicon), counting every instance of
  a repeated label: "a chair" names one of two chairs, "two chairs" both, "chairs"
  two; a name inside a longer scene label's mention ("globe" in "snow globe")
  names only that label's object;
- hallucination: the caption names a lexicon object the scene does not hold (a
  word of a scene label, "dog" in "dog bed", is not one);
- spatial claims: each left / right / ahead / behind / near / far / overhead /
  above / below / on the floor said about a named object, checked against the
  wearer's frame (wearer_frame.py); a claim about a repeated label's mention is
  right when it is true of one of its instances;
- ending: the caption ends with a whole sentence (not cut mid-word or mid-list);
- perspective: the wearer is "you" (or the caption is neutral), never "I"/"my";
- degeneration: a loop (a span repeated three times in a row, or 6 words twice),
  and the length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from arbridge.serving.caption_plan import says_twice
from arbridge.serving.lexicon import all_object_words, names_of, plural
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
    (re.compile(r"\boverhead\b|\babove\b|\bup high\b"), "above"),
    (re.compile(r"\bbelow\b|\bdownstairs\b|\bdown the stairs\b"), "below"),
    (re.compile(r"\bon the (?:floor|ground)\b"), "floor"),
]
_OPENERS = {"a", "an", "the", "and", "or", "is", "are", "with", "some", "another"}
_COUNTS = {w: n for n, w in enumerate(["no", "one", "two", "three", "four", "five", "six",
                                       "seven", "eight", "nine", "ten", "eleven", "twelve"])}
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
    cut: bool = False  # does not end with a whole sentence

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
    return says_twice(words)


_SIDE_CLAIM = {"to the left": "left", "to the right": "right", "ahead": "ahead",
               "behind": "behind"}


def _truth(obj: pb.SceneObject, camera: pb.Pose) -> set[str]:
    p = place(obj.pose, camera)
    if p.height in ("overhead", "above you"):
        return {"above"} | ({"near"} if p.distance_band == "near" else set()) | (
            {"far"} if p.distance_band == "far" else set()) | (
            set() if p.height == "overhead" else {_SIDE_CLAIM[p.direction]})
    height = {"on the floor": {"floor"}, "below you": {"below"}}.get(p.height, set())
    truth = {_SIDE_CLAIM[p.direction]} | height
    if p.distance_band == "near":
        truth = truth | {"near"}
    elif p.distance_band == "far":
        truth = truth | {"far"}
    return truth


def _instances_named(words: list[str], label: str, hits: set[int], same: int) -> int:
    """How many of the `same` objects labelled `label` the caption names at the word
    positions `hits`: the count said before a plural ("two chairs"), two for a bare
    plural ("chairs on both sides"), else one per mention."""
    raw = names_of(label)
    plurals = {" ".join(_words(plural(n))) for n in raw} - \
        {" ".join(_words(n)) for n in raw if plural(n) == n}
    names = {" ".join(_words(n)) for n in raw}
    named, again, end = 0, 0, -1
    for i in sorted(hits):
        if i < end:  # inside the last mention ("table" of "coffee table")
            continue
        name = max((n for n in names if words[i:i + len(n.split())] == n.split()),
                   key=lambda n: len(n.split()))
        end = i + len(name.split())
        # The count said before the noun phrase ("three red mugs", "two pairs of
        # scissors"), looked for back to the phrase's start; "the chair" after "a
        # chair" is the same chair again.
        count, opener = None, ""
        for w in reversed(words[max(0, i - 4):i]):
            if w in _COUNTS:
                count = _COUNTS[w]
                break
            if w in _OPENERS:
                opener = w
                break
        if count is not None:
            named += count
        elif opener == "the":
            again += 1
        else:
            named += 2 if name in plurals else 1
    return min(named or min(again, 1), same)


def _label_mentions(words: list[str], objects) -> tuple[dict[str, set[int]],
                                                     dict[str, list[int]]]:
    """Per scene label: the word positions its whole-label mentions cover, and where
    any of its names is said. A shorter name inside another label's whole mention
    ("globe" in "snow globe") is that label's, not its own."""
    spans: dict[str, set[int]] = {}
    for label in sorted({o.label.lower().strip() for o in objects}, key=lambda x: -len(x)):
        taken = set().union(*spans.values()) if spans else set()
        whole = {" ".join(_words(n)) for n in names_of(label) if n == label or
                 len(_words(n)) > 1}  # "e-scooter" is the words "e scooter"
        spans[label] = {j for i in _mentions(words, whole) if i not in taken
                        for j in range(i, i + len(_words(label)))}
    positions = {}
    for label in spans:
        others = set().union(*(v for k, v in spans.items() if k != label))
        names = {" ".join(_words(n)) for n in names_of(label)}
        positions[label] = [i for i in _mentions(words, names) if i not in others]
    return spans, positions


def score_caption(text: str, scene: pb.SceneFeatures) -> CaptionScore:
    words = _words(text)
    objects = [o for o in scene.objects if o.label.strip()]  # a blank label names nothing
    allowed: set[str] = set()
    for obj in objects:
        allowed |= names_of(obj.label)
    label_spans, positions = _label_mentions(words, objects)
    by_label: dict[str, list[pb.SceneObject]] = {}
    for obj in objects:
        by_label.setdefault(obj.label.lower().strip(), []).append(obj)
    named = sum(_instances_named(words, label, set(positions[label]), len(group))
                for label, group in by_label.items())
    result = CaptionScore(objects=len(objects), named=named, words=len(words))
    # Lexicon nouns named although absent (multi-word ones first, so "coffee table"
    # in the scene does not make "table" a hallucination and vice versa); words of the
    # scene's own labels are no claim ("dog" in "dog bed").
    covered = set().union(*label_spans.values()) if label_spans else set()
    for name in sorted(_OBJECT_WORDS - allowed, key=lambda n: -len(n.split())):
        for i in _mentions(words, {name}):
            span = set(range(i, i + len(name.split())))
            if not span & covered:
                result.hallucinated.append(name)
                covered |= span
    # Spatial claims: each spatial phrase in a clause is about the nearest named
    # object in that clause (by word distance); a repeated label's mention is about
    # all its instances, and the claim is right if true of one.
    for clause in re.split(r"[.;!?\n]|,\s*(?:and|while|with)\b|\bwhile\b", text.lower()):
        cw = _words(clause)
        named_here = [(i, label) for label, at in _label_mentions(cw, objects)[1].items()
                      for i in at]
        if not named_here:
            continue
        joined = " ".join(cw)
        for pattern, claim in _SPATIAL:
            for m in pattern.finditer(joined):
                at = len(joined[:m.start()].split())
                _, label = min(named_here, key=lambda item: abs(item[0] - at))
                group = [o for o in by_label[label] if o.HasField("pose")]
                if not group:  # where it is is unknown: nothing to check a claim against
                    continue
                right = [o for o in group if claim in _truth(o, scene.camera_pose)]
                result.claims.append(Claim((right or group)[0].id, claim, bool(right)))
    result.first_person = bool(_FIRST_PERSON.search(text.lower().replace("’", "'")))
    result.loop = has_loop(words)
    result.cut = not re.search(r"[.!?][\"')\]]*\s*$", text.strip()) if text.strip() else True
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
    cut_rate: float = 0.0

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
        mean_words=sum(s.words for s in scores) / n,
        cut_rate=sum(s.cut for s in scores) / n)
