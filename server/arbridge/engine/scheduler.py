"""The scheduler: the one owner of the model.

A dedicated thread runs the model so the asyncio event loop keeps streaming
while tensors are computed (torch releases the GIL inside its kernels).
Each turn of the loop admits waiting requests up to `max_active`, then gives
every active request one step (prefill for a new one, one decode token for the
others), round-robin, so no request waits for another to finish. Cancelled,
timed-out and finished requests leave at their next step and free their slot.

Each request keeps its own KV cache; its num_return_sequences sequences are
decoded together as one batch.
"""

from __future__ import annotations

import collections
import inspect
import logging
import threading
import time
from dataclasses import dataclass

import torch

from arbridge.engine.requests import (
    FinishReason,
    RequestHandle,
    SequenceFinished,
    StepOutput,
)
from arbridge.engine.sampling import sample

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """Admission refused: too many requests waiting."""

    def __init__(self, waiting: int, retry_after_s: float):
        super().__init__(f"server busy: {waiting} requests waiting")
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class _Active:
    handle: RequestHandle
    generator: torch.Generator
    cache: object | None = None  # transformers Cache
    last_ids: torch.Tensor | None = None  # [n] last sampled token per sequence
    seen: torch.Tensor | None = None  # [n, vocab] bool, for repetition penalty
    generated: int = 0
    done: list[bool] | None = None


class Scheduler:
    def __init__(self, model, tokenizer, *, context_length: int, max_active: int = 16,
                 max_queue: int = 64):
        self.model = model
        self.device = next(model.parameters()).device
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.context_length = context_length
        self.max_active = max_active
        self.max_queue = max_queue
        self.eos_ids = self._eos_ids(model, tokenizer)
        # transformers renamed `past_key_values` to `cache` (5.2x); accept both.
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._waiting: collections.deque[RequestHandle] = collections.deque()
        self._active: list[_Active] = []
        self._wake = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self._step_seconds = 0.05  # moving average, for the retry hint

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

    # -- lifecycle ---------------------------------------------------------
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

    # -- the servicer's side -------------------------------------------------
    def submit(self, handle: RequestHandle) -> None:
        with self._wake:
            if len(self._waiting) >= self.max_queue:
                # A slot frees roughly every (tokens per request) steps; hint at
                # one request's worth of steps.
                retry = self._step_seconds * handle.sampling.max_new_tokens
                raise QueueFull(len(self._waiting), retry_after_s=max(retry, 0.1))
            self._waiting.append(handle)
            self._wake.notify()

    @property
    def load(self) -> tuple[int, int]:
        """(active, waiting) request counts."""
        return len(self._active), len(self._waiting)

    # -- the scheduler thread ------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while self._running and not self._active and not self._waiting:
                    self._wake.wait()
                if not self._running:
                    break
                self._drop_cancelled_waiting()
                while self._waiting and len(self._active) < self.max_active:
                    self._active.append(self._admit(self._waiting.popleft()))
            for active in list(self._active):
                began = time.perf_counter()
                if self._step(active):
                    self._active.remove(active)
                self._step_seconds = 0.9 * self._step_seconds + 0.1 * (
                    time.perf_counter() - began)
        self._fail_all("server shutting down")

    def _drop_cancelled_waiting(self) -> None:
        """A request cancelled while queued leaves without ever running."""
        for handle in [h for h in self._waiting if h.cancel_reason is not None]:
            self._waiting.remove(handle)
            handle.sink(StepOutput(finished=[
                SequenceFinished(i, handle.cancel_reason)
                for i in range(handle.sampling.num_return_sequences)]))

    def _admit(self, handle: RequestHandle) -> _Active:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(handle.sampling.seed)
        return _Active(handle=handle, generator=generator,
                       done=[False] * handle.sampling.num_return_sequences)

    def _fail_all(self, message: str) -> None:
        for active in self._active:
            self._finish_all(active, FinishReason.ERROR, message)
        for handle in self._waiting:
            handle.sink(StepOutput(finished=[
                SequenceFinished(i, FinishReason.ERROR, message)
                for i in range(handle.sampling.num_return_sequences)]))
        self._active.clear()
        self._waiting.clear()

    def _finish_all(self, active: _Active, reason: FinishReason, error: str = "") -> None:
        finished = [SequenceFinished(i, reason, error)
                    for i, done in enumerate(active.done) if not done]
        active.done = [True] * len(active.done)
        if finished:
            active.handle.sink(StepOutput(finished=finished))

    def _step(self, active: _Active) -> bool:
        """Advance one request by one token. Returns True when it is finished."""
        handle = active.handle
        for index in handle.stopped_snapshot():
            active.done[index] = True
        if all(active.done):
            return True
        if handle.cancel_reason is not None:
            self._finish_all(active, handle.cancel_reason)
            return True
        if handle.deadline is not None and time.perf_counter() >= handle.deadline:
            self._finish_all(active, FinishReason.TIME_LIMIT)
            return True
        try:
            with torch.inference_mode():
                logits = self._forward(active)
                next_ids, logprobs = sample(logits, handle.sampling, active.seen,
                                            active.generator)
                active.seen[torch.arange(len(next_ids)), next_ids] = True
                active.last_ids = next_ids
            ids = next_ids.tolist()  # the one host sync per step
            lps = logprobs.tolist() if logprobs is not None else [None] * len(ids)
        except Exception as exc:  # a bad request must not kill the scheduler
            log.exception("request %d failed", handle.request_id)
            self._finish_all(active, FinishReason.ERROR, f"{type(exc).__name__}: {exc}")
            return True

        active.generated += 1
        out = StepOutput()
        out_of_room = (len(handle.prompt_ids) + active.generated >= self.context_length)
        for index, (token, lp) in enumerate(zip(ids, lps, strict=True)):
            if active.done[index]:
                continue
            if token in self.eos_ids:
                out.finished.append(SequenceFinished(index, FinishReason.EOS))
                active.done[index] = True
                continue
            out.tokens.append((index, token, lp))
            if active.generated >= handle.sampling.max_new_tokens or out_of_room:
                out.finished.append(SequenceFinished(index, FinishReason.LENGTH))
                active.done[index] = True
        handle.sink(out)
        return all(active.done)

    def _forward(self, active: _Active) -> torch.Tensor:
        handle = active.handle
        n = handle.sampling.num_return_sequences
        if active.cache is None:
            handle.started = time.perf_counter()
            prompt = torch.tensor([handle.prompt_ids], device=self.device).expand(n, -1)
            out = self.model(input_ids=prompt, use_cache=True, logits_to_keep=1)
            active.seen = torch.zeros(n, self.vocab_size, dtype=torch.bool, device=self.device)
            active.seen[:, prompt[0]] = True
        else:
            out = self.model(input_ids=active.last_ids[:, None], use_cache=True,
                             **{self._cache_kw: active.cache})
        cache = out.get("cache")
        active.cache = cache if cache is not None else out.get("past_key_values")
        return out.logits[:, -1, :]
