"""The row-by-row searches the array-at-once `memefly.decoding.search` replaced, kept as the
reference it must equal exactly (tests/test_search_equivalence.py). Each search owns its rows
as Python lists; its `advance` loops over them. Copied from commit fb82c46."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from memefly.contract import END_ID, PAD_ID, SEP_ID, START_ID, UNK_ID
from memefly.decoding.distinct import near_duplicate
from memefly.decoding.options import DecodingOptions
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


Accept = Callable[[tuple[int, ...]], bool]
Words = Callable[[tuple[int, ...]], tuple[tuple[str, ...], ...]]


@dataclass(frozen=True)
class Hypothesis:
    ids: tuple[int, ...]  # caption tokens, without <start> and <end>
    log_prob: float  # sum of the model's log-probabilities, <end> included when finished
    score: float
    finished: bool  # False: cut at max_length


def normalized(log_prob: float, length: int, length_penalty: float) -> float:
    return log_prob / (length + 1) ** length_penalty


class Search:
    """What the scheduler drives: `inputs()` for the live rows, then `advance()` with their outputs."""

    done: bool = False

    def __init__(
        self,
        state: np.ndarray,
        context: np.ndarray,
        options: DecodingOptions,
        constraints: Constraints,
        accept: Accept = lambda ids: True,
        words: Words | None = None,
    ):
        self.options = options
        self.constraints = constraints
        self.accept = accept
        self.words = words
        # In the dtype the decoder's step takes them (float32, or float16 on a half-size wire).
        self.initial_state = np.asarray(state).reshape(-1)  # after `init`: the <start> row
        self.context = np.asarray(context).reshape(-1)  # the same for every row

    @property
    def rows(self) -> int:
        raise NotImplementedError

    def inputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(token int32 [rows], state [rows, H], context [rows, C]) for the next step."""
        raise NotImplementedError

    def advance(self, top_ids: np.ndarray, top_log_probs: np.ndarray, state: np.ndarray) -> None:
        raise NotImplementedError

    def results(self) -> list[Hypothesis]:
        raise NotImplementedError

    def _penalized(self, histories, top_ids: np.ndarray, log_probs: np.ndarray) -> np.ndarray:
        """What selection and sampling see: log-probs of words already in the caption multiplied by
        repetition_penalty (HF's rule for negative scores). Scores keep the model's log-probs."""
        penalty = self.options.repetition_penalty
        if penalty == 1.0:
            return log_probs
        return np.where(self.constraints.repeated(histories, top_ids), log_probs * penalty, log_probs)

    def _step_inputs(self, histories: list[tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tokens = np.array([h[-1] if h else START_ID for h in histories], dtype=np.int32)
        return tokens, self.state, np.broadcast_to(self.context, (len(histories), self.context.size))


class _Beam(NamedTuple):  # a NamedTuple: made thousands of times a second
    ids: tuple[int, ...]
    log_prob: float  # the model's
    rank: float  # what selection uses: log_prob minus diversity penalties so far


class BeamSearch(Search):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        options = self.options
        self.per_group = options.num_beams // options.num_beam_groups
        groups = options.num_beam_groups
        # Every group starts from the one <start> beam (HF: other beams start at -inf).
        self.groups: list[list[_Beam]] = [[_Beam((), 0.0, 0.0)] for _ in range(groups)]
        self.group_done = [False] * groups
        self.finished: list[list[Hypothesis]] = [[] for _ in range(groups)]
        self.cut: list[Hypothesis] = []  # full-length beams whose <end> was not among the top K
        self.state = np.repeat(self.initial_state[None], groups, axis=0)
        self.length = 0

    def _live(self) -> list[_Beam]:
        return [b for g, beams in enumerate(self.groups) if not self.group_done[g] for b in beams]

    @property
    def rows(self) -> int:
        return 0 if self.done else len(self._live())

    def inputs(self):
        return self._step_inputs([b.ids for b in self._live()])

    def advance(self, top_ids, top_log_probs, state) -> None:
        self.length += 1
        penalty = self.options.diversity_penalty
        used: dict[int, int] = {}  # tokens earlier groups chose at this step
        parents: dict[int, list[int]] = {}  # group -> rows its live beams came from
        row = 0
        for g, beams in enumerate(self.groups):
            if self.group_done[g]:
                continue
            n = len(beams)
            ids = top_ids[row : row + n]
            log_probs = top_log_probs[row : row + n].astype(np.float64)
            total = np.array([b.log_prob for b in beams])[:, None] + log_probs
            rank = np.array([b.rank for b in beams])[:, None] + self._penalized([b.ids for b in beams], ids, log_probs)
            if penalty and used:
                rank = rank - penalty * np.vectorize(lambda t: used.get(int(t), 0), otypes=[float])(ids)
            rank[self.constraints.forbidden([b.ids for b in beams], ids)] = -np.inf

            live: list[_Beam] = []
            flat_rank = rank.reshape(-1)
            for position, flat in enumerate(_best_first(flat_rank, self.per_group + n)):
                if not np.isfinite(flat_rank[flat]):
                    break
                i, k = divmod(int(flat), ids.shape[1])
                token = int(ids[i, k])
                if token == END_ID:
                    # As in HF: an <end> only counts when it ranks among the group's beams.
                    if position < self.per_group:
                        self._finish(g, beams[i].ids, float(total[i, k]), finished=True)
                    continue
                live.append(_Beam(beams[i].ids + (token,), float(total[i, k]), float(flat_rank[flat])))
                parents.setdefault(g, []).append(row + i)
                if len(live) == self.per_group:
                    break
            for i, beam in enumerate(beams):
                # At full length with no <end> it may take (none among the top K, or one the box
                # rules forbid): kept as a cut caption, not lost.
                if len(beam.ids) >= self.options.max_length and not np.isfinite(rank[i][ids[i] == END_ID]).any():
                    self._cut(beam)
            for beam in live:
                used[beam.ids[-1]] = used.get(beam.ids[-1], 0) + 1
            self.groups[g] = live
            row += n
            self.group_done[g] = self._group_done(g)

        # The next step's rows: live beams of the groups still searching, in group order.
        rows = [r for g in range(len(self.groups)) if not self.group_done[g] for r in parents.get(g, [])]
        self.state = np.asarray(state)[rows]
        self.done = all(self.group_done)

    def _finish(self, group: int, ids: tuple[int, ...], log_prob: float, finished: bool) -> None:
        if self.accept(ids):
            score = normalized(log_prob, len(ids), self.options.length_penalty)
            self.finished[group].append(Hypothesis(ids, log_prob, score, finished))

    def _cut(self, beam: _Beam) -> None:
        if self.accept(beam.ids):
            score = normalized(beam.log_prob, len(beam.ids), self.options.length_penalty)
            self.cut.append(Hypothesis(beam.ids, beam.log_prob, score, finished=False))

    def _group_done(self, g: int) -> bool:
        """Done when no live beam can still beat the group's worst kept caption (HF early_stopping="never")."""
        live = self.groups[g]
        if not live:
            return True
        kept = sorted((h.score for h in self.finished[g]), reverse=True)[: self.per_group]
        if len(kept) < self.per_group:
            return False
        best = max(b.log_prob for b in live)  # log-probs only fall as a caption grows
        lp = self.options.length_penalty
        # With lp > 0 a longer caption divides by more: the bound is at max_length.
        length = self.options.max_length if lp > 0 else self.length
        return normalized(best, length, lp) <= kept[-1]

    def results(self) -> list[Hypothesis]:
        finished = sorted((h for group in self.finished for h in group), key=lambda h: -h.score)
        # Captions cut at max_length only fill places no finished caption took.
        cut = sorted(self.cut, key=lambda h: -h.score)
        # Finished captions first, best first; cut ones only after them, whatever their score.
        return pick_distinct(finished + cut, self.options.num_return_sequences, self.words)


@dataclass
class _Sample:
    ids: tuple[int, ...] = ()
    log_prob: float = 0.0


class SampleSearch(Search):
    """num_candidates independent samples (a refused one starts again, a few times); the
    results are the best num_return_sequences of them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rng = np.random.default_rng(self.options.seed)
        n = self.options.num_candidates
        self.samples = [_Sample() for _ in range(n)]
        self.state = np.repeat(self.initial_state[None], n, axis=0)
        self.restarts_left = 2 * n
        self.finished: list[Hypothesis] = []

    @property
    def rows(self) -> int:
        return 0 if self.done else len(self.samples)

    def inputs(self):
        return self._step_inputs([s.ids for s in self.samples])

    def _distributions(self, log_probs: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sampling probabilities [rows, K] over each row's candidates (temperature, then top-k,
        then top-p), and which rows have any (a row with nothing allowed has none)."""
        # A NaN log-prob (a broken model) is never drawn: it would make the row's sums NaN.
        logits = np.where(allowed & ~np.isnan(log_probs), log_probs / self.options.temperature, -np.inf)
        order = np.argsort(-logits, axis=1, kind="stable")
        if self.options.top_k:
            np.put_along_axis(logits, order[:, self.options.top_k :], -np.inf, axis=1)
        finite = np.isfinite(logits)
        valid = finite.any(axis=1)
        highest = np.where(finite, logits, -np.inf).max(axis=1, initial=-np.inf)
        with np.errstate(invalid="ignore"):  # rows with nothing allowed: NaN, never drawn from
            probs = np.exp(logits - np.where(valid, highest, 0.0)[:, None])
            probs /= probs.sum(axis=1, keepdims=True)
            if self.options.top_p < 1.0:
                sorted_probs = np.take_along_axis(probs, order, axis=1)
                # Keep the smallest set whose mass reaches top_p (the first token always stays).
                keep = np.cumsum(sorted_probs, axis=1) - sorted_probs < self.options.top_p
                np.put_along_axis(probs, order, np.where(keep, sorted_probs, 0.0), axis=1)
                probs /= probs.sum(axis=1, keepdims=True)
        return probs, valid

    def _draw(self, probs: np.ndarray) -> np.ndarray:
        """One candidate per row, as `rng.choice(K, p=row)` row after row would draw them: the
        same uniform numbers, in the same order, against each row's normalised cumulative sum."""
        cdf = probs.cumsum(axis=1)
        cdf /= cdf[:, -1:]
        uniform = self.rng.random(len(probs))
        return (cdf <= uniform[:, None]).sum(axis=1)

    def advance(self, top_ids, top_log_probs, state) -> None:
        histories = [s.ids for s in self.samples]
        forbidden = self.constraints.forbidden(histories, top_ids)
        log_probs = top_log_probs.astype(np.float64)
        probs, valid = self._distributions(self._penalized(histories, top_ids, log_probs), ~forbidden)
        drawn = np.zeros(len(histories), dtype=np.int64)
        drawn[valid] = self._draw(probs[valid])
        rows = np.arange(len(histories))
        tokens = top_ids[rows, drawn].tolist()
        token_log_probs = log_probs[rows, drawn].tolist()
        kept_samples, kept_rows = [], []
        for i, sample in enumerate(self.samples):
            if not valid[i]:
                # Nothing allowed (at max_length: <end> not among the top K): keep it as cut.
                if sample.ids:
                    self._finish(sample.ids, sample.log_prob, finished=False)
                continue
            token, log_prob = int(tokens[i]), sample.log_prob + token_log_probs[i]
            if token == END_ID:
                if self._finish(sample.ids, log_prob, finished=True) or self.restarts_left <= 0:
                    continue
                self.restarts_left -= 1  # refused: draw this one again from <start>
                kept_samples.append(_Sample())
                kept_rows.append(-1)
                continue
            kept_samples.append(_Sample(sample.ids + (token,), log_prob))
            kept_rows.append(i)
        self.samples = kept_samples
        if kept_rows:
            rows = np.asarray(kept_rows)
            self.state = np.where((rows < 0)[:, None], self.initial_state[None], np.asarray(state)[np.maximum(rows, 0)])
        else:
            self.state = self.state[:0]
        self.done = not self.samples

    def _finish(self, ids: tuple[int, ...], log_prob: float, finished: bool) -> bool:
        if not self.accept(ids):
            return False
        self.finished.append(
            Hypothesis(ids, log_prob, normalized(log_prob, len(ids), self.options.length_penalty), finished)
        )
        return True

    def results(self) -> list[Hypothesis]:
        ranked = sorted(self.finished, key=lambda h: (not h.finished, -h.score))  # cut ones last
        return pick_distinct(ranked, self.options.num_return_sequences, self.words)


def pick_distinct(ranked: list[Hypothesis], n: int, words: Words | None) -> list[Hypothesis]:
    """The first n of RANKED, skipping near-duplicates of those already kept; when fewer than n
    distinct ones exist, the best of the rest fill the places (an answer keeps its n memes)."""
    if words is None:
        return ranked[:n]
    kept: list[Hypothesis] = []
    kept_words: list[tuple[tuple[str, ...], ...]] = []
    rest: list[Hypothesis] = []
    for hypothesis in ranked:
        if len(kept) == n:
            break
        caption = words(hypothesis.ids)
        if any(near_duplicate(caption, other) for other in kept_words):
            rest.append(hypothesis)
        else:
            kept.append(hypothesis)
            kept_words.append(caption)
    return kept + rest[: n - len(kept)]


def _best_first(scores: np.ndarray, needed: int) -> np.ndarray:
    """Indices of the `needed` highest scores, highest first; equal scores by index (the earlier
    beam and candidate first). A group never looks further: its beams, plus at most one <end>
    per row that cannot take a place. (Until the compiled search, a partition chose among
    scores tied at the cut: an order numpy leaves open, which no search promised.)"""
    return np.argsort(-scores, kind="stable")[:needed]


def make_search(
    state,
    context,
    options: DecodingOptions,
    constraints: Constraints,
    accept: Accept = lambda ids: True,
    words: Words | None = None,
) -> Search:
    kind = SampleSearch if options.do_sample else BeamSearch
    return kind(state, context, options, constraints, accept, words)
