"""Integration: a real grpc.aio server on a loopback port, a real gRPC client."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from arbridge.serving.grounding import ground
from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import types_pb2 as pb

from conftest import collect, gen, wait_for, wait_idle

FR = pb.FinishReason


async def test_generate_with_a_metaspace_tokenizer_keeps_the_continuations_space(
        make_server, tmp_path_factory):
    # SentencePiece-style tokenizers (Llama 2, Mistral) mark a word's space as "▁":
    # the stream must continue the prompt ("The red" + " chair"), not start a text.
    from transformers import AutoTokenizer

    from tiny_model import build_tiny_model

    model_dir = build_tiny_model(tmp_path_factory.mktemp("tiny-metaspace"), metaspace=True,
                                 chat_template=False, whole_characters=True)
    tok = AutoTokenizer.from_pretrained(model_dir)
    s = await make_server(model_dir)
    spaced = 0
    for prompt in ("The red chair", "A lamp is far", "Objects in view"):
        chunks, done, _ = await collect(s.stub.Generate(gen(prompt, max_new_tokens=12)))
        ids = [i for c in chunks for i in c.token_ids]
        prompt_ids = tok(prompt).input_ids
        expected = tok.decode(prompt_ids + ids)[len(tok.decode(prompt_ids)):]
        assert done[0].text == "".join(c.text for c in chunks) == expected
        if tok.convert_ids_to_tokens(ids[0]).startswith("▁"):
            spaced += 1
            assert chunks[0].text.startswith(" ")
    assert spaced  # at least one reply began with a new word


async def test_health_serving_and_reflection_lists_the_service(tiny_server):
    health = health_pb2_grpc.HealthStub(tiny_server.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reply = await health.Check(health_pb2.HealthCheckRequest(service="arbridge.v1.ArBridgeService"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    refl = reflection_pb2_grpc.ServerReflectionStub(tiny_server.channel)

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for response in refl.ServerReflectionInfo(requests()):
        names = {s.name for s in response.list_services_response.service}
        assert {"arbridge.v1.ArBridgeService", "grpc.health.v1.Health"} <= names
        break


async def test_greedy_stream_equals_transformers_generate(tiny_server, tiny_loaded):
    chunks, completions, events = await collect(
        tiny_server.stub.Generate(gen(max_new_tokens=20)))
    assert len(completions) == 1 and events[-1][0] == "completion"
    done = completions[0]
    assert done.finish_reason == FR.FINISH_REASON_LENGTH
    assert done.usage.completion_tokens == 20
    assert done.text == "".join(c.text for c in chunks)
    streamed_ids = [i for c in chunks for i in c.token_ids]

    tok, model = tiny_loaded.tokenizer, tiny_loaded.model
    prompt = tok("The red chair", return_tensors="pt")
    with torch.no_grad():
        ref = model.generate(**prompt, max_new_tokens=20, do_sample=False, min_new_tokens=20)
    ref_ids = ref[0, prompt.input_ids.shape[1]:].tolist()
    # Ids still held back by the detokenizer at the end are not in any chunk.
    assert ref_ids[: len(streamed_ids)] == streamed_ids
    assert done.text == tok.decode(ref_ids, skip_special_tokens=True)
    assert done.usage.prompt_tokens == prompt.input_ids.shape[1]


async def test_chunks_arrive_while_generating(make_server, tiny_model_dir):
    running = await make_server(tiny_model_dir, step_delay=0.03)
    chunks, completions, events = await collect(running.stub.Generate(gen(max_new_tokens=30)))
    chunk_times = [t for kind, t, _ in events if kind == "chunk"]
    end = events[-1][1]
    assert events[-1][0] == "completion"
    # 31 forward passes of >= 30 ms: about a second of generation. The first
    # chunk must come long before the end, and chunks must be spread out.
    assert end > 0.9
    assert chunk_times[0] < end / 3
    assert chunk_times[len(chunk_times) // 2] < end * 0.8
    assert completions[0].timings.time_to_first_token_ms < completions[0].timings.total_ms / 3


async def test_same_seed_same_text_and_seed_reported(tiny_server):
    req = gen(max_new_tokens=24, temperature=1.0, seed=1234)
    _, first, _ = await collect(tiny_server.stub.Generate(req))
    _, second, _ = await collect(tiny_server.stub.Generate(req))
    assert first[0].text == second[0].text and first[0].seed == 1234
    _, other, _ = await collect(tiny_server.stub.Generate(gen(max_new_tokens=24,
                                                              temperature=1.0, seed=99)))
    assert other[0].text != first[0].text
    _, unseeded, _ = await collect(tiny_server.stub.Generate(gen(max_new_tokens=4,
                                                                 temperature=1.0)))
    assert unseeded[0].seed != 0  # a random seed was picked and reported


async def test_num_return_sequences_tagged_by_index(tiny_server):
    chunks, completions, events = await collect(tiny_server.stub.Generate(
        gen(max_new_tokens=12, temperature=1.0, seed=5, num_return_sequences=3)))
    assert sorted(c.sequence_index for c in completions) == [0, 1, 2]
    for comp in completions:
        own = [c for c in chunks if c.sequence_index == comp.sequence_index]
        assert comp.text == "".join(c.text for c in own)
        # The completion of a sequence comes after all of its chunks.
        last_chunk = max(i for i, (k, _, r) in enumerate(events)
                         if k == "chunk" and r.chunk.sequence_index == comp.sequence_index)
        done_at = next(i for i, (k, _, r) in enumerate(events)
                       if k == "completion" and r.completion.sequence_index ==
                       comp.sequence_index)
        assert last_chunk < done_at
    assert len({c.text for c in completions}) > 1  # sampled independently


async def test_stop_string_ends_the_sequence_without_showing_it(tiny_server):
    _, full, _ = await collect(tiny_server.stub.Generate(gen(max_new_tokens=30)))
    text = full[0].text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert len(stop) == 3
    chunks, done, _ = await collect(tiny_server.stub.Generate(gen(max_new_tokens=30,
                                                                  stop=[stop])))
    assert done[0].finish_reason == FR.FINISH_REASON_STOP_SEQUENCE
    assert done[0].text == text[: text.index(stop)]
    assert stop not in "".join(c.text for c in chunks)


async def test_eos_finishes_with_eos(make_server, tiny_eos_model_dir):
    running = await make_server(tiny_eos_model_dir)
    chunks, done, _ = await collect(running.stub.Generate(gen(max_new_tokens=10)))
    assert chunks == [] and done[0].finish_reason == FR.FINISH_REASON_EOS
    assert done[0].usage.completion_tokens == 0


async def test_logprobs_when_asked(tiny_server):
    chunks, _, _ = await collect(tiny_server.stub.Generate(gen(max_new_tokens=5,
                                                               logprobs=True)))
    assert chunks and all(c.HasField("logprob") and c.logprob <= 0 for c in chunks)
    chunks, _, _ = await collect(tiny_server.stub.Generate(gen(max_new_tokens=5)))
    assert not any(c.HasField("logprob") for c in chunks)


SCENE_OBJECTS = [
    pb.SceneObject(id="c1", label="chair", confidence=0.9,
                   pose=pb.Pose(position=pb.Vec3(x=-1, z=1))),
    pb.SceneObject(id="t1", label="table", pose=pb.Pose(position=pb.Vec3(z=2))),
    pb.SceneObject(id="l1", label="lamp", pose=pb.Pose(position=pb.Vec3(x=1, z=3))),
]


def scene_request(**sampling):
    return spb.DescribeSceneRequest(scene=pb.SceneFeatures(objects=SCENE_OBJECTS),
                                    sampling=pb.SamplingParams(**sampling))


def test_ground_finds_the_scene_objects_in_a_hand_made_text():
    text = "A Chair by the tables; no lamps? The lamp, a chairman."
    spans = [(s.object_id, text[s.start:s.end]) for s in ground(text, SCENE_OBJECTS)]
    assert spans == [("c1", "Chair"), ("t1", "tables"), ("l1", "lamps"), ("l1", "lamp")]


async def test_describe_scene_streams_and_grounds(tiny_server):
    grounded = 0
    # The tiny model is random but seeded: some of these instructions get a caption that
    # says "lamp" (or "chair", "table") as a word, so the comparison below is over real
    # spans for those, not only empty lists.
    for instruction in ("", "Describe.", "What is here?", "Where is the lamp?",
                        "Tell me about the table.", "Is there a chair?"):
        request = scene_request(max_new_tokens=30)
        request.instruction = instruction
        chunks, done, events = await collect(tiny_server.stub.DescribeScene(request))
        assert chunks and len(done) == 1 and events[-1][0] == "completion"
        text = done[0].text
        assert text == "".join(c.text for c in chunks)
        # A model's caption is grounded by its words; the composed one (no instruction)
        # by its plan, which knows each span's objects.
        expected = ground(text, request.scene.objects) if instruction else \
            list(done[0].grounding)
        assert list(done[0].grounding) == expected
        for span in done[0].grounding:
            assert {"c1": "chair", "t1": "table", "l1": "lamp"}[span.object_id] in \
                text[span.start:span.end].lower()
        grounded += bool(expected)
    assert grounded


async def test_model_info(tiny_server):
    info = await tiny_server.stub.GetModelInfo(spb.GetModelInfoRequest())
    assert info.architecture == "GPT2LMHeadModel"
    assert info.num_layers == 2 and info.hidden_size == 64 and info.context_length == 256
    assert info.dtype == "float32" and info.device == "cpu" and info.source_format == "hf"
    assert info.parameter_count > 0 and "chat_template" in info.features


async def test_deadline_ends_with_time_limit_and_partial_text(make_server, tiny_model_dir):
    running = await make_server(tiny_model_dir, step_delay=0.05)
    chunks, done, _ = await collect(running.stub.Generate(gen(max_new_tokens=200),
                                                          timeout=1.0))
    assert done[0].finish_reason == FR.FINISH_REASON_TIME_LIMIT
    assert 0 < done[0].usage.completion_tokens < 200
    assert done[0].text == "".join(c.text for c in chunks)


async def test_deadline_while_queued_ends_in_time_not_deadline_exceeded(make_server,
                                                                         tiny_model_dir):
    running = await make_server(tiny_model_dir, step_delay=0.05, max_active=1)
    busy = asyncio.ensure_future(collect(running.stub.Generate(gen(max_new_tokens=200))))
    await wait_for(lambda: running.server.scheduler.load == (1, 0), 10,
                   lambda: f"one running: load {running.server.scheduler.load}")
    chunks, done, _ = await collect(running.stub.Generate(gen(max_new_tokens=5), timeout=0.5))
    assert done[0].finish_reason == FR.FINISH_REASON_TIME_LIMIT
    assert done[0].usage.completion_tokens == 0 and not chunks
    assert running.server.scheduler.load == (1, 0)  # its queue place is free again
    busy.cancel()


async def test_cancel_frees_the_slot(make_server, tiny_model_dir):
    running = await make_server(tiny_model_dir, step_delay=0.02)
    call = running.stub.Generate(gen(max_new_tokens=200))
    async for response in call:
        if response.WhichOneof("event") == "chunk":
            break
    assert running.server.scheduler.load[0] == 1
    call.cancel()
    await wait_idle(running.server.scheduler, 2)


async def test_queue_full_is_resource_exhausted_with_retry_hint(make_server, tiny_model_dir):
    # Busy requests last ~10 s (cancelled below), so a slow CI machine still
    # sees the state "one generating, one waiting" long enough to probe it.
    running = await make_server(tiny_model_dir, step_delay=0.05, max_active=1, max_queue=1)
    busy = [running.stub.Generate(gen(max_new_tokens=200)) for _ in range(2)]
    readers = [asyncio.ensure_future(collect(c)) for c in busy]
    await wait_for(lambda: running.server.scheduler.load == (1, 1), 10,
                   lambda: f"one running, one queued: load {running.server.scheduler.load}")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(running.stub.Generate(gen(max_new_tokens=5)))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(err.value.trailing_metadata())
    assert int(trailers["retry-after-ms"]) > 0
    for c in busy:
        c.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    # Recovered: a new request runs once the queue drains.
    await wait_idle(running.server.scheduler)
    _, done, _ = await collect(running.stub.Generate(gen(max_new_tokens=3)))
    assert done[0].finish_reason == FR.FINISH_REASON_LENGTH


async def test_health_not_serving_while_loading(tiny_model_dir, tmp_path):
    from arbridge.app import ArBridgeServer
    from arbridge.config import Settings
    from arbridge.models.loader import load_model

    server = ArBridgeServer(Settings(host="127.0.0.1", port=0, cache_dir=tmp_path))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            from arbridge.v1 import service_pb2_grpc

            stub = service_pb2_grpc.ArBridgeServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await collect(stub.Generate(gen()))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            await server.load(preloaded=load_model(str(tiny_model_dir), cache_dir=tmp_path))
            reply = await health.Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(grace=0)


async def test_buf_curl_through_reflection(tiny_server):
    """What a grpcurl-style user does: list via reflection, call with JSON."""
    from conftest import REPO

    buf = str(REPO / "node_modules" / ".bin" / "buf")
    url = f"http://{tiny_server.target}"

    async def run(*args):
        proc = await asyncio.create_subprocess_exec(
            buf, "curl", "--protocol", "grpc", "--http2-prior-knowledge", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        return proc.returncode, out.decode(), err.decode()

    rc, out, err = await run("--list-services", url)
    assert rc == 0, err
    assert "arbridge.v1.ArBridgeService" in out.split()
    rc, out, err = await run("-d", '{"prompt": "The red chair", "sampling": {"maxNewTokens": 4}}',
                             f"{url}/arbridge.v1.ArBridgeService/Generate")
    assert rc == 0, err
    assert '"finishReason": "FINISH_REASON_LENGTH"' in out and '"chunk"' in out
    rc, out, err = await run("-d", '{"prompt": "x", "sampling": {"topP": 3}}',
                             f"{url}/arbridge.v1.ArBridgeService/Generate")
    assert rc != 0 and "invalid_argument" in out + err and "sampling.top_p" in out + err
