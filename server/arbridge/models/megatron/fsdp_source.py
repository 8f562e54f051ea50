"""Megatron-FSDP checkpoints (`--ckpt-format fsdp_dtensor`), as one TP=1 model sees them.

Megatron-LM 0.16.1 saves them with plain `torch.distributed.checkpoint.save`
(`megatron/training/checkpointing.py`, `megatron/core/transformer/
fsdp_dtensor_checkpoint.py`): an iteration folder holding `.metadata` and
`*.distcp` files only, no `metadata.json` and no `common.pt`. Model tensors are
DTensors saved at their global shape, so this one process reads them whole:

- names are the module's own under `model.module.` (the Float16Module wrapper
  adds no prefix), one per layer (`decoder.layers.<i>.`), not stacked; norms
  local (`input_layernorm`, `pre_mlp_layernorm`) or Transformer-Engine-fused
  (`linear_qkv.layer_norm_weight`); `_extra_state` is dropped;
- a gated (SwiGLU) `linear_fc1.weight` is stored as its two halves,
  `weight_w` (the gate) and `weight_v` (the up projection), for dense MLPs,
  shared experts and experts alike (`bias_w` / `bias_v` too);
- experts: `mlp.experts.local_experts.<e>.linear_fc1...` (SequentialMLP) or
  `mlp.experts.linear_fc1.weight<e>` (TEGroupedMLP), `<e>` the global number;
- `args`, `iteration` and `checkpoint_version` are pickled entries beside the
  tensors (read with the allow-listed unpickler); optimizer moments
  (`optimizer.state...`) and RNG state are never read.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from arbridge.models.megatron.core_sources import (
    GLOBAL_NAMES,
    LAYER_SUFFIXES,
    LOCAL_NORMS,
    QKV,
    CoreSource,
    DcpFolder,
    skipped,
    unsupported_tensor,
)
from arbridge.models.megatron.pickles import MegatronFormatError

PREFIXES = ("model.module.", "model.")
_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_HALF = re.compile(r"^(.+\.(?:weight|bias)\d*)_([wv])$")  # TEGroupedMLP: weight<e>_w
_EXPERT = re.compile(r"^mlp\.experts\.(?:local_experts\.(\d+)\.(linear_fc[12]\.(?:weight|bias))"
                     r"|(linear_fc[12])\.(weight|bias)(\d+))$")


class FsdpDtensorSource(CoreSource):
    format = "fsdp_dtensor"

    def __init__(self, folder: Path):
        self.folder = folder
        self._dcp = DcpFolder(folder)
        if not self._dcp.has_object("args"):
            raise MegatronFormatError(
                f"{folder}: a torch.distributed.checkpoint folder without 'args' (not a "
                "Megatron-LM checkpoint: torch_dist has metadata.json and common.pt, "
                "fsdp_dtensor an 'args' entry)")
        self.args = self._dcp.read_object("args")
        self.iteration = (self._dcp.read_object("iteration")
                          if self._dcp.has_object("iteration") else "release")
        self.tensor_parallel = int(getattr(self.args, "tensor_model_parallel_size", 1) or 1)
        self.pipeline_parallel = int(getattr(self.args, "pipeline_model_parallel_size", 1) or 1)
        self.virtual_stages = 1
        tensors = self._dcp.tensors()
        prefix = next((p for p in PREFIXES
                       if any(n.startswith(p + "decoder.layers.") for n in tensors)), None)
        if prefix is None:
            raise MegatronFormatError(f"unknown layout: {folder} has no "
                                      "'model.module.decoder.layers.*' (not a Megatron-Core GPT "
                                      "checkpoint)")
        # (logical name) -> {half ('' whole, 'w', 'v'): (stored name, metadata)}
        self._globals: dict[str, dict] = {}
        self._layers: dict[tuple[int, str], dict] = {}
        self._experts: dict[tuple[int, int, str], dict] = {}
        for stored, meta in tensors.items():
            if not stored.startswith(prefix) or skipped(stored):
                continue  # optimizer moments, RNG state
            self._index(stored, stored[len(prefix):], meta)
        layers = sorted({i for i, _ in self._layers})
        if layers != list(range(len(layers))) or not layers:
            raise MegatronFormatError(f"missing layers in {folder}: found {layers}")
        self.num_layers = len(layers)
        if (0, f"{QKV}.weight") not in self._layers:
            raise MegatronFormatError(f"unknown layout: {folder} has no "
                                      f"decoder.layers.0.{QKV}.weight")
        self.dtype = self._layers[(0, f"{QKV}.weight")][""][1].properties.dtype

    def _index(self, stored: str, name: str, meta) -> None:
        if name in GLOBAL_NAMES:
            self._globals[name] = {"": (stored, meta)}
            return
        m = _LAYER.match(name)
        if m is None:
            raise unsupported_tensor(stored, str(self.folder))
        layer, suffix = int(m.group(1)), m.group(2)
        half = ""
        if (h := _HALF.match(suffix)) is not None:
            suffix, half = h.group(1), h.group(2)
        suffix = LOCAL_NORMS.get(suffix, suffix)
        if (e := _EXPERT.match(suffix)) is not None:
            expert = int(e.group(1) if e.group(1) is not None else e.group(5))
            kind = e.group(2) or f"{e.group(3)}.{e.group(4)}"
            self._experts.setdefault((layer, expert, kind), {})[half] = (stored, meta)
        elif suffix in LAYER_SUFFIXES:
            self._layers.setdefault((layer, suffix), {})[half] = (stored, meta)
        else:
            raise unsupported_tensor(stored, str(self.folder))

    def _join(self, parts: dict, what: str) -> torch.Tensor:
        """A whole tensor, or a gated fc1's halves joined back as [gate; up]."""
        if "" in parts and len(parts) == 1:
            return self._dcp.read(*parts[""])
        if set(parts) == {"w", "v"}:
            return torch.cat([self._dcp.read(*parts["w"]), self._dcp.read(*parts["v"])])
        raise MegatronFormatError(f"missing tensor: {what} has halves {sorted(parts)} in "
                                  f"{self.folder} (a gated linear_fc1 needs _w and _v)")

    def has(self, name: str) -> bool:
        return name in self._globals

    def tensor(self, name: str) -> torch.Tensor:
        if name not in self._globals:
            raise MegatronFormatError(f"missing tensor: model.module.{name} in {self.folder}")
        return self._join(self._globals[name], name)

    def has_layer(self, suffix: str) -> bool:
        return (0, suffix) in self._layers

    def layers(self, suffix: str) -> list[torch.Tensor]:
        out = []
        for i in range(self.num_layers):
            parts = self._layers.get((i, suffix))
            if parts is None:
                raise MegatronFormatError(f"missing tensor: layer {i} has no {suffix} in "
                                          f"{self.folder}")
            out.append(self._join(parts, f"decoder.layers.{i}.{suffix}"))
        return out

    def has_experts(self, suffix: str) -> bool:
        return any(kind == suffix for _, _, kind in self._experts)

    def experts(self, suffix: str, count: int) -> list[list[torch.Tensor]]:
        out = []
        for i in range(self.num_layers):
            found = sorted(e for layer, e, kind in self._experts if layer == i and kind == suffix)
            if found != list(range(count)):
                raise MegatronFormatError(
                    f"mismatched shapes: layer {i} holds experts {found} of {suffix}, "
                    f"args.num_experts={count}")
            out.append([self._join(self._experts[(i, e, suffix)],
                                   f"decoder.layers.{i}.mlp.experts.{e}.{suffix}")
                        for e in range(count)])
        return out
