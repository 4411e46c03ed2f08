"""Every SQL statement of the PostgreSQL backend, and its schema.

The rest of the backend never writes SQL. Each statement names its tables with the schema they live
in (``{s}``: the quoted schema name), so that nothing outside that schema is read or written but the
server's own catalog (``pg_locks``, ``pg_namespace``, ``pg_class``); the sessions run with
``search_path=pg_catalog`` so that no object of another schema can stand in for a built-in function.

Times are epoch seconds (``double precision``) of the server's clock: ``*_wall`` as read, ``*_boot``
on the store's monotonic time line (see ``clock``). Names are ``text[]`` in the order the caller
gave them; ``lease_names`` and ``ticket_names`` index them one row a name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .._backend import STATS_COUNTERS, WAIT_BUCKET_COUNT

SCHEMA_VERSION = 3
MARKER = "gcl_local store"
"""The ``meta`` row that tells our schema from a schema of another program that uses the same name."""
OCCUPANCY_SPAN = 2
"""Prefect's moving average of occupancy weighs a sample by ``1 / (OCCUPANCY_SPAN * limit)``."""

WAIT_COLUMNS = tuple(f"w{i}" for i in range(WAIT_BUCKET_COUNT))
_STATS_COLUMNS = (*STATS_COUNTERS, "held_seconds", "wait_sum", *WAIT_COLUMNS)

_SCHEMA_V1 = (
    # key 'marker' = MARKER, 'version' = SCHEMA_VERSION, 'created', 'swept': when a newcomer last swept.
    "CREATE TABLE {s}.meta(key text PRIMARY KEY, value text NOT NULL)",
    # One row. boot: the store's monotonic time, advanced by the server clock's forward steps only;
    # wall: the server clock at the last write; epoch: the incarnation of the server that served the
    # last write (from version 2, ended by a restart too from version 3; pg_postmaster_start_time()
    # before), and epoch_since: when a write
    # first saw it (a restart, a crash or a failover changes it, and starts the grace period in which
    # nobody is judged dead; 0 until the schema lives through one). Until a write has seen a new
    # server, the grace lasts. Updated by every write: room for HOT updates.
    """CREATE TABLE {s}.clock(
        id integer PRIMARY KEY CHECK (id = 1),
        boot double precision NOT NULL,
        wall double precision NOT NULL,
        epoch double precision NOT NULL,
        epoch_since double precision NOT NULL
    ) WITH (fillfactor = 20)""",
    """CREATE TABLE {s}.limits(
        name text PRIMARY KEY,
        lim bigint NOT NULL,
        active boolean NOT NULL,
        decay double precision NOT NULL,
        level double precision NOT NULL,          -- level of the decaying bucket at level_boot
        level_boot double precision NOT NULL,
        level_wall double precision NOT NULL,
        avg_occupancy double precision NOT NULL,
        created double precision NOT NULL,
        updated double precision NOT NULL,
        """
    + "".join(f"{c} bigint NOT NULL DEFAULT 0, " for c in (*STATS_COUNTERS, *WAIT_COLUMNS))
    + """
        held_seconds double precision NOT NULL DEFAULT 0,
        wait_sum double precision NOT NULL DEFAULT 0,
        stats_since double precision NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE {s}.leases(
        token bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- the fencing token: never reused, increasing
        secret text NOT NULL,
        names text[] NOT NULL,
        slots bigint NOT NULL,
        holder_token text,                 -- the holder's registration; NULL when held by pid
        pid bigint,
        pid_start bigint,
        host text NOT NULL,
        user_name text NOT NULL,
        label text NOT NULL,
        ticket bigint,                     -- the queue ticket it was granted to, if any
        duration double precision NOT NULL,
        acquired_wall double precision NOT NULL,
        acquired_boot double precision NOT NULL,
        expires_wall double precision NOT NULL,
        expires_boot double precision NOT NULL
    )""",
    "CREATE INDEX leases_ticket ON {s}.leases(ticket) WHERE ticket IS NOT NULL",
    # Reaping a dead holder looks its leases up by registration (many hosts: many leases).
    "CREATE INDEX leases_holder ON {s}.leases(holder_token) WHERE holder_token IS NOT NULL",
    """CREATE TABLE {s}.lease_names(
        name text NOT NULL, token bigint NOT NULL, slots bigint NOT NULL, PRIMARY KEY(name, token)
    )""",
    """CREATE TABLE {s}.tickets(
        ticket bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- arrival order: never reused, increasing
        names text[] NOT NULL,
        kind text NOT NULL,
        slots bigint NOT NULL,
        strict boolean NOT NULL,
        duration double precision NOT NULL,
        holder_token text NOT NULL,
        by_pid boolean NOT NULL,
        channel text NOT NULL,
        pid bigint,
        pid_start bigint,
        host text NOT NULL,
        user_name text NOT NULL,
        label text NOT NULL,
        since_wall double precision NOT NULL
    )""",
    "CREATE INDEX tickets_holder ON {s}.tickets(holder_token)",
    "CREATE TABLE {s}.ticket_names(name text NOT NULL, ticket bigint NOT NULL, PRIMARY KEY(name, ticket))",
    # Limits that `gcl apply` created (so that --prune deletes only those), with their creation time.
    "CREATE TABLE {s}.applied(name text PRIMARY KEY, created double precision NOT NULL)",
    """INSERT INTO {s}.clock(id, boot, wall, epoch, epoch_since)
        SELECT 1, n.w, n.w, n.e, 0
        FROM (SELECT date_part('epoch', clock_timestamp()) AS w,
              date_part('epoch', pg_postmaster_start_time()) AS e) n""",
    "INSERT INTO {s}.meta(key, value) VALUES ('created', date_part('epoch', clock_timestamp())::text), ('swept', '0')",
)

_STARTED = "date_part('epoch', pg_postmaster_start_time())"
_INCARNATION_V2 = "(SELECT value FROM {s}.incarnation WHERE id = 1)"
_INCARNATION = f"(SELECT value FROM {{s}}.incarnation WHERE id = 1 AND started = {_STARTED})"
"""The server's incarnation; NULL when a crash emptied its table, or when the server has started since it
was drawn (a clean restart keeps an UNLOGGED table's rows)."""
_NEW_INCARNATION = (
    f"INSERT INTO {{s}}.incarnation(id, value, started) SELECT 1, floor(random() * 4503599627370496) + 1, {_STARTED} "
    "ON CONFLICT (id) DO UPDATE SET value = excluded.value, started = excluded.started "
    "WHERE incarnation.started IS DISTINCT FROM excluded.started"
)
"""Draw a new incarnation, unless another writer has drawn this server's already."""
_SCHEMA_V2 = (
    # The server's incarnation: a random number in an UNLOGGED table, which crash recovery empties (also
    # a crash that the postmaster survives: pg_postmaster_start_time() stays) and a promoted standby
    # starts empty. A writer that finds it empty draws a new one. It replaces the postmaster's start
    # time as the clock row's epoch: transaction ids are handed out again only after a crash.
    "CREATE UNLOGGED TABLE {s}.incarnation(id integer PRIMARY KEY CHECK (id = 1), value double precision NOT NULL)",
    "INSERT INTO {s}.incarnation(id, value) SELECT 1, floor(random() * 4503599627370496) + 1 "
    "WHERE NOT EXISTS (SELECT 1 FROM {s}.incarnation) ON CONFLICT DO NOTHING",
    # prev_epoch, prev_xid: the epoch of the write before the first write of a new epoch, and that write's
    # id (the clock row's xmin then): what became of a transaction whose COMMIT a crash cut off.
    "ALTER TABLE {s}.clock ADD COLUMN prev_epoch double precision, ADD COLUMN prev_xid bigint",
    f"UPDATE {{s}}.clock SET epoch = {_INCARNATION_V2}",  # (not a restart: no grace)
)
_SCHEMA_V3 = (
    # The incarnation also ends when the server starts again: a clean restart (pg_ctl restart -m fast,
    # systemd) keeps an UNLOGGED table's rows, and with version 2 it started no grace period, though every
    # session, and so every holder's lock, was gone: a live holder's slots could be given away. (The
    # ids of transactions are not handed out again after a clean restart; the grace is what matters.)
    "ALTER TABLE {s}.incarnation ADD COLUMN started double precision",
    f"UPDATE {{s}}.incarnation SET started = {_STARTED}",  # (not a restart: no grace)
)

MIGRATIONS: dict[int, Sequence[str]] = {1: _SCHEMA_V1, 2: _SCHEMA_V2, 3: _SCHEMA_V3}
"""Statements that bring a schema from version ``n - 1`` to ``n`` (0: no tables yet)."""


def tables_of(version: int) -> set[str]:
    """The tables a schema of *version* has."""
    made = (
        re.match(r"\s*CREATE (?:UNLOGGED )?TABLE \{s\}\.(\w+)", s)
        for step in range(1, version + 1)
        for s in MIGRATIONS[step]
    )
    return {m.group(1) for m in made if m}


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# -- the catalog: is the schema there, and is it ours --------------------------------------------------

SCHEMA_OID = "SELECT oid FROM pg_namespace WHERE nspname = %s"
RELATIONS_IN = "SELECT relname FROM pg_class WHERE relnamespace = %s AND relkind IN ('r', 'p', 'v', 'm', 'f')"
SESSION_SETUP = "SELECT current_setting('synchronous_commit'), pg_backend_pid()"
SYNC_COMMIT_ON = "SET synchronous_commit = on"
XACT_STATUS = "CASE WHEN %s >= txid_snapshot_xmax(txid_current_snapshot()) THEN 'aborted' ELSE txid_status(%s) END"
"""What became of a transaction whose COMMIT's answer was lost: committed, aborted or in progress. An id
the server has not reached (a crash before anything of it was logged: recovery hands it out again) is
one that never committed; ``txid_status`` would fail on it ("transaction ID ... is in the future").
After a crash, an id handed out again may have been committed by another: see ``PgSql.fate``."""
TOKEN_VISIBLE = (
    "SELECT pg_backend_pid() = %s AND EXISTS(SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
    "AND pid = pg_backend_pid() AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1 AND granted)"
)
TRY_TOKEN_LOCK = "SELECT pg_try_advisory_lock(%s), pg_backend_pid()"
TOKEN_LOCK = "SELECT pg_advisory_lock(%s), pg_backend_pid()"
TOKEN_UNLOCK = "SELECT pg_advisory_unlock(%s)"
WAKE = "SELECT pg_notify(c, p) FROM unnest(%s::text[], %s::text[]) AS w(c, p)"


def listen(channel: str) -> str:
    return f"LISTEN {quote_ident(channel)}"


def unlisten(channel: str) -> str:
    return f"UNLISTEN {quote_ident(channel)}"


_LIMIT_COLUMNS = "name, lim, active, decay, level, level_boot, level_wall, avg_occupancy, created, updated"
_LEASE_COLUMNS = (
    "token, secret, names, slots, holder_token, pid, pid_start, host, user_name, label, ticket, duration, "
    "acquired_wall, acquired_boot, expires_wall, expires_boot"
)
_TICKET_COLUMNS = (
    "ticket, names, kind, slots, strict, duration, holder_token, by_pid, channel, pid, pid_start, host, "
    "user_name, label, since_wall"
)


def _prefixed(columns: str, alias: str) -> str:
    return ", ".join(f"{alias}.{c}" for c in columns.split(", "))


class Statements:
    """Every statement, written out once for one schema, its write-lock key and its grace period."""

    def __init__(self, schema: str, write_key: int, create_key: int, grace_seconds: float) -> None:
        s = quote_ident(schema)
        self.schema = schema
        self.migrations = {v: [step.format(s=s) for step in steps] for v, steps in MIGRATIONS.items()}
        self.create_schema = f"CREATE SCHEMA {s}"
        self.create_lock = f"SELECT pg_advisory_xact_lock({int(create_key)})"
        self.meta_header = f"SELECT key, value FROM {s}.meta WHERE key IN ('marker', 'version')"
        # The header and the tables at once: a process's first look costs one round trip.
        self.header_and_tables = (
            f"{self.meta_header} UNION ALL SELECT 'tables', string_agg(relname, ',') FROM pg_class "
            f"WHERE relnamespace = '{s}'::regnamespace AND relkind IN ('r', 'p', 'v', 'm', 'f')"
        )
        self.set_header = (
            f"INSERT INTO {s}.meta(key, value) VALUES ('marker', %s), ('version', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        )

        # Writers queue on one advisory lock, then read the server's clock once. The store's time line
        # moves by the clock's forward steps only: a step back stops it for one transaction, not for
        # the length of the step (decay never stalls), and it never runs backwards.
        # The epoch is the server's incarnation (none: the writer draws one first, in a transaction of its
        # own, and begins again; meanwhile the row keeps its epoch, and this transaction rolls back).
        incarnation = _INCARNATION.format(s=s)
        self.new_incarnation = _NEW_INCARNATION.format(s=s)
        tick = (
            f"UPDATE {s}.clock SET boot = boot + greatest(0, n.w - wall), wall = n.w, "
            "epoch_since = CASE WHEN epoch = n.e THEN epoch_since ELSE n.w END, "
            "prev_epoch = CASE WHEN epoch = n.e THEN prev_epoch ELSE epoch END, "
            "prev_xid = CASE WHEN epoch = n.e THEN prev_xid ELSE xmin::text::bigint END, "
            "epoch = coalesce(n.e, epoch) "
            f"FROM (SELECT date_part('epoch', clock_timestamp()) AS w, {incarnation} AS e) n WHERE id = 1"
        )
        now = (
            f"SELECT boot + greatest(0, n.w - wall), n.w FROM {s}.clock, "
            "(SELECT date_part('epoch', clock_timestamp()) AS w) n WHERE id = 1"
        )
        # Prepared once per connection (SQL-level PREPARE, so that BEGIN, the lock and the clock still go
        # in one simple-protocol round trip), planned once rather than at every transaction.
        self.prepare = (
            f"PREPARE gcl_tick AS {tick} RETURNING boot, wall, txid_current(), n.e; "
            f"PREPARE gcl_tick_try AS {tick} AND pg_try_advisory_xact_lock({int(write_key)}) "
            "RETURNING boot, wall, txid_current(), n.e; "
            f"PREPARE gcl_now AS {now}"
        )
        # The fate of our write transaction X, begun in the server's incarnation E, whose COMMIT's answer
        # was lost: its status; whether the server is still in incarnation E; whether the last write to
        # the clock row was made in E, and whether that write's id is X or later; and the same of the last
        # write of E if the first write of a later incarnation recorded it (ids compared modulo 2^32, as a
        # row's xmin is 32 bits). Every write of ours updates the clock row under one lock, and takes its
        # id after the lock: in one incarnation, writes commit in the order of their ids. See
        # ``PostgresBackend._fate`` for how these decide.
        self.fate = (
            f"SELECT {XACT_STATUS}, {incarnation} IS NOT DISTINCT FROM %s, c.epoch = %s, "
            "((c.xmin::text::bigint - %s %% 4294967296 + 4294967296) %% 4294967296) < 2147483648, "
            "c.prev_epoch IS NOT DISTINCT FROM %s, "
            "((c.prev_xid - %s %% 4294967296 + 4294967296) %% 4294967296) < 2147483648 "
            f"FROM {s}.clock c WHERE c.id = 1"
        )
        self.begin_write = (
            "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE; "
            f"SELECT pg_advisory_xact_lock({int(write_key)}); EXECUTE gcl_tick"
        )
        # Non-blocking: the row comes back only if the lock was free. (The clock is read in the same
        # statement as the lock is tried, microseconds apart; the store's time line never runs back.)
        self.begin_write_try = "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE; EXECUTE gcl_tick_try"
        self.begin_read = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; EXECUTE gcl_now"
        self.commit = "COMMIT"
        self.rollback = "ROLLBACK"

        # -- liveness: a registration is alive while some session holds its advisory lock ----------
        # For a while after the server (re)started or failed over, nobody is judged dead: the living
        # are still reconnecting and taking their locks again.
        # Only a restart that this schema lived through counts: a schema made on a server that had just
        # started had nobody to wait for (epoch_since starts at 0).
        grace = (
            f"(SELECT epoch IS DISTINCT FROM {incarnation} "
            f"OR date_part('epoch', clock_timestamp()) < epoch_since + {float(grace_seconds)!r} "
            f"FROM {s}.clock WHERE id = 1)"
        )
        self.probe = f"SELECT pg_try_advisory_xact_lock(%s), {grace}"
        # Registrations that rows name and whose lock no session holds (the key is split as pg_locks shows
        # a bigint key: classid = high 32 bits, objid = low 32 bits, objsubid = 1).
        self.census = (
            "SELECT h FROM (SELECT h, CASE WHEN h ~ '^pg-[1-9][0-9]{0,18}$' THEN substr(h, 4)::numeric END AS k "
            f"FROM (SELECT holder_token AS h FROM {s}.leases WHERE holder_token IS NOT NULL "
            f"UNION SELECT holder_token FROM {s}.tickets) x) r "
            f"WHERE k IS NOT NULL AND h <> %s AND NOT ({grace}) AND NOT EXISTS(SELECT 1 FROM pg_locks l "
            "WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid::bigint = div(k, 4294967296) AND l.objid::bigint = mod(k, 4294967296)) ORDER BY h"
        )
        self.claim_sweep = (
            f"UPDATE {s}.meta SET value = date_part('epoch', clock_timestamp())::text "
            "WHERE key = 'swept' AND value::float8 < date_part('epoch', clock_timestamp()) - %s RETURNING 1"
        )

        # -- limits ----------------------------------------------------------------------------------
        self.select_limits = f"SELECT {_LIMIT_COLUMNS} FROM {s}.limits WHERE name = ANY(%s::text[]) ORDER BY name"
        self.select_limits_for_acquire = (
            f"SELECT {_prefixed(_LIMIT_COLUMNS, 'l')}, "
            f"(SELECT coalesce(sum(n.slots), 0) FROM {s}.lease_names n WHERE n.name = l.name), "
            f"EXISTS(SELECT 1 FROM {s}.ticket_names t WHERE t.name = l.name) "
            f"FROM {s}.limits l WHERE l.name = ANY(%s::text[]) ORDER BY l.name"
        )
        self.select_all_limits = f"SELECT {_LIMIT_COLUMNS} FROM {s}.limits ORDER BY name"
        self.insert_limit = (
            f"INSERT INTO {s}.limits({_LIMIT_COLUMNS}) VALUES "
            "(%s, %s, %s, %s::float8, %s::float8, %s::float8, %s::float8, %s::float8, %s::float8, %s::float8)"
        )
        self.update_limit = (
            f"UPDATE {s}.limits SET lim = %s, active = %s, decay = %s::float8, level = %s::float8, "
            "level_boot = %s::float8, level_wall = %s::float8, avg_occupancy = %s::float8, updated = %s::float8 "
            "WHERE name = %s"
        )
        self.set_level = (
            f"UPDATE {s}.limits SET level = %s::float8, level_boot = %s::float8, level_wall = %s::float8 "
            "WHERE name = %s"
        )
        self.delete_limit = f"DELETE FROM {s}.limits WHERE name = %s"
        self.held_slots = f"SELECT coalesce(sum(slots), 0) FROM {s}.lease_names WHERE name = %s"

        # -- leases ----------------------------------------------------------------------------------
        # secret, names, slots, holder_token, pid, pid_start, host, user, label, ticket, and five times
        lease_values = "%s, %s::text[], %s, %s, %s::bigint, %s::bigint, %s, %s, %s, %s::bigint" + ", %s::float8" * 5
        self.insert_lease = (
            f"WITH l AS (INSERT INTO {s}.leases({_LEASE_COLUMNS.removeprefix('token, ')}) "
            f"VALUES ({lease_values}) RETURNING token, names, slots), "
            f"n AS (INSERT INTO {s}.lease_names(name, token, slots) "
            "SELECT x, l.token, l.slots FROM l, unnest(l.names) x) "
            "SELECT token FROM l"
        )
        self.select_lease = f"SELECT {_LEASE_COLUMNS} FROM {s}.leases WHERE token = %s AND secret = %s"
        self.select_lease_by_ticket = f"SELECT {_LEASE_COLUMNS} FROM {s}.leases WHERE ticket = %s"
        self.leases_on = (
            f"SELECT {_prefixed(_LEASE_COLUMNS, 'l')} FROM {s}.lease_names n JOIN {s}.leases l ON l.token = n.token "
            "WHERE n.name = %s ORDER BY l.token"
        )
        self.leases_of_holder = f"SELECT {_LEASE_COLUMNS} FROM {s}.leases WHERE holder_token = %s ORDER BY token"
        self.pop_lease = (
            f"WITH l AS (DELETE FROM {s}.leases WHERE token = %s AND secret = %s RETURNING {_LEASE_COLUMNS}), "
            f"n AS (DELETE FROM {s}.lease_names n USING l WHERE n.name = ANY(l.names) AND n.token = l.token) "
            f"SELECT {_LEASE_COLUMNS} FROM l"
        )
        self.delete_lease = (
            f"WITH n AS (DELETE FROM {s}.lease_names WHERE name = ANY(%s::text[]) AND token = %s) "
            f"DELETE FROM {s}.leases WHERE token = %s"
        )
        self.renew_lease = (
            f"UPDATE {s}.leases SET duration = %s::float8, expires_boot = %s::float8, expires_wall = %s::float8 "
            "WHERE token = %s"
        )
        self.set_lease_holder = (
            f"UPDATE {s}.leases SET pid = %s::bigint, pid_start = %s::bigint, label = %s WHERE token = %s"
        )

        # -- history ---------------------------------------------------------------------------------
        self.record_occupancy = (
            f"UPDATE {s}.limits SET avg_occupancy = avg_occupancy + "
            "(CASE WHEN active AND lim > 0 "
            f"THEN (%s::float8 - avg_occupancy) / ({OCCUPANCY_SPAN:d}.0 * lim) ELSE 0 END), "
            "held_seconds = held_seconds + %s::float8, reclaimed = reclaimed + %s::bigint, "
            "acq_cn = acq_cn + %s::bigint, w0 = w0 + %s::bigint WHERE name = ANY(%s::text[]) "
            f"RETURNING EXISTS(SELECT 1 FROM {s}.ticket_names t WHERE t.name = limits.name)"
        )
        self._s = s
        self._count_acquisition: dict[tuple[str, int], str] = {}
        self.count_failure = {
            c: f"UPDATE {s}.limits SET {c} = {c} + 1 WHERE active AND name = ANY(%s::text[])"
            for c in ("timeouts", "refusals")
        }
        self.select_stats = f"SELECT name, {', '.join(_STATS_COLUMNS)}, stats_since FROM {s}.limits"
        self.select_stats_of = self.select_stats + " WHERE name = %s"
        zeros = ", ".join(f"{c} = 0" for c in _STATS_COLUMNS)
        self.reset_stats = f"UPDATE {s}.limits SET {zeros}, stats_since = %s::float8 WHERE name = %s"

        # -- the queue -------------------------------------------------------------------------------
        # names, kind, slots, strict, duration, holder_token, by_pid, channel, pid, pid_start, host, user, label, since
        ticket_values = "%s::text[], %s, %s, %s, %s::float8, %s, %s, %s, %s::bigint, %s::bigint, %s, %s, %s, %s::float8"
        self.insert_ticket = (
            f"WITH t AS (INSERT INTO {s}.tickets({_TICKET_COLUMNS.removeprefix('ticket, ')}) "
            f"VALUES ({ticket_values}) RETURNING ticket, names), "
            f"n AS (INSERT INTO {s}.ticket_names(name, ticket) SELECT x, t.ticket FROM t, unnest(t.names) x) "
            "SELECT ticket FROM t"
        )
        self.select_ticket = f"SELECT {_TICKET_COLUMNS} FROM {s}.tickets WHERE ticket = %s"
        # Each name's queue is read along its index for at most the page's length, then merged: the cost
        # follows the page, not the length of the queues. (LIMIT NULL: no limit.)
        self.tickets_on = (
            "SELECT DISTINCT p.ticket, t.channel, t.since_wall, cardinality(t.names) > 1 "
            "FROM unnest(%s::text[]) AS q(name) CROSS JOIN LATERAL "
            f"(SELECT n.ticket FROM {s}.ticket_names n WHERE n.name = q.name AND n.ticket > %s::bigint "
            f"ORDER BY n.ticket LIMIT %s::bigint) p JOIN {s}.tickets t ON t.ticket = p.ticket "
            "ORDER BY 1 LIMIT %s::bigint"
        )
        self.ticket_ahead = (
            "SELECT max(p.ticket) FROM unnest(%s::text[]) AS q(name) CROSS JOIN LATERAL "
            f"(SELECT n.ticket FROM {s}.ticket_names n WHERE n.name = q.name AND n.ticket < %s::bigint "
            "ORDER BY n.ticket DESC LIMIT 1) p"
        )
        self.count_older_tickets = (
            f"SELECT count(DISTINCT ticket) FROM {s}.ticket_names WHERE name = ANY(%s::text[]) AND ticket < %s::bigint"
        )
        self.oldest_ticket_on = (
            f"SELECT {_TICKET_COLUMNS} FROM {s}.tickets WHERE ticket = (SELECT min(p.ticket) "
            "FROM unnest(%s::text[]) AS q(name) CROSS JOIN LATERAL "
            f"(SELECT n.ticket FROM {s}.ticket_names n WHERE n.name = q.name ORDER BY n.ticket LIMIT 1) p)"
        )
        self.any_ticket_on = f"SELECT EXISTS(SELECT 1 FROM {s}.ticket_names WHERE name = ANY(%s::text[]))"
        self.count_leases = f"SELECT count(*) FROM {s}.leases"
        self.count_tickets = f"SELECT count(*) FROM {s}.tickets"
        self.tickets_of_holder = f"SELECT {_TICKET_COLUMNS} FROM {s}.tickets WHERE holder_token = %s ORDER BY ticket"
        self.waiting_on = (
            f"SELECT {_prefixed(_TICKET_COLUMNS, 't')} FROM {s}.ticket_names n "
            f"JOIN {s}.tickets t ON t.ticket = n.ticket WHERE n.name = %s ORDER BY t.ticket"
        )
        self.delete_ticket = (
            f"WITH n AS (DELETE FROM {s}.ticket_names WHERE name = ANY(%s::text[]) AND ticket = %s) "
            f"DELETE FROM {s}.tickets WHERE ticket = %s"
        )

        # -- limits as code --------------------------------------------------------------------------
        self.applied_limits = f"SELECT name, created FROM {s}.applied"
        self.mark_applied = (
            f"INSERT INTO {s}.applied(name, created) VALUES (%s, %s::float8) "
            "ON CONFLICT (name) DO UPDATE SET created = excluded.created"
        )
        self.unmark_applied = f"DELETE FROM {s}.applied WHERE name = %s"

    def count_acquisition(self, counter: str, bucket: int) -> str:
        """Count one acquisition: its *counter* (one of ``acq_*``) and its wait's histogram bucket."""
        key = (counter, bucket)
        sql = self._count_acquisition.get(key)
        if sql is None:
            if counter not in STATS_COUNTERS or not 0 <= bucket < WAIT_BUCKET_COUNT:
                raise ValueError(f"no counter {counter!r} or wait bucket {bucket!r}")
            s, w = self._s, WAIT_COLUMNS[bucket]
            sql = (
                f"UPDATE {s}.limits SET {counter} = {counter} + 1, {w} = {w} + 1, wait_sum = wait_sum + %s::float8 "
                "WHERE name = ANY(%s::text[])"
            )
            self._count_acquisition[key] = sql
        return sql


__all__ = [
    "MARKER",
    "MIGRATIONS",
    "OCCUPANCY_SPAN",
    "RELATIONS_IN",
    "SCHEMA_OID",
    "SCHEMA_VERSION",
    "SESSION_SETUP",
    "SYNC_COMMIT_ON",
    "Statements",
    "TOKEN_LOCK",
    "TOKEN_UNLOCK",
    "TOKEN_VISIBLE",
    "TRY_TOKEN_LOCK",
    "WAIT_COLUMNS",
    "WAKE",
    "XACT_STATUS",
    "listen",
    "quote_ident",
    "tables_of",
    "unlisten",
]
