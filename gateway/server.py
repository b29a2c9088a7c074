"""How `memefly serve` runs uvicorn: one config, and an HTTP protocol with a header deadline.

uvicorn's HTTP protocol (httptools) here has a deadline on request headers.

uvicorn bounds an idle keep-alive connection, but not a new connection that sends nothing
or headers a byte at a time (slowloris): enough of them fill `limit_concurrency` and every
real client gets 503. Here the headers of each request must be complete within
`header_timeout_s` of the connection opening or of the request's first byte; else the
client gets 408 and the connection is closed (silently, when it never sent a byte). The body has its own deadline
(BodyLimitMiddleware).
"""

from __future__ import annotations

import asyncio
import logging

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.logs import uvicorn_log_config
from gateway.settings import Settings

log = logging.getLogger(__name__)

TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: 32\r\n\r\nrequest headers took too long.\r\n"
)


def with_header_timeout(header_timeout_s: float) -> type[HttpToolsProtocol]:
    """The protocol class to give uvicorn.Config(http=...)."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        _received = False  # any byte on this connection yet

        # The ignore: uvicorn's own connection_made narrows asyncio's BaseTransport to Transport the same way.
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            self._received = True
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()  # idle now: uvicorn's keep-alive timeout takes over

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if not self._received:  # a preconnect or a probe: closed without a word, as idle keep-alive is
                self.transport.close()
                return
            # Answer only when no earlier response on this connection is still being written.
            if self.cycle is None or self.cycle.response_complete:
                self.transport.write(TIMEOUT_RESPONSE)
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.info("408 %s: request headers not complete within %g s", client, header_timeout_s)
            self.transport.close()

    return HeaderTimeoutProtocol


def uvicorn_config(
    app: ASGIApp, settings: Settings, *, host: str, port: int, log_level: str = "info"
) -> uvicorn.Config:
    """The one uvicorn configuration (memefly serve, and the tests' live gateways)."""
    # The drain (MEMEFLY_SHUTDOWN_GRACE_S) has answered every request by the time uvicorn's own
    # shutdown runs: its grace only covers responses still being written.
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        log_config=uvicorn_log_config(log_level),
        lifespan="on",
        timeout_graceful_shutdown=5,
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=5,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        http=with_header_timeout(settings.header_timeout_s),
    )
