"""asyncio face of the scheduler: submit a request, iterate its step outputs.

Leaving the iteration early (client gone, exception, task cancelled) cancels
the request, so its slot is freed at the scheduler's next step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from arbridge.engine.requests import RequestHandle, StepOutput
from arbridge.engine.scheduler import Scheduler
from arbridge.generation import FinishReason, SamplingConfig


class AsyncEngine:
    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler

    def submit(self, prompt_ids: list[int], sampling: SamplingConfig,
             timeout_s: float | None = None,
             features: list[tuple[str, list[float]]] | None = None,
             prefix_len: int = 0, request_id: str | None = None,
             peer: str = "") -> RequestStream:
        """Queue a request (raises QueueFull) and return its output stream."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StepOutput] = asyncio.Queue()

        def sink(out: StepOutput) -> None:  # runs on the scheduler thread
            loop.call_soon_threadsafe(queue.put_nowait, out)

        deadline = time.perf_counter() + timeout_s if timeout_s is not None else None
        handle = RequestHandle(prompt_ids=list(prompt_ids), sampling=sampling, sink=sink,
                               deadline=deadline, features=list(features or []),
                               prefix_len=prefix_len, peer=peer)
        if request_id:
            handle.request_id = request_id
        self.scheduler.submit(handle)
        return RequestStream(handle, queue)


class RequestStream:
    """Async iterator of StepOutputs until every sequence has finished."""

    def __init__(self, handle: RequestHandle, queue: asyncio.Queue[StepOutput]):
        self.handle = handle
        self._queue = queue
        self._open = set(range(handle.sampling.num_return_sequences))

    def stop_sequence(self, index: int) -> None:
        """The caller ended a sequence itself (stop string)."""
        self._open.discard(index)
        self.handle.stop_sequence(index)

    def cancel(self, reason: FinishReason = FinishReason.CANCELLED) -> None:
        self.handle.cancel(reason)

    def pause(self) -> None:
        self.handle.pause()

    def resume(self) -> None:
        self.handle.resume()

    async def __aiter__(self) -> AsyncIterator[StepOutput]:
        try:
            while self._open:
                out = await self._queue.get()
                for fin in out.finished:
                    self._open.discard(fin.index)
                yield out
        finally:
            if self._open:
                self.handle.cancel(FinishReason.CANCELLED)
