"""What a decoder's vocabulary and templates mean for one request's search: the one place that
turns options into constraints, acceptance rules and a seeded search. The gateway's service
and `memefly evaluate` both build their searches here, so evaluation measures what is served.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from memefly import contract as c
from memefly.captions import tokens_to_boxes
from memefly.decoding.constraints import Constraints
from memefly.decoding.distinct import CaptionSet, caption_words
from memefly.decoding.options import DecodingOptions
from memefly.decoding.search import Search, SearchTable, make_search

# A template whose probability is at least this decides the box counts alone; below it,
# every template with at least MIXTURE_SHARE of the probability may lend its counts.
DECIDES = 0.5
MIXTURE_SHARE = 0.1


def input_seed(key: str) -> int:
    """A stable seed for an input (image SHA-256 or template): the same input, the same memes."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def template_input_key(template_id: int) -> str:
    """The input key of a request that names a template (an image's is its SHA-256)."""
    return f"template:{template_id}"


def template_box_counts(counts, panels: int | None) -> frozenset[int] | None:
    """The box counts a template's captions may have: one box per panel of a multi-panel layout,
    else the counts its real memes use (COUNTS; empty or None: any)."""
    if panels:
        return frozenset({panels})
    return frozenset(counts) if counts else None


def caption_key(text: str) -> str:
    """What makes two returned captions the same: box by box, case and spacing ignored."""
    boxes = [" ".join(box.lower().split()) for box in text.split(c.BOX_SEPARATOR)]
    while boxes and not boxes[-1]:
        boxes.pop()
    return c.BOX_SEPARATOR.join(boxes)


@dataclass(frozen=True)
class CaptionFacts:
    """What serving needs to know of a generated caption, from its token ids alone."""

    boxes: tuple[str, ...]  # the text per box, as returned
    key: str  # caption_key of the returned text: what makes two returned captions the same
    words: tuple[tuple[str, ...], ...]  # caption_words: what near-duplicates are compared by
    training: bool  # a caption of the training data


CAPTION_CACHE = 32_768  # captions whose facts are kept (a few hundred bytes each)


class Captioner:
    def __init__(
        self,
        vocabulary: Sequence[str],
        box_counts: Sequence[frozenset[int] | None] = (),
        training_captions: CaptionSet | None = None,
        offensive_ids: Iterable[int] = (),
        caption_cache: int = CAPTION_CACHE,
    ):
        self.vocabulary = list(vocabulary)
        self.box_counts = list(box_counts)  # per template id; None or empty: any count
        self.training_captions = training_captions or CaptionSet()
        self.offensive_ids = frozenset(offensive_ids)
        self.word_ids = {token: i for i, token in enumerate(self.vocabulary)}
        # Tokens with a letter or digit: boxes are compared by these.
        self.is_word = np.array(
            [any(ch.isalnum() for ch in token) and token not in c.SPECIAL_TOKENS for token in self.vocabulary],
            dtype=bool,
        )

        # Searches finish the same captions again and again (every beam of a popular template,
        # every request for it): the text work is done once per caption, not per finish.
        self.facts = lru_cache(maxsize=caption_cache)(self._facts)

    def _facts(self, ids: tuple[int, ...]) -> CaptionFacts:
        boxes = tokens_to_boxes([self.vocabulary[i] for i in ids])
        words = caption_words(boxes)
        key = caption_key(c.BOX_SEPARATOR.join(boxes))
        return CaptionFacts(tuple(boxes), key, words, self.training_captions.contains_words(words))

    def boxes(self, ids: Sequence[int]) -> list[str]:
        return list(self.facts(tuple(ids)).boxes)

    def words(self, ids: Sequence[int]) -> tuple[tuple[str, ...], ...]:
        return self.facts(tuple(ids)).words

    def allowed_box_counts(self, template_probs: np.ndarray) -> frozenset[int] | None:
        probs = np.asarray(template_probs, np.float64)
        if not self.box_counts or probs.size != len(self.box_counts):
            return None
        top = int(np.argmax(probs))
        lenders = [top] if probs[top] >= DECIDES else [int(t) for t in np.flatnonzero(probs >= MIXTURE_SHARE)] or [top]
        counts: set[int] = set()
        for t in lenders:
            lent = self.box_counts[t]
            if not lent:
                return None  # a template without counts: leave the structure to the model
            counts |= lent
        return frozenset(counts)

    def search(
        self,
        state: np.ndarray,
        context: np.ndarray,
        template_probs: np.ndarray,
        options: DecodingOptions,
        input_key: str,
        on_caption: Callable[[tuple[int, ...]], None] | None = None,
    ) -> Search:
        """A search for one request; INPUT_KEY seeds the default strategy when no seed is given.
        ON_CAPTION hears of each caption the search keeps, as it finishes (for streaming)."""
        if options.default_strategy and options.seed is None:
            options = options.model_copy(update={"seed": input_seed(input_key)})
        blocked = self.offensive_ids if options.safe else frozenset()
        if options.blocked_words:
            blocked = blocked | {self.word_ids[w.lower()] for w in options.blocked_words if w.lower() in self.word_ids}
        constraints = Constraints(
            len(self.vocabulary),
            blocked,
            min_length=options.min_length,
            max_length=options.max_length,
            no_repeat_ngram_size=options.no_repeat_ngram_size,
            box_counts=self.allowed_box_counts(template_probs),
            word_ids=self.is_word,
        )
        accept = self.acceptor(options)
        if on_caption is not None:
            refuse = accept

            def accept(ids: tuple[int, ...]) -> bool:
                kept = refuse(ids)
                if kept:
                    on_caption(ids)
                return kept

        return make_search(state, context, options, constraints, accept, self.words)

    def acceptor(self, options: DecodingOptions) -> Callable[[tuple[int, ...]], bool]:
        """Refuses captions the client already has, training captions (unless allowed), and
        repeats of one already accepted."""
        seen = {caption_key(text) for text in options.exclude}
        novel_only = not options.allow_training_captions

        def accept(ids: tuple[int, ...]) -> bool:
            facts = self.facts(ids)
            if facts.key in seen or (novel_only and facts.training):
                return False
            seen.add(facts.key)
            return True

        return accept


def run_searches(searches: list[Search], step: Callable, max_rows: int = 1024) -> None:
    """Drive searches to the end with a synchronous step(tokens, state, context) -> (top_ids,
    top_log_probs, state): for offline use (evaluation); the gateway's scheduler does this
    asynchronously, with continuous batching."""
    table = SearchTable()
    for search in searches:
        table.add(search)
    try:
        live = [s for s in searches if not s.done]
        while live:
            batch: list[Search] = []
            rows = 0
            for search in live:
                if batch and rows + search.rows > max_rows:
                    break
                batch.append(search)
                rows += search.rows
            rows_sent, tokens, state, context = table.inputs(batch)
            failures = table.advance(rows_sent, *step(tokens, state, context))
            if failures:
                raise failures[0][1]
            live = [s for s in live if not s.done]
    finally:
        for search in searches:
            table.remove(search)


def compile_kernels() -> None:
    """One tiny beam search and one search of the default strategy (sampling, repetition
    penalty) over a made-up step, so that numba compiles the step's kernels now, or loads them
    from its cache, instead of during a first request. The gateway image runs it at build."""
    vocabulary = [*c.SPECIAL_TOKENS, "a", "b", "c"]
    words = np.array([token not in c.SPECIAL_TOKENS for token in vocabulary])
    top_ids = np.array([range(len(vocabulary))], np.int32)
    log_probs = np.full(top_ids.shape, -np.log(len(vocabulary)), np.float32)

    def step(tokens, state, context):
        rows = len(tokens)
        return np.repeat(top_ids, rows, 0), np.repeat(log_probs, rows, 0), state

    searches = [
        make_search(
            np.zeros(2, np.float32),
            np.zeros(2, np.float32),
            options,
            Constraints(len(vocabulary), max_length=4, no_repeat_ngram_size=2, box_counts={1, 2}, word_ids=words),
        )
        for options in (
            DecodingOptions(num_beams=2, num_return_sequences=1, max_length=4),
            DecodingOptions(max_length=4),
        )
    ]
    run_searches(searches, step)
