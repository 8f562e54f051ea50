"""Gaze and hand rays -> the object they point at: hand-made geometry cases."""

from __future__ import annotations

import math

import grpc
import pytest

from arbridge.serving.referents import current_rays, referent_hint, resolve, resolve_deixis
from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import types_pb2 as pb

from conftest import collect

IDENTITY = pb.Quaternion(w=1.0)


def box(object_id: str, x: float, z: float, half: float = 0.25, label: str = "box",
        y: float = 0.0, rotation: pb.Quaternion = IDENTITY, **attributes) -> pb.SceneObject:
    obj = pb.SceneObject(id=object_id, label=label,
                         pose=pb.Pose(position=pb.Vec3(x=x, y=y, z=z), rotation=rotation),
                         extents=pb.Vec3(x=half, y=half, z=half))
    obj.attributes.update(attributes)
    return obj


def point(object_id: str, x: float, z: float) -> pb.SceneObject:
    """An object without extents (a detector that gives only a position)."""
    return pb.SceneObject(id=object_id, label="cup", pose=pb.Pose(position=pb.Vec3(x=x, z=z)))


def ray(dx: float, dy: float, dz: float, origin=(0.0, 0.0, 0.0),
        source=pb.RAY_SOURCE_GAZE) -> pb.Ray:
    return pb.Ray(source=source, origin=pb.Vec3(x=origin[0], y=origin[1], z=origin[2]),
                  direction=pb.Vec3(x=dx, y=dy, z=dz))


def test_a_ray_through_a_box_hits_it_at_its_face():
    r = resolve(ray(0, 0, 1), [box("a", 0, 3), box("b", 2, 3)])
    assert (r.match, r.object_id, r.confidence) == (pb.REFERENT_MATCH_HIT, "a", 1.0)
    assert r.distance == pytest.approx(2.75)


def test_the_closer_box_hides_the_farther_one():
    objects = [box("far", 0, 5, half=1.0), box("near", 0, 2)]
    assert resolve(ray(0, 0, 1), objects).object_id == "near"
    # Not hidden once the ray passes beside the near box: it reaches the far one.
    assert resolve(ray(0.2, 0, 1), objects).object_id == "far"


def test_a_near_miss_is_near_within_the_cone_and_none_outside():
    objects = [box("a", 0, 4)]
    # 0.5 m beside the box's face at 4 m: outside the box, ~4 degrees off its sphere.
    r = resolve(ray(0.75 / 4, 0, 1), objects)
    assert r.match == pb.REFERENT_MATCH_NEAR and r.object_id == "a"
    assert 0.0 < r.confidence < 1.0
    # 45 degrees off: nothing there, said so.
    assert resolve(ray(1, 0, 1), objects).match == pb.REFERENT_MATCH_NONE


def test_an_object_without_extents_is_found_by_angle():
    objects = [point("cup", 0.1, 2.0), point("pen", -1.0, 2.0)]
    r = resolve(ray(0, 0, 1), objects)
    assert (r.match, r.object_id) == (pb.REFERENT_MATCH_NEAR, "cup")
    assert r.confidence == pytest.approx(1 - math.degrees(math.atan2(0.1, 2.0)) / 10, abs=1e-4)


def test_objects_behind_the_ray_are_never_referents():
    objects = [box("behind", 0, -3), point("also_behind", 0, -1)]
    assert resolve(ray(0, 0, 1), objects).match == pb.REFERENT_MATCH_NONE
    # The ray turned round: the object given as a point is on it, before the box.
    assert resolve(ray(0, 0, -1), objects).object_id == "also_behind"


def test_a_box_the_origin_is_inside_is_not_what_it_points_at():
    rug = box("rug", 0, 0, half=2.0, label="rug")
    lamp = box("lamp", 0, 4, label="lamp")
    assert resolve(ray(0, 0, 1), [rug, lamp]).object_id == "lamp"
    # Not by angle either: looking at empty space from inside the room box is nothing.
    assert resolve(ray(0, 1, 0), [rug, lamp]).match == pb.REFERENT_MATCH_NONE


def test_a_small_object_on_a_big_one_is_what_the_ray_means():
    table = pb.SceneObject(id="table", label="table", pose=pb.Pose(position=pb.Vec3(z=2.0)),
                           extents=pb.Vec3(x=0.8, y=0.4, z=0.5))
    phone = pb.SceneObject(id="phone", label="phone",
                           pose=pb.Pose(position=pb.Vec3(y=0.405, z=1.6)),
                           extents=pb.Vec3(x=0.04, y=0.005, z=0.08))
    down = ray(0, -1.195, 1.6, origin=(0, 1.6, 0))  # from the eyes to the phone
    r = resolve(down, [table, phone])
    assert (r.match, r.object_id) == (pb.REFERENT_MATCH_HIT, "phone")
    # The table as AR frameworks report a plane: no thickness, still the larger.
    table.extents.y = 0.0
    table.pose.position.y = 0.4
    assert resolve(down, [table, phone]).object_id == "phone"


def test_an_object_without_a_box_on_the_ray_is_hit_before_a_wall_behind_it():
    wall = pb.SceneObject(id="wall", label="wall", pose=pb.Pose(position=pb.Vec3(z=3.0)),
                          extents=pb.Vec3(x=3.0, y=2.0, z=0.05))
    r = resolve(ray(0, 0, 1), [wall, point("cup", 0.0, 1.5)])
    assert (r.match, r.object_id) == (pb.REFERENT_MATCH_NEAR, "cup")


def test_a_rotated_box_is_hit_as_rotated():
    # A thin board 2 m wide along x, at z = 3; turned 90 degrees about y it lies
    # along z, so a ray at x = 0.8 misses it.
    board = pb.SceneObject(id="board", label="board",
                           pose=pb.Pose(position=pb.Vec3(z=3.0), rotation=IDENTITY),
                           extents=pb.Vec3(x=1.0, y=0.5, z=0.05))
    assert resolve(ray(0, 0, 1, origin=(0.8, 0, 0)), [board]).match == pb.REFERENT_MATCH_HIT
    s = math.sqrt(0.5)
    board.pose.rotation.CopyFrom(pb.Quaternion(y=s, w=s))
    r = resolve(ray(0, 0, 1, origin=(0.8, 0, 0)), [board])
    assert r.match != pb.REFERENT_MATCH_HIT


def test_two_boxes_entered_at_the_same_depth_are_ambiguous():
    objects = [box("left", -0.2, 3), box("right", 0.2, 3)]
    r = resolve(ray(0, 0, 1), objects)
    assert r.match == pb.REFERENT_MATCH_AMBIGUOUS
    assert sorted(r.candidate_ids) == ["left", "right"] and r.confidence == 0.5


def test_two_objects_equally_off_the_ray_are_ambiguous():
    objects = [point("a", -0.2, 3), point("b", 0.2, 3), point("c", 2.0, 3)]
    r = resolve(ray(0, 0, 1), objects)
    assert r.match == pb.REFERENT_MATCH_AMBIGUOUS and sorted(r.candidate_ids) == ["a", "b"]


def test_a_turn_s_rays_replace_the_scene_s_and_hands_come_first():
    scene = pb.SceneFeatures(rays=[ray(0, 0, 1), ray(1, 0, 0, source=pb.RAY_SOURCE_LEFT_HAND)])
    assert [r.source for r in current_rays(scene)] == [pb.RAY_SOURCE_LEFT_HAND,
                                                       pb.RAY_SOURCE_GAZE]
    # What the wearer did while speaking: an old hand ray does not outrank it.
    rays = current_rays(scene, [ray(0, 1, 0)])
    assert [(r.source, r.direction.y) for r in rays] == [(pb.RAY_SOURCE_GAZE, 1.0)]


def test_the_hint_names_the_pointed_object_or_says_there_is_none():
    scene = pb.SceneFeatures(camera_pose=pb.Pose(rotation=IDENTITY),
                             objects=[box("a", 0, 3, label="chair", color="red"),
                                      box("b", -3, 1, label="lamp")])
    gaze_at_lamp = resolve(ray(-3, 0, 1), scene.objects)
    hand_at_chair = resolve(ray(0, 0, 1, source=pb.RAY_SOURCE_RIGHT_HAND), scene.objects)
    hint = referent_hint([hand_at_chair, gaze_at_lamp], scene)
    assert "pointing at the red chair" in hint and "lamp" not in hint
    nothing = resolve(ray(0, 1, 0), scene.objects)
    assert "cannot see" in referent_hint([nothing], scene)
    both = resolve(ray(0, 0, 1), [box("x", -0.2, 3, label="cup"), box("y", 0.2, 3, label="mug")])
    scene.objects.extend([box("x", -0.2, 3, label="cup"), box("y", 0.2, 3, label="mug")])
    assert referent_hint([both], scene).endswith("ask me which one I mean.")
    # The question's "this" becomes the object, where the ray found one.
    assert resolve_deixis("What is this thing?", [hand_at_chair, gaze_at_lamp], scene) == \
        "What is the red chair?"
    assert resolve_deixis("Is that heavy?", [both], scene) == "Is that heavy?"
    assert resolve_deixis("Do you think that this is old?", [hand_at_chair], scene) == \
        "Do you think that the red chair is old?"
    assert resolve_deixis("And that?", [hand_at_chair], scene) == "And the red chair?"
    assert resolve_deixis("Make that glow.", [hand_at_chair], scene) == \
        "Make the red chair glow."
    assert resolve_deixis("Is this lamp on?", [hand_at_chair], scene) == "Is this lamp on?"
    assert resolve_deixis("What is this?", [nothing], scene) == "What is this?"


@pytest.mark.parametrize("bad, field, problem", [
    (pb.Ray(direction=pb.Vec3(z=1)), "rays[0].source", "GAZE"),
    (pb.Ray(source=pb.RAY_SOURCE_GAZE), "rays[0].direction", "must not be zero"),
    (pb.Ray(source=pb.RAY_SOURCE_GAZE, origin=pb.Vec3(x=math.nan), direction=pb.Vec3(z=1)),
     "rays[0].origin.x", "finite"),
    (pb.Ray(source=pb.RAY_SOURCE_GAZE, direction=pb.Vec3(y=math.inf)),
     "rays[0].direction.y", "finite"),
])
async def test_degenerate_rays_are_invalid_arguments_naming_the_field(tiny_server, bad, field,
                                                                      problem):
    stub = tiny_server.stub
    scene = pb.SceneFeatures(objects=[box("a", 0, 3)], rays=[bad])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(stub.DescribeScene(spb.DescribeSceneRequest(scene=scene)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"scene.{field}: ") and problem in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(stub.Ask(spb.AskRequest(start=spb.ConverseStart(
            scene=pb.SceneFeatures(objects=[box("a", 0, 3)])),
            user_turn=spb.UserTurn(text="what is this?", rays=[bad]))))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"user_turn.{field}: ")


async def test_two_rays_of_one_source_are_refused(tiny_server):
    scene = pb.SceneFeatures(objects=[box("a", 0, 3)], rays=[ray(0, 0, 1), ray(0, 1, 0)])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(tiny_server.stub.DescribeScene(spb.DescribeSceneRequest(scene=scene)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("scene.rays[1].source: ")


async def test_every_completion_reports_the_referents(tiny_server):
    stub = tiny_server.stub
    objects = [box("a", 0, 3), box("b", 3, 3)]
    sampling = pb.SamplingParams(max_new_tokens=3, num_return_sequences=2)
    _, done, _ = await collect(stub.DescribeScene(spb.DescribeSceneRequest(
        scene=pb.SceneFeatures(objects=objects, rays=[ray(0, 0, 1)]), sampling=sampling)))
    assert [[(r.object_id, r.match) for r in c.referents] for c in done] == \
        [[("a", pb.REFERENT_MATCH_HIT)]] * 2
    # A dialogue turn: the rays sent with the turn, hand first, in place of the scene's.
    start = spb.ConverseStart(scene=pb.SceneFeatures(objects=objects, rays=[ray(1, 0, 1)]))
    _, done, _ = await collect(stub.Ask(spb.AskRequest(start=start, user_turn=spb.UserTurn(
        text="what is this?", sampling=sampling, rays=[
            ray(0, 0, 1), ray(1, 0, 0, source=pb.RAY_SOURCE_RIGHT_HAND, origin=(0, 0, 3))]))))
    assert [(r.source, r.object_id) for r in done[0].referents] == [
        (pb.RAY_SOURCE_RIGHT_HAND, "b"), (pb.RAY_SOURCE_GAZE, "a")]
