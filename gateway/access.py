"""Who may call the API, and how often: optional API keys and per-key rate limits.

- Keys (MEMEFLY_API_KEYS, or one per line in MEMEFLY_API_KEYS_FILE, optionally followed by
  that key's own limit) come as `Authorization: Bearer KEY` or `X-API-Key: KEY`; with keys
  set, a request without a known key gets 401.
- Limits (MEMEFLY_RATE_LIMIT, e.g. "60/minute"; a key's own limit wins) count requests per
  key, or per client address when no keys are set, in the `limits` library's moving window:
  in memory by default, in Redis for several replicas (MEMEFLY_RATE_LIMIT_STORAGE=
  async+redis://host:6379, with `pip install limits[async-redis]`). Past it: 429 with
  Retry-After.
- Always open, so that probes, Prometheus and the page's files work: OPEN_PATHS.
  CORS preflights (OPTIONS) are answered before this, by the CORS middleware.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from limits import RateLimitItem, parse
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

OPEN_PATHS = ("/healthz", "/readyz", "/metrics")
OPEN_PREFIXES = ("/static/",)
PAGE = "/"


@dataclass(frozen=True)
class Keys:
    limits: dict[str, RateLimitItem | None]  # key -> its own limit (None: the default)

    @classmethod
    def load(cls, listed: str, file: str) -> "Keys":
        """Keys from a comma-separated list and from a file (`KEY [LIMIT]` per line, # comments)."""
        limits: dict[str, RateLimitItem | None] = {k.strip(): None for k in listed.split(",") if k.strip()}
        if file:
            for number, line in enumerate(Path(file).read_text().splitlines(), 1):
                words = line.split("#", 1)[0].split()
                if not words:
                    continue
                if len(words) > 2:
                    raise ValueError(f"MEMEFLY_API_KEYS_FILE line {number}: expected `KEY [LIMIT]`")
                limits[words[0]] = parse_limit(words[1], f"MEMEFLY_API_KEYS_FILE line {number}") if len(words) == 2 else None
        return cls(limits)

    def find(self, presented: str | None) -> str | None:
        """The known key presented, compared in constant time."""
        if presented is None:
            return None
        found = None
        for key in self.limits:
            if hmac.compare_digest(key.encode(), presented.encode()):
                found = key
        return found


def parse_limit(text: str, setting: str = "MEMEFLY_RATE_LIMIT") -> RateLimitItem:
    try:
        return parse(text)
    except ValueError:
        raise ValueError(f"{setting}: {text!r} is not a rate limit such as 60/minute or 1000/hour") from None


def _presented_key(headers: dict[bytes, bytes]) -> str | None:
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    return key or None


def storage(uri: str):
    """The counts' storage (limits' async storages: async+memory://, async+redis://...)."""
    try:
        return storage_from_string(uri)
    except Exception as error:  # limits raises its own ConfigurationError, or ValueError
        raise ValueError(f"MEMEFLY_RATE_LIMIT_STORAGE={uri!r}: {error}") from None


class AccessMiddleware:
    def __init__(self, app, keys: Keys, default_limit: str, storage_uri: str):
        self.app = app
        self.keys = keys
        self.default_limit = parse_limit(default_limit) if default_limit else None
        self.limiter = MovingWindowRateLimiter(storage(storage_uri)) if (
            self.default_limit or any(keys.limits.values())) else None

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if (scope["type"] != "http" or scope["method"] == "OPTIONS" or path in OPEN_PATHS or path == PAGE
                or path.startswith(OPEN_PREFIXES)):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        key = self.keys.find(_presented_key(headers))
        if self.keys.limits and key is None:
            return await _answer(send, 401, "a known API key is needed: `Authorization: Bearer KEY` or `X-API-Key: KEY`",
                                 {b"www-authenticate": b'Bearer realm="memefly"'})
        limit = (self.keys.limits.get(key) if key else None) or self.default_limit
        if limit is not None and self.limiter is not None:
            # Keys are not stored, only a digest of them; without keys, the client's address counts.
            who = "key:" + hashlib.sha256(key.encode()).hexdigest()[:32] if key else "addr:" + (scope.get("client") or ("?",))[0]
            if not await self.limiter.hit(limit, who):
                stats = await self.limiter.get_window_stats(limit, who)
                retry_after = max(1, math.ceil(stats.reset_time - time.time()))
                return await _answer(send, 429, f"rate limit {limit} reached: try again in {retry_after} s",
                                     {b"retry-after": str(retry_after).encode()})
        return await self.app(scope, receive, send)


async def _answer(send, status: int, detail: str, headers: dict[bytes, bytes]) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers.items()]})
    await send({"type": "http.response.body", "body": body})
