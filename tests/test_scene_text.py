from __future__ import annotations

import math

from arbridge.serving.scene_text import describe_scene, mention_hint, place, side_hint
from arbridge.v1 import types_pb2 as pb


def pose(x, y, z, yaw_deg=0.0):
    half = math.radians(yaw_deg) / 2  # rotation about +Y (Unity: positive = turn right)
    return pb.Pose(position=pb.Vec3(x=x, y=y, z=z),
                   rotation=pb.Quaternion(y=math.sin(half), w=math.cos(half)))


def test_directions_and_distance_bands_with_identity_camera():
    cam = pose(0, 0, 0)
    assert place(pose(0, 0, 1), cam).direction == "ahead"
    assert place(pose(-1, 0, 1), cam).direction == "to the left"
    assert place(pose(1, 0, 1), cam).direction == "to the right"
    assert place(pose(0, 0, -2), cam).direction == "behind"
    assert place(pose(0, 0, 1), cam).distance_band == "near"
    assert place(pose(0, 0, 3), cam).distance_band == "mid-range"
    assert place(pose(0, 0, 6), cam).distance_band == "far"
    assert math.isclose(place(pose(3, 0, 4), cam).distance_m, 5.0, rel_tol=1e-6)


def test_camera_rotation_and_position_are_taken_into_account():
    # Camera at (5, 0, 5), turned 90 degrees right: world +X is now ahead.
    cam = pose(5, 0, 5, yaw_deg=90)
    assert place(pose(7, 0, 5), cam).direction == "ahead"
    assert place(pose(5, 0, 7), cam).direction == "to the left"
    assert place(pose(5, 0, 3), cam).direction == "to the right"


def test_unset_rotation_means_identity():
    cam = pb.Pose(position=pb.Vec3())
    assert place(pose(-2, 0, 0.5), cam).direction == "to the left"


def test_description_is_deterministic_nearest_first():
    objs = [
        pb.SceneObject(id="b", label="table", pose=pose(0.2, 0, 2.0),
                       attributes={"material": "glass", "color": "white"}),
        pb.SceneObject(id="a", label="chair", pose=pose(-1, 0, 0.5), confidence=0.3),
        pb.SceneObject(id="c", label="lamp"),
    ]
    scene = pb.SceneFeatures(objects=objs, camera_pose=pose(0, 0, 0), location_hint="kitchen")
    text = describe_scene(scene)
    assert text == (
        "You are in kitchen. "
        "A chair (uncertain) is to the left, near you, 1.1 m away. "
        "A white glass table is ahead, 2.0 m away. "
        "A lamp is somewhere nearby."
    )
    shuffled = pb.SceneFeatures(objects=[objs[2], objs[0], objs[1]], camera_pose=pose(0, 0, 0),
                                location_hint="kitchen")
    assert describe_scene(shuffled) == text


def test_far_objects_behind_and_articles():
    scene = pb.SceneFeatures(objects=[
        pb.SceneObject(label="orange", pose=pose(0, 0, -6)),
        pb.SceneObject(label="door", pose=pose(5, 0, 5)),
    ])
    assert describe_scene(scene) == (
        "An orange is behind you, far away, 6.0 m. A door is to the right, far away, 7.1 m.")


def test_empty_scene_is_empty_text():
    assert describe_scene(pb.SceneFeatures()) == ""


def test_side_hint_answers_from_the_geometry():
    scene = pb.SceneFeatures(camera_pose=pose(5, 0, 5, yaw_deg=90), objects=[
        pb.SceneObject(id="a", label="lamp", pose=pose(5, 0, 8)),     # left, 3 m
        pb.SceneObject(id="b", label="cup", pose=pose(5, 0, 6)),      # left, 1 m
        pb.SceneObject(id="c", label="door", pose=pose(9, 0, 5)),     # ahead
        pb.SceneObject(id="d", label="plant", pose=pose(2, 0, 5)),    # behind
        pb.SceneObject(id="e", label="ghost")])                       # no pose: not placed
    assert side_hint(scene, "What is on my left?") == "On your left: the cup, the lamp."
    assert side_hint(scene, "anything to the left of me") == "On your left: the cup, the lamp."
    assert side_hint(scene, "What's in front of me?") == "Ahead of you: the door."
    assert side_hint(scene, "Is something behind me?") == "Behind you: the plant."
    assert side_hint(scene, "What is on my right?") == "Nothing is on your right."
    assert side_hint(scene, "How far away is the lamp?") == ""
    assert side_hint(scene, "I left my keys somewhere") == ""


def test_mention_hint_gives_the_places_of_the_objects_a_question_names():
    scene = pb.SceneFeatures(camera_pose=pose(0, 0, 0), objects=[
        pb.SceneObject(id="a", label="lamp", pose=pose(-2, 0, 1)),
        pb.SceneObject(id="b", label="traffic light", pose=pose(0, 0, 5)),
        pb.SceneObject(id="c", label="cup", pose=pose(1, 0, 1))])
    lamp = mention_hint(scene, "How far away is the lamp?")
    assert lamp.startswith("A lamp is to the left") and "2.2 m" in lamp
    assert mention_hint(scene, "Are the traffic lights on?").startswith("A traffic light is ahead")
    both = mention_hint(scene, "Is the cup closer than the lamp?")
    assert both.index("cup") < both.index("lamp")  # nearest first, as in the scene text
    assert mention_hint(scene, "Is there a cupboard here?") == ""  # whole words only
    assert mention_hint(scene, "What time is it?") == ""


def test_heights_states_and_a_pitched_head_in_the_scene_text():
    # Looking 40 degrees down at the table: it is still ahead, not "below"; the smoke
    # alarm is overhead, the cat down the stairs below; states read as states.
    half = math.radians(40.0) / 2
    camera = pb.Pose(position=pb.Vec3(y=1.6), rotation=pb.Quaternion(x=math.sin(half),
                                                                      w=math.cos(half)))
    scene = pb.SceneFeatures(camera_pose=camera, objects=[
        pb.SceneObject(id="t", label="table", pose=pb.Pose(position=pb.Vec3(y=0.7, z=2.0))),
        pb.SceneObject(id="s", label="smoke alarm",
                       pose=pb.Pose(position=pb.Vec3(x=0.2, y=3.0, z=0.3))),
        pb.SceneObject(id="c", label="cat", pose=pb.Pose(position=pb.Vec3(y=-2.0, z=3.5))),
        pb.SceneObject(id="o", label="oven", attributes={"state": "on", "color": "black"},
                       pose=pb.Pose(position=pb.Vec3(x=-2.0, y=1.0, z=1.0)))])
    text = describe_scene(scene)
    assert "A table is ahead, 2.2 m away." in text
    assert "A smoke alarm is overhead, near you, 1.4 m away." in text
    assert "A cat is ahead, below you, far away, 5.0 m." in text
    assert "A switched-on black oven is to the left" in text
