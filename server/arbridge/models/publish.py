"""Converted and fetched models land in the cache whole or not at all.

Every writer (GGUF and Megatron conversion, the default model, the demo's
encoder) writes into a staging folder that `publishing` marks complete and
renames into place; every reader checks `is_complete`. A crash at any point
leaves nothing that looks finished.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

_DONE_MARKER = ".arbridge-complete"


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
