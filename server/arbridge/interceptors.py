"""One server interceptor for what every call goes through, whatever its method.

In order: request id (from `x-request-id` or fresh, echoed in the initial
metadata), drain (ArBridge calls refused with UNAVAILABLE once shutdown has
begun), bearer-token auth (UNAUTHENTICATED), the per-peer stream limit
(RESOURCE_EXHAUSTED), undecodable request bytes (INVALID_ARGUMENT instead of
grpc's generic error), then metrics and one access-log line with the final
status. It wraps the method's own handler, so cardinalities are kept.
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

import grpc

from arbridge.logs import REQUEST_ID
from arbridge.metrics import Metrics
from arbridge.security import TokenChecker
from arbridge.validation import InvalidField

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


class _Undecodable:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, type_name: str, error: Exception):
        self.message = f"request: not a valid {type_name} message ({error})"


def _safe_deserializer(deserialize):
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


def _peer_key(peer: str) -> str:
    """'ipv4:10.0.0.7:53211' -> 'ipv4:10.0.0.7' (the client, not the connection)."""
    head, sep, _port = peer.rpartition(":")
    return head if sep and head and not head.endswith(":") else peer


class CallInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: TokenChecker, metrics: Metrics, *, public_infra: bool,
                 max_streams_per_peer: int):
        self.tokens = tokens
        self.metrics = metrics
        self.public_infra = public_infra
        self.max_streams_per_peer = max_streams_per_peer
        self.draining = False
        # Set when the gRPC-Web gateway runs: its calls carry this key and the
        # browser's address, which then counts as the peer (see grpc_web.py).
        self.gateway_key: str | None = None
        self._per_peer: collections.Counter[str] = collections.Counter()
        self._inflight = 0  # ArBridge calls in progress
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no ArBridge call is in progress; False if time ran out."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    @property
    def inflight(self) -> int:
        return self._inflight

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None  # unknown method: grpc answers UNIMPLEMENTED
        method = details.method
        behavior_field = ("stream_" if handler.request_streaming else "unary_") + (
            "stream" if handler.response_streaming else "unary")
        behavior = getattr(handler, behavior_field)
        wrapped = self._wrap(behavior, method, handler.request_streaming,
                             streaming_response=handler.response_streaming)
        return handler._replace(
            request_deserializer=_safe_deserializer(handler.request_deserializer),
            **{behavior_field: wrapped})

    def _wrap(self, behavior, method: str, request_streaming: bool, streaming_response: bool):
        guard = self._guard

        def requests(request_or_iterator):
            if request_streaming:
                return _checked_stream(request_or_iterator)
            return request_or_iterator

        if inspect.isasyncgenfunction(behavior):
            async def wrapped_gen(request, context):
                async with guard(method, context, streaming_response):
                    if isinstance(request, _Undecodable):
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
                    async for response in behavior(requests(request), context):
                        yield response
            return wrapped_gen

        async def wrapped(request, context):
            async with guard(method, context, streaming_response):
                if isinstance(request, _Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
                return await behavior(requests(request), context)
        return wrapped

    def _peer(self, transport_peer: str, metadata) -> str:
        if self.gateway_key is not None:
            values = dict(metadata)
            key, forwarded = values.get(GATEWAY_KEY_HEADER), values.get(FORWARDED_PEER_HEADER)
            if isinstance(key, str) and isinstance(forwarded, str) and hmac.compare_digest(
                    key.encode(), self.gateway_key.encode()):
                return _peer_key(forwarded + ":0")
        return _peer_key(transport_peer)

    @contextlib.asynccontextmanager
    async def _guard(self, method: str, context, streaming: bool):
        started = time.perf_counter()
        metadata = context.invocation_metadata() or ()
        given = next((v for k, v in metadata if k == REQUEST_ID_KEY), None)
        request_id = given if isinstance(given, str) and _SAFE_REQUEST_ID.match(given) \
            else uuid.uuid4().hex[:16]
        REQUEST_ID.set(request_id)
        infra = method.startswith(INFRA_PREFIXES)
        arbridge = method.startswith(ARBRIDGE_PREFIX)
        peer = self._peer(context.peer() or "", metadata)
        counted = False
        code = grpc.StatusCode.OK
        self.metrics.open_rpcs.labels(method).inc()
        if arbridge:
            self._inflight += 1
            self._idle.clear()
        try:
            await context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
            if arbridge and self.draining:
                await context.abort(grpc.StatusCode.UNAVAILABLE,
                                    "server is shutting down; retry on another replica")
            if self.tokens.enabled and not (infra and self.public_infra):
                problem = self.tokens.check(metadata)
                if problem is not None:
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)
            if arbridge and streaming:
                if self._per_peer[peer] >= self.max_streams_per_peer:
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"{peer} already has {self._per_peer[peer]} streams open; at most "
                        f"{self.max_streams_per_peer} per client")
                self._per_peer[peer] += 1
                counted = True
            yield
            code = _call_code(context) or grpc.StatusCode.OK
        except grpc.aio.AbortError:
            code = _call_code(context) or grpc.StatusCode.UNKNOWN
            raise
        except InvalidField as exc:  # undecodable bytes on a non-ArBridge stream
            code = grpc.StatusCode.INVALID_ARGUMENT
            await context.abort(code, str(exc))
        except (asyncio.CancelledError, GeneratorExit):
            remaining = context.time_remaining()
            code = grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and \
                remaining <= 0 else grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.UNKNOWN
            log.exception("unhandled error in %s", method)
            raise
        finally:
            self.metrics.open_rpcs.labels(method).dec()
            self.metrics.rpcs.labels(method, code.name).inc()
            if counted:
                self._per_peer[peer] -= 1
                if self._per_peer[peer] <= 0:
                    del self._per_peer[peer]
            if arbridge:
                self._inflight -= 1
                if self._inflight == 0:
                    self._idle.set()
            ms = (time.perf_counter() - started) * 1e3
            log.log(logging.DEBUG if infra else logging.INFO, "%s %s %.1f ms %s", method,
                    code.name, ms, peer, extra={"method": method, "code": code.name,
                                                "duration_ms": round(ms, 1), "peer": peer})


async def _checked_stream(requests):
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
