"""A second view of an upload for the encoder: the picture inside a screenshot or a frame.

People send a meme template as a phone screenshot of a post (status bar, names, text and
replies around it), with white borders, or tilted on a plain background. The encoder sees
the whole image squeezed to 299 x 299, where the template fills a third. The picture is
the longest run of busy rows (text lines are short runs between plain gaps), and within it
the longest run of busy columns; when that box is a real part of the image and sits on a
plain background, it goes to the encoder as well (centred, as posts place pictures), and the
more confident answer of the two views is kept (measured with
benchmarks/recognition.py: phone screenshots recognised 0.40 -> 0.97, the other kinds the
same). The box is found on a copy at most SEARCH_SIDE pixels a side: an upload may
have 40 million pixels, and every upload is looked at.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

BUSY_STD = 10.0  # a row or column whose grey levels vary more than this is part of a picture
MIN_SHARE, MAX_SHARE = 0.1, 0.9  # the box must be at least 10% of the area, and not nearly all of it
MAX_SIDE = 1024  # the view is sent at most this big (as re-encoded uploads are)
SEARCH_SIDE = 512
# A picture inside a screenshot or a frame sits on a plain background: at least this share of
# the image around the box is within PLAIN_LEVELS grey levels of its commonest level (a post's
# text is a small part of it). A blurred photo's soft fields are not: no second view there.
PLAIN_SHARE, PLAIN_LEVELS = 0.5, 8
# A post's picture is centred: a box nearer one side than the other by more than this share of
# the width stopped at a white (or black) part of the picture, and is widened to be centred.
OFF_CENTRE = 0.1


def _longest_run(busy: np.ndarray, gap: int) -> tuple[int, int]:
    """[start, end) of the longest run of True, bridging runs of False up to GAP long."""
    index = np.flatnonzero(busy)
    if index.size == 0:
        return 0, 0
    breaks = np.flatnonzero(np.diff(index) > gap + 1)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [index.size - 1]])
    longest = int(np.argmax(index[ends] - index[starts]))
    return int(index[starts[longest]]), int(index[ends[longest]]) + 1


def content_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the picture inside IMAGE, or None when there is none to
    tell apart (a plain meme, a photo) or it is too small to be the point of the image."""
    small = image.copy()
    small.thumbnail((SEARCH_SIDE, SEARCH_SIDE))  # first: no full-size grey copy of a 40-megapixel upload
    small = small.convert("L")
    box = _box(np.asarray(small, dtype=np.float32))
    if box is None:
        return None
    scale_x, scale_y = image.width / small.width, image.height / small.height
    left, top, right, bottom = box
    return (
        round(left * scale_x),
        round(top * scale_y),
        min(image.width, round(right * scale_x)),
        min(image.height, round(bottom * scale_y)),
    )


def _box(grey: np.ndarray) -> tuple[int, int, int, int] | None:
    height, width = grey.shape
    top, bottom = _longest_run(grey.std(axis=1) > BUSY_STD, gap=max(2, height // 200))
    if bottom - top < MIN_SHARE * height:
        return None
    left, right = _longest_run(grey[top:bottom].std(axis=0) > BUSY_STD, gap=max(2, width // 200))
    share = (bottom - top) * (right - left) / (height * width)
    if share < MIN_SHARE or ((bottom - top) > MAX_SHARE * height and (right - left) > MAX_SHARE * width):
        return None
    if _plain_share(grey, (left, top, right, bottom)) < PLAIN_SHARE:
        return None
    margin = min(left, width - right)
    if abs(left - (width - right)) > OFF_CENTRE * width:
        left, right = margin, width - margin
    return left, top, right, bottom


def _plain_share(grey: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """The share of the image around BOX within PLAIN_LEVELS of its commonest grey level."""
    left, top, right, bottom = box
    around = np.ones(grey.shape, dtype=bool)
    around[top:bottom, left:right] = False
    levels = np.clip(grey[around], 0, 255).astype(np.int16)
    if levels.size == 0:
        return 1.0
    commonest = int(np.bincount(levels, minlength=256).argmax())
    return float(np.mean(np.abs(levels - commonest) <= PLAIN_LEVELS))


def content_view(image: Image.Image) -> bytes | None:
    """The picture inside IMAGE as PNG bytes for the encoder, or None (see content_box)."""
    box = content_box(image)
    if box is None:
        return None
    picture = image.crop(box).convert("RGB")
    picture.thumbnail((MAX_SIDE, MAX_SIDE))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def most_confident(views: list[np.ndarray]) -> np.ndarray:
    """Of the template_probs of an upload's views, the one whose top template is surest."""
    return max(views, key=lambda probs: float(np.max(probs)))
