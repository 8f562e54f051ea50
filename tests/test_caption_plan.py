"""Captions composed from the scene (serving/caption_plan.py) and the words they use
(serving/phrasing.py): the cases the field reported, repeated labels, heights,
turned and pitched heads, big scenes within a budget; and the scorer that checks
them (tools/caption_score.py)."""

from __future__ import annotations

import math

import pytest
from scene_builders import room, thing

from arbridge.serving.caption_plan import plan_caption
from arbridge.serving.grounding import planned
from arbridge.serving.phrasing import a, count_of, noun_phrase
from arbridge.tools.caption_score import score_caption
from arbridge.tools.hard_caption_eval import hard_scene
from arbridge.v1 import types_pb2 as pb


def turned(yaw: float = 0.0, pitch_down: float = 0.0) -> pb.Quaternion:
    """Unity: yaw about +Y, then pitch about +X (positive looks down)."""
    cy, sy = math.cos(math.radians(yaw) / 2), math.sin(math.radians(yaw) / 2)
    cx, sx = math.cos(math.radians(pitch_down) / 2), math.sin(math.radians(pitch_down) / 2)
    return pb.Quaternion(x=cy * sx, y=sy * cx, z=-sy * sx, w=cy * cx)


def caption(scene, **kw) -> str:
    plan = plan_caption(scene, **kw)
    assert plan is not None
    return plan.text


def test_repeated_labels_are_counted_and_placed():
    # The field's case: a red chair left, a blue chair right and a table.
    scene = room(thing(1, "chair", -2.0, 0.5, 1.0, color="red"),
                 thing(2, "chair", 2.0, 0.5, 1.5, color="blue"),
                 thing(3, "table", 0.0, 0.7, 3.0, material="walnut"))
    text = caption(scene)
    assert text == ("Two chairs: a red one to the left and a blue one to the right. "
                    "Ahead: a walnut table.")
    score = score_caption(text, scene)
    assert score.coverage == 1.0 and all(c.correct for c in score.claims)
    # Same-looking instances: one on each side; several on a side counted there.
    same = room(thing(1, "chair", -2.0, 0.5, 2.0), thing(2, "chair", 2.0, 0.5, 2.0))
    assert caption(same) == "Two chairs, one on each side."
    lamps = room(thing(1, "lamp", 2.0, 1.2, 2.0), thing(2, "lamp", 2.5, 1.2, 1.0),
                 thing(3, "lamp", 0.1, 1.2, 3.0))
    assert caption(lamps) == "Three lamps: one ahead and two to the right."
    chairs = room(thing(1, "chair", -2.0, 0.5, 1.0, color="red"),
                  thing(2, "chair", -2.2, 0.5, 1.5, color="red"), thing(3, "chair", 0.0, 0.5, -2))
    assert caption(chairs) == "Three chairs: two red ones to the left and one behind you."
    # Alike in one place: counted there; told apart by attributes: each said.
    mugs = room(thing(1, "mug", -1.0, 1.0, 1.0, color="red"),
                thing(2, "mug", -1.2, 1.0, 1.1, color="red"),
                thing(3, "cup", -1.0, 1.0, 2.0, color="red"),
                thing(4, "cup", -1.2, 1.0, 2.1, color="blue"))
    assert caption(mugs) == "To the left: two red mugs and two cups (a red one and a blue " \
                            "one)."


def test_the_plan_grounds_each_instance():
    scene = room(thing(1, "chair", -2.0, 0.5, 1.0, color="red"),
                 thing(2, "chair", 2.0, 0.5, 1.5, color="blue"))
    plan = plan_caption(scene)
    spans = {(plan.text[s.start:s.end], s.object_id) for s in planned(plan.text,
                                                                       plan.mentions)}
    assert spans == {("Two chairs", "o1"), ("Two chairs", "o2"), ("a red one", "o1"),
                     ("a blue one", "o2")}


def test_heights_are_said():
    scene = room(thing(1, "smoke alarm", 0.2, 3.0, 0.3), thing(2, "cat", 0.0, -2.0, 3.5),
                 thing(3, "chandelier", 0.0, 3.2, 2.0))
    text = caption(scene)
    assert text == "Overhead: a smoke alarm near you. Above you: a chandelier. Below you: " \
                   "a cat far away."
    assert all(c.correct for c in score_caption(text, scene).claims)
    # The scorer catches a caption that puts them all "ahead".
    wrong = score_caption("A smoke alarm is ahead, a cat is ahead and a chandelier is ahead.",
                          scene)
    assert not all(c.correct for c in wrong.claims)


@pytest.mark.parametrize("rotation, where", [(turned(yaw=90.0), "ahead"),
                                             (turned(pitch_down=40.0), "ahead"),
                                             (turned(yaw=180.0), "behind you")])
def test_turned_and_pitched_heads(rotation, where):
    # The table is 3 m along world +X (yawed 90: ahead), or +Z (pitched down: still
    # ahead, not "below"); turned around, behind.
    x, z = (3.0, 0.0) if rotation == turned(yaw=90.0) else (0.0, 3.0)
    text = caption(room(thing(1, "table", x, 0.7, z), rotation=rotation))
    assert text == f"{where[0].upper()}{where[1:]}: a table."


def test_big_scenes_end_whole_within_the_budget():
    scene, tags = hard_scene(4)
    assert "big" in tags and len(scene.objects) >= 9
    words = lambda text: len(text.split()) <= 40  # noqa: E731 - a budget in words here
    plan = plan_caption(scene, fits=words)
    assert len(plan.text.split()) <= 40 and plan.text.endswith("more things around you.")
    assert plan_caption(scene).left_out == 0  # all of it, given the room
    assert plan.left_out == len(scene.objects) - len(plan.named) > 0
    # Nothing fits: no plan (the model's caption instead), never half a name.
    assert plan_caption(scene, fits=lambda text: False) is None


def test_what_matters_is_kept_when_the_budget_is_short():
    scene = room(thing(1, "lamp", 0.1, 1.2, 1.0), thing(2, "poster", -3.0, 1.6, 6.0),
                 thing(3, "bus", 3.0, 1.0, 6.5), thing(4, "cup", 0.0, 1.0, -7.0))
    scene.objects[2].extents.CopyFrom(pb.Vec3(x=10.0, y=3.0, z=2.5))
    short = lambda text: len(text.split()) <= 12  # noqa: E731 - a budget in words here
    # The nearest, and the bus (big things count as nearer), before the others...
    assert caption(scene, fits=short) == "Ahead: lamp. To the right: bus. And two more " \
                                         "things around you."
    # ... unless the wearer looks at the poster.
    assert caption(scene, gazed_ids={"o2"}, fits=short) == "To the left: poster. And " \
                                                           "three more things around you."


def test_english_words_for_attributes():
    bike = thing(1, "bicycle", 0, 0, 1, color="red", material="carbon", size="small",
                 state="locked")
    assert noun_phrase(bike) == "locked small red carbon bicycle"
    assert a(noun_phrase(thing(2, "oven", 0, 0, 1, state="on"))) == "a switched-on oven"
    assert a("espresso machine") == "an espresso machine"
    assert a("binoculars") == "a pair of binoculars"
    assert a("unicorn") == "a unicorn" and a("hour glass") == "an hour glass"
    assert count_of(2, "scissors") == "two pairs of scissors"
    assert count_of(3, "bus") == "three buses"
    assert a("sheep") == "a sheep" and a("grapes") == "some grapes"
    assert a("unidentified box") == "an unidentified box" and a("uniform") == "a uniform"
    assert count_of(2, "Person") == "two People" and count_of(2, "bookshelf") == \
        "two bookshelves"


def test_the_scorer_counts_instances_and_keeps_names_apart():
    scene = room(thing(1, "chair", -2.0, 0.5, 1.0), thing(2, "chair", 2.0, 0.5, 1.0),
                 thing(3, "table", 0.0, 0.7, 3.0))
    # The collapsed caption of the field report names one chair of two.
    assert score_caption("A red chair is to the left, a walnut table is ahead.",
                         scene).coverage == pytest.approx(2 / 3)
    assert score_caption("Two chairs, one on each side, and a table ahead.",
                         scene).coverage == 1.0
    globes = room(thing(1, "snow globe", -2.0, 1.0, 1.0), thing(2, "globe", 2.0, 1.0, 1.0),
                  thing(3, "dog bed", 0.0, 0.2, 2.0))
    # "snow globe" does not name the globe; "dog" in "dog bed" is no dog, a dog is.
    one = score_caption("A snow globe is to the left and a dog bed is ahead.", globes)
    assert one.coverage == pytest.approx(2 / 3) and not one.hallucinated
    assert score_caption("A dog is ahead.", globes).hallucinated == ["dog"]
    assert score_caption("A snow globe is to the left, a globe is to the", globes).cut
    # Counts are read back to the phrase's start; "the chair" again is no second chair.
    mugs = room(*(thing(i, "mug", -1.0, 1.0, 1.0 + i / 10) for i in range(3)),
                thing(3, "cup", 1.0, 1.0, 1.0), thing(4, "cup", 1.2, 1.0, 1.0))
    assert score_caption("To the left: three red mugs and a cup.", mugs).named == 4
    assert score_caption("A mug is to the left. The mug is red.", mugs).named == 1
    # A blank label names nothing (it is not "named" by every word).
    blank = room(thing(1, "", 0.0, 1.0, 1.0), thing(2, "cup", 1.0, 1.0, 1.0))
    assert score_caption("Nothing much.", blank).named == 0


async def _describe(stub, scene, instruction: str = "") -> pb.Completion:
    from arbridge.v1 import service_pb2 as spb

    from conftest import collect

    _, done, _ = await collect(stub.DescribeScene(spb.DescribeSceneRequest(
        scene=scene, instruction=instruction, sampling=pb.SamplingParams(
            max_new_tokens=60, temperature=0.8, seed=5))))
    return done[0]


CHAIRS = room(thing(1, "chair", -2.0, 0.5, 2.0), thing(2, "chair", 2.0, 0.5, 2.0),
              thing(3, "smoke alarm", 0.2, 3.0, 0.3))


async def test_describe_scene_says_the_composed_caption(make_server, wide_model_dir):
    """A tiny random model, sampling: the caption is the scene's all the same, each
    instance grounded; an instruction (which only a model can follow) or the setting
    off gives the model's own words."""
    running = await make_server(wide_model_dir)
    done = await _describe(running.stub, CHAIRS)
    assert done.text == "Two chairs, one on each side. Overhead: a smoke alarm near you."
    assert done.finish_reason == pb.FINISH_REASON_EOS
    assert {g.object_id for g in done.grounding} == {"o1", "o2", "o3"}
    asked = await _describe(running.stub, CHAIRS, instruction="Say it in French.")
    assert asked.text != done.text
    off = await make_server(wide_model_dir, scene_captions=False)
    assert (await _describe(off.stub, CHAIRS)).text != done.text


def test_the_readme_example():
    scene = room(thing(1, "chair", -2.0, 0.5, 2.0), thing(2, "chair", 2.0, 0.5, 2.0),
                 thing(3, "table", 0.1, 0.7, 1.0, material="walnut"),
                 thing(4, "lamp", -0.5, 1.2, 6.0), thing(5, "mug", -1.0, 1.0, 1.0, color="red"),
                 thing(6, "mug", -1.2, 1.0, 1.1, color="red"),
                 thing(7, "cup", -1.0, 1.0, 2.0, color="red"),
                 thing(8, "cup", -1.2, 1.0, 2.1, color="blue"),
                 thing(9, "smoke alarm", 0.2, 3.0, 0.3), thing(10, "cat", 0.0, -2.0, 4.5))
    assert caption(scene) == (
        "Two chairs, one on each side. Ahead: a walnut table near you and a lamp far away. "
        "To the left: two red mugs and two cups (a red one and a blue one). Overhead: a "
        "smoke alarm near you. Below you: a cat far away.")
    # Shorter: the bands go, then the attributes, then the articles, and then objects.
    terse = plan_caption(scene, fits=lambda text: len(text.split()) <= 25)
    assert terse.text == (
        "Two chairs, one on each side. Ahead: table and lamp. To the left: two mugs and two "
        "cups. Overhead: smoke alarm. Below you: cat.")
    short = plan_caption(scene, fits=lambda text: len(text.split()) <= 20)
    assert short.text == (
        "Ahead: table. To the left: two mugs, two cups and chair. Overhead: smoke alarm. And "
        "three more things around you.")


def test_two_labels_alike_in_look_and_place_are_not_worded_alike():
    # "a fabric one to the right and" twice reads as a loop: the first part names it.
    scene = room(thing(1, "hose", 2.0, 0.5, 1.0, material="fabric"),
                 thing(2, "hose", 0.0, 0.5, -2.0, color="green"),
                 thing(3, "bench", 2.5, 0.5, 1.2, material="fabric"),
                 thing(4, "bench", 0.3, 0.5, -3.0, material="glass"))
    assert caption(scene) == ("Two hoses: a fabric hose to the right and a green one behind "
                              "you. Two benches: a fabric bench to the right and a glass one "
                              "behind you.")
    assert not score_caption(caption(scene), scene).loop
