"""End to end on the real default model (SmolLM2-135M-Instruct), via the CLI."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from arbridge.client import ArBridgeClient, load_describe_request, wait_until_serving

from conftest import REPO

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_smollm2() -> tuple[str, subprocess.Popen]:
    """`arbridge serve` with the default model, once it says SERVING."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "arbridge.cli", "serve", "--host",
                             "127.0.0.1", "--port", str(port)], cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    target = f"127.0.0.1:{port}"
    try:
        wait_until_serving(target, timeout_s=900, should_continue=lambda: proc.poll() is None)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return target, proc


@pytest.fixture(scope="module")
def smollm2_server():
    target, proc = start_smollm2()
    try:
        yield target, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def test_greedy_caption_mentions_the_scene(smollm2_server):
    target, _ = smollm2_server
    request = load_describe_request(REPO / "examples" / "scene.json")
    request.sampling.temperature = 0
    request.sampling.max_new_tokens = 40
    arrivals = []
    client = ArBridgeClient(target)
    try:
        stats = client.describe(request, lambda c: arrivals.append(time.perf_counter()))
        info = client.model_info()
    finally:
        client.close()
    text = stats.completions[0].text.lower()
    assert "chair" in text or "table" in text, text
    assert stats.chunks > 5 and arrivals[-1] - arrivals[0] > 0.05  # streamed, not one blob
    grounded = {g.object_id for g in stats.completions[0].grounding}
    assert grounded & {"obj-1", "obj-2"}
    assert info.architecture == "LlamaForCausalLM" and info.context_length == 8192


def test_caption_cli_streams_to_the_terminal(smollm2_server):
    target, _ = smollm2_server
    out = subprocess.run([sys.executable, "-m", "arbridge.cli", "caption",
                          str(REPO / "examples" / "scene.json"), "--server", target,
                          "--max-new-tokens", "12"], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip()
    assert re.search(r"\b\d+ tokens", out.stderr) and "first token after" in out.stderr


def test_sigterm_exits_cleanly():
    # A server of its own: the shared one stays up whatever order the tests run in.
    _, proc = start_smollm2()
    try:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
