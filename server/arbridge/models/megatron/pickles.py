"""Unpickling Megatron checkpoints without running code from them.

Megatron-LM pickles more than tensors beside the weights: its argparse
namespace (holding `signal.Signals`, `torch.dtype` and Megatron's enums), and
RNG states (numpy's `get_state()` tuple, i.e. an ndarray). `torch.load(
weights_only=True)` refuses every global it does not know; we allow exactly
those inert ones, each mapped to a stand-in class of our own, so not even
numpy's or Megatron's constructors run. Anything else is refused by name.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import types
import zipfile

import torch


class MegatronFormatError(ValueError):
    """The checkpoint cannot be read or served; the message names the problem."""


class _Inert:
    """Stand-in for a pickled object we only need to skip past (an enum member, a
    signal, a numpy array or dtype): takes any arguments and any state, does nothing."""

    def __init__(self, *args, **kwargs):
        self.value = args[0] if args else None

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.value!r}>"


class MegatronEnum(_Inert):
    """An enum member from Megatron's `args` (AttnBackend.auto, ModelType...)."""


class StoredPath(str):
    """A pathlib path pickled in `args` (e.g. a tokenizer path), kept as its string."""

    def __new__(cls, *parts):
        return str.__new__(cls, os.path.join(*map(str, parts)) if parts else "")


# Enums Megatron-LM and Megatron-Core versions store in `args`.
_ENUM_MODULES = ("megatron.model.enums", "megatron.legacy.model.enums", "megatron.core.enums",
                 "megatron.core.transformer.enums", "megatron.core.model_parallel_config")
_ENUM_NAMES = ("LayerType", "AttnType", "AttnMaskType", "PositionEmbeddingType", "ModelType",
               "AttnBackend", "CudaGraphScope", "CudaGraphModule", "InferenceCudaGraphScope",
               "Fp8Recipe", "Fp4Recipe")
# Inert globals beside them: the exit signal in args, numpy's RNG state, Transformer
# Engine's `_extra_state` buffers, the rerun state machine and optimizer config that
# Megatron-Core itself registers as safe (megatron/core/safe_globals.py).
_INERT = ("signal.Signals", "numpy.ndarray", "numpy.dtype", "numpy.dtypes.UInt32DType",
          "numpy.dtypes.Int64DType", "numpy.dtypes.Float64DType",
          "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
          "io.BytesIO", "megatron.core.optimizer.OptimizerConfig",
          "megatron.core.optimizer.optimizer_config.OptimizerConfig",
          *[f"megatron.core.rerun_state_machine.{n}"
            for n in ("RerunDiagnostic", "RerunMode", "RerunState")])

SAFE_GLOBALS = [argparse.Namespace, types.SimpleNamespace,
                *[(MegatronEnum, f"{m}.{n}") for m in _ENUM_MODULES for n in _ENUM_NAMES],
                *[(_Inert, name) for name in _INERT],
                *[(StoredPath, f"pathlib.{n}") for n in ("PosixPath", "Path", "PurePosixPath")]]


def load_pickle(source, where: str, *, mmap: bool = False) -> dict:
    """torch.load with the allow-list; refuses anything else by name. With `mmap`,
    tensors stay on disk until touched (optimizer state is never read)."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            try:
                return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as exc:  # pre-1.6 files are not zip archives: no mmap
                if not (mmap and "mmap" in str(exc)):
                    raise
                return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch words it "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y".
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:
            reason = re.search(r"WeightsUnpickler error: \s*(.+)", str(exc))
            raise MegatronFormatError(f"{where}: refusing to unpickle it: "
                                      f"{reason.group(1) if reason else 'unsupported pickle'}"
                                      ) from None
        raise MegatronFormatError(
            f"{where}: refusing to unpickle global '{found.group(1)}': only argparse.Namespace, "
            "Megatron's enums, signal.Signals, paths and numpy RNG state may appear in a "
            "checkpoint (no code runs from checkpoints)") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise MegatronFormatError(f"{where}: not a readable torch checkpoint ({exc})") from None
