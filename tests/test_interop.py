"""Clients in other languages and tools stream from a real server.

- C++ gRPC, as an Unreal plugin would (examples/cpp, built by `make cpp-client`);
- Node `@grpc/grpc-js` (examples/node/describe_scene.js), native gRPC;
- `buf curl` through server reflection (list, Generate), and over gRPC-Web
  against the gRPC-Web port with the schema from protos/.

The Node tools come from `npm ci` (package.json) and the C++ toolchain from
Debian packages, both installed by `make setup`; `make test` builds the client.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import types_pb2 as pb

from conftest import REPO, collect

BUF = REPO / "node_modules" / ".bin" / "buf"
NODE_CLIENT = REPO / "examples" / "node" / "describe_scene.js"
CPP_CLIENT = REPO / "build" / "cpp" / "describe_scene"
SERVICE = "arbridge.v1.ArBridgeService"


async def run(*argv, env=None, timeout=60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *map(str, argv), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=REPO, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def served(make_server, tiny_model_dir):
    return await make_server(tiny_model_dir, grpc_web_port=0, step_delay=0.02)


def scene_file(tmp_path, max_new_tokens=10, label="chair"):
    path = tmp_path / "scene.json"
    path.write_text(json.dumps({
        "scene": {"objects": [{"id": "c1", "label": label,
                               "pose": {"position": {"x": 0.5, "z": 1.0}}}]},
        "sampling": {"maxNewTokens": max_new_tokens, "temperature": 0}}))
    return path


def native_request(max_new_tokens=10):
    return spb.DescribeSceneRequest(
        scene=pb.SceneFeatures(objects=[pb.SceneObject(
            id="c1", label="chair", pose=pb.Pose(position=pb.Vec3(x=0.5, z=1.0)))]),
        sampling=pb.SamplingParams(max_new_tokens=max_new_tokens, temperature=0))


async def test_cpp_client_streams_a_caption(served, tmp_path):
    assert CPP_CLIENT.exists(), "build it with `make cpp-client` (make test does)"
    code, out, err = await run(CPP_CLIENT, served.target, scene_file(tmp_path))
    assert code == 0, out + err
    events = []
    for line in out.splitlines():
        ms, _, body = line.partition(" ")
        events.append((int(ms), json.loads(body)))
    chunks = [(ms, e["chunk"]["text"]) for ms, e in events if "chunk" in e]
    completion = events[-1][1]["completion"]
    assert len(chunks) >= 2 and chunks[-1][0] > chunks[0][0]  # arrived one by one
    assert "".join(text for _, text in chunks) == completion["text"]
    _, done, _ = await collect(served.stub.DescribeScene(native_request()))
    assert completion["text"] == done[0].text
    code, out, err = await run(CPP_CLIENT, served.target, scene_file(tmp_path, label=""))
    assert code == 1 and err.startswith("ERROR 3 scene.objects[0].label"), err


async def test_node_grpc_js_streams_a_caption(served, tmp_path):
    code, out, err = await run("node", NODE_CLIENT, served.target, scene_file(tmp_path))
    assert code == 0, out + err
    events = [json.loads(line) for line in out.splitlines()]
    chunks = [e for e in events if "chunk" in e]
    completion = events[-1]["completion"]
    # The caption composed from the scene, spoken whole (it ends, not cut at a length).
    assert len(chunks) >= 2 and completion["finishReason"] == "FINISH_REASON_EOS"
    assert "".join(c["chunk"] for c in chunks) == completion["text"]
    assert chunks[-1]["t"] > chunks[0]["t"]  # arrived one by one (>= 20 ms a token)
    _, done, _ = await collect(served.stub.DescribeScene(native_request()))
    assert completion["text"] == done[0].text


async def test_node_client_sees_precise_statuses(served, tmp_path):
    code, out, _ = await run("node", NODE_CLIENT, served.target,
                             scene_file(tmp_path, label=""))
    assert code == 1
    error = json.loads(out.splitlines()[-1])
    assert error["code"] == 3 and error["details"].startswith("scene.objects[0].label")


async def test_buf_curl_lists_through_reflection_and_calls_generate(served):
    url = f"http://{served.target}"
    code, out, err = await run(BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge",
                               "--list-methods", url)
    assert code == 0, err
    assert {f"{SERVICE}/{m}" for m in ("DescribeScene", "Converse", "Generate",
                                        "GetModelInfo")} <= set(out.split())
    body = json.dumps({"prompt": "The red chair", "sampling": {"maxNewTokens": 6}})
    code, out, err = await run(BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge",
                               "-d", body, f"{url}/{SERVICE}/Generate")
    assert code == 0, err
    replies = [json.loads(part) for part in _json_objects(out)]
    assert replies[-1]["completion"]["usage"]["completionTokens"] == 6
    text = "".join(r["chunk"]["text"] for r in replies if "chunk" in r)
    assert text == replies[-1]["completion"]["text"]


async def test_buf_curl_over_grpc_web(served):
    url = f"http://127.0.0.1:{served.server.grpc_web_port}/{SERVICE}/Generate"
    body = json.dumps({"prompt": "The red chair", "sampling": {"maxNewTokens": 5}})
    code, out, err = await run(BUF, "curl", "--protocol", "grpcweb", "--schema",
                               REPO / "protos", "-d", body, url)
    assert code == 0, err
    replies = [json.loads(part) for part in _json_objects(out)]
    assert replies[-1]["completion"]["usage"]["completionTokens"] == 5
    # An error comes back as a status buf understands, with the field named.
    bad = json.dumps({"prompt": "x", "sampling": {"topP": 7}})
    code, out, err = await run(BUF, "curl", "--protocol", "grpcweb", "--schema",
                               REPO / "protos", "-d", bad, url)
    assert code != 0 and "invalid_argument" in err and "sampling.top_p" in err


def _json_objects(text: str):
    """buf curl prints one pretty-printed JSON object per message."""
    decoder, i = json.JSONDecoder(), 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        obj, i = decoder.raw_decode(text, i)
        yield json.dumps(obj)


@pytest.mark.parametrize("client", ["cpp", "node"])
async def test_examples_resume_a_caption_cut_mid_stream(served, tmp_path, client):
    """The connection drops after the first chunk (a proxy resets it); the example
    Resumes and prints the uncut caption, each event once."""
    from upstream import run_cut_after

    _, done, _ = await collect(served.stub.DescribeScene(native_request(24)))
    argv = ([CPP_CLIENT] if client == "cpp" else ["node", NODE_CLIENT]) + [
        "{target}", scene_file(tmp_path, max_new_tokens=24)]
    lines, proxy = await run_cut_after(argv, served.server.port, 1, cwd=REPO)
    assert proxy.connections >= 2, lines
    events = [json.loads(ln.partition(" ")[2] if client == "cpp" else ln) for ln in lines]
    chunks = [e["chunk"] if client == "node" else e["chunk"]["text"]
              for e in events if "chunk" in e]
    completion = events[-1]["completion"]
    assert "".join(chunks) == completion["text"] == done[0].text  # nothing lost or twice


@pytest.mark.parametrize("client", ["cpp", "node"])
async def test_examples_print_the_scene_actions_of_a_reply(make_server, wide_model_dir, client,
                                                           tmp_path):
    """examples/act.json through Ask: each action the reply calls printed as its own
    event (an "action" with the scene object's id) before the completion, and the hand
    ray's referent in the completion (it points at the kettle)."""
    running = await make_server(wide_model_dir)
    request = json.loads((REPO / "examples" / "act.json").read_text())
    request["start"]["actionMode"] = "ACTION_MODE_REQUIRED"  # the tiny model acts at random
    request["userTurn"]["sampling"] = {"maxNewTokens": 40, "temperature": 1.5, "seed": 2}
    path = tmp_path / "act.json"
    path.write_text(json.dumps(request))
    argv = [CPP_CLIENT] if client == "cpp" else ["node", NODE_CLIENT]
    code, out, err = await run(*argv, running.target, path, "ask")
    assert code == 0, out + err
    events = [json.loads(ln.partition(" ")[2] if client == "cpp" else ln)
              for ln in out.splitlines()]
    actions = [e["action"] for e in events if "action" in e]
    completion = events[-1]["completion"]
    assert actions and [a["objectIds"] for a in actions] == \
        [a["objectIds"] for a in completion["actions"]]
    assert all(a["name"] in {"highlight", "move_to"} and
               set(a["objectIds"]) <= {"obj-1", "obj-2", "obj-3"} for a in actions)
    assert completion["referents"][0]["objectId"] == "obj-3"
