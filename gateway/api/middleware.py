"""Pure ASGI middleware: request metrics, and a body-size cap enforced while the body streams in."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.metrics import Metrics


class MetricsMiddleware:
    """Counts and times every request by route template (not raw path: bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            labels = (getattr(route, "path", "unmatched"), scope["method"], str(status["code"]))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)


# The page loads only its own files (no inline script, nothing from elsewhere), may not be framed;
# images may be blobs (the memes it renders) and data URLs (previews). /docs and /redoc keep
# FastAPI's page, which runs an inline script.
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_DOCS = ("/docs", "/redoc")


class SecurityHeadersMiddleware:
    """nosniff on every answer; the page's Content-Security-Policy and no framing on all but /docs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        docs = scope["path"].startswith(_DOCS)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                if not docs:
                    headers += [
                        (b"content-security-policy", PAGE_POLICY.encode()),
                        (b"x-frame-options", b"DENY"),
                        (b"referrer-policy", b"no-referrer"),
                    ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class BodyTooLarge(Exception):
    pass


class BodySlow(Exception):
    pass


class BodyLimitMiddleware:
    """413 before reading a body whose Content-Length is over the limit, or as soon as a
    streamed (chunked) body passes it: a huge upload is never buffered. 408 when the whole
    body has not arrived within `timeout_s` of the first read: a slow client cannot hold a
    request open."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int], timeout_s: float = 30.0) -> None:
        self.app = app
        self.limit_for = limit_for  # path -> bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope["path"])
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _reject(send, limit)
        seen = 0
        started = {"response": False}
        deadline: float | None = None
        complete = False

        async def counting_receive() -> Message:
            nonlocal seen, deadline, complete
            if complete:  # after the body only the disconnect can come: no deadline on waiting for it
                return await receive()
            loop = asyncio.get_running_loop()
            deadline = deadline or loop.time() + self.timeout_s
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise BodySlow() from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge()
                complete = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                started["response"] = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started["response"]:
                await _reject(send, limit)
        except BodySlow:
            if not started["response"]:
                await _reject(
                    send, limit, status=408, detail=f"the request body did not arrive within {self.timeout_s:g} s"
                )


async def _reject(send: Send, limit: int, status: int = 413, detail: str | None = None) -> None:
    await send_detail(
        send, status, detail or f"the request body is over the {limit:,}-byte limit", [(b"connection", b"close")]
    )


async def send_detail(send: Send, status: int, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """An answer from a raw ASGI middleware, as the app's errors look: {"detail": ...} in JSON."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})
