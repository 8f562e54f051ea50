"""`arbridge train-projector`: teach a projector to speak to a frozen LM.

Data: pairs of (feature vector, target text), from JSONL (one object per line:
{"features": [...], "text": "..."}) or NPZ (arrays `features` [N, D] and
`texts` [N]). The language model stays frozen; the loss is the NLL of the
target text given [soft prefix] + the same DescribeScene prompt the server
builds for a scene that has only image features. So what the projector learns
is exactly what serving will feed it.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from arbridge.engine.soft_prompts import Projector, ProjectorSpec
from arbridge.serving.prompts import PromptBuilder
from arbridge.v1 import types_pb2 as pb


@dataclass
class TrainResult:
    projector: Projector
    heldout_loss_before: float
    heldout_loss_after: float
    train_pairs: int
    heldout_pairs: int


def load_pairs(path: str | Path) -> tuple[np.ndarray, list[str]]:
    path = Path(path)
    if path.suffix == ".npz":
        data = np.load(path, allow_pickle=False)
        return data["features"].astype(np.float32), [str(t) for t in data["texts"]]
    features, texts = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "features" not in row or "text" not in row:
            raise ValueError(f"{path}:{n}: each line needs 'features' and 'text'")
        features.append(row["features"])
        texts.append(row["text"])
    if not features:
        raise ValueError(f"{path}: no pairs")
    return np.asarray(features, dtype=np.float32), texts


class PairBatcher:
    """Builds [prefix] + prompt + target (+ EOS) batches with labels on the target only."""

    def __init__(self, model, tokenizer, prompt_ids: list[int], k: int):
        self.model = model
        self.embed = model.get_input_embeddings()
        self.tokenizer = tokenizer
        self.prompt_ids = prompt_ids
        self.k = k
        self.eos = tokenizer.eos_token_id

    def batch(self, prefix: torch.Tensor, texts: list[str]):
        targets = [self.tokenizer(t, add_special_tokens=False).input_ids +
                   ([self.eos] if self.eos is not None else []) for t in texts]
        width = len(self.prompt_ids) + max(len(t) for t in targets)
        ids = torch.zeros(len(texts), width, dtype=torch.long)
        labels = torch.full((len(texts), self.k + width), -100, dtype=torch.long)
        mask = torch.zeros(len(texts), self.k + width, dtype=torch.long)
        for i, target in enumerate(targets):
            row = self.prompt_ids + target
            ids[i, :len(row)] = torch.tensor(row)
            start = self.k + len(self.prompt_ids)
            labels[i, start:start + len(target)] = torch.tensor(target)
            mask[i, :self.k + len(row)] = 1
        embeds = torch.cat([prefix.to(self.embed.weight.dtype), self.embed(ids)], dim=1)
        return embeds, mask, labels

    def loss(self, prefix: torch.Tensor, texts: list[str]) -> torch.Tensor:
        embeds, mask, labels = self.batch(prefix, texts)
        return self.model(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss


def describe_prompt_ids(tokenizer, context_length: int, system_prompt: str,
                        instruction: str = "") -> list[int]:
    """The server's DescribeScene prompt for a scene with image features only."""
    builder = PromptBuilder(tokenizer, context_length, system_prompt)
    return builder.describe(pb.SceneFeatures(), instruction, 0).ids


def train_projector(model, tokenizer, features: np.ndarray, texts: list[str], *, encoder: str,
                    prompt_ids: list[int], k: int = 4, kind: str = "mlp", epochs: int = 3,
                    lr: float = 1e-3, batch_size: int = 8, heldout_fraction: float = 0.1,
                    seed: int = 0, model_name: str = "", progress: bool = True) -> TrainResult:
    torch.manual_seed(seed)
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_held = max(1, int(len(order) * heldout_fraction)) if len(order) > 1 else 0
    held, train = order[:n_held], order[n_held:] or order
    hidden = model.get_input_embeddings().weight.shape[1]
    projector = Projector(ProjectorSpec(encoder=encoder, input_dim=features.shape[1], k=k,
                                        hidden_size=hidden, kind=kind, model=model_name))
    for p in model.parameters():  # the language model stays frozen
        p.requires_grad_(False)
    model.eval()
    batcher = PairBatcher(model, tokenizer, prompt_ids, k)
    x = torch.from_numpy(features)

    def heldout_loss() -> float:
        if not held:
            return math.nan
        with torch.no_grad():
            total = 0.0
            for i in range(0, len(held), batch_size):
                idx = held[i:i + batch_size]
                total += batcher.loss(projector(x[idx]), [texts[j] for j in idx]).item() * \
                    len(idx)
            return total / len(held)

    before = heldout_loss()
    optimizer = torch.optim.AdamW(projector.parameters(), lr=lr)
    steps = epochs * math.ceil(len(train) / batch_size)
    bar = tqdm(total=steps, desc="training projector", disable=not progress)
    for epoch in range(epochs):
        random.Random(seed + epoch).shuffle(train)
        for i in range(0, len(train), batch_size):
            idx = train[i:i + batch_size]
            loss = batcher.loss(projector(x[idx]), [texts[j] for j in idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch + 1)
        if progress and held:
            bar.write(f"epoch {epoch + 1}: held-out loss {heldout_loss():.4f}")
    bar.close()
    projector.eval()
    return TrainResult(projector, before, heldout_loss(), len(train), len(held))
