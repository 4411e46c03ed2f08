"""The backend contract: every row operation, liveness and wake-ups, through ``gcl_local._backend``'s
Protocols only, against each backend (the ``store_db`` fixture: a SQLite file, and a PostgreSQL
schema when a server is given).

The core relies on exactly these promises; a new backend passes this file before anything else.
"""

from __future__ import annotations

import os
import select
import signal
import time

import pytest
from conftest import Procs

from gcl_local._backend import Backend, LeaseRow, LimitRow, TicketRow, Tx, WouldBlock, open_backend
from gcl_local._process import pid_alive


def _limit(tx: Tx, name: str, limit: int = 3, decay: float = 0.0, active: bool = True) -> LimitRow:
    now = tx.now
    row = LimitRow(name, limit, active, decay, 0.0, now.boot, now.wall, 2.0, now.wall, now.wall)
    tx.insert_limit(row)
    return row


def _lease(
    tx: Tx, names: tuple[str, ...], slots: int = 1, holder: str | None = "h1", ticket: int | None = None
) -> LeaseRow:
    now = tx.now
    return LeaseRow(0, "s3cr", names, slots, holder, 123, 456, "host-a", "user", "label", ticket, 300.0,
                    now.wall, now.boot, now.wall + 300, now.boot + 300)  # fmt: skip


def _ticket(tx: Tx, names: tuple[str, ...], holder: str = "w1", channel: str = "ch") -> TicketRow:
    return TicketRow(0, names, "concurrency", 1, False, 300.0, holder, False, channel, 77, None, "host-b", "u", "l",
                     tx.now.wall)  # fmt: skip


def _write(backend: Backend, work: object) -> object:
    return backend.write(work)  # type: ignore[arg-type]


@pytest.fixture
def backend(store_db: str) -> Backend:
    return open_backend(store_db)


def test_open_backend_gives_one_backend_per_db_value(store_db: str) -> None:
    assert open_backend(store_db) is open_backend(store_db)
    b = open_backend(store_db)
    assert open_backend(b) is b


def test_limits_round_trip(backend: Backend) -> None:
    def work(tx: Tx) -> None:
        a = _limit(tx, "a", 3)
        _limit(tx, "b", 5, decay=1.5, active=False)
        assert tx.select_limits(["a"]) == [a]
        assert [r.name for r in tx.select_all_limits()] == ["a", "b"]
        assert sorted(r.name for r in tx.select_limits(["b", "a", "zz"])) == ["a", "b"]
        tx.update_limit(a._replace(limit=4, level=1.25, avg_occupancy=9.0))
        assert tx.select_limits(["a"])[0].limit == 4
        assert tx.select_limits(["a"])[0].level == 1.25
        tx.set_level("a", 2.5, tx.now)
        assert tx.select_limits(["a"])[0].level == 2.5
        assert tx.delete_limit("b") is True
        assert tx.delete_limit("b") is False
        assert [r.name for r in tx.select_all_limits()] == ["a"]

    backend.write(work)


def test_leases_and_fencing_tokens(backend: Backend) -> None:
    def work(tx: Tx) -> None:
        _limit(tx, "a")
        _limit(tx, "b")
        first = tx.insert_lease(_lease(tx, ("a", "b"), slots=2))
        second = tx.insert_lease(_lease(tx, ("b",), holder=None, ticket=9))
        assert second > first
        assert tx.held_slots("a") == 2
        assert tx.held_slots("b") == 3
        row = tx.select_lease(first, "s3cr")
        assert row is not None and row.names == ("a", "b") and row.token == first
        assert tx.select_lease(first, "wrong") is None
        assert tx.select_lease_by_ticket(9) is not None
        assert tx.select_lease_by_ticket(10) is None
        assert [r.token for r in tx.leases_on("b")] == [first, second]
        assert [r.token for r in tx.leases_of_holder("h1")] == [first]
        before = tx.select_limits_for_acquire(["a", "b"])
        assert sorted((r.name, held, queued) for r, held, queued in before) == [("a", 2, False), ("b", 3, False)]
        tx.renew_lease(row, 600.0, tx.now)
        renewed = tx.select_lease(first, "s3cr")
        assert renewed is not None and renewed.duration == 600.0
        assert renewed.expires_boot == pytest.approx(tx.now.boot + 600)
        tx.set_lease_holder(renewed, 4242, None, "child")
        named = tx.select_lease(first, "s3cr")
        assert named is not None and (named.pid, named.pid_start, named.label) == (4242, None, "child")
        popped = tx.pop_lease(first, "s3cr")
        assert popped is not None and popped.token == first
        assert tx.pop_lease(first, "s3cr") is None
        assert tx.held_slots("a") == 0
        other = tx.select_lease(second, "s3cr")
        assert other is not None
        tx.delete_lease(other)
        assert tx.leases_on("b") == []

    backend.write(work)
    # Tokens keep increasing across transactions (and are never reused after a delete).
    tokens = [backend.write(lambda tx: tx.insert_lease(_lease(tx, ("a",)))) for _ in range(3)]
    assert tokens == sorted(tokens) and len(set(tokens)) == 3


def test_the_queue(backend: Backend) -> None:
    def work(tx: Tx) -> None:
        _limit(tx, "a")
        _limit(tx, "b")
        t1 = tx.insert_ticket(_ticket(tx, ("a",)))
        t2 = tx.insert_ticket(_ticket(tx, ("b", "a"), holder="w2"))
        t3 = tx.insert_ticket(_ticket(tx, ("b",)))
        assert t1 < t2 < t3
        row = tx.select_ticket(t2)
        assert row is not None and row.names == ("b", "a") and row.channel == "ch" and row.host == "host-b"
        assert [p.ticket for p in tx.tickets_on(["a"])] == [t1, t2]
        assert [p.ticket for p in tx.tickets_on(["a", "b"])] == [t1, t2, t3]
        assert [p.ticket for p in tx.tickets_on(["a", "b"], after=t1, limit=1)] == [t2]
        assert tx.tickets_on(["b"], limit=1) == [(t2, "ch", row.since_wall, True)]  # what a releaser tells it by
        assert [p.several for p in tx.tickets_on(["a", "b"])] == [False, True, False]
        assert tx.ticket_ahead(["b"], t3) == t2
        assert tx.ticket_ahead(["a"], t1) is None
        assert tx.count_older_tickets(["a", "b"], t3) == 2
        oldest = tx.oldest_ticket_on(["b"])
        assert oldest is not None and oldest.ticket == t2
        assert tx.any_ticket_on(["b"]) and not tx.any_ticket_on(["zz"])
        assert [t.ticket for t in tx.tickets_of_holder("w2")] == [t2]
        assert [t.ticket for t in tx.waiting_on("a")] == [t1, t2]
        queued = {r.name: q for r, _, q in tx.select_limits_for_acquire(["a", "b"])}
        assert queued == {"a": True, "b": True}
        tx.delete_ticket(row)
        assert tx.select_ticket(t2) is None
        assert [p.ticket for p in tx.tickets_on(["a", "b"])] == [t1, t3]

    backend.write(work)


def test_history(backend: Backend) -> None:
    def work(tx: Tx) -> None:
        _limit(tx, "a", 2)
        _limit(tx, "off", 2, active=False)
        waiting = tx.record_occupancy(["a", "off"], 6.0, 12.0, 1, 1)
        assert waiting is False
        # Prefect's moving average: 2.0 + (6.0 - 2.0) / (2 * 2) on the active limit only.
        assert tx.select_limits(["a"])[0].avg_occupancy == pytest.approx(3.0)
        assert tx.select_limits(["off"])[0].avg_occupancy == pytest.approx(2.0)
        tx.count_acquisition(["a"], "acq_cw", 3, 0.5)
        tx.count_failure(["a", "off"], "timeouts")
        stats = tx.select_stats()
        a = stats["a"]
        counters = dict(
            zip(("acq_cn", "acq_cw", "acq_rn", "acq_rw", "timeouts", "refusals", "reclaimed"), a.counters, strict=True)
        )
        assert counters == {"acq_cn": 1, "acq_cw": 1, "acq_rn": 0, "acq_rw": 0, "timeouts": 1, "refusals": 0,
                            "reclaimed": 1}  # fmt: skip
        assert a.held_seconds == pytest.approx(12.0) and a.wait_sum == pytest.approx(0.5)
        assert a.wait_buckets[0] == 1 and a.wait_buckets[3] == 1
        assert stats["off"].counters[4] == 0  # failures count on active limits only
        tx.insert_ticket(_ticket(tx, ("a",)))
        assert tx.record_occupancy(["a"], 1.0, 0.0, 0, 0) is True
        assert tx.reset_stats("a", tx.now.wall) is True
        assert tx.reset_stats("zz", tx.now.wall) is False
        assert tx.select_stats("a")["a"].counters == (0,) * 7

    backend.write(work)


def test_applied_markers(backend: Backend) -> None:
    def work(tx: Tx) -> None:
        tx.mark_applied("a", 12.5)
        tx.mark_applied("b", 13.5)
        tx.unmark_applied("b")
        assert tx.applied_limits() == {"a": 12.5}

    backend.write(work)


def test_a_failed_transaction_leaves_nothing(backend: Backend) -> None:
    backend.write(lambda tx: _limit(tx, "a"))

    def boom(tx: Tx) -> None:
        tx.insert_lease(_lease(tx, ("a",)))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        backend.write(boom)
    with backend.read() as tx:
        assert tx.leases_on("a") == []


def test_reads_are_snapshots_and_now_is_read_once(backend: Backend) -> None:
    backend.write(lambda tx: _limit(tx, "a"))
    with backend.read() as tx:
        assert not tx.predates_boot()
        assert [r.name for r in tx.select_all_limits()] == ["a"]
    first = backend.write(lambda tx: tx.now)
    time.sleep(0.01)
    second = backend.write(lambda tx: tx.now)
    assert second.boot > first.boot and second.wall > first.wall


_HOLD_WRITE_LOCK = """
import sys, time
from gcl_local._backend import open_backend
b = open_backend(sys.argv[1])
def hold(tx):
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
b.write(hold)
"""

_REGISTER = """
import sys, time
from gcl_local._backend import open_backend
b = open_backend(sys.argv[1])
token, _ = b.register()
channel = b.kept_channel()
print(token.name, channel.name, flush=True)
time.sleep(60)
"""


def test_a_non_blocking_write_says_it_would_block(store_db: str, backend: Backend, procs: Procs) -> None:
    backend.write(lambda tx: _limit(tx, "a"))
    holder = procs.python(_HOLD_WRITE_LOCK, store_db, "1.5")
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline().strip()
        assert line == "holding", holder.communicate()
        with pytest.raises(WouldBlock):
            backend.write(lambda tx: None, blocking=False)
        with backend.read() as tx:  # a reader does not wait for the writer
            assert tx.select_limits(["a"])
    finally:
        holder.wait(timeout=30)


def test_liveness_of_a_registration(store_db: str, backend: Backend, procs: Procs) -> None:
    backend.write(lambda tx: _limit(tx, "a"))  # the store exists
    mine, _ = backend.register()
    again, created_again = backend.register()
    assert again is mine and not created_again
    assert backend.alive(mine.name) is True
    other = procs.python(_REGISTER, store_db)
    try:
        assert other.stdout is not None
        name, _channel = other.stdout.readline().split()
        assert backend.alive(name) is True
        assert backend.pid_alive(other.pid, None, os.uname().nodename) is True
        other.send_signal(signal.SIGKILL)
        other.wait(timeout=10)
        deadline = time.monotonic() + 5
        while backend.alive(name) is not False:
            assert time.monotonic() < deadline, "a SIGKILLed process must be seen dead at once"
            time.sleep(0.01)
        assert backend.pid_alive(other.pid, None, os.uname().nodename) is False
        # The census names it (it may name others too), and forgetting it is no error.
        assert name in backend.census() or backend.alive(name) is False
        backend.forget({name})
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()


def test_a_child_that_inherits_the_registration_keeps_it_alive(store_db: str, procs: Procs) -> None:
    code = """
import os, sys, time
from gcl_local._backend import open_backend
b = open_backend(sys.argv[1])
token, _ = b.register()
fd = token.inheritable()
os.set_inheritable(fd, True)
child = os.posix_spawnp("sleep", ["sleep", "3"], dict(os.environ))
print(token.name, child, flush=True)
os.kill(os.getpid(), 9)
"""
    open_backend(store_db).write(lambda tx: _limit(tx, "a"))  # the store exists
    parent = procs.python(code, store_db)
    assert parent.stdout is not None
    name, child = parent.stdout.readline().split()
    parent.wait(timeout=10)
    backend = open_backend(store_db)
    assert backend.alive(name) is True  # the parent is dead, its child holds on
    deadline = time.monotonic() + 15
    while backend.alive(name) is not False:
        assert time.monotonic() < deadline, "the registration must end with the child"
        time.sleep(0.05)
    assert not pid_alive(int(child), None)  # (a zombie, if nobody reaps orphans here)


def test_wake_ups_reach_a_channel_in_another_process(store_db: str, backend: Backend, procs: Procs) -> None:
    backend.write(lambda tx: _limit(tx, "a"))
    listener = procs.python(
        """
import select, sys
from gcl_local._backend import open_backend
b = open_backend(sys.argv[1])
b.register()
channel = b.kept_channel()
print(channel.name, flush=True)
poller = select.poll()
poller.register(channel.fileno(), select.POLLIN)
got = b""
while got.count(b"\\n") < 2 and poller.poll(10000):
    got += channel.drain()
print(got.decode().replace("\\n", "|"), flush=True)
""",
        store_db,
    )
    assert listener.stdout is not None
    name = listener.stdout.readline().strip()
    message = b"G1\x1e\x1e" + b"x" * (backend.max_message - 20) + b"\n"
    backend.wake([(name, b"!7\n"), (name, message)])
    backend.wake([("no-such-channel", b"!1\n")])  # a waiter that is gone is no error
    out = listener.stdout.readline().strip()
    listener.wait(timeout=10)
    assert out == "!7|" + message.decode().rstrip("\n") + "|"


def test_a_channel_made_late_and_the_kept_one(backend: Backend) -> None:
    backend.register()
    name = backend.new_channel_name()
    assert name != backend.new_channel_name()
    channel = backend.open_channel(name)
    try:
        assert channel.name == name
        backend.wake([(name, b"!3\n")])
        poller = select.poll()
        poller.register(channel.fileno(), select.POLLIN)
        assert poller.poll(5000)
        assert channel.drain() == b"!3\n"
        assert channel.drain() == b""
    finally:
        channel.close()
    kept = backend.kept_channel()
    assert backend.kept_channel() is kept
