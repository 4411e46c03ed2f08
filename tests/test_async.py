"""The async shell: ``async with concurrency(...)`` and ``await rate_limit(...)`` keep the rules and the loop free."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time

from gcl_local import (
    acquire_lease,
    create_limit,
    read_limit,
    release_lease,
)
from gcl_local.asyncio import concurrency, rate_limit


def test_waiting_does_not_block_the_event_loop(db):
    create_limit("one", 1, db=db)
    held = acquire_lease("one", db=db)

    async def main() -> tuple[float, list[float]]:
        loop = asyncio.get_running_loop()
        ticks: list[float] = []

        async def ticker() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        ticking = asyncio.create_task(ticker())
        start = time.monotonic()
        loop.call_later(0.5, lambda: release_lease(held.id, db=db))
        async with concurrency("one", timeout_seconds=5, db=db):
            waited = time.monotonic() - start
        ticking.cancel()
        return waited, [t for t in ticks if t <= start + waited]

    waited, ticks = asyncio.run(main())
    assert 0.45 <= waited <= 1.0
    assert len(ticks) >= 20
    assert max(b - a for a, b in itertools.pairwise(ticks)) < 0.1


def test_async_rate_limit_waits_for_decay(db):
    create_limit("api", 2, slot_decay_per_second=10.0, db=db)

    async def main() -> list[float]:
        start = time.monotonic()
        done = []
        for _ in range(6):
            await rate_limit("api", timeout_seconds=5, db=db)
            done.append(time.monotonic() - start)
        return done

    done = asyncio.run(main())
    assert done[1] < 0.08
    assert 0.35 <= done[-1] <= 0.6


def test_cancelled_async_waiter_leaves_the_queue(db):
    create_limit("one", 1, db=db)
    held = acquire_lease("one", db=db)

    async def main() -> None:
        async def wait() -> None:
            async with concurrency("one", db=db):
                pass

        waiting = asyncio.create_task(wait())
        await asyncio.sleep(0.3)
        assert len(read_limit("one", db=db).waiters) == 1
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        assert waiting.cancelled()

    asyncio.run(main())
    assert read_limit("one", db=db).waiters == ()
    release_lease(held.id, db=db)
    assert read_limit("one", db=db).active_slots == 0


def test_an_error_in_the_thread_of_a_cancelled_call_is_not_left_unretrieved(db):
    # The soak on PostgreSQL: an async worker cancelled while its transaction ran in a thread, whose
    # COMMIT was then lost, printed "Future exception was never retrieved" with a traceback.
    from gcl_local import _shell
    from gcl_local._backend import open_backend
    from gcl_local.asyncio import _in_thread

    backend = open_backend(db)
    acquisition = _shell.Acquisition(backend, _shell.make_request(backend, "x", 1, "concurrency"))
    unretrieved = []

    def fails_later() -> None:
        time.sleep(0.2)
        raise RuntimeError("the connection was lost while committing")

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: unretrieved.append(context))
        task = asyncio.ensure_future(_in_thread(acquisition, fails_later))
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.4)  # the thread ends with its error meanwhile
        import gc

        gc.collect()  # an unretrieved exception is reported when its future is collected
        await asyncio.sleep(0)

    asyncio.run(main())
    assert acquisition.orphaned
    assert unretrieved == []
