"""HTTP for pictures: POST /render, template images, the web page at /, and the one way a
rendered image is answered (ETag, 304 or 412, content type) that POST /memes?render= shares."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response

from gateway.dependencies import RendererDep, Service
from gateway.errors import InvalidRequest
from gateway.images import sha256
from gateway.rendering.renderer import Renderer, RenderSpec
from gateway.request_parsing import body_doc, image_or_template, parse
from gateway.schemas import RenderOptions, RenderRequest
from gateway.settings import MAX_RENDER_SIDE, Settings

router = APIRouter()
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
    source,
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


@router.post(
    "/render",
    response_class=Response,
    openapi_extra=body_doc(RenderRequest, {"image": False}),
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}, "description": "the meme"},
        400: {},
        404: {},
        412: {"description": "If-None-Match names this image's ETag: the client has it"},
        413: {},
        415: {},
        422: {},
    },
)
async def render(request: Request, service: Service, renderer: RendererDep):
    """Draws the given boxes onto an uploaded image or a named template's blank image (no generation)."""
    body, files = await parse(request, RenderRequest, max_files=1)
    data = image_or_template(body, files, max_bytes=service.settings.max_upload_bytes)
    spec = render_spec(service.settings, body, body.boxes, body.format, body.layout or body.template)
    if data is not None:
        digest = sha256(data)
        if not client_has(request, renderer.etag(digest, spec)):  # a 412 needs no decoding
            await service.check_upload(data)  # the upload limits (size, type, pixels) apply here too
        return await image_response(request, renderer, data, digest, spec)
    path, source_id = renderer.template_source(body.template)
    return await image_response(request, renderer, path, source_id, spec)


@router.get(
    "/templates/{name}/image",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, 304: {}, 404: {}, 422: {}},
)
async def template_image(
    request: Request,
    name: str,
    renderer: RendererDep,
    service: Service,
    size: Annotated[
        int | None,
        Query(
            ge=16,
            le=MAX_RENDER_SIDE,
            description="longest side, in pixels (default and limit: MEMEFLY_RENDER_MAX_SIDE)",
        ),
    ] = None,
):
    """A template's blank image, as a JPEG (thumbnails for the web page)."""
    size = size or service.settings.render_max_side
    if size > service.settings.render_max_side:
        raise InvalidRequest(
            f"size {size} is more than the {service.settings.render_max_side}-pixel limit (MEMEFLY_RENDER_MAX_SIDE)"
        )
    path, source_id = renderer.template_source(name)
    spec = RenderSpec(boxes=(), format="jpeg", max_side=size, quality=80)
    return await image_response(request, renderer, path, source_id, spec, cache_control="public, max-age=86400")


@router.get("/", include_in_schema=False)
async def page():
    """The web page: plain HTML, CSS and JavaScript from gateway/static, no build step."""
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})
