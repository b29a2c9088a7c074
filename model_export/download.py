"""`memefly data download`: the ImgFlip575K template images, fetched from the public repository.

Every file is checked against `template_images.json` (size and SHA-256, recorded from the
dataset copy the default model was trained with). Downloads are resumable: bytes arrive in
a hidden `.NAME.part` file that the next run continues with an HTTP Range request, and a
file takes its real name only once its checksum matched, so a folder never holds a
half-written or wrong image under a template's name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST = Path(__file__).with_name("template_images.json")


class DownloadError(Exception):
    pass


@dataclass(frozen=True)
class ImageFile:
    file: str
    bytes: int
    sha256: str

    @property
    def name(self) -> str:
        return Path(self.file).stem


@dataclass
class DownloadReport:
    folder: Path
    present: list[str] = field(default_factory=list)  # already there and intact
    fetched: list[str] = field(default_factory=list)
    bytes_fetched: int = 0


def manifest(names: list[str] | None = None, path: Path | None = None) -> list[ImageFile]:
    """The template images on record (template_images.json, or `path`); only those of `names` when given."""
    files = [ImageFile(**entry) for entry in json.loads(Path(path or MANIFEST).read_text())["files"]]
    if names is None:
        return files
    known = {f.name: f for f in files}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DownloadError(
            f"no template image on record for {', '.join(unknown[:5])}: "
            "they cannot be downloaded; put <Name>.jpg for each into MEMEFLY_TEMPLATES_DIR"
        )
    return [known[n] for n in names]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def intact(path: Path, expected: ImageFile) -> bool:
    return path.is_file() and path.stat().st_size == expected.bytes and sha256_of(path) == expected.sha256


def download_templates(
    folder: Path,
    base_url: str,
    names: list[str] | None = None,
    *,
    progress: bool = True,
    timeout_s: float = 30.0,
    manifest_path: Path | None = None,
) -> DownloadReport:
    """Fetch the missing template images into `folder`. Raises DownloadError, saying what to do,
    when the repository cannot be reached or a file does not match its checksum."""
    import httpx
    from tqdm import tqdm

    folder = Path(folder)
    report = DownloadReport(folder)
    wanted = manifest(names, manifest_path)
    missing = [image for image in wanted if not intact(folder / image.file, image)]
    report.present = [image.name for image in wanted if image not in missing]
    if not missing:
        return report
    folder.mkdir(parents=True, exist_ok=True)
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    already = sum(min(_part(folder, i).stat().st_size, i.bytes) for i in missing if _part(folder, i).exists())
    total = sum(i.bytes for i in missing)
    with (
        httpx.Client(timeout=timeout_s, follow_redirects=True) as client,
        tqdm(
            total=total, initial=already, unit="B", unit_scale=True, desc="template images", disable=not progress
        ) as bar,
    ):
        for image in missing:
            report.bytes_fetched += _fetch(client, base_url + image.file, image, folder, bar)
            report.fetched.append(image.name)
    return report


def _part(folder: Path, image: ImageFile) -> Path:
    return folder / f".{image.file}.part"


def _fetch(client, url: str, image: ImageFile, folder: Path, bar) -> int:
    """One file: continue its .part file, check it, give it its name. Returns bytes received."""
    import httpx

    part = _part(folder, image)
    offset = part.stat().st_size if part.exists() else 0
    if offset >= image.bytes and not intact(part, image):  # not ours to continue: start over
        part.unlink()
        bar.update(-min(offset, image.bytes))
        offset = 0
    received = 0
    if offset < image.bytes:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with client.stream("GET", url, headers=headers) as response:
                if response.status_code == 200 and offset:  # the server ignored Range: start over
                    bar.update(-offset)
                    offset = 0
                elif response.status_code not in (200, 206):
                    raise DownloadError(
                        f"{url} answered HTTP {response.status_code}; set MEMEFLY_TEMPLATES_URL to a "
                        "copy of the repository's dataset/templates/img/, or MEMEFLY_TEMPLATES_DIR "
                        "to a folder that holds the images"
                    )
                with part.open("ab" if offset else "wb") as out:
                    for chunk in response.iter_bytes():  # as it arrives: a drop keeps what came
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            raise DownloadError(
                f"could not download {url} ({type(error).__name__}: {error or 'no answer'}). Run `memefly data "
                "download` again to resume, or, offline, set MEMEFLY_TEMPLATES_DIR to a folder holding the "
                "template images (e.g. ImgFlip575K's dataset/templates/img)"
            ) from None
    if not intact(part, image):
        part.unlink()
        raise DownloadError(
            f"{image.file} from {url} does not match its checksum (sha256 {image.sha256[:12]}..., "
            f"{image.bytes} bytes) and was deleted: the source differs from the recorded dataset"
        )
    part.replace(folder / image.file)
    return received
