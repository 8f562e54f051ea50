"""Who asked, and how a reply's events reach them as numbered response messages.

A reply is delivered straight from its generation, or (resumable) through the
stream store, where it outlives the call and any Resume can follow it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from arbridge.serving.output import Event, Reply
from arbridge.serving.streams import ResumableStream, StreamStore, caller_of
from arbridge.v1 import types_pb2 as pb


@dataclass
class Client:
    """The caller of one RPC, as the serving side needs it."""

    context: object  # grpc.aio.ServicerContext (or the gRPC-Web gateway's)
    owner: str  # streams and sessions belong to it (streams.caller_of)
    peer: str  # its address, as the per-client limits and the scheduler see it
    # When the call came in: a reply's queue and first-token times count from here.
    arrived: float = field(default_factory=time.perf_counter)

    @classmethod
    def of(cls, context, peer_of: Callable[[object], str]) -> Client:
        return cls(context, caller_of(context.invocation_metadata()), peer_of(context))

    def timeout(self, margin_s: float) -> float | None:
        """Seconds left to the call's deadline, less `margin_s` (the last text must
        still reach the client); None without a deadline."""
        remaining = self.context.time_remaining()
        if remaining is None:
            return None
        return max(remaining - margin_s, 0.0)


def response(response_type, event: Event, **fields):
    """`event` as a `response_type` message (the three RPC responses share the shape)."""
    if isinstance(event, pb.TokenChunk):
        return response_type(chunk=event, **fields)
    if isinstance(event, pb.ActionCall):
        return response_type(action=event, **fields)
    return response_type(completion=event, **fields)


def event_of(message) -> Event:
    """The event a response message carries."""
    return getattr(message, message.WhichOneof("event"))


class Delivery:
    def __init__(self, streams: StreamStore):
        self.streams = streams

    def responses(self, response_type, reply: Reply, client: Client, resumable: bool,
                  on_done: Callable[[list[Event]], None] | None = None,
                  **fields) -> AsyncIterator:
        """The reply's events as `response_type` messages numbered by seq. A resumable
        one is opened in the stream store now (it is owned there even if nobody reads
        this iterator) and followed; `on_done(events)` runs at its end."""
        if not resumable:
            return self._direct(response_type, reply, **fields)
        stream = self.streams.open(client.owner, reply, reply.sequences,
                                   fields.get("session_id", ""), fields.get("turn_id", 0),
                                   on_done, peer=client.peer)
        return self.follow(response_type, stream, **fields)

    @staticmethod
    async def _direct(response_type, reply: Reply, **fields):
        seq = 0
        async for event in reply:
            seq += 1
            yield response(response_type, event, seq=seq, **fields)

    async def follow(self, response_type, stream: ResumableStream, after_seq: int = 0,
                     **fields):
        """`stream`'s events after `after_seq`; the first message names the stream."""
        first = True
        async for seq, event in self.streams.follow(stream, after_seq):
            yield response(response_type, event, seq=seq,
                           stream_id=stream.id if first else "", **fields)
            first = False
