"""The PostgreSQL backend against a real server: ``$GCL_TEST_PG`` (a ``postgresql://`` URL of a server
we may create schemas in; skipped without it).

Every row operation with the SQLite store's semantics, the server's clock, the schema (creation by
many processes at once, refusal of what is not ours), liveness across processes (a SIGKILLed holder,
a descriptor inherited by a command, a forked child, a lost session), wake-ups between processes, and
no password in any message. Each test works in a schema of its own, dropped at the end.
"""

from __future__ import annotations

import itertools
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

from gcl_local._backend import STATS_COUNTERS, LeaseRow, LimitRow, StatsRow, TicketRow, Tx, WouldBlock  # noqa: E402
from gcl_local._errors import NoStateFileError, StoreError  # noqa: E402
from gcl_local.postgres import PostgresBackend, _sql  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PG = os.environ.get("GCL_TEST_PG", "")
pytestmark = pytest.mark.skipif(not PG, reason="no PostgreSQL server: set GCL_TEST_PG to a postgresql:// URL")
DETECT = 5  # seconds: the shortest detection time (and so grace period) there is


def _with(url: str, **params: object) -> str:
    extra = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{url}{'&' if '?' in url else '?'}{extra}"


def _admin() -> Any:
    return psycopg.connect(PG, autocommit=True)


@pytest.fixture
def schema() -> Iterator[str]:
    name = f"t_{os.getpid()}_{os.urandom(4).hex()}"
    yield name
    with _admin() as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


@pytest.fixture
def url(schema: str) -> str:
    return _with(PG, gcl_schema=schema, gcl_detect_seconds=DETECT)


@pytest.fixture
def backends() -> Iterator[Callable[[str], PostgresBackend]]:
    """Backends that are closed at the end (sessions and connections)."""
    made: list[PostgresBackend] = []

    def make(url: str) -> PostgresBackend:
        backend = PostgresBackend(url)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        session = backend._session
        if session is not None:
            backend.forget({session.name})
        backend.close()


@pytest.fixture
def backend(url: str, backends: Callable[[str], PostgresBackend]) -> PostgresBackend:
    return backends(url)


class Children:
    """Python child processes; each is killed and reaped at teardown."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def python(self, code: str, *args: str) -> subprocess.Popen[str]:
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.started.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)


@pytest.fixture
def children() -> Iterator[Children]:
    c = Children()
    try:
        yield c
    finally:
        c.cleanup()


def _line(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no line from a child in {timeout}s"
    line = proc.stdout.readline()
    assert line, f"child ended: {proc.wait()}"
    return line.strip()


def _past_grace() -> None:
    """Wait until the server has run longer than the grace period (nobody is judged dead before)."""
    with _admin() as conn:
        up = conn.execute("SELECT date_part('epoch', clock_timestamp() - pg_postmaster_start_time())").fetchone()[0]
    if up < DETECT + 0.5:
        time.sleep(DETECT + 0.5 - up)


def _limit(name: str, tx: Tx, limit: int = 3, *, active: bool = True, decay: float = 0.0) -> LimitRow:
    now = tx.now
    return LimitRow(name, limit, active, decay, 0.0, now.boot, now.wall, 0.0, now.wall, now.wall)


def _lease(tx: Tx, names: tuple[str, ...], slots: int = 1, holder: str | None = "pg-7", ticket: int | None = None):  # type: ignore[no-untyped-def]
    now = tx.now
    return LeaseRow(
        0, "s3", names, slots, holder, 4242, 17, "host-a", "ann", "job", ticket, 300.0, now.wall, now.boot,
        now.wall + 300.0, now.boot + 300.0,
    )  # fmt: skip


def _ticket(tx: Tx, names: tuple[str, ...], holder: str = "pg-9", slots: int = 1) -> TicketRow:
    return TicketRow(
        0, names, "concurrency", slots, False, 300.0, holder, False, "gcl_9_1", 4243, 18, "host-b", "bob", "w",
        tx.now.wall,
    )  # fmt: skip


# -- rows ------------------------------------------------------------------------------------------------


def test_limits(backend: PostgresBackend) -> None:
    def setup(tx: Tx) -> None:
        for name, limit in (("b", 2), ("a", 3), ("é ü", 1)):
            tx.insert_limit(_limit(name, tx, limit))

    backend.write(setup)

    def check(tx: Tx) -> None:
        assert [r.name for r in tx.select_limits(["é ü", "a", "missing"])] == ["a", "é ü"]
        assert [r.name for r in tx.select_all_limits()] == ["a", "b", "é ü"]
        a = tx.select_limits(["a"])[0]
        changed = a._replace(
            limit=5, active=False, decay=0.25, level=1.5, level_boot=a.level_boot + 1, level_wall=a.level_wall + 1,
            avg_occupancy=2.5, created=1.0, updated=a.updated + 9,
        )  # fmt: skip
        tx.update_limit(changed)
        assert tx.select_limits(["a"])[0] == changed._replace(created=a.created)  # created is never changed
        tx.set_level("b", 1.75, tx.now)
        b = tx.select_limits(["b"])[0]
        assert (b.level, b.level_boot, b.level_wall) == (1.75, tx.now.boot, tx.now.wall)
        assert tx.delete_limit("b") is True
        assert tx.delete_limit("b") is False
        assert tx.select_limits(["b"]) == []

    backend.write(check)


def test_held_slots_and_acquire_view(backend: PostgresBackend) -> None:
    def run(tx: Tx) -> None:
        tx.insert_limit(_limit("x", tx))
        tx.insert_limit(_limit("y", tx))
        assert tx.select_limits_for_acquire(["x", "y"]) == [(tx.select_limits(["x"])[0], 0, False),
                                                            (tx.select_limits(["y"])[0], 0, False)]  # fmt: skip
        tx.insert_lease(_lease(tx, ("x", "y"), slots=2))
        tx.insert_lease(_lease(tx, ("x",), slots=1))
        tx.insert_ticket(_ticket(tx, ("y",)))
        view = {row.name: (held, waits) for row, held, waits in tx.select_limits_for_acquire(["y", "x", "z"])}
        assert view == {"x": (3, False), "y": (2, True)}
        assert tx.held_slots("x") == 3
        assert tx.held_slots("nothing") == 0
        # A deleted limit's leases keep their slots on the name: a limit made again counts them.
        assert tx.delete_limit("x")
        tx.insert_limit(_limit("x", tx))
        assert tx.select_limits_for_acquire(["x"])[0][1] == 3

    backend.write(run)


def test_leases(backend: PostgresBackend) -> None:
    def run(tx: Tx) -> None:
        tx.insert_limit(_limit("x", tx))
        t1 = tx.insert_lease(_lease(tx, ("x", "y"), slots=2, holder="pg-1"))
        t2 = tx.insert_lease(_lease(tx, ("y",), holder=None, ticket=77))
        t3 = tx.insert_lease(_lease(tx, ("x",), holder="pg-1"))
        assert t1 < t2 < t3
        one = tx.select_lease(t1, "s3")
        assert one is not None
        assert one == _lease(tx, ("x", "y"), slots=2, holder="pg-1")._replace(token=t1)
        assert tx.select_lease(t1, "wrong") is None
        assert tx.select_lease(999999, "s3") is None
        by_ticket = tx.select_lease_by_ticket(77)
        assert by_ticket is not None
        assert by_ticket.token == t2
        assert by_ticket.registration is None
        assert tx.select_lease_by_ticket(78) is None
        assert [r.token for r in tx.leases_on("x")] == [t1, t3]
        assert [r.token for r in tx.leases_on("y")] == [t1, t2]
        assert [r.token for r in tx.leases_of_holder("pg-1")] == [t1, t3]
        later = tx.now._replace(wall=tx.now.wall + 5, boot=tx.now.boot + 5)
        tx.renew_lease(one, 120.0, later)
        renewed = tx.select_lease(t1, "s3")
        assert renewed is not None
        assert renewed.duration == 120.0
        assert (renewed.expires_boot, renewed.expires_wall) == (later.boot + 120, later.wall + 120)
        tx.set_lease_holder(one, 555, None, "sleep 30")
        named = tx.select_lease(t1, "s3")
        assert named is not None
        assert (named.pid, named.pid_start, named.label) == (555, None, "sleep 30")
        popped = tx.pop_lease(t1, "s3")
        assert popped == named
        assert tx.pop_lease(t1, "s3") is None
        assert tx.held_slots("x") == 1
        assert tx.held_slots("y") == 1
        tx.delete_lease(by_ticket)
        assert tx.held_slots("y") == 0
        assert [r.token for r in tx.leases_on("y")] == []

    backend.write(run)


def test_fencing_tokens_and_tickets_only_increase(url: str, backends: Callable[[str], PostgresBackend]) -> None:
    first, second = backends(url), backends(url)
    tokens: list[int] = []
    tickets: list[int] = []

    def take(tx: Tx) -> None:
        token = tx.insert_lease(_lease(tx, ("x",)))
        tokens.append(token)
        tx.pop_lease(token, "s3")  # deleting the newest must not let its number be given again
        ticket = tx.insert_ticket(_ticket(tx, ("x",)))
        tickets.append(ticket)
        row = tx.select_ticket(ticket)
        assert row is not None
        tx.delete_ticket(row)

    for _ in range(3):
        first.write(take)
        second.write(take)
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 6
    assert tickets == sorted(tickets)
    assert len(set(tickets)) == 6


def test_record_occupancy_is_prefects_moving_average(backend: PostgresBackend) -> None:
    def setup(tx: Tx) -> None:
        tx.insert_limit(_limit("on", tx, 4))
        tx.insert_limit(_limit("off", tx, 4, active=False))
        tx.insert_limit(_limit("zero", tx, 0))
        tx.insert_limit(_limit("queued", tx, 2))
        tx.insert_ticket(_ticket(tx, ("queued",)))

    backend.write(setup)
    names = ["on", "off", "zero"]
    assert backend.write(lambda tx: tx.record_occupancy(names, 10.0, 3.5, 1, 1)) is False
    assert backend.write(lambda tx: tx.record_occupancy(names, 2.0, 1.0, 0, 0)) is False
    assert backend.write(lambda tx: tx.record_occupancy(["queued"], 6.0, 0.0, 0, 0)) is True
    expected = 0.0
    for sample in (10.0, 2.0):
        expected += (sample - expected) / (_sql.OCCUPANCY_SPAN * 4)
    with backend.read() as tx:
        rows = {r.name: r for r in tx.select_all_limits()}
        stats = tx.select_stats()
    assert rows["on"].avg_occupancy == pytest.approx(expected, rel=1e-12)
    assert rows["off"].avg_occupancy == 0.0
    assert rows["zero"].avg_occupancy == 0.0
    assert rows["queued"].avg_occupancy == pytest.approx(6.0 / 4)
    for name in names:  # the history counts on every one of the names, active or not
        counters = dict(zip(STATS_COUNTERS, stats[name].counters, strict=True))
        assert counters["acq_cn"] == 1
        assert counters["reclaimed"] == 1
        assert stats[name].held_seconds == 4.5
        assert stats[name].wait_buckets[0] == 1


def test_history(backend: PostgresBackend) -> None:
    def run(tx: Tx) -> None:
        tx.insert_limit(_limit("a", tx))
        tx.insert_limit(_limit("b", tx, active=False))
        tx.count_acquisition(["a", "b"], "acq_rw", 3, 2.5)
        tx.count_acquisition(["a"], "acq_cw", 7, 100.0)
        tx.count_failure(["a", "b"], "timeouts")  # on active limits only
        tx.count_failure(["a"], "refusals")

    backend.write(run)
    with backend.read() as tx:
        stats = tx.select_stats()
        assert tx.select_stats("b") == {"b": stats["b"]}
        assert tx.select_stats("nothing") == {}
    assert stats["a"] == StatsRow((0, 1, 0, 1, 1, 1, 0), 0.0, 102.5, (0, 0, 0, 1, 0, 0, 0, 1), 0.0)
    assert stats["b"] == StatsRow((0, 0, 0, 1, 0, 0, 0), 0.0, 2.5, (0, 0, 0, 1, 0, 0, 0, 0), 0.0)
    assert backend.write(lambda tx: tx.reset_stats("a", 123.5)) is True
    assert backend.write(lambda tx: tx.reset_stats("nothing", 1.0)) is False
    with backend.read() as tx:
        assert tx.select_stats("a")["a"] == StatsRow((0,) * 7, 0.0, 0.0, (0,) * 8, 123.5)
    with pytest.raises(ValueError, match="no counter"):
        backend.write(lambda tx: tx.count_acquisition(["a"], "bogus", 0, 0.0))


def test_queue(backend: PostgresBackend) -> None:
    def run(tx: Tx) -> None:
        t = [tx.insert_ticket(_ticket(tx, names)) for names in (("a",), ("b",), ("a", "b"), ("c",), ("b", "a"))]
        assert t == sorted(t)
        row = tx.select_ticket(t[2])
        assert row == _ticket(tx, ("a", "b"))._replace(ticket=t[2])
        assert tx.select_ticket(0) is None
        assert [p.ticket for p in tx.tickets_on(["a"])] == [t[0], t[2], t[4]]
        assert [p.ticket for p in tx.tickets_on(["a", "b"])] == [t[0], t[1], t[2], t[4]]  # merged, each once
        assert [p.ticket for p in tx.tickets_on(["b", "a"], after=t[1])] == [t[2], t[4]]
        assert [p.ticket for p in tx.tickets_on(["a", "b"], limit=2)] == [t[0], t[1]]
        assert [p.ticket for p in tx.tickets_on(["a", "b"], after=t[0], limit=2)] == [t[1], t[2]]
        assert [p.ticket for p in tx.tickets_on(["a", "b"], limit=0)] == []
        assert [p.ticket for p in tx.tickets_on(["nothing"])] == []
        assert tx.ticket_ahead(["a"], t[4]) == t[2]
        assert tx.ticket_ahead(["b", "c"], t[4]) == t[3]
        assert tx.ticket_ahead(["a"], t[0]) is None
        assert tx.count_older_tickets(["a", "b"], t[4]) == 3
        assert tx.count_older_tickets(["c"], t[0]) == 0
        oldest = tx.oldest_ticket_on(["c", "b"])
        assert oldest is not None
        assert oldest.ticket == t[1]
        assert tx.oldest_ticket_on(["nothing"]) is None
        assert tx.any_ticket_on(["nothing", "c"]) is True
        assert tx.any_ticket_on(["nothing"]) is False
        tx.insert_ticket(_ticket(tx, ("c",), holder="pg-10"))
        assert [r.ticket for r in tx.tickets_of_holder("pg-9")] == t
        assert [r.ticket for r in tx.waiting_on("b")] == [t[1], t[2], t[4]]
        assert row is not None
        tx.delete_ticket(row)
        assert tx.select_ticket(t[2]) is None
        assert [p.ticket for p in tx.tickets_on(["a", "b"])] == [t[0], t[1], t[4]]

    backend.write(run)


def test_applied_markers(backend: PostgresBackend) -> None:
    def run(tx: Tx) -> None:
        assert tx.applied_limits() == {}
        tx.mark_applied("a", 10.5)
        tx.mark_applied("b", 11.0)
        tx.mark_applied("a", 12.25)  # made again
        tx.unmark_applied("b")
        tx.unmark_applied("never")
        assert tx.applied_limits() == {"a": 12.25}

    backend.write(run)


def test_a_driver_error_in_work_is_a_store_error_and_rolls_back(backend: PostgresBackend) -> None:
    backend.write(lambda tx: tx.insert_limit(_limit("a", tx)))

    def twice(tx: Tx) -> None:
        tx.insert_limit(_limit("b", tx))
        tx.insert_limit(_limit("a", tx))

    with pytest.raises(StoreError, match="duplicate key") as caught:
        backend.write(twice)
    assert "\n" not in str(caught.value)

    def fails(tx: Tx) -> None:
        tx.insert_limit(_limit("c", tx))
        raise KeyError("no")

    with pytest.raises(KeyError):
        backend.write(fails)
    with backend.read() as tx:
        assert [r.name for r in tx.select_all_limits()] == ["a"]


def test_a_rollback_after_psycopgs_own_prepared_statements_keeps_ours(backend: PostgresBackend) -> None:
    """psycopg prepares a statement run 5 times, and on a ROLLBACK it deallocates every prepared statement
    of the connection, ours (the BEGIN statements) too: the next transaction must still work (found by
    scripts/stress.py on PostgreSQL: an async worker's non-blocking writes roll back when the lock is taken)."""
    backend.write(lambda tx: tx.insert_limit(_limit("a", tx)))
    for _ in range(6):  # psycopg prepares it
        backend.alive("pg-12345")

    def fails(tx: Tx) -> None:
        raise KeyError("no")

    with pytest.raises(KeyError):
        backend.write(fails)  # ROLLBACK
    assert [r.name for r in backend.write(lambda tx: tx.select_all_limits())] == ["a"]
    with backend.read() as tx:
        assert [r.name for r in tx.select_all_limits()] == ["a"]


def test_a_statement_interrupted_inside_psycopg_leaves_the_next_transaction_working(
    backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt that strikes in psycopg's own Python code after a statement was sent and before
    its result is read leaves the connection busy (psycopg cancels it but cannot read the result of a
    generator the interrupt ended): the next statement failed with "another command is already in
    progress" (scripts/stress.py on PostgreSQL, a sigint worker). The next transaction starts afresh."""
    from psycopg._preparing import PrepareManager

    backend.write(lambda tx: tx.insert_limit(_limit("a", tx)))
    real = PrepareManager.maybe_add_to_cache

    def interrupted(self: Any, *args: Any) -> Any:  # runs between the send and the read of the result
        monkeypatch.undo()
        raise KeyboardInterrupt

    monkeypatch.setattr(PrepareManager, "maybe_add_to_cache", interrupted)
    with pytest.raises(KeyboardInterrupt):
        backend.alive("pg-12345")  # a statement on its own, outside any transaction
    assert PrepareManager.maybe_add_to_cache is real
    assert backend.write(lambda tx: [r.name for r in tx.select_all_limits()]) == ["a"]
    with backend.read() as tx:
        assert [r.name for r in tx.select_all_limits()] == ["a"]


# -- time and transactions ----------------------------------------------------------------------------


def test_now_is_the_servers_clock_and_never_runs_back(backend: PostgresBackend, schema: str) -> None:
    seen = [backend.write(lambda tx: tx.now) for _ in range(5)]
    assert all(a.boot < b.boot and a.wall < b.wall for a, b in itertools.pairwise(seen))
    assert {n.boot_id for n in seen} == {"postgres"}
    assert abs(seen[-1].wall - time.time()) < 5  # the same machine here
    with backend.read() as tx:
        assert tx.now.boot >= seen[-1].boot
        assert tx.predates_boot() is False
    # The server's clock stepped back an hour (as the stored wall being an hour ahead shows): the
    # store's time line stands still for that one transaction, then moves on at the clock's pace.
    with _admin() as conn:
        conn.execute(f"UPDATE {schema}.clock SET wall = wall + 3600")
    stepped = backend.write(lambda tx: tx.now)
    assert stepped.boot == pytest.approx(seen[-1].boot, abs=1e-9) or stepped.boot >= seen[-1].boot
    assert stepped.boot < seen[-1].boot + 1
    time.sleep(0.2)
    after = backend.write(lambda tx: tx.now)
    assert 0.19 < after.boot - stepped.boot < 2
    assert 0.19 < after.wall - stepped.wall < 2


def test_read_is_a_snapshot_without_the_write_lock(url: str, backends: Callable[[str], PostgresBackend]) -> None:
    backend, other = backends(url), backends(url)
    backend.write(lambda tx: tx.insert_limit(_limit("a", tx)))
    inside, leave = threading.Event(), threading.Event()

    def hold(tx: Tx) -> None:
        tx.insert_limit(_limit("b", tx))
        inside.set()
        assert leave.wait(10)

    writer = threading.Thread(target=other.write, args=(hold,))
    writer.start()
    try:
        assert inside.wait(10)
        started = time.monotonic()
        with pytest.raises(WouldBlock):
            backend.write(lambda tx: None, blocking=False)
        with backend.read() as tx:  # the write lock is held: a reader does not wait for it
            assert [r.name for r in tx.select_all_limits()] == ["a"]
            leave.set()
            writer.join(10)
            assert [r.name for r in tx.select_all_limits()] == ["a"]  # the same snapshot throughout
        assert time.monotonic() - started < 5
    finally:
        leave.set()
        writer.join(10)
    with backend.read() as tx:
        assert [r.name for r in tx.select_all_limits()] == ["a", "b"]
    assert backend.write(lambda tx: 7, blocking=False) == 7


def test_reads_never_create_the_schema(url: str, schema: str, backends: Callable[[str], PostgresBackend]) -> None:
    backend = backends(url)
    with pytest.raises(NoStateFileError) as caught, backend.read():
        pass
    assert schema in str(caught.value)
    assert "\n" not in str(caught.value)
    with _admin() as conn:
        assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None
        conn.execute(f"CREATE SCHEMA {schema}")  # an empty schema (made for us by an admin): still nothing
    with pytest.raises(NoStateFileError), backend.read():
        pass
    backend.write(lambda tx: None)
    with backend.read() as tx:
        assert tx.select_all_limits() == []


def test_synchronous_commit_is_raised_to_on(schema: str, backends: Callable[[str], PostgresBackend]) -> None:
    backend = backends(_with(PG, gcl_schema=schema, options="-c%20synchronous_commit%3Doff"))
    backend.write(lambda tx: None)
    conn = backend._work().conn
    assert conn.execute("SELECT current_setting('synchronous_commit'), current_setting('search_path')").fetchall() == [
        ("on", "pg_catalog")
    ]


def test_a_lost_work_connection_is_made_again(backend: PostgresBackend) -> None:
    backend.write(lambda tx: tx.insert_limit(_limit("a", tx)))
    old = backend._work().backend_pid
    with _admin() as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (old,))
    time.sleep(0.1)
    assert backend.alive("pg-1") in (False, None)  # a statement on its own: made again too
    assert backend._work().backend_pid != old
    old = backend._work().backend_pid
    with _admin() as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (old,))
    time.sleep(0.1)
    assert backend.write(lambda tx: [r.name for r in tx.select_all_limits()]) == ["a"]
    assert backend._work().backend_pid != old


class _CommitAnswerLost:
    """A work cursor whose connection is lost at the COMMIT: after the server ran it (only the answer is
    lost), or before it was sent. Everything else goes to the real cursor."""

    def __init__(self, cur: Any, *, after: bool) -> None:
        self._cur, self._after, self.tripped = cur, after, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)

    def execute(self, sql: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.tripped and isinstance(sql, str) and sql.endswith("COMMIT"):
            self.tripped = True
            if self._after:
                self._cur.execute(sql, *args, **kwargs)
            self._cur.connection.close()  # the server ends the session: one not yet committed rolls back
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return self._cur.execute(sql, *args, **kwargs)


@pytest.mark.parametrize("after", [True, False], ids=["after-the-commit", "before-the-commit"])
def test_a_commit_whose_answer_is_lost_is_settled_by_asking_the_server(backend: PostgresBackend, after: bool) -> None:
    # The soak with server restarts: an acquire failed with LostCommitError, and the lease or ticket it may
    # have committed stayed unknown to a live process. The store now asks what became of its transaction.
    backend.write(lambda tx: tx.insert_limit(_limit("a", tx)))
    work = backend._work()
    lost = _CommitAnswerLost(work.cur, after=after)
    work.cur = lost
    runs = []

    def add_lease(tx: Tx) -> int:
        runs.append(1)
        return tx.insert_lease(_lease(tx, ("a",)))

    token = backend.write(add_lease)
    assert lost.tripped
    assert len(runs) == (1 if after else 2)  # aborted: run again, on a new connection
    assert backend.write(lambda tx: [lease.token for lease in tx.leases_on("a")]) == [token]


def _crash(url: str, pg_dir: str, how: str) -> None:
    """Crash the server: restart it at once, or SIGKILL one backend (the postmaster then ends every
    session and runs crash recovery, and keeps its start time); return once it takes connections."""
    if how == "restart":
        subprocess.run([str(REPO / "scripts" / "pg-server"), "restart", pg_dir, "immediate"], check=True)
        return
    with psycopg.connect(url, autocommit=True) as victim:
        pid = victim.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.parametrize("how", ["restart", "backend-crash"])
@pytest.mark.parametrize("reused", [False, True], ids=["id-in-the-future", "id-handed-out-again"])
def test_a_commit_cut_off_by_a_server_crash_runs_again(
    own_pg_server: tuple[str, str], backends: Callable[[str], PostgresBackend], reused: bool, how: str
) -> None:
    # The same on a real crash (pg_ctl restart -m immediate) while the transaction is open: the COMMIT
    # finds the connection gone. Nothing of the transaction reached the log, so after recovery the
    # server hands its id out again and txid_status says "in the future": it never committed. Or,
    # once others took ids (here: transactions outside gcl_local), txid_status says "committed" of
    # the one that took ours: believed, the caller would have a lease that does not exist (the
    # PostgreSQL soak: a waiter's ticket that never was).
    url, pg_dir = own_pg_server
    backend = backends(_with(url, gcl_schema=f"t_{os.getpid()}_crash", gcl_detect_seconds=DETECT))
    backend.write(lambda tx: tx.insert_limit(_limit("a", tx)))
    runs = []

    def add_lease(tx: Tx) -> int:
        runs.append(1)
        token = tx.insert_lease(_lease(tx, ("a",)))
        if len(runs) == 1:
            _crash(url, pg_dir, how)
            if reused:
                with psycopg.connect(url, autocommit=True) as other:
                    for _ in range(20):
                        other.execute("SELECT txid_current()")
        return token

    token = backend.write(add_lease)
    assert len(runs) == 2
    assert backend.write(lambda tx: [lease.token for lease in tx.leases_on("a")]) == [token]


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_holder_slow_to_come_back_keeps_its_slot_through_any_restart(
    own_pg_server: tuple[str, str], children: Children, mode: str
) -> None:
    # A restart ends every session, and with them every holder's lock: for the grace period S, a free
    # lock means "cannot tell". Schema version 2 kept the incarnation in an UNLOGGED table, which only a
    # crash empties: after a clean restart (-m fast, as systemd does) there was no grace, and a newcomer
    # that does not wait was granted a live holder's slot 0.09 s after the server was back (a review).
    from gcl_local import AcquireConcurrencySlotTimeoutError, concurrency, create_limit

    url, pg_dir = own_pg_server
    db = _with(url, gcl_schema=f"t_{os.getpid()}_restart", gcl_detect_seconds=DETECT)
    create_limit("one", 1, db=db)
    holder = children.python(
        """
import sys, time
from gcl_local import concurrency
with concurrency("one", db=sys.argv[1]) as lease:
    print(lease.token, flush=True)
    sys.stdin.readline()
    print("still mine", flush=True)
""",
        db,
    )
    token = int(_line(holder))
    os.kill(holder.pid, signal.SIGSTOP)  # it cannot take its lock again yet: a holder slow to reconnect
    try:
        subprocess.run([str(REPO / "scripts" / "pg-server"), "restart", pg_dir, mode], check=True)
        back = time.monotonic()
        while time.monotonic() - back < 2:
            with pytest.raises(AcquireConcurrencySlotTimeoutError), concurrency("one", timeout_seconds=0, db=db):
                pass
            time.sleep(0.1)
    finally:
        os.kill(holder.pid, signal.SIGCONT)
    time.sleep(DETECT)  # the grace is over: the holder has taken its lock again, and is alive
    with pytest.raises(AcquireConcurrencySlotTimeoutError), concurrency("one", timeout_seconds=0, db=db):
        pass
    assert holder.stdin is not None
    holder.stdin.write("\n")
    holder.stdin.flush()
    assert _line(holder) == "still mine"
    assert holder.wait(timeout=20) == 0
    with concurrency("one", timeout_seconds=10, db=db) as lease:
        assert lease.token is not None and lease.token > token


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_process_that_registers_while_the_server_restarts_waits_for_it(
    own_pg_server: tuple[str, str], children: Children, mode: str
) -> None:
    # Its work connection was made before the restart; its registration's session is made during it. The
    # work connection waited for a restarting server, the registration's did not: the PostgreSQL soak's
    # sync worker failed 182 times with "the database system is starting up" in one restart.
    url, pg_dir = own_pg_server
    db = _with(url, gcl_schema=f"t_{os.getpid()}_register", gcl_detect_seconds=DETECT)
    child = children.python(
        """
import sys
from gcl_local.postgres import PostgresBackend
backend = PostgresBackend(sys.argv[1])
backend.write(lambda tx: None)
print("connected", flush=True)
sys.stdin.readline()
session, made = backend.register()
print("registered", made, backend.alive(session.name), flush=True)
""",
        db,
    )
    assert _line(child) == "connected"
    restart = subprocess.Popen([str(REPO / "scripts" / "pg-server"), "restart", pg_dir, mode])
    try:
        time.sleep(0.05)  # the server is going down
        assert child.stdin is not None
        child.stdin.write("\n")
        child.stdin.flush()
        assert _line(child, timeout=30) == "registered True True"
    finally:
        assert restart.wait(timeout=60) == 0


# -- the schema ------------------------------------------------------------------------------------------


def _dump(schema: str) -> list[Any]:
    with _admin() as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE nspname = %s AND relkind = 'r' ORDER BY relname", (schema,)).fetchall()]  # fmt: skip
        return [(t, conn.execute(f"SELECT * FROM {schema}.{t} ORDER BY 1").fetchall()) for t in tables]


def test_a_version_1_schema_is_brought_to_the_current_version_in_place(
    url: str, schema: str, backends: Callable[[str], PostgresBackend]
) -> None:
    # Version 2 adds the server's incarnation (an UNLOGGED table) and the clock row's record of the
    # last write of the previous one; version 3 ties the incarnation to the server's start. Rows
    # survive; the epoch becomes the incarnation without a restart's grace: a dead holder is judged
    # dead at once.
    with _admin() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        for statement in _sql.MIGRATIONS[1]:
            conn.execute(statement.format(s=schema))
        conn.execute(f"INSERT INTO {schema}.meta VALUES ('marker', %s), ('version', '1')", (_sql.MARKER,))
    backend = backends(url)
    backend.write(lambda tx: tx.insert_limit(_limit("a", tx)))
    with _admin() as conn:
        version = conn.execute(f"SELECT value FROM {schema}.meta WHERE key = 'version'").fetchone()
        assert version == (str(_sql.SCHEMA_VERSION),) == ("3",)
        incarnation = conn.execute(
            f"SELECT value, started = date_part('epoch', pg_postmaster_start_time()) FROM {schema}.incarnation"
        ).fetchall()
        assert len(incarnation) == 1 and incarnation[0][1] is True
        assert conn.execute(f"SELECT epoch, epoch_since FROM {schema}.clock").fetchone() == (incarnation[0][0], 0)
        persistence = conn.execute(
            "SELECT relpersistence FROM pg_class WHERE oid = %s::regclass", (f"{schema}.incarnation",)
        ).fetchone()
        assert persistence == ("u",)
    assert [row.name for row in backend.write(lambda tx: tx.select_limits(["a"]))] == ["a"]
    assert backend.alive("pg-12345") is False


def test_a_version_2_schema_keeps_its_incarnation_in_the_move_to_version_3(
    url: str, schema: str, backends: Callable[[str], PostgresBackend]
) -> None:
    # Not a restart: no grace, and the same incarnation (a COMMIT lost just before is still settled).
    with _admin() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        for statement in (*_sql.MIGRATIONS[1], *_sql.MIGRATIONS[2]):
            conn.execute(statement.format(s=schema))
        conn.execute(f"INSERT INTO {schema}.meta VALUES ('marker', %s), ('version', '2')", (_sql.MARKER,))
        (before,) = conn.execute(f"SELECT value FROM {schema}.incarnation").fetchone()  # type: ignore[misc]
    backend = backends(url)
    backend.write(lambda tx: tx.insert_limit(_limit("a", tx)))
    with _admin() as conn:
        assert conn.execute(f"SELECT value FROM {schema}.meta WHERE key = 'version'").fetchone() == ("3",)
        assert conn.execute(f"SELECT value FROM {schema}.incarnation").fetchone() == (before,)
        assert conn.execute(f"SELECT epoch, epoch_since FROM {schema}.clock").fetchone() == (before, 0)
    assert backend.alive("pg-12345") is False


def test_a_newer_schema_is_refused_untouched(url: str, schema: str, backends: Callable[[str], PostgresBackend]) -> None:
    backends(url).write(lambda tx: tx.insert_limit(_limit("a", tx)))
    with _admin() as conn:
        conn.execute(f"UPDATE {schema}.meta SET value = '99' WHERE key = 'version'")
    before = _dump(schema)
    fresh = backends(url)
    with pytest.raises(StoreError, match="version 99, newer than") as caught:
        fresh.write(lambda tx: None)
    assert "\n" not in str(caught.value)
    with pytest.raises(StoreError, match="newer"), fresh.read():
        pass
    assert _dump(schema) == before


@pytest.mark.parametrize(
    "setup",
    [
        "CREATE TABLE {s}.jobs(id int)",
        "CREATE TABLE {s}.meta(key text, value text); INSERT INTO {s}.meta VALUES ('marker', 'someone else')",
        "CREATE TABLE {s}.meta(k int)",
    ],
)
def test_a_schema_of_another_program_is_refused_untouched(
    setup: str, url: str, schema: str, backends: Callable[[str], PostgresBackend]
) -> None:
    with _admin() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(setup.format(s=schema))
    before = _dump(schema)
    backend = backends(url)
    with pytest.raises(StoreError, match="not gcl_local's") as caught:
        backend.write(lambda tx: None)
    assert "\n" not in str(caught.value)
    with pytest.raises(StoreError, match="not gcl_local's"), backend.read():
        pass
    assert _dump(schema) == before


def test_a_damaged_schema_is_refused(url: str, schema: str, backends: Callable[[str], PostgresBackend]) -> None:
    backends(url).write(lambda tx: None)
    with _admin() as conn:
        conn.execute(f"DROP TABLE {schema}.tickets")
    with pytest.raises(StoreError, match=r"damaged .*tickets"):
        backends(url).write(lambda tx: None)


_FIRST_USE = """
import sys, time
from gcl_local._backend import LimitRow
from gcl_local.postgres import PostgresBackend
url, i, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
backend = PostgresBackend(url)
time.sleep(max(0.0, start - time.time()))
def create(tx):
    n = tx.now
    tx.insert_limit(LimitRow(f"l{i}", 1, True, 0.0, 0.0, n.boot, n.wall, 0.0, n.wall, n.wall))
backend.write(create)
backend.close()
print("ok")
"""


def test_many_processes_create_the_schema_at_once(url: str, backend: PostgresBackend, children: Children) -> None:
    start = time.time() + 1.5  # every child has imported psycopg and waits for the same moment
    procs = [children.python(_FIRST_USE, url, str(i), str(start)) for i in range(8)]
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert (proc.returncode, out.strip()) == (0, "ok")
    with backend.read() as tx:
        assert sorted(r.name for r in tx.select_all_limits()) == [f"l{i}" for i in range(8)]


def test_schema_names(schema: str) -> None:
    for bad in ("Upper", "pg_x", "a-b", "x" * 64, "1abc"):
        with pytest.raises(StoreError, match="Invalid schema name"):
            PostgresBackend(_with(PG, gcl_schema=bad))
    with pytest.raises(StoreError, match="Unknown parameter gcl_nope"):
        PostgresBackend(_with(PG, gcl_nope=1))
    with pytest.raises(StoreError, match="detection time"):
        PostgresBackend(_with(PG, gcl_detect_seconds=1))


def test_schema_from_the_environment(schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GCL_PG_SCHEMA", schema)
    monkeypatch.setenv("GCL_PG_DETECT_SECONDS", "7.5")
    backend = PostgresBackend(PG)
    assert (backend.settings.schema, backend.detect_seconds) == (schema, 7.5)
    assert PostgresBackend(_with(PG, gcl_schema="other")).settings.schema == "other"


# -- no password in any message --------------------------------------------------------------------------


def test_no_password_in_messages(schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "Sup3r-s3cret-pw"
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "2")
    bad_port = PG.replace("postgresql://", f"postgresql://nobody:{secret}@", 1).replace("port=", "port=1", 1)
    if "port=" not in PG:
        bad_port = _with(bad_port, port=1)
    for url in (bad_port, _with(bad_port, password=secret), _with(PG, password=secret, dbname="no_such_db")):
        backend = PostgresBackend(_with(url, gcl_schema=schema))
        assert secret not in backend.description
        assert secret not in repr(backend)
        with pytest.raises(StoreError) as caught:
            backend.write(lambda tx: None)
        assert secret not in str(caught.value)
        assert "\n" not in str(caught.value)
    with pytest.raises(StoreError) as invalid:
        PostgresBackend(f"postgresql://u:{secret}@host/db?nonsense_parameter=1")
    assert secret not in str(invalid.value)


# -- liveness --------------------------------------------------------------------------------------------

_HOLDER = """
import sys, time
from gcl_local.postgres import PostgresBackend
backend = PostgresBackend(sys.argv[1])
registration, created = backend.register()
print(registration.name, flush=True)
time.sleep(60)
"""


def test_a_sigkilled_holder_is_seen_dead_at_once(backend: PostgresBackend, children: Children) -> None:
    _past_grace()
    backend.write(lambda tx: None)
    own, created = backend.register()
    assert created
    assert backend.register() == (own, False)
    assert backend.alive(own.name) is True
    child = children.python(_HOLDER, backend.settings.url + f"&gcl_schema={backend.settings.schema}")
    name = _line(child)
    assert name.startswith("pg-")
    assert name != own.name
    assert backend.alive(name) is True
    # A registration that rows name and that lives is no one for a sweep to look at.
    backend.write(lambda tx: tx.insert_lease(_lease(tx, ("x",), holder=name)))
    assert backend.census() == []
    child.send_signal(signal.SIGKILL)
    child.wait()
    killed = time.monotonic()
    while backend.alive(name) is not False:
        assert time.monotonic() - killed < 2, "the dead holder still looks alive"
        time.sleep(0.001)
    print(f"dead after {1000 * (time.monotonic() - killed):.1f} ms")
    assert backend.census() == [name]
    assert backend.alive("pg-1") is False  # nobody ever held it
    assert backend.alive("not-ours") is None


_WRAPPER = """
import os, sys, time
from gcl_local.postgres import PostgresBackend
backend = PostgresBackend(sys.argv[1])
registration, _ = backend.register()
fd = registration.inheritable()
os.set_inheritable(fd, True)
child = os.posix_spawnp("sleep", ["sleep", "60"], dict(os.environ))
os.set_inheritable(fd, False)
print(registration.name, child, flush=True)
time.sleep(60)
"""


def test_an_inherited_descriptor_keeps_the_registration(backend: PostgresBackend, children: Children) -> None:
    """As ``gcl run``: the command inherits the token session, and keeps it after its wrapper's SIGKILL."""
    _past_grace()
    backend.write(lambda tx: None)
    wrapper = children.python(_WRAPPER, backend.settings.url + f"&gcl_schema={backend.settings.schema}")
    name, pid = _line(wrapper).split()
    command = int(pid)
    try:
        wrapper.send_signal(signal.SIGKILL)
        wrapper.wait()
        time.sleep(0.3)
        assert backend.alive(name) is True
        os.kill(command, signal.SIGKILL)
        killed = time.monotonic()
        while backend.alive(name) is not False:
            assert time.monotonic() - killed < 2
            time.sleep(0.001)
    finally:
        try:
            os.kill(command, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_forked_child_uses_connections_of_its_own(backend: PostgresBackend) -> None:
    _past_grace()
    backend.write(lambda tx: tx.insert_limit(_limit("a", tx)))
    own, _ = backend.register()
    parent_pid = backend._work().backend_pid
    read_r, read_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never touch the parent's sessions, make its own
        code = 1
        try:
            os.close(read_r)
            mine, created = backend.register()
            names = backend.write(lambda tx: [r.name for r in tx.select_all_limits()])
            ok = created and mine.name != own.name and names == ["a"] and backend._work().backend_pid != parent_pid
            os.write(read_w, f"{mine.name} {ok}\n".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(read_w)
    with os.fdopen(read_r) as f:
        line = f.read().strip()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    child_name, succeeded = line.split()
    assert succeeded == "True"
    assert backend._work().backend_pid == parent_pid  # ours still works, on the same session
    assert backend.write(lambda tx: len(tx.select_all_limits())) == 1
    assert backend.alive(own.name) is True
    assert own.held
    _dead_soon(backend, child_name)  # the child's own session ended with it


def test_a_lost_token_session_is_made_again(backend: PostgresBackend) -> None:
    _past_grace()
    backend.write(lambda tx: None)
    own, _ = backend.register()
    session = backend._session
    assert session is not None
    channel = backend.kept_channel()
    old = session.backend_pid
    with _admin() as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (old,))
    deadline = time.monotonic() + 10
    while session.generation == 0 or not session.held:
        assert time.monotonic() < deadline, "the session was not made again"
        time.sleep(0.01)
    assert session.backend_pid != old
    assert session.name == own.name
    assert backend.alive(own.name) is True
    other = PostgresBackend(backend.settings.url + f"&gcl_schema={backend.settings.schema}")
    try:
        assert other.alive(own.name) is True  # held again, by the new session
    finally:
        other.close()
    channel.drain()  # (the watcher pokes every channel after it made the session again)
    backend.wake([(channel.name, b"after\n")])
    assert select.select([channel], [], [], 5)[0]
    assert channel.drain() == b"after\n"


def _dead_soon(backend: PostgresBackend, name: str) -> None:
    """*name*'s session ended on our side: the server lets its lock go a moment later, when its backend
    process has seen the socket close (asserting at once was a race that failed now and then)."""
    ended = time.monotonic()
    while backend.alive(name) is not False:
        assert time.monotonic() - ended < 2, "the ended session still looks alive"
        time.sleep(0.001)


def test_forget_lets_the_registration_go(backend: PostgresBackend) -> None:
    _past_grace()
    backend.write(lambda tx: None)
    own, _ = backend.register()
    backend.forget({"pg-1", "pg-2"})
    assert backend.alive(own.name) is True
    backend.forget({own.name})
    _dead_soon(backend, own.name)
    again, created = backend.register()
    assert created
    assert again.name != own.name


def test_pid_alive() -> None:
    from gcl_local._process import process_start_time
    from gcl_local.postgres._liveness import pid_alive

    here = os.uname().nodename
    me = os.getpid()
    assert pid_alive(me, process_start_time(me), here) is True
    assert pid_alive(me, None, here) is True
    assert pid_alive(me, 1, here) is False  # the pid was reused
    assert pid_alive(me, process_start_time(me), "another-host") is None
    assert pid_alive(2**22 + 12345, None, here) is False


def test_a_transaction_pooler_is_refused(backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    # Through a transaction-mode pooler, the lock would not show under the session's later backend.
    monkeypatch.setattr(_sql, "TOKEN_VISIBLE", "SELECT false AND %s::int + %s::bigint + %s::bigint > 0")
    with pytest.raises(StoreError, match="pooler") as caught:
        backend.register()
    assert "\n" not in str(caught.value)


# -- wake-ups --------------------------------------------------------------------------------------------

_LISTENER = """
import select, sys, time
from gcl_local.postgres import PostgresBackend
backend = PostgresBackend(sys.argv[1])
channel = backend.kept_channel()
print(channel.name, flush=True)
got = b""
while got.count(b"\\n") < 2:
    select.select([channel], [], [], 10)
    got += channel.drain()
print(repr(got), flush=True)
"""


def test_wakeups_between_processes(backend: PostgresBackend, children: Children) -> None:
    backend.write(lambda tx: None)
    child = children.python(_LISTENER, backend.settings.url + f"&gcl_schema={backend.settings.schema}")
    name = _line(child)
    assert backend.max_message < 8000
    long = b"g" * (backend.max_message - 1) + b"\n"
    backend.wake([(name, b"first 1\n"), ("gcl_nobody_1", b"lost\n"), (name, long)])
    assert _line(child) == repr(b"first 1\n" + long)


def test_channels(backend: PostgresBackend) -> None:
    backend.write(lambda tx: None)
    kept = backend.kept_channel()
    assert backend.kept_channel() is kept
    name = backend.new_channel_name()
    assert name != kept.name
    assert len(name.encode()) < 64
    other = backend.open_channel(name)
    assert other.drain() == b""
    backend.wake([(name, b"one\n"), (name, b"one\n"), (name, b"two")])  # identical ones fold into one
    assert select.select([other], [], [], 5)[0]
    time.sleep(0.05)
    assert other.drain() == b"one\ntwo\n"
    assert not select.select([kept], [], [], 0)[0]
    other.close()
    other.close()
    assert other.fileno() == -1
    assert other.drain() == b""
    backend.wake([(name, b"gone\n")])  # to a channel nobody listens on: no error
    backend.wake([])
    kept.close()
    assert backend.kept_channel() is not kept

    seen: list[str] = []

    def listening() -> list[str]:
        session = backend._session
        assert session is not None
        with session._lock:
            assert session.conn is not None
            return [r[0] for r in session.conn.execute("SELECT pg_listening_channels()").fetchall()]

    deadline = time.monotonic() + 5
    while name in (seen := listening()):  # the watcher thread UNLISTENs a closed channel
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert backend.kept_channel().name in seen


@pytest.mark.parametrize("direct", [True, False], ids=["waiters-read", "watcher-reads"])
def test_waiters_of_one_process_each_get_their_own(
    direct: bool, backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waiters of one process share the token session: whoever reads it hands the others theirs (on
    Linux the waiters read it; elsewhere the watcher thread does)."""
    from gcl_local.postgres import _wakeups

    monkeypatch.setattr(_wakeups, "DIRECT", direct and _wakeups.DIRECT)
    backend.write(lambda tx: None)
    got: dict[str, bytes] = {}
    names: list[str] = []
    ready = threading.Barrier(4)

    def wait() -> None:
        channel = backend.kept_channel()
        names.append(channel.name)
        ready.wait(10)
        received = b""
        deadline = time.monotonic() + 10
        while received.count(b"\n") < 2 and time.monotonic() < deadline:
            select.select([channel], [], [], 1)
            received += channel.drain()
        got[channel.name] = received

    threads = [threading.Thread(target=wait) for _ in range(3)]
    for thread in threads:
        thread.start()
    ready.wait(10)
    for round_ in (1, 2):
        backend.wake([(name, f"{name} {round_}\n".encode()) for name in names])
    for thread in threads:
        thread.join(15)
    assert got == {name: f"{name} 1\n{name} 2\n".encode() for name in names}


def test_libpq_environment_and_service_files(
    schema: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backends: Callable[[str], PostgresBackend]
) -> None:
    params = psycopg.conninfo.conninfo_to_dict(PG)
    env = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE"}
    for key, var in env.items():
        if key in params:
            monkeypatch.setenv(var, str(params[key]))
    backends(f"postgresql://?gcl_schema={schema}").write(lambda tx: tx.insert_limit(_limit("from-env", tx)))
    for var in env.values():
        monkeypatch.delenv(var, raising=False)
    service = tmp_path / "pg_service.conf"
    service.write_text("[gcltest]\n" + "".join(f"{k}={params[k]}\n" for k in env if k in params))
    monkeypatch.setenv("PGSERVICEFILE", str(service))
    with backends(f"postgres:///?service=gcltest&gcl_schema={schema}").read() as tx:
        assert [r.name for r in tx.select_all_limits()] == ["from-env"]


def test_a_role_without_privileges(schema: str, backends: Callable[[str], PostgresBackend]) -> None:
    """A role that may not create schemas is told so; in a schema an admin made for it, it works."""
    role = f"gcl_role_{os.urandom(3).hex()}"
    url = _with(PG, user=role, gcl_schema=schema, gcl_detect_seconds=DETECT)  # (the query wins over user@)
    with _admin() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
    try:
        with pytest.raises(StoreError, match="permission denied") as caught:
            backends(url).write(lambda tx: None)
        assert "\n" not in str(caught.value)
        with _admin() as conn:
            conn.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {role}")
        backend = backends(url)
        backend.write(lambda tx: tx.insert_limit(_limit("a", tx)))
        own, _ = backend.register()
        assert backend.alive(own.name) is True
        assert backend.census() == []
        assert backend.alive("pg-99") in (False, None)
    finally:
        with _admin() as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_no_descriptor_of_ours_reaches_a_command_unasked(backend: PostgresBackend) -> None:
    backend.write(lambda tx: None)
    registration, _ = backend.register()
    channel = backend.kept_channel()
    for fd in (backend._work().conn.pgconn.socket, registration.inheritable(), channel.fileno()):
        assert not os.get_inheritable(fd)  # the token session's only when gcl run hands it on


def test_nobody_is_judged_dead_just_after_the_server_changed(backend: PostgresBackend, schema: str) -> None:
    """After a restart or a failover (another pg_postmaster_start_time() than the last write saw), the
    living are reconnecting: for the grace period, a free lock means "cannot tell", not "dead"."""
    _past_grace()
    backend.write(lambda tx: tx.insert_lease(_lease(tx, ("x",), holder="pg-1")))
    assert backend.alive("pg-1") is False
    assert backend.census() == ["pg-1"]
    with _admin() as conn:
        conn.execute(f"UPDATE {schema}.clock SET epoch = 0")  # as if the last write was on another server
    backend.write(lambda tx: None)  # the first write on "this" server starts the grace period
    assert backend.alive("pg-1") is None
    assert backend.census() == []
    with _admin() as conn:
        conn.execute(f"UPDATE {schema}.clock SET epoch_since = epoch_since - {DETECT}")
    assert backend.alive("pg-1") is False
