"""Scheduler step outputs -> TokenChunk and Completion messages.

One `SequenceOutput` per sequence does the text work the scheduler must not:
incremental detokenization, stop strings (which end the sequence early), and
the Completion with usage and timings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from arbridge.engine.async_engine import RequestStream
from arbridge.engine.detokenize import IncrementalDetokenizer, StopStringFilter
from arbridge.engine.requests import FinishReason, StepOutput
from arbridge.v1 import types_pb2 as pb

REASONS = {r: pb.FinishReason.Value(f"FINISH_REASON_{r.name}") for r in FinishReason}

Event = pb.TokenChunk | pb.Completion


@dataclass
class SequenceOutput:
    index: int
    detokenizer: IncrementalDetokenizer
    stops: StopStringFilter
    text: list[str] = field(default_factory=list)
    pending_ids: list[int] = field(default_factory=list)
    pending_logprob: float | None = None
    tokens: int = 0
    first_token_at: float | None = None
    done: bool = False


class OutputProcessor:
    def __init__(self, tokenizer, stream: RequestStream, arrived: float, prompt_tokens: int,
                 ground: Callable[[str], list[pb.GroundedSpan]] | None = None):
        cfg = stream.handle.sampling
        self._stream = stream
        self._arrived = arrived
        self._prompt_tokens = prompt_tokens
        self._seed = cfg.seed
        self._ground = ground
        prompt_ids = stream.handle.prompt_ids
        self._seqs = [SequenceOutput(i, IncrementalDetokenizer(tokenizer, prompt_ids),
                                     StopStringFilter(cfg.stop))
                      for i in range(cfg.num_return_sequences)]

    def process(self, out: StepOutput) -> Iterator[Event]:
        for index, token, logprob in out.tokens:
            seq = self._seqs[index]
            if seq.done:
                continue
            seq.tokens += 1
            if seq.first_token_at is None:
                seq.first_token_at = out.at
            seq.pending_ids.append(token)
            if logprob is not None:
                seq.pending_logprob = (seq.pending_logprob or 0.0) + logprob
            shown = seq.stops.push(seq.detokenizer.step(token))
            if shown:
                yield self._chunk(seq, shown)
            if seq.stops.matched is not None:
                self._stream.finish_sequence(index)
                yield self._complete(seq, FinishReason.STOP_SEQUENCE)
        for fin in out.finished:
            seq = self._seqs[fin.sequence_index]
            if seq.done:
                continue
            rest = seq.stops.push(seq.detokenizer.flush()) + seq.stops.flush()
            if rest:
                yield self._chunk(seq, rest)
            yield self._complete(seq, fin.reason, fin.error)

    def _chunk(self, seq: SequenceOutput, text: str) -> pb.TokenChunk:
        seq.text.append(text)
        chunk = pb.TokenChunk(sequence_index=seq.index, text=text, token_ids=seq.pending_ids)
        if seq.pending_logprob is not None:
            chunk.logprob = seq.pending_logprob
        seq.pending_ids, seq.pending_logprob = [], None
        return chunk

    def _complete(self, seq: SequenceOutput, reason: FinishReason,
                  error: str = "") -> pb.Completion:
        seq.done = True
        return build_completion(
            seq.index, reason, "".join(seq.text), prompt_tokens=self._prompt_tokens,
            completion_tokens=seq.tokens, seed=self._seed, arrived=self._arrived,
            started=self._stream.handle.started, first_token_at=seq.first_token_at,
            error=error, ground=self._ground)


def build_completion(index: int, reason: FinishReason, text: str, *, prompt_tokens: int,
                     completion_tokens: int, seed: int, arrived: float, started: float | None,
                     first_token_at: float | None, error: str = "",
                     ground: Callable[[str], list[pb.GroundedSpan]] | None = None
                     ) -> pb.Completion:
    """The final message of one sequence, whichever backend generated it."""
    now = time.perf_counter()
    return pb.Completion(
        sequence_index=index,
        finish_reason=REASONS[reason],
        usage=pb.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens),
        seed=seed,
        timings=pb.Timings(
            queue_ms=((started or now) - arrived) * 1e3,
            time_to_first_token_ms=((first_token_at or now) - arrived) * 1e3,
            total_ms=(now - arrived) * 1e3),
        text=text,
        error_message=error,
        grounding=ground(text) if ground else [],
    )
