"""Prometheus metrics over HTTP, request ids, structured (JSON) logs."""

from __future__ import annotations

import asyncio
import json
import logging

import grpc
import pytest

from arbridge.logs import setup_logging
from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import types_pb2 as pb

from conftest import collect, gen, scrape, wait_for

GENERATE = "/arbridge.v1.ArBridgeService/Generate"


async def test_metrics_count_calls_tokens_latency_and_batches(make_server, tiny_model_dir):
    s = await make_server(tiny_model_dir, metrics_port=0)
    results = await asyncio.gather(*(collect(s.stub.Generate(gen(f"Prompt {i}",
                                                                   max_new_tokens=10)))
                                     for i in range(4)))
    with pytest.raises(grpc.aio.AioRpcError):
        await collect(s.stub.Generate(gen("")))
    m = scrape(s)
    assert m[("arbridge_rpcs_total", (("code", "OK"), ("method", GENERATE)))] == 4
    assert m[("arbridge_rpcs_total", (("code", "INVALID_ARGUMENT"), ("method", GENERATE)))] == 1
    assert m[("arbridge_generated_tokens_total", ())] == 40
    assert m[("arbridge_completions_total", (("reason", "FINISH_REASON_LENGTH"),))] == 4
    assert m[("arbridge_time_to_first_token_seconds_count", ())] == 4
    assert m[("arbridge_inter_token_latency_seconds_count", ())] == 4 * 9
    # Each decode step is observed with its batch size: 4 streams * 9 decode steps of
    # rows, spread over however many steps the batching took.
    steps = m[("arbridge_decode_batch_size_count", ())]
    assert m[("arbridge_decode_batch_size_sum", ())] == 4 * 9 and steps < 4 * 9
    assert m[("arbridge_open_rpcs", (("method", GENERATE),))] == 0
    assert m[("arbridge_active_requests", ())] == 0
    assert all(len(done) == 1 for _, done, _ in results)


async def test_request_id_is_echoed_or_made(tiny_server):
    call = tiny_server.stub.Generate(gen(max_new_tokens=2),
                                     metadata=(("x-request-id", "unity-frame-42"),))
    await collect(call)
    assert dict(await call.initial_metadata())["x-request-id"] == "unity-frame-42"
    for metadata in ((), (("x-request-id", "has spaces; quotes\" and semicolons"),)):
        call = tiny_server.stub.Generate(gen(max_new_tokens=2), metadata=metadata)
        await collect(call)
        made = dict(await call.initial_metadata())["x-request-id"]
        assert len(made) == 16 and int(made, 16) >= 0
    # Refused calls carry it too, so a client can quote it in a bug report.
    call = tiny_server.stub.Generate(gen(""), metadata=(("x-request-id", "bad-1"),))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(call)
    assert dict(err.value.initial_metadata())["x-request-id"] == "bad-1"


async def test_scheduler_thread_logs_carry_the_calls_request_id(tiny_server, caplog):
    # The scheduler runs on its own thread, outside the call's context: the id must
    # travel with the request.
    with caplog.at_level(logging.DEBUG, logger="arbridge.engine.scheduler"):
        await collect(tiny_server.stub.Generate(gen(max_new_tokens=3),
                                                metadata=(("x-request-id", "frame-99"),)))
    mine = [r for r in caplog.records
            if r.name == "arbridge.engine.scheduler" and r.request_id == "frame-99"]
    messages = [r.getMessage() for r in mine]
    assert any(m.startswith("admitted:") for m in messages), messages
    assert any(m.startswith("finished") for m in messages), messages
    assert all(r.threadName == "arbridge-scheduler" for r in mine)


async def test_json_access_log_carries_request_id_and_status(tiny_server, capsys):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("INFO", "json")
        call = tiny_server.stub.Generate(gen(max_new_tokens=2),
                                         metadata=(("x-request-id", "trace-7"),))
        await collect(call)
        lines, access = [], []

        def logged() -> bool:  # the access record is written once the call has ended
            lines.extend(json.loads(line) for line in capsys.readouterr().err.splitlines()
                         if line.startswith("{"))
            access[:] = [r for r in lines if r.get("request_id") == "trace-7" and
                         r.get("method")]
            return bool(access)

        await wait_for(logged, 5, lambda: f"no access record in {lines}")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert access[0]["method"] == GENERATE and access[0]["code"] == "OK"
    assert access[0]["level"] == "INFO" and access[0]["duration_ms"] > 0


async def test_metrics_show_prompt_tokens_the_prefix_cache_saved(make_server, tiny_model_dir):
    s = await make_server(tiny_model_dir, metrics_port=0)
    shared = "Objects in view, nearest first: chair, table, lamp, window, door. " * 3
    for question in ("Where is the lamp?", "What is ahead?"):
        await collect(s.stub.Generate(gen(shared + question, max_new_tokens=2)))
    m = scrape(s)
    reused = m[("arbridge_prompt_tokens_total", (("source", "prefix_cache"),))]
    prefilled = m[("arbridge_prompt_tokens_total", (("source", "prefill"),))]
    assert reused >= 16 and prefilled > 0  # the second prompt found the first's blocks
    assert m[("arbridge_prefix_cache_bytes", ())] > 0
    # The requests ended: the pool's only used blocks are the ones the cache keeps.
    kept = m[("arbridge_kv_blocks", (("state", "prefix_cache"),))]
    assert kept > 0 and m[("arbridge_kv_blocks", (("state", "used"),))] == kept
    assert m[("arbridge_kv_cache_bytes", ())] > 0 and m[("arbridge_kv_preemptions_total", ())] == 0


async def test_metrics_count_draft_tokens_kept_and_rejected(make_server, tiny_model_dir):
    s = await make_server(tiny_model_dir, metrics_port=0)
    # A composed caption passes its known tokens as drafts: every one is kept.
    scene = pb.SceneFeatures(objects=[
        pb.SceneObject(id="c1", label="chair", pose=pb.Pose(position=pb.Vec3(x=-1, z=1))),
        pb.SceneObject(id="l1", label="lamp", pose=pb.Pose(position=pb.Vec3(x=1, z=3)))])
    _, done, _ = await collect(s.stub.DescribeScene(spb.DescribeSceneRequest(
        scene=scene, sampling=pb.SamplingParams(max_new_tokens=40))))
    m = scrape(s)
    kept = m[("arbridge_draft_tokens_total", (("outcome", "kept"),))]
    rejected = m[("arbridge_draft_tokens_total", (("outcome", "rejected"),))]
    assert done[0].usage.completion_tokens > 2 and kept >= done[0].usage.completion_tokens - 2
    assert rejected == 0, (kept, rejected)
