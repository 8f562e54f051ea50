"""The gRPC-Web port's connection limits: what a public HTTP/1.1 port must bound.

uvicorn's HTTP/1.1 protocol (h11) times out only an idle keep-alive connection,
and that timer restarts on every byte: a connection that never sends a request,
or trickles its headers (slowloris), is held forever, and enough of them use up
the process's file descriptors, which native gRPC clients then cannot get. So
each connection here also has:

- a cap on open connections (`grpc_web_max_connections`): one past it is
  answered `503` and closed at once, so its descriptor is back straight away;
- a deadline for a request's head (`grpc_web_header_timeout_s`), counted from
  the connection's start or the end of its previous response and not restarted
  by trickled bytes: past it the connection gets `408` and is closed;
- no reuse of a connection whose request body was refused unread (a 64 MiB body
  is not read just to keep the connection; the answer is sent, then what still
  arrives is dropped for LINGER_S and the connection closes).

A failed `accept()` (out of descriptors) is logged once per interval, with a
count, instead of once per attempt (asyncio retries up to its backlog at once).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

# Descriptors kept for everything but gRPC-Web connections (native gRPC clients,
# the model's files, grpc's own pipes) when the cap is derived from the limit.
RESERVED_FDS = 64
LINGER_S = 2.0  # how long the rest of a refused request body is read and dropped
_REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
            b"retry-after: 1\r\nconnection: close\r\ncontent-length: 39\r\n\r\n"
            b"too many connections; retry in a moment")
_TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n"
              b"content-length: 0\r\n\r\n")


class ConnectionLimitError(ValueError):
    """grpc_web_max_connections cannot work with this process's open-file limit."""


def open_file_limit(raise_soft: bool = True) -> int:
    """The process's open-file limit, first raised to the hard limit where the soft
    one is lower (as most servers do: 1024 is a shell default, not a sizing)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if raise_soft and hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(configured: int | None, fd_limit: int) -> int:
    """`configured`, or half of the descriptors (at most 4096) when unset; a cap the
    descriptors cannot reach is a configuration error (they would run out first)."""
    usable = fd_limit - RESERVED_FDS
    if configured is None:
        return max(1, min(4096, fd_limit // 2, usable))
    if configured > usable:
        raise ConnectionLimitError(
            f"grpc_web_max_connections = {configured} needs more open files than this "
            f"process may have ({fd_limit}, {RESERVED_FDS} of them kept for the rest of the "
            "server): lower it or raise `ulimit -n`")
    return configured


class RateLimitedLog:
    """One log line per `interval_s` for a repeating event, with how often it came."""

    def __init__(self, interval_s: float = 10.0, clock=time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self._last = -float("inf")
        self.suppressed = 0

    def __call__(self, level: int, message: str, *args) -> bool:
        now = self.clock()
        if now - self._last < self.interval_s:
            self.suppressed += 1
            return False
        if self.suppressed:
            message += f" ({self.suppressed} more since the last report)"
        log.log(level, message, *args)
        self._last, self.suppressed = now, 0
        return True


def accept_error_handler(loop: asyncio.AbstractEventLoop, interval_s: float = 10.0):
    """An exception handler for `loop` that reports accept() running out of
    resources once per interval and passes everything else on unchanged."""
    previous = loop.get_exception_handler()
    report = RateLimitedLog(interval_s)

    def handle(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if context.get("message") == "socket.accept() out of system resource":
            exc = context.get("exception")
            report(logging.ERROR, "cannot accept connections: %s (the open-file limit, "
                   "`ulimit -n`, is reached)", exc)
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    return handle


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap and a request-head deadline.
    `limits(cap, header_timeout_s)` makes the class uvicorn instantiates."""

    max_connections = 0
    header_timeout_s = 10.0
    _refusals = RateLimitedLog()

    @classmethod
    def limits(cls, max_connections: int, header_timeout_s: float) -> type[LimitedH11Protocol]:
        return type("LimitedH11Protocol", (cls,), {
            "max_connections": max_connections, "header_timeout_s": header_timeout_s,
            "_refusals": RateLimitedLog()})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        self._lingering = False
        self._refused = len(self.connections) >= self.max_connections
        if self._refused:
            self._refusals(logging.WARNING, "gRPC-Web: %d connections open "
                           "(grpc_web_max_connections): refusing new ones with 503",
                           len(self.connections))
            transport.write(_REFUSED)
            transport.close()
            return
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused or self._lingering:
            return  # the rest of a refused body: dropped unread
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a request's head arrived whole
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        if self.conn.their_state is h11.SEND_BODY:
            # Refused before its body was read (too large): reading the rest only to
            # keep the connection is what a client sending 64 MiB wants. A lingering
            # close, as web servers do: our side ends, what still arrives is dropped
            # for a moment, then the socket closes. Closing at once with unread bytes
            # would send a reset that can destroy the answer before the client reads it.
            self._lingering = True
            self.flow.resume_reading()  # uvicorn paused it at 64 KiB of unread body
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
            return
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_head()  # the next request's head, on a kept-alive connection

    def _await_head(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_late)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.our_state is not h11.IDLE or \
                self.conn.their_state is not h11.IDLE:
            return  # a request is being answered: its own timeouts apply
        self.transport.write(_TIMED_OUT)
        self.transport.close()
