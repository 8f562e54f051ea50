"""The ArBridgeService servicer: validate -> build prompt -> submit -> stream.

The servicer never touches tensors: it hands prompts to a backend and turns
its outputs into messages (see output.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable

import grpc

from arbridge.backends import (
    Backend,
    BackendBusy,
    BackendRefused,
    BackendUnavailable,
    Prompt,
    RequestTooLarge,
)
from arbridge.config import Settings
from arbridge.engine.projector import ProjectorSet
from arbridge.engine.requests import FinishReason
from arbridge.engine.sampling import SamplingConfig
from arbridge.metrics import Metrics
from arbridge.serving import validation
from arbridge.serving.actions import ActionSet
from arbridge.serving.grounding import ground
from arbridge.serving.lexicon import names_of
from arbridge.serving.output import Event, OutputProcessor, Reply
from arbridge.serving.prompts import PromptBuilder, PromptTooLong
from arbridge.serving.scene_constraint import SceneConstraint
from arbridge.serving.sessions import Dialogue, DialogueState, Heard, SessionStore
from arbridge.serving.streams import (
    StreamForbidden,
    StreamNotFound,
    StreamStore,
    caller_of,
    resumable,
)
from arbridge.serving.structured import GrammarCompiler
from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import service_pb2_grpc
from arbridge.v1 import types_pb2 as pb

log = logging.getLogger(__name__)


class _Abort(Exception):
    """A request error to send as a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str,
                 trailers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.code, self.message, self.trailers = code, message, trailers


# What the servicer adds whatever the backend (GetModelInfo.features).
SERVICE_FEATURES = ("resumable_streams", "scene_versions", "scene_delta", "referents")

# Status messages travel in a trailer; clients drop trailers over 8-16 KiB, so a
# message echoing a huge field must not grow with it.
MAX_STATUS_MESSAGE_CHARS = 1000


def _client_status(exc: Exception) -> _Abort | None:
    status = _error_status(exc)
    if status is not None and len(status.message) > MAX_STATUS_MESSAGE_CHARS:
        status.message = status.message[:MAX_STATUS_MESSAGE_CHARS - 1] + "…"
    return status


def _error_status(exc: Exception) -> _Abort | None:
    if isinstance(exc, _Abort):
        return exc
    if isinstance(exc, validation.InvalidField):
        return _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, validation.Unsupported):
        return _Abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    if isinstance(exc, RequestTooLarge):
        return _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, BackendBusy):
        retry_ms = str(int(exc.retry_after_s * 1000))
        return _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"{exc}; retry after {retry_ms} ms", (("retry-after-ms", retry_ms),))
    if isinstance(exc, BackendUnavailable):
        return _Abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    if isinstance(exc, BackendRefused):
        return _Abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    if isinstance(exc, StreamNotFound):
        return _Abort(grpc.StatusCode.NOT_FOUND,
                      "stream_id: unknown or expired (a reply is kept "
                      "resume_grace_s after its client leaves); ask again")
    if isinstance(exc, StreamForbidden):
        return _Abort(grpc.StatusCode.PERMISSION_DENIED,
                      "stream_id: the stream belongs to another caller")
    return None


def _rpc(method):
    """Turn request errors raised inside a streaming handler into statuses."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            async for response in method(self, request, context):
                yield response
        except Exception as exc:
            status = _client_status(exc)
            if status is None:
                raise
            await context.abort(status.code, status.message,
                                trailing_metadata=status.trailers)

    return wrapper


class ArBridgeServicer(service_pb2_grpc.ArBridgeServiceServicer):
    def __init__(self, settings: Settings, ignore_eos: bool = False):
        self.settings = settings
        self._ignore_eos = ignore_eos  # `arbridge bench` only: every reply to max_new_tokens
        self._backend: Backend | None = None
        self._prompts: PromptBuilder | None = None
        self._projectors: ProjectorSet | None = None
        self.check: validation.RequestChecker | None = None  # once a backend is attached
        # Set when the server starts draining: idle Converse sessions end at once
        # with UNAVAILABLE (the client reconnects elsewhere) instead of holding
        # the shutdown for the whole grace period.
        self.draining = asyncio.Event()
        self._sessions = SessionStore(settings.max_ask_sessions, settings.ask_session_idle_s,
                                      settings.max_ask_session_bytes)
        self.streams = StreamStore(settings.resume_grace_s, settings.resume_stream_bytes,
                                   settings.resume_total_bytes, settings.max_streams_per_peer,
                                   settings.resume_detached_tokens)
        # context -> the client's address as the stream limits see it (set by the app,
        # which knows the gRPC-Web gateway's forwarding); the peer gRPC reports without.
        self.peer_of: Callable[[object], str] = lambda context: context.peer() or ""
        # Prompt building (scene text, chat template, tokenization) runs here, never
        # on the event loop: a huge request must not stall other streams. No torch
        # work happens here (see the README's note on OpenMP teams). One thread: a
        # prompt takes milliseconds, and on a small CPU a second one would take a core
        # from the model's threads.
        self._prompt_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="arbridge-prompt")
        # Every reply generating now, so a shutdown can end each with its Completion.
        self._replies: weakref.WeakSet[Reply] = weakref.WeakSet()

    def end_replies(self, reason: FinishReason) -> int:
        """End every reply still generating with `reason` (their readers then send the
        Completion, with the text so far); returns how many."""
        running = [reply for reply in self._replies if not reply.done]
        for reply in running:
            reply.cancel(reason)
        return len(running)

    def close(self) -> None:
        self.streams.close()
        self._prompt_pool.shutdown(wait=False, cancel_futures=True)

    def attach(self, backend: Backend, metrics: Metrics) -> None:
        """Called once the model has loaded; until then calls get UNAVAILABLE."""
        self._metrics = metrics
        self._prompts = PromptBuilder(backend.tokenizer, backend.info.context_length,
                                      self.settings.system_prompt)
        self._backend = backend
        self._projectors = backend.projectors
        backend_tokenizer = getattr(backend.tokenizer, "backend_tokenizer", None)
        if backend_tokenizer is not None:
            # Shared by the prompt thread and the event loop: no call may reconfigure
            # it (a tokenizer.json with truncation or padding would, on first use).
            backend_tokenizer.no_truncation()
            backend_tokenizer.no_padding()
        self._constraint = SceneConstraint(backend.tokenizer)
        self._grammars = (GrammarCompiler(backend.tokenizer, backend.vocab_size,
                                          self.settings.compiled_grammar_mb << 20)
                          if getattr(backend, "grammars", False) else None)
        self.check = validation.RequestChecker(
            self.settings, backend.projectors.input_dims() if backend.projectors else {},
            backend.unsupported, self._ignore_eos)

    async def warm_up(self) -> None:
        """Prefill the caption prompt's fixed part (system prompt, worked examples) once,
        so the prefix cache already holds it for the first caption a headset asks for."""
        scene = pb.SceneFeatures(objects=[pb.SceneObject(label="chair", confidence=1.0)])
        cfg = SamplingConfig(max_new_tokens=1, seed=0)
        try:
            prompt = await self._prompt(
                lambda budget: self._prompts.describe(scene, "", budget), "scene", cfg)
            async for _ in self._backend.generate(prompt, cfg, timeout_s=60.0):
                pass
        except Exception:  # the first caption pays instead
            log.warning("caption warm-up failed", exc_info=True)

    def _ready(self) -> None:
        if self._backend is None:
            raise _Abort(grpc.StatusCode.UNAVAILABLE, "model is still loading; retry shortly")

    # -- shared streaming path ---------------------------------------------
    def _timeout(self, context) -> float | None:
        remaining = context.time_remaining()
        if remaining is None:
            return None
        return max(remaining - self.settings.deadline_margin_ms / 1e3, 0.0)

    @property
    def _constraints_on(self) -> bool:
        # `arbridge bench` (ignore_eos) measures the engine on equal token counts: no
        # caption rules there, which end replies early on purpose.
        return self._backend.constraints and not self._ignore_eos

    async def _off_loop(self, fn, *args):
        """fn(*args) on the prompt thread: work that grows with the request (a scene's
        names to tokenize) must not hold the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._prompt_pool, fn, *args)

    def _rules(self, cfg: SamplingConfig, scene: pb.SceneFeatures | None, caption: bool,
               actions: ActionSet | None = None, field: str = "sampling") -> SamplingConfig:
        """`cfg` with its scene constraint and grammar (on the prompt thread)."""
        cfg = self._constraint.apply(cfg, scene, caption, self._constraints_on)
        if self._grammars is not None:
            cfg = self._grammars.apply(cfg, actions, field)
        return cfg

    def _dialogue_start(self, start: spb.ConverseStart, field: str) -> DialogueState:
        state = self.check.dialogue_start(start, field)
        if state.actions and self._grammars is None:
            raise validation.Unsupported(f"{field}.actions", "needs the local engine (the "
                                         "upstream decodes without the bridge's grammar)")
        return state

    async def _prompt(self, build: Callable[[int], Prompt], field: str, cfg: SamplingConfig,
                      features: list[tuple[str, list[float]]] = ()) -> Prompt:
        """build(token budget for the reply) -> the prompt, with the soft-prompt prefix
        of any dense features in front (it takes room in the context window too).
        `build` runs on the prompt thread: it must not touch state the loop mutates."""
        prefix_len = self._projectors.prefix_length(features) if features else 0
        try:
            prompt = await self._off_loop(build, cfg.max_new_tokens + prefix_len)
        except PromptTooLong as exc:
            raise validation.InvalidField(field, str(exc)) from exc
        if not features:
            return prompt
        tok = self._backend.tokenizer
        placeholder = tok.pad_token_id if tok.pad_token_id is not None else 0
        return prompt.with_prefix(features, prefix_len, placeholder)

    async def _turn_prompt(self, state: DialogueState, turn: validation.TurnCall,
                           field: str) -> Prompt:
        """The prompt of `turn` in `state`'s dialogue, built on the prompt thread."""
        history = list(state.history)  # a snapshot: replies append to it meanwhile
        system_prompt = state.system_prompt
        return await self._prompt(
            lambda budget: self._prompts.converse(turn.scene, history, turn.text, budget,
                                                  system_prompt, turn.referents,
                                                  turn.actions),
            f"{field}.text", turn.sampling, turn.features)

    def _generate(self, prompt: Prompt, cfg: SamplingConfig, context, arrived: float,
                  objects: list[pb.SceneObject] | None = None,
                  continues_prompt: bool = False, caption: bool = False,
                  scene_version: int = 0, referents: list[pb.Referent] = (),
                  actions: ActionSet | None = None) -> Reply:
        """Start generating; the reply's Completions are grounded in `objects` if given
        and report `referents`; `actions` split the reply's calls from its text."""
        generation = self._backend.generate(prompt, cfg, timeout_s=self._timeout(context),
                                            client=self.peer_of(context))
        processor = OutputProcessor(self._backend.tokenizer, prompt.ids, cfg.stop,
                                    cfg.num_return_sequences, cfg.seed, arrived, self._metrics,
                                    cfg.max_sentences, continues_prompt,
                                    _caption_names(objects) if caption and cfg.object_rules
                                    else None, actions)
        grounder = functools.partial(ground, objects=objects) if objects is not None else None
        reply = Reply(generation, processor, grounder, scene_version, list(referents))
        self._replies.add(reply)
        return reply

    async def _deliver(self, response_type, reply: Reply, context, options,
                       on_done=None, **fields):
        """The reply's events as `response_type` messages numbered by seq; a resumable
        one runs in the stream store (it outlives this call) and is followed here."""
        if not resumable(options):
            seq = 0
            async for event in reply:
                seq += 1
                yield _wrap(response_type, event, seq=seq, **fields)
            return
        stream = self._open_stream(reply, context, on_done, **fields)
        async for response in self._follow(response_type, stream, **fields):
            yield response

    def _open_stream(self, reply: Reply, context, on_done=None, session_id: str = "",
                     turn_id: int = 0):
        return self.streams.open(caller_of(context.invocation_metadata()), reply,
                                 reply.sequences, session_id, turn_id, on_done,
                                 peer=self.peer_of(context))

    async def _follow(self, response_type, stream, after_seq: int = 0, **fields):
        first = True
        async for seq, event in self.streams.follow(stream, after_seq):
            yield _wrap(response_type, event, seq=seq, stream_id=stream.id if first else "",
                        **fields)
            first = False

    # -- RPCs -----------------------------------------------------------------
    @_rpc
    async def Generate(self, request: spb.GenerateRequest, context):
        arrived = time.perf_counter()
        self._ready()
        call = self.check.generate(request)
        prompt = await self._prompt(lambda budget: self._prompts.raw(call.prompt, budget),
                                    "prompt", call.sampling)
        cfg = call.sampling
        if cfg.response_format is not None and self._grammars is not None:
            cfg = await self._off_loop(self._grammars.apply, cfg)
        reply = self._generate(prompt, cfg, context, arrived, continues_prompt=True)
        async for response in self._deliver(spb.GenerateResponse, reply, context,
                                            request.stream):
            yield response

    @_rpc
    async def DescribeScene(self, request: spb.DescribeSceneRequest, context):
        arrived = time.perf_counter()
        self._ready()
        call = self.check.describe_scene(request)
        prompt = await self._prompt(
            lambda budget: self._prompts.describe(call.scene, call.instruction, budget),
            "scene", call.sampling, call.features)
        # After the prompt: a request refused for its size costs no constraint work.
        cfg = await self._off_loop(self._rules, call.sampling, call.scene, True)
        reply = self._generate(prompt, cfg, context, arrived, objects=list(call.scene.objects),
                               caption=True, scene_version=call.scene.scene_version,
                               referents=call.referents)
        async for response in self._deliver(spb.DescribeSceneResponse, reply, context,
                                            request.stream):
            yield response

    @_rpc
    async def Resume(self, request: spb.ResumeRequest, context):
        if not request.stream_id:
            raise validation.InvalidField("stream_id", "is required")
        stream = self.streams.get(request.stream_id, caller_of(context.invocation_metadata()))
        if request.after_seq > len(stream.events):
            raise validation.InvalidField(
                "after_seq", f"{request.after_seq} is past the stream's last event "
                             f"({len(stream.events)})")
        self.streams.resumed += 1
        async for response in self._follow(spb.ResumeResponse, stream, request.after_seq,
                                           session_id=stream.session_id,
                                           turn_id=stream.turn_id):
            yield response

    async def CancelStream(self, request: spb.CancelStreamRequest, context):
        try:
            if not request.stream_id:
                raise validation.InvalidField("stream_id", "is required")
            self.streams.cancel(request.stream_id, caller_of(context.invocation_metadata()))
        except Exception as exc:
            status = _client_status(exc)
            if status is None:
                raise
            await context.abort(status.code, status.message)
        return spb.CancelStreamResponse()

    @_rpc
    async def Ask(self, request: spb.AskRequest, context):
        self._ready()
        if not request.HasField("user_turn"):
            raise validation.InvalidField("user_turn", "is required")
        session = None
        caller = caller_of(context.invocation_metadata())
        if request.session_id:
            session = self._sessions.get(request.session_id, caller)
            if session is None:
                raise _Abort(grpc.StatusCode.NOT_FOUND,
                             "session_id: unknown or expired; start a new session with the "
                             "dialogue so far in start.history")
            dialogue = session
        else:
            dialogue = Dialogue(self._dialogue_start(request.start, "start"))
        scene = self.check.scene(request.scene, "scene") if request.HasField("scene") \
            else dialogue.state.scene
        if request.HasField("scene_delta"):
            scene = self.check.scene_delta(scene, request.scene_delta, "scene_delta")
        # Checked before anything changes: a bad turn leaves the session as it was.
        turn = self.check.user_turn(request.user_turn, dialogue.state.with_scene(scene),
                                    "user_turn")
        turn.sampling = await self._off_loop(self._rules, turn.sampling, turn.scene, False,
                                             turn.actions, "user_turn.sampling")
        scene_version = turn.scene.scene_version if turn.scene is not None else 0
        reply = await dialogue.begin_turn(
            lambda state: self._turn_prompt(state, turn, "user_turn"),
            lambda prompt: self._generate(prompt, turn.sampling, context, time.perf_counter(),
                                          turn.objects, scene_version=scene_version,
                                          referents=turn.referents, actions=turn.actions))
        if reply is None:  # a newer turn of this session came first: it is answered
            dialogue.state.record(turn.text, "", self.settings.max_dialogue_turns)
            yield spb.AskResponse(session_id=session.id, seq=1, completion=pb.Completion(
                finish_reason=pb.FINISH_REASON_INTERRUPTED))
            return
        # Started: from here on the turn counts (a full queue changed nothing).
        if session is None:
            session = self._sessions.create(dialogue, caller)
        state = session.state
        state.scene = scene
        turn_id = state.take_turn_id(request.user_turn.turn_id)
        if resumable(request.stream):
            # The reply runs on if the client goes; the session hears it all at its end.
            def done(events) -> None:
                session.end_turn(turn.text, Heard.of(events).text,
                                 self.settings.max_dialogue_turns)
                self._sessions.touch(session)

            async for response in self._deliver(spb.AskResponse, reply, context,
                                                request.stream, done, session_id=session.id,
                                                turn_id=turn_id):
                yield response
            return
        heard = Heard()
        finished = False

        def finish(_context=None) -> None:
            # Runs once, whether the reply ended, was interrupted, or the client left
            # (grpc.aio may never resume a handler whose client went away).
            nonlocal finished
            if finished:
                return
            finished = True
            reply.cancel(FinishReason.CANCELLED)
            session.end_turn(turn.text, heard.text, self.settings.max_dialogue_turns)
            self._sessions.touch(session)

        context.add_done_callback(finish)
        try:
            seq = 0
            async for event in reply:
                heard.add(event)
                seq += 1
                yield _wrap(spb.AskResponse, event, seq=seq, session_id=session.id,
                            turn_id=turn_id)
        finally:
            finish()

    async def GetModelInfo(self, request, context):
        if self._backend is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "model is still loading")
        i = self._backend.info
        return spb.GetModelInfoResponse(
            model_name=i.name, architecture=i.architecture, parameter_count=i.parameter_count,
            context_length=i.context_length, dtype=i.dtype, device=i.device,
            source_format=i.source_format, num_layers=i.num_layers, hidden_size=i.hidden_size,
            vocab_size=i.vocab_size, features=[*i.features, *SERVICE_FEATURES],
            max_new_tokens_limit=self.settings.max_new_tokens_limit)

    @_rpc
    async def Converse(self, request_iterator, context):
        self._ready()
        session = _ConverseSession(self, context)
        async for response in session.run(request_iterator):
            yield response


def _caption_names(objects) -> list[set[str]]:
    """Each distinct label's names, for ending a caption once all are named."""
    labels = sorted({o.label.strip().lower() for o in objects or ()})
    return [names_of(label) for label in labels]


def _wrap(response_type, event: Event, **fields):
    if isinstance(event, pb.TokenChunk):
        return response_type(chunk=event, **fields)
    if isinstance(event, pb.ActionCall):
        return response_type(action=event, **fields)
    return response_type(completion=event, **fields)


class _ConverseSession:
    """One Converse stream: a reader task feeds requests, replies run one at a time.

    A user turn arriving mid-reply cancels the reply in flight with
    INTERRUPTED, waits for its Completion to be sent, then starts the next
    (`Dialogue.begin_turn`, as Ask does).
    """

    def __init__(self, servicer: ArBridgeServicer, context):
        self.servicer = servicer
        self.settings = servicer.settings
        self.context = context
        self.started = False
        self.dialogue = Dialogue(DialogueState())
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.reply_task: asyncio.Task | None = None
        self.reply_stream = None
        self.resumable = False  # ConverseStart.stream: every reply outlives the stream

    def _replying(self) -> bool:
        return self.reply_task is not None and not self.reply_task.done()

    async def run(self, requests) -> AsyncIterator[spb.ConverseResponse]:
        reader = asyncio.create_task(self._read(requests))
        drain = asyncio.ensure_future(self.servicer.draining.wait())
        try:
            while True:
                if drain.done() and not self._replying() and self.outbox.empty():
                    # The reply in flight (if any) has been delivered whole.
                    raise _Abort(grpc.StatusCode.UNAVAILABLE,
                                 "server is shutting down; reconnect and resend the dialogue")
                get = asyncio.ensure_future(self.outbox.get())
                # Also wake when draining starts, or (draining) when the reply ends.
                waits = {get}
                if not drain.done():
                    waits.add(drain)
                elif self._replying():
                    waits.add(self.reply_task)
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    continue
                item = get.result()
                if item is None:  # reader finished and the last reply is done
                    break
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            drain.cancel()
            reader.cancel()
            if self.reply_stream is not None and not self.resumable:
                self.reply_stream.cancel(FinishReason.CANCELLED)  # even if the task never ran
            if self.reply_task is not None:
                self.reply_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read(self, requests) -> None:
        try:
            index = 0
            async for req in requests:
                await self._handle(req, index)
                index += 1
            if self.reply_task is not None:
                await self.reply_task
            await self.outbox.put(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self.outbox.put(exc)

    async def _handle(self, req: spb.ConverseRequest, index: int) -> None:
        kind = req.WhichOneof("event")
        if kind is None:
            raise validation.InvalidField(f"request[{index}].event", "is empty")
        if kind == "start":
            if self.started or index != 0:
                raise validation.InvalidField(f"request[{index}].start",
                                              "only the first message may start the session")
            self.dialogue = Dialogue(self.servicer._dialogue_start(req.start, "start"))
            self.resumable = resumable(req.start.stream)
        elif kind == "scene_update":
            self.dialogue.state.scene = self.servicer.check.scene(
                req.scene_update, f"request[{index}].scene_update")
        elif kind == "scene_delta":
            self.dialogue.state.scene = self.servicer.check.scene_delta(
                self.dialogue.state.scene, req.scene_delta, f"request[{index}].scene_delta")
        elif kind == "cancel":
            if self.reply_stream is not None:
                self.reply_stream.cancel(FinishReason.CANCELLED)
        elif kind == "user_turn":
            await self._user_turn(req.user_turn, f"request[{index}].user_turn")
        self.started = True

    async def _user_turn(self, turn: spb.UserTurn, field: str) -> None:
        if self.servicer.draining.is_set():
            raise _Abort(grpc.StatusCode.UNAVAILABLE,
                         "server is shutting down; reconnect and resend the dialogue")
        checked = self.servicer.check.user_turn(turn, self.dialogue.state, field)
        checked.sampling = await self.servicer._off_loop(
            self.servicer._rules, checked.sampling, checked.scene, False, checked.actions,
            f"{field}.sampling")
        version = checked.scene.scene_version if checked.scene is not None else 0
        self.reply_stream = await self.dialogue.begin_turn(
            lambda state: self.servicer._turn_prompt(state, checked, field),
            lambda prompt: self.servicer._generate(prompt, checked.sampling, self.context,
                                                   time.perf_counter(), checked.objects,
                                                   scene_version=version,
                                                   referents=checked.referents,
                                                   actions=checked.actions))
        turn_id = self.dialogue.state.take_turn_id(turn.turn_id)
        stream = None
        if self.resumable:  # opened here: the reply is owned even if the task never runs
            stream = self.servicer._open_stream(
                self.reply_stream, self.context,
                functools.partial(self._record, checked.text), turn_id=turn_id)
        self.reply_task = asyncio.create_task(self._reply(turn_id, checked.text,
                                                          self.reply_stream, stream))

    def _record(self, user_text: str, events) -> None:
        """A resumable reply's end: the session hears all of it."""
        self.dialogue.end_turn(user_text, Heard.of(events).text,
                               self.settings.max_dialogue_turns)

    async def _reply(self, turn_id: int, user_text: str, reply: Reply, stream=None) -> None:
        heard = Heard()
        try:
            if stream is not None:
                async for response in self.servicer._follow(spb.ConverseResponse, stream,
                                                            turn_id=turn_id):
                    await self.outbox.put(response)
                return
            async for response in self.servicer._deliver(
                    spb.ConverseResponse, reply, self.context, None, turn_id=turn_id):
                heard.add(getattr(response, response.WhichOneof("event")))
                await self.outbox.put(response)
        except Exception as exc:
            await self.outbox.put(exc)
        finally:
            if stream is None:
                self.dialogue.end_turn(user_text, heard.text, self.settings.max_dialogue_turns)
