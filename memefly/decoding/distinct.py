"""When two captions are the same meme, and whether a caption is a training caption.

A caption is compared by its words: lower case, punctuation dropped, box by box. The same
key is computed from a training caption's raw text (at export) and from generated tokens
(at serving), so it does not depend on how the tokenizer splits punctuation.
"""

from __future__ import annotations

import hashlib
import itertools
import operator
import re
from collections.abc import Iterable, Sequence

import numpy as np

_WORD = re.compile(r"[^\W_]+")


def box_words(box: str) -> tuple[str, ...]:
    """ "Don't  STOP, me!" -> ("don", "t", "stop", "me")."""
    return tuple(_WORD.findall(box.lower()))


def caption_words(boxes: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """Words per box, empty boxes dropped (a trailing separator makes no other meme)."""
    return tuple(words for words in map(box_words, boxes) if words)


def near_duplicate(a: Sequence[Sequence[str]], b: Sequence[Sequence[str]]) -> bool:
    """a, b: caption_words. The same meme told twice: the same words (box breaks aside), or, with
    two or more boxes each, as many boxes and all of them but one identical."""
    return all_words(a) == all_words(b) or _one_box_apart(a, b)


def _one_box_apart(a: Sequence[Sequence[str]], b: Sequence[Sequence[str]]) -> bool:
    return len(a) == len(b) >= 2 and sum(map(operator.ne, a, b)) <= 1


def all_words(words: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """caption_words without the box breaks."""
    return tuple(itertools.chain.from_iterable(words))


class DistinctCaptions:
    """Captions of which no two are near-duplicates (`near_duplicate`), grown one at a time: a
    search keeps its distinct results here. The same words are a set lookup, and only captions
    with as many boxes are compared box by box."""

    def __init__(self) -> None:
        self._words: set[tuple[str, ...]] = set()
        self._by_boxes: dict[int, list[Sequence[Sequence[str]]]] = {}

    def add(self, caption: Sequence[Sequence[str]]) -> bool:
        """Keeps CAPTION (caption_words) and says True, unless it is a near-duplicate of one kept."""
        flat = all_words(caption)
        same_boxes = self._by_boxes.setdefault(len(caption), [])
        if flat in self._words or any(_one_box_apart(caption, other) for other in same_boxes):
            return False
        self._words.add(flat)
        same_boxes.append(caption)
        return True


def repeats_a_box(boxes: Sequence[str]) -> bool:
    words = caption_words(boxes)
    return len(set(words)) < len(words)


def fingerprint(boxes: Sequence[str]) -> int:
    """A 64-bit hash of the caption's words, as a signed int64 (what the fingerprint set stores)."""
    return words_fingerprint(caption_words(boxes))


def words_fingerprint(words: Sequence[Sequence[str]]) -> int:
    """fingerprint of a caption given by its caption_words."""
    key = "\x1f".join(" ".join(box) for box in words).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little", signed=True)


class CaptionSet:
    """A sorted array of caption fingerprints; membership by binary search (a few MB for 300k captions)."""

    def __init__(self, fingerprints: Iterable[int] | np.ndarray = ()):
        self.fingerprints = np.unique(
            np.asarray(list(fingerprints) if not isinstance(fingerprints, np.ndarray) else fingerprints, dtype=np.int64)
        )

    @classmethod
    def of_captions(cls, captions: Iterable[Sequence[str]]) -> CaptionSet:
        return cls(np.fromiter((fingerprint(boxes) for boxes in captions), dtype=np.int64))

    def __len__(self) -> int:
        return int(self.fingerprints.size)

    def __contains__(self, boxes: Sequence[str]) -> bool:
        return self.contains_words(caption_words(boxes))

    def contains_words(self, words: Sequence[Sequence[str]]) -> bool:
        """Membership of a caption given by its caption_words."""
        if not self.fingerprints.size:
            return False
        value = words_fingerprint(words)
        i = int(np.searchsorted(self.fingerprints, value))
        return i < self.fingerprints.size and int(self.fingerprints[i]) == value
