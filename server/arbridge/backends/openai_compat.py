"""Generation forwarded to an OpenAI-compatible server: vLLM, TGI, TensorRT-LLM's
trtllm-serve or `transformers serve`, through its streaming /v1/completions API.

The bridge keeps everything AR-specific: the contract, validation, prompt
building (with the upstream model's own tokenizer and chat template, so the
upstream continues exactly the text the local engine would), stop strings,
finish reasons, deadlines and grounding. The upstream only continues the text.
Raw completions rather than chat completions, so the prompt (scene sentences,
trimmed history) is the bridge's and not the upstream's template's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import openai

from arbridge.backends import (
    BackendBusy,
    BackendRefused,
    BackendUnavailable,
    Delta,
    Outputs,
    Prompt,
)
from arbridge.config import Settings
from arbridge.generation import FinishReason, SamplingConfig, SequenceEnd
from arbridge.models.loader import ModelInfo

try:  # the HTTP library openai is built on (httpx2 in openai >= 3)
    import httpx2 as httpx
except ImportError:  # pragma: no cover - openai 1.x/2.x
    import httpx

log = logging.getLogger(__name__)

_FINISH = {"length": FinishReason.LENGTH, "stop": FinishReason.EOS}
_DEFAULT_RETRY_S = 1.0


class BackendConfigError(ValueError):
    """--backend openai is missing something it needs."""


def map_error(exc: Exception) -> Exception:
    """An upstream failure -> the backend error the servicer turns into a status."""
    if isinstance(exc, openai.RateLimitError):
        retry = exc.response.headers.get("retry-after", "")
        try:
            retry_s = max(float(retry), 0.0)
        except ValueError:
            retry_s = _DEFAULT_RETRY_S
        return BackendBusy("upstream is overloaded (429)", retry_after_s=retry_s)
    if isinstance(exc, openai.APIStatusError):
        detail = f"upstream answered {exc.status_code}: {exc.message}"
        if exc.status_code >= 500:
            return BackendUnavailable(detail)
        return BackendRefused(detail)
    if isinstance(exc, openai.APIConnectionError):
        return BackendUnavailable(f"cannot reach the upstream engine: {exc}")
    if isinstance(exc, (openai.APIError, httpx.TransportError, OSError)):
        return BackendUnavailable(f"upstream stream failed: {type(exc).__name__}: {exc}")
    return exc


def _read_model_files(path: str, context_length: int | None):
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        config = None
    context = context_length or getattr(config, "max_position_embeddings", None) or \
        getattr(config, "n_positions", None)
    if not context:
        raise BackendConfigError(f"no context length in {path}; set --backend-context-length")
    return tokenizer, config, int(context)


class OpenAIBackend:
    def __init__(self, client: openai.AsyncOpenAI, settings: Settings, tokenizer,
                 info: ModelInfo):
        self.client = client
        self.settings = settings
        self.model = settings.backend_model
        self.tokenizer = tokenizer
        self.info = info
        self.projectors = None  # text only: dense features are refused upstream
        self.constraints = False  # no scene-constrained decoding upstream
        self.grammars = False  # nor grammar-constrained decoding
        self.active = 0

    @staticmethod
    def check_settings(settings: Settings) -> None:
        """Fail at start, before the port opens, when a required flag is missing."""
        if not settings.backend_url or not settings.backend_model:
            raise BackendConfigError("--backend openai needs --backend-url and --backend-model")
        if settings.projectors:
            raise BackendConfigError("--projector needs the local engine (an upstream "
                                     "engine is sent text only)")
        if not (settings.tokenizer or settings.model):
            raise BackendConfigError(
                "--backend openai needs the upstream model's tokenizer for prompt building: "
                "--tokenizer DIR (or --model DIR; its weights are not loaded)")

    @classmethod
    async def connect(cls, settings: Settings) -> OpenAIBackend:
        cls.check_settings(settings)
        source = settings.tokenizer or settings.model
        tokenizer, config, context = await asyncio.to_thread(
            _read_model_files, source, settings.backend_context_length)
        key = "unused"
        if settings.backend_api_key_file is not None:
            key = Path(settings.backend_api_key_file).read_text().strip()
        client = openai.AsyncOpenAI(base_url=settings.backend_url, api_key=key, max_retries=0,
                                    timeout=settings.backend_timeout_s)
        info = ModelInfo(
            name=settings.backend_model,
            architecture=(config.architectures or ["upstream"])[0] if config else "upstream",
            source_format="openai-upstream", parameter_count=0, context_length=context,
            num_layers=getattr(config, "num_hidden_layers", 0) or 0,
            hidden_size=getattr(config, "hidden_size", 0) or 0, vocab_size=len(tokenizer),
            dtype="upstream", device=settings.backend_url,
            has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
            features=["upstream"] + (["chat_template"] if tokenizer.chat_template else []))
        backend = cls(client, settings, tokenizer, info)
        try:
            models = await client.models.list()
            served = [m.id for m in models.data]
            if served and settings.backend_model not in served:
                log.warning("upstream %s serves %s, not %s", settings.backend_url, served,
                            settings.backend_model)
        except Exception as exc:  # serve anyway: calls get UNAVAILABLE until it is up
            log.warning("upstream %s not reachable yet: %s", settings.backend_url,
                        map_error(exc))
        log.info("generation forwarded to %s (model %s)", settings.backend_url,
                 settings.backend_model)
        return backend

    def unsupported(self, cfg: SamplingConfig) -> list[tuple[str, str]]:
        out = []
        if cfg.logprobs:
            out.append(("logprobs", "not available through the upstream backend"))
        if not self.settings.backend_extended_sampling:
            hint = ("the upstream's OpenAI API has no such parameter (start the bridge with "
                    "--backend-extended-sampling for vLLM or TGI)")
            if cfg.top_k:
                out.append(("top_k", hint))
            if cfg.repetition_penalty != 1.0:
                out.append(("repetition_penalty", hint))
            if cfg.num_return_sequences > 1:
                out.append(("num_return_sequences", hint))
        return out

    def generate(self, prompt: Prompt, cfg: SamplingConfig, *,
                 timeout_s: float | None, client: str = "") -> OpenAIGeneration:
        return OpenAIGeneration(self, prompt, cfg, timeout_s)

    def request_body(self, prompt: Prompt, cfg: SamplingConfig) -> dict:
        body = dict(model=self.model, prompt=prompt.text, max_tokens=cfg.max_new_tokens,
                    temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed, stream=True,
                    stream_options={"include_usage": True})
        if self.settings.backend_extended_sampling:  # vLLM / TGI extensions
            body["n"] = cfg.num_return_sequences
            body["extra_body"] = {"top_k": cfg.top_k or -1,
                                  "repetition_penalty": cfg.repetition_penalty,
                                  "add_special_tokens": prompt.special_tokens}
        return body

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def load(self) -> tuple[int, int]:
        return self.active, 0

    async def close(self) -> None:
        await self.client.close()


class _Stopped(Exception):
    def __init__(self, reason: FinishReason):
        self.reason = reason


_END = object()


async def _next(iterator):
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:  # cannot cross a Task boundary as itself
        return _END


@dataclass
class _Sequence:
    chunks: int = 0
    finish: FinishReason | None = None
    done: bool = False  # ended: a finish reason arrived and was reported, or stopped


class OpenAIGeneration:
    def __init__(self, backend: OpenAIBackend, prompt: Prompt, cfg: SamplingConfig,
                 timeout_s: float | None):
        self._backend = backend
        self._prompt = prompt
        self._cfg = cfg
        self._deadline = time.perf_counter() + timeout_s if timeout_s is not None else None
        # Resolved with the reason by cancel(); awaited beside each upstream read.
        self._stop: asyncio.Future = asyncio.get_running_loop().create_future()
        self._seqs = [_Sequence() for _ in range(cfg.num_return_sequences)]
        self.started: float | None = None
        self._usage_tokens: int | None = None

    def cancel(self, reason: FinishReason = FinishReason.CANCELLED) -> None:
        if not self._stop.done():
            self._stop.set_result(reason)

    def stop_sequence(self, index: int) -> None:
        self._seqs[index].done = True

    def pause(self) -> None:
        """An upstream stream cannot be paused: it runs on (bounded by the resume
        buffer's bytes and grace time)."""

    def resume(self) -> None:
        pass

    async def _until(self, awaitable):
        """Await the upstream, unless cancelled or the deadline comes first (_Stopped)."""
        task = asyncio.ensure_future(awaitable)
        timeout = None if self._deadline is None else max(
            self._deadline - time.perf_counter(), 0.0)
        try:
            done, _ = await asyncio.wait({task, self._stop}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                return task.result()
            raise _Stopped(self._stop.result() if self._stop.done()
                           else FinishReason.TIME_LIMIT)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def __aiter__(self) -> AsyncIterator[Outputs]:
        if self._cfg.forced:
            async for out in self._spoken():
                yield out
            return
        backend = self._backend
        backend.active += 1
        stream = None
        stopped: FinishReason | None = None
        try:
            try:
                stream = await self._until(backend.client.completions.create(
                    **backend.request_body(self._prompt, self._cfg)))
                self.started = time.perf_counter()
                chunks = stream.__aiter__()
                # Read to the end even after every finish_reason: the usage
                # chunk may come last (vLLM). Stop strings end it early.
                while not all(s.done for s in self._seqs):
                    chunk = await self._until(_next(chunks))
                    if chunk is _END:
                        break
                    out = self._outputs(chunk)
                    if out.deltas:
                        yield out
            except _Stopped as stop:
                stopped = stop.reason
            except openai.APITimeoutError:
                stopped = FinishReason.TIME_LIMIT  # upstream too slow: keep what came
            except Exception as exc:
                mapped = map_error(exc)
                if mapped is exc:
                    raise
                raise mapped from exc
            yield self._ends(stopped)
        finally:
            backend.active -= 1
            if stream is not None:  # closes the HTTP response: the upstream stops too
                with contextlib.suppress(Exception):
                    await stream.close()

    async def _spoken(self) -> AsyncIterator[Outputs]:
        """A reply the bridge computed (a scene answer, a composed caption: `forced`,
        ending with EOS): the upstream could only repeat it, and a small one would not
        even do that, so it is not asked; the tokens stream as the engine's would."""
        self.started = time.perf_counter()
        reason, sent = FinishReason.EOS, 0
        for token in self._cfg.forced[:-1]:
            if self._stop.done():
                reason = self._stop.result()
                break
            if self._deadline is not None and time.perf_counter() >= self._deadline:
                reason = FinishReason.TIME_LIMIT
                break
            yield Outputs(deltas=[Delta(i, token_id=token) for i in range(len(self._seqs))])
            sent += 1
            await asyncio.sleep(0)  # one token at a time, as generated ones come
        yield Outputs(ends=[SequenceEnd(i, reason, completion_tokens=sent)
                            for i, seq in enumerate(self._seqs) if not seq.done])

    def _outputs(self, chunk) -> Outputs:
        out = Outputs()
        if getattr(chunk, "usage", None) is not None:
            self._usage_tokens = chunk.usage.completion_tokens
        for choice in chunk.choices or ():
            if not 0 <= choice.index < len(self._seqs):
                continue
            seq = self._seqs[choice.index]
            if seq.done:
                continue
            if choice.text:
                seq.chunks += 1
                out.deltas.append(Delta(choice.index, text=choice.text))
            if choice.finish_reason:
                seq.finish = _FINISH.get(choice.finish_reason, FinishReason.EOS)
        return out

    def _ends(self, stopped: FinishReason | None) -> Outputs:
        """Every sequence not stopped by the processor ends: with the upstream's finish
        reason, else why reading stopped."""
        out = Outputs()
        for index, seq in enumerate(self._seqs):
            if seq.done:
                continue
            reason = seq.finish or stopped
            if reason is None:
                raise BackendUnavailable("the upstream ended the stream before finishing")
            tokens = seq.chunks
            if self._usage_tokens is not None and len(self._seqs) == 1 and \
                    reason in (FinishReason.LENGTH, FinishReason.EOS):
                tokens = self._usage_tokens
            out.ends.append(SequenceEnd(index, reason, completion_tokens=tokens))
        return out
