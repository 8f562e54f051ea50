"""Scene questions answered from the scene (serving/scene_questions.py): the cases
the field reported wrong, each kind, repeated labels, height and turned heads."""

from __future__ import annotations

import math

import pytest
from scene_builders import room, thing

from arbridge.serving.scene_questions import answer
from arbridge.v1 import types_pb2 as pb


def yaw(degrees: float) -> pb.Quaternion:
    half = math.radians(degrees) / 2
    return pb.Quaternion(y=math.sin(half), w=math.cos(half))


def pitch(degrees: float) -> pb.Quaternion:
    """Looking up by `degrees` (Unity: a negative rotation about +X tilts the view up)."""
    half = math.radians(-degrees) / 2
    return pb.Quaternion(x=math.sin(half), w=math.cos(half))


def said(question: str, scene: pb.SceneFeatures, gazed=None) -> str:
    result = answer(question, scene, gazed)
    assert result is not None, f"{question!r} was not recognised"
    return result.text


MUSIC = room(thing(1, "saxophone", 0.3, 1.0, 1.4), thing(2, "cello", -1.0, 1.0, 2.3),
             thing(3, "lamp", -2.0, 1.2, 1.0), thing(4, "lamp", 2.0, 1.2, 2.0, color="red"),
             thing(5, "toaster", 0.5, 1.0, 3.0, state="unplugged"),
             thing(6, "dog bed", 1.0, 0.1, 2.0, color="grey"),
             thing(7, "chair", -1.5, 0.5, -2.0, color="blue", material="wood"))


def test_absent_objects_are_denied_plainly():
    assert said("Is there a baby in here?", MUSIC) == "No, I don't see a baby here."
    assert said("is there a photocopier?", MUSIC) == "No, I don't see a photocopier here."
    assert said("Do you see any dogs?", MUSIC) == "No, I don't see any dogs here."
    assert said("Is there an umbrella?", MUSIC) == "No, I don't see an umbrella here."


def test_a_head_noun_alone_is_not_a_yes():
    # A dog bed is no bed; the answer says what is there instead.
    text = said("is there a bed here?", MUSIC)
    assert text.startswith("No, I don't see a bed, but") and "dog bed" in text


def test_which_is_closer_is_computed():
    text = said("Which is closer to me, the cello or the saxophone?", MUSIC)
    assert text.startswith("The saxophone is closer")
    assert said("which is farther, the cello or the saxophone?", MUSIC).startswith(
        "The cello is farther")
    assert said("Is the cello closer than the saxophone?", MUSIC).startswith("The saxophone")


def test_repeated_labels_are_counted_and_each_placed():
    assert said("How many lamps are in here?", MUSIC) == "There are two lamps."
    assert said("how many cellos are there?", MUSIC) == "There is one cello."
    assert said("How many pianos do you see?", MUSIC) == "There are no pianos here."
    where = said("where are the lamps?", MUSIC)
    assert where.startswith("There are two lamps: one on your left") and "on your right" in where
    # "the left lamp" and "the red lamp" resolve to one of them.
    assert said("how far is the left lamp?", MUSIC) == "The lamp is 2.3 m away."
    assert said("how far is the red lamp?", MUSIC) == "The red lamp is 2.9 m away."


def test_states_are_answered_as_states():
    assert said("Is the toaster plugged in?", MUSIC) == "No, the toaster is unplugged."
    assert said("is the toaster unplugged?", MUSIC) == "Yes, the toaster is unplugged."
    assert said("is the chair open?", MUSIC) == "I can't tell whether the chair is open."


def test_sides_heights_and_attributes():
    right = said("What do I have on my right?", MUSIC)
    assert right == "On your right: the grey dog bed and the red lamp."
    assert said("what's behind me?", MUSIC) == "Behind you: the blue wood chair."
    assert said("What colour is the chair?", MUSIC) == "The chair is blue."
    assert said("what is the chair made of?", MUSIC) == "The chair is made of wood."
    assert said("What colour is the cello?", MUSIC) == "I can't tell the cello's colour."
    assert said("what is on the floor?", MUSIC) == (
        "On the floor: the grey dog bed and the blue wood chair.")


def test_height_is_said():
    scene = room(thing(1, "smoke alarm", 0.2, 2.9, 0.3), thing(2, "chandelier", 0.0, 3.2, 2.5),
                 thing(3, "cat", 0.0, -1.9, 3.5))
    assert said("where is the smoke alarm?", scene) == "The smoke alarm is overhead, 1.3 m away."
    assert "above you" in said("where is the chandelier?", scene)
    assert "below you" in said("where's the cat?", scene)
    assert said("What's above me?", scene) == "Above you: the smoke alarm and the chandelier."
    # Overhead is no side: the alarm is not on anybody's right.
    assert said("what is on my right?", scene) == "Nothing is on your right."


def test_a_turned_head_turns_every_answer():
    # Turned 90 degrees to the right: the table 3 m ahead in the room is on the left.
    scene = room(thing(1, "table", 0.0, 0.8, 3.0), rotation=yaw(90))
    assert said("is the table in front of me or behind me?", scene).startswith(
        "The table is on your left")
    scene = room(thing(1, "table", 3.0, 0.8, 0.0), rotation=yaw(90))
    assert said("Is the table in front of me or behind me?", scene).startswith(
        "The table is ahead of you")
    # Looking up: the chandelier 2 m up ahead is what the wearer looks at.
    scene = room(thing(1, "chandelier", 0.0, 3.6, 2.0), thing(2, "tv", 0.0, 1.0, 3.0),
                 rotation=pitch(45))
    assert said("What am I looking at?", scene).startswith("You're looking at the chandelier")


def test_sides_and_heights_follow_gravity_not_a_tilted_head():
    door = thing(1, "door", 0.0, 1.6, 4.0)
    fan = thing(2, "ceiling fan", 0.0, 3.0, 0.1)
    mug = thing(3, "mug", 1.0, 1.6, 2.0)
    for rotation in (pitch(-35), pitch(-60), pitch(-80)):  # looking down at a table
        scene = room(door, fan, mug, rotation=rotation)
        assert said("where is the door?", scene) == "The door is ahead of you, 4.0 m away."
        assert said("what's above me?", scene) == "Above you: the ceiling fan."
    half = math.radians(60) / 2  # the head rolled 60 degrees
    rolled = room(door, mug, rotation=pb.Quaternion(z=math.sin(half), w=math.cos(half)))
    assert said("where is the mug?", rolled).startswith("The mug is on your right")


def test_heights_are_measured_from_the_eyes_not_from_world_zero():
    # A device-origin frame: the eyes at y = 0, the floor at about -1.6.
    camera = pb.Pose(position=pb.Vec3(y=0.0), rotation=pb.Quaternion(w=1.0))
    scene = pb.SceneFeatures(camera_pose=camera, objects=[
        thing(1, "picture", 0.0, 0.0, 3.0), thing(2, "shoe", 0.5, -1.5, 2.0)])
    assert said("what is on the floor?", scene) == "On the floor: the shoe."


@pytest.mark.parametrize("question", [
    "where is it?", "what colour is this?", "where am I?", "is there anything else?",
    "is there a problem?", "how many things are there?", "is there a green chair?",
    "is there a lamp behind me?", "is there a dog in the dog bed?",
    "how far is the lamp from the cello?", "how many lamps are on my left?",
    "how many people can sit here?", "which is closer to the door, the cello or the lamp?"])
def test_what_it_cannot_check_goes_to_the_model(question):
    assert answer(question, MUSIC) is None


def test_a_longer_name_is_not_its_last_word():
    assert said("is there a cello case?", MUSIC) == "No, I don't see a cello case here."


def test_a_pointed_object_is_asked_about_by_name():
    from arbridge.serving.referents import resolve_deixis

    ray = pb.Referent(source=pb.RAY_SOURCE_GAZE, match=pb.REFERENT_MATCH_HIT, object_id="o7")
    question = resolve_deixis("what colour is this?", [ray], MUSIC)
    assert said(question, MUSIC) == "The chair is blue."


def test_objects_without_a_pose_leave_the_answer_to_the_model():
    scene = room(thing(1, "lamp", 1, 1, 1), pb.SceneObject(id="x", label="cat"))
    assert answer("is there a cat here?", scene) is None
    assert answer("x" * 300 + " is there a lamp?", MUSIC) is None


def test_what_am_i_looking_at_takes_the_gaze_or_the_heading():
    scene = room(thing(1, "television", 0.0, 1.2, 3.0), thing(2, "sofa", 2.5, 0.5, 1.0))
    assert said("What am I looking at?", scene).startswith("You're looking at the television")
    assert said("What am I looking at?", scene, gazed=scene.objects[1]).startswith(
        "You're looking at the sofa")


def test_labels_outside_any_lexicon_and_multi_word_names():
    scene = room(thing(1, "e-scooter", 1.0, 0.5, 2.0), thing(2, "snow globe", -1, 1, 1),
                 thing(3, "globe", 1, 1, 1), thing(4, "espresso machine", 0, 1, 2))
    assert said("is there an e-scooter here?", scene).startswith("Yes. The e-scooter")
    assert said("where is the globe?", scene).startswith("The globe is on your right")
    assert said("where is the snow globe?", scene).startswith("The snow globe is on your left")
    assert said("is there an espresso machine?", scene).startswith("Yes. The espresso machine")


@pytest.mark.parametrize("question", ["Tell me a joke.", "What should I cook tonight?",
                                      "hello", "Why is the sky blue?"])
def test_other_questions_go_to_the_model(question):
    assert answer(question, MUSIC) is None


def test_no_scene_no_answer():
    assert answer("Is there a lamp?", None) is None


# -- through the server ----------------------------------------------------------------
async def _ask(stub, question: str, scene: pb.SceneFeatures, max_new_tokens: int = 64):
    from arbridge.v1 import service_pb2 as spb

    from conftest import collect

    _, done, _ = await collect(stub.Ask(spb.AskRequest(
        start=spb.ConverseStart(scene=scene), user_turn=spb.UserTurn(
            text=question, sampling=pb.SamplingParams(max_new_tokens=max_new_tokens,
                                                      temperature=0.8, seed=3)))))
    return done[0]


async def test_the_reply_says_the_computed_answer(make_server, wide_model_dir):
    """A tiny random model, sampling at temperature 0.8: the words are the scene's
    answer all the same, grounded like any reply; a question of no known kind is
    the model's."""
    running = await make_server(wide_model_dir)
    done = await _ask(running.stub, "How many lamps are in here?", MUSIC)
    assert done.text == "There are two lamps."
    assert done.finish_reason == pb.FINISH_REASON_EOS
    assert {g.object_id for g in done.grounding} == {"o3", "o4"}
    done = await _ask(running.stub, "Is there a baby in here?", MUSIC)
    assert done.text == "No, I don't see a baby here."
    free = await _ask(running.stub, "Tell me a joke.", MUSIC, max_new_tokens=8)
    assert free.usage.completion_tokens == 8  # the model's own words, to max_new_tokens


async def test_the_layer_can_be_turned_off(make_server, wide_model_dir):
    running = await make_server(wide_model_dir, scene_questions=False)
    done = await _ask(running.stub, "How many lamps are in here?", MUSIC)
    assert done.text != "There are two lamps."


def test_a_question_s_time_words_change_nothing():
    assert said("Is the toaster plugged in right now?", MUSIC) == "No, the toaster is unplugged."
    assert said("what's on my left at the moment?", MUSIC).startswith("On your left:")
