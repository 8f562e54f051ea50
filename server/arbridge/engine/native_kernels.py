"""ArBridge's C++ kernels, compiled for this machine's CPU on first use.

`csrc/cpu_kernels.cpp` and the kernels it includes (`csrc/*.h`: the few-row matmul,
RMSNorm, paged decode attention, the decoder-layer loop) are built as one module
with the machine's own compiler and flags (`-march=native`: the vector instructions
this CPU has, whichever they are), about 35 s on 2 cores, and cached in
~/.cache/arbridge/kernels (or $ARBRIDGE_KERNEL_CACHE) keyed by the sources,
torch's version and the CPU's flags, so a different CPU gets its own build.
Without a compiler (or on a build error) `load` returns None and each caller
keeps torch's own path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CSRC = Path(__file__).parent / "csrc"
# -ffast-math lets the compiler vectorize the kernels' sums; divisions stay IEEE (the
# int8-activation scales must round as torch's do).
_FLAGS = ["-O3", "-fopenmp", "-ffast-math", "-fno-reciprocal-math"]
MODULE = "cpu_kernels"
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


def _arch_flag() -> str:
    """-march=native, or the instruction set $ARBRIDGE_KERNEL_ARCH names (x86-64-v3:
    AVX2 and FMA only), to run and time the kernels another CPU family would build
    (`make bench` does, beside llama.cpp built for AVX2)."""
    return f"-march={os.environ.get('ARBRIDGE_KERNEL_ARCH') or 'native'}"


def _source_bytes(source: Path) -> bytes:
    """The source and the local sources it #includes (a kernel built from others, as
    cpu_kernels.cpp is), so a change to any of them makes a new build."""
    text = source.read_bytes()
    included = re.findall(rb'^#include "([^"]+)"', text, flags=re.M)
    return text + b"".join(_source_bytes(source.parent / name.decode()) for name in included)


def load(what: str, cache_dir: Path | None = None):
    """The compiled module, or None (the reason logged, with what happens instead:
    `what`)."""
    name = MODULE
    if name in _loaded:
        return _loaded[name]
    module = None
    try:
        from torch.utils import cpp_extension

        source = CSRC / f"{name}.cpp"
        flags = [*_FLAGS, _arch_flag()]
        digest = hashlib.sha1(_source_bytes(source) + torch.__version__.encode()
                              + _cpu_flags().encode() + " ".join(flags).encode()
                              ).hexdigest()[:12]
        base = cache_dir or kernel_cache()
        build = base / digest
        build.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        module = cpp_extension.load(f"arbridge_{name}_{digest}", [str(source)],
                                    extra_cflags=flags, extra_ldflags=["-fopenmp"],
                                    build_directory=str(build), verbose=False)
        log.info("%s ready (%.1f s)", name, time.perf_counter() - started)
    except Exception as exc:  # no compiler, no ninja, a build error: torch's path
        log.warning("%s not built (%s); %s", name, str(exc).splitlines()[0][:200], what)
    _loaded[name] = module
    return module
