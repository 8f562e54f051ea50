"""What the wearer means by "this": the scene object a gaze or hand ray points at.

Deterministic geometry, in the objects' world frame:

* a ray HITs an object when it passes through the object's box (pose + half-extents,
  rotated with the object); of several boxes on the ray the nearest entry wins (the
  closer object hides the farther one); of two entries within `TIE_M` of each other
  a far smaller box wins (a phone on a table), else they are AMBIGUOUS (the reply
  asks which); an object without a box right on the ray counts as hit at its centre;
* with no box hit, the object NEAR the ray wins: the smallest angle between the ray
  and the object (its centre, or the edge of its bounding sphere when it has
  extents), within `CONE_DEG`; two within `AMBIGUOUS_DEG` of each other are AMBIGUOUS;
* otherwise NONE: nothing there, said so rather than guessed.

Objects behind the ray's origin are never candidates, nor a box the origin is inside
(the wearer standing on a rug does not point at it).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from arbridge.serving.lexicon import NOUNS
from arbridge.serving.scene_text import noun_phrase
from arbridge.serving.wearer_frame import place, rotate_inverse
from arbridge.v1 import types_pb2 as pb

CONE_DEG = 10.0  # how far off the ray an object may still be what it points at
AMBIGUOUS_DEG = 2.0  # closer than this in angle: two candidates, not one
TIE_M = 0.05  # box entries closer than this along the ray: a tie
SMALLER = 0.4  # of tied boxes, one this much smaller (radius) than the next is meant
# Hands first: a gesture is a deliberate choice, a glance may wander.
PRIORITY = (pb.RAY_SOURCE_RIGHT_HAND, pb.RAY_SOURCE_LEFT_HAND, pb.RAY_SOURCE_GAZE)

_VERBS = {pb.RAY_SOURCE_GAZE: "looking at", pb.RAY_SOURCE_LEFT_HAND: "pointing at",
          pb.RAY_SOURCE_RIGHT_HAND: "pointing at"}


@dataclass(frozen=True)
class _Candidate:
    obj: pb.SceneObject
    distance: float  # along the ray: box entry (hits) or the centre's projection
    angle: float  # degrees off the ray (0 for hits)


def _sub(a: pb.Vec3, b: pb.Vec3) -> tuple[float, float, float]:
    return (a.x - b.x, a.y - b.y, a.z - b.z)


def _dot(a, b) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _unit(v: pb.Vec3) -> tuple[float, float, float]:
    norm = math.sqrt(v.x * v.x + v.y * v.y + v.z * v.z)
    return (v.x / norm, v.y / norm, v.z / norm)


def _has_box(obj: pb.SceneObject) -> bool:
    return bool(obj.extents.x or obj.extents.y or obj.extents.z)


def _box_interval(obj: pb.SceneObject, origin: pb.Vec3, direction) -> tuple[float, float] | None:
    """Where the ray's line is inside the object's box, (enter, exit) along it, or None
    when it misses (slab test in the object's own frame)."""
    extents = (abs(obj.extents.x), abs(obj.extents.y), abs(obj.extents.z))
    rotation = obj.pose.rotation
    o = rotate_inverse(rotation, _sub(origin, obj.pose.position))
    d = rotate_inverse(rotation, direction)
    t_enter, t_exit = -math.inf, math.inf
    for axis in range(3):
        if abs(d[axis]) < 1e-12:  # parallel to this slab: inside it or never
            if abs(o[axis]) > extents[axis]:
                return None
            continue
        t1 = (-extents[axis] - o[axis]) / d[axis]
        t2 = (extents[axis] - o[axis]) / d[axis]
        t_enter, t_exit = max(t_enter, min(t1, t2)), min(t_exit, max(t1, t2))
    return (t_enter, t_exit) if t_enter <= t_exit else None


def _off_ray(obj: pb.SceneObject, origin: pb.Vec3, direction) -> _Candidate | None:
    """The object's angle off the ray, to its centre less its bounding sphere's
    angular radius; None when it is behind the origin."""
    to_centre = _sub(obj.pose.position, origin)
    along = _dot(to_centre, direction)
    if along <= 0.0:
        return None
    across = math.sqrt(max(_dot(to_centre, to_centre) - along * along, 0.0))
    radius = math.sqrt(obj.extents.x ** 2 + obj.extents.y ** 2 + obj.extents.z ** 2)
    angle = math.degrees(math.atan2(across, along) - math.atan2(radius, along))
    return _Candidate(obj, along, max(angle, 0.0))


def _size(obj: pb.SceneObject) -> float:
    """The bounding sphere's radius (a flat plane, as AR frameworks report a table top,
    is still large; an object given without a box is 0)."""
    return math.sqrt(obj.extents.x ** 2 + obj.extents.y ** 2 + obj.extents.z ** 2)


def resolve(ray: pb.Ray, objects) -> pb.Referent:
    """The referent of one (validated) ray among the scene's objects."""
    direction = _unit(ray.direction)
    candidates, hits = [], []
    for obj in objects:
        interval = _box_interval(obj, ray.origin, direction) if _has_box(obj) else None
        if interval is not None and interval[0] < 0.0 <= interval[1]:
            continue  # the ray starts inside it: never what it points at
        candidates.append(obj)
        if interval is not None and interval[0] >= 0.0:
            hits.append(_Candidate(obj, interval[0], 0.0))
    angles = [c for c in (_off_ray(obj, ray.origin, direction) for obj in candidates)
              if c is not None]
    # An object given without a box, right on the ray, is hit where its centre is.
    hits += [c for c in angles if not _has_box(c.obj) and c.angle < AMBIGUOUS_DEG]
    if hits:
        hits.sort(key=lambda c: (c.distance, c.obj.id))
        tied = [c for c in hits if c.distance - hits[0].distance < TIE_M]
        if len(tied) > 1:
            # Boxes entered together, one far smaller (a phone on a table): the small one
            # is what the wearer means; otherwise the reply asks.
            smallest = sorted(tied, key=lambda c: (_size(c.obj), c.obj.id))
            if _size(smallest[0].obj) >= SMALLER * _size(smallest[1].obj):
                return _ambiguous(ray.source, tied)
            tied = smallest
        best = tied[0]
        if not _has_box(best.obj):
            return pb.Referent(source=ray.source, match=pb.REFERENT_MATCH_NEAR,
                               object_id=best.obj.id, confidence=1.0 - best.angle / CONE_DEG,
                               distance=best.distance)
        return pb.Referent(source=ray.source, match=pb.REFERENT_MATCH_HIT,
                           object_id=best.obj.id, confidence=1.0, distance=best.distance)
    near = sorted((c for c in angles if c.angle <= CONE_DEG),
                  key=lambda c: (c.angle, c.distance, c.obj.id))
    if not near:
        return pb.Referent(source=ray.source, match=pb.REFERENT_MATCH_NONE)
    tied = [c for c in near if c.angle - near[0].angle < AMBIGUOUS_DEG]
    if len(tied) > 1:
        return _ambiguous(ray.source, tied)
    best = near[0]
    return pb.Referent(source=ray.source, match=pb.REFERENT_MATCH_NEAR, object_id=best.obj.id,
                       confidence=1.0 - best.angle / CONE_DEG, distance=best.distance)


def _ambiguous(source: int, tied: list[_Candidate]) -> pb.Referent:
    return pb.Referent(source=source, match=pb.REFERENT_MATCH_AMBIGUOUS,
                       object_id=tied[0].obj.id, confidence=1.0 / len(tied),
                       distance=tied[0].distance, candidate_ids=[c.obj.id for c in tied])


def current_rays(scene: pb.SceneFeatures | None, turn_rays=()) -> list[pb.Ray]:
    """The rays a reply is about, hands first: the turn's when it has any (where the
    wearer looked and pointed while speaking; an older scene's rays would outrank a
    fresh gaze), else the scene's."""
    rays = list(turn_rays) or list(scene.rays if scene is not None else ())
    by_source = {ray.source: ray for ray in rays}
    return [by_source[s] for s in PRIORITY if s in by_source]


def resolve_all(rays: list[pb.Ray], objects) -> list[pb.Referent]:
    return [resolve(ray, objects) for ray in rays]


# "this", "that one", "this thing": the words a pointed-at object replaces in a question.
_DEICTIC = re.compile(r"\b(this|that)\b( (thing|one|object|item)\b)?", re.IGNORECASE)
# "that" after these is a conjunction ("do you think that ..."), not a pointing word.
_CONJUNCTION_BEFORE = {"think", "thought", "know", "knew", "say", "said", "sure", "so",
                       "such", "hope", "mean", "means", "believe", "guess", "see", "tell"}
# "this"/"that" before a noun is a determiner ("is this lamp on?"): left to the hint.
_NOUN_WORDS = {word for noun, synonyms in NOUNS.items() for name in (noun, *synonyms)
               for word in name.split()}


def chosen(referents: list[pb.Referent]) -> pb.Referent | None:
    """The referent a reply is about: the first gesture that points at something, else
    the first ray's miss (hands come first in `referents`)."""
    return next((r for r in referents if r.match != pb.REFERENT_MATCH_NONE),
                referents[0] if referents else None)


def resolve_deixis(text: str, referents: list[pb.Referent], scene: pb.SceneFeatures) -> str:
    """The user's words with their first "this"/"that" replaced by the object pointed at
    ("what is this?" -> "what is the red chair?"): a small model answers a question that
    names the object (as "how far is the lamp?" is answered), where it often ignores a
    note beside it."""
    referent = chosen(referents)
    if referent is None or referent.match not in (pb.REFERENT_MATCH_HIT,
                                                  pb.REFERENT_MATCH_NEAR):
        return text
    obj = next(o for o in scene.objects if o.id == referent.object_id)
    for m in _DEICTIC.finditer(text):
        before = re.findall(r"[a-z]+", text[:m.start()].lower())
        after = re.match(r"\W*([A-Za-z]+)?", text[m.end():])
        next_word = (after.group(1) or "").lower() if after else ""
        if m.group(1).lower() == "that" and before and before[-1] in _CONJUNCTION_BEFORE:
            continue
        nouns = _NOUN_WORDS | {w for o in scene.objects for w in o.label.lower().split()}
        if not m.group(2) and re.match(r"\s+[A-Za-z]", text[m.end():]) and \
                next_word.rstrip("s") in nouns | {n.rstrip("s") for n in nouns}:
            continue  # a determiner: "this lamp"
        return f"{text[:m.start()]}the {noun_phrase(obj)}{text[m.end():]}"
    return text


def referent_hint(referents: list[pb.Referent], scene: pb.SceneFeatures) -> str:
    """The chosen referent in plain words, for the prompt, as the wearer would say it (in
    the first person: worded about "the user", a small model repeats the wording
    instead of answering)."""
    referent = chosen(referents)
    if referent is None:
        return ""
    verb = _VERBS[referent.source]
    by_id = {obj.id: obj for obj in scene.objects}
    if referent.match == pb.REFERENT_MATCH_NONE:
        return f"I am {verb} something you cannot see; say you do not know what it is."
    if referent.match == pb.REFERENT_MATCH_AMBIGUOUS:
        names = [f"the {noun_phrase(by_id[i])}" for i in referent.candidate_ids]
        either = ", ".join(names[:-1]) + " or " + names[-1]
        return f"I am {verb} {either}; ask me which one I mean."
    obj = by_id[referent.object_id]
    where = place(obj.pose, scene.camera_pose)
    direction = "ahead of me" if where.direction == "ahead" else \
        "behind me" if where.direction == "behind" else where.direction.replace("the", "my")
    return f"I am {verb} the {noun_phrase(obj)}, {direction}."


def gazed_object(referents: list[pb.Referent], scene: pb.SceneFeatures) -> pb.SceneObject | None:
    """The object the wearer's gaze ray resolved to, if it resolved to one."""
    for referent in referents:
        if referent.source == pb.RAY_SOURCE_GAZE and referent.object_id and \
                referent.match in (pb.REFERENT_MATCH_HIT, pb.REFERENT_MATCH_NEAR):
            return next((o for o in scene.objects if o.id == referent.object_id), None)
    return None
