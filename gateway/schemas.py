"""The HTTP API's request and response bodies (the OpenAPI schema at /docs comes from these)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from gateway.decoding.options import DecodingOptions


class MemeRequest(DecodingOptions):
    """JSON body of POST /memes (multipart sends the same fields as form fields, the image as `image`)."""

    image_base64: str | None = Field(None, description="the image, base64-encoded (JPEG, PNG, GIF, BMP or WebP)")
    template: str | None = Field(None, max_length=200, description="a template name (GET /templates) instead of an image")


class BatchRequest(DecodingOptions):
    """JSON body of POST /memes/batch (multipart: repeated `images` fields)."""

    images_base64: list[str] = Field(..., min_length=1, description="images, base64-encoded")


class MemeOut(BaseModel):
    rank: int
    text: str = Field(description='the caption, boxes joined by "\\n"')
    boxes: list[str]
    score: float = Field(description="sum of log-probabilities / (length + 1) ** length_penalty")


class TemplateGuess(BaseModel):
    name: str
    probability: float


class MemeResponse(BaseModel):
    memes: list[MemeOut]
    templates: list[TemplateGuess] = Field(description="the three likeliest templates")
    model: dict[str, str]
    timings_ms: dict[str, float]
    image_sha256: str | None

    @classmethod
    def from_result(cls, result, model_info: dict[str, str]) -> "MemeResponse":
        """From the service's MemeResult: the one shape of a result, over HTTP or from the client."""
        return cls(
            memes=[vars(m) for m in result.memes],
            templates=[{"name": n, "probability": p} for n, p in result.templates],
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


class TemplatesResponse(BaseModel):
    templates: list[TemplateOut]


class Readyz(BaseModel):
    ready: bool
    reason: str
    model: dict[str, str]
