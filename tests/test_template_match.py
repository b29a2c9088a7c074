"""The pixel match of model_export/template_match.py: templates found under crops, tilts and
captions, caption text left out, flat images matching nothing."""

import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

from memefly import contract as c
from model_export import template_match as tm
from model_export.augment import text_font


def _template(seed: int, size=(320, 240)) -> Image.Image:
    """A picture with shapes at seeded places: unlike any other seed's, and never flat."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randint(0, 255) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(14):
        x, y = rng.randint(-40, size[0]), rng.randint(-40, size[1])
        w, h = rng.randint(30, 140), rng.randint(30, 140)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x, y, x + w, y + h), fill=tuple(rng.randint(0, 255) for _ in range(3)))
    return image


@pytest.fixture(scope="module")
def templates():
    return [_template(seed) for seed in range(6)]


@pytest.fixture(scope="module")
def descriptors(templates):
    return tm.template_descriptors(templates)


def _scores(descriptors, images) -> np.ndarray:
    pixels = np.stack(
        [np.asarray(i.convert("RGB").resize((c.IMAGE_SIZE, c.IMAGE_SIZE), Image.BILINEAR)) for i in images]
    )
    return tm.match_scores(pixels.astype(np.float32), descriptors).numpy()


def _captioned(image: Image.Image) -> Image.Image:
    """White capitals with a black outline across the top and bottom, as memes draw them."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    font = text_font(out.height // 8)
    for y in (4, out.height - out.height // 8 - 12):
        draw.text((8, y), "WHEN THE CODE WORKS", font=font, fill="white", stroke_width=3, stroke_fill="black")
    return out


def test_descriptors_cover_every_window_and_tilt_in_float16(descriptors, templates):
    assert descriptors.shape == (len(templates), len(tm.windows()) + 2 * len(tm.TILTS), tm.MATCH_SIZE**2)
    assert descriptors.dtype == np.float16
    assert 0.0 <= descriptors.min() and descriptors.max() <= 1.0
    # windows span 60-100% of each side and reach every edge
    sides = {(w, h) for _, _, w, h in tm.windows()}
    assert (1.0, 1.0) in sides and (0.6, 0.6) in sides
    assert max(x + w for x, _, w, _ in tm.windows()) == pytest.approx(1.0)


def test_each_template_matches_itself_best_and_nearly_perfectly(descriptors, templates):
    scores = _scores(descriptors, templates)
    assert scores.shape == (len(templates), len(templates))
    assert list(scores.argmax(axis=1)) == list(range(len(templates)))
    assert np.diag(scores).min() > 0.97
    assert np.all(scores <= 1.0 + 1e-5)


def test_crops_tilts_and_captions_still_find_their_template(descriptors, templates):
    rng = random.Random(7)
    uploads, labels = [], []
    for index, image in enumerate(templates):
        w, h = image.size
        cw, ch = int(w * rng.uniform(0.62, 0.9)), int(h * rng.uniform(0.62, 0.9))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        uploads += [
            image.crop((x, y, x + cw, y + ch)),
            image.convert("L").rotate(rng.choice([-10, 6]), expand=True, fillcolor=255, resample=Image.BILINEAR),
            _captioned(image),
        ]
        labels += [index] * 3
    scores = _scores(descriptors, uploads)
    assert list(scores.argmax(axis=1)) == labels
    assert scores.max(axis=1).min() > 0.8


def test_caption_text_is_left_out_of_the_correlation(descriptors, templates):
    captioned = _captioned(templates[0])
    pixels = np.asarray(captioned.resize((c.IMAGE_SIZE, c.IMAGE_SIZE)), np.float32)[None]
    _, weights = tm._thumbnail_and_weights(pixels)
    rows = weights.numpy().reshape(tm.MATCH_SIZE, tm.MATCH_SIZE).mean(axis=1)
    assert rows[1:3].max() < 0.2 and rows[20:23].max() < 0.2  # the caption lines
    assert rows[5:19].min() == 1.0  # the picture between them
    # an image that is mostly text is matched whole: there is no picture under it to find
    page = Image.new("RGB", (299, 299), "white")
    draw = ImageDraw.Draw(page)
    for y in range(0, 299, 14):
        draw.text((2, y), "MEETING NOTES AGENDA TODAY PLEASE SEE ATTACHED", font=text_font(13), fill="black")
    _, page_weights = tm._thumbnail_and_weights(np.asarray(page, np.float32)[None])
    assert page_weights.numpy().min() == 1.0


def test_the_score_is_the_weighted_pearson_correlation_with_the_best_window(descriptors, templates):
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (2, c.IMAGE_SIZE, c.IMAGE_SIZE, 3)).astype(np.float32)
    pixels[1] = np.asarray(_captioned(templates[2]).resize((c.IMAGE_SIZE, c.IMAGE_SIZE)), np.float32)
    thumbnails, weights = (t.numpy().astype(np.float64) for t in tm._thumbnail_and_weights(pixels))
    assert weights[0].min() == 1.0 and weights[1].min() < 0.5  # noise has no caption; the meme has
    windows = descriptors.astype(np.float64)
    for i in range(2):
        u, w = thumbnails[i], weights[i]
        expected = np.empty(windows.shape[:2])
        for t in range(windows.shape[0]):
            for v in range(windows.shape[1]):
                x = windows[t, v]
                mu, mx = np.average(u, weights=w), np.average(x, weights=w)
                cov = np.average((u - mu) * (x - mx), weights=w)
                expected[t, v] = cov / np.sqrt(
                    np.average((u - mu) ** 2, weights=w) * np.average((x - mx) ** 2, weights=w)
                )
        if i == 0:  # all weights 1: numpy's own Pearson correlation
            assert np.allclose(expected[1, 3], np.corrcoef(u, windows[1, 3])[0, 1])
        assert np.allclose(tm.match_scores(pixels[i : i + 1], descriptors).numpy()[0], expected.max(axis=1), atol=2e-4)


def test_a_caption_band_and_a_tilt_on_black_still_find_their_template(descriptors, templates):
    banded = []
    for image in templates:
        band = Image.new("RGB", (image.width, image.height + image.height // 4), "white")
        band.paste(image, (0, image.height // 4))
        ImageDraw.Draw(band).text((6, 4), "ME WHEN THE TEST IS EASY", font=text_font(image.height // 10), fill="black")
        banded.append(band)
    tilted = [image.convert("L").rotate(9, expand=True, fillcolor=0, resample=Image.BILINEAR) for image in templates]
    assert list(_scores(descriptors, banded).argmax(axis=1)) == list(range(len(templates)))
    assert list(_scores(descriptors, tilted).argmax(axis=1)) == list(range(len(templates)))


def test_a_flat_image_matches_nothing_and_gives_no_nan(descriptors):
    flat = [Image.new("RGB", (200, 200), colour) for colour in ("white", "black", (120, 30, 200))]
    scores = _scores(descriptors, flat)
    assert np.all(np.isfinite(scores))
    assert np.abs(scores).max() < 0.2


def test_other_pictures_score_below_the_templates_own_views(descriptors, templates):
    others = [_template(seed) for seed in range(100, 110)]
    assert _scores(descriptors, others).max(axis=1).max() < _scores(descriptors, templates).max(axis=1).min()


def test_the_encoder_graph_fuses_the_match_as_the_numpy_head_does(descriptors, templates):
    """EncoderServing's template_probs (TensorFlow) against TemplateHead.probs (numpy) with a
    pixel-match weight: the export fits and chooses with the one, users get the other."""
    import keras
    import tensorflow as tf

    from model_export.encoder import EncoderServing
    from model_export.template_head import TemplateHead

    keras.utils.set_random_seed(0)
    inputs = keras.Input((c.IMAGE_SIZE, c.IMAGE_SIZE, 3))
    backbone = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 5, strides=4)(inputs)))
    rng = np.random.default_rng(1)
    count = len(templates)
    head = TemplateHead(
        rng.normal(size=8),
        rng.uniform(0.5, 2.0, 8),
        0.1 * rng.normal(size=(8, count)),
        0.1 * rng.normal(size=count),
        0.3,
        match_weight=4.0,
    )
    encoder = EncoderServing(backbone, head, descriptors, {"key": "value"})
    pixels = np.stack([np.asarray(i.resize((c.IMAGE_SIZE, c.IMAGE_SIZE))) for i in templates]).astype(np.uint8)
    served = encoder.serve_pixels(tf.constant(pixels))[c.TEMPLATE_PROBS].numpy()
    features = backbone(pixels.astype(np.float32) / 127.5 - 1.0).numpy().astype(np.float64)
    match = tm.match_scores(pixels.astype(np.float32), descriptors).numpy().astype(np.float64)
    assert np.allclose(served, head.probs(features, match), atol=1e-5)
    assert list(served.argmax(axis=1)) == list(range(count))  # the pixels decide here
    head.match_weight = 0.0  # the features alone: another answer
    assert not np.allclose(served, head.probs(features), atol=1e-2)
