"""Resolve `--model` into a loaded causal LM and its tokenizer.

Accepted: a Hugging Face model directory (config.json), a GGUF file, a
Megatron-LM GPT checkpoint (directory or NVIDIA's zip), or nothing (the default
model). GGUF and Megatron sources are converted once into a safetensors
directory in the cache, keyed by the source files, so later starts take about a
second. Weights are only ever read from local disk: hub downloads are off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from arbridge.models import megatron
from arbridge.models.default_model import ensure_default_model
from arbridge.models.gguf import convert_gguf
from arbridge.models.publish import is_complete

# Never reach for a model hub: a missing file must be an error, not a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model path cannot be served; the message says why."""


@dataclass
class ModelInfo:
    name: str
    architecture: str
    source_format: str
    parameter_count: int
    context_length: int
    num_layers: int
    hidden_size: int
    vocab_size: int
    dtype: str
    device: str
    has_chat_template: bool
    features: list[str] = field(default_factory=list)


@dataclass
class LoadedModel:
    model: object  # transformers PreTrainedModel
    tokenizer: object  # transformers PreTrainedTokenizerFast
    info: ModelInfo
    quantize: str | None = None  # "int8": the engine runs int8 weight-only matmuls


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {requested}: CUDA is not available on this machine")
    return requested


def pick_dtype(requested: str, device: str):
    import torch

    if requested == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if requested == "int8":  # loaded in float32, quantized by the engine
        return torch.float32
    return getattr(torch, requested)


def _gguf_cache_dir(cache_dir: Path, gguf: Path) -> Path:
    stat = gguf.stat()
    key = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    return cache_dir / "converted" / f"{gguf.stem}-{hashlib.sha256(key).hexdigest()[:12]}"


def resolve_model_dir(model: str | None, cache_dir: Path, tokenizer: str | None = None,
                      overrides: megatron.Overrides | None = None) -> tuple[Path, str]:
    """Return (HF directory to load, source format)."""
    if model is None:
        return ensure_default_model(cache_dir), "gguf"
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelLoadError(f"--model {model}: no such file or directory")
    if megatron.is_megatron_checkpoint(path):
        target = cache_dir / "converted" / f"megatron-{path.name}-{megatron.fingerprint(path)}"
        if not is_complete(target):
            try:
                megatron.convert(path, target, Path(tokenizer) if tokenizer else None, overrides)
            except megatron.MegatronFormatError as exc:
                raise ModelLoadError(f"--model {model}: {exc}") from exc
        return target, "megatron"
    if path.is_file() and path.suffix == ".gguf":
        target = _gguf_cache_dir(cache_dir, path)
        if not is_complete(target):
            convert_gguf(path, target)
        return target, "gguf"
    if path.is_dir() and (path / "config.json").exists():
        return path, "hf"
    if path.is_dir() and any(path.glob("*.gguf")):
        ggufs = sorted(path.glob("*.gguf"))
        return resolve_model_dir(str(ggufs[0]), cache_dir)
    raise ModelLoadError(
        f"--model {model}: not a Hugging Face model directory (no config.json) "
        "nor a .gguf file")


def load_model(model: str | None, *, cache_dir: Path, device: str = "auto",
               dtype: str = "auto", tokenizer: str | None = None,
               overrides: megatron.Overrides | None = None) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from arbridge.engine.fused_decoder import FusedDecoder
    from arbridge.engine.matmul_layouts import int8_supported

    started = time.perf_counter()
    model_dir, source_format = resolve_model_dir(model, cache_dir, tokenizer, overrides)
    if source_format == "megatron":
        tokenizer = None  # the converted directory carries it
    quantize = "int8" if dtype == "int8" else None
    device = pick_device("cpu" if quantize and device == "auto" else device)
    torch_dtype = pick_dtype(dtype, device)
    if quantize and (reason := int8_supported(device)):
        raise ModelLoadError(f"--dtype int8: {reason}")
    log.info("loading %s (%s) as %s on %s", model_dir, source_format,
             dtype if quantize else str(torch_dtype).removeprefix("torch."), device)
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer or model_dir)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"no usable tokenizer in {tokenizer or model_dir}: {exc}") from exc
    if not getattr(tok, "is_fast", False):
        raise ModelLoadError("ArBridge needs a fast (tokenizers-backed) tokenizer")
    try:
        lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load a causal LM from {model_dir}: {exc}") from exc
    if quantize and (reason := FusedDecoder.unsupported_reason(lm)):
        raise ModelLoadError(f"--dtype int8 runs in ArBridge's fused decoder, which "
                             f"cannot run this model: {reason}")
    lm.to(device)
    lm.eval()
    lm.requires_grad_(False)

    cfg = lm.config
    context = (getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
               or 2048)
    info = ModelInfo(
        name=Path(model).name if model else model_dir.name,
        architecture=(cfg.architectures or [type(lm).__name__])[0],
        source_format=source_format,
        parameter_count=sum(p.numel() for p in lm.parameters()),
        context_length=int(context),
        num_layers=int(getattr(cfg, "num_hidden_layers", 0) or getattr(cfg, "n_layer", 0)),
        hidden_size=int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0)),
        vocab_size=int(cfg.vocab_size),
        dtype=quantize or str(torch_dtype).removeprefix("torch."),
        device=device,
        has_chat_template=bool(getattr(tok, "chat_template", None)),
    )
    info.features = ["generate", "describe_scene", "converse"]
    if info.has_chat_template:
        info.features.append("chat_template")
    log.info("model ready: %s, %.1fM parameters, context %d, in %.1f s", info.architecture,
             info.parameter_count / 1e6, info.context_length, time.perf_counter() - started)
    return LoadedModel(model=lm, tokenizer=tok, info=info, quantize=quantize)
