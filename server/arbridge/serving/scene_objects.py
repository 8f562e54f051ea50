"""A scene's objects as the wearer sees them, and the objects a phrase names.

`seen` places an object in the wearer's frame from the camera's full rotation
(a turned or pitched head): side, distance and height. `find` resolves a phrase
("the lamps", "the left lamp", "the red chair", "a dog bed") to the objects it
names: whole labels and plurals first, then synonyms, then a head noun alone;
repeated labels narrowed by attributes, sides, nearest or farthest.

Coordinates follow Unity: metres, +X right, +Y up, +Z forward.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from arbridge.serving.lexicon import names_of, plural
from arbridge.serving.scene_text import rotate_inverse
from arbridge.v1 import types_pb2 as pb

AHEAD_DEG = 20.0  # as scene_text: within this of straight ahead is "ahead"
ABOVE_DEG = 25.0  # this far above eye level (elevation) is "above you"
ABOVE_M = 0.6  # ... and at least this much higher than the eyes
OVERHEAD_DEG = 60.0
# Heights below the eyes (the app chooses the world's origin, so the floor is found
# from the eyes, not from world Y 0): an object's centre this far down is on the floor,
# further down (stairs, a balcony) below the wearer.
FLOOR_FROM_M, FLOOR_TO_M = -2.0, -1.1


@dataclass(frozen=True)
class Seen:
    """An object as the wearer sees it."""

    obj: pb.SceneObject
    azimuth: float  # degrees, 0 = straight ahead, + = right
    elevation: float  # degrees above eye level
    distance: float  # metres, straight line
    side: str  # "ahead", "left", "right", "behind"
    rise: float  # metres above the eyes (negative: below)
    view_angle: float  # degrees between the line of sight and the object

    @property
    def label(self) -> str:
        return self.obj.label.strip().lower()


def _rotate(q: pb.Quaternion, v: tuple[float, float, float]) -> tuple[float, ...]:
    """v rotated by q (camera -> world)."""
    return rotate_inverse(pb.Quaternion(x=-q.x, y=-q.y, z=-q.z, w=q.w), v)


def seen(obj: pb.SceneObject, camera: pb.Pose) -> Seen:
    """Sides and heights as a person means them: relative to the way the wearer faces
    (the line of sight flattened onto the floor) and to gravity, whether the head is
    tilted down at a table or rolled; only the view angle uses the head's full pose."""
    rel = (obj.pose.position.x - camera.position.x, obj.pose.position.y - camera.position.y,
           obj.pose.position.z - camera.position.z)
    forward = _rotate(camera.rotation, (0.0, 0.0, 1.0))
    if math.hypot(forward[0], forward[2]) < 1e-3:  # looking straight up or down
        up = _rotate(camera.rotation, (0.0, 1.0, 0.0))
        forward = (up[0] * -forward[1], 0.0, up[2] * -forward[1])
    heading = math.atan2(forward[0], forward[2])
    # The offset turned into the facing frame: x right, z ahead, y up.
    x = rel[0] * math.cos(heading) - rel[2] * math.sin(heading)
    z = rel[0] * math.sin(heading) + rel[2] * math.cos(heading)
    azimuth = math.degrees(math.atan2(x, z))
    elevation = math.degrees(math.atan2(rel[1], math.hypot(x, z)))
    if abs(azimuth) <= AHEAD_DEG:
        side = "ahead"
    elif abs(azimuth) > 135.0:
        side = "behind"
    else:
        side = "left" if azimuth < 0 else "right"
    distance = math.sqrt(rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2)
    sight = _rotate(camera.rotation, (0.0, 0.0, 1.0))
    cosine = sum(a * b for a, b in zip(sight, rel, strict=True)) / max(distance, 1e-9)
    view_angle = math.degrees(math.acos(max(-1.0, min(1.0, cosine))))
    return Seen(obj, azimuth, elevation, distance, side, rel[1], view_angle)


def on_the_floor(s: Seen) -> bool:
    return FLOOR_FROM_M <= s.rise <= FLOOR_TO_M


def above(s: Seen) -> bool:
    return s.elevation >= ABOVE_DEG and s.rise >= ABOVE_M


def below(s: Seen) -> bool:
    return s.rise < FLOOR_FROM_M


def height_said(s: Seen) -> str:
    """Where the object is up or down, in words ('' in between)."""
    if above(s):
        return "overhead" if s.elevation >= OVERHEAD_DEG else "above you"
    if on_the_floor(s):
        return "on the floor"
    return "below you" if below(s) else ""


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
