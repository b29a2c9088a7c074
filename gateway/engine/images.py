"""Upload checks before an image reaches the encoder: size, type from the bytes, pixels, decodability.

The encoder decodes JPEG, PNG and GIF itself. Anything else we accept (BMP, WebP), images
with an EXIF rotation, unusual pixel modes and animations (GIF, APNG, WebP: their first frame)
are re-encoded to PNG, upright: the encoder only ever sees one still frame. The frame count
is read from the headers before any pixel is decoded, and pixels x frames has a budget.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from gateway.errors import BadImage, ImageTooLarge, UnsupportedImage
from memefly.content_view import content_view

# What the encoder graph decodes as sent. BMP is re-encoded, whatever its depth: TensorFlow's
# BMP decoder reads only some bit depths (not 1-bit, 4-bit or compressed files).
ENCODER_FORMATS = {"JPEG", "PNG", "GIF"}
ACCEPTED = "JPEG, PNG, GIF, BMP or WebP"
_PLAIN_MODES = {"RGB", "RGBA", "L", "LA", "P", "1"}
_EXIF_ORIENTATION = 0x0112
# Re-encoded images need not be larger than this: the encoder sees 299 x 299.
_REENCODE_MAX_SIDE = 1024
# Pixels x frames of an animation, as a multiple of the pixel limit (counted from the frame
# headers, no pixel decoded), and a cap on frames whatever their size.
FRAME_BUDGET_FACTOR = 10
MAX_FRAMES = 10_000


@dataclass(frozen=True)
class CheckedImage:
    data: bytes  # what the encoder receives
    sha256: str  # of the bytes the client sent
    format: str
    width: int
    height: int
    reencoded: bool
    # More views for the encoder besides `data` (memefly/content_view.py: the picture inside a
    # screenshot or frame); the most confident answer is kept.
    extra_views: tuple[bytes, ...] = ()


def already_checked(data: bytes, digest: str) -> CheckedImage:
    """Bytes whose SHA-256 passed the checks before (and whose template_probs are cached):
    decoding them again would only cost time."""
    return CheckedImage(data, digest, sniff_format(data) or "unknown", 0, 0, reencoded=False)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sniff_format(data: bytes) -> str | None:
    """The image type from its first bytes; the file name and the declared type are not trusted."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def check_image(data: bytes, *, max_bytes: int, max_pixels: int) -> CheckedImage:
    if not data:
        raise BadImage("the image is empty")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"the image is {len(data):,} bytes; the limit is {max_bytes:,}")
    kind = sniff_format(data)
    if kind is None:
        raise UnsupportedImage(f"not an image type we accept: send {ACCEPTED}")
    try:
        image = Image.open(io.BytesIO(data), formats=[kind])
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"the image has too many pixels; the limit is {max_pixels:,}") from None
    except UnidentifiedImageError:  # its message names a Python object and its address
        raise BadImage(f"the {kind} data cannot be read") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise BadImage(f"the {kind} data cannot be read: {_plain(error)}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise BadImage(f"the image is {width} x {height} pixels")
    if width * height > max_pixels:
        raise ImageTooLarge(f"the image is {width} x {height} = {width * height:,} pixels; the limit is {max_pixels:,}")
    frames = _frames(image, kind, width * height, FRAME_BUDGET_FACTOR * max_pixels)
    try:
        if kind == "JPEG":
            image.draft("RGB", (2 * _REENCODE_MAX_SIDE, 2 * _REENCODE_MAX_SIDE))  # decode at a reduced scale
        image.load()  # decodes everything: truncated or corrupt data fails here
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"the image has too many pixels; the limit is {max_pixels:,}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise BadImage(f"the {kind} data is truncated or corrupt: {_plain(error)}") from None

    digest = sha256(data)
    rotated = image.getexif().get(_EXIF_ORIENTATION, 1) not in (1, None)
    if kind in ENCODER_FORMATS and not rotated and image.mode in _PLAIN_MODES and frames == 1:
        return CheckedImage(data, digest, kind, width, height, reencoded=False, extra_views=_extra_views(image))
    return _reencode(image, digest, kind)


def _plain(error: Exception) -> str:
    """A decoder's message without Python object reprs (<... at 0x7f...>)."""
    return re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the upload", str(error))


def _frames(image: Image.Image, kind: str, frame_pixels: int, budget: int) -> int:
    """How many frames the file declares (Pillow walks the frame headers without decoding
    pixels); ImageTooLarge when frames x pixels pass the budget."""
    try:
        frames = getattr(image, "n_frames", 1)
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise BadImage(f"the {kind} animation cannot be read: {_plain(error)}") from None
    if frames * frame_pixels > budget or frames > MAX_FRAMES:
        raise ImageTooLarge(
            f"the animation has {frames:,} frames of {frame_pixels:,} pixels; "
            f"the limit is {budget:,} pixels in all frames"
        )
    return frames


def _reencode(image: Image.Image, digest: str, kind: str) -> CheckedImage:
    upright = ImageOps.exif_transpose(image)
    rgb = upright.convert("RGBA" if "A" in upright.getbands() else "RGB")
    rgb.thumbnail((_REENCODE_MAX_SIDE, _REENCODE_MAX_SIDE))
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return CheckedImage(
        buffer.getvalue(), digest, kind, upright.width, upright.height, reencoded=True, extra_views=_extra_views(rgb)
    )


def _extra_views(image: Image.Image) -> tuple[bytes, ...]:
    view = content_view(image)
    return (view,) if view else ()
