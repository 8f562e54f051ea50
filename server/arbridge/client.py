"""A small Python client for the ArBridge service (used by the CLI and tests)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import service_pb2_grpc
from arbridge.v1 import types_pb2 as pb


def load_describe_request(path: str | Path) -> spb.DescribeSceneRequest:
    """A DescribeSceneRequest from JSON (proto3 JSON mapping).

    The file may hold a whole request or just a SceneFeatures object.
    """
    data = json.loads(Path(path).read_text())
    if "scene" not in data and ("objects" in data or "cameraPose" in data):
        data = {"scene": data}
    return json_format.ParseDict(data, spb.DescribeSceneRequest())


def wait_until_serving(target: str, timeout_s: float = 600.0,
                       should_continue: Callable[[], bool] = lambda: True) -> None:
    """Block until the server's health check answers SERVING."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and should_continue():
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.25)
    raise TimeoutError(f"{target} did not become SERVING")


@dataclass
class StreamStats:
    chunks: int = 0
    first_chunk_s: float | None = None
    total_s: float = 0.0
    completions: list[pb.Completion] = field(default_factory=list)

    @property
    def completion_tokens(self) -> int:
        return sum(c.usage.completion_tokens for c in self.completions)

    def summary(self) -> str:
        tokens = self.completion_tokens
        decode_s = self.total_s - (self.first_chunk_s or 0.0)
        rate = (tokens - 1) / decode_s if tokens > 1 and decode_s > 0 else 0.0
        reasons = ", ".join(pb.FinishReason.Name(c.finish_reason).removeprefix("FINISH_REASON_")
                            for c in self.completions)
        ttft = (self.first_chunk_s or 0.0) * 1e3
        return (f"{tokens} tokens, first token after {ttft:.0f} ms, {rate:.1f} tokens/s after "
                f"that, {self.total_s:.2f} s total, finish: {reasons}")


def stream_to(call, on_text: Callable[[pb.TokenChunk], None]) -> StreamStats:
    """Consume a server-streaming call of *Response messages with chunk/completion."""
    stats = StreamStats()
    started = time.perf_counter()
    for response in call:
        kind = response.WhichOneof("event")
        if kind == "chunk":
            if stats.first_chunk_s is None:
                stats.first_chunk_s = time.perf_counter() - started
            stats.chunks += 1
            on_text(response.chunk)
        elif kind == "completion":
            stats.completions.append(response.completion)
    stats.total_s = time.perf_counter() - started
    return stats


class _BearerMetadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                      grpc.StreamStreamClientInterceptor):
    def __init__(self, token: str):
        self._entry = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        metadata = list(details.metadata or []) + [self._entry]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready = credentials, wait_for_ready
        self.compression = compression


def open_channel(target: str, *, tls_ca: str | Path | None = None,
                 client_cert: str | Path | None = None, client_key: str | Path | None = None,
                 token: str | None = None, tls: bool = False) -> grpc.Channel:
    """Plaintext, or TLS (tls_ca / system roots) with an optional client cert and token."""
    if not (tls or tls_ca or client_cert):
        channel = grpc.insecure_channel(target)
        if token:  # grpc sends call credentials over TLS only: plain metadata here
            channel = grpc.intercept_channel(channel, _BearerMetadata(token))
        return channel
    read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
    creds = grpc.ssl_channel_credentials(read(tls_ca), read(client_key), read(client_cert))
    if token:
        creds = grpc.composite_channel_credentials(
            creds, grpc.access_token_call_credentials(token))
    return grpc.secure_channel(target, creds)


class ArBridgeClient:
    def __init__(self, target: str, **security):
        self.channel = open_channel(target, **security)
        self.stub = service_pb2_grpc.ArBridgeServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def describe(self, request: spb.DescribeSceneRequest, on_text, timeout=None) -> StreamStats:
        return stream_to(self.stub.DescribeScene(request, timeout=timeout), on_text)

    def generate(self, request: spb.GenerateRequest, on_text, timeout=None) -> StreamStats:
        return stream_to(self.stub.Generate(request, timeout=timeout), on_text)

    def model_info(self) -> spb.GetModelInfoResponse:
        return self.stub.GetModelInfo(spb.GetModelInfoRequest(), timeout=10)
