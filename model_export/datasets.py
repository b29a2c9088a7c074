"""Readers for raw caption data: the ImgFlip575K layout and a plain CSV/JSONL format.

A reader never raises on a bad record: it skips it and counts the reason, so one broken
row in 358k does not stop a run. Only a missing or unreadable source is an error.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


@dataclass(frozen=True)
class Template:
    name: str  # stable key, e.g. "Drake-Hotline-Bling"
    title: str  # human title, e.g. "Drake Hotline Bling"
    image: str | None = None  # path of the blank template image, if there is one


@dataclass(frozen=True)
class Caption:
    id: str  # the meme's identity (ImgFlip post URL); drives the train/val/test split
    template: str
    boxes: tuple[str, ...]


@dataclass
class RawDataset:
    source: str
    templates: dict[str, Template]
    captions: list[Caption]
    skipped: Counter = field(default_factory=Counter)  # reason -> count

    def report(self) -> dict:
        with_captions = {c.template for c in self.captions}
        return {
            "source": self.source,
            "captions_read": len(self.captions),
            "records_skipped": dict(self.skipped),
            "templates": len(self.templates),
            "templates_without_captions": sorted(set(self.templates) - with_captions),
            "templates_without_image": sorted(name for name in with_captions if not self.templates[name].image),
        }


class DataSourceError(Exception):
    """The source itself is missing or unusable (as opposed to one bad record)."""


def content_id(template: str, boxes: tuple[str, ...]) -> str:
    """Identity for records that carry none: a hash of what they say."""
    digest = hashlib.sha256(json.dumps([template, list(boxes)]).encode("utf-8")).hexdigest()
    return f"sha256:{digest[:32]}"


def _parse_boxes(value) -> tuple[str, ...] | str:
    """Boxes as a tuple of strings, or the reason they are unusable."""
    if not isinstance(value, list):
        return "boxes missing or not a list"
    if not all(isinstance(b, str) for b in value):
        return "a box is not text"
    return tuple(value)


def _title_from_name(name: str) -> str:
    return name.replace("-", " ")


def read_imgflip575k(root: str | Path) -> RawDataset:
    """Read `root/dataset/{templates,memes}` (or `root` pointing at `dataset/` itself)."""
    root = Path(root)
    base = root / "dataset" if (root / "dataset").is_dir() else root
    templates_dir, memes_dir = base / "templates", base / "memes"
    if not memes_dir.is_dir():
        raise DataSourceError(
            f"no ImgFlip575K captions at {memes_dir}; set MEMEFLY_DATASET_DIR or --dataset to the "
            "folder that holds dataset/memes and dataset/templates"
        )
    images: dict[str, str] = {}
    if (templates_dir / "img").is_dir():
        for path in sorted((templates_dir / "img").iterdir()):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                images.setdefault(path.stem, str(path))

    skipped: Counter = Counter()
    templates: dict[str, Template] = {}
    for path in sorted(templates_dir.glob("*.json")) if templates_dir.is_dir() else []:
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            title = str(meta.get("title") or "").removesuffix(" Meme Template").strip()
        except (OSError, ValueError, AttributeError):
            skipped["template file unreadable"] += 1
            title = ""
        templates[path.stem] = Template(path.stem, title or _title_from_name(path.stem), images.get(path.stem))
    for name, image in images.items():  # an image without its metadata file is still a template
        templates.setdefault(name, Template(name, _title_from_name(name), image))

    captions: list[Caption] = []
    for path in sorted(memes_dir.glob("*.json")):
        name = path.stem
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            skipped["caption file is not valid JSON"] += 1
            continue
        if not isinstance(records, list):
            skipped["caption file is not a list"] += 1
            continue
        templates.setdefault(name, Template(name, _title_from_name(name), images.get(name)))
        for record in records:
            if not isinstance(record, dict):
                skipped["record is not an object"] += 1
                continue
            boxes = _parse_boxes(record.get("boxes"))
            if isinstance(boxes, str):
                skipped[boxes] += 1
                continue
            ident = record.get("post") or record.get("url")
            ident = ident if isinstance(ident, str) and ident else content_id(name, boxes)
            captions.append(Caption(ident, name, boxes))
    return RawDataset(f"imgflip575k:{base}", templates, captions, skipped)


def _plain_rows(path: Path):
    """Yield (row number, dict or None) from a CSV or JSONL file."""
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    yield number, None
                    continue
                yield number, row if isinstance(row, dict) else None
    elif path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8", errors="replace", newline="") as f:
            yield from _csv_rows(f.read().splitlines(keepends=True))
    else:
        raise DataSourceError(f"{path}: plain captions must be .csv or .jsonl")


# A quoted CSV field may hold newlines, so one record can span lines; an unclosed quote would
# otherwise swallow the rest of the file. A record longer than this is a bad row.
MAX_LINES_PER_CSV_RECORD = 20


def _csv_record(lines: list[str], start: int) -> tuple[list[str] | None, int]:
    """(fields, lines used) of the record at lines[start]; (None, 1) when it is broken."""
    for span in range(1, MAX_LINES_PER_CSV_RECORD + 1):
        try:  # strict: a quote still open at the end of the chunk raises instead of guessing
            records = list(csv.reader(lines[start : start + span], strict=True))
        except csv.Error:
            if start + span >= len(lines):
                break
            continue
        return (records[0], span) if len(records) == 1 else (None, 1)
    return None, 1


def _csv_rows(lines: list[str]):
    """Yield (line number, dict or None) for CSV lines, resynchronising after a broken record."""
    if not lines:
        return
    header = next(csv.reader(lines[:1]))
    start = 1
    while start < len(lines):
        fields, used = _csv_record(lines, start)
        if fields != []:  # [] is a blank line
            yield start + 1, dict(zip(header, fields, strict=True)) if fields and len(fields) == len(header) else None
        start += used


def _plain_boxes(value, csv_cell: bool) -> tuple[str, ...] | str:
    """A list of strings; CSV cells hold a JSON array of strings, or boxes separated by " | "."""
    if isinstance(value, str) and csv_cell:
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                return "boxes is not a valid JSON array"
        else:
            value = [part.strip() for part in text.split(" | ")]
    return _parse_boxes(value)


def read_plain(path: str | Path) -> RawDataset:
    """Rows of `template` (key), `boxes`, optional `image` (path, relative to the file) and `id`."""
    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"no caption file at {path}")
    skipped: Counter = Counter()
    templates: dict[str, Template] = {}
    captions: list[Caption] = []
    is_csv = path.suffix.lower() == ".csv"
    for _, row in _plain_rows(path):
        if row is None:
            skipped["row is not a JSON object" if not is_csv else "row is not valid CSV"] += 1
            continue
        template = row.get("template")
        if not isinstance(template, str) or not template.strip():
            skipped["template missing"] += 1
            continue
        template = template.strip()
        boxes = _plain_boxes(row.get("boxes"), csv_cell=is_csv)
        if isinstance(boxes, str):
            skipped[boxes] += 1
            continue
        image = row.get("image")
        image = str((path.parent / image).resolve()) if isinstance(image, str) and image.strip() else None
        known = templates.get(template)
        if known is None or (known.image is None and image):
            templates[template] = Template(template, _title_from_name(template), image)
        ident = row.get("id")
        ident = str(ident) if ident not in (None, "") else content_id(template, boxes)
        captions.append(Caption(ident, template, boxes))
    return RawDataset(f"plain:{path}", templates, captions, skipped)


def read_source(source: str | Path) -> RawDataset:
    """A directory is the ImgFlip575K layout; a .csv/.jsonl file is the plain format."""
    source = Path(source)
    if source.is_dir():
        return read_imgflip575k(source)
    if source.is_file():
        return read_plain(source)
    raise DataSourceError(
        f"no dataset at {source}; point MEMEFLY_DATASET_DIR (or --dataset) at an ImgFlip575K copy "
        "or a .csv/.jsonl caption file"
    )
