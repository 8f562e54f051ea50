"""Ask: one dialogue turn per call, the dialogue kept between calls in a session.

For clients that cannot hold a bidirectional stream (browsers over gRPC-Web).
The first call starts a dialogue (`start`), later ones name its `session_id`;
the session is created only once a turn has started, so a refused first turn
leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from arbridge.generation import FinishReason
from arbridge.serving.calls import CallBuilder
from arbridge.serving.delivery import Client
from arbridge.serving.dialogue import Dialogue
from arbridge.serving.output import completion
from arbridge.serving.sessions import SessionNotFound, SessionStore
from arbridge.serving.streams import resumable
from arbridge.serving.turns import TurnRunner
from arbridge.serving.validation import InvalidField
from arbridge.v1 import service_pb2 as spb


class AskRoute:
    def __init__(self, calls: CallBuilder, sessions: SessionStore, turns: TurnRunner,
                 max_turns: int):
        self._calls = calls
        self._sessions = sessions
        self._turns = turns
        self._max_turns = max_turns

    async def __call__(self, request: spb.AskRequest,
                       client: Client) -> AsyncIterator[spb.AskResponse]:
        if not request.HasField("user_turn"):
            raise InvalidField("user_turn", "is required")
        session = None
        if request.session_id:
            session = self._sessions.get(request.session_id, client.owner)
            if session is None:
                raise SessionNotFound(request.session_id)
            dialogue = session.dialogue
        else:
            dialogue = Dialogue(self._calls.dialogue_start(request.start, "start"),
                                self._max_turns)
        # Checked before anything changes: a bad turn leaves the session as it was.
        scene = self._calls.ask_scene(request, dialogue.state)
        call = self._calls.turn_call(request.user_turn, dialogue.state, "user_turn", scene)
        reply = await self._turns.begin(dialogue, call, client)
        if reply is None:  # a newer turn of this session came first: it is answered
            yield spb.AskResponse(session_id=session.id, seq=1,
                                  completion=completion(0, FinishReason.INTERRUPTED))
            return
        # Started: from here on the turn counts (a full queue changed nothing).
        if session is None:
            session = self._sessions.create(dialogue, client.owner)
        async for response in self._turns.responses(
                dialogue, call, reply, client, spb.AskResponse, resumable(request.stream),
                on_end=lambda: self._sessions.touch(session), watch_client=True,
                session_id=session.id, turn_id=call.turn_id):
            yield response
