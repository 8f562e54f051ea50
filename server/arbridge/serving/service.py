"""The ArBridgeService servicer: each RPC adapted to the modules that serve it.

A handler checks the request into a spec (calls.py), hands it to what serves
it (replies.py for Generate and DescribeScene; ask.py and converse.py, over
turns.py, for dialogue turns; streams.py for Resume and CancelStream) and
yields what comes back. Request errors become statuses in status.py. The
servicer never touches tensors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from arbridge.backends import Backend
from arbridge.config import Settings
from arbridge.generation import FinishReason
from arbridge.metrics import Metrics
from arbridge.serving.ask import AskRoute
from arbridge.serving.calls import CallBuilder
from arbridge.serving.converse import ConverseSession
from arbridge.serving.delivery import Client, Delivery
from arbridge.serving.replies import ReplyFactory
from arbridge.serving.sessions import SessionStore
from arbridge.serving.status import Abort, rpc
from arbridge.serving.streams import StreamStore, resumable
from arbridge.serving.turns import TurnRunner
from arbridge.serving.validation import InvalidField
from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import service_pb2_grpc

# What the servicer adds whatever the backend (GetModelInfo.features).
SERVICE_FEATURES = ("resumable_streams", "scene_versions", "scene_delta", "referents")


class ArBridgeServicer(service_pb2_grpc.ArBridgeServiceServicer):
    def __init__(self, settings: Settings, ignore_eos: bool = False):
        self.settings = settings
        self._ignore_eos = ignore_eos  # `arbridge bench` only: every reply to max_new_tokens
        self._backend: Backend | None = None
        # Set when the server starts draining: idle Converse sessions end at once
        # with UNAVAILABLE (the client reconnects elsewhere) instead of holding
        # the shutdown for the whole grace period.
        self.draining = asyncio.Event()
        self.streams = StreamStore(settings.resume_grace_s, settings.resume_stream_bytes,
                                   settings.resume_total_bytes, settings.max_streams_per_peer,
                                   settings.resume_detached_tokens)
        self._delivery = Delivery(self.streams)
        self._sessions = SessionStore(settings.max_ask_sessions, settings.ask_session_idle_s,
                                      settings.max_ask_session_bytes)
        # context -> the client's address as the stream limits see it (set by the app,
        # which knows the gRPC-Web gateway's forwarding); the peer gRPC reports without.
        self.peer_of: Callable[[object], str] = lambda context: context.peer() or ""
        self._calls: CallBuilder | None = None  # these four once a backend is attached
        self._replies: ReplyFactory | None = None
        self._turns: TurnRunner | None = None
        self._ask: AskRoute | None = None

    def attach(self, backend: Backend, metrics: Metrics) -> None:
        """Called once the model has loaded; until then calls get UNAVAILABLE."""
        settings = self.settings
        self._calls = CallBuilder(settings, backend, self._ignore_eos)
        self._replies = ReplyFactory(backend, settings, metrics, self._ignore_eos)
        self._turns = TurnRunner(self._replies, self._delivery)
        self._ask = AskRoute(self._calls, self._sessions, self._turns,
                             settings.max_dialogue_turns)
        self._backend = backend

    async def warm_up(self) -> None:
        await self._replies.warm_up()

    def end_replies(self, reason: FinishReason) -> int:
        """End every reply still generating with `reason`; returns how many."""
        return self._replies.end_all(reason) if self._replies is not None else 0

    def close(self) -> None:
        self.streams.close()
        if self._replies is not None:
            self._replies.close()

    def _client(self, context) -> Client:
        if self._backend is None:
            raise Abort(grpc.StatusCode.UNAVAILABLE, "model is still loading; retry shortly")
        return Client.of(context, self.peer_of)

    # -- RPCs -----------------------------------------------------------------------------
    @rpc
    async def Generate(self, request: spb.GenerateRequest, context):
        client = self._client(context)
        call = self._calls.generate_call(request)
        reply = await self._replies.text_reply(call, client)
        async for response in self._delivery.responses(spb.GenerateResponse, reply, client,
                                                       resumable(request.stream)):
            yield response

    @rpc
    async def DescribeScene(self, request: spb.DescribeSceneRequest, context):
        client = self._client(context)
        call = self._calls.describe_call(request)
        reply = await self._replies.caption_reply(call, client)
        async for response in self._delivery.responses(spb.DescribeSceneResponse, reply,
                                                       client, resumable(request.stream)):
            yield response

    @rpc
    async def Ask(self, request: spb.AskRequest, context):
        async for response in self._ask(request, self._client(context)):
            yield response

    @rpc
    async def Converse(self, request_iterator, context):
        session = ConverseSession(self._calls, self._turns, self.settings.max_dialogue_turns,
                                  self.draining, self._client(context))
        async for response in session.run(request_iterator):
            yield response

    @rpc
    async def Resume(self, request: spb.ResumeRequest, context):
        if not request.stream_id:
            raise InvalidField("stream_id", "is required")
        stream = self.streams.get(request.stream_id, Client.of(context, self.peer_of).owner)
        if request.after_seq > len(stream.events):
            raise InvalidField(
                "after_seq", f"{request.after_seq} is past the stream's last event "
                             f"({len(stream.events)})")
        self.streams.resumed += 1
        async for response in self._delivery.follow(spb.ResumeResponse, stream,
                                                     request.after_seq,
                                                     session_id=stream.session_id,
                                                     turn_id=stream.turn_id):
            yield response

    @rpc
    async def CancelStream(self, request: spb.CancelStreamRequest, context):
        if not request.stream_id:
            raise InvalidField("stream_id", "is required")
        self.streams.cancel(request.stream_id, Client.of(context, self.peer_of).owner)
        return spb.CancelStreamResponse()

    @rpc
    async def GetModelInfo(self, request, context):
        if self._backend is None:
            raise Abort(grpc.StatusCode.UNAVAILABLE, "model is still loading")
        i = self._backend.info
        return spb.GetModelInfoResponse(
            model_name=i.name, architecture=i.architecture, parameter_count=i.parameter_count,
            context_length=i.context_length, dtype=i.dtype, device=i.device,
            source_format=i.source_format, num_layers=i.num_layers, hidden_size=i.hidden_size,
            vocab_size=i.vocab_size, features=[*i.features, *SERVICE_FEATURES],
            max_new_tokens_limit=self.settings.max_new_tokens_limit)
