"""Chaos: 64 concurrent streams whose clients cancel, disconnect, set tiny deadlines
or read slowly. Afterwards no slot is held (read from the metrics endpoint) and
every undisturbed stream got exactly the text it gets when it runs alone."""

from __future__ import annotations

import asyncio
import collections
import random

import grpc

from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import service_pb2_grpc
from arbridge.v1 import types_pb2 as pb

from conftest import collect, scrape
from upstream import TcpProxy

STREAMS = 64
VANISHED: list[TcpProxy] = []  # closed at the end, after the server gave up on them
NEW_TOKENS = 24
PROMPTS = [f"{w} is" for w in ("The red chair", "A lamp", "The kitchen table", "Two cups",
                               "The window", "A small plant", "The door", "Three books")]
BEHAVIOURS = ("complete", "slow_reader", "cancel", "disconnect", "tiny_deadline", "vanish")


def request(prompt: str) -> spb.GenerateRequest:
    return spb.GenerateRequest(prompt=prompt,
                               sampling=pb.SamplingParams(max_new_tokens=NEW_TOKENS))


async def client(target: str, prompt: str, behaviour: str, rng: random.Random) -> dict:
    proxy = None
    if behaviour == "vanish":  # through a proxy that can fall silent
        proxy = await TcpProxy(int(target.rsplit(":", 1)[1])).start()
        target = f"127.0.0.1:{proxy.port}"
    channel = grpc.aio.insecure_channel(target)
    stub = service_pb2_grpc.ArBridgeServiceStub(channel)
    timeout = rng.uniform(0.01, 0.4) if behaviour == "tiny_deadline" else 120
    call = stub.Generate(request(prompt), timeout=timeout)
    stop_after = rng.randint(0, 6)
    chunks, completion = [], None
    try:
        async for response in call:
            if response.WhichOneof("event") == "chunk":
                chunks.append(response.chunk.text)
                if behaviour == "slow_reader":
                    await asyncio.sleep(rng.uniform(0.01, 0.08))
                if behaviour == "cancel" and len(chunks) > stop_after:
                    call.cancel()
                    break
                if behaviour == "disconnect" and len(chunks) > stop_after:
                    await channel.close(grace=None)  # the app closes its connection
                    break
                if behaviour == "vanish" and len(chunks) > stop_after:
                    proxy.blackhole()  # the headset walks out of Wi-Fi: no FIN, no RST
                    call.cancel()
                    break
            else:
                completion = response.completion
    except grpc.aio.AioRpcError as err:
        return {"behaviour": behaviour, "prompt": prompt, "error": err.code(),
                "text": "".join(chunks), "chunks": len(chunks)}
    finally:
        await channel.close()
        if proxy is not None:
            VANISHED.append(proxy)
    return {"behaviour": behaviour, "prompt": prompt, "completion": completion,
            "text": "".join(chunks)}


async def test_chaos_leaves_no_slot_behind_and_undisturbed_streams_complete(make_server,
                                                                            tiny_model_dir):
    s = await make_server(tiny_model_dir, step_delay=0.003, max_active=16, max_queue=64,
                          max_streams_per_peer=STREAMS * 2, metrics_port=0)
    alone = {}
    for prompt in PROMPTS:  # what each prompt gives when it runs alone
        _, done, _ = await collect(s.stub.Generate(request(prompt)))
        alone[prompt] = done[0].text

    rng = random.Random(1234)
    plan = [(rng.choice(PROMPTS), BEHAVIOURS[i % len(BEHAVIOURS)]) for i in range(STREAMS)]
    results = await asyncio.gather(*(client(s.target, p, b, random.Random(i))
                                     for i, (p, b) in enumerate(plan)))

    undisturbed = [r for r in results if r["behaviour"] in ("complete", "slow_reader")]
    assert len(undisturbed) >= 2 * STREAMS // len(BEHAVIOURS)
    for r in undisturbed:
        assert "error" not in r, r
        assert r["completion"].finish_reason == pb.FINISH_REASON_LENGTH
        assert r["completion"].usage.completion_tokens == NEW_TOKENS
        assert r["text"] == r["completion"].text == alone[r["prompt"]], r
    for r in results:
        if r["behaviour"] == "tiny_deadline":
            if "error" in r:
                assert r["error"] == grpc.StatusCode.DEADLINE_EXCEEDED, r
            elif r["completion"].finish_reason == pb.FINISH_REASON_LENGTH:
                assert r["text"] == alone[r["prompt"]]  # fast enough to finish anyway
            else:  # the usual case: the text so far, ended in time
                assert r["completion"].finish_reason == pb.FINISH_REASON_TIME_LIMIT, r
                assert alone[r["prompt"]].startswith(r["text"])

    # Every slot is freed, whatever the client did. (A vanished client's stream runs
    # to its end: server keepalive did not notice a silent peer mid-stream in our
    # tests with grpc 1.85, so the call's deadline is what bounds it.)
    for _ in range(500):
        metrics = scrape(s)
        if (metrics[("arbridge_active_requests", ())], metrics[("arbridge_queued_requests", ())],
                s.server.drain.inflight) == (0, 0, 0):
            break
        await asyncio.sleep(0.02)
    assert metrics[("arbridge_active_requests", ())] == 0, "leaked batch slots"
    assert metrics[("arbridge_queued_requests", ())] == 0
    assert metrics[("arbridge_open_rpcs", (("method", "/arbridge.v1.ArBridgeService/Generate"),))
                   ] == 0
    assert s.server.drain.inflight == 0 and not s.server.interceptors.peers.open
    for proxy in VANISHED:
        await proxy.close()
    codes = {dict(k[1])["code"]: int(v) for k, v in metrics.items()
             if k[0] == "arbridge_rpcs_total"}
    assert set(codes) <= {"OK", "CANCELLED", "DEADLINE_EXCEEDED"}, codes
    # A deadline can expire before the server even dispatches the call: only those
    # may be missing from the server's count.
    expired = sum(1 for r in results if r.get("error") == grpc.StatusCode.DEADLINE_EXCEEDED)
    assert STREAMS + len(PROMPTS) - expired <= sum(codes.values()) <= STREAMS + len(PROMPTS)
    ends = collections.Counter(
        r["behaviour"] + ":" + (r["error"].name if "error" in r else
                                pb.FinishReason.Name(r["completion"].finish_reason)
                                if r["completion"] else "left early")
        for r in results)
    print(f"\nchaos: {STREAMS} streams {dict(sorted(ends.items()))}; server statuses {codes}; "
          "leaked slots 0")
    # And the server still serves at full speed for everyone.
    again = await asyncio.gather(*(collect(s.stub.Generate(request(p))) for p in PROMPTS))
    assert [done[0].text for _, done, _ in again] == [alone[p] for p in PROMPTS]

