"""The meme font: bold condensed, from a package, never a file copied into the repository.

Looked up in this order:
1. $MEMEFLY_FONT, a TrueType/OpenType file of your choice;
2. Roboto Condensed Bold from the Debian package `fonts-roboto-unhinted` (Apache-2.0),
   installed by the Dockerfile and `.ci/run`;
3. Pillow's built-in scalable font (Aileron Regular), so rendering works on any machine,
   only less meme-like; a warning says so once.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from PIL import ImageFont

log = logging.getLogger(__name__)

DEBIAN_FONT = Path("/usr/share/fonts/truetype/roboto/unhinted/RobotoCondensed-Bold.ttf")
DEBIAN_PACKAGE = "fonts-roboto-unhinted"


def font_file() -> Path | None:
    """The font file to use, or None for Pillow's built-in font."""
    chosen = os.environ.get("MEMEFLY_FONT")
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"MEMEFLY_FONT={chosen}: no such file")
        return path
    if DEBIAN_FONT.is_file():
        return DEBIAN_FONT
    log.warning(
        "the meme font is missing (apt-get install %s, or set MEMEFLY_FONT): drawing with Pillow's built-in font",
        DEBIAN_PACKAGE,
    )
    return None


class MemeFont:
    """One typeface at any pixel size; sizes are cached (fitting tries several)."""

    def __init__(self, path: Path | None):
        self.path = path
        # A cache per font (lru_cache on the method would be one for all, keeping fonts alive).
        self.at = functools.lru_cache(maxsize=256)(self._load)
        self.name = " ".join(part for part in self.at(16).getname() if part is not None)  # family, style

    def _load(self, size: int) -> ImageFont.FreeTypeFont:
        if self.path is None:
            font = ImageFont.load_default(size)
            assert isinstance(font, ImageFont.FreeTypeFont)  # with a size, always the scalable one
            return font
        return ImageFont.truetype(str(self.path), size)
