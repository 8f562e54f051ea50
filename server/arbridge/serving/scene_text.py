"""A scene as compact, deterministic text a language model can read.

Each object becomes one short sentence: its noun phrase (phrasing.py: adjectives
in English order, states as states), where it is as the wearer faces
(wearer_frame.py: ahead / to the left / to the right / behind you, and overhead,
above, on the floor or below) and how far (near / mid-range / far, with the
distance). Sentences are ordered nearest first, ties broken by label and id, so
the same scene always gives the same text. Small models follow plain sentences
much better than key=value lists (we compared both on SmolLM2).
"""

from __future__ import annotations

import math
import re

from arbridge.serving.phrasing import a, is_pair_noun, looks_plural, noun_phrase
from arbridge.serving.wearer_frame import Placement, place
from arbridge.v1 import types_pb2 as pb

LOW_CONFIDENCE = 0.5
__all__ = ["describe_object", "describe_scene", "mention_hint", "noun_phrase", "side_hint",
           "where_said"]


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def where_said(p: Placement) -> str:
    """'to the left', 'overhead', 'ahead, above you', 'behind you, below you'. Not "on
    the floor": most things are, and saying so of each costs every prompt tokens."""
    if p.height == "overhead":  # straight up has no side
        return "overhead"
    direction = "behind you" if p.direction == "behind" else p.direction
    return f"{direction}, {p.height}" if p.height in ("above you", "below you") else direction


def describe_object(obj: pb.SceneObject, camera: pb.Pose, metres: bool = True) -> str:
    """One sentence, e.g. 'A red wood chair is to the left, 1.6 m away.' Without
    `metres` the distance is said in words only ('A red wood chair is to the left.')."""
    phrase = noun_phrase(obj)
    noun = _capital(a(phrase))
    be = "are" if looks_plural(phrase) and not is_pair_noun(phrase) else "is"
    if 0.0 < obj.confidence < LOW_CONFIDENCE:
        noun += " (uncertain)"
    if not obj.HasField("pose"):
        return f"{noun} {be} somewhere nearby."
    p = place(obj.pose, camera)
    direction = where_said(p)
    if not metres:
        where = {"near": ", near you", "far": ", far away"}.get(p.distance_band, "")
        return f"{noun} {be} {direction}{where}."
    if p.distance_band == "near":
        where = f"near you, {p.distance_m:.1f} m away"
    elif p.distance_band == "far":
        where = f"far away, {p.distance_m:.1f} m"
    else:
        where = f"{p.distance_m:.1f} m away"
    return f"{noun} {be} {direction}, {where}."


def _sort_key(obj: pb.SceneObject, camera: pb.Pose) -> tuple:
    distance = place(obj.pose, camera).distance_m if obj.HasField("pose") else math.inf
    return (distance, obj.label, obj.id)


def describe_scene(scene: pb.SceneFeatures, metres: bool = True) -> str:
    """The scene as a few short sentences, nearest object first ('' if empty)."""
    sentences = []
    if scene.location_hint.strip():
        sentences.append(f"You are in {scene.location_hint.strip()}.")
    camera = scene.camera_pose
    for obj in sorted(scene.objects, key=lambda o: _sort_key(o, camera)):
        sentences.append(describe_object(obj, camera, metres))
    return " ".join(sentences)


# "on my left", "to the right of me", "behind me", "in front of me" -> a Placement direction
_SIDE_WORDS = [
    (re.compile(r"\b(on|to) (my|the) left\b|\bleft of me\b", re.I), "to the left"),
    (re.compile(r"\b(on|to) (my|the) right\b|\bright of me\b", re.I), "to the right"),
    (re.compile(r"\bbehind (me|us)\b", re.I), "behind"),
    (re.compile(r"\b(in front of (me|us)|ahead( of (me|us))?)\b", re.I), "ahead"),
]
_SIDE_NAMES = {"to the left": "on your left", "to the right": "on your right",
               "behind": "behind you", "ahead": "ahead of you"}


def side_hint(scene: pb.SceneFeatures, question: str) -> str:
    """For a question about one side of the wearer, what the geometry puts there, in
    words ("On your left: the lamp."); '' for any other question."""
    camera = scene.camera_pose
    for pattern, direction in _SIDE_WORDS:
        if pattern.search(question):
            nearest_first = sorted(scene.objects, key=lambda o: _sort_key(o, camera))
            labels = [o.label.strip() for o in nearest_first
                      if o.HasField("pose") and o.label.strip()
                      and place(o.pose, camera).direction == direction]
            where = _SIDE_NAMES[direction]
            if not labels:
                return f"Nothing is {where}."
            return f"{where[0].upper()}{where[1:]}: " + ", ".join(f"the {x}" for x in labels) + "."
    return ""


def mention_hint(scene: pb.SceneFeatures, question: str) -> str:
    """For the scene objects a question names ("how far is the lamp?"), their place,
    as the scene text says it ("A lamp is to the left, near you, 1.5 m away."); of
    several with the label, those whose whole noun phrase the question says."""
    words = set(re.findall(r"[a-z]+", question.lower()))
    text = " " + " ".join(re.findall(r"[a-z]+", question.lower())) + " "
    camera = scene.camera_pose
    out = []
    for obj in sorted(scene.objects, key=lambda o: _sort_key(o, camera)):
        label = obj.label.strip().lower()
        if not label or not obj.HasField("pose"):
            continue
        named = (f" {label} " in text or f" {label}s " in text or f" {label}es " in text
                 if " " in label else label in words or f"{label}s" in words)
        if named:
            out.append(obj)
    # "the yellow book" beside a red one: only the object the words fit whole.
    exact = [obj for obj in out if f" {' '.join(re.findall('[a-z]+', noun_phrase(obj).lower()))} "
             in text]
    return " ".join(describe_object(obj, camera) for obj in exact or out)
