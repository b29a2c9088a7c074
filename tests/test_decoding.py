"""The gateway's numpy decoding against exhaustive search on a tiny hand-made model, plus properties."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memefly.contract import END_ID, PAD_ID, SEP_ID, START_ID, UNK_ID
from memefly.decoding.captioner import run_searches
from memefly.decoding.constraints import Constraints
from memefly.decoding.options import DecodingOptions
from memefly.decoding.search import make_search, normalized
from memefly.ngrams import repeated_ngram_bans

WORDS = (5, 6, 7)  # ids after the five special tokens
VOCAB = 8


class TinyModel:
    """A hand-made decoder: the next-token distribution is a seeded random function of the history.

    The state is one number, the index of the history it stands for, so the step is an
    exact, deterministic function of (token, state) as the real decoder's is.
    """

    def __init__(self, seed: int, vocab: int = VOCAB, sharpness: float = 2.0):
        self.rng = np.random.default_rng(seed)
        self.vocab = vocab
        self.sharpness = sharpness
        self.histories: list[tuple[int, ...]] = [()]
        self.index = {(): 0}
        self.tables: dict[tuple[int, ...], np.ndarray] = {}

    def log_probs(self, history: tuple[int, ...]) -> np.ndarray:
        if history not in self.tables:
            logits = self.rng.normal(size=self.vocab) * self.sharpness
            self.tables[history] = logits - np.logaddexp.reduce(logits)
        return self.tables[history]

    def step(self, tokens, state, context, k: int | None = None):
        k = k or self.vocab
        assert len(tokens) == len(state) == len(context), "rows of token, state and context must match"
        ids, lps, states = [], [], []
        for token, s in zip(tokens, state[:, 0], strict=True):
            history = self.histories[int(s)]
            if token != START_ID:
                history = history + (int(token),)
            if history not in self.index:
                self.index[history] = len(self.histories)
                self.histories.append(history)
            lp = self.log_probs(history)
            order = np.argsort(-lp, kind="stable")[:k]
            ids.append(order)
            lps.append(lp[order])
            states.append([self.index[history]])
        return np.array(ids, np.int32), np.array(lps, np.float32), np.array(states, np.float32)

    def sequence_log_prob(self, ids: tuple[int, ...], finished: bool = True) -> float:
        total, history = 0.0, ()
        for token in ids + ((END_ID,) if finished else ()):
            total += float(np.float32(self.log_probs(history)[token]))
            history = history + (token,)
        return total


def run(search, model: TinyModel, k: int | None = None):
    run_searches([search], lambda tokens, state, context: model.step(tokens, state, context, k))
    assert search.done
    return search.results()


def new_search(model, options, blocked=(), accept=lambda ids: True, box_counts=None, words=None):
    constraints = Constraints(
        model.vocab,
        blocked,
        min_length=options.min_length,
        max_length=options.max_length,
        no_repeat_ngram_size=options.no_repeat_ngram_size,
        box_counts=box_counts,
    )
    return make_search(np.zeros(1, np.float32), np.zeros(3, np.float32), options, constraints, accept, words)


def boxes_of(ids) -> list[tuple[int, ...]]:
    boxes = [()]
    for token in ids:
        boxes = boxes + [()] if token == SEP_ID else boxes[:-1] + [boxes[-1] + (token,)]
    return boxes


def well_formed(ids, box_counts=None) -> bool:
    """The box rules, stated independently of Constraints: no empty box, no box twice, an allowed count."""
    boxes = boxes_of(ids)
    return all(boxes) and len(set(boxes)) == len(boxes) and (box_counts is None or len(boxes) in box_counts)


def exhaustive(model: TinyModel, options: DecodingOptions, allowed: tuple[int, ...], box_counts=None):
    """Every caption within the limits, scored: the ground truth beam search must find."""
    found = []
    for length in range(max(1, options.min_length), options.max_length + 1):
        for ids in itertools.product(allowed, repeat=length):
            if any(ids[i] in repeated_ngram_bans(ids[:i], options.no_repeat_ngram_size) for i in range(len(ids))):
                continue
            if not well_formed(ids, box_counts):
                continue
            lp = model.sequence_log_prob(ids)
            found.append((normalized(lp, length, options.length_penalty), ids))
    found.sort(key=lambda pair: -pair[0])
    return found


@pytest.mark.parametrize("box_counts", [None, {2}, {1, 3}])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("length_penalty", [0.0, 1.0, -0.5])
def test_wide_beam_finds_the_exact_best(seed, length_penalty, box_counts):
    model = TinyModel(seed)
    allowed = (5, 6, SEP_ID)  # word 7 is blocked: 3 ** 3 prefixes fit in the 32-beam limit
    max_length = 3
    # Width >= every possible prefix: nothing is ever pruned, so the search must be exact.
    beams = len(allowed) ** max_length
    options = DecodingOptions(
        num_beams=beams,
        num_return_sequences=5,
        max_length=max_length,
        min_length=1,
        length_penalty=length_penalty,
        no_repeat_ngram_size=0,
    )
    results = [h for h in run(new_search(model, options, blocked=(7,), box_counts=box_counts), model) if h.finished]
    truth = exhaustive(model, options, allowed, box_counts)
    assert [h.ids for h in results] == [ids for _, ids in truth[:5]]
    for h, (score, _) in zip(results, truth, strict=False):  # truth ranks every caption; results are its best five
        assert h.finished
        assert h.score == pytest.approx(score, abs=1e-9)
        assert h.log_prob == pytest.approx(model.sequence_log_prob(h.ids), abs=1e-9)


def test_wide_beam_is_exact_under_no_repeat_and_min_length():
    model = TinyModel(11)
    allowed = WORDS + (SEP_ID,)
    options = DecodingOptions(
        num_beams=32, num_return_sequences=3, max_length=4, min_length=2, length_penalty=0.0, no_repeat_ngram_size=1
    )
    # no_repeat_ngram_size=1: no token twice, so at most 4*3*2*1 = 24 prefixes of length 4.
    results = run(new_search(model, options), model)
    truth = exhaustive(model, options, allowed)
    assert [h.ids for h in results] == [ids for _, ids in truth[:3]]


def test_greedy_follows_the_argmax():
    model = TinyModel(3, sharpness=4.0)
    # length_penalty=0: a longer caption can never overtake the first finished one.
    options = DecodingOptions(
        num_beams=1, num_return_sequences=1, max_length=6, length_penalty=0.0, no_repeat_ngram_size=0
    )
    [h] = run(new_search(model, options), model)
    history = ()
    for token in h.ids + ((END_ID,) if h.finished else ()):
        lp = model.log_probs(history).copy()
        lp[[PAD_ID, START_ID, UNK_ID]] = -np.inf
        if not history:
            lp[END_ID] = -np.inf
        assert token == int(np.argmax(lp))
        history += (token,)


def test_refused_captions_do_not_take_a_place():
    model = TinyModel(5)
    options = DecodingOptions(num_beams=8, num_return_sequences=3, max_length=4, no_repeat_ngram_size=0)
    first = run(new_search(model, options), model)
    refused = {first[0].ids, first[1].ids}
    again = run(new_search(model, options, accept=lambda ids: ids not in refused), model)
    assert len(again) == 3
    assert not refused & {h.ids for h in again}
    assert again[0].ids == first[2].ids


def test_diverse_groups_pick_different_first_tokens():
    model = TinyModel(2, sharpness=3.0)
    plain = DecodingOptions(num_beams=3, num_return_sequences=3, max_length=5, no_repeat_ngram_size=0)
    diverse = plain.model_copy(update={"num_beam_groups": 3, "diversity_penalty": 100.0})
    groups_first = {h.ids[0] for h in run(new_search(model, diverse), model)}
    # A huge penalty forces each group of one beam onto a word earlier groups did not take
    # (a caption cannot start with <sep>: no empty box, so the three words are all there is).
    assert len(groups_first) == 3
    # Plain beam search on this sharp model keeps its beams on fewer first tokens.
    assert len({h.ids[0] for h in run(new_search(model, plain), model)}) < 3


def test_temperature_sharpens_and_flattens_sampling():
    model = TinyModel(11, sharpness=1.0)
    base = DecodingOptions(
        do_sample=True, num_return_sequences=12, max_length=1, min_length=1, seed=3, no_repeat_ngram_size=0
    )
    lp = model.log_probs(()).copy()
    lp[[PAD_ID, START_ID, UNK_ID, END_ID]] = -np.inf
    best = int(np.argmax(lp))
    cold = {h.ids[0] for h in run(new_search(model, base.model_copy(update={"temperature": 0.01})), model)}
    assert cold == {best}  # near 0: always the likeliest word
    warm = [h.ids[0] for h in run(new_search(model, base.model_copy(update={"temperature": 5.0})), model)]
    plain = [h.ids[0] for h in run(new_search(model, base), model)]
    # Flattened: the likeliest word is drawn less often than at temperature 1.
    assert warm.count(best) < plain.count(best)


def test_sampling_is_reproducible_by_seed_and_varies_without_it():
    model = TinyModel(7, sharpness=0.5)
    options = DecodingOptions(do_sample=True, num_return_sequences=6, max_length=6, seed=42, no_repeat_ngram_size=0)
    one = [h.ids for h in run(new_search(model, options), model)]
    two = [h.ids for h in run(new_search(model, options), model)]
    assert one == two
    other = [h.ids for h in run(new_search(model, options.model_copy(update={"seed": 43})), model)]
    assert one != other


def test_sampling_with_top_k_1_is_greedy():
    model = TinyModel(9, sharpness=1.0)
    greedy = run(
        new_search(
            model,
            DecodingOptions(
                num_beams=1, num_return_sequences=1, max_length=6, length_penalty=0.0, no_repeat_ngram_size=0
            ),
        ),
        model,
    )
    sampled = run(
        new_search(
            model,
            DecodingOptions(
                do_sample=True, num_return_sequences=3, top_k=1, max_length=6, seed=1, no_repeat_ngram_size=0
            ),
        ),
        model,
    )
    # Three samples of the one greedy caption: the first is kept, the copies are refused and redrawn
    # only when the caller refuses duplicates; here all three are accepted.
    assert {h.ids for h in sampled} == {greedy[0].ids}


def test_top_p_keeps_only_the_nucleus():
    model = TinyModel(4, sharpness=3.0)
    options = DecodingOptions(
        do_sample=True, num_return_sequences=8, top_p=0.3, max_length=1, min_length=1, seed=0, no_repeat_ngram_size=0
    )
    results = run(new_search(model, options), model)
    lp = model.log_probs(()).copy()
    lp[[PAD_ID, START_ID, UNK_ID, END_ID]] = -np.inf
    probs = np.exp(lp - np.logaddexp.reduce(lp[np.isfinite(lp)]))
    order = np.argsort(-probs)
    nucleus = set(order[: int(np.searchsorted(np.cumsum(probs[order]), 0.3)) + 1].tolist())
    assert {h.ids[0] for h in results} <= nucleus


def test_repetition_penalty_steers_away_from_used_words_and_keeps_model_scores():
    model = TinyModel(3, sharpness=0.3)  # flat: a penalty of 50 outweighs any preference
    options = DecodingOptions(
        num_beams=4, num_return_sequences=4, max_length=5, min_length=5, length_penalty=0.0, no_repeat_ngram_size=0
    )
    plain = run(new_search(model, options), model)
    penalised = run(new_search(model, options.model_copy(update={"repetition_penalty": 50.0})), model)
    words = lambda h: [t for t in h.ids if t != SEP_ID]  # noqa: E731
    assert any(len(set(words(h))) < len(words(h)) for h in plain)
    # Three words, five tokens: a word comes twice only after the other two, or with a box break between.
    assert sum(len(words(h)) - len(set(words(h))) for h in penalised) < sum(
        len(words(h)) - len(set(words(h))) for h in plain
    )
    for h in penalised:  # the score is the model's, not the penalised one
        assert math.isclose(h.log_prob, model.sequence_log_prob(h.ids, h.finished), abs_tol=1e-6)


def test_a_full_length_beam_whose_end_the_box_rules_forbid_is_kept_as_cut():
    # Three boxes need at least five tokens: within three, <end> is always forbidden.
    model = TinyModel(6)
    options = DecodingOptions(num_beams=3, num_return_sequences=3, max_length=3, no_repeat_ngram_size=0)
    results = run(new_search(model, options, box_counts={3}), model)
    assert results and all(not h.finished and len(h.ids) == 3 for h in results)


def test_invalid_option_combinations_are_refused():
    with pytest.raises(ValueError, match="num_return_sequences"):
        DecodingOptions(num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="multiple of num_beam_groups"):
        DecodingOptions(num_beams=5, num_beam_groups=2)
    with pytest.raises(ValueError, match="min_length"):
        DecodingOptions(min_length=10, max_length=5)
    with pytest.raises(ValueError, match="leave num_beams at 1"):
        DecodingOptions(do_sample=True, num_beams=4)
    assert DecodingOptions(do_sample=True).rows == 5


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    num_beams=st.integers(1, 6),
    extra_return=st.integers(0, 5),
    max_length=st.integers(1, 6),
    min_length=st.integers(0, 6),
    length_penalty=st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0]),
    no_repeat=st.integers(0, 3),
    groups=st.sampled_from([1, 2, 3]),
    do_sample=st.booleans(),
    k=st.sampled_from([3, 5, VOCAB]),
    block=st.sampled_from([(), (6,), (5, 7)]),
    box_counts=st.sampled_from([None, {1}, {2}, {1, 2}]),
    repetition_penalty=st.sampled_from([1.0, 3.0]),
)
def test_properties(
    seed,
    num_beams,
    extra_return,
    max_length,
    min_length,
    length_penalty,
    no_repeat,
    groups,
    do_sample,
    k,
    block,
    box_counts,
    repetition_penalty,
):
    min_length = min(min_length, max_length)
    if do_sample:
        options = DecodingOptions(
            do_sample=True,
            num_return_sequences=num_beams,
            max_length=max_length,
            min_length=min_length,
            length_penalty=length_penalty,
            no_repeat_ngram_size=no_repeat,
            seed=seed,
            temperature=1.5,
            top_p=0.9,
            repetition_penalty=repetition_penalty,
        )
    else:
        num_beams *= groups
        options = DecodingOptions(
            num_beams=num_beams,
            num_return_sequences=max(1, num_beams - extra_return),
            num_beam_groups=groups,
            diversity_penalty=0.5 * (groups > 1),
            max_length=max_length,
            min_length=min_length,
            length_penalty=length_penalty,
            no_repeat_ngram_size=no_repeat,
            repetition_penalty=repetition_penalty,
        )
    model = TinyModel(seed)
    results = run(new_search(model, options, blocked=block, box_counts=box_counts), model, k=k)

    assert len(results) <= options.num_return_sequences
    # Finished captions best first, then any cut at max_length (best first among them).
    assert [h.finished for h in results] == sorted((h.finished for h in results), reverse=True)
    for group in (True, False):
        scores = [h.score for h in results if h.finished is group]
        assert scores == sorted(scores, reverse=True)
    for h in results:
        assert 1 <= len(h.ids) <= max_length
        if h.finished:
            assert len(h.ids) >= max(1, min_length)
            assert well_formed(h.ids, box_counts)
        assert not {PAD_ID, START_ID, UNK_ID, END_ID, *block} & set(h.ids)
        for i in range(len(h.ids)):
            assert h.ids[i] not in repeated_ngram_bans(h.ids[:i], no_repeat)
        assert math.isclose(h.log_prob, model.sequence_log_prob(h.ids, h.finished), abs_tol=1e-6)
        assert math.isclose(h.score, normalized(h.log_prob, len(h.ids), length_penalty), abs_tol=1e-9)


def test_a_caption_is_never_written_past_its_history_columns():
    """The compiled row writes (memefly/decoding/kernels.py) check the bound that numpy's
    indexing checked for them: a full row refuses another token instead of writing past it."""
    from memefly.decoding.rows import WIDTH, RowTable

    table = RowTable(capacity=2)
    slots = table.allocate(1, np.zeros(1, np.float32), np.zeros(1, np.float32))
    Constraints(10).set_rows(table, slots)
    table.start_rows(slots, np.zeros(1, np.float32))
    for _ in range(WIDTH):
        table.append(slots, np.array([5]))
    with pytest.raises(IndexError):
        table.append(slots, np.array([6]))
    assert table.length[slots[0]] == WIDTH and table.ids(int(slots[0])) == (5,) * WIDTH


@pytest.mark.slow
def test_the_compiled_kernels_load_from_their_cache_in_a_new_process(tmp_path):
    """What the gateway image does: one process compiles the kernels into NUMBA_CACHE_DIR (the
    build), later ones load them from there (every start). Both must run a search of each kind
    (a recursive kernel, once, compiled fine and crashed every process that loaded it)."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    # Then, for each kernel the searches called: how many signatures came from the cache, how many were compiled.
    script = """
import json, numba
from memefly.decoding import kernels
from memefly.decoding.captioner import compile_kernels
compile_kernels()
used = {name: f.stats for name, f in vars(kernels).items() if isinstance(f, numba.core.registry.CPUDispatcher)}
print(json.dumps({name: [sum(s.cache_hits.values()), sum(s.cache_misses.values())] for name, s in used.items()}))
"""
    counts = {}
    for attempt in ("compiles", "loads"):
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, (attempt, result.returncode, result.stderr[-2000:])
        counts[attempt] = json.loads(result.stdout.splitlines()[-1])
    searches_call = (
        "select_beams",
        "groups_done",
        "forbidden_mask",
        "sampling_logits",
        "sampling_draw",
        "append_tokens",
    )
    assert all(counts["compiles"][name][1] > 0 for name in searches_call), counts["compiles"]
    assert all(counts["loads"][name][0] > 0 for name in searches_call), counts["loads"]
    assert not any(misses for _, misses in counts["loads"].values()), counts["loads"]  # nothing compiled again


@pytest.mark.slow
def test_the_kernels_run_where_numba_may_write_no_cache(tmp_path):
    """A read-only image, or a user without a home: numba finds no folder for its cache. The
    kernels then compile in memory, with one warning, instead of failing the import."""
    import os
    import subprocess
    import sys

    # numba's own setting for where it looks: here, one place that never has room.
    (tmp_path / "no_folder.py").write_text(
        "class Nowhere:\n    @classmethod\n    def from_function(cls, function, source):\n        return None\n"
    )
    env = {
        **os.environ,
        "NUMBA_CACHE_LOCATOR_CLASSES": "no_folder.Nowhere",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    script = "import logging; logging.basicConfig(); from memefly.decoding.captioner import compile_kernels; "
    script += "compile_kernels(); print('searched')"
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "searched" in result.stdout, result.stderr[-2000:]
    assert result.stderr.count("the search kernels compile at every start") == 1, result.stderr[-2000:]
