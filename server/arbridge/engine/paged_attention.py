"""ArBridge's decode attention over KV pool blocks, compiled for this CPU.

Attention reading a batch's blocks through `index_select` copies every key and
value it reads (measured: 2-3x dense rows per layer at 32 rows). The kernel in
`csrc/paged_attention.cpp` reads them where they lie instead, one query per row,
one task per (row, KV head), as fast as SDPA over dense rows
(`arbridge attention-bench`). It is built on first use with the machine's own
compiler and flags (about 25 s; cached in ~/.cache/arbridge/kernels, keyed by the
source, torch and the CPU's flags). Without a compiler, or on GPUs and for other
dtypes, decode attention gathers the blocks and calls SDPA.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "paged_attention.cpp"
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffast-math"]
_loaded: dict[str, object] = {}


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


def load(cache_dir: Path | None = None):
    """The compiled kernel module, or None (with the reason logged)."""
    if "module" in _loaded:
        return _loaded["module"]
    module = None
    try:
        from torch.utils import cpp_extension

        source = SOURCE.read_bytes()
        digest = hashlib.sha1(source + torch.__version__.encode() + _cpu_flags().encode()
                              + " ".join(_FLAGS).encode()).hexdigest()[:12]
        base = cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) \
            / "arbridge" / "kernels"
        build = base / digest
        build.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        module = cpp_extension.load(f"arbridge_paged_attention_{digest}", [str(SOURCE)],
                                    extra_cflags=_FLAGS, extra_ldflags=["-fopenmp"],
                                    build_directory=str(build), verbose=False)
        log.info("paged decode attention kernel ready (%.1f s)", time.perf_counter() - started)
    except Exception as exc:  # no compiler, no ninja, a build error: the gather path
        log.warning("paged decode attention kernel not built (%s); decode attention "
                    "gathers KV blocks instead", str(exc).splitlines()[0][:200])
    _loaded["module"] = module
    return module
