"""Backend outputs -> TokenChunk and Completion messages, for every backend.

One `OutputProcessor` per request does the text work neither the scheduler nor
an upstream engine should: incremental detokenization of token ids (UTF-8
safe, primed with the prompt), stop strings (which end a sequence early), the
latency and token metrics, and each sequence's Completion with usage and
timings. `Reply` ties it to a running `Generation` and adds what every
Completion of the reply reports (grounding, scene version, referents).
`completion` is the one place a Completion is made.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from arbridge.backends import Generation, Outputs
from arbridge.generation import FinishReason
from arbridge.metrics import Metrics
from arbridge.serving.actions import ActionSplitter
from arbridge.serving.calls import ReplySpec
from arbridge.serving.detokenize import (
    CaptionEnd,
    IncrementalDetokenizer,
    SentenceCounter,
    StopStringFilter,
)
from arbridge.serving.grounding import ground, planned
from arbridge.serving.lexicon import names_of
from arbridge.v1 import types_pb2 as pb

REASONS = {r: pb.FinishReason.Value(f"FINISH_REASON_{r.name}") for r in FinishReason}

Event = pb.TokenChunk | pb.Completion | pb.ActionCall


def completion(index: int, reason: FinishReason, text: str = "", *, error: str = "",
               actions=(), usage: pb.Usage | None = None, seed: int = 0,
               timings: pb.Timings | None = None) -> pb.Completion:
    """A sequence's end as the client receives it (a Reply adds what its request
    reports: `Reply.dressed`)."""
    return pb.Completion(sequence_index=index, finish_reason=REASONS[reason], text=text,
                         error_message=error, actions=actions, usage=usage, seed=seed,
                         timings=timings)


def caption_names(objects) -> list[set[str]]:
    """Each distinct label's names, for ending a caption once all are named."""
    labels = sorted({o.label.strip().lower() for o in objects or ()})
    return [names_of(label) for label in labels]


@dataclass
class _Sequence:
    index: int
    stops: StopStringFilter
    sentences: SentenceCounter
    caption_end: CaptionEnd | None = None
    actions: ActionSplitter | None = None  # a reply that may call scene actions
    detokenizer: IncrementalDetokenizer | None = None  # made on the first token id
    text: list[str] = field(default_factory=list)
    pending_ids: list[int] = field(default_factory=list)
    pending_logprob: float | None = None
    tokens: int = 0
    first_token_at: float | None = None
    done: bool = False


class OutputProcessor:
    def __init__(self, tokenizer, prompt_ids: list[int], spec: ReplySpec, metrics: Metrics):
        """`spec.continues_prompt`: the reply continues the prompt's text (Generate), so
        the detokenizer is primed with its tail (a Metaspace "▁Paris" after "is" keeps
        its space); a chat reply starts a message of its own and is not primed. A
        caption under caption rules ends once it has named every label."""
        self._tokenizer = tokenizer
        self._prompt_ids = prompt_ids
        self._prime = list(prompt_ids) if spec.continues_prompt else []
        self._arrived = spec.arrived
        self._seed = spec.sampling.seed
        self._metrics = metrics
        self._last_output_at: float | None = None
        names = (caption_names(spec.objects)
                 if spec.caption and spec.sampling.caption_rules is not None else None)
        actions = spec.actions
        self._seqs = [_Sequence(i, StopStringFilter(spec.stop),
                                SentenceCounter(spec.max_sentences),
                                CaptionEnd(names) if names else None,
                                ActionSplitter(actions, i) if actions is not None else None)
                      for i in range(spec.sampling.num_return_sequences)]

    @property
    def sequences(self) -> int:
        return len(self._seqs)

    def process(self, out: Outputs, generation: Generation) -> Iterator[Event]:
        m = self._metrics
        if out.deltas:  # latencies per step (local) or upstream chunk, as the bridge sees them
            if self._last_output_at is None:
                m.ttft.observe(out.at - self._arrived)
            else:
                m.itl.observe(out.at - self._last_output_at)
            self._last_output_at = out.at
        for delta in out.deltas:
            seq = self._seqs[delta.index]
            if seq.done:
                continue
            seq.tokens += 1
            m.tokens.inc()  # as they come: a cancelled stream's tokens count too
            if seq.first_token_at is None:
                seq.first_token_at = out.at
            if delta.token_id is not None:
                seq.pending_ids.append(delta.token_id)
                text = self._detokenizer(seq).step(delta.token_id)
            else:
                text = delta.text or ""
            if delta.logprob is not None:
                seq.pending_logprob = (seq.pending_logprob or 0.0) + delta.logprob
            pieces = [text] if seq.actions is None else seq.actions.push(text)
            for k, piece in enumerate(pieces):
                if isinstance(piece, pb.ActionCall):
                    yield piece
                    continue
                shown, enough = seq.sentences.cut(seq.stops.push(piece))
                if seq.caption_end is not None and not enough:
                    shown, enough = seq.caption_end.cut(shown)
                if shown:
                    yield self._chunk(seq, shown)
                # A stop string, the last sentence allowed, or the caption's end.
                if enough or seq.stops.matched is not None:
                    if seq.actions is not None:  # calls after the end were never made
                        for late in pieces[k + 1:]:
                            if isinstance(late, pb.ActionCall):
                                seq.actions.calls.remove(late)
                    generation.stop_sequence(seq.index)
                    yield self._complete(seq, FinishReason.STOP_SEQUENCE, generation.started)
                    break
        for end in out.ends:
            seq = self._seqs[end.index]
            if seq.done:
                continue
            held = seq.detokenizer.flush() if seq.detokenizer is not None else ""
            # A call cut short (max_new_tokens) is dropped with its text.
            pieces = [held] if seq.actions is None else seq.actions.push(held)
            rest = ""
            for piece in pieces:
                if isinstance(piece, pb.ActionCall):
                    if rest:
                        yield self._chunk(seq, rest)
                        rest = ""
                    yield piece
                else:
                    rest += seq.stops.push(piece)
            rest += seq.stops.flush()
            if rest:
                yield self._chunk(seq, rest)
            yield self._complete(seq, end.reason, generation.started, end.error,
                                 end.completion_tokens)

    def _detokenizer(self, seq: _Sequence) -> IncrementalDetokenizer:
        if seq.detokenizer is None:
            seq.detokenizer = IncrementalDetokenizer(self._tokenizer, self._prime)
        return seq.detokenizer

    def _chunk(self, seq: _Sequence, text: str) -> pb.TokenChunk:
        seq.text.append(text)
        chunk = pb.TokenChunk(sequence_index=seq.index, text=text, token_ids=seq.pending_ids)
        if seq.pending_logprob is not None:
            chunk.logprob = seq.pending_logprob
        seq.pending_ids, seq.pending_logprob = [], None
        return chunk

    def _complete(self, seq: _Sequence, reason: FinishReason, started: float | None,
                  error: str = "", completion_tokens: int | None = None) -> pb.Completion:
        seq.done = True
        tokens = seq.tokens if completion_tokens is None else completion_tokens
        if tokens > seq.tokens:  # the upstream's usage knows tokens its text chunks merged
            self._metrics.tokens.inc(tokens - seq.tokens)
        self._metrics.completions.labels(f"FINISH_REASON_{reason.name}").inc()
        now = time.perf_counter()
        first = seq.first_token_at or now
        return completion(
            seq.index, reason, "".join(seq.text), error=error,
            actions=seq.actions.calls if seq.actions is not None else (),
            usage=pb.Usage(prompt_tokens=len(self._prompt_ids), completion_tokens=tokens),
            seed=self._seed,
            timings=pb.Timings(queue_ms=((started or now) - self._arrived) * 1e3,
                               time_to_first_token_ms=(first - self._arrived) * 1e3,
                               total_ms=(now - self._arrived) * 1e3))


class Reply:
    """A running generation as the messages a client receives; each Completion also
    reports what its request asked about (`dressed`)."""

    def __init__(self, generation: Generation, processor: OutputProcessor, spec: ReplySpec):
        self._generation = generation
        self._processor = processor
        self._spec = spec
        self.sequences = processor.sequences
        self.done = False  # its iteration has ended (the generation finished or failed)

    def cancel(self, reason: FinishReason = FinishReason.CANCELLED) -> None:
        self._generation.cancel(reason)

    def pause(self) -> None:
        self._generation.pause()

    def resume(self) -> None:
        self._generation.resume()

    def dressed(self, done: pb.Completion) -> pb.Completion:
        """`done` with what the request reports: which scene objects the text names
        (grounding, when it was about a scene), the scene's version, the referents."""
        spec = self._spec
        plan = spec.caption_plan
        if plan is not None and done.text == plan.text:
            done.grounding.extend(planned(done.text, plan.mentions))
        elif spec.scene is not None:
            done.grounding.extend(ground(done.text, spec.objects))
        done.scene_version = spec.scene_version
        done.referents.extend(spec.referents)
        return done

    async def __aiter__(self) -> AsyncIterator[Event]:
        try:
            async for out in self._generation:
                for event in self._processor.process(out, self._generation):
                    if isinstance(event, pb.Completion):
                        event = self.dressed(event)
                    yield event
        finally:
            self.done = True
