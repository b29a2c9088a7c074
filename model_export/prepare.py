"""`memefly data prepare`: raw source -> cleaned, split captions on disk, with a report.

Output folder:
- captions.jsonl  one cleaned caption per line: id, template, boxes, split, offensive
- templates.json  every template: name, title, image, typical box count, captions per split
- report.json     what the reader skipped and what each cleaning step changed or dropped
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from model_export.cleaning import clean
from model_export.datasets import read_source
from model_export.splits import SPLITS, assign_split


@dataclass(frozen=True)
class PreparedCaption:
    id: str
    template: str
    boxes: tuple[str, ...]
    split: str
    offensive: bool


def typical_box_counts(captions) -> dict[str, int]:
    """The most common box count per template (ties: the smaller count)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for c in captions:
        counts[c.template][len(c.boxes)] += 1
    return {t: min(cnt, key=lambda n: (-cnt[n], n)) for t, cnt in counts.items()}


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def prepare(source: str | Path, out_dir: str | Path, progress: bool = True) -> dict:
    raw = read_source(source)
    cleaned, cleaning = clean(raw.captions, progress=progress)
    prepared = [PreparedCaption(c.id, c.template, c.boxes, assign_split(c.id), c.offensive) for c in cleaned]
    box_counts = typical_box_counts(c for c in prepared if c.split == "train")
    per_split: dict[str, Counter] = defaultdict(Counter)
    for c in prepared:
        per_split[c.template][c.split] += 1
    templates = [
        {
            "name": t.name,
            "title": t.title,
            "image": t.image,
            "box_count": box_counts.get(t.name),
            "captions": {s: per_split[t.name][s] for s in SPLITS},
        }
        for t in sorted(raw.templates.values(), key=lambda t: t.name)
    ]
    report = {
        "reader": raw.report(),
        "cleaning": cleaning.as_dict(),
        "splits": dict(Counter(c.split for c in prepared)),
        "offensive_by_split": dict(Counter(c.split for c in prepared if c.offensive)),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(
        out / "captions.jsonl",
        "".join(json.dumps(asdict(c), ensure_ascii=False) + "\n" for c in prepared),
    )
    _write_atomic(out / "templates.json", json.dumps(templates, indent=1, ensure_ascii=False))
    _write_atomic(out / "report.json", json.dumps(report, indent=1, ensure_ascii=False))
    return report


def load_captions(prepared_dir: str | Path) -> list[PreparedCaption]:
    path = Path(prepared_dir) / "captions.jsonl"
    with path.open(encoding="utf-8") as f:
        return [
            PreparedCaption(r["id"], r["template"], tuple(r["boxes"]), r["split"], r["offensive"])
            for r in map(json.loads, f)
        ]


def load_templates(prepared_dir: str | Path) -> list[dict]:
    return json.loads((Path(prepared_dir) / "templates.json").read_text(encoding="utf-8"))


def format_report(report: dict) -> str:
    reader, cleaning = report["reader"], report["cleaning"]
    lines = [
        f"source: {reader['source']}",
        f"captions read: {reader['captions_read']}   templates: {reader['templates']}",
    ]
    for reason, n in sorted(reader["records_skipped"].items()):
        lines.append(f"  skipped (bad record) {reason}: {n}")
    if reader["templates_without_captions"]:
        lines.append(
            f"  templates without captions ({len(reader['templates_without_captions'])}): "
            + ", ".join(reader["templates_without_captions"])
        )
    if reader["templates_without_image"]:
        lines.append(
            f"  templates without image ({len(reader['templates_without_image'])}): "
            + ", ".join(reader["templates_without_image"])
        )
    lines.append("cleaning:")
    for step, n in cleaning["changed"].items():
        lines.append(f"  changed  {step}: {n}")
    for step, n in cleaning["dropped"].items():
        lines.append(f"  dropped  {step}: {n}")
    lines.append(f"  flagged  offensive (kept): {cleaning['flagged_offensive']}")
    lines.append(f"captions kept: {cleaning['output']}   splits: {report['splits']}")
    return "\n".join(lines)
