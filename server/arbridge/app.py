"""Builds and runs the grpc.aio server: ArBridge, health, reflection.

The port opens before the model loads so orchestrators can probe it: health
says NOT_SERVING (and ArBridge calls get UNAVAILABLE) until the model is ready.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from arbridge.config import Settings, megatron_overrides
from arbridge.engine.async_engine import AsyncEngine
from arbridge.engine.loader import LoadedModel, load_model
from arbridge.engine.scheduler import Scheduler
from arbridge.service import ArBridgeServicer
from arbridge.v1 import service_pb2, service_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["ArBridgeService"].full_name
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


class ArBridgeServer:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.servicer = ArBridgeServicer(settings)
        self.health = health.aio.HealthServicer()
        self.scheduler: Scheduler | None = None
        self.loaded: LoadedModel | None = None
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        """Open the port (health NOT_SERVING). Returns the bound port."""
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ])
        service_pb2_grpc.add_ArBridgeServiceServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{self.settings.host}:{self.settings.port}"
        self.port = server.add_insecure_port(address)
        if self.port == 0:
            raise RuntimeError(f"cannot bind {address}")
        await server.start()
        self._server = server
        log.info("listening on %s:%d (health NOT_SERVING until the model is loaded)",
                 self.settings.host, self.port)
        return self.port

    async def load(self, preloaded: LoadedModel | None = None) -> None:
        """Load the model (off the event loop), start the scheduler, go SERVING."""
        if preloaded is None:
            s = self.settings
            preloaded = await asyncio.to_thread(
                load_model, s.model, cache_dir=s.cache_dir, device=s.device, dtype=s.dtype,
                tokenizer=s.tokenizer, overrides=megatron_overrides(s))
        self.loaded = preloaded
        info = preloaded.info
        self.scheduler = Scheduler(preloaded.model, preloaded.tokenizer,
                                   context_length=info.context_length,
                                   max_active=self.settings.max_active,
                                   max_queue=self.settings.max_queue,
                                   prefill_chunk_tokens=self.settings.prefill_chunk_tokens)
        self.scheduler.start()
        self.servicer.attach(AsyncEngine(self.scheduler), preloaded.tokenizer, info)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("SERVING %s on %s:%d", info.name, self.settings.host, self.port)

    async def stop(self, grace: float | None = None) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._server is not None:
            await self._server.stop(self.settings.grace_seconds if grace is None else grace)
        if self.scheduler is not None:
            await asyncio.to_thread(self.scheduler.stop)

    async def _set_health(self, status) -> None:
        await self.health.set("", status)
        await self.health.set(SERVICE_NAME, status)

    async def serve_forever(self) -> None:
        """Start, load, and run until SIGINT/SIGTERM, then drain and stop."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        loading = asyncio.create_task(self.load())
        waiter = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({loading, waiter},
                                         return_when=asyncio.FIRST_COMPLETED)
            if loading in done:
                loading.result()  # a load error ends the server: never half-loaded
                await waiter
            log.info("shutting down: draining for up to %.0f s", self.settings.grace_seconds)
        finally:
            loading.cancel()
            waiter.cancel()
            await self.stop()
