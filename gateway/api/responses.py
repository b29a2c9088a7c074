"""What every route that answers an image shares: the render spec from request options, the
one way a rendered image is answered (ETag, 304 or 412, content type, cache headers), the
caption headers, and where the web page's files are."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import Response

from gateway.api.schemas import RenderOptions
from gateway.errors import InvalidRequest
from gateway.rendering.renderer import Renderer, RenderSpec
from gateway.settings import Settings

STATIC_DIR = Path(__file__).parent / "static"


def render_spec(
    settings: Settings, options: RenderOptions, boxes: list[str], kind: str, layout: str | None
) -> RenderSpec:
    limit = settings.render_max_side
    if options.max_size is not None and options.max_size > limit:
        raise InvalidRequest(
            f"max_size {options.max_size} is more than the {limit}-pixel limit (MEMEFLY_RENDER_MAX_SIDE)"
        )
    return RenderSpec(
        tuple(boxes),
        layout,
        kind,
        options.case,
        options.max_size or limit,
        options.quality or settings.render_jpeg_quality,
    )


def client_has(request: Request, etag: str) -> bool:
    """If-None-Match names this ETag (or *): the client has this very image already."""
    header = request.headers.get("if-none-match")
    if not header:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in tags or etag in tags


def already_have(request: Request, etag: str, cache_control: str) -> Response:
    """RFC 9110 13.1.2: a matching If-None-Match is 304 Not Modified on GET and HEAD, and
    412 Precondition Failed on other methods (POST /render); no image is sent either way."""
    status = 304 if request.method in ("GET", "HEAD") else 412
    return Response(status_code=status, headers={"ETag": etag, "Cache-Control": cache_control})


async def image_response(
    request: Request,
    renderer: Renderer,
    source: bytes | Path,
    source_id: str,
    spec: RenderSpec,
    headers: dict[str, str] | None = None,
    cache_control: str = "no-cache",
) -> Response:
    etag = renderer.etag(source_id, spec)
    if client_has(request, etag):
        return already_have(request, etag, cache_control)
    rendered = await renderer.render(source, source_id, spec)
    return Response(
        rendered.data,
        media_type=rendered.content_type,
        headers={
            "ETag": rendered.etag,
            "Cache-Control": cache_control,
            "X-Render-Cache": "hit" if rendered.cached else "miss",
            **(headers or {}),
        },
    )


def caption_headers(boxes: list[str], template: str | None) -> dict[str, str]:
    """The caption travels with a rendered meme: percent-encoded JSON (headers are Latin-1)."""
    headers = {"X-Memefly-Boxes": quote(json.dumps(boxes, ensure_ascii=False))}
    if template:
        headers["X-Memefly-Template"] = quote(template)
    return headers
