"""Where an object is as the wearer sees it: side, distance and height.

Sides and heights are meant as a person means them: relative to the way the wearer
faces (the line of sight flattened onto the floor) and to gravity, whether the head
is tilted down at a table or rolled. Only the view angle uses the head's full pose.
Every place the server says or checks (scene text, captions, answers, the caption
rules, the scorers) comes from `seen`, so they cannot disagree.

Coordinates follow Unity: metres, +X right, +Y up, +Z forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from arbridge.v1 import types_pb2 as pb

AHEAD_DEG = 20.0  # within this of straight ahead is "ahead"
BEHIND_DEG = 135.0  # beyond this is "behind"
NEAR_M = 1.5
FAR_M = 4.0
ABOVE_DEG = 25.0  # this far above eye level (elevation) is "above you"
ABOVE_M = 0.6  # ... and at least this much higher than the eyes
OVERHEAD_DEG = 60.0
# Heights below the eyes (the app chooses the world's origin, so the floor is found
# from the eyes, not from world Y 0): an object's centre this far down is on the floor,
# further down (stairs, a balcony) below the wearer.
FLOOR_FROM_M, FLOOR_TO_M = -2.0, -1.1


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


def _rotate(q: pb.Quaternion, v: tuple[float, float, float]) -> tuple[float, ...]:
    """v rotated by q (camera -> world)."""
    return rotate_inverse(pb.Quaternion(x=-q.x, y=-q.y, z=-q.z, w=q.w), v)


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

    @property
    def band(self) -> str:
        return "near" if self.distance < NEAR_M else "far" if self.distance > FAR_M \
            else "mid-range"


def seen(obj: pb.SceneObject, camera: pb.Pose) -> Seen:
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
    elif abs(azimuth) > BEHIND_DEG:
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


def overhead(s: Seen) -> bool:
    return above(s) and s.elevation >= OVERHEAD_DEG


def below(s: Seen) -> bool:
    return s.rise < FLOOR_FROM_M


def height_said(s: Seen) -> str:
    """Where the object is up or down, in words ('' in between)."""
    if above(s):
        return "overhead" if s.elevation >= OVERHEAD_DEG else "above you"
    if on_the_floor(s):
        return "on the floor"
    return "below you" if below(s) else ""


@dataclass(frozen=True)
class Placement:
    direction: str  # "ahead", "to the left", "to the right", "behind"
    distance_band: str  # "near", "mid-range", "far"
    distance_m: float
    height: str = ""  # "overhead", "above you", "on the floor", "below you" or ""


_DIRECTIONS = {"ahead": "ahead", "left": "to the left", "right": "to the right",
               "behind": "behind"}


def place(obj_pose: pb.Pose, camera: pb.Pose) -> Placement:
    """`seen`, as the words the scene text uses."""
    s = seen(pb.SceneObject(pose=obj_pose), camera)
    return Placement(_DIRECTIONS[s.side], s.band, s.distance, height_said(s))
