"""The browser playground and its gRPC-Web client, in a real browser.

Debian's chromium, headless, driven by playwright-core from npm
(tests/browser/playground.test.mjs), against `arbridge serve` with the default
model, a required token and CORS allowed for one other origin. Screenshots go to
build/playground/ (a CI artifact). Also: the generated client code and the
committed bundle are what `make web` makes from the current sources.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest
from test_e2e_smollm2 import free_port

from arbridge.client import wait_until_serving

from conftest import REPO

PLAYGROUND = REPO / "server" / "arbridge" / "playground"
TOKEN = "playground-test-token"


def _static_server(directory) -> http.server.ThreadingHTTPServer:
    """The playground's files from another origin (another port), as a web app would."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.e2e
def test_the_playground_in_chromium(tmp_path):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    allowed_site, refused_site = _static_server(PLAYGROUND), _static_server(PLAYGROUND)
    allowed = f"http://127.0.0.1:{allowed_site.server_address[1]}"
    port, web, metrics = free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ARBRIDGE_AUTH_TOKENS": TOKEN,
           "ARBRIDGE_GRPC_WEB_CORS_ORIGINS": f'["{allowed}"]'}
    proc = subprocess.Popen([sys.executable, "-m", "arbridge.cli", "serve", "--host",
                             "127.0.0.1", "--port", str(port), "--grpc-web-port", str(web),
                             "--metrics-port", str(metrics), "--public-health"],
                            cwd=REPO, env=env)  # open health: wait_until_serving has no token
    shots = REPO / "build" / "playground"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        wait_until_serving(f"127.0.0.1:{port}", timeout_s=900,
                           should_continue=lambda: proc.poll() is None)
        gateway = f"http://127.0.0.1:{web}"
        refused = f"http://127.0.0.1:{refused_site.server_address[1]}"
        run = subprocess.run(
            ["node", "--test", "--test-timeout=120000", "--test-reporter=spec",
             "tests/browser/playground.test.mjs"],
            cwd=REPO, capture_output=True, text=True, timeout=600, env={
                **os.environ, "CHROMIUM": chromium, "ARBRIDGE_PAGE": f"{gateway}/",
                "ARBRIDGE_METRICS": f"http://127.0.0.1:{metrics}/metrics",
                "ARBRIDGE_TOKEN": TOKEN,
                "ARBRIDGE_ALLOWED": f"{allowed}/index.html?server={gateway}",
                "ARBRIDGE_REFUSED": f"{refused}/index.html?server={gateway}",
                "ARBRIDGE_SCENE": str(REPO / "examples" / "scene.json"),
                "ARBRIDGE_SHOTS": str(shots)})
        print(run.stdout[-6000:], run.stderr[-3000:])
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
        assert (shots / "playground.png").stat().st_size > 10_000
    finally:
        for site in (allowed_site, refused_site):
            site.shutdown()
            site.server_close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_generated_client_and_bundle_are_current(tmp_path):
    """`make web`'s outputs, made again into tmp_path, equal the committed ones."""
    subprocess.run(["make", "-s", "web", f"WEB_OUT={tmp_path}"], cwd=REPO, check=True)
    made = [p for p in sorted(tmp_path.rglob("*")) if p.is_file()]
    assert tmp_path / "server" / "arbridge" / "playground" / "playground.js" in made
    assert any(p.name == "service_pb.js" for p in made)
    for path in made:
        committed = REPO / path.relative_to(tmp_path)
        assert committed.read_bytes() == path.read_bytes(), f"{committed} is stale: run make web"
