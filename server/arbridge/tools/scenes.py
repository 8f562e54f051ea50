"""Seeded AR scenes for `arbridge eval`: varied, reproducible, with known geometry.

Each scene is a place (indoor or outdoor) with 1-8 objects typical of it, some
with attributes, placed ahead / left / right / behind the wearer at near,
mid-range or far distances, seen from a camera turned by a random yaw; some
carry a location hint, a few a low-confidence detection. Coordinates follow
Unity (metres, +X right, +Y up, +Z forward), as the server's scene text does.
Scenes are split by index: the first `TUNE_SCENES` are for tuning, the rest are
held out and never looked at while tuning.
"""

from __future__ import annotations

import math
import random

from arbridge.v1 import types_pb2 as pb

TUNE_SCENES = 100

PLACES: dict[str, tuple[bool, list[str]]] = {  # name -> (indoor, typical objects)
    "a kitchen": (True, ["fridge", "oven", "sink", "kettle", "mug", "toaster", "chair",
                         "table", "microwave", "bowl", "plate", "bottle", "trash can"]),
    "a living room": (True, ["sofa", "television", "lamp", "rug", "armchair", "plant",
                             "bookshelf", "clock", "coffee table", "painting", "cushion",
                             "remote"]),
    "an office": (True, ["desk", "chair", "monitor", "laptop", "keyboard", "printer",
                         "phone", "whiteboard", "mug", "lamp", "plant", "folder",
                         "backpack"]),
    "a bedroom": (True, ["bed", "nightstand", "lamp", "wardrobe", "mirror", "pillow",
                         "dresser", "rug", "clock", "curtain", "book"]),
    "a bathroom": (True, ["sink", "toilet", "mirror", "towel", "bathtub", "shower",
                          "toothbrush", "soap", "cabinet"]),
    "a classroom": (True, ["desk", "chair", "whiteboard", "clock", "backpack", "globe",
                           "book", "map", "pen", "computer"]),
    "a workshop": (True, ["ladder", "toolbox", "hammer", "drill", "bucket", "bench",
                          "wrench", "flashlight", "box"]),
    "a cafe": (True, ["table", "chair", "cup", "counter", "coffee machine", "cake",
                      "menu board", "plant", "lamp"]),
    "a street": (False, ["car", "bus", "bicycle", "traffic light", "streetlight", "bench",
                         "trash can", "tree", "sign", "hydrant", "person", "dog"]),
    "a park": (False, ["tree", "bench", "fountain", "dog", "bicycle", "swing", "slide",
                       "bush", "statue", "kite", "ball", "person"]),
    "a parking lot": (False, ["car", "truck", "van", "motorcycle", "cone", "sign",
                              "streetlight", "person", "parking meter"]),
    "a beach": (False, ["umbrella", "towel", "surfboard", "ball", "boat", "rock", "bag",
                        "person", "bird"]),
    "a train station": (False, ["train", "bench", "clock", "sign", "suitcase",
                                "vending machine", "person", "escalator"]),
    "a garden": (False, ["flower", "tree", "hose", "wheelbarrow", "fence", "bench",
                         "bush", "shovel", "cat", "bird"]),
}

ATTRIBUTES = {
    "color": ["red", "blue", "green", "white", "black", "yellow", "grey", "brown"],
    "material": ["wood", "metal", "plastic", "glass", "leather", "fabric"],
    "state": ["open", "closed", "empty", "full", "broken", "new"],
}

# Where an object is put: (direction, azimuth range in degrees, + = right).
DIRECTIONS = {"ahead": (-12.0, 12.0), "left": (-110.0, -35.0), "right": (35.0, 110.0),
              "behind": (150.0, 210.0)}
BANDS = {"near": (0.6, 1.3), "mid-range": (1.8, 3.5), "far": (4.5, 9.0)}


def _yaw_quaternion(yaw_deg: float) -> pb.Quaternion:
    half = math.radians(yaw_deg) / 2.0
    return pb.Quaternion(x=0.0, y=math.sin(half), z=0.0, w=math.cos(half))


def _rotate_y(x: float, z: float, yaw_deg: float) -> tuple[float, float]:
    """A vector in the camera frame -> the world frame, for a camera turned by yaw."""
    a = math.radians(yaw_deg)
    return x * math.cos(a) + z * math.sin(a), -x * math.sin(a) + z * math.cos(a)


def make_scene(index: int, seed: int = 0) -> pb.SceneFeatures:
    rng = random.Random(seed * 1_000_003 + index)
    place = rng.choice(sorted(PLACES))
    _, candidates = PLACES[place]
    count = rng.choice([1, 1, 2, 2, 3, 3, 3, 4, 4, 5, 6, 7, 8])
    labels = rng.sample(candidates, min(count, len(candidates)))
    yaw = rng.choice([0.0, 0.0, rng.uniform(-180.0, 180.0)])
    camera = pb.Pose(position=pb.Vec3(x=rng.uniform(-3, 3), y=1.6, z=rng.uniform(-3, 3)),
                     rotation=_yaw_quaternion(yaw))
    scene = pb.SceneFeatures(camera_pose=camera)
    if rng.random() < 0.6:
        scene.location_hint = place
    for i, label in enumerate(labels):
        direction = rng.choice(["ahead", "ahead", "left", "right", "behind"])
        band = rng.choice(list(BANDS))
        azimuth = rng.uniform(*DIRECTIONS[direction])
        distance = rng.uniform(*BANDS[band])
        # Horizontal placement in the camera frame, then into the world.
        cx, cz = distance * math.sin(math.radians(azimuth)), distance * math.cos(
            math.radians(azimuth))
        wx, wz = _rotate_y(cx, cz, yaw)
        obj = pb.SceneObject(
            id=f"s{index}-o{i}", label=label,
            confidence=rng.uniform(0.3, 0.49) if rng.random() < 0.07 else rng.uniform(0.6, 1.0),
            pose=pb.Pose(position=pb.Vec3(x=camera.position.x + wx, y=rng.uniform(0.2, 1.8),
                                          z=camera.position.z + wz),
                         rotation=pb.Quaternion(w=1.0)),
            extents=pb.Vec3(x=0.3, y=0.3, z=0.3))
        for key in rng.sample(sorted(ATTRIBUTES), rng.choice([0, 0, 1, 1, 2])):
            obj.attributes[key] = rng.choice(ATTRIBUTES[key])
        scene.objects.append(obj)
    return scene


def scenes(count: int, seed: int = 0) -> list[pb.SceneFeatures]:
    return [make_scene(i, seed) for i in range(count)]


def split(all_scenes: list) -> tuple[list, list]:
    """(tuning scenes, held-out scenes)."""
    return all_scenes[:TUNE_SCENES], all_scenes[TUNE_SCENES:]
