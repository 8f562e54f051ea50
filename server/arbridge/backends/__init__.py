"""What generates the text: the local engine, or an upstream engine over HTTP.

The servicer builds the prompt and validates; a backend turns a prompt into a
`Generation`: an async iterator of backend-neutral `Outputs` (new token ids or
text per sequence, and sequence ends) that can be cancelled (barge-in, client
gone) at any time. Text work (detokenizing, stop strings), metrics and the
protobuf messages are the servicer's (`serving.output.OutputProcessor`), the same
for every backend. Backends raise the errors below; the servicer maps them to
gRPC statuses.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from arbridge.generation import FinishReason, SamplingConfig, SequenceEnd

if TYPE_CHECKING:  # torch-heavy: annotations only (the upstream backend has none)
    from arbridge.engine.soft_prompts import ProjectorSet
    from arbridge.models.loader import ModelInfo


@dataclass
class Prompt:
    """What a backend is asked to continue (built by serving/prompts.py)."""

    ids: list[int]
    # The text the ids were made from, for backends that take text (upstream
    # engines); `special_tokens` says whether the tokenizer added BOS etc.
    text: str = ""
    special_tokens: bool = True
    dropped_turns: int = 0
    # Dense features (encoder, vector) whose projections take the first
    # `prefix_len` positions; `ids` starts with that many placeholders.
    features: list[tuple[str, list[float]]] = field(default_factory=list)
    prefix_len: int = 0

    def with_prefix(self, features: list[tuple[str, list[float]]], prefix_len: int,
                    placeholder: int) -> Prompt:
        return Prompt([placeholder] * prefix_len + self.ids, self.text, self.special_tokens,
                      self.dropped_turns, list(features), prefix_len)


class BackendUnavailable(RuntimeError):
    """The upstream engine is down, unreachable or failed mid-stream (UNAVAILABLE)."""


class BackendBusy(RuntimeError):
    """The backend is full: the local queue or an overloaded upstream
    (RESOURCE_EXHAUSTED with a retry hint)."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTooLarge(ValueError):
    """The request could never fit this server's memory, even alone (INVALID_ARGUMENT,
    naming the field to lower)."""


class BackendRefused(RuntimeError):
    """The upstream engine refused the request as configured (FAILED_PRECONDITION)."""


@dataclass
class Delta:
    """New output of one sequence: a token id (local engine) or text (upstream)."""

    index: int
    token_id: int | None = None
    text: str | None = None
    logprob: float | None = None


@dataclass
class Outputs:
    """What one step (local) or one upstream chunk produced for a request."""

    deltas: list[Delta] = field(default_factory=list)
    ends: list[SequenceEnd] = field(default_factory=list)
    at: float = field(default_factory=time.perf_counter)


class Generation(Protocol):
    started: float | None  # when generating began (after any queueing)

    def cancel(self, reason: FinishReason = FinishReason.CANCELLED) -> None: ...

    def stop_sequence(self, index: int) -> None:
        """The output processor ended this sequence (a stop string matched)."""

    def pause(self) -> None:
        """Nobody reads the outputs for now: stop generating, keep the state (a backend
        that cannot may go on)."""

    def resume(self) -> None:
        """Go on after `pause`."""

    def __aiter__(self) -> AsyncIterator[Outputs]: ...


class Backend(Protocol):
    info: ModelInfo
    tokenizer: object
    projectors: ProjectorSet | None  # what dense features this backend can take
    constraints: bool  # applies SamplingConfig.banned / no_repeat_ngram (local engine)
    grammars: bool  # applies SamplingConfig.grammar (response_format, actions)
    vocab_size: int  # the width of the model's logits (a grammar mask's width)

    def unsupported(self, cfg: SamplingConfig) -> list[tuple[str, str]]:
        """(sampling field, why) for each parameter this backend cannot honour."""

    def generate(self, prompt: Prompt, cfg: SamplingConfig, *,
                 timeout_s: float | None, client: str = "") -> Generation:
        """Start generating (raises BackendBusy when full); `client` (the caller's
        address) lets an engine share its turns fairly between clients."""

    @property
    def load(self) -> tuple[int, int]:
        """(generating, waiting) requests, for the metrics."""

    async def close(self) -> None: ...
