"""A real gateway for tests: uvicorn on a loopback port in a background thread.

Tests talk to it over real HTTP (httpx), so uploads, status codes, disconnects and
concurrency behave as in production; they may also look at `app.state.service`.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import uvicorn

from gateway.api.app import create_app
from gateway.server import uvicorn_config
from gateway.settings import Settings


@dataclass
class RunningGateway:
    url: str
    app: object
    server: uvicorn.Server

    @property
    def service(self):
        return self.app.state.service

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 60), **kwargs)

    def wait_ready(self, timeout_s: float = 120, ready: bool = True) -> dict:
        """Polls /readyz until it says `ready` (or fails the test with the last answer)."""
        deadline = time.monotonic() + timeout_s
        body = {}
        with self.client() as client:
            while time.monotonic() < deadline:
                response = client.get("/readyz")
                body = response.json()
                if body["ready"] is ready:
                    return body
                time.sleep(0.05)
        raise AssertionError(f"gateway not ready={ready} after {timeout_s} s: {body}")


@contextmanager
def running_gateway(settings: Settings, backend=None, wait: bool = True, span_exporter=None):
    app = create_app(settings, backend=backend, span_exporter=span_exporter)
    config = uvicorn_config(app, settings, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    gateway = RunningGateway(f"http://127.0.0.1:{port}", app, server)
    try:
        if wait:
            gateway.wait_ready()
        yield gateway
    finally:
        server.should_exit = True
        thread.join(30)


def gateway_settings(models_dir, backend: str, target: str | None = None, **overrides) -> Settings:
    values = dict(
        backend=backend,
        models_dir=models_dir,
        encoder_target=target or "127.0.0.1:1",
        decoder_target=target or "127.0.0.1:1",
        health_interval_s=0.2,
        retry_backoff_s=0.01,
        call_timeout_s=20.0,
        request_timeout_s=60.0,
        max_upload_bytes=2 * 1024 * 1024,
        max_image_pixels=20_000_000,
        max_batch_images=4,
    )
    values.update(overrides)
    return Settings(**values)
