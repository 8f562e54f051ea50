"""What a storm of long prompts costs everyone else, and the server's memory through it.

`arbridge storm-bench [--source DIR]` starts `arbridge serve` with default settings
(the default model unless --model; float32; loopback), from this checkout or from the
`server/` directory of another checkout (the code before a change, for a side-by-side
run), and measures against that one process, one phase after the other:

- idle: resident memory once it says SERVING;
- bystander: a short Generate's first token and largest chunk gap while 3
  near-context prompts, sent on 3 connections just before it, are read, beside the
  same Generate on a quiet server;
- decoding: the largest gap of a stream already decoding while one near-context
  prompt arrives and is read;
- memory: peak resident memory (VmHWM) over a storm of 3 near-context prompts,
  4 DescribeScene calls of 256 one-word objects and 2 Generates of 8 sequences,
  all at once, and what stays resident after it.

Not a test: it prints figures and the engine issue's targets beside them, and writes
them to bench/results/storm.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import platform
import tempfile
import time
from pathlib import Path

import grpc

from arbridge.tools.server_process import rss_mb, start
from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import service_pb2_grpc
from arbridge.v1 import types_pb2 as pb

LABELS = ["chair", "table", "lamp", "window", "door", "plant", "shelf", "sofa", "mug", "book",
          "laptop", "phone", "bottle", "clock", "rug", "vase"]


def long_prompt(tokens: int, seed: int) -> str:
    """About `tokens` tokens of plain prose (SmolLM2 reads ~1.1 tokens a word here)."""
    words = ["the", "lamp", "stands", "near", "a", "window", "and", "chair", "table",
             "kitchen", "door", "light", "blue", "red", "green", "small", "large", "room"]
    out = [words[(i * 7 + seed * 13 + i // 5) % len(words)] for i in range(int(tokens / 1.1))]
    return " ".join(out)


def big_scene(objects: int = 256) -> pb.SceneFeatures:
    return pb.SceneFeatures(objects=[
        pb.SceneObject(id=f"o{i}", label=LABELS[i % len(LABELS)], pose=pb.Pose(
            position=pb.Vec3(x=(i % 16) - 8.0, y=0.0, z=1.0 + i // 16)))
        for i in range(objects)])


async def timed(call) -> tuple[float, float, int]:
    """(first chunk s, largest gap between chunks s, chunks) of one streaming call."""
    started = time.perf_counter()
    first, last, gap, chunks = None, None, 0.0, 0
    async for response in call:
        if response.WhichOneof("event") != "chunk":
            continue
        now = time.perf_counter()
        first = first if first is not None else now - started
        if last is not None:
            gap = max(gap, now - last)
        last, chunks = now, chunks + 1
    return first or float("nan"), gap, chunks


async def phases(target: str, pid: int, tokens: int, rss_limit_mb: float = 12000,
                 storm_limit_s: float = 600) -> dict:
    results: dict = {}
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    stubs = [service_pb2_grpc.ArBridgeServiceStub(c) for c in channels]
    short = spb.GenerateRequest(prompt="The lamp on the desk is",
                                sampling=pb.SamplingParams(max_new_tokens=16))
    try:
        quiet = [await timed(stubs[0].Generate(short, timeout=600)) for _ in range(3)]
        results["quiet_first_token_s"] = sorted(q[0] for q in quiet)[1]
        results["quiet_gap_s"] = sorted(q[1] for q in quiet)[1]

        longs = [asyncio.ensure_future(timed(stubs[i + 1].Generate(spb.GenerateRequest(
            prompt=long_prompt(tokens, i), sampling=pb.SamplingParams(max_new_tokens=4)),
            timeout=600))) for i in range(3)]
        await asyncio.sleep(0.3)  # they arrive first
        first, gap, _ = await timed(stubs[0].Generate(short, timeout=600))
        results["bystander_first_token_s"], results["bystander_gap_s"] = first, gap
        results["long_first_tokens_s"] = [r[0] for r in await asyncio.gather(*longs)]
        print(f"bystander: first token {first:.2f} s, largest gap {gap:.2f} s", flush=True)

        stream = asyncio.ensure_future(timed(stubs[0].Generate(spb.GenerateRequest(
            prompt="Count to one thousand: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
            sampling=pb.SamplingParams(max_new_tokens=400)), timeout=600)))
        await asyncio.sleep(1.0)  # it is decoding
        started = time.perf_counter()
        await timed(stubs[1].Generate(spb.GenerateRequest(
            prompt=long_prompt(tokens, 7), sampling=pb.SamplingParams(max_new_tokens=2)),
            timeout=600))
        results["long_read_s"] = time.perf_counter() - started
        _, results["decoding_gap_s"], _ = await stream
        print(f"decoding stream's largest gap {results['decoding_gap_s']:.2f} s", flush=True)

        calls = [stubs[i % 4].Generate(spb.GenerateRequest(
            prompt=long_prompt(tokens, 20 + i), sampling=pb.SamplingParams(max_new_tokens=16)),
            timeout=900) for i in range(3)]
        calls += [stubs[i % 4].DescribeScene(spb.DescribeSceneRequest(
            scene=big_scene(), sampling=pb.SamplingParams(max_new_tokens=32, seed=i)),
            timeout=900) for i in range(4)]
        calls += [stubs[i % 4].Generate(spb.GenerateRequest(
            prompt=long_prompt(1000, 40 + i), sampling=pb.SamplingParams(
                max_new_tokens=64, temperature=0.8, num_return_sequences=8)), timeout=900)
            for i in range(2)]
        started = time.perf_counter()
        storm = asyncio.ensure_future(asyncio.gather(*(timed(c) for c in calls),
                                                     return_exceptions=True))
        # A server that swells past the limit or takes too long is stopped here, not
        # left to swap the machine: its figures so far are the result.
        results["storm_stopped"] = ""
        while not storm.done():
            await asyncio.wait([storm], timeout=0.5)
            if rss_mb(pid) > rss_limit_mb:
                results["storm_stopped"] = f"RSS over {rss_limit_mb} MB"
            elif time.perf_counter() - started > storm_limit_s:
                results["storm_stopped"] = f"still running after {storm_limit_s} s"
            if results["storm_stopped"]:
                results["peak_rss_mb"] = rss_mb(pid, "VmHWM")
                for c in calls:
                    c.cancel()
                storm.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await storm
                return results
        outcomes = storm.result()
        results["storm_s"] = time.perf_counter() - started
        results["storm_errors"] = [f"{type(o).__name__}: {getattr(o, 'code', lambda: '')()}"
                                   for o in outcomes if isinstance(o, BaseException)]
        results["peak_rss_mb"] = rss_mb(pid, "VmHWM")
        await asyncio.sleep(2)
        results["after_storm_rss_mb"] = rss_mb(pid)
        return results
    finally:
        for channel in channels:
            await channel.close()


def cpu_flags() -> str:
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "fma")
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = set(next(line for line in text.splitlines() if line.startswith("flags"))
                    .split(":")[1].split())
        model = next(line for line in text.splitlines() if line.startswith("model name"))
        return f"{model.split(':')[1].strip()}; " + " ".join(f for f in wanted if f in flags)
    except (OSError, StopIteration):
        return platform.processor()


def run_storm_bench(source: Path | None, tokens: int, model: str | None,
                    out: Path | None) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        flags = ["--dtype", "float32"] + (["--model", model] if model else [])
        proc, port, _ = start(source, Path(tmp) / "server.log", *flags)
        try:
            time.sleep(2)
            idle = rss_mb(proc.pid)
            results = asyncio.run(phases(f"127.0.0.1:{port}", proc.pid, tokens))
            results["idle_rss_mb"] = idle
        finally:
            proc.terminate()
            proc.wait(60)
    results.update(code=str(source or "this checkout"), tokens=tokens, dtype="float32",
                   cpu=cpu_flags(), model=model or "default (SmolLM2-135M-Instruct)")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    return format_report(results)


def format_report(r: dict) -> str:
    quiet = r["quiet_first_token_s"]
    rows = [
        ("idle RSS after SERVING", f"{r['idle_rss_mb']:.0f} MB", "<= 1536 MB"),
        (f"bystander first token behind 3 prompts of ~{r['tokens']} tokens",
         f"{r['bystander_first_token_s']:.2f} s", f"<= quiet + 1.0 = {quiet + 1:.2f} s"),
        ("bystander largest chunk gap", f"{r['bystander_gap_s']:.2f} s", "<= 0.50 s"),
        ("decoding stream's largest gap while one is read", f"{r['decoding_gap_s']:.2f} s",
         "<= 0.50 s"),
        ("peak RSS over the storm", f"{r['peak_rss_mb']:.0f} MB", "<= 3584 MB"),
    ]
    if r["storm_stopped"]:
        rows[-1] = ("peak RSS over the storm (stopped: " + r["storm_stopped"] + ")",
                    f">= {r['peak_rss_mb']:.0f} MB", "<= 3584 MB")
    else:
        rows.append(("RSS after the storm", f"{r['after_storm_rss_mb']:.0f} MB", ""))
    lines = [f"storm bench: {r['model']}, {r['dtype']}, code: {r['code']}",
             f"cpu: {r['cpu']}",
             f"quiet: first token {quiet:.2f} s, gap {r['quiet_gap_s']:.2f} s; long prompts' "
             f"first tokens {', '.join(f'{x:.1f}' for x in r['long_first_tokens_s'])} s; "
             f"one read while decoding {r['long_read_s']:.1f} s"
             + (f"; storm {r['storm_s']:.1f} s" if "storm_s" in r else "")
             + (f"; errors {r['storm_errors']}" if r.get("storm_errors") else "")]
    width = max(len(name) for name, _, _ in rows)
    lines += [f"  {name:<{width}}  {value:>9}  {target}" for name, value, target in rows]
    return "\n".join(lines)
