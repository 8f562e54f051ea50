"""SIGTERM drain on a real process: in-flight stream completes, new calls refused, exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import service_pb2_grpc
from arbridge.v1 import types_pb2 as pb

from conftest import start_server_process

TESTS = Path(__file__).resolve().parent


def start(model_dir: Path, tmp_path: Path, grace: float, *extra: str):
    return start_server_process(model_dir, tmp_path, 0.05, grace, *extra)


def wait_not_serving(channel) -> None:
    """Until health says NOT_SERVING: the signal is handled on the server's loop."""
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 10
    while True:
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        if status != health_pb2.HealthCheckResponse.SERVING or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_sigterm_drains_in_flight_stream_refuses_new_calls_exits_0(tiny_model_dir, tmp_path):
    proc, port, log = start(tiny_model_dir, tmp_path, grace=20)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = service_pb2_grpc.ArBridgeServiceStub(channel)
        request = spb.GenerateRequest(prompt="The red chair",
                                      sampling=pb.SamplingParams(max_new_tokens=60))
        first_chunk = threading.Event()
        result = {}

        def read():
            chunks, completions = [], []
            for response in stub.Generate(request, timeout=60):
                if response.WhichOneof("event") == "chunk":
                    chunks.append(response.chunk.text)
                    first_chunk.set()
                else:
                    completions.append(response.completion)
            result.update(chunks=chunks, completions=completions)

        reader = threading.Thread(target=read)
        reader.start()
        assert first_chunk.wait(30)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        wait_not_serving(channel)
        assert not result, "the stream finished before the drain was seen: nothing was drained"
        try:
            list(stub.Generate(request, timeout=5))
            raise AssertionError("a new call was accepted during the drain")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE, err
        reader.join(60)
        done = result["completions"]
        assert done[0].finish_reason == pb.FINISH_REASON_LENGTH
        assert done[0].usage.completion_tokens == 60
        assert done[0].text == "".join(result["chunks"])
        assert proc.wait(30) == 0
        drain_s = time.monotonic() - signalled
        channel.close()
        text = log.read_text()
        assert "stopped after draining" in text
        print(f"drain: SIGTERM -> exit 0 in {drain_s:.2f} s with one stream in flight")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_streams_past_the_grace_period_end_with_a_shutdown_completion(tiny_model_dir,
                                                                      tmp_path):
    """SIGTERM with long and short streams in flight and a resumable reply nobody
    follows: short ones finish, long ones still get a Completion (SHUTDOWN, the text and
    token count so far) instead of a cut connection, a Resume during the drain gets
    UNAVAILABLE saying where to go, the abandoned reply is logged, and the exit is 0."""
    proc, port, log = start(tiny_model_dir, tmp_path, grace=1.0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_pb2_grpc.ArBridgeServiceStub(channel)

            def generate(tokens: int, **kw):
                return stub.Generate(spb.GenerateRequest(
                    prompt="The red chair", sampling=pb.SamplingParams(max_new_tokens=tokens),
                    **kw), timeout=60)

            abandoned = generate(240, stream=pb.StreamOptions(resumable=True))
            stream_id = next(abandoned).stream_id
            abandoned.cancel()
            calls = {"long-1": generate(240), "long-2": generate(240), "short": generate(5)}
            results: dict[str, tuple[list, list]] = {}
            started = threading.Barrier(len(calls) + 1)

            def read(name, call):
                chunks, completions = [], []
                for i, response in enumerate(call):
                    if i == 0:
                        started.wait(30)
                    if response.WhichOneof("event") == "chunk":
                        chunks.append(response.chunk)
                    else:
                        completions.append(response.completion)
                results[name] = (chunks, completions)

            readers = [threading.Thread(target=read, args=item) for item in calls.items()]
            for reader in readers:
                reader.start()
            started.wait(30)
            proc.send_signal(signal.SIGTERM)
            wait_not_serving(channel)
            with pytest.raises(grpc.RpcError) as err:
                list(stub.Resume(spb.ResumeRequest(stream_id=stream_id), timeout=5))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "ask again on another replica" in err.value.details()
            for reader in readers:
                reader.join(30)
        assert results["short"][1][0].finish_reason == pb.FINISH_REASON_LENGTH
        for name in ("long-1", "long-2"):
            chunks, (done,) = results[name]
            assert done.finish_reason == pb.FINISH_REASON_SHUTDOWN, (name, done)
            assert 0 < done.usage.completion_tokens < 240
            assert done.text == "".join(c.text for c in chunks)
            assert done.usage.completion_tokens == sum(len(c.token_ids) for c in chunks)
        assert proc.wait(30) == 0
        text = log.read_text()
        assert "grace period over: ending" in text and "FINISH_REASON_SHUTDOWN" in text
        assert "dropping 1 resumable reply(ies) nobody follows" in text
        assert "cancelling" not in text  # every call ended with its Completion
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_while_the_model_loads_exits_at_once(tiny_model_dir, tmp_path):
    log = tmp_path / "server.log"
    env = dict(os.environ, PYTHONPATH=str(TESTS), XDG_CACHE_HOME=str(tmp_path))
    proc = subprocess.Popen([sys.executable, str(TESTS / "drain_server.py"),
                             str(tiny_model_dir), "0", "5", "--slow-load"],
                            stderr=log.open("w"), env=env)
    try:
        deadline = time.monotonic() + 60
        while "listening on" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
        assert time.monotonic() - signalled < 10  # not the 60 s the load takes
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
