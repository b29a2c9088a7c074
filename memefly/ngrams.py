"""The no-repeat n-gram rule, shared by evaluation's reference beam search and the gateway."""

from __future__ import annotations

from collections.abc import Sequence


def repeated_ngram_bans(history: Sequence[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram already present in history (n <= 0: none)."""
    if n <= 0 or len(history) < n - 1:
        return []
    k = n - 1
    if k == 0:
        return list(history)
    prefix = history[len(history) - k :]
    first = prefix[0]
    # Compare the first token before slicing: this runs for every beam at every step.
    return [history[i + k] for i in range(len(history) - k) if history[i] == first and history[i : i + k] == prefix]
