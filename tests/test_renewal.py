"""Lease renewal: a renewed lease outlives its first term; a lost lease stops the block when asked to."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

import gcl_local.asyncio as gcl_async
from gcl_local import (
    LeaseRenewalError,
    _renewal,
    concurrency,
    create_limit,
    read_limit,
    release_lease,
)


@pytest.fixture
def fast_renewal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Renew a 60 s lease after 0.06 s, and let the renewal thread look every 50 ms."""
    monkeypatch.setattr(_renewal, "RENEWAL_FRACTION", 0.001)
    monkeypatch.setattr(_renewal, "TICK_SECONDS", 0.05)


def wait(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.usefixtures("fast_renewal")
def test_a_held_lease_is_renewed(db: str) -> None:
    create_limit("a", 1, db=db)
    with concurrency("a", lease_duration=60, db=db) as lease:
        assert lease.expires is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            (holder,) = read_limit("a", db=db).holders
            assert holder.expires is not None
            if holder.expires > lease.expires:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the lease was never renewed")


@pytest.mark.usefixtures("fast_renewal")
def test_a_lost_lease_stops_the_block_when_asked(db: str) -> None:
    create_limit("a", 1, db=db)
    with pytest.raises(LeaseRenewalError):  # noqa: PT012 - the error arrives while the block runs
        with concurrency("a", lease_duration=60, raise_on_lease_renewal_failure=True, db=db) as lease:
            release_lease(lease.id, db=db)  # an admin force-releases it
            wait(10)


@pytest.mark.usefixtures("fast_renewal")
def test_a_lost_lease_only_warns_by_default(db: str, caplog: pytest.LogCaptureFixture) -> None:
    create_limit("a", 1, db=db)
    with caplog.at_level(logging.WARNING, logger="gcl_local"):
        with concurrency("a", lease_duration=60, db=db) as lease:
            release_lease(lease.id, db=db)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and "renewal failed" not in caplog.text:
                time.sleep(0.02)
    assert "Execution will continue" in caplog.text


@pytest.mark.usefixtures("fast_renewal")
def test_async_a_lost_lease_stops_the_block_when_asked(db: str) -> None:
    create_limit("a", 1, db=db)

    async def main() -> None:
        async with gcl_async.concurrency("a", lease_duration=60, raise_on_lease_renewal_failure=True, db=db) as lease:
            release_lease(lease.id, db=db)
            await asyncio.sleep(10)

    with pytest.raises(LeaseRenewalError):
        asyncio.run(main())
