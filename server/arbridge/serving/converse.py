"""Converse: one bidirectional stream, one dialogue, replies one at a time.

A reader task takes the client's messages (start, scene updates and deltas,
user turns, cancel); replies run in a task of their own and send through one
outbox, which the RPC drains. A user turn arriving mid-reply interrupts it
(barge-in, turns.py), exactly as an Ask turn does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from arbridge.generation import FinishReason
from arbridge.serving.calls import CallBuilder
from arbridge.serving.delivery import Client
from arbridge.serving.dialogue import Dialogue, DialogueState
from arbridge.serving.output import Reply
from arbridge.serving.status import DRAINING, Abort
from arbridge.serving.streams import resumable
from arbridge.serving.turns import TurnRunner
from arbridge.serving.validation import InvalidField
from arbridge.v1 import service_pb2 as spb


class ConverseSession:
    def __init__(self, calls: CallBuilder, turns: TurnRunner, max_turns: int,
                 draining: asyncio.Event, client: Client):
        self._calls = calls
        self._turns = turns
        self._max_turns = max_turns
        self._draining = draining  # set when the server drains: idle sessions end
        self._client = client
        self._started = False
        self._dialogue = Dialogue(DialogueState(), max_turns)
        self._outbox: asyncio.Queue = asyncio.Queue()
        self._reply: Reply | None = None
        self._reply_task: asyncio.Task | None = None
        self._resumable = False  # ConverseStart.stream: every reply outlives the stream

    def _replying(self) -> bool:
        return self._reply_task is not None and not self._reply_task.done()

    async def run(self, requests) -> AsyncIterator[spb.ConverseResponse]:
        reader = asyncio.create_task(self._read(requests))
        drain = asyncio.ensure_future(self._draining.wait())
        try:
            while True:
                if drain.done() and not self._replying() and self._outbox.empty():
                    # The reply in flight (if any) has been delivered whole: an idle
                    # session ends at once, and its client reconnects elsewhere.
                    raise Abort(grpc.StatusCode.UNAVAILABLE, DRAINING)
                get = asyncio.ensure_future(self._outbox.get())
                # Also wake when draining starts, or (draining) when the reply ends.
                waits = {get}
                if not drain.done():
                    waits.add(drain)
                elif self._replying():
                    waits.add(self._reply_task)
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    continue
                item = get.result()
                if item is None:  # reader finished and the last reply is done
                    break
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            drain.cancel()
            reader.cancel()
            if self._reply is not None and not self._resumable:
                self._reply.cancel(FinishReason.CANCELLED)  # even if its task never ran
            if self._reply_task is not None:
                self._reply_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read(self, requests) -> None:
        try:
            index = 0
            async for req in requests:
                await self._handle(req, index)
                index += 1
            if self._reply_task is not None:
                await self._reply_task
            await self._outbox.put(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._outbox.put(exc)

    async def _handle(self, req: spb.ConverseRequest, index: int) -> None:
        kind = req.WhichOneof("event")
        field = f"request[{index}].{kind}"
        state = self._dialogue.state
        if kind is None:
            raise InvalidField(f"request[{index}].event", "is empty")
        if kind == "start":
            if self._started or index != 0:
                raise InvalidField(field, "only the first message may start the session")
            self._dialogue = Dialogue(self._calls.dialogue_start(req.start, "start"),
                                      self._max_turns)
            self._resumable = resumable(req.start.stream)
        elif kind == "scene_update":
            state.scene = self._calls.scene(req.scene_update, field)
        elif kind == "scene_delta":
            state.scene = self._calls.scene_delta(state.scene, req.scene_delta, field)
        elif kind == "cancel":
            if self._reply is not None:
                self._reply.cancel(FinishReason.CANCELLED)
        elif kind == "user_turn":
            await self._user_turn(req.user_turn, field)
        self._started = True

    async def _user_turn(self, turn: spb.UserTurn, field: str) -> None:
        if self._draining.is_set():
            raise Abort(grpc.StatusCode.UNAVAILABLE, DRAINING)
        call = self._calls.turn_call(turn, self._dialogue.state, field)
        # Turns are read one at a time here, so none is ever overtaken.
        reply = await self._turns.begin(self._dialogue, call, self._client)
        if reply is None:
            return
        self._reply = reply
        responses = self._turns.responses(self._dialogue, call, reply, self._client,
                                          spb.ConverseResponse, self._resumable,
                                          turn_id=call.turn_id)
        self._reply_task = asyncio.create_task(self._forward(responses))

    async def _forward(self, responses) -> None:
        try:
            async for response in responses:
                await self._outbox.put(response)
        except Exception as exc:
            await self._outbox.put(exc)
