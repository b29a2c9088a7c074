"""The in-process pipeline's old name, kept for code written against it: `gateway.client`'s
`MemeflyClient` is `gateway.pipeline`'s `MemePipeline` (it never was an HTTP client; that is
`memefly.http`). Importing this module warns; it goes in a later release."""

from __future__ import annotations

import warnings

from gateway.pipeline import Item, ItemResult, client_settings
from gateway.pipeline import MemePipeline as MemeflyClient

__all__ = ["Item", "ItemResult", "MemeflyClient", "client_settings"]

warnings.warn(
    "gateway.client is now gateway.pipeline, and MemeflyClient is MemePipeline",
    DeprecationWarning,
    stacklevel=2,
)
