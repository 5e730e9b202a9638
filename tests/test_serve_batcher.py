"""The replica's batch queue on its own (no Ray): batches fill while the model is busy, an idle
model waits briefly for company, limits change live, errors and cancelled requests are handled."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from orchestrator.serve.batcher import FillingBatcher


class SlowModel:
    """Doubles each item; each call takes ``seconds`` (in the batcher's worker thread)."""

    def __init__(self, seconds: float = 0.05, fail: bool = False):
        self.seconds, self.fail, self.batches = seconds, fail, []
        self.threads = set()

    def __call__(self, items: list) -> list:
        self.threads.add(threading.get_ident())
        self.batches.append(list(items))
        time.sleep(self.seconds)
        if self.fail:
            raise ValueError("model broke")
        return [2 * x for x in items]


def run(coro):
    return asyncio.run(coro)


def test_requests_arriving_while_a_batch_runs_all_go_into_the_next():
    """16 clients, each sending again as soon as it is answered (the load of benchmarks/serve_load):
    after the first batch every batch holds nearly all of them, not the few of a 10 ms window."""
    model = SlowModel(0.05)
    batcher = FillingBatcher(model, max_batch_size=32, batch_wait_timeout_s=0.01)

    async def client(i: int) -> list:
        return [await batcher(i * 100 + n) for n in range(6)]

    async def main():
        return await asyncio.gather(*(client(i) for i in range(16)))

    answers = run(main())
    assert answers == [[2 * (i * 100 + n) for n in range(6)] for i in range(16)]
    sizes = [len(b) for b in model.batches]
    assert sum(sizes) == 96 and max(sizes) == 16
    assert sum(sizes) / len(sizes) >= 12, sizes
    assert threading.get_ident() not in model.threads  # the model ran off the event loop's thread


def test_an_idle_model_waits_for_company_then_caps_at_max_batch_size():
    model = SlowModel(0.01)
    batcher = FillingBatcher(model, max_batch_size=4, batch_wait_timeout_s=0.2)

    async def main():
        first = asyncio.ensure_future(batcher(0))
        await asyncio.sleep(0.05)  # within the wait: these join the first
        return await asyncio.gather(first, *(batcher(i) for i in range(1, 10)))

    assert run(main()) == [2 * i for i in range(10)]
    assert [len(b) for b in model.batches] == [4, 4, 2]


def test_a_full_batch_does_not_wait_out_the_timeout():
    batcher = FillingBatcher(SlowModel(0.0), max_batch_size=3, batch_wait_timeout_s=5.0)

    async def main():
        start = time.perf_counter()
        await asyncio.gather(*(batcher(i) for i in range(3)))
        return time.perf_counter() - start

    assert run(main()) < 1.0


def test_configure_changes_the_next_batches():
    model = SlowModel(0.0)
    batcher = FillingBatcher(model, max_batch_size=8, batch_wait_timeout_s=0.05)

    async def main():
        await asyncio.gather(*(batcher(i) for i in range(8)))
        batcher.configure(2, 0.05)
        await asyncio.gather(*(batcher(i) for i in range(8)))

    run(main())
    assert [len(b) for b in model.batches] == [8, 2, 2, 2, 2]
    assert dict(batcher.sizes) == {8: 1, 2: 4}


def test_a_failing_batch_fails_its_requests_and_the_queue_keeps_serving():
    model = SlowModel(0.0, fail=True)
    batcher = FillingBatcher(model, max_batch_size=4, batch_wait_timeout_s=0.01)

    async def main():
        results = await asyncio.gather(*(batcher(i) for i in range(3)), return_exceptions=True)
        model.fail = False
        return results, await batcher(5)

    results, after = run(main())
    assert all(isinstance(r, ValueError) and str(r) == "model broke" for r in results)
    assert after == 10


def test_a_wrong_number_of_results_is_an_error_not_a_hang():
    batcher = FillingBatcher(lambda items: items[:1], max_batch_size=4, batch_wait_timeout_s=0.05)

    async def main():
        return await asyncio.gather(*(batcher(i) for i in range(2)), return_exceptions=True)

    results = run(main())
    assert all(isinstance(r, RuntimeError) and "a batch of 2 gave 1 results" in str(r) for r in results)


def test_a_request_cancelled_while_queued_is_not_run():
    model = SlowModel(0.1)
    batcher = FillingBatcher(model, max_batch_size=4, batch_wait_timeout_s=0.0)

    async def main():
        running = asyncio.ensure_future(batcher(1))
        await asyncio.sleep(0.02)  # the first batch runs
        gone = asyncio.ensure_future(batcher(2))
        kept = asyncio.ensure_future(batcher(3))
        await asyncio.sleep(0.01)
        gone.cancel()
        return await running, await kept

    assert run(main()) == (2, 6)
    assert model.batches == [[1], [3]]


@pytest.mark.parametrize("size", [1, 5])
def test_batches_never_exceed_the_limit(size):
    model = SlowModel(0.01)
    batcher = FillingBatcher(model, max_batch_size=size, batch_wait_timeout_s=0.01)

    async def main():
        return await asyncio.gather(*(batcher(i) for i in range(23)))

    assert run(main()) == [2 * i for i in range(23)]
    assert max(len(b) for b in model.batches) == size and sum(map(len, model.batches)) == 23
