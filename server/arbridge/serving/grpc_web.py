"""gRPC-Web beside native gRPC, for Unity WebGL and HTTP/1.1-only networks.

A small gateway on its own port (`--grpc-web-port`), in the server's process
and event loop. Each gRPC-Web request becomes a native gRPC call to this same
server over a private loopback listener, with the caller's metadata, deadline
and address passed along. So every rule of the native port (auth, limits,
validation, drain, metrics, request ids) applies unchanged: there is one
servicer and one interceptor chain, as with Envoy's grpc_web filter, minus
the extra hop through another process.

uvicorn (h11) speaks HTTP/1.1; this module only translates the framing: 5-byte
frames (flag, big-endian length), trailers as a frame with flag 0x80, and
base64 per frame for `application/grpc-web-text`. Unary and server-streaming
methods are served; Converse (bidirectional) cannot exist over gRPC-Web and
gets UNIMPLEMENTED pointing to Ask, its one-turn-per-call twin.

GET on the same port serves the browser playground (`arbridge/playground/`: a
page and its bundled script, built by `make web`), so it calls gRPC-Web from its
own origin and needs no CORS.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import secrets
import socket
import struct
from importlib import resources
from urllib.parse import quote

import grpc
import uvicorn
from grpc_health.v1 import health_pb2

from arbridge.serving.interceptors import FORWARDED_PEER_HEADER, GATEWAY_KEY_HEADER
from arbridge.serving.web_connections import LimitedH11Protocol
from arbridge.v1 import service_pb2

log = logging.getLogger(__name__)

_TRAILER_FLAG = 0x80
# HTTP headers that are transport, not gRPC metadata.
_NOT_METADATA = {
    "host", "content-type", "content-length", "connection", "accept", "accept-encoding",
    "accept-language", "user-agent", "origin", "referer", "te", "x-grpc-web", "x-user-agent",
    "grpc-timeout", "grpc-encoding", "grpc-accept-encoding", "keep-alive", "cookie",
    "sec-fetch-mode", "sec-fetch-site", "sec-fetch-dest", "pragma", "cache-control",
    "transfer-encoding", "upgrade", "trailer", "proxy-connection", "proxy-authorization",
    GATEWAY_KEY_HEADER, FORWARDED_PEER_HEADER,
}
# What grpc accepts as metadata: anything else would fail the native call
# (a unary call would even wait forever for its headers), so it is dropped.
_METADATA_KEY = re.compile(r"^[0-9a-z_.-]+$")
_METADATA_VALUE = re.compile(r"^[\x20-\x7e]*$")
_BODY_TIMEOUT_S = 30.0  # a request body trickling in slower than this is dropped
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_EXPOSED = "grpc-status, grpc-message, x-request-id, retry-after-ms"
# The playground's files: URL path -> (file in arbridge/playground, content type).
_PLAYGROUND = {"/": ("index.html", b"text/html; charset=utf-8"),
               "/index.html": ("index.html", b"text/html; charset=utf-8"),
               "/playground.js": ("playground.js", b"text/javascript; charset=utf-8"),
               "/playground.css": ("playground.css", b"text/css; charset=utf-8")}


def _methods() -> dict[str, bool]:
    """Path -> server-streaming, for every method gRPC-Web can carry."""
    out = {}
    for service in (service_pb2.DESCRIPTOR.services_by_name["ArBridgeService"],
                    health_pb2.DESCRIPTOR.services_by_name["Health"]):
        for m in service.methods:
            if not m.client_streaming:
                out[f"/{service.full_name}/{m.name}"] = m.server_streaming
    return out


def parse_timeout(value: str) -> float | None:
    m = _TIMEOUT.match(value.strip())
    return int(m.group(1)) * _TIMEOUT_UNITS[m.group(2)] if m else None


def frame(flag: int, payload: bytes) -> bytes:
    return struct.pack(">BI", flag, len(payload)) + payload


def trailer_block(code: grpc.StatusCode, details: str, metadata=()) -> bytes:
    lines = [f"grpc-status: {code.value[0]}"]
    if details:
        lines.append(f"grpc-message: {quote(details, safe=' ')}")
    for key, value in metadata:
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode()
        lines.append(f"{key}: {value}")
    return ("\r\n".join(lines) + "\r\n").encode()


class _Reply:
    """Writes frames in the request's encoding (binary or base64 text)."""

    def __init__(self, send, text: bool, cors: list[tuple[bytes, bytes]]):
        self.send = send
        self.text = text
        self.cors = cors
        self.started = False

    async def start(self, metadata=()) -> None:
        kind = b"application/grpc-web-text+proto" if self.text else b"application/grpc-web+proto"
        headers = [(b"content-type", kind), *self.cors]
        for key, value in metadata:
            if isinstance(value, bytes):
                value = base64.b64encode(value).decode()
            headers.append((key.encode(), str(value).encode()))
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        self.started = True

    async def write(self, flag: int, payload: bytes, last: bool = False) -> None:
        data = frame(flag, payload)
        if self.text:
            data = base64.b64encode(data)
        await self.send({"type": "http.response.body", "body": data, "more_body": not last})

    async def finish(self, code: grpc.StatusCode, details: str = "", metadata=()) -> None:
        if not self.started:
            await self.start()
        await self.write(_TRAILER_FLAG, trailer_block(code, details, metadata), last=True)


class GrpcWebGateway:
    """ASGI app: gRPC-Web in, native gRPC to `target` out."""

    def __init__(self, target: str, *, gateway_key: str, cors_origins: list[str],
                 max_message_bytes: int, playground: bool = False,
                 max_connections: int = 512, header_timeout_s: float = 10.0,
                 keepalive_s: float = 5.0):
        self.target = target
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.keepalive_s = keepalive_s
        self.playground = playground
        self.gateway_key = gateway_key
        self.cors_origins = cors_origins
        self.max_message_bytes = max_message_bytes
        self.methods = _methods()
        self._channel: grpc.aio.Channel | None = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None
        self.port: int | None = None

    # -- lifecycle ------------------------------------------------------------------
    async def start(self, host: str, port: int, *, tls_cert: str | None = None,
                    tls_key: str | None = None) -> int:
        limit = self.max_message_bytes + 1024
        self._channel = grpc.aio.insecure_channel(self.target, options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", -1)])
        # We bind the socket ourselves: on a bind error uvicorn would sys.exit()
        # inside its task, taking the whole server down without a message.
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as exc:
            raise RuntimeError(f"cannot bind gRPC-Web port {host}:{port}: {exc.strerror}") \
                from exc
        # proxy_headers off: X-Forwarded-For must not pick the address that
        # the per-client stream limit counts.
        # The connection limits (web_connections.py); h11's 16 KiB bound on a
        # request head stays as it is.
        protocol = LimitedH11Protocol.limits(self.max_connections, self.header_timeout_s)
        config = uvicorn.Config(self, lifespan="off", access_log=False, log_level="warning",
                                ssl_certfile=tls_cert, ssl_keyfile=tls_key, http=protocol,
                                timeout_keep_alive=self.keepalive_s,
                                proxy_headers=False, timeout_graceful_shutdown=1)
        self._server = _NoSignalsServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError(f"gRPC-Web port {host}:{port} did not start")
            await asyncio.sleep(0.01)
        self.port = sock.getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)
        if self._channel is not None:
            await self._channel.close()

    # -- ASGI -----------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        cors = self._cors_headers(headers.get("origin"))
        if scope["method"] == "OPTIONS":
            await self._preflight(send, headers, cors)
            return
        if scope["method"] in ("GET", "HEAD") and self.playground \
                and scope["path"] in _PLAYGROUND:
            await _static(send, scope["path"], head=scope["method"] == "HEAD")
            return
        content_type = headers.get("content-type", "")
        if scope["method"] != "POST" or not content_type.startswith("application/grpc-web"):
            await _plain(send, 415 if scope["method"] == "POST" else 405,
                         b"gRPC-Web only: POST with content-type application/grpc-web+proto",
                         cors)
            return
        reply = _Reply(send, text=content_type.startswith("application/grpc-web-text"),
                       cors=cors)
        path = scope["path"]
        if path not in self.methods:
            why = ("Converse is bidirectional streaming, which gRPC-Web cannot carry: "
                   "use Ask (one dialogue turn per call, same sessions and replies)"
                   if path.endswith("/Converse") else f"unknown method {path}")
            await reply.finish(grpc.StatusCode.UNIMPLEMENTED, why)
            return
        try:
            declared = _content_length(headers.get("content-length"))
            if declared is not None and declared > self._body_limit(reply.text):
                raise _TooLarge(self.max_message_bytes)  # refused unread
            message = await asyncio.wait_for(self._read_message(receive, reply.text),
                                             _BODY_TIMEOUT_S)
        except asyncio.TimeoutError:
            await reply.finish(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"request body not received within {_BODY_TIMEOUT_S:.0f} s")
            return
        except _TooLarge as exc:
            # The rest of the body is not read: the connection closes after this
            # (web_connections.py).
            await reply.finish(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            return
        except ValueError as exc:
            await reply.finish(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        await self._forward(scope, path, message, headers, reply, receive)

    def _cors_headers(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        if not origin or not self.cors_origins:
            return []
        if "*" not in self.cors_origins and origin not in self.cors_origins:
            return []
        return [(b"access-control-allow-origin", origin.encode()),
                (b"access-control-expose-headers", _EXPOSED.encode()),
                (b"vary", b"origin")]

    async def _preflight(self, send, headers, cors) -> None:
        if not cors:
            await _plain(send, 403, b"origin not allowed", [])
            return
        asked = headers.get("access-control-request-headers", "")
        await send({"type": "http.response.start", "status": 204, "headers": [
            *cors, (b"access-control-allow-methods", b"POST, OPTIONS"),
            (b"access-control-allow-headers", asked.encode()),
            (b"access-control-max-age", b"600")]})
        await send({"type": "http.response.body", "body": b""})

    def _body_limit(self, text: bool) -> int:
        """The largest body one message of max_message_bytes can arrive as: a 5-byte
        frame header, and base64 (4 characters per 3 bytes) in text mode."""
        framed = self.max_message_bytes + 5
        return -(-framed // 3) * 4 if text else framed

    async def _read_message(self, receive, text: bool) -> bytes:
        body = bytearray()
        limit = self._body_limit(text)
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                raise ValueError("client went away")
            body += event.get("body", b"")
            if len(body) > limit:  # no Content-Length (chunked), or it lied
                raise _TooLarge(self.max_message_bytes)
            if not event.get("more_body"):
                break
        data = bytes(body)
        if text:
            try:
                data = base64.b64decode(data, validate=True)
            except ValueError as exc:
                raise ValueError(f"grpc-web-text body is not base64: {exc}") from None
        if not data:
            return b""  # no frame at all: the empty request
        if len(data) < 5:
            raise ValueError(f"request frame cut short: {len(data)} of 5 header bytes")
        flag, length = struct.unpack(">BI", data[:5])
        if length > self.max_message_bytes:
            raise _TooLarge(self.max_message_bytes)
        if flag != 0:
            raise ValueError("compressed or trailer frames are not accepted in requests")
        if len(data) - 5 != length:
            raise ValueError(f"request frame says {length} bytes but {len(data) - 5} came; "
                             "one message per call")
        return data[5:]

    def _metadata(self, headers: dict[str, str], scope) -> list[tuple[str, str | bytes]]:
        out: list[tuple[str, str | bytes]] = []
        for key, value in headers.items():
            if key in _NOT_METADATA or key.startswith(("access-control-", ":", "grpc-")) \
                    or not _METADATA_KEY.match(key):
                continue
            if key.endswith("-bin"):
                try:
                    out.append((key, base64.b64decode(value)))
                except ValueError:
                    continue
            elif _METADATA_VALUE.match(value):
                out.append((key, value.strip()))
        client = scope.get("client")
        if client:
            host = client[0]
            peer = f"ipv6:[{host}]" if ":" in host else f"ipv4:{host}"
            out += [(GATEWAY_KEY_HEADER, self.gateway_key), (FORWARDED_PEER_HEADER, peer)]
        return out

    async def _forward(self, scope, path, message, headers, reply: _Reply, receive) -> None:
        timeout = parse_timeout(headers.get("grpc-timeout", ""))
        streaming = self.methods[path]
        factory = (self._channel.unary_stream if streaming else self._channel.unary_unary)
        # No (de)serializers: the gateway passes message bytes through untouched.
        call = factory(path)(
            message, timeout=timeout, metadata=self._metadata(headers, scope))
        # The client leaving (tab closed, headset asleep) cancels the native call.
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        watcher.add_done_callback(lambda _: call.cancel())
        try:
            await reply.start(await call.initial_metadata() or ())
            if streaming:
                async for response in call:
                    await reply.write(0, response)
            else:
                await reply.write(0, await call)
            await reply.finish(await call.code(), await call.details() or "",
                               await call.trailing_metadata() or ())
        except grpc.aio.AioRpcError as err:
            if not watcher.done():  # nobody to tell once the client has gone
                await reply.finish(err.code(), err.details() or "",
                                   err.trailing_metadata() or ())
        except asyncio.CancelledError:
            # grpc.aio raises this once the watcher cancelled the call: the
            # client left, nothing to answer. Anything else is a real cancel.
            if not watcher.done():
                raise
        except Exception:
            log.exception("gRPC-Web call %s failed in the gateway", path)
            call.cancel()
            if not watcher.done():
                await reply.finish(grpc.StatusCode.INTERNAL, "gRPC-Web gateway error")
        finally:
            watcher.cancel()


class _TooLarge(ValueError):
    """A request over max_message_bytes: RESOURCE_EXHAUSTED, as on the native port."""

    def __init__(self, limit: int):
        super().__init__(f"request message larger than this server's limit of {limit} "
                         "bytes (max_message_bytes)")


def _content_length(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


class _NoSignalsServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        # ArBridge owns SIGTERM/SIGINT (drain); uvicorn must not take them.
        yield


async def _wait_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _plain(send, status: int, body: bytes, cors) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), *cors]})
    await send({"type": "http.response.body", "body": body})


async def _static(send, path: str, head: bool) -> None:
    name, kind = _PLAYGROUND[path]
    body = resources.files("arbridge.playground").joinpath(name).read_bytes()
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", kind), (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-cache"), (b"x-content-type-options", b"nosniff"),
        # Its own files only, never framed; calls may go to any gRPC-Web server (?server=).
        (b"content-security-policy",
         b"default-src 'self'; connect-src *; frame-ancestors 'none'")]})
    await send({"type": "http.response.body", "body": b"" if head else body})


def new_gateway_key() -> str:
    return secrets.token_urlsafe(24)
