"""The offensive-word list applied when a request asks for safe output (the default).

Checked once per vocabulary at start-up with pyobscenity (a curated English list with
leetspeak handling, the same library data preparation uses to flag captions).
"""

from __future__ import annotations

from collections.abc import Sequence

from memefly.contract import SPECIAL_TOKENS


def offensive_token_ids(vocabulary: Sequence[str]) -> list[int]:
    import pyobscenity

    special = set(SPECIAL_TOKENS)
    return [i for i, token in enumerate(vocabulary) if token not in special and pyobscenity.check(token)]
