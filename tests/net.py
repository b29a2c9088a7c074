"""Loopback addresses for tests."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nobody listens on (right now) on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unreachable_url() -> str:
    return f"http://127.0.0.1:{free_port()}/"
