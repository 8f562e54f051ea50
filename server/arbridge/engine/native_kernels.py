"""ArBridge's C++ kernels, compiled for this machine's CPU on first use.

Each source in `csrc/` is built with the machine's own compiler and flags
(`-march=native`: the vector instructions this CPU has, whichever they are),
about 25 s each, and cached in ~/.cache/arbridge/kernels (or
$ARBRIDGE_KERNEL_CACHE) keyed by the source,
torch's version and the CPU's flags, so a different CPU gets its own build.
Without a compiler (or on a build error) `load` returns None and the caller
keeps torch's own path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CSRC = Path(__file__).parent / "csrc"
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


def kernel_cache() -> Path:
    """Where builds are kept: $ARBRIDGE_KERNEL_CACHE, else the user's cache folder."""
    if os.environ.get("ARBRIDGE_KERNEL_CACHE"):
        return Path(os.environ["ARBRIDGE_KERNEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "arbridge" \
        / "kernels"


def load(name: str, what: str, cache_dir: Path | None = None):
    """The compiled module of csrc/<name>.cpp, or None (the reason logged as what
    happens instead: `what`)."""
    if name in _loaded:
        return _loaded[name]
    module = None
    try:
        from torch.utils import cpp_extension

        source = CSRC / f"{name}.cpp"
        digest = hashlib.sha1(source.read_bytes() + torch.__version__.encode()
                              + _cpu_flags().encode() + " ".join(_FLAGS).encode()
                              ).hexdigest()[:12]
        base = cache_dir or kernel_cache()
        build = base / digest
        build.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        module = cpp_extension.load(f"arbridge_{name}_{digest}", [str(source)],
                                    extra_cflags=_FLAGS, extra_ldflags=["-fopenmp"],
                                    build_directory=str(build), verbose=False)
        log.info("%s kernel ready (%.1f s)", name, time.perf_counter() - started)
    except Exception as exc:  # no compiler, no ninja, a build error: torch's path
        log.warning("%s kernel not built (%s); %s", name, str(exc).splitlines()[0][:200], what)
    _loaded[name] = module
    return module


def prebuild(names: list[str], cache_dir: Path | None = None) -> None:
    """Build the sources `names` side by side, before their first use: each build is
    one compiler process of about 22 s, so on a fresh machine three built one after
    another kept the server from SERVING for over a minute. Failures are logged
    here; the callers' `load` then returns None."""
    todo = [name for name in names if name not in _loaded]
    if len(todo) < 2:
        return
    with ThreadPoolExecutor(len(todo)) as builders:
        list(builders.map(lambda name: load(name, "torch's ops run instead", cache_dir),
                          todo))
