"""What generates the text: the local engine, or an upstream engine over HTTP.

The servicer builds the prompt and validates; a backend turns a prompt into a
`Generation`: an async iterator of TokenChunk / Completion messages that can
be cancelled (barge-in, client gone) at any time. Backends raise the errors
below; the servicer maps them to gRPC statuses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

from arbridge.engine.loader import ModelInfo
from arbridge.engine.projector import ProjectorSet
from arbridge.engine.requests import FinishReason
from arbridge.engine.sampling import SamplingConfig
from arbridge.prompts import Prompt
from arbridge.streaming import Event
from arbridge.v1 import types_pb2 as pb

Grounder = Callable[[str], list[pb.GroundedSpan]]


class BackendUnavailable(RuntimeError):
    """The upstream engine is down, unreachable or failed mid-stream (UNAVAILABLE)."""


class BackendBusy(RuntimeError):
    """The upstream engine is overloaded (RESOURCE_EXHAUSTED with a retry hint)."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BackendRefused(RuntimeError):
    """The upstream engine refused the request as configured (FAILED_PRECONDITION)."""


class Generation(Protocol):
    def cancel(self, reason: FinishReason = FinishReason.CANCELLED) -> None: ...

    def __aiter__(self) -> AsyncIterator[Event]: ...


class Backend(Protocol):
    info: ModelInfo
    tokenizer: object
    projectors: ProjectorSet | None  # what dense features this backend can take

    def unsupported(self, cfg: SamplingConfig) -> list[tuple[str, str]]:
        """(sampling field, why) for each parameter this backend cannot honour."""

    def generate(self, prompt: Prompt, cfg: SamplingConfig, *, arrived: float,
             timeout_s: float | None, ground: Grounder | None) -> Generation:
        """Start generating (raises QueueFull / BackendBusy when full)."""

    @property
    def load(self) -> tuple[int, int]:
        """(generating, waiting) requests, for the metrics."""

    async def close(self) -> None: ...
