"""Dialogue state, and the sessions that keep it between Ask calls.

Converse keeps a DialogueState for as long as its stream lives. Ask (one turn
per call, for gRPC-Web clients) keeps one per session id in a SessionStore:
bounded in number (least recently used go first) and forgotten after a while
idle, so abandoned browser tabs cannot grow the server without limit.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import time
from dataclasses import dataclass, field

from arbridge.v1 import types_pb2 as pb


@dataclass
class DialogueState:
    system_prompt: str = ""
    sampling: pb.SamplingParams = field(default_factory=pb.SamplingParams)
    scene: pb.SceneFeatures | None = None
    history: list[pb.DialogueTurn] = field(default_factory=list)
    next_turn_id: int = 1

    def take_turn_id(self, asked: int) -> int:
        """The client's id when it chose one, else the next number."""
        turn_id = asked or self.next_turn_id
        self.next_turn_id = turn_id + 1
        return turn_id

    def record(self, user_text: str, reply_text: str, max_turns: int) -> None:
        """What the user heard (even if interrupted) becomes history."""
        self.history.append(pb.DialogueTurn(role=pb.ROLE_USER, text=user_text))
        self.history.append(pb.DialogueTurn(role=pb.ROLE_ASSISTANT, text=reply_text))
        if len(self.history) > max_turns:
            self.history = self.history[-max_turns:]


class AskSession:
    def __init__(self, session_id: str, state: DialogueState):
        self.id = session_id
        self.state = state
        self.reply = None  # the Generation streaming now, for barge-in
        self.idle = asyncio.Event()  # set while no reply is streaming
        self.idle.set()


class SessionStore:
    def __init__(self, max_sessions: int, idle_seconds: float, clock=time.monotonic):
        self.max_sessions = max_sessions
        self.idle_seconds = idle_seconds
        self.clock = clock
        self._sessions: collections.OrderedDict[str, tuple[AskSession, float]] = \
            collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, state: DialogueState) -> AskSession:
        self._expire()
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)  # the least recently used
        session = AskSession(secrets.token_urlsafe(18), state)
        self._sessions[session.id] = (session, self.clock())
        return session

    def get(self, session_id: str) -> AskSession | None:
        self._expire()
        entry = self._sessions.get(session_id)
        if entry is None:
            return None
        self._sessions[session_id] = (entry[0], self.clock())
        self._sessions.move_to_end(session_id)
        return entry[0]

    def _expire(self) -> None:
        cutoff = self.clock() - self.idle_seconds
        while self._sessions:
            _, (session, last) = next(iter(self._sessions.items()))
            if last >= cutoff or not session.idle.is_set():
                break
            self._sessions.popitem(last=False)
