"""Memes without HTTP: the gateway's own pipeline (upload checks, cache, micro-batched
encoder, continuous-batched decoding) as a library, over either backend.

    async with MemeflyClient(Settings.from_env(models_dir="models")) as client:
        results = await client.generate([Item("cat.jpg", image=data), Item("drake", template="Drake")])

Each item gets a result or an error (status and detail, as the HTTP API would answer):
one unreadable image never fails the others.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from gateway.decoding.options import DecodingOptions
from gateway.errors import GatewayError, ModelUnavailable
from gateway.schemas import BatchItemError, MemeResponse
from gateway.service import MemeService
from gateway.settings import Settings


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

    def to_json(self) -> dict:
        body = {"input": self.label}
        if self.error is not None:
            body["error"] = self.error.model_dump()
        else:
            body.update(self.response.model_dump(mode="json"))
        return body


class MemeflyClient:
    def __init__(self, settings: Settings, *, ready_timeout_s: float = 300.0, max_in_flight: int = 64):
        self.settings = settings
        self.service = MemeService(settings)
        self.ready_timeout_s = ready_timeout_s
        self._slots = asyncio.Semaphore(max_in_flight)  # bounds memory for long lists of items

    async def __aenter__(self) -> "MemeflyClient":
        await self.service.start()
        state = await self.service.wait_ready(self.ready_timeout_s, first_check_only=True)
        if not state.ready:
            await self.service.stop()
            raise ModelUnavailable(state.reason)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.service.stop()

    async def generate(self, items: list[Item], options: DecodingOptions | None = None) -> list[ItemResult]:
        """One result per item, in order."""
        options = options or DecodingOptions()
        return list(await asyncio.gather(*(self._one(item, options) for item in items)))

    async def _one(self, item: Item, options: DecodingOptions) -> ItemResult:
        async with self._slots:
            try:
                image = None if item.template is not None else await self.service.check_upload(item.image or b"")
                result = await self.service.memes(image, item.template, options)
            except GatewayError as error:
                return ItemResult(item.label, error=BatchItemError(status=error.status, detail=error.detail))
            return ItemResult(item.label, MemeResponse.from_result(result, self.service.model_info))
