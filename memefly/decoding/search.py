"""Beam search (plain and diverse) and sampling, one step at a time, over the top-K the decoder sends.

Scores follow Hugging Face `generate()`: sum of log-probabilities (with <end>) divided by
(length + 1) ** length_penalty, where length counts the caption's tokens before <end>.
`accept(ids)` lets the caller refuse a finished caption (one the client already has, a
training caption, or a duplicate); a refused caption does not take a place among the results.
`words(ids)` gives a caption's words per box: with it, the results are the best-scoring
captions of which no two are near-duplicates (`memefly.decoding.distinct`).

A `Search` is one request's bookkeeping: its options, rules, finished captions and results.
Its rows live in a `SearchTable` shared by every search a driver steps, and `SearchTable.advance`
moves all of them at once: the caption rules, beam selection and sampling are compiled loops
over [rows, K] (`kernels.py`); Python runs once per finished caption, not per row.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from memefly.contract import END_ID
from memefly.decoding import kernels
from memefly.decoding.constraints import Constraints, forbidden, repeated
from memefly.decoding.distinct import DistinctCaptions
from memefly.decoding.options import DecodingOptions
from memefly.decoding.rows import RowTable, StepRows

Accept = Callable[[tuple[int, ...]], bool]
Words = Callable[[tuple[int, ...]], tuple[tuple[str, ...], ...]]


class Hypothesis(NamedTuple):  # a NamedTuple: searches make one per finished caption, thousands a second
    ids: tuple[int, ...]  # caption tokens, without <start> and <end>
    log_prob: float  # sum of the model's log-probabilities, <end> included when finished
    score: float
    finished: bool  # False: cut at max_length


def normalized(log_prob: float, length: int, length_penalty: float) -> float:
    return log_prob / (length + 1) ** length_penalty


class Search:
    """One request's search; a `SearchTable` steps its rows."""

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
        self.table: RowTable | None = None
        self.slots = np.zeros(0, dtype=np.int64)  # this search's block of the table
        self.first_slot = 0
        self.live_rows = 0

    @property
    def rows(self) -> int:
        """Rows the next step carries."""
        return 0 if self.done else self.live_rows

    @property
    def block_rows(self) -> int:
        raise NotImplementedError

    def results(self) -> list[Hypothesis]:
        raise NotImplementedError

    def _join(self, table: RowTable) -> None:
        self.table = table
        self.slots = table.allocate(self.block_rows, self.initial_state, self.context)
        self.first_slot = int(self.slots[0])
        self.constraints.set_rows(table, self.block)
        table.repetition_penalty[self.block] = self.options.repetition_penalty

    @property
    def block(self) -> slice:
        """The search's slots as a slice (they are consecutive): cheaper to write through than an index array."""
        return slice(self.first_slot, self.first_slot + self.slots.size)

    def _leave(self) -> None:
        if self.table is not None:
            self.constraints.release_rows(self.table, self.slots)
            self.table.free(self.slots)
            self.table = None


class BeamSearch(Search):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options = self.options
        self.per_group = options.num_beams // options.num_beam_groups
        groups = options.num_beam_groups
        self.finished: list[list[Hypothesis]] = [[] for _ in range(groups)]
        # Per group: a min-heap of its best `per_group` finished scores; once full, its top is the
        # worst kept caption's, mirrored in the table's group_floor for the array-wide check.
        self._best_scores: list[list[float]] = [[] for _ in range(groups)]
        self.cut: list[Hypothesis] = []  # full-length beams whose <end> was not among the top K
        self.live_rows = groups  # every group starts from the one <start> beam

    @property
    def block_rows(self) -> int:
        return self.options.num_beams

    def _join(self, table: RowTable) -> None:
        super()._join(table)
        # Every group starts from the one <start> beam (HF: other beams start at -inf).
        block = self.block
        table.start_rows(slice(block.start, block.stop, self.per_group), self.initial_state)
        table.group_floor[block] = np.nan  # group g's at slots[g]: none until per_group captions finish
        table.per_group[block] = self.per_group
        table.diversity[block] = self.options.diversity_penalty
        table.cut_length[block] = self.options.max_length
        table.length_penalty[block] = self.options.length_penalty

    def _finish(self, group: int, ids: tuple[int, ...], log_prob: float) -> None:
        if not self.accept(ids):
            return
        score = normalized(log_prob, len(ids), self.options.length_penalty)
        self.finished[group].append(Hypothesis(ids, log_prob, score, True))
        best = self._best_scores[group]  # a min-heap of the group's best per_group scores
        if len(best) < self.per_group:
            heapq.heappush(best, score)
            if len(best) < self.per_group:
                return
        elif heapq.heappushpop(best, score) == score:  # no better than the worst kept: the floor stays
            return
        assert self.table is not None  # only a search in a table is stepped
        self.table.group_floor[self.first_slot + group] = best[0]

    def _cut(self, ids: tuple[int, ...], log_prob: float) -> None:
        if self.accept(ids):
            score = normalized(log_prob, len(ids), self.options.length_penalty)
            self.cut.append(Hypothesis(ids, log_prob, score, finished=False))

    def results(self) -> list[Hypothesis]:
        finished = sorted((h for group in self.finished for h in group), key=lambda h: -h.score)
        # Captions cut at max_length only fill places no finished caption took.
        cut = sorted(self.cut, key=lambda h: -h.score)
        # Finished captions first, best first; cut ones only after them, whatever their score.
        return pick_distinct(finished + cut, self.options.num_return_sequences, self.words)


class SampleSearch(Search):
    """num_candidates independent samples (a refused one starts again, a few times); the
    results are the best num_return_sequences of them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rng = np.random.default_rng(self.options.seed)
        candidates = self.block_rows
        self.restarts_left = 2 * candidates
        self.finished: list[Hypothesis] = []
        self.live_rows = candidates

    @property
    def block_rows(self) -> int:
        candidates = self.options.num_candidates
        assert candidates is not None  # sampling options always have it (DecodingOptions resolves it)
        return candidates

    def _join(self, table: RowTable) -> None:
        super()._join(table)
        options = self.options
        block = self.block
        table.temperature[block] = options.temperature
        table.top_k[block] = options.top_k
        table.top_p[block] = options.top_p
        table.start_rows(block, self.initial_state)

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


class SearchTable:
    """The rows of every search a driver (the gateway's scheduler, `run_searches`) steps: `add` a
    search, take `inputs` for some of them, call the decoder, `advance` them with its outputs."""

    def __init__(self) -> None:
        self.rows = RowTable()

    def add(self, search: Search) -> None:
        if search.table is not None:
            raise ValueError("the search is already being stepped")
        search._join(self.rows)

    def remove(self, search: Search) -> None:
        """Gives its rows back (finished, failed or cancelled); safe to call twice."""
        search._leave()

    @property
    def live_rows(self) -> int:
        """Rows the searches in the table carry now."""
        return int(np.count_nonzero(self.rows.alive))

    def inputs(self, searches: Sequence[Search]) -> tuple[StepRows, np.ndarray, np.ndarray, np.ndarray]:
        """The live rows of SEARCHES, in order, and their (token int32 [rows], state [rows, H],
        context [rows, C]) for the next step."""
        searches = list(searches)
        table = self.rows
        blocks = np.concatenate([s.slots for s in searches]) if searches else np.zeros(0, np.int64)
        owners = np.repeat(np.arange(len(searches)), [s.slots.size for s in searches])
        alive = table.alive[blocks]
        slots, owner = blocks[alive], owners[alive]
        step = StepRows(searches, slots, owner, blocks, owners)
        assert table.state is not None and table.context is not None  # made when the first search joined
        # np.take: a row gather at about half the cost of fancy indexing.
        return (
            step,
            table.last_tokens(slots),
            np.take(table.state, slots, axis=0),
            np.take(table.context, slots, axis=0),
        )

    def advance(
        self, step: StepRows, top_ids: np.ndarray, top_log_probs: np.ndarray, state: np.ndarray
    ) -> list[tuple[Search, Exception]]:
        """Advance the searches of STEP with the decoder's outputs for its rows. Searches removed
        while the call was out are skipped. Returns the searches that failed (a refusal check
        that raised), each with its error; the others go on."""
        searches, slots, owner = step.searches, step.slots, step.owner
        top_ids, state = np.asarray(top_ids), np.asarray(state)
        if not (len(top_ids) == len(top_log_probs) == len(state) == len(slots)):
            raise ValueError(f"the step returned {len(top_ids)} rows for {len(slots)}")
        present_list = [s.table is self.rows and not s.done for s in searches]
        present = np.array(present_list, dtype=bool)
        if not all(present_list):
            keep = present[owner]
            slots, owner, top_ids, top_log_probs, state = (
                slots[keep],
                owner[keep],
                top_ids[keep],
                top_log_probs[keep],
                state[keep],
            )
        table = self.rows
        log_probs = np.asarray(top_log_probs).astype(np.float64)
        mask = forbidden(table, slots, top_ids)
        # What selection and sampling see: log-probs of words already in the caption multiplied by
        # repetition_penalty (HF's rule for negative scores). Scores keep the model's log-probs.
        ranked = log_probs
        penalty = table.repetition_penalty[slots]
        penalised = np.flatnonzero(penalty != 1.0)
        if penalised.size:
            ranked = log_probs.copy()
            hit = repeated(table, slots[penalised], top_ids[penalised])
            sub = log_probs[penalised]
            ranked[penalised] = np.where(hit, sub * penalty[penalised][:, None], sub)
        beam = np.array([isinstance(s, BeamSearch) for s in searches], dtype=bool)[owner]
        failures: dict[int, Exception] = {}
        step_parts = (slots, owner, top_ids, log_probs, ranked, mask, state)
        for kind, rows in ((_advance_beams, beam), (_advance_samples, ~beam)):
            if rows.all():  # one kind of search only (the usual case): no copies
                kind(table, searches, *step_parts, failures=failures)
            elif rows.any():
                kind(table, searches, *(part[rows] for part in step_parts), failures=failures)
        for i in failures:
            table.alive[searches[i].slots] = False
        alive = table.alive[step.blocks] & present[step.block_owner]  # a removed search's block may be reused
        counts = np.bincount(step.block_owner[alive], minlength=len(searches)).tolist()
        for search, is_present, count in zip(searches, present_list, counts, strict=True):
            if is_present:
                search.live_rows = count
                search.done = count == 0
        return [(searches[i], error) for i, error in failures.items()]


def _advance_beams(table, searches, slots, owner, ids, log_probs, ranked, mask, state, *, failures) -> None:
    """One step of every beam search in the call: the compiled selection (`kernels.select_beams`)
    ranks each group's candidates and picks its children; then, group by group, each search sees
    its finished and cut captions (`accept` in the order the row-by-row search used) and a group
    stops when none of its beams can still beat its worst kept caption; the children are written last."""
    children, segments, events = kernels.select_beams(
        owner, slots, ids, log_probs, ranked, mask, table.log_prob, table.rank, table.length,
        table.per_group, table.diversity, table.block_start, table.cut_length,
    )  # fmt: skip
    _finished_captions(table, searches, slots, events, failures)
    # A group is done without children, or when none can beat its worst kept caption (its
    # floor: the captions just finished count).
    group, has_children, best, start, length = segments
    done = kernels.groups_done(
        group, has_children, best, start, length, table.group_floor, table.length_penalty, table.cut_length
    )
    table.alive[slots] = False
    going = ~done[children[5]]
    parent_rows, tokens, totals, ranks, dest = (column[going] for column in children[:5])
    if not dest.size:
        return
    table.copy_rows(dest, slots[parent_rows])
    table.log_prob[dest] = totals
    table.rank[dest] = ranks
    table.append(dest, tokens)
    table.state[dest] = np.take(state, parent_rows, axis=0)
    table.alive[dest] = True


def _finished_captions(table, searches, slots, events, failures) -> None:
    """The Python part of a beam step, once per caption, in the order `select_beams` gives:
    finished and cut captions (EVENTS: kind, owner, group, row, total log-prob)."""
    kinds, owners, groups, rows, totals = events
    if not kinds.size:
        return
    event_slots = slots[rows]
    lengths = table.length[event_slots]
    captions = table.history[event_slots, : int(lengths.max())].tolist()  # one read for all, not one per caption
    for kind, owner, group, total, caption, length in zip(
        kinds.tolist(), owners.tolist(), groups.tolist(), totals.tolist(), captions, lengths.tolist(), strict=True
    ):
        if owner in failures:
            continue
        search, ids = searches[owner], tuple(caption[:length])
        try:
            if kind == kernels.FINISHED:
                search._finish(group, ids, total)
            else:
                search._cut(ids, total)
        except Exception as error:  # a refusal check that raised: this search fails, not the call
            failures[owner] = error


def _advance_samples(table, searches, slots, owner, ids, log_probs, ranked, mask, state, *, failures) -> None:
    """One draw for every sampling row in the call, with each search's own random numbers."""
    shifted, order, valid = kernels.sampling_logits(slots, ranked, mask, table.temperature, table.top_k)
    probs = np.exp(shifted)  # numpy's exp, as the draws have always used
    uniform = np.zeros(slots.size)
    counts = np.bincount(owner[valid], minlength=len(searches))
    draws = [searches[i].rng.random(int(n)) for i, n in enumerate(counts.tolist()) if n]
    if draws:
        # Rows are grouped by search: each search's numbers go to its valid rows, in row order.
        uniform[valid] = np.concatenate(draws)
    drawn = kernels.sampling_draw(probs, order, valid, uniform, slots, table.top_p)
    rows = np.arange(slots.size)
    tokens = ids[rows, drawn]
    totals = table.log_prob[slots] + log_probs[rows, drawn]
    ended = ~valid | (tokens == END_ID)
    going = ~ended
    table.log_prob[slots[going]] = totals[going]
    table.append(slots[going], tokens[going])
    table.state[slots[going]] = state[going]
    for row in np.flatnonzero(ended).tolist():
        search_index = int(owner[row])
        if search_index in failures:
            continue
        search, slot = searches[search_index], int(slots[row])
        table.alive[slot] = False
        try:
            if not valid[row]:
                # Nothing allowed (at max_length: <end> not among the top K): keep it as cut.
                if table.length[slot]:
                    search._finish(table.ids(slot), float(table.log_prob[slot]), finished=False)
                continue
            if search._finish(table.ids(slot), float(totals[row]), finished=True) or search.restarts_left <= 0:
                continue
        except Exception as error:
            failures[search_index] = error
            continue
        search.restarts_left -= 1  # refused: draw this one again from <start>
        table.start_rows(np.array([slot]), search.initial_state)


def pick_distinct(ranked: list[Hypothesis], n: int, words: Words | None) -> list[Hypothesis]:
    """The first n of RANKED, skipping near-duplicates of those already kept; when fewer than n
    distinct ones exist, the best of the rest fill the places (an answer keeps its n memes)."""
    if words is None:
        return ranked[:n]
    kept: list[Hypothesis] = []
    distinct = DistinctCaptions()
    rest: list[Hypothesis] = []
    for hypothesis in ranked:
        if len(kept) == n:
            break
        (kept if distinct.add(words(hypothesis.ids)) else rest).append(hypothesis)
    return kept + rest[: n - len(kept)]


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
