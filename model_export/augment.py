"""Perturbed views of a template image, as people upload them: the template head learns from these.

Each kind imitates a real upload: an off-centre crop; a finished meme (one to five caption
boxes of outlined white capitals, or black text on a white band above the picture); a phone
screenshot of a social-app post (status bar, header, text, the picture at some scale, light
or dark theme); a tilted greyscale scan; a thumbnail re-saved as JPEG again and again; colour
changes; stickers and watermarks; a phone photo of a screen (perspective, blur, glare). All
randomness comes from the `random.Random` passed in: the same seed gives the same views.
"""

from __future__ import annotations

import io
import random
from functools import lru_cache

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

KINDS = ("crop", "caption", "caption_band", "screenshot", "greyscale", "jpeg", "colour", "sticker", "perspective")

_WORDS = (
    "when you me my the finally nobody that moment gets it is this why not so much wow such "
    "teacher test code works friday monday boss weekend homework cat dog mom dad coffee"
).split()
_BOLD_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/roboto/unhinted/RobotoTTF/Roboto-Black.ttf",
)


@lru_cache(maxsize=64)
def text_font(size: int, bold: bool = True) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Text of SIZE pixels: a bold system font when BOLD is asked and one is installed, else Pillow's own."""
    for name in _BOLD_FONTS if bold else ():
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _words(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(low, high)))


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and draw.textlength(f"{line} {word}", font=font) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line]


def resave_jpeg(img: Image.Image, quality: int) -> Image.Image:
    """IMG as it comes back from being saved as JPEG at QUALITY."""
    buffer = io.BytesIO()
    img.convert("RGB").save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _crop(img: Image.Image, rng: random.Random) -> Image.Image:
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.6, 0.95)), int(h * rng.uniform(0.6, 0.95))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((x, y, x + cw, y + ch))


def _caption(img: Image.Image, rng: random.Random) -> Image.Image:
    """One to five boxes of white, black-outlined capitals, where memes put them."""
    img = img.copy()
    draw = ImageDraw.Draw(img)
    w, h = img.size
    boxes = rng.choice([1, 2, 2, 2, 3, 4, 5])
    places = sorted(rng.sample([0.02, 0.98, 0.5, 0.27, 0.73], boxes))
    for place in places:
        size = max(8, int(h * rng.uniform(0.06, 0.13) / (1 + 0.15 * (boxes - 1))))
        font = text_font(size)
        lines = _wrap(draw, _words(rng, 2, 8).upper(), font, 0.92 * w)[:3]
        block = len(lines) * int(size * 1.15)
        y = int(min(max(0, place * h - block / 2), h - block))
        if place < 0.1:
            y = int(place * h)
        elif place > 0.9:
            y = int(place * h) - block
        for line in lines:
            x = (w - draw.textlength(line, font=font)) / 2
            draw.text((x, y), line, font=font, fill="white", stroke_width=max(1, size // 10), stroke_fill="black")
            y += int(size * 1.15)
    return img


def _caption_band(img: Image.Image, rng: random.Random) -> Image.Image:
    """Black text on a white band above the picture (the style of reposted memes)."""
    w, h = img.size
    size = max(10, int(w * rng.uniform(0.04, 0.07)))
    font = text_font(size, bold=rng.random() < 0.5)
    probe = ImageDraw.Draw(img)
    lines = _wrap(probe, _words(rng, 4, 16), font, 0.9 * w)[:5]
    band = int((len(lines) + 0.8) * size * 1.25)
    canvas = Image.new("RGB", (w, h + band), (255, 255, 255))
    canvas.paste(img, (0, band))
    draw = ImageDraw.Draw(canvas)
    y = int(size * 0.4)
    for line in lines:
        draw.text((int(w * 0.05), y), line, font=font, fill=(0, 0, 0))
        y += int(size * 1.25)
    return canvas


def _screenshot(img: Image.Image, rng: random.Random) -> Image.Image:
    """A phone screenshot of a post: bars, the poster, text, the picture, actions and replies."""
    dark = rng.random() < 0.4
    background = (
        rng.choice([(0, 0, 0), (21, 32, 43), (24, 25, 26)])
        if dark
        else rng.choice([(255, 255, 255), (240, 242, 245), (250, 250, 250)])
    )
    ink, faint = ((231, 233, 234), (113, 118, 123)) if dark else ((15, 20, 25), (101, 119, 134))
    width = rng.randint(600, 1000)
    canvas = Image.new("RGB", (width, int(width * rng.uniform(1.3, 2.2))), background)
    draw = ImageDraw.Draw(canvas)
    height = canvas.size[1]
    small, body = text_font(max(10, width // 32)), text_font(max(12, width // 24), bold=False)
    draw.rectangle((0, 0, width, int(width * 0.06)), fill=rng.choice([background, faint]))  # status bar
    y = int(width * rng.uniform(0.08, 0.14))
    draw.ellipse((width * 0.04, y, width * 0.13, y + width * 0.09), fill=faint)  # avatar
    draw.text((width * 0.16, y), _words(rng, 1, 2), font=small, fill=ink)
    y += int(width * 0.12)
    for _ in range(rng.randint(0, 3)):
        draw.text((width * 0.05, y), _words(rng, 3, 7), font=body, fill=ink)
        y += int(width * 0.06)
    shown = int(width * rng.uniform(0.6, 0.98))
    picture = img.resize((shown, max(8, int(img.size[1] * shown / img.size[0]))), Image.Resampling.BILINEAR)
    canvas.paste(picture, ((width - shown) // 2, y))
    y += picture.size[1] + int(width * 0.03)
    while y < height - width * 0.08:
        draw.line((0, y, width, y), fill=faint)
        draw.text((width * 0.16, y + width * 0.03), _words(rng, 2, 6), font=body, fill=ink)
        y += int(width * rng.uniform(0.12, 0.2))
    return canvas


def _greyscale(img: Image.Image, rng: random.Random) -> Image.Image:
    grey = ImageOps.grayscale(_rescale(img, rng)).convert("RGB")
    angle = rng.uniform(-12, 12) if rng.random() < 0.7 else 0.0
    return grey.rotate(
        angle, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=rng.choice([(255, 255, 255), (0, 0, 0)])
    )


def _rescale(img: Image.Image, rng: random.Random) -> Image.Image:
    """A slight random resize, as re-uploads have: no two views of a kind are the same image."""
    w, h = img.size
    scale = rng.uniform(0.6, 1.0)
    return img.resize((max(16, int(w * scale)), max(16, int(h * scale))), Image.Resampling.BILINEAR)


def _jpeg(img: Image.Image, rng: random.Random) -> Image.Image:
    """A thumbnail re-saved as JPEG one to three times, as images are on their way round."""
    w, h = img.size
    scale = min(1.0, rng.uniform(120, 400) / max(w, h))
    img = img.resize((max(16, int(w * scale)), max(16, int(h * scale))), Image.Resampling.BILINEAR)
    for _ in range(rng.randint(1, 3)):
        img = resave_jpeg(img, rng.randint(5, 40))
    return img


def _colour(img: Image.Image, rng: random.Random) -> Image.Image:
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhancer(img).enhance(rng.uniform(0.6, 1.4))
    return img


def _sticker(img: Image.Image, rng: random.Random) -> Image.Image:
    """Stickers (bright round or square blobs) and a site's watermark in a corner."""
    img = img.copy()
    draw = ImageDraw.Draw(img)
    w, h = img.size
    for _ in range(rng.randint(1, 3)):
        size = int(min(w, h) * rng.uniform(0.1, 0.25))
        x, y = rng.randint(0, w - size), rng.randint(0, h - size)
        colour = rng.choice([(255, 204, 77), (255, 90, 90), (120, 200, 255), (255, 255, 255)])
        (draw.ellipse if rng.random() < 0.6 else draw.rectangle)(
            (x, y, x + size, y + size), fill=colour, outline=(0, 0, 0), width=max(1, size // 20)
        )
    font = text_font(max(8, int(h * 0.035)), bold=False)
    mark = rng.choice(["imgflip.com", "9GAG", "@memes", "reddit"])
    draw.text(
        (w * rng.choice([0.02, 0.7]), h * 0.95),
        mark,
        font=font,
        fill=(255, 255, 255),
        stroke_width=1,
        stroke_fill=(0, 0, 0),
    )
    return img


def _perspective(img: Image.Image, rng: random.Random) -> Image.Image:
    """A phone photo of a screen: the picture seen at an angle on a dark surround, soft and with glare."""
    w, h = img.size
    margin = 0.12
    canvas = Image.new(
        "RGB", (int(w * (1 + 2 * margin)), int(h * (1 + 2 * margin))), rng.choice([(20, 20, 20), (60, 55, 50)])
    )
    canvas.paste(img, (int(w * margin), int(h * margin)))
    cw, ch = canvas.size
    jitter = [rng.uniform(-0.08, 0.08) for _ in range(8)]
    corners = [
        (cw * (0 + jitter[0]), ch * (0 + jitter[1])),
        (cw * (1 + jitter[2]), ch * (0 + jitter[3])),
        (cw * (1 + jitter[4]), ch * (1 + jitter[5])),
        (cw * (0 + jitter[6]), ch * (1 + jitter[7])),
    ]
    data = [c for corner in corners for c in corner]
    warped = canvas.transform((cw, ch), Image.Transform.QUAD, data, resample=Image.Resampling.BILINEAR)
    warped = warped.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    warped = ImageEnhance.Brightness(warped).enhance(rng.uniform(0.8, 1.25))
    return resave_jpeg(warped, rng.randint(60, 90))


_APPLY = {
    "crop": _crop,
    "caption": _caption,
    "caption_band": _caption_band,
    "screenshot": _screenshot,
    "greyscale": _greyscale,
    "jpeg": _jpeg,
    "colour": _colour,
    "sticker": _sticker,
    "perspective": _perspective,
}


def perturb(img: Image.Image, kind: str, rng: random.Random) -> Image.Image:
    return _APPLY[kind](img.convert("RGB"), rng)


def to_png(img: Image.Image) -> bytes:
    """Lossless, so the encoder sees exactly these pixels. Compression level 1: the same
    pixels 3.5x faster than PNG's default 6 (an export encodes thousands of views)."""
    buffer = io.BytesIO()
    img.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()
