"""The picture inside a screenshot, found for the encoder's second view (memefly/content_view.py)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from gateway.engine.images import check_image
from memefly.content_view import content_box, content_view, most_confident


def picture(width=500, height=400, seed=0) -> Image.Image:
    cells = np.random.default_rng(seed).integers(0, 256, (height // 20, width // 20, 3), dtype=np.uint8)
    return Image.fromarray(cells).resize((width, height), Image.BILINEAR)


def screenshot(inner: Image.Image, at=(50, 300), size=(600, 1200), dark=False) -> Image.Image:
    canvas = Image.new("RGB", size, (0, 0, 0) if dark else (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    ink = (230, 230, 230) if dark else (20, 20, 20)
    for y in list(range(20, at[1] - 30, 40)) + list(range(at[1] + inner.size[1] + 30, size[1] - 20, 40)):
        draw.text((30, y), "a line of the post and its replies", fill=ink)  # text lines: short busy runs
    canvas.paste(inner, at)
    return canvas


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_picture_inside_a_screenshot_is_found():
    for dark in (False, True):
        left, top, right, bottom = content_box(screenshot(picture(), dark=dark))
        assert abs(left - 50) <= 3 and abs(top - 300) <= 3 and abs(right - 550) <= 3 and abs(bottom - 700) <= 3


def test_a_plain_picture_or_a_blank_has_no_second_view():
    assert content_box(picture(600, 450)) is None  # busy everywhere: the picture is the image
    assert content_box(Image.new("RGB", (400, 300), "white")) is None
    tiny = screenshot(picture(60, 40), at=(10, 500))
    assert content_box(tiny) is None  # under 10% of the image: not what the image is about


def test_the_upload_check_adds_the_view_and_the_surest_view_wins():
    checked = check_image(png(screenshot(picture())), max_bytes=10_000_000, max_pixels=40_000_000)
    assert len(checked.extra_views) == 1
    view = Image.open(io.BytesIO(checked.extra_views[0]))
    assert abs(view.size[0] - 500) <= 6 and abs(view.size[1] - 400) <= 6
    assert check_image(png(picture()), max_bytes=10_000_000, max_pixels=40_000_000).extra_views == ()
    assert content_view(picture()) is None
    unsure, sure = np.array([0.4, 0.3, 0.3]), np.array([0.1, 0.85, 0.05])
    assert most_confident([unsure, sure]) is sure and most_confident([sure, unsure]) is sure


def test_a_busy_strip_of_a_soft_photo_is_no_picture_inside_a_frame():
    """A motion-blurred photo: soft colour fields around one sharp strip. Around the strip there
    is no plain background, so there is no second view to be misread as a template."""
    y, x = np.mgrid[0:300, 0:400]
    shade = (100 + 0.08 * x + 0.08 * y).astype(np.uint8)  # no row or column busy, yet 56 grey levels
    soft = Image.fromarray(np.stack([shade] * 3, axis=2))
    soft.paste(picture(120, 260, seed=4), (140, 30))
    assert content_box(soft) is None
    # the same strip on a plain page is a picture inside a frame
    page = Image.new("RGB", (400, 300), "white")
    page.paste(picture(120, 260, seed=4), (140, 30))
    assert content_box(page) is not None


def test_a_picture_whose_right_half_is_white_is_widened_to_the_centred_box():
    """On a white post, a template with white panels on the right (as Drake's) loses its right
    edge; posts centre their pictures, so the box is made centred."""
    inner = picture(500, 400)
    ImageDraw.Draw(inner).rectangle((260, 0, 499, 399), fill="white")
    left, top, right, bottom = content_box(screenshot(inner))
    assert abs(left - 50) <= 3 and abs(right - 550) <= 3 and abs(top - 300) <= 3 and abs(bottom - 700) <= 3
