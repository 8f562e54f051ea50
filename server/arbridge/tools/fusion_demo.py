"""`arbridge fusion-demo`: does a trained projector make captions see the scene?

A reproducible end-to-end run of the feature-vector path, on this machine:

1. Synthetic scenes: 2-3 objects each, labels and attributes drawn from a
   fixed vocabulary with a seeded generator.
2. The "scene feature" an on-device encoder would send: all-MiniLM-L6-v2's
   embedding of the scene's labels and attributes (see sentence_encoder.py).
3. Targets: each scene's caption from the *text* path, i.e. DescribeScene
   with the objects listed, served by a real in-process ArBridge server.
4. A projector trained on (vector, caption) pairs of the training scenes with
   the language model frozen (the same code as `arbridge train-projector`).
5. Held-out scenes are captioned from the vector *alone* (no objects in the
   request) through one server holding two projectors for two encoder names:
   the trained one and the same projector before training (its initial
   weights). Both serve the same prompts, in the same batches, greedily.
   A control feeds the trained projector another scene's vector, to show
   how much of its score is the vector's content rather than label priors.

The score is how many of a scene's labels its caption mentions, matched with
the same whole-word rule the server's grounding uses.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from arbridge.v1 import service_pb2, service_pb2_grpc
from arbridge.v1 import types_pb2 as pb

LABELS = ["chair", "table", "lamp", "sofa", "bed", "plant", "television", "laptop",
          "bookshelf", "window", "door", "cup", "bottle", "clock", "mirror", "guitar",
          "bicycle", "painting", "refrigerator", "dog", "cat", "backpack", "umbrella", "vase"]
COLORS = ["red", "blue", "green", "white", "black", "yellow", "brown", "grey"]
MATERIALS = ["wood", "metal", "glass", "plastic", "leather", "ceramic"]
INSTRUCTION = "In one short sentence, name the objects you see."


@dataclass
class Score:
    recall: float  # share of the scenes' labels that their captions mention
    any_label: float  # share of captions that mention at least one of their labels
    precision: float  # of the vocabulary labels captions mention, share in the scene


@dataclass
class DemoResult:
    # Rows: "text path", "trained", "untrained", and the control "shuffled":
    # the trained projector fed *another* held-out scene's vector, so what it
    # still gets right comes from label frequencies, not from the vector.
    scores: dict[str, Score]
    heldout_loss_before: float
    heldout_loss_after: float
    train_scenes: int
    heldout_scenes: int
    unseen_label_sets: int  # held-out scenes whose set of labels no training scene has
    seconds: dict[str, float]
    samples: list[dict]


def synth_scenes(n: int, seed: int) -> list[pb.SceneFeatures]:
    rng = random.Random(seed)
    scenes = []
    for s in range(n):
        scene = pb.SceneFeatures()
        for j, label in enumerate(rng.sample(LABELS, rng.choice([2, 3]))):
            obj = scene.objects.add(id=f"s{s}-o{j}", label=label, confidence=0.9)
            obj.attributes["color"] = rng.choice(COLORS)
            if rng.random() < 0.5:
                obj.attributes["material"] = rng.choice(MATERIALS)
            p = obj.pose.position
            p.x, p.y, p.z = rng.uniform(-3, 3), rng.uniform(0, 1.5), rng.uniform(0.5, 5)
        scenes.append(scene)
    return scenes


def encoder_text(scene: pb.SceneFeatures) -> str:
    """What the stand-in encoder sees: "red wood chair, blue lamp"."""
    parts = []
    for obj in scene.objects:
        words = [obj.attributes[k] for k in ("color", "material") if k in obj.attributes]
        parts.append(" ".join(words + [obj.label]))
    return ", ".join(parts)


def label_hits(text: str, scene: pb.SceneFeatures) -> int:
    """Distinct labels of the scene the text mentions (server grounding rule)."""
    from arbridge.serving.grounding import ground

    ids = {span.object_id for span in ground(text, scene.objects)}
    return len({obj.label for obj in scene.objects if obj.id in ids})


_VOCABULARY = pb.SceneFeatures(objects=[pb.SceneObject(id=label, label=label)
                                          for label in LABELS])


def score(texts: list[str], scenes: list[pb.SceneFeatures]) -> Score:
    """Recall and precision of label mentions, by the server's grounding rule."""
    hits = [label_hits(t, s) for t, s in zip(texts, scenes, strict=True)]
    total = sum(len({o.label for o in s.objects}) for s in scenes)
    mentioned = sum(label_hits(t, _VOCABULARY) for t in texts)
    return Score(recall=sum(hits) / max(total, 1),
                 any_label=sum(h > 0 for h in hits) / max(len(hits), 1),
                 precision=sum(hits) / mentioned if mentioned else 0.0)


def _label_set(scene: pb.SceneFeatures) -> frozenset[str]:
    return frozenset(o.label for o in scene.objects)


async def _caption_all(target: str, scenes: list[pb.SceneFeatures], max_new_tokens: int,
                       concurrency: int) -> list[str]:
    import grpc

    limit = asyncio.Semaphore(concurrency)
    sampling = pb.SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = service_pb2_grpc.ArBridgeServiceStub(channel)

        async def one(scene):
            async with limit:
                request = service_pb2.DescribeSceneRequest(scene=scene, instruction=INSTRUCTION,
                                                           sampling=sampling)
                text = ""
                async for response in stub.DescribeScene(request):
                    if response.WhichOneof("event") == "completion":
                        text = response.completion.text
                return text.strip()

        return list(await asyncio.gather(*(one(s) for s in scenes)))


async def _serve_and_caption(settings, scenes, max_new_tokens: int) -> list[str]:
    from arbridge.app import ArBridgeServer

    server = ArBridgeServer(settings.model_copy(update={"host": "127.0.0.1", "port": 0}))
    await server.start()
    try:
        await server.load()
        return await _caption_all(f"127.0.0.1:{server.port}", scenes, max_new_tokens,
                                  concurrency=settings.max_active)
    finally:
        await server.stop(grace=1)


def _vector_only(scene_vectors: np.ndarray, encoder: str) -> list[pb.SceneFeatures]:
    return [pb.SceneFeatures(image_features=[pb.FeatureVector(encoder=encoder, dims=len(v),
                                                                values=v.tolist())])
            for v in scene_vectors]


def run_fusion_demo(settings, out_dir: Path, *, encoder_path: Path, encoder_name: str,
                    n_train: int = 400, n_heldout: int = 60, epochs: int = 4, k: int = 8,
                    lr: float = 1e-3, max_new_tokens: int = 32, seed: int = 0,
                    progress: bool = True) -> DemoResult:
    from arbridge.engine.soft_prompts import Projector, ProjectorSpec
    from arbridge.models.loader import load_model
    from arbridge.tools.sentence_encoder import SentenceEncoder
    from arbridge.tools.training import describe_prompt_ids, train_projector

    out_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 1)
        clock = now

    scenes = synth_scenes(n_train + n_heldout, seed)
    held_scenes = scenes[n_train:]
    vectors = SentenceEncoder(encoder_path, encoder_name).encode([encoder_text(s)
                                                                  for s in scenes])
    lap("encode scenes")

    captions = asyncio.run(_serve_and_caption(settings, scenes, max_new_tokens))
    lap("text-path captions")
    with (out_dir / "pairs.jsonl").open("w") as f:  # the train-projector input format
        for v, text in zip(vectors[:n_train], captions[:n_train], strict=True):
            f.write(json.dumps({"features": v.tolist(), "text": text}) + "\n")

    lm = load_model(settings.model, cache_dir=settings.cache_dir, device="cpu",
                    dtype="float32")
    prompt_ids = describe_prompt_ids(lm.tokenizer, lm.info.context_length,
                                     settings.system_prompt, INSTRUCTION)
    result = train_projector(lm.model, lm.tokenizer, vectors[:n_train], captions[:n_train],
                             encoder=encoder_name, prompt_ids=prompt_ids, k=k, epochs=epochs,
                             lr=lr, seed=seed, model_name=lm.info.name, progress=progress)
    trained_path = out_dir / "projector-trained.safetensors"
    result.projector.save(trained_path)
    # The baseline: the very weights training started from (same seed, same init).
    torch.manual_seed(seed)
    spec = result.projector.spec
    untrained_name = encoder_name + "-untrained"
    untrained = Projector(ProjectorSpec(**{**spec.__dict__, "encoder": untrained_name}))
    untrained_path = out_dir / "projector-untrained.safetensors"
    untrained.save(untrained_path)
    del lm
    lap("train projector")

    both = settings.model_copy(update={"projectors": [trained_path, untrained_path]})
    held_vectors = vectors[n_train:]
    shuffled = np.roll(held_vectors, 1, axis=0)
    # Interleaved per scene (trained, untrained, control), so the three kinds
    # of request share the same batches.
    requests = []
    for i in range(n_heldout):
        requests += (_vector_only(held_vectors[i:i + 1], encoder_name) +
                     _vector_only(held_vectors[i:i + 1], untrained_name) +
                     _vector_only(shuffled[i:i + 1], encoder_name))
    generated = asyncio.run(_serve_and_caption(both, requests, max_new_tokens))
    from_trained, from_untrained, from_shuffled = generated[0::3], generated[1::3], \
        generated[2::3]
    lap("vector-only captions")

    scores = {"text path": score(captions[n_train:], held_scenes),
              "trained": score(from_trained, held_scenes),
              "untrained": score(from_untrained, held_scenes),
              "shuffled": score(from_shuffled, held_scenes)}
    seen = {_label_set(s) for s in scenes[:n_train]}
    samples = [{"scene": encoder_text(s), "text_path": c, "trained": t, "untrained": u}
               for s, c, t, u in zip(held_scenes, captions[n_train:], from_trained,
                                     from_untrained, strict=True)]
    demo = DemoResult(
        scores=scores, heldout_loss_before=result.heldout_loss_before,
        heldout_loss_after=result.heldout_loss_after, train_scenes=n_train,
        heldout_scenes=n_heldout,
        unseen_label_sets=sum(_label_set(s) not in seen for s in held_scenes),
        seconds=seconds, samples=samples)
    report = {**demo.__dict__, "scores": {k: v.__dict__ for k, v in scores.items()}}
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    return demo


def format_report(demo: DemoResult, command: str, model: str, encoder: str) -> str:
    lines = [
        f"$ {command}",
        f"model {model} (float32, frozen, greedy); encoder {encoder}; "
        f"{demo.train_scenes} training scenes, {demo.heldout_scenes} held-out scenes",
        f"projector held-out loss (training split): {demo.heldout_loss_before:.3f} -> "
        f"{demo.heldout_loss_after:.3f}; {demo.unseen_label_sets} of the held-out scenes "
        "have a set of labels no training scene has",
        "",
        "held-out scenes                              recall  any label  precision",
    ]
    names = {"text path": "text path (objects listed in prompt)",
             "trained": "vector only, trained projector",
             "untrained": "vector only, untrained projector",
             "shuffled": "control: trained, another scene's vector"}
    for key, name in names.items():
        row = demo.scores[key]
        lines.append(f"  {name:<41}{row.recall:6.1%}   {row.any_label:6.1%}     "
                     f"{row.precision:6.1%}")
    lines += [
        "",
        "recall: share of a scene's labels its caption mentions; precision: of the "
        f"{len(LABELS)} vocabulary labels a caption mentions, share that are in the scene",
        "",
        "time: " + ", ".join(f"{k} {v:.0f} s" for k, v in demo.seconds.items()),
        "",
        "examples (held-out):",
    ]
    for s in demo.samples[:4]:
        lines += [f"  scene:     {s['scene']}", f"  trained:   {s['trained']!r}",
                  f"  untrained: {s['untrained']!r}"]
    return "\n".join(lines)
