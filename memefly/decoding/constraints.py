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

from memefly.contract import PAD_ID, START_ID, UNK_ID
from memefly.decoding import kernels
from memefly.decoding.kernels import ANY_COUNT
from memefly.decoding.rows import RowTable

ALWAYS_BLOCKED = (PAD_ID, START_ID, UNK_ID)  # never generated, whatever the request


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
        # As the row table's columns have them: bit b set where a caption may end with b boxes.
        self._box_mask = ANY_COUNT if self.box_counts is None else sum(1 << b for b in self.box_counts if 0 <= b < 63)
        self._max_boxes = np.iinfo(np.int32).max if self.max_boxes is None else self.max_boxes
        # Bool [V]: tokens that are words; boxes are compared by these ("Yes!" repeats "yes").
        self.word_ids = word_ids if word_ids is not None else _every_token_a_word(vocab_size)

    def set_rows(self, table: RowTable, slots: np.ndarray | slice) -> None:
        """Write these rules into the rows' rule columns (once, when a search takes its rows)."""
        table.table[slots] = table.rules.acquire(self.blocked, self.word_ids)
        table.min_length[slots] = self.min_length
        table.max_length[slots] = self.max_length
        table.ngram[slots] = self.no_repeat_ngram_size
        table.box_mask[slots] = self._box_mask
        table.max_boxes[slots] = self._max_boxes

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
    return kernels.forbidden_mask(
        slots, np.asarray(top_ids), table.table, table.length, table.min_length, table.max_length,
        table.ngram, table.history, table.boxes, table.open_len, table.open_hash, table.closed_hash,
        table.closed_len, table.box_mask, table.max_boxes, table.rules.blocked, table.rules.words,
    )  # fmt: skip


def repeated(table: RowTable, slots: np.ndarray, top_ids: np.ndarray) -> np.ndarray:
    """Bool [rows, K]: candidate k is a word row i already used (for repetition_penalty)."""
    return table.has_used(slots, top_ids)
