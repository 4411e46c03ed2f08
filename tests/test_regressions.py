"""Tests for bugs found after the first version, one each."""

from __future__ import annotations

import os
import resource
import threading
import time

import pytest

from gcl_local import AcquireConcurrencySlotTimeoutError, concurrency, create_limit, read_limit


def test_waiting_works_with_descriptors_above_1024(db: str) -> None:
    """select() cannot watch a descriptor >= 1024; a long-lived process easily has that many open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("cannot open 1200 descriptors here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    spare = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        create_limit("a", 1, db=db)
        with concurrency("a", db=db):
            waited = []

            def wait() -> None:
                try:
                    with concurrency("a", timeout_seconds=0.3, db=db):
                        waited.append("granted")
                except AcquireConcurrencySlotTimeoutError:
                    waited.append("timed out")

            thread = threading.Thread(target=wait)
            thread.start()
            thread.join(10)
        assert waited == ["timed out"]
    finally:
        for fd in spare:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_lease_names_keep_the_callers_order(db: str) -> None:
    create_limit("a", 1, db=db)
    create_limit("b", 1, db=db)
    with concurrency(["b", "a"], db=db) as lease:
        assert lease.names == ("b", "a")


def test_a_threads_kept_pipe_ignores_wake_ups_meant_for_its_earlier_wait(db: str) -> None:
    """The sync shell keeps one pipe per thread: a late message for an old ticket must not grant a new one."""
    create_limit("a", 1, db=db)
    outcomes: list[str] = []
    with concurrency("a", db=db):

        def wait_twice() -> None:
            for _ in range(2):
                try:
                    with concurrency("a", timeout_seconds=0.3, db=db):
                        outcomes.append("granted")
                except AcquireConcurrencySlotTimeoutError:
                    outcomes.append("timed out")

        thread = threading.Thread(target=wait_twice)
        thread.start()
        thread.join(10)
    assert outcomes == ["timed out", "timed out"]
    time.sleep(0.05)
    assert read_limit("a", db=db).active_slots == 0
    assert not read_limit("a", db=db).waiters


@pytest.mark.sqlite_only("it reads the SQLite file directly")
def test_a_waiter_reaps_a_dead_waiter_ahead_of_it_while_the_slot_stays_held(db: str, procs) -> None:
    """Found by the soak run: a dead head of the queue was kept while its limit stayed full."""
    import signal

    import apsw

    create_limit("a", 1, db=db)
    wait_code = (
        "import sys\nfrom gcl_local import concurrency\n"
        "with concurrency('a', timeout_seconds=30, db=sys.argv[1]):\n    pass\n"
    )

    def tickets() -> int:
        conn = apsw.Connection(db, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            return int(conn.execute("SELECT count(*) FROM tickets").fetchall()[0][0])
        finally:
            conn.close()

    def wait_until(predicate, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return False

    with concurrency("a", db=db):
        first = procs.python(wait_code, db)
        assert wait_until(lambda: tickets() == 1, 20)
        procs.python(wait_code, db)
        assert wait_until(lambda: tickets() == 2, 20)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        # Nobody releases and nobody in this process looks: the second waiter must reap the first.
        assert wait_until(lambda: tickets() == 1, 5), "the dead head of the queue was kept"


def test_unhashable_arguments_get_a_clear_error_not_a_type_error(db: str) -> None:
    """The cache of checked requests once hashed every argument: a list for strict escaped as TypeError."""
    from gcl_local import InvalidLimitError, rate_limit

    create_limit("r", 1, slot_decay_per_second=1.0, db=db)
    with pytest.raises(InvalidLimitError):
        rate_limit("r", strict=[1], db=db)  # type: ignore[arg-type]
    with pytest.raises(InvalidLimitError):
        with concurrency("r", occupy=[1], db=db):  # type: ignore[arg-type]
            pass
