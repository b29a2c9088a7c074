"""Caption text drawn the classic meme way: white, black outline, word-wrapped and sized down
until it fits its box. Positions come from the glyphs' real ink bounds, so no text is ever
cut off or drawn outside its box (and so outside the image).

A word is broken between characters only when no legible size fits it whole. On a light,
plain panel (Drake's, or any blank box measured so) the text is dark with a light outline,
as people draw it there."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from PIL import Image, ImageDraw, ImageFont

from gateway.rendering.fonts import MemeFont
from gateway.rendering.layout import Box

FILL = (255, 255, 255)
OUTLINE = (0, 0, 0)
# (fill, outline) per style: "light" text for photos and dark panels, "dark" for light plain panels.
STYLES = {"light": (FILL, OUTLINE), "dark": (OUTLINE, FILL)}
STROKE_RATIO = 0.08  # outline width per pixel of font size
LARGEST_RATIO = 0.11  # the largest letters: this share of the image's shorter side
SMALLEST = 8  # below this (pixels) text is tried only when nothing larger fits
LEGIBLE_RATIO = 0.035  # whole words down to this share of the image's shorter side (or SMALLEST)
# A panel counts as light and plain when its pixels are this bright on average (0-255) and
# vary this little (standard deviation): a blank white panel, not a bright photo.
LIGHT_PANEL_MEAN = 200
PLAIN_PANEL_STD = 45


@dataclass(frozen=True)
class FittedText:
    size: int
    stroke: int
    lines: list[str]
    # Where each line's anchor goes (left, ascender), relative to the box's top-left corner.
    origins: list[tuple[int, int]]
    ink: tuple[int, int, int, int]  # the drawn pixels' bounds, relative to the box


def clean(text: str, case: str = "upper") -> str:
    """One line of printable text: control characters and lone surrogates out, whitespace
    collapsed. Format characters stay: the zero-width joiner holds emoji sequences together."""
    kept = "".join(" " if unicodedata.category(ch) in ("Cc", "Cs") else ch for ch in text)
    kept = " ".join(kept.split())
    return kept.upper() if case == "upper" else kept


def stroke_for(size: int) -> int:
    return max(1, round(size * STROKE_RATIO))


def _wrap(
    text: str, font: ImageFont.FreeTypeFont, stroke: int, max_width: int, break_words: bool = True
) -> list[str] | None:
    """Greedy word wrap; a word wider than the box is broken between characters (or, without
    break_words, makes the wrap fail: None)."""

    def fits(line: str) -> bool:
        return font.getlength(line) + 2 * stroke <= max_width

    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if fits(candidate):
            current = candidate
            continue
        if current:
            lines.append(current)
        current = ""
        if not break_words and not fits(word):
            return None
        while word and not fits(word):
            cut = _longest_fitting_prefix(word, fits)
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    return lines


def _longest_fitting_prefix(word: str, fits: Callable[[str], bool]) -> int:
    """How many characters of `word` fit on a line (at least 1): a binary search, so a
    500-character word costs 9 measurements, not 500."""
    low, high = 1, len(word)
    while low < high:
        middle = (low + high + 1) // 2
        if fits(word[:middle]):
            low = middle
        else:
            high = middle - 1
    return low


def _layout_lines(
    lines: list[str], font: ImageFont.FreeTypeFont, stroke: int
) -> tuple[list[tuple[int, int]], tuple[int, int, int, int]]:
    """Each line centred on x = 0, lines stacked from y = 0; returns origins and the ink bounds."""
    ascent, descent = font.getmetrics()
    step = ascent + descent + stroke  # outlines of neighbouring lines may touch, not overlap letters
    origins, left, top, right, bottom = [], 0, 0, 0, 0
    for i, line in enumerate(lines):
        # Whole pixels: Pillow's bounds are floats only for a fractional stroke width.
        x0, y0, x1, y1 = cast(tuple[int, int, int, int], font.getbbox(line, stroke_width=stroke, anchor="la"))
        x, y = -(x0 + x1) // 2, i * step
        origins.append((x, y))
        if i == 0:
            left, top, right, bottom = x + x0, y + y0, x + x1, y + y1
        else:
            left, top = min(left, x + x0), min(top, y + y0)
            right, bottom = max(right, x + x1), max(bottom, y + y1)
    return origins, (left, top, right, bottom)


def fit(text: str, font: MemeFont, width: int, height: int, largest: int, legible: int = SMALLEST) -> FittedText | None:
    """The largest size (at most `largest` px) at which the wrapped text fits width x height,
    with whole words when that size is at least `legible` px, else with words broken; None
    when even 1 px text does not fit (a box a few pixels wide)."""
    whole = _largest(text, font, width, height, largest, break_words=False)
    if whole is not None and whole.size >= min(legible, largest):
        return whole
    return _largest(text, font, width, height, largest, break_words=True)


def _largest(text: str, font: MemeFont, width: int, height: int, largest: int, break_words: bool) -> FittedText | None:
    def attempt(size: int) -> FittedText | None:
        face, stroke = font.at(size), stroke_for(size)
        lines = _wrap(text, face, stroke, width, break_words)
        if lines is None:
            return None
        origins, (left, top, right, bottom) = _layout_lines(lines, face, stroke)
        if right - left > width or bottom - top > height:
            return None
        # Shift so the ink starts at the box's top-left, centred across the box's width.
        dx, dy = (width - (right - left)) // 2 - left, -top
        return FittedText(
            size, stroke, lines, [(x + dx, y + dy) for x, y in origins], (left + dx, top + dy, right + dx, bottom + dy)
        )

    if not text or width < 1 or height < 1:
        return None
    best = None
    low, high = 1, max(1, largest)
    start = min(high, SMALLEST)
    if (found := attempt(start)) is not None:  # the usual case: search the larger sizes
        best, low = found, start + 1
    else:
        high = start - 1
    while low <= high:
        middle = (low + high) // 2
        found = attempt(middle)
        if found is not None:
            best, low = found, middle + 1
        else:
            high = middle - 1
    return best


def draw_captions(
    image: Image.Image, texts: list[str], boxes: list[Box], case: str = "upper", *, font: MemeFont
) -> Image.Image:
    """Draws texts[i] into boxes[i] on an RGB image, in place; returns it."""
    width, height = image.size
    largest = max(SMALLEST, round(LARGEST_RATIO * min(width, height)))
    legible = max(SMALLEST, round(LEGIBLE_RATIO * min(width, height)))
    canvas = ImageDraw.Draw(image)
    for text, box in zip(texts, boxes, strict=False):
        left, top, right, bottom = box.pixels(width, height)
        fitted = fit(clean(text, case), font, right - left, bottom - top, largest, legible)
        if fitted is None:
            continue
        fill, outline = STYLES[box.style or panel_style(image, (left, top, right, bottom))]
        ink_height = fitted.ink[3] - fitted.ink[1]
        room = (bottom - top) - ink_height
        shift = {"top": 0, "middle": room // 2, "bottom": room}[box.valign]
        face = font.at(fitted.size)
        for line, (x, y) in zip(fitted.lines, fitted.origins, strict=True):
            canvas.text(
                (left + x, top + y + shift),
                line,
                font=face,
                fill=fill,
                anchor="la",
                stroke_width=fitted.stroke,
                stroke_fill=outline,
            )
    return image


def panel_style(image: Image.Image, pixels: tuple[int, int, int, int]) -> str:
    """ "dark" when the box lies on a light, plain panel (measured before any text is drawn), else "light"."""
    from PIL import ImageStat

    region = image.crop(pixels).convert("L")
    if region.width < 1 or region.height < 1:
        return "light"
    stat = ImageStat.Stat(region)
    return "dark" if stat.mean[0] >= LIGHT_PANEL_MEAN and stat.stddev[0] <= PLAIN_PANEL_STD else "light"
