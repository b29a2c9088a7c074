"""docs/samples.png: templates x memes from the served models with default options, drawn as the
API draws them, so a reader sees the quality at a glance.

    python benchmarks/contact_sheet.py --models-dir models --out docs/samples.png

The memes come from the gateway's own pipeline (in-process, the same service, search and
defaults as POST /memes with `template=`), the pictures from its renderer and template layouts.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image, ImageDraw  # noqa: E402

from gateway.pipeline import MemePipeline  # noqa: E402
from gateway.rendering.fonts import MemeFont, font_file  # noqa: E402
from gateway.rendering.renderer import Renderer, RenderSpec  # noqa: E402
from memefly import paths  # noqa: E402
from memefly.decoding.options import DecodingOptions  # noqa: E402

CELL = 300  # pixels per meme (the longer side)
LABEL = 28  # pixels of template name above each row


def pick_templates(names: list[str], count: int, renderer: Renderer) -> list[str]:
    """COUNT templates spread evenly over the list (the same ones for the same models)."""
    usable = [name for name in names if renderer.template_image(name) is not None]
    if len(usable) <= count:
        return usable
    step = len(usable) / count
    return [usable[int(i * step)] for i in range(count)]


async def memes_for(
    models_dir: Path, templates: list[str] | None, count: int, per_template: int, renderer: Renderer
) -> list[tuple[str, list[list[str]]]]:
    async with MemePipeline(models_dir=models_dir) as client:
        chosen = templates or pick_templates(client.template_names, count, renderer)
        results = await client.generate(chosen, DecodingOptions())
    rows = []
    for name, result in zip(chosen, results, strict=True):
        if result.error is not None:
            raise SystemExit(f"{name}: {result.error.detail}")
        rows.append((name, [meme.boxes for meme in result.response.memes[:per_template]]))
    return rows


def sheet(rows: list[tuple[str, list[list[str]]]], renderer: Renderer, per_template: int) -> Image.Image:
    label_font = MemeFont(font_file()).at(20)
    out = Image.new("RGB", (per_template * CELL, len(rows) * (CELL + LABEL)), "white")
    canvas = ImageDraw.Draw(out)
    for r, (name, captions) in enumerate(rows):
        top = r * (CELL + LABEL)
        canvas.text((6, top + 4), name.replace("-", " "), fill=(0, 0, 0), font=label_font)
        source = renderer.template_image(name).read_bytes()
        for m, boxes in enumerate(captions):
            drawn = renderer.render_now(source, RenderSpec(tuple(boxes), layout=name, format="png", max_side=CELL))
            image = Image.open(io.BytesIO(drawn))
            out.paste(image, (m * CELL + (CELL - image.width) // 2, top + LABEL + (CELL - image.height) // 2))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=paths.models_dir())
    parser.add_argument("--templates-dir", type=Path, default=paths.templates_dir())
    parser.add_argument("--templates", type=int, default=20, help="rows (default: %(default)s)")
    parser.add_argument("--per-template", type=int, default=3, help="memes per row (default: %(default)s)")
    parser.add_argument("--template", action="append", help="these templates instead of an even spread")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "samples.png")
    args = parser.parse_args(argv)

    renderer = Renderer(cache_bytes=0, templates_dir=args.templates_dir)
    rows = asyncio.run(memes_for(args.models_dir, args.template, args.templates, args.per_template, renderer))
    sheet(rows, renderer, args.per_template).save(args.out, optimize=True)
    for name, captions in rows:
        print(f"{name}: " + " | ".join(" / ".join(boxes) for boxes in captions))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
