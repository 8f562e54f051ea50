"""A scene as compact, deterministic text a language model can read.

Each object becomes one line: its label, where it is relative to the camera
(ahead / to the left / to the right / behind; near / mid-range / far, with
the distance), and its attributes. Lines are ordered nearest first, ties
broken by label and id, so the same scene always gives the same text.

Coordinates follow Unity: metres, +X right, +Y up, +Z forward.
"""

from __future__ import annotations

import math
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


def _rotate_inverse(q: pb.Quaternion, v: tuple[float, float, float]) -> tuple[float, ...]:
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
    x, y, z = _rotate_inverse(camera.rotation, rel)
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


def describe_object(obj: pb.SceneObject, camera: pb.Pose) -> str:
    parts = [obj.label.strip()]
    if obj.HasField("pose"):
        p = place(obj.pose, camera)
        parts.append(f"{p.direction}, {p.distance_band} ({p.distance_m:.1f} m)")
    else:
        parts.append("position unknown")
    line = ": ".join(parts)
    if obj.attributes:
        attrs = ", ".join(f"{k}={obj.attributes[k]}" for k in sorted(obj.attributes))
        line += f"; {attrs}"
    if 0.0 < obj.confidence < LOW_CONFIDENCE:
        line += " (uncertain)"
    return line


def _sort_key(obj: pb.SceneObject, camera: pb.Pose) -> tuple:
    distance = place(obj.pose, camera).distance_m if obj.HasField("pose") else math.inf
    return (distance, obj.label, obj.id)


def describe_scene(scene: pb.SceneFeatures) -> str:
    """The scene as a few lines of text ('' for an empty scene)."""
    lines = []
    if scene.location_hint.strip():
        lines.append(f"Location: {scene.location_hint.strip()}.")
    if scene.objects:
        camera = scene.camera_pose
        lines.append("Objects in view, nearest first:")
        for obj in sorted(scene.objects, key=lambda o: _sort_key(o, camera)):
            lines.append(f"- {describe_object(obj, camera)}")
    return "\n".join(lines)
