"""A GGUF file -> a float32 safetensors Hugging Face folder, converted once."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from arbridge.models.publish import publishing

log = logging.getLogger(__name__)


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF file into a float32 safetensors HF directory.

    transformers refuses save_pretrained on a GGUF-loaded model, so we build a
    fresh model from the GGUF's config, copy the state dict in and save that.
    Published whole or not at all (see `publishing`).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    log.info("converting %s (dequantizing, about 20 s for 135M parameters)", gguf_path.name)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()

    with publishing(out_dir, f"converted from {name}") as staging:
        fresh.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    log.info("converted in %.1f s -> %s", time.perf_counter() - started, out_dir)
    return out_dir
