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
OVERHEAD_DEG = 60.0
BELOW_DEG = -25.0
FLOOR_M = 0.35  # an object's centre this near world Y 0 (Unity's floor) is "on the floor"


@dataclass(frozen=True)
class Seen:
    """An object as the wearer sees it."""

    obj: pb.SceneObject
    azimuth: float  # degrees, 0 = straight ahead, + = right
    elevation: float  # degrees above eye level
    distance: float  # metres, straight line
    side: str  # "ahead", "left", "right", "behind"

    @property
    def label(self) -> str:
        return self.obj.label.strip().lower()


def seen(obj: pb.SceneObject, camera: pb.Pose) -> Seen:
    rel = (obj.pose.position.x - camera.position.x, obj.pose.position.y - camera.position.y,
           obj.pose.position.z - camera.position.z)
    x, y, z = rotate_inverse(camera.rotation, rel)
    azimuth = math.degrees(math.atan2(x, z))
    elevation = math.degrees(math.atan2(y, math.hypot(x, z)))
    if abs(azimuth) <= AHEAD_DEG:
        side = "ahead"
    elif abs(azimuth) > 135.0:
        side = "behind"
    else:
        side = "left" if azimuth < 0 else "right"
    return Seen(obj, azimuth, elevation, math.sqrt(x * x + y * y + z * z), side)


def height_said(s: Seen) -> str:
    """Where the object is up or down, in words ('' at about eye level)."""
    if s.elevation >= OVERHEAD_DEG:
        return "overhead"
    if s.elevation >= ABOVE_DEG:
        return "above you"
    if -FLOOR_M <= s.obj.pose.position.y <= FLOOR_M and s.elevation < 0:
        return "on the floor"  # lower still (down the stairs) is below the wearer
    if s.elevation <= BELOW_DEG:
        return "below you"
    return ""


_DETERMINERS = r"(?:the|a|an|any|some|my|this|that|these|those|your)"
_TRAILING = re.compile(r"\s+(?:here|in here|in (?:the|this) (?:room|place)|around(?: here)?|"
                       r"nearby|near me|anywhere|at all|right now|now|for me|you can see|"
                       r"over there|there|in the scene|in front|in view)$")
_ORDINAL_SIDES = {"left": "left", "right": "right", "leftmost": "left", "rightmost": "right"}


def clean(phrase: str) -> str:
    phrase = re.sub(r"[?.!,]+$", "", phrase.strip().lower())
    phrase = re.sub(rf"^(?:{_DETERMINERS}\s+)+", "", phrase)
    previous = None
    while previous != phrase:
        previous = phrase
        phrase = _TRAILING.sub("", phrase).strip()
    return phrase


def word_list(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:[-'][a-z0-9]+)*", text.lower())


def _name_score(phrase_words: list[str], s: Seen) -> int:
    """How well the phrase names the object: 3 its whole label (or plural), 2 a
    synonym, 1 its head noun only, 0 not at all."""
    text = " " + " ".join(phrase_words) + " "
    label = " ".join(word_list(s.label))
    if not label:
        return 0
    if f" {label} " in text or f" {' '.join(word_list(plural(label)))} " in text:
        return 3
    names = {" ".join(word_list(n)) for n in names_of(label)}
    head = label.rsplit(" ", 1)[-1]
    head_forms = {head, " ".join(word_list(plural(head)))}
    if any(f" {n} " in text for n in names - head_forms):
        return 2
    if any(f" {n} " in text for n in head_forms):
        return 1
    return 0


def find(phrase: str, scene_seen: list[Seen]) -> list[Seen]:
    """The objects a phrase names ("the lamps", "the left lamp", "the red chair", "the
    closest chair"); several for a repeated label; [] when none is there."""
    return find_scored(phrase, scene_seen)[0]


def find_scored(phrase: str, scene_seen: list[Seen]) -> tuple[list[Seen], int]:
    """`find`, and how well the best named them (see _name_score)."""
    words = word_list(clean(phrase))
    if not words:
        return [], 0
    scored = [(s, _name_score(words, s)) for s in scene_seen]
    best = max((score for _, score in scored), default=0)
    if best == 0:
        return [], 0
    found = [s for s, score in scored if score == best]
    # Narrow repeated labels by the other words: attributes, sides, nearest/farthest.
    label_words = {w for s in found for w in word_list(s.label)}
    label_words |= {w for s in found for n in names_of(s.label) for w in word_list(n)}
    extra = [w for w in words if w not in label_words]
    for word in extra:
        attr = [s for s in found
                if word in {w for v in s.obj.attributes.values() for w in word_list(v)}]
        side = [s for s in found if _ORDINAL_SIDES.get(word) == s.side]
        if attr:
            found = attr
        elif side:
            found = side
        elif word in ("nearest", "closest", "closer", "nearer"):
            found = [min(found, key=lambda s: s.distance)]
        elif word in ("farthest", "furthest", "farther", "further"):
            found = [max(found, key=lambda s: s.distance)]
    return found, best
