"""Render timings: milliseconds per meme drawn on a 500 x 500 image, by output format.

    python benchmarks/render.py [--templates-dir DIR] [--trials 200]

Each trial draws a different caption (so nothing comes from the render cache) onto one of
the template images, scaled to 500 x 500, and encodes it: the work behind POST /render and
POST /memes?render=, minus HTTP. "draw" is fitting and drawing the text alone; a cache hit
is the same request again. Without template images (no dataset, nothing downloaded),
seeded noise images stand in.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.rendering.draw import draw_captions  # noqa: E402
from gateway.rendering.fonts import MemeFont, font_file  # noqa: E402
from gateway.rendering.layout import Layouts  # noqa: E402
from gateway.rendering.output import open_for_drawing  # noqa: E402
from gateway.rendering.renderer import Renderer, RenderSpec  # noqa: E402
from memefly.paths import templates_dir  # noqa: E402

SIDE = 500
WORDS = (
    "when you finally fix the bug and it was a typo all along me explaining to my cat why "
    "the build is red on friday nobody expects the spanish inquisition one does not simply"
).split()


def sources(folder: Path, count: int = 20) -> list[tuple[str, bytes]]:
    """(template name, 500 x 500 PNG) pairs."""
    paths = sorted(folder.glob("*.jpg"))[:count] if folder.is_dir() else []
    rng = np.random.default_rng(0)
    images = [(p.stem, Image.open(p).convert("RGB")) for p in paths] or [
        (f"noise-{i}", Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))) for i in range(count)
    ]
    out = []
    for name, image in images:
        buffer = io.BytesIO()
        image.resize((SIDE, SIDE), Image.Resampling.BICUBIC).save(buffer, format="PNG")
        out.append((name, buffer.getvalue()))
    return out


def caption(rng: random.Random) -> tuple[str, ...]:
    return tuple(" ".join(rng.choices(WORDS, k=rng.randint(2, 12))) for _ in range(rng.choice((1, 2, 2, 3))))


def summary(times: list[float]) -> str:
    ms = np.array(times) * 1000
    return f"{np.percentile(ms, 50):8.1f} {np.percentile(ms, 95):8.1f} {ms.mean():8.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--templates-dir", type=Path, default=templates_dir())
    parser.add_argument("--trials", type=int, default=200)
    args = parser.parse_args()

    font = MemeFont(font_file())
    renderer = Renderer(cache_bytes=1 << 30, templates_dir=args.templates_dir, font=font)
    layouts = Layouts.shipped()
    images = sources(args.templates_dir)
    rng = random.Random(0)
    jobs = [(images[i % len(images)], caption(rng)) for i in range(args.trials)]
    renderer.render_now(images[0][1], RenderSpec(("warm up",)))  # font loading is not per meme

    rows = {}
    times = []
    for (name, data), boxes in jobs:
        image = open_for_drawing(data, 1024)
        started = time.perf_counter()
        draw_captions(image, list(boxes), layouts.for_caption(name, len(boxes)), font=font)
        times.append(time.perf_counter() - started)
    rows["draw only (fit + draw text)"] = times
    for kind in ("png", "jpeg", "webp"):
        times = []
        for (name, data), boxes in jobs:
            started = time.perf_counter()
            renderer.render_now(data, RenderSpec(boxes, layout=name, format=kind))
            times.append(time.perf_counter() - started)
        rows[f"{kind}: decode + draw + encode"] = times

    async def hits():
        spec = RenderSpec(jobs[0][1], layout=jobs[0][0][0])
        await renderer.render(jobs[0][0][1], "bench", spec)
        times = []
        for _ in range(args.trials):
            started = time.perf_counter()
            await renderer.render(jobs[0][0][1], "bench", spec)
            times.append(time.perf_counter() - started)
        return times

    rows["cache hit (same request again)"] = asyncio.run(hits())

    print(
        f"render timings: {args.trials} memes per row at {SIDE} x {SIDE}, font {font.name}, "
        f"{len(images)} source images, 1 thread"
    )
    print(f"{'':34} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8}")
    for label, times in rows.items():
        print(f"{label:34} {summary(times)}")


if __name__ == "__main__":
    main()
