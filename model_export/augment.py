"""Perturbed views of a template image, as people upload them: the template head learns from these.

Each kind imitates a real upload: a crop, a meme with its caption drawn on, a phone
screenshot (padding, a status bar), greyscale, heavy JPEG re-compression, colour changes.
"""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

KINDS = ("crop", "text", "padding", "greyscale", "jpeg", "colour")

_WORDS = "when you me my the finally nobody that moment gets it is this why not so much wow such".split()


def _crop(img: Image.Image, rng: random.Random) -> Image.Image:
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.7, 0.95)), int(h * rng.uniform(0.7, 0.95))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((x, y, x + cw, y + ch))


def _text(img: Image.Image, rng: random.Random) -> Image.Image:
    img = img.copy()
    draw = ImageDraw.Draw(img)
    w, h = img.size
    size = max(8, int(h * rng.uniform(0.07, 0.12)))
    font = ImageFont.load_default(size=size)
    for y in (int(h * 0.03), int(h * 0.97) - size)[: rng.randint(1, 2)]:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 5))).upper()
        width = draw.textlength(line, font=font)
        x = max(0, int((w - width) / 2))
        draw.text((x, y), line, font=font, fill="white", stroke_width=max(1, size // 12), stroke_fill="black")
    return img


def _padding(img: Image.Image, rng: random.Random) -> Image.Image:
    """A screenshot: the meme scaled into a taller canvas with bars above and below."""
    w, h = img.size
    background = rng.choice([(255, 255, 255), (0, 0, 0), (24, 25, 26), (240, 242, 245)])
    canvas_h = int(h * rng.uniform(1.3, 1.9))
    canvas_w = int(w * rng.uniform(1.0, 1.15))
    canvas = Image.new("RGB", (canvas_w, canvas_h), background)
    top = rng.randint(int((canvas_h - h) * 0.2), int((canvas_h - h) * 0.8))
    canvas.paste(img, ((canvas_w - w) // 2, top))
    draw = ImageDraw.Draw(canvas)
    bar = (128, 128, 128)
    for y in (int(top * 0.3), int(top * 0.6)):  # fake text lines above, like a post's header
        draw.rectangle((int(canvas_w * 0.05), y, int(canvas_w * rng.uniform(0.3, 0.8)), y + max(2, h // 40)), fill=bar)
    return canvas


def _rescale(img: Image.Image, rng: random.Random) -> Image.Image:
    """A slight random resize, as re-uploads have: no two views of a kind are the same image."""
    w, h = img.size
    scale = rng.uniform(0.6, 1.0)
    return img.resize((max(16, int(w * scale)), max(16, int(h * scale))), Image.BILINEAR)


def _greyscale(img: Image.Image, rng: random.Random) -> Image.Image:
    return ImageOps.grayscale(_rescale(img, rng)).convert("RGB")


def _jpeg(img: Image.Image, rng: random.Random) -> Image.Image:
    buffer = io.BytesIO()
    _rescale(img, rng).save(buffer, "JPEG", quality=rng.randint(5, 25))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _colour(img: Image.Image, rng: random.Random) -> Image.Image:
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhancer(img).enhance(rng.uniform(0.6, 1.4))
    return img


_APPLY = {
    "crop": _crop,
    "text": _text,
    "padding": _padding,
    "greyscale": _greyscale,
    "jpeg": _jpeg,
    "colour": _colour,
}


def perturb(img: Image.Image, kind: str, rng: random.Random) -> Image.Image:
    return _APPLY[kind](img.convert("RGB"), rng)


def to_png(img: Image.Image) -> bytes:
    """Lossless, so the encoder sees exactly these pixels. Compression level 1: the same
    pixels 3.5x faster than PNG's default 6 (an export encodes thousands of views)."""
    buffer = io.BytesIO()
    img.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()
