"""Real upstream engines for the backend tests: `transformers serve` and a TCP proxy.

The proxy sits between the bridge and the upstream: it can slow the upstream's
replies down (so a stream is still running when the test acts) and it counts
open connections (so a test sees when the bridge closed the upstream request).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TransformersServe:
    """`transformers serve` on a loopback port, serving one local model directory."""

    def __init__(self, model_dir: Path, log_path: Path):
        self.model = str(model_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        exe = shutil.which("transformers", path=str(Path(sys.executable).parent))
        self.log = log_path.open("w")
        self.proc = subprocess.Popen(
            [exe, "serve", "--host", "127.0.0.1", "--port", str(self.port), self.model],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, log_path.read_text()
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/models", timeout=2):
                    return
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(log_path.read_text())

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


class TcpProxy:
    """Forwards 127.0.0.1:port to a target. With a delay, upstream->client bytes
    trickle: at most `chunk_bytes` (about one SSE event) per `delay_s`."""

    def __init__(self, target_port: int, delay_s: float = 0.0, chunk_bytes: int = 200):
        self.target_port = target_port
        self.delay_s = delay_s
        self.chunk_bytes = chunk_bytes
        self.open_connections = 0
        self.connections = 0
        self.blackholed = False
        self._released = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        return self

    async def _handle(self, client_r, client_w):
        self.connections += 1
        self.open_connections += 1
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            self.open_connections -= 1
            return

        async def pump(reader, writer, delay):
            size = self.chunk_bytes if delay else 65536
            with contextlib.suppress(Exception):
                while data := await reader.read(size):
                    if self.blackholed:
                        continue  # swallowed: no data, no pings, no acks get through
                    if delay:
                        await asyncio.sleep(delay)
                    writer.write(data)
                    await writer.drain()
            if self.blackholed:  # a vanished peer never closes its end either
                await self._released.wait()
            with contextlib.suppress(Exception):
                writer.close()

        self._writers.update((client_w, up_w))
        tasks = [asyncio.create_task(pump(client_r, up_w, 0.0)),
                 asyncio.create_task(pump(up_r, client_w, self.delay_s))]
        self._tasks.update(tasks)
        try:
            # Either side closing ends the connection, as a real one would.
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for w in (client_w, up_w):
                with contextlib.suppress(Exception):
                    w.close()
            self.open_connections -= 1
            self._tasks.difference_update(tasks)
            self._writers.difference_update((client_w, up_w))

    def cut(self) -> None:
        """Reset every open connection (both sides see it drop at once, as when a
        headset changes networks); new connections still get through."""
        for writer in list(self._writers):
            writer.transport.abort()

    def blackhole(self) -> None:
        """From now on behave like a peer that walked out of Wi-Fi: silence."""
        self.blackholed = True

    async def close(self) -> None:
        self._released.set()
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.sleep(0)


async def run_cut_after(argv, target_port: int, lines_before_cut: int, cwd=None
                        ) -> tuple[list[str], TcpProxy]:
    """Run a client program through a proxy to `target_port` (`{target}` in argv
    becomes the proxy's host:port), reset the connection once the program printed
    `lines_before_cut` lines, and return its lines (it must exit 0) and the proxy."""
    proxy = await TcpProxy(target_port).start()
    try:
        proc = await asyncio.create_subprocess_exec(
            *(str(a).replace("{target}", f"127.0.0.1:{proxy.port}") for a in argv),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=cwd)
        lines = []
        while line := (await asyncio.wait_for(proc.stdout.readline(), 60)).decode():
            lines.append(line)
            if len(lines) == lines_before_cut:
                proxy.cut()  # the headset changes networks
        err = (await proc.stderr.read()).decode()
        assert await proc.wait() == 0, "".join(lines) + err
    finally:
        await proxy.close()
    return lines, proxy
