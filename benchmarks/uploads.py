"""Realistic uploads of a template, for benchmarks/recognition.py: made here, apart from the
export's augmentations (model_export/augment.py, whose font and JPEG round trip they share),
so that what is measured is not what the template head was fitted on. Each kind imitates how
people really send a meme template."""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw, ImageOps

from model_export.augment import resave_jpeg, text_font

KINDS = ("crop", "small_jpeg", "tilted_grey", "captioned", "screenshot")
_WORDS = (
    "when the teacher says the test is easy me trying to explain why my code works on my machine "
    "nobody friday monday coffee boss weekend homework cat dog mom dad"
).split()


def crop(image: Image.Image, rng: random.Random) -> Image.Image:
    """Off-centre: 60-90% of each side, anywhere."""
    w, h = image.size
    cw, ch = int(w * rng.uniform(0.6, 0.9)), int(h * rng.uniform(0.6, 0.9))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return image.crop((x, y, x + cw, y + ch))


def small_jpeg(image: Image.Image, rng: random.Random) -> Image.Image:
    """A thumbnail, saved again and again at low quality."""
    w, h = image.size
    scale = rng.uniform(120, 240) / max(w, h)
    small = image.resize((max(8, int(w * scale)), max(8, int(h * scale))), Image.BILINEAR)
    for _ in range(rng.randint(1, 3)):
        small = resave_jpeg(small, rng.randint(10, 40))
    return small


def tilted_grey(image: Image.Image, rng: random.Random) -> Image.Image:
    """Greyscale, turned a few degrees (a scan, a photo of a print)."""
    grey = ImageOps.grayscale(image).convert("RGB")
    return grey.rotate(rng.uniform(-12, 12), resample=Image.BILINEAR, expand=True, fillcolor=(255, 255, 255))


def captioned(image: Image.Image, rng: random.Random) -> Image.Image:
    """A finished meme: one or two lines of white, black-outlined capitals at the top and bottom."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    size = max(10, int(h * rng.uniform(0.08, 0.13)))
    font = text_font(size)
    for top in (True, False)[: rng.choice([1, 2, 2])]:
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 8))]
        lines, line = [], ""
        for word in words:
            if line and draw.textlength(f"{line} {word}".upper(), font=font) > 0.92 * w:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        lines.append(line)
        y = int(h * 0.02) if top else int(h * 0.98) - len(lines) * int(size * 1.15)
        for text in lines:
            text = text.upper()
            x = (w - draw.textlength(text, font=font)) / 2
            draw.text((x, y), text, font=font, fill="white", stroke_width=max(1, size // 10), stroke_fill="black")
            y += int(size * 1.15)
    return out


def screenshot(image: Image.Image, rng: random.Random) -> Image.Image:
    """A phone screenshot of a post: status bar, the poster's name and text above, the image
    at some scale, action bar and replies below, light or dark theme."""
    dark = rng.random() < 0.4
    background, ink, faint = (
        ((0, 0, 0), (231, 233, 234), (113, 118, 123)) if dark else ((255, 255, 255), (15, 20, 25), (83, 100, 113))
    )
    width = rng.choice([720, 828, 1080])
    height = int(width * rng.uniform(1.9, 2.2))
    canvas = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(canvas)
    small, body = text_font(width // 30), text_font(width // 24)
    draw.text((width * 0.05, width * 0.02), f"{rng.randint(1, 12)}:{rng.randint(0, 59):02d}", font=small, fill=ink)
    draw.rectangle((width * 0.85, width * 0.025, width * 0.93, width * 0.05), fill=ink)  # battery
    y = int(width * 0.12)
    draw.ellipse((width * 0.04, y, width * 0.14, y + width * 0.1), fill=faint)  # avatar
    draw.text((width * 0.17, y), "some account", font=body, fill=ink)
    draw.text((width * 0.17, y + width * 0.05), "@someone · 3h", font=small, fill=faint)
    y += int(width * 0.14)
    for _ in range(rng.randint(0, 3)):
        draw.text(
            (width * 0.05, y), " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 7))), font=body, fill=ink
        )
        y += int(width * 0.06)
    shown = int(width * rng.uniform(0.8, 0.95))
    picture = image.convert("RGB").resize((shown, max(8, int(image.size[1] * shown / image.size[0]))), Image.BILINEAR)
    left = (width - shown) // 2
    canvas.paste(picture, (left, y))
    y += picture.size[1] + int(width * 0.04)
    for i in range(4):  # reply, repost, like, share
        draw.text((width * (0.08 + 0.24 * i), y), str(rng.randint(1, 999)), font=small, fill=faint)
    y += int(width * 0.08)
    while y < height - width * 0.1:
        draw.line((0, y, width, y), fill=faint)
        y += int(width * 0.03)
        draw.text(
            (width * 0.17, y), " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 6))), font=body, fill=ink
        )
        y += int(width * 0.15)
    return resave_jpeg(canvas, rng.randint(70, 92))


MAKE = {
    "crop": crop,
    "small_jpeg": small_jpeg,
    "tilted_grey": tilted_grey,
    "captioned": captioned,
    "screenshot": screenshot,
}


def upload(image: Image.Image, kind: str, rng: random.Random) -> bytes:
    """The upload as sent: JPEG, as phones and sites save it."""
    buffer = io.BytesIO()
    MAKE[kind](image.convert("RGB"), rng).convert("RGB").save(buffer, "JPEG", quality=85)
    return buffer.getvalue()
