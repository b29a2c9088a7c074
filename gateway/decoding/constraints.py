"""Which of a step's candidate tokens a row may not take."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from memefly.contract import END_ID, PAD_ID, START_ID, UNK_ID
from memefly.ngrams import repeated_ngram_bans

ALWAYS_BLOCKED = (PAD_ID, START_ID, UNK_ID)  # never generated, whatever the request


class Constraints:
    def __init__(self, vocab_size: int, blocked_ids: Iterable[int] = (), *, min_length: int = 1,
                 max_length: int = 64, no_repeat_ngram_size: int = 0):
        self.blocked = np.zeros(vocab_size, dtype=bool)
        self.blocked[list(ALWAYS_BLOCKED)] = True
        self.blocked[[i for i in blocked_ids if 0 <= i < vocab_size]] = True
        # An empty caption is never an answer: <end> needs at least one token before it.
        self.min_length = max(1, min_length)
        self.max_length = max_length
        self.no_repeat_ngram_size = no_repeat_ngram_size

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
        return mask
