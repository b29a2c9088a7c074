"""Continuous batching: one loop owns the decoder and steps the searches of every request at once.

Iteration-level scheduling (as in Orca and vLLM): each call gathers the live rows of the
searches in flight, up to `max_rows`, makes one step call, and advances all of them at once
(their rows live in one `SearchTable`). Searches join and leave between calls. The starting point rotates, so when the
rows do not all fit, the ones left out go first next time: nobody starves.

Two calls may be in flight (`pipeline=2`), each with its own searches: while the model
computes one, the gateway advances the other's searches, so neither the model nor
the gateway waits for the other. A large cohort is split in two halves to keep both busy.

With `continuous=False` the loop serves one search at a time, first come first served,
one call at a time: the baseline the benchmark compares against.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
from opentelemetry.trace import SpanContext

from gateway import tracing
from gateway.engine.admission import EWMA, Correction, CostModel, admit, ceil_div
from gateway.errors import GatewayError, InvalidRequest
from memefly.decoding.search import Search, SearchTable

log = logging.getLogger(__name__)

StepFn = Callable[[np.ndarray, np.ndarray, np.ndarray], Awaitable[tuple[np.ndarray, np.ndarray, np.ndarray]]]
SPLIT_MIN_ROWS = 64  # below this, one call: halves would cost more in per-call overhead


@dataclass(eq=False)
class _Entry:
    search: Search
    future: asyncio.Future[None] = field(repr=False)
    busy: bool = False  # in a call right now
    steps: int = 0
    started: float = 0.0
    estimate: float | None = None  # what it was expected to take, before correction
    trace: SpanContext | None = None  # the request's span context: each step call's span links to it


# Admission control: a request is refused at once (503, Retry-After) when the queue as it is
# would not let it finish within its deadline; estimates come from the calls just made.
TYPICAL_STEPS = 20.0  # steps of a search, until searches have been measured


class DecodeScheduler:
    def __init__(
        self,
        step: StepFn,
        *,
        max_rows: int = 512,
        continuous: bool = True,
        pipeline: int = 2,
        on_batch: Callable[[int], None] = lambda rows: None,
        table: SearchTable | None = None,
    ) -> None:
        self.step = step
        self.table = table or SearchTable()  # every search's rows: advanced together, call by call
        self.max_rows = max_rows
        self.continuous = continuous
        self.pipeline = pipeline if continuous else 1
        self.on_batch = on_batch  # metrics: rows per decoder call
        self._entries: list[_Entry] = []
        self._cursor = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self.calls = 0
        self.cost = CostModel()  # a step call's wall time (model and the gateway's share) by its rows
        self.steps_per_search = TYPICAL_STEPS
        self.correction = Correction()  # learnt from how long admitted searches really took

    @property
    def depth(self) -> int:
        """Searches in flight."""
        return len(self._entries)

    @property
    def live_rows(self) -> int:
        return self.table.live_rows

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="decode-scheduler")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._inflight) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        for entry in self._entries:
            if not entry.future.done():
                entry.future.set_exception(GatewayError("the decoder scheduler stopped"))
        self._entries.clear()

    def expected_seconds(self, rows: int) -> float | None:
        """How long a new search of ROWS rows would take with the searches in flight (None: no
        measurement yet)."""
        return self.correction.apply(self._estimate(rows))

    def _estimate(self, rows: int) -> float | None:
        """Before correction: every live row is stepped once per round of ceil(rows / max_rows) calls."""
        if not self.continuous:
            return None
        total = self.live_rows + rows
        calls = ceil_div(total, self.max_rows)
        per_call = self.cost.seconds(ceil_div(total, calls))
        return None if per_call is None else self.steps_per_search * calls * per_call

    def check_admission(self, rows: int, deadline_s: float | None) -> float | None:
        """Raises Overloaded when a search of ROWS rows would not finish within DEADLINE_S;
        else returns the estimate."""
        return self._admit(self._estimate(rows), deadline_s)

    def _admit(self, estimate: float | None, deadline_s: float | None) -> float | None:
        # With nothing in flight a request is always admitted: it is also what refreshes the
        # estimate (else one slow call, say during a model-server restart, could refuse all).
        expected = self.correction.apply(estimate)
        if self._entries:
            admit("decoder", expected, deadline_s, f"{self.depth} requests")
        return expected

    async def run(self, search: Search, deadline_s: float | None = None) -> Search:
        """Step `search` until it is done. Cancelling the caller frees its rows at once. With
        DEADLINE_S, refused at once (Overloaded) when the queue would not let it finish in time."""
        if search.rows > self.max_rows:
            raise InvalidRequest(f"{search.rows} beams or samples: at most {self.max_rows} (MEMEFLY_DECODER_MAX_ROWS)")
        if search.done:
            return search
        estimate = self._estimate(search.rows)
        self._admit(estimate, deadline_s)
        entry = _Entry(
            search,
            asyncio.get_running_loop().create_future(),
            started=time.perf_counter(),
            estimate=estimate,
            trace=tracing.current(),
        )
        self.table.add(search)
        self._entries.append(entry)
        self._wakeup.set()
        try:
            await entry.future
            return search
        except asyncio.CancelledError:
            if not entry.search.done:  # learnt at the step that finished it otherwise
                self._learn(entry, finished=False)
            raise
        finally:
            self._remove(entry)
            self.table.remove(search)  # a call in flight skips its rows from now on

    def _remove(self, entry: _Entry) -> None:
        try:
            self._entries.remove(entry)
        except ValueError:
            pass

    def _pick(self) -> list[_Entry]:
        idle = [e for e in self._entries if not e.busy]
        if not idle:
            return []
        if not self.continuous:
            return idle[:1]
        cap = self.max_rows
        if not self._inflight and self.pipeline > 1:
            idle_rows = sum(e.search.rows for e in idle)
            if idle_rows >= SPLIT_MIN_ROWS:
                cap = min(cap, -(-idle_rows // 2))  # half now, the other half right after
        n = len(idle)
        start = self._cursor % n
        batch: list[_Entry] = []
        rows = 0
        for offset in range(n):
            entry = idle[(start + offset) % n]
            if batch and rows + entry.search.rows > cap:
                self._cursor = (start + offset) % n  # first left out goes first next time
                break
            batch.append(entry)
            rows += entry.search.rows
        else:
            self._cursor = 0
        return batch

    async def _loop(self) -> None:
        while True:
            batch = self._pick() if len(self._inflight) < self.pipeline else []
            if not batch:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            for entry in batch:
                entry.busy = True
            if self.pipeline == 1:  # no overlap wanted: skip a task per call (it costs latency)
                await self._call(batch)
                continue
            task = asyncio.create_task(self._call(batch))
            self._inflight.add(task)
            task.add_done_callback(self._call_done)

    def _call_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wakeup.set()

    async def _call(self, batch: list[_Entry]) -> None:
        try:
            try:
                rows, tokens, state, context = self.table.inputs([entry.search for entry in batch])
                self.calls += 1
                self.on_batch(len(tokens))
                started = time.perf_counter()
                with tracing.batch_call("decoder step", (e.trace for e in batch), rows=len(tokens)):
                    top_ids, top_log_probs, new_state = await self.step(tokens, state, context)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the model server (or a bug) failed this call: its searches fail,
                if not isinstance(error, GatewayError):  # and the loop goes on for everyone else
                    log.exception("decoder step failed")
                for entry in batch:
                    self._fail(entry, error)
                return
            try:
                failed = dict(self.table.advance(rows, top_ids, top_log_probs, new_state))
            except Exception as error:  # a bug in the searches: this call's searches fail, the loop goes on
                log.exception("search step failed")
                for entry in batch:
                    self._fail(entry, error)
                return
            for entry in batch:
                if entry.future.done():  # its request went away during the call
                    continue
                if entry.search in failed:  # a bug in one search must not stop the others
                    log.error("search failed", exc_info=failed[entry.search])
                    self._fail(entry, failed[entry.search])
                    continue
                entry.steps += 1
                if entry.search.done:
                    self.steps_per_search += EWMA * (entry.steps - self.steps_per_search)
                    self._learn(entry)
                    entry.future.set_result(None)
                    self._remove(entry)
            self.cost.add(len(tokens), time.perf_counter() - started)
        finally:
            for entry in batch:
                entry.busy = False

    def _learn(self, entry: _Entry, finished: bool = True) -> None:
        self.correction.learn(time.perf_counter() - entry.started, entry.estimate, finished=finished)

    def _fail(self, entry: _Entry, error: Exception) -> None:
        if not entry.future.done():
            entry.future.set_exception(error)
        self._remove(entry)
