"""Beam search (plain and diverse) and sampling, one step at a time, over the top-K the decoder sends.

Scores follow Hugging Face `generate()`: sum of log-probabilities (with <end>) divided by
(length + 1) ** length_penalty, where length counts the caption's tokens before <end>.
`accept(ids)` lets the caller refuse a finished caption (one the client already has, a
training caption, or a duplicate); a refused caption does not take a place among the results.
`words(ids)` gives a caption's words per box: with it, the results are the best-scoring
captions of which no two are near-duplicates (`memefly.decoding.distinct`).

A `Search` is one request's bookkeeping: its options, rules, finished captions and results.
Its rows live in a `SearchTable` shared by every search a driver steps, and `SearchTable.advance`
moves all of them at once: selection, sampling and the caption rules are array operations over
[rows, K]; Python runs once per finished caption, not per row.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import numpy as np

from memefly.contract import END_ID
from memefly.decoding.constraints import Constraints, forbidden, repeated
from memefly.decoding.distinct import all_words, near_duplicate_flat
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
        self.constraints.set_rows(table, self.slots)
        table.repetition_penalty[self.slots] = self.options.repetition_penalty

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
        self.length = 0
        self.live_rows = groups  # every group starts from the one <start> beam

    @property
    def block_rows(self) -> int:
        return self.options.num_beams

    def _join(self, table: RowTable) -> None:
        super()._join(table)
        # Every group starts from the one <start> beam (HF: other beams start at -inf).
        table.start_rows(self.slots[:: self.per_group], self.initial_state)
        table.group_floor[self.slots] = np.nan  # group g's at slots[g]: none until per_group captions finish

    def _finish(self, group: int, ids: tuple[int, ...], log_prob: float) -> None:
        if self.accept(ids):
            score = normalized(log_prob, len(ids), self.options.length_penalty)
            self.finished[group].append(Hypothesis(ids, log_prob, score, True))
            best = self._best_scores[group]  # a min-heap of the group's best per_group scores
            (heapq.heappush if len(best) < self.per_group else heapq.heappushpop)(best, score)
            if len(best) == self.per_group:
                assert self.table is not None  # only a search in a table is stepped
                self.table.group_floor[self.slots[0] + group] = best[0]

    def _cut(self, ids: tuple[int, ...], log_prob: float) -> None:
        if self.accept(ids):
            score = normalized(log_prob, len(ids), self.options.length_penalty)
            self.cut.append(Hypothesis(ids, log_prob, score, finished=False))

    def _group_done(self, group: int, best: float) -> bool:
        """Whether no live beam (the best has log-prob BEST) can still beat the group's worst kept
        caption (HF early_stopping="never")."""
        kept = self._best_scores[group]
        if len(kept) < self.per_group:
            return False
        floor = kept[0]
        lp = self.options.length_penalty
        # Log-probs only fall as a caption grows; with lp > 0 a longer caption divides by more.
        length = self.options.max_length if lp > 0 else self.length
        return normalized(best, length, lp) <= floor

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
        table.temperature[self.slots] = options.temperature
        table.top_k[self.slots] = options.top_k
        table.top_p[self.slots] = options.top_p
        table.start_rows(self.slots, self.initial_state)

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
        return step, table.last_tokens(slots), table.state[slots], table.context[slots]

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
        present = np.array([s.table is self.rows and not s.done for s in searches], dtype=bool)
        if not present.all():
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
        for i, search in enumerate(searches):
            if present[i]:
                search.live_rows = counts[i]
                search.done = search.live_rows == 0
        return [(searches[i], error) for i, error in failures.items()]


def _owners_in_order(owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows grouped by owner: each row's segment and each segment's owner."""
    first = np.ones(owner.size, dtype=bool)
    first[1:] = owner[1:] != owner[:-1]
    return np.cumsum(first) - 1, owner[first]


def _advance_beams(table, searches, slots, owner, ids, log_probs, ranked, mask, state, *, failures) -> None:
    """One step of every beam search in the call, group by group (diverse beam search's groups see
    the tokens earlier groups chose at this step); within a group pass, all searches at once."""
    per_group = np.array([getattr(s, "per_group", 1) for s in searches])
    diversity = np.array([getattr(s.options, "diversity_penalty", 0.0) for s in searches])
    starts = np.array([s.slots[0] if s.slots.size else 0 for s in searches])
    for i in np.unique(owner).tolist():
        searches[i].length += 1
    offset = slots - starts[owner]
    group = offset // per_group[owner]
    column = offset % per_group[owner]
    total = table.log_prob[slots][:, None] + log_probs
    rank = table.rank[slots][:, None] + ranked
    cut_length = np.array([s.options.max_length for s in searches])[owner]
    full = table.length[slots] >= cut_length
    K = ids.shape[1]
    children = []  # per pass: (rows, tokens, totals, ranks, dest slots, owners)
    chosen_owner, chosen_token = np.zeros(0, np.int64), np.zeros(0, ids.dtype)
    for g in range(int(group.max(initial=-1)) + 1):
        rows = np.flatnonzero(group == g)
        if not rows.size:
            continue
        row_owner = owner[rows]
        g_rank = rank[rows]
        if g and chosen_owner.size and diversity[row_owner].any():
            g_rank = g_rank - diversity[row_owner][:, None] * _uses(chosen_owner, chosen_token, row_owner, ids[rows])
        sorted_rows = bool((g_rank[:, 1:] <= g_rank[:, :-1]).all())  # before the mask: NaN is unsorted
        g_rank[mask[rows]] = -np.inf
        segment, seg_owner = _owners_in_order(row_owner)
        segments = seg_owner.size
        P = per_group[seg_owner]
        width = int(P.max())
        row_at = np.full((segments, width), -1)  # [segment, column] -> index into ROWS
        row_at[segment, column[rows]] = np.arange(rows.size)
        if sorted_rows:
            order, values = _best_of_sorted_rows(g_rank, segment, column[rows], segments, width)
        else:
            flat = np.full((segments, width, K), -np.inf)
            flat[segment, column[rows]] = g_rank
            order, values = _best_first(flat.reshape(segments, width * K), min(2 * width, width * K))
        parent = row_at[np.arange(segments)[:, None], order // K]  # -1: a padding column (-inf)
        k = order % K
        parent_rows = rows[np.maximum(parent, 0)]
        tokens = ids[parent_rows, k]
        totals = total[parent_rows, k]
        finite = np.isfinite(values)
        is_end = tokens == END_ID
        position = np.arange(order.shape[1])[None]
        needed = P + np.bincount(segment, minlength=segments)
        # As in HF: an <end> only counts when it ranks among the group's beams.
        ends = finite & is_end & (position < P[:, None])
        live = finite & ~is_end & (position < needed[:, None])
        taken = np.cumsum(live, axis=1)
        live &= taken <= P[:, None]
        # At full length with no <end> it may take (none among the top K, or one the box rules
        # forbid): kept as a cut caption, not lost.
        cut = full[rows] & ~(np.isfinite(g_rank) & (ids[rows] == END_ID)).any(axis=1)
        _finished_captions(table, searches, g, seg_owner, ends, parent_rows, totals, slots, rows[cut], owner, failures)
        # A group is done without live beams, or when none can beat its worst kept caption.
        done = ~live.any(axis=1)
        may_stop = ~done & ~np.isnan(table.group_floor[starts[seg_owner] + g])
        if may_stop.any():
            best = np.where(live, totals, -np.inf).max(axis=1)
            for s_index in np.flatnonzero(may_stop).tolist():
                done[s_index] = searches[seg_owner[s_index]]._group_done(g, float(best[s_index]))
        seg, pos = np.nonzero(live)
        if diversity.any():
            chosen_owner = np.concatenate([chosen_owner, seg_owner[seg]])
            chosen_token = np.concatenate([chosen_token, tokens[seg, pos]])
        going = ~done[seg]
        seg, pos = seg[going], pos[going]
        dest = starts[seg_owner[seg]] + g * P[seg] + taken[seg, pos] - 1
        children.append((parent_rows[seg, pos], tokens[seg, pos], totals[seg, pos], values[seg, pos], dest))
    table.alive[slots] = False
    if not children:
        return
    parent_rows, tokens, totals, ranks, dest = (np.concatenate(parts) for parts in zip(*children, strict=True))
    table.copy_rows(dest, slots[parent_rows])
    table.log_prob[dest] = totals
    table.rank[dest] = ranks
    table.append(dest, tokens)
    table.state[dest] = state[parent_rows]
    table.alive[dest] = True


def _uses(chosen_owner, chosen_token, row_owner, candidates) -> np.ndarray:
    """Float [rows, K]: how often earlier groups of the row's search chose each candidate at this step."""
    order = np.argsort(chosen_owner, kind="stable")
    owners, tokens = chosen_owner[order], chosen_token[order]
    first = np.searchsorted(owners, owners)
    rank = np.arange(owners.size) - first
    table = np.full((int(owners.max()) + 1, int(rank.max()) + 1), -1, dtype=np.int64)
    table[owners, rank] = tokens
    mine = table[np.minimum(row_owner, table.shape[0] - 1)]
    mine[row_owner >= table.shape[0]] = -1
    return (candidates[:, :, None] == mine[:, None, :]).sum(axis=2).astype(np.float64)


def _finished_captions(table, searches, g, seg_owner, ends, parent_rows, totals, slots, cut_rows, owner, failures):
    """The Python part of a beam step, once per caption: per search, its group's finished captions
    in rank order, then its cut ones in beam order (`accept` sees them in the order the
    row-by-row search used)."""
    seg, pos = np.nonzero(ends)
    events = [(int(seg_owner[s]), 0, int(p), int(s)) for s, p in zip(seg.tolist(), pos.tolist(), strict=True)]
    events += [(int(owner[r]), 1, int(r), 0) for r in cut_rows.tolist()]
    events.sort()
    for search_index, kind, index, s in events:
        if search_index in failures:
            continue
        search = searches[search_index]
        try:
            if kind == 0:
                row = int(parent_rows[s, index])
                search._finish(g, table.ids(int(slots[row])), float(totals[s, index]))
            else:
                slot = int(slots[index])
                search._cut(table.ids(slot), float(table.log_prob[slot]))
        except Exception as error:  # a refusal check that raised: this search fails, not the call
            failures[search_index] = error


def _advance_samples(table, searches, slots, owner, ids, log_probs, ranked, mask, state, *, failures) -> None:
    """One draw for every sampling row in the call, with each search's own random numbers."""
    probs, valid = _distributions(table, slots, ranked, ~mask)
    uniform = np.zeros(slots.size)
    counts = np.bincount(owner[valid], minlength=len(searches))
    draws = [searches[i].rng.random(int(n)) for i, n in enumerate(counts.tolist()) if n]
    if draws:
        # Rows are grouped by search: each search's numbers go to its valid rows, in row order.
        uniform[valid] = np.concatenate(draws)
    drawn = np.zeros(slots.size, dtype=np.int64)
    if valid.any():
        cdf = probs[valid].cumsum(axis=1)
        cdf /= cdf[:, -1:]
        drawn[valid] = (cdf <= uniform[valid][:, None]).sum(axis=1)
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


def _distributions(table, slots, log_probs: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sampling probabilities [rows, K] over each row's candidates (temperature, then top-k,
    then top-p, each row with its search's settings), and which rows have any (a row with
    nothing allowed has none)."""
    temperature, top_k, top_p = table.temperature[slots], table.top_k[slots], table.top_p[slots]
    # A NaN log-prob (a broken model) is never drawn: it would make the row's sums NaN.
    logits = np.where(allowed & ~np.isnan(log_probs), log_probs / temperature[:, None], -np.inf)
    order = np.argsort(-logits, axis=1, kind="stable")
    if top_k.any():
        dropped = (np.arange(logits.shape[1])[None] >= top_k[:, None]) & (top_k > 0)[:, None]
        ranked = np.take_along_axis(logits, order, axis=1)
        ranked[dropped] = -np.inf
        np.put_along_axis(logits, order, ranked, axis=1)
    finite = np.isfinite(logits)
    valid = cast(np.ndarray, finite.any(axis=1))  # [rows] (numpy's stubs allow a scalar for any axis)
    highest = np.where(finite, logits, -np.inf).max(axis=1, initial=-np.inf)
    with np.errstate(invalid="ignore"):  # rows with nothing allowed: NaN, never drawn from
        probs = np.exp(logits - np.where(valid, highest, 0.0)[:, None])
        probs /= probs.sum(axis=1, keepdims=True)
        nucleus = np.flatnonzero(top_p < 1.0)
        if nucleus.size:
            part, part_order = probs[nucleus], order[nucleus]
            sorted_probs = np.take_along_axis(part, part_order, axis=1)
            # Keep the smallest set whose mass reaches top_p (the first token always stays).
            keep = np.cumsum(sorted_probs, axis=1) - sorted_probs < top_p[nucleus][:, None]
            np.put_along_axis(part, part_order, np.where(keep, sorted_probs, 0.0), axis=1)
            part /= part.sum(axis=1, keepdims=True)
            probs[nucleus] = part
    return probs, valid


def _best_of_sorted_rows(rank, segment, column, segments: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """_best_first over each segment's rows laid side by side ([segments, width * K] indices), for
    rows whose finite ranks fall from left to right (the decoder sends its top-K best first): a
    segment's best `2 * width` are among its rows' first `2 * width` finite candidates, so only
    those are sorted."""
    K = rank.shape[1]
    m = min(K, 2 * width)
    short = np.full((segments, width, m), -np.inf)
    if np.isfinite(rank[:, :m]).all():  # the usual case: nothing forbidden among each row's first m
        short[segment, column] = rank[:, :m]
        order, values = _best_first(short.reshape(segments, width * m), min(2 * width, width * m))
        return (order // m) * K + order % m, values
    finite = np.isfinite(rank)
    nth = np.cumsum(finite, axis=1)
    row, k = np.nonzero(finite & (nth <= m))
    j = nth[row, k] - 1
    short[segment[row], column[row], j] = rank[row, k]
    k_of = np.zeros((segments, width, m), dtype=np.int64)
    k_of[segment[row], column[row], j] = k
    order, values = _best_first(short.reshape(segments, width * m), min(2 * width, width * m))
    k_chosen = np.take_along_axis(k_of.reshape(segments, width * m), order, axis=1)
    return (order // m) * K + k_chosen, values


def _best_first(scores: np.ndarray, needed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of SCORES [segments, n]: the indices of the `needed` highest, highest first, and
    their scores. A group never looks further: its beams, plus at most one <end> per row that
    cannot take a place."""
    if scores.shape[1] > needed:
        top = np.argpartition(-scores, needed - 1, axis=1)[:, :needed]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    return order, np.take_along_axis(scores, order, axis=1)


def pick_distinct(ranked: list[Hypothesis], n: int, words: Words | None) -> list[Hypothesis]:
    """The first n of RANKED, skipping near-duplicates of those already kept; when fewer than n
    distinct ones exist, the best of the rest fill the places (an answer keeps its n memes)."""
    if words is None:
        return ranked[:n]
    kept: list[Hypothesis] = []
    kept_words: list[tuple[tuple[tuple[str, ...], ...], tuple[str, ...]]] = []
    rest: list[Hypothesis] = []
    for hypothesis in ranked:
        if len(kept) == n:
            break
        caption = words(hypothesis.ids)
        flat = all_words(caption)
        if any(near_duplicate_flat(caption, flat, *other) for other in kept_words):
            rest.append(hypothesis)
        else:
            kept.append(hypothesis)
            kept_words.append((caption, flat))
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
