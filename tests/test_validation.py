"""Bad input: a precise status naming the field; other streams keep flowing."""

from __future__ import annotations

import asyncio
import math
import time

import grpc
import pytest

from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import types_pb2 as pb

from conftest import collect, wait_for

NAN = math.nan

OBJ = pb.SceneObject(id="1", label="chair")


def scene_req(scene=None, **sampling):
    return spb.DescribeSceneRequest(scene=scene or pb.SceneFeatures(objects=[OBJ]),
                                    sampling=pb.SamplingParams(**sampling))


INVALID = [
    ("generate empty prompt", "Generate", spb.GenerateRequest(prompt=""), "prompt"),
    ("negative temperature", "Generate",
     spb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(temperature=-0.5)),
     "sampling.temperature"),
    ("NaN temperature", "Generate",
     spb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(temperature=NAN)),
     "sampling.temperature"),
    ("top_p above 1", "Generate",
     spb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(top_p=1.5)), "sampling.top_p"),
    ("negative top_p", "Generate",
     spb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(top_p=-0.1)), "sampling.top_p"),
    ("NaN repetition penalty", "Generate",
     spb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(repetition_penalty=NAN)),
     "sampling.repetition_penalty"),
    ("max_new_tokens over the cap", "Generate",
     spb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(max_new_tokens=100_000)),
     "sampling.max_new_tokens"),
    ("too many sequences", "Generate",
     spb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(num_return_sequences=99)),
     "sampling.num_return_sequences"),
    ("empty stop string", "Generate",
     spb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(stop=["ok", ""])),
     "sampling.stop[1]"),
    ("prompt longer than the context", "Generate",
     spb.GenerateRequest(prompt="chair table " * 400), "prompt"),
    ("no scene", "DescribeScene", spb.DescribeSceneRequest(), "scene"),
    ("empty scene", "DescribeScene", scene_req(pb.SceneFeatures()), "scene.objects"),
    ("empty label", "DescribeScene",
     scene_req(pb.SceneFeatures(objects=[pb.SceneObject(id="x")])), "scene.objects[0].label"),
    ("NaN position", "DescribeScene",
     scene_req(pb.SceneFeatures(objects=[pb.SceneObject(
         label="chair", pose=pb.Pose(position=pb.Vec3(x=NAN)))])),
     "scene.objects[0].pose.position.x"),
    ("infinite camera rotation", "DescribeScene",
     scene_req(pb.SceneFeatures(objects=[OBJ], camera_pose=pb.Pose(
         rotation=pb.Quaternion(w=math.inf)))), "scene.camera_pose.rotation.w"),
    ("confidence above 1", "DescribeScene",
     scene_req(pb.SceneFeatures(objects=[OBJ, pb.SceneObject(label="t", confidence=2)])),
     "scene.objects[1].confidence"),
    ("negative extents", "DescribeScene",
     scene_req(pb.SceneFeatures(objects=[pb.SceneObject(label="t",
                                                        extents=pb.Vec3(y=-1))])),
     "scene.objects[0].extents.y"),
    ("feature dims mismatch", "DescribeScene",
     scene_req(pb.SceneFeatures(objects=[OBJ], image_features=[
         pb.FeatureVector(encoder="clip", dims=3, values=[1, 2])])),
     "scene.image_features[0].dims"),
    ("top_p over 1 in DescribeScene", "DescribeScene", scene_req(top_p=2.0), "sampling.top_p"),
    ("too many stop strings", "Generate",
     spb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(stop=["x"] * 17)),
     "sampling.stop"),
    ("too many objects", "DescribeScene",
     scene_req(pb.SceneFeatures(objects=[OBJ] * 257)), "scene.objects"),
    ("location hint too long", "DescribeScene",
     scene_req(pb.SceneFeatures(objects=[OBJ], location_hint="x" * 201)),
     "scene.location_hint"),
    ("attribute too long", "DescribeScene",
     scene_req(pb.SceneFeatures(objects=[pb.SceneObject(label="t", attributes={"k": "v" * 201})])),
     "scene.objects[0].attributes['k']"),
    ("instruction too long", "DescribeScene",
     spb.DescribeSceneRequest(scene=pb.SceneFeatures(objects=[OBJ]), instruction="x" * 20_001),
     "instruction"),
    ("negative scene_constraint", "DescribeScene", scene_req(scene_constraint=-1.0),
     "sampling.scene_constraint"),
    ("NaN scene_constraint", "DescribeScene", scene_req(scene_constraint=NAN),
     "sampling.scene_constraint"),
    ("infinite scene_constraint", "DescribeScene", scene_req(scene_constraint=math.inf),
     "sampling.scene_constraint"),
    ("no_repeat_ngram over the cap", "DescribeScene", scene_req(no_repeat_ngram=65),
     "sampling.no_repeat_ngram"),
    ("no_repeat_ngram over the cap in Generate", "Generate",
     spb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(no_repeat_ngram=1000)),
     "sampling.no_repeat_ngram"),
    ("NaN feature value", "DescribeScene",
     scene_req(pb.SceneFeatures(objects=[OBJ], image_features=[
         pb.FeatureVector(encoder="clip", dims=2, values=[0.0, NAN])])),
     "scene.image_features[0].values[1]"),
]


@pytest.mark.parametrize("name,method,request_msg,field", INVALID, ids=[c[0] for c in INVALID])
async def test_invalid_argument_names_the_field(tiny_server, name, method, request_msg, field):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(getattr(tiny_server.stub, method)(request_msg))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert err.value.details().startswith(field + ":"), err.value.details()


async def test_dense_features_without_projector_is_failed_precondition(tiny_server):
    req = scene_req(pb.SceneFeatures(objects=[OBJ], image_features=[
        pb.FeatureVector(encoder="clip", dims=2, values=[0.5, 0.25])]))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(tiny_server.stub.DescribeScene(req))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "clip" in err.value.details()


async def test_unknown_enum_value_in_history(tiny_server):
    async def requests():
        yield spb.ConverseRequest(start=spb.ConverseStart(history=[
            pb.DialogueTurn(role=pb.ROLE_USER, text="hi"), pb.DialogueTurn(role=42, text="?")]))

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(tiny_server.stub.Converse(requests()))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("start.history[1].role:")
    assert "42" in err.value.details()


async def test_audio_confidence_out_of_range_in_converse(tiny_server):
    async def requests():
        yield spb.ConverseRequest(user_turn=spb.UserTurn(
            audio=pb.AudioFeatures(transcript="hello", confidence=1.5)))

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(tiny_server.stub.Converse(requests()))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("request[0].user_turn.audio.confidence:")


async def test_too_many_history_turns(tiny_server):
    async def requests():
        yield spb.ConverseRequest(start=spb.ConverseStart(history=[
            pb.DialogueTurn(role=pb.ROLE_USER, text="hi")] * 257))

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(tiny_server.stub.Converse(requests()))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("start.history:")


async def test_bad_requests_do_not_disturb_a_running_stream(make_server, tiny_model_dir):
    s = await make_server(tiny_model_dir, step_delay=0.02)  # 60 tokens: >= 1.2 s
    chunk_times: list[float] = []

    async def read_good():
        call = s.stub.Generate(spb.GenerateRequest(
            prompt="The table", sampling=pb.SamplingParams(max_new_tokens=60)))
        async for response in call:
            if response.WhichOneof("event") == "chunk":
                chunk_times.append(time.perf_counter())
            else:
                return response.completion

    good = asyncio.ensure_future(read_good())
    await wait_for(lambda: chunk_times, 10, "the good stream's first chunk")
    first_bad = time.perf_counter()
    errors = 0
    for _ in range(20):
        for _, method, request_msg, _ in INVALID[:8]:
            try:
                await collect(getattr(s.stub, method)(request_msg))
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
                errors += 1
    last_bad = time.perf_counter()
    done = await good
    assert errors == 160
    # The stream was flowing before the first bad request and still after the last:
    # all 160 arrived while it ran.
    assert chunk_times[0] < first_bad and chunk_times[-1] > last_bad, (
        chunk_times[0] - first_bad, chunk_times[-1] - last_bad)
    assert done.finish_reason == pb.FINISH_REASON_LENGTH
    assert done.usage.completion_tokens == 60


CONVERSE_INVALID = [
    ("start sampling", spb.ConverseRequest(start=spb.ConverseStart(
        sampling=pb.SamplingParams(top_p=1.5))), "start.sampling.top_p"),
    ("start scene", spb.ConverseRequest(start=spb.ConverseStart(
        scene=pb.SceneFeatures(objects=[pb.SceneObject(label="")])),
    ), "start.scene.objects[0].label"),
    ("scene update", spb.ConverseRequest(scene_update=pb.SceneFeatures(
        camera_pose=pb.Pose(position=pb.Vec3(z=NAN)))),
     "request[0].scene_update.camera_pose.position.z"),
    ("turn sampling", spb.ConverseRequest(user_turn=spb.UserTurn(
        text="hi", sampling=pb.SamplingParams(temperature=-1))),
     "request[0].user_turn.sampling.temperature"),
    ("empty request", spb.ConverseRequest(), "request[0].event"),
    ("system prompt too long", spb.ConverseRequest(start=spb.ConverseStart(
        system_prompt="x" * 20_001)), "start.system_prompt"),
]


@pytest.mark.parametrize("name,message,field", CONVERSE_INVALID,
                         ids=[c[0] for c in CONVERSE_INVALID])
async def test_converse_invalid_argument_names_the_field(tiny_server, name, message, field):
    async def requests():
        yield message

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(tiny_server.stub.Converse(requests()))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert err.value.details().startswith(field + ":"), err.value.details()
