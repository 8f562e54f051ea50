"""A scene's caption, composed from the geometry: every fact in it computed.

A small model asked to caption a cluttered room collapses repeated labels into
one ("a red chair" for a red and a blue one), runs out of tokens mid-name after
the eighth object and puts a smoke alarm overhead "ahead". The plan says what
the caption says instead, and the model speaks it (the local engine forces its
tokens, like a computed answer; an upstream model is given it in the prompt):

- objects that share a label are one item, every instance counted and placed:
  "two chairs, one on each side", "three lamps, two to the right and one ahead",
  "two chairs, a red one to the left and a blue one behind you";
- places are the wearer's (wearer_frame.py): the side faced, heights (overhead,
  above you, on the floor, below you) and the distance band in words;
- what matters goes first: what the wearer looks at, then the nearest (large
  things count as nearer); the caption takes items while it fits the reply's
  token budget and says "and N more things around you" for the rest, so it always
  ends with a whole sentence, never mid-word.

Items are joined by semicolons so that no place can be read as another item's.
`mentions` say which objects each span of the text names, for grounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from arbridge.serving.phrasing import a, adjectives, article, count_of, number_word
from arbridge.serving.scene_text import LOW_CONFIDENCE, where_said
from arbridge.serving.wearer_frame import Placement, place
from arbridge.v1 import types_pb2 as pb

MAX_ITEMS = 8  # beyond this a spoken caption stops being one
_BANDS = {"near": "near you", "far": "far away", "mid-range": ""}


@dataclass(frozen=True)
class Mention:
    start: int  # character offsets in the caption
    end: int
    object_ids: tuple[str, ...]


@dataclass(frozen=True)
class CaptionPlan:
    text: str
    mentions: tuple[Mention, ...]
    named: tuple[str, ...]  # ids of the objects the caption names
    left_out: int  # objects only counted ("and N more")


class _Text:
    """Text being written, with the spans that name objects."""

    def __init__(self):
        self.parts: list[str] = []
        self.mentions: list[Mention] = []
        self.length = 0

    def add(self, text: str, ids: tuple[str, ...] = ()) -> None:
        if ids:
            self.mentions.append(Mention(self.length, self.length + len(text), ids))
        self.parts.append(text)
        self.length += len(text)


@dataclass
class _Instance:
    obj: pb.SceneObject
    placement: Placement | None

    @property
    def where(self) -> str:
        """'to the left, near you', 'overhead', 'nearby' (no pose)."""
        if self.placement is None:
            return "nearby"
        band = _BANDS[self.placement.distance_band]
        return ", ".join(w for w in (where_said(self.placement), band) if w)

    @property
    def side(self) -> str:
        return where_said(self.placement) if self.placement is not None else "nearby"

    @property
    def band(self) -> str:
        return _BANDS[self.placement.distance_band] if self.placement is not None else ""

    @property
    def adjectives(self) -> list[str]:
        return adjectives(self.obj)


def _uncertain(obj: pb.SceneObject) -> bool:
    return 0.0 < obj.confidence < LOW_CONFIDENCE


def _groups(scene: pb.SceneFeatures) -> list[list[_Instance]]:
    groups: dict[str, list[_Instance]] = {}
    for obj in scene.objects:
        label = " ".join(obj.label.lower().split())
        if not label:
            continue
        placement = place(obj.pose, scene.camera_pose) if obj.HasField("pose") else None
        groups.setdefault(label, []).append(_Instance(obj, placement))
    return list(groups.values())


def _importance(group: list[_Instance], gazed: set[str]) -> tuple:
    """What the wearer looks at first, then the nearest; a big thing counts as nearer
    (a car 6 m away before a pen at 5 m)."""
    def nearness(i: _Instance) -> float:
        if i.placement is None:
            return math.inf
        e = i.obj.extents
        size = max(e.x, e.y, e.z, 0.0)
        return i.placement.distance_m / (1.0 + size)

    return (not any(i.obj.id in gazed for i in group), min(map(nearness, group)),
            group[0].obj.label, group[0].obj.id)


def _and_list(parts: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + f" and {parts[-1]}"


def _places_said(instances: list[_Instance]) -> tuple[str, bool]:
    """Where the instances of one phrase are, and whether that splits them (said after
    a comma): ('to the left, near you', False), ('one on each side', True), ('two to
    the right and one ahead', True)."""
    sides: dict[str, list[_Instance]] = {}
    for i in sorted(instances, key=lambda i: i.placement.distance_m if i.placement else 1e9):
        sides.setdefault(i.side, []).append(i)
    if len(sides) == 1:
        bands = {i.band for i in instances}
        side = next(iter(sides))
        return ", ".join(w for w in (side, bands.pop() if len(bands) == 1 else "") if w), False
    if len(instances) == 2 and set(sides) == {"to the left", "to the right"}:
        return "one on each side", True
    return _and_list([f"one {members[0].where}" if len(members) == 1 else
                      f"{number_word(len(members))} {side}"
                      for side, members in sides.items()]), True


def _write_item(text: _Text, group: list[_Instance]) -> None:
    label = group[0].obj.label.strip()
    if len(group) == 1:
        inst = group[0]
        if _uncertain(inst.obj):
            text.add("possibly ")
        text.add(a(" ".join([*inst.adjectives, label])), (inst.obj.id,))
        text.add(f" {inst.where}")
        return
    text.add(count_of(len(group), label), tuple(i.obj.id for i in group))
    if len({tuple(i.adjectives) for i in group}) == 1:
        places, split = _places_said(group)
        text.add(f", {places}" if split else f" {places}")
        return
    # Told apart by their attributes: "a red one to the left and a blue one ahead".
    members = sorted(group, key=lambda i: i.placement.distance_m if i.placement else 1e9)
    text.add(", ")
    comma = any("," in i.where for i in members)  # "..., near you, and a blue one"
    for n, inst in enumerate(members):
        if n:
            text.add((", and " if comma else " and ") if n == len(members) - 1 else ", ")
        words = " ".join(inst.adjectives)
        text.add(f"{article(words)} {words} one" if words else "one", (inst.obj.id,))
        text.add(f" {inst.where}")


def _render(items: list[list[_Instance]], more: int, location: str) -> _Text:
    text = _Text()
    lead = f"In {location}, you see " if location else "You see "
    text.add(lead)
    for n, group in enumerate(items):
        if n:
            last = n == len(items) - 1 and not more
            text.add("; and " if last else "; ")
        _write_item(text, group)
    if more:
        text.add(f"{'; and ' if items else ''}{number_word(more)} more "
                 f"{'thing' if more == 1 else 'things'} around you")
    text.add(".")
    return text


def plan_caption(scene: pb.SceneFeatures, gazed_ids: set[str] = frozenset(),
                 fits: Callable[[str], bool] = lambda text: True) -> CaptionPlan | None:
    """The caption for `scene`, as long as `fits` (the reply's token budget) allows;
    None for a scene with no labelled object, or one whose first item does not fit."""
    groups = sorted(_groups(scene), key=lambda g: _importance(g, set(gazed_ids)))
    if not groups:
        return None
    location = scene.location_hint.strip()
    location = location if location.lower().startswith(("a ", "an ", "the ", "my ")) else ""
    total = sum(len(g) for g in groups)
    best = None
    for count in range(1, min(len(groups), MAX_ITEMS) + 1):
        items = groups[:count]
        more = total - sum(len(g) for g in items)
        text = _render(items, more, location)
        if not fits("".join(text.parts)):
            break
        best = (text, items, more)
    if best is None:
        return None
    text, items, more = best
    return CaptionPlan("".join(text.parts), tuple(text.mentions),
                       tuple(i.obj.id for g in items for i in g), more)
