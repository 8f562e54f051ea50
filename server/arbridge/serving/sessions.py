"""Ask sessions: a dialogue kept between Ask calls, by session id.

Ask (one turn per call, for gRPC-Web clients) keeps a `Dialogue` per session id
in a SessionStore: bounded in number and in encoded bytes (least recently used
go first) and forgotten after a while idle, so abandoned browser tabs cannot
grow the server without limit.
A session belongs to the caller that started it (the bearer token's digest, as
for resumable streams): another caller's id is as unknown as a made-up one.
"""

from __future__ import annotations

import collections
import secrets
import time

from arbridge.serving.dialogue import Dialogue


class SessionNotFound(LookupError):
    """No such session for this caller (unknown, expired, or another caller's)."""


class AskSession:
    def __init__(self, session_id: str, owner: str, dialogue: Dialogue):
        self.id = session_id
        self.owner = owner  # the caller it belongs to (streams.caller_of)
        self.dialogue = dialogue
        self.size = dialogue.state.byte_size()
        self.last_used = 0.0

    @property
    def replying(self) -> bool:
        return not self.dialogue.idle.is_set()


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
        size = session.dialogue.state.byte_size()
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
            if old is not session and not old.replying:
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
            if not session.replying:  # one replying stays, however long it takes
                expired.append(session)
        for session in expired:
            self._drop(session)
