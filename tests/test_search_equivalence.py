"""The array-at-once searches return exactly what the row-by-row searches they replaced returned
(tests/reference_search.py): the same captions, log-probs, scores, cut captions and random draws,
for beam search, diverse beams and seeded sampling under every option and caption rule, with
many searches of different kinds stepped together in one table."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
import reference_search as reference

from memefly.contract import END_ID, SEP_ID, START_ID
from memefly.decoding.captioner import run_searches
from memefly.decoding.constraints import Constraints, forbidden
from memefly.decoding.options import DecodingOptions
from memefly.decoding.search import SampleSearch, make_search

VOCAB = 14
WORDS = np.ones(VOCAB, dtype=bool)
WORDS[:5] = False  # the special tokens
WORDS[[12, 13]] = False  # punctuation-like: not words, so "5 12" is the same box as "5"


class HashModel:
    """A decoder whose next-token log-probs are a fixed function of the caption so far (a hash),
    so a row's outputs are the same whichever rows share its call. The state names the caption."""

    def __init__(
        self,
        seed: int,
        k: int | None = None,
        sharpness: float = 2.0,
        shuffled: bool = False,
        ties: bool = False,
        nans: bool = False,
    ):
        self.seed, self.k, self.sharpness, self.shuffled = seed, k, sharpness, shuffled
        self.ties, self.nans = ties, nans
        self.captions: list[tuple[int, ...]] = [()]
        self.index = {(): 0}

    def rng(self, caption: tuple[int, ...]) -> np.random.Generator:
        digest = hashlib.blake2b(repr((self.seed, caption)).encode(), digest_size=8).digest()
        return np.random.default_rng(int.from_bytes(digest, "little"))

    def log_probs(self, caption: tuple[int, ...]) -> np.ndarray:
        logits = self.rng(caption).normal(size=VOCAB) * self.sharpness
        if self.ties:  # whole numbers: many candidates, and many beams' totals, exactly equal
            logits = np.round(logits)
        log_probs = logits - np.logaddexp.reduce(logits)
        if self.nans:  # a broken model's NaN here and there: never chosen, never drawn
            log_probs[self.rng(caption + (-2,)).random(VOCAB) < 0.15] = np.nan
        return log_probs

    def step(self, tokens, state, context):
        k = self.k or VOCAB
        ids, lps, states = [], [], []
        for token, s in zip(tokens.tolist(), state[:, 0].tolist(), strict=True):
            caption = self.captions[int(s)]
            if token != START_ID:
                caption = caption + (token,)
            if caption not in self.index:
                self.index[caption] = len(self.captions)
                self.captions.append(caption)
            lp = self.log_probs(caption)
            order = np.argsort(-lp, kind="stable")[:k]
            if self.shuffled:  # the top-K, not best first: the search may not rely on the order
                order = self.rng(caption + (-1,)).permutation(order)
            ids.append(order)
            lps.append(lp[order])
            states.append([self.index[caption]])
        return np.array(ids, np.int32), np.array(lps, np.float32), np.array(states, np.float32)


def run_reference(search, model: HashModel) -> None:
    while not search.done:
        tokens, state, context = search.inputs()
        search.advance(*model.step(tokens, state, context))


def make_pair(options: DecodingOptions, rules: dict):
    """The same search twice: new and reference, each with its own refusal check."""
    rules = dict(rules)
    refuse_every = rules.pop("refuse_every", 0)
    words = WORDS if rules.pop("words", False) else None
    made = []
    for constraints_kind, search_kind in (
        (Constraints, make_search),
        (reference.Constraints, reference.make_search),
    ):
        seen: list = []

        def accept(ids, seen=seen):  # refuses every n-th finished caption: restarts and gaps happen
            seen.append(ids)
            return not refuse_every or len(seen) % refuse_every != 0

        constraints = constraints_kind(
            VOCAB,
            rules.get("blocked", ()),
            min_length=options.min_length,
            max_length=options.max_length,
            no_repeat_ngram_size=options.no_repeat_ngram_size,
            box_counts=rules.get("box_counts"),
            word_ids=words,
        )
        made.append(search_kind(np.zeros(1, np.float32), np.zeros(3, np.float32), options, constraints, accept))
    return made


BEAMS = [
    dict(num_beams=1, num_return_sequences=1),
    dict(num_beams=4, num_return_sequences=3),
    dict(num_beams=5, length_penalty=0.0),
    dict(num_beams=6, length_penalty=-0.5, num_return_sequences=6),
    dict(num_beams=4, length_penalty=2.0, repetition_penalty=1.8, num_return_sequences=4),
    dict(num_beams=6, num_beam_groups=3, diversity_penalty=0.7, num_return_sequences=4),
    dict(num_beams=4, num_beam_groups=2, diversity_penalty=3.0, num_return_sequences=2),
    dict(num_beams=3, num_beam_groups=3, diversity_penalty=0.0, num_return_sequences=3),
]
SAMPLING = [
    dict(),  # the default strategy: 16 candidates, temperature, top-p, repetition penalty
    dict(do_sample=True, num_return_sequences=4, num_candidates=12),
    dict(do_sample=True, num_candidates=10, temperature=0.5, top_k=3),
    dict(do_sample=True, num_candidates=9, top_p=0.6),
    dict(do_sample=True, num_candidates=8, temperature=1.7, top_p=0.9, top_k=6),
    dict(do_sample=True, num_candidates=12, repetition_penalty=2.0, top_p=0.95),
]
RULES = [
    dict(),
    dict(box_counts={2}, no_repeat_ngram_size=2, words=True),
    dict(blocked=(6, 7), min_length=3, max_length=6),
    dict(box_counts={1, 3}, words=True, refuse_every=3),
    dict(no_repeat_ngram_size=1, max_length=5),
    dict(no_repeat_ngram_size=3, box_counts={2, 3}, refuse_every=2, max_length=9),
]


def options_of(strategy: dict, rules: dict, seed: int) -> tuple[DecodingOptions, dict]:
    rules = dict(rules)
    request = {k: rules.pop(k) for k in ("min_length", "max_length", "no_repeat_ngram_size") if k in rules}
    request = {"max_length": 7, "no_repeat_ngram_size": 0, **request, **strategy}
    if request.get("do_sample") or not any(k in strategy for k in ("num_beams", "num_beam_groups")):
        request["seed"] = seed
    return DecodingOptions(**request), rules


def signature(search):
    groups = search.finished if hasattr(search, "per_group") else [search.finished]
    kept = [[(h.ids, h.log_prob, h.score, h.finished) for h in group] for group in groups]
    cut = [(h.ids, h.log_prob, h.score) for h in getattr(search, "cut", [])]
    results = [(h.ids, h.log_prob, h.score, h.finished) for h in search.results()]
    return kept, cut, results


@pytest.mark.parametrize(
    "seed, k, shuffled, ties, nans",
    [
        (0, None, False, False, False),
        (1, 6, False, False, False),
        (2, None, True, False, False),
        (3, 9, True, False, False),
        (4, None, False, True, False),
        (5, None, True, False, True),
    ],
)
@pytest.mark.parametrize("max_rows", [1024, 23])
def test_all_searches_stepped_together_equal_the_row_by_row_searches(seed, k, shuffled, ties, nans, max_rows):
    """Exact ties included (`ties`: the earlier row and candidate rank first, in both), and a
    model that sends NaN log-probs (`nans`)."""
    cases = list(itertools.product(BEAMS + SAMPLING, RULES))
    pairs = []
    for i, (strategy, rules) in enumerate(cases):
        options, search_rules = options_of(strategy, rules, seed * 1000 + i)
        pairs.append(make_pair(options, search_rules))
    new = [n for n, _ in pairs]
    model = dict(shuffled=shuffled, ties=ties, nans=nans)
    run_searches(new, HashModel(seed, k, **model).step, max_rows=max_rows)
    for (search, expected), (strategy, rules) in zip(pairs, cases, strict=True):
        run_reference(expected, HashModel(seed, k, **model))
        assert signature(search) == signature(expected), (strategy, rules)
        if isinstance(search, SampleSearch):
            assert search.rng.random() == expected.rng.random()  # the same number of draws
            assert search.restarts_left == expected.restarts_left


def test_forbidden_and_repeated_equal_the_row_by_row_rules():
    rng = np.random.default_rng(0)
    words = rng.random(VOCAB) < 0.7
    histories = [tuple(rng.choice([5, 6, 7, SEP_ID, 12], rng.integers(0, 9)).tolist()) for _ in range(300)]
    histories += [(), (SEP_ID,), (5, SEP_ID, 5), (5, 12, SEP_ID, 5), (5, 6, SEP_ID, 5, 6, SEP_ID, 5)]
    top_ids = np.concatenate(
        [rng.integers(0, VOCAB, (len(histories), 5)), np.full((len(histories), 2), [SEP_ID, END_ID])], axis=1
    ).astype(np.int32)
    for word_ids, box_counts, n in itertools.product((None, words), (None, {2}, {1, 3}), (0, 1, 2, 3)):
        rules = dict(min_length=2, max_length=6, no_repeat_ngram_size=n, box_counts=box_counts, word_ids=word_ids)
        new, old = Constraints(VOCAB, (9,), **rules), reference.Constraints(VOCAB, (9,), **rules)
        assert np.array_equal(new.forbidden(histories, top_ids), old.forbidden(histories, top_ids))
        assert np.array_equal(new.repeated(histories, top_ids), old.repeated(histories, top_ids))


def test_a_box_hash_collision_never_forbids_a_caption():
    constraints = Constraints(VOCAB, box_counts={2, 3})
    table, slots = constraints._rows_of([(5, SEP_ID, 6), (5, SEP_ID, 5)])
    top_ids = np.array([[SEP_ID, END_ID]] * 2, dtype=np.int32)
    assert constraints.forbidden([(5, SEP_ID, 6), (5, SEP_ID, 5)], top_ids).tolist() == [
        [False, False],
        [True, True],  # "5 | 5": the open box repeats the first, it may not close
    ]
    table.open_hash[slots[0]] = table.closed_hash[slots[0], 0]  # "6" now hashes like "5"
    assert not forbidden(table, slots[:1], top_ids[:1]).any()  # the tokens say otherwise


def test_each_step_sends_the_rows_the_row_by_row_search_sent():
    """In lockstep: every step's rows (count, order, tokens and states) are the reference's."""
    from memefly.decoding.search import SearchTable

    model = HashModel(5, shuffled=True)
    cases = [(s, r) for s in (BEAMS[1], BEAMS[5], SAMPLING[0], SAMPLING[3]) for r in (RULES[1], RULES[3])]
    pairs = [make_pair(*options_of(strategy, rules, i)) for i, (strategy, rules) in enumerate(cases)]
    table = SearchTable()
    for search, _ in pairs:
        table.add(search)
    for _ in range(40):
        live = [(search, expected) for search, expected in pairs if not expected.done]
        assert [search.done for search, _ in pairs] == [expected.done for _, expected in pairs]
        if not live:
            break
        rows, tokens, state, context = table.inputs([search for search, _ in live])
        offset = 0
        for search, expected in live:
            expected_tokens, expected_state, _ = expected.inputs()
            assert search.rows == expected.rows == len(expected_tokens)
            assert np.array_equal(tokens[offset : offset + search.rows], expected_tokens)
            assert np.array_equal(state[offset : offset + search.rows], expected_state)
            offset += search.rows
            expected.advance(*model.step(expected_tokens, expected_state, _))
        assert table.advance(rows, *model.step(tokens, state, context)) == []
    assert all(search.done for search, _ in pairs)


def test_the_sampling_kernels_sum_and_sort_as_numpy_does():
    """Sampling draws the same tokens only if its sums and orders are numpy's to the last bit:
    the kernels' row sum is numpy's pairwise order (at the decoder's K = 64 too, which the
    searches above, with 14 words, never reach), and their order is a stable argsort."""
    from memefly.decoding.kernels import _order_best_first, _pairwise_sum

    rng = np.random.default_rng(0)
    for width in (*range(1, 20), 63, 64, 65, 127, 128, 129, 200, 300, 1000, 2053):
        rows = np.exp(rng.normal(size=(200, width)) * 3)
        rows[rng.random(rows.shape) < 0.2] = 0.0
        sums = rows.sum(axis=1)
        assert all(_pairwise_sum(row, 0, width) == total for row, total in zip(rows, sums, strict=True)), width
        logits = np.round(rng.normal(size=(50, width)), 1)  # ties
        logits[rng.random(logits.shape) < 0.3] = -np.inf
        for row in logits:
            order = np.empty(width, np.int64)
            _order_best_first(row, order)
            assert np.array_equal(order, np.argsort(-row, kind="stable"))
