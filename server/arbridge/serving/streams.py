"""Resumable replies: a reply that outlives its connection, replayed by sequence number.

A headset changes networks mid-caption. A reply asked for with
`StreamOptions.resumable` runs in a task of its own (not in the RPC handler) and
appends every event, numbered 1, 2, 3, ..., to a buffer. The RPC that asked for
it, and later any `Resume(stream_id, after_seq)`, follow that buffer: the events
after `after_seq` at once, then the rest as they come, each once and in order.

When the last follower goes (the connection dropped, or the call was cancelled:
the transport reports both the same way), the reply generates
`resume_detached_tokens` more tokens (so a client that comes back soon gets them
at once) and is then paused in the engine, which parks it: a reply nobody reads
holds no slot and costs no compute. A follower coming back resumes it. If nobody
comes back within `resume_grace_s`, it is cancelled and forgotten.
A finished reply is kept the same grace time, so a client cut off just before its
Completion still gets it. `CancelStream` ends a reply at once.

Memory is bounded twice: a reply whose events pass `resume_stream_bytes` stops
generating (its followers get a CANCELLED Completion saying so), and when all
buffers together pass `resume_total_bytes`, the replies nobody follows are
dropped, the longest unfollowed first.

A stream belongs to the caller that opened it (the bearer token's digest when
tokens are on): another caller's Resume gets PERMISSION_DENIED.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from arbridge.generation import FinishReason
from arbridge.serving.output import Event, Reply, completion
from arbridge.v1 import types_pb2 as pb

log = logging.getLogger(__name__)


class StreamNotFound(LookupError):
    pass


class StreamForbidden(PermissionError):
    pass


def caller_of(metadata) -> str:
    """Who is calling, as far as streams care: a digest of the bearer token (the auth
    interceptor has already accepted it; read the way it reads it), '' without one."""
    for key, value in metadata or ():
        if key == "authorization":
            _, _, token = str(value).partition(" ")
            return hashlib.sha256(token.strip().encode("utf-8")).hexdigest()
    return ""


@dataclass(eq=False)
class ResumableStream:
    id: str
    owner: str
    reply: Reply
    sequences: int  # Completions that end the reply (num_return_sequences)
    session_id: str = ""
    turn_id: int = 0
    events: list[tuple[int, Event]] = field(default_factory=list)  # (seq, event)
    bytes: int = 0
    done: bool = False
    peer: str = ""  # where it was opened from (the per-client cap of unfollowed streams)
    followed: bool = False  # its newest follower is still reading
    delivered: bool = False  # some follower was handed its first event (the stream_id)
    error: Exception | None = None  # the reply failed before any event: a status to send
    left_at: float = 0.0  # when the last follower went (or it opened, unfollowed)
    task: asyncio.Task | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _expiry: asyncio.TimerHandle | None = None
    _taken_over: int = 0  # bumped when a new follower takes over from an old one
    detached_tokens: int = 0  # generated since its last follower left
    paused: bool = False  # asked to pause: nobody follows and it generated its share

    def _append(self, event: Event) -> None:
        self.events.append((len(self.events) + 1, event))
        self.bytes += event.ByteSize()
        self._changed.set()

    async def follow(self, after_seq: int, mine: int) -> AsyncIterator[tuple[int, Event]]:
        """(seq, event) after `after_seq`: what is buffered, then live, to the end.
        A newer follower (`_taken_over` past `mine`) takes over: an older one (a
        connection not yet known dead) stops."""
        next_index = after_seq
        while True:
            while next_index < len(self.events):
                if self._taken_over != mine:
                    return
                self.delivered = True
                yield self.events[next_index]
                next_index += 1
            if self.error is not None and not self.events:
                raise self.error
            if self.done or self._taken_over != mine:
                return
            self._changed.clear()
            await self._changed.wait()


class StreamStore:
    def __init__(self, grace_s: float, stream_bytes: int, total_bytes: int,
                 unfollowed_per_peer: int = 16, detached_tokens: int = 32):
        self.grace_s = grace_s
        self.detached_tokens = detached_tokens
        self.stream_bytes = stream_bytes
        self.total_bytes = total_bytes
        # A client that opens and drops resumable replies in a loop must not hold the
        # engine with them: past this many of its own unfollowed, its oldest goes.
        self.unfollowed_per_peer = unfollowed_per_peer
        self._streams: dict[str, ResumableStream] = {}
        self.bytes = 0
        self.resumed = 0  # Resume calls that found their stream (for /metrics)

    def __len__(self) -> int:
        return len(self._streams)

    def open(self, owner: str, reply: Reply, sequences: int, session_id: str = "",
             turn_id: int = 0, on_done: Callable[[list[Event]], None] | None = None,
             peer: str = "") -> ResumableStream:
        """Start `reply` in a task of its own; it runs to its end or its expiry."""
        stream = ResumableStream(secrets.token_urlsafe(16), owner, reply, sequences,
                                 session_id, turn_id, peer=peer)
        idle = sorted((s for s in self._streams.values() if s.peer == peer and not s.followed),
                      key=lambda s: s.left_at)
        for old in idle[:max(0, len(idle) - self.unfollowed_per_peer + 1)]:
            log.info("%s holds %d unfollowed resumable replies: dropping %s", peer or "a client",
                     len(idle), old.id)
            self._drop(old)
        self._streams[stream.id] = stream
        stream.task = asyncio.create_task(self._produce(stream, on_done))
        self._unfollowed(stream)  # until its caller follows it
        return stream

    def get(self, stream_id: str, owner: str) -> ResumableStream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise StreamNotFound(stream_id)
        if not secrets.compare_digest(stream.owner, owner):
            raise StreamForbidden(stream_id)
        return stream

    def cancel(self, stream_id: str, owner: str) -> None:
        self._drop(self.get(stream_id, owner))

    def unfollowed(self) -> int:
        """Replies kept for a client that left (they end with this server)."""
        return sum(1 for stream in self._streams.values() if not stream.followed)

    def close(self) -> None:
        for stream in list(self._streams.values()):
            self._drop(stream)

    async def follow(self, stream: ResumableStream, after_seq: int
                     ) -> AsyncIterator[tuple[int, Event]]:
        """Follow `stream` as its newest follower (an older one stops at its next event
        and no longer counts: its connection is as good as gone)."""
        stream._taken_over += 1
        mine = stream._taken_over
        stream.followed = True
        if stream._expiry is not None:
            stream._expiry.cancel()
            stream._expiry = None
        if stream.paused:
            stream.paused = False
            stream.reply.resume()
        try:
            async for item in stream.follow(after_seq, mine):
                yield item
        finally:
            if stream._taken_over == mine and stream.id in self._streams:
                stream.followed = False
                if not stream.delivered:
                    # Gone before its first event: nobody has the stream_id to resume
                    # with, so this was a cancel as far as anyone can tell.
                    self._drop(stream)
                else:
                    self._unfollowed(stream)

    def _unfollowed(self, stream: ResumableStream) -> None:
        stream.left_at = time.monotonic()
        stream.detached_tokens = 0
        self._pause_if_detached(stream)
        stream._expiry = asyncio.get_running_loop().call_later(self.grace_s, self._expire,
                                                               stream)

    def _pause_if_detached(self, stream: ResumableStream) -> None:
        if not stream.followed and not stream.paused and not stream.done and \
                stream.detached_tokens >= self.detached_tokens:
            stream.paused = True
            stream.reply.pause()

    async def _produce(self, stream: ResumableStream,
                       on_done: Callable[[list[Event]], None] | None) -> None:
        try:
            async for event in stream.reply:
                self._add(stream, event)
                if not stream.followed and isinstance(event, pb.TokenChunk):
                    stream.detached_tokens += max(1, len(event.token_ids))
                    self._pause_if_detached(stream)
                if stream.bytes > self.stream_bytes and not stream.done:
                    stream.reply.cancel(FinishReason.CANCELLED)
                    self._end_open_sequences(stream, "resume buffer full "
                                             f"({self.stream_bytes} bytes per stream)")
                    break
        except asyncio.CancelledError:
            self._end_open_sequences(stream, "stream dropped")
            raise
        except Exception as exc:
            if not stream.events:  # its follower turns it into the gRPC status (busy, ...)
                stream.error = exc
            else:  # too late for a status: the open sequences end with an error
                log.exception("resumable stream %s failed", stream.id)
                self._end_open_sequences(stream, f"{type(exc).__name__}: {exc}",
                                         FinishReason.ERROR)
        finally:
            stream.done = True
            stream._changed.set()
            if on_done is not None:
                on_done([e for _, e in stream.events])

    def _add(self, stream: ResumableStream, event: Event) -> None:
        before = stream.bytes
        stream._append(event)
        if stream.id in self._streams:  # a dropped stream's last events count nowhere
            self.bytes += stream.bytes - before
            if self.bytes > self.total_bytes:
                self._make_room(keep=stream)

    def _end_open_sequences(self, stream: ResumableStream, why: str,
                            reason: FinishReason = FinishReason.CANCELLED) -> None:
        ended = {e.sequence_index for _, e in stream.events if isinstance(e, pb.Completion)}
        for index in range(stream.sequences):
            if index not in ended:  # with the text so far: a session records it
                text = "".join(e.text for _, e in stream.events
                               if isinstance(e, pb.TokenChunk) and e.sequence_index == index)
                calls = [e for _, e in stream.events
                         if isinstance(e, pb.ActionCall) and e.sequence_index == index]
                self._add(stream, stream.reply.dressed(
                    completion(index, reason, text, error=why, actions=calls)))

    def _make_room(self, keep: ResumableStream) -> None:
        """Drop unfollowed streams, longest unfollowed first, until under budget."""
        idle = sorted((s for s in self._streams.values()
                       if not s.followed and s is not keep),
                      key=lambda s: s.left_at)
        for stream in idle:
            if self.bytes <= self.total_bytes:
                break
            log.info("resume buffers over %d bytes: dropping stream %s",
                     self.total_bytes, stream.id)
            self._drop(stream)

    def _expire(self, stream: ResumableStream) -> None:
        if not stream.followed:
            self._drop(stream)

    def _drop(self, stream: ResumableStream) -> None:
        if self._streams.pop(stream.id, None) is None:
            return
        self.bytes -= stream.bytes
        if stream._expiry is not None:
            stream._expiry.cancel()
        # Even when done here: the engine may still hold it (a paused reply whose
        # sequences the output side ended); cancelling twice changes nothing.
        stream.reply.cancel(FinishReason.CANCELLED)
        # A follower still attached (CancelStream while it reads) gets the reply's
        # CANCELLED end at the engine's next step, through the producer.
        stream._changed.set()


def resumable(options: pb.StreamOptions | None) -> bool:
    return bool(options is not None and options.resumable)
