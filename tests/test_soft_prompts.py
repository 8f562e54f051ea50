"""Dense features through projectors: files, statuses, batched decoding, training,
and grounding spans."""

from __future__ import annotations

import asyncio
import math

import grpc
import numpy as np
import pytest
import torch

from arbridge.engine.async_engine import AsyncEngine
from arbridge.engine.scheduler import Scheduler
from arbridge.engine.soft_prompts import Projector, ProjectorError, ProjectorSet, ProjectorSpec
from arbridge.generation import SamplingConfig
from arbridge.models.loader import load_model
from arbridge.serving.grounding import ground
from arbridge.tools.training import describe_prompt_ids, load_pairs, train_projector
from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import types_pb2 as pb

from conftest import collect
from tiny_model import build_tiny_model

HIDDEN = 64  # the tiny GPT-2's n_embd


def projector(encoder="clip", dim=8, k=3, seed=1, kind="mlp") -> Projector:
    torch.manual_seed(seed)
    p = Projector(ProjectorSpec(encoder=encoder, input_dim=dim, k=k, hidden_size=HIDDEN,
                                kind=kind, model="tiny-gpt2")).eval()
    with torch.no_grad():  # large enough to steer the tiny model
        for param in p.parameters():
            param.mul_(20)
    return p


@pytest.fixture(scope="module")
def projector_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("projectors")
    projector("clip", 8, 3).save(d / "clip.safetensors")
    projector("voice", 4, 2, seed=2, kind="linear").save(d / "voice.safetensors")
    return [d / "clip.safetensors", d / "voice.safetensors"]


def test_projector_file_round_trip_and_metadata(projector_files, tmp_path):
    p = Projector.load(projector_files[0])
    assert p.spec == ProjectorSpec("clip", 8, 3, HIDDEN, "mlp", "tiny-gpt2")
    out = p(torch.randn(5, 8))
    assert out.shape == (5, 3, HIDDEN)
    torch.testing.assert_close(Projector.load(projector_files[0])(torch.ones(1, 8)),
                               projector("clip", 8, 3)(torch.ones(1, 8)))
    (tmp_path / "junk.safetensors").write_bytes(b"not a projector")
    with pytest.raises(ProjectorError, match="not a projector"):
        Projector.load(tmp_path / "junk.safetensors")
    with pytest.raises(ProjectorError, match="64"):
        ProjectorSet([Projector(ProjectorSpec("clip", 8, 2, 32))], HIDDEN, "cpu",
                     torch.float32)
    with pytest.raises(ProjectorError, match="two projectors"):
        ProjectorSet([projector(), projector()], HIDDEN, "cpu", torch.float32)


async def test_mixed_batch_equals_each_alone_and_hf_generate(tiny_model_dir, tmp_path):
    """Embedding-prefixed and text-only requests decode in one batch; greedy output
    equals each request alone and transformers' generate(inputs_embeds=...)."""
    lm = load_model(str(tiny_model_dir), cache_dir=tmp_path)
    projectors = ProjectorSet([projector("clip", 8, 3)], HIDDEN, "cpu", torch.float32)
    tok = lm.tokenizer
    rng = np.random.default_rng(0)
    requests = []
    for i, text in enumerate(["The red chair", "A lamp is far", "door", "The glass table"]):
        features = [("clip", rng.normal(size=8).tolist())] if i % 2 == 0 else []
        prefix = projectors.prefix_length(features)
        requests.append(([tok.pad_token_id] * prefix + tok(text).input_ids, features, prefix))
    cfg = SamplingConfig(max_new_tokens=12)

    async def run(engine, ids, features, prefix):
        tokens = []
        async for out in engine.submit(ids, cfg, features=features, prefix_len=prefix):
            tokens += [t for _, t, _ in out.tokens]
        return tokens

    scheduler = Scheduler(lm.model, tok, context_length=lm.info.context_length,
                          prefill_chunk_tokens=16, projectors=projectors)
    scheduler.start()
    try:
        engine = AsyncEngine(scheduler)
        alone = [await run(engine, *r) for r in requests]
        together = await asyncio.gather(*(run(engine, *r) for r in requests))
    finally:
        scheduler.stop()
    assert together == alone
    for (ids, features, prefix), got in zip(requests, alone, strict=True):
        with torch.no_grad():
            embeds = lm.model.get_input_embeddings()(torch.tensor([ids[prefix:]]))
            if features:
                embeds = torch.cat([projectors.embed(features)[None], embeds], dim=1)
            want = lm.model.generate(inputs_embeds=embeds, max_new_tokens=12, do_sample=False,
                                     attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                                     pad_token_id=tok.pad_token_id)
        assert got == want[0, -12:].tolist()  # generate returns only new tokens here


def test_features_change_the_output(tiny_model_dir, tmp_path):
    """The prefix really conditions the model: two vectors, two next-token distributions."""
    lm = load_model(str(tiny_model_dir), cache_dir=tmp_path)
    projectors = ProjectorSet([projector("clip", 8, 3)], HIDDEN, "cpu", torch.float32)
    text = lm.model.get_input_embeddings()(torch.tensor([lm.tokenizer("The red chair").input_ids]))
    logits = []
    with torch.no_grad():
        for vector in ([1.0] * 8, [-1.0] * 8):
            embeds = torch.cat([projectors.embed([("clip", vector)])[None], text], 1)
            logits.append(lm.model(inputs_embeds=embeds).logits[0, -1])
    assert (logits[0] - logits[1]).abs().max() > 0.1


async def test_statuses_for_feature_vectors(make_server, tiny_model_dir, projector_files):
    s = await make_server(tiny_model_dir, projectors=projector_files)
    info = await s.stub.GetModelInfo(spb.GetModelInfoRequest())
    assert {"projector:clip=8", "projector:voice=4"} <= set(info.features)

    def scene(encoder="clip", values=(0.5,) * 8, dims=None):
        return spb.DescribeSceneRequest(
            scene=pb.SceneFeatures(image_features=[pb.FeatureVector(
                encoder=encoder, dims=len(values) if dims is None else dims,
                values=list(values))]),
            sampling=pb.SamplingParams(max_new_tokens=6))

    chunks, done, _ = await collect(s.stub.DescribeScene(scene()))  # vector alone is enough
    assert done[0].usage.completion_tokens == 6
    assert done[0].usage.prompt_tokens > 3  # the prefix counts as prompt
    for request, code, start in (
            (scene("dino"), grpc.StatusCode.FAILED_PRECONDITION,
             "scene.image_features[0].encoder: no projector is loaded for encoder 'dino'"),
            (scene(values=(0.5,) * 5), grpc.StatusCode.INVALID_ARGUMENT,
             "scene.image_features[0].dims: the projector for 'clip' takes 8 values, got 5"),
            (scene(values=(0.5,) * 8, dims=7), grpc.StatusCode.INVALID_ARGUMENT,
             "scene.image_features[0].dims: is 7"),
            (scene(values=(0.5,) * 7 + (math.nan,)), grpc.StatusCode.INVALID_ARGUMENT,
             "scene.image_features[0].values[7]: must be finite")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(s.stub.DescribeScene(request))
        assert err.value.code() == code
        assert err.value.details().startswith(start), err.value.details()

    # Converse: scene image features and the turn's audio embedding both condition it.
    async def converse(embedding):
        turn = spb.UserTurn(text="What is here?",
                            audio=pb.AudioFeatures(transcript="What is here?",
                                                   embedding=embedding))
        reqs = [spb.ConverseRequest(start=spb.ConverseStart(
                    scene=scene().scene, sampling=pb.SamplingParams(max_new_tokens=6))),
                spb.ConverseRequest(user_turn=turn)]
        return await collect(s.stub.Converse(iter(reqs)))

    _, done, _ = await converse(pb.FeatureVector(encoder="voice", dims=4, values=[1] * 4))
    assert done[0].usage.completion_tokens == 6
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await converse(pb.FeatureVector(encoder="speaker-id", dims=2, values=[1, 2]))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "request[1].user_turn.audio.embedding.encoder" in err.value.details()


def test_serving_prompt_for_training_is_the_describe_prompt(tiny_model_dir, tmp_path):
    """What the projector is trained behind is what DescribeScene builds for a scene
    holding only image features."""
    from arbridge.serving.prompts import PromptBuilder

    lm = load_model(str(tiny_model_dir), cache_dir=tmp_path)
    builder = PromptBuilder(lm.tokenizer, lm.info.context_length, "Sys.")
    scene = pb.SceneFeatures(image_features=[pb.FeatureVector(encoder="clip", dims=1,
                                                              values=[1.0])])
    assert describe_prompt_ids(lm.tokenizer, lm.info.context_length, "Sys.") == \
        builder.describe(scene, "", 8).ids


def test_training_lowers_held_out_loss(tmp_path):
    # EOS reachable (unlike the default tiny model), so every target is learnable.
    lm = load_model(str(build_tiny_model(tmp_path / "m", eos_bias=0.0)), cache_dir=tmp_path)
    with torch.no_grad():  # random init leaves logits nearly flat: give the head range
        lm.model.lm_head.weight.mul_(5)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)).astype(np.float32)
    captions = ["a red chair", "the lamp is on", "two cups", "a door ahead"]
    labels = rng.integers(0, 4, size=96)
    features = centres[labels] + 0.05 * rng.normal(size=(96, 8)).astype(np.float32)
    texts = [captions[i] for i in labels]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(f'{{"features": {f.tolist()}, "text": "{t}"}}'
                              for f, t in zip(features, texts, strict=True)))
    features, texts = load_pairs(path)
    # A short prompt: a frozen *random* 2-layer model averages a long one's attention
    # so evenly that no prefix can move it much (the real model is in the demo).
    prompt = lm.tokenizer("Scene:").input_ids
    result = train_projector(lm.model, lm.tokenizer, features, texts, encoder="clip",
                             prompt_ids=prompt, k=4, epochs=6, lr=1e-2, batch_size=8,
                             heldout_fraction=0.25, progress=False)
    assert result.heldout_pairs == 24 and result.train_pairs == 72
    # Measured: 6.53 -> 6.18 (seeded, deterministic); an untrained prefix stays put.
    assert result.heldout_loss_after < result.heldout_loss_before - 0.2, result
    out = tmp_path / "p.safetensors"
    result.projector.save(out)
    assert Projector.load(out).spec.k == 4


def test_grounding_spans_repeated_and_multi_word_labels():
    objects = [pb.SceneObject(id="t1", label="dining table"),
               pb.SceneObject(id="c1", label="chair"), pb.SceneObject(id="c2", label="chair"),
               pb.SceneObject(id="l1", label="lamp")]
    text = "A chair, a Dining  Table and two chairs. 🪑 The lamp!"
    spans = ground(text, objects)
    got = [(s.object_id, s.start, s.end) for s in spans]
    utf16 = text.encode("utf-16-le")

    def cut(s):
        return utf16[2 * s.start:2 * s.end].decode("utf-16-le")

    assert [cut(s) for s in spans if s.object_id == "t1"] == ["Dining  Table"]
    assert [cut(s) for s in spans if s.object_id == "c1"] == ["chair", "chairs"]
    assert [(a, b) for o, a, b in got if o == "c2"] == \
        [(a, b) for o, a, b in got if o == "c1"]  # same label: both objects
    lamp = [s for s in spans if s.object_id == "l1"]
    assert len(lamp) == 1 and cut(lamp[0]) == "lamp"
    assert lamp[0].start == text.index("lamp") + 1  # the emoji is two UTF-16 units
