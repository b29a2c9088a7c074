"""A typed client for Memefly's HTTP API, sync and async (httpx), for apps that call a gateway.

    from memefly.http import Client

    with Client("https://memes.example", api_key="...") as memefly:
        answer = memefly.memes(template="Drake Hotline Bling")          # or memefly.memes(image=path_or_bytes)
        print(answer.memes[0].boxes, answer.template.known)
        png = memefly.render(template="Drake Hotline Bling", boxes=["tests", "prod"])

    async with AsyncClient("http://localhost:8000") as memefly:
        answer = await memefly.memes(image=jpeg_bytes, num_beams=5)

Options are `POST /memes`'s (docs/gateway.md), passed as keyword arguments. An answer other
than 2xx raises MemeflyError with the status, the gateway's detail, the request id and
Retry-After. Only httpx is needed: no TensorFlow, no gateway code.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://localhost:8000"
Image = bytes | str | Path  # the bytes of an image, or a path to one


@dataclass(frozen=True)
class Meme:
    rank: int
    text: str
    boxes: list[str]
    score: float
    url: str | None = None  # the meme drawn, by GET: shareable (None when uploads are not kept)


@dataclass(frozen=True)
class Caption:
    """A streamed caption (POST /memes?stream=true), as its search finished it: not ranked yet."""

    index: int
    text: str
    boxes: list[str]


@dataclass(frozen=True)
class TemplateMatch:
    name: str
    probability: float
    known: bool | None = None  # False: not one of the known templates (a photo); None: models without a threshold


@dataclass(frozen=True)
class MemeAnswer:
    memes: list[Meme]
    template: TemplateMatch
    templates: list[TemplateMatch]
    model: dict[str, str]
    timings_ms: dict[str, float]
    image_sha256: str | None
    request_id: str | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any], request_id: str | None = None) -> MemeAnswer:
        return cls(
            memes=[_known(Meme, m) for m in body["memes"]],
            template=_known(TemplateMatch, body["template"]),
            templates=[_known(TemplateMatch, t) for t in body["templates"]],
            model=body["model"],
            timings_ms=body["timings_ms"],
            image_sha256=body["image_sha256"],
            request_id=request_id,
        )


@dataclass(frozen=True)
class Template:
    id: int
    name: str
    box_count: int
    image: str | None = None


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str
    model: dict[str, str]


def _known(kind, values: dict[str, Any]):
    """KIND from VALUES, ignoring fields a newer gateway added (a client keeps working)."""
    return kind(**{k: v for k, v in values.items() if k in kind.__dataclass_fields__})


class MemeflyError(Exception):
    """A non-2xx answer: `status`, the gateway's `detail`, `request_id`, and `retry_after` (seconds)
    for 429 and 503."""

    def __init__(self, status: int, detail: Any, request_id: str | None, retry_after: float | None):
        super().__init__(f"HTTP {status}: {detail}" + (f" (request {request_id})" if request_id else ""))
        self.status, self.detail, self.request_id, self.retry_after = status, detail, request_id, retry_after


def _image_base64(image: Image) -> str:
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    return base64.b64encode(data).decode("ascii")


def _meme_body(image: Image | None, template: str | None, options: dict[str, Any]) -> dict[str, Any]:
    if (image is None) == (template is None):
        raise ValueError("give an image or a template, not both")
    body = {k: v for k, v in options.items() if v is not None}
    if image is not None:
        body["image_base64"] = _image_base64(image)
    else:
        body["template"] = template
    return body


def _render_body(
    image: Image | None, template: str | None, boxes: list[str], format: str, options: dict[str, Any]
) -> dict[str, Any]:
    body = _meme_body(image, template, options)
    body.update(boxes=list(boxes), format=format)
    return body


def _checked(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    retry_after = response.headers.get("retry-after")
    raise MemeflyError(
        response.status_code,
        detail,
        response.headers.get("x-request-id"),
        float(retry_after) if retry_after and retry_after.isdigit() else None,
    )


class _Events:
    """Server-sent events, line by line: `meme` -> Caption, `result` -> MemeAnswer, `error` -> raised."""

    def __init__(self, request_id: str | None):
        self.request_id = request_id
        self.kind = ""

    def feed(self, line: str) -> Iterator[Caption | MemeAnswer]:
        if line.startswith("event: "):
            self.kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
            if self.kind == "meme":
                yield _known(Caption, data)
            elif self.kind == "result":
                yield MemeAnswer.from_json(data, self.request_id)
            elif self.kind == "error":
                raise MemeflyError(data["status"], data["detail"], self.request_id, None)


def _headers(api_key: str | None, headers: dict[str, str] | None) -> dict[str, str]:
    out = {"User-Agent": "memefly-http-client"}
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    return {**out, **(headers or {})}


class Client:
    """Synchronous client. `api_key` is sent as a Bearer token; `transport` is httpx's (tests)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        self._http = httpx.Client(
            base_url=base_url, headers=_headers(api_key, headers), timeout=timeout, transport=transport
        )

    def memes(
        self, image: Image | None = None, *, template: str | None = None, request_id: str | None = None, **options: Any
    ) -> MemeAnswer:
        """Memes for an image (bytes or a path) or a named template; options as POST /memes takes them."""
        response = _checked(
            self._http.post(
                "/memes",
                json=_meme_body(image, template, options),
                headers={"X-Request-ID": request_id} if request_id else None,
            )
        )
        return MemeAnswer.from_json(response.json(), response.headers.get("x-request-id"))

    def memes_stream(
        self, image: Image | None = None, *, template: str | None = None, **options: Any
    ) -> Iterator[Caption | MemeAnswer]:
        """The captions as they finish, then the answer (POST /memes?stream=true)."""
        body = _meme_body(image, template, options)
        with self._http.stream("POST", "/memes", params={"stream": "true"}, json=body) as response:
            if not response.is_success:
                response.read()
                _checked(response)
            events = _Events(response.headers.get("x-request-id"))
            for line in response.iter_lines():
                yield from events.feed(line)

    def render(
        self,
        image: Image | None = None,
        *,
        template: str | None = None,
        boxes: list[str],
        format: str = "png",
        **options: Any,
    ) -> bytes:
        """The boxes drawn onto an image or a template's blank image: the image's bytes."""
        return _checked(self._http.post("/render", json=_render_body(image, template, boxes, format, options))).content

    def templates(self) -> list[Template]:
        return [_known(Template, t) for t in _checked(self._http.get("/templates")).json()["templates"]]

    def ready(self) -> Readiness:
        """/readyz, 200 or 503 alike."""
        response = self._http.get("/readyz")
        if response.status_code not in (200, 503):
            _checked(response)
        return _known(Readiness, response.json())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """The same calls, awaited."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(api_key, headers), timeout=timeout, transport=transport
        )

    async def memes(
        self, image: Image | None = None, *, template: str | None = None, request_id: str | None = None, **options: Any
    ) -> MemeAnswer:
        response = _checked(
            await self._http.post(
                "/memes",
                json=_meme_body(image, template, options),
                headers={"X-Request-ID": request_id} if request_id else None,
            )
        )
        return MemeAnswer.from_json(response.json(), response.headers.get("x-request-id"))

    async def memes_stream(
        self, image: Image | None = None, *, template: str | None = None, **options: Any
    ) -> AsyncIterator[Caption | MemeAnswer]:
        body = _meme_body(image, template, options)
        async with self._http.stream("POST", "/memes", params={"stream": "true"}, json=body) as response:
            if not response.is_success:
                await response.aread()
                _checked(response)
            events = _Events(response.headers.get("x-request-id"))
            async for line in response.aiter_lines():
                for event in events.feed(line):
                    yield event

    async def render(
        self,
        image: Image | None = None,
        *,
        template: str | None = None,
        boxes: list[str],
        format: str = "png",
        **options: Any,
    ) -> bytes:
        response = await self._http.post("/render", json=_render_body(image, template, boxes, format, options))
        return _checked(response).content

    async def templates(self) -> list[Template]:
        return [_known(Template, t) for t in _checked(await self._http.get("/templates")).json()["templates"]]

    async def ready(self) -> Readiness:
        response = await self._http.get("/readyz")
        if response.status_code not in (200, 503):
            _checked(response)
        return _known(Readiness, response.json())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
