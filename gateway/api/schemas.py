"""The HTTP API's request and response bodies (the OpenAPI schema at /docs comes from these)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.settings import MAX_RENDER_SIDE
from memefly.decoding.limits import MAX_BEAMS
from memefly.decoding.options import DecodingOptions

if TYPE_CHECKING:
    from gateway.engine.service import MemeResult

RenderFormat = Literal["png", "jpeg", "webp"]
MAX_BOXES = 10
MAX_BOX_CHARS = 500


class RenderOptions(BaseModel):
    """How a meme is drawn (POST /render, and POST /memes with `render`)."""

    model_config = ConfigDict(extra="forbid")

    case: Literal["upper", "keep"] = Field("upper", description="upper: the classic all-caps; keep: as written")
    max_size: int | None = Field(
        None,
        ge=16,
        le=MAX_RENDER_SIDE,
        description="longest side of the image drawn, in pixels "
        "(default and limit: MEMEFLY_RENDER_MAX_SIDE); smaller images keep their size",
    )
    quality: int | None = Field(
        None, ge=1, le=100, description="JPEG or WebP quality (default MEMEFLY_RENDER_JPEG_QUALITY)"
    )
    layout: str | None = Field(
        None,
        max_length=200,
        description="draw in this template's boxes (default: the "
        "template named, or with an image the template recognised, if likely)",
    )


class MemeRequest(DecodingOptions, RenderOptions):
    """JSON body of POST /memes (multipart sends the same fields as form fields, the image as `image`)."""

    image_base64: str | None = Field(None, description="the image, base64-encoded (JPEG, PNG, GIF, BMP or WebP)")
    template: str | None = Field(
        None, max_length=200, description="a template name (GET /templates) instead of an image"
    )
    render: RenderFormat | None = Field(
        None, description="answer with the meme drawn on the image, in this format, not JSON"
    )
    rank: int = Field(1, ge=1, le=MAX_BEAMS, description="with render: which meme to draw (1 is the best)")

    @model_validator(mode="after")
    def _rank_returned(self) -> MemeRequest:
        if self.rank > self.num_return_sequences:
            raise ValueError(f"rank {self.rank} is more than num_return_sequences ({self.num_return_sequences})")
        return self


class RenderRequest(RenderOptions):
    """POST /render: given text drawn onto an uploaded image (multipart `image`, or `image_base64`)
    or onto a named template's blank image."""

    image_base64: str | None = Field(None, description="the image, base64-encoded")
    template: str | None = Field(None, max_length=200, description="a template name instead of an image")
    boxes: list[str] = Field(..., min_length=1, max_length=MAX_BOXES, description="the text of each box, in order")
    format: RenderFormat = "png"

    @model_validator(mode="after")
    def _box_lengths(self) -> RenderRequest:
        if any(len(box) > MAX_BOX_CHARS for box in self.boxes):
            raise ValueError(f"boxes: a box is longer than {MAX_BOX_CHARS} characters")
        return self


class BatchRequest(DecodingOptions):
    """JSON body of POST /memes/batch (multipart: repeated `images` fields)."""

    images_base64: list[str] = Field(..., min_length=1, description="images, base64-encoded")


class MemeOut(BaseModel):
    rank: int
    text: str = Field(description='the caption, boxes joined by "\\n"')
    boxes: list[str]
    score: float = Field(description="sum of log-probabilities / (length + 1) ** length_penalty")
    url: str | None = Field(
        None,
        description="the meme drawn, as a PNG, by GET (change the extension for .jpg or .webp): shareable and "
        "cacheable; an upload's URL is signed and expires (MEMEFLY_UPLOAD_TTL_S); null when uploads are not kept",
    )


class TemplateGuess(BaseModel):
    name: str
    probability: float


class TemplateMatch(TemplateGuess):
    known: bool | None = Field(
        description=(
            "whether the image is one of the known templates (its likeliest template's probability is at least the "
            "threshold chosen at export against images that are no template); false: a photo or a picture the "
            "models do not know, answered with memes in the style of the likeliest templates; always true for a "
            "named template; null with models exported without a threshold"
        )
    )


class MemeResponse(BaseModel):
    memes: list[MemeOut]
    template: TemplateMatch = Field(
        description="the likeliest template, and whether the image is one of the known templates"
    )
    templates: list[TemplateGuess] = Field(description="the three likeliest templates")
    model: dict[str, str]
    timings_ms: dict[str, float]
    image_sha256: str | None

    @classmethod
    def from_result(
        cls, result: MemeResult, model_info: dict[str, str], urls: list[str | None] | None = None
    ) -> MemeResponse:
        """From the service's MemeResult: the one shape of a result, over HTTP or from the client."""
        urls = urls or [None] * len(result.memes)
        return cls(
            memes=[MemeOut(**vars(m), url=url) for m, url in zip(result.memes, urls, strict=True)],
            template=TemplateMatch(name=result.templates[0][0], probability=result.templates[0][1], known=result.known),
            templates=[TemplateGuess(name=n, probability=p) for n, p in result.templates],
            model=model_info,
            timings_ms=result.timings_ms,
            image_sha256=result.image_sha256,
        )


class BatchItemError(BaseModel):
    status: int
    detail: str


class BatchItem(BaseModel):
    index: int
    result: MemeResponse | None = None
    error: BatchItemError | None = None


class BatchResponse(BaseModel):
    results: list[BatchItem]


class TemplateOut(BaseModel):
    id: int
    name: str
    box_count: int
    image: str | None = Field(
        None, description="URL of its blank image (?size= for a thumbnail), if the gateway has it"
    )


class TemplatesResponse(BaseModel):
    templates: list[TemplateOut]


class Readyz(BaseModel):
    ready: bool
    reason: str
    model: dict[str, str]
