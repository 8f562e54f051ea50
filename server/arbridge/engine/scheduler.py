"""The scheduler: the one owner of the model, with iteration-level batching.

A dedicated thread runs the model so the asyncio event loop keeps streaming
while tensors are computed (torch releases the GIL inside its kernels). Each
turn of its loop is `schedule()` (the decisions, as a plan of plain data),
`execute(plan)` (the forward passes and sampling: engine/turn_executor.py) and
`update(plan, outputs)` (emitting, moving requests on):

1. retires cancelled, timed-out and stopped requests and parks paused ones,
   freeing their KV blocks at once; then admits waiting requests while there is
   a free place (`max_active`) and their prompt's blocks fit in the KV pool;
2. prefills: a chunk of the prompts still being read, as the prefill policy
   shares the turn's budget (engine/prefill_policy.py: work rather than tokens,
   a cap per prompt, clients in turns), in forward passes; a request whose
   prompt is done samples its first token and starts decoding, one sequence per
   returned sequence, all holding the prompt's blocks;
3. decodes: one forward pass over every decoding sequence, whatever request it
   belongs to, then each request samples its own rows with its own RNG.

So a new request starts at the next turn, a finished one leaves at the next
turn, and nobody waits for anybody else to finish.

KV memory is one pool of fixed-size blocks (engine/kv_pool.py), sized by a
budget. A prompt is admitted only when its blocks fit beside what the prompts
already being read still need; when decoding runs out of blocks, the newest
request is preempted: its blocks are freed and it is read again later from its
prompt and the tokens it already sent (recompute, as vLLM does), then goes on
exactly where it stopped. A request that could not fit even alone is refused
at submission, naming the limit.

A paused request (a resumable reply nobody is reading) is parked at the start
of a turn once all its sequences decode: it leaves the batch but keeps its
blocks, up to `parked_kv_mb`; past that, or when the pool needs room, parked
requests lose their blocks first and recompute if they are ever resumed.
"""

from __future__ import annotations

import bisect
import collections
import concurrent.futures
import logging
import threading
import time

import torch

from arbridge.engine import speculation
from arbridge.engine.batch_state import Reader, Request, Slot, TurnOutputs, TurnPlan
from arbridge.engine.kv_pool import DECODE_QUERIES
from arbridge.engine.prefill_policy import (
    SHARED_PASS_POSITIONS,
    PrefillPolicy,
    PromptState,
    group_passes,
)
from arbridge.engine.prefix_cache import PrefixCache
from arbridge.engine.requests import RequestHandle, SequenceEnd, StepOutput
from arbridge.engine.runner import ModelRunner
from arbridge.engine.stopping import stop_reason
from arbridge.engine.turn_executor import TurnExecutor
from arbridge.generation import FinishReason

log = logging.getLogger(__name__)

# Where the start-up measure of a drafted pass's cost reads from: about a scene prompt's
# length (the bench's caption prompts are 329-336 tokens).
DRAFT_COST_AT = 320


def _log(handle: RequestHandle, level: int, message: str, *args) -> None:
    # This thread has no call context: the request's id travels on its handle.
    log.log(level, message, *args, extra={"request_id": handle.request_id})


class QueueFull(RuntimeError):
    """Admission refused: too many requests waiting."""

    def __init__(self, waiting: int, retry_after_s: float):
        super().__init__(f"server busy: {waiting} requests waiting")
        self.retry_after_s = retry_after_s


class TooLargeForKV(ValueError):
    """A request whose KV could not fit in the whole pool, even alone."""


class Scheduler:
    def __init__(self, model, tokenizer, *, context_length: int, max_active: int = 16,
                 max_queue: int = 64, prefill_chunk_tokens: int = 512, projectors=None,
                 fused_decoder: bool = True, prefix_cache_bytes: int = 0,
                 quantize: str | None = None, prefill_turn_ms: float = 0.0,
                 prefill_prompt_tokens: int = 128, parked_kv_bytes: int = 512 << 20,
                 kv_cache_bytes: int = 1 << 30, kv_block_tokens: int = 16,
                 fused_only: bool = False, attention_kernel: bool = True,
                 attention_kernel_bf16: bool = True,
                 speculative_tokens: int = 0, speculative_rows: int = 2,
                 speculative_forced_tokens: int = 16,
                 matmul_kernels=None, runner=None):
        # `runner`: anything with ModelRunner's face (the policy tests' stand-in).
        self.runner = runner or ModelRunner(model, context_length, fused=fused_decoder,
                                            quantize=quantize, fused_only=fused_only,
                                            attention_kernel=attention_kernel,
                                            attention_kernel_bf16=attention_kernel_bf16,
                                            matmul_kernels=matmul_kernels)
        self.pool = self.runner.new_pool(kv_cache_bytes, kv_block_tokens)
        self.executor = TurnExecutor(self.runner, self.pool)
        # Prompts that start like an earlier one prefill only the rest.
        self.prefix_cache = PrefixCache(self.pool, prefix_cache_bytes // self.pool.block_bytes) \
            if prefix_cache_bytes > 0 else None
        self.device = self.runner.device
        self.vocab_size = self.runner.vocab_size
        self.context_length = context_length
        self.max_active = max_active
        self.max_queue = max_queue
        self.prefill_chunk_tokens = prefill_chunk_tokens
        # Speculation (speculation.py): drafts of up to this many tokens, verified in
        # the decode pass while at most `speculative_rows` sequences decode (past
        # that a step is no longer bound by reading the weights, and the extra query
        # positions cost what they save); composed replies' known tokens up to
        # `speculative_forced_tokens` at a time.
        self.speculative_tokens = speculative_tokens
        self.speculative_rows = speculative_rows
        self.speculative_forced_tokens = speculative_forced_tokens
        # Guessed drafts only where a pass over several positions rounds as a pass
        # over one does: float32 weights, and int8 weights with int8 activations (each
        # row quantized alone, integer sums: the same numbers in any pass; set once
        # the runner is prepared). In bfloat16 and int8 with
        # bfloat16 activations the few-row and batch kernels round each product to 16
        # bits at other points, and greedy text with drafts differed from text without
        # them (measured: 3 of 4 bench replies in bfloat16). Composed replies pass their
        # known tokens in every dtype: their text does not depend on the logits.
        self.lookup_drafts = getattr(self.runner, "dtype", torch.float32) == torch.float32 \
            and not quantize
        # A pass's time with speculative_tokens drafted tokens, and with one, over a
        # plain pass's (measured at start).
        self.draft_cost = self.draft_cost_one = 1.0
        self.drafted = 0  # draft tokens read in decode passes
        self.kept = 0  # of those, the ones the model agreed with
        self.prefill_turn_s = prefill_turn_ms / 1e3
        self.prefill_policy = PrefillPolicy(
            budget=prefill_chunk_tokens, per_prompt_tokens=prefill_prompt_tokens,
            attention_tokens=self.runner.attention_tokens())
        self._prefill_s_per_work = 0.0  # measured: seconds per unit of prefill work
        self._turns = 0
        self._arrivals = 0
        self.preemptions = 0  # requests whose blocks were taken back to make room
        self.projectors = projectors  # ProjectorSet, for requests with dense features
        self.eos_ids = self._eos_ids(model, tokenizer)
        self._readers: list[Reader] = []  # prompts (or preempted replies) being read
        self._decoding: list[Slot] = []  # the decode batch, one row per sequence
        self._active: list[Request] = []
        self._parked: list[Request] = []  # paused: out of the batch, maybe holding blocks
        self._preempted: list[Request] = []  # blocks taken back: read again first
        self.parked_kv_bytes = parked_kv_bytes  # what parked requests' blocks may take
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

    @classmethod
    def from_settings(cls, model, tokenizer, settings, *, context_length: int,
                      **overrides) -> Scheduler:
        """A scheduler as `settings` (config.EngineSettings) configure it."""
        from arbridge.engine.kv_pool import default_budget_bytes

        s = settings
        options = dict(
            max_active=s.max_active, max_queue=s.max_queue,
            prefill_chunk_tokens=s.prefill_chunk_tokens, prefill_turn_ms=s.prefill_turn_ms,
            prefill_prompt_tokens=s.prefill_prompt_tokens, parked_kv_bytes=s.parked_kv_mb << 20,
            fused_decoder=s.fused_decoder, prefix_cache_bytes=s.prefix_cache_mb << 20,
            kv_cache_bytes=(s.kv_cache_mb << 20) or default_budget_bytes(
                next(model.parameters()).device),
            kv_block_tokens=s.kv_block_tokens, attention_kernel=s.attention_kernel,
            attention_kernel_bf16=s.attention_kernel_bfloat16,
            speculative_tokens=s.speculative_tokens, speculative_rows=s.speculative_rows,
            matmul_kernels=s.kernel_choice(), fused_only=True)
        return cls(model, tokenizer, context_length=context_length, **{**options, **overrides})

    @staticmethod
    def _eos_ids(model, tokenizer) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(model, "generation_config", None), getattr(model, "config", None),
                       tokenizer):
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
        self._check_fits(handle)
        handle.wake = self.wake
        with self._wake:
            # Requests that a free slot will take at the next turn are not
            # queued: a burst arriving between turns must not be refused
            # while slots stand empty.
            free_slots = max(0, self.max_active - len(self._active))
            if len(self._waiting) + len(self._preempted) - free_slots >= self.max_queue:
                # Roughly when a slot frees up: one request's worth of turns.
                retry = self._turn_seconds * handle.sampling.max_new_tokens
                raise QueueFull(len(self._waiting), retry_after_s=max(retry, 0.1))
            self._waiting.append(handle)
            self._wake.notify()

    def _check_fits(self, handle: RequestHandle) -> None:
        """Refuse a request whose sequences, at their longest, need more blocks than
        the pool has: it could never finish, however long it waited."""
        cfg, pool = handle.sampling, self.pool
        prompt = len(handle.prompt_ids)
        longest = min(prompt + cfg.max_new_tokens, self.context_length)
        reply = longest - prompt
        # Read again after a preemption, each sequence holds its own copy of the prompt.
        need = cfg.num_return_sequences * pool.blocks_for(longest)
        if need + pool.usable // 100 > pool.usable:
            tokens = pool.usable * pool.block_tokens
            raise TooLargeForKV(
                f"max_tokens: {cfg.num_return_sequences} sequence(s) of up to {longest} tokens "
                f"(a {prompt}-token prompt and {reply} new) need {need * pool.block_bytes >> 20} "
                f"MB of KV cache; this server's kv_cache_mb holds "
                f"{pool.usable * pool.block_bytes >> 20} MB (about {tokens} tokens in all)")

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
        return len(self._active), len(self._waiting) + len(self._preempted)

    @property
    def parked(self) -> int:
        return len(self._parked)

    @property
    def kv_blocks(self) -> dict[str, int]:
        """The pool's blocks by state (read by the metrics thread: a snapshot)."""
        cached = len(self.prefix_cache) if self.prefix_cache is not None else 0
        free = self.pool.free
        return {"free": free, "used": self.pool.usable - free, "prefix_cache": cached}

    # -- the scheduler thread ------------------------------------------------------------
    def _loop(self) -> None:
        # Pool blocks are written in here only; inference mode for the whole
        # thread keeps them cheap (no autograd bookkeeping).
        with torch.inference_mode():
            try:
                self.runner.prepare()
                self.lookup_drafts = self.lookup_drafts or self.int8_drafts_exact()
                self._warm_up()
            except Exception as exc:  # e.g. int8 asked of a model it cannot run
                self.start_error = exc
                self.ready.set()
                return
            self.ready.set()
            self._run()

    def int8_drafts_exact(self) -> bool:
        """int8 activations give a row the same numbers in any pass, so a draft's
        text is exact, provided attention is the same too: every draft pass (the
        last token and up to speculative_tokens guesses a row) and every one-token
        step in the paged kernel."""
        runner = self.runner
        return getattr(runner, "int8_activations", lambda: False)() \
            and getattr(runner, "attention_kernel", None) is not None \
            and self.speculative_tokens + 1 <= DECODE_QUERIES

    def _warm_up(self) -> None:
        """One token through the model before any request: the kernels are set up
        now, not while the first burst of requests waits for its first tokens
        (measured: 0.5 s on the first 32-request burst, fp32 CPU). With speculation
        on, also what a pass reading a draft costs against a plain one, here."""
        try:
            reach = min(DRAFT_COST_AT, self.context_length - 1 - self.speculative_tokens)
            blocks = self.pool.allocate(self.pool.blocks_for(max(64, reach + 16)))
            self.runner.forward(self.pool, [blocks],
                                torch.zeros(1, 1, dtype=torch.long, device=self.device), [0])
            if self.speculative_tokens:
                self.draft_cost, self.draft_cost_one = self._measure_draft_cost(
                    blocks, max(0, reach))
            self.pool.release(blocks)
        except Exception:  # the first request pays instead, or reports the error
            log.warning("engine warm-up failed", exc_info=True)
            self._reset("warm-up failed")

    def _measure_draft_cost(self, blocks: list[int], at: int) -> tuple[float, float]:
        """Time of a pass over 1 + speculative_tokens positions / over one, and over
        two / over one, at one row reading `at` earlier positions (each drafted
        position attends to them all: measured at 32, drafts looked cheaper than they
        were at an AR prompt's ~330), the best of three each, after one untimed pass
        of each shape."""
        def best(q_len: int) -> float:
            ids = torch.zeros(1, q_len, dtype=torch.long, device=self.device)
            self.runner.forward(self.pool, [blocks], ids, [at], keep=q_len)
            times = []
            for _ in range(3):
                began = time.perf_counter()
                self.runner.forward(self.pool, [blocks], ids, [at], keep=q_len)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                times.append(time.perf_counter() - began)
            return min(times)

        plain = best(1)
        cost, cost_one = best(1 + self.speculative_tokens) / plain, best(2) / plain
        log.info("speculation: a pass reading %d drafted tokens costs %.2fx a plain one, "
                 "reading one %.2fx%s", self.speculative_tokens, cost, cost_one,
                 " (prompt-lookup drafts cannot pay here: off)"
                 if cost_one > speculation.DraftLength.MAX_COST_ONE else "")
        return cost, cost_one

    def _run(self) -> None:
        while True:
            with self._wake:
                while (self._running and not self._active and not self._waiting
                       and not self._preempted and not self._calls and not self._parked_due()):
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
            began = time.perf_counter()
            try:
                plan = self.schedule()
                if plan.prefill or plan.decode:
                    self.update(plan, self.execute(plan))
            except Exception as exc:  # a failing batch must not kill the scheduler
                log.exception("model step failed; ending the %d request(s) in flight: %s",
                              len(self._active),
                              ", ".join(r.handle.request_id for r in self._active))
                self._reset(f"{type(exc).__name__}: {exc}")
            self._turn_seconds = 0.9 * self._turn_seconds + 0.1 * (time.perf_counter() - began)
        for req in list(self._active) + list(self._parked) + list(self._preempted):
            self._finish(req, FinishReason.ERROR, "server shutting down")
        for handle in self._waiting:
            handle.sink(StepOutput(finished=[
                SequenceEnd(i, FinishReason.ERROR, "server shutting down")
                for i in range(handle.sampling.num_return_sequences)]))
        self._waiting.clear()

    def _reset(self, error: str) -> None:
        """After a failed step: end every request in flight and start from a clean pool."""
        for req in self._active + self._parked + self._preempted:
            open_seqs = [SequenceEnd(i, FinishReason.ERROR, error)
                         for i, d in enumerate(req.done) if not d]
            _log(req.handle, logging.WARNING, "ended with an error: %s", error)
            if open_seqs:
                req.handle.sink(StepOutput(finished=open_seqs))
        self._active.clear()
        self._parked.clear()  # memory may be what failed: parked requests go too
        self._preempted.clear()
        self._readers.clear()
        self._decoding.clear()
        self.pool.reset()
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

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
                SequenceEnd(i, reason)
                for i in range(handle.sampling.num_return_sequences)]))

    # -- blocks --------------------------------------------------------------------------
    def _reserved(self) -> int:
        """Blocks the prompts being read still need to finish: promised, not yet taken."""
        return sum(self._blocks_to_cover(r.blocks, r.done, len(r.ids)) for r in self._readers)

    def _spare(self) -> int:
        """Blocks that can be handed out now without touching anyone's promise."""
        evictable = self.prefix_cache.evictable if self.prefix_cache is not None else 0
        return self.pool.free + evictable - self._reserved()

    def _take(self, count: int) -> list[int]:
        """`count` fresh blocks, evicting cached prefixes nobody uses if need be."""
        if self.pool.free < count and self.prefix_cache is not None:
            self.prefix_cache.evict(count - self.pool.free)
        return self.pool.allocate(count)

    def _cover_need(self, blocks: list[int], length: int, end: int) -> tuple[bool, int]:
        """(copy the block being written into: it is shared, new blocks past the end)
        for a table holding `length` tokens to be written up to position end - 1."""
        pool = self.pool
        first = length // pool.block_tokens
        copy = first < len(blocks) and pool.refs[blocks[first]] > 1
        return copy, max(0, pool.blocks_for(end) - len(blocks))

    def _blocks_to_cover(self, blocks: list[int], length: int, end: int) -> int:
        copy, missing = self._cover_need(blocks, length, end)
        return int(copy) + missing

    def _cover(self, blocks: list[int], length: int, end: int) -> None:
        """Make `blocks` (a table holding `length` tokens) writable up to position
        end - 1: new blocks past its end, and its own copy of a shared block it is
        about to write into."""
        copy, missing = self._cover_need(blocks, length, end)
        if copy:
            first = length // self.pool.block_tokens
            (own,) = self._take(1)
            self.pool.copy_block(blocks[first], own)
            self.pool.release([blocks[first]])
            blocks[first] = own
        if missing:
            blocks += self._take(missing)

    # -- admission -----------------------------------------------------------------------
    def _next_waiting(self) -> RequestHandle:
        """The oldest waiting request of the client with the fewest running: one
        client's burst does not keep another's single request waiting."""
        running = collections.Counter(req.handle.peer for req in self._active)
        return min(self._waiting, key=lambda h: running[h.peer])  # first of the fewest

    def _admit_fitting(self) -> None:
        """Preempted requests first, then waiting ones, while a place is free and
        their blocks fit (parked requests give up theirs when that is what it takes)."""
        while len(self._active) < self.max_active and (self._preempted or self._waiting):
            if self._preempted:
                req = self._preempted[0]
                need = sum(self.pool.blocks_for(len(ids)) for ids, _ in self._reading(req))
            else:
                handle = self._next_waiting()
                need = self.pool.blocks_for(len(handle.prompt_ids))
            # Room to spare beyond the prompt: a block for every decoding row's next
            # token and a sliver of the pool, so an admission is not preempted at once.
            margin = len(self._decoding) + self.pool.usable // 100
            if need + margin > self._spare():
                if self._drop_parked_blocks():
                    continue
                return
            if self._preempted:
                self._preempted.pop(0)
                self._start_reading(req)
                _log(req.handle, logging.DEBUG, "read again after a preemption")
            else:
                self._waiting.remove(handle)
                self._admit(handle)

    def _admit(self, handle: RequestHandle) -> None:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(handle.sampling.seed)
        n = handle.sampling.num_return_sequences
        seen = torch.zeros(n, self.vocab_size, dtype=torch.bool, device=self.device)
        text_ids = handle.prompt_ids[handle.prefix_len:]  # placeholders are not tokens
        if text_ids:
            seen[:, torch.tensor(text_ids, device=self.device)] = True
        self._arrivals += 1
        req = Request(handle=handle, generator=generator, seen=seen, done=[False] * n,
                       arrival=self._arrivals)
        if handle.features:  # projected here: all torch work stays on this thread
            req.prefix = self.projectors.embed(handle.features).to(self.runner.dtype)
        handle.started = time.perf_counter()
        _log(handle, logging.DEBUG, "admitted: %d prompt tokens, %d sequence(s), %d active",
             len(handle.prompt_ids), n, len(self._active) + 1)
        self._start_reading(req)

    def _reading(self, req: Request) -> list[tuple[list[int], int | None]]:
        """What `req` must read to go on: its prompt, or (after a preemption, once it
        has sequences) each open sequence's prompt and reply but the last token."""
        if not req.slots:
            return [(req.handle.prompt_ids, None)]
        return [(req.handle.prompt_ids + slot.generated[:-1], index)
                for index, slot in sorted(req.slots.items())]

    def _start_reading(self, req: Request) -> None:
        self._active.append(req)
        for ids, index in self._reading(req):
            reader = Reader(req, ids, index,
                             PromptState(None, req.arrival, 0, len(ids), req.handle.peer))
            reader.state.key = reader
            if self.prefix_cache is not None and not req.handle.features:
                reader.blocks, reader.done = self.prefix_cache.lookup(ids)
                if reader.done:
                    _log(req.handle, logging.DEBUG, "prefix cache: %d of %d tokens",
                         reader.done, len(ids))
            req.readers.append(reader)
            self._readers.append(reader)

    # -- preemption ------------------------------------------------------------------------
    def _preempt(self, req: Request) -> None:
        """Take back every block of `req`; it is read again (recomputed) later."""
        for slot in req.slots.values():
            self.pool.release(slot.blocks)
            slot.blocks, slot.length = [], 0
            if slot in self._decoding:
                self._decoding.remove(slot)
        for reader in req.readers:
            self.pool.release(reader.blocks)
            self._readers.remove(reader)
        req.readers.clear()
        self.preemptions += 1
        if req in self._parked:  # stays parked, now without blocks
            _log(req.handle, logging.DEBUG, "parked reply gave up its KV blocks")
            return
        self._active.remove(req)
        bisect.insort(self._preempted, req, key=lambda r: r.arrival)
        _log(req.handle, logging.INFO, "preempted after %d tokens: KV pool full (kv_cache_mb)",
             req.generated)

    def _drop_parked_blocks(self) -> bool:
        """The longest-parked request holding blocks gives them up; False if none does."""
        for req in self._parked:
            if req.blocks:
                self._preempt(req)
                return True
        return False

    def _make_room(self, need) -> None:
        """Preempt until need() blocks are spare: parked requests' blocks first, then
        the newest active request's (its promise to read a prompt included)."""
        while need() > self._spare():
            if self._drop_parked_blocks():
                continue
            if not self._active:
                raise MemoryError(f"KV pool: {need()} blocks wanted, {self._spare()} spare "
                                  "with nothing left to preempt")
            self._preempt(max(self._active, key=lambda r: r.arrival))

    # -- parking -------------------------------------------------------------------------
    def _parked_due(self) -> bool:
        """A parked request wants attention: resumed, cancelled, stopped, or past its
        deadline."""
        now = time.perf_counter()
        return any(not req.handle.paused or req.handle.cancel_reason is not None or
                   any(not req.done[i] for i in req.handle.stopped_sequences()) or
                   (req.handle.deadline is not None and now >= req.handle.deadline)
                   for req in self._parked)

    def _park_and_return(self) -> None:
        """Park paused requests whose sequences all decode; end parked ones that were
        cancelled, stopped or ran out of time; bring resumed ones back, places allowing."""
        for req in list(self._active):
            if req.handle.paused and req.slots and not req.readers:
                self._park(req)
        now = time.perf_counter()
        for req in list(self._parked):
            if not self._retire_if_leaving(req, now) and not req.handle.paused \
                    and len(self._active) < self.max_active:
                self._unpark(req)

    def _park(self, req: Request) -> None:
        for slot in req.slots.values():
            if slot in self._decoding:
                self._decoding.remove(slot)
        self._active.remove(req)
        self._parked.append(req)
        _log(req.handle, logging.DEBUG, "parked after %d tokens", req.generated)
        # Over the budget, the longest parked give their blocks back: their clients
        # left and did not return; if they ever do, the reply is read again.
        budget = self.parked_kv_bytes // self.pool.block_bytes
        while sum(len(r.blocks) for r in self._parked) > budget and self._drop_parked_blocks():
            pass

    def _unpark(self, req: Request) -> None:
        """Back into the batch with its blocks; without them, read again first."""
        self._parked.remove(req)
        if any(not slot.blocks for slot in req.slots.values()):
            for slot in req.slots.values():  # all or none: a request reads as one
                self.pool.release(slot.blocks)
                slot.blocks, slot.length = [], 0
            bisect.insort(self._preempted, req, key=lambda r: r.arrival)
        else:
            self._active.append(req)
            self._decoding += req.slots.values()
        _log(req.handle, logging.DEBUG, "resumed after %d tokens", req.generated)

    # -- leaving -------------------------------------------------------------------------
    def _retire_leaving(self) -> None:
        """Free every request that ends before this turn: sequences the servicer
        stopped (stop strings), cancelled or interrupted calls, deadlines."""
        now = time.perf_counter()
        for req in self._active + self._preempted:
            self._retire_if_leaving(req, now)

    def _retire_if_leaving(self, req: Request, now: float) -> bool:
        """Finish `req` (active or parked) if it ends before this turn; True if it did."""
        handle = req.handle
        for index in handle.stopped_sequences():
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

    def _finish(self, req: Request, reason: FinishReason, error: str = "") -> None:
        """End every open sequence of a request and free all it holds."""
        finished = [SequenceEnd(i, reason, error) for i, d in enumerate(req.done) if not d]
        req.done = [True] * req.n
        for index in list(req.slots):
            self._drop_slot(req, index)
        for reader in req.readers:
            self.pool.release(reader.blocks)
            self._readers.remove(reader)
        req.readers.clear()
        for queue in (self._active, self._parked, self._preempted):
            if req in queue:
                queue.remove(req)
        if finished:
            _log(req.handle, logging.DEBUG, "finished: %s after %d tokens", reason.name,
                 req.generated)
            req.handle.sink(StepOutput(finished=finished))

    def _drop_slot(self, req: Request, index: int) -> None:
        slot = req.slots.pop(index, None)
        if slot is None:
            return
        self.pool.release(slot.blocks)
        slot.blocks = []
        if slot in self._decoding:
            self._decoding.remove(slot)
        for reader in [r for r in req.readers if r.index == index]:  # read again, no more
            self.pool.release(reader.blocks)
            req.readers.remove(reader)
            self._readers.remove(reader)
            if not req.readers and req in self._active:  # the others were waiting for it
                self._decoding += [s for s in req.slots.values() if s not in self._decoding]

    # -- one turn: schedule, execute, update ----------------------------------------------
    def schedule(self) -> TurnPlan:
        """Retire, park and admit; then give every decoding sequence a block for its
        next token (preempting the newest when the pool is short) and pick the prompt
        chunks the prefill policy reads, with their blocks."""
        self._retire_leaving()
        self._park_and_return()
        with self._wake:
            self._drop_cancelled_waiting()
            self._admit_fitting()
        plan = TurnPlan()
        if self._decoding:
            # Every row writes position `length`: a new block where its table ends, a
            # copy where that block is shared. Short of blocks, the newest make room.
            self._make_room(lambda: sum(self._blocks_to_cover(s.blocks, s.length,
                                                              s.length + 1)
                                        for s in self._decoding))
            for slot in self._decoding:
                self._cover(slot.blocks, slot.length, slot.length + 1)
            plan.decode = list(self._decoding)
            plan.drafts = self._drafts(plan.decode)
        if self._readers:
            self._turns += 1
            for reader in self._readers:
                reader.state.done = reader.done
            chosen = self.prefill_policy.plan([r.state for r in self._readers], self._turns,
                                              self._prefill_budget())
            chunks = []
            for state, count in chosen:
                reader = state.key
                # Within the promise made at admission: nobody is preempted for this.
                self._cover(reader.blocks, reader.done, reader.done + count)
                chunks.append((reader, count))
                plan.prefill_work += self.prefill_policy.cost(reader.done, count)
            # While streams decode, one prefill pass a turn: each pass has a fixed cost
            # (on a GPU, launches), and the decoding streams wait for all of them.
            plan.prefill = [chunks] if plan.decode and chunks else group_passes(chunks)
        return plan

    def _drafts(self, rows: list[Slot]) -> list[list[int]]:
        """Each decode row's draft (speculation.py), its blocks covered; [] when the
        batch is too wide to gain, or for rows that cannot be verified exactly. A draft
        never preempts anyone: it is cut to the blocks spare."""
        if not self.speculative_tokens or len(rows) > self.speculative_rows:
            return []
        drafts = []
        for slot in rows:
            cfg = slot.req.handle.sampling
            draft: list[int] = []
            if speculation.can_speculate(cfg) and (cfg.forced or self.lookup_drafts):
                if slot.draft_length is None:
                    slot.draft_length = speculation.DraftLength(
                        self.speculative_tokens, self.draft_cost, self.draft_cost_one)
                # The reply's last token is read at `length`; a draft token past the
                # reply's limit or the context would never be kept.
                room = min(cfg.max_new_tokens - len(slot.generated),
                           self.context_length - 1 - slot.length)
                draft = speculation.propose(cfg, slot.req.handle.prompt_ids, slot.generated,
                                            slot.draft_length, room,
                                            self.speculative_forced_tokens)
                while draft and self._blocks_to_cover(slot.blocks, slot.length,
                                                      slot.length + 1 + len(draft)) \
                        > self._spare():
                    draft.pop()
                self._cover(slot.blocks, slot.length, slot.length + 1 + len(draft))
            drafts.append(draft)
        return drafts if any(drafts) else []

    def execute(self, plan: TurnPlan) -> TurnOutputs:
        """The forward passes of a plan; nothing else changes."""
        if plan.decode and self.on_decode_step is not None:
            self.on_decode_step(len(plan.decode))
        return self.executor.execute(plan)

    def update(self, plan: TurnPlan, outputs: TurnOutputs) -> None:
        """Apply a turn's results: lengths, the measured prefill speed, first tokens of
        prompts now read, every decoding sequence's next token."""
        for group in plan.prefill:
            for reader, count in group:
                reader.done += count
        if plan.prefill_work > 0:  # the next budget is what fits in prefill_turn_ms
            spent = outputs.prefill_s / plan.prefill_work
            self._prefill_s_per_work = spent if not self._prefill_s_per_work else \
                0.8 * self._prefill_s_per_work + 0.2 * spent
        if plan.decode:
            self._decoded(plan, outputs.decode_logits)
        for reader, last in outputs.finished_reading:
            self._done_reading(reader, last)

    def _decoded(self, plan: TurnPlan, logits: torch.Tensor) -> None:
        """Every decode row's next token, or, for a drafted row, the draft tokens the
        model agreed with and its own token after them."""
        drafts = plan.drafts or [[]] * len(plan.decode)
        plain = [row for row, draft in enumerate(drafts) if not draft]
        if plain:
            rows = [plan.decode[row] for row in plain]
            for slot in rows:
                slot.length += 1
            picked = logits[:, 0] if len(plain) == len(drafts) else logits[plain, 0]
            for req, indices, ids, lps in self.executor.sample_rows(rows, picked):
                self._emit(req, indices, ids, lps)
        for slot, draft, row_logits in zip(plan.decode, drafts, logits, strict=True):
            if not draft:
                continue
            tokens, lps = self.executor.verify(slot, draft, row_logits[:len(draft) + 1])
            kept = len(tokens) - 1
            self.drafted += len(draft)
            self.kept += kept
            if not slot.req.handle.sampling.forced:
                slot.draft_length.update(len(draft), kept)
            # Read this pass: the last token and the kept drafts (the positions after
            # them hold rejected guesses, written over by the next pass).
            slot.length += 1 + kept
            req = slot.req
            for token, lp in zip(tokens, lps, strict=True):
                if req.done[slot.index]:
                    break
                self._emit(req, [slot.index], [token], [lp])

    def _prefill_budget(self) -> float:
        """The turn's prefill work: all of `prefill_chunk_tokens`, unless streams are
        decoding, or a prompt is read deep (past SHARED_PASS_POSITIONS) while others
        wait for their first token: then what fits in `prefill_turn_ms` at the
        measured speed (deep in a long prompt a token costs more than the work model
        says: attention runs below the weights' speed)."""
        full = float(self.prefill_chunk_tokens)
        deep = any(r.done > SHARED_PASS_POSITIONS for r in self._readers)
        if not (self._decoding or (deep and len(self._readers) > 1)) \
                or not self.prefill_turn_s or not self._prefill_s_per_work:
            return full
        return min(full, self.prefill_turn_s / self._prefill_s_per_work)

    def _done_reading(self, reader: Reader, last_logits: torch.Tensor) -> None:
        req = reader.req
        req.readers.remove(reader)
        self._readers.remove(reader)
        if self.prefix_cache is not None and not req.handle.features:
            self.prefix_cache.store(reader.ids, reader.blocks)
        if reader.index is None:
            self._start_decoding(req, reader.blocks, last_logits)
            return
        # A preempted sequence read again: it goes on from its last token, already sent.
        slot = req.slots[reader.index]
        slot.blocks, slot.length = reader.blocks, len(reader.ids)
        if not req.readers:
            self._decoding += req.slots.values()

    def _start_decoding(self, req: Request, blocks: list[int],
                        last_logits: torch.Tensor) -> None:
        """Prompt done: sample the first tokens; every sequence holds the prompt's
        blocks (the first writes into its last one only after taking a copy)."""
        first = True
        for index in range(req.n):
            if req.done[index]:  # stopped before its first token: no slot
                continue
            if not first:
                self.pool.share(blocks)
            first = False
            slot = Slot(req, index, blocks=list(blocks), length=req.prompt_len)
            req.slots[index] = slot
            self._decoding.append(slot)
        if first:  # every sequence was stopped already: the prompt's blocks go back
            self.pool.release(blocks)
        ids, lps = self.executor.sample_first(req, last_logits)
        self._emit(req, list(range(req.n)), ids, lps)

    # -- emitting ----------------------------------------------------------------------
    def _emit(self, req: Request, indices: list[int], ids: list[int],
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
                slot.generated.append(token)  # the rules read it; a preemption re-reads it
                continue
            out.finished.append(SequenceEnd(index, reason, error))
            req.done[index] = True
            self._drop_slot(req, index)
        if all(req.done) and req in self._active:
            self._active.remove(req)
            _log(req.handle, logging.DEBUG, "finished after %d tokens", req.generated)
        req.handle.sink(out)
