"""The array-at-once sampling and repetition check return exactly what the row-by-row code they
replaced returned (kept here as the reference): the same samples, log-probs, scores and
random draws, under every option and constraint."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_decoding import TinyModel, run

from memefly.contract import END_ID, SEP_ID, START_ID
from memefly.decoding.constraints import Constraints
from memefly.decoding.options import DecodingOptions
from memefly.decoding.search import SampleSearch, _Sample

VOCAB = 12


def reference_repeated(constraints: Constraints, histories, top_ids: np.ndarray) -> np.ndarray:
    mask = np.zeros(top_ids.shape, dtype=bool)
    for i, history in enumerate(histories):
        word_ids = constraints.word_ids
        used = {t for t in history if word_ids is None or (0 <= t < word_ids.size and word_ids[t])}
        used.discard(SEP_ID)
        if used:
            mask[i] = np.isin(top_ids[i], list(used))
    return mask


class ReferenceSampleSearch(SampleSearch):
    """SampleSearch as it was: one distribution and one `rng.choice` per row."""

    def _penalized(self, histories, top_ids, log_probs):
        penalty = self.options.repetition_penalty
        if penalty == 1.0:
            return log_probs
        return np.where(reference_repeated(self.constraints, histories, top_ids), log_probs * penalty, log_probs)

    def _distribution(self, log_probs, allowed):
        logits = np.where(allowed, log_probs / self.options.temperature, -np.inf)
        order = np.argsort(-logits, kind="stable")
        if self.options.top_k:
            logits[order[self.options.top_k :]] = -np.inf
        if not np.isfinite(logits).any():
            return None
        probs = np.exp(logits - logits[np.isfinite(logits)].max())
        probs /= probs.sum()
        if self.options.top_p < 1.0:
            sorted_probs = probs[order]
            keep = np.cumsum(sorted_probs) - sorted_probs < self.options.top_p
            probs[order[~keep]] = 0.0
            probs /= probs.sum()
        return probs

    def advance(self, top_ids, top_log_probs, state) -> None:
        histories = [s.ids for s in self.samples]
        forbidden = self.constraints.forbidden(histories, top_ids)
        drawn_from = self._penalized(histories, top_ids, top_log_probs.astype(np.float64))
        kept_samples, kept_states = [], []
        for i, sample in enumerate(self.samples):
            log_probs = top_log_probs[i].astype(np.float64)
            probs = self._distribution(drawn_from[i], ~forbidden[i])
            if probs is None:
                if sample.ids:
                    self._finish(sample.ids, sample.log_prob, finished=False)
                continue
            k = int(self.rng.choice(probs.size, p=probs))
            token, log_prob = int(top_ids[i, k]), sample.log_prob + float(log_probs[k])
            if token == END_ID:
                if self._finish(sample.ids, log_prob, finished=True) or self.restarts_left <= 0:
                    continue
                self.restarts_left -= 1
                kept_samples.append(_Sample())
                kept_states.append(self.initial_state)
                continue
            kept_samples.append(_Sample(sample.ids + (token,), log_prob))
            kept_states.append(np.asarray(state[i]))
        self.samples = kept_samples
        self.state = np.stack(kept_states) if kept_states else self.state[:0]
        self.done = not self.samples


def searches(options: DecodingOptions, *, box_counts=None, word_ids=None, blocked=(), refuse_every: int = 0):
    made = []
    for kind in (SampleSearch, ReferenceSampleSearch):
        seen = []

        def accept(ids, seen=seen):  # refuses every n-th finished caption: restarts happen
            seen.append(ids)
            return not refuse_every or len(seen) % refuse_every

        constraints = Constraints(
            VOCAB,
            blocked,
            min_length=options.min_length,
            max_length=options.max_length,
            no_repeat_ngram_size=options.no_repeat_ngram_size,
            box_counts=box_counts,
            word_ids=word_ids,
        )
        made.append(kind(np.zeros(1, np.float32), np.zeros(3, np.float32), options, constraints, accept))
    return made


CASES = list(
    itertools.product(
        [0, 1, 2],  # model seed
        [
            dict(),
            dict(temperature=0.5, top_k=3),
            dict(top_p=0.6),
            dict(temperature=1.7, top_p=0.9, top_k=6),
            dict(repetition_penalty=2.0, top_p=0.95),
        ],
        [
            dict(),
            dict(box_counts={2}, no_repeat_ngram_size=2),
            dict(blocked=(6, 7), min_length=3, max_length=6),
            dict(box_counts={1, 3}, word_ids=True, refuse_every=3),
        ],
    )
)


@pytest.mark.parametrize("seed, sampling, rules", CASES)
def test_vectorised_sampling_draws_exactly_what_row_by_row_sampling_drew(seed, sampling, rules):
    rules = dict(rules)
    search_rules = {k: rules.pop(k) for k in ("box_counts", "blocked", "refuse_every") if k in rules}
    word_ids = None
    if rules.pop("word_ids", False):
        word_ids = np.ones(VOCAB, dtype=bool)
        word_ids[[8, 9]] = False  # punctuation-like tokens: not words
    options = DecodingOptions(
        do_sample=True,
        num_candidates=12,
        num_return_sequences=4,
        seed=seed,
        **{**dict(no_repeat_ngram_size=0, max_length=8), **sampling, **rules},
    )
    new, reference = searches(options, word_ids=word_ids, **search_rules)
    k = 6 if seed == 1 else None  # a top-K narrower than the vocabulary: <end> may be missing
    got = run(new, TinyModel(seed, VOCAB), k=k)
    expected = run(reference, TinyModel(seed, VOCAB), k=k)
    assert [(h.ids, h.log_prob, h.score, h.finished) for h in new.finished] == [
        (h.ids, h.log_prob, h.score, h.finished) for h in reference.finished
    ]
    assert got == expected
    assert new.rng.random() == reference.rng.random()  # the same number of draws


def test_repeated_words_match_the_row_by_row_check():
    rng = np.random.default_rng(0)
    word_ids = rng.random(VOCAB) < 0.7
    for words in (None, word_ids):
        constraints = Constraints(VOCAB, word_ids=words)
        histories = [tuple(rng.integers(0, VOCAB, rng.integers(0, 9)).tolist()) for _ in range(40)] + [(), (SEP_ID,)]
        top_ids = rng.integers(0, VOCAB, (len(histories), 7)).astype(np.int32)
        assert np.array_equal(
            constraints.repeated(histories, top_ids), reference_repeated(constraints, histories, top_ids)
        )
    assert not Constraints(VOCAB).repeated([(), ()], np.full((2, 3), START_ID, np.int32)).any()


def reference_forbidden(constraints: Constraints, histories, top_ids: np.ndarray) -> np.ndarray:
    """Constraints.forbidden as it was: a Python pass over each row's history for its boxes."""
    from memefly.ngrams import repeated_ngram_bans

    c = constraints
    in_vocab = (top_ids >= 0) & (top_ids < c.blocked.size)
    mask = ~in_vocab | c.blocked[np.where(in_vocab, top_ids, 0)]
    lengths = np.fromiter(map(len, histories), dtype=np.int64, count=len(histories))[:, None]
    is_end = top_ids == END_ID
    mask |= is_end & (lengths < c.min_length)
    mask |= ~is_end & (lengths >= c.max_length)
    if c.no_repeat_ngram_size:
        for i, history in enumerate(histories):
            for token in set(repeated_ngram_bans(history, c.no_repeat_ngram_size)):
                mask[i] |= top_ids[i] == token
    is_sep = top_ids == SEP_ID
    closing = is_sep | is_end
    for i, history in enumerate(histories):
        if not closing[i].any():
            continue
        boxes = [()]
        for token in history:
            if token == SEP_ID:
                boxes.append(())
            elif c.word_ids is None or (0 <= token < c.word_ids.size and c.word_ids[token]):
                boxes[-1] += (token,)
        empty = not boxes[-1]
        repeated = not empty and boxes[-1] in boxes[:-1]
        if empty or repeated:
            mask[i] |= closing[i] if history else is_sep[i]
            continue
        if c.box_counts is not None:
            if len(boxes) >= c.max_boxes:
                mask[i] |= is_sep[i]
            if len(boxes) not in c.box_counts:
                mask[i] |= is_end[i]
    return mask


@pytest.mark.parametrize(
    "settings",
    [
        dict(),
        dict(no_repeat_ngram_size=2, box_counts={2}),
        dict(no_repeat_ngram_size=3, box_counts={1, 3}, words=True),
        dict(min_length=4, max_length=7, blocked=(5,), no_repeat_ngram_size=1),
    ],
)
def test_forbidden_candidates_match_the_row_by_row_rules(settings):
    settings = dict(settings)
    rng = np.random.default_rng(len(str(settings)))
    words = rng.random(VOCAB) < 0.8 if settings.pop("words", False) else None
    constraints = Constraints(VOCAB, settings.pop("blocked", ()), word_ids=words, **settings)
    # Histories that grow a token a step, as a search's do (the box cache builds on parents),
    # heavy in <sep> so that boxes close, repeat and come up empty.
    tokens = [SEP_ID] * 4 + list(range(5, VOCAB))
    histories = [()]
    for _ in range(8):
        histories = [h + (int(rng.choice(tokens)),) for h in histories for _ in range(2)][:64] + [()]
        top_ids = rng.integers(0, VOCAB, (len(histories), 8)).astype(np.int32)
        top_ids[:, 0] = END_ID
        top_ids[:, 1] = SEP_ID
        assert np.array_equal(
            constraints.forbidden(histories, top_ids), reference_forbidden(constraints, histories, top_ids)
        )
    fresh = Constraints(VOCAB, word_ids=words, **settings)  # no cached parents: from the whole history
    assert np.array_equal(fresh.forbidden(histories, top_ids), reference_forbidden(fresh, histories, top_ids))


def test_a_nan_log_prob_is_never_drawn_and_a_forbidden_candidate_never():
    options = DecodingOptions(do_sample=True, num_candidates=64, num_return_sequences=1, max_length=4, seed=0)
    search, _ = searches(options, blocked=(5,))
    top_ids = np.tile(np.array([[5, 6, 7, END_ID]], np.int32), (64, 1))  # 5 is blocked
    log_probs = np.tile(np.array([[-0.1, np.nan, -1.0, -2.0]], np.float32), (64, 1))
    search.advance(top_ids, log_probs, np.zeros((64, 1), np.float32))
    assert {s.ids for s in search.samples} == {(7,)}  # neither the blocked 5 nor the NaN 6; <end> needs a word first
