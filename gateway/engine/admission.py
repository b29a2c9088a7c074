"""Admission control: refuse at once (503, Retry-After) what the queue would not finish in
time, instead of letting it wait and time out. Shared by decoding (DecodeScheduler) and
drawing (WorkerPool, which bounds concurrent renders)."""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from gateway.errors import ModelUnavailable

EWMA = 0.2  # weight of the newest measurement in the running estimates
HEADROOM = 0.8  # admit only when the estimate leaves this share of the deadline
OUTLIER = 5.0  # a call over this many times the median cost per item is left out of the fit
T = TypeVar("T")


class Overloaded(ModelUnavailable):
    """503 with Retry-After: the gateway is too busy to answer this request within its deadline.
    The client is told only that; the estimate goes to the log line."""

    def __init__(self, queue: str, internal: str):
        super().__init__("busy: try again shortly", retry_after_s=1, internal=internal)
        self.queue = queue  # which queue refused: decoder, encoder or render (a label in /metrics)


def admit(queue: str, expected_s: float | None, deadline_s: float | None, ahead: str) -> None:
    """Raises Overloaded when EXPECTED_S (None: nothing measured, or an idle queue) would take
    more than HEADROOM of DEADLINE_S (None: no deadline, always admitted)."""
    if deadline_s is not None and expected_s is not None and expected_s > HEADROOM * deadline_s:
        raise Overloaded(
            queue,
            f"{queue} queue: {ahead} would take about {expected_s:.2f} s, more than "
            f"{HEADROOM:.0%} of the {deadline_s:.2f} s left",
        )


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class CostModel:
    """Seconds one model call takes for a batch of n, a + b*n, fitted by least squares to the
    latest calls. While the calls seen are all of about one size, proportional (a = 0): that
    over-estimates bigger batches, the safe side for admission, and corrects itself, since
    the bigger calls it admits are measured in turn. A running mean alone would take the
    cost of the small calls of a quiet minute for the big ones of a busy one."""

    def __init__(self, window: int = 64):
        self._calls: deque[tuple[int, float]] = deque(maxlen=window)
        self._fit: tuple[float, float] | None = None

    def add(self, size: int, seconds: float) -> None:
        self._calls.append((size, seconds))
        self._fit = None

    def seconds(self, size: int) -> float | None:
        """For a call of SIZE (None: nothing measured yet)."""
        if not self._calls:
            return None
        if self._fit is None:
            self._fit = self._solve()
        fixed, per_item = self._fit
        return fixed + per_item * size

    def _solve(self) -> tuple[float, float]:
        sizes, seconds = (np.array(column, np.float64) for column in zip(*self._calls, strict=True))
        # One call that hung (a model server's cold start, a retry) must not stand for the next 63.
        usual = seconds / sizes <= OUTLIER * np.median(seconds / sizes)
        sizes, seconds = sizes[usual], seconds[usual]
        if sizes.max() >= 2 * sizes.min():
            per_item, fixed = np.polyfit(sizes, seconds, 1)
            if fixed >= 0 and per_item > 0:
                return float(fixed), float(per_item)
        return 0.0, float(seconds.sum() / sizes.sum())


class Correction:
    """Measured / estimated time of the work a queue admitted: what its estimate leaves out
    (work that arrives later and slows earlier work down, calls that overlap, the event loop's
    own load) is learnt, not modelled. The factor is the 95th percentile of the latest 64
    ratios, so that nineteen in twenty admitted requests finish within their estimate; until
    16 are measured, at least 2: a cold gateway hit by a wave of requests knows least, and a
    refusal costs the client a second, a timeout the whole request."""

    COLD, LEARNT_AFTER, MOST = 2.0, 16, 4.0

    def __init__(self) -> None:
        self._ratios: deque[float] = deque(maxlen=64)
        self.factor = self.COLD

    def apply(self, estimate: float | None) -> float | None:
        return None if estimate is None else self.factor * estimate

    def learn(self, seconds: float, estimate: float | None, *, finished: bool = True) -> None:
        """SECONDS the work took against its ESTIMATE before correction (None: none was made).
        Work cut off before it finished counts only when it had already run past its estimate:
        a deadline that passed says the estimate was short; a client that left early says nothing."""
        if not estimate or (not finished and seconds <= estimate):
            return
        self._ratios.append(seconds / estimate)
        learnt = _quantile(self._ratios, 0.95)
        if len(self._ratios) < self.LEARNT_AFTER:
            learnt = max(learnt, self.COLD)
        self.factor = min(self.MOST, max(0.5, learnt))


def _quantile(values: Iterable[float], q: float) -> float:
    """np.quantile's default (linear) rule, in plain Python: this runs once per request, and
    numpy's fixed cost is ten times the work for 64 numbers."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class WorkerPool:
    """At most `workers` jobs run at once, on threads of their own (not the loop's default
    executor, which image checks and file reads share); the rest wait in arrival order. With
    `deadline_s`, a job that would wait past it is refused at once (Overloaded)."""

    def __init__(self, workers: int | None = None, *, deadline_s: float | None = None, name: str = "worker"):
        self.workers = workers or default_workers()
        self.deadline_s = deadline_s
        self.name = name
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix=name)
        self.pending = 0  # queued or running; a job whose caller left counts until its thread is done
        self.job_seconds: float | None = None  # running estimate of one job

    def expected_seconds(self) -> float | None:
        """How long a job submitted now would take to finish (None: nothing measured yet)."""
        if self.job_seconds is None:
            return None
        return (self.pending // self.workers + 1) * self.job_seconds

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        if self.pending >= self.workers:  # a free worker: always admitted
            admit("render", self.expected_seconds(), self.deadline_s, f"{self.pending} renders")
        loop = asyncio.get_running_loop()
        job = self._executor.submit(_timed, fn, args)
        self.pending += 1
        # Counted until the thread is done, whether or not its caller still waits for it.
        job.add_done_callback(lambda done: loop.call_soon_threadsafe(self._finished, done))
        result, _ = await asyncio.wrap_future(job)
        return result

    def _finished(self, job: Future[tuple[T, float]]) -> None:
        self.pending -= 1
        if not job.cancelled() and job.exception() is None:
            seconds = job.result()[1]
            self.job_seconds = (
                seconds if self.job_seconds is None else self.job_seconds + EWMA * (seconds - self.job_seconds)
            )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _timed(fn: Callable[..., T], args: tuple[object, ...]) -> tuple[T, float]:
    started = time.perf_counter()
    return fn(*args), time.perf_counter() - started
