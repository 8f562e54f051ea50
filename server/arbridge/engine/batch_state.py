"""The scheduler's records of what is in flight, and one turn as plain data.

A `Request` is admitted work; its prompt (or, after a preemption, one sequence's
prompt and reply so far) is read by a `Reader`, and each sequence that decodes
is a `Slot`. A turn is planned as a `TurnPlan` (scheduler.py) and computed into
`TurnOutputs` (turn_executor.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from arbridge.engine.prefill_policy import PromptState
from arbridge.engine.requests import RequestHandle
from arbridge.engine.speculation import DraftLength


@dataclass(eq=False)
class Request:
    handle: RequestHandle
    generator: torch.Generator
    seen: torch.Tensor  # [n, vocab] bool: tokens in prompt or output (repetition penalty)
    arrival: int = 0  # admission order: the newest is preempted first
    generated: int = 0  # tokens generated per sequence so far
    done: list[bool] = field(default_factory=list)
    slots: dict[int, Slot] = field(default_factory=dict)  # sequence index -> its sequence
    readers: list[Reader] = field(default_factory=list)  # token runs being prefilled
    prefix: torch.Tensor | None = None  # [prefix_len, hidden] soft-prompt embeddings

    @property
    def n(self) -> int:
        return self.handle.sampling.num_return_sequences

    @property
    def prompt_len(self) -> int:
        return len(self.handle.prompt_ids)

    @property
    def blocks(self) -> list[int]:
        """Every block it holds (a block shared by its sequences appears once each)."""
        return [b for slot in self.slots.values() for b in slot.blocks] + \
            [b for reader in self.readers for b in reader.blocks]


@dataclass(eq=False)
class Reader:
    """Tokens being prefilled into blocks: the prompt (for every sequence), or after
    a preemption one sequence's prompt and reply so far (`index`)."""

    req: Request
    ids: list[int]
    index: int | None
    state: PromptState  # the prefill policy's view
    blocks: list[int] = field(default_factory=list)
    done: int = 0  # tokens whose KV is in `blocks`


@dataclass(eq=False)
class Slot:
    """One sequence that decodes: which request and sequence, its last token, its blocks."""

    req: Request
    index: int
    last_id: int = 0
    generated: list[int] = field(default_factory=list)  # the reply's tokens so far
    blocks: list[int] = field(default_factory=list)
    length: int = 0  # tokens whose KV is in `blocks`
    draft_length: DraftLength | None = None  # prompt-lookup drafts' size, if it drafts


@dataclass
class TurnPlan:
    """One turn, decided before anything runs (plain data): which token ranges are
    read in which forward passes, which sequences decode. Every block they write
    is already theirs."""

    prefill: list[list[tuple[Reader, int]]] = field(default_factory=list)  # passes
    decode: list[Slot] = field(default_factory=list)
    # Per decode row, the tokens it guesses follow its last one (speculation.py):
    # read in the same pass and kept as far as the model agrees. Empty: none.
    drafts: list[list[int]] = field(default_factory=list)
    prefill_work: float = 0.0  # in the policy's units, for the measured speed


@dataclass
class TurnOutputs:
    """What the passes computed: the last logits of readers now done, the decode rows'."""

    finished_reading: list[tuple[Reader, torch.Tensor]] = field(default_factory=list)
    decode_logits: torch.Tensor | None = None  # [rows, 1 + longest draft, vocab]
    prefill_s: float = 0.0
