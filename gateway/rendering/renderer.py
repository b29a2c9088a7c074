"""Rendering as the gateway serves it: options checked, the result cached by what was asked
(the cache key is also the ETag), drawing on a worker thread so the event loop keeps serving."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from gateway.engine.admission import WorkerPool
from gateway.engine.template_names import template_key
from gateway.errors import BadImage, NotFound
from gateway.rendering.draw import draw_captions
from gateway.rendering.fonts import MemeFont, font_file
from gateway.rendering.layout import Layouts
from gateway.rendering.output import CONTENT_TYPES, encode, open_for_drawing

log = logging.getLogger(__name__)

# Part of every cache key and ETag: bump it when drawing changes, so old renders are not reused.
RENDERER_VERSION = "2"  # 2: whole words while legible, text colour per panel
TEMPLATE_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp")
LIST_AGAIN_AFTER_S = 5.0


@dataclass(frozen=True)
class RenderSpec:
    """What to draw and how; the image comes separately."""

    boxes: tuple[str, ...]
    layout: str | None = None  # a template whose declared boxes to use (None: the default layout)
    format: str = "png"
    case: str = "upper"
    max_side: int = 1024
    quality: int = 85


@dataclass(frozen=True)
class Rendered:
    data: bytes
    content_type: str
    etag: str  # quoted, as the header carries it
    cached: bool = False


class RenderCache:
    """The latest renders, by ETag, up to a total size in bytes (a 2048 px PNG can be 10 MB)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, Rendered] = OrderedDict()

    def get(self, etag: str) -> Rendered | None:
        found = self._entries.get(etag)
        if found is not None:
            self._entries.move_to_end(etag)
        return found

    def put(self, rendered: Rendered) -> None:
        if len(rendered.data) > self.max_bytes:
            return
        old = self._entries.pop(rendered.etag, None)
        self.bytes -= len(old.data) if old else 0
        self._entries[rendered.etag] = rendered
        self.bytes += len(rendered.data)
        while self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= len(evicted.data)

    def __len__(self) -> int:
        return len(self._entries)


class Renderer:
    def __init__(
        self,
        *,
        cache_bytes: int,
        templates_dir: Path,
        font: MemeFont | None = None,
        layouts: Layouts | None = None,
        pool: WorkerPool | None = None,
    ):
        self.cache = RenderCache(cache_bytes)
        # Drawing is CPU-bound: a bounded number at once, the rest refused when they would be late.
        self.pool = pool or WorkerPool(name="render")
        self.templates_dir = Path(templates_dir)
        # Found now: a bad MEMEFLY_FONT stops the start, instead of failing every render.
        self.font = font or MemeFont(font_file())
        self.layouts = layouts or Layouts.shipped()
        self._template_files: dict[str, Path] = {}
        self._listed_at = -LIST_AGAIN_AFTER_S
        self._in_progress: dict[str, asyncio.Future[Rendered]] = {}
        # What decides the pixels besides the request: bumped or edited, old ETags stop matching.
        self._drawing = json.dumps([RENDERER_VERSION, self.font.name, str(self.font.path), self.layouts.fingerprint])

    def etag(self, source_id: str, spec: RenderSpec) -> str:
        request = json.dumps([self._drawing, source_id, asdict(spec)], ensure_ascii=False)
        return '"' + hashlib.sha256(request.encode("utf-8", "surrogatepass")).hexdigest()[:32] + '"'

    def cached(self, etag: str) -> Rendered | None:
        found = self.cache.get(etag)
        return replace(found, cached=True) if found else None

    async def render(self, source: bytes | Path, source_id: str, spec: RenderSpec) -> Rendered:
        """`source`: image bytes, or a template image's path (read only on a cache miss);
        `source_id` names it for the cache (an image's SHA-256, see template_source).
        The same request arriving again while it renders waits for that render: once only."""
        etag = self.etag(source_id, spec)
        found = self.cached(etag)
        if found is not None:
            return found
        while etag in self._in_progress:
            try:
                return replace(await asyncio.shield(self._in_progress[etag]), cached=True)
            except asyncio.CancelledError:
                this = asyncio.current_task()
                assert this is not None  # a coroutine awaiting runs in a task
                if this.cancelling():
                    raise  # this request was cancelled
                # the one rendering it was cancelled (its client left): render it here instead
        future: asyncio.Future[Rendered] = asyncio.get_running_loop().create_future()
        self._in_progress[etag] = future
        try:
            if isinstance(source, Path):
                path = source
                try:
                    source = await asyncio.to_thread(path.read_bytes)
                except OSError:  # removed or replaced since it was listed
                    raise NotFound(f"the image of {path.stem!r} is gone from the templates folder") from None
            data = await self.pool.run(self.render_now, source, spec)
            rendered = Rendered(data, CONTENT_TYPES[spec.format], etag)
            self.cache.put(rendered)
            future.set_result(rendered)
            return rendered
        except Exception as error:  # the ones waiting get the same error
            future.set_exception(error)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        except BaseException:  # cancelled: the ones waiting render it themselves
            future.cancel()
            raise
        finally:
            del self._in_progress[etag]

    def render_now(self, source: bytes, spec: RenderSpec) -> bytes:
        try:
            image = open_for_drawing(source, spec.max_side)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
            raise BadImage(f"the image cannot be drawn on: {error}") from None
        boxes = self.layouts.for_caption(spec.layout, len(spec.boxes))
        draw_captions(image, list(spec.boxes), boxes, spec.case, font=self.font)
        return encode(image, spec.format, spec.quality)

    def template_image(self, name: str) -> Path | None:
        """The blank image of a template in the templates folder (any spelling of its name), if there.
        On a miss the folder is listed again (`memefly data download` may have filled it since),
        at most every LIST_AGAIN_AFTER_S: requests for unknown names cost no directory listing."""
        key = template_key(name)
        now = time.monotonic()
        if key not in self._template_files and now - self._listed_at >= LIST_AGAIN_AFTER_S:
            self.rescan_templates()
        return self._template_files.get(key)

    def rescan_templates(self) -> None:
        """Lists the templates folder now (after it was changed or replaced)."""
        self._template_files = self._list_template_files()
        self._listed_at = time.monotonic()

    def _list_template_files(self) -> dict[str, Path]:
        if not self.templates_dir.is_dir():
            return {}
        return {
            template_key(path.stem): path
            for path in sorted(self.templates_dir.iterdir())
            if path.suffix.lower() in TEMPLATE_IMAGE_SUFFIXES and path.is_file()
        }

    def template_source(self, name: str) -> tuple[Path, str]:
        """A template's image and its id for the cache (a changed file is a new source)."""
        path = self.template_image(name)
        if path is None:  # the folder is the operator's business, not the client's: logged only
            log.info("no image for template %r in %s", name, self.templates_dir)
            raise NotFound(f"no image for template {name!r} (GET /templates says which have one)")
        try:
            return path, f"file:{path.name}:{path.stat().st_mtime_ns}"
        except OSError:  # removed since it was listed
            self.rescan_templates()
            raise NotFound(f"no image for template {name!r} (GET /templates says which have one)") from None
