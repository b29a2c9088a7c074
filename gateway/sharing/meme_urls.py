"""A shareable URL for every meme of an answer: the app's one `Sharing` keeps the URL secret
and the upload store, and makes each meme's URL (gateway/sharing/links.py says their form)."""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import Request

from gateway.rendering.layout import layout_for
from gateway.settings import Settings
from gateway.sharing.links import UploadLinks, template_path, url_expiry
from gateway.sharing.uploads import UploadStore, make_store

if TYPE_CHECKING:
    from gateway.engine.service import MemeResult

log = logging.getLogger(__name__)


def url_secret(settings: Settings) -> bytes:
    """MEMEFLY_URL_SECRET, else a random key made once and kept in the data folder (so URLs
    outlive a restart, and workers or replicas sharing the folder share it)."""
    if settings.url_secret:
        return settings.url_secret.encode("utf-8")
    path = Path(settings.data_dir) / "url-secret"
    try:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, made = tempfile.mkstemp(dir=path.parent, prefix=".url-secret.")  # 0600
            with os.fdopen(fd, "wb") as file:
                file.write(secrets.token_bytes(32))
            try:
                os.link(made, path)  # atomic, and never over another worker's key
                log.info("made a URL secret in %s (replicas on other hosts need MEMEFLY_URL_SECRET)", path)
            except FileExistsError:
                pass
            finally:
                os.unlink(made)
        return path.read_bytes()
    except OSError as error:
        log.warning("no URL secret could be kept in %s (%s): upload URLs will not outlive this process", path, error)
        return secrets.token_bytes(32)


class Sharing:
    def __init__(self, settings: Settings, store: UploadStore | None, links: UploadLinks):
        self.settings = settings
        self.store = store
        self.links = links

    @classmethod
    def from_settings(cls, settings: Settings) -> Sharing:
        directory = settings.upload_dir or Path(settings.data_dir) / "uploads"
        store = make_store(settings.upload_store, directory, settings.upload_store_max_bytes, settings.s3_endpoint_url)
        return cls(settings, store, UploadLinks(url_secret(settings)))

    def base(self, request: Request) -> str:
        return (self.settings.public_url or str(request.base_url)).rstrip("/")

    async def meme_urls(
        self, request: Request, result: MemeResult, upload: bytes | None, layout: str | None = None
    ) -> list[str | None]:
        """One URL per meme of RESULT (MemeResult). An upload is kept in the store for its URLs;
        without a store (MEMEFLY_UPLOAD_STORE=off) upload memes have none."""
        base = self.base(request)
        layout = layout_for(layout, result.templates)
        if upload is None:
            template = result.templates[0][0]
            return [base + template_path(template, meme.boxes, "png") for meme in result.memes]
        if self.store is None:
            return [None] * len(result.memes)
        upload_id = result.image_sha256
        assert upload_id is not None  # the result of an upload carries its SHA-256
        expires = url_expiry(time.time(), self.settings.upload_ttl_s)
        try:
            await self.store.put(upload_id, upload, expires)
        except Exception as error:  # the memes stand without their URLs
            log.warning("upload not kept for its shared URLs: %s", error)
            return [None] * len(result.memes)
        return [base + self.links.path(upload_id, meme.boxes, "png", layout, expires) for meme in result.memes]
