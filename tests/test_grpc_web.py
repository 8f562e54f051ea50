"""gRPC-Web port: framing, streaming, statuses, auth, peers, cancellation, CORS.

A plain HTTP/1.1 client (httpx) plays the browser / Unity WebGL side; the
frames are parsed here by hand so that the test checks the wire, not a library.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
import time
from urllib.parse import unquote

import httpx
import pytest

from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import types_pb2 as pb

from conftest import collect, gen, wait_for, wait_idle

SERVICE = "/arbridge.v1.ArBridgeService"


def framed(message) -> bytes:
    data = message.SerializeToString()
    return struct.pack(">BI", 0, len(data)) + data


class Frames:
    """Incremental gRPC-Web frame parser: messages with arrival times, then trailers."""

    def __init__(self):
        self.buffer = b""
        self.messages: list[tuple[float, bytes]] = []
        self.trailers: dict[str, str] = {}
        self.start = time.perf_counter()

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 5:
            flag, length = struct.unpack(">BI", self.buffer[:5])
            if len(self.buffer) < 5 + length:
                return
            payload, self.buffer = self.buffer[5:5 + length], self.buffer[5 + length:]
            if flag & 0x80:
                for line in payload.decode().split("\r\n"):
                    if line:
                        key, _, value = line.partition(":")
                        self.trailers[key.strip().lower()] = value.strip()
            else:
                self.messages.append((time.perf_counter() - self.start, payload))

    @property
    def status(self) -> int:
        return int(self.trailers["grpc-status"])

    @property
    def message(self) -> str:
        return unquote(self.trailers.get("grpc-message", ""))


async def call(running, method: str, request, headers=None, text: bool = False):
    """POST one gRPC-Web call; returns (response headers, Frames)."""
    body = framed(request)
    kind = "application/grpc-web-text" if text else "application/grpc-web+proto"
    if text:
        body = base64.b64encode(body)
    frames = Frames()
    url = f"http://127.0.0.1:{running.server.grpc_web_port}{SERVICE}/{method}"
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", url, content=body, headers={
                "content-type": kind, "x-grpc-web": "1", **(headers or {})}) as reply:
            assert reply.status_code == 200
            pending = b""
            async for chunk in reply.aiter_raw():
                if text:  # each frame is its own base64 run
                    pending += chunk
                    cut = len(pending) - len(pending) % 4
                    frames.feed(base64.b64decode(pending[:cut]))
                    pending = pending[cut:]
                else:
                    frames.feed(chunk)
            return reply.headers, frames


def describe(max_new_tokens=12, **kw):
    objects = [pb.SceneObject(id="c1", label="chair", pose=pb.Pose(position=pb.Vec3(z=1))),
               pb.SceneObject(id="t1", label="table", pose=pb.Pose(position=pb.Vec3(z=2)))]
    return spb.DescribeSceneRequest(scene=pb.SceneFeatures(objects=objects), **kw,
                                    sampling=pb.SamplingParams(max_new_tokens=max_new_tokens))


def events(frames: Frames):
    return [spb.DescribeSceneResponse.FromString(m) for _, m in frames.messages]


@pytest.fixture
async def web(make_server, tiny_model_dir):
    # One token a pass (no drafts: a composed caption would come 17 tokens a pass), so
    # the chunks' arrival times show whether the port streams or buffers.
    return await make_server(tiny_model_dir, grpc_web_port=0, step_delay=0.03,
                             speculative_tokens=0)


async def test_describe_scene_streams_incrementally_and_matches_native_grpc(web):
    headers, frames = await call(web, "DescribeScene", describe(), {"x-request-id": "web-1"})
    assert headers["content-type"] == "application/grpc-web+proto"
    assert headers["x-request-id"] == "web-1"
    assert frames.status == 0, frames.message
    replies = events(frames)
    chunks = [r.chunk.text for r in replies if r.WhichOneof("event") == "chunk"]
    assert replies[-1].WhichOneof("event") == "completion"
    assert "".join(chunks) == replies[-1].completion.text
    # The caption composed from the scene, spoken token by token by the model.
    assert replies[-1].completion.text.startswith("Ahead: a chair")
    assert replies[-1].completion.finish_reason == pb.FINISH_REASON_EOS
    # Chunks arrived as they were made (the model takes >= 30 ms a step), not in one burst.
    times = [t for t, _ in frames.messages]
    assert times[-1] - times[0] > 0.2
    # Same greedy text as the native port.
    _, done, _ = await collect(web.stub.DescribeScene(describe()))
    assert done[0].text == replies[-1].completion.text


async def test_text_mode_and_unary_methods(web):
    headers, frames = await call(web, "GetModelInfo", spb.GetModelInfoRequest(), text=True)
    assert headers["content-type"] == "application/grpc-web-text+proto"
    assert frames.status == 0
    info = spb.GetModelInfoResponse.FromString(frames.messages[0][1])
    assert info.context_length == 256 and info.architecture == "GPT2LMHeadModel"


async def test_bad_input_gets_the_same_status_as_native(web):
    bad = spb.DescribeSceneRequest(scene=pb.SceneFeatures(objects=[pb.SceneObject(id="x")]))
    _, frames = await call(web, "DescribeScene", bad)
    assert frames.status == 3  # INVALID_ARGUMENT
    assert frames.message.startswith("scene.objects[0].label")
    assert not frames.messages


async def test_converse_and_unknown_methods_are_unimplemented(web):
    _, frames = await call(web, "Converse", spb.ConverseRequest())
    assert frames.status == 12 and "use Ask" in frames.message
    _, frames = await call(web, "Nope", spb.GetModelInfoRequest())
    assert frames.status == 12


async def test_broken_frames_are_invalid_argument(web):
    url = f"http://127.0.0.1:{web.server.grpc_web_port}{SERVICE}/Generate"
    async with httpx.AsyncClient() as client:
        for body in (b"\x00\x00\x00\x00\x09abc", b"\x01\x00\x00\x00\x01x", b"\x00\x00"):
            reply = await client.post(url, content=body,
                                      headers={"content-type": "application/grpc-web+proto"})
            frames = Frames()
            frames.feed(reply.content)
            assert frames.status == 3, frames.trailers
        reply = await client.post(url, content=b"x", headers={"content-type": "text/plain"})
        assert reply.status_code == 415


async def raw_post(port: int, path: str, head: dict[str, str], body: bytes = b"",
                   timeout: float = 10) -> bytes:
    """One HTTP/1.1 POST over a bare socket (sending `body`, maybe less than declared);
    the whole reply as the server wrote it before closing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", "connection: close",
             *(f"{k}: {v}" for k, v in head.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()
    try:
        data = b""
        while chunk := await asyncio.wait_for(reader.read(65536), timeout):
            data += chunk
        return data
    finally:
        writer.close()


def trailers_of(reply: bytes) -> Frames:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    if b"transfer-encoding: chunked" in head.lower():  # undo HTTP chunking
        data, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            data, rest = data + rest[:n], rest[n + 2:]
        body = data
    frames = Frames()
    frames.feed(base64.b64decode(body) if b"grpc-web-text" in head else body)
    return frames


async def test_oversized_bodies_are_resource_exhausted_before_they_are_read(make_server,
                                                                           tiny_model_dir):
    """5, 9 and 64 MiB against the default 4 MiB limit, binary and text, declared or
    chunked: always RESOURCE_EXHAUSTED with the server's own message; a declared size
    is refused before a byte of the body is sent."""
    s = await make_server(tiny_model_dir, grpc_web_port=0)
    port, path = s.server.grpc_web_port, f"{SERVICE}/Generate"
    expected = "request message larger than this server's limit of 4194304 bytes"
    for mib in (5, 9, 64):
        for kind, body_bytes in (("application/grpc-web+proto", lambda n: n + 5),
                                 ("application/grpc-web-text", lambda n: (n + 5) * 4 // 3)):
            started = time.perf_counter()
            reply = await raw_post(port, path, {
                "content-type": kind, "content-length": str(body_bytes(mib << 20))})
            frames = trailers_of(reply)
            assert frames.status == 8, (mib, kind, frames.trailers)  # RESOURCE_EXHAUSTED
            assert frames.message.startswith(expected), frames.message
            assert time.perf_counter() - started < 5
    # No length declared (chunked): refused once the limit is passed while reading.
    big = struct.pack(">BI", 0, 5 << 20) + b"x" * (5 << 20)
    async with httpx.AsyncClient(timeout=30) as client:
        async def chunks():
            for i in range(0, len(big), 1 << 16):
                yield big[i:i + (1 << 16)]
        reply = await client.post(f"http://127.0.0.1:{port}{path}", content=chunks(),
                                  headers={"content-type": "application/grpc-web+proto"})
    frames = Frames()
    frames.feed(reply.content)
    assert frames.status == 8 and frames.message.startswith(expected), frames.trailers
    # A frame header that claims more than the limit, in a small body.
    reply = await raw_post(port, path, {"content-type": "application/grpc-web+proto",
                                        "content-length": "10"},
                           struct.pack(">BI", 0, 5 << 20) + b"xxxxx")
    assert trailers_of(reply).status == 8
    # Just under the limit still reaches the servicer (which judges the prompt).
    _, frames = await call(s, "Generate", gen("x " * 100, max_new_tokens=2))
    assert frames.status == 0, frames.trailers


def _upload_then_read(port: int, total: int) -> tuple[Exception | None, bytes]:
    """A client that writes its whole body before reading (curl, fetch): its send
    error, if any, and the reply."""
    import socket
    import threading

    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    head = (f"POST {SERVICE}/Generate HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: "
            f"application/grpc-web+proto\r\ncontent-length: {total}\r\n\r\n").encode()
    failed: list[Exception] = []

    def send() -> None:
        try:
            sock.sendall(head + struct.pack(">BI", 0, total - 5) + b"x" * (total - 5))
        except OSError as exc:
            failed.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    sender.join(20)
    reply = b""
    while chunk := sock.recv(65536):
        reply += chunk
    sock.close()
    return (failed[0] if failed else None), reply


async def test_a_client_that_uploads_before_reading_gets_its_answer(make_server,
                                                                    tiny_model_dir):
    """9 MiB written whole before reading: the rest of the refused body is read and
    dropped (not left to block the client into a reset), then the answer arrives."""
    s = await make_server(tiny_model_dir, grpc_web_port=0)
    error, reply = await asyncio.to_thread(_upload_then_read, s.server.grpc_web_port,
                                           (9 << 20) + 5)
    assert error is None, error
    assert trailers_of(reply).status == 8


async def test_tokens_apply_over_grpc_web(make_server, tiny_model_dir, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("web-secret\n")
    s = await make_server(tiny_model_dir, grpc_web_port=0, auth_tokens_file=tokens)
    _, frames = await call(s, "DescribeScene", describe(4))
    assert frames.status == 16  # UNAUTHENTICATED
    _, frames = await call(s, "DescribeScene", describe(4),
                           {"authorization": "Bearer web-secret"})
    assert frames.status == 0


async def test_stream_limit_counts_the_browser_and_the_key_cannot_be_forged(make_server,
                                                                          tiny_model_dir):
    import grpc

    s = await make_server(tiny_model_dir, grpc_web_port=0, step_delay=0.05,
                          max_streams_per_peer=1)
    holder = asyncio.ensure_future(call(s, "DescribeScene", describe(60)))
    await wait_for(lambda: s.server.scheduler.load[0] == 1, 4,
                   lambda: f"one stream running: load {s.server.scheduler.load}")
    # The same browser (127.0.0.1) again: over its limit.
    _, frames = await call(s, "DescribeScene", describe(4))
    assert frames.status == 8, frames.trailers  # RESOURCE_EXHAUSTED
    # A native client claiming to be another browser, without the gateway's key,
    # is still counted as itself (127.0.0.1), so it is refused too.
    forged = (("x-arbridge-gateway", "guess"), ("x-arbridge-forwarded-peer", "ipv4:9.9.9.9"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(s.stub.DescribeScene(describe(4), metadata=forged))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    holder.cancel()
    await asyncio.gather(holder, return_exceptions=True)


async def test_client_leaving_cancels_the_generation(web):
    url = f"http://127.0.0.1:{web.server.grpc_web_port}{SERVICE}/DescribeScene"
    async with httpx.AsyncClient() as client:
        async with client.stream("POST", url, content=framed(describe(60)),
                                 headers={"content-type": "application/grpc-web+proto"}) as r:
            async for _ in r.aiter_raw():
                break  # first bytes arrived: the request is generating
            assert web.server.scheduler.load[0] == 1, web.server.scheduler.load
    await wait_idle(web.server.scheduler)  # the connection closed above


async def test_cors_preflight_and_headers(web):
    url = f"http://127.0.0.1:{web.server.grpc_web_port}{SERVICE}/DescribeScene"
    origin = "https://game.example"
    async with httpx.AsyncClient() as client:
        reply = await client.options(url, headers={
            "origin": origin, "access-control-request-method": "POST",
            "access-control-request-headers": "content-type,x-grpc-web,authorization"})
        assert reply.status_code == 204
        assert reply.headers["access-control-allow-origin"] == origin
        assert "authorization" in reply.headers["access-control-allow-headers"]
    headers, frames = await call(web, "GetModelInfo", spb.GetModelInfoRequest(),
                                 {"origin": origin})
    assert headers["access-control-allow-origin"] == origin
    assert "grpc-status" in headers["access-control-expose-headers"]


async def test_cors_origins_can_be_restricted(make_server, tiny_model_dir):
    s = await make_server(tiny_model_dir, grpc_web_port=0,
                          grpc_web_cors_origins=["https://ok.example"])
    url = f"http://127.0.0.1:{s.server.grpc_web_port}{SERVICE}/GetModelInfo"
    async with httpx.AsyncClient() as client:
        reply = await client.options(url, headers={"origin": "https://evil.example"})
        assert reply.status_code == 403
        reply = await client.options(url, headers={"origin": "https://ok.example"})
        assert reply.status_code == 204


def test_grpc_web_with_mtls_is_refused_at_start(tmp_path):
    from arbridge.config import Settings
    from arbridge.security import SecurityConfigError, server_credentials

    for name in ("c.pem", "k.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    settings = Settings(tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem",
                        tls_client_ca=tmp_path / "ca.pem", grpc_web_port=0)
    with pytest.raises(SecurityConfigError, match="grpc-web-port"):
        server_credentials(settings)


async def test_headers_that_are_not_valid_metadata_are_dropped_not_fatal(web):
    # A non-ASCII value, a control character and a name gRPC refuses: without
    # filtering, a unary native call would wait forever for its headers.
    weird = {"x-note": "caf\u00e9".encode(), "x-tab": "a\tb", "x-bang!": "1", "grpc-status": "0"}
    headers, frames = await asyncio.wait_for(
        call(web, "GetModelInfo", spb.GetModelInfoRequest(), weird), 10)
    assert frames.status == 0 and frames.messages


async def test_client_leaving_is_not_logged_as_an_error(web, caplog):
    caplog.set_level(logging.INFO, logger="arbridge.access")
    url = f"http://127.0.0.1:{web.server.grpc_web_port}{SERVICE}/DescribeScene"
    async with httpx.AsyncClient() as client:
        async with client.stream("POST", url, content=framed(describe(60)),
                                 headers={"content-type": "application/grpc-web+proto"}) as r:
            async for _ in r.aiter_raw():
                break
    # Everything that could log is done: the native call ended (its access line is
    # the last thing it logs), the engine is idle, and the gateway's HTTP handler
    # (uvicorn's task for the request) has returned.
    http_tasks = web.server.grpc_web._server.server_state.tasks

    def ended() -> bool:
        return (any(getattr(r, "method", "") == f"{SERVICE}/DescribeScene"
                    for r in caplog.records if r.name == "arbridge.access")
                and web.server.scheduler.load == (0, 0) and not http_tasks)

    await wait_for(ended, 5, lambda: f"call still open: load {web.server.scheduler.load}, "
                                     f"{len(http_tasks)} HTTP task(s)")
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], \
        [r.getMessage() for r in caplog.records]


async def test_a_taken_grpc_web_port_fails_the_start_with_a_message(make_server, tiny_model_dir):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(RuntimeError, match="cannot bind gRPC-Web port"):
            await make_server(tiny_model_dir, grpc_web_port=taken.getsockname()[1])
    finally:
        taken.close()


async def test_dialogue_over_grpc_web_with_ask(web):
    turn = spb.UserTurn(text="hello", sampling=pb.SamplingParams(max_new_tokens=5))
    _, frames = await call(web, "Ask", spb.AskRequest(user_turn=turn))
    assert frames.status == 0, frames.message
    first = [spb.AskResponse.FromString(m) for _, m in frames.messages]
    session = first[0].session_id
    assert session and first[-1].completion.usage.completion_tokens == 5
    _, frames = await call(web, "Ask", spb.AskRequest(session_id=session, user_turn=turn))
    second = [spb.AskResponse.FromString(m) for _, m in frames.messages]
    assert second[-1].turn_id == 2 and second[-1].session_id == session
    assert second[-1].completion.usage.prompt_tokens > first[-1].completion.usage.prompt_tokens


async def test_the_playground_is_served_on_get(web, make_server, tiny_model_dir):
    base = f"http://127.0.0.1:{web.server.grpc_web_port}"
    async with httpx.AsyncClient() as client:
        page = await client.get(f"{base}/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'src="playground.js"' in page.text
        script = await client.get(f"{base}/playground.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert "createGrpcWebTransport" in script.text
        head = await client.head(f"{base}/playground.css")
        assert head.status_code == 200 and head.content == b""
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        # Only the listed paths: an encoded ".." reaches the server as "/../..." and is refused.
        assert (await client.get(f"{base}/%2e%2e/pyproject.toml")).status_code == 405
    off = await make_server(tiny_model_dir, grpc_web_port=0, grpc_web_playground=False)
    async with httpx.AsyncClient() as client:
        reply = await client.get(f"http://127.0.0.1:{off.server.grpc_web_port}/")
        assert reply.status_code == 405
