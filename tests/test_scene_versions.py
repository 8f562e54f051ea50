"""Scene versions echoed by every Completion, and scene deltas on dialogue sessions."""

from __future__ import annotations

import grpc
import pytest

from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import types_pb2 as pb

from conftest import collect

SAMPLING = pb.SamplingParams(max_new_tokens=4)


def obj(object_id: str, label: str, z: float = 1.0) -> pb.SceneObject:
    return pb.SceneObject(id=object_id, label=label, pose=pb.Pose(position=pb.Vec3(z=z)))


SCENE = pb.SceneFeatures(objects=[obj("a", "chair"), obj("b", "lamp")], scene_version=1)


async def test_completions_echo_the_scene_version(tiny_server):
    _, done, _ = await collect(tiny_server.stub.DescribeScene(spb.DescribeSceneRequest(
        scene=SCENE, sampling=pb.SamplingParams(max_new_tokens=4, num_return_sequences=2))))
    assert [c.scene_version for c in done] == [1, 1]
    info = await tiny_server.stub.GetModelInfo(spb.GetModelInfoRequest())
    assert {"resumable_streams", "scene_versions", "scene_delta"} <= set(info.features)


async def test_an_ask_delta_changes_the_session_scene_in_place(tiny_server):
    stub = tiny_server.stub
    _, _, events = await collect(stub.Ask(spb.AskRequest(
        start=spb.ConverseStart(scene=SCENE), user_turn=spb.UserTurn(text="hi",
                                                                      sampling=SAMPLING))))
    session = events[0][2].session_id
    delta = pb.SceneDelta(upsert=[obj("a", "chair", z=3.0), obj("c", "plant")],
                          remove_ids=["b"], scene_version=2)
    _, done, _ = await collect(stub.Ask(spb.AskRequest(
        session_id=session, scene_delta=delta, user_turn=spb.UserTurn(text="and now?",
                                                                      sampling=SAMPLING))))
    assert done[0].scene_version == 2
    scene = tiny_server.server.servicer._sessions.get(session, "").dialogue.state.scene
    assert [(o.id, o.label, o.pose.position.z) for o in scene.objects] == [
        ("a", "chair", 3.0), ("c", "plant", 1.0)]  # moved in place, added at the end
    assert scene.scene_version == 2


async def test_converse_applies_deltas_and_echoes_their_version(tiny_server):
    requests = [
        spb.ConverseRequest(start=spb.ConverseStart(scene=SCENE)),
        spb.ConverseRequest(scene_delta=pb.SceneDelta(remove_ids=["a"], scene_version=7)),
        spb.ConverseRequest(user_turn=spb.UserTurn(text="what is here?", sampling=SAMPLING))]
    _, done, _ = await collect(tiny_server.stub.Converse(iter(requests)))
    assert done[0].scene_version == 7
    assert [g.object_id for g in done[0].grounding] in ([], ["b"])  # "a" is gone


@pytest.mark.parametrize("delta, field", [
    (pb.SceneDelta(remove_ids=["nope"]), "scene_delta.remove_ids[0]"),
    (pb.SceneDelta(upsert=[pb.SceneObject(label="cup")]), "scene_delta.upsert[0].id"),
    (pb.SceneDelta(upsert=[pb.SceneObject(id="x", label=" ")]), "scene_delta.upsert[0].label"),
    (pb.SceneDelta(upsert=[obj("a", "cup")], remove_ids=["a"]), "scene_delta.upsert[0].id"),
    (pb.SceneDelta(camera_pose=pb.Pose(position=pb.Vec3(x=float("nan")))),
     "scene_delta.camera_pose"),
])
async def test_bad_deltas_name_the_field(tiny_server, delta, field):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(tiny_server.stub.Ask(spb.AskRequest(
            start=spb.ConverseStart(scene=SCENE), scene_delta=delta,
            user_turn=spb.UserTurn(text="hi", sampling=SAMPLING))))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field), err.value.details()


async def test_a_bad_converse_delta_names_its_message(tiny_server):
    requests = [spb.ConverseRequest(start=spb.ConverseStart(scene=SCENE)),
                spb.ConverseRequest(scene_delta=pb.SceneDelta(remove_ids=["zz"]))]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(tiny_server.stub.Converse(iter(requests)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("request[1].scene_delta.remove_ids[0]")
