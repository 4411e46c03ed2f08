"""A transaction on the PostgreSQL store, and the row operations the core runs in it.

Each operation is one statement (``_sql``), one round trip; semantics are those of the SQLite store,
operation for operation. The wake-ups go with the COMMIT, in its round trip.

(Sending every statement whose result the core does not read with the next one, values bound into
the text, was tried on 2026-12-02: it cut a handing-off release from 11 round trips to 9, but such
text is planned afresh at every run, where psycopg prepares a statement run five times, and the
release got slower: hand-off 14 ms against 8-9 ms.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._backend import (
    STATS_COUNTERS,
    Backend,
    CorruptRowError,
    LeaseRow,
    LimitRow,
    QueuePlace,
    StatsRow,
    TicketRow,
)
from .._clock import Instant
from . import _wakeups
from ._sql import WAIT_COLUMNS, WAKE

if TYPE_CHECKING:
    import psycopg

    from ._sql import Statements


def _finite(numbers: Sequence[Any]) -> bool:
    try:
        return math.isfinite(math.fsum(numbers))  # fails on NaN or infinity (and on anything not a number)
    except TypeError:
        return False


def _limit(row: Sequence[Any]) -> LimitRow:
    name, limit, numbers = row[0], row[1], row[3:10]
    if not (_finite(numbers) and isinstance(name, str) and type(limit) is int and limit >= 0):
        raise CorruptRowError(f"limit row {tuple(row)!r}")
    return LimitRow(name, limit, bool(row[2]), *(float(n) for n in numbers))


def _lease(row: Sequence[Any]) -> LeaseRow:
    if not _finite(row[11:16]):
        raise CorruptRowError(f"lease row {tuple(row)!r}")
    return LeaseRow(row[0], row[1], tuple(row[2]), *row[3:11], *(float(n) for n in row[11:16]))


def _ticket(row: Sequence[Any]) -> TicketRow:
    return TicketRow(
        row[0], tuple(row[1]), row[2], row[3], bool(row[4]), float(row[5]), row[6], bool(row[7]), row[8], row[9],
        row[10], row[11], row[12], row[13], float(row[14]),
    )  # fmt: skip


class PgTx:
    """One transaction in progress on one work connection, with its "now" (read once, after the lock)."""

    __slots__ = ("_at_commit", "_backend", "_cur", "_sql", "now")

    def __init__(self, backend: Backend, cur: psycopg.Cursor[Any], sql: Statements, now: Instant) -> None:
        self._backend = backend
        self._cur = cur
        self._at_commit: list[str] = []
        """Statements to send with the COMMIT, values bound (the wake-ups)."""
        self._sql = sql
        self.now = now

    @property
    def backend(self) -> Backend:
        return self._backend

    def predates_boot(self) -> bool:
        return False  # one clock, the server's: no per-boot times to rebase

    def commit_text(self, commit: str) -> str:
        """The COMMIT, after the statements that go with it (in the same round trip)."""
        return "; ".join([*self._at_commit, commit]) if self._at_commit else commit

    def wake_on_commit(self, wakes: Sequence[tuple[str, bytes]]) -> bool:
        # NOTIFY is delivered at commit, and only if the transaction commits: the messages go with the
        # COMMIT. (Its global lock is then held until the commit ends, while our write lock is anyway.
        # A full notification queue, 8 GB that a session in a transaction for hours keeps from being
        # freed, now fails the transaction where sent after it the messages were lost.)
        channels, texts = _wakeups.payloads(list(wakes))
        if channels:
            import psycopg  # loaded already: this module is only ever used with a connection

            bound = psycopg.ClientCursor(self._cur.connection).mogrify(WAKE, (channels, texts))
            self._at_commit.append(bound)  # values in the text: the COMMIT's round trip is one simple query
        return True

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        cur = self._cur
        cur.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []

    def _count(self, sql: str, params: Sequence[Any]) -> int:
        self._cur.execute(sql, params)
        return self._cur.rowcount

    # -- limits --------------------------------------------------------------------------------------

    def select_limits(self, names: Sequence[str]) -> list[LimitRow]:
        return [_limit(r) for r in self._rows(self._sql.select_limits, (list(names),))]

    def select_limits_for_acquire(self, names: Sequence[str]) -> list[tuple[LimitRow, int, bool]]:
        rows = self._rows(self._sql.select_limits_for_acquire, (list(names),))
        return [(_limit(r), int(r[10]), bool(r[11])) for r in rows]

    def select_all_limits(self) -> list[LimitRow]:
        return [_limit(r) for r in self._rows(self._sql.select_all_limits)]

    def insert_limit(self, row: LimitRow) -> None:
        self._cur.execute(self._sql.insert_limit, tuple(row))

    def update_limit(self, row: LimitRow) -> None:
        self._cur.execute(
            self._sql.update_limit,
            (row.limit, row.active, row.decay, row.level, row.level_boot, row.level_wall, row.avg_occupancy,
             row.updated, row.name),
        )  # fmt: skip

    def set_level(self, name: str, level: float, at: Instant) -> None:
        self._cur.execute(self._sql.set_level, (level, at.boot, at.wall, name))

    def delete_limit(self, name: str) -> bool:
        return self._count(self._sql.delete_limit, (name,)) > 0

    def held_slots(self, name: str) -> int:
        return int(self._rows(self._sql.held_slots, (name,))[0][0])

    # -- leases --------------------------------------------------------------------------------------

    def insert_lease(self, row: LeaseRow) -> int:
        params = (row.secret, list(row.names), *row[3:])
        return int(self._rows(self._sql.insert_lease, params)[0][0])

    def select_lease(self, token: int, secret: str) -> LeaseRow | None:
        rows = self._rows(self._sql.select_lease, (token, secret))
        return _lease(rows[0]) if rows else None

    def select_lease_by_ticket(self, ticket: int) -> LeaseRow | None:
        rows = self._rows(self._sql.select_lease_by_ticket, (ticket,))
        return _lease(rows[0]) if rows else None

    def leases_on(self, name: str) -> list[LeaseRow]:
        return [_lease(r) for r in self._rows(self._sql.leases_on, (name,))]

    def leases_of_holder(self, registration: str) -> list[LeaseRow]:
        return [_lease(r) for r in self._rows(self._sql.leases_of_holder, (registration,))]

    def pop_lease(self, token: int, secret: str) -> LeaseRow | None:
        rows = self._rows(self._sql.pop_lease, (token, secret))
        return _lease(rows[0]) if rows else None

    def delete_lease(self, lease: LeaseRow) -> None:
        self._cur.execute(self._sql.delete_lease, (list(lease.names), lease.token, lease.token))

    def renew_lease(self, lease: LeaseRow, duration: float, now: Instant) -> None:
        self._cur.execute(self._sql.renew_lease, (duration, now.boot + duration, now.wall + duration, lease.token))

    def set_lease_holder(self, lease: LeaseRow, pid: int, pid_start: int | None, label: str) -> None:
        self._cur.execute(self._sql.set_lease_holder, (pid, pid_start, label, lease.token))

    # -- history -------------------------------------------------------------------------------------

    def record_occupancy(
        self, names: Sequence[str], seconds_per_slot: float, slot_seconds: float, reclaimed: int, unqueued: int
    ) -> bool:
        rows = self._rows(
            self._sql.record_occupancy,
            (seconds_per_slot, slot_seconds, reclaimed, unqueued, unqueued, list(names)),
        )
        return any(r[0] for r in rows)

    def count_acquisition(self, names: Sequence[str], counter: str, bucket: int, waited: float) -> None:
        self._cur.execute(self._sql.count_acquisition(counter, bucket), (waited, list(names)))

    def count_failure(self, names: Sequence[str], counter: str) -> None:
        self._cur.execute(self._sql.count_failure[counter], (list(names),))

    def select_stats(self, name: str | None = None) -> dict[str, StatsRow]:
        sql, params = (self._sql.select_stats, ()) if name is None else (self._sql.select_stats_of, (name,))
        rows = self._rows(sql, params)
        n, result = len(STATS_COUNTERS), {}
        for row in rows:
            numbers = row[1:]
            if not _finite(numbers):
                raise CorruptRowError(f"stats row {tuple(row)!r}")
            counters = tuple(int(v) for v in numbers[:n])
            buckets = tuple(int(v) for v in numbers[n + 2 : n + 2 + len(WAIT_COLUMNS)])
            result[row[0]] = StatsRow(counters, float(numbers[n]), float(numbers[n + 1]), buckets, float(numbers[-1]))
        return result

    def reset_stats(self, name: str, wall: float) -> bool:
        return self._count(self._sql.reset_stats, (wall, name)) > 0

    # -- the queue -----------------------------------------------------------------------------------

    def insert_ticket(self, row: TicketRow) -> int:
        return int(self._rows(self._sql.insert_ticket, (list(row.names), *row[2:]))[0][0])

    def select_ticket(self, ticket: int) -> TicketRow | None:
        rows = self._rows(self._sql.select_ticket, (ticket,))
        return _ticket(rows[0]) if rows else None

    def tickets_on(self, names: Sequence[str], after: int = 0, limit: int = -1) -> list[QueuePlace]:
        page = None if limit < 0 else limit
        return [QueuePlace(*r) for r in self._rows(self._sql.tickets_on, (list(names), after, page, page))]

    def ticket_ahead(self, names: Sequence[str], ticket: int) -> int | None:
        found = self._rows(self._sql.ticket_ahead, (list(names), ticket))[0][0]
        return None if found is None else int(found)

    def count_older_tickets(self, names: Sequence[str], ticket: int) -> int:
        return int(self._rows(self._sql.count_older_tickets, (list(names), ticket))[0][0])

    def oldest_ticket_on(self, names: Sequence[str]) -> TicketRow | None:
        rows = self._rows(self._sql.oldest_ticket_on, (list(names),))
        return _ticket(rows[0]) if rows else None

    def any_ticket_on(self, names: Sequence[str]) -> bool:
        return bool(self._rows(self._sql.any_ticket_on, (list(names),))[0][0])

    def tickets_of_holder(self, registration: str) -> list[TicketRow]:
        return [_ticket(r) for r in self._rows(self._sql.tickets_of_holder, (registration,))]

    def count_leases(self) -> int:
        return int(self._rows(self._sql.count_leases)[0][0])

    def count_tickets(self) -> int:
        return int(self._rows(self._sql.count_tickets)[0][0])

    def waiting_on(self, name: str) -> list[TicketRow]:
        return [_ticket(r) for r in self._rows(self._sql.waiting_on, (name,))]

    def delete_ticket(self, ticket: TicketRow) -> None:
        self._cur.execute(self._sql.delete_ticket, (list(ticket.names), ticket.ticket, ticket.ticket))

    # -- limits as code ------------------------------------------------------------------------------

    def applied_limits(self) -> dict[str, float]:
        return {name: float(created) for name, created in self._rows(self._sql.applied_limits)}

    def mark_applied(self, name: str, created: float) -> None:
        self._cur.execute(self._sql.mark_applied, (name, created))

    def unmark_applied(self, name: str) -> None:
        self._cur.execute(self._sql.unmark_applied, (name,))


__all__ = ["PgTx"]
