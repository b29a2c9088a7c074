"""Who may call the API, and how often: optional API keys and per-key rate limits.

- Keys (MEMEFLY_API_KEYS, or one per line in MEMEFLY_API_KEYS_FILE, optionally followed by
  that key's own limit) come as `Authorization: Bearer KEY` or `X-API-Key: KEY`; with keys
  set, a request without a known key gets 401.
- Limits (MEMEFLY_RATE_LIMIT, e.g. "60/minute"; a key's own limit wins) count requests per
  key, or per client address when no keys are set, in the `limits` library's moving window:
  in memory by default, in Redis for several replicas (MEMEFLY_RATE_LIMIT_STORAGE=
  async+redis://host:6379, with `pip install limits[async-redis]`). Past it: 429 with
  Retry-After.
- Only POST requests count against a limit (memes, batches, renders: the work), and GETs of
  shared image URLs (/images/, per client address: they need no key); other GETs (the
  template list, thumbnails, the page) do not, so the page's own loading never hits it.
- Wrong keys are counted per client address too (FAILED_KEY_LIMIT), so keys cannot be guessed
  at speed: past it, 429 instead of 401.
- If the counts' storage fails (Redis down), requests go through and a warning is logged
  (at most once a minute): the limit is a guard, not a reason for an outage.
- Always open, so that probes, Prometheus, the page and the API description work:
  OPEN_PATHS, OPEN_PREFIXES. CORS preflights (OPTIONS) are answered before this.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.middleware import send_detail

log = logging.getLogger(__name__)

OPEN_PATHS = ("/", "/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json")
OPEN_PREFIXES = ("/static/", "/static-offline-docs/")
# Shared image URLs need no key (they are sent to people without keys: chats, pages; an
# upload's is signed), but each draws a meme: they count against MEMEFLY_RATE_LIMIT per address.
SHARED_PREFIX = "/images/"
FAILED_KEY_LIMIT = parse("20/minute")  # wrong keys per client address
MIN_KEY_LENGTH = 8
_KEY = re.compile(r"[!-~]+")  # printable ASCII, no spaces: what an HTTP header carries safely
_COMMENT = re.compile(r"(?:^|\s)#")


@dataclass(frozen=True)
class Keys:
    limits: dict[str, RateLimitItem | None]  # key -> its own limit (None: the default)

    @classmethod
    def load(cls, listed: str, file: str) -> Keys:
        """Keys from a comma-separated list and from a file (`KEY [LIMIT]` per line, # comments)."""
        limits: dict[str, RateLimitItem | None] = {k.strip(): None for k in listed.split(",") if k.strip()}
        if file:
            for number, line in enumerate(Path(file).read_text().splitlines(), 1):
                words = _COMMENT.split(line, 1)[0].split()  # "#" starts a comment at a word's start only
                if not words:
                    continue
                if len(words) > 2:
                    raise ValueError(f"MEMEFLY_API_KEYS_FILE line {number}: expected `KEY [LIMIT]`")
                limits[words[0]] = (
                    parse_limit(words[1], f"MEMEFLY_API_KEYS_FILE line {number}") if len(words) == 2 else None
                )
        for key in limits:
            if len(key) < MIN_KEY_LENGTH or not _KEY.fullmatch(key):
                raise ValueError(
                    f"API keys must be at least {MIN_KEY_LENGTH} printable ASCII characters without "
                    f"spaces (one is {len(key)} characters)"
                )
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


def storage(uri: str) -> Storage:
    """The counts' storage: one of limits' async storages (async+memory://, async+redis://...)."""
    scheme = uri.split("://", 1)[0]  # not the rest: it may hold a password
    try:
        found = storage_from_string(uri, wrap_exceptions=True)
    except Exception as error:  # limits raises its own ConfigurationError, or ValueError
        said = str(error).replace(uri, f"{scheme}://...")
        raise ValueError(f"MEMEFLY_RATE_LIMIT_STORAGE ({scheme}://...): {said}") from None
    if not isinstance(found, Storage):
        raise ValueError(
            f"MEMEFLY_RATE_LIMIT_STORAGE ({scheme}://...): use an async storage, "
            "async+memory:// or async+redis://host:6379"
        )
    return found


class AccessMiddleware:
    def __init__(self, app: ASGIApp, keys: Keys, default_limit: str, storage_uri: str) -> None:
        self.app = app
        self.keys = keys
        self.default_limit = parse_limit(default_limit) if default_limit else None
        # Also with keys alone: wrong keys are counted per address.
        self.limiter = MovingWindowRateLimiter(storage(storage_uri)) if (self.default_limit or keys.limits) else None
        self._warned_at = -math.inf

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or scope["method"] == "OPTIONS"
            or path in OPEN_PATHS
            or path.startswith(OPEN_PREFIXES)
        ):
            return await self.app(scope, receive, send)
        address = (scope.get("client") or ("?",))[0]  # the proxy's X-Forwarded-For when trusted (uvicorn)
        if path.startswith(SHARED_PREFIX):
            if self.default_limit is not None and not await self._hit(self.default_limit, "addr:" + address):
                return await self._refuse(send, self.default_limit, "addr:" + address)
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        key = self.keys.find(_presented_key(headers))
        if self.keys.limits and key is None:
            if self.limiter is not None and not await self._hit(FAILED_KEY_LIMIT, "failed:" + address):
                return await send_detail(
                    send, 429, "too many requests with unknown API keys: try again later", [(b"retry-after", b"60")]
                )
            return await send_detail(
                send,
                401,
                "a known API key is needed: `Authorization: Bearer KEY` or `X-API-Key: KEY`",
                [(b"www-authenticate", b'Bearer realm="memefly"')],
            )
        limit = (self.keys.limits.get(key) if key else None) or self.default_limit
        if limit is not None and self.limiter is not None and scope["method"] == "POST":
            # Keys are not stored, only a digest of them; without keys, the client's address counts.
            who = "key:" + hashlib.sha256(key.encode()).hexdigest()[:32] if key else "addr:" + address
            if not await self._hit(limit, who):
                return await self._refuse(send, limit, who)
        return await self.app(scope, receive, send)

    async def _refuse(self, send: Send, limit: RateLimitItem, who: str) -> None:
        retry_after = await self._retry_after(limit, who)
        return await send_detail(
            send,
            429,
            f"rate limit {limit} reached: try again in {retry_after} s",
            [(b"retry-after", str(retry_after).encode())],
        )

    async def _hit(self, limit: RateLimitItem, who: str) -> bool:
        assert self.limiter is not None  # there is one whenever there is a limit to hit
        try:
            return await self.limiter.hit(limit, who)
        except StorageError as error:  # fail open: a guard, not a reason for an outage
            now = time.monotonic()
            if now - self._warned_at > 60:
                self._warned_at = now
                log.warning("rate-limit storage failed, requests are not limited meanwhile: %s", error)
            return True

    async def _retry_after(self, limit: RateLimitItem, who: str) -> int:
        assert self.limiter is not None  # asked only after _hit refused
        try:
            stats = await self.limiter.get_window_stats(limit, who)
        except StorageError:
            return 60
        return max(1, math.ceil(stats.reset_time - time.time()))
