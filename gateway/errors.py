"""Errors the gateway raises on purpose, each with the HTTP status it means.

Client faults are 4xx; model-side trouble is 502/503/504. A 500 is only ever a bug.
"""

from __future__ import annotations


class GatewayError(Exception):
    status = 500

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class BadImage(GatewayError):
    status = 400


class ImageTooLarge(GatewayError):
    status = 413


class UnsupportedImage(GatewayError):
    status = 415


class InvalidRequest(GatewayError):
    status = 422


class ModelError(GatewayError):
    """The model server rejected or failed a well-formed call: a deployment problem."""

    status = 502


class ModelUnavailable(GatewayError):
    """Models not loaded, not reachable, or not ready yet: try again later."""

    status = 503

    def __init__(self, detail: str, *, retry_after_s: int = 5):
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})


class DeadlineExceeded(GatewayError):
    status = 504


class NotFound(GatewayError):
    status = 404
