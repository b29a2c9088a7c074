"""The HTTP endpoints. Decoding and model calls live in the service; this file speaks HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Annotated, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from gateway.api.dependencies import RendererDep, Service
from gateway.api.request_parsing import body_doc, decode_base64, image_or_template, parse
from gateway.api.responses import caption_headers, image_response, render_spec
from gateway.api.schemas import (
    BatchItem,
    BatchItemError,
    BatchRequest,
    BatchResponse,
    MemeRequest,
    MemeResponse,
    Readyz,
    TemplateOut,
    TemplatesResponse,
)
from gateway.engine.images import CheckedImage
from gateway.engine.service import MemeResult, MemeService
from gateway.errors import CLIENT_CLOSED, GatewayError, InvalidRequest
from gateway.rendering.layout import layout_for
from gateway.rendering.renderer import Renderer
from memefly.decoding.options import DecodingOptions

router = APIRouter()
T = TypeVar("T")

_BODY_DOC = body_doc(MemeRequest, {"image": False})
_BATCH_DOC = body_doc(BatchRequest, {"images": True})


def _options(body: DecodingOptions) -> DecodingOptions:
    # Only what the client set: defaults (and the do_sample rule on num_beams) apply as in the request.
    return DecodingOptions.model_validate(
        body.model_dump(include=set(DecodingOptions.model_fields), exclude_unset=True)
    )


async def _response(
    request: Request, service: MemeService, result: MemeResult, upload: bytes | None, layout: str | None = None
) -> MemeResponse:
    urls = await request.app.state.sharing.meme_urls(request, result, upload, layout)
    return MemeResponse.from_result(result, service.model_info, urls)


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Runs `work`; if the client disconnects first, cancels it (freeing its beams) and returns None."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None
    finally:
        for pending in (task, watcher):
            pending.cancel()


async def _disconnect(request: Request) -> None:
    """Returns when the client goes away. The body is read by now, so the server's next
    message can only be the disconnect: no polling."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.post(
    "/memes",
    response_model=MemeResponse,
    openapi_extra=_BODY_DOC,
    responses={400: {}, 404: {}, 412: {}, 413: {}, 415: {}, 422: {}, 503: {}, 504: {}},
)
async def create_memes(
    request: Request,
    service: Service,
    renderer: RendererDep,
    stream: Annotated[
        bool,
        Query(
            description="answer as server-sent events: a `meme` event for each caption as its search finishes it, "
            "then a `result` event with the answer POST /memes gives (or an `error` event)"
        ),
    ] = False,
) -> Response:
    """Meme captions for an image (or a named template): the top candidates, each split into its boxes."""
    service.require_ready()
    body, files = await parse(request, MemeRequest, max_files=1)
    data = image_or_template(body, files, max_bytes=service.settings.max_upload_bytes)
    image = await service.check_upload(data) if data is not None else None
    if stream:
        if body.render:
            raise InvalidRequest("stream=true answers with events, render= with an image: ask for one of them")
        return await streamed_memes(request, service, image, body, data)
    template_picture = None
    if body.render and image is None:  # before generating: no blank image, no meme to draw
        assert body.template is not None  # no image: image_or_template made sure a template is named
        template_picture = renderer.template_source(service.template_name(body.template))
    result = await _unless_disconnected(request, service.memes(image, body.template, _options(body)))
    if result is None:
        return Response(status_code=CLIENT_CLOSED)
    if body.render:
        return await _rendered_meme(request, service, renderer, body, result, data, template_picture)
    # Built and validated as MemeResponse already: send it as is (FastAPI would validate again).
    response = await _response(request, service, result, data, body.layout)
    return JSONResponse(response.model_dump(mode="json"))


def _event(kind: str, data: object) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def streamed_memes(
    request: Request, service: MemeService, image: CheckedImage | None, body: MemeRequest, upload: bytes | None
) -> Response:
    """POST /memes?stream=true. The answer starts with the first caption, so a request refused
    or failed before any caption gets its usual status and JSON error, not a stream."""
    captions: asyncio.Queue[list[str]] = asyncio.Queue()
    work = asyncio.ensure_future(service.memes(image, body.template, _options(body), on_caption=captions.put_nowait))

    async def next_caption() -> list[str] | None:
        """The next caption, or None once the memes are done (their result or error is then in `work`)."""
        if captions.empty() and not work.done():
            waiting = asyncio.ensure_future(captions.get())
            await asyncio.wait({waiting, work}, return_when=asyncio.FIRST_COMPLETED)
            if waiting.done():
                return waiting.result()
            waiting.cancel()
        return captions.get_nowait() if not captions.empty() else None

    first = await _unless_disconnected(request, next_caption())
    if first is None and (not work.done() or work.cancelled()):  # the client left
        work.cancel()
        return Response(status_code=CLIENT_CLOSED)
    if first is None:
        work.result()  # failed before any caption: raises, and the error handler answers

    async def events() -> AsyncIterator[bytes]:
        try:
            caption, index = first, 0
            while caption is not None:
                yield _event("meme", {"index": index, "text": "\n".join(caption), "boxes": caption})
                caption, index = await next_caption(), index + 1
            try:
                result = work.result()
            except GatewayError as error:
                yield _event("error", {"status": error.status, "detail": error.detail})
                return
            response = await _response(request, service, result, upload, body.layout)
            yield _event("result", response.model_dump(mode="json"))
        finally:
            work.cancel()  # the client left mid-stream: its beams leave the next call

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


async def _rendered_meme(
    request: Request,
    service: MemeService,
    renderer: Renderer,
    body: MemeRequest,
    result: MemeResult,
    data: bytes | None,
    template_picture: tuple[Path, str] | None,
) -> Response:
    assert body.render is not None  # only called for render=
    if body.rank > len(result.memes):
        raise InvalidRequest(f"rank {body.rank}: only {len(result.memes)} memes were generated")
    meme = result.memes[body.rank - 1]
    layout = layout_for(body.layout or body.template, result.templates)
    spec = render_spec(service.settings, body, meme.boxes, body.render, layout)
    source: bytes | Path
    if data is not None:
        assert result.image_sha256 is not None  # the memes of an upload carry its SHA-256
        source, source_id = data, result.image_sha256
    else:
        assert template_picture is not None  # found before generating (create_memes)
        source, source_id = template_picture
    return await image_response(
        request, renderer, source, source_id, spec, headers=caption_headers(meme.boxes, result.templates[0][0])
    )


@router.post(
    "/memes/batch",
    response_model=BatchResponse,
    openapi_extra=_BATCH_DOC,
    responses={400: {}, 413: {}, 415: {}, 422: {}, 503: {}},
)
async def create_memes_batch(request: Request, service: Service) -> BatchResponse | Response:
    """Several images in one request (multipart `images` parts, or JSON `images_base64`); one result or error each."""
    service.require_ready()
    limit = service.settings.max_batch_images
    model: type[BatchRequest | _MultipartBatch] = (
        BatchRequest if "json" in request.headers.get("content-type", "") else _MultipartBatch
    )
    body, files = await parse(request, model, max_files=limit + 1)
    encoded = body.images_base64 or []
    images: list[bytes] | list[None] = files or [None] * len(encoded)
    if not images:
        raise InvalidRequest("send at least one image")
    if len(images) > limit:
        raise InvalidRequest(f"{len(images)} images: at most {limit} per batch")
    options = _options(body)

    async def one(index: int) -> BatchItem:
        try:
            data = (
                files[index]
                if files
                else decode_base64(
                    encoded[index],
                    max_bytes=service.settings.max_upload_bytes,
                    field=f"images_base64[{index}]",
                )
            )
            result = await service.memes(await service.check_upload(data), None, options)
            return BatchItem(index=index, result=await _response(request, service, result, data))
        except GatewayError as error:
            return BatchItem(index=index, error=BatchItemError(status=error.status, detail=error.detail))

    async def all_items() -> list[BatchItem]:
        return await asyncio.gather(*(one(i) for i in range(len(images))))

    results = await _unless_disconnected(request, all_items())
    if results is None:
        return Response(status_code=CLIENT_CLOSED)
    return BatchResponse(results=results)


class _MultipartBatch(DecodingOptions):
    """BatchRequest as multipart: the images come as `images` file parts."""

    images_base64: list[str] | None = None  # multipart sends files instead


@router.get("/templates", response_model=TemplatesResponse)
async def list_templates(service: Service, renderer: RendererDep) -> TemplatesResponse:
    """The templates the served models know, in the models' order."""
    service.require_ready()
    return TemplatesResponse(
        templates=[
            TemplateOut(
                id=t.id,
                name=t.name,
                box_count=t.box_count,
                image=f"/templates/{quote(t.name)}/image" if renderer.template_image(t.name) else None,
            )
            for t in service.templates
        ]
    )


@router.get("/healthz", response_model=None)  # the return annotation is for type checkers, not a response model
async def healthz() -> dict[str, str]:
    """Liveness: the process answers. Readiness is /readyz."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readyz, responses={503: {"model": Readyz}})
async def readyz(service: Service) -> Readyz | JSONResponse:
    """200 once the models are checked and warm; 503 (with the reason) before that or when they go away."""
    state = service.readiness
    ready, reason = (False, "shutting down") if service.draining else (state.ready, state.reason)
    body = Readyz(ready=ready, reason=reason, model=service.model_info)
    if ready:
        return body
    return JSONResponse(
        body.model_dump(), status_code=503, headers={"Retry-After": str(service.settings.retry_after_s)}
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(service: Service) -> Response:
    return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
