"""`arbridge eval`: captions of the scenes that broke them, composed vs the model's.

The seeded scenes of tools/scenes.py rarely hold what a real room does; these do,
each tagged with what makes it hard:
- repeated: a label two or three times, on different sides, some told apart by
  colour;
- big: 9-15 objects;
- turned: the head turned by any yaw and pitched (-35 to +25 degrees) and rolled;
- height: something overhead, something below (down the stairs), things on the floor;
- unlisted: labels outside the lexicon ("espresso machine", "dog bed", "e-scooter");
- states: objects switched on, open, unplugged...
DescribeScene on each, through a server with `scene_captions` on (the caption
composed from the scene) and off (the model writes it, under today's caption
rules), same model and scenes in the same run; scored by tools/caption_score.py
(every instance counted, heights checked, cut captions counted).
"""

from __future__ import annotations

import math
import random

from arbridge.serving.prompts import DESCRIBE_INSTRUCTION
from arbridge.tools.caption_score import score_caption, summarize
from arbridge.tools.scenes import ATTRIBUTES, PLACES, TUNE_SCENES
from arbridge.v1 import types_pb2 as pb

UNLISTED = ["espresso machine", "dog bed", "e-scooter", "snow globe", "standing desk",
            "binoculars", "air fryer", "yoga block", "ring light", "pizza oven",
            "label printer", "baby monitor", "cat tree", "water cooler", "shoe horn"]
OVERHEAD = ["smoke detector", "chandelier", "ceiling fan", "pendant lamp"]
STATES = ["on", "off", "open", "closed", "plugged in", "unplugged", "locked", "full", "empty"]
TAGS = ("repeated", "big", "turned", "height", "unlisted", "states")
MAX_NEW_TOKENS = 60
TTFT_SCENES = 40


def _quaternion(yaw: float, pitch: float, roll: float) -> pb.Quaternion:
    """Unity's order (Z, then X, then Y): yaw about +Y, pitch about +X (down is +),
    roll about +Z; degrees."""
    cy, sy = math.cos(math.radians(yaw) / 2), math.sin(math.radians(yaw) / 2)
    cx, sx = math.cos(math.radians(pitch) / 2), math.sin(math.radians(pitch) / 2)
    cz, sz = math.cos(math.radians(roll) / 2), math.sin(math.radians(roll) / 2)
    # q = qy * qx * qz
    w = cy * cx * cz + sy * sx * sz
    x = cy * sx * cz + sy * cx * sz
    y = sy * cx * cz - cy * sx * sz
    z = cy * cx * sz - sy * sx * cz
    return pb.Quaternion(x=x, y=y, z=z, w=w)


def hard_scene(index: int, seed: int = 0) -> tuple[pb.SceneFeatures, set[str]]:
    rng = random.Random(seed * 5_000_011 + index)
    tags = {t for t in TAGS if rng.random() < {"repeated": 0.5, "big": 0.3, "turned": 0.5,
                                               "height": 0.4, "unlisted": 0.4,
                                               "states": 0.4}[t]}
    place = rng.choice(sorted(PLACES))
    typical = PLACES[place][1]
    count = rng.randint(9, 15) if "big" in tags else rng.randint(2, 6)
    # Distinct labels (repeats only where "repeated" makes them); a big scene tops up
    # from the unlisted ones when its place has fewer typical objects.
    labels = rng.sample(typical, min(count, len(typical)))
    labels += rng.sample([u for u in UNLISTED if u not in labels], count - len(labels))
    if "unlisted" in tags:
        labels[rng.randrange(len(labels))] = rng.choice(UNLISTED)
        if rng.random() < 0.5:
            labels.append(rng.choice(UNLISTED))
        labels = list(dict.fromkeys(labels))
    if "repeated" in tags:
        for label in rng.sample(labels, min(len(labels), rng.choice([1, 1, 2]))):
            labels += [label] * rng.choice([1, 1, 2])
    yaw = rng.uniform(-180, 180) if "turned" in tags or rng.random() < 0.3 else 0.0
    pitch = rng.uniform(-35, 25) if "turned" in tags else 0.0
    roll = rng.uniform(-10, 10) if "turned" in tags else 0.0
    eyes = pb.Vec3(x=rng.uniform(-3, 3), y=1.6, z=rng.uniform(-3, 3))
    scene = pb.SceneFeatures(camera_pose=pb.Pose(position=eyes,
                                                 rotation=_quaternion(yaw, pitch, roll)))
    if rng.random() < 0.5:
        scene.location_hint = place

    def put(label: str, azimuth: float, distance: float, height: float, n: int) -> None:
        # Azimuth from where the wearer faces (the yaw), on the floor plane.
        a = math.radians(yaw + azimuth)
        obj = scene.objects.add(
            id=f"h{index}-o{n}", label=label, confidence=rng.uniform(0.6, 1.0),
            pose=pb.Pose(position=pb.Vec3(x=eyes.x + distance * math.sin(a), y=height,
                                          z=eyes.z + distance * math.cos(a)),
                         rotation=pb.Quaternion(w=1.0)),
            extents=pb.Vec3(x=0.4, y=0.4, z=0.4))
        for key in rng.sample(["color", "material"], rng.choice([0, 0, 1, 1, 2])):
            obj.attributes[key] = rng.choice(ATTRIBUTES[key])
        if "states" in tags and rng.random() < 0.4:
            obj.attributes["state"] = rng.choice(STATES)

    for n, label in enumerate(labels):
        # Sides well clear of the boundaries (the scorer and the server agree on them,
        # but a person would not call 21 degrees "ahead" or not).
        azimuth = rng.choice([rng.uniform(-10, 10), rng.uniform(-110, -35),
                              rng.uniform(35, 110), rng.uniform(150, 210)])
        distance = rng.choice([rng.uniform(0.6, 1.3), rng.uniform(1.8, 3.5),
                               rng.uniform(4.5, 9.0)])
        put(label, azimuth, distance, rng.uniform(0.6, 1.4), n)
    if "height" in tags:
        put(rng.choice(OVERHEAD), rng.uniform(-180, 180), 0.2, 3.0, len(labels))
        put(rng.choice(["cat", "dog", "box", "bag"]), rng.uniform(-10, 10), 3.5, -2.2,
            len(labels) + 1)  # down the stairs
        put(rng.choice(["rug", "mat", "shoe", "ball"]), rng.uniform(-110, -35), 1.5, 0.05,
            len(labels) + 2)  # on the floor
    return scene, tags


async def _captions(settings, lm, scenes: list[pb.SceneFeatures], fresh: list[pb.SceneFeatures]
                    ) -> tuple[list[tuple[str, float]], dict[str, list[float]]]:
    import asyncio
    import time

    import grpc

    from arbridge.app import ArBridgeServer
    from arbridge.v1 import service_pb2 as spb
    from arbridge.v1 import service_pb2_grpc

    server = ArBridgeServer(settings.model_copy(update={"port": 0, "max_active": 8}))
    await server.start()
    await server.load(preloaded=lm)
    gate = asyncio.Semaphore(8)
    sampling = pb.SamplingParams(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = service_pb2_grpc.ArBridgeServiceStub(channel)

            async def one(scene):
                async with gate:
                    started, first, text = time.perf_counter(), None, ""
                    async for r in stub.DescribeScene(spb.DescribeSceneRequest(
                            scene=scene, sampling=sampling)):
                        if r.WhichOneof("event") == "chunk":
                            first = first or time.perf_counter()
                        elif r.completion.sequence_index == 0:
                            text = r.completion.text
                    return text, ((first or time.perf_counter()) - started) * 1e3

            out = await asyncio.gather(*(one(s) for s in scenes))
            # Time to the first token alone, composed against the model's own caption on
            # this one server: the default instruction said out loud asks for the model's
            # (the prompt is the same), fresh scenes one at a time (another seed, so no
            # prompt is cached whole), the two taking alternate scenes and going first in
            # turn; each call cancelled after its first chunk.
            alone: dict[str, list[float]] = {"composed": [], "model alone": []}
            for n, scene in enumerate(fresh):
                own = (n + n // 2) % 2 == 1  # composed, model, model, composed, ...
                started = time.perf_counter()
                call = stub.DescribeScene(spb.DescribeSceneRequest(
                    scene=scene, sampling=sampling,
                    instruction=DESCRIBE_INSTRUCTION if own else ""))
                async for r in call:
                    if r.WhichOneof("event") == "chunk":
                        alone["model alone" if own else "composed"].append(
                            (time.perf_counter() - started) * 1e3)
                        call.cancel()
                        break
            return out, alone
    finally:
        await server.stop(grace=1)


async def run(settings, lm=None, tune_scenes: int = 40, held_out_scenes: int = 80,
              seed: int = 0) -> dict:
    indices = list(range(tune_scenes)) + list(range(TUNE_SCENES, TUNE_SCENES + held_out_scenes))
    made = {i: hard_scene(i, seed) for i in indices}
    scenes = [made[i][0] for i in indices]
    fresh = [hard_scene(i, seed + 1)[0] for i in range(TTFT_SCENES)]
    result: dict = {"scenes": {"tune": tune_scenes, "held-out": held_out_scenes},
                    "max_new_tokens": MAX_NEW_TOKENS}
    for name, on in (("composed", True), ("model alone", False)):
        out, alone = await _captions(settings.model_copy(update={"scene_captions": on}), lm,
                                     scenes, fresh)
        if on:  # measured on the composed server, against its own model path
            result["ttft_alone_p50_ms"] = {k: round(sorted(v)[len(v) // 2], 1)
                                           for k, v in alone.items()}
        rows: dict = {}
        for split in ("tune", "held-out"):
            chosen = [(i, text, ms) for i, (text, ms) in zip(indices, out, strict=True)
                      if (i < TUNE_SCENES) == (split == "tune")]
            if not chosen:
                continue
            scores = [score_caption(text, made[i][0]) for i, text, _ in chosen]
            row = summarize(scores).row()
            row["ttft_p50_ms"] = round(sorted(ms for *_, ms in chosen)[len(chosen) // 2], 1)
            for tag in TAGS:
                tagged = [s for (i, *_), s in zip(chosen, scores, strict=True)
                          if tag in made[i][1]]
                if tagged:
                    row[f"coverage_{tag}"] = round(sum(s.coverage for s in tagged) /
                                                   len(tagged), 3)
            row["names_absent"] = sum(1 for s in scores if s.hallucinated)
            rows[split] = row
        result[name] = rows
        result[name]["samples"] = [{"scene": i, "tags": sorted(made[i][1]), "caption": t}
                                   for i, (t, _) in list(zip(indices, out, strict=True))[:30]]
    return result


def format_table(result: dict) -> str:
    cols = ["coverage", "hallucination_rate", "claims_correct", "cut_rate", "loop_rate",
            "first_person_rate", "mean_words", "ttft_p50_ms"]
    head = f"{'contender/split':24}" + "".join(f"{c[:12]:>13}" for c in cols)
    lines = [head]
    for name in ("composed", "model alone"):
        for split in ("tune", "held-out"):
            if split not in result[name]:
                continue
            row = result[name][split]
            lines.append(f"{name + '/' + split:24}" + "".join(f"{row[c]:>13}" for c in cols))
            lines.append(f"{'':24}coverage by tag: " + ", ".join(
                f"{t} {row[f'coverage_{t}']:.2f}" for t in TAGS if f"coverage_{t}" in row))
    lines.append(f"time to first token, one request at a time ({TTFT_SCENES} fresh scenes "
                 "shared out in turn, one server, p50): " + ", ".join(
                     f"{name} {ms} ms" for name, ms in result["ttft_alone_p50_ms"].items()))
    return "\n".join(lines)
