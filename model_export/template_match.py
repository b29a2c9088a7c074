"""Pixel matching of an image against every template: how well its grey thumbnail lines up
with some window of each template.

The template head reads pooled backbone features, which lose where things are; with the
seeded random weights of offline builds they confuse a captioned meme with another template
and cannot tell a photo from a hard upload. Uploads of a template are, pixel for pixel,
mostly that template: cropped, tilted, shrunk, re-saved, with captions drawn over it. So each
template is described by grey MATCH_SIZE x MATCH_SIZE thumbnails of windows of it (crops of
60-100% of each side, anywhere, and the whole picture tilted a few degrees on white or black), and an
image scores, per template, the best normalised cross-correlation of its own thumbnail with
one of those windows. Text (light pixels beside dark ones: the white capitals with a black
outline that memes draw, and black print on white alike) is left out of the correlation: a
caption covers up to a third of a meme.

The descriptors are made once at export (numpy and Pillow; 88 templates x 237 windows x 576
values, 24 MB in float16); the scores are computed in the encoder's graph (TensorFlow), on the
same 299 x 299 image the backbone sees.
"""

from __future__ import annotations

import numpy as np

MATCH_SIZE = 24  # thumbnail side: 576 grey values per window
WINDOW_SIDES = (0.6, 0.7, 0.8, 0.9, 1.0)  # a window's width and height, as shares of the template's
WINDOW_STEP = 0.1  # between window positions, as a share of the template's side
TILTS = (-12, -8, -4, 4, 8, 12)  # degrees: the whole template turned, corners filled white, and black
# Text: a white pixel (grey > TEXT_WHITE) with a dark one (< TEXT_DARK) within 2 pixels, widened
# by 4 pixels, on an 8x finer grid than the thumbnail.
TEXT_WHITE, TEXT_DARK = 225.0, 60.0
TEXT_GRID = 8
# When text covers more than this share of an image, it is matched whole: a page of text has no
# picture under it to find.
MAX_TEXT_SHARE = 0.7
# Variances below this (per grey value, 0..1 scale) count as flat: a plain window matches nothing.
MIN_VARIANCE = 1e-4
_BASE = 256  # templates are squeezed to this square before windows are cut, as uploads are to 299


def windows() -> list[tuple[float, float, float, float]]:
    """(left, top, width, height) of every window, as shares of the template's sides."""
    out = []
    for width in WINDOW_SIDES:
        for height in WINDOW_SIDES:
            for left in _positions(width):
                for top in _positions(height):
                    out.append((left, top, width, height))
    return out


def _positions(side: float) -> np.ndarray:
    return np.linspace(0.0, 1.0 - side, int(round((1.0 - side) / WINDOW_STEP)) + 1)


def template_descriptors(images) -> np.ndarray:
    """Grey thumbnails of every window and tilt of each template: [T, V, MATCH_SIZE**2] in 0..1,
    float16 (as the encoder stores them: the export fits on the very values it serves)."""
    from PIL import Image

    cut = windows()
    out = np.empty((len(images), len(cut) + 2 * len(TILTS), MATCH_SIZE * MATCH_SIZE), np.float32)
    for t, image in enumerate(images):
        grey = image.convert("L")
        square = grey.resize((_BASE, _BASE), Image.Resampling.BILINEAR)
        views = [
            square.resize(
                (MATCH_SIZE, MATCH_SIZE),
                Image.Resampling.BILINEAR,
                box=(x * _BASE, y * _BASE, (x + w) * _BASE, (y + h) * _BASE),
            )
            for x, y, w, h in cut
        ]
        views += [
            grey.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=fill).resize(
                (MATCH_SIZE, MATCH_SIZE), Image.Resampling.BILINEAR
            )
            for fill in (255, 0)
            for angle in TILTS
        ]
        out[t] = np.stack([np.asarray(v, np.float32).reshape(-1) for v in views]) / 255.0
    return out.astype(np.float16)


def match_scores(images, descriptors):
    """float32 [N, 299, 299, 3] in 0..255 and DESCRIPTORS [T, V, D] -> [N, T]: per template, the
    best correlation (-1..1) of the image's thumbnail with one of its windows, caption text left out."""
    import tensorflow as tf

    pixels, weights = _thumbnail_and_weights(images)
    num_templates, num_windows, dim = descriptors.shape
    windows_ = tf.reshape(tf.cast(descriptors, tf.float32), [-1, dim])  # [K, D]
    total = tf.reduce_sum(weights, axis=1, keepdims=True)  # [N, 1]
    sum_u = tf.reduce_sum(weights * pixels, axis=1, keepdims=True)
    var_u = tf.reduce_sum(weights * pixels * pixels, axis=1, keepdims=True) - sum_u * sum_u / total
    sum_t = tf.matmul(weights, windows_, transpose_b=True)  # [N, K]: each window's sums under the image's weights
    var_t = tf.matmul(weights, windows_ * windows_, transpose_b=True) - sum_t * sum_t / total
    cross = tf.matmul(weights * pixels, windows_, transpose_b=True) - sum_u * sum_t / total
    floor = MIN_VARIANCE * total
    correlation = cross / tf.sqrt(tf.maximum(var_u, floor) * tf.maximum(var_t, floor))
    return tf.reduce_max(tf.reshape(correlation, [-1, num_templates, num_windows]), axis=2)


def _thumbnail_and_weights(images):
    """[N, 299, 299, 3] -> grey thumbnails [N, D] in 0..1 and their weights [N, D]: the share
    of each cell that no text covers."""
    import tensorflow as tf

    grey = tf.tensordot(images, tf.constant([0.299, 0.587, 0.114]), axes=1)[..., None]  # Pillow's "L"
    thumbnail = tf.image.resize(grey, [MATCH_SIZE, MATCH_SIZE], antialias=True) / 255.0
    fine = tf.image.resize(grey, [MATCH_SIZE * TEXT_GRID] * 2, antialias=True)
    dark_near = tf.nn.max_pool2d(tf.cast(fine < TEXT_DARK, tf.float32), 5, 1, "SAME")
    text = tf.cast(fine > TEXT_WHITE, tf.float32) * dark_near
    text = tf.nn.max_pool2d(text, 9, 1, "SAME")
    covered = tf.nn.avg_pool2d(text, TEXT_GRID, TEXT_GRID, "VALID")  # [N, S, S, 1]: share of each cell
    weights = 1.0 - covered
    mostly_text = tf.reduce_mean(covered, axis=[1, 2, 3], keepdims=True) > MAX_TEXT_SHARE
    weights = tf.where(mostly_text, tf.ones_like(weights), weights)
    n = tf.shape(images)[0]
    return tf.reshape(thumbnail, [n, -1]), tf.reshape(weights, [n, -1])
