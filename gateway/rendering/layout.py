"""Where each caption box goes on the image, as fractions of its width and height.

One box goes at the top, two at the top and bottom, more are spread evenly down the image.
Multi-panel templates declare their own boxes in layouts.json (our own measurements on the
ImgFlip575K template images).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from gateway.engine.template_names import template_key

# A recognised template lends its layout to an uploaded image only when the encoder is this sure.
LAYOUT_MIN_PROBABILITY = 0.5
MARGIN = 0.02  # of the width (sides) and height (top, bottom)
EDGE_BOX_HEIGHT = 0.25  # top and bottom boxes: a quarter of the image each


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    width: float
    height: float
    valign: str = "middle"  # top | middle | bottom: where the text sits inside the box
    # light: white text, black outline; dark: the reverse (light panels). None: measured from the image.
    style: str | None = None

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in pixels, inside the image."""
        left, top = round(self.x * width), round(self.y * height)
        right, bottom = round((self.x + self.width) * width), round((self.y + self.height) * height)
        return max(0, left), max(0, top), min(width, right), min(height, bottom)


def layout_for(named: str | None, guesses: list[tuple[str, float]]) -> str | None:
    """Whose boxes to draw in: the template named, else the likeliest guess if likely enough."""
    if named:
        return named
    if guesses and guesses[0][1] >= LAYOUT_MIN_PROBABILITY:
        return guesses[0][0]
    return None


def default_layout(count: int) -> list[Box]:
    inner = 1 - 2 * MARGIN
    if count <= 0:
        return []
    top = Box(MARGIN, MARGIN, inner, EDGE_BOX_HEIGHT, "top")
    if count == 1:
        return [top]
    bottom = Box(MARGIN, 1 - MARGIN - EDGE_BOX_HEIGHT, inner, EDGE_BOX_HEIGHT, "bottom")
    if count == 2:
        return [top, bottom]
    band = inner / count
    return [
        Box(MARGIN, MARGIN + i * band, inner, band, "top" if i == 0 else "bottom" if i == count - 1 else "middle")
        for i in range(count)
    ]


class Layouts:
    """The shipped template layouts, by template name (any spelling template_key folds together)."""

    def __init__(self, layouts: dict[str, list[Box]]):
        self._by_key = {template_key(name): boxes for name, boxes in layouts.items()}
        # Part of every render's ETag: edited layouts make new images, not stale cache hits.
        described = sorted((key, [vars(box) for box in boxes]) for key, boxes in self._by_key.items())
        self.fingerprint = hashlib.sha256(json.dumps(described).encode()).hexdigest()[:16]

    @classmethod
    def shipped(cls) -> Layouts:
        text = resources.files("gateway.rendering").joinpath("layouts.json").read_text(encoding="utf-8")
        return cls.parse(json.loads(text))

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Layouts:
        layouts = {}
        for name, entry in data["templates"].items():
            boxes = [Box(**box) for box in entry["boxes"]]
            for box in boxes:
                if not (
                    0 <= box.x < 1
                    and 0 <= box.y < 1
                    and 0 < box.width <= 1 - box.x + 1e-9
                    and 0 < box.height <= 1 - box.y + 1e-9
                    and box.valign in ("top", "middle", "bottom")
                    and box.style in (None, "light", "dark")
                ):
                    raise ValueError(f"layouts.json: {name}: box {box} is not inside the image")
            layouts[name] = boxes
        return cls(layouts)

    def names(self) -> list[str]:
        return list(self._by_key)

    def panels(self, template: str) -> int | None:
        """The panel count of TEMPLATE's multi-panel layout (any spelling): its captions have one
        box per panel. None for a template without one."""
        boxes = self._by_key.get(template_key(template), ())
        return len(boxes) if len(boxes) >= 2 else None

    def for_caption(self, template: str | None, count: int) -> list[Box]:
        """Boxes for `count` caption boxes: the template's own when it declares enough of them
        (a caption may use fewer), else the default layout."""
        declared = self._by_key.get(template_key(template)) if template else None
        if declared and count <= len(declared):
            return declared[:count]
        return default_layout(count)
