"""Images that are no template, to calibrate the "known template" decision on.

People upload photos, screenshots of text, drawings and collages as well as memes. The
encoder's template head must say when an image is none of its templates; the threshold on
its top probability is chosen at export against these (and checked on a held-out set made
with another seed). Each kind is seeded and made from scratch, except `mosaic`, which mixes
crops of several templates: close to a template, yet none of them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

KINDS = ("noise", "gradient", "shapes", "text", "mosaic", "blur")

_WORDS = (
    "the quick brown fox jumps over lazy dog meeting notes agenda today tomorrow coffee lunch "
    "project update please see attached thanks regards hello world invoice total due"
).split()


def _size(rng: random.Random) -> tuple[int, int]:
    return rng.randint(200, 640), rng.randint(200, 640)


def _noise(rng: random.Random, templates: list[Image.Image]) -> Image.Image:
    w, h = _size(rng)
    cells = rng.choice([4, 8, 16, 1])  # coarse blobs to per-pixel noise
    small = np.random.default_rng(rng.getrandbits(32)).integers(0, 256, (max(1, h // cells), max(1, w // cells), 3))
    return Image.fromarray(small.astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR)


def _gradient(rng: random.Random, templates: list[Image.Image]) -> Image.Image:
    w, h = _size(rng)
    start, end = (np.array([rng.randint(0, 255) for _ in range(3)], np.float32) for _ in range(2))
    t = np.linspace(0, 1, w if rng.random() < 0.5 else h, dtype=np.float32)[:, None]
    line = (start + t * (end - start)).astype(np.uint8)
    pixels = np.broadcast_to(line[None], (h, w, 3)) if len(line) == w else np.broadcast_to(line[:, None], (h, w, 3))
    return Image.fromarray(np.ascontiguousarray(pixels))


def _shapes(rng: random.Random, templates: list[Image.Image]) -> Image.Image:
    w, h = _size(rng)
    image = Image.new("RGB", (w, h), tuple(rng.randint(0, 255) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(3, 12)):
        box = sorted((rng.randint(0, w), rng.randint(0, w))), sorted((rng.randint(0, h), rng.randint(0, h)))
        xy = (box[0][0], box[1][0], box[0][1], box[1][1])
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(xy, fill=colour)
    return image


def _text(rng: random.Random, templates: list[Image.Image]) -> Image.Image:
    """A page or a chat: lines of text on a plain background."""
    w, h = _size(rng)
    dark = rng.random() < 0.3
    image = Image.new("RGB", (w, h), (20, 20, 24) if dark else (250, 250, 250))
    draw = ImageDraw.Draw(image)
    size = rng.randint(12, 28)
    font = ImageFont.load_default(size=size)
    y = rng.randint(5, 30)
    while y < h - size:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 9)))
        draw.text((rng.randint(5, 30), y), line, font=font, fill=(230, 230, 230) if dark else (30, 30, 30))
        y += int(size * rng.uniform(1.3, 2.2))
    return image


def _mosaic(rng: random.Random, templates: list[Image.Image]) -> Image.Image:
    """A collage of crops of two to four different templates: close to templates, yet none of them."""
    if len(templates) < 2:
        return _shapes(rng, templates)
    w, h = _size(rng)
    image = Image.new("RGB", (w, h))
    picks = rng.sample(templates, min(len(templates), rng.randint(2, 4)))
    columns = 2
    rows = -(-len(picks) // columns)
    cell_w, cell_h = w // columns, h // rows
    for i, template in enumerate(picks):
        tw, th = template.size
        cw, ch = int(tw * rng.uniform(0.3, 0.6)), int(th * rng.uniform(0.3, 0.6))
        x, y = rng.randint(0, tw - cw), rng.randint(0, th - ch)
        piece = template.crop((x, y, x + cw, y + ch)).convert("RGB").resize((cell_w, cell_h), Image.Resampling.BILINEAR)
        image.paste(piece, ((i % columns) * cell_w, (i // columns) * cell_h))
    return image


def _blur(rng: random.Random, templates: list[Image.Image]) -> Image.Image:
    """Out-of-focus shapes: a photo's soft colour fields."""
    return _shapes(rng, templates).filter(ImageFilter.GaussianBlur(rng.uniform(8, 30)))


_MAKE = {"noise": _noise, "gradient": _gradient, "shapes": _shapes, "text": _text, "mosaic": _mosaic, "blur": _blur}


def non_template_images(count: int, seed: int, templates: Sequence[Image.Image] = ()) -> list[tuple[str, Image.Image]]:
    """COUNT (kind, image) pairs, the kinds in turn; the same for the same seed and templates."""
    rng = random.Random(seed)
    templates = list(templates)
    return [(KINDS[i % len(KINDS)], _MAKE[KINDS[i % len(KINDS)]](rng, templates)) for i in range(count)]
