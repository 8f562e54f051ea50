"""The local engine as a backend: scheduler step outputs -> neutral `Outputs`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from arbridge.backends import (
    BackendBusy,
    Delta,
    Outputs,
    Prompt,
    RequestTooLarge,
)
from arbridge.engine.async_engine import AsyncEngine, RequestStream
from arbridge.engine.scheduler import QueueFull, Scheduler, TooLargeForKV
from arbridge.engine.soft_prompts import ProjectorSet
from arbridge.generation import FinishReason, SamplingConfig
from arbridge.logs import REQUEST_ID
from arbridge.metrics import Metrics
from arbridge.models.loader import ModelInfo


class LocalBackend:
    def __init__(self, scheduler: Scheduler, tokenizer, info: ModelInfo, metrics: Metrics,
                 projectors: ProjectorSet | None = None):
        self.scheduler = scheduler
        self.projectors = projectors
        self.engine = AsyncEngine(scheduler)
        self.tokenizer = tokenizer
        self.info = info
        self.constraints = True  # scene-constrained decoding, no-repeat n-grams
        self.grammars = True  # response_format and actions (grammar-constrained decoding)
        for feature in ("scene_constraint", "response_format", "scene_actions"):
            if feature not in info.features:
                info.features.append(feature)
        scheduler.on_decode_step = metrics.batch_size.observe

    def unsupported(self, cfg: SamplingConfig) -> list[tuple[str, str]]:
        return []

    def generate(self, prompt: Prompt, cfg: SamplingConfig, *,
                 timeout_s: float | None, client: str = "") -> LocalGeneration:
        try:
            stream = self.engine.submit(prompt.ids, cfg, timeout_s=timeout_s,
                                        features=prompt.features, prefix_len=prompt.prefix_len,
                                        request_id=REQUEST_ID.get(), peer=client)
        except QueueFull as exc:
            raise BackendBusy(str(exc), exc.retry_after_s) from exc
        except TooLargeForKV as exc:  # waiting would not help: the request's own limits
            raise RequestTooLarge(str(exc)) from exc
        return LocalGeneration(stream)

    @property
    def vocab_size(self) -> int:
        """The width of the model's logits (the grammar masks' width)."""
        return self.scheduler.vocab_size

    @property
    def load(self) -> tuple[int, int]:
        return self.scheduler.load

    async def close(self) -> None:
        await asyncio.to_thread(self.scheduler.stop)


class LocalGeneration:
    def __init__(self, stream: RequestStream):
        self._stream = stream

    @property
    def started(self) -> float | None:
        return self._stream.handle.started

    def cancel(self, reason: FinishReason = FinishReason.CANCELLED) -> None:
        self._stream.cancel(reason)

    def stop_sequence(self, index: int) -> None:
        self._stream.stop_sequence(index)

    def pause(self) -> None:
        self._stream.pause()

    def resume(self) -> None:
        self._stream.resume()

    async def __aiter__(self) -> AsyncIterator[Outputs]:
        async for step in self._stream:
            yield Outputs([Delta(index, token_id=token, logprob=logprob)
                           for index, token, logprob in step.tokens],
                          step.finished, step.at)
