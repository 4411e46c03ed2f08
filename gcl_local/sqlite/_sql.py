"""Every SQL statement of the SQLite backend, and its schema.

:class:`SqliteTx` is the SQLite implementation of the seam's transaction (``gcl_local._backend.Tx``):
typed row operations, each run inside the transaction that ``_store`` opened, with "now" bound from
Python. Names are stored joined by :data:`NAME_SEP` (they never hold control characters).

Times: ``*_wall`` columns hold epoch seconds (display, and bridging a reboot); ``*_boot`` columns
hold seconds of the boot clock of the boot named in ``meta.boot_id``.
"""

from __future__ import annotations

import math

import apsw

from .._backend import (
    OCCUPANCY_SPAN,
    STATS_COUNTERS,
    WAIT_BUCKET_COUNT,
    CorruptRowError,
    LeaseRow,
    LimitRow,
    QueuePlace,
    StatsRow,
    TicketRow,
)
from .._clock import Instant

TYPE_CHECKING = False  # not typing's: the hot path must not cost the import of typing (see .._stdlib)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from ._store import Store

APPLICATION_ID = 0x47434C31  # "GCL1": tells our files from other programs' SQLite files
SCHEMA_VERSION = 2

_SCHEMA_V1 = (
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    """CREATE TABLE limits(
        name TEXT PRIMARY KEY,
        lim INTEGER NOT NULL,
        active INTEGER NOT NULL,
        decay REAL NOT NULL,
        level REAL NOT NULL,          -- level of the decaying bucket at level_boot
        level_boot REAL NOT NULL,
        level_wall REAL NOT NULL,
        avg_occupancy REAL NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE leases(
        token INTEGER PRIMARY KEY AUTOINCREMENT,   -- the fencing token: never reused, always increasing
        secret TEXT NOT NULL,                       -- the lease id is "<token>-<secret>"
        names TEXT NOT NULL,                        -- the limits it holds slots on, joined by NAME_SEP
        slots INTEGER NOT NULL,
        holder_token TEXT,                          -- liveness token file; NULL when held by pid
        pid INTEGER,
        pid_start INTEGER,
        host TEXT NOT NULL,
        user TEXT NOT NULL,
        label TEXT NOT NULL,
        ticket INTEGER,                             -- the queue ticket it was granted to, if any
        duration REAL NOT NULL,
        acquired_wall REAL NOT NULL,
        acquired_boot REAL NOT NULL,
        expires_wall REAL NOT NULL,
        expires_boot REAL NOT NULL
    )""",
    # Only leases handed to a waiter have a ticket: a partial index costs the fast path nothing.
    "CREATE INDEX leases_ticket ON leases(ticket) WHERE ticket IS NOT NULL",
    # Slots held per limit: the acquire path sums a range of this primary key.
    """CREATE TABLE lease_names(
        name TEXT NOT NULL, token INTEGER NOT NULL, slots INTEGER NOT NULL, PRIMARY KEY(name, token)
    ) WITHOUT ROWID""",
    """CREATE TABLE tickets(
        ticket INTEGER PRIMARY KEY AUTOINCREMENT,   -- arrival order: never reused, always increasing
        names TEXT NOT NULL,                        -- joined by NAME_SEP, in the order asked
        kind TEXT NOT NULL,
        slots INTEGER NOT NULL,
        strict INTEGER NOT NULL,
        duration REAL NOT NULL,
        holder_token TEXT NOT NULL,                 -- the waiting process's liveness token
        by_pid INTEGER NOT NULL,                    -- the lease will be held by pid, not by that token
        pipe TEXT NOT NULL,
        pid INTEGER,
        pid_start INTEGER,
        host TEXT NOT NULL,
        user TEXT NOT NULL,
        label TEXT NOT NULL,
        since_wall REAL NOT NULL
    )""",
    """CREATE TABLE ticket_names(
        name TEXT NOT NULL, ticket INTEGER NOT NULL, PRIMARY KEY(name, ticket)
    ) WITHOUT ROWID""",
)

# Version 2: the history of each limit, in its own row (the release path already updates that row).
# Acquisitions by kind (c: concurrency, r: rate) and whether they waited (w) or not (n); the
# wait-time histogram's buckets w0..w7 (counts per bucket, not cumulative); stats_since: when
# they were last zeroed (0: since the limit was created).
WAIT_COLUMNS = tuple(f"w{i}" for i in range(WAIT_BUCKET_COUNT))
_STATS_COLUMNS = (*STATS_COUNTERS, "held_seconds", "wait_sum", *WAIT_COLUMNS)
_SCHEMA_V2 = (
    *(f"ALTER TABLE limits ADD COLUMN {c} INTEGER NOT NULL DEFAULT 0" for c in (*STATS_COUNTERS, *WAIT_COLUMNS)),
    "ALTER TABLE limits ADD COLUMN held_seconds REAL NOT NULL DEFAULT 0",
    "ALTER TABLE limits ADD COLUMN wait_sum REAL NOT NULL DEFAULT 0",
    "ALTER TABLE limits ADD COLUMN stats_since REAL NOT NULL DEFAULT 0",
)

NAME_SEP = "\x1f"  # names never hold control characters
MIGRATIONS: dict[int, Sequence[str]] = {1: _SCHEMA_V1, 2: _SCHEMA_V2}
"""Statements that bring a file from version ``n - 1`` to ``n``."""


# -- header and schema ----------------------------------------------------------------------------


def read_header(conn: apsw.Connection) -> tuple[int, int, bool]:
    """``(application_id, user_version, empty)`` of a file, read without changing it."""
    app_id = _fetch(conn, "PRAGMA application_id")[0][0]
    version = _fetch(conn, "PRAGMA user_version")[0][0]
    objects = _fetch(conn, "SELECT count(*) FROM sqlite_schema")[0][0]
    return app_id, version, objects == 0 and app_id == 0 and version == 0


def _tables_of(version: int) -> set[str]:
    """The tables a file of schema *version* has."""
    import re  # only where a schema is made or migrated: with enum behind it, 4 ms of every start

    steps = range(1, min(version, SCHEMA_VERSION) + 1)
    made = (re.match(r"\s*CREATE TABLE (\w+)", s) for step in steps for s in MIGRATIONS[step])
    return {m.group(1) for m in made if m}


def migrate(conn: apsw.Connection, version: int) -> None:
    """Bring the schema from *version* to :data:`SCHEMA_VERSION` in one transaction.

    :raises CorruptRowError: (nothing changed) if the file lacks a table of its version.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = _fetch(conn, "PRAGMA user_version")[0][0]
        present = {r[0] for r in _fetch(conn, "SELECT name FROM sqlite_schema WHERE type = 'table'")}
        if missing := _tables_of(current) - present:
            raise CorruptRowError(f"schema version {current} without the tables {sorted(missing)}")
        if current == version:  # not done meanwhile by another process
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[step]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def rebase_after_reboot(conn: apsw.Connection, now: Instant) -> None:
    """After a reboot, every holder and waiter is gone and boot-clock times restart: rebase them."""
    rows = _fetch(conn, "SELECT value FROM meta WHERE key = 'boot_id'")
    if rows and rows[0][0] == now.boot_id:
        return
    conn.execute("DELETE FROM lease_names")
    conn.execute("DELETE FROM leases")
    conn.execute("DELETE FROM ticket_names")
    conn.execute("DELETE FROM tickets")
    # Elapsed time across boots comes from the wall clock, clamped at >= 0.
    conn.execute(
        "UPDATE limits SET level_boot = ? - max(0.0, ? - level_wall)",
        (now.boot, now.wall),
    )
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('boot_id', ?)", (now.boot_id,))


def stored_boot_id(conn: apsw.Connection) -> str | None:
    """The boot id that the times in the file are measured from (None: no write has set it yet)."""
    rows = _fetch(conn, "SELECT value FROM meta WHERE key = 'boot_id'")
    return str(rows[0][0]) if rows else None


def integrity_check(conn: apsw.Connection) -> str:
    return str(_fetch(conn, "PRAGMA integrity_check")[0][0])


# -- rows -----------------------------------------------------------------------------------------


_LIMIT_COLUMNS = "name, lim, active, decay, level, level_boot, level_wall, avg_occupancy, created, updated"


def _limit(row: Sequence[Any]) -> LimitRow:
    name, limit, numbers = row[0], row[1], row[3:]
    try:
        finite = math.isfinite(math.fsum(numbers))  # fails on text or blobs, and on NaN or infinity
    except TypeError:
        finite = False
    if not (finite and isinstance(name, str) and type(limit) is int and limit >= 0):
        raise CorruptRowError(f"limit row {row!r}")
    return LimitRow(name, limit, bool(row[2]), *numbers)


def _fetch(conn: apsw.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    """Run one statement to the end (an unfinished apsw cursor would keep a read transaction open)."""
    return conn.execute(sql, params).fetchall()


_MARKS = [",".join("?" * n) for n in range(16)]


def _marks(n: int) -> str:
    """``?,?,?`` for *n* parameters."""
    return _MARKS[n] if n < len(_MARKS) else ",".join("?" * n)


_LEASE_COLUMNS = (
    "token, secret, names, slots, holder_token, pid, pid_start, host, user, label, ticket, duration, "
    "acquired_wall, acquired_boot, expires_wall, expires_boot"
)


_TICKET_COLUMNS = (
    "ticket, names, kind, slots, strict, duration, holder_token, by_pid, pipe, pid, pid_start, host, user, "
    "label, since_wall"
)


def _lease(row: Sequence[Any]) -> LeaseRow:
    return LeaseRow(row[0], row[1], _split(row[2]), *row[3:])


def _ticket(row: Sequence[Any]) -> TicketRow:
    return TicketRow(row[0], _split(row[1]), row[2], row[3], bool(row[4]), row[5], row[6], bool(row[7]), *row[8:])


def _split(names: str) -> tuple[str, ...]:
    return tuple(names.split(NAME_SEP)) if names else ()


_QUEUE_PAGE = (
    "SELECT n.ticket, t.pipe, t.since_wall, instr(t.names, char(31)) > 0 "
    "FROM ticket_names n JOIN tickets t ON t.ticket = n.ticket "
    "WHERE n.name = CAST(? AS TEXT) AND n.ticket > ? ORDER BY n.ticket LIMIT {}"
)
_JUST_AHEAD = "SELECT ticket FROM ticket_names WHERE name = CAST(? AS TEXT) AND ticket < ? ORDER BY ticket DESC LIMIT 1"
# The name is cast and the limit written into the statement: with a bare parameter in either place,
# a statement with ORDER BY ... LIMIT is prepared anew at every run (as long as the query itself).


_APPLIED = "applied\x1f"


class SqliteTx:
    """A transaction in progress on a state file: the connection and the one "now" of the transaction."""

    __slots__ = ("backend", "conn", "now")

    def __init__(self, backend: Store, conn: apsw.Connection, now: Instant) -> None:
        self.backend = backend
        self.conn = conn
        self.now = now

    def predates_boot(self) -> bool:
        """Whether the file's boot-clock times are of an earlier boot (not rebased yet: this is a read)."""
        return stored_boot_id(self.conn) != self.now.boot_id

    def wake_on_commit(self, wakes: Sequence[tuple[str, bytes]]) -> bool:
        return False  # a pipe is written once the commit is done (a woken waiter must find its grant)

    def select_limits(self, names: Sequence[str]) -> list[LimitRow]:
        sql = f"SELECT {_LIMIT_COLUMNS} FROM limits WHERE name IN ({_marks(len(names))})"
        return [_limit(r) for r in _fetch(self.conn, sql, tuple(names))]

    def select_limits_for_acquire(self, names: Sequence[str]) -> list[tuple[LimitRow, int, bool]]:
        """The named limits, each with its held slots and whether anyone waits on it: one statement."""
        sql = (
            f"SELECT {_LIMIT_COLUMNS}, (SELECT total(slots) FROM lease_names n WHERE n.name = l.name), "
            "EXISTS(SELECT 1 FROM ticket_names t WHERE t.name = l.name) "
            f"FROM limits l WHERE name IN ({_marks(len(names))})"
        )
        return [(_limit(r[:10]), int(r[10]), bool(r[11])) for r in _fetch(self.conn, sql, tuple(names))]

    def select_all_limits(self) -> list[LimitRow]:
        return [_limit(r) for r in _fetch(self.conn, f"SELECT {_LIMIT_COLUMNS} FROM limits ORDER BY name")]

    def insert_limit(self, row: LimitRow) -> None:
        self.conn.execute(f"INSERT INTO limits({_LIMIT_COLUMNS}) VALUES ({_marks(10)})", tuple(row))

    def update_limit(self, row: LimitRow) -> None:
        self.conn.execute(
            "UPDATE limits SET lim = ?, active = ?, decay = ?, level = ?, level_boot = ?, level_wall = ?, "
            "avg_occupancy = ?, updated = ? WHERE name = ?",
            (row.limit, row.active, row.decay, row.level, row.level_boot, row.level_wall, row.avg_occupancy,
             row.updated, row.name),
        )  # fmt: skip

    def set_level(self, name: str, level: float, at: Instant) -> None:
        self.conn.execute(
            "UPDATE limits SET level = ?, level_boot = ?, level_wall = ? WHERE name = ?",
            (level, at.boot, at.wall, name),
        )

    def delete_limit(self, name: str) -> bool:
        """Delete a limit. Its leases keep their slots on the name (``lease_names``) until released, so
        a limit created again under that name counts its holders and does not admit others beside them."""
        self.conn.execute("DELETE FROM limits WHERE name = ?", (name,))
        return bool(self.conn.changes())

    def held_slots(self, name: str) -> int:
        return int(_fetch(self.conn, "SELECT total(slots) FROM lease_names WHERE name = ?", (name,))[0][0])

    def insert_lease(self, lease: LeaseRow) -> int:
        """Insert a lease and its names; return its fencing token."""
        values = (lease.secret, NAME_SEP.join(lease.names), *lease[3:])
        sql = f"INSERT INTO leases({_LEASE_COLUMNS}) VALUES (NULL, {_marks(15)}) RETURNING token"
        token = _fetch(self.conn, sql, values)[0][0]
        for name in lease.names:
            self.conn.execute(
                "INSERT INTO lease_names(name, token, slots) VALUES (?, ?, ?)", (name, token, lease.slots)
            )
        return int(token)

    def select_lease(self, token: int, secret: str) -> LeaseRow | None:
        rows = _fetch(self.conn, f"SELECT {_LEASE_COLUMNS} FROM leases WHERE token = ?", (token,))
        return _lease(rows[0]) if rows and rows[0][1] == secret else None

    def select_lease_by_ticket(self, ticket: int) -> LeaseRow | None:
        sql = f"SELECT {_LEASE_COLUMNS} FROM leases WHERE ticket = ? AND ticket IS NOT NULL"
        rows = _fetch(self.conn, sql, (ticket,))
        return _lease(rows[0]) if rows else None

    def leases_on(self, name: str) -> list[LeaseRow]:
        sql = (
            f"SELECT {', '.join('l.' + c for c in _LEASE_COLUMNS.split(', '))} FROM lease_names n "
            "JOIN leases l ON l.token = n.token WHERE n.name = ? ORDER BY l.token"
        )
        return [_lease(r) for r in _fetch(self.conn, sql, (name,))]

    def leases_of_holder(self, registration: str) -> list[LeaseRow]:
        rows = _fetch(self.conn, f"SELECT {_LEASE_COLUMNS} FROM leases WHERE holder_token = ?", (registration,))
        return [_lease(r) for r in rows]

    def pop_lease(self, token: int, secret: str) -> LeaseRow | None:
        """Delete a lease and return it (None if there is none): one statement for the release path."""
        sql = f"DELETE FROM leases WHERE token = ? AND secret = ? RETURNING {_LEASE_COLUMNS}"
        rows = _fetch(self.conn, sql, (token, secret))
        if not rows:
            return None
        lease = _lease(rows[0])
        for name in lease.names:
            self.conn.execute("DELETE FROM lease_names WHERE name = ? AND token = ?", (name, lease.token))
        return lease

    def delete_lease(self, lease: LeaseRow) -> None:
        for name in lease.names:
            self.conn.execute("DELETE FROM lease_names WHERE name = ? AND token = ?", (name, lease.token))
        self.conn.execute("DELETE FROM leases WHERE token = ?", (lease.token,))

    def record_occupancy(
        self, names: Sequence[str], seconds_per_slot: float, slot_seconds: float, reclaimed: int, unqueued: int
    ) -> bool:
        """Prefect's moving average of slot occupancy, and the history (see ``_backend.Tx``); whether
        anyone waits on one of *names*: the release path learns it in the same statement."""
        rows = _fetch(
            self.conn,
            "UPDATE limits SET avg_occupancy = avg_occupancy + "
            "(CASE WHEN active AND lim > 0 THEN (? - avg_occupancy) / (? * lim) ELSE 0 END), "
            "held_seconds = held_seconds + ?, reclaimed = reclaimed + ?, acq_cn = acq_cn + ?, w0 = w0 + ? "
            f"WHERE name IN ({_marks(len(names))}) "
            "RETURNING EXISTS(SELECT 1 FROM ticket_names t WHERE t.name = limits.name)",
            (seconds_per_slot, OCCUPANCY_SPAN, slot_seconds, reclaimed, unqueued, unqueued, *names),
        )
        return any(r[0] for r in rows)

    def count_acquisition(self, names: Sequence[str], counter: str, bucket: int, waited: float) -> None:
        """Count one acquisition on *names*: its *counter* (one of ``acq_*``) and its wait's histogram bucket."""
        assert counter in STATS_COUNTERS
        assert 0 <= bucket < len(WAIT_COLUMNS)
        self.conn.execute(
            f"UPDATE limits SET {counter} = {counter} + 1, w{bucket} = w{bucket} + 1, wait_sum = wait_sum + ? "
            f"WHERE name IN ({_marks(len(names))})",
            (waited, *names),
        )

    def count_failure(self, names: Sequence[str], counter: str) -> None:
        """Count a timeout or a refusal on the active limits among *names*."""
        assert counter in ("timeouts", "refusals")
        self.conn.execute(
            f"UPDATE limits SET {counter} = {counter} + 1 WHERE active AND name IN ({_marks(len(names))})", tuple(names)
        )

    def select_stats(self, name: str | None = None) -> dict[str, StatsRow]:
        """The history of every limit (or of the one called *name*), by name."""
        sql = f"SELECT name, {', '.join(_STATS_COLUMNS)}, stats_since FROM limits"
        rows = _fetch(self.conn, sql) if name is None else _fetch(self.conn, sql + " WHERE name = ?", (name,))
        n = len(STATS_COUNTERS)
        result = {}
        for row in rows:
            numbers = row[1:]
            try:
                finite = math.isfinite(math.fsum(numbers))
            except TypeError:
                finite = False
            if not finite:
                raise CorruptRowError(f"stats row {row!r}")
            counters = tuple(int(v) for v in numbers[:n])
            buckets = tuple(int(v) for v in numbers[n + 2 : n + 2 + len(WAIT_COLUMNS)])
            result[row[0]] = StatsRow(counters, float(numbers[n]), float(numbers[n + 1]), buckets, float(numbers[-1]))
        return result

    def reset_stats(self, name: str, wall: float) -> bool:
        """Zero the history of a limit; False if there is no such limit."""
        zeros = ", ".join(f"{c} = 0" for c in _STATS_COLUMNS)
        self.conn.execute(f"UPDATE limits SET {zeros}, stats_since = ? WHERE name = ?", (wall, name))
        return bool(self.conn.changes())

    def renew_lease(self, lease: LeaseRow, duration: float, now: Instant) -> None:
        self.conn.execute(
            "UPDATE leases SET duration = ?, expires_boot = ?, expires_wall = ? WHERE token = ?",
            (duration, now.boot + duration, now.wall + duration, lease.token),
        )

    def set_lease_holder(self, lease: LeaseRow, pid: int, pid_start: int | None, label: str) -> None:
        self.conn.execute(
            "UPDATE leases SET pid = ?, pid_start = ?, label = ? WHERE token = ?",
            (pid, pid_start, label, lease.token),
        )

    def count_leases(self) -> int:
        return int(_fetch(self.conn, "SELECT count(*) FROM leases")[0][0])

    def insert_ticket(self, row: TicketRow) -> int:
        values = (NAME_SEP.join(row.names), *row[2:])
        sql = f"INSERT INTO tickets({_TICKET_COLUMNS}) VALUES (NULL, {_marks(14)}) RETURNING ticket"
        ticket = _fetch(self.conn, sql, values)[0][0]
        for name in row.names:
            self.conn.execute("INSERT INTO ticket_names(name, ticket) VALUES (?, ?)", (name, ticket))
        return int(ticket)

    def select_ticket(self, ticket: int) -> TicketRow | None:
        rows = _fetch(self.conn, f"SELECT {_TICKET_COLUMNS} FROM tickets WHERE ticket = ?", (ticket,))
        return _ticket(rows[0]) if rows else None

    def tickets_on(self, names: Sequence[str], after: int = 0, limit: int = -1) -> list[QueuePlace]:
        """Tickets waiting on any of *names* younger than *after*, oldest first, at most *limit* (-1: all).

        Each name's queue is read along its index for at most *limit* rows, then merged: the cost
        follows *limit*, not the length of the queues.
        """
        one = _QUEUE_PAGE.format(int(limit))
        if len(names) > 1:
            one = " UNION ".join([f"SELECT * FROM ({one})"] * len(names)) + f" ORDER BY 1 LIMIT {int(limit)}"
        rows = _fetch(self.conn, one, tuple(p for name in names for p in (name, after)))
        return [QueuePlace(ticket, channel, since, bool(several)) for ticket, channel, since, several in rows]

    def ticket_ahead(self, names: Sequence[str], ticket: int) -> int | None:
        """The youngest ticket older than *ticket* on any of *names* (None: there is none); a seek a name."""
        sql = "SELECT max(t) FROM (" + " UNION ALL ".join([f"SELECT ({_JUST_AHEAD}) AS t"] * len(names)) + ")"
        found = _fetch(self.conn, sql, tuple(p for name in names for p in (name, ticket)))[0][0]
        return None if found is None else int(found)

    def count_older_tickets(self, names: Sequence[str], ticket: int) -> int:
        """How many tickets on any of *names* are older than *ticket* (for messages, not the hot path)."""
        sql = f"SELECT count(DISTINCT ticket) FROM ticket_names WHERE name IN ({_marks(len(names))}) AND ticket < ?"
        return int(_fetch(self.conn, sql, (*names, ticket))[0][0])

    def oldest_ticket_on(self, names: Sequence[str]) -> TicketRow | None:
        """The oldest ticket waiting on any of *names*: an index probe per name, whatever the queue's length."""
        sql = (
            f"SELECT {_TICKET_COLUMNS} FROM tickets WHERE ticket = "
            f"(SELECT min(ticket) FROM ticket_names WHERE name IN ({_marks(len(names))}))"
        )
        rows = _fetch(self.conn, sql, tuple(names))
        return _ticket(rows[0]) if rows else None

    def any_ticket_on(self, names: Sequence[str]) -> bool:
        sql = f"SELECT 1 FROM ticket_names WHERE name IN ({_marks(len(names))}) LIMIT 1"
        return bool(_fetch(self.conn, sql, tuple(names)))

    def tickets_of_holder(self, registration: str) -> list[TicketRow]:
        rows = _fetch(self.conn, f"SELECT {_TICKET_COLUMNS} FROM tickets WHERE holder_token = ?", (registration,))
        return [_ticket(r) for r in rows]

    def waiting_on(self, name: str) -> list[TicketRow]:
        sql = (
            f"SELECT {', '.join('t.' + c for c in _TICKET_COLUMNS.split(', '))} FROM ticket_names n "
            "JOIN tickets t ON t.ticket = n.ticket WHERE n.name = ? ORDER BY t.ticket"
        )
        return [_ticket(r) for r in _fetch(self.conn, sql, (name,))]

    def delete_ticket(self, ticket: TicketRow) -> None:
        for name in ticket.names:
            self.conn.execute("DELETE FROM ticket_names WHERE name = ? AND ticket = ?", (name, ticket.ticket))
        self.conn.execute("DELETE FROM tickets WHERE ticket = ?", (ticket.ticket,))

    def count_tickets(self) -> int:
        return int(_fetch(self.conn, "SELECT count(*) FROM tickets")[0][0])

    def applied_limits(self) -> dict[str, float]:
        """Name -> creation time of each limit that ``gcl apply`` created (a marker of a limit deleted and
        made again by hand no longer matches its creation time)."""
        rows = _fetch(
            self.conn, "SELECT key, value FROM meta WHERE key > ? AND key < ?", (_APPLIED, _APPLIED[:-1] + "\x20")
        )
        return {key[len(_APPLIED) :]: float(value) for key, value in rows}

    def mark_applied(self, name: str, created: float) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (_APPLIED + name, created))

    def unmark_applied(self, name: str) -> None:
        self.conn.execute("DELETE FROM meta WHERE key = ?", (_APPLIED + name,))


__all__ = [
    "APPLICATION_ID",
    "MIGRATIONS",
    "NAME_SEP",
    "SCHEMA_VERSION",
    "SqliteTx",
    "WAIT_COLUMNS",
    "integrity_check",
    "migrate",
    "read_header",
    "rebase_after_reboot",
    "stored_boot_id",
]
