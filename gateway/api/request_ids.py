"""X-Request-ID: the caller's id when it looks like one, else a new one; returned on every answer
and written on every log line of the request (gateway/logs.py).

An id from outside is only taken when it is short and plain (letters, digits, `.`, `_`, `:`,
`-`): it goes into logs, so it may not carry spaces, control characters or a whole paragraph.
"""

from __future__ import annotations

import re

from asgi_correlation_id import CorrelationIdMiddleware, correlation_id
from fastapi import FastAPI
from opentelemetry import trace
from starlette.types import ASGIApp, Receive, Scope, Send

HEADER = "X-Request-ID"
_PLAIN_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def acceptable(value: str) -> bool:
    return bool(_PLAIN_ID.fullmatch(value))


def add_request_ids(app: FastAPI) -> None:
    """Outermost middleware: every answer, errors and refusals included, carries the id."""
    app.add_middleware(_IdOnSpan)  # inside the id's middleware: the id is known there
    app.add_middleware(CorrelationIdMiddleware, header_name=HEADER, validator=acceptable)


class _IdOnSpan:
    """Puts the request id on the request's trace span (when tracing is on: gateway/tracing.py)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            span = trace.get_current_span()
            if span.is_recording():
                span.set_attribute("memefly.request_id", correlation_id.get() or "")
        await self.app(scope, receive, send)
