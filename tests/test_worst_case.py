"""The worst a client may send, on a real server process: every request field at its
limit at once, for every RPC, while another client streams.

The other stream must keep flowing (its largest gap between chunks stays under 3x
the largest gap it had alone), each hostile call gets a precise status, the server's
memory stays bounded, and SIGTERM still drains and exits 0.

The model is a tiny GPT-2 with an 8192-token context (SmolLM2's), so trimming a long
dialogue to the window is real work, not an early refusal.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import types_pb2 as pb

from conftest import start_server_process
from tiny_model import CORPUS, build_tiny_model

TESTS = Path(__file__).resolve().parent
SERVICE = "/arbridge.v1.ArBridgeService/"
NEW_TOKENS_LIMIT = 64  # this server's max_new_tokens_limit: hostile calls ask for all of it
STEP_DELAY_S = 0.1
TEXT = " ".join(CORPUS)


def text(chars: int) -> str:
    return (TEXT * (chars // len(TEXT) + 1))[:chars]


def sampling_at_limits() -> pb.SamplingParams:
    # The defaults of Settings: 16 stop strings of 256 chars, 8 sequences.
    return pb.SamplingParams(max_new_tokens=NEW_TOKENS_LIMIT, temperature=100.0, top_k=1 << 30,
                             top_p=1.0, repetition_penalty=50.0, seed=7,
                             stop=[f"{i:02d}" + "~" * 254 for i in range(16)],
                             num_return_sequences=8, logprobs=True)


def scene_at_limits(attributes: int) -> pb.SceneFeatures:
    pose = pb.Pose(position=pb.Vec3(x=1.0, y=0.0, z=2.0),
                   rotation=pb.Quaternion(x=0.0, y=0.0, z=0.0, w=1.0))
    objects = [pb.SceneObject(id=f"o{i}", label=text(200), confidence=1.0, pose=pose,
                              extents=pb.Vec3(x=1, y=1, z=1),
                              attributes={f"{k:03d}" + "k" * 197: text(200)
                                          for k in range(attributes)})
               for i in range(256)]
    return pb.SceneFeatures(camera_pose=pose, objects=objects, location_hint=text(200))


def history_at_limits(turn_chars: int, wave: int) -> list[pb.DialogueTurn]:
    # Each wave's dialogue is new: the prefix cache must not make a wave cheap.
    return [pb.DialogueTurn(role=pb.ROLE_USER if i % 2 == 0 else pb.ROLE_ASSISTANT,
                            text=f"wave {wave} turn {i}: " + text(turn_chars - 20))
            for i in range(256)]


def hostile_requests(wave: int) -> list[tuple[str, bool, bytes]]:
    """(method, client-streaming?, serialized request or Converse messages) at the limits,
    each under the 4 MiB message cap."""
    generate = spb.GenerateRequest(prompt=text(200_000), sampling=sampling_at_limits())
    describe = spb.DescribeSceneRequest(scene=scene_at_limits(attributes=30),
                                        instruction=text(20_000), sampling=sampling_at_limits())
    # The reported freeze: 256 turns of ~13 KB each, three calls at once.
    ask = spb.AskRequest(start=spb.ConverseStart(history=history_at_limits(13_000, wave),
                                                 system_prompt=text(20_000)),
                         user_turn=spb.UserTurn(text="What is ahead of me?",
                                                sampling=pb.SamplingParams(
                                                    max_new_tokens=NEW_TOKENS_LIMIT)))
    ask_full = spb.AskRequest(start=spb.ConverseStart(history=history_at_limits(13_000, wave),
                                                      system_prompt=text(20_000),
                                                      sampling=sampling_at_limits()),
                              scene=scene_at_limits(attributes=1),
                              user_turn=spb.UserTurn(
                                  text=text(20_000), sampling=sampling_at_limits(),
                                  audio=pb.AudioFeatures(transcript=text(20_000),
                                                         confidence=1.0)))
    converse = [spb.ConverseRequest(start=spb.ConverseStart(
                    history=history_at_limits(13_000, wave), system_prompt=text(20_000),
                    sampling=sampling_at_limits(), scene=scene_at_limits(attributes=1))),
                spb.ConverseRequest(scene_update=scene_at_limits(attributes=30)),
                spb.ConverseRequest(user_turn=spb.UserTurn(text="And now?")),
                spb.ConverseRequest(user_turn=spb.UserTurn(text=text(20_000)))]
    calls = [("Generate", False, generate.SerializeToString()),
             ("DescribeScene", False, describe.SerializeToString()),
             ("Ask", False, ask_full.SerializeToString())]
    calls += [("Ask", False, ask.SerializeToString())] * 3
    calls.append(("Converse", True, [m.SerializeToString() for m in converse]))
    for _, _, payload in calls:
        for message in payload if isinstance(payload, list) else [payload]:
            assert len(message) < 4 * 1024 * 1024
    return calls


def call_raw(channel: grpc.Channel, method: str, streaming: bool, payload):
    """Send pre-serialized bytes (no client-side protobuf work while measuring);
    returns the status code the call ended with."""
    identity = dict(request_serializer=None, response_deserializer=None)
    try:
        if streaming:
            call = channel.stream_stream(SERVICE + method, **identity)(iter(payload),
                                                                        timeout=120)
        else:
            call = channel.unary_stream(SERVICE + method, **identity)(payload, timeout=120)
        for _ in call:
            pass
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as err:
        return err.code(), err.details()


def stream_gaps(stub, started: threading.Event | None = None) -> list[float]:
    """A 64-token Generate; the gaps between its chunks after the first."""
    request = spb.GenerateRequest(prompt="The red chair",
                                  sampling=pb.SamplingParams(max_new_tokens=NEW_TOKENS_LIMIT))
    times = []
    for response in stub.Generate(request, timeout=120):
        if response.WhichOneof("event") == "chunk":
            times.append(time.perf_counter())
            if started is not None:
                started.set()
    assert len(times) >= NEW_TOKENS_LIMIT // 2
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def long_context_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-8k"), n_positions=8192,
                            whole_characters=True)


def test_requests_at_every_limit_do_not_stall_other_streams_or_the_drain(long_context_model,
                                                                         tmp_path):
    from arbridge.v1 import service_pb2_grpc

    env = dict(os.environ, ARBRIDGE_MAX_NEW_TOKENS_LIMIT=str(NEW_TOKENS_LIMIT),
               ARBRIDGE_DEFAULT_MAX_NEW_TOKENS=str(NEW_TOKENS_LIMIT))
    proc, port, log = start_server_process(long_context_model, tmp_path, STEP_DELAY_S, 30,
                                           env=env)
    waves = [hostile_requests(wave) for wave in range(3)]  # built before any measuring
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}",
                                        options=[("grpc.max_send_message_length", 1 << 23)])
        stub = service_pb2_grpc.ArBridgeServiceStub(channel)
        statuses, finished_at = [], []

        def attack(method, streaming, payload):
            statuses.append((method, *call_raw(channel, method, streaming, payload)))
            finished_at.append(time.perf_counter())

        def wave() -> list[threading.Thread]:
            threads = [threading.Thread(target=attack, args=call) for call in waves.pop(0)]
            for t in threads:
                t.start()
            return threads

        # A first wave grows the engine's KV buffers to 8k-token rows: a one-time copy
        # that stalls a turn (the README's limits say so); the measurement below is of
        # a server that has served such prompts before.
        for t in wave():
            t.join(120)
        allowed = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
        assert all(code in allowed for _, code, _ in statuses), statuses
        # The three plain Asks fit once their history is trimmed: they were answered.
        assert [code for _, code, _ in statuses].count(grpc.StatusCode.OK) >= 3, statuses
        statuses.clear()
        finished_at.clear()

        quiet = max(stream_gaps(stub))
        started, result = threading.Event(), {}
        reader = threading.Thread(target=lambda: result.update(gaps=stream_gaps(stub, started)))
        reader.start()
        assert started.wait(30)
        attackers = wave()
        reader.join(120)
        stream_end = time.perf_counter()
        for t in attackers:
            t.join(120)
        loaded = max(result["gaps"])
        print(f"worst case: largest chunk gap {quiet * 1e3:.0f} ms alone, "
              f"{loaded * 1e3:.0f} ms under {len(statuses)} calls at the limits; "
              f"server peak RSS {peak_rss_mb(proc.pid):.0f} MB")
        # The hostile work overlapped the measured stream: some call was answered in full
        # (its prompt built, or refused) while the stream still ran.
        assert min(finished_at) < stream_end
        assert loaded < 3 * quiet, (quiet, loaded)
        assert all(code in allowed for _, code, _ in statuses), statuses
        assert peak_rss_mb(proc.pid) < 3000

        # Another wave, then SIGTERM while it is in flight: the drain still runs.
        attackers = wave()
        time.sleep(0.2)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(45) == 0, log.read_text()[-3000:]
        assert time.monotonic() - signalled < 40
        for t in attackers:
            t.join(30)
        channel.close()
        assert "stopped after draining" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
