"""Loopback addresses for tests, and waiting for a server a test started."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port() -> int:
    """A port nobody listens on (right now) on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unreachable_url() -> str:
    return f"http://127.0.0.1:{free_port()}/"


def wait_until_ready(url: str, process: subprocess.Popen, timeout_s: float, log: Path | None = None) -> None:
    """Polls URL/readyz until it answers 200, failing the test (with the tail of LOG) if PROCESS
    exits or TIMEOUT_S pass first."""
    deadline = time.monotonic() + timeout_s

    def tail() -> str:
        return log.read_text()[-3000:] if log is not None and log.exists() else ""

    while True:
        assert process.poll() is None, f"the server exited: {tail()}"
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"not ready after {timeout_s:g} s: {tail()}"
        time.sleep(0.2)
