"""Reading the picture to draw on, and encoding the finished meme (PNG, JPEG or WebP)."""

from __future__ import annotations

import io

from PIL import Image, ImageOps

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def open_for_drawing(data: bytes, max_side: int) -> Image.Image:
    """Upright RGB, no larger than max_side on its longer side (transparency over white)."""
    image: Image.Image = Image.open(io.BytesIO(data))
    if image.format == "JPEG":
        image.draft("RGB", (max_side, max_side))  # decodes a large JPEG at a reduced scale: faster
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        image = background
    elif image.mode != "RGB":
        image = image.convert("RGB")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def encode(image: Image.Image, kind: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    if kind == "png":
        image.save(buffer, format="PNG", compress_level=3)  # a little larger than level 6, much faster
    elif kind == "jpeg":
        image.save(buffer, format="JPEG", quality=quality, optimize=False, progressive=True)
    elif kind == "webp":
        image.save(buffer, format="WEBP", quality=quality, method=2)
    else:
        raise ValueError(f"cannot encode {kind!r}: choose one of {', '.join(CONTENT_TYPES)}")
    return buffer.getvalue()
