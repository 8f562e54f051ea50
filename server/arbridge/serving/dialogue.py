"""A dialogue: its state, who has the floor, and what the user heard.

Converse keeps a `Dialogue` for as long as its stream lives; Ask keeps one per
session (sessions.py). Turns are run by turns.py, for both.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from arbridge.generation import FinishReason
from arbridge.v1 import service_pb2 as spb
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

    @classmethod
    def from_start(cls, start: spb.ConverseStart,
                   scene: pb.SceneFeatures | None) -> DialogueState:
        """A new dialogue's state from a checked ConverseStart, copied out of the
        request (it outlives the call); `scene` is its checked scene."""
        state = cls(system_prompt=start.system_prompt, scene=scene,
                    history=[pb.DialogueTurn(role=t.role, text=t.text) for t in start.history],
                    actions=[pb.ActionDefinition.FromString(a.SerializeToString())
                             for a in start.actions],
                    action_mode=start.action_mode)
        state.sampling.CopyFrom(start.sampling)
        return state

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
    """One dialogue's state and the reply streaming now, if any (who has the floor).

    Barge-in: a new turn takes a ticket, interrupts the reply in flight and waits
    for the floor (`wait_for_floor`); the newest ticket wins, so a turn overtaken
    by a later one while it waited never starts.
    """

    def __init__(self, state: DialogueState, max_turns: int):
        self.state = state
        self.max_turns = max_turns  # history kept, in turns (Settings.max_dialogue_turns)
        self.reply: _Cancellable | None = None
        self.idle = asyncio.Event()  # set while no reply is streaming
        self.idle.set()
        self._tickets = 0  # turns begun: the newest one wins

    def take_ticket(self) -> int:
        self._tickets += 1
        return self._tickets

    async def wait_for_floor(self, ticket: int) -> bool:
        """Interrupt the reply in flight (INTERRUPTED) and wait until its end is
        recorded. True when the dialogue is idle and `ticket` is still the newest
        turn; False when a later turn came meanwhile. True returns with no await
        after seeing the dialogue idle: the caller may claim it before anyone else."""
        while not self.idle.is_set():
            if self._tickets != ticket:
                return False
            if self.reply is not None:
                self.reply.cancel(FinishReason.INTERRUPTED)
            await self.idle.wait()
        return self._tickets == ticket

    def claim(self, reply: _Cancellable) -> None:
        """`reply` has the floor until `end_turn`."""
        self.reply = reply
        self.idle.clear()

    def end_turn(self, user_text: str, heard: str) -> None:
        """The reply ended (completed, interrupted, or the client left): what the user
        heard of it joins the history, and the next turn may start."""
        self.state.record(user_text, heard, self.max_turns)
        self.reply = None
        self.idle.set()

    def overtaken(self, user_text: str) -> None:
        """A turn a later one overtook before it started: said, never answered."""
        self.state.record(user_text, "", self.max_turns)


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
