"""The MiniLM fusion demo's parts, and its whole pipeline on tiny models.

The real run (all-MiniLM-L6-v2 + SmolLM2, minutes) is `make fusion-demo`;
here a tiny BERT stands in for the encoder and a tiny GPT-2 for the LM.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from arbridge.config import Settings
from arbridge.engine.soft_prompts import Projector
from arbridge.models.loader import load_model
from arbridge.tools.fusion_demo import (
    COLORS,
    INSTRUCTION,
    LABELS,
    MATERIALS,
    encoder_text,
    format_report,
    label_hits,
    run_fusion_demo,
    score,
    synth_scenes,
)
from arbridge.tools.sentence_encoder import SentenceEncoder
from arbridge.tools.training import PairBatcher, describe_prompt_ids
from arbridge.v1 import types_pb2 as pb

from tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = tmp_path_factory.mktemp("tiny-bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ","] + LABELS + COLORS + MATERIALS
    (out / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(out / "vocab.txt")).save_pretrained(out)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(out)
    return out


def test_encoder_pools_real_tokens_only_and_normalises(tiny_encoder_dir):
    encoder = SentenceEncoder(tiny_encoder_dir, "tiny")
    short, long = "red chair", "blue glass lamp , green plant , white door"
    together = encoder.encode([short, long])  # `short` is padded in this batch
    alone = encoder.encode([short])
    assert together.shape == (2, 32) and together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(together[0], alone[0], atol=1e-5)
    assert not np.allclose(together[0], together[1])


def test_synthetic_scenes_are_reproducible_and_well_formed():
    a, b = synth_scenes(20, seed=3), synth_scenes(20, seed=3)
    assert [s.SerializeToString() for s in a] == [s.SerializeToString() for s in b]
    assert synth_scenes(20, seed=4)[0] != a[0]
    for scene in a:
        labels = [o.label for o in scene.objects]
        assert 2 <= len(labels) <= 3 and len(set(labels)) == len(labels)
        assert all(o.attributes["color"] in COLORS for o in scene.objects)
    obj = a[0].objects[0]
    words = encoder_text(a[0]).split(", ")[0].split()
    assert words[0] == obj.attributes["color"] and words[-1] == obj.label


def test_label_hits_counts_distinct_labels_by_whole_words():
    scene = pb.SceneFeatures(objects=[pb.SceneObject(id="1", label="cat"),
                                      pb.SceneObject(id="2", label="cat"),
                                      pb.SceneObject(id="3", label="table"),
                                      pb.SceneObject(id="4", label="lamp")])
    assert label_hits("Two cats sit on the table; a cat again.", scene) == 2
    assert label_hits("A category of tables? No: tablecloth.", scene) == 1  # "tables" only
    assert label_hits("", scene) == 0
    result = score(["the lamp and a sofa", "nothing here"], [scene, scene])
    assert result.recall == pytest.approx(1 / 6) and result.any_label == pytest.approx(0.5)
    assert result.precision == pytest.approx(1 / 2)  # lamp is in the scene, sofa is not


def test_the_whole_demo_runs_and_reports_on_tiny_models(tiny_encoder_dir, tmp_path):
    # The on-the-fly tokenizer spends many tokens on a scene: a longer context.
    lm_dir = build_tiny_model(tmp_path / "lm", n_positions=1024)
    settings = Settings(model=str(lm_dir), cache_dir=tmp_path / "cache", max_active=8)
    out = tmp_path / "fusion"
    demo = run_fusion_demo(settings, out, encoder_path=tiny_encoder_dir, encoder_name="tiny",
                           n_train=12, n_heldout=4, epochs=2, k=2, lr=1e-2,
                           max_new_tokens=6, progress=False)
    assert demo.train_scenes == 12 and demo.heldout_scenes == 4
    assert demo.heldout_loss_after < demo.heldout_loss_before
    assert set(demo.scores) == {"text path", "trained", "untrained", "shuffled"}
    scenes = synth_scenes(12 + 4, seed=0)  # the demo's scenes (seed 0 is its default)
    held = scenes[12:]
    report = json.loads((out / "report.json").read_text())
    samples = report["samples"]
    assert [s["scene"] for s in samples] == [encoder_text(s) for s in held]
    # The reported scores are what the held-out captions say, scored against their own
    # scenes. (On a random tiny LM they are near 0: the loss below is what can show
    # the projector learned something.)
    for row, key in (("text path", "text_path"), ("trained", "trained"),
                     ("untrained", "untrained")):
        assert demo.scores[row] == score([s[key] for s in samples], held), row
        assert report["scores"][row] == demo.scores[row].__dict__
    seen = {frozenset(o.label for o in s.objects) for s in scenes[:12]}
    assert demo.unseen_label_sets == sum(frozenset(o.label for o in s.objects) not in seen
                                         for s in held)
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 12 and len(pairs[0]["features"]) == 32
    trained = Projector.load(out / "projector-trained.safetensors")
    untrained = Projector.load(out / "projector-untrained.safetensors")
    assert (trained.spec.encoder, untrained.spec.encoder) == ("tiny", "tiny-untrained")
    assert not torch.equal(trained.net[0].weight, untrained.net[0].weight)
    # The saved trained projector beats the saved untrained one, measured here: the
    # frozen LM's loss on the text-path captions given each projector's prefix, on the
    # training pairs and on the held-out scenes (never trained on).
    lm = load_model(str(lm_dir), cache_dir=tmp_path / "cache", device="cpu", dtype="float32")
    prompt_ids = describe_prompt_ids(lm.tokenizer, lm.info.context_length,
                                     settings.system_prompt, INSTRUCTION)
    batcher = PairBatcher(lm.model, lm.tokenizer, prompt_ids, k=2)
    held_vectors = torch.from_numpy(SentenceEncoder(tiny_encoder_dir, "tiny").encode(
        [encoder_text(s) for s in held]))
    train_vectors = torch.tensor([p["features"] for p in pairs])
    with torch.no_grad():
        loss = {(name, split): batcher.loss(projector(x), texts).item()
                for name, projector in (("trained", trained), ("untrained", untrained))
                for split, x, texts in (
                    ("train", train_vectors, [p["text"] for p in pairs]),
                    ("held-out", held_vectors, [s["text_path"] for s in samples]))}
    # Measured (seeded): train 14.89 vs 14.97, held-out 13.86 vs 13.93.
    for split in ("train", "held-out"):
        assert loss["trained", split] < loss["untrained", split], loss
    assert len(report["samples"]) == 4 and set(report["scores"]["trained"]) == {
        "recall", "any_label", "precision"}
    assert "precision" in format_report(demo, "cmd", "tiny", "tiny")
    assert all(s["trained"] and s["untrained"] for s in report["samples"])
