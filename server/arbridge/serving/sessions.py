"""Dialogues: their state, the turn runner both dialogue RPCs share, and the
sessions that keep a dialogue between Ask calls.

Converse keeps a `Dialogue` for as long as its stream lives. Ask (one turn per
call, for gRPC-Web clients) keeps one per session id in a SessionStore: bounded
in number and in encoded bytes (least recently used go first) and forgotten after
a while idle, so abandoned browser tabs cannot grow the server without limit.
A session belongs to the caller that started it (the bearer token's digest, as
for resumable streams): another caller's id is as unknown as a made-up one.
Barge-in (a new turn interrupting the reply in flight) is `Dialogue.begin_turn`,
for both.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from arbridge.engine.requests import FinishReason
from arbridge.v1 import types_pb2 as pb


@dataclass
class DialogueState:
    system_prompt: str = ""
    sampling: pb.SamplingParams = field(default_factory=pb.SamplingParams)
    scene: pb.SceneFeatures | None = None
    history: list[pb.DialogueTurn] = field(default_factory=list)
    next_turn_id: int = 1
    revision: int = 0  # bumped whenever the history changes
    actions: list[pb.ActionDefinition] = field(default_factory=list)  # ConverseStart.actions
    action_mode: int = pb.ACTION_MODE_UNSPECIFIED

    def with_scene(self, scene: pb.SceneFeatures | None) -> DialogueState:
        """The same dialogue seen with another scene (for checking a turn)."""
        return DialogueState(self.system_prompt, self.sampling, scene, list(self.history),
                             self.next_turn_id, self.revision, self.actions, self.action_mode)

    def byte_size(self) -> int:
        """Roughly what it holds in memory, for the session store's budget: text in
        encoded bytes (a character of an emoji-heavy transcript is 4 of them)."""
        return (_utf8_len(self.system_prompt) + self.sampling.ByteSize() +
                (self.scene.ByteSize() if self.scene is not None else 0) +
                sum(_utf8_len(t.text) + 8 for t in self.history) +
                sum(a.ByteSize() for a in self.actions))

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
        self.revision += 1


def _utf8_len(text: str) -> int:
    # Lone surrogates cannot come from protobuf strings, but must not raise here.
    return len(text.encode("utf-8", "surrogatepass"))


class _Cancellable(Protocol):
    def cancel(self, reason: FinishReason = FinishReason.CANCELLED) -> None: ...


class Dialogue:
    """One dialogue's state and the reply streaming now, if any."""

    def __init__(self, state: DialogueState):
        self.state = state
        self.reply: _Cancellable | None = None
        self.idle = asyncio.Event()  # set while no reply is streaming
        self.idle.set()
        self._turns = 0  # turns begun: a ticket per turn, so the newest one wins

    async def begin_turn(self, build: Callable[[DialogueState], Awaitable[object]],
                         start: Callable[[object], _Cancellable]) -> _Cancellable | None:
        """Start a user turn's reply: `build(state)` makes its prompt, `start(prompt)`
        the reply (it may raise, e.g. a full queue).

        The first build happens before anything is interrupted, so a turn that fails
        to build leaves the dialogue as it was. A reply in flight is then cancelled
        as INTERRUPTED (barge-in) and awaited until `end_turn` has recorded it; the
        prompt is built again whenever the history changed meanwhile. If `start`
        raises after a barge-in, the interrupted reply stays recorded as heard.

        The newest turn wins: a turn overtaken by a later one while it waited returns
        None without starting (the caller reports it as interrupted).

        Invariant: from seeing the dialogue idle with a prompt built on its current
        history to claiming it (`idle.clear()`) there is no await, so two turns
        arriving together can never both start, nor one miss the other's reply.
        """
        self._turns += 1
        ticket = self._turns
        revision = self.state.revision
        prompt = await build(self.state)
        while True:
            while not self.idle.is_set():
                if self._turns != ticket:
                    return None
                if self.reply is not None:
                    self.reply.cancel(FinishReason.INTERRUPTED)
                await self.idle.wait()
            if self._turns != ticket:
                return None
            if self.state.revision == revision:
                break
            revision = self.state.revision
            prompt = await build(self.state)
        reply = start(prompt)
        self.reply = reply
        self.idle.clear()
        return reply

    def end_turn(self, user_text: str, heard: str, max_turns: int) -> None:
        """The reply ended (completed, interrupted, or the client left): what the user
        heard of it joins the history, and the next turn may start."""
        self.state.record(user_text, heard, max_turns)
        self.reply = None
        self.idle.set()


class Heard:
    """What the user has received of a reply's first sequence: the chunks so far,
    or the Completion's text once it came."""

    def __init__(self):
        self._parts: list[str] = []

    @classmethod
    def of(cls, events) -> Heard:
        """What a whole reply said (a resumable reply, recorded at its end)."""
        heard = cls()
        for event in events:
            heard.add(event)
        return heard

    def add(self, event) -> None:
        if event.sequence_index != 0:
            return
        if isinstance(event, pb.TokenChunk):
            self._parts.append(event.text)
        elif isinstance(event, pb.Completion):
            self._parts = [event.text]

    @property
    def text(self) -> str:
        return "".join(self._parts)


class AskSession(Dialogue):
    def __init__(self, session_id: str, owner: str, dialogue: Dialogue):
        super().__init__(dialogue.state)
        self.reply, self.idle, self._turns = dialogue.reply, dialogue.idle, dialogue._turns
        self.id = session_id
        self.owner = owner  # the caller it belongs to (streams.caller_of)
        self.size = self.state.byte_size()
        self.last_used = 0.0


class SessionStore:
    """Sessions by id, least recently used first; bounded in count and bytes."""

    def __init__(self, max_sessions: int, idle_seconds: float, max_bytes: int,
                 clock=time.monotonic):
        self.max_sessions = max_sessions
        self.idle_seconds = idle_seconds
        self.max_bytes = max_bytes
        self.clock = clock
        self.bytes = 0
        self._sessions: collections.OrderedDict[str, AskSession] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, dialogue: Dialogue, owner: str) -> AskSession:
        """Keep `dialogue` (its reply may already be streaming) under a fresh id, for
        `owner` alone."""
        session = AskSession(secrets.token_urlsafe(18), owner, dialogue)
        self._sessions[session.id] = session
        self.bytes += session.size
        self.touch(session)
        return session

    def get(self, session_id: str, owner: str) -> AskSession | None:
        """`owner`'s session `session_id`; None when there is none, it expired, or it
        is another caller's (the answer must not tell those apart)."""
        self._expire()
        session = self._sessions.get(session_id)
        if session is None or not secrets.compare_digest(session.owner, owner):
            return None
        self.touch(session)
        return session

    def touch(self, session: AskSession) -> None:
        """Used now (its size may have changed): most recent, then enforce the bounds."""
        if session.id not in self._sessions:
            return  # evicted meanwhile: nothing to account
        size = session.state.byte_size()
        self.bytes += size - session.size
        session.size = size
        session.last_used = self.clock()
        self._sessions.move_to_end(session.id)
        self._expire()
        if len(self._sessions) <= self.max_sessions and self.bytes <= self.max_bytes:
            return
        # Over a bound: drop the least recently used sessions that are not replying
        # (never the one just used).
        count, total, victims = len(self._sessions), self.bytes, []
        for old in self._sessions.values():
            if count <= self.max_sessions and total <= self.max_bytes:
                break
            if old is not session and old.idle.is_set():
                victims.append(old)
                count, total = count - 1, total - old.size
        for old in victims:
            self._drop(old)

    def _drop(self, session: AskSession) -> None:
        del self._sessions[session.id]
        self.bytes -= session.size

    def _expire(self) -> None:
        # Oldest first: the walk stops at the first session used recently enough.
        cutoff = self.clock() - self.idle_seconds
        expired = []
        for session in self._sessions.values():
            if session.last_used >= cutoff:
                break
            if session.idle.is_set():  # one replying stays, however long it takes
                expired.append(session)
        for session in expired:
            self._drop(session)
