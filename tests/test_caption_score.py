"""The caption scorer of `arbridge eval`, rule by rule, on hand-written captions."""

from __future__ import annotations

from arbridge.tools.caption_score import has_loop, score_caption, summarize
from arbridge.v1 import types_pb2 as pb


def scene() -> pb.SceneFeatures:
    """Camera at the origin looking +Z: a sofa on the left (near), a lamp ahead (far),
    a coffee table to the right, a dog behind."""
    def obj(i, label, x, z):
        return pb.SceneObject(id=i, label=label, confidence=0.9,
                              pose=pb.Pose(position=pb.Vec3(x=x, z=z)))
    return pb.SceneFeatures(camera_pose=pb.Pose(rotation=pb.Quaternion(w=1.0)), objects=[
        obj("s", "sofa", -1.0, 0.5), obj("l", "lamp", 0.2, 6.0),
        obj("t", "coffee table", 2.0, 2.0), obj("d", "dog", 0.0, -2.0)])


def test_coverage_counts_plurals_synonyms_and_head_nouns():
    s = score_caption("Two couches, lamps and a table; the dog sleeps.", scene())
    assert s.named == 4 and s.coverage == 1.0
    assert score_caption("A lamp.", scene()).coverage == 0.25


def test_hallucination_is_a_lexicon_object_the_scene_lacks():
    assert score_caption("A sofa and a television.", scene()).hallucinated == ["television"]
    assert score_caption("A red sofa near the wall.", scene()).hallucinated == []
    # "coffee table" in the scene: "table" is that object, not a hallucination.
    assert score_caption("The table is low.", scene()).hallucinated == []


def test_spatial_claims_are_checked_against_the_geometry():
    s = score_caption("A sofa is on your left. The lamp is far ahead, and a dog is on your "
                      "right.", scene())
    claims = {(c.object_id, c.claim): c.correct for c in s.claims}
    assert claims == {("s", "left"): True, ("l", "far"): True, ("l", "ahead"): True,
                      ("d", "right"): False}


def test_first_person_and_loops():
    assert score_caption("I'm sitting on the sofa.", scene()).first_person
    assert score_caption("My lamp is on.", scene()).first_person
    assert not score_caption("You have a sofa on your left.", scene()).first_person
    assert has_loop("a window with a window with a window with a".split())
    assert not has_loop("a sofa on your left and a lamp on your right".split())
    assert not has_loop("a dog is behind you, a cat is behind you, a tree is behind you"
                        .replace(",", "").split())
    assert has_loop("a red sofa is on your left and a red sofa is on your left".split())


def test_summary():
    scores = [score_caption("A sofa is on your left.", scene()),
              score_caption("I see a television.", scene())]
    row = summarize(scores).row()
    assert row["captions"] == 2 and row["hallucination_rate"] == 0.5
    assert row["first_person_rate"] == 0.5 and row["claims_correct"] == 1.0
    assert row["coverage"] == 0.125


def test_dialogue_answers_are_checked():
    from arbridge.tools.caption_eval import answer_correct, questions

    s = scene()
    asked = {kind: expected for kind, _, expected in questions(s, 0)}
    assert [o.label for o in asked["left"]] == ["sofa"]
    assert answer_correct("left", "A sofa is on your left.", asked["left"], s)
    assert not answer_correct("left", "The lamp and the sofa.", asked["left"], s)
    lamp = [q for q in questions(s, 1) if q[0] == "distance"][0]
    assert lamp[1] == "How far away is the lamp?" and abs(lamp[2] - 6.0) < 0.01
    assert answer_correct("distance", "About 6 m away.", lamp[2], s)
    assert not answer_correct("distance", "It is 2.5 m away.", lamp[2], s)
    assert answer_correct("exists", "The sofa is on your left.", ("sofa", True), s)
    assert answer_correct("exists", "No, I see no piano.", ("piano", False), s)
    assert not answer_correct("exists", "Yes, a piano.", ("piano", False), s)
