"""A real `arbridge serve` process for the benchmarks and probes that measure one
from outside (its memory, its latency to clients on other connections)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of `pid` now (VmRSS) or at its peak so far (VmHWM), in MB."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1)) / 1024


def start(source: Path | None, log: Path, *flags: str, env: dict | None = None,
          timeout_s: float = 300) -> tuple[subprocess.Popen, int, str]:
    """(process, gRPC port, metrics URL) of a server run from `source` (another
    checkout's `server/` directory, for a side-by-side run; None: this one), logging
    to `log`, once it says SERVING."""
    env = dict(os.environ, ARBRIDGE_METRICS_PORT="0", **(env or {}))
    if source is not None:
        env["PYTHONPATH"] = str(source)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from arbridge.cli import main; "
                             "sys.exit(main())", "serve", "--port", "0", *flags],
                            stderr=log.open("w"), env=env)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text()
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
        if port and re.search(r"\bSERVING \S+ on ", text):  # not NOT_SERVING
            metrics = re.search(r"metrics on (http://\S+/metrics)", text).group(1)
            return proc, int(port.group(1)), metrics
        if proc.poll() is not None:
            raise SystemExit(text)
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start:\n" + log.read_text())
