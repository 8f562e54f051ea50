"""The scene objects a phrase names.

`find` resolves a phrase ("the lamps", "the left lamp", "the red chair", "a dog
bed") to the objects it names (as wearer_frame.py sees them): whole labels and
plurals first, then synonyms, then a head noun alone; repeated labels narrowed by
attributes, sides, nearest or farthest.
"""

from __future__ import annotations

import re

from arbridge.serving.lexicon import names_of, plural
from arbridge.serving.wearer_frame import Seen

_DETERMINERS = r"(?:the|a|an|any|some|my|this|that|these|those|your)"
_TRAILING = re.compile(r"(?:\s+(?:here|in here|in (?:the|this) (?:room|place)|around(?: here)?|"
                       r"nearby|near me|anywhere|at all|right now|now|for me|you can see|"
                       r"over there|there|in the scene|in view))+$")
# A side said after the noun: "the lamp on my left", "a chair behind me".
_SIDE_AFTER = re.compile(r"\s+(?:(?:on|to|at) (?:my|the|your) (?P<lr>left|right)(?: side)?"
                         r"(?: of me)?|(?P<behind>behind) (?:me|us|you)|"
                         r"(?P<ahead>in front of|ahead of) (?:me|us|you))$")
_ORDINAL_SIDES = {"left": "left", "right": "right", "leftmost": "left", "rightmost": "right"}
# Words that tie the noun to something else ("the lamp from the cello", "a dog in the
# dog bed"): a relation this module does not compute, so it cannot tell.
_RELATIONS = {"in", "on", "under", "inside", "near", "next", "by", "beside", "with", "from",
              "of", "for", "to", "between", "behind", "than", "and", "or"}
# Words that narrow nothing ("the red one").
_FILLER = {"one", "ones", "thing", "things", "please"}
NEAREST = {"nearest", "closest", "closer", "nearer"}
FARTHEST = {"farthest", "furthest", "farther", "further"}
UNKNOWN = -1  # find_scored's score when the phrase says more than it can check


def clean(phrase: str) -> str:
    """The noun phrase without punctuation, leading determiners or trailing fillers."""
    phrase = re.sub(r"[?.!,]+$", "", phrase.strip().lower())
    phrase = re.sub(rf"^(?:{_DETERMINERS}\s+)+", "", phrase)
    return _TRAILING.sub("", phrase).strip()


def word_list(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:[-'][a-z0-9]+)*", text.lower())


def _name_score(phrase_words: list[str], s: Seen) -> int:
    """How well the phrase names the object: 3 its whole label (or plural), 2 a
    synonym, 1 its head noun only, 0 not at all. A name counts only where the phrase
    ends: "a cello case" does not name the cello."""
    text = " " + " ".join(phrase_words) + " "
    label = " ".join(word_list(s.label))
    if not label:
        return 0
    if text.endswith(f" {label} ") or text.endswith(f" {' '.join(word_list(plural(label)))} "):
        return 3
    names = {" ".join(word_list(n)) for n in names_of(label)}
    head = label.rsplit(" ", 1)[-1]
    head_forms = {head, " ".join(word_list(plural(head)))}
    if any(text.endswith(f" {n} ") for n in names - head_forms):
        return 2
    if any(text.endswith(f" {n} ") for n in head_forms):
        return 1
    return 0


def find(phrase: str, scene_seen: list[Seen]) -> list[Seen]:
    """The objects a phrase names ("the lamps", "the left lamp", "the red chair", "the
    closest chair", "the lamp on my right"); several for a repeated label; [] when
    none is there, or when the phrase says more than can be checked."""
    return find_scored(phrase, scene_seen)[0]


def find_scored(phrase: str, scene_seen: list[Seen]) -> tuple[list[Seen], int]:
    """`find`, and how well the best named them (_name_score), or UNKNOWN when a word
    of the phrase narrows nothing it can check (a colour no such object has, a
    relation to another object): the answer is then not this module's to give."""
    phrase = clean(phrase)
    side = None
    m = _SIDE_AFTER.search(phrase)
    if m:
        side = m.group("lr") or ("behind" if m.group("behind") else "ahead")
        phrase = phrase[:m.start()]
    words = word_list(phrase)
    if not words:
        return [], 0
    if any(w in _RELATIONS for w in words):
        return [], UNKNOWN
    scored = [(s, _name_score(words, s)) for s in scene_seen]
    best = max((score for _, score in scored), default=0)
    if best == 0:
        return [], 0
    found = [s for s, score in scored if score == best]
    if side is not None:
        found = [s for s in found if s.side == side]
        if not found:
            return [], UNKNOWN  # there is one, elsewhere: "no" would mislead
    # Narrow repeated labels by the other words: attributes, sides, nearest/farthest.
    label_words = {w for s in found for w in word_list(s.label)}
    label_words |= {w for s in found for n in names_of(s.label) for w in word_list(n)}
    for word in (w for w in words if w not in label_words and w not in _FILLER):
        attr = [s for s in found
                if word in {w for v in s.obj.attributes.values() for w in word_list(v)}]
        on_side = [s for s in found if _ORDINAL_SIDES.get(word) == s.side]
        if attr:
            found = attr
        elif on_side:
            found = on_side
        elif word in NEAREST:
            found = [min(found, key=lambda s: s.distance)]
        elif word in FARTHEST:
            found = [max(found, key=lambda s: s.distance)]
        else:
            return [], UNKNOWN
    return found, best
