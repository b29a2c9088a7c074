"""`memefly batch`: memes for many images through MemePipeline, into a resumable JSON Lines file.

Images are read as places free up (at most `concurrency` in flight), so memory stays flat for
any number of them. Each finished image is one line: its memes and template guesses, or its
error when the error is the image's own (4xx: unreadable, too large, not an image). A
model-side failure (5xx) is not written: it is counted and reported, and the next run
tries that image again. An image whose path and SHA-256 are in the file already is
skipped, so the same command, run again, carries on where it stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.errors import GatewayError
from gateway.pipeline import Item, ItemResult, MemePipeline
from gateway.rendering.layout import layout_for
from gateway.rendering.renderer import Renderer, RenderSpec
from memefly.cli.batch_results import ResultsFile
from memefly.decoding.options import DecodingOptions


@dataclass
class RenderTo:
    folder: Path
    renderer: Renderer
    format: str = "png"
    count: int = 1  # the best `count` memes of each image
    max_side: int = 2048  # as MEMEFLY_RENDER_MAX_SIDE
    quality: int = 85  # as MEMEFLY_RENDER_JPEG_QUALITY


@dataclass
class BatchSummary:
    total: int = 0
    written: int = 0  # lines added this run (memes or the image's own error)
    errors: int = 0  # of those, errors
    skipped: int = 0  # in the results file already
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, why): model-side, not written
    render_errors: int = 0  # written with their memes, but not drawn

    def line(self) -> str:
        text = (
            f"{self.total} images: {self.written} written ({self.errors} errors), {self.skipped} already in the results"
        )
        if self.render_errors:
            text += f", {self.render_errors} not drawn (see render_error)"
        if self.failed:
            text += f", {len(self.failed)} failed on the model side (not written; run again to retry)"
        return text


def is_images_fault(status: int) -> bool:
    """4xx: the image's own problem, an answer worth keeping. 5xx: try again next run."""
    return status < 500


async def run_batch(
    paths: Iterable[Path],
    results: ResultsFile,
    client: MemePipeline,
    options: DecodingOptions,
    summary: BatchSummary,
    *,
    concurrency: int,
    render: RenderTo | None = None,
    progress=None,
) -> BatchSummary:
    pending: dict[str, tuple[str, bytes]] = {}  # path -> (sha256, bytes) of the images in flight

    def advance() -> None:
        if progress is not None:
            progress.update(1)

    async def items():
        for path in paths:
            label = str(path)
            try:
                data = await asyncio.to_thread(path.read_bytes)
            except OSError as error:  # gone, a folder, no permission: its answer is an error line
                if results.has(label, None):
                    summary.skipped += 1
                else:
                    write(label, None, error={"status": 400, "detail": f"cannot read it: {error.strerror or error}"})
                advance()
                continue
            digest = hashlib.sha256(data).hexdigest()
            if results.has(label, digest):
                summary.skipped += 1
                advance()
                continue
            pending[label] = (digest, data)
            yield Item(label, image=data)

    def write(label: str, digest: str | None, **body) -> None:
        results.write({"path": label, "sha256": digest, **body})
        summary.written += 1
        summary.errors += "error" in body

    async def finish(render: RenderTo, result: ItemResult, digest: str, data: bytes) -> None:
        body = _memes(result)
        try:
            body["rendered"] = await _render(render, result, digest, data)
        except (GatewayError, OSError) as error:  # the memes stand; the drawing failed (a full disk...)
            body["render_error"] = getattr(error, "detail", None) or str(error)
            summary.render_errors += 1
        write(result.label, digest, **body)
        advance()

    # Drawing runs beside generation (its own tasks, at most `concurrency`), not in its way.
    drawing: set[asyncio.Task] = set()
    try:
        async for result in client.stream(items(), options, concurrency=concurrency):
            digest, data = pending.pop(result.label)
            if result.error is not None and not is_images_fault(result.error.status):
                summary.failed.append((result.label, f"{result.error.status}: {result.error.detail}"))
            elif result.error is not None:
                write(result.label, digest, error=result.error.model_dump())
            elif render is not None:
                while len(drawing) >= concurrency:
                    _, drawing = await asyncio.wait(drawing, return_when=asyncio.FIRST_COMPLETED)
                drawing.add(asyncio.create_task(finish(render, result, digest, data)))
                continue
            else:
                write(result.label, digest, **_memes(result))
            advance()
        if drawing:
            await asyncio.wait(drawing)
    finally:  # interrupted: unfinished drawings write nothing, and those images are done next run
        for task in drawing:
            task.cancel()
        await asyncio.gather(*drawing, return_exceptions=True)
    return summary


def _memes(result: ItemResult) -> dict:
    """A line's answer: POST /memes' fields (the image's SHA-256 is the line's own `sha256`)."""
    assert result.response is not None, "only results without an error have memes"
    return result.response.model_dump(mode="json", exclude={"image_sha256"})


async def _render(render: RenderTo, result: ItemResult, digest: str, data: bytes) -> list[str]:
    """Draws the best memes into the render folder: <name>-<sha256[:12]>-<rank>.<format>."""
    response = result.response
    assert response is not None, "only results without an error are drawn"
    layout = layout_for(None, [(t.name, t.probability) for t in response.templates])
    render.folder.mkdir(parents=True, exist_ok=True)
    written = []
    for meme in response.memes[: render.count]:
        spec = RenderSpec(tuple(meme.boxes), layout, render.format, max_side=render.max_side, quality=render.quality)
        image = await asyncio.to_thread(render.renderer.render_now, data, spec)
        extension = {"jpeg": "jpg"}.get(render.format, render.format)
        target = render.folder / f"{Path(result.label).stem}-{digest[:12]}-{meme.rank}.{extension}"
        await asyncio.to_thread(target.write_bytes, image)
        written.append(str(target))
    return written
