"""The words every layer shares about one generation, without torch.

The servicer builds a `SamplingConfig`, a backend (local engine or upstream)
decodes by it, and each sequence ends with a `SequenceEnd` carrying a
`FinishReason`. Nothing here imports the engine at run time, so the servicer
and the upstream backend can use these types on a machine without torch's
weight: the engine's rule types are named for readers and type checkers only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # engine types (grammar.py imports torch): annotations only
    from arbridge.engine.constraints import BannedWords, CaptionRules
    from arbridge.engine.grammar import TokenGrammar


class FinishReason(enum.Enum):
    """Mirrors arbridge.v1.FinishReason (the engine does not import protos)."""

    LENGTH = 1
    EOS = 2
    STOP_SEQUENCE = 3
    CANCELLED = 4
    INTERRUPTED = 5
    TIME_LIMIT = 6
    ERROR = 7
    SHUTDOWN = 8  # the server stopped before the reply ended


@dataclass
class SequenceEnd:
    """One sequence of a request ended."""

    index: int
    reason: FinishReason
    error: str = ""
    # Set when the backend knows the count better than one per token (upstream usage).
    completion_tokens: int | None = None


@dataclass(frozen=True)
class SamplingConfig:
    """How a backend decodes one request (checked from SamplingParams by the servicer).

    Only what decoding reads: text rules applied to the reply (stop strings,
    sentence limits) stay with the servicer's reply spec (serving/calls.py).
    """

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off
    seed: int = 0
    num_return_sequences: int = 1
    logprobs: bool = False
    # Benchmarks only (not in the contract): run to max_new_tokens through EOS,
    # so every contender generates the same number of tokens.
    ignore_eos: bool = False
    no_repeat_ngram: int = 0  # 0/1 = off (see engine/constraints.py)
    # Logit rules the servicer compiles for the request's scene and format; only a
    # backend with `constraints` / `grammars` (the local engine) gets them.
    banned: BannedWords | None = None  # nouns the scene does not hold
    caption_rules: CaptionRules | None = None  # what a caption may say after a name
    grammar: TokenGrammar | None = None  # response_format or actions
    # The reply's tokens, in order, ending with EOS: a reply the servicer computed
    # (scene_questions.py answers, caption_plan.py captions), spoken word for word:
    # the local engine holds the model to them, the upstream backend streams them.
    forced: tuple[int, ...] = ()

    @property
    def constrained(self) -> bool:
        return (self.no_repeat_ngram > 1 or self.banned is not None
                or self.caption_rules is not None or self.grammar is not None
                or bool(self.forced))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
