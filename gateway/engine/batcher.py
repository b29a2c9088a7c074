"""Micro-batching: calls that arrive close together share one model call.

Used for the encoder (images -> template_probs) and the decoder's `init`. At most
`max_concurrent` calls are in flight; whatever queues meanwhile goes out together in the
next call (up to `max_batch`), so batches grow with the load and a lone request does not
wait. `max_wait_s` > 0 adds a wait for company after the first item. A caller that is
cancelled while waiting drops out of its batch. `call` may return an exception in an item's
place: that caller alone gets it. With a deadline, an item that the queue would not get
through in time is refused at once (admission control, gateway/engine/admission.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeAlias, TypeVar

from opentelemetry.trace import SpanContext

from gateway import tracing
from gateway.engine.admission import Correction, CostModel, admit, ceil_div

Item = TypeVar("Item")
Result = TypeVar("Result")
# An item queued: its future, and the span of the request it came from (None: no request span).
_Entry: TypeAlias = tuple[Item, asyncio.Future[Result], SpanContext | None]


class MicroBatcher(Generic[Item, Result]):
    def __init__(
        self,
        call: Callable[[list[Item]], Awaitable[Sequence[Result | Exception]]],
        *,
        max_batch: int,
        max_wait_s: float,
        max_concurrent: int = 2,
        name: str = "encoder",
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self.call = call
        self.name = name  # which queue refused, in an Overloaded
        self.max_concurrent = max_concurrent
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Entry[Item, Result]] = asyncio.Queue()
        # More than one batch may be in flight (the model server overlaps them), but not unboundedly.
        self._slots = asyncio.Semaphore(max_concurrent)
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self.cost = CostModel()  # a call's wall time by its batch size
        self.correction = Correction()  # learnt from how long admitted items really took

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def expected_seconds(self) -> float | None:
        """How long an item submitted now would take (None: nothing measured yet)."""
        return self.correction.apply(self._estimate())

    def _estimate(self) -> float | None:
        """Before correction: the calls in flight, then the batches queued ahead of an item
        submitted now and its own, `max_concurrent` at a time."""
        items = self.waiting + 1
        batches = ceil_div(items, self.max_batch)
        per_call = self.cost.seconds(ceil_div(items, batches))
        rounds = ceil_div(len(self._inflight) + batches, self.max_concurrent)
        return None if per_call is None else rounds * per_call

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="micro-batcher")

    async def stop(self) -> None:
        tasks = [t for t in [self._task, *self._inflight] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        while not self._queue.empty():
            _, future, _ = self._queue.get_nowait()
            if not future.done():
                future.cancel()

    async def submit(self, item: Item, deadline_s: float | None = None) -> Result:
        estimate = self._estimate()
        if self.waiting or self._inflight:  # an idle batcher always takes an item (and measures it)
            admit(self.name, self.correction.apply(estimate), deadline_s, f"{self.waiting} images queued")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future, tracing.current()))
        started = time.perf_counter()
        try:
            result = await future
        except asyncio.CancelledError:
            self.correction.learn(time.perf_counter() - started, estimate, finished=False)
            raise
        self.correction.learn(time.perf_counter() - started, estimate)
        return result

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            try:
                await self._slots.acquire()  # while the calls in flight finish, more items queue up
            except asyncio.CancelledError:
                first[1].cancel()
                raise
            batch = [first]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except TimeoutError:
                    break
            batch = [entry for entry in batch if not entry[1].done()]
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run(batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _run(self, batch: list[_Entry[Item, Result]]) -> None:
        try:
            self.on_batch(len(batch))
            started = time.perf_counter()
            with tracing.batch_call(f"{self.name} call", (request for _, _, request in batch), items=len(batch)):
                results = await self.call([item for item, _, _ in batch])
            self.cost.add(len(batch), time.perf_counter() - started)
            for (_, future, _), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):  # this item failed alone; the others did not
                    future.set_exception(result)
                else:
                    future.set_result(result)
        except Exception as error:
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(error)
        except asyncio.CancelledError:  # stopping: nobody may wait forever
            for _, future, _ in batch:
                future.cancel()
            raise
        finally:
            self._slots.release()
