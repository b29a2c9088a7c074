"""Admission control: refuse at once (503, Retry-After) what the queue would not finish in
time, instead of letting it wait and time out. Shared by decoding (DecodeScheduler) and
drawing (WorkerPool, which bounds concurrent renders)."""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from gateway.errors import ModelUnavailable

EWMA = 0.2  # weight of the newest measurement in the running estimates
HEADROOM = 0.8  # admit only when the estimate leaves this share of the deadline
T = TypeVar("T")


class Overloaded(ModelUnavailable):
    """503 with Retry-After: the gateway is too busy to answer this request within its deadline."""

    def __init__(self, detail: str):
        super().__init__(detail, retry_after_s=1)


def too_late(expected_s: float | None, deadline_s: float | None) -> bool:
    return deadline_s is not None and expected_s is not None and expected_s > HEADROOM * deadline_s


class CostModel:
    """Seconds one model call takes for a batch of n, a + b*n, fitted by least squares to the
    latest calls. While the calls seen are all of about one size, proportional (a = 0): that
    over-estimates bigger batches, the safe side for admission. A running mean alone would
    take the cost of the small calls of a quiet minute for the big ones of a busy one."""

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
        sizes, seconds = (np.array(column, np.float64) for column in zip(*self._calls))
        if sizes.max() >= 2 * sizes.min():
            per_item, fixed = np.polyfit(sizes, seconds, 1)
            if fixed >= 0 and per_item > 0:
                return float(fixed), float(per_item)
        return 0.0, float(seconds.sum() / sizes.sum())


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
        self.pending = 0  # queued or running; a job whose caller left still counts until it ends
        self.job_seconds: float | None = None  # running estimate of one job

    def expected_seconds(self) -> float | None:
        """How long a job submitted now would take to finish (None: nothing measured yet)."""
        if self.job_seconds is None:
            return None
        return (self.pending // self.workers + 1) * self.job_seconds

    async def run(self, fn: Callable[..., T], *args) -> T:
        expected = self.expected_seconds() if self.pending >= self.workers else None  # a free worker: always
        if too_late(expected, self.deadline_s):
            raise Overloaded(f"busy: {self.pending} {self.name} jobs ahead would take about {expected:.1f} s, more "
                             f"than the {self.deadline_s:g} s a request may take; try again shortly")
        self.pending += 1
        future = asyncio.get_running_loop().run_in_executor(self._executor, _timed, fn, args)
        future.add_done_callback(self._finished)
        result, _ = await future
        return result

    def _finished(self, future: asyncio.Future) -> None:
        self.pending -= 1
        if not future.cancelled() and future.exception() is None:
            seconds = future.result()[1]
            self.job_seconds = seconds if self.job_seconds is None else \
                self.job_seconds + EWMA * (seconds - self.job_seconds)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _timed(fn, args):
    started = time.perf_counter()
    return fn(*args), time.perf_counter() - started
