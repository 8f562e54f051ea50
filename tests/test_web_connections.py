"""The gRPC-Web port under hostile connections: idle and slowloris connections are
closed, a connection cap refuses cleanly, and running out of open files neither stalls
native gRPC nor floods the log. Real sockets against real servers."""

from __future__ import annotations

import asyncio
import os
import re
import select
import socket
import time

import grpc
import pytest

from arbridge.serving.web_connections import RateLimitedLog, connection_cap
from arbridge.v1 import service_pb2 as spb
from arbridge.v1 import service_pb2_grpc
from arbridge.v1 import types_pb2 as pb

from conftest import collect, gen, start_server_process


async def open_idle(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """Everything the server wrote before closing, or None if still open after `seconds`."""
    data = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(4096), seconds):
            data += chunk
    except asyncio.TimeoutError:
        return None
    except ConnectionError:
        pass
    return data


async def trickle(writer: asyncio.StreamWriter, stop: asyncio.Event) -> None:
    """A slowloris: a request head one byte every 100 ms, never finished."""
    head = b"POST /arbridge.v1.ArBridgeService/Generate HTTP/1.1\r\nx-padding: " + b"a" * 10_000
    for byte in head:
        if stop.is_set() or writer.is_closing():
            return
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(0.1)


async def get_root(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_idle_and_slowloris_connections_are_closed_and_the_cap_refuses_cleanly(
        make_server, tiny_model_dir):
    s = await make_server(tiny_model_dir, grpc_web_port=0, grpc_web_max_connections=12,
                          grpc_web_header_timeout_s=1.0)
    port = s.server.grpc_web_port
    idle = [await open_idle(port) for _ in range(6)]
    slow = [await open_idle(port) for _ in range(6)]
    stop = asyncio.Event()
    trickling = [asyncio.ensure_future(trickle(w, stop)) for _, w in slow]
    opened = time.perf_counter()
    try:
        # The cap is reached: the next connection is answered 503 and closed at once.
        reader, writer = await open_idle(port)
        refused = await closed_within(reader, 2.0)
        writer.close()
        assert refused is not None and refused.startswith(b"HTTP/1.1 503"), refused
        # Native gRPC does not notice.
        _, done, _ = await collect(s.stub.Generate(gen(max_new_tokens=2), timeout=10))
        assert done[0].usage.completion_tokens == 2
        # Idle and trickling connections are all closed past the header deadline (1 s)
        # although the trickling ones send a byte every 100 ms.
        for reader, _ in idle + slow:
            left = await closed_within(reader, 5.0)
            assert left is not None, "a connection without a whole request head stayed open"
            assert left == b"" or left.startswith(b"HTTP/1.1 408"), left
        assert time.perf_counter() - opened < 5.0
    finally:
        stop.set()
        for task in trickling:
            task.cancel()
        for _, writer in idle + slow:
            writer.close()
    # Room again: the playground is served.
    assert (await get_root(port)).startswith(b"HTTP/1.1 200")


async def test_a_kept_alive_connection_gets_the_same_head_deadline(make_server,
                                                                   tiny_model_dir):
    """After a response, the next request's head has the same deadline: trickling it
    byte by byte (which restarts uvicorn's keep-alive timer) does not keep it open."""
    s = await make_server(tiny_model_dir, grpc_web_port=0, grpc_web_header_timeout_s=1.0,
                          grpc_web_keepalive_s=30)
    reader, writer = await open_idle(s.server.grpc_web_port)
    writer.write(b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))
    await reader.readexactly(length)
    stop = asyncio.Event()
    task = asyncio.ensure_future(trickle(writer, stop))
    try:
        assert await closed_within(reader, 5.0) is not None
    finally:
        stop.set()
        task.cancel()
        writer.close()


def test_out_of_open_files_native_grpc_is_served_and_the_log_stays_short(tiny_model_dir,
                                                                        tmp_path):
    """The issue's case, scaled to a 256-file limit: 300 idle gRPC-Web connections.
    The cap (half the limit) refuses the excess with 503, native gRPC clients are served
    at once, accept() failures (if any) are logged once per interval, and the idle
    connections go after the header deadline."""
    env = {"ARBRIDGE_GRPC_WEB_PORT": "0", "ARBRIDGE_GRPC_WEB_HEADER_TIMEOUT_S": "3"}
    proc, port, log = start_server_process(tiny_model_dir, tmp_path, 0.0, 1.0,
                                           env={**os.environ, **env}, open_files=256)
    conns: list[socket.socket] = []
    try:
        text = log.read_text()
        web_port = int(re.search(r"gRPC-Web on http://127\.0\.0\.1:(\d+)", text).group(1))
        assert "at most 128 connections, open files 256" in text
        refused = 0
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", web_port), timeout=5)
            conns.append(sock)
        waiting, deadline = list(conns), time.monotonic() + 10
        while refused < 300 - 128 and time.monotonic() < deadline:
            readable, _, _ = select.select(waiting, [], [], 0.5)
            for sock in readable:
                waiting.remove(sock)
                if sock.recv(64).startswith(b"HTTP/1.1 503"):
                    refused += 1
        assert refused >= 300 - 128, refused
        started = time.perf_counter()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_pb2_grpc.ArBridgeServiceStub(channel)
            replies = list(stub.Generate(spb.GenerateRequest(
                prompt="The red chair", sampling=pb.SamplingParams(max_new_tokens=4)),
                timeout=10))
        assert replies[-1].completion.usage.completion_tokens == 4
        assert time.perf_counter() - started < 2.0
        time.sleep(4.0)  # past the header deadline: every idle connection is closed
        with socket.create_connection(("127.0.0.1", web_port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
            assert sock.recv(64).startswith(b"HTTP/1.1 200")
        assert log.read_text().count("cannot accept connections") <= 2
        assert len(log.read_bytes()) < 200_000
    finally:
        for sock in conns:
            sock.close()
        proc.terminate()
        proc.wait(30)


def test_connection_cap_from_the_open_file_limit():
    assert connection_cap(None, 1024) == 512
    assert connection_cap(None, 1 << 20) == 4096
    assert connection_cap(100, 1024) == 100
    with pytest.raises(ValueError, match="grpc_web_max_connections = 2000 needs more open"):
        connection_cap(2000, 1024)


def test_a_repeating_error_is_logged_once_per_interval(caplog):
    now = [0.0]
    report = RateLimitedLog(10.0, clock=lambda: now[0])
    assert report(40, "out of files") is True
    assert not any(report(40, "out of files") for _ in range(1000))
    now[0] = 10.5
    assert report(40, "out of files") is True
    assert caplog.messages[-1] == "out of files (1000 more since the last report)"
    assert len(caplog.messages) == 2
