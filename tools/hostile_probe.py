"""What hostile clients cost a server with the default model (issue #28's figures).

`.venv/bin/python tools/hostile_probe.py [--source DIR]` starts `arbridge serve` (the
default model, float32, loopback) from this checkout, or from the `server/` of another
checkout given as --source (the code before a change, for a side-by-side run), and
measures, against that one process:

- grammar bombs: N Generates with distinct `(a{1000}){1000}`-style regexes: their
  statuses, seconds, and the server's RSS growth;
- abandoned resumable replies: 36 resumable Generates dropped after their first
  response, then a bystander's first-token time (vs the same bystander when quiet);
- Ask sessions of 4-byte UTF-8: how many 4 MB sessions a 64 MiB budget keeps.

Not a test: it prints figures. Loopback only; the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "server"))

from arbridge.tools.server_process import rss_mb  # noqa: E402
from arbridge.tools.server_process import start as start_server  # noqa: E402
from arbridge.v1 import service_pb2 as spb  # noqa: E402
from arbridge.v1 import service_pb2_grpc  # noqa: E402
from arbridge.v1 import types_pb2 as pb  # noqa: E402


def start(source: Path, log: Path, *flags: str):
    return start_server(source, log, *flags, env={
        "ARBRIDGE_MAX_MESSAGE_BYTES": str(8 << 20),
        "ARBRIDGE_MAX_ASK_SESSION_BYTES": str(64 << 20)})


async def first_token_s(stub, request) -> float:
    started = time.perf_counter()
    async for response in stub.Generate(request, timeout=120):
        if response.WhichOneof("event") == "chunk":
            return time.perf_counter() - started
    return float("nan")


async def grammar_bombs(stub, pid: int, count: int) -> str:
    before = rss_mb(pid)
    codes: dict[str, int] = {}
    started = time.perf_counter()
    for i in range(count):
        regex = f"(a{{1000}}){{1000}}{'x' * (i + 1)}"  # distinct grammars, same size
        request = spb.GenerateRequest(prompt="Code:", sampling=pb.SamplingParams(
            max_new_tokens=8, response_format=pb.ResponseFormat(regex=regex)))
        try:
            last = None
            async for response in stub.Generate(request, timeout=120):
                last = response
            key = "OK/" + pb.FinishReason.Name(last.completion.finish_reason)
        except grpc.aio.AioRpcError as err:
            key = err.code().name
        codes[key] = codes.get(key, 0) + 1
    return (f"{count} grammar bombs: {codes}, {time.perf_counter() - started:.1f} s, "
            f"server RSS {before:.0f} -> {rss_mb(pid):.0f} MB")


def engine_load(metrics_url: str) -> str:
    """The engine's active and queued requests, from the server's /metrics."""
    with urllib.request.urlopen(metrics_url, timeout=5) as reply:
        text = reply.read().decode()
    values = {name: re.search(rf"^{name} (\S+)$", text, re.M) for name in
              ("arbridge_active_requests", "arbridge_queued_requests")}
    return ", ".join(f"{name.split('_')[1]} {float(m.group(1)):.0f}"
                     for name, m in values.items() if m)


async def abandoned_replies(stub, target: str, metrics_url: str) -> str:
    """36 resumable replies, each dropped by its client after its first response (as a
    careless or hostile client would), one after another: what each new request waits
    for its first response meanwhile, and what a bystander waits right after."""
    bystander = spb.GenerateRequest(prompt="The lamp on the desk", sampling=pb.SamplingParams(
        max_new_tokens=4))
    quiet = sorted([await first_token_s(stub, bystander) for _ in range(5)])[2]
    # A prompt the model goes on with (no early EOS), as a long caption would.
    numbers = ", ".join(str(i) for i in range(1, 21))
    request = spb.GenerateRequest(prompt=f"Count to one thousand: {numbers},",
                                  stream=pb.StreamOptions(resumable=True),
                                  sampling=pb.SamplingParams(max_new_tokens=1000))
    waits = []
    started = time.perf_counter()
    for _ in range(36):
        async with grpc.aio.insecure_channel(target) as channel:
            opened = time.perf_counter()
            call = service_pb2_grpc.ArBridgeServiceStub(channel).Generate(request)
            async for _ in call:
                break
            waits.append(time.perf_counter() - opened)
            call.cancel()
    total = time.perf_counter() - started
    load = engine_load(metrics_url)
    loaded = sorted([await first_token_s(stub, bystander) for _ in range(5)])[2]
    waits.sort()
    return (f"36 abandoned resumable replies: their first responses p50 {waits[18]:.2f} s, "
            f"max {waits[-1]:.2f} s, {total:.1f} s for all; then engine {load}; bystander "
            f"first token p50 of 5: {loaded:.3f} s (quiet {quiet:.3f} s)")


async def emoji_sessions(stub, pid: int, count: int) -> str:
    turn = "\U0001F600" * 20_000  # 80 KB of UTF-8 in 20,000 characters
    history = [pb.DialogueTurn(role=pb.ROLE_USER if i % 2 == 0 else pb.ROLE_ASSISTANT,
                               text=turn) for i in range(50)]  # 4 MB a session
    before = rss_mb(pid)
    ids = []
    for _ in range(count):
        request = spb.AskRequest(start=spb.ConverseStart(history=history),
                                 user_turn=spb.UserTurn(text="hi", sampling=pb.SamplingParams(
                                     max_new_tokens=1)))
        async for response in stub.Ask(request, timeout=120):
            ids.append(response.session_id)
            break
    kept = 0
    for session_id in ids:
        try:
            async for _ in stub.Ask(spb.AskRequest(session_id=session_id, user_turn=spb.UserTurn(
                    text="hi", sampling=pb.SamplingParams(max_new_tokens=1))), timeout=120):
                pass
            kept += 1
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND, err
    return (f"{count} Ask sessions of 4 MB (4-byte UTF-8) under a 64 MiB budget: {kept} kept, "
            f"server RSS {before:.0f} -> {rss_mb(pid):.0f} MB")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO / "server",
                        help="the server/ folder whose code runs (default: this checkout)")
    parser.add_argument("--bombs", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, port, metrics_url = start(args.source.resolve(), Path(tmp) / "server.log")
        target = f"127.0.0.1:{port}"
        try:
            async with grpc.aio.insecure_channel(target, options=[
                    ("grpc.max_send_message_length", 8 << 20)]) as channel:
                stub = service_pb2_grpc.ArBridgeServiceStub(channel)
                print(f"code: {args.source}  model: default (SmolLM2-135M-Instruct), float32",
                      flush=True)
                print(await grammar_bombs(stub, proc.pid, args.bombs), flush=True)
                print(await abandoned_replies(stub, target, metrics_url), flush=True)
                print(await emoji_sessions(stub, proc.pid, args.sessions), flush=True)
        finally:
            proc.terminate()
            proc.wait(60)


if __name__ == "__main__":
    asyncio.run(main())
