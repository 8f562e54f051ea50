"""`arbridge eval`, point and act: pointing questions and scene-action tasks on the
seeded scenes (tools/scenes.py), through the same Ask calls a Unity app makes.

* Pointing: a hand ray from the wearer at one object of a scene with several, "what
  is this?" and the like. Scored: the referent the server resolved (geometry: must be
  the object the ray was aimed at) and whether the first object the answer names is
  that one. Baseline in the same run: the same question with no ray (what the model can
  do without the referent).
* Actions: "highlight the red chair", "walk over to the lamp", "highlight this" (with
  a ray), in scenes with distractors, half of them a second object of the same label
  in another colour. Scored: validity (every call names a declared action and only
  scene objects: 100 % by construction), correctness (the first call is the right
  action on the right object), and how many replies call anything at all.

Targets (issue #19): referents 100 %, pointed answers >= 90 %, actions valid 100 %,
correct >= 90 %.
"""

from __future__ import annotations

import asyncio
import math
import random
import re

from arbridge.serving.lexicon import names_of
from arbridge.serving.scene_text import noun_phrase
from arbridge.tools.scenes import ATTRIBUTES
from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import types_pb2 as pb

# The held-out split is asked in other words than the tune split (and the worked turns
# of serving/actions.py): a prompt tuned to the tune phrasings must carry over. (The
# tune split's second four were the first held-out set; its failures were looked at.)
POINT_QUESTIONS = {
    "tune": ["What is this?", "What am I pointing at?", "What is that thing?",
             "Can you tell me what this is?", "What's this one?", "Tell me about this.",
             "What do you call this object?", "Which thing am I pointing to?"],
    "held-out": ["What's that over there?", "Do you know what this is?", "Name this for me.",
                 "What exactly am I pointing at?"]}
ACTIONS = [
    pb.ActionDefinition(name="highlight", description="make an object glow", parameters=[
        pb.ActionParameter(name="target", type=pb.PARAMETER_TYPE_OBJECT)]),
    pb.ActionDefinition(name="move_to", description="walk the character to an object",
                        parameters=[pb.ActionParameter(name="target",
                                                       type=pb.PARAMETER_TYPE_OBJECT)]),
]
COMMANDS = {
    "tune": [("highlight", "Highlight the {}."), ("highlight", "Please highlight the {}."),
             ("move_to", "Move to the {}."), ("move_to", "Please move to the {}."),
             ("highlight", "Make the {} glow."),
             ("highlight", "Could you highlight the {} for me?"),
             ("move_to", "Walk over to the {}."), ("move_to", "Go to the {}, please.")],
    "held-out": [("highlight", "Light up the {}."), ("highlight", "Can you make the {} glow?"),
                 ("move_to", "Head over to the {}."), ("move_to", "Can you walk to the {}?")]}
POINTED_COMMANDS = {"tune": [("highlight", "Highlight this."), ("move_to", "Move to that."),
                             ("highlight", "Make this one glow."),
                             ("move_to", "Walk over to that.")],
                    "held-out": [("highlight", "Light this up."),
                                 ("move_to", "Head over there to that one.")]}
# No other object's centre this close to the ray before the target or just behind it
# (boxes that overlap it): one right answer per question.
CLEARANCE_M = 0.6


def _aim(scene: pb.SceneFeatures, target: pb.SceneObject) -> pb.Ray | None:
    """A right-hand ray from just below the wearer's eyes to the target's centre; None
    when another object stands in the way or overlaps the target (checked by centre
    distance to the ray, independent of the server's box geometry)."""
    cam = scene.camera_pose.position
    origin = (cam.x + 0.2, cam.y - 0.4, cam.z)
    t = target.pose.position
    d = (t.x - origin[0], t.y - origin[1], t.z - origin[2])
    length = math.sqrt(sum(c * c for c in d))
    for other in scene.objects:
        if other.id == target.id:
            continue
        o = other.pose.position
        v = (o.x - origin[0], o.y - origin[1], o.z - origin[2])
        along = sum(a * b for a, b in zip(v, d, strict=True)) / length
        if 0 < along < length + CLEARANCE_M:  # before it, or overlapping it
            across = math.sqrt(max(sum(c * c for c in v) - along * along, 0.0))
            if across < CLEARANCE_M:
                return None
    return pb.Ray(source=pb.RAY_SOURCE_RIGHT_HAND,
                  origin=pb.Vec3(x=origin[0], y=origin[1], z=origin[2]),
                  direction=pb.Vec3(x=d[0], y=d[1], z=d[2]))


def pointing_tasks(all_scenes, indices, seed: int = 0, split: str = "tune") -> list[dict]:
    rng = random.Random(seed + 19)
    tasks = []
    for i in indices:
        scene = all_scenes[i]
        if len(scene.objects) < 2:
            continue
        target = scene.objects[rng.randrange(len(scene.objects))]
        ray = _aim(scene, target)
        if ray is None:
            continue
        tasks.append({"scene": i, "target": target.id, "ray": ray,
                      "question": POINT_QUESTIONS[split][len(tasks) % len(POINT_QUESTIONS[split])]})
    return tasks


def _with_distractor(scene: pb.SceneFeatures, target: pb.SceneObject, rng) -> pb.SceneFeatures:
    """The scene plus an object of the target's label in another colour, elsewhere."""
    out = pb.SceneFeatures()
    out.CopyFrom(scene)
    twin = out.objects.add()
    twin.CopyFrom(target)
    twin.id = f"{target.id}-twin"
    colours = [c for c in ATTRIBUTES["color"] if c != target.attributes.get("color")]
    twin.attributes["color"] = rng.choice(colours)
    if "color" not in target.attributes:  # the target needs a colour of its own then
        for obj in out.objects:
            if obj.id == target.id:
                obj.attributes["color"] = rng.choice([c for c in colours
                                                      if c != twin.attributes["color"]])
    twin.pose.position.x += rng.choice([-1.5, 1.5])
    twin.pose.position.z += rng.uniform(-0.5, 0.5)
    return out


def action_tasks(all_scenes, indices, seed: int = 0, split: str = "tune") -> list[dict]:
    rng = random.Random(seed + 23)
    tasks = []
    for i in indices:
        scene = all_scenes[i]
        if not scene.objects:
            continue
        target = scene.objects[rng.randrange(len(scene.objects))]
        if rng.random() < 0.5:  # by chance, not in step with the phrasings
            scene = _with_distractor(scene, target, rng)
            target = next(o for o in scene.objects if o.id == target.id)
        phrases = [noun_phrase(o).lower() for o in scene.objects]
        if phrases.count(noun_phrase(target).lower()) > 1:
            continue  # no way to say which in words
        if len(tasks) % 5 == 4:  # a pointed command: "highlight this"
            ray = _aim(scene, target)
            if ray is None:
                continue
            pointed = POINTED_COMMANDS[split]
            action, text = pointed[len(tasks) // 5 % len(pointed)]
            tasks.append({"scene": i, "scene_msg": scene, "target": target.id, "ray": ray,
                          "action": action, "command": text})
            continue
        action, template = COMMANDS[split][len(tasks) % len(COMMANDS[split])]
        tasks.append({"scene": i, "scene_msg": scene, "target": target.id, "ray": None,
                      "action": action, "command": template.format(noun_phrase(target))})
    return tasks


def names_first(answer: str, scene: pb.SceneFeatures, target_id: str) -> bool:
    """The first scene object the answer names (by a name of its label) is the target:
    the answer is about it ("the lamp is to the left of the sofa" counts, "this is a
    sofa" does not)."""
    text = answer.lower()
    first: dict[str, int] = {}
    for obj in scene.objects:
        for name in names_of(obj.label.lower()) | {obj.label.lower()}:
            m = re.search(rf"\b{re.escape(name)}\b", text)
            if m and m.start() < first.get(obj.label.lower(), len(text) + 1):
                first[obj.label.lower()] = m.start()
    if not first:
        return False
    target = next(o for o in scene.objects if o.id == target_id).label.lower()
    return min(first, key=first.get) == target


async def _reply(call) -> tuple[str, list[pb.Referent], list[pb.ActionCall]]:
    text, referents, actions = "", [], []
    async for response in call:
        kind = response.WhichOneof("event")
        if kind == "completion" and response.completion.sequence_index == 0:
            c = response.completion
            text, referents, actions = c.text, list(c.referents), list(c.actions)
    return text, referents, actions


async def run(stub, all_scenes, indices, sampling: pb.SamplingParams, concurrency: int,
              seed: int = 0, split: str = "tune") -> dict:
    sem = asyncio.Semaphore(concurrency)

    async def bounded(make):
        async with sem:
            return await _reply(make())

    points = pointing_tasks(all_scenes, indices, seed, split)
    with_ray = await asyncio.gather(*(bounded(lambda t=t: stub.Ask(spb.AskRequest(
        start=spb.ConverseStart(scene=all_scenes[t["scene"]]),
        user_turn=spb.UserTurn(text=t["question"], rays=[t["ray"]], sampling=sampling))))
        for t in points))
    no_ray = await asyncio.gather(*(bounded(lambda t=t: stub.Ask(spb.AskRequest(
        start=spb.ConverseStart(scene=all_scenes[t["scene"]]),
        user_turn=spb.UserTurn(text=t["question"], sampling=sampling))))
        for t in points))
    acts = action_tasks(all_scenes, indices, seed, split)
    acted = await asyncio.gather(*(bounded(lambda t=t: stub.Ask(spb.AskRequest(
        start=spb.ConverseStart(scene=t["scene_msg"], actions=ACTIONS),
        user_turn=spb.UserTurn(text=t["command"], rays=[t["ray"]] if t["ray"] else [],
                               sampling=sampling))))
        for t in acts))
    point_rows, act_rows = [], []
    for t, (text, referents, _), (plain, _, _) in zip(points, with_ray, no_ray, strict=True):
        scene = all_scenes[t["scene"]]
        point_rows.append({
            "scene": t["scene"], "question": t["question"], "target": t["target"],
            "referent": referents[0].object_id if referents else "",
            "referent_ok": bool(referents) and referents[0].object_id == t["target"],
            "answer": text, "answer_ok": names_first(text, scene, t["target"]),
            "no_ray_answer": plain, "no_ray_ok": names_first(plain, scene, t["target"])})
    for t, (text, _, actions) in zip(acts, acted, strict=True):
        ids = {o.id for o in t["scene_msg"].objects}
        valid = all(a.name in {d.name for d in ACTIONS} and set(a.object_ids) <= ids
                    and len(a.object_ids) == 1 for a in actions)
        first = actions[0] if actions else None
        act_rows.append({
            "scene": t["scene"], "command": t["command"], "pointed": t["ray"] is not None,
            "expected": f"{t['action']}({t['target']})",
            "called": [f"{a.name}({','.join(a.object_ids)})" for a in actions],
            "text": text, "valid": valid, "acted": first is not None,
            "correct": first is not None and first.name == t["action"]
            and list(first.object_ids) == [t["target"]]})

    def rate(rows, key):
        return round(sum(r[key] for r in rows) / max(len(rows), 1), 3)

    return {
        "pointing": {"questions": len(point_rows), "referent_accuracy": rate(point_rows,
                                                                             "referent_ok"),
                     "answer_correct": rate(point_rows, "answer_ok"),
                     "answer_correct_without_ray": rate(point_rows, "no_ray_ok")},
        "actions": {"tasks": len(act_rows), "valid": rate(act_rows, "valid"),
                    "acted": rate(act_rows, "acted"), "correct": rate(act_rows, "correct"),
                    "correct_pointed": rate([r for r in act_rows if r["pointed"]], "correct"),
                    "correct_named": rate([r for r in act_rows if not r["pointed"]],
                                          "correct")},
        "pointing_answers": point_rows, "action_replies": act_rows}


def format_lines(result: dict) -> list[str]:
    p, a = result["pointing"], result["actions"]
    return [f"pointing (Ask + hand ray, {p['questions']} questions): referent "
            f"{p['referent_accuracy']:.0%}, answer names the object {p['answer_correct']:.0%} "
            f"(same questions without the ray: {p['answer_correct_without_ray']:.0%})",
            f"actions ({a['tasks']} tasks, half with a same-label distractor): valid "
            f"{a['valid']:.0%}, correct {a['correct']:.0%} (named {a['correct_named']:.0%}, "
            f"pointed {a['correct_pointed']:.0%}), replies that act {a['acted']:.0%}"]
