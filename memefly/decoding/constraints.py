"""Which of a step's candidate tokens a row may not take.

Besides blocked words, lengths and repeated n-grams, the caption's box structure: no empty
box, no box twice in one caption, and (when the template says) only box counts that the
template's real memes use, enforced by allowing `<sep>` and `<end>` only where they fit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from memefly.contract import END_ID, PAD_ID, SEP_ID, START_ID, UNK_ID
from memefly.ngrams import repeated_ngram_bans

ALWAYS_BLOCKED = (PAD_ID, START_ID, UNK_ID)  # never generated, whatever the request
_NO_TOKEN = np.iinfo(np.int64).min  # pads histories: equal to no candidate id


class Constraints:
    def __init__(
        self,
        vocab_size: int,
        blocked_ids: Iterable[int] = (),
        *,
        min_length: int = 1,
        max_length: int = 64,
        no_repeat_ngram_size: int = 0,
        box_counts: Iterable[int] | None = None,
        word_ids: np.ndarray | None = None,
    ):
        self.blocked = np.zeros(vocab_size, dtype=bool)
        self.blocked[list(ALWAYS_BLOCKED)] = True
        self.blocked[[i for i in blocked_ids if 0 <= i < vocab_size]] = True
        # An empty caption is never an answer: <end> needs at least one token before it.
        self.min_length = max(1, min_length)
        self.max_length = max_length
        self.no_repeat_ngram_size = no_repeat_ngram_size
        # The box counts a caption may end with (None: any).
        self.box_counts = frozenset(box_counts) if box_counts else None
        self.max_boxes = max(self.box_counts) if self.box_counts else None
        # Bool [V]: tokens that are words; boxes are compared by these ("Yes!" repeats "yes").
        self.word_ids = word_ids

    def forbidden(self, histories: Sequence[Sequence[int]], top_ids: np.ndarray) -> np.ndarray:
        """Bool [rows, K]: True where row i may not take candidate top_ids[i, k]."""
        in_vocab = (top_ids >= 0) & (top_ids < self.blocked.size)
        mask = ~in_vocab | self.blocked[np.where(in_vocab, top_ids, 0)]
        lengths = np.fromiter(map(len, histories), dtype=np.int64, count=len(histories))[:, None]
        is_end = top_ids == END_ID
        mask |= is_end & (lengths < self.min_length)
        mask |= ~is_end & (lengths >= self.max_length)  # full: only <end> may follow
        if self.no_repeat_ngram_size:
            for i, history in enumerate(histories):
                for token in set(repeated_ngram_bans(history, self.no_repeat_ngram_size)):
                    mask[i] |= top_ids[i] == token  # a few bans at most: cheaper than np.isin
        is_sep = top_ids == SEP_ID
        closing = is_sep | is_end
        for i, any_closing in enumerate(closing.any(axis=1).tolist()):
            if not any_closing:
                continue
            history = histories[i]
            boxes, empty, repeated = self._boxes(history)
            if empty or repeated:  # the open box may not close: no empty box, no box twice
                mask[i] |= closing[i] if history else is_sep[i]
                continue
            if self.box_counts is not None:
                if boxes >= self.max_boxes:
                    mask[i] |= is_sep[i]
                if boxes not in self.box_counts:
                    mask[i] |= is_end[i]
        return mask

    def repeated(self, histories: Sequence[Sequence[int]], top_ids: np.ndarray) -> np.ndarray:
        """Bool [rows, K]: candidate k is a word row i already used (for repetition_penalty).
        One comparison of every candidate with every earlier word, for all rows at once."""
        longest = max(map(len, histories), default=0)
        if not longest:
            return np.zeros(top_ids.shape, dtype=bool)
        used = np.full((len(histories), longest), _NO_TOKEN, dtype=np.int64)
        for i, history in enumerate(histories):
            used[i, : len(history)] = history
        counts = used != SEP_ID
        if self.word_ids is not None:
            in_vocab = (used >= 0) & (used < self.word_ids.size)
            counts &= in_vocab & self.word_ids[np.where(in_vocab, used, 0)]
        used[~counts] = _NO_TOKEN
        return (top_ids[:, :, None] == used[:, None, :]).any(axis=2)

    def _boxes(self, history: Sequence[int]) -> tuple[int, bool, bool]:
        """(boxes so far, the open one included; is the open box empty; does it repeat a closed box)."""
        boxes: list[tuple[int, ...]] = [()]
        for token in history:
            if token == SEP_ID:
                boxes.append(())
            elif self.word_ids is None or (0 <= token < self.word_ids.size and self.word_ids[token]):
                boxes[-1] += (token,)
        open_box = boxes[-1]
        empty = not open_box
        return len(boxes), empty, not empty and open_box in boxes[:-1]
