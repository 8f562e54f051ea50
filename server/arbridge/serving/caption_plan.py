"""A scene's caption, composed from the geometry: every fact in it computed.

A small model asked to caption a cluttered room collapses repeated labels into
one ("a red chair" for a red and a blue one), runs out of tokens mid-name after
the eighth object and puts a smoke alarm overhead "ahead". The plan says what
the caption says instead, and the model speaks it (the local engine forces its
tokens, like a computed answer; an upstream model is given it in the prompt).

The caption goes round the wearer, one short sentence per place, each place said
once (a list that says "to the left, near you" after every object spends the
budget on place words and reads as a loop):

    "Two chairs, one on each side. Ahead: a walnut table near you and a lamp far
    away. To the left: three red mugs. Overhead: a smoke alarm. And two more
    things around you."

- objects that share a label are counted where they are ("three red mugs", "two
  chairs (a red one and a blue one)"); a label seen in several places is said
  once, with its places ("Two chairs, one on each side.", "Three towels: two to
  the left and a blue one behind you.");
- places are the wearer's (wearer_frame.py): the side faced, heights (overhead,
  above you, below you) and the distance band;
- it fits the reply's token budget: it sheds the distance bands, then the
  attributes, then the articles ("Ahead: table and lamp."), and only then
  objects, the least important first (the gazed-at object is kept first, then
  the nearest; big things count as nearer), saying
  "and N more things around you" for them, so it always ends with a whole
  sentence, never mid-word.

`mentions` say which objects each span of the text names, for grounding.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from arbridge.serving.phrasing import a, adjectives, article, count_of, number_word
from arbridge.serving.scene_text import LOW_CONFIDENCE, where_said
from arbridge.serving.wearer_frame import Placement, place
from arbridge.v1 import types_pb2 as pb

_BANDS = {"near": "near you", "far": "far away", "mid-range": ""}
_UP_DOWN = ("overhead", "above you", "below you")
_PLACES = ["ahead", "to the left", "to the right", "behind you", *_UP_DOWN, "also"]


@dataclass(frozen=True)
class _Detail:
    """How much each object is told."""

    bands: bool = True  # "near you", "far away"
    attrs: bool = True  # "red wood"
    articles: bool = True  # "a chair" (else a terse "chair", as a list on a display)
    # The first of several parts says the noun ("a red chair to the left and a blue one
    # ..."): for captions where "a red one to the left and" would be said twice.
    name_first: bool = False


# Most first; each step frees the budget for more objects before any is dropped.
_DETAIL = [_Detail(), _Detail(bands=False), _Detail(bands=False, attrs=False),
           _Detail(bands=False, attrs=False, articles=False)]
_TERSE = _DETAIL[-1]


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

    @property
    def text(self) -> str:
        return "".join(self.parts)


@dataclass(frozen=True)
class _Instance:
    obj: pb.SceneObject
    placement: Placement | None

    @property
    def label(self) -> str:
        return " ".join(self.obj.label.lower().split())

    @property
    def where(self) -> str:
        """The sentence it goes in: 'ahead', 'to the left', ..., 'overhead', 'above you',
        'below you' (up or down is what a listener needs of those, not the side)."""
        if self.placement is None:
            return "also"  # seen, but where is not known: no place is claimed
        return self.placement.height if self.placement.height in _UP_DOWN else \
            where_said(self.placement)

    @property
    def band(self) -> str:
        return _BANDS[self.placement.distance_band] if self.placement is not None else ""

    @property
    def distance(self) -> float:
        return self.placement.distance_m if self.placement is not None else math.inf

    @property
    def uncertain(self) -> bool:
        return 0.0 < self.obj.confidence < LOW_CONFIDENCE


def _where_order(where: str) -> int:
    return _PLACES.index(where) if where in _PLACES else len(_PLACES)


def _importance(i: _Instance, gazed: set[str]) -> tuple:
    """What the wearer looks at first, then the nearest; a big thing counts as nearer
    (a car 6 m away before a pen at 5 m)."""
    e = i.obj.extents
    size = max(e.x, e.y, e.z, 0.0)
    return (i.obj.id not in gazed, i.distance / (1.0 + size), i.label, i.obj.id)


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _write_list(text: _Text, items: list[list[_Instance]], d: _Detail) -> None:
    """'a walnut table near you, two chairs and a lamp far away'."""
    for n, group in enumerate(items):
        if n:
            text.add(" and " if n == len(items) - 1 else ", ")
        _write_item(text, group, d)


def _ones(said: str, count: int, another: bool = False, noun: str = "") -> str:
    """'a red one', 'two red ones', 'one' (or 'another one' after the first); with
    `noun`, it in place of "one": 'a red chair', 'two red chairs'."""
    if noun:
        return count_of(count, f"{said} {noun}".strip()) if count > 1 else \
            a(f"{said} {noun}".strip())
    if count > 1:
        return f"{number_word(count)} {said} ones" if said else number_word(count)
    if said:
        return f"{article(said)} {said} one"
    return "another one" if another else "one"


def _write_item(text: _Text, group: list[_Instance], d: _Detail) -> None:
    label = group[0].obj.label.strip()
    band_set = {i.band for i in group}
    band = f" {band_set.pop()}" if d.bands and len(band_set) == 1 and "" not in band_set \
        else ""
    if len(group) == 1:
        inst = group[0]
        if inst.uncertain:
            text.add("possibly ")
        phrase = " ".join([*(adjectives(inst.obj) if d.attrs else []), label])
        text.add(a(phrase) if d.articles else phrase, (inst.obj.id,))
        text.add(band)
        return
    looks = [adjectives(i.obj) for i in group] if d.attrs else [[] for _ in group]
    if all(w == looks[0] for w in looks):
        text.add(count_of(len(group), " ".join([*looks[0], label])),
                 tuple(i.obj.id for i in group))
        text.add(band)
        return
    # Told apart by their attributes: "three chairs (two red ones and a blue one)".
    text.add(count_of(len(group), label), tuple(i.obj.id for i in group))
    alike: dict[tuple[str, ...], list[_Instance]] = {}
    for inst, words in zip(group, looks, strict=True):
        alike.setdefault(tuple(words), []).append(inst)
    text.add(" (")
    # Plain ones last: "two red ones and another one", not "one and two red ones".
    for n, (words, members) in enumerate(sorted(alike.items(), key=lambda kv: not kv[0])):
        if n:
            text.add(" and " if n == len(alike) - 1 else ", ")
        noun = label if d.name_first and n == 0 else ""
        text.add(_ones(" ".join(words), len(members), bool(n), noun),
                 tuple(i.obj.id for i in members))
    text.add(")")


def _spread(group: list[_Instance], text: _Text, d: _Detail) -> None:
    """A label seen in several places, said once: "Two chairs, one on each side.",
    "Three towels: two to the left and a blue one behind you." (said place by place,
    the same objects would make the same words twice: a loop to a listener)."""
    label = group[0].obj.label.strip()
    looks = {i.obj.id: tuple(adjectives(i.obj)) if d.attrs else () for i in group}
    shared = next(iter(looks.values())) if len(set(looks.values())) == 1 else ()
    if shared:  # alike: said once, up front ("two red chairs"), not in every part
        looks = dict.fromkeys(looks, ())
    text.add(_capital(count_of(len(group), " ".join([*shared, label]))),
             tuple(i.obj.id for i in group))
    if len(group) == 2 and {i.where for i in group} == {"to the left", "to the right"} and \
            len(set(looks.values())) == 1:
        text.add(", one on each side.")
        return
    # Alike instances in one place are counted there: "two to the left" (no distance
    # bands here: one per part would say "near you" again and again).
    parts: dict[tuple, list[_Instance]] = {}
    for inst in sorted(group, key=lambda i: (_where_order(i.where), i.distance)):
        parts.setdefault((inst.where, looks[inst.obj.id]), []).append(inst)
    text.add(": ")
    for n, ((where, words), members) in enumerate(parts.items()):
        if n:
            text.add(" and " if n == len(parts) - 1 else ", ")
        noun = label if d.name_first and n == 0 else ""
        text.add(_ones(" ".join(words), len(members), noun=noun),
                 tuple(i.obj.id for i in members))
        text.add(f" {where}")
    text.add(".")


def _render(named: list[_Instance], more: int, d: _Detail) -> _Text:
    """The caption at detail `d`; if it would say a 6-word run twice (two repeated
    labels alike in look and place), again with each listing's first part named."""
    text = _render_once(named, more, d)
    if not d.name_first and says_twice(re.findall(r"[a-z0-9]+", text.text.lower())):
        text = _render_once(named, more, replace(d, name_first=True))
    return text


def says_twice(words: list[str], run: int = 6) -> bool:
    """Whether some `run` words come twice: what a listener (and `arbridge eval`'s loop
    rule) hears as the text repeating itself."""
    grams = [tuple(words[i:i + run]) for i in range(len(words) - run + 1)]
    return len(grams) != len(set(grams))


def _render_once(named: list[_Instance], more: int, d: _Detail) -> _Text:
    text = _Text()
    by_label: dict[str, list[_Instance]] = {}
    for inst in named:
        by_label.setdefault(inst.label, []).append(inst)
    spread = [g for g in by_label.values() if len({i.where for i in g}) > 1]
    for group in spread:
        text.add(" " if text.length else "")
        _spread(group, text, d)
    said = {i.obj.id for g in spread for i in g}
    places: dict[str, dict[str, list[_Instance]]] = {}
    for inst in sorted(named, key=lambda i: i.distance):
        if inst.obj.id not in said:
            places.setdefault(inst.where, {}).setdefault(inst.label, []).append(inst)
    for where in sorted(places, key=_where_order):
        text.add(" " if text.length else "")
        text.add(f"{_capital(where)}: ")
        _write_list(text, list(places[where].values()), d)
        text.add(".")
    if more:
        lead = "And " if named else ""
        count = number_word(more) if named else _capital(number_word(more))
        text.add(f"{' ' if text.length else ''}{lead}{count} more "
                 f"{'thing' if more == 1 else 'things'} around you.")
    return text


def plan_caption(scene: pb.SceneFeatures, gazed_ids: set[str] = frozenset(),
                 fits: Callable[[str], bool] = lambda text: True) -> CaptionPlan | None:
    """The caption for `scene`, as much as `fits` (the reply's token budget) allows;
    None for a scene with no labelled object, or when not even one object fits."""
    everything = [_Instance(obj, place(obj.pose, scene.camera_pose)
                            if obj.HasField("pose") else None)
                  for obj in scene.objects if obj.label.strip()]
    if not everything:
        return None
    ranked = sorted(everything, key=lambda i: _importance(i, set(gazed_ids)))
    for detail in _DETAIL:
        text = _render(ranked, 0, detail)
        if fits(text.text):
            return CaptionPlan(text.text, tuple(text.mentions),
                               tuple(i.obj.id for i in ranked), 0)
    # Still too long: the least important objects go, counted at the end (none of it
    # when not even the most important one fits: a tiny max_new_tokens costs little).
    if len(ranked) == 1 or not fits(_render(ranked[:1], len(ranked) - 1, _TERSE).text):
        return None
    for keep in range(len(ranked) - 1, 0, -1):
        text = _render(ranked[:keep], len(ranked) - keep, _TERSE)
        if fits(text.text):
            return CaptionPlan(text.text, tuple(text.mentions),
                               tuple(i.obj.id for i in ranked[:keep]), len(ranked) - keep)
    return None
