"""A user turn of a dialogue, begin to end: the one runner Ask and Converse share.

begin: compile the turn's rules, build its prompt, take the floor (a reply in
flight is interrupted: barge-in), start the reply. Then its responses, and at
its end (completed, interrupted, or the client gone) what the user heard joins
the dialogue's history, so the next turn's prompt holds it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from arbridge.generation import FinishReason
from arbridge.serving.calls import TurnCall
from arbridge.serving.delivery import Client, Delivery, event_of
from arbridge.serving.dialogue import Dialogue, Heard
from arbridge.serving.output import Reply
from arbridge.serving.replies import ReplyFactory


class TurnRunner:
    def __init__(self, replies: ReplyFactory, delivery: Delivery):
        self._replies = replies
        self._delivery = delivery

    async def begin(self, dialogue: Dialogue, call: TurnCall, client: Client) -> Reply | None:
        """Start `call`'s reply in `dialogue`, or None when a later turn overtook it
        while it waited for the floor (it is recorded as said and never answered).

        Anything that can fail (rules, the first prompt) happens before the reply in
        flight is interrupted, so a bad turn leaves the dialogue as it was. The prompt
        is built again whenever the history changed while the turn waited. If the
        backend refuses the reply (a full queue), an interrupted reply stays recorded
        as heard. On return the turn has the floor, `call.turn_id` is its id and the
        dialogue's scene is the turn's.
        """
        await self._replies.prepare(call)
        ticket = dialogue.take_ticket()
        revision = dialogue.state.revision
        prompt = await self._replies.turn_prompt(dialogue.state, call)
        while True:
            if not await dialogue.wait_for_floor(ticket):
                dialogue.overtaken(call.text)
                return None
            # No await from here to `claim`: no other turn can take the floor between.
            if dialogue.state.revision == revision:
                break
            revision = dialogue.state.revision
            prompt = await self._replies.turn_prompt(dialogue.state, call)
        call.arrived = time.perf_counter()  # its queue and first-token times start now
        reply = self._replies.start(prompt, call, client)
        dialogue.claim(reply)
        dialogue.state.scene = call.scene
        call.turn_id = dialogue.state.take_turn_id(call.turn_id)
        return reply

    def responses(self, dialogue: Dialogue, call: TurnCall, reply: Reply, client: Client,
                  response_type, resumable: bool, on_end: Callable[[], None] = lambda: None,
                  watch_client: bool = False, **fields) -> AsyncIterator:
        """The started turn's response messages; at the reply's end the dialogue hears
        it and `on_end()` runs. A resumable reply is opened in the stream store now and
        heard whole, whoever follows it. Otherwise what was delivered is heard: with
        `watch_client` (one call per turn: Ask) also when the client goes away, since
        grpc.aio may never resume a handler whose client left."""

        def record(heard: str) -> None:
            dialogue.end_turn(call.text, heard)
            on_end()

        if resumable:
            return self._delivery.responses(
                response_type, reply, client, True,
                lambda events: record(Heard.of(events).text), **fields)
        return self._live(reply, client, response_type, record, watch_client, **fields)

    async def _live(self, reply: Reply, client: Client, response_type,
                    record: Callable[[str], None], watch_client: bool, **fields):
        heard = Heard()
        finished = False

        def finish(_context=None) -> None:
            # Once, whether the reply ended, was interrupted or its client left.
            nonlocal finished
            if finished:
                return
            finished = True
            reply.cancel(FinishReason.CANCELLED)  # no-op for a reply that ended
            record(heard.text)

        if watch_client:
            client.context.add_done_callback(finish)
        try:
            async for message in self._delivery.responses(response_type, reply, client,
                                                          False, **fields):
                heard.add(event_of(message))
                yield message
        finally:
            finish()
