"""`arbridge eval --questions`: everyday questions about generated scenes, by kind.

Twelve kinds (exists, absent, count, side, where, closer, farther, distance, colour,
material, state, looking, above), asked through the same Ask call a headset makes,
about scenes from tools/scenes.py with more in them: a repeated label, something
overhead, states. The tune split's scenes are asked in one set of phrasings; the
held-out split's scenes in another (other templates, not only other scenes), never
looked at while tuning. Each answer is checked here against the geometry by rules
of this file's own (nothing of serving/scene_questions.py is used to score), and
the same questions go to a server with `scene_questions` off, in the same run, as
the baseline.
"""

from __future__ import annotations

import math
import random
import re

from arbridge.serving.caption_plan import says_twice
from arbridge.serving.lexicon import NOUNS, names_of, plural
from arbridge.serving.wearer_frame import place, rotate_inverse
from arbridge.tools.scenes import TUNE_SCENES, make_scene
from arbridge.v1 import types_pb2 as pb

STATES = [("on", "off"), ("open", "closed"), ("plugged in", "unplugged"), ("full", "empty"),
          ("locked", "unlocked")]
OVERHEAD = ["chandelier", "smoke detector", "ceiling fan", "light"]

# kind -> {split: [templates]}; {x} an object's label, {xs} its plural, {a}/{b} two labels,
# {s} a state word.
PHRASINGS = {
    "exists": {"tune": ["Is there a {x} here?", "Do you see a {x}?", "Is there a {x} in here?"],
               "held-out": ["Can you see a {x} anywhere?", "Does this room have a {x}?"]},
    "absent": {"tune": ["Is there a {x} here?", "Do you see a {x}?", "Is there a {x} in here?"],
               "held-out": ["Can you see a {x} anywhere?", "Does this room have a {x}?"]},
    "count": {"tune": ["How many {xs} are there?", "How many {xs} do you see?"],
              "held-out": ["How many {xs} are in here?", "How many {xs} can you see?"]},
    "side": {"tune": ["What is on my {side}?", "What's to my {side}?"],
             "held-out": ["What do I have on my {side}?", "Anything on my {side}?"]},
    "where": {"tune": ["Where is the {x}?", "Is the {x} on my left or right?"],
              "held-out": ["Where's the {x}?", "Is the {x} in front of me or behind me?"]},
    "closer": {"tune": ["Which is closer, the {a} or the {b}?",
                        "Is the {a} closer than the {b}?"],
               "held-out": ["Which is closer to me, the {a} or the {b}?",
                            "Which one is nearer, the {a} or the {b}?"]},
    "farther": {"tune": ["Which is farther, the {a} or the {b}?"],
                "held-out": ["Which is further away, the {a} or the {b}?"]},
    "distance": {"tune": ["How far away is the {x}?", "How far is the {x}?"],
                 "held-out": ["How far am I from the {x}?", "How close is the {x}?"]},
    "colour": {"tune": ["What color is the {x}?"],
               "held-out": ["What colour is the {x}?", "What's the colour of the {x}?"]},
    "material": {"tune": ["What is the {x} made of?"],
                 "held-out": ["What material is the {x}?"]},
    "state": {"tune": ["Is the {x} {s}?"], "held-out": ["Is the {x} {s} right now?"]},
    "looking": {"tune": ["What am I looking at?"], "held-out": ["What am I facing?"]},
    "above": {"tune": ["What is above me?"], "held-out": ["What's overhead?"]},
}


def rich_scene(index: int, seed: int = 0) -> pb.SceneFeatures:
    """make_scene's scene, then (seeded) a second object of one label elsewhere, an
    object overhead and a state on some objects."""
    scene = make_scene(index, seed)
    rng = random.Random(seed * 7_777_777 + index)
    camera = scene.camera_pose
    if scene.objects and rng.random() < 0.5:  # a repeated label, on another side
        src = rng.choice(list(scene.objects))
        twin = pb.SceneObject()
        twin.CopyFrom(src)
        twin.id = src.id + "-twin"
        twin.pose.position.x = 2 * camera.position.x - src.pose.position.x
        twin.pose.position.z = 2 * camera.position.z - src.pose.position.z
        twin.attributes.clear()
        scene.objects.append(twin)
    if rng.random() < 0.4:  # something overhead
        scene.objects.append(pb.SceneObject(
            id=f"s{index}-up", label=rng.choice(OVERHEAD), confidence=0.9,
            pose=pb.Pose(position=pb.Vec3(x=camera.position.x + rng.uniform(-0.3, 0.3),
                                          y=2.9, z=camera.position.z + rng.uniform(-0.3, 0.3)),
                         rotation=pb.Quaternion(w=1.0))))
    for obj in scene.objects:
        if rng.random() < 0.3:
            obj.attributes["state"] = rng.choice(rng.choice(STATES))
    return scene


def _elevation(obj: pb.SceneObject, camera: pb.Pose) -> float:
    rel = (obj.pose.position.x - camera.position.x, obj.pose.position.y - camera.position.y,
           obj.pose.position.z - camera.position.z)
    x, y, z = rotate_inverse(camera.rotation, rel)
    return math.degrees(math.atan2(y, math.hypot(x, z)))


def _azimuth(obj: pb.SceneObject, camera: pb.Pose) -> float:
    rel = (obj.pose.position.x - camera.position.x, obj.pose.position.y - camera.position.y,
           obj.pose.position.z - camera.position.z)
    x, _, z = rotate_inverse(camera.rotation, rel)
    return math.degrees(math.atan2(x, z))


SIDE_OF = {"to the left": "left", "to the right": "right", "ahead": "ahead", "behind": "behind"}


def questions(scene: pb.SceneFeatures, index: int, split: str,
              seed: int = 0) -> list[tuple[str, str, object]]:
    """(kind, question, expected) for one scene, phrased as `split` phrases them."""
    rng = random.Random(seed * 31 + index)
    camera = scene.camera_pose
    objs = [o for o in scene.objects if o.label.strip()]
    by_label: dict[str, list[pb.SceneObject]] = {}
    for o in objs:
        by_label.setdefault(o.label, []).append(o)
    unique = [o for o in objs if len(by_label[o.label]) == 1]
    out = []

    def ask(kind, expected, **slots):
        template = rng.choice(PHRASINGS[kind][split])
        out.append((kind, template.format(**slots), expected))

    if objs:
        o = rng.choice(objs)
        ask("exists", (o.label, True), x=o.label)
        label = rng.choice(sorted(by_label))
        ask("count", len(by_label[label]), xs=plural(label))
    labels = {o.label for o in objs}
    absent = sorted(n for n in NOUNS if not (names_of(n) & {w for la in labels
                                                            for w in names_of(la)}))
    ask("absent", (absent[(index * 7919) % len(absent)], False),
        x=absent[(index * 7919) % len(absent)])
    side = rng.choice(["left", "right"])
    on_side = [o for o in objs if SIDE_OF[place(o.pose, camera).direction] == side
               and _elevation(o, camera) < 60]
    ask("side", (side, on_side), side=side)
    if unique:
        o = rng.choice(unique)
        where = ("overhead" if _elevation(o, camera) >= 60 else
                 SIDE_OF[place(o.pose, camera).direction])
        ask("where", (o, where), x=o.label)
        ask("distance", place(o.pose, camera).distance_m, x=o.label)
        if o.attributes.get("color"):
            ask("colour", o.attributes["color"], x=o.label)
        if o.attributes.get("material"):
            ask("material", o.attributes["material"], x=o.label)
        pair = next((p for p in STATES if o.attributes.get("state") in p), None)
        if pair is not None:  # a state with an opposite ("new" has none here)
            value = o.attributes["state"]
            asked = rng.choice(pair)
            ask("state", (asked == value, value), x=o.label, s=asked)
    if len(unique) >= 2:
        a, b = rng.sample(unique, 2)
        da, db = place(a.pose, camera).distance_m, place(b.pose, camera).distance_m
        if abs(da - db) > 0.3:
            ask("closer", a.label if da < db else b.label, a=a.label, b=b.label)
            ask("farther", a.label if da > db else b.label, a=a.label, b=b.label)
    central = [o for o in objs
               if math.hypot(_azimuth(o, camera), _elevation(o, camera)) <= 15]
    if central:
        target = min(central, key=lambda o: math.hypot(_azimuth(o, camera),
                                                       _elevation(o, camera)))
        ask("looking", target.label)
    above = [o for o in objs if _elevation(o, camera) >= 30]
    if above:
        ask("above", above)
    return out


def _named(text: str, label: str) -> bool:
    words = " " + " ".join(re.findall(r"[a-z]+", text.lower())) + " "
    return any(f" {' '.join(re.findall('[a-z]+', n))} " in words for n in names_of(label))


def _first_index(text: str, label: str) -> int:
    lower = text.lower()
    hits = [lower.find(n) for n in names_of(label) if lower.find(n) >= 0]
    return min(hits) if hits else 10 ** 9


NUMBER_WORDS = {"no": 0, "zero": 0, "one": 1, "a": 1, "an": 1, "single": 1, "two": 2,
                "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
                "nine": 9, "ten": 10}
NEGATION = re.compile(r"\bno\b|\bnot\b|n't\b|\bnothing\b|\bnone\b")
SIDE_WORDS = {"overhead": r"\boverhead\b|\babove (?:you|me)\b|\bceiling\b",
              "left": r"\bleft\b", "right": r"\bright\b",
              "ahead": r"\bahead\b|\bin front\b|\bstraight\b", "behind": r"\bbehind\b"}


def correct(kind: str, answer: str, expected, scene: pb.SceneFeatures) -> bool:
    text = answer.lower()
    if kind in ("exists", "absent"):
        noun, present = expected
        negated = bool(NEGATION.search(text.split(",")[0]))
        affirmed = bool(re.search(r"\byes\b", text)) or _named(text, noun)
        return (affirmed and not negated) if present else negated
    if kind == "count":
        numbers = [NUMBER_WORDS[w] for w in re.findall(r"[a-z]+", text) if w in NUMBER_WORDS
                   and w not in ("a", "an")] + [int(x) for x in re.findall(r"\b\d+\b", text)]
        return bool(numbers) and numbers[0] == expected
    if kind == "side":
        side, there = expected
        if not there:
            return bool(NEGATION.search(text))
        others = {o.label for o in scene.objects} - {o.label for o in there}
        return all(_named(text, o.label) for o in there) and \
            not any(_named(text, la) for la in others)
    if kind == "where":
        _, side = expected
        said = [s for s, pattern in SIDE_WORDS.items() if re.search(pattern, text)]
        return said == [side]
    if kind == "distance":
        numbers = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", text)]
        return any(abs(x - expected) <= max(0.5, 0.2 * expected) for x in numbers)
    if kind in ("colour", "material"):
        return expected.lower() in text
    if kind == "state":
        yes, value = expected
        said_yes = bool(re.match(r"\s*yes\b", text))
        said_no = bool(re.match(r"\s*no\b", text)) or bool(NEGATION.search(text))
        return (said_yes and not said_no) if yes else said_no
    if kind in ("closer", "farther", "looking"):
        labels = {o.label for o in scene.objects}
        first = min(labels, key=lambda la: _first_index(text, la))
        return first == expected and _first_index(text, first) < 10 ** 9
    if kind == "above":
        return all(_named(text, o.label) for o in expected)
    raise ValueError(kind)


def loops(answer: str) -> bool:
    return says_twice(re.findall(r"[a-z]+", answer.lower()))


def asks(count: int, seed: int = 0) -> list[tuple[int, str, str, str, object]]:
    """(scene index, split, kind, question, expected) for scenes 0..count-1."""
    out = []
    for i in range(count):
        split = "tune" if i < TUNE_SCENES else "held-out"
        scene = rich_scene(i, seed)
        out += [(i, split, *q) for q in questions(scene, i, split, seed)]
    return out


# -- the run ------------------------------------------------------------------------------
CONCURRENCY = 8
MAX_NEW_TOKENS = 64


async def _answers(settings, lm, rows, scenes_by_index) -> list[tuple[str, float]]:
    """Every question through Ask on a server with `settings`: (answer, first-token ms)."""
    import asyncio
    import time

    import grpc

    from arbridge.app import ArBridgeServer
    from arbridge.v1 import service_pb2 as spb
    from arbridge.v1 import service_pb2_grpc

    server = ArBridgeServer(settings.model_copy(update={"port": 0,
                                                        "max_active": CONCURRENCY}))
    await server.start()
    await server.load(preloaded=lm)
    gate = asyncio.Semaphore(CONCURRENCY)
    sampling = pb.SamplingParams(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = service_pb2_grpc.ArBridgeServiceStub(channel)

            async def one(row):
                i, _, _, question, _ = row
                async with gate:
                    started, first, text = time.perf_counter(), None, ""
                    async for response in stub.Ask(spb.AskRequest(
                            start=spb.ConverseStart(scene=scenes_by_index[i]),
                            user_turn=spb.UserTurn(text=question, sampling=sampling))):
                        kind = response.WhichOneof("event")
                        if kind == "chunk" and first is None:
                            first = time.perf_counter()
                        elif kind == "completion" and response.completion.sequence_index == 0:
                            text = response.completion.text
                    return text, ((first or time.perf_counter()) - started) * 1e3

            return await asyncio.gather(*(one(row) for row in rows))
    finally:
        await server.stop(grace=1)


async def run(settings, lm=None, tune_scenes: int = 40, held_out_scenes: int = 60,
              seed: int = 0) -> dict:
    """Per kind and split, right answers with the scene-question layer and without it
    (the same questions, the same model, in the same run), loops, and first-token time."""
    indices = list(range(tune_scenes)) + list(range(TUNE_SCENES, TUNE_SCENES + held_out_scenes))
    scenes_by_index = {i: rich_scene(i, seed) for i in indices}
    rows = []
    for i in indices:
        split = "tune" if i < TUNE_SCENES else "held-out"
        rows += [(i, split, *q) for q in questions(scenes_by_index[i], i, split, seed)]
    result: dict = {"questions": len(rows), "scenes": {"tune": tune_scenes,
                                                       "held-out": held_out_scenes}}
    for name, on in (("layer", True), ("model alone", False)):
        answers = await _answers(settings.model_copy(update={"scene_questions": on}), lm,
                                 rows, scenes_by_index)
        table: dict = {}
        for (i, split, kind, _question, expected), (text, _) in zip(rows, answers,
                                                                    strict=True):
            ok = correct(kind, text, expected, scenes_by_index[i])
            cell = table.setdefault(split, {}).setdefault(kind, [0, 0])
            cell[0] += ok
            cell[1] += 1
        ttft = sorted(t for _, t in answers)
        result[name] = {
            split: {"all": round(sum(c[0] for c in kinds.values()) /
                                 max(1, sum(c[1] for c in kinds.values())), 3),
                    **{kind: round(c[0] / c[1], 3) for kind, c in sorted(kinds.items())}}
            for split, kinds in table.items()}
        result[name]["loops"] = round(sum(loops(t) for t, _ in answers) / len(answers), 3)
        result[name]["ttft_p50_ms"] = round(ttft[len(ttft) // 2], 1)
        result[name]["samples"] = [
            {"scene": i, "split": split, "kind": kind, "question": question, "answer": text}
            for (i, split, kind, question, _), (text, _) in list(zip(rows, answers,
                                                                     strict=True))[:40]]
    return result


def format_table(result: dict) -> str:
    kinds = sorted({k for name in ("layer", "model alone") for split in ("tune", "held-out")
                    for k in result[name].get(split, {}) if k != "all"})
    head = f"{'contender/split':24}{'all':>7}" + "".join(f"{k[:8]:>9}" for k in kinds)
    lines = [head]
    for name in ("layer", "model alone"):
        for split in ("tune", "held-out"):
            if split not in result[name]:
                continue
            row = result[name][split]
            lines.append(f"{name + '/' + split:24}{row.get('all', 0):>7.2f}" +
                         "".join(f"{row[k]:>9.2f}" if k in row else f"{'-':>9}"
                                 for k in kinds))
        lines.append(f"{'':24}loops {result[name]['loops']:.3f}, first token p50 "
                     f"{result[name]['ttft_p50_ms']} ms")
    return "\n".join(lines)
