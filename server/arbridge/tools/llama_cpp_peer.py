"""llama.cpp's own `llama-server` as the CPU peer of `arbridge bench` (issue #17).

What a Unity developer on a CPU runs today (LLMUnity is built on llama.cpp). Built
from the llama.cpp sources inside the `llama-cpp-python` sdist on PyPI (cmake, the
machine's native flags), the GGUF files converted from the same safetensors by that
tree's `convert_hf_to_gguf.py` at the precision asked (f32, bf16, q8_0). Everything
lives in the cache (`<cache>/llama.cpp/<version>/`), built once; `make test` never
touches it.

The server runs with parallel slots (continuous batching) and is sent the very
prompt text ArBridge's DescribeScene builds, with `ignore_eos` so every reply is
`new_tokens` long; time to first token is the first streamed token.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from arbridge.models.publish import is_complete, publishing
from arbridge.tools.load_runs import Result, bounded, record

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"


# llama.cpp's CPU instruction sets: `native` (-march=native, this CPU's own), or
# `avx2` (AVX2, FMA and F16C: what the AVX2-only CPUs ArBridge meets would build).
BUILDS = {"native": ["-DGGML_NATIVE=ON"],
          "avx2": ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON",
                   "-DGGML_F16C=ON", "-DGGML_AVX512=OFF", "-DGGML_AVX_VNNI=OFF"]}


def build_for_kernel_arch() -> str:
    """The llama.cpp build matching ArBridge's kernels ($ARBRIDGE_KERNEL_ARCH, see
    native_kernels.py): the AVX2 one when they are built for x86-64-v3, else native."""
    return "avx2" if os.environ.get("ARBRIDGE_KERNEL_ARCH") == "x86-64-v3" else "native"


def _tree(cache_dir: Path, build: str = "native") -> Path:
    version = LLAMA_CPP_PYTHON.split("==")[1]
    return cache_dir / "llama.cpp" / (version if build == "native" else f"{version}-{build}")


def ensure_llama_server(cache_dir: Path, build: str = "native") -> Path:
    """The llama-server binary, built once from the sdist (several minutes on 2 cores)
    for the instruction set `build` names (BUILDS)."""
    root = _tree(cache_dir, build)
    binary = root / "src" / "build" / "bin" / "llama-server"
    if is_complete(root) and binary.exists():
        return binary
    with tempfile.TemporaryDirectory(prefix="arbridge-llama-") as tmp, \
            publishing(root, f"built from {LLAMA_CPP_PYTHON}") as staging:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--no-binary", ":all:", LLAMA_CPP_PYTHON, "-d", tmp], check=True)
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        vendored = next(Path(tmp).glob("llama_cpp_python-*")) / "vendor" / "llama.cpp"
        src = staging / "src"
        vendored.rename(src)
        subprocess.run(["cmake", "-B", "build", "-DLLAMA_CURL=OFF", *BUILDS[build],
                        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                        "-DLLAMA_BUILD_SERVER=ON", "-DCMAKE_BUILD_TYPE=Release"],
                       cwd=src, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", "build", "--target", "llama-server", "-j",
                        str(os.cpu_count() or 2)], cwd=src, check=True,
                       stdout=subprocess.DEVNULL)
    return binary


def ensure_gguf(cache_dir: Path, model_dir: Path, outtype: str) -> Path:
    """`model_dir` converted by llama.cpp's own script at `outtype` (f32, bf16, q8_0)."""
    src = _tree(cache_dir) / "src"
    out = _tree(cache_dir) / "gguf" / f"{model_dir.name}-{outtype}.gguf"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    subprocess.run([sys.executable, str(src / "convert_hf_to_gguf.py"), str(model_dir),
                    "--outtype", outtype, "--outfile", str(partial)], check=True,
                   env={**os.environ, "PYTHONPATH": str(src / "gguf-py")},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial.rename(out)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """llama-server on a loopback port with `slots` parallel sequences."""

    def __init__(self, binary: Path, gguf: Path, slots: int, context: int, threads: int):
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(self.port),
             "-t", str(threads), "-tb", str(threads), "-np", str(slots),
             "-c", str(context * slots), "--cont-batching", "--no-webui"],
            # Its libraries lie beside it; the build's RUNPATH names the staging
            # directory the tree was built in before it was published.
            env={**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(
                filter(None, [str(binary.parent), os.environ.get("LD_LIBRARY_PATH")]))},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def ready(self, timeout_s: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"llama-server exited with {self.proc.returncode}")
                try:
                    if (await client.get(f"http://127.0.0.1:{self.port}/health")).status_code \
                            == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.25)
        raise TimeoutError("llama-server did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def completion_run(port: int, prompts: list[str], new_tokens: int, concurrency: int):
    """Stream /completion for each prompt, `concurrency` at a time: a load_runs.Result."""
    import httpx


    result = Result("llama-server", concurrency, len(prompts), 0, 0.0)

    async def one(prompt: str) -> None:
        body = {"prompt": prompt, "n_predict": new_tokens, "ignore_eos": True,
                "temperature": 0.0, "stream": True, "cache_prompt": True}
        submitted, times, tokens = time.perf_counter(), [], None
        async with httpx.AsyncClient(timeout=600) as client:
            async with client.stream("POST", f"http://127.0.0.1:{port}/completion",
                                     json=body) as reply:
                async for line in reply.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    event = json.loads(line[6:])
                    if event.get("content"):
                        times.append(time.perf_counter())
                    if event.get("stop"):
                        tokens = event.get("tokens_predicted")
        record(result, times, submitted, tokens)

    started = time.perf_counter()
    await bounded(prompts, one, concurrency)
    result.wall_s = time.perf_counter() - started
    return result


async def llama_server_runs(cache_dir: Path, model_dir: Path, outtype: str, prompts_for,
                            new_tokens: int, levels: tuple[int, ...], threads: int) -> list:
    """Rows `llama-server <outtype>` at each level: prompts_for(tag, count) -> texts
    (`-avx2` after the name when built for AVX2, as ArBridge's kernels then are)."""
    build = build_for_kernel_arch()
    binary = ensure_llama_server(cache_dir, build)
    gguf = ensure_gguf(cache_dir, model_dir, outtype)
    server = LlamaServer(binary, gguf, max(levels), 2048, threads)
    try:
        await server.ready()
        await completion_run(server.port, prompts_for("warm-up", 2), new_tokens, 2)
        results = []
        for n in levels:
            result = await completion_run(server.port, prompts_for(str(n), max(n, 4)),
                                          new_tokens, n)
            result.name = f"llama-server-{outtype}" + ("" if build == "native" else "-avx2")
            results.append(result)
        return results
    finally:
        server.stop()
