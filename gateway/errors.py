"""Errors the gateway raises on purpose, each with the HTTP status it means.

Client faults are 4xx; model-side trouble is 502/503/504. A 500 is only ever a bug.
"""

from __future__ import annotations

CLIENT_CLOSED = 499  # nginx's code for "the client went away": counted and logged, nobody receives it


class GatewayError(Exception):
    """`detail` is what the client is told: what it did wrong, or what failed, never where
    (hosts, ports, memory addresses); `internal` adds that for the log."""

    status = 500

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, internal: str = ""):
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.internal = internal

    @property
    def logged(self) -> str:
        return f"{self.detail} [{self.internal}]" if self.internal else self.detail


class BadImage(GatewayError):
    status = 400


class ImageTooLarge(GatewayError):
    status = 413


class RequestTooLarge(GatewayError):
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

    def __init__(self, detail: str, *, retry_after_s: int = 5, internal: str = ""):
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)}, internal=internal)


class DeadlineExceeded(GatewayError):
    status = 504


class NotFound(GatewayError):
    status = 404


class Forbidden(GatewayError):
    status = 403


class Gone(GatewayError):
    """It was here and is not any more (an expired shared image)."""

    status = 410


class WrongTarget(ModelError):
    """A model server answers but does not serve the model its setting points it at: a
    deployment mistake that waiting will not mend (the log names the setting)."""
