"""One log format for the gateway's own lines and uvicorn's, each with the request's id.

Every request carries an id (gateway/api/request_ids.py); asgi-correlation-id keeps it in a context
variable and its logging filter writes it on each line logged while the request runs ("-"
outside requests: start-up, the readiness monitor, the batch loops shared by many requests).
"""

from __future__ import annotations

import logging
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(correlation_id)s]: %(message)s"
ACCESS_FORMAT = (
    '%(asctime)s %(levelname)s %(name)s [%(correlation_id)s]: %(client_addr)s "%(request_line)s" %(status_code)s'
)
_FILTER = {"()": "asgi_correlation_id.CorrelationIdFilter", "default_value": "-"}


def configure(level: str) -> None:
    """The root logger (the gateway's and other libraries' lines) on stderr, with request ids."""
    from asgi_correlation_id import CorrelationIdFilter

    logging.basicConfig(level=level.upper(), format=FORMAT)
    # It warns on every request whose X-Request-ID it replaces: any client could flood the log.
    logging.getLogger("asgi_correlation_id").setLevel(logging.ERROR)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, CorrelationIdFilter) for f in handler.filters):
            handler.addFilter(CorrelationIdFilter(default_value="-"))


def uvicorn_log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging (its own lines and the access log) in the same format, on stderr."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": _FILTER},
        "formatters": {
            "default": {"format": FORMAT},
            "access": {"()": "uvicorn.logging.AccessFormatter", "fmt": ACCESS_FORMAT, "use_colors": False},
        },
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["request_id"],
                "stream": "ext://sys.stderr",
            },
            "access": {
                "class": "logging.StreamHandler",
                "formatter": "access",
                "filters": ["request_id"],
                "stream": "ext://sys.stderr",
            },
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {"handlers": ["access"], "level": level.upper(), "propagate": False},
        },
    }
