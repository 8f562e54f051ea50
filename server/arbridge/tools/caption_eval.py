"""`arbridge eval`: caption and dialogue quality, measured through a real server.

Seeded scenes (tools/scenes.py) go through the same gRPC path a Unity app uses:
`DescribeScene` for captions, `Ask` for questions with checkable answers. Each
caption is scored by code (tools/caption_score.py). Beside ArBridge, the same
model answers a plain one-line prompt (no ArBridge prompt, through `Generate`
with the model's chat template): the baseline, in the same run. Figures are
given for the tuning split and for the held-out split, which is not tuned on.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import asdict
from pathlib import Path

import grpc

from arbridge.config import Settings
from arbridge.serving.lexicon import NOUNS, names_of
from arbridge.serving.prompts import DESCRIBE_INSTRUCTION, PromptBuilder
from arbridge.serving.wearer_frame import place
from arbridge.tools import act_eval
from arbridge.tools.caption_score import score_caption, summarize
from arbridge.tools.scenes import TUNE_SCENES, scenes, split
from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import service_pb2_grpc
from arbridge.v1 import types_pb2 as pb

MAX_NEW_TOKENS = 60
CONCURRENCY = 8
# Time to first token alone: fresh scenes (not in the scored set, so no contender finds
# its whole prompt cached), one request at a time, the contenders taking turns.
TTFT_SCENES = 40
# And eight new prompts at once (the prefills share turns), each contender in turn: the
# table's under-load TTFT also depends on how long each contender's replies run (short
# captions mean more arrivals per second), this one only on the prompts.
TTFT_BURSTS = 5
ACT_SCENES = 150


def plain_prompt(tokenizer, scene: pb.SceneFeatures) -> str:
    """The baseline: what a developer would type without ArBridge, one line."""
    things = []
    for obj in scene.objects:
        adjectives = " ".join(obj.attributes[k] for k in sorted(obj.attributes))
        things.append(f"{adjectives} {obj.label}".strip())
    line = f"Describe this scene in one or two sentences: {', '.join(things)}."
    return tokenizer.apply_chat_template([{"role": "user", "content": line}], tokenize=False,
                                         add_generation_prompt=True)


def previous_prompt(builder, scene: pb.SceneFeatures) -> str:
    """ArBridge's caption prompt before `arbridge eval` existed (the scene appended to
    the dialogue system prompt, the instruction as the user's turn), for the record."""
    return builder.converse(scene, [], DESCRIBE_INSTRUCTION, MAX_NEW_TOKENS).text


# -- dialogue questions with checkable answers ---------------------------------------
def questions(scene: pb.SceneFeatures, index: int) -> list[tuple[str, str, object]]:
    """(kind, question, expected) for a scene: which object is on the left, how far an
    object is, whether an object (present or absent) is there."""
    out = []
    camera = scene.camera_pose
    placed = [(obj, place(obj.pose, camera)) for obj in scene.objects]
    left = [obj for obj, p in placed if p.direction == "to the left"]
    if left:
        out.append(("left", "What is on my left?", left))
    if placed:
        obj, p = placed[index % len(placed)]
        out.append(("distance", f"How far away is the {obj.label}?", p.distance_m))
    present = index % 2 == 0 and placed
    if present:
        obj = placed[(index // 2) % len(placed)][0]
        out.append(("exists", f"Is there a {obj.label} here?", (obj.label, True)))
    else:
        labels = {o.label for o in scene.objects}
        absent = sorted(n for n in NOUNS if n not in labels and " " not in n)
        noun = absent[(index * 7919) % len(absent)]
        out.append(("exists", f"Is there a {noun} here?", (noun, False)))
    return out


def answer_correct(kind: str, answer: str, expected, scene: pb.SceneFeatures) -> bool:
    text = answer.lower()
    words = set(re.findall(r"[a-z]+", text))
    if kind == "left":
        others = [o for o in scene.objects if o not in expected]
        named = any(names_of(o.label) & words or o.label in text for o in expected)
        wrong = any(o.label in text for o in others
                    if not any(o.label == e.label for e in expected))
        return named and not wrong
    if kind == "distance":
        numbers = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", text)]
        return any(abs(x - expected) <= max(0.5, 0.2 * expected) for x in numbers)
    if kind == "exists":
        noun, present = expected
        # Yes: says yes or speaks of the object as there, with no negation; no: says no.
        negated = bool(re.search(r"\bno\b|\bnot\b|n't\b|\bnothing\b", text))
        affirmed = bool(re.search(r"\byes\b", text)) or bool(names_of(noun) & words)
        return (affirmed and not negated) == present
    raise ValueError(kind)


# -- the run --------------------------------------------------------------------------
async def _bounded(calls, limit: int) -> list[tuple[str, float]]:
    """Run the calls (factories of streaming calls), at most `limit` at once:
    [(first sequence's text, time to first token in ms)]."""
    sem = asyncio.Semaphore(limit)

    async def one(make_call):
        async with sem:
            return await _text(make_call())

    return await asyncio.gather(*(one(c) for c in calls))


async def _text(call) -> tuple[str, float]:
    started, first, text = time.perf_counter(), None, ""
    async for response in call:
        if response.WhichOneof("event") == "chunk":
            first = first or time.perf_counter()
        elif response.completion.sequence_index == 0:
            text = response.completion.text
    return text, ((first or time.perf_counter()) - started) * 1e3


async def run_eval(settings: Settings, count: int = 300, seed: int = 0, dialogue: int = 60,
                   out: Path | None = None, lm=None, act_only: bool = False) -> dict:
    from arbridge.app import ArBridgeServer

    server = ArBridgeServer(settings.model_copy(update={"port": 0, "max_active": CONCURRENCY}))
    await server.start()
    await server.load(preloaded=lm)
    tokenizer = server.backend.tokenizer
    sampling = pb.SamplingParams(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)
    all_scenes = scenes(count, seed)
    held_out = list(range(TUNE_SCENES, count))[:dialogue]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = service_pb2_grpc.ArBridgeServiceStub(channel)
            # Pointing and action tasks on every tuning scene and up to ACT_SCENES held out.
            act = {name: await act_eval.run(stub, all_scenes, subset, sampling, CONCURRENCY,
                                            seed, name)
                   for name, subset in (("tune", range(min(count, TUNE_SCENES))),
                                        ("held-out", range(TUNE_SCENES, count)[:ACT_SCENES]))}
            if act_only:
                return {"act": act}
            bridge = await _bounded([
                lambda s=s: stub.DescribeScene(spb.DescribeSceneRequest(scene=s,
                                                                        sampling=sampling))
                for s in all_scenes], CONCURRENCY)
            builder = PromptBuilder(tokenizer, server.backend.info.context_length,
                                    settings.system_prompt)
            before = await _bounded([
                lambda s=s: stub.Generate(spb.GenerateRequest(
                    prompt=previous_prompt(builder, s), sampling=sampling))
                for s in all_scenes], CONCURRENCY)
            plain = await _bounded([
                lambda s=s: stub.Generate(spb.GenerateRequest(
                    prompt=plain_prompt(tokenizer, s), sampling=sampling))
                for s in all_scenes], CONCURRENCY)
            asks = [(i, *q) for i in held_out for q in questions(all_scenes[i], i)]
            answers = await _bounded([
                lambda i=i, q=question: stub.Ask(spb.AskRequest(
                    start=spb.ConverseStart(scene=all_scenes[i]),
                    user_turn=spb.UserTurn(text=q, sampling=sampling)))
                for i, _, question, _ in asks], CONCURRENCY)
            first_token = pb.SamplingParams(max_new_tokens=1, temperature=0.0)
            contenders = {
                "arbridge": lambda scene: stub.DescribeScene(
                    spb.DescribeSceneRequest(scene=scene, sampling=first_token)),
                "arbridge before": lambda scene: stub.Generate(spb.GenerateRequest(
                    prompt=previous_prompt(builder, scene), sampling=first_token)),
                "plain prompt": lambda scene: stub.Generate(spb.GenerateRequest(
                    prompt=plain_prompt(tokenizer, scene), sampling=first_token))}
            alone: dict[str, list[float]] = {name: [] for name in contenders}
            for scene in scenes(TTFT_SCENES, seed + 1):
                for name, make_call in contenders.items():
                    alone[name].append((await _text(make_call(scene)))[1])
            burst: dict[str, list[float]] = {name: [] for name in contenders}
            for b in range(TTFT_BURSTS):
                group = scenes(CONCURRENCY, seed + 2 + b)
                for name, make_call in contenders.items():
                    calls = [make_call(scene) for scene in group]
                    burst[name] += [t for _, t in await asyncio.gather(*map(_text, calls))]
    finally:
        await server.stop(grace=1)

    def report(results, subset):
        scores = [score_caption(results[i][0], all_scenes[i]) for i in subset]
        summary = summarize(scores).row()
        ttfts = sorted(results[i][1] for i in subset)
        summary["ttft_p50_ms"] = round(ttfts[len(ttfts) // 2], 1) if ttfts else 0.0
        return summary, scores

    tune, held = split(list(range(count)))
    table = {}
    for name, results in (("arbridge", bridge), ("arbridge before", before),
                          ("plain prompt", plain)):
        for split_name, subset in (("tune", tune), ("held-out", held)):
            table[(name, split_name)] = report(results, subset)
    by_kind: dict[str, list[bool]] = {}
    dialogue_rows = []
    for (i, kind, question, expected), (answer, _) in zip(asks, answers, strict=True):
        ok = answer_correct(kind, answer, expected, all_scenes[i])
        by_kind.setdefault(kind, []).append(ok)
        dialogue_rows.append({"scene": i, "kind": kind, "question": question,
                              "answer": answer, "correct": ok})
    result = {
        "model": settings.model or "SmolLM2-135M-Instruct", "dtype": settings.dtype,
        "scenes": count, "seed": seed, "held_out_from": TUNE_SCENES,
        "captions": {f"{n}/{s}": row for (n, s), (row, _) in table.items()},
        "dialogue": {k: round(sum(v) / len(v), 3) for k, v in by_kind.items()},
        "ttft_alone_p50_ms": {name: round(sorted(v)[len(v) // 2], 1)
                              for name, v in alone.items()},
        "ttft_burst_p50_ms": {name: round(sorted(v)[len(v) // 2], 1)
                              for name, v in burst.items()},
        "dialogue_all": round(sum(r["correct"] for r in dialogue_rows) / max(len(
            dialogue_rows), 1), 3),
        "samples": [{"scene": i, "split": "tune" if i < TUNE_SCENES else "held-out",
                     "arbridge": bridge[i][0], "before": before[i][0], "plain": plain[i][0],
                     "arbridge_score": asdict(score_caption(bridge[i][0], all_scenes[i]))}
                    for i in range(count)],
        "dialogue_answers": dialogue_rows,
        "act": act,
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
    return result


def format_table(result: dict) -> str:
    cols = ["captions", "coverage", "hallucination_rate", "claims_per_caption",
            "claims_correct", "first_person_rate", "loop_rate", "mean_words", "ttft_p50_ms"]
    head = f"{'contender/split':24}" + "".join(f"{c[:12]:>13}" for c in cols)
    lines = [head]
    for name, row in result["captions"].items():
        lines.append(f"{name:24}" + "".join(f"{row[c]:>13}" for c in cols))
    dialogue = ", ".join(f"{k} {v:.0%}" for k, v in result["dialogue"].items())
    lines.append(f"dialogue (Ask, held-out): {result['dialogue_all']:.0%} correct ({dialogue})")
    alone = ", ".join(f"{k} {v} ms" for k, v in result.get("ttft_alone_p50_ms", {}).items())
    if alone:
        lines.append(f"time to first token, one request at a time ({TTFT_SCENES} fresh "
                     f"scenes, p50): {alone}")
    for split_name, act in result.get("act", {}).items():
        lines += [f"{line} [{split_name}]" for line in act_eval.format_lines(act)]
    burst = ", ".join(f"{k} {v} ms" for k, v in result.get("ttft_burst_p50_ms", {}).items())
    if burst:
        lines.append(f"time to first token, {CONCURRENCY} new prompts at once ({TTFT_BURSTS} "
                     f"bursts of fresh scenes, p50): {burst}")
    return "\n".join(lines)
