"""Megatron-Core GPT weights, read tensor by tensor, as one TP=1, PP=1 model sees them.

Two formats, one view. Every name is Megatron-Core's with Transformer-Engine
norm names (`self_attention.linear_qkv.layer_norm_weight`,
`mlp.linear_fc1.layer_norm_weight`), whatever layer implementation trained it:

- `TorchDistSource` (`--ckpt-format torch_dist`): the tensors are stored global
  (the format reshards), layers stacked on a leading axis; read with
  torch.distributed.checkpoint's public reader in this one process, one tensor
  per call, so optimizer moments, `_extra_state` and RNG objects are never read.
- `LegacyCoreSource` (`--ckpt-format torch`): one pickle per (tensor rank,
  pipeline stage), memory-mapped, merged exactly as megatron-core split them:
  `linear_qkv` rows are whole query groups `[q heads | k | v]` per rank (plain
  concatenation); SwiGLU `linear_fc1` is `[gate_r; up_r]` on rank r, so the
  halves are joined separately; `linear_proj`/`linear_fc2` split input columns;
  embeddings and `output_layer` split (padded) vocabulary rows; norms and
  row-parallel biases are replicated. Pipeline stages number their layers from
  0, and virtual-pipeline chunks (`model0`, `model1`, ...) interleave: chunk c of
  stage p is global chunk c * PP + p. With expert parallelism each expert rank's
  file (`mp_rank_TT[_PPP]_EEE`) holds the dense weights again plus its own experts,
  numbered from 0 (global number = rank * experts per rank + local number).

Mixture-of-experts layers (`experts`): torch_dist stores each expert weight stacked
over layers and global experts, `decoder.layers.mlp.experts.experts.linear_fc1.weight`
[layers, experts, ...] (SequentialMLP and TEGroupedMLP save the same keys), or one key
per expert (`...experts.experts.<e>.linear_fc1.weight`, singleton local shards);
legacy files hold `mlp.experts.local_experts.<j>.linear_fc1.weight` (SequentialMLP)
or `mlp.experts.linear_fc1.weight<j>` (TEGroupedMLP).
"""

from __future__ import annotations

import collections
import importlib
import pickle
import re
import warnings
from pathlib import Path

import torch

from arbridge.models.megatron.layout import check_declared_grid
from arbridge.models.megatron.pickles import MegatronFormatError, load_pickle

WORD_EMBEDDINGS = "embedding.word_embeddings.weight"
POSITION_EMBEDDINGS = "embedding.position_embeddings.weight"
FINAL_NORM = ("decoder.final_layernorm.weight", "decoder.final_layernorm.bias")
OUTPUT_LAYER = "output_layer.weight"
GLOBAL_NAMES = (WORD_EMBEDDINGS, POSITION_EMBEDDINGS, *FINAL_NORM, OUTPUT_LAYER)

QKV = "self_attention.linear_qkv"
PROJ = "self_attention.linear_proj"
Q_NORM = "self_attention.q_layernorm.weight"  # qk_layernorm: one RMSNorm over each head
K_NORM = "self_attention.k_layernorm.weight"
FC1 = "mlp.linear_fc1"
FC2 = "mlp.linear_fc2"
ROUTER = "mlp.router.weight"  # [experts, hidden]
SHARED_FC1 = "mlp.shared_experts.linear_fc1"
SHARED_FC2 = "mlp.shared_experts.linear_fc2"
SHARED_GATE = "mlp.shared_experts.gate_weight"  # [1, hidden]
LAYER_SUFFIXES = (
    f"{QKV}.layer_norm_weight", f"{QKV}.layer_norm_bias", f"{QKV}.weight", f"{QKV}.bias",
    f"{PROJ}.weight", f"{PROJ}.bias", Q_NORM, K_NORM,
    f"{FC1}.layer_norm_weight", f"{FC1}.layer_norm_bias", f"{FC1}.weight", f"{FC1}.bias",
    f"{FC2}.weight", f"{FC2}.bias",
    ROUTER, f"{SHARED_FC1}.weight", f"{SHARED_FC2}.weight", SHARED_GATE,
)
# One expert's weights, named as in a dense MLP (`experts(suffix)` takes these).
EXPERT_SUFFIXES = ("linear_fc1.weight", "linear_fc1.bias", "linear_fc2.weight", "linear_fc2.bias")
_STACKED_EXPERTS = re.compile(r"^decoder\.layers\.mlp\.experts\.experts\.(?:(\d+)\.)?"
                              r"(linear_fc[12]\.(?:weight|bias))$")
_LEGACY_EXPERT = re.compile(r"^mlp\.experts\.(?:local_experts\.\d+\.linear_fc[12]\.(?:weight|bias)"
                            r"|linear_fc[12]\.(?:weight|bias)\d+)$")
# The local (non-Transformer-Engine) spec names its norms apart; one name for both.
LOCAL_NORMS = {"input_layernorm.weight": f"{QKV}.layer_norm_weight",
                "input_layernorm.bias": f"{QKV}.layer_norm_bias",
                "pre_mlp_layernorm.weight": f"{FC1}.layer_norm_weight",
                "pre_mlp_layernorm.bias": f"{FC1}.layer_norm_bias"}
_STACKED_PREFIX = "decoder.layers."
_LAYER_KEY = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def skipped(name: str) -> bool:
    """Entries that are not weights: TE/FP8 metadata."""
    return name.endswith("_extra_state") or "._extra_state/" in name


def unsupported_tensor(name: str, where: str) -> MegatronFormatError:
    return MegatronFormatError(
        f"unsupported tensor '{name}' in {where}: ArBridge converts GPT models with dense or "
        "mixture-of-experts MLPs (no MLA, Mamba or multi-token prediction layers)")


class CoreSource:
    """What a converter needs; see the two implementations below."""

    format: str
    args: object
    tensor_parallel: int
    pipeline_parallel: int
    virtual_stages: int
    iteration: object
    num_layers: int
    dtype: torch.dtype

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def tensor(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def has_layer(self, suffix: str) -> bool:
        raise NotImplementedError

    def layers(self, suffix: str) -> list[torch.Tensor]:
        """One global tensor per layer, layer 0 first."""
        raise NotImplementedError

    def has_experts(self, suffix: str) -> bool:
        raise NotImplementedError

    def experts(self, suffix: str, count: int) -> list[list[torch.Tensor]]:
        """Per layer, one global tensor per expert (global expert order); `suffix` is one
        of EXPERT_SUFFIXES and `count` the number of experts the args declare."""
        raise NotImplementedError


# -- torch.distributed.checkpoint folders (torch_dist, fsdp_dtensor) --------------------
class _IndexUnpickler(pickle.Unpickler):
    """`.metadata` is a pickle: torch's reader loads it with no allow-list. This one
    takes only what an index holds: DCP's metadata and plan classes (Megatron's
    torch_dist keeps its save plans there), torch.Size, dtypes, layouts, paths."""

    _DCP = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem",
            "torch.distributed.checkpoint.planner")

    def find_class(self, module: str, name: str):
        import pathlib

        found = None
        if module in self._DCP:
            found = getattr(importlib.import_module(module), name, None)
            found = found if isinstance(found, type) else None
        elif module == "torch":
            found = getattr(torch, name, None)
            if not (found is torch.Size or isinstance(found, torch.dtype | torch.layout
                                                       | torch.memory_format)):
                found = None
        elif (module, name) == ("torch.serialization", "_get_layout"):
            found = torch.serialization._get_layout  # a name -> torch.layout lookup
        elif module == "pathlib" and name in ("Path", "PosixPath", "PurePosixPath",
                                              "WindowsPath", "PureWindowsPath"):
            found = getattr(pathlib, name)
        elif (module, name) == ("collections", "OrderedDict"):
            found = collections.OrderedDict
        if found is None:
            raise pickle.UnpicklingError(f"refusing to unpickle global '{module}.{name}'")
        return found


def _dcp_reader(folder: Path, metadata):
    """torch's FileSystemReader, handed the index read safely (and read once)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class Reader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return Reader(str(folder))


class DcpFolder:
    """A torch.distributed.checkpoint folder read in this one process, no process group:
    its index (`.metadata`, through an allow-list), every data file checked present and
    long enough before anything is read, then one whole (global) tensor per call, or one
    pickled entry through the safe unpickler (DCP's own loader would unpickle both with
    no allow-list)."""

    def __init__(self, folder: Path):
        from torch.distributed.checkpoint.metadata import Metadata

        self.folder = folder
        index = folder / ".metadata"
        try:
            with open(index, "rb") as f:
                self.metadata = _IndexUnpickler(f).load()
        except pickle.UnpicklingError as exc:
            if "refusing" in str(exc):
                raise MegatronFormatError(f"{index}: {exc} (an index holds only "
                                          "torch.distributed.checkpoint's metadata)") from None
            raise MegatronFormatError(f"{index}: not readable torch.distributed.checkpoint "
                                      f"metadata ({type(exc).__name__}: {exc})") from None
        except Exception as exc:  # noqa: BLE001 - any failure here means a broken file
            raise MegatronFormatError(f"{index}: not readable torch.distributed."
                                      f"checkpoint metadata ({type(exc).__name__}: {exc})"
                                      ) from None
        if not isinstance(self.metadata, Metadata):
            raise MegatronFormatError(f"{index}: not torch.distributed.checkpoint metadata "
                                      f"(a {type(self.metadata).__name__})")
        needed: dict[str, int] = {}
        for info in self.metadata.storage_data.values():
            end = info.offset + info.length
            needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
        for name, end in sorted(needed.items()):
            path = folder / name
            if not path.is_file():
                raise MegatronFormatError(f"missing file: {path} (named by "
                                          f"{folder / '.metadata'})")
            size = path.stat().st_size
            if size < end:
                raise MegatronFormatError(f"truncated file: {path} has {size} bytes, the "
                                          f"metadata needs {end}")

    def tensors(self) -> dict:
        """{stored name: its TensorStorageMetadata}."""
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        return {name: meta for name, meta in self.metadata.state_dict_metadata.items()
                if isinstance(meta, TensorStorageMetadata)}

    def read(self, stored: str, meta) -> torch.Tensor:
        import torch.distributed.checkpoint as dcp

        out = torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "no process group: loading without one"
                dcp.load({stored: out}, storage_reader=_dcp_reader(self.folder, self.metadata))
        except Exception as exc:  # noqa: BLE001 - a broken file surfaces as anything
            raise MegatronFormatError(f"{self.folder}: cannot read '{stored}' "
                                      f"({type(exc).__name__}: {str(exc)[:300]})") from None
        return out

    def has_object(self, name: str) -> bool:
        return any(index.fqn == name for index in self.metadata.storage_data)

    def read_object(self, name: str):
        """A pickled (non-tensor) entry, e.g. `args`: its bytes, then `load_pickle`."""
        import io

        for index, info in self.metadata.storage_data.items():
            if index.fqn != name:
                continue
            if getattr(info, "transform_descriptors", None):
                raise MegatronFormatError(f"{self.folder}: '{name}' is stored transformed "
                                          f"({info.transform_descriptors}); not supported")
            with open(self.folder / info.relative_path, "rb") as f:
                f.seek(info.offset)
                data = f.read(info.length)
            return load_pickle(io.BytesIO(data), f"{self.folder} ['{name}']")
        raise MegatronFormatError(f"missing entry: '{name}' in {self.folder / '.metadata'}")


# -- torch_dist ----------------------------------------------------------------------
class TorchDistSource(CoreSource):
    format = "torch_dist"

    def __init__(self, folder: Path):
        self.folder = folder
        for name in (".metadata", "common.pt"):
            if not (folder / name).is_file():
                raise MegatronFormatError(f"missing file: {folder / name} (a torch_dist "
                                          "checkpoint has metadata.json, .metadata, *.distcp "
                                          "and common.pt)")
        self._dcp = DcpFolder(folder)
        common = load_pickle(folder / "common.pt", str(folder / "common.pt"))
        self.args = common.get("args") if isinstance(common, dict) else None
        if self.args is None:
            raise MegatronFormatError(f"{folder / 'common.pt'} holds no 'args': ArBridge reads "
                                      "the architecture from them")
        self.iteration = common.get("iteration", "release")
        self.tensor_parallel = int(getattr(self.args, "tensor_model_parallel_size", 1) or 1)
        self.pipeline_parallel = int(getattr(self.args, "pipeline_model_parallel_size", 1) or 1)
        self.virtual_stages = int(
            getattr(self.args, "virtual_pipeline_model_parallel_size", None) or 1)
        self._tensors = {}
        self._stored: dict[str, str] = {}  # one name for both norm namings -> the file's
        for stored, meta in self._dcp.tensors().items():
            if stored.startswith(("optimizer.", "rng_state")) or skipped(stored):
                continue
            # The Transformer-Engine spec keeps a separate `pre_mlp_layernorm` in
            # front of experts (only the local spec maps it to linear_fc1's name).
            suffix = stored.removeprefix(_STACKED_PREFIX)
            name = (_STACKED_PREFIX + LOCAL_NORMS[suffix]
                    if stored.startswith(_STACKED_PREFIX) and suffix in LOCAL_NORMS else stored)
            if not (name in GLOBAL_NAMES or name.removeprefix(_STACKED_PREFIX)
                    in LAYER_SUFFIXES or _STACKED_EXPERTS.match(name)):
                raise unsupported_tensor(stored, str(folder))
            self._tensors[name] = meta
            self._stored[name] = stored
        qkv = self._tensors.get(_STACKED_PREFIX + f"{QKV}.weight")
        if qkv is None:
            raise MegatronFormatError(f"unknown layout: {folder} has no "
                                      f"'{_STACKED_PREFIX}{QKV}.weight' (not a Megatron-Core GPT "
                                      "checkpoint)")
        self.num_layers = int(qkv.size[0])
        self.dtype = qkv.properties.dtype

    def has(self, name: str) -> bool:
        return name in self._tensors

    def has_layer(self, suffix: str) -> bool:
        return _STACKED_PREFIX + suffix in self._tensors

    def tensor(self, name: str) -> torch.Tensor:
        meta = self._tensors.get(name)
        if meta is None:
            raise MegatronFormatError(f"missing tensor: {name} in {self.folder}")
        return self._dcp.read(self._stored[name], meta)

    def layers(self, suffix: str) -> list[torch.Tensor]:
        stacked = self.tensor(_STACKED_PREFIX + suffix)
        if stacked.shape[0] != self.num_layers:
            raise MegatronFormatError(f"mismatched shapes: {_STACKED_PREFIX}{suffix} stacks "
                                      f"{stacked.shape[0]} layers, not {self.num_layers}")
        return list(stacked.unbind(0))

    def has_experts(self, suffix: str) -> bool:
        return any((m := _STACKED_EXPERTS.match(n)) and m.group(2) == suffix
                   for n in self._tensors)

    def experts(self, suffix: str, count: int) -> list[list[torch.Tensor]]:
        stacked = _STACKED_PREFIX + f"mlp.experts.experts.{suffix}"
        if stacked in self._tensors:
            whole = self.tensor(stacked)  # [layers, experts, ...]
            if tuple(whole.shape[:2]) != (self.num_layers, count):
                raise MegatronFormatError(f"mismatched shapes: {stacked} is {list(whole.shape)}, "
                                          f"the args say {self.num_layers} layers x {count} "
                                          "experts")
            return [list(layer.unbind(0)) for layer in whole.unbind(0)]
        # singleton local shards: one stacked-over-layers tensor per expert
        per_expert = [self.layers(f"mlp.experts.experts.{e}.{suffix}") for e in range(count)]
        return [list(layer) for layer in zip(*per_expert, strict=True)]


# -- legacy torch ----------------------------------------------------------------------
def cat_shards(parts: list[torch.Tensor], dim: int, key: str) -> torch.Tensor:
    """Tensor-parallel shards joined on `dim`; shards of different shapes are named."""
    other = {tuple(p.shape) for p in parts}
    if len(other) != 1:
        raise MegatronFormatError(f"mismatched shapes: {key} differs across tensor ranks "
                                  f"({', '.join(str(list(s)) for s in sorted(other))})")
    return parts[0].clone() if len(parts) == 1 else torch.cat(parts, dim=dim)


class LegacyCoreSource(CoreSource):
    format = "torch"

    def __init__(self, shards: dict[tuple[int, int, int], Path]):
        self._expert_shards = shards
        self._shards = {(t, p): path for (t, p, e), path in shards.items() if e == 0}
        self.tensor_parallel = max(t for t, _, _ in shards) + 1
        self.pipeline_parallel = max(p for _, p, _ in shards) + 1
        self.expert_parallel = max(e for _, _, e in shards) + 1
        self._all_files = {key: load_pickle(path, str(path), mmap=True)
                           for key, path in sorted(shards.items())}
        self._files = {(t, p): f for (t, p, e), f in self._all_files.items() if e == 0}
        first = self._files[(0, 0)]
        self.args = first.get("args")
        if self.args is None:
            raise MegatronFormatError(f"{self._shards[(0, 0)]} holds no 'args': ArBridge reads "
                                      "the architecture from them")
        check_declared_grid(self.args, self._expert_shards)
        shards = self._shards
        self.iteration = first.get("iteration", "release")
        self._swiglu = bool(getattr(self.args, "swiglu", False))
        chunk_names = sorted((k for k in first if re.fullmatch(r"model\d*", k)),
                             key=lambda k: int(k[5:] or 0))
        if not chunk_names:
            raise MegatronFormatError(f"unknown layout: {shards[(0, 0)]} has no 'model'")
        self.virtual_stages = len(chunk_names)
        # (chunk, stage) in global order -> its per-tensor-rank state dicts
        self._chunks: dict[tuple[int, int], list[dict]] = {}
        for c, chunk in enumerate(chunk_names):
            for p in range(self.pipeline_parallel):
                dicts = []
                for t in range(self.tensor_parallel):
                    sd = self._files[(t, p)].get(chunk)
                    if not isinstance(sd, dict):
                        raise MegatronFormatError(f"missing tensor: {shards[(t, p)]} has no "
                                                  f"'{chunk}'")
                    dicts.append(sd)
                self._chunks[(c, p)] = dicts
        self._layer_at: list[tuple[tuple[int, int], int]] = []
        self._globals: dict[str, tuple[int, int]] = {}
        for c in range(self.virtual_stages):
            for p in range(self.pipeline_parallel):
                self._index_chunk((c, p))
        self.num_layers = len(self._layer_at)
        if self.num_layers == 0:
            raise MegatronFormatError(f"unknown layout: no decoder.layers.* in {shards[(0, 0)]} "
                                      "(not a Megatron-Core GPT checkpoint)")
        self.dtype = self.layers_dtype()

    def _where(self, chunk: tuple[int, int], t: int = 0) -> str:
        name = f"model{chunk[0]}" if self.virtual_stages > 1 else "model"
        return f"{self._shards[(t, chunk[1])]} [{name}]"

    def _index_chunk(self, chunk: tuple[int, int]) -> None:
        local: dict[int, set[str]] = {}
        for key in self._chunks[chunk][0]:
            if skipped(key):
                continue
            m = _LAYER_KEY.match(key)
            if m is None:
                if key not in GLOBAL_NAMES:
                    raise unsupported_tensor(key, self._where(chunk))
                self._globals.setdefault(key, chunk)
                if key in (*FINAL_NORM, OUTPUT_LAYER):
                    self._globals[key] = chunk  # the last stage's copy
                continue
            suffix = LOCAL_NORMS.get(m.group(2), m.group(2))
            if suffix not in LAYER_SUFFIXES and not _LEGACY_EXPERT.match(suffix):
                raise unsupported_tensor(key, self._where(chunk))
            local.setdefault(int(m.group(1)), set()).add(key)
        if sorted(local) != list(range(len(local))):
            raise MegatronFormatError(f"missing layers in {self._where(chunk)}: found "
                                      f"{sorted(local)}")
        self._layer_at.extend((chunk, i) for i in range(len(local)))

    def layers_dtype(self) -> torch.dtype:
        return self._layer_parts(0, f"{QKV}.weight")[0].dtype

    def _find(self, sd: dict, layer: int, suffix: str):
        for local_name, canonical in LOCAL_NORMS.items():
            if canonical == suffix and f"decoder.layers.{layer}.{local_name}" in sd:
                return sd[f"decoder.layers.{layer}.{local_name}"]
        return sd.get(f"decoder.layers.{layer}.{suffix}")

    def _layer_parts(self, i: int, suffix: str) -> list[torch.Tensor] | None:
        chunk, local = self._layer_at[i]
        parts = [self._find(sd, local, suffix) for sd in self._chunks[chunk]]
        if all(p is None for p in parts):
            return None
        for t, part in enumerate(parts):
            if part is None:
                raise MegatronFormatError(f"missing tensor: decoder.layers.{local}.{suffix} in "
                                          f"{self._where(chunk, t)}")
        return parts

    def has(self, name: str) -> bool:
        return name in self._globals

    def has_layer(self, suffix: str) -> bool:
        return self._layer_parts(0, suffix) is not None

    def tensor(self, name: str) -> torch.Tensor:
        chunk = self._globals.get(name)
        if chunk is None:
            raise MegatronFormatError(f"missing tensor: {name} in {self._shards[(0, 0)].parent}")
        parts = []
        for t, sd in enumerate(self._chunks[chunk]):
            if name not in sd:
                raise MegatronFormatError(f"missing tensor: {name} in {self._where(chunk, t)}")
            parts.append(sd[name])
        if name in (WORD_EMBEDDINGS, OUTPUT_LAYER):
            return cat_shards(parts, 0, name)
        return parts[0].clone()  # replicated

    def layers(self, suffix: str) -> list[torch.Tensor]:
        out = []
        for i in range(self.num_layers):
            parts = self._layer_parts(i, suffix)
            if parts is None:
                raise MegatronFormatError(f"missing tensor: layer {i} has no {suffix}")
            out.append(self._merge(parts, suffix, i))
        return out

    def has_experts(self, suffix: str) -> bool:
        return self._expert_parts(0, 0, suffix, 0) is not None

    def _expert_parts(self, i: int, expert_rank: int, suffix: str, local: int):
        """Layer i's local expert `local` on `expert_rank`, one part per tensor rank."""
        (c, p), layer = self._layer_at[i]
        chunk = f"model{c}" if self.virtual_stages > 1 else "model"
        parts = []
        for t in range(self.tensor_parallel):
            sd = self._all_files[(t, p, expert_rank)].get(chunk) or {}
            sequential = f"decoder.layers.{layer}.mlp.experts.local_experts.{local}.{suffix}"
            grouped = f"decoder.layers.{layer}.mlp.experts.{suffix}{local}"
            parts.append(sd.get(sequential, sd.get(grouped)))
        if all(part is None for part in parts):
            return None
        if any(part is None for part in parts):
            where = self._expert_shards[(parts.index(None), p, expert_rank)]
            raise MegatronFormatError(f"missing tensor: decoder.layers.{layer}.mlp.experts."
                                      f"local_experts.{local}.{suffix} in {where}")
        return parts

    def experts(self, suffix: str, count: int) -> list[list[torch.Tensor]]:
        if count % self.expert_parallel:
            raise MegatronFormatError(f"mismatched shapes: args.num_experts={count} does not "
                                      f"split over {self.expert_parallel} expert ranks")
        per_rank = count // self.expert_parallel
        # Experts may be split over fewer tensor ranks than the rest (expert tensor
        # parallelism); with 1, every tensor rank holds whole experts.
        expert_tp = int(getattr(self.args, "expert_tensor_parallel_size", None)
                        or self.tensor_parallel)
        if expert_tp != self.tensor_parallel:
            # Megatron-LM writes legacy files from expert-data-parallel rank 0 only, so
            # such a grid is never whole on disk; torch_dist stores it globally.
            raise MegatronFormatError(
                f"unsupported: args.expert_tensor_parallel_size={expert_tp} with "
                f"args.tensor_model_parallel_size={self.tensor_parallel} in the legacy "
                "format (save with --ckpt-format torch_dist)")
        out = []
        for i in range(self.num_layers):
            layer = []
            for e in range(count):
                parts = self._expert_parts(i, e // per_rank, suffix, e % per_rank)
                if parts is None:
                    raise MegatronFormatError(
                        f"missing tensor: layer {i} has no expert {e} {suffix} (expert rank "
                        f"{e // per_rank}, local expert {e % per_rank})")
                layer.append(self._merge(parts, f"mlp.{suffix}", i))
            # one more local expert than declared is a grid the args do not describe
            if self._expert_parts(i, 0, suffix, per_rank) is not None:
                raise MegatronFormatError(f"mismatched shapes: layer {i} holds more than "
                                          f"{per_rank} experts per expert rank "
                                          f"(args.num_experts={count})")
            out.append(layer)
        return out

    def _merge(self, parts: list[torch.Tensor], suffix: str, i: int) -> torch.Tensor:
        key = f"decoder.layers.{i}.{suffix}"
        if "layer_norm" in suffix or suffix in (f"{PROJ}.bias", f"{FC2}.bias",
                                                f"{SHARED_FC2}.bias", Q_NORM, K_NORM, ROUTER,
                                                SHARED_GATE):
            return parts[0].clone()  # replicated
        if suffix in (f"{PROJ}.weight", f"{FC2}.weight", f"{SHARED_FC2}.weight"):
            return cat_shards(parts, 1, key)  # row-parallel: input columns
        if (suffix.startswith(FC1) or suffix.startswith(SHARED_FC1)) and self._swiglu:
            halves = [p.chunk(2, dim=0) for p in parts]  # rank r: [gate_r; up_r]
            return torch.cat([cat_shards([g for g, _ in halves], 0, key),
                              cat_shards([u for _, u in halves], 0, key)], dim=0)
        return cat_shards(parts, 0, key)  # column-parallel: output rows (whole query groups)
