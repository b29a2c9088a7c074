"""One request model, two encodings: a form (multipart with the file, or urlencoded) or JSON (base64).

Validation errors become FastAPI's usual 422 body; the image itself is never echoed back.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Protocol, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from gateway.errors import BadImage, ImageTooLarge, InvalidRequest, RequestTooLarge, UnsupportedImage

LIST_FIELDS = {"exclude", "blocked_words", "boxes"}
FILE_FIELDS = {"image", "images"}
# JSON is parsed in C holding the GIL: a hostile body (millions of nested empty lists) would
# stall every request, /healthz included, and take gigabytes. Our bodies are a few small
# fields plus base64 strings, so two cheap byte scans refuse such a body before parsing.
# A JSON body that carries no image (no *_base64 field) is at most this: the longest the field
# limits allow (100 excluded captions of 500 characters, 200 blocked words...), JSON-escaped.
SMALL_JSON_BYTES = 512 * 1024
MAX_JSON_CONTAINERS = 10_000  # "[" and "{" in the whole body, strings included
Model = TypeVar("Model", bound=BaseModel)


class ImageOrTemplate(Protocol):
    """A request that sends one image or names a template (MemeRequest, RenderRequest)."""

    @property
    def image_base64(self) -> str | None: ...

    @property
    def template(self) -> str | None: ...


async def parse(request: Request, model: type[Model], *, max_files: int) -> tuple[Model, list[bytes]]:
    """The validated fields, and the uploaded files in order (multipart only)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        raw = await request.body()
        check_json_shape(raw)
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as error:  # bad JSON or UTF-8, an integer too long, nesting too deep
            raise BadRequestBody(f"the body is not valid JSON: {str(error)[:200]}") from None
        if not isinstance(data, dict):
            raise BadRequestBody("the JSON body must be an object")
        return validate(model, data), []
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=max_files, max_fields=500)
        fields: dict[str, Any] = {}
        files: list[bytes] = []
        for key in dict.fromkeys(form.keys()):
            values = form.getlist(key)
            if key in FILE_FIELDS:
                for value in values:
                    if not isinstance(value, UploadFile):
                        raise BadRequestBody(f"`{key}` must be a file part (curl -F '{key}=@meme.jpg')")
                    files.append(await value.read())
            elif key in LIST_FIELDS:
                fields[key] = [str(v) for v in values]
            else:
                fields[key] = values[-1] if isinstance(values[-1], str) else None
        return validate(model, fields), files
    raise UnsupportedImage("send multipart/form-data (an `image` file) or application/json (`image_base64`)")


class BadRequestBody(BadImage):
    """400: the body itself cannot be read."""


def body_doc(model: type[BaseModel], files: dict[str, bool]) -> dict[str, Any]:
    """openapi_extra for a route that `parse`s MODEL: its JSON body, and the same fields as a
    multipart form with FILES (name -> repeated?) as binary parts, so /docs can call it."""
    schema = model.model_json_schema()
    form = {name: prop for name, prop in schema.get("properties", {}).items() if not name.endswith("_base64")}
    binary = {"type": "string", "format": "binary"}
    for name, repeated in files.items():
        form[name] = {"type": "array", "items": binary} if repeated else binary
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": form},
                    "description": "the image(s) as file parts; any field of the JSON body as a form field",
                },
                "application/json": {"schema": schema},
            },
        }
    }


def check_json_shape(raw: bytes) -> None:
    """Refuse, before parsing, a JSON body that no request of ours can be (see SMALL_JSON_BYTES)."""
    if len(raw) > SMALL_JSON_BYTES and b'_base64"' not in raw:
        raise RequestTooLarge(
            f"a JSON body without image_base64 is at most {SMALL_JSON_BYTES // 1024} KB; this one is {len(raw):,} bytes"
        )
    containers = raw.count(b"[") + raw.count(b"{")
    if containers > MAX_JSON_CONTAINERS:
        raise BadRequestBody(f"the JSON body has {containers:,} arrays and objects; a request has a few")


def validate(model: type[Model], data: dict[str, Any]) -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise RequestValidationError(
            [{"type": e["type"], "loc": ("body", *e["loc"]), "msg": e["msg"]} for e in error.errors(include_url=False)]
        ) from None


def image_or_template(body: ImageOrTemplate, files: list[bytes], *, max_bytes: int) -> bytes | None:
    """The one image of a request (a file part or `image_base64`), or None when it names a `template`."""
    if body.image_base64 is not None and files:
        raise InvalidRequest("send the image once: as a file or as image_base64")
    if files:
        return files[0]
    if body.image_base64 is not None:
        return decode_base64(body.image_base64, max_bytes=max_bytes)
    if body.template is None:
        raise InvalidRequest("send an image (multipart `image` or JSON `image_base64`) or name a `template`")
    return None


def decode_base64(text: str, *, max_bytes: int, field: str = "image_base64") -> bytes:
    if text.startswith("data:") and "," in text:  # a data URL: data:image/png;base64,....
        text = text.split(",", 1)[1]
    if len(text) > (max_bytes + 2) // 3 * 4 + 16:
        raise ImageTooLarge(f"{field} decodes to more than the {max_bytes:,}-byte limit")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadImage(f"{field} is not valid base64") from None
