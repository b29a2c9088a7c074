"""The FastAPI application: `create_app()` wires settings, backend, service, routes and error handling.

uvicorn --factory gateway.api.app:create_app      (or: memefly serve)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from asgi_correlation_id import correlation_id
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect

from gateway import tracing
from gateway.api.access import AccessMiddleware, Keys
from gateway.api.draining import Drain, DrainMiddleware
from gateway.api.image_routes import router as image_router
from gateway.api.meme_routes import router
from gateway.api.middleware import BodyLimitMiddleware, MetricsMiddleware, SecurityHeadersMiddleware
from gateway.api.render_routes import router as render_router
from gateway.api.request_ids import HEADER, add_request_ids
from gateway.api.responses import STATIC_DIR
from gateway.backends import Backend
from gateway.engine.admission import Overloaded, WorkerPool
from gateway.engine.service import MemeService
from gateway.errors import CLIENT_CLOSED, GatewayError
from gateway.metrics import Metrics
from gateway.rendering.renderer import Renderer
from gateway.settings import Settings
from gateway.sharing.meme_urls import Sharing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("gateway")


FIRST_CHECK_WAIT_S = 120.0  # a worker's start-up check (loading in-process models included)


def create_app(
    settings: Settings | None = None, backend: Backend | None = None, span_exporter: SpanExporter | None = None
) -> FastAPI:
    """SPAN_EXPORTER: trace into this OpenTelemetry exporter whatever OTEL_* say (tests)."""
    settings = settings or Settings.from_env()
    metrics = Metrics()
    service = MemeService(settings, backend=backend, metrics=metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Start-up checks run in the background: /healthz answers at once, /readyz says when.
        await service.start()
        if service.settings.workers > 1:
            # Workers share one port: one that is still starting must not take connections (they
            # would get 503 while another worker is ready). uvicorn listens after this returns:
            # when the first model check has finished (if it failed, /readyz says why), or a
            # signal came meanwhile.
            stopping = asyncio.Event()
            app.state.drain.on_start.append(stopping.set)
            checked = asyncio.create_task(service.wait_ready(FIRST_CHECK_WAIT_S, first_check_only=True))
            signalled = asyncio.create_task(stopping.wait())
            await asyncio.wait([checked, signalled], return_when=asyncio.FIRST_COMPLETED)
            for task in (checked, signalled):
                task.cancel()
        yield
        await service.stop()
        renders.close()
        if app.state.tracer_provider is not None:
            app.state.tracer_provider.shutdown()  # the spans still queued are sent

    # /docs and /redoc with their scripts and styles served from here, not a CDN: they work
    # offline and behind a firewall (fastapi-offline ships Swagger UI and ReDoc).
    app = FastAPIOffline(
        title="Memefly",
        summary="Image in, meme captions out.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.settings = settings
    renders = WorkerPool(
        settings.render_workers,
        name="render",
        deadline_s=settings.request_timeout_s if settings.admission_control else None,
    )
    app.state.renderer = Renderer(
        cache_bytes=settings.render_cache_bytes, templates_dir=settings.templates_dir, pool=renders
    )
    app.state.sharing = Sharing.from_settings(settings)
    app.include_router(router)
    app.include_router(render_router)
    app.include_router(image_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, error: GatewayError) -> JSONResponse:
        if isinstance(error, Overloaded):  # expected under load, and counted in /metrics: not a warning
            metrics.refused.labels(error.queue).inc()
            log.info("%s %s -> %d: %s", request.method, request.url.path, error.status, error.logged)
        elif error.status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.url.path, error.status, error.logged)
        return JSONResponse({"detail": error.detail}, status_code=error.status, headers=error.headers)

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, error: ClientDisconnect) -> Response:
        # The client's doing, not ours: no 5xx for alerts, no traceback for the log. Nobody reads the answer.
        log.info(
            "%s %s -> %d: the client went away before its request was read",
            request.method,
            request.url.path,
            CLIENT_CLOSED,
        )
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        # Answered outside the request-id middleware (Starlette's ServerErrorMiddleware): add it here.
        request_id = correlation_id.get()
        return JSONResponse(
            {"detail": "internal error (logged)"}, status_code=500, headers={HEADER: request_id} if request_id else None
        )

    single = settings.max_upload_bytes * 4 // 3 + 256 * 1024  # base64 plus the other fields
    batch = single * settings.max_batch_images
    app.add_middleware(
        BodyLimitMiddleware,
        limit_for=lambda path: batch if path.endswith("/batch") else single,
        timeout_s=settings.body_timeout_s,
    )
    drain = Drain(settings.retry_after_s)
    drain.on_start.append(service.start_draining)
    app.state.drain = drain
    app.add_middleware(DrainMiddleware, drain=drain)
    # From the inside out: keys and rate limits; security headers (on their 401 and 429 too);
    # CORS (preflights and refusals readable by the calling page); metrics (counting all of
    # those); the request id on every answer and log line.
    keys = Keys.load(settings.api_keys, settings.api_keys_file)
    if keys.limits or settings.rate_limit:
        app.add_middleware(
            AccessMiddleware, keys=keys, default_limit=settings.rate_limit, storage_uri=settings.rate_limit_storage
        )
    app.add_middleware(SecurityHeadersMiddleware)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", HEADER],
            expose_headers=[HEADER, "Retry-After", "ETag"],
            max_age=600,
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    add_request_ids(app)
    app.state.tracer_provider = tracing.set_up(app, exporter=span_exporter)  # off unless OTEL_* ask for it
    return app
