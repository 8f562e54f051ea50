"""The Unity package's C#: generated code is current, compiles as C# 7.2, and streams.

No Unity, NuGet or dotnet here: mono's mcs compiles the generated messages and
the plain client layer against Google.Protobuf built from Debian's source
package, and the generated *Grpc.cs against tests/csharp/standins/Grpc.Core.Api.cs
(tests only). `make test` builds that toolchain first (tools/csharp/).
"""

from __future__ import annotations

import asyncio
import filecmp
import json
import shutil
import subprocess

import pytest

from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import types_pb2 as pb

from conftest import REPO, collect

TOOLCHAIN = REPO / "build" / "csharp"
PACKAGE = REPO / "unity_client"
GENERATED = PACKAGE / "Runtime" / "Generated"


@pytest.fixture(scope="module")
def interop_exe(tmp_path_factory):
    """Generated C# + client layer + test program, compiled by mcs as C# 7.2."""
    assert (TOOLCHAIN / "Google.Protobuf.dll").exists(), "run `make test` (builds build/csharp)"
    out = tmp_path_factory.mktemp("csharp")
    for dll in TOOLCHAIN.glob("*.dll"):
        shutil.copy(dll, out)
    sources = sorted(str(p) for p in [*(REPO / "tests" / "csharp").glob("*.cs"),
                                      REPO / "tests" / "csharp" / "standins" / "Grpc.Core.Api.cs",
                                      *GENERATED.glob("*.cs"),
                                      *(PACKAGE / "Runtime" / "Client").glob("*.cs")])
    result = subprocess.run(
        ["mcs", "-langversion:7.2", "-target:exe", "-nowarn:1591",
         f"-r:{out / 'Google.Protobuf.dll'}",
         f"-r:{out / 'System.Runtime.CompilerServices.Unsafe.dll'}", "-r:System.Net.Http",
         f"-out:{out / 'interop.exe'}", *sources], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return out / "interop.exe"


def mono(*args, timeout=60):
    return subprocess.run(["mono", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_committed_csharp_is_what_the_protos_generate(tmp_path):
    subprocess.run(
        ["protoc", "-I", REPO / "protos", f"--csharp_out={tmp_path}",
         f"--grpc_out=no_server:{tmp_path}",
         f"--plugin=protoc-gen-grpc={TOOLCHAIN / 'grpc_csharp_plugin'}",
         *sorted((REPO / "protos" / "arbridge" / "v1").glob("*.proto"))], check=True)
    made = sorted(p.name for p in tmp_path.glob("*.cs"))
    committed = sorted(p.name for p in GENERATED.glob("*.cs"))
    assert made == committed == ["Service.cs", "ServiceGrpc.cs", "Types.cs"]
    stale = [name for name in made if not filecmp.cmp(tmp_path / name, GENERATED / name,
                                                      shallow=False)]
    assert not stale, f"{stale} are stale: run `make unity-stubs`"


def test_plain_client_layer_has_no_unity_dependency():
    for source in (PACKAGE / "Runtime" / "Client").glob("*.cs"):
        code = source.read_text()
        assert "using UnityEngine" not in code and "UnityEngine." not in code, source


def test_dialogue_session_events_reconnect_and_history(interop_exe):
    result = mono(interop_exe, "unit")
    assert result.returncode == 0 and result.stdout.strip() == "unit ok", \
        result.stdout + result.stderr


@pytest.fixture
async def web(make_server, tiny_model_dir):
    # One token a pass (no drafts: a composed caption would come 17 tokens a pass), so
    # the chunks' arrival times show whether the port streams or buffers.
    return await make_server(tiny_model_dir, grpc_web_port=0, step_delay=0.03,
                             speculative_tokens=0)


def request_file(tmp_path, label="chair", max_new_tokens=12):
    path = tmp_path / "request.json"
    path.write_text(json.dumps({
        "scene": {"objects": [{"id": "c1", "label": label,
                               "pose": {"position": {"x": 0.5, "z": 1.0}}}]},
        "sampling": {"maxNewTokens": max_new_tokens}}))
    return path


async def run_mono(*args):
    proc = await asyncio.create_subprocess_exec(
        "mono", *map(str, args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_csharp_streams_a_caption_over_grpc_web(interop_exe, web, tmp_path):
    url = f"http://127.0.0.1:{web.server.grpc_web_port}"
    code, out, err = await run_mono(interop_exe, "describe", url, request_file(tmp_path))
    assert code == 0, out + err
    events = []
    for line in out.splitlines():
        ms, kind, body = line.split(" ", 2)
        events.append((int(ms), kind, json.loads(body)))
    chunks = [(ms, body["text"]) for ms, kind, body in events if kind == "chunk"]
    completion = events[-1][2]
    assert events[-1][1] == "completion" and completion["finishReason"] == "FINISH_REASON_EOS"
    assert "".join(text for _, text in chunks) == completion["text"]
    # Chunks arrived as the server made them (>= 30 ms a token), not all at the end.
    assert chunks[-1][0] - chunks[0][0] >= 100, chunks
    native = spb.DescribeSceneRequest(
        scene=pb.SceneFeatures(objects=[pb.SceneObject(
            id="c1", label="chair", pose=pb.Pose(position=pb.Vec3(x=0.5, z=1.0)))]),
        sampling=pb.SamplingParams(max_new_tokens=12))
    _, done, _ = await collect(web.stub.DescribeScene(native))
    assert completion["text"] == done[0].text


async def test_csharp_sees_the_servers_status(interop_exe, web, tmp_path):
    url = f"http://127.0.0.1:{web.server.grpc_web_port}"
    code, out, _ = await run_mono(interop_exe, "describe", url, request_file(tmp_path, label=""))
    assert code == 1 and out.startswith("ERROR 3 scene.objects[0].label"), out


async def test_csharp_cancel_frees_the_slot(interop_exe, web, tmp_path):
    url = f"http://127.0.0.1:{web.server.grpc_web_port}"
    code, out, err = await run_mono(interop_exe, "cancel", url,
                                    request_file(tmp_path, max_new_tokens=60))
    assert code == 0 and out.strip() == "cancelled after 1 chunk(s)", out + err
    for _ in range(200):
        if web.server.scheduler.load == (0, 0):
            break
        await asyncio.sleep(0.02)
    assert web.server.scheduler.load == (0, 0)


async def test_csharp_dialogue_over_grpc_web_with_ask(interop_exe, web):
    url = f"http://127.0.0.1:{web.server.grpc_web_port}"
    code, out, err = await run_mono(interop_exe, "ask", url)
    assert code == 0, out + err
    lines = out.splitlines()
    assert not [line for line in lines if line.startswith("error")], out
    done = [line.split(" ", 3) for line in lines if line.startswith("completion")]
    assert [d[1] for d in done] == ["1", "2", "3"]
    sessions = {d[2] for d in done}
    assert len(sessions) == 1 and "forgotten-session" not in sessions  # restarted once
    first, second, interrupted = (json.loads(d[3]) for d in done)
    assert interrupted["finishReason"] == "FINISH_REASON_CANCELLED" and interrupted["text"]
    # Two turns sent before any reply shared one session (the second waited for its id).
    assert lines[-1] == "fresh sessions 1 completions 2", lines[-1]
    assert second["usage"]["promptTokens"] > first["usage"]["promptTokens"]  # history
    assert lines.index("chunk 1") < lines.index(next(x for x in lines if x.startswith(
        "completion 1")))


async def test_csharp_resumes_a_caption_cut_mid_stream(interop_exe, web, tmp_path):
    """The network drops under the C# client (a proxy resets the connection after the
    first chunk): it Resumes over gRPC-Web and the caption it shows is the uncut one,
    no chunk lost or twice (tests/test_resume.py counts the tokens generated)."""
    from upstream import run_cut_after

    native = spb.DescribeSceneRequest(
        scene=pb.SceneFeatures(objects=[pb.SceneObject(
            id="c1", label="chair", pose=pb.Pose(position=pb.Vec3(x=0.5, z=1.0)))]),
        sampling=pb.SamplingParams(max_new_tokens=24))
    _, done, _ = await collect(web.stub.DescribeScene(native))
    lines, proxy = await run_cut_after(
        ["mono", interop_exe, "describe", "http://{target}",
         request_file(tmp_path, max_new_tokens=24)], web.server.grpc_web_port, 2)
    assert proxy.connections >= 2  # it came back on a new connection
    chunks = [json.loads(ln.split(" ", 2)[2])["text"] for ln in lines if " chunk " in ln]
    completion = json.loads(lines[-1].split(" ", 2)[2])
    assert "".join(chunks) == completion["text"] == done[0].text
    assert completion["usage"]["completionTokens"] == done[0].usage.completion_tokens


async def test_csharp_ask_dialogue_resumes_a_cut_reply(interop_exe, web):
    """AskDialogue over gRPC-Web: the network drops after the first chunk; the turn
    completes with every chunk once."""
    from upstream import run_cut_after

    lines, proxy = await run_cut_after(["mono", interop_exe, "ask-one", "http://{target}"],
                                       web.server.grpc_web_port, 1)
    assert proxy.connections >= 2 and not any(ln.startswith("error") for ln in lines), lines
    chunks = [json.loads(ln.split(" ", 1)[1])["text"] for ln in lines if ln.startswith("chunk")]
    completion = json.loads(lines[-1].split(" ", 1)[1])
    assert "".join(chunks) == completion["text"] and completion["usage"]["completionTokens"] == 24


async def test_csharp_raises_scene_actions_as_typed_events(interop_exe, make_server,
                                                          wide_model_dir):
    """AskDialogue over gRPC-Web: the reply's action arrives as ActionCalled, its OBJECT
    argument a scene id, before the completion; the pointing ray's referent is reported."""
    running = await make_server(wide_model_dir, grpc_web_port=0)
    code, out, err = await run_mono(interop_exe, "act",
                                    f"http://127.0.0.1:{running.server.grpc_web_port}")
    assert code == 0, out + err
    lines = out.splitlines()
    actions = [line.split(" ") for line in lines if line.startswith("action")]
    assert actions and all(a[2] == "highlight" and a[3] in {"c1", "l1"} for a in actions)
    completion = json.loads(lines[-1].split(" ", 1)[1])
    assert lines.index(" ".join(actions[0])) < len(lines) - 1
    assert [a["objectIds"] for a in completion["actions"]] == [[a[3]] for a in actions]
    assert completion["referents"][0]["objectId"] == "l1"
    assert completion["referents"][0]["match"] == "REFERENT_MATCH_HIT"
