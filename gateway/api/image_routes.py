"""HTTP for shared image URLs: GET a meme drawn from its URL alone (gateway/sharing/links.py),
with an ETag and a Cache-Control that lets browsers and CDNs keep it."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from gateway.api.dependencies import RendererDep, Service
from gateway.api.responses import already_have, caption_headers, client_has, image_response, render_spec
from gateway.api.schemas import RenderOptions
from gateway.errors import Gone, NotFound
from gateway.settings import MAX_RENDER_SIDE
from gateway.sharing.links import UPLOAD_ID, decode_text, parse_boxes
from gateway.sharing.meme_urls import Sharing

router = APIRouter()
# A template URL names the text, not the picture: a new template image or renderer draws it anew,
# so caches keep it a day and then revalidate by ETag. An upload URL's picture is its SHA-256.
TEMPLATE_CACHING = "public, max-age=86400"
_IMAGE = {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}, "description": "the meme"}


async def get_sharing(request: Request) -> Sharing:
    sharing: Sharing = request.app.state.sharing
    return sharing


SharingDep = Annotated[Sharing, Depends(get_sharing)]
Size = Annotated[
    int | None,
    Query(
        ge=16, le=MAX_RENDER_SIDE, description="longest side, in pixels (default and limit: MEMEFLY_RENDER_MAX_SIDE)"
    ),
]


@router.get(
    "/images/templates/{template}/{boxes:path}",
    response_class=Response,
    responses={200: _IMAGE, 304: {}, 404: {}, 422: {}},
)
async def template_meme(
    request: Request, template: str, boxes: str, service: Service, renderer: RendererDep, size: Size = None
) -> Response:
    """A meme on a template's blank image, from its URL: one path segment per box ("_" for a
    space), the extension picks the format. Anyone may write one, as with memegen."""
    texts, render_format = parse_boxes(boxes)
    name = decode_text(template)
    spec = render_spec(service.settings, RenderOptions(max_size=size), list(texts), render_format, name)
    path, source_id = renderer.template_source(name)
    headers = caption_headers(list(texts), name)
    return await image_response(request, renderer, path, source_id, spec, headers, TEMPLATE_CACHING)


@router.get(
    "/images/uploads/{upload_id}/{boxes:path}",
    response_class=Response,
    responses={200: _IMAGE, 304: {}, 403: {}, 404: {}, 410: {}, 422: {}},
)
async def upload_meme(
    request: Request,
    upload_id: str,
    boxes: str,
    service: Service,
    renderer: RendererDep,
    sharing: SharingDep,
    expires: str = "",
    sig: str = "",
    layout: Annotated[str | None, Query(max_length=200)] = None,
    size: Size = None,
) -> Response:
    """A meme on an uploaded image, from the URL POST /memes gave for it: signed (403 if
    changed) and kept until it expires (410 after)."""
    if not UPLOAD_ID.fullmatch(upload_id):
        raise NotFound("no such upload: an upload URL names its image by SHA-256")
    texts, render_format = parse_boxes(boxes)
    until = sharing.links.check(upload_id, texts, layout, expires, sig)
    spec = render_spec(service.settings, RenderOptions(max_size=size), list(texts), render_format, layout)
    cache_control = f"public, max-age={max(0, until - int(time.time()))}, immutable"
    etag = renderer.etag(upload_id, spec)
    if client_has(request, etag):  # no store read for an image the client has
        return already_have(request, etag, cache_control)
    data = await sharing.store.get(upload_id) if sharing.store is not None else None
    if data is None:
        raise Gone("this meme's upload is no longer kept: generate the memes again")
    return await image_response(
        request,
        renderer,
        data,
        upload_id,
        spec,
        headers=caption_headers(list(texts), layout),
        cache_control=cache_control,
    )
