"""The scheduler: the one owner of the model, with iteration-level batching.

A dedicated thread runs the model so the asyncio event loop keeps streaming
while tensors are computed (torch releases the GIL inside its kernels). Each
turn of its loop:

1. admits waiting requests (up to `max_active`) and retires cancelled,
   timed-out and stopped ones, freeing their rows at once;
2. prefills: a chunk of the prompts still being read, as the prefill policy
   shares the turn's budget (engine/prefill_policy.py: work rather than tokens,
   a cap per prompt, clients in turns; while streams decode, the budget is what
   fits in `prefill_turn_ms`, so their next token is never far), in forward
   passes over a staging cache; a request whose prompt is done samples its
   first token and moves into the decode cache, one row per returned sequence;
3. decodes: one forward pass over every decoding row, whatever request it
   belongs to, then each request samples its own rows with its own RNG.

So a new request starts at the next turn, a finished one leaves at the next
turn, and nobody waits for anybody else to finish.

A paused request (a resumable reply nobody is reading) is parked at the start
of a turn once all its sequences decode: its rows' KV is copied out and the rows
freed, so it takes neither a slot nor compute; when resumed it gets rows again
(before new requests are admitted) and goes on exactly where it stopped.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field

import torch

from arbridge.engine.constraints import repeated_ngram_tokens
from arbridge.engine.grammar import allocate_bitmask, unpack_bitmask
from arbridge.engine.prefill_policy import PrefillPolicy, PromptState
from arbridge.engine.prefix_cache import PrefixCache
from arbridge.engine.requests import (
    FinishReason,
    RequestHandle,
    SequenceFinished,
    StepOutput,
)
from arbridge.engine.rows import RowTable
from arbridge.engine.runner import ModelRunner
from arbridge.engine.sampling import LogitRules, SamplingBatch, SamplingConfig, sample_batch
from arbridge.engine.stopping import stop_reason

log = logging.getLogger(__name__)


def _log(handle: RequestHandle, level: int, message: str, *args) -> None:
    # This thread has no call context: the request's id travels on its handle.
    log.log(level, message, *args, extra={"request_id": handle.request_id})


class QueueFull(RuntimeError):
    """Admission refused: too many requests waiting."""

    def __init__(self, waiting: int, retry_after_s: float):
        super().__init__(f"server busy: {waiting} requests waiting")
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class _Request:
    handle: RequestHandle
    generator: torch.Generator
    seen: torch.Tensor  # [n, vocab] bool: tokens in prompt or output (repetition penalty)
    prefilled: int = 0  # prompt tokens already in the staging cache
    generated: int = 0  # tokens generated per sequence so far
    done: list[bool] = field(default_factory=list)
    slots: dict[int, _Slot] = field(default_factory=dict)  # sequence index -> decode slot
    prefix: torch.Tensor | None = None  # [prefix_len, hidden] soft-prompt embeddings
    reading: PromptState | None = None  # the prefill policy's view while prefilling

    @property
    def n(self) -> int:
        return self.handle.sampling.num_return_sequences

    @property
    def prompt_len(self) -> int:
        return len(self.handle.prompt_ids)


@dataclass(eq=False)
class _Slot:
    """One decode row's sequence: which request and sequence, and its last token."""

    req: _Request
    index: int
    last_id: int = 0
    generated: list[int] = field(default_factory=list)  # the reply's tokens so far
    parked_kv: torch.Tensor | None = None  # its KV while its request is parked


class Scheduler:
    def __init__(self, model, tokenizer, *, context_length: int, max_active: int = 16,
                 max_queue: int = 64, prefill_chunk_tokens: int = 512, projectors=None,
                 fused_decoder: bool = True, prefix_cache_bytes: int = 0,
                 quantize: str | None = None, prefill_turn_ms: float = 0.0,
                 prefill_prompt_tokens: int = 128, parked_kv_bytes: int = 512 << 20):
        self.runner = ModelRunner(model, context_length, fused=fused_decoder,
                                  quantize=quantize)
        # Prompts that start like an earlier one prefill only the rest.
        self.prefix_cache = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self.device = self.runner.device
        self.vocab_size = self.runner.vocab_size
        self.context_length = context_length
        self.max_active = max_active
        self.max_queue = max_queue
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.prefill_turn_s = prefill_turn_ms / 1e3
        self.prefill_policy = PrefillPolicy(
            budget=prefill_chunk_tokens, per_prompt_tokens=prefill_prompt_tokens,
            attention_tokens=_attention_tokens(model))
        self._prefill_s_per_work = 0.0  # measured: seconds per unit of prefill work
        self._turns = 0
        self._arrivals = 0
        self.projectors = projectors  # ProjectorSet, for requests with dense features
        self.eos_ids = self._eos_ids(model, tokenizer)
        # Prompts being read live in staging rows, one per request; decoding sequences
        # in decode rows, one per returned sequence.
        self._prefilling: RowTable[_Request] = RowTable(self._new_cache())
        self._decoding: RowTable[_Slot] = RowTable(self._new_cache())
        self._to_load: list[_Request] = []  # admitted, cached prompt prefix not yet loaded
        self._active: list[_Request] = []
        self._parked: list[_Request] = []  # paused: no rows, KV held aside (host memory)
        self.parked_kv_bytes = parked_kv_bytes  # what parked KV may take, all together
        self._parked_bytes = 0
        self._waiting: collections.deque[RequestHandle] = collections.deque()
        self._calls: collections.deque = collections.deque()  # (fn, future) to run here
        self._wake = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        # Set once the fused decoder is built and the warm-up pass has run.
        self.ready = threading.Event()
        self.start_error: Exception | None = None  # why the engine could not start
        self._turn_seconds = 0.05  # moving average, for the retry hint
        self.on_decode_step = None  # optional callback(batch rows), on this thread

    @staticmethod
    def _eos_ids(model, tokenizer) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(model, "generation_config", None), model.config, tokenizer):
            value = getattr(source, "eos_token_id", None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="arbridge-scheduler",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._running = False
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # -- the servicers' side -------------------------------------------------------------
    def submit(self, handle: RequestHandle) -> None:
        if not handle.prompt_ids:
            raise ValueError("empty prompt")
        handle.wake = self.wake
        with self._wake:
            # Requests that a free slot will take at the next turn are not
            # queued: a burst arriving between turns must not be refused
            # while slots stand empty.
            free_slots = max(0, self.max_active - len(self._active))
            if len(self._waiting) - free_slots >= self.max_queue:
                # Roughly when a slot frees up: one request's worth of turns.
                retry = self._turn_seconds * handle.sampling.max_new_tokens
                raise QueueFull(len(self._waiting), retry_after_s=max(retry, 0.1))
            self._waiting.append(handle)
            self._wake.notify()

    def call(self, fn, *args) -> concurrent.futures.Future:
        """Run fn(*args) on the scheduler thread between turns.

        All torch work of a process belongs on this one thread: with OpenMP,
        every thread that computes keeps its own worker team, and on a small
        CPU two teams halve each other's speed (measured: 33 -> 71 ms per
        decode step on 2 cores once another thread had run the model).
        """
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._wake:
            self._calls.append((fn, args, future))
            self._wake.notify()
        return future

    def wake(self) -> None:
        """Look at the requests again (a parked one was resumed or cancelled)."""
        with self._wake:
            self._wake.notify()

    @property
    def load(self) -> tuple[int, int]:
        """(active, waiting) request counts; parked requests are neither."""
        return len(self._active), len(self._waiting)

    @property
    def parked(self) -> int:
        return len(self._parked)

    # -- the scheduler thread ------------------------------------------------------------
    def _loop(self) -> None:
        # Cache buffers are created and edited in here only; inference mode
        # for the whole thread keeps them cheap (no autograd bookkeeping).
        with torch.inference_mode():
            try:
                self.runner.prepare()
                self._warm_up()
            except Exception as exc:  # e.g. int8 asked of a model it cannot run
                self.start_error = exc
                self.ready.set()
                return
            self.ready.set()
            self._run()

    def _warm_up(self) -> None:
        """One token through each cache before any request: the buffers are
        allocated (and their memory touched) at full size and the kernels set
        up now, not while the first burst of requests waits for its first
        tokens (measured: 0.5 s on the first 32-request burst, fp32 CPU)."""
        for cache in (self._prefilling.cache, self._decoding.cache):
            try:
                row = cache.add_row(0)
                self.runner.forward(cache, row, torch.zeros(1, 1, dtype=torch.long,
                                                             device=self.device), [0])
                cache.remove_row(row)
            except Exception:  # the first request pays instead, or reports the error
                log.warning("engine warm-up failed", exc_info=True)
                self._reset("warm-up failed")
                return

    def _run(self) -> None:
        while True:
            with self._wake:
                while (self._running and not self._active and not self._waiting
                       and not self._calls and not self._parked_due()):
                    # Parked requests have deadlines: look again now and then.
                    self._wake.wait(timeout=0.5 if self._parked else None)
                if not self._running:
                    break
                calls = list(self._calls)
                self._calls.clear()
            for fn, args, future in calls:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args))
                    except Exception as exc:
                        future.set_exception(exc)
            with self._wake:
                self._drop_cancelled_waiting()
                # Resumed replies come back before new requests take their slots.
                returning = sum(1 for req in self._parked if not req.handle.paused)
                while self._waiting and len(self._active) + returning < self.max_active:
                    self._admit(self._next_waiting())
            began = time.perf_counter()
            try:
                self._load_cached_prefixes()
                self._retire_leaving()
                self._park_and_return()
                if self._prefilling:
                    self._prefill_turn()
                if self._decoding:
                    self._decode_turn()
            except Exception as exc:  # a failing batch must not kill the scheduler
                log.exception("model step failed; ending the %d request(s) in flight: %s",
                              len(self._active),
                              ", ".join(r.handle.request_id for r in self._active))
                self._reset(f"{type(exc).__name__}: {exc}")
            self._turn_seconds = 0.9 * self._turn_seconds + 0.1 * (time.perf_counter() - began)
        for req in list(self._active) + list(self._parked):
            self._finish(req, FinishReason.ERROR, "server shutting down")
        for handle in self._waiting:
            handle.sink(StepOutput(finished=[
                SequenceFinished(i, FinishReason.ERROR, "server shutting down")
                for i in range(handle.sampling.num_return_sequences)]))
        self._waiting.clear()

    def _reset(self, error: str) -> None:
        """After a failed step: end every active request and start from clean caches."""
        for req in self._active:
            open_seqs = [SequenceFinished(i, FinishReason.ERROR, error)
                         for i, d in enumerate(req.done) if not d]
            _log(req.handle, logging.WARNING, "ended with an error: %s", error)
            if open_seqs:
                req.handle.sink(StepOutput(finished=open_seqs))
        self._active.clear()
        for req in list(self._parked):  # memory may be what failed: parked KV goes too
            self._finish(req, FinishReason.ERROR, error)
        self._to_load.clear()
        self._prefilling = RowTable(self._new_cache())
        self._decoding = RowTable(self._new_cache())

    def _new_cache(self):
        return self.runner.new_cache(slots=max(4, self.max_active))

    def _drop_cancelled_waiting(self) -> None:
        """A request cancelled while queued, or whose deadline comes before it could
        run a turn, leaves without ever running (and frees its place in the queue)."""
        now = time.perf_counter()
        for handle in list(self._waiting):
            reason = handle.cancel_reason
            if reason is None and handle.deadline is not None \
                    and now + self._turn_seconds >= handle.deadline:
                reason = FinishReason.TIME_LIMIT
            if reason is None:
                continue
            self._waiting.remove(handle)
            handle.sink(StepOutput(finished=[
                SequenceFinished(i, reason)
                for i in range(handle.sampling.num_return_sequences)]))

    def _next_waiting(self) -> RequestHandle:
        """The oldest waiting request of the client with the fewest running: one
        client's burst does not keep another's single request waiting."""
        running = collections.Counter(req.handle.peer for req in self._active)
        handle = min(self._waiting, key=lambda h: running[h.peer])  # first of the fewest
        self._waiting.remove(handle)
        return handle

    def _admit(self, handle: RequestHandle) -> None:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(handle.sampling.seed)
        n = handle.sampling.num_return_sequences
        seen = torch.zeros(n, self.vocab_size, dtype=torch.bool, device=self.device)
        text_ids = handle.prompt_ids[handle.prefix_len:]  # placeholders are not tokens
        if text_ids:
            seen[:, torch.tensor(text_ids, device=self.device)] = True
        req = _Request(handle=handle, generator=generator, seen=seen, done=[False] * n)
        self._arrivals += 1
        req.reading = PromptState(req, self._arrivals, 0, len(handle.prompt_ids), handle.peer)
        if handle.features:  # projected here: all torch work stays on this thread
            req.prefix = self.projectors.embed(handle.features).to(self.runner.dtype)
        handle.started = time.perf_counter()
        _log(handle, logging.DEBUG, "admitted: %d prompt tokens, %d sequence(s), %d active",
             len(handle.prompt_ids), n, len(self._active) + 1)
        self._active.append(req)
        self._prefilling.add(req, 0)
        if self.prefix_cache is not None and not handle.features:
            self._to_load.append(req)  # in the turn, where device errors are handled

    def _load_cached_prefixes(self) -> None:
        """Start newly admitted prompts from the longest prefix the cache holds."""
        for req in self._to_load:
            if req in self._prefilling:
                row = self._prefilling.row_of(req)
                staging = self._prefilling.cache
                req.prefilled = self.prefix_cache.load(req.handle.prompt_ids, staging, row)
                staging.lengths[row] = req.prefilled
                _log(req.handle, logging.DEBUG, "prefix cache: %d of %d prompt tokens",
                     req.prefilled, req.prompt_len)
        self._to_load.clear()

    # -- parking -------------------------------------------------------------------------
    def _parked_due(self) -> bool:
        """A parked request wants attention: resumed, cancelled, stopped, or past its
        deadline."""
        now = time.perf_counter()
        return any(not req.handle.paused or req.handle.cancel_reason is not None or
                   req.handle.stopped_sequences or
                   (req.handle.deadline is not None and now >= req.handle.deadline)
                   for req in self._parked)

    def _park_and_return(self) -> None:
        """Park paused requests whose sequences all decode; end parked ones that were
        cancelled, stopped or ran out of time; give resumed ones rows again, slots
        allowing."""
        for req in list(self._active):
            if req.handle.paused and req.slots and req not in self._prefilling:
                self._park(req)
        now = time.perf_counter()
        for req in list(self._parked):
            if not self._retire_if_leaving(req, now) and not req.handle.paused \
                    and len(self._active) < self.max_active:
                self._unpark(req)

    def _park(self, req: _Request) -> None:
        cache = self._decoding.cache
        for slot in req.slots.values():
            row = self._decoding.row_of(slot)
            # Host memory: a GPU's is the engine's to use; a copy either way.
            slot.parked_kv = cache.read_row(row, 0, cache.lengths[row]).to("cpu", copy=True)
            self._parked_bytes += _nbytes(slot.parked_kv)
            self._decoding.remove(row)
        self._active.remove(req)
        self._parked.append(req)
        _log(req.handle, logging.DEBUG, "parked after %d tokens", req.generated)
        # Over the budget, the longest parked go: their clients left and did not return.
        while self._parked_bytes > self.parked_kv_bytes and len(self._parked) > 1:
            oldest = self._parked[0]
            _log(oldest.handle, logging.INFO, "parked replies over %d bytes: ended",
                 self.parked_kv_bytes)
            self._finish(oldest, FinishReason.CANCELLED, "parked replies over their memory "
                                                         "budget (parked_kv_mb)")

    def _unpark(self, req: _Request) -> None:
        """Rows again, all of them or none (a failure ends the request, not the turn)."""
        added: list[_Slot] = []
        try:
            for slot in req.slots.values():
                self._decoding.add(slot, slot.parked_kv.shape[3])
                added.append(slot)
                self._decoding.cache.write_row(self._decoding.row_of(slot),
                                               slot.parked_kv.to(self.device))
        except Exception as exc:
            for slot in reversed(added):
                self._decoding.remove(self._decoding.row_of(slot))
            log.exception("resuming a parked request failed")
            self._finish(req, FinishReason.ERROR, f"resume failed: {type(exc).__name__}")
            return
        for slot in added:
            self._parked_bytes -= _nbytes(slot.parked_kv)
            slot.parked_kv = None
        self._parked.remove(req)
        self._active.append(req)
        _log(req.handle, logging.DEBUG, "resumed after %d tokens", req.generated)

    # -- leaving -------------------------------------------------------------------------
    def _retire_leaving(self) -> None:
        """Free every request that ends before this turn: sequences the servicer
        stopped (stop strings), cancelled or interrupted calls, deadlines."""
        now = time.perf_counter()
        for req in list(self._active):
            self._retire_if_leaving(req, now)

    def _retire_if_leaving(self, req: _Request, now: float) -> bool:
        """Finish `req` (active or parked) if it ends before this turn; True if it did."""
        handle = req.handle
        for index in handle.stopped_snapshot():
            if not req.done[index]:
                req.done[index] = True  # the servicer already sent its completion
                self._drop_slot(req, index)
        if all(req.done):
            self._finish(req, FinishReason.CANCELLED)
        elif handle.cancel_reason is not None:
            self._finish(req, handle.cancel_reason)
        # Stop while the last text can still reach the client: a turn that would end
        # past the deadline is not started.
        elif handle.deadline is not None and now + self._turn_seconds >= handle.deadline:
            self._finish(req, FinishReason.TIME_LIMIT)
        else:
            return False
        return True

    def _finish(self, req: _Request, reason: FinishReason, error: str = "") -> None:
        """End every open sequence of a request and free all it holds."""
        finished = [SequenceFinished(i, reason, error) for i, d in enumerate(req.done) if not d]
        req.done = [True] * req.n
        for index in list(req.slots):
            self._drop_slot(req, index)
        if req in self._prefilling:
            self._prefilling.remove(self._prefilling.row_of(req))
        if req in self._active:
            self._active.remove(req)
        if req in self._parked:
            self._parked.remove(req)
        if finished:
            _log(req.handle, logging.DEBUG, "finished: %s after %d tokens", reason.name,
                 req.generated)
            req.handle.sink(StepOutput(finished=finished))

    def _drop_slot(self, req: _Request, index: int) -> None:
        slot = req.slots.pop(index, None)
        if slot is None:
            return
        if slot.parked_kv is not None:  # parked: its KV is aside, not in a row
            self._parked_bytes -= _nbytes(slot.parked_kv)
            slot.parked_kv = None
        elif slot in self._decoding:
            self._decoding.remove(self._decoding.row_of(slot))

    # -- prefill ------------------------------------------------------------------------
    def _prefill_turn(self) -> None:
        """Read the prompts the policy picks; rows next to each other run together."""
        self._turns += 1
        prompts = []
        for req in self._prefilling:
            req.reading.done = req.prefilled
            prompts.append(req.reading)
        plan = self.prefill_policy.plan(prompts, self._turns, self._prefill_budget())
        began = time.perf_counter()
        chosen = sorted((self._prefilling.row_of(p.key), p.key, count) for p, count in plan)
        completed: list[tuple[_Request, torch.Tensor]] = []
        run: list[tuple[int, _Request, int]] = []
        for item in chosen:
            if run and item[0] != run[-1][0] + 1:
                completed += self._prefill_rows(run)
                run = []
            run.append(item)
        completed += self._prefill_rows(run)
        # Measured after the passes: the next budget is what fits in prefill_turn_ms.
        work = sum(self.prefill_policy.cost(p.done, count) for p, count in plan)
        if work > 0:
            spent = (time.perf_counter() - began) / work
            self._prefill_s_per_work = spent if not self._prefill_s_per_work else \
                0.8 * self._prefill_s_per_work + 0.2 * spent
        # Rows move once a request leaves staging: only after every pass has run.
        for req, last in completed:
            self._start_decoding(req, last)

    def _prefill_budget(self) -> float:
        """The turn's prefill work: all of `prefill_chunk_tokens` when nobody is
        decoding, else what fits in `prefill_turn_ms` at the measured speed."""
        full = float(self.prefill_chunk_tokens)
        if not self._decoding or not self.prefill_turn_s or not self._prefill_s_per_work:
            return full
        return min(full, self.prefill_turn_s / self._prefill_s_per_work)

    def _prefill_rows(self, run: list[tuple[int, _Request, int]]
                      ) -> list[tuple[_Request, torch.Tensor]]:
        """One forward pass over consecutive staging rows, each reading its chunk;
        (request, last logits) of those whose prompt is now read."""
        if not run:
            return []
        first = run[0][0]
        batch = [req for _, req, _ in run]
        chunks = [req.handle.prompt_ids[req.prefilled: req.prefilled + count]
                  for _, req, count in run]
        q_len = max(len(c) for c in chunks)
        ids = torch.zeros(len(batch), q_len, dtype=torch.long, device=self.device)
        for i, chunk in enumerate(chunks):
            ids[i, : len(chunk)] = torch.tensor(chunk, device=self.device)
        starts = [req.prefilled for req in batch]
        completing = [i for i, (req, c) in enumerate(zip(batch, chunks, strict=True))
                      if req.prefilled + len(c) == req.prompt_len]
        keep = sorted({len(chunks[i]) - 1 for i in completing}) or [q_len - 1]
        embeds = self._prefix_embeddings(batch, ids, starts)
        staging = self._prefilling.cache
        logits = self.runner.forward(staging, first, ids, starts,
                                     keep=torch.tensor(keep, device=self.device),
                                     inputs_embeds=embeds)
        for i, (req, chunk) in enumerate(zip(batch, chunks, strict=True)):
            req.prefilled += len(chunk)
            staging.lengths[first + i] = req.prefilled
        return [(batch[i], logits[i, keep.index(len(chunks[i]) - 1)]) for i in completing]

    def _prefix_embeddings(self, batch: list[_Request], ids: torch.Tensor,
                           starts: list[int]) -> torch.Tensor | None:
        """Input embeddings with soft-prompt rows written in, or None (plain ids)."""
        rows = [(i, req) for i, req in enumerate(batch)
                if req.prefix is not None and starts[i] < req.handle.prefix_len]
        if not rows:
            return None
        embeds = self.runner.embed(ids)
        for i, req in rows:
            start = starts[i]
            count = min(req.handle.prefix_len - start, ids.shape[1])
            embeds[i, :count] = req.prefix[start:start + count]
        return embeds

    def _start_decoding(self, req: _Request, last_logits: torch.Tensor) -> None:
        """Prompt done: sample the first tokens, move the request to decode rows."""
        staging_row = self._prefilling.row_of(req)
        staging = self._prefilling.cache
        if self.prefix_cache is not None and not req.handle.features:
            self.prefix_cache.store(req.handle.prompt_ids, staging, staging_row)
        cfg = req.handle.sampling
        rules = (_logit_rules([(cfg, index, []) for index in range(req.n)], self.device,
                              self.vocab_size) if cfg.constrained else None)
        next_ids, logprobs = sample_batch(last_logits.expand(req.n, -1),
                                          SamplingBatch([(cfg, req.generator, req.n)],
                                                        self.device, self.vocab_size),
                                          req.seen, rules)
        req.seen[torch.arange(req.n, device=self.device), next_ids] = True
        for index in range(req.n):
            slot = _Slot(req, index)
            row = self._decoding.add(slot, req.prompt_len)
            self._decoding.cache.copy_row_from(staging, staging_row, row, req.prompt_len)
            req.slots[index] = slot
        self._prefilling.remove(staging_row)
        ids, lps = _to_host(next_ids, logprobs)
        self._emit(req, list(range(req.n)), ids, lps)

    # -- decode -------------------------------------------------------------------------
    def _decode_turn(self) -> None:
        rows = len(self._decoding)
        if self.on_decode_step is not None:
            self.on_decode_step(rows)
        cache = self._decoding.cache
        ids = torch.tensor([slot.last_id for slot in self._decoding], device=self.device)
        logits = self.runner.forward(cache, 0, ids[:, None], list(cache.lengths))[:, -1, :]
        for row in range(rows):
            cache.lengths[row] += 1
        # Rows grouped by request (each samples with its own RNG), sampled in one call.
        by_request: dict[_Request, list[tuple[int, int]]] = {}
        for row, slot in enumerate(self._decoding):
            by_request.setdefault(slot.req, []).append((slot.index, row))
        order, groups = [], []
        for req, members in by_request.items():
            members.sort()
            order += [row for _, row in members]
            groups.append((req.handle.sampling, req.generator, len(members)))
        batch = SamplingBatch(groups, self.device, self.vocab_size)
        order_t = torch.tensor(order, device=self.device)
        seen = None
        if batch.any_penalty:
            seen = torch.cat([req.seen[torch.tensor([i for i, _ in members],
                                                    device=self.device)]
                              for req, members in by_request.items()])
        rules = None
        if any(cfg.constrained for cfg, _, _ in groups):  # else no per-row work at all
            rules = _logit_rules([(req.handle.sampling, index, req.slots[index].generated)
                                  for req, members in by_request.items()
                                  for index, _ in members], self.device, self.vocab_size)
        next_ids, logprobs = sample_batch(logits[order_t], batch, seen, rules)
        offset = 0
        for req, members in by_request.items():
            seq_ids = torch.tensor([i for i, _ in members], device=self.device)
            req.seen[seq_ids, next_ids[offset:offset + len(members)]] = True
            offset += len(members)
        flat_ids, flat_lps = _to_host(next_ids, logprobs)  # one copy for ids and logprobs
        offset = 0
        for req, members in by_request.items():
            end = offset + len(members)
            self._emit(req, [i for i, _ in members], flat_ids[offset:end], flat_lps[offset:end])
            offset = end

    def _emit(self, req: _Request, indices: list[int], ids: list[int],
              lps: list[float | None]) -> None:
        req.generated += 1
        cfg = req.handle.sampling
        out = StepOutput()
        for index, token, lp in zip(indices, ids, lps, strict=True):
            if req.done[index]:
                continue
            reason = stop_reason(token, req.generated, req.prompt_len, cfg, self.eos_ids,
                                 self.context_length)
            if reason is not FinishReason.EOS:
                out.tokens.append((index, token, lp if cfg.logprobs else None))
            error = ""
            if reason is None and cfg.grammar is not None and not cfg.grammar.accept(index,
                                                                                     token):
                reason, error = FinishReason.ERROR, cfg.grammar.error(index)  # never expected
            if reason is None:
                slot = req.slots[index]
                slot.last_id = token
                if cfg.constrained:
                    slot.generated.append(token)
                continue
            out.finished.append(SequenceFinished(index, reason, error))
            req.done[index] = True
            self._drop_slot(req, index)
        if all(req.done) and req in self._active:
            self._active.remove(req)
            _log(req.handle, logging.DEBUG, "finished after %d tokens", req.generated)
        req.handle.sink(out)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _attention_tokens(model) -> float:
    """The position at which a token's attention costs as much as its weight matmuls:
    2 x params per token against about 4 x layers x hidden x position."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") \
        else model.config
    params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    weights = max(params - embedding, 1)
    per_position = 2 * config.num_hidden_layers * config.hidden_size
    return max(256.0, weights / per_position)


def _logit_rules(rows: list[tuple[SamplingConfig, int, list[int]]], device,
                 vocab_size: int) -> LogitRules | None:
    """The masks and penalties for every row's next token (constraints.py); None when
    there are none. Fixed token sets (words banned at every step, sentence ends, digits)
    become device tensors once per request; only what depends on the reply so far is
    looked up here. A row whose rules allow only a few tokens (a scene phrase under
    way) gets just that: its other rules have nothing left to mask."""
    row_ids, token_ids, penalties, static = [], [], [], []
    allow_rows, allow_sets = [], []
    grammar_rows = [(row, cfg.grammar, index) for row, (cfg, index, _) in enumerate(rows)
                    if cfg.grammar is not None]
    for row, (cfg, _index, generated) in enumerate(rows):
        step = cfg.object_rules.step(generated) if cfg.object_rules is not None else None
        if step is not None and step.allowed is not None:
            allow_rows.append(row)
            # A repeat is avoided where the allowed tokens leave another way.
            repeats = repeated_ngram_tokens(generated, cfg.no_repeat_ngram)
            allow_sets.append(step.allowed - repeats or step.allowed)
            continue
        dynamic: dict[int, float] = {}
        for token in repeated_ngram_tokens(generated, cfg.no_repeat_ngram):
            dynamic[token] = float("inf")
        if cfg.banned is not None:
            static.append((row, _set_tensor(cfg.banned, cfg.banned.always, device),
                           cfg.banned.penalty))
            for token in cfg.banned.next_banned(generated, with_always=False):
                dynamic.setdefault(token, cfg.banned.penalty)
        if step is not None:
            for token in step.banned:
                dynamic[token] = float("inf")
            for tokens in step.static:
                static.append((row, _set_tensor(cfg.object_rules, tokens, device),
                               float("inf")))
        row_ids += [row] * len(dynamic)
        token_ids += list(dynamic)
        penalties += list(dynamic.values())
    parts = [(torch.tensor(row_ids, dtype=torch.long, device=device),
              torch.tensor(token_ids, dtype=torch.long, device=device),
              torch.tensor(penalties, device=device))] if row_ids else []
    for row, tokens, penalty in static:
        parts.append((torch.full_like(tokens, row), tokens,
                      torch.full(tokens.shape, penalty, device=device)))
    grammar = None
    if grammar_rows:
        bitmask = allocate_bitmask(len(grammar_rows), vocab_size)
        for i, (_, rules, index) in enumerate(grammar_rows):
            rules.fill_bitmask(index, bitmask, i)
        grammar = (torch.tensor([row for row, _, _ in grammar_rows], device=device),
                   unpack_bitmask(bitmask, vocab_size).to(device))
    if not parts and not allow_rows and grammar is None:
        return None
    bans = tuple(torch.cat(column) for column in zip(*parts, strict=True)) if parts else None
    allow = None
    if allow_rows:
        flat = [(i, t) for i, tokens in enumerate(allow_sets) for t in tokens]
        allow = (torch.tensor(allow_rows, dtype=torch.long, device=device),
                 torch.tensor([i for i, _ in flat], dtype=torch.long, device=device),
                 torch.tensor([t for _, t in flat], dtype=torch.long, device=device))
    return LogitRules(bans, allow, grammar)


def _set_tensor(owner, tokens: frozenset[int], device) -> torch.Tensor:
    """A fixed token set of a request's rules as a device tensor, made once."""
    cache = owner.__dict__.setdefault("_tensors", {})
    key = (id(tokens), str(device))
    if key not in cache:
        cache[key] = (tokens, torch.tensor(sorted(tokens), dtype=torch.long, device=device))
    return cache[key][1]


def _to_host(ids: torch.Tensor, logprobs: torch.Tensor | None
             ) -> tuple[list[int], list[float | None]]:
    """Sampled ids (and log-probabilities) in one device->host copy."""
    if logprobs is None:
        host = ids.tolist()
        return host, [None] * len(host)
    both = torch.stack((ids.to(torch.float64), logprobs.to(torch.float64))).tolist()
    return [int(i) for i in both[0]], both[1]
