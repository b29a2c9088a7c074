"""The rows of every search a driver steps, as arrays: one table, so each step's bookkeeping is a
few passes over all rows of all searches at once (compiled: `kernels.py`) instead of Python per row.

Each search owns a block of slots (rows) for its life: beam search `num_beams` (group g's beams
in slots g*P ... g*P+P-1, live ones first), sampling `num_candidates`. A row's caption lives in
`history[slot, :length]`, with what the box rules need kept up to date as tokens are appended:
the boxes so far and, for each box, a hash of its words (a repeated box is then one comparison;
a hash match is confirmed on the tokens, so a collision can never forbid a caption).

Blocks are sized in powers of two and reused, so the table stops growing at the peak load.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memefly.contract import START_ID
from memefly.decoding import kernels
from memefly.decoding.limits import MAX_LENGTH

WIDTH = MAX_LENGTH  # history columns: the longest caption a request may ask for
MAX_BOXES = MAX_LENGTH + 1  # every token a <sep>: the most boxes a history can open


class RuleTables:
    """Per-vocabulary lookups shared by rows with the same rules: `blocked` and `words` arrays
    are interned by identity, so the thousands of rows of one service use one table each."""

    def __init__(self) -> None:
        self._index: dict[tuple[int, int], int] = {}
        self._pairs: list[tuple[np.ndarray, np.ndarray]] = []
        self._refs: list[int] = []
        self.blocked = np.ones((0, 0), dtype=bool)  # [tables, V]: True where blocked (out of vocabulary too)
        self.words = np.zeros((0, 0), dtype=bool)  # [tables, V]: True where a token is a word

    def acquire(self, blocked: np.ndarray, words: np.ndarray) -> int:
        key = (id(blocked), id(words))
        index = self._index.get(key)
        if index is None:
            index = next((i for i, refs in enumerate(self._refs) if refs == 0), len(self._pairs))
            if index == len(self._pairs):
                self._pairs.append((blocked, words))
                self._refs.append(0)
            else:
                del self._index[(id(self._pairs[index][0]), id(self._pairs[index][1]))]
                self._pairs[index] = (blocked, words)
            self._index[key] = index
            self._stack()
        self._refs[index] += 1
        return index

    def release(self, index: int) -> None:
        self._refs[index] -= 1

    def _stack(self) -> None:
        width = max(max(b.size, w.size) for b, w in self._pairs)
        self.blocked = np.ones((len(self._pairs), width), dtype=bool)
        self.words = np.zeros((len(self._pairs), width), dtype=bool)
        for i, (blocked, words) in enumerate(self._pairs):
            self.blocked[i, : blocked.size] = blocked
            self.words[i, : words.size] = words


@dataclass
class StepRows:
    """The rows one step call carries, in order, and whose they are."""

    searches: list  # the searches of the call, in order
    slots: np.ndarray  # int64 [rows]: table slots of the live rows sent
    owner: np.ndarray  # int64 [rows]: index into `searches`
    blocks: np.ndarray  # int64: every slot of the searches (live or not), and whose
    block_owner: np.ndarray


class RowTable:
    """Struct-of-arrays storage of rows; `allocate` and `free` hand out blocks of slots."""

    # The per-row columns of _COLUMNS, [capacity, ...]: made (and grown) by `_grow`.
    alive: np.ndarray
    history: np.ndarray
    length: np.ndarray
    log_prob: np.ndarray
    rank: np.ndarray
    group_floor: np.ndarray
    boxes: np.ndarray
    open_len: np.ndarray
    open_hash: np.ndarray
    closed_hash: np.ndarray
    closed_len: np.ndarray
    block_start: np.ndarray
    table: np.ndarray
    min_length: np.ndarray
    max_length: np.ndarray
    ngram: np.ndarray
    box_mask: np.ndarray
    max_boxes: np.ndarray
    repetition_penalty: np.ndarray
    per_group: np.ndarray
    diversity: np.ndarray
    cut_length: np.ndarray
    length_penalty: np.ndarray
    temperature: np.ndarray
    top_k: np.ndarray
    top_p: np.ndarray

    def __init__(self, capacity: int = 64):
        self.capacity = 0
        self._top = 0  # slots below this have been handed out at some time
        self._free: dict[int, list[int]] = {}  # block size -> free block starts
        self.rules = RuleTables()
        self.state: np.ndarray | None = None  # [capacity, H], in the step's dtype; made at the first search
        self.context: np.ndarray | None = None
        # Bit t % 8 of byte t // 8 of row r: word t is in the caption (repetition_penalty's check:
        # one lookup per candidate, instead of comparing every candidate with every earlier token).
        self.used_words = np.zeros((0, 0), dtype=np.uint8)
        self._grow(capacity)

    # Per-row columns, with their dtype and trailing shape; state and context come with the first search.
    _COLUMNS = {
        "alive": (bool, ()),
        "history": (np.int32, (WIDTH,)),
        "length": (np.int32, ()),
        "log_prob": (np.float64, ()),
        "rank": (np.float64, ()),  # beam search: log_prob minus diversity penalties so far
        "group_floor": (np.float64, ()),  # beam search: group g's worst kept score, at its block's slot g (NaN: none)
        "block_start": (np.int64, ()),  # the first slot of the row's search
        "boxes": (np.int32, ()),  # boxes so far, the open one included
        "open_len": (np.int32, ()),  # words in the open box
        "open_hash": (np.uint64, ()),
        "closed_hash": (np.uint64, (MAX_BOXES,)),
        "closed_len": (np.int32, (MAX_BOXES,)),
        # Rules, set once per search.
        "table": (np.int32, ()),  # RuleTables index
        "min_length": (np.int32, ()),
        "max_length": (np.int32, ()),
        "ngram": (np.int32, ()),
        "box_mask": (np.int64, ()),  # bit b: a caption may end with b boxes (all ones: any)
        "max_boxes": (np.int32, ()),
        "repetition_penalty": (np.float64, ()),
        "per_group": (np.int64, ()),  # beam search: beams per group
        "diversity": (np.float64, ()),  # beam search: diversity_penalty
        "cut_length": (np.int32, ()),  # beam search: max_length (a caption this long is cut if <end> may not follow)
        "length_penalty": (np.float64, ()),  # beam search
        "temperature": (np.float64, ()),
        "top_k": (np.int32, ()),
        "top_p": (np.float64, ()),
    }

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        for name, (dtype, shape) in self._COLUMNS.items():
            column = np.zeros((capacity, *shape), dtype=dtype)
            if old:
                column[:old] = getattr(self, name)
            setattr(self, name, column)
        for name in ("state", "context", "used_words"):
            column = getattr(self, name)
            if column is not None:
                grown = np.zeros((capacity, *column.shape[1:]), dtype=column.dtype)
                grown[:old] = column
                setattr(self, name, grown)
        self.capacity = capacity

    def allocate(self, rows: int, state: np.ndarray, context: np.ndarray) -> np.ndarray:
        """A block of ROWS slots (cleared); STATE and CONTEXT fix the dtypes and widths at the first call."""
        if self.state is None or self.context is None:  # made together, at the first search
            self.state = np.zeros((self.capacity, state.size), dtype=state.dtype)
            self.context = np.zeros((self.capacity, context.size), dtype=context.dtype)
        elif state.size != self.state.shape[1] or context.size != self.context.shape[1]:
            raise ValueError(
                f"a search's state/context widths {state.size}/{context.size} differ from the others' "
                f"{self.state.shape[1]}/{self.context.shape[1]}"
            )
        size = 1 << max(rows - 1, 0).bit_length()
        free = self._free.get(size)
        if free:
            start = free.pop()
        else:
            start = self._top
            self._top += size
            if self._top > self.capacity:
                self._grow(max(2 * self.capacity, self._top))
        block = slice(start, start + rows)
        self.block_start[block] = start
        self.alive[block] = False
        self.length[block] = 0
        self.context[block] = context
        return np.arange(start, start + rows)

    def free(self, slots: np.ndarray) -> None:
        self.alive[slots] = False
        size = 1 << max(len(slots) - 1, 0).bit_length()
        self._free.setdefault(size, []).append(int(slots[0]))

    def start_rows(self, slots: np.ndarray | slice, initial_state: np.ndarray) -> None:
        """Rows with an empty caption at <start>, alive."""
        self.alive[slots] = True
        self.length[slots] = 0
        self.log_prob[slots] = 0.0
        self.rank[slots] = 0.0
        self.boxes[slots] = 1
        self.open_len[slots] = 0
        self.open_hash[slots] = 0
        self.used_words[slots] = 0
        assert self.state is not None  # made by `allocate`, which gave out these slots
        self.state[slots] = initial_state

    def last_tokens(self, slots: np.ndarray) -> np.ndarray:
        length = self.length[slots]
        last = self.history[slots, np.maximum(length - 1, 0)]
        return np.where(length > 0, last, START_ID).astype(np.int32)

    def ids(self, slot: int) -> tuple[int, ...]:
        return tuple(self.history[slot, : self.length[slot]].tolist())

    def copy_rows(self, to: np.ndarray, source: np.ndarray) -> None:
        """Children take their parents' captions (beam search); SOURCE is read before TO is written."""
        kernels.copy_rows(
            to, source, self.history, self.length, self.log_prob, self.rank, self.boxes, self.open_len,
            self.open_hash, self.closed_hash, self.closed_len, self.repetition_penalty, self.used_words,
        )  # fmt: skip

    def append(self, slots: np.ndarray, tokens: np.ndarray) -> None:
        """Append TOKENS [rows] to the rows' captions, keeping the box hashes up to date."""
        self._fit_used_words()
        kernels.append_tokens(
            slots, np.asarray(tokens, np.int64), self.table, self.history, self.length, self.boxes, self.open_len,
            self.open_hash, self.closed_hash, self.closed_len, self.rules.words, self.repetition_penalty,
            self.used_words,
        )  # fmt: skip

    def has_used(self, slots: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Bool [rows, K]: token [i, k] is a word row slots[i] already used (kept for rows with a
        repetition_penalty)."""
        self._fit_used_words()
        return kernels.used_before(slots, np.asarray(tokens), self.used_words)

    def _fit_used_words(self) -> None:
        """As many bits per row as the rule tables have tokens (they grow with a bigger vocabulary)."""
        width = -(-self.rules.words.shape[1] // 8)
        if width > self.used_words.shape[1]:
            grown = np.zeros((self.capacity, width), dtype=np.uint8)
            grown[:, : self.used_words.shape[1]] = self.used_words
            self.used_words = grown
