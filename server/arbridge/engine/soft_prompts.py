"""Projectors: a dense feature vector -> k soft-prompt embeddings for the LM.

The standard way to condition a frozen causal LM on another encoder's output
(LLaVA-style): a small linear or 2-layer MLP maps the encoder's vector to k
vectors in the LM's input-embedding space, which are prepended to the text
prompt through `inputs_embeds`. One projector per encoder name (an on-device
image encoder, a speaker/emotion audio encoder, ...).

Saved as safetensors; the metadata says what it fits: encoder name, input
size, k, hidden size and the model it was trained for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT = "arbridge-projector/1"


class ProjectorError(ValueError):
    """A projector file that cannot be used with this model."""


@dataclass(frozen=True)
class ProjectorSpec:
    encoder: str
    input_dim: int
    k: int
    hidden_size: int
    kind: str = "mlp"  # "linear" or "mlp"
    model: str = ""  # the model it was trained for (informative)

    def metadata(self) -> dict[str, str]:
        return {"format": FORMAT, "spec": json.dumps(self.__dict__)}


class Projector(nn.Module):
    def __init__(self, spec: ProjectorSpec):
        super().__init__()
        self.spec = spec
        out = spec.k * spec.hidden_size
        if spec.kind == "linear":
            self.net = nn.Linear(spec.input_dim, out)
        elif spec.kind == "mlp":
            self.net = nn.Sequential(nn.Linear(spec.input_dim, spec.hidden_size), nn.GELU(),
                                     nn.Linear(spec.hidden_size, out))
        else:
            raise ProjectorError(f"unknown projector kind {spec.kind!r} (linear or mlp)")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, input_dim] -> [B, k, hidden_size]."""
        return self.net(features).view(features.shape[0], self.spec.k, self.spec.hidden_size)

    def save(self, path: str | Path) -> None:
        state = {name: t.detach().contiguous().cpu() for name, t in self.state_dict().items()}
        save_file(state, str(path), metadata=self.spec.metadata())

    @classmethod
    def load(cls, path: str | Path) -> Projector:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as exc:  # not a safetensors file at all
            raise ProjectorError(f"{path}: not a projector file ({exc})") from exc
        if meta.get("format") != FORMAT:
            raise ProjectorError(f"{path}: not an ArBridge projector (format "
                                 f"{meta.get('format')!r})")
        projector = cls(ProjectorSpec(**json.loads(meta["spec"])))
        projector.load_state_dict(load_file(str(path)))
        return projector.eval()


class ProjectorSet:
    """The loaded projectors of a server, by encoder name."""

    def __init__(self, projectors: list[Projector], hidden_size: int, device, dtype):
        self._by_encoder: dict[str, Projector] = {}
        for p in projectors:
            if p.spec.hidden_size != hidden_size:
                raise ProjectorError(
                    f"projector for '{p.spec.encoder}' makes {p.spec.hidden_size}-wide "
                    f"embeddings; this model needs {hidden_size} (trained for "
                    f"{p.spec.model or 'another model'})")
            if p.spec.encoder in self._by_encoder:
                raise ProjectorError(f"two projectors for encoder '{p.spec.encoder}'")
            self._by_encoder[p.spec.encoder] = p.to(device=device, dtype=dtype)

    @classmethod
    def load(cls, paths: list[str | Path], model) -> ProjectorSet:
        first = next(model.parameters())
        hidden = model.get_input_embeddings().weight.shape[1]
        return cls([Projector.load(p) for p in paths], hidden, first.device, first.dtype)

    def input_dims(self) -> dict[str, int]:
        """Encoder name -> expected vector length (for request validation)."""
        return {name: p.spec.input_dim for name, p in self._by_encoder.items()}

    def __contains__(self, encoder: str) -> bool:
        return encoder in self._by_encoder

    def embed(self, features: list[tuple[str, list[float]]]) -> torch.Tensor:
        """[(encoder, vector), ...] -> the prefix [sum of k, hidden], in that order."""
        parts = []
        for encoder, values in features:
            p = self._by_encoder[encoder]
            x = torch.tensor([values], dtype=next(p.parameters()).dtype,
                             device=next(p.parameters()).device)
            parts.append(p(x)[0])
        return torch.cat(parts, dim=0)

    def prefix_length(self, features: list[tuple[str, list[float]]]) -> int:
        return sum(self._by_encoder[encoder].spec.k for encoder, _ in features)
