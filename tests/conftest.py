"""Shared fixtures: tiny models, and real servers on loopback ports."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from arbridge.app import ArBridgeServer
from arbridge.config import Settings, megatron_overrides
from arbridge.models.loader import load_model
from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import service_pb2_grpc
from arbridge.v1 import types_pb2 as pb

from tiny_model import build_tiny_model, slow_down

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_eos_model_dir(tmp_path_factory) -> Path:
    """A tiny model whose every first token is EOS."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-eos"), eos_bias=100.0)


@pytest.fixture(scope="session")
def wide_model_dir(tmp_path_factory) -> Path:
    """The tiny model with room for a scene-action prompt (its BPE spends many tokens)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-wide"), n_positions=1024)


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir, tmp_path_factory):
    return load_model(str(tiny_model_dir), cache_dir=tmp_path_factory.mktemp("cache"))


class RunningServer:
    def __init__(self, server: ArBridgeServer):
        self.server = server
        self.target = f"127.0.0.1:{server.port}"
        self.channel = grpc.aio.insecure_channel(self.target)
        self.stub = service_pb2_grpc.ArBridgeServiceStub(self.channel)

    async def close(self):
        await self.channel.close()
        await self.server.stop(grace=1)


async def start_server(model_dir: Path, cache_dir: Path, step_delay: float = 0.0,
                       **settings) -> RunningServer:
    config = Settings(host="127.0.0.1", port=0, model=str(model_dir), cache_dir=cache_dir,
                      **settings)
    loaded = load_model(str(model_dir), cache_dir=cache_dir, overrides=megatron_overrides(config))
    if step_delay:
        slow_down(loaded.model, step_delay)
    server = ArBridgeServer(config)
    await server.start()
    await server.load(preloaded=loaded)
    return RunningServer(server)


@pytest.fixture(scope="session")
async def tiny_server(tiny_model_dir, tmp_path_factory):
    running = await start_server(tiny_model_dir, tmp_path_factory.mktemp("cache"))
    yield running
    await running.close()


@pytest.fixture
async def make_server(tmp_path):
    """Factory for servers with their own settings; all stopped after the test."""
    started: list[RunningServer] = []

    async def make(model_dir: Path, **kwargs) -> RunningServer:
        running = await start_server(model_dir, tmp_path, **kwargs)
        started.append(running)
        return running

    yield make
    await asyncio.gather(*(s.close() for s in started))


def scrape(running: RunningServer) -> dict[tuple[str, tuple], float]:
    """The server's Prometheus endpoint, fetched over HTTP: {(sample, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{running.server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def gen(prompt: str = "The red chair", **sampling) -> spb.GenerateRequest:
    """A Generate request: the prompt, and SamplingParams fields as keywords."""
    return spb.GenerateRequest(prompt=prompt, sampling=pb.SamplingParams(**sampling))


async def wait_for(predicate, timeout: float = 5.0, what="condition") -> None:
    """Poll predicate() every 20 ms until it is true; AssertionError after `timeout` s.
    `what` names the condition in the error (a callable is called then, for a state)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what() if callable(what) else what}: "
                                 f"not reached within {timeout} s")
        await asyncio.sleep(0.02)


async def wait_idle(engine, timeout: float = 5.0) -> None:
    """Until nothing is running or queued: `engine.load` (a Scheduler's, a backend's)
    is (0, 0). A request that ended leaves at the scheduler's next turn."""
    await wait_for(lambda: engine.load == (0, 0), timeout,
                   lambda: f"load (running, queued) still {engine.load}")


async def collect(call):
    """Read a streaming call: (chunks, completions, (kind, arrival time, response) of
    each event, actions included)."""
    chunks, completions, events = [], [], []
    start = time.perf_counter()
    async for response in call:
        kind = response.WhichOneof("event")
        events.append((kind, time.perf_counter() - start, response))
        if kind == "chunk":
            chunks.append(response.chunk)
        elif kind == "completion":
            completions.append(response.completion)
    return chunks, completions, events


def start_server_process(model_dir: Path, tmp_path: Path, step_delay: float, grace: float,
                         *extra: str, env: dict | None = None, open_files: int | None = None):
    """`tests/drain_server.py` as a real process (signal handlers included), once it says
    SERVING: (process, port, log path). Settings beyond these come from ARBRIDGE_* in env;
    `open_files` sets its open-file limit (soft and hard, as `ulimit -n` would)."""
    log = tmp_path / "server.log"
    # Its own cache, but this machine's compiled kernels (each takes ~25 s to build).
    from arbridge.engine.native_kernels import kernel_cache

    env = dict(env or os.environ, PYTHONPATH=str(TESTS), XDG_CACHE_HOME=str(tmp_path),
               ARBRIDGE_KERNEL_CACHE=str(kernel_cache()))

    def limit_files() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    proc = subprocess.Popen([sys.executable, str(TESTS / "drain_server.py"), str(model_dir),
                             str(step_delay), str(grace), *extra], stderr=log.open("w"), env=env,
                            preexec_fn=limit_files if open_files else None)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text()
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
        if port and "SERVING" in text.split("listening", 1)[1].replace("NOT_SERVING", ""):
            return proc, int(port.group(1)), log
        assert proc.poll() is None, text
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(log.read_text())
