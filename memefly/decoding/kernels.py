"""The inner loops of a search step, compiled (numba): the caption rules, beam selection,
sampling and the row writes, each one pass over the step's rows instead of dozens of numpy passes.

Why compiled: a step's bookkeeping is a few dozen small operations per row. As numpy array
passes each costs a fixed 1-3 us whatever the rows, so a lone request's 5-row step paid
~0.6 ms, and a 500-row step ~1 ms of passes over [rows, K]. Here each loop touches a row once.

The functions take the `RowTable` columns they read and write (numba compiles plain arrays,
not objects); `rows.py`, `constraints.py` and `search.py` call them. They are compiled at first
use and cached on disk (`cache=True`: next to this file, or NUMBA_CACHE_DIR), and
`captioner.compile_kernels` compiles them ahead (the gateway image does, at build). What they
give is what the row-by-row reference search gives, bit for bit (tests/test_search_equivalence.py);
where two candidates rank exactly the same, the earlier row and candidate come first. numba
does not check bounds: the writes check the one bound a caller could cross (a full caption).
"""

from __future__ import annotations

import logging

import numba
import numpy as np

from memefly import contract

# Written here, not imported: numba's cache is keyed by this file alone, so a value read from
# another module would stay frozen in the compiled code if that module changed.
END_ID, SEP_ID = 2, 4
if (END_ID, SEP_ID) != (contract.END_ID, contract.SEP_ID):
    raise ImportError("kernels.py's END_ID and SEP_ID differ from memefly.contract's: update them")

ANY_COUNT = -1  # box_mask with every bit set: any box count
FINISHED, CUT = 0, 1  # the kinds of select_beams' events
_HASH_PRIME = np.uint64(1_000_003)


log = logging.getLogger(__name__)
_uncached = False  # warned already: numba found no cache folder


def jit(function):
    """numba.njit, cached on disk where numba finds a folder it may write (NUMBA_CACHE_DIR, else
    beside this file, else the user's cache folder). Where it finds none (a read-only image, a
    user without a home), the kernels still compile, in memory, at each start: slower to
    start, never unable to."""
    global _uncached
    try:
        return numba.njit(cache=True, nogil=True)(function)
    except RuntimeError as error:  # numba's "cannot cache function ...: no locator available"
        if not _uncached:
            _uncached = True
            log.warning("the search kernels compile at every start (about 10 s): %s; set NUMBA_CACHE_DIR", error)
        return numba.njit(nogil=True)(function)


# ---- the caption rules ---------------------------------------------------------------------


@jit
def forbidden_mask(
    slots,
    top_ids,
    table,
    length,
    min_length,
    max_length,
    ngram,
    history,
    boxes,
    open_len,
    open_hash,
    closed_hash,
    closed_len,
    box_mask,
    max_boxes,
    blocked,
    words,
):
    """Bool [rows, K]: True where row slots[i] may not take candidate top_ids[i, k] (blocked or
    out of vocabulary, too short for <end>, full, a repeated n-gram, or a box rule)."""
    rows, K = top_ids.shape
    vocab = blocked.shape[1]
    mask = np.zeros((rows, K), np.bool_)
    for i in range(rows):
        s = slots[i]
        rules = table[s]
        n = length[s]
        closing = False
        for k in range(K):
            t = top_ids[i, k]
            m = True if t < 0 or t >= vocab else blocked[rules, t]
            if t == END_ID:
                closing = True
                if n < min_length[s]:
                    m = True
            else:
                if t == SEP_ID:
                    closing = True
                if n >= max_length[s]:  # full: only <end> may follow
                    m = True
            mask[i, k] = m
        _ban_repeated_ngrams(mask[i], top_ids[i], history[s], n, ngram[s])
        if closing:
            # <sep> and <end> close the open box: no empty box, no box twice, only counts the template uses.
            b = boxes[s]
            bad = open_len[s] == 0 or _open_box_repeats(
                history[s], n, b, open_len[s], open_hash[s], closed_hash[s], closed_len[s], words[rules]
            )
            counted = not bad and box_mask[s] != ANY_COUNT
            sep_banned = bad or (counted and b >= max_boxes[s])
            end_banned = (bad and n > 0) or (counted and not (b < 63 and (box_mask[s] >> min(b, 62)) & 1 == 1))
            for k in range(K):
                t = top_ids[i, k]
                if (t == SEP_ID and sep_banned) or (t == END_ID and end_banned):
                    mask[i, k] = True
    return mask


@jit
def _ban_repeated_ngrams(mask, candidates, history, n, size):
    """No n-gram twice: a candidate that would complete an n-gram already in the caption."""
    if size <= 0:
        return
    k = size - 1
    for j in range(n - k):
        same = True
        for t in range(k):  # the window at j against the caption's last k tokens
            if history[j + t] != history[n - k + t]:
                same = False
                break
        if same:
            banned = history[j + k]
            for c in range(candidates.size):
                if candidates[c] == banned:
                    mask[c] = True


@jit
def _open_box_repeats(history, n, boxes, open_len, open_hash, closed_hash, closed_len, words) -> bool:
    """The open box has words and they are those of a closed box: by hash, confirmed on the
    words (so a collision never forbids a caption)."""
    if open_len == 0 or boxes <= 1:
        return False
    for b in range(boxes - 1):
        if closed_hash[b] == open_hash and closed_len[b] == open_len:
            return _repeats_exactly(history, n, words)
    return False


@jit
def _is_word(words, token) -> bool:
    return 0 <= token < words.size and words[token]


@jit
def _repeats_exactly(history, n, words) -> bool:
    last = 0  # the open box starts after the last <sep>
    for j in range(n):
        if history[j] == SEP_ID:
            last = j + 1
    open_words = np.empty(n, np.int64)
    count = 0
    for j in range(last, n):
        if history[j] != SEP_ID and _is_word(words, history[j]):
            open_words[count] = history[j]
            count += 1
    if count == 0:
        return False
    j = 0
    while j < last:  # each closed box: its words against the open box's
        matched, same = 0, True
        while history[j] != SEP_ID:
            t = history[j]
            if _is_word(words, t):
                if matched < count and open_words[matched] == t:
                    matched += 1
                else:
                    same = False
            j += 1
        if same and matched == count:
            return True
        j += 1
    return False


@jit
def used_before(slots, top_ids, used_words):
    """Bool [rows, K]: candidate k is a word row slots[i] already used (bit t of its used_words)."""
    rows, K = top_ids.shape
    width = used_words.shape[1]
    hit = np.zeros((rows, K), np.bool_)
    for i in range(rows):
        for k in range(K):
            t = top_ids[i, k]
            if 0 <= t < 8 * width:
                hit[i, k] = (used_words[slots[i], t >> 3] >> (t & 7)) & 1 == 1
    return hit


# ---- row writes ----------------------------------------------------------------------------


@jit
def append_tokens(
    slots,
    tokens,
    table,
    history,
    length,
    boxes,
    open_len,
    open_hash,
    closed_hash,
    closed_len,
    words,
    repetition_penalty,
    used_words,
):
    """Append tokens[i] to row slots[i]'s caption, keeping its boxes' hashes and (for rows with
    a repetition penalty) its used words up to date."""
    for i in range(slots.size):  # first, as numpy's indexing did: nothing written if one row is full
        if length[slots[i]] >= history.shape[1]:
            raise IndexError("a caption longer than the history's columns")
    for i in range(slots.size):
        s, t = slots[i], tokens[i]
        n = length[s]
        history[s, n] = t
        length[s] = n + 1
        if t == SEP_ID:
            b = boxes[s]
            closed_hash[s, b - 1] = open_hash[s]
            closed_len[s, b - 1] = open_len[s]
            boxes[s] = b + 1
            open_hash[s] = 0
            open_len[s] = 0
        elif _is_word(words[table[s]], t):
            open_hash[s] = open_hash[s] * _HASH_PRIME + np.uint64(t) + np.uint64(1)
            open_len[s] += 1
            if repetition_penalty[s] != 1.0:
                used_words[s, t >> 3] |= np.uint8(1 << (t & 7))


@jit
def copy_rows(
    to,
    source,
    history,
    length,
    log_prob,
    rank,
    boxes,
    open_len,
    open_hash,
    closed_hash,
    closed_len,
    repetition_penalty,
    used_words,
):
    """Rows TO take the captions of rows SOURCE (beam search's children); all sources are read
    before any row is written, as TO and SOURCE may overlap."""
    rows = to.size
    width = closed_hash.shape[1]
    c_history = np.empty((rows, history.shape[1]), history.dtype)
    c_length = np.empty(rows, length.dtype)
    c_log_prob = np.empty(rows, log_prob.dtype)
    c_rank = np.empty(rows, rank.dtype)
    c_boxes = np.empty(rows, boxes.dtype)
    c_open_len = np.empty(rows, open_len.dtype)
    c_open_hash = np.empty(rows, open_hash.dtype)
    c_closed_hash = np.empty((rows, width), closed_hash.dtype)
    c_closed_len = np.empty((rows, width), closed_len.dtype)
    c_used = np.empty((rows, used_words.shape[1]), used_words.dtype)
    for i in range(rows):
        s = source[i]
        n, b = length[s], boxes[s]
        c_history[i, :n] = history[s, :n]  # past a caption's length nothing is read
        c_length[i], c_log_prob[i], c_rank[i], c_boxes[i] = n, log_prob[s], rank[s], b
        c_open_len[i], c_open_hash[i] = open_len[s], open_hash[s]
        c_closed_hash[i, : b - 1] = closed_hash[s, : b - 1]  # closed boxes only
        c_closed_len[i, : b - 1] = closed_len[s, : b - 1]
        if repetition_penalty[to[i]] != 1.0:  # the only rows whose used words are read
            c_used[i] = used_words[s]
    for i in range(rows):
        d = to[i]
        n, b = c_length[i], c_boxes[i]
        history[d, :n] = c_history[i, :n]
        length[d], log_prob[d], rank[d], boxes[d] = n, c_log_prob[i], c_rank[i], b
        open_len[d], open_hash[d] = c_open_len[i], c_open_hash[i]
        closed_hash[d, : b - 1] = c_closed_hash[i, : b - 1]
        closed_len[d, : b - 1] = c_closed_len[i, : b - 1]
        if repetition_penalty[d] != 1.0:
            used_words[d] = c_used[i]


# ---- beam selection ------------------------------------------------------------------------


@jit
def select_beams(
    owner, slots, ids, log_probs, ranked, mask, row_log_prob, row_rank, row_length, per_group, diversity, block_start,
    cut_length,
):  # fmt: skip
    """One beam-search step of every search in the call, group by group (diverse beam search's
    groups see the tokens earlier groups chose at this step). Rows are grouped by owner (the
    search's index in the call); the other arguments after MASK are row table columns.

    A group of a search (a segment) ranks all its rows' candidates by rank (log-prob, minus the
    diversity penalty; best first, ties to the earlier row and candidate) and walks the best
    `beams + rows`: an <end> among the first `beams` places finishes a caption (as in HF); the
    first `beams` other finite ones are its children. A row at full length with no <end> it may
    take is a cut caption.

    Returns three tuples of arrays, one element per child, segment and event:
    - children: parent row, token, total log-prob, rank, destination slot, segment;
    - segments: group, whether it has children, the best child's total log-prob, its search's
      first slot, the captions' length after this step;
    - events (finished and cut captions, in the order the searches must see them: group,
      owner, kind, place or row): kind (FINISHED or CUT), owner, group, row, total log-prob
      (a cut caption's: its row's, without <end>).
    """
    rows, K = ids.shape
    groups = np.zeros(rows, np.int64)
    n_groups, widest, searches, places = 0, 1, 0, 0
    for r in range(rows):
        s = slots[r]
        groups[r] = (s - block_start[s]) // per_group[s]
        n_groups = max(n_groups, groups[r] + 1)
        widest = max(widest, per_group[s])
        searches = max(searches, owner[r] + 1)
        places += per_group[s]  # at least the children of the row's segment
    # Diversity: the tokens each search's earlier groups chose at this step.
    chosen = np.zeros((searches, widest * n_groups), np.int64)
    n_chosen = np.zeros(searches, np.int64)
    c_parent, c_token = np.empty(places, np.int64), np.empty(places, np.int64)
    c_dest, c_segment = np.empty(places, np.int64), np.empty(places, np.int64)
    c_total, c_rank = np.empty(places), np.empty(places)
    s_group = np.empty(rows, np.int64)
    s_start, s_length = np.empty(rows, np.int64), np.empty(rows, np.int64)
    s_children, s_best = np.empty(rows, np.bool_), np.empty(rows)
    e_kind, e_owner = np.empty(places + rows, np.int64), np.empty(places + rows, np.int64)
    e_group, e_row = np.empty(places + rows, np.int64), np.empty(places + rows, np.int64)
    e_total = np.empty(places + rows)
    n_children = n_segments = n_events = 0
    # Per segment: its ranked candidates (value, row, k), and its cut rows.
    best_v = np.empty(2 * widest + rows)
    best_r = np.empty(2 * widest + rows, np.int64)
    best_k = np.empty(2 * widest + rows, np.int64)
    cut_rows = np.empty(rows, np.int64)
    for g in range(n_groups):
        r = 0
        while r < rows:
            if groups[r] != g:
                r += 1
                continue
            s = owner[r]
            first_slot = slots[r]
            P = per_group[first_slot]
            penalty = diversity[first_slot]
            first = r
            m = 0  # the segment's rows: those of search s in group g, consecutive among the group's
            last = r
            while last < rows and owner[last] == s:
                if groups[last] == g:
                    m += 1
                last += 1
            needed = P + m
            count = 0
            n_cut = 0
            for row in range(first, last):
                if groups[row] != g:
                    continue
                base_rank = row_rank[slots[row]]
                full = row_length[slots[row]] >= cut_length[first_slot]
                has_end = False
                # The decoder sends its top-K best first: then once a candidate ranks no better than
                # the segment's last place, nor do the ones after it (the mask only lowers them).
                diverse = g > 0 and penalty != 0.0
                sorted_row = not diverse and _falls(ranked[row])
                for k in range(K):
                    v = base_rank + ranked[row, k]
                    if sorted_row and count == needed and not _better(v, best_v[count - 1]):
                        if full and not has_end:  # only whether it may end is still to be learnt
                            has_end = _may_end(ids[row], mask[row], base_rank, ranked[row], k)
                        break
                    if diverse:
                        uses = 0
                        for c in range(n_chosen[s]):
                            if chosen[s, c] == ids[row, k]:
                                uses += 1
                        v = v - penalty * float(uses)
                    if mask[row, k]:
                        v = -np.inf
                    if ids[row, k] == END_ID and np.isfinite(v):
                        has_end = True
                    # Insert into the segment's ranking (NaN last; on ties the earlier stays first).
                    if count == needed and not _better(v, best_v[count - 1]):
                        continue
                    place = min(count, needed - 1)
                    while place > 0 and _better(v, best_v[place - 1]):
                        place -= 1
                    end = min(count, needed - 1)
                    for q in range(end, place, -1):
                        best_v[q], best_r[q], best_k[q] = best_v[q - 1], best_r[q - 1], best_k[q - 1]
                    best_v[place], best_r[place], best_k[place] = v, row, k
                    count = min(count + 1, needed)
                if full and not has_end:
                    cut_rows[n_cut] = row
                    n_cut += 1
            taken = 0
            best_total = -np.inf
            start = block_start[first_slot]
            for p in range(count):
                v, row, k = best_v[p], best_r[p], best_k[p]
                if not np.isfinite(v):
                    continue
                token = ids[row, k]
                total = row_log_prob[slots[row]] + log_probs[row, k]
                if token == END_ID:
                    if p < P:
                        e_kind[n_events], e_owner[n_events], e_group[n_events] = FINISHED, s, g
                        e_row[n_events], e_total[n_events] = row, total
                        n_events += 1
                    continue
                taken += 1
                if taken > P:
                    continue
                chosen[s, n_chosen[s]] = token
                n_chosen[s] += 1
                best_total = max(best_total, total)
                c_parent[n_children], c_token[n_children], c_total[n_children], c_rank[n_children] = (
                    row,
                    token,
                    total,
                    v,
                )
                c_dest[n_children], c_segment[n_children] = start + g * P + taken - 1, n_segments
                n_children += 1
            for c in range(n_cut):
                e_kind[n_events], e_owner[n_events], e_group[n_events] = CUT, s, g
                e_row[n_events], e_total[n_events] = cut_rows[c], row_log_prob[slots[cut_rows[c]]]
                n_events += 1
            s_group[n_segments], s_children[n_segments] = g, taken > 0
            s_best[n_segments], s_start[n_segments] = best_total, start
            s_length[n_segments] = row_length[first_slot] + 1
            n_segments += 1
            r = last
    n, m, e = n_children, n_segments, n_events
    return (
        (c_parent[:n], c_token[:n], c_total[:n], c_rank[:n], c_dest[:n], c_segment[:n]),
        (s_group[:m], s_children[:m], s_best[:m], s_start[:m], s_length[:m]),
        (e_kind[:e], e_owner[:e], e_group[:e], e_row[:e], e_total[:e]),
    )


@jit
def groups_done(group, has_children, best, start, length, group_floor, length_penalty, cut_length):
    """Per segment of `select_beams` (its group, whether it has children, their best total
    log-prob, its search's first slot, the captions' length): the group is done, having no
    children, or none that can still beat its worst kept caption (HF early_stopping="never";
    GROUP_FLOOR is NaN until the group has kept its beams' worth). The score is
    `search.normalized`'s, with the same C pow()."""
    done = np.empty(group.size, np.bool_)
    for i in range(group.size):
        floor = group_floor[start[i] + group[i]]
        if not has_children[i]:
            done[i] = True
        elif np.isnan(floor):
            done[i] = False
        else:
            lp = length_penalty[start[i]]
            # Log-probs only fall as a caption grows; with lp > 0 a longer caption divides by more.
            steps = cut_length[start[i]] if lp > 0 else length[i]
            done[i] = best[i] / float(steps + 1) ** lp <= floor
    return done


@jit
def _falls(values) -> bool:
    """VALUES never rise from left to right (NaN anywhere: no)."""
    for k in range(1, values.size):
        if not values[k] <= values[k - 1]:
            return False
    return True


@jit
def _may_end(ids, mask, base_rank, ranked, start) -> bool:
    """An <end> at or after START that the row may take (finite rank)."""
    for k in range(start, ids.size):
        if ids[k] == END_ID and not mask[k] and np.isfinite(base_rank + ranked[k]):
            return True
    return False


@jit
def _better(a, b) -> bool:
    """A ranks strictly before B: higher, and NaN after everything."""
    if np.isnan(a):
        return False
    return np.isnan(b) or a > b


# ---- sampling ------------------------------------------------------------------------------
# Numbers as numpy makes them, so that draws stay the same: its exp stays numpy's (between the
# two kernels), its row sums are `_pairwise_sum`, numpy's own order, and cumulative sums run
# left to right as numpy's do.


@jit
def sampling_logits(slots, ranked, mask, temperature, top_k):
    """Per row: the logits (log-probs over the row's temperature; forbidden, NaN and past top-k:
    -inf) less the highest finite one, ready for exp; the candidates best first (ties: the
    earlier first); and whether any candidate may be drawn. TEMPERATURE, TOP_K: table columns."""
    rows, K = ranked.shape
    shifted = np.empty((rows, K))
    order = np.empty((rows, K), np.int64)
    valid = np.zeros(rows, np.bool_)
    for i in range(rows):
        s = slots[i]
        logits = shifted[i]
        for k in range(K):
            v = ranked[i, k]
            logits[k] = -np.inf if mask[i, k] or np.isnan(v) else v / temperature[s]
        _order_best_first(logits, order[i])
        if top_k[s] > 0:
            for place in range(top_k[s], K):
                logits[order[i, place]] = -np.inf
        highest = -np.inf
        for k in range(K):
            if np.isfinite(logits[k]):
                valid[i] = True
                highest = max(highest, logits[k])
        base = highest if valid[i] else 0.0
        for k in range(K):
            logits[k] = logits[k] - base
    return shifted, order, valid


@jit
def _order_best_first(values, order):
    """ORDER = numpy's stable argsort of -VALUES (no NaN in VALUES)."""
    for k in range(values.size):
        order[k] = k
        j = k
        while j > 0 and -values[order[j - 1]] > -values[k]:
            order[j] = order[j - 1]
            j -= 1
        order[j] = k


@jit
def sampling_draw(probs, order, valid, uniform, slots, top_p):
    """Per valid row of PROBS (exp of `sampling_logits`, written over): normalise, keep the
    smallest best-first set whose mass reaches top_p (renormalised), and draw the candidate
    whose normalised cumulative sum first passes the row's UNIFORM number, as
    `rng.choice(K, p=row)` would. Returns the drawn candidate per row (0 for invalid rows)."""
    rows, K = probs.shape
    drawn = np.zeros(rows, np.int64)
    cdf = np.empty(K)
    for i in range(rows):
        if not valid[i]:
            continue
        row = probs[i]
        total = _pairwise_sum(row, 0, K)
        for k in range(K):
            row[k] = row[k] / total
        p = top_p[slots[i]]
        if p < 1.0:
            mass = 0.0  # best first, as numpy's cumsum adds them
            for place in range(K):
                k = order[i, place]
                value = row[k]
                mass += value
                if not mass - value < p:  # the mass before it had reached top_p (the first always stays)
                    row[k] = 0.0
            total = _pairwise_sum(row, 0, K)
            for k in range(K):
                row[k] = row[k] / total
        running = 0.0
        for k in range(K):
            running += row[k]
            cdf[k] = running
        count = 0
        for k in range(K):
            if cdf[k] / cdf[K - 1] <= uniform[i]:
                count += 1
        drawn[i] = count
    return drawn


@jit
def _pairwise_sum(a, start, n):
    """sum(a[start:start + n]) in numpy's own order, so that a row sums to the very float
    numpy's sum(axis=1) gives: runs of up to 128 summed by `_block_sum`; a longer run split in
    two (the first half a multiple of 8) and the halves' sums added. The split tree is walked
    with a stack, not recursion: numba cannot load a cached recursive function (numba#6061:
    every process after the one that compiled it crashed)."""
    if n <= 128:
        return _block_sum(a, start, n)
    depth = 64  # halving from n > 128 down to 128 takes at most 57 levels
    lo = np.empty(depth, np.int64)
    size = np.empty(depth, np.int64)
    stage = np.zeros(depth, np.int64)  # 0: sum the left half next; 1: the right; 2: add them
    left = np.empty(depth)
    lo[0], size[0] = start, n
    top, value = 0, 0.0  # value: what the last finished run summed to
    while top >= 0:
        if size[top] <= 128:
            value = _block_sum(a, lo[top], size[top])
            top -= 1
            continue
        half = size[top] // 2
        half -= half % 8
        if stage[top] == 0:
            stage[top] = 1
            top += 1
            lo[top], size[top], stage[top] = lo[top - 1], half, 0
        elif stage[top] == 1:
            left[top], stage[top] = value, 2
            top += 1
            lo[top], size[top], stage[top] = lo[top - 1] + half, size[top - 1] - half, 0
        else:
            value = left[top] + value
            top -= 1
    return value


@jit
def _block_sum(a, start, n):
    """numpy's pairwise summation of a run of at most 128: 8 running sums, then the rest."""
    if n < 8:
        total = 0.0
        for i in range(n):
            total += a[start + i]
        return total
    r0, r1, r2, r3 = a[start], a[start + 1], a[start + 2], a[start + 3]
    r4, r5, r6, r7 = a[start + 4], a[start + 5], a[start + 6], a[start + 7]
    i = 8
    while i < n - n % 8:
        r0 += a[start + i]
        r1 += a[start + i + 1]
        r2 += a[start + i + 2]
        r3 += a[start + i + 3]
        r4 += a[start + i + 4]
        r5 += a[start + i + 5]
        r6 += a[start + i + 6]
        r7 += a[start + i + 7]
        i += 8
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        total += a[start + i]
        i += 1
    return total
