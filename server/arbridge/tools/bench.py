"""`arbridge bench`: throughput and latency, as ratios measured in one run.

Every contender gets the same model, dtype, chat prompts and exactly the same
number of new tokens (greedy, EOS ignored):

  hf-sequential   transformers `model.generate`, one request after another
  hf-batch        transformers `model.generate` on one static padded batch
  engine@N        ArBridge's scheduler in-process, N concurrent requests, as
                  served (fused decoder, prompt-prefix cache)
  engine-nospec   without speculative decoding (one token a decode pass)
  engine-noprefix without the prefix cache (every prompt prefilled in full)
  engine-hf       without either: transformers' own forward, full prefill
  engine-sdpa     (bfloat16 runs) with decode attention on gathered blocks through
                  SDPA instead of the paged kernel (`attention_kernel_bfloat16 = false`)
  engine-pylayers the decoder layers of a decode pass called one kernel at a time from
                  Python instead of in one C++ call (the same numbers)
  engine-w8a16    (runs with `--int8-activations`) int8 weights with bfloat16
                  activations, the int8 default
  grpc@N          ArBridge over gRPC on loopback, N concurrent streams (the
                  client in its own process)
  ts@1            `transformers serve` (one request at a time) on loopback
  ts-cb@N         `transformers serve --continuous-batching` on loopback, N
                  concurrent streams through its OpenAI-compatible API (when the
                  optional `bench` extra is installed). Both run to max_tokens
                  through EOS (a request-level GenerationConfig whose EOS id no
                  token has); token counts come from its usage report.
  bridge>ts-cb@N  ArBridge with `--backend openai` in front of that same
                  `transformers serve`: what the bridge costs when it only
                  forwards (prompting, streaming, statuses) to an upstream engine.

No prompt repeats: every request's question carries its own label, so
ArBridge's prefix cache reuses only the system prompt and scene the prompts
share (warm, as on a server that has answered before). The ablation rows show
what each part of the engine is worth.

Time to first token (TTFT) is measured from submitting a request to its first
token; inter-token latency (ITL) is the gap between consecutive tokens of one
stream. Results go to bench/results/<time>.json and a PNG plot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from arbridge.config import Settings
from arbridge.engine import matmul_layouts
from arbridge.generation import SamplingConfig
from arbridge.models.loader import LoadedModel, load_model
from arbridge.serving.prompts import PromptBuilder
from arbridge.tools.load_runs import Result, bounded, record
from arbridge.v1 import types_pb2 as pb

QUESTIONS = [
    "Describe what is around me in one or two short sentences.",
    "Where is the chair?",
    "Is there anything I could sit on?",
    "What is the nearest object to me?",
    "Which objects are made of glass?",
    "Is it safe to walk forward?",
    "What would you put on the table?",
    "How far away is the lamp?",
]


def bench_questions(tag: str, count: int) -> list[str]:
    """The questions of one run: QUESTIONS in turn, each made unique by a
    request label, so no prompt ever repeats an earlier one and ArBridge's
    prefix cache reuses only what the prompts really share (system prompt and
    scene), as with a headset asking new questions about the same room."""
    return [f"(request {tag}-{i + 1}) {QUESTIONS[i % len(QUESTIONS)]}" for i in range(count)]


def bench_scene() -> pb.SceneFeatures:
    def at(x, z):
        return pb.Pose(position=pb.Vec3(x=x, y=0.0, z=z))

    return pb.SceneFeatures(location_hint="a small kitchen", objects=[
        pb.SceneObject(id="1", label="chair", pose=at(-1.0, 1.2),
                       attributes={"color": "red", "material": "wood"}),
        pb.SceneObject(id="2", label="table", pose=at(0.2, 2.0), attributes={"material": "glass"}),
        pb.SceneObject(id="3", label="lamp", pose=at(3.5, 4.0)),
    ])


# -- transformers baselines -------------------------------------------------------------
def hf_sequential(lm: LoadedModel, prompts: list[list[int]], new_tokens: int) -> Result:
    started = time.perf_counter()
    for ids in prompts:
        with torch.inference_mode():
            lm.model.generate(torch.tensor([ids], device=lm.model.device),
                              max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False)
    return Result("hf-sequential", 1, len(prompts), new_tokens * len(prompts),
                  time.perf_counter() - started)


def hf_batch(lm: LoadedModel, prompts: list[list[int]], new_tokens: int) -> Result:
    width = max(len(p) for p in prompts)
    pad = lm.tokenizer.pad_token_id
    pad = pad if pad is not None else lm.tokenizer.eos_token_id
    device = lm.model.device
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)  # left pad
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    started = time.perf_counter()
    with torch.inference_mode():
        lm.model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
    return Result("hf-batch", len(prompts), len(prompts), new_tokens * len(prompts),
                  time.perf_counter() - started)


# -- ArBridge -----------------------------------------------------------------------------
async def engine_run(engine, prompts: list[list[int]], cfg: SamplingConfig,
                     concurrency: int) -> Result:
    result = Result("engine", concurrency, len(prompts), 0, 0.0)

    async def one(ids):
        key = str(prompts.index(ids))
        submitted = time.perf_counter()
        times, tokens = [], []
        async for out in engine.submit(ids, cfg):
            times.extend(out.at for _ in out.tokens)
            tokens += [token for _, token, _ in out.tokens]
        record(result, times, submitted)
        result.outputs[key] = tokens

    started = time.perf_counter()
    await bounded(prompts, one, concurrency)
    result.wall_s = time.perf_counter() - started
    return result


async def grpc_run(stub, texts: list[str], cfg: SamplingConfig, concurrency: int) -> Result:
    from arbridge.v1 import service_pb2 as spb

    result = Result("grpc", concurrency, len(texts), 0, 0.0)
    sampling = pb.SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=0.0, seed=1)

    async def one(scene_and_question):
        scene, question = scene_and_question
        request = spb.DescribeSceneRequest(scene=scene, instruction=question, sampling=sampling)
        submitted = time.perf_counter()
        times, tokens = [], None
        async for response in stub.DescribeScene(request):
            if response.WhichOneof("event") == "chunk":
                # Upstream-backed chunks carry no ids: one streamed event each.
                times.extend(time.perf_counter()
                             for _ in response.chunk.token_ids or [None])
            elif response.WhichOneof("event") == "completion":
                tokens = response.completion.usage.completion_tokens
        record(result, times, submitted, tokens)

    started = time.perf_counter()
    await bounded(texts, one, concurrency)
    result.wall_s = time.perf_counter() - started
    return result


# -- the whole run ----------------------------------------------------------------------
def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def _unequal(ours: Result, peer: Result) -> str:
    return "" if ours.tokens == peer.tokens else \
        f" [unequal token counts: {ours.tokens} vs {peer.tokens}; compare ITL/TTFT]"


def _paired(ours: Result, peer: Result) -> str:
    """tok/s ratio, flagged when the two runs did not generate the same
    number of tokens."""
    return _ratio(ours.tokens_per_s, peer.tokens_per_s) + _unequal(ours, peer)


async def _arbridge_part(settings: Settings, lm: LoadedModel, prompt_ids, cfg,
                         levels, engine_info: dict) -> list:
    from arbridge.engine.async_engine import AsyncEngine
    from arbridge.engine.scheduler import Scheduler

    scheduler = Scheduler.from_settings(lm.model, lm.tokenizer, settings,
                                        context_length=lm.info.context_length,
                                        max_active=max(levels), max_queue=1024,
                                        prefix_cache_bytes=0, quantize=lm.quantize,
                                        fused_only=False)  # the HF rows run model.forward
    scheduler.start()
    try:
        # The baselines run on the scheduler's thread too: every contender
        # computes on the same thread (see Scheduler.call).
        new = cfg.max_new_tokens
        prompts = prompt_ids("hf", len(QUESTIONS))
        spec = settings.speculative_tokens
        bf16_kernel = settings.attention_kernel_bfloat16
        variants = [("engine", True, True, spec, bf16_kernel),
                    ("engine-nospec", True, True, 0, bf16_kernel),
                    ("engine-noprefix", True, False, spec, bf16_kernel),
                    ("engine-pylayers", True, True, spec, bf16_kernel)]
        if lm.model.dtype == torch.bfloat16 and lm.model.device.type == "cpu":
            variants.append(("engine-sdpa", True, True, spec, False))
        if lm.quantize and settings.int8_activations:
            variants.append(("engine-w8a16", True, True, spec, bf16_kernel))
        results = []
        if not lm.quantize:  # transformers' own forward runs float weights only
            results = [scheduler.call(hf_sequential, lm, prompts, new).result(),
                       scheduler.call(hf_batch, lm, prompts, new).result()]
            variants.append(("engine-hf", False, False, spec, False))
        decoder = scheduler.call(lambda: scheduler.runner.fused).result()
        if decoder is not None:
            engine_info.update(weight_bytes=decoder.weight_bytes,
                               kernels=matmul_layouts.describe(decoder.kernel_timings))
        engine = AsyncEngine(scheduler)
        served = scheduler.call(lambda: scheduler.runner.fused).result()
        for name, fused, prefix, speculative, bf16_attention in variants:
            scheduler.call(_engine_variant, scheduler, fused,
                           settings.prefix_cache_mb << 20 if prefix else 0, speculative,
                           bf16_attention).result()
            scheduler.call(_decoder_variant, scheduler, served, name).result()
            await engine_run(engine, prompt_ids("warm-up", 2), cfg, 2)
            for n in levels:
                drafted, kept = scheduler.drafted, scheduler.kept
                result = await engine_run(engine, prompt_ids(str(n), max(n, 4)), cfg, n)
                result.name = name
                if scheduler.drafted > drafted:
                    engine_info.setdefault("drafts", {})[f"{name}@{n}"] = (
                        scheduler.drafted - drafted, scheduler.kept - kept)
                results.append(result)
    finally:
        scheduler.stop()

    results += await _grpc_runs(settings, lm, cfg, levels, ignore_eos=True, name="grpc")
    return results


def _engine_variant(scheduler, fused: bool, prefix_cache_bytes: int,
                    speculative_tokens: int, bf16_attention: bool = False) -> None:
    """Switch the engine's fused decoder, prefix cache, speculation and (bfloat16) paged
    decode attention (on the scheduler thread)."""
    from arbridge.engine import paged_attention
    from arbridge.engine.fused_decoder import FusedDecoder
    from arbridge.engine.prefix_cache import PrefixCache

    scheduler.speculative_tokens = speculative_tokens
    runner = scheduler.runner
    if runner.dtype == torch.bfloat16 and runner.device.type == "cpu":
        runner.attention_kernel = paged_attention.load() if bf16_attention else None
    runner.fused = (runner.fused or FusedDecoder.build(runner.model, runner.quantize)) \
        if fused else None
    if scheduler.prefix_cache is not None:  # its blocks go back to the pool
        scheduler.prefix_cache.evict(len(scheduler.prefix_cache))
    scheduler.prefix_cache = PrefixCache(
        scheduler.pool, prefix_cache_bytes // scheduler.pool.block_bytes) \
        if prefix_cache_bytes else None


def _decoder_variant(scheduler, served, name: str) -> None:
    """The decoder as served, with the layers called from Python (engine-pylayers), or
    rebuilt with bfloat16 activations (engine-w8a16; on the scheduler thread)."""
    from arbridge.engine.fused_decoder import FusedDecoder

    runner = scheduler.runner
    if served is None or runner.fused is None:
        return
    if name == "engine-w8a16":
        runner.fused = FusedDecoder.build(runner.model, runner.quantize)
        scheduler.lookup_drafts = False  # as the scheduler sets it for these numbers
    else:
        runner.fused = served
        scheduler.lookup_drafts = scheduler.lookup_drafts or scheduler.int8_drafts_exact()
    runner.fused.use_native_layers = name != "engine-pylayers"


async def _grpc_runs(settings: Settings, lm: LoadedModel | None, cfg: SamplingConfig,
                     levels: tuple[int, ...], ignore_eos: bool, name: str) -> list[Result]:
    """ArBridge over gRPC, driven by a client in a separate process.

    The client runs elsewhere, as a headset would: in the server's process it
    would compete with the scheduler thread for the GIL and inflate the
    overhead being measured.
    """
    import concurrent.futures
    import multiprocessing

    from arbridge.app import ArBridgeServer

    server = ArBridgeServer(settings.model_copy(update={
        "port": 0, "max_active": max(levels), "max_queue": 1024}), ignore_eos=ignore_eos)
    await server.start()
    await server.load(preloaded=lm)
    try:
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
            raw = await asyncio.get_running_loop().run_in_executor(
                pool, _client_process, f"127.0.0.1:{server.port}", cfg.max_new_tokens, levels)
    finally:
        await server.stop(grace=1)
    results = [Result(**r) for r in raw]
    for r in results:
        r.name = name
    return results


def _client_process(target: str, new_tokens: int, levels: tuple[int, ...]) -> list[dict]:
    """Runs in the client process: stream DescribeScene at each concurrency level."""

    async def main() -> list[dict]:
        import grpc

        from arbridge.v1 import service_pb2_grpc

        cfg = SamplingConfig(max_new_tokens=new_tokens)
        async with grpc.aio.insecure_channel(target) as channel:
            stub = service_pb2_grpc.ArBridgeServiceStub(channel)
            def items(tag: str, count: int):
                return [(bench_scene(), q) for q in bench_questions(tag, count)]

            await grpc_run(stub, items("warm-up", 2), cfg, 2)
            return [asdict(await grpc_run(stub, items(str(n), max(n, 4)), cfg, n))
                    for n in levels]

    return asyncio.run(main())


# No token has this id: an EOS that never comes.
_NO_TOKEN = 1 << 40


def _no_eos_body(new_tokens: int) -> dict:
    """Request fields that make `transformers serve` run to max_tokens through
    EOS, as ArBridge's bench mode does. It accepts a whole GenerationConfig as
    JSON (its own extension; `logit_bias` is refused with continuous batching)."""
    return {"generation_config": json.dumps(
        {"do_sample": False, "eos_token_id": _NO_TOKEN, "max_new_tokens": new_tokens})}


@contextlib.contextmanager
def _bridge_ignores_eos(new_tokens: int):
    """ArBridge's OpenAI backend asks its upstream to ignore EOS too (bench only)."""
    from arbridge.backends.openai_compat import OpenAIBackend

    original = OpenAIBackend.request_body

    def request_body(self, prompt, cfg):
        body = original(self, prompt, cfg)
        body.setdefault("extra_body", {}).update(_no_eos_body(new_tokens))
        return body

    OpenAIBackend.request_body = request_body
    try:
        yield
    finally:
        OpenAIBackend.request_body = original


class _TransformersServe:
    """`transformers serve` on a loopback port, with an OpenAI client to it."""

    def __init__(self, model_dir: Path, dtype: str, continuous_batching: bool):
        self.args = ["serve", "--host", "127.0.0.1", "--dtype", dtype, str(model_dir)]
        if continuous_batching:
            self.args.insert(1, "--continuous-batching")
        self.model = str(model_dir)

    async def __aenter__(self):
        import shutil
        import socket
        import subprocess
        import sys

        from openai import AsyncOpenAI

        exe = shutil.which("transformers", path=str(Path(sys.executable).parent))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc = subprocess.Popen([exe, *self.args, "--port", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = AsyncOpenAI(base_url=f"http://127.0.0.1:{self.port}/v1",
                                  api_key="unused", max_retries=0, timeout=600)
        for _ in range(240):  # until it answers
            try:
                await self.client.models.list()
                return self
            except Exception:
                await asyncio.sleep(0.5)
        await self.__aexit__()
        raise RuntimeError("transformers serve did not start")

    async def __aexit__(self, *exc):
        await self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)

    async def run(self, name: str, messages: list[list[dict]], new_tokens: int,
                  concurrency: int) -> Result:
        """Stream `messages` (one request each), `concurrency` at a time."""
        async def one(msgs, result: Result):
            submitted = time.perf_counter()
            times = []
            tokens = None
            stream = await self.client.chat.completions.create(
                model=self.model, messages=msgs, max_tokens=new_tokens, temperature=0.0,
                stream=True, stream_options={"include_usage": True},
                extra_body=_no_eos_body(new_tokens))
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    times.append(time.perf_counter())  # one chunk per token
                if chunk.usage:
                    tokens = chunk.usage.completion_tokens
            record(result, times, submitted, tokens)

        result = Result(name, concurrency, len(messages), 0, 0.0)
        started = time.perf_counter()
        await bounded(messages, lambda m: one(m, result), concurrency)
        result.wall_s = time.perf_counter() - started
        return result


async def transformers_serve_run(model_dir: Path, dtype: str, messages, new_tokens: int,
                                 levels: tuple[int, ...], settings: Settings) -> list[Result]:
    """The peers: transformers' own server, plain at one stream and with
    continuous batching at every level, same prompts and dtype; then ArBridge
    forwarding to the latter (--backend openai)."""
    try:
        import openai  # noqa: F401
    except ImportError:
        print("ts skipped: pip install -e '.[bench]' (transformers[serving], openai)")
        return []
    results = []
    async with _TransformersServe(model_dir, dtype, continuous_batching=False) as ts:
        await ts.run("warm-up", messages("warm-up", 1), new_tokens, 1)
        results.append(await ts.run("ts", messages(str(levels[0]), max(levels[0], 4)),
                                    new_tokens, levels[0]))
    async with _TransformersServe(model_dir, dtype, continuous_batching=True) as ts:
        await ts.run("warm-up", messages("warm-up", 1), new_tokens, 1)
        for n in levels:
            results.append(await ts.run("ts-cb", messages(str(n), max(n, 4)), new_tokens, n))
        bridge = settings.model_copy(update={
            "backend": "openai", "backend_url": f"http://127.0.0.1:{ts.port}/v1",
            "backend_model": ts.model, "tokenizer": ts.model})
        with _bridge_ignores_eos(new_tokens):
            results += await _grpc_runs(bridge, None,
                                        SamplingConfig(max_new_tokens=new_tokens), levels,
                                        ignore_eos=True, name="bridge>ts-cb")
    return results


# ArBridge's dtype -> the GGUF type llama.cpp converts the same weights to.
LLAMA_CPP_TYPES = {"float32": "f32", "bfloat16": "bf16", "int8": "q8_0"}


def read_bandwidth_gbs(threads: int, gib: float = 1.0, reps: int = 5) -> float:
    """This machine's memory read bandwidth as torch sees it: the best of
    `reps` sums over a buffer far larger than any cache, on `threads` threads.
    In a child process: torch work on this thread starts a second OpenMP team
    beside the scheduler's, and the two slow each other down (measured: int8
    ITL 27 -> 57 ms for the rest of the run)."""
    script = ("import sys, time, torch\n"
              "torch.set_num_threads(int(sys.argv[1]))\n"
              "b = torch.ones(int(float(sys.argv[2]) * (1 << 30)) // 4)\n"
              "b.sum()\n"
              "best = float('inf')\n"
              "for _ in range(int(sys.argv[3])):\n"
              "    t = time.perf_counter(); b.sum(); best = min(best, time.perf_counter() - t)\n"
              "print(b.numel() * 4 / best / 1e9)\n")
    done = subprocess.run([sys.executable, "-c", script, str(threads), str(gib), str(reps)],
                          capture_output=True, text=True)
    try:
        return float(done.stdout.strip())
    except ValueError:  # no memory for the buffer, say: the row says n/a
        return 0.0


def cpu_description() -> str:
    """lscpu's model name and the vector-ISA flags that pick kernels."""
    model, flags = "unknown CPU", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = [f for f in value.split() if f.startswith(("avx", "amx", "fma"))]
                break
    except OSError:
        pass
    arch = os.environ.get("ARBRIDGE_KERNEL_ARCH")
    built = f"; kernels built for -march={arch} (ARBRIDGE_KERNEL_ARCH)" if arch else ""
    return f"{model}; {' '.join(flags) or 'no AVX'}{built}"


def run_bench(settings: Settings, new_tokens: int = 64, levels: tuple[int, ...] = (1, 8, 32),
              out_dir: Path = Path("bench/results"), command: str = "arbridge bench",
              peer: bool = True, llama_cpp: bool = True) -> dict:
    lm = load_model(settings.model, cache_dir=settings.cache_dir, device=settings.device,
                    dtype=settings.dtype)
    builder = PromptBuilder(lm.tokenizer, lm.info.context_length, settings.system_prompt)
    scene = bench_scene()
    cfg = SamplingConfig(max_new_tokens=new_tokens, ignore_eos=True, seed=1)

    def prompt_ids(tag: str, count: int) -> list[list[int]]:
        return [builder.describe(scene, q, new_tokens).ids for q in bench_questions(tag, count)]

    prompts = prompt_ids("hf", len(QUESTIONS))
    threads = torch.get_num_threads()
    bandwidth = read_bandwidth_gbs(threads)
    engine_info: dict = {}
    results = asyncio.run(_arbridge_part(settings, lm, prompt_ids, cfg, levels, engine_info))
    if peer and not lm.quantize:
        # The same chat messages ArBridge builds: system prompt + scene, question.
        from arbridge.serving.scene_text import describe_scene

        system_text = f"{settings.system_prompt}\n\nScene: {describe_scene(scene)}"
        def messages(tag: str, count: int) -> list[list[dict]]:
            return [[{"role": "system", "content": system_text},
                     {"role": "user", "content": q}] for q in bench_questions(tag, count)]

        peer_results = asyncio.run(transformers_serve_run(Path(lm.model.name_or_path),
                                                          lm.info.dtype, messages,
                                                          new_tokens, levels, settings))
        results += peer_results
    outtype = LLAMA_CPP_TYPES.get(lm.info.dtype)
    if llama_cpp and outtype:
        from arbridge.tools.llama_cpp_peer import llama_server_runs

        # The very prompt text ArBridge's DescribeScene builds, at the same precision.
        def texts(tag: str, count: int) -> list[str]:
            return [builder.describe(scene, q, new_tokens).text
                    for q in bench_questions(tag, count)]

        results += asyncio.run(llama_server_runs(
            settings.cache_dir, Path(lm.model.name_or_path), outtype, texts, new_tokens, levels,
            torch.get_num_threads()))
    by = {(r.name, r.concurrency): r for r in results}
    ratios = {}
    low, mid, high = levels[0], levels[min(1, len(levels) - 1)], levels[-1]
    grpc = {n: by[("grpc", n)].tokens_per_s for n in levels}
    engine = {n: by[("engine", n)].tokens_per_s for n in levels}
    ratios[f"grpc@{low} / engine@{low} (gRPC overhead)"] = _ratio(grpc[low], engine[low])
    ratios[f"grpc@{high} / engine@{high} (gRPC overhead)"] = _ratio(grpc[high], engine[high])
    seq, batch = by.get(("hf-sequential", 1)), by.get(("hf-batch", len(prompts)))
    if seq and batch:
        ratios[f"grpc@{low} / hf-sequential"] = _ratio(grpc[low], seq.tokens_per_s)
        ratios[f"grpc@{mid} / hf-sequential"] = _ratio(grpc[mid], seq.tokens_per_s)
        ratios[f"grpc@{mid} / hf-batch({len(prompts)})"] = _ratio(grpc[mid],
                                                                 batch.tokens_per_s)
    ratios[f"grpc@{high} / grpc@{low}"] = _ratio(grpc[high], grpc[low])
    for variant in ("engine-nospec", "engine-noprefix", "engine-hf", "engine-pylayers",
                    "engine-w8a16"):
        for n in levels if (variant, low) in by else ():
            ratios[f"engine@{n} / {variant}@{n}"] = _ratio(
                engine[n], by[(variant, n)].tokens_per_s)
    for n in levels if ("engine-w8a16", low) in by else ():
        ours, plain = by[("engine", n)].outputs, by[("engine-w8a16", n)].outputs
        same = sum(plain.get(p) == ours[p] for p in ours)
        ratios[f"engine@{n} greedy text = engine-w8a16@{n} (64 tokens, past EOS)"] = (
            f"{same} of {len(ours)} replies")
    for n in levels if ("engine-sdpa", low) in by else ():
        sdpa = by[("engine-sdpa", n)]
        ratios[f"engine@{n} / engine-sdpa@{n}"] = _ratio(engine[n], sdpa.tokens_per_s)
        same = sum(sdpa.outputs.get(p) == by[("engine", n)].outputs[p]
                   for p in by[("engine", n)].outputs)
        ratios[f"engine@{n} greedy text = engine-sdpa@{n} (64 tokens, past EOS)"] = (
            f"{same} of {len(sdpa.outputs)} replies")
    targets = [(f"gRPC overhead: grpc@{low} / engine@{low} >= 0.95", grpc[low] / engine[low],
                0.95),
               (f"grpc@{high} / grpc@{low} >= 8", grpc[high] / grpc[low], 8.0)]
    plain = by.get(("ts", low))
    if plain:
        ratios[f"grpc@{low} / ts@{low}"] = _paired(by[("grpc", low)], plain)
        targets.insert(0, (f"grpc@{low} / ts@{low} >= 1.3" + _unequal(by[("grpc", low)], plain),
                           grpc[low] / plain.tokens_per_s, 1.3))
    ts = {r.concurrency: r for r in results if r.name == "ts-cb"}
    if ts:
        ours = {n: by[("grpc", n)] for n in levels}
        for n in (low, mid, high):
            ratios[f"grpc@{n} / ts-cb@{n}"] = _paired(ours[n], ts[n])
        bridged = {r.concurrency: r for r in results if r.name == "bridge>ts-cb"}
        for n in (low, mid, high) if bridged else ():
            ratios[f"bridge>ts-cb@{n} / ts-cb@{n}"] = _ratio(bridged[n].tokens_per_s,
                                                            ts[n].tokens_per_s)
        if bridged:
            added = (bridged[low].pct(bridged[low].ttft_s, 0.5)
                     - ts[low].pct(ts[low].ttft_s, 0.5))
            ratios[f"TTFT p50 bridge>ts-cb@{low} - ts-cb@{low}"] = f"{added * 1e3:+.0f} ms"
        ttft_ts = ts[mid].pct(ts[mid].ttft_s, 0.5)
        ttft_us = ours[mid].pct(ours[mid].ttft_s, 0.5)
        if ttft_ts and ttft_us:
            ratios[f"TTFT p50 grpc@{mid} / ts-cb@{mid}"] = _ratio(ttft_us, ttft_ts)
        targets.insert(-1, (f"grpc@{mid} / ts-cb@{mid} >= 2.0" + _unequal(ours[mid], ts[mid]),
                            ours[mid].tokens_per_s / ts[mid].tokens_per_s, 2.0))
    ttft_mid = by[("grpc", mid)].pct(by[("grpc", mid)].ttft_s, 0.5)
    targets.insert(-1, (f"TTFT p50 grpc@{mid} <= 0.3 s", -ttft_mid, -0.3))
    for n in levels if ("engine-nospec", low) in by else ():
        # Drafts change how many tokens a pass reads, never which: the same text.
        ours, plain = by[("engine", n)].outputs, by[("engine-nospec", n)].outputs
        same = sum(ours[p] == plain.get(p) for p in ours)
        ratios[f"engine@{n} greedy text = engine-nospec@{n}"] = f"{same} of {len(ours)} replies"
    for key, (drafted, kept) in engine_info.get("drafts", {}).items():
        ratios[f"drafts kept {key}"] = f"{kept} of {drafted} ({kept / drafted:.0%})"
    # Bandwidth achieved at one stream, as gpt-fast prints it: the bytes of
    # weights a decode step reads x decode steps per second (1 / ITL p50), one
    # token a step (with drafts, tokens come several to a pass).
    one = by.get(("engine-nospec", low), by[("engine", low)])
    step_s = one.pct(one.itl_s, 0.5) if low == 1 else None
    on_cpu = lm.info.device == "cpu" and bandwidth > 0
    achieved = engine_info.get("weight_bytes", 0) / step_s / 1e9 if step_s and on_cpu else 0.0
    if achieved:
        ratios[f"bandwidth achieved engine@1 ({lm.info.dtype} weights "
               f"{engine_info['weight_bytes'] / 1e6:.0f} MB / ITL p50)"] = (
            f"{achieved:.1f} GB/s = {achieved / bandwidth:.0%} of {bandwidth:.1f} GB/s read")
        targets.append(("#17 bandwidth achieved engine@1 >= 80% of read bandwidth",
                        achieved / bandwidth, 0.8))
    llama = {r.concurrency: r for r in results if r.name.startswith("llama-server")}
    if llama:  # issue #17: the peer a CPU user would pick, the same precision
        kind = next(iter(llama.values())).name
        for n in levels:
            ratios[f"grpc@{n} / {kind}@{n} ({lm.info.dtype})"] = _paired(by[("grpc", n)],
                                                                          llama[n])
        ours, peer = by[("grpc", mid)], llama[mid]
        ratios[f"TTFT p50 grpc@{mid} / {kind}@{mid}"] = _ratio(
            ours.pct(ours.ttft_s, 0.5), peer.pct(peer.ttft_s, 0.5))
        # int8 against Q8_0: at least level at one stream (the bound).
        for n, bound in ((low, 1.0 if lm.quantize else 1.1), (mid, 2.0), (high, 3.0)):
            targets.append((f"#17 grpc@{n} / {kind}@{n} >= {bound}",
                            by[("grpc", n)].tokens_per_s / llama[n].tokens_per_s, bound))
    report = {
        "command": command,
        "model": lm.info.name, "dtype": lm.info.dtype, "device": lm.info.device,
        "threads": threads, "new_tokens": new_tokens,
        "cpu": cpu_description(), "read_bandwidth_gbs": bandwidth,
        "kernels": engine_info.get("kernels", "model's own forward"),
        "prompt_tokens": [len(p) for p in prompts],
        "results": [r.summary() for r in results], "ratios": ratios,
        # (what, value, met): values stored negated where lower is better.
        "targets": [(what, abs(value), value >= bound) for what, value, bound in targets],
        "raw": [asdict(r) for r in results],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out_dir / f"bench-{stamp}.json").write_text(json.dumps(report, indent=2))
    _plot(results, out_dir / f"bench-{stamp}.png", report)
    print_table(report)
    print(f"\nwritten: {out_dir}/bench-{stamp}.json and .png")
    return report


def print_table(report: dict) -> None:
    print(f"\n{report['command']}\nmodel {report['model']}, {report['dtype']} on "
          f"{report['device']} ({report['threads']} threads), greedy, {report['new_tokens']} new "
          f"tokens per request, prompts of {min(report['prompt_tokens'])}-"
          f"{max(report['prompt_tokens'])} tokens")
    if "cpu" in report:
        print(f"CPU {report['cpu']}\nread bandwidth {report['read_bandwidth_gbs']:.1f} GB/s "
              f"(torch sum over 1 GiB); engine matmuls: {report['kernels']}")
    print()

    def ms(v):
        return "-" if v is None else f"{v * 1e3:.0f}"

    print(f"{'contender':<20}{'conc':>5}{'reqs':>6}{'tokens':>7}{'tok/s':>9}{'TTFT p50':>10}"
          f"{'p95':>7}{'ITL p50':>9}{'p95':>7}  (ms)")
    for r in report["results"]:
        print(f"{r['name']:<20}{r['concurrency']:>5}{r['requests']:>6}{r['tokens']:>7}"
              f"{r['tokens_per_s']:>9.1f}"
              f"{ms(r['ttft_p50_s']):>10}{ms(r['ttft_p95_s']):>7}{ms(r['itl_p50_s']):>9}"
              f"{ms(r['itl_p95_s']):>7}")
    print()
    for name, value in report["ratios"].items():
        print(f"  {name:<40} {value}")
    if report.get("targets"):
        print("\ntargets (issues #4 and #17), from this run:")
        for what, value, met in report["targets"]:
            print(f"  {'met   ' if met else 'MISSED'} {what:<40} {value:.2f}")


def _plot(results: list[Result], path: Path, report: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("engine", "engine-hf", "grpc", "ts-cb"):
        rows = [r for r in results if r.name == name]
        if not rows:
            continue
        left.plot([r.concurrency for r in rows], [r.tokens_per_s for r in rows], "o-",
                  label=name if name == "ts-cb" else f"ArBridge {name}")
        right.plot([r.concurrency for r in rows], [r.pct(r.ttft_s, 0.5) * 1e3 for r in rows],
                   "o-", label=name if name == "ts-cb" else f"ArBridge {name}")
    for r in results:
        if r.name.startswith("hf"):
            left.axhline(r.tokens_per_s, linestyle="--", color="gray" if r.name ==
                         "hf-sequential" else "black", label=f"{r.name}")
    left.set(xscale="log", xlabel="concurrent streams", ylabel="aggregate tokens/s",
             title="throughput")
    right.set(xscale="log", xlabel="concurrent streams", ylabel="TTFT p50 (ms)",
              title="time to first token")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.suptitle(f"{report['model']} {report['dtype']} {report['device']}, "
                 f"{report['new_tokens']} new tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
