"""The local engine as a backend: scheduler token ids -> messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from arbridge.backends import Grounder
from arbridge.engine.async_engine import AsyncEngine, RequestStream
from arbridge.engine.loader import ModelInfo
from arbridge.engine.projector import ProjectorSet
from arbridge.engine.requests import FinishReason
from arbridge.engine.sampling import SamplingConfig
from arbridge.engine.scheduler import Scheduler
from arbridge.logs import REQUEST_ID
from arbridge.metrics import Metrics
from arbridge.prompts import Prompt
from arbridge.streaming import Event, OutputProcessor
from arbridge.v1 import types_pb2 as pb


class LocalBackend:
    def __init__(self, scheduler: Scheduler, tokenizer, info: ModelInfo, metrics: Metrics,
                 projectors: ProjectorSet | None = None):
        self.scheduler = scheduler
        self.projectors = projectors
        self.engine = AsyncEngine(scheduler)
        self.tokenizer = tokenizer
        self.info = info
        self.metrics = metrics
        scheduler.on_decode_step = metrics.batch_size.observe

    def unsupported(self, cfg: SamplingConfig) -> list[tuple[str, str]]:
        return []

    def generate(self, prompt: Prompt, cfg: SamplingConfig, *, arrived: float,
             timeout_s: float | None, ground: Grounder | None) -> LocalGeneration:
        stream = self.engine.open(prompt.ids, cfg, timeout_s=timeout_s,
                                  features=prompt.features, prefix_len=prompt.prefix_len,
                                  request_id=REQUEST_ID.get())
        processor = OutputProcessor(self.tokenizer, stream, arrived, len(prompt.ids), ground)
        return LocalGeneration(stream, processor, arrived, self.metrics)

    @property
    def load(self) -> tuple[int, int]:
        return self.scheduler.load

    async def close(self) -> None:
        await asyncio.to_thread(self.scheduler.stop)


class LocalGeneration:
    def __init__(self, stream: RequestStream, processor: OutputProcessor, arrived: float,
                 metrics: Metrics):
        self._stream = stream
        self._processor = processor
        self._arrived = arrived
        self._metrics = metrics

    def cancel(self, reason: FinishReason = FinishReason.CANCELLED) -> None:
        self._stream.cancel(reason)

    async def __aiter__(self) -> AsyncIterator[Event]:
        m = self._metrics
        last_step_at = None
        async for step in self._stream:
            if step.tokens:  # latencies per decode step, as the engine sees them
                m.tokens.inc(len(step.tokens))
                if last_step_at is None:
                    m.ttft.observe(step.at - self._arrived)
                else:
                    m.itl.observe(step.at - last_step_at)
                last_step_at = step.at
            for event in self._processor.process(step):
                if isinstance(event, pb.Completion):
                    m.completions.labels(pb.FinishReason.Name(event.finish_reason)).inc()
                yield event
