"""`arbridge grammar-bench`: what grammar-constrained decoding costs, and the two
grammar libraries side by side on this CPU (not a test).

1. Libraries: llguidance (what the server uses) and xgrammar (when installed; `make
   bench` installs it), on the served model's tokenizer: building the token table,
   compiling a JSON schema and a regex, and the per-token mask along a real reply
   (one bitmask row per step, as the engine asks).
2. The engine, 1 and 8 streams: scene-action replies (the action grammar of
   serving/actions.py) against the same prompts unconstrained, the same number of
   tokens each (neither stops early), tokens/s and ratio.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import torch

from arbridge.config import Settings
from arbridge.engine.constraints import BannedWords
from arbridge.generation import SamplingConfig
from arbridge.models.loader import load_model
from arbridge.serving.actions import ActionSet, object_names
from arbridge.serving.prompts import PromptBuilder
from arbridge.serving.structured import GrammarCompiler
from arbridge.tools.bench import bench_scene
from arbridge.v1 import types_pb2 as pb

SCHEMA = {"type": "object", "properties": {
    "caption": {"type": "string", "maxLength": 120},
    "objects": {"type": "array", "items": {"type": "string"}, "maxItems": 8},
    "confidence": {"type": "number"}}, "required": ["caption", "objects", "confidence"],
    "additionalProperties": False}
REGEX = r"(The|A|An) [a-z]+( [a-z]+){0,12}\."
# A reply the JSON schema admits, tokenized, for the per-token mask timings.
SAMPLE = json.dumps({"caption": "A red chair is ahead of you and a lamp is to the left.",
                     "objects": ["red chair", "lamp", "wooden table"], "confidence": 0.92})
ACTIONS = [
    pb.ActionDefinition(name="highlight", description="make an object glow", parameters=[
        pb.ActionParameter(name="target", type=pb.PARAMETER_TYPE_OBJECT)]),
    pb.ActionDefinition(name="move_to", description="walk the character to an object",
                        parameters=[pb.ActionParameter(name="target",
                                                       type=pb.PARAMETER_TYPE_OBJECT)])]
COMMANDS = ["Highlight the {}.", "Walk over to the {}.", "Go to the {}.",
            "Please make the {} glow.", "What is the {} for?", "Tell me about the {}."]


def _timed(fn, *args):
    started = time.perf_counter()
    value = fn(*args)
    return value, (time.perf_counter() - started) * 1e3


def _masks_ms(fill, consume, ids: list[int]) -> list[float]:
    out = []
    for token in ids:
        started = time.perf_counter()
        fill()
        out.append((time.perf_counter() - started) * 1e3)
        consume(token)
    return out


def library_rows(tokenizer, vocab: int) -> list[dict]:
    import llguidance
    import llguidance.torch as llt

    ids = tokenizer.encode(SAMPLE, add_special_tokens=False)
    rows = []
    ll_tok, build = _timed(lambda: GrammarCompiler(tokenizer, vocab)._tokenizer)
    schema = json.dumps(SCHEMA)
    grammar, schema_ms = _timed(lambda: llguidance.LLMatcher(
        ll_tok, llguidance.LLMatcher.grammar_from_json_schema(schema)))
    _, regex_ms = _timed(lambda: llguidance.LLMatcher(
        ll_tok, llguidance.LLMatcher.grammar_from_regex(REGEX)))
    bitmask = llt.allocate_token_bitmask(1, vocab)
    masks = _masks_ms(lambda: llt.fill_next_token_bitmask(grammar, bitmask, 0),
                      grammar.consume_token, ids)
    rows.append(_row("llguidance", build, schema_ms, regex_ms, masks))
    try:
        import xgrammar
    except ImportError:
        return rows
    info, build = _timed(lambda: xgrammar.TokenizerInfo.from_huggingface(tokenizer,
                                                                         vocab_size=vocab))
    compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    compiled, schema_ms = _timed(compiler.compile_json_schema, schema)
    _, regex_ms = _timed(compiler.compile_regex, REGEX)
    matcher = xgrammar.GrammarMatcher(compiled)
    bitmask = xgrammar.allocate_token_bitmask(1, vocab)
    masks = _masks_ms(lambda: matcher.fill_next_token_bitmask(bitmask, 0), matcher.accept_token,
                      ids)
    rows.append(_row("xgrammar", build, schema_ms, regex_ms, masks))
    return rows


def _row(name, build_ms, schema_ms, regex_ms, masks) -> dict:
    ordered = sorted(masks)
    from importlib.metadata import version

    return {"library": name, "version": version(name),
            "tokenizer_ms": round(build_ms, 1), "json_schema_compile_ms": round(schema_ms, 2),
            "regex_compile_ms": round(regex_ms, 2),
            "mask_mean_ms": round(statistics.fmean(masks), 4),
            "mask_p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))], 4),
            "tokens": len(masks)}


async def engine_rows(lm, settings: Settings, new_tokens: int, levels=(1, 8)) -> list[dict]:
    from arbridge.engine.async_engine import AsyncEngine
    from arbridge.engine.scheduler import Scheduler

    scene = bench_scene()
    actions = ActionSet(ACTIONS, pb.ACTION_MODE_AUTO, object_names(scene))
    builder = PromptBuilder(lm.tokenizer, lm.info.context_length, settings.system_prompt)
    names = sorted(actions.names)
    grammars = GrammarCompiler(lm.tokenizer, lm.model.get_output_embeddings().weight.shape[0])
    scheduler = Scheduler.from_settings(lm.model, lm.tokenizer, settings,
                                        context_length=lm.info.context_length,
                                        max_active=max(levels), max_queue=256,
                                        quantize=lm.quantize)
    # Equal token counts: the plain run ignores EOS (the engine's fast path, no rules);
    # the constrained one masks it (the grammar's free text allows it, and a matcher
    # cannot go on past it), so its figure carries that rule's cost too.
    plain = SamplingConfig(max_new_tokens=new_tokens, seed=1, ignore_eos=True)
    no_eos = SamplingConfig(max_new_tokens=new_tokens, seed=1, banned=BannedWords.of(
        [(t,) for t in scheduler.eos_ids], float("inf")))
    scheduler.start()
    engine = AsyncEngine(scheduler)
    rows = []
    try:
        for n in (1, *levels):  # the first pass warms up (and fills the prefix cache)
            asks = [COMMANDS[i % len(COMMANDS)].format(names[i % len(names)])
                    for i in range(max(n * 2, 6))]
            prompts = [builder.converse(scene, [], ask, new_tokens, actions=actions).ids
                       for ask in asks]
            for constrained in (False, True):
                started, tokens = time.perf_counter(), 0

                async def one(ids, constrained=constrained):
                    cfg = grammars.apply(no_eos, None, actions) if constrained else plain
                    count = 0
                    async for out in engine.submit(ids, cfg):
                        count += len(out.tokens)
                    return count

                for start in range(0, len(prompts), n):  # n at a time
                    tokens += sum(await asyncio.gather(*map(one, prompts[start:start + n])))
                wall = time.perf_counter() - started
                rows.append({"streams": n, "constrained": constrained, "tokens": tokens,
                             "tokens_per_s": round(tokens / wall, 1)})
    finally:
        scheduler.stop()
    return rows[2:]


def run_grammar_bench(settings: Settings, new_tokens: int = 64) -> dict:
    lm = load_model(settings.model, cache_dir=settings.cache_dir, device=settings.device,
                    dtype=settings.dtype)
    libraries = library_rows(lm.tokenizer, lm.model.get_output_embeddings().weight.shape[0])
    engine = asyncio.run(engine_rows(lm, settings, new_tokens))
    ratios = {}
    for n in sorted({r["streams"] for r in engine}):
        plain, shaped = (next(r for r in engine if r["streams"] == n
                              and r["constrained"] is c) for c in (False, True))
        ratios[n] = round(shaped["tokens_per_s"] / plain["tokens_per_s"], 3)
    return {"model": lm.info.name, "dtype": lm.info.dtype, "threads": torch.get_num_threads(),
            "libraries": libraries, "engine": engine, "constrained_over_plain": ratios,
            "new_tokens": new_tokens}


def format_report(report: dict) -> str:
    lines = [f"grammar libraries on {report['model']}'s tokenizer (ms; mask = one bitmask "
             f"row per token along a {report['libraries'][0]['tokens']}-token JSON reply):"]
    cols = ["tokenizer_ms", "json_schema_compile_ms", "regex_compile_ms", "mask_mean_ms",
            "mask_p99_ms"]
    lines.append(f"  {'library':22}" + "".join(f"{c:>24}" for c in cols))
    for row in report["libraries"]:
        lines.append(f"  {row['library'] + ' ' + row['version']:22}" +
                     "".join(f"{row[c]:>24}" for c in cols))
    lines.append(f"engine, {report['dtype']}, {report['new_tokens']} tokens a reply (EOS ignored "
                 f"/ masked), scene-action grammar vs none, same prompts:")
    for row in report["engine"]:
        kind = "actions grammar" if row["constrained"] else "unconstrained"
        lines.append(f"  {row['streams']:>2} streams  {kind:16} {row['tokens']:>6} tokens "
                     f"{row['tokens_per_s']:>8} tok/s")
    for n, ratio in report["constrained_over_plain"].items():
        verdict = "met" if ratio >= 0.9 else "MISSED"
        lines.append(f"  {verdict:6} constrained / unconstrained @{n} >= 0.90: {ratio:.3f}")
    return "\n".join(lines)
