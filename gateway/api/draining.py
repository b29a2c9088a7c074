"""Graceful shutdown: on SIGTERM the gateway stops taking work but finishes what it has.

1. At once: /readyz answers 503 (the load balancer takes the pod out) and every new request
   but /healthz and /metrics gets 503 with Retry-After, while the port stays open (a
   Kubernetes endpoint update lags the signal by seconds: refusing connections would fail them).
2. Requests in flight get `MEMEFLY_SHUTDOWN_GRACE_S` to finish.
3. Then whatever is still running is cancelled and answered 503 with Retry-After (never a
   500), and the server exits. A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.middleware import send_detail

log = logging.getLogger(__name__)
ALWAYS_ANSWERED = ("/healthz", "/metrics", "/readyz")  # /readyz says 503 by itself while draining
# A second signal within this long of the first is the same stop delivered twice (a terminal's
# Ctrl-C or systemd reach every process, and `--workers`' parent forwards it too), not a
# request to skip the drain: people press Ctrl-C again more slowly.
DUPLICATE_SIGNAL_S = 1.0


class Drain:
    """Shared by the middleware (which tracks requests) and the server (which starts the drain)."""

    def __init__(self, retry_after_s: int):
        self.retry_after_s = retry_after_s
        self.draining = False
        self.in_flight: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.on_start: list[Callable[[], object]] = []  # callbacks run when draining starts (the service's readiness)

    def start(self) -> None:
        if not self.draining:
            self.draining = True
            for callback in self.on_start:
                callback()

    async def finish(self, grace_s: float) -> int:
        """Waits up to GRACE_S for the requests in flight; cancels (503) the rest. Returns how many were cut off."""
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
            return 0
        except TimeoutError:
            left = list(self.in_flight)
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
            return len(left)

    def _track(self, task: asyncio.Task[None]) -> None:
        self.in_flight.add(task)
        self._idle.clear()
        task.add_done_callback(self._untrack)

    def _untrack(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        if not self.in_flight:
            self._idle.set()


class DrainMiddleware:
    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.drain.draining and not scope["path"].startswith(ALWAYS_ANSWERED):
            return await _unavailable(send, self.drain.retry_after_s)
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, tracking_send))
        self.drain._track(task)
        try:
            await asyncio.shield(task)  # our cut-off cancels the task, not this waiter
        except asyncio.CancelledError:
            if not task.done():  # the server itself is cancelling us: pass it on
                task.cancel()
                raise
            if not started:
                await _unavailable(send, self.drain.retry_after_s)


async def _unavailable(send: Send, retry_after_s: int) -> None:
    await send_detail(
        send,
        503,
        "shutting down: try again (another replica will answer)",
        [(b"retry-after", str(retry_after_s).encode()), (b"connection", b"close")],
    )


class DrainingServer(uvicorn.Server):
    """uvicorn, with a drain before its own shutdown (which closes the port and waits a little)."""

    def __init__(
        self, config: uvicorn.Config, drain: Drain, grace_s: float, on_started: Callable[[], object] | None = None
    ) -> None:
        super().__init__(config)
        self.drain, self.grace_s = drain, grace_s
        self.on_started = on_started  # called once listening (gateway/workers.py)
        self._draining_task: asyncio.Task[None] | bool | None = None
        self._first_signal_at = 0.0

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started and self.on_started is not None:
            self.on_started()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = getattr(self, "_loop", None)
        if self._draining_task is not None and time.monotonic() - self._first_signal_at < DUPLICATE_SIGNAL_S:
            return  # the same stop, delivered twice (to the process group and forwarded by a parent)
        if self._draining_task is not None or self.grace_s <= 0 or loop is None:  # a second signal: now
            return super().handle_exit(sig, frame)
        # A signal handler may interrupt anything: the drain starts on the loop, not in here.
        self._draining_task = True
        self._first_signal_at = time.monotonic()
        loop.call_soon_threadsafe(self._begin_drain, sig, frame)

    def _begin_drain(self, sig: int, frame: FrameType | None) -> None:
        log.info("signal %s: draining for up to %g s (503 to new requests)", sig, self.grace_s)
        self.drain.start()
        self._draining_task = asyncio.get_running_loop().create_task(self._drain_then_exit(sig, frame))

    async def _drain_then_exit(self, sig: int, frame: FrameType | None) -> None:
        cut = await self.drain.finish(self.grace_s)
        log.info("drained: %d request(s) cut off with 503; shutting down", cut)
        super().handle_exit(sig, frame)
