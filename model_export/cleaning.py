"""Caption cleaning. Every step counts what it changed or dropped, so a report explains the data.

Steps, in order: unicode normalisation, whitespace, empty boxes, over-long captions, exact
duplicates per template, non-English captions (dropped), offensive words (flagged, kept).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from model_export.datasets import Caption

# Over-long: longer than 99.9% of ImgFlip575K captions; such rows are mostly pasted essays.
MAX_BOX_CHARS = 160
MAX_CAPTION_CHARS = 280
MAX_BOXES = 10

# Language ID on short meme text is noisy (all-caps slang looks like anything), so a caption is
# called non-English only when py3langid, restricted to widely used languages, is confident and
# the caption has a few words. Measured on 3.9k ImgFlip captions: 12 flagged, all truly foreign.
LANGUAGES = "en es pt fr de it nl ru tr id tl pl ar hi zh ja ko sv ro vi uk el he th".split()
MIN_LANGUAGE_CONFIDENCE = 0.95
MIN_WORDS_FOR_LANGUAGE = 3

_INVISIBLE = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f\u200b-\u200f\u2060\ufeff]")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class CleanCaption:
    id: str
    template: str
    boxes: tuple[str, ...]
    offensive: bool


@dataclass
class CleaningReport:
    input: int = 0
    changed: Counter = field(default_factory=Counter)  # step -> captions altered
    dropped: Counter = field(default_factory=Counter)  # step -> captions removed
    flagged_offensive: int = 0
    output: int = 0

    def as_dict(self) -> dict:
        return {
            "input": self.input,
            "changed": dict(self.changed),
            "dropped": dict(self.dropped),
            "flagged_offensive": self.flagged_offensive,
            "output": self.output,
        }


def normalize_unicode(text: str) -> str:
    """NFKC (full-width letters, ligatures, styled 𝐛𝐨𝐥𝐝 letters become plain) minus invisible chars."""
    return _INVISIBLE.sub("", unicodedata.normalize("NFKC", text))


def normalize_whitespace(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def drop_trailing_empty(boxes: tuple[str, ...]) -> tuple[str, ...]:
    """Trailing empty boxes carry nothing; inner ones keep the position of the text after them."""
    end = len(boxes)
    while end and not boxes[end - 1]:
        end -= 1
    return boxes[:end]


def is_over_long(boxes: tuple[str, ...]) -> bool:
    return (
        len(boxes) > MAX_BOXES
        or any(len(b) > MAX_BOX_CHARS for b in boxes)
        or sum(len(b) for b in boxes) > MAX_CAPTION_CHARS
    )


class LanguageFilter:
    def __init__(self):
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        self._identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        self._identifier.set_languages(list(LANGUAGES))

    def is_non_english(self, boxes: tuple[str, ...]) -> bool:
        text = " ".join(boxes)
        if len(text.split()) < MIN_WORDS_FOR_LANGUAGE:
            return False
        language, confidence = self._identifier.classify(text.lower())
        return language != "en" and confidence > MIN_LANGUAGE_CONFIDENCE


def is_offensive(text: str) -> bool:
    import pyobscenity

    return pyobscenity.check(text)


def _offensive_flags(texts: list[str], progress: bool) -> list[bool]:
    """pyobscenity checks ~2.7k captions/s on one core; use both cores for big inputs."""
    from tqdm import tqdm

    if len(texts) < 20_000:
        return [is_offensive(t) for t in tqdm(texts, desc="offensive words", disable=not progress)]
    from multiprocessing import get_context

    with get_context("spawn").Pool(2) as pool:
        return list(
            tqdm(
                pool.imap(is_offensive, texts, chunksize=512),
                total=len(texts),
                desc="offensive words",
                disable=not progress,
            )
        )


def clean(captions: list[Caption], progress: bool = False) -> tuple[list[CleanCaption], CleaningReport]:
    report = CleaningReport(input=len(captions))
    language = LanguageFilter()
    seen: set[tuple] = set()
    kept: list[tuple[Caption, tuple[str, ...]]] = []
    for caption in captions:
        boxes = tuple(normalize_unicode(b) for b in caption.boxes)
        report.changed["unicode normalised"] += boxes != caption.boxes
        spaced = tuple(normalize_whitespace(b) for b in boxes)
        report.changed["whitespace normalised"] += spaced != boxes
        boxes = drop_trailing_empty(spaced)
        report.changed["trailing empty boxes removed"] += 0 < len(boxes) < len(spaced)
        if not boxes:
            report.dropped["no text"] += 1
            continue
        if is_over_long(boxes):
            report.dropped["over-long"] += 1
            continue
        key = (caption.template, tuple(b.casefold() for b in boxes))
        if key in seen:
            report.dropped["duplicate within template"] += 1
            continue
        seen.add(key)
        if language.is_non_english(boxes):
            report.dropped["non-English"] += 1
            continue
        kept.append((caption, boxes))

    flags = _offensive_flags([" \n ".join(boxes) for _, boxes in kept], progress)
    out = [CleanCaption(c.id, c.template, boxes, flag) for (c, boxes), flag in zip(kept, flags, strict=True)]
    report.flagged_offensive = sum(flags)
    report.output = len(out)
    return out, report
