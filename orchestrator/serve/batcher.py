"""The batch queue of a Serve replica: texts of concurrent requests share one model pass.

Ray Serve's ``@serve.batch`` (2.60) cuts the next batch ``batch_wait_timeout_s`` after its first
item even while the previous batch is still running (since batches may run concurrently, ray#53096),
and queues it behind the running one: under 16 concurrent clients its batches averaged 2.45 texts of
32. ``FillingBatcher`` cuts a batch only when the model is free, so everything that arrived while a
batch ran goes into the next one (up to ``max_batch_size``). A model that was idle waits
``batch_wait_timeout_s`` after the first arrival for company, as ``@serve.batch`` does.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from typing import Any, Callable, Optional, Sequence


class FillingBatcher:
    """``await batcher(item)`` → ``run([... item ...])``'s result for it; one batch at a time, in a
    worker thread (the event loop stays free to take requests and answer /healthz)."""

    def __init__(self, run: Callable[[list], Sequence[Any]], max_batch_size: int, batch_wait_timeout_s: float):
        self.run = run
        self.configure(max_batch_size, batch_wait_timeout_s)
        self.sizes: Counter[int] = Counter()  # executed batch size -> count
        self.busy_s = 0.0                     # seconds spent running batches
        self._pending: deque[tuple[Any, asyncio.Future]] = deque()
        self._arrived: Optional[asyncio.Event] = None
        self._full: Optional[asyncio.Event] = None
        self._worker: Optional[asyncio.Task] = None

    def configure(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        """New limits, from the next batch on."""
        self.max_batch_size, self.batch_wait_timeout_s = max_batch_size, batch_wait_timeout_s

    async def __call__(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._arrived, self._full = asyncio.Event(), asyncio.Event()
            self._worker = loop.create_task(self._work())
        future = loop.create_future()
        self._pending.append((item, future))
        self._arrived.set()
        if len(self._pending) >= self.max_batch_size:
            self._full.set()
        return await future

    async def _work(self) -> None:
        idle = True  # nothing was waiting when the last batch ended (or none ran yet)
        while True:
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                idle = True
            # an idle model briefly waits for company; a busy one cuts at once what queued while it ran
            # (waiting there too starved the model: 0.92 busy instead of 0.99, at a clients' round trip
            # of 50-90 ms on 2 cores that a 10 ms wait does not bridge anyway)
            if idle and self.batch_wait_timeout_s > 0 and len(self._pending) < self.max_batch_size:
                self._full.clear()
                try:
                    await asyncio.wait_for(self._full.wait(), self.batch_wait_timeout_s)
                except asyncio.TimeoutError:
                    pass
            idle, batch = False, []
            while self._pending and len(batch) < self.max_batch_size:
                item, future = self._pending.popleft()
                if not future.done():  # a request cancelled while queued (its client went away) is dropped
                    batch.append((item, future))
            if batch:
                await self._execute(batch)

    async def _execute(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        self.sizes[len(batch)] += 1
        start = time.perf_counter()
        try:
            results = await asyncio.to_thread(self.run, [item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} gave {len(results)} results")
        except Exception as exc:  # every request of the batch gets the error
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            self.busy_s += time.perf_counter() - start
        for (_, future), result in zip(batch, results):
            if not future.done():
                future.set_result(result)
