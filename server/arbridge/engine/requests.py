"""What passes between the servicers and the scheduler thread.

A `RequestHandle` is created on the asyncio side, handed to the scheduler, and
shared by both: the scheduler writes progress into `sink`, the servicer may
cancel the request or stop single sequences at any time (plain attribute
writes, read by the scheduler before each step).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from arbridge.generation import FinishReason, SamplingConfig, SequenceEnd


@dataclass
class StepOutput:
    """What one scheduler step produced for one request."""

    # (sequence_index, token_id, logprob or None), in sequence order.
    tokens: list[tuple[int, int, float | None]] = field(default_factory=list)
    finished: list[SequenceEnd] = field(default_factory=list)
    at: float = field(default_factory=time.perf_counter)


_ids = itertools.count(1)


@dataclass(eq=False)
class RequestHandle:
    prompt_ids: list[int]
    sampling: SamplingConfig
    sink: Callable[[StepOutput], None]
    deadline: float | None = None  # time.perf_counter() value; None = none
    # The call's id (x-request-id), so the scheduler thread's log lines name it.
    request_id: str = field(default_factory=lambda: f"engine-{next(_ids)}")
    started: float | None = None  # set by the scheduler when prefill begins
    cancel_reason: FinishReason | None = None
    _stopped: set[int] = field(default_factory=set, repr=False)  # see stop_sequence
    # Dense features, (encoder, vector) in order: their projections fill the
    # first `prefix_len` positions of the prompt (prompt_ids holds placeholders).
    features: list[tuple[str, list[float]]] = field(default_factory=list)
    prefix_len: int = 0
    peer: str = ""  # the client's address: the scheduler shares turns between clients
    # Set by the servicer while nobody reads the reply (a detached resumable one): the
    # scheduler parks it, KV and all, until it is cleared.
    paused: bool = False
    # The scheduler's wake-up, for changes it must see while the request is parked.
    wake: Callable[[], None] = field(default=lambda: None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def cancel(self, reason: FinishReason = FinishReason.CANCELLED) -> None:
        """Stop every sequence at the next step; the scheduler reports `reason`."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self.wake()  # a parked request is not stepped: the scheduler may be asleep

    def pause(self) -> None:
        """Stop generating (keeping all state) until `resume`."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.wake()

    def stop_sequence(self, index: int) -> None:
        """The servicer finished this sequence itself (stop string): drop it."""
        with self._lock:
            self._stopped.add(index)
        self.wake()  # a parked request holds its KV until the scheduler sees this

    def stopped_sequences(self) -> set[int]:
        """The sequences `stop_sequence` ended so far (a copy: the servicer adds more)."""
        with self._lock:
            return set(self._stopped)
