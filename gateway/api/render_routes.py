"""HTTP for pictures: POST /render, template images and the web page at /."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response

from gateway.api.dependencies import RendererDep, Service
from gateway.api.request_parsing import body_doc, image_or_template, parse
from gateway.api.responses import STATIC_DIR, client_has, image_response, render_spec
from gateway.api.schemas import RenderRequest
from gateway.engine.images import sha256
from gateway.errors import InvalidRequest
from gateway.rendering.renderer import RenderSpec
from gateway.settings import MAX_RENDER_SIDE

router = APIRouter()


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
async def render(request: Request, service: Service, renderer: RendererDep) -> Response:
    """Draws the given boxes onto an uploaded image or a named template's blank image (no generation)."""
    body, files = await parse(request, RenderRequest, max_files=1)
    data = image_or_template(body, files, max_bytes=service.settings.max_upload_bytes)
    spec = render_spec(service.settings, body, body.boxes, body.format, body.layout or body.template)
    if data is not None:
        digest = sha256(data)
        if not client_has(request, renderer.etag(digest, spec)):  # a 412 needs no decoding
            await service.check_upload(data)  # the upload limits (size, type, pixels) apply here too
        return await image_response(request, renderer, data, digest, spec)
    assert body.template is not None  # no image: image_or_template made sure a template is named
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
) -> Response:
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
async def page() -> FileResponse:
    """The web page: plain HTML, CSS and JavaScript from gateway/api/static, no build step."""
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})
