"""The async shell: ``async with concurrency(...)`` and ``await rate_limit(...)`` keep the rules and the loop free."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import warnings

import pytest

from gcl_local import (
    AcquireConcurrencySlotTimeoutError,
    ConcurrencySlotAcquisitionError,
    MissingLimitWarning,
    acquire_lease,
    create_limit,
    read_limit,
    release_lease,
)
from gcl_local.asyncio import concurrency, rate_limit


def test_async_concurrency_holds_and_releases(db):
    create_limit("pool", 3, db=db)

    async def main() -> None:
        async with concurrency("pool", occupy=2, holder="async-job", db=db) as lease:
            assert lease.token is not None
            assert lease.slots == 2
            limit = read_limit("pool", db=db)
            assert limit.active_slots == 2
            assert [(h.id, h.label) for h in limit.holders] == [(lease.id, "async-job")]

    asyncio.run(main())
    assert read_limit("pool", db=db).active_slots == 0


def test_async_fencing_tokens_increase(db):
    create_limit("one", 1, db=db)

    async def main() -> list[int]:
        tokens = []
        for _ in range(3):
            async with concurrency("one", db=db) as lease:
                tokens.append(lease.token)
        return tokens

    first, second, third = asyncio.run(main())
    assert first < second < third


def test_async_timeout(db):
    create_limit("one", 1, db=db)
    acquire_lease("one", db=db)

    async def main() -> None:
        async with concurrency("one", timeout_seconds=0.3, db=db):
            pass

    start = time.monotonic()
    with pytest.raises(AcquireConcurrencySlotTimeoutError):
        asyncio.run(main())
    assert 0.25 <= time.monotonic() - start <= 1.5
    assert read_limit("one", db=db).waiters == ()


def test_async_max_retries_zero_tries_once(db):
    create_limit("one", 1, db=db)
    acquire_lease("one", db=db)

    async def main() -> None:
        async with concurrency("one", max_retries=0, db=db):
            pass

    start = time.monotonic()
    with pytest.raises(AcquireConcurrencySlotTimeoutError):
        asyncio.run(main())
    assert time.monotonic() - start < 0.5
    assert read_limit("one", db=db).waiters == ()


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


def test_async_rate_limit_timeout(db):
    create_limit("api", 1, slot_decay_per_second=0.1, db=db)

    async def main() -> None:
        await rate_limit("api", db=db)
        await rate_limit("api", timeout_seconds=0.3, db=db)

    with pytest.raises(AcquireConcurrencySlotTimeoutError):
        asyncio.run(main())
    assert read_limit("api", db=db).waiters == ()


def test_async_rules_that_fail_at_once(db):
    create_limit("plain", 2, db=db)
    create_limit("small", 1, slot_decay_per_second=1.0, db=db)

    async def hold(names, **kwargs) -> None:
        async with concurrency(names, db=db, **kwargs):
            pass

    cases = [
        lambda: hold("small", occupy=2, timeout_seconds=10),  # occupy > limit
        lambda: rate_limit("small", occupy=2, timeout_seconds=10, db=db),
        lambda: rate_limit("plain", db=db),  # no decay
        lambda: hold(["plain", "nope"], strict=True),
        lambda: rate_limit(["small", "nope"], strict=True, db=db),
    ]
    for case in cases:
        start = time.monotonic()
        with pytest.raises(ConcurrencySlotAcquisitionError) as caught:
            asyncio.run(case())
        assert not isinstance(caught.value, AcquireConcurrencySlotTimeoutError)
        assert time.monotonic() - start < 2.0
    assert read_limit("plain", db=db).active_slots == 0
    assert read_limit("small", db=db).active_slots == 0


def test_async_all_or_nothing(db):
    create_limit("a", 1, db=db)
    create_limit("b", 1, db=db)
    acquire_lease("b", db=db)

    async def main() -> None:
        async with concurrency(["a", "b"], timeout_seconds=0, db=db):
            pass

    with pytest.raises(AcquireConcurrencySlotTimeoutError):
        asyncio.run(main())
    assert read_limit("a", db=db).active_slots == 0


def test_async_inactive_and_missing_are_pass_through(db):
    create_limit("off", 0, active=False, db=db)

    async def token_of(names) -> int | None:
        async with concurrency(names, occupy=3, db=db) as lease:
            return lease.token

    assert asyncio.run(token_of("off")) is None
    asyncio.run(rate_limit("off", occupy=3, db=db))
    with pytest.warns(MissingLimitWarning, match="nope"):
        token = asyncio.run(token_of(["off", "nope"]))
    assert token is None
    with pytest.warns(MissingLimitWarning, match="other"):  # 'nope' was warned about already: once per process
        asyncio.run(rate_limit(["nope", "other"], db=db))


def test_async_missing_warning_raised_as_an_error_leaves_no_slot_taken(db):
    create_limit("a", 1, db=db)

    async def main() -> None:
        async with concurrency(["a", "nope"], db=db):
            pass

    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingLimitWarning)
        with pytest.raises(MissingLimitWarning):
            asyncio.run(main())
    assert read_limit("a", db=db).active_slots == 0


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
