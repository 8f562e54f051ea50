"""Builds and runs the grpc.aio server: ArBridge, health, reflection, metrics.

The port opens before the model loads so orchestrators can probe it: health
says NOT_SERVING (and ArBridge calls get UNAVAILABLE) until the model is ready.
Shutdown drains: health NOT_SERVING, new calls UNAVAILABLE, calls in flight
get up to `grace_seconds` to finish, then the rest are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from arbridge.backends import Backend
from arbridge.backends.local import LocalBackend
from arbridge.config import Settings, megatron_overrides
from arbridge.engine.scheduler import Scheduler
from arbridge.engine.soft_prompts import ProjectorSet
from arbridge.generation import FinishReason
from arbridge.metrics import Metrics
from arbridge.models.loader import LoadedModel, load_model
from arbridge.security import TokenChecker, load_tokens, server_credentials, warn_if_exposed
from arbridge.serving import interceptors
from arbridge.serving.service import ArBridgeServicer
from arbridge.v1 import service_pb2, service_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["ArBridgeService"].full_name
MAX_SEND_BYTES = 16 * 1024 * 1024
# After the grace: how long replies get to send their SHUTDOWN Completion (the engine
# ends them at its next turn) before the calls left are cancelled.
SHUTDOWN_FLUSH_S = 5.0


def server_options(s: Settings) -> list[tuple[str, int]]:
    ms = lambda seconds: int(seconds * 1000)  # noqa: E731
    return [
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        ("grpc.keepalive_time_ms", ms(s.keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", ms(s.keepalive_timeout_s)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", ms(s.min_client_ping_interval_s)),
        ("grpc.http2.max_ping_strikes", 2),
        # Keep pinging a peer that has gone quiet, so a vanished one is noticed.
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_connection_idle_ms", ms(s.max_connection_idle_s)),
        ("grpc.max_connection_age_ms", ms(s.max_connection_age_s)),
        ("grpc.max_connection_age_grace_ms", ms(s.max_connection_age_grace_s)),
        # A port already in use is an error, not a silent second listener.
        ("grpc.so_reuseport", 0),
    ]


def _in_daemon_thread(fn, *args, **kwargs) -> asyncio.Future:
    """fn(*args) in a daemon thread. A SIGTERM during a long model load then exits
    at once; asyncio.to_thread's executor threads would be joined at exit."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def deliver(setter, value) -> None:
        if not future.done():
            setter(value)

    def run() -> None:
        try:
            outcome = (future.set_result, fn(*args, **kwargs))
        except BaseException as exc:
            outcome = (future.set_exception, exc)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            loop.call_soon_threadsafe(deliver, *outcome)

    threading.Thread(target=run, name="arbridge-load", daemon=True).start()
    return future


class ArBridgeServer:
    def __init__(self, settings: Settings, *, ignore_eos: bool = False):
        """`ignore_eos` is for `arbridge bench` only: every reply runs to max_new_tokens
        through EOS, so every contender generates the same number of tokens."""
        self.settings = settings
        self.metrics = Metrics()
        self.servicer = ArBridgeServicer(settings, ignore_eos)
        self.metrics.watch_streams(self.servicer.streams)
        self.health = health.aio.HealthServicer()
        # Fails fast (SecurityConfigError) on unreadable files or half a key pair.
        self.credentials = server_credentials(settings)
        if settings.backend == "openai":
            from arbridge.backends.openai_compat import OpenAIBackend

            OpenAIBackend.check_settings(settings)  # BackendConfigError
        self.interceptors = interceptors.chain(
            TokenChecker(load_tokens(settings)), self.metrics,
            public_infra=settings.public_health,
            max_streams_per_peer=settings.max_streams_per_peer)
        self.drain = self.interceptors.drain
        peers = self.interceptors.peers
        self.servicer.peer_of = lambda context: peers.peer_of(
            interceptors.Call("", context, False, True))
        self.scheduler: Scheduler | None = None  # the local backend's
        self.backend: Backend | None = None
        self.loaded: LoadedModel | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self.grpc_web = None  # GrpcWebGateway when --grpc-web-port is set
        self.grpc_web_port: int | None = None
        if settings.grpc_web_port is not None:  # ConnectionLimitError: fails fast
            from arbridge.serving import web_connections

            self.open_files = web_connections.open_file_limit()
            self.grpc_web_connections = web_connections.connection_cap(
                settings.grpc_web_max_connections, self.open_files)

    async def start(self) -> int:
        """Open the port (health NOT_SERVING). Returns the bound port."""
        s = self.settings
        warn_if_exposed(s, tls=self.credentials is not None,
                        tokens=self.interceptors.auth.tokens.enabled)
        server = grpc.aio.server(interceptors=self.interceptors.chain,
                                 options=server_options(s))
        service_pb2_grpc.add_ArBridgeServiceServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{s.host}:{s.port}"
        try:
            if self.credentials is not None:
                self.port = server.add_secure_port(address, self.credentials)
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot bind {address}: {exc}") from exc
        if self.port == 0:
            raise RuntimeError(f"cannot bind {address}")
        if s.grpc_web_port is not None:
            # A private loopback listener for the gRPC-Web gateway's native calls.
            internal = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._server = server
        if s.grpc_web_port is not None:
            try:
                await self._start_grpc_web(internal)
            except BaseException:
                await server.stop(0)  # no half-started server left listening
                raise
        if s.metrics_port is not None:
            self.metrics_port = self.metrics.serve(s.metrics_host, s.metrics_port)
            log.info("Prometheus metrics on http://%s:%d/metrics", s.metrics_host,
                     self.metrics_port)
        log.info("listening on %s:%d (%s%s; health NOT_SERVING until the model is loaded)",
                 s.host, self.port,
                 "plaintext" if self.credentials is None
                 else "mTLS" if s.tls_client_ca is not None else "TLS",
                 ", token auth" if self.interceptors.auth.tokens.enabled else "")
        return self.port

    async def _start_grpc_web(self, internal_port: int) -> None:
        from arbridge.serving import web_connections
        from arbridge.serving.grpc_web import GrpcWebGateway, new_gateway_key

        s = self.settings
        cap = self.grpc_web_connections
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(web_connections.accept_error_handler(loop))
        key = new_gateway_key()
        self.interceptors.peers.gateway_key = key
        self.grpc_web = GrpcWebGateway(f"127.0.0.1:{internal_port}", gateway_key=key,
                                       cors_origins=s.grpc_web_cors_origins,
                                       max_message_bytes=s.max_message_bytes,
                                       playground=s.grpc_web_playground,
                                       max_connections=cap,
                                       header_timeout_s=s.grpc_web_header_timeout_s,
                                       keepalive_s=s.grpc_web_keepalive_s)
        host = s.grpc_web_host or s.host
        self.grpc_web_port = await self.grpc_web.start(
            host, s.grpc_web_port,
            tls_cert=str(s.tls_cert) if s.tls_cert else None,
            tls_key=str(s.tls_key) if s.tls_key else None)
        scheme = "https" if s.tls_cert else "http"
        log.info("gRPC-Web on %s://%s:%d (unary and server-streaming methods; at most %d "
                 "connections, open files %d)", scheme, host, self.grpc_web_port, cap,
                 self.open_files)
        if s.grpc_web_playground:
            shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
            log.info("playground: %s://%s:%d/", scheme, shown, self.grpc_web_port)

    async def load(self, preloaded: LoadedModel | None = None) -> None:
        """Load the model (off the event loop) or connect upstream, then go SERVING."""
        s = self.settings
        if s.backend == "openai":
            from arbridge.backends.openai_compat import OpenAIBackend

            self.backend = await OpenAIBackend.connect(s)
        else:
            self.backend = await self._load_local(preloaded)
        self.metrics.watch(self.backend)
        self.servicer.attach(self.backend, self.metrics)
        if s.backend == "local":
            await self.servicer.warm_up()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("SERVING %s on %s:%d", self.backend.info.name, s.host, self.port)

    async def _load_local(self, preloaded: LoadedModel | None) -> LocalBackend:
        s = self.settings
        if preloaded is None:
            preloaded = await _in_daemon_thread(
                load_model, s.model, cache_dir=s.cache_dir, device=s.device, dtype=s.dtype,
                tokenizer=s.tokenizer, overrides=megatron_overrides(s))
        self.loaded = preloaded
        projectors = None
        if s.projectors:  # a bad projector file ends the start, like a bad model
            projectors = ProjectorSet.load(s.projectors, preloaded.model)
            preloaded.info.features += [f"projector:{name}={dims}"
                                        for name, dims in projectors.input_dims().items()]
        self.scheduler = Scheduler.from_settings(
            preloaded.model, preloaded.tokenizer, s,
            context_length=preloaded.info.context_length, projectors=projectors,
            quantize=preloaded.quantize)
        self.scheduler.start()
        # SERVING only once the engine is warm: the first request must not
        # wait for weight packing and cache allocation.
        await asyncio.to_thread(self.scheduler.ready.wait)
        if self.scheduler.start_error is not None:  # ends the start, like a bad model
            raise self.scheduler.start_error
        return LocalBackend(self.scheduler, preloaded.tokenizer, preloaded.info, self.metrics,
                            projectors)

    async def stop(self, grace: float | None = None) -> float:
        """Drain, then stop. Returns the seconds spent waiting for calls in flight."""
        grace = self.settings.grace_seconds if grace is None else grace
        began = time.perf_counter()
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.drain.draining = True
        self.servicer.draining.set()
        if self.drain.inflight:
            log.info("draining %d call(s) for up to %.1f s", self.drain.inflight, grace)
        drained = await self.drain.wait_idle(grace)
        waited = time.perf_counter() - began
        if not drained:
            # Each reply still generating ends with a Completion (SHUTDOWN, the text so
            # far) before the transport goes, so clients can tell a shutdown from a crash.
            ended = self.servicer.end_replies(FinishReason.SHUTDOWN)
            log.warning("grace period over: ending %d reply(ies) with FINISH_REASON_SHUTDOWN",
                        ended)
            if not await self.drain.wait_idle(SHUTDOWN_FLUSH_S):
                log.warning("cancelling %d call(s) still open", self.drain.inflight)
        unfollowed = self.servicer.streams.unfollowed()
        if unfollowed:
            log.warning("dropping %d resumable reply(ies) nobody follows: their clients "
                        "cannot resume them on another server and must ask again", unfollowed)
        if self._server is not None:
            await self._server.stop(0.5)
        if self.grpc_web is not None:
            await self.grpc_web.stop()
        if self.backend is not None:
            await self.backend.close()
        self.servicer.close()
        self.metrics.close()
        return waited

    async def _set_health(self, status) -> None:
        await self.health.set("", status)
        await self.health.set(SERVICE_NAME, status)

    def run_until_stopped(self, preloaded: LoadedModel | None = None) -> None:
        """`serve_forever` in its own event loop, then leave the process at once.

        By the time it returns, every call has drained and everything the server
        started has stopped; native threads it does not own (grpc's pollers, OpenMP
        and tokenizers' pools) can still crash interpreter teardown (seen once in
        CI as SIGSEGV after a clean drain), which would turn a clean stop into a
        failed exit for a supervisor. So logs are flushed and the process exits 0.
        """
        asyncio.run(self.serve_forever(preloaded))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    async def serve_forever(self, preloaded: LoadedModel | None = None) -> None:
        """Start, load, and run until SIGINT/SIGTERM, then drain and stop."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        loading = asyncio.create_task(self.load(preloaded))
        waiter = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({loading, waiter},
                                         return_when=asyncio.FIRST_COMPLETED)
            if loading in done:
                loading.result()  # a load error ends the server: never half-loaded
                await waiter
            log.info("shutting down")
        finally:
            loading.cancel()
            waiter.cancel()
            waited = await self.stop()
            log.info("stopped after draining for %.2f s", waited)
