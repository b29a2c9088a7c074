"""Where uploads are kept for their shared image URLs: for a bounded time (each upload until the
last URL made for it expires) and a bounded size (the soonest to expire go first).

- `LocalUploadStore` (default): one file per upload in a directory, named by its SHA-256; its
  modification time is when it expires. Gateway processes on one host share the directory.
- `S3UploadStore` (`MEMEFLY_UPLOAD_STORE=s3://bucket/prefix`, boto3): any S3-compatible
  bucket (`MEMEFLY_S3_ENDPOINT_URL` for MinIO, R2, ...); the expiry is object metadata, and
  the bucket's own lifecycle rule deletes old objects (the size bound is the bucket's).

`get` answers None for an upload that has expired or was evicted: the route says 410 Gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from botocore.exceptions import ClientError

log = logging.getLogger(__name__)
SWEEP_EVERY_S = 60.0


class UploadStore(Protocol):
    async def put(self, upload_id: str, data: bytes, expires: int) -> None: ...

    async def get(self, upload_id: str) -> bytes | None: ...


class LocalUploadStore:
    def __init__(self, directory: Path, max_bytes: int):
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._last_sweep = 0.0
        self._written = 0  # bytes written since the last sweep: a tenth of the bound sweeps again

    def _path(self, upload_id: str) -> Path:
        return self.directory / f"{upload_id}.upload"

    async def put(self, upload_id: str, data: bytes, expires: int) -> None:
        await asyncio.to_thread(self._put, upload_id, data, expires)

    async def get(self, upload_id: str) -> bytes | None:
        return await asyncio.to_thread(self._get, upload_id)

    def _put(self, upload_id: str, data: bytes, expires: int) -> None:
        path = self._path(upload_id)
        try:
            kept_until = path.stat().st_mtime
        except FileNotFoundError:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, partial = tempfile.mkstemp(dir=self.directory, suffix=".partial")
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(partial, path)  # atomic: a reader never sees half an upload
            kept_until = 0.0
            self._written += len(data)
        os.utime(path, (time.time(), max(kept_until, expires)))  # kept until its last URL expires
        if time.monotonic() - self._last_sweep > SWEEP_EVERY_S or self._written > self.max_bytes // 10:
            self._sweep()

    def _get(self, upload_id: str) -> bytes | None:
        path = self._path(upload_id)
        try:
            if path.stat().st_mtime < time.time():
                return None
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def _sweep(self) -> None:
        """Deletes expired uploads, then the soonest to expire while over the size bound."""
        self._last_sweep, self._written = time.monotonic(), 0
        now = time.time()
        for partial in self.directory.glob("*.partial"):  # left by a process that died writing
            try:
                if partial.stat().st_mtime < now - 3600:
                    partial.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
        kept = []
        for path in self.directory.glob("*.upload"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # another process swept it
                continue
            if stat.st_mtime < now:
                path.unlink(missing_ok=True)
            else:
                kept.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in kept)
        evicted = 0
        for _, size, path in sorted(kept, key=lambda entry: entry[0]):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
            evicted += 1
        if evicted:
            log.info("upload store over %d bytes: %d uploads evicted before they expired", self.max_bytes, evicted)


class S3UploadStore:
    def __init__(self, url: str, endpoint_url: str | None = None):
        import boto3

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"MEMEFLY_UPLOAD_STORE={url!r}: name a bucket, as s3://bucket/prefix")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = boto3.client("s3", endpoint_url=endpoint_url or None)

    def _key(self, upload_id: str) -> str:
        return f"{self.prefix}/{upload_id}" if self.prefix else upload_id

    async def put(self, upload_id: str, data: bytes, expires: int) -> None:
        await asyncio.to_thread(self._put, upload_id, data, expires)

    async def get(self, upload_id: str) -> bytes | None:
        return await asyncio.to_thread(self._get, upload_id)

    def _put(self, upload_id: str, data: bytes, expires: int) -> None:
        kept_until = self._expiry(upload_id)
        if kept_until is not None and kept_until >= expires:
            return
        self.client.put_object(
            Bucket=self.bucket,
            Key=self._key(upload_id),
            Body=data,
            Metadata={"expires": str(max(kept_until or 0, expires))},
        )

    def _expiry(self, upload_id: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(upload_id))
        except ClientError as error:
            if _missing(error):
                return None
            raise
        return int(head.get("Metadata", {}).get("expires", 0))

    def _get(self, upload_id: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            found = self.client.get_object(Bucket=self.bucket, Key=self._key(upload_id))
        except ClientError as error:
            if _missing(error):  # anything else (no access, throttled) is an error, not "gone"
                return None
            raise
        if int(found.get("Metadata", {}).get("expires", 0)) < time.time():
            return None
        data: bytes = found["Body"].read()
        return data


def _missing(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def make_store(kind: str, directory: Path, max_bytes: int, endpoint_url: str = "") -> UploadStore | None:
    """MEMEFLY_UPLOAD_STORE: local (default), off, or s3://bucket/prefix."""
    if kind == "off":
        return None
    if kind == "local":
        return LocalUploadStore(directory, max_bytes)
    if kind.startswith("s3://"):
        return S3UploadStore(kind, endpoint_url)
    raise ValueError(f"MEMEFLY_UPLOAD_STORE must be local, off or s3://bucket/prefix, not {kind!r}")
