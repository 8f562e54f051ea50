"""Each configurable limit: its breach gets a precise status and the server carries on."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import service_pb2_grpc
from arbridge.v1 import types_pb2 as pb

from conftest import collect, gen, scrape, wait_for, wait_idle

FR = pb.FinishReason


async def status_of(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(call)
    return err.value


async def test_oversized_message_is_resource_exhausted(make_server, tiny_model_dir):
    s = await make_server(tiny_model_dir, max_message_bytes=2048)
    err = await status_of(s.stub.Generate(gen("x" * 4000, max_new_tokens=2)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2048" in err.details()
    _, done, _ = await collect(s.stub.Generate(gen("x " * 100, max_new_tokens=2)))
    assert done[0].usage.completion_tokens == 2


async def test_feature_vector_length_limit(make_server, tiny_model_dir):
    s = await make_server(tiny_model_dir, max_feature_values=8)
    scene = pb.SceneFeatures(
        objects=[pb.SceneObject(id="a", label="chair", confidence=0.9)],
        image_features=[pb.FeatureVector(encoder="clip", dims=9, values=[0.1] * 9)])
    err = await status_of(s.stub.DescribeScene(spb.DescribeSceneRequest(scene=scene)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("scene.image_features[0].values: 9 values; at most 8")


async def test_object_ids_and_attributes_are_limited(make_server, tiny_model_dir):
    s = await make_server(tiny_model_dir, max_object_id_chars=16, max_object_attributes=3)

    def scene(**obj):
        return pb.SceneFeatures(objects=[pb.SceneObject(label="cup"),
                                         pb.SceneObject(label="chair", **obj)])

    cases = [(scene(id="x" * 17), "scene.objects[1].id: 17 characters; at most 16"),
             (scene(attributes={f"k{i}": "v" for i in range(4)}),
              "scene.objects[1].attributes: 4 attributes; at most 3")]
    for bad, message in cases:
        err = await status_of(s.stub.DescribeScene(spb.DescribeSceneRequest(scene=bad)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details() == message
    delta = pb.SceneDelta(remove_ids=["y" * 17])
    err = await status_of(s.stub.Ask(spb.AskRequest(
        user_turn=spb.UserTurn(text="hi"), start=spb.ConverseStart(scene=scene(id="a")),
        scene_delta=delta)))
    assert err.details().startswith("scene_delta.remove_ids[0]: 17 characters")
    ok = scene(id="x" * 16, attributes={f"k{i}": "v" for i in range(3)})
    _, done, _ = await collect(s.stub.DescribeScene(spb.DescribeSceneRequest(
        scene=ok, sampling=pb.SamplingParams(max_new_tokens=2))))
    assert done[0].usage.completion_tokens >= 1


async def test_streams_per_peer_limit(make_server, tiny_model_dir):
    s = await make_server(tiny_model_dir, step_delay=0.02, max_streams_per_peer=2)
    busy = [s.stub.Generate(gen(max_new_tokens=40)) for _ in range(2)]
    readers = [asyncio.ensure_future(collect(c)) for c in busy]
    await wait_for(lambda: s.server.drain.inflight == 2)
    err = await status_of(s.stub.Generate(gen(max_new_tokens=2)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at most 2 per client" in err.details()
    # Unary calls are not streams: still answered.
    info = await s.stub.GetModelInfo(spb.GetModelInfoRequest())
    assert info.model_name
    for _, done, _ in await asyncio.gather(*readers):
        assert done[0].usage.completion_tokens == 40
    _, done, _ = await collect(s.stub.Generate(gen(max_new_tokens=2)))
    assert done[0].usage.completion_tokens == 2


async def test_a_converse_over_the_per_client_cap_is_always_resource_exhausted(
        make_server, tiny_model_dir):
    """The cap refuses a Converse whose first message is still on its way: the client
    must see RESOURCE_EXHAUSTED every time, never grpc's INTERNAL "Internal error from
    Core" (the refusal used to race the client's write: ~10 % of tries on a fresh
    connection). 150 small and 10 3.7 MB first messages, each on a new connection."""
    s = await make_server(tiny_model_dir, max_streams_per_peer=2)
    stop = asyncio.Event()

    async def held():
        yield spb.ConverseRequest(start=spb.ConverseStart(system_prompt="hi"))
        await stop.wait()

    holders = [s.stub.Converse(held()) for _ in range(2)]
    await wait_for(lambda: sum(s.server.interceptors.peers.open.values()) == 2)
    big = spb.ConverseRequest(start=spb.ConverseStart(history=[
        pb.DialogueTurn(role=pb.ROLE_USER, text="x" * 19_000) for _ in range(195)]))
    small = spb.ConverseRequest(start=spb.ConverseStart(system_prompt="hello"))
    assert big.ByteSize() > 3_700_000
    seen = []
    try:
        for first in [small] * 150 + [big] * 10:
            never = asyncio.Event()

            async def requests(first=first, never=never):
                yield first
                await never.wait()  # the client keeps its side open

            async with grpc.aio.insecure_channel(s.target, options=[
                    ("grpc.max_send_message_length", 8 << 20)]) as channel:
                stub = service_pb2_grpc.ArBridgeServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for _ in stub.Converse(requests()):
                        pass
                never.set()
                seen.append((err.value.code(), err.value.details()))
    finally:
        stop.set()
        for holder in holders:
            holder.cancel()
    wrong = [item for item in seen if item[0] != grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert not wrong, f"{len(wrong)} of {len(seen)}: {wrong[:3]}"
    assert all("at most 2 per client" in details for _, details in seen)


async def test_load_fills_the_queue_then_recovers_fully(make_server, tiny_model_dir):
    """Twice as many streams as slots + queue: the excess is refused with a retry hint,
    the admitted ones complete, and afterwards the server is empty and serves again."""
    s = await make_server(tiny_model_dir, step_delay=0.01, max_active=2, max_queue=4,
                          metrics_port=0)
    calls = [s.stub.Generate(gen(f"Prompt {i}", max_new_tokens=30)) for i in range(12)]
    results = await asyncio.gather(*(collect(c) for c in calls), return_exceptions=True)
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    served = [r for r in results if not isinstance(r, BaseException)]
    assert len(refused) + len(served) == 12
    # Slots + queue (6) are always served; the rest, arriving together, are refused.
    assert len(served) >= 6 and len(refused) >= 1, (len(served), len(refused))
    for err in refused:
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert int(dict(err.trailing_metadata())["retry-after-ms"]) > 0
    for _, done, _ in served:
        assert done[0].usage.completion_tokens == 30
    await wait_idle(s.server.scheduler)
    metrics = scrape(s)
    assert metrics[("arbridge_active_requests", ())] == 0
    assert metrics[("arbridge_queued_requests", ())] == 0
    method = "/arbridge.v1.ArBridgeService/Generate"
    assert metrics[("arbridge_rpcs_total", (("code", "RESOURCE_EXHAUSTED"),
                                            ("method", method)))] == len(refused)
    # Recovered: the whole capacity is usable again.
    again = await asyncio.gather(*(collect(s.stub.Generate(gen(max_new_tokens=5)))
                                   for _ in range(4)))
    assert all(done[0].finish_reason == FR.FINISH_REASON_LENGTH for _, done, _ in again)


async def test_undecodable_request_bytes_are_invalid_argument(tiny_server):
    raw = tiny_server.channel.unary_stream("/arbridge.v1.ArBridgeService/Generate",
                                           request_serializer=None,
                                           response_deserializer=None)
    err = await status_of(raw(b"\xff\xff\xff\xff"))  # a truncated varint field tag
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid arbridge.v1.GenerateRequest" in err.details()
    bidi = tiny_server.channel.stream_stream("/arbridge.v1.ArBridgeService/Converse",
                                             request_serializer=None,
                                             response_deserializer=None)
    err = await status_of(bidi(iter([b"\x0a\xff"])))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("request[0]: not a valid arbridge.v1.ConverseRequest")


async def test_connection_age_recycles_without_cutting_a_stream(make_server, tiny_model_dir):
    """max_connection_age sends GOAWAY; the stream in flight finishes within the age
    grace, and the next call on the same channel reconnects by itself."""
    s = await make_server(tiny_model_dir, step_delay=0.03, max_connection_age_s=0.5,
                          max_connection_age_grace_s=10)
    _, done, _ = await collect(s.stub.Generate(gen(max_new_tokens=50)))  # ~1.5 s
    assert done[0].usage.completion_tokens == 50
    # The aged connection goes once its stream is done: the channel is no longer ready.
    await wait_for(lambda: s.channel.get_state() != grpc.ChannelConnectivity.READY, 5,
                   "the aged connection closed")
    _, done, _ = await collect(s.stub.Generate(gen(max_new_tokens=3)))
    assert done[0].usage.completion_tokens == 3


async def test_connection_age_applies(make_server, tiny_model_dir):
    """The same stream with a short age grace is cut: the age setting is in force."""
    s = await make_server(tiny_model_dir, step_delay=0.03, max_connection_age_s=0.5,
                          max_connection_age_grace_s=0.2)
    err = await status_of(s.stub.Generate(gen(max_new_tokens=50)))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_keepalive_options_reach_grpc():
    from arbridge.app import server_options
    from arbridge.config import Settings

    options = dict(server_options(Settings(keepalive_time_s=20, max_message_bytes=5000)))
    assert options["grpc.keepalive_time_ms"] == 20_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.http2.min_recv_ping_interval_without_data_ms"] == 10_000
    assert options["grpc.max_connection_age_grace_ms"] == 300_000
    assert options["grpc.max_receive_message_length"] == 5000


async def test_status_messages_stay_small_whatever_the_input(tiny_server):
    """Found by `make fuzz`: an 18 KB encoder name echoed in the status message made
    the trailer too big for the client, which then saw only 'Stream removed'."""
    scene = pb.SceneFeatures(
        objects=[pb.SceneObject(id="a", label="chair", confidence=0.9)],
        image_features=[pb.FeatureVector(encoder="ab " * 6000, dims=1, values=[0.5])])
    err = await status_of(tiny_server.stub.DescribeScene(spb.DescribeSceneRequest(scene=scene)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("scene.image_features[0].encoder: longer than")


def test_any_status_message_is_capped():
    from arbridge.serving.status import MAX_STATUS_MESSAGE_CHARS, client_status
    from arbridge.serving.validation import InvalidField

    status = client_status(InvalidField("prompt", "x" * 50_000))
    assert len(status.message) == MAX_STATUS_MESSAGE_CHARS
    assert status.message.startswith("prompt: xxx") and status.message.endswith("…")
