"""What a storm of long prompts costs everyone else (the engine issue's figures).

`.venv/bin/python tools/storm_probe.py [--source DIR] [--tokens 6500]` starts
`arbridge serve` (the default model, float32, loopback; from this checkout, or the
`server/` of another checkout for a side-by-side run) and measures, one after the
other:

- a short Generate's first token and largest chunk gap while 3 near-context
  prompts, sent on 3 connections just before it, are being read;
- the largest gap of a stream already decoding while one near-context prompt
  arrives and is read;
- the same short Generate when the server is quiet.

Not a test: it prints figures. Loopback only; the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile_probe import REPO, start  # noqa: E402

from arbridge.v1 import service_pb2 as spb  # noqa: E402
from arbridge.v1 import service_pb2_grpc  # noqa: E402
from arbridge.v1 import types_pb2 as pb  # noqa: E402


def long_prompt(tokens: int, seed: int) -> str:
    """About `tokens` tokens of plain prose (SmolLM2 reads ~1.3 tokens a word here)."""
    words = ["the", "lamp", "stands", "near", "a", "window", "and", "chair", "table",
             "kitchen", "door", "light", "blue", "red", "green", "small", "large", "room"]
    out = [words[(i * 7 + seed * 13 + i // 5) % len(words)] for i in range(int(tokens / 1.1))]
    return " ".join(out)


async def timed(stub, request) -> tuple[float, float, int]:
    """(first token s, largest gap between chunks s, chunks) of one Generate."""
    started = time.perf_counter()
    first, last, gap, chunks = None, None, 0.0, 0
    async for response in stub.Generate(request, timeout=600):
        if response.WhichOneof("event") != "chunk":
            continue
        now = time.perf_counter()
        first = first if first is not None else now - started
        if last is not None:
            gap = max(gap, now - last)
        last, chunks = now, chunks + 1
    return first or float("nan"), gap, chunks


async def storm(target: str, tokens: int) -> list[str]:
    short = spb.GenerateRequest(prompt="The lamp on the desk is",
                                sampling=pb.SamplingParams(max_new_tokens=16))
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    stubs = [service_pb2_grpc.ArBridgeServiceStub(c) for c in channels]
    try:
        quiet = [await timed(stubs[0], short) for _ in range(3)]
        quiet_first = sorted(q[0] for q in quiet)[1]
        longs = [asyncio.ensure_future(timed(stubs[i + 1], spb.GenerateRequest(
            prompt=long_prompt(tokens, i), sampling=pb.SamplingParams(max_new_tokens=4))))
            for i in range(3)]
        await asyncio.sleep(0.3)  # they arrive first
        first, gap, _ = await timed(stubs[0], short)
        long_firsts = [r[0] for r in await asyncio.gather(*longs)]
        lines = [f"short Generate behind 3 prompts of ~{tokens} tokens: first token "
                 f"{first:.2f} s (quiet {quiet_first:.2f} s), largest chunk gap {gap:.2f} s; "
                 f"the long ones' first tokens {', '.join(f'{x:.1f}' for x in long_firsts)} s"]
        stream = asyncio.ensure_future(timed(stubs[0], spb.GenerateRequest(
            prompt="Count to one thousand: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
            sampling=pb.SamplingParams(max_new_tokens=400))))
        await asyncio.sleep(1.0)  # it is decoding
        started = time.perf_counter()
        long_first, _, _ = await timed(stubs[1], spb.GenerateRequest(
            prompt=long_prompt(tokens, 7), sampling=pb.SamplingParams(max_new_tokens=2)))
        read_s = time.perf_counter() - started
        _, stream_gap, chunks = await stream
        lines.append(f"a stream decoding while a ~{tokens}-token prompt is read "
                     f"({read_s:.1f} s to its first token): largest gap {stream_gap:.2f} s "
                     f"over {chunks} chunks")
        return lines
    finally:
        for channel in channels:
            await channel.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO / "server")
    parser.add_argument("--tokens", type=int, default=6500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, port, _ = start(args.source.resolve(), Path(tmp) / "server.log")
        try:
            print(f"code: {args.source}  model: default (SmolLM2-135M-Instruct), float32",
                  flush=True)
            for line in await storm(f"127.0.0.1:{port}", args.tokens):
                print(line, flush=True)
        finally:
            proc.terminate()
            proc.wait(60)


if __name__ == "__main__":
    asyncio.run(main())
