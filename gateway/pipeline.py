"""Memes without HTTP: the gateway's own pipeline as a library. It runs the upload checks,
the cache, the micro-batched encoder and the continuous-batched decoding, straight against
the two TF Serving models over gRPC, or against the SavedModels in this process.

    async with MemePipeline("tfs-encoder:8500", "tfs-decoder:8500") as client:      # TF Serving
        probs = await client.encode([jpeg_bytes, png_bytes])         # template_probs, or an error each
        results = await client.generate([jpeg_bytes, "Drake Hotline Bling"], DecodingOptions(num_beams=8))

    async with MemePipeline(models_dir="models") as client:                           # in-process
        async for result in client.stream(items, options, concurrency=64):             # as they finish
            ...

Images from many callers share encoder calls (up to `encoder_max_batch` images, two calls in
flight), and every image's beams share the decoder's step calls. One unreadable or oversized
image gets an error result (status and detail, as the HTTP API would answer); it never fails
the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from gateway.api.schemas import BatchItemError, MemeResponse
from gateway.engine.service import MemeService
from gateway.errors import GatewayError, ModelUnavailable
from gateway.settings import Settings
from memefly.decoding.options import DecodingOptions

T = TypeVar("T")


@dataclass(frozen=True)
class Item:
    label: str  # what the caller will recognise the result by: a path, a name
    image: bytes | None = None
    template: str | None = None


@dataclass(frozen=True)
class ItemResult:
    label: str
    response: MemeResponse | None = None
    error: BatchItemError | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"input": self.label}
        if self.error is not None:
            body["error"] = self.error.model_dump()
        else:
            assert self.response is not None, "an ItemResult has a response or an error"
            body.update(self.response.model_dump(mode="json"))
        return body


def client_settings(
    encoder_target: str | None = None,
    decoder_target: str | None = None,
    *,
    models_dir: Path | str | None = None,
    settings: Settings | None = None,
    **overrides: Any,
) -> Settings:
    """Targets mean TF Serving over gRPC (the decoder's defaults to the encoder's); models_dir
    means the SavedModels in-process; neither: `settings`, else MEMEFLY_* from the environment."""
    if encoder_target and models_dir:
        raise ValueError("either TF Serving targets or a models folder, not both")
    if decoder_target and not encoder_target:
        raise ValueError("the decoder target needs the encoder target too")
    base = settings or Settings.from_env()
    if encoder_target:
        overrides.update(backend="grpc", encoder_target=encoder_target, decoder_target=decoder_target or encoder_target)
    elif models_dir is not None:
        overrides.update(backend="inprocess", models_dir=Path(models_dir))
    return base.replace(**{k: v for k, v in overrides.items() if v is not None})


class MemePipeline:
    def __init__(
        self,
        encoder_target: str | None = None,
        decoder_target: str | None = None,
        *,
        models_dir: Path | str | None = None,
        settings: Settings | None = None,
        ready_timeout_s: float = 300.0,
        max_in_flight: int = 64,
        **setting_overrides: Any,
    ) -> None:
        """`setting_overrides`: any field of gateway.settings.Settings, e.g. encoder_max_batch=64."""
        # A library caller with many items would rather queue than be refused (admission control).
        setting_overrides.setdefault("admission_control", False)
        self.settings = client_settings(
            encoder_target, decoder_target, models_dir=models_dir, settings=settings, **setting_overrides
        )
        self.service = MemeService(self.settings)
        self.ready_timeout_s = ready_timeout_s
        self.max_in_flight = max_in_flight
        self._slots = asyncio.Semaphore(max_in_flight)  # bounds memory for long lists of items

    async def __aenter__(self) -> MemePipeline:
        await self.service.start()
        state = await self.service.wait_ready(self.ready_timeout_s, first_check_only=True)
        if not state.ready:
            await self.service.stop()
            raise state.error or ModelUnavailable(state.reason)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.service.stop()

    @property
    def model_info(self) -> dict[str, str]:
        return self.service.model_info

    @property
    def template_names(self) -> list[str]:
        """The served templates, in the order of template_probs."""
        return [t.name for t in self.service.templates]

    async def encode(self, images: Iterable[bytes]) -> list[np.ndarray | BatchItemError]:
        """template_probs [T] for each image (the order of template_names), or its error."""

        async def one(data: bytes) -> np.ndarray | BatchItemError:
            async with self._slots:
                try:
                    return await self.service.template_probs(await self.service.check_upload(data))
                except GatewayError as error:
                    return BatchItemError(status=error.status, detail=error.detail)

        return list(await asyncio.gather(*(one(data) for data in images)))

    async def generate(
        self, items: Iterable[Item | bytes | str], options: DecodingOptions | None = None
    ) -> list[ItemResult]:
        """One result per item, in order. An item is an Item, image bytes, or a template name."""
        options = options or DecodingOptions()
        return list(await asyncio.gather(*(self.generate_one(_item(i, x), options) for i, x in enumerate(items))))

    async def stream(
        self,
        items: Iterable[Item] | AsyncIterable[Item],
        options: DecodingOptions | None = None,
        *,
        concurrency: int | None = None,
    ) -> AsyncIterator[ItemResult]:
        """Results as they finish, with at most `concurrency` items in flight: items are taken
        from the iterable only as places free up, so a list of millions stays cheap."""
        options = options or DecodingOptions()
        limit = max(1, concurrency or self.max_in_flight)
        pending: set[asyncio.Task[ItemResult]] = set()
        try:
            async for item in _aiter(items):
                while len(pending) >= limit:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        yield task.result()
                pending.add(asyncio.create_task(self.generate_one(item, options)))
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    yield task.result()
        finally:  # stopped early (an interrupt, a break): nothing keeps running behind the caller
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def generate_one(self, item: Item, options: DecodingOptions) -> ItemResult:
        async with self._slots:
            try:
                image = None if item.template is not None else await self.service.check_upload(item.image or b"")
                result = await self.service.memes(image, item.template, options)
            except GatewayError as error:
                return ItemResult(item.label, error=BatchItemError(status=error.status, detail=error.detail))
            return ItemResult(item.label, MemeResponse.from_result(result, self.service.model_info))


def _item(index: int, value: Item | bytes | str) -> Item:
    if isinstance(value, Item):
        return value
    if isinstance(value, (bytes, bytearray)):
        return Item(f"#{index}", image=bytes(value))
    return Item(value, template=value)


async def _aiter(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
