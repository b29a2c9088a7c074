"""Which of a step's candidate tokens a row may not take.

Besides blocked words, lengths and repeated n-grams, the caption's box structure: no empty
box, no box twice in one caption, and (when the template says) only box counts that the
template's real memes use, enforced by allowing `<sep>` and `<end>` only where they fit.

`Constraints` holds one request's rules; `forbidden` and `repeated` check them for all rows of
a step at once, whatever search each row belongs to (the rules are columns of the row table).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np

from memefly.contract import END_ID, PAD_ID, SEP_ID, START_ID, UNK_ID
from memefly.decoding.rows import RowTable

ALWAYS_BLOCKED = (PAD_ID, START_ID, UNK_ID)  # never generated, whatever the request
ANY_COUNT = -1  # box_mask with every bit set


@lru_cache(maxsize=256)
def _blocked_table(vocab_size: int, blocked_ids: frozenset[int]) -> np.ndarray:
    """Interned (read-only), so requests with the same rules share one row of the rule tables."""
    blocked = np.zeros(vocab_size, dtype=bool)
    blocked[list(ALWAYS_BLOCKED)] = True
    blocked[[i for i in blocked_ids if 0 <= i < vocab_size]] = True
    blocked.flags.writeable = False
    return blocked


@lru_cache(maxsize=16)
def _every_token_a_word(vocab_size: int) -> np.ndarray:
    words = np.ones(vocab_size, dtype=bool)
    words.flags.writeable = False
    return words


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
        if not isinstance(blocked_ids, frozenset):
            blocked_ids = frozenset(int(i) for i in blocked_ids)
        self.blocked = _blocked_table(vocab_size, blocked_ids)  # a frozenset keeps its hash: cheap per request
        # An empty caption is never an answer: <end> needs at least one token before it.
        self.min_length = max(1, min_length)
        self.max_length = max_length
        self.no_repeat_ngram_size = no_repeat_ngram_size
        # The box counts a caption may end with (None: any).
        self.box_counts = frozenset(box_counts) if box_counts else None
        self.max_boxes = max(self.box_counts) if self.box_counts else None
        # Bool [V]: tokens that are words; boxes are compared by these ("Yes!" repeats "yes").
        self.word_ids = word_ids if word_ids is not None else _every_token_a_word(vocab_size)

    def set_rows(self, table: RowTable, slots: np.ndarray) -> None:
        """Write these rules into the rows' rule columns (once, when a search takes its rows)."""
        table.table[slots] = table.rules.acquire(self.blocked, self.word_ids)
        table.min_length[slots] = self.min_length
        table.max_length[slots] = self.max_length
        table.ngram[slots] = self.no_repeat_ngram_size
        if self.box_counts is None:
            table.box_mask[slots] = ANY_COUNT
            table.max_boxes[slots] = np.iinfo(np.int32).max
        else:
            table.box_mask[slots] = sum(1 << b for b in self.box_counts if 0 <= b < 63)
            table.max_boxes[slots] = self.max_boxes

    def release_rows(self, table: RowTable, slots: np.ndarray) -> None:
        table.rules.release(int(table.table[slots[0]]))

    def forbidden(self, histories: Sequence[Sequence[int]], top_ids: np.ndarray) -> np.ndarray:
        """Bool [rows, K] for given captions: `forbidden` over a table holding just them."""
        table, slots = self._rows_of(histories)
        return forbidden(table, slots, np.asarray(top_ids))

    def repeated(self, histories: Sequence[Sequence[int]], top_ids: np.ndarray) -> np.ndarray:
        table, slots = self._rows_of(histories)
        return repeated(table, slots, np.asarray(top_ids))

    def _rows_of(self, histories: Sequence[Sequence[int]]) -> tuple[RowTable, np.ndarray]:
        table = RowTable(capacity=max(1, len(histories)))
        slots = table.allocate(len(histories), np.zeros(1, np.float32), np.zeros(1, np.float32))
        table.start_rows(slots, np.zeros(1, np.float32))
        self.set_rows(table, slots)
        for column in range(max(map(len, histories), default=0)):
            growing = np.array([i for i, h in enumerate(histories) if len(h) > column], dtype=np.int64)
            table.append(slots[growing], np.array([histories[i][column] for i in growing], dtype=np.int32))
        return table, slots


def forbidden(table: RowTable, slots: np.ndarray, top_ids: np.ndarray) -> np.ndarray:
    """Bool [rows, K]: True where row `slots[i]` may not take candidate top_ids[i, k]."""
    rules = table.rules
    mask = rules.lookup(rules.blocked, table.table[slots], top_ids, outside=True)
    lengths = table.length[slots][:, None]
    is_end = top_ids == END_ID
    mask |= is_end & (lengths < table.min_length[slots][:, None])
    mask |= ~is_end & (lengths >= table.max_length[slots][:, None])  # full: only <end> may follow
    _ban_repeated_ngrams(table, slots, top_ids, mask)
    # Box structure: <sep> and <end> close the open box.
    is_sep = top_ids == SEP_ID
    closing = is_sep | is_end
    if closing.any():
        boxes = table.boxes[slots]
        bad = (table.open_len[slots] == 0) | table.open_box_repeats(slots)  # no empty box, no box twice
        mask |= bad[:, None] & np.where(lengths > 0, closing, is_sep)
        box_mask = table.box_mask[slots]
        counted = ~bad & (box_mask != ANY_COUNT)
        mask |= (counted & (boxes >= table.max_boxes[slots]))[:, None] & is_sep
        allowed = (boxes < 63) & (((box_mask >> np.minimum(boxes, 62)) & 1) == 1)
        mask |= (counted & ~allowed)[:, None] & is_end
    return mask


def _ban_repeated_ngrams(table: RowTable, slots: np.ndarray, top_ids: np.ndarray, mask: np.ndarray) -> None:
    """No n-gram twice: a candidate that would complete an n-gram already in the caption."""
    sizes = table.ngram[slots]
    for n in np.unique(sizes[sizes > 0]).tolist():
        rows = np.flatnonzero(sizes == n)
        history = table.histories_array(slots[rows])
        length = table.length[slots[rows]]
        k = n - 1
        if k == 0:  # unigrams: no token twice
            hits = (top_ids[rows][:, :, None] == history[:, None, :]).any(axis=2)
            mask[rows] |= hits
            continue
        windows = history.shape[1] - k
        if windows <= 0:
            continue
        # The last k tokens against every earlier window of k; the token after a match is banned.
        match = np.arange(windows)[None] < (length - k)[:, None]
        for t in range(k):
            last = history[np.arange(len(rows)), np.maximum(length - k + t, 0)]
            match &= history[:, t : t + windows] == last[:, None]
        row, start = np.nonzero(match)
        if row.size:
            banned = history[row, start + k]
            np.logical_or.at(mask, rows[row], top_ids[rows[row]] == banned[:, None])


def repeated(table: RowTable, slots: np.ndarray, top_ids: np.ndarray) -> np.ndarray:
    """Bool [rows, K]: candidate k is a word row i already used (for repetition_penalty)."""
    return table.has_used(slots, top_ids)
