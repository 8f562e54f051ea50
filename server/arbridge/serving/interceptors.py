"""What every call goes through, whatever its method: one interceptor per job.

`chain()` lists them outermost first, as TGI composes its list:

1. `RequestId`: the call's id (from `x-request-id` or fresh), echoed in the
   initial metadata and set for every log line the call causes;
2. `AccessLog`: Prometheus counters and one access-log line with the final status;
3. `Drain`: counts ArBridge calls in flight; once shutdown begins they get
   UNAVAILABLE;
4. `Auth`: bearer tokens (UNAUTHENTICATED); health and reflection may stay open;
5. `PeerLimit`: concurrent streams per client address (RESOURCE_EXHAUSTED);
6. `Decode`: request bytes that do not parse get INVALID_ARGUMENT naming the
   message, instead of grpc's generic error.

Each one is a `guard` (an async context manager around the call) that `_Guarded`
wraps around the method's own handler, so the method's behaviour and cardinality
are kept.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import inspect
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from arbridge.logs import REQUEST_ID
from arbridge.metrics import Metrics
from arbridge.security import TokenChecker
from arbridge.serving.validation import InvalidField

# Metadata the in-process gRPC-Web gateway adds to the calls it forwards.
GATEWAY_KEY_HEADER = "x-arbridge-gateway"
FORWARDED_PEER_HEADER = "x-arbridge-forwarded-peer"

log = logging.getLogger("arbridge.access")

REQUEST_ID_KEY = "x-request-id"
ARBRIDGE_PREFIX = "/arbridge.v1.ArBridgeService/"
# Infrastructure methods: may be left open (--public-health), not drained, not
# counted against a peer's stream limit.
INFRA_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                  "/grpc.reflection.v1.ServerReflection/")
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")
# A stream lives in one server's memory: it cannot be resumed elsewhere.
RESUME_DRAINING = ("server is shutting down and its replies end with it: ask again on "
                   "another replica (a Resume there finds no such stream)")


@dataclass
class Call:
    """What a guard knows about the call it wraps."""

    method: str
    context: grpc.aio.ServicerContext
    request_streaming: bool
    response_streaming: bool
    request: object = None  # a unary call's request (a stream's messages come later)

    @property
    def arbridge(self) -> bool:
        return self.method.startswith(ARBRIDGE_PREFIX)

    @property
    def infra(self) -> bool:
        return self.method.startswith(INFRA_PREFIXES)

    @property
    def metadata(self):
        return self.context.invocation_metadata() or ()


class _Guarded(grpc.aio.ServerInterceptor):
    """Runs `guard(call)` around every call's handler (the one re-wrap helper)."""

    def guard(self, call: Call) -> contextlib.AbstractAsyncContextManager:
        raise NotImplementedError

    def wrap_requests(self, requests, call: Call):
        return requests  # Decode checks each message of a request stream

    def wrap_deserializer(self, deserialize):
        return deserialize

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None  # unknown method: grpc answers UNIMPLEMENTED
        field = ("stream_" if handler.request_streaming else "unary_") + (
            "stream" if handler.response_streaming else "unary")
        behavior = getattr(handler, field)
        method = details.method
        streaming_in, streaming_out = handler.request_streaming, handler.response_streaming

        if inspect.isasyncgenfunction(behavior):
            async def wrapped(request, context):
                call = Call(method, context, streaming_in, streaming_out,
                            None if streaming_in else request)
                async with self.guard(call):
                    async for response in behavior(self.wrap_requests(request, call), context):
                        yield response
        else:
            async def wrapped(request, context):
                call = Call(method, context, streaming_in, streaming_out,
                            None if streaming_in else request)
                async with self.guard(call):
                    return await behavior(self.wrap_requests(request, call), context)

        return handler._replace(
            request_deserializer=self.wrap_deserializer(handler.request_deserializer),
            **{field: wrapped})


# How long a refused request-streaming call waits for the client's first message,
# and how many such waits may be pending at once (past that, refused at once).
FIRST_MESSAGE_WAIT_S = 2.0
MAX_PENDING_REFUSALS = 64
_pending_refusals = 0


async def _refuse(call: Call, code: grpc.StatusCode, details: str) -> None:
    """`call.context.abort(code, details)`, but for a request-streaming call only once
    the client's first message is in (or FIRST_MESSAGE_WAIT_S has passed). A call ended
    while the client's first write is still in flight fails that write, and grpc's
    Python client then reports INTERNAL "Internal error from Core" instead of `code`
    (grpc/grpc#36066). Later messages can still race; the first is what every
    refused Converse sends."""
    global _pending_refusals
    if call.request_streaming and _pending_refusals < MAX_PENDING_REFUSALS:
        _pending_refusals += 1
        try:
            with contextlib.suppress(Exception):  # EOF, an unreadable message, the wait
                await asyncio.wait_for(call.context.read(), FIRST_MESSAGE_WAIT_S)
        finally:
            _pending_refusals -= 1
    await call.context.abort(code, details)


class RequestId(_Guarded):
    @contextlib.asynccontextmanager
    async def guard(self, call: Call):
        given = next((v for k, v in call.metadata if k == REQUEST_ID_KEY), None)
        request_id = given if isinstance(given, str) and _SAFE_REQUEST_ID.match(given) \
            else uuid.uuid4().hex[:16]
        REQUEST_ID.set(request_id)
        await call.context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
        yield


class AccessLog(_Guarded):
    def __init__(self, metrics: Metrics, peers: PeerLimit):
        self.metrics = metrics
        self.peers = peers  # whose view of the client address the log line shows

    @contextlib.asynccontextmanager
    async def guard(self, call: Call):
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        # Read while the call is alive: on a call whose connection was reset while its
        # handler waited, context.peer() can kill the process (SIGSEGV in grpc 1.85).
        peer = self.peers.peer_of(call)
        self.metrics.open_rpcs.labels(call.method).inc()
        try:
            yield
            code = _call_code(call.context) or grpc.StatusCode.OK
        except grpc.aio.AbortError:
            code = _call_code(call.context) or grpc.StatusCode.UNKNOWN
            raise
        except (asyncio.CancelledError, GeneratorExit):
            remaining = call.context.time_remaining()
            code = grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and \
                remaining <= 0 else grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.UNKNOWN
            log.exception("unhandled error in %s", call.method)
            raise
        finally:
            self.metrics.open_rpcs.labels(call.method).dec()
            self.metrics.rpcs.labels(call.method, code.name).inc()
            ms = (time.perf_counter() - started) * 1e3
            log.log(logging.DEBUG if call.infra else logging.INFO, "%s %s %.1f ms %s",
                    call.method, code.name, ms, peer,
                    extra={"method": call.method, "code": code.name,
                           "duration_ms": round(ms, 1), "peer": peer})


class Drain(_Guarded):
    """ArBridge calls in flight, and the refusal of new ones once draining."""

    def __init__(self):
        self.draining = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def inflight(self) -> int:
        return self._inflight

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no ArBridge call is in progress; False if time ran out."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    @contextlib.asynccontextmanager
    async def guard(self, call: Call):
        if not call.arbridge:
            yield
            return
        self._inflight += 1
        self._idle.clear()
        try:
            if self.draining:
                await _refuse(call, grpc.StatusCode.UNAVAILABLE,
                              RESUME_DRAINING if call.method.endswith("/Resume")
                              else "server is shutting down; retry on another replica")
            yield
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()


class Auth(_Guarded):
    def __init__(self, tokens: TokenChecker, public_infra: bool):
        self.tokens = tokens
        self.public_infra = public_infra

    @contextlib.asynccontextmanager
    async def guard(self, call: Call):
        if self.tokens.enabled and not (call.infra and self.public_infra):
            problem = self.tokens.check(call.metadata)
            if problem is not None:
                await _refuse(call, grpc.StatusCode.UNAUTHENTICATED, problem)
        yield


def _peer_key(peer: str) -> str:
    """'ipv4:10.0.0.7:53211' -> 'ipv4:10.0.0.7' (the client, not the connection)."""
    head, sep, _port = peer.rpartition(":")
    return head if sep and head and not head.endswith(":") else peer


class PeerLimit(_Guarded):
    """At most `max_streams` streaming ArBridge calls per client address at once."""

    def __init__(self, max_streams: int):
        self.max_streams = max_streams
        # Set when the gRPC-Web gateway runs: its calls carry this key and the
        # browser's address, which then counts as the peer (see grpc_web.py).
        self.gateway_key: str | None = None
        self.open: collections.Counter[str] = collections.Counter()

    def peer_of(self, call: Call) -> str:
        if self.gateway_key is not None:
            values = dict(call.metadata)
            key, forwarded = values.get(GATEWAY_KEY_HEADER), values.get(FORWARDED_PEER_HEADER)
            if isinstance(key, str) and isinstance(forwarded, str) and hmac.compare_digest(
                    key.encode(), self.gateway_key.encode()):
                return _peer_key(forwarded + ":0")
        return _peer_key(call.context.peer() or "")

    @contextlib.asynccontextmanager
    async def guard(self, call: Call):
        if not (call.arbridge and call.response_streaming):
            yield
            return
        peer = self.peer_of(call)
        if self.open[peer] >= self.max_streams:
            await _refuse(
                call, grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{peer} already has {self.open[peer]} streams open; at most "
                f"{self.max_streams} per client")
        self.open[peer] += 1
        try:
            yield
        finally:
            self.open[peer] -= 1
            if self.open[peer] <= 0:
                del self.open[peer]


class _Undecodable:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, type_name: str, error: Exception):
        self.message = f"request: not a valid {type_name} message ({error})"


class Decode(_Guarded):
    def wrap_deserializer(self, deserialize):
        if deserialize is None:
            return None
        owner = getattr(deserialize, "__self__", None)
        type_name = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "request")

        def parse(data: bytes):
            try:
                return deserialize(data)
            except Exception as exc:  # protobuf raises DecodeError, but be total
                return _Undecodable(type_name, exc)

        return parse

    def wrap_requests(self, requests, call: Call):
        if call.request_streaming:
            return _checked_stream(requests)
        return requests

    @contextlib.asynccontextmanager
    async def guard(self, call: Call):
        if isinstance(call.request, _Undecodable):
            await call.context.abort(grpc.StatusCode.INVALID_ARGUMENT, call.request.message)
        try:
            yield
        except InvalidField as exc:  # a bad message in a request stream, not ArBridge's
            await call.context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))


async def _checked_stream(requests) -> AsyncIterator:
    """A request stream whose undecodable messages end the call as INVALID_ARGUMENT."""
    index = 0
    async for request in requests:
        if isinstance(request, _Undecodable):
            raise InvalidField(f"request[{index}]", request.message.removeprefix("request: "))
        yield request
        index += 1


_CODES = {c.value[0]: c for c in grpc.StatusCode}


def _call_code(context) -> grpc.StatusCode | None:
    code = context.code()
    if code is None or isinstance(code, grpc.StatusCode):
        return code
    return _CODES.get(code)


@dataclass
class Interceptors:
    """The chain, and the parts the server talks to (drain, peer limit, auth)."""

    drain: Drain
    peers: PeerLimit
    auth: Auth
    chain: list[grpc.aio.ServerInterceptor]


def chain(tokens: TokenChecker, metrics: Metrics, *, public_infra: bool,
          max_streams_per_peer: int) -> Interceptors:
    drain, peers = Drain(), PeerLimit(max_streams_per_peer)
    auth = Auth(tokens, public_infra)
    return Interceptors(drain, peers, auth,
                        [RequestId(), AccessLog(metrics, peers), drain, auth, peers, Decode()])
