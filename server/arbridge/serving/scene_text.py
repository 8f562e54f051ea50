"""A scene as compact, deterministic text a language model can read.

Each object becomes one short sentence: its attribute values as adjectives
(in key order), its label, where it is relative to the camera (ahead / to the
left / to the right / behind you) and how far (near / mid-range / far, with
the distance). Sentences are ordered nearest first, ties broken by label and
id, so the same scene always gives the same text. Small models follow plain
sentences much better than key=value lists (we compared both on SmolLM2).

Coordinates follow Unity: metres, +X right, +Y up, +Z forward.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from arbridge.v1 import types_pb2 as pb

NEAR_M = 1.5
FAR_M = 4.0
AHEAD_DEG = 20.0
LOW_CONFIDENCE = 0.5


@dataclass(frozen=True)
class Placement:
    direction: str  # "ahead", "to the left", "to the right", "behind"
    distance_band: str  # "near", "mid-range", "far"
    distance_m: float


def rotate_inverse(q: pb.Quaternion, v: tuple[float, float, float]) -> tuple[float, ...]:
    """Rotate v by the inverse of unit quaternion q (world -> camera frame)."""
    x, y, z, w = q.x, q.y, q.z, q.w
    norm = math.sqrt(x * x + y * y + z * z + w * w)
    if norm == 0.0:
        return v
    # conjugate = inverse for a unit quaternion
    x, y, z, w = -x / norm, -y / norm, -z / norm, w / norm
    vx, vy, vz = v
    # v' = v + 2w(u x v) + 2u x (u x v), u = (x, y, z)
    cx, cy, cz = y * vz - z * vy, z * vx - x * vz, x * vy - y * vx
    ccx, ccy, ccz = y * cz - z * cy, z * cx - x * cz, x * cy - y * cx
    return (vx + 2 * (w * cx + ccx), vy + 2 * (w * cy + ccy), vz + 2 * (w * cz + ccz))


def place(obj_pose: pb.Pose, camera: pb.Pose) -> Placement:
    """Where an object is as the wearer sees it."""
    rel = (obj_pose.position.x - camera.position.x,
           obj_pose.position.y - camera.position.y,
           obj_pose.position.z - camera.position.z)
    x, y, z = rotate_inverse(camera.rotation, rel)
    distance = math.sqrt(x * x + y * y + z * z)
    azimuth = math.degrees(math.atan2(x, z))  # 0 = straight ahead, + = right
    if abs(azimuth) <= AHEAD_DEG:
        direction = "ahead"
    elif abs(azimuth) > 135.0:
        direction = "behind"
    elif azimuth < 0:
        direction = "to the left"
    else:
        direction = "to the right"
    band = "near" if distance < NEAR_M else "far" if distance > FAR_M else "mid-range"
    return Placement(direction, band, distance)


def _article(word: str) -> str:
    return "An" if word[:1].lower() in "aeiou" else "A"


def noun_phrase(obj: pb.SceneObject) -> str:
    """The object's attribute values as adjectives (in key order), then its label:
    'red wood chair'."""
    adjectives = [obj.attributes[k].strip() for k in sorted(obj.attributes)
                  if obj.attributes[k].strip()]
    return " ".join([*adjectives, obj.label.strip()])


def describe_object(obj: pb.SceneObject, camera: pb.Pose, metres: bool = True) -> str:
    """One sentence, e.g. 'A red wood chair is to the left, 1.6 m away.' Without
    `metres` the distance is said in words only ('A red wood chair is to the left.')."""
    noun = noun_phrase(obj)
    if 0.0 < obj.confidence < LOW_CONFIDENCE:
        noun += " (uncertain)"
    if not obj.HasField("pose"):
        return f"{_article(noun)} {noun} is somewhere nearby."
    p = place(obj.pose, camera)
    direction = "behind you" if p.direction == "behind" else p.direction
    if not metres:
        where = {"near": ", near you", "far": ", far away"}.get(p.distance_band, "")
        return f"{_article(noun)} {noun} is {direction}{where}."
    if p.distance_band == "near":
        where = f"near you, {p.distance_m:.1f} m away"
    elif p.distance_band == "far":
        where = f"far away, {p.distance_m:.1f} m"
    else:
        where = f"{p.distance_m:.1f} m away"
    return f"{_article(noun)} {noun} is {direction}, {where}."


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
