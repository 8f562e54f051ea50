"""Checked calls become running replies.

`ReplyFactory` owns what turns a spec into tokens on their way: the prompt
(scene text, chat template and tokenization, on the prompt thread), the logit
rules compiled for the request (scene constraint, grammar), and the backend's
generation wrapped in a `Reply`. Every reply generating now is known here, so a
shutdown can end each with its Completion.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import weakref
from collections.abc import Callable
from dataclasses import replace

from arbridge.backends import Backend, Prompt
from arbridge.config import Settings
from arbridge.generation import FinishReason, SamplingConfig
from arbridge.metrics import Metrics
from arbridge.serving.calls import DescribeCall, GenerateCall, ReplySpec, TurnCall
from arbridge.serving.caption_plan import plan_caption
from arbridge.serving.delivery import Client
from arbridge.serving.dialogue import DialogueState
from arbridge.serving.output import OutputProcessor, Reply
from arbridge.serving.prompts import PromptBuilder, PromptTooLong
from arbridge.serving.referents import gazed_object
from arbridge.serving.scene_constraint import CAPTION_MAX_SENTENCES, SceneConstraint
from arbridge.serving.structured import GrammarCompiler
from arbridge.serving.validation import InvalidField
from arbridge.v1 import types_pb2 as pb

log = logging.getLogger(__name__)


class ReplyFactory:
    def __init__(self, backend: Backend, settings: Settings, metrics: Metrics,
                 ignore_eos: bool = False):
        self._backend = backend
        self._metrics = metrics
        self._margin_s = settings.deadline_margin_ms / 1e3
        self._scene_captions = settings.scene_captions
        self._ignore_eos = ignore_eos  # a benchmark: no reply is computed
        tokenizer = backend.tokenizer
        self._prompts = PromptBuilder(tokenizer, backend.info.context_length,
                                      settings.system_prompt)
        self._projectors = backend.projectors
        fast = getattr(tokenizer, "backend_tokenizer", None)  # a fast (Rust) tokenizer
        if fast is not None:
            # Shared by the prompt thread and the event loop: no call may reconfigure
            # it (a tokenizer.json with truncation or padding would, on first use).
            fast.no_truncation()
            fast.no_padding()
        # `arbridge bench` (ignore_eos) measures the engine on equal token counts: no
        # caption rules there, which end replies early on purpose.
        self._constraint = (SceneConstraint(tokenizer)
                            if backend.constraints and not ignore_eos else None)
        self._grammars = (GrammarCompiler(tokenizer, backend.vocab_size,
                                          settings.compiled_grammar_mb << 20)
                          if backend.grammars else None)
        # Prompt building runs here, never on the event loop: a huge request must not
        # stall other streams. No torch work happens here (a second OpenMP team slows
        # the model's). One thread: a prompt takes milliseconds, and on a small CPU a
        # second one would take a core from the model's threads.
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="arbridge-prompt")
        self._replies: weakref.WeakSet[Reply] = weakref.WeakSet()

    # -- the three kinds of reply -----------------------------------------------------
    async def text_reply(self, call: GenerateCall, client: Client) -> Reply:
        call.arrived = client.arrived
        prompt = await self._prompt(lambda budget: self._prompts.raw(call.prompt, budget), call)
        await self.prepare(call)
        return self.start(prompt, call, client)

    async def caption_reply(self, call: DescribeCall, client: Client) -> Reply:
        call.arrived = client.arrived
        prompt = await self._prompt(lambda budget: self._caption_prompt(call, budget), call)
        # After the prompt: a request refused for its size costs no constraint work.
        await self.prepare(call)
        return self.start(prompt, call, client)

    async def turn_prompt(self, state: DialogueState, call: TurnCall) -> Prompt:
        """The prompt of `call` in `state`'s dialogue as it stands now."""
        history = list(state.history)  # a snapshot: replies append to it meanwhile
        system_prompt = state.system_prompt

        def build(budget: int) -> Prompt:
            # A computed answer the engine speaks as it is (`prepare` decided) needs no
            # hint in the prompt (a shorter prompt: the first token comes sooner); one it
            # cannot is given to the model to say.
            return self._prompts.converse(
                call.scene, history, call.text, budget, system_prompt, call.referents,
                call.actions, None if call.forced_ids else call.scene_answer,
                hints=not call.forced_ids)

        return await self._prompt(build, call)

    def _caption_prompt(self, call: DescribeCall, budget: int) -> Prompt:
        """The caption's prompt, and (without an instruction, which only a model can
        follow) the caption composed from the scene, fitted to the reply's budget."""
        if self._scene_captions and not call.instruction.strip() and \
                call.response_format is None:
            room = call.sampling.max_new_tokens - 1  # and the end of sequence
            counted: dict[str, list[int]] = {}  # each text tried, tokenized once

            def fits(text: str) -> bool:
                counted[text] = self._ids(text)
                return len(counted[text]) <= room

            gazed = gazed_object(call.referents, call.scene)
            plan = plan_caption(call.scene, {gazed.id} if gazed else set(), fits)
            if plan is not None:
                call.caption_plan, call.scene_answer = plan, plan.text
                call.forced_ids = self._forced(plan.text, call.sampling.max_new_tokens,
                                               counted.get(plan.text))
        caption = None if call.forced_ids else call.scene_answer
        return self._prompts.describe(call.scene, call.instruction, budget, caption)

    def _ids(self, text: str) -> list[int]:
        return self._backend.tokenizer(text, add_special_tokens=False,
                                       split_special_tokens=True).input_ids

    def _forced(self, text: str | None, max_new_tokens: int,
                ids: list[int] | None = None) -> tuple[int, ...] | None:
        """`text`'s tokens and the end of sequence, when they fit the budget whole (the
        local engine holds the model to them; the upstream backend streams them
        itself); else None."""
        eos = self._backend.tokenizer.eos_token_id
        if not text or self._ignore_eos or eos is None:
            return None
        ids = self._ids(text) if ids is None else ids
        return (*ids, eos) if len(ids) < max_new_tokens else None

    # -- the steps ----------------------------------------------------------------------
    async def prepare(self, spec: ReplySpec) -> None:
        """Compile `spec`'s logit rules (scene constraint, grammar) on the prompt thread."""
        spec.sampling = await self._off_loop(self._rules, spec)
        # A caption ends after its sentence, before a small model re-lists the scene;
        # a format shapes the reply instead, a composed caption ends where it ends.
        if spec.caption and self._constraint is not None and spec.response_format is None \
                and not spec.forced_ids:
            spec.max_sentences = CAPTION_MAX_SENTENCES

    def _rules(self, spec: ReplySpec) -> SamplingConfig:
        cfg = spec.sampling
        if spec.forced_ids is None:
            spec.forced_ids = self._forced(spec.scene_answer, cfg.max_new_tokens)
        if spec.forced_ids:
            # The computed words, then the end: the model speaks them, so a small model
            # cannot garble a fact. (Tokens, not a grammar: nothing to compile, so the
            # first token comes as soon as without them.) No other rule has a say, and
            # none is built: the first token does not wait for a noun mask.
            return replace(cfg, forced=spec.forced_ids)
        if self._constraint is not None:
            cfg = self._constraint.apply(cfg, spec.scene, spec.caption, spec.scene_constraint)
        if self._grammars is not None:
            cfg = self._grammars.apply(cfg, spec.response_format, spec.actions,
                                       spec.sampling_field)
        return cfg

    async def _prompt(self, build: Callable[[int], Prompt], spec: ReplySpec) -> Prompt:
        """build(token budget for the reply) -> the prompt, with the soft-prompt prefix
        of any dense features in front (it takes room in the context window too).
        `build` runs on the prompt thread: it must not touch state the loop mutates."""
        features = spec.features
        prefix_len = self._projectors.prefix_length(features) if features else 0
        try:
            prompt = await self._off_loop(build, spec.sampling.max_new_tokens + prefix_len)
        except PromptTooLong as exc:
            raise InvalidField(spec.prompt_field, str(exc)) from exc
        if not features:
            return prompt
        tok = self._backend.tokenizer
        placeholder = tok.pad_token_id if tok.pad_token_id is not None else 0
        return prompt.with_prefix(features, prefix_len, placeholder)

    def start(self, prompt: Prompt, spec: ReplySpec, client: Client) -> Reply:
        """Start generating (raises BackendBusy when the backend is full)."""
        generation = self._backend.generate(prompt, spec.sampling,
                                            timeout_s=client.timeout(self._margin_s),
                                            client=client.peer)
        processor = OutputProcessor(self._backend.tokenizer, prompt.ids, spec, self._metrics)
        reply = Reply(generation, processor, spec)
        self._replies.add(reply)
        return reply

    async def _off_loop(self, fn, *args):
        """fn(*args) on the prompt thread: work that grows with the request (a scene's
        names to tokenize) must not hold the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- the server's life ---------------------------------------------------------------
    async def warm_up(self) -> None:
        """Prefill the caption prompt's fixed part (system prompt, worked examples) once,
        so the prefix cache already holds it for the first caption a headset asks for."""
        scene = pb.SceneFeatures(objects=[pb.SceneObject(label="chair", confidence=1.0)])
        call = DescribeCall(instruction="", sampling=SamplingConfig(max_new_tokens=1),
                            scene=scene)
        try:
            prompt = await self._prompt(
                lambda budget: self._prompts.describe(scene, "", budget), call)
            async for _ in self._backend.generate(prompt, call.sampling, timeout_s=60.0):
                pass
        except Exception:  # the first caption pays instead
            log.warning("caption warm-up failed", exc_info=True)

    def end_all(self, reason: FinishReason) -> int:
        """End every reply still generating with `reason` (their readers then send the
        Completion, with the text so far); returns how many."""
        running = [reply for reply in self._replies if not reply.done]
        for reply in running:
            reply.cancel(reason)
        return len(running)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
