"""The template head's training views (model_export/augment.py): seeded, and each kind looks like its upload."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from model_export.augment import KINDS, perturb


@pytest.fixture(scope="module")
def template() -> Image.Image:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)  # colour fields, like a picture
    return Image.fromarray(small).resize((400, 300), Image.BILINEAR)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_seeded_and_varies(template, kind):
    first = perturb(template, kind, random.Random("s:1"))
    again = perturb(template, kind, random.Random("s:1"))
    other = perturb(template, kind, random.Random("s:2"))
    assert first.mode == "RGB" and min(first.size) >= 16
    assert first.size == again.size and np.array_equal(np.asarray(first), np.asarray(again))
    assert first.size != other.size or not np.array_equal(np.asarray(first), np.asarray(other))


def test_captions_are_white_outlined_text_on_the_picture(template):
    view = np.asarray(perturb(template, "caption", random.Random(3)), dtype=np.int16)
    white = (view.min(axis=2) > 245).sum()
    black = (view.max(axis=2) < 15).sum()
    assert view.shape[:2] == (300, 400) and white > 100 and black > 50


def test_a_screenshot_holds_the_picture_smaller_inside_an_app_frame(template):
    for seed in range(5):
        view = perturb(template, "screenshot", random.Random(seed))
        assert view.size[1] > view.size[0]  # a phone screen, portrait
        assert view.size[1] / view.size[0] >= 1.3


def test_a_band_caption_adds_white_above_the_picture(template):
    view = perturb(template, "caption_band", random.Random(4))
    assert view.size[0] == 400 and view.size[1] > 300
    top = np.asarray(view)[:5]
    assert top.min() > 240
