"""What the sync and async shells both promise, tested once with each (the ``shell`` fixture).

``Shell.hold`` runs ``with concurrency(...)`` (or ``async with``) around a body; ``Shell.rate`` calls
``rate_limit``. The bodies below say nothing about which shell runs them.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest

import gcl_local.asyncio as async_api
import gcl_local.sync as sync_api
from gcl_local import (
    AcquireConcurrencySlotTimeoutError,
    ConcurrencySlotAcquisitionError,
    Lease,
    MissingLimitWarning,
    acquire_lease,
    create_limit,
    read_limit,
)


class Shell:
    def __init__(self, kind: str, db: str) -> None:
        self.kind = kind
        self.db = db

    def hold(self, names: Any, body: Callable[[Lease], Any] = lambda lease: lease, **kwargs: Any) -> Any:
        if self.kind == "sync":
            with sync_api.concurrency(names, db=self.db, **kwargs) as lease:
                return body(lease)

        async def main() -> Any:
            async with async_api.concurrency(names, db=self.db, **kwargs) as lease:
                return body(lease)

        return asyncio.run(main())

    def rate(self, names: Any, **kwargs: Any) -> None:
        if self.kind == "sync":
            sync_api.rate_limit(names, db=self.db, **kwargs)
        else:
            asyncio.run(async_api.rate_limit(names, db=self.db, **kwargs))


@pytest.fixture(params=["sync", "async"])
def shell(request: pytest.FixtureRequest, db: str) -> Shell:
    return Shell(request.param, db)


def test_concurrency_holds_and_releases(shell: Shell) -> None:
    db = shell.db
    create_limit("pool", 3, db=db)

    def body(lease: Lease) -> None:
        assert lease.token is not None
        assert lease.slots == 2
        limit = read_limit("pool", db=db)
        assert limit.active_slots == 2
        assert [(h.id, h.label) for h in limit.holders] == [(lease.id, "job")]

    shell.hold("pool", body, occupy=2, holder="job")
    assert read_limit("pool", db=db).active_slots == 0


def test_fencing_tokens_increase(shell: Shell) -> None:
    create_limit("one", 1, db=shell.db)
    tokens = [shell.hold("one").token for _ in range(3)]
    assert tokens[0] < tokens[1] < tokens[2]


@pytest.mark.parametrize("how", [{"timeout_seconds": 0.3}, {"max_retries": 0}, {"timeout_seconds": 0}])
def test_a_busy_limit_times_out_and_leaves_no_ticket(shell: Shell, how: dict[str, float]) -> None:
    db = shell.db
    create_limit("one", 1, db=db)
    acquire_lease("one", db=db)
    start = time.monotonic()
    with pytest.raises(AcquireConcurrencySlotTimeoutError):
        shell.hold("one", **how)
    took = time.monotonic() - start
    wanted = how.get("timeout_seconds", 0.0)
    assert wanted - 0.05 <= took <= wanted + 1.2
    assert read_limit("one", db=db).waiters == ()


def test_rate_limit_timeout_leaves_no_ticket(shell: Shell) -> None:
    create_limit("api", 1, slot_decay_per_second=0.1, db=shell.db)
    shell.rate("api")
    with pytest.raises(AcquireConcurrencySlotTimeoutError):
        shell.rate("api", timeout_seconds=0.3)
    assert read_limit("api", db=shell.db).waiters == ()


def test_rules_that_fail_at_once(shell: Shell) -> None:
    db = shell.db
    create_limit("plain", 2, db=db)
    create_limit("small", 1, slot_decay_per_second=1.0, db=db)
    cases: list[Callable[[], Any]] = [
        lambda: shell.hold("small", occupy=2, timeout_seconds=10),  # occupy > limit
        lambda: shell.rate("small", occupy=2, timeout_seconds=10),
        lambda: shell.rate("plain"),  # no decay
        lambda: shell.hold(["plain", "nope"], strict=True),
        lambda: shell.rate(["small", "nope"], strict=True),
    ]
    for case in cases:
        start = time.monotonic()
        with pytest.raises(ConcurrencySlotAcquisitionError) as caught:
            case()
        assert not isinstance(caught.value, AcquireConcurrencySlotTimeoutError)
        assert time.monotonic() - start < 2.0
    assert read_limit("plain", db=db).active_slots == 0
    assert read_limit("small", db=db).active_slots == 0


def test_all_or_nothing(shell: Shell) -> None:
    db = shell.db
    create_limit("a", 1, db=db)
    create_limit("b", 1, db=db)
    acquire_lease("b", db=db)
    with pytest.raises(AcquireConcurrencySlotTimeoutError):
        shell.hold(["a", "b"], timeout_seconds=0)
    assert read_limit("a", db=db).active_slots == 0


def test_inactive_and_missing_are_pass_through(shell: Shell) -> None:
    create_limit("off", 0, active=False, db=shell.db)
    assert shell.hold("off", occupy=3).token is None
    shell.rate("off", occupy=3)
    with pytest.warns(MissingLimitWarning, match="nope"):
        assert shell.hold(["off", "nope"], occupy=3).token is None
    with pytest.warns(MissingLimitWarning, match="other"):  # 'nope' was warned about already: once per process
        shell.rate(["nope", "other"])


def test_a_missing_warning_raised_as_an_error_leaves_no_slot_taken(shell: Shell) -> None:
    create_limit("a", 1, db=shell.db)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingLimitWarning)
        with pytest.raises(MissingLimitWarning):
            shell.hold(["a", "nope"])
    assert read_limit("a", db=shell.db).active_slots == 0


def test_bad_arguments_touch_no_file(shell: Shell, tmp_path: Any) -> None:
    """Every argument is checked before the store is opened: nothing is created."""
    db = str(tmp_path / "fresh.db")
    fresh = Shell(shell.kind, db)
    for call in (
        lambda: fresh.hold("x", timeout_seconds=-1),
        lambda: fresh.hold("x", max_retries=-1),
        lambda: fresh.hold("x", occupy=0),
        lambda: fresh.hold("bad/name"),
        lambda: fresh.rate("x", timeout_seconds=-1),
        lambda: fresh.hold("x", lease_duration=1),
    ):
        with pytest.raises(ConcurrencySlotAcquisitionError):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
