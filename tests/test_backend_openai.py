"""--backend openai against a real upstream: `transformers serve` on loopback,
serving a tiny model directory made here. No mocks of the upstream."""

from __future__ import annotations

import asyncio

import grpc
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from arbridge.app import ArBridgeServer
from arbridge.backends import BackendBusy, BackendRefused, BackendUnavailable
from arbridge.backends.openai_compat import BackendConfigError, httpx, map_error
from arbridge.config import Settings
from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import service_pb2_grpc
from arbridge.v1 import types_pb2 as pb

from conftest import collect, gen, wait_for
from upstream import TcpProxy, TransformersServe

FR = pb.FinishReason
SCENE = pb.SceneFeatures(objects=[
    pb.SceneObject(id="chair-1", label="chair", confidence=0.9,
                   pose=pb.Pose(position=pb.Vec3(x=-1, z=1.5), rotation=pb.Quaternion(w=1)),
                   attributes={"color": "red"}),
    pb.SceneObject(id="lamp-1", label="lamp", confidence=0.8,
                   pose=pb.Pose(position=pb.Vec3(x=1, z=3), rotation=pb.Quaternion(w=1)))])


def describe(**sampling):
    return spb.DescribeSceneRequest(scene=SCENE, sampling=pb.SamplingParams(**sampling))


@pytest.fixture(scope="module")
def upstream(tiny_model_dir, tmp_path_factory):
    server = TransformersServe(tiny_model_dir, tmp_path_factory.mktemp("ts") / "serve.log")
    yield server
    server.stop()


class Bridge:
    def __init__(self, server: ArBridgeServer):
        self.server = server
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        self.stub = service_pb2_grpc.ArBridgeServiceStub(self.channel)

    async def close(self):
        await self.channel.close()
        await self.server.stop(grace=1)


@pytest.fixture
async def bridge(tiny_model_dir, tmp_path):
    """Factory: a bridge forwarding to `url` (the upstream, or a proxy in front of it)."""
    made: list[Bridge] = []

    async def make(url: str, **settings) -> Bridge:
        server = ArBridgeServer(Settings(
            host="127.0.0.1", port=0, cache_dir=tmp_path, backend="openai", backend_url=url,
            backend_model=str(tiny_model_dir), tokenizer=str(tiny_model_dir), **settings))
        await server.start()
        await server.load()
        made.append(Bridge(server))
        return made[-1]

    yield make
    for b in made:
        await b.close()


async def test_describe_scene_through_upstream_equals_local_engine(upstream, bridge,
                                                                   tiny_server):
    b = await bridge(upstream.url)
    for request, call in ((describe(max_new_tokens=12), "DescribeScene"),
                          (gen(max_new_tokens=12, seed=3), "Generate")):
        _, local, _ = await collect(getattr(tiny_server.stub, call)(request))
        chunks, remote, _ = await collect(getattr(b.stub, call)(request))
        assert remote[0].text == local[0].text
        assert "".join(c.text for c in chunks) == remote[0].text
        assert remote[0].finish_reason == local[0].finish_reason == FR.FINISH_REASON_LENGTH
        assert remote[0].usage.completion_tokens == 12
        assert remote[0].usage.prompt_tokens == local[0].usage.prompt_tokens
        assert list(remote[0].grounding) == list(local[0].grounding)


async def test_stop_string_applied_by_the_bridge_which_then_closes_upstream(upstream, bridge,
                                                                           tiny_server):
    _, full, _ = await collect(tiny_server.stub.Generate(gen(max_new_tokens=24)))
    stop = full[0].text[8:11]
    request = gen(max_new_tokens=200, stop=[stop])
    _, local, _ = await collect(tiny_server.stub.Generate(request))
    proxy = await TcpProxy(upstream.port, delay_s=0.02).start()
    try:
        b = await bridge(proxy.url)
        chunks, remote, _ = await collect(b.stub.Generate(request))
        assert remote[0].finish_reason == local[0].finish_reason == \
            FR.FINISH_REASON_STOP_SEQUENCE
        assert remote[0].text == local[0].text and stop not in remote[0].text
        # The upstream was still generating: the bridge hung up on it.
        for _ in range(50):
            if proxy.open_connections == 0:
                break
            await asyncio.sleep(0.02)
        assert proxy.open_connections == 0
    finally:
        await proxy.close()


async def test_parameters_the_upstream_cannot_honour_are_refused(upstream, bridge):
    b = await bridge(upstream.url)
    for sampling, field in (({"top_k": 5}, "sampling.top_k"),
                            ({"repetition_penalty": 1.3}, "sampling.repetition_penalty"),
                            ({"num_return_sequences": 2}, "sampling.num_return_sequences"),
                            ({"logprobs": True}, "sampling.logprobs"),
                            ({"scene_constraint": 5.0}, "sampling.scene_constraint"),
                            ({"no_repeat_ngram": 3}, "sampling.no_repeat_ngram"),
                            ({"response_format": pb.ResponseFormat(regex="[a-z]+")},
                             "sampling.response_format")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(b.stub.Generate(gen(**sampling)))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.value.details().startswith(field)
    scene = pb.SceneFeatures()
    scene.CopyFrom(SCENE)
    scene.image_features.add(encoder="clip", dims=2, values=[0.1, 0.2])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(b.stub.DescribeScene(spb.DescribeSceneRequest(scene=scene)))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    actions = [pb.ActionDefinition(name="highlight", parameters=[pb.ActionParameter(
        name="target", type=pb.PARAMETER_TYPE_OBJECT)])]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(b.stub.Ask(spb.AskRequest(start=spb.ConverseStart(
            scene=SCENE, actions=actions), user_turn=spb.UserTurn(text="highlight the chair"))))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details().startswith("start.actions: needs the local engine")


async def test_model_info_reports_the_upstream(upstream, bridge, tiny_model_dir):
    b = await bridge(upstream.url)
    info = await b.stub.GetModelInfo(spb.GetModelInfoRequest())
    assert info.model_name == str(tiny_model_dir)
    assert info.device == upstream.url and info.source_format == "openai-upstream"
    assert info.context_length == 256 and "upstream" in info.features


async def test_client_cancel_closes_the_upstream_request(upstream, bridge):
    proxy = await TcpProxy(upstream.port, delay_s=0.05).start()
    try:
        b = await bridge(proxy.url)
        call = b.stub.Generate(gen(max_new_tokens=200))
        async for response in call:
            if response.WhichOneof("event") == "chunk":
                break
        assert proxy.open_connections == 1
        call.cancel()
        await wait_for(lambda: proxy.open_connections == 0 and b.server.backend.load == (0, 0),
                       2, lambda: f"the upstream request was left open: "
                                  f"{proxy.open_connections} connection(s), "
                                  f"load {b.server.backend.load}")
    finally:
        await proxy.close()


async def test_deadline_ends_with_time_limit_and_the_text_so_far(upstream, bridge,
                                                                tiny_server):
    _, full, _ = await collect(tiny_server.stub.Generate(gen(max_new_tokens=150)))
    proxy = await TcpProxy(upstream.port, delay_s=0.03).start()
    try:
        b = await bridge(proxy.url)
        chunks, done, _ = await collect(b.stub.Generate(gen(max_new_tokens=150), timeout=1.5))
        assert done[0].finish_reason == FR.FINISH_REASON_TIME_LIMIT
        assert chunks and done[0].text == "".join(c.text for c in chunks)
        assert full[0].text.startswith(done[0].text) and done[0].text != full[0].text
    finally:
        await proxy.close()


async def test_upstream_killed_mid_stream(tiny_model_dir, tmp_path, bridge):
    upstream = TransformersServe(tiny_model_dir, tmp_path / "serve.log")
    proxy = await TcpProxy(upstream.port, delay_s=0.05).start()
    try:
        b = await bridge(proxy.url, metrics_port=0)
        call = b.stub.Generate(gen(max_new_tokens=200))
        async for response in call:
            if response.WhichOneof("event") == "chunk":
                break
        upstream.kill()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # The bridge itself keeps serving: health, model info, and quick UNAVAILABLE.
        health = await health_pb2_grpc.HealthStub(b.channel).Check(
            health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert (await b.stub.GetModelInfo(spb.GetModelInfoRequest())).model_name
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(b.stub.Generate(gen(max_new_tokens=5), timeout=10))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # Nothing leaks: no generation counted as open, no upstream connection. (The
        # handlers unwind just after their status reached the client: poll.)
        assert b.server.backend.load == (0, 0)
        await wait_for(lambda: b.server.drain.inflight == 0, 5, "calls counted in flight")
        assert proxy.open_connections == 0
    finally:
        await proxy.close()
        upstream.stop()


def test_upstream_errors_map_to_precise_statuses():
    request = httpx.Request("POST", "http://upstream/v1/completions")

    def status_error(cls, code, headers=None):
        response = httpx.Response(code, headers=headers or {}, request=request)
        return cls(f"status {code}", response=response, body=None)

    busy = map_error(status_error(openai.RateLimitError, 429, {"retry-after": "2"}))
    assert isinstance(busy, BackendBusy) and busy.retry_after_s == 2.0
    assert isinstance(map_error(status_error(openai.InternalServerError, 503)),
                      BackendUnavailable)
    assert isinstance(map_error(status_error(openai.NotFoundError, 404)), BackendRefused)
    assert isinstance(map_error(openai.APIConnectionError(request=request)),
                      BackendUnavailable)


def test_missing_backend_settings_fail_at_start():
    with pytest.raises(BackendConfigError, match="backend-url"):
        ArBridgeServer(Settings(backend="openai", backend_model="m", tokenizer="t"))
    with pytest.raises(BackendConfigError, match="tokenizer"):
        ArBridgeServer(Settings(backend="openai", backend_url="http://x/v1",
                                backend_model="m"))


async def test_computed_replies_are_streamed_by_the_bridge(upstream, bridge, tiny_server):
    """A composed caption or a computed answer is the same through the upstream as on
    the local engine, word for word: the bridge streams it (the upstream, a tiny random
    model here, could only garble it)."""
    scene = pb.SceneFeatures(camera_pose=pb.Pose(rotation=pb.Quaternion(w=1.0)), objects=[
        pb.SceneObject(id=f"c{i}", label="chair", confidence=0.9,
                       pose=pb.Pose(position=pb.Vec3(x=x, z=2.0))) for i, x in ((1, -2.0),
                                                                              (2, 2.0))])
    b = await bridge(upstream.url)
    request = spb.DescribeSceneRequest(scene=scene, sampling=pb.SamplingParams(
        max_new_tokens=40, temperature=0.9, seed=1))
    for stub in (tiny_server.stub, b.stub):
        chunks, done, _ = await collect(stub.DescribeScene(request))
        assert done[0].text == "Two chairs, one on each side."
        assert "".join(c.text for c in chunks) == done[0].text and len(chunks) > 1
        assert done[0].finish_reason == FR.FINISH_REASON_EOS
        assert {g.object_id for g in done[0].grounding} == {"c1", "c2"}
        _, said, _ = await collect(stub.Ask(spb.AskRequest(
            start=spb.ConverseStart(scene=scene),
            user_turn=spb.UserTurn(text="How many chairs are there?",
                                   sampling=pb.SamplingParams(max_new_tokens=40)))))
        assert said[0].text == "There are two chairs."
