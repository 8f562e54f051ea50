"""`arbridge resume-bench`: what a dropped connection costs a resumable reply.

Real captions on the served model: each client reads a few chunks of a resumable
DescribeScene, drops the call (the server cannot tell this from a lost network),
stays away for a while as a headset switching networks would, then Resumes from
the last seq it got. Reported: tokens generated twice (the engine's token counter
against the replies' own token counts; the goal is 0), the time from the Resume
call to its first response, and whether every resumed text equals the same
scene's uncut caption (greedy, so it must).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time

import grpc

from arbridge.config import Settings
from arbridge.tools.scenes import scenes
from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import service_pb2_grpc
from arbridge.v1 import types_pb2 as pb

STREAMS = 32
CONCURRENCY = 8


async def run_resume_bench(settings: Settings, streams: int = STREAMS, seed: int = 0) -> dict:
    from arbridge.app import ArBridgeServer

    server = ArBridgeServer(settings.model_copy(update={"port": 0}))
    await server.start()
    await server.load()
    sampling = pb.SamplingParams(max_new_tokens=60, temperature=0.0)
    resumable = pb.StreamOptions(resumable=True)
    chosen = scenes(streams, seed + 7)
    rng = random.Random(seed)
    plan = [(rng.randint(1, 6), rng.uniform(0.0, 0.3)) for _ in chosen]
    tokens = server.metrics.registry

    def generated() -> float:
        return tokens.get_sample_value("arbridge_generated_tokens_total") or 0.0

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = service_pb2_grpc.ArBridgeServiceStub(channel)
            uncut = []
            for scene in chosen:
                async for r in stub.DescribeScene(spb.DescribeSceneRequest(
                        scene=scene, sampling=sampling)):
                    if r.WhichOneof("event") == "completion":
                        uncut.append(r.completion.text)
            before = generated()
            sem = asyncio.Semaphore(CONCURRENCY)

            async def one(scene, cut_after: int, away_s: float):
                async with sem:
                    text, last, stream_id, done = "", 0, "", None
                    call = stub.DescribeScene(spb.DescribeSceneRequest(
                        scene=scene, sampling=sampling, stream=resumable))
                    chunks = 0
                    async for r in call:
                        stream_id = stream_id or r.stream_id
                        last = r.seq
                        if r.WhichOneof("event") == "chunk":
                            text += r.chunk.text
                            chunks += 1
                            if chunks >= cut_after:
                                call.cancel()
                                break
                        else:
                            done = r.completion
                    latency = None
                    if done is None:
                        await asyncio.sleep(away_s)
                        started = time.perf_counter()
                        async for r in stub.Resume(spb.ResumeRequest(stream_id=stream_id,
                                                                     after_seq=last)):
                            latency = latency or (time.perf_counter() - started) * 1e3
                            if r.WhichOneof("event") == "chunk":
                                text += r.chunk.text
                            else:
                                done = r.completion
                    return text, done, latency

            results = await asyncio.gather(*(one(s, c, a) for s, (c, a) in zip(
                chosen, plan, strict=True)))
            regenerated = generated() - before - sum(d.usage.completion_tokens
                                                     for _, d, _ in results)
    finally:
        await server.stop(grace=1)
    latencies = sorted(x for _, _, x in results if x is not None)
    return {
        "model": settings.model or "SmolLM2-135M-Instruct", "dtype": settings.dtype,
        "streams": streams, "resumed": len(latencies),
        "tokens_regenerated": int(regenerated),
        "resume_first_response_ms_p50": round(statistics.median(latencies), 1),
        "resume_first_response_ms_max": round(latencies[-1], 1),
        "texts_equal_uncut": sum(t == u for (t, _, _), u in zip(results, uncut, strict=True)),
    }


def format_report(r: dict) -> str:
    return (f"arbridge resume-bench ({r['model']}, dtype {r['dtype']}, greedy captions, "
            f"{r['streams']} resumable streams dropped after 1-6 chunks, away 0-300 ms)\n"
            f"resumed {r['resumed']}, texts equal to the uncut caption "
            f"{r['texts_equal_uncut']}/{r['streams']}, tokens generated twice "
            f"{r['tokens_regenerated']}, Resume to first response p50 "
            f"{r['resume_first_response_ms_p50']} ms (max {r['resume_first_response_ms_max']}"
            " ms)")
