"""The PostgreSQL store: connections, transactions, the server's clock, and the schema.

Connections of one process (each to the one server of the URL):

- one *work* connection per thread that runs transactions (readers too), close-on-exec;
- one *token session* per process that holds or waits for slots (``_liveness``): its lock is the
  process's liveness, its LISTENs carry the process's wake-ups.

So a process that holds or waits uses 2 connections (``gcl run`` too: the command inherits only the
token session), each further thread that runs transactions 1 more, and a reader (``gcl ls``) 1.

Every write transaction starts with one global ``pg_advisory_xact_lock(K)`` (K derived from the schema
name), then reads the server's ``clock_timestamp()`` once, after the lock. Every commit is synchronous
(``synchronous_commit`` is raised to ``on`` where the server says ``off``): a grant lost in a crash
would over-admit, and a release lost in a crash would strand a slot with a holder that lives on and
takes its lock again after the restart. A read is a ``REPEATABLE READ READ ONLY`` snapshot, with no lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import errors as pgerrors
from psycopg.conninfo import make_conninfo

from .._backend import Backend, Channel, CorruptRowError, LostCommitError, Registration, Tx, WouldBlock
from .._clock import Instant
from .._errors import NoStateFileError, StoreError
from . import _liveness, _sql, _wakeups
from ._settings import LOCK_WAIT_SECONDS, Settings, derived_key, parse
from ._tx import PgTx

T = TypeVar("T")
BOOT_ID = "postgres"
"""Stored moments all belong to one time line, the store's (see ``_sql``): one "boot" for ever."""
SWEEP_EVERY_SECONDS = 60.0
"""A newcomer sweeps the registrations if nobody did for this long."""

_log = logging.getLogger("gcl_local")
_RESTARTING = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is not yet accepting connections",
    "the database system is in recovery mode",
)
"""What a server that restarts answers a new connection (libpq reports no SQLSTATE for it)."""
_leaked: list[object] = []
"""Connections and sessions of a parent process: a forked child must neither use nor finalise them."""


class NoSchemaError(NoStateFileError):
    """A reader found no gcl_local schema on the server (readers never create it)."""

    def __init__(self, path: str, schema: str = "gcl") -> None:
        super().__init__(path)
        self.schema = schema

    def __str__(self) -> str:
        return (
            f"There is no gcl_local schema {self.schema!r} yet in {self.path} (the first gcl create, gcl run "
            "or library call makes it)."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.schema))


class _LostBeforeCommit(Exception):
    """The connection was lost in a transaction, before its COMMIT was sent or before the server logged
    it (as the server tells afterwards): it was rolled back, and may run again."""

    def __init__(self, error: StoreError) -> None:
        super().__init__(str(error))
        self.error = error


class _Work:
    """One thread's work connection: autocommit, with our own BEGIN and COMMIT (so that BEGIN, the
    lock and the clock go to the server in one round trip)."""

    __slots__ = ("backend_pid", "conn", "cur", "epoch", "pid", "prepared", "xid")

    def __init__(self, conn: psycopg.Connection[Any], backend_pid: int) -> None:
        self.conn = conn
        self.cur = conn.cursor()
        self.pid = os.getpid()
        self.backend_pid = backend_pid
        self.prepared = False
        """Whether the BEGIN statements' own are prepared on this connection (once the schema exists)."""
        self.xid: int | None = None
        """The write transaction in progress (its id), to learn its fate if the COMMIT's answer is lost."""
        self.epoch: float | None = None
        """The server's incarnation when it began (see ``_sql``): a crash hands ids out again."""

    def close(self) -> None:
        if self.pid == os.getpid():
            with contextlib.suppress(Exception):
                self.conn.close()

    def __del__(self) -> None:
        try:  # a thread's connection goes when the thread does
            self.close()
        except Exception:  # at interpreter exit, modules (os, contextlib) may be gone already
            pass


def _one_line(exc: BaseException) -> str:
    """A driver's message on one line, without the words that say nothing ("connection failed: ...")."""
    text = " ".join(str(exc).split())
    for noise in ("connection is bad: ", "connection failed: ", "consuming input failed: "):
        text = text.removeprefix(noise)
    return text.replace("FATAL: ", "").rstrip(".") or type(exc).__name__


def _sentence(text: str) -> str:
    return text if text.endswith(("?", "!", ".")) else text + "."


class PostgresBackend:
    """A gcl_local store in one schema of a PostgreSQL database (see :mod:`gcl_local.postgres`)."""

    max_message = _wakeups.MAX_MESSAGE

    def __init__(self, url: str) -> None:
        self.settings: Settings = parse(url)
        schema = self.settings.schema
        self._sql = _sql.Statements(
            schema, derived_key("write lock", schema), derived_key("schema lock", schema), self.settings.grace_seconds
        )
        self._start()
        _backends.add(self)

    def _start(self) -> None:
        """Fresh per-process state (at creation, and in a forked child)."""
        self._pid = os.getpid()
        self._local = threading.local()
        self._lock = threading.RLock()
        self._conns: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()
        self._schema_ready = False
        self._session: _liveness.TokenSession | None = None
        self._connected = False
        """Whether this process has connected to the server (a refused connection is then a restart)."""

    def _abandon_in_child(self) -> None:
        """After fork(), in the child: close our copies of every socket, so that a session of the parent
        (its lock, its transaction) does not outlive the parent in us, without a word to the server."""
        for conn in list(self._conns):
            with contextlib.suppress(Exception):
                os.close(conn.pgconn.socket)
            _leaked.append(conn)
        _leaked.append(self._local)
        if self._session is not None:
            _leaked.extend(self._session.abandon())
        self._start()

    @property
    def description(self) -> str:
        return self.settings.description

    @property
    def detect_seconds(self) -> float:
        """S: a dead or cut-off host's slots are freed within this time."""
        return self.settings.detect_seconds

    @property
    def heartbeat_seconds(self) -> float:
        """How often a holder should prove its session (see :attr:`Settings.heartbeat_seconds`)."""
        return self.settings.heartbeat_seconds

    def __repr__(self) -> str:
        return f"PostgresBackend({self.description!r}, schema={self.settings.schema!r})"

    # -- errors ------------------------------------------------------------------------------------

    def _error(self, exc: BaseException, *, connecting: bool = False) -> StoreError:
        """One line for a driver's error, with no password in it."""
        desc = self.description
        text = self.settings.scrub(_one_line(exc))
        if connecting and "unsupported startup parameter" not in text:
            return StoreError(_sentence(f"Cannot connect to the PostgreSQL store {desc}: {text}"))
        if isinstance(exc, pgerrors.LockNotAvailable):
            return StoreError(
                f"Timed out after {LOCK_WAIT_SECONDS}s waiting for the write lock of {desc}; another client "
                "holds it (see pg_stat_activity)."
            )
        if "unsupported startup parameter" in text:
            return StoreError(_liveness.POOLER.format(desc=desc))
        if isinstance(exc, pgerrors.InsufficientPrivilege):
            return StoreError(_sentence(f"Cannot use {desc} (schema {self.settings.schema!r}): {text}"))
        return StoreError(_sentence(f"PostgreSQL store {desc}: {text}"))

    def _corrupt(self) -> StoreError:
        return StoreError(
            f"The gcl_local schema {self.settings.schema!r} of {self.description} holds values no version of "
            "gcl_local writes. It holds only transient slot state: drop the schema when no process uses it, "
            "and recreate the limits."
        )

    # -- connections -------------------------------------------------------------------------------

    def _connect(self, role: str, *, wait: bool = False) -> psycopg.Connection[Any]:
        """A new connection. With *wait*, a server that is restarting (or, once we were connected, down) is
        waited for, up to the grace period S (nobody is judged dead meanwhile): a call that comes during a
        restart then goes through once the server is back, rather than failing (scripts/stress.py
        --restart-every: a waiter's look failed and left its ticket, a holder's release left its lease)."""
        deadline, delay = 0.0, 0.05
        while True:
            tried = time.monotonic()
            try:
                conninfo = make_conninfo("", **self.settings.connect_params(role))
                conn = psycopg.connect(conninfo, autocommit=True)
                break
            except psycopg.Error as exc:
                text = str(exc)
                now = time.monotonic()
                # Once we were connected, an answer that comes at once (refused, no socket, closed) is a server
                # that restarts; a cut link answers only when our TCP timeout (S/4) expires, often with the same
                # words ("server closed the connection unexpectedly"): waiting would only delay the error. A
                # newcomer refused at once more likely has a wrong address.
                answered = now - tried < self.settings.detect_seconds / 8
                restarting = any(m in text for m in _RESTARTING) or (self._connected and answered)
                deadline = deadline or now + self.settings.grace_seconds
                if not (wait and restarting) or now >= deadline:
                    raise self._error(exc, connecting=True) from None
                _log.debug("gcl_local: waiting for %s: %s", self.description, self.settings.scrub(text))
                time.sleep(min(delay, deadline - now))
                delay = min(0.5, delay * 2)
        self._connected = True
        self._conns.add(conn)
        return conn

    def _check_process(self) -> None:
        if self._pid != os.getpid():  # a forked child using a backend object of its parent
            self._abandon_in_child()

    def _work(self) -> _Work:
        work: _Work | None = getattr(self._local, "work", None)
        if work is not None and work.pid == os.getpid() and not work.conn.closed:
            return work
        self._check_process()
        return self._new_work(work)

    def _new_work(self, old: _Work | None) -> _Work:
        if old is not None:
            old.close()
        self._local.work = None
        for attempt in (0, 1, 2):
            conn = self._connect("work", wait=True)
            try:
                setting, backend_pid = conn.execute(_sql.SESSION_SETUP).fetchone() or ("on", 0)
                if setting == "off":
                    conn.execute(_sql.SYNC_COMMIT_ON)
                break
            except psycopg.Error as exc:
                lost = conn.closed
                with contextlib.suppress(Exception):
                    conn.close()
                if not (lost and attempt < 2):  # a server going down may accept a connection and drop it at once
                    raise self._error(exc) from None
        work = _Work(conn, int(backend_pid))
        self._local.work = work
        return work

    def _statement(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """Run one statement on this thread's work connection, in the transaction it is in if any; on
        its own, a lost connection is made again and the statement run once more (nothing was done)."""
        work = self._work()
        idle = work.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        for attempt in (0, 1):
            try:
                cur = work.cur
                cur.execute(sql, params)
                return cur.fetchall() if cur.description is not None else []
            except psycopg.Error as exc:
                if attempt == 0 and idle and work.conn.closed:
                    work = self._new_work(work)
                    continue
                raise self._error(exc) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        work: _Work | None = getattr(self._local, "work", None)
        self._local.work = None
        if work is not None:
            work.close()

    # -- the schema --------------------------------------------------------------------------------

    def _header(self, work: _Work) -> str:
        """``ok`` (ours, current), ``missing``, ``older`` or ``other`` (to be looked at under the lock)."""
        try:
            header = dict(work.cur.execute(self._sql.header_and_tables).fetchall())
        except (pgerrors.UndefinedTable, pgerrors.InvalidSchemaName):
            return "missing"
        except psycopg.DatabaseError:
            return "other"
        if header.get("marker") != _sql.MARKER:
            return "other"
        tables = set(str(header.get("tables") or "").split(","))
        if header.get("version") == str(_sql.SCHEMA_VERSION) and tables >= _sql.tables_of(_sql.SCHEMA_VERSION):
            return "ok"
        version = header.get("version", "")
        return "older" if version.isdigit() and int(version) < _sql.SCHEMA_VERSION else "other"

    def _prepare_schema(self) -> None:
        """Make sure the schema is ours and current: create or migrate it (under a lock of its own, so that
        many processes starting at once make it once), or refuse it and leave it untouched."""
        with self._lock:
            if self._schema_ready:
                return
            work = self._work()
            try:
                if self._header(work) != "ok":
                    self._create_or_migrate(work)
            except psycopg.Error as exc:
                self._abort(work)
                raise self._error(exc) from None
            self._schema_ready = True

    def _create_or_migrate(self, work: _Work) -> None:
        sql, cur, schema = self._sql, work.cur, self.settings.schema
        cur.execute(f"BEGIN ISOLATION LEVEL READ COMMITTED; {sql.create_lock}")
        try:
            found = cur.execute(_sql.SCHEMA_OID, (schema,)).fetchone()
            version = 0
            if found is None:
                try:
                    cur.execute(sql.create_schema)
                except pgerrors.InsufficientPrivilege:
                    raise StoreError(
                        f"Cannot create the schema {schema!r} in {self.description}: permission denied. An "
                        f"administrator can make it for you: CREATE SCHEMA {schema} AUTHORIZATION <your role>."
                    ) from None
            else:
                tables = {r[0] for r in cur.execute(_sql.RELATIONS_IN, (found[0],)).fetchall()}
                if tables:
                    version = self._check_ours(work, tables)
            for step in range(version + 1, _sql.SCHEMA_VERSION + 1):
                for statement in sql.migrations[step]:
                    cur.execute(statement)
            if version != _sql.SCHEMA_VERSION:
                cur.execute(sql.set_header, (_sql.MARKER, str(_sql.SCHEMA_VERSION)))
            cur.execute(sql.commit)
        except BaseException:
            self._abort(work)
            raise

    def _check_ours(self, work: _Work, tables: set[str]) -> int:
        """The version of a schema that holds *tables*; raise if it is not ours, newer, or damaged."""
        desc, schema = self.description, self.settings.schema
        foreign = StoreError(
            f"Cannot use schema {schema!r} of {desc}: it holds tables that are not gcl_local's; gcl_local will "
            "not change it. Choose another schema (gcl_schema= in the URL, or GCL_PG_SCHEMA)."
        )
        if "meta" not in tables:
            raise foreign
        try:
            header = dict(work.cur.execute(self._sql.meta_header).fetchall())
        except psycopg.DatabaseError:
            raise foreign from None  # a meta table of another shape (the caller rolls back)
        version_text = str(header.get("version", ""))
        if header.get("marker") != _sql.MARKER or not version_text.isdigit():
            raise foreign
        version = int(version_text)
        if version > _sql.SCHEMA_VERSION:
            raise StoreError(
                f"Schema {schema!r} of {desc} is at version {version}, newer than this gcl_local understands "
                f"({_sql.SCHEMA_VERSION}); upgrade gcl_local."
            )
        if missing := _sql.tables_of(version) - tables:
            raise StoreError(
                f"Schema {schema!r} of {desc} is damaged (version {version} without the tables "
                f"{', '.join(sorted(missing))}). It holds only transient slot state: drop it when no process "
                "uses it, and recreate the limits."
            )
        return version

    def _check_schema_for_read(self, work: _Work) -> None:
        """Readers never create or migrate: they say there is nothing yet, or refuse what is not ours."""
        state = self._header(work)
        if state != "ok":  # look closer, still without writing (each statement on its own)
            found = work.cur.execute(_sql.SCHEMA_OID, (self.settings.schema,)).fetchone()
            tables = {r[0] for r in work.cur.execute(_sql.RELATIONS_IN, (found[0],)).fetchall()} if found else set()
            if not tables:
                state = "missing"
            else:  # (it raises for a schema not ours, newer or damaged)
                state = "older" if self._check_ours(work, tables) < _sql.SCHEMA_VERSION else "ok"
        if state == "missing":
            raise NoSchemaError(self.description, self.settings.schema)
        if state == "older":
            raise StoreError(
                f"Schema {self.settings.schema!r} of {self.description} is of an older gcl_local; the next "
                "write (gcl create, gcl run ...) brings it up to date."
            )
        self._schema_ready = True

    # -- transactions ------------------------------------------------------------------------------

    def _abort(self, work: _Work) -> None:
        """End whatever transaction *work* is in; a connection that cannot say is closed (the server then
        rolls back)."""
        try:
            if work.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                work.cur.execute(self._sql.rollback)
        except BaseException:
            work.close()
            self._local.work = None

    def _begin(self, work: _Work, statement: str) -> tuple[_Work, Instant | None]:
        """Run a BEGIN statement, on a new connection if the old one turns out lost (nothing of the
        transaction has run yet: trying again is safe). None: the non-blocking lock was taken."""
        if work.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            # Left in a transaction, or with a statement's result never read, by an interrupt outside our
            # sections (a KeyboardInterrupt inside psycopg): end it, or start afresh (scripts/stress.py on
            # PostgreSQL, a sigint worker: "sending query failed: another command is already in progress").
            self._abort(work)
            work = self._work()
        drawn = False
        for attempt in (0, 1, 2, 3):
            try:
                cur = work.cur
                if not work.prepared:
                    cur.execute(self._sql.prepare)
                    work.prepared = True
                cur.execute(statement)
                while cur.nextset():
                    pass
                row = cur.fetchone()
                if row is None:
                    return work, None
                if len(row) > 3 and row[3] is None and not drawn:
                    # A new incarnation (a crash emptied it): draw it in a transaction of its own, so that
                    # ours still takes its id after the write lock, then begin again.
                    self._abort(work)
                    cur.execute(self._sql.new_incarnation)
                    drawn = True
                    continue
                work.xid = int(row[2]) if len(row) > 2 else None  # (a read has none)
                work.epoch = None if len(row) < 4 or row[3] is None else float(row[3])
                return work, Instant(float(row[1]), float(row[0]), BOOT_ID)
            except psycopg.Error as exc:
                if attempt == 0 and work.conn.closed:
                    _log.debug("gcl_local: reconnecting to %s: %s", self.description, self.settings.scrub(str(exc)))
                    work = self._new_work(work)
                    continue
                if attempt == 0 and isinstance(exc, pgerrors.InvalidSqlStatementName):
                    # Our statements are gone: psycopg prepares a statement run 5 times, and after a ROLLBACK
                    # it sends DEALLOCATE ALL, which takes ours too (scripts/stress.py on PostgreSQL: an async
                    # worker's non-blocking writes roll back when the lock is taken). Prepare them again.
                    self._abort(work)
                    work = self._new_work(work) if work.conn.closed else work
                    work.prepared = False
                    continue
                self._abort(work)
                if not work.prepared:  # a PREPARE may have been done: the next try starts afresh
                    work.close()
                    self._local.work = None
                if isinstance(exc, (pgerrors.UndefinedTable, pgerrors.InvalidSchemaName)):
                    self._schema_ready = False
                    raise NoSchemaError(self.description, self.settings.schema) from None
                raise self._error(exc) from None
            except BaseException:
                self._abort(work)
                raise
        raise AssertionError("unreachable")

    def write(self, work: Callable[[Tx], T], *, durable: bool = False, blocking: bool = True) -> T:
        """Run ``work(tx)`` in one write transaction and commit it; every commit here is durable.

        If the connection is lost before the COMMIT went out (the server restarted, and rolled the
        transaction back), *work* runs again on a new connection (``transact`` gives each run fresh
        effects): a restart must not fail the calls that were under way (scripts/stress.py --restart-every)."""
        for attempt in (0, 1, 2):
            try:
                return self._write_once(work, blocking)
            except _LostBeforeCommit as lost:
                if attempt == 2:
                    raise lost.error from None
                _log.debug("gcl_local: the connection to %s was lost in a transaction: again", self.description)
        raise AssertionError("unreachable")

    def _write_once(self, work: Callable[[Tx], T], blocking: bool) -> T:
        if not self._schema_ready:
            self._prepare_schema()
        sql = self._sql
        begin = sql.begin_write if blocking else sql.begin_write_try
        try:
            conn, now = self._begin(self._work(), begin)
        except NoSchemaError:  # dropped since we looked: make it again
            self._prepare_schema()
            conn, now = self._begin(self._work(), begin)
        if now is None:
            self._abort(conn)
            if blocking:
                raise self._corrupt()  # the clock row is gone
            raise WouldBlock
        try:
            tx = PgTx(self, conn.cur, sql, now)
            result = work(tx)
        except BaseException as exc:
            lost = conn.conn.closed
            self._abort(conn)
            if lost and isinstance(exc, (psycopg.Error, StoreError)):
                raise _LostBeforeCommit(self._error(exc) if isinstance(exc, psycopg.Error) else exc) from None
            if isinstance(exc, psycopg.Error):
                raise self._error(exc) from None
            if isinstance(exc, CorruptRowError):
                raise self._corrupt() from None
            raise
        xid, epoch = conn.xid, conn.epoch
        try:
            commit = tx.commit_text(sql.commit)
            conn.cur.execute(commit, prepare=False if commit is not sql.commit else None)
        except BaseException as exc:
            lost = conn.conn.closed
            self._abort(conn)
            if isinstance(exc, psycopg.Error):
                if lost:
                    fate = self._fate(xid, epoch)
                    if fate == "committed":
                        return result  # only the answer was lost
                    if fate == "aborted":
                        raise _LostBeforeCommit(self._error(exc)) from None  # (write runs it again)
                    raise LostCommitError(
                        f"The connection to {self.description} was lost while committing; the transaction may "
                        "or may not have been committed."
                    ) from None
                raise self._error(exc) from None
            raise
        return result

    def _fate(self, xid: int | None, epoch: float | None) -> str | None:
        """Whether transaction *xid*, begun in the server's incarnation *epoch*, whose COMMIT's answer was
        lost, was "committed" or "aborted" (None: not known in time). Asked on a new connection, once the server
        is back from a restart; a session that ended with our connection is aborted within moments, a
        session cut off from us within S. (scripts/stress.py on PostgreSQL, restarts every 30 s: an async
        worker's acquire failed so, and the lease or ticket it may have committed would have stayed
        unknown to a live process.)

        After a crash (a restart, or a backend's crash that the postmaster survives), ``txid_status``
        may speak of another transaction: an id of which nothing reached the log is handed out again
        (PostgreSQL soak: a waiter told "committed" of a ticket that never was; for an acquire, that
        would be a lease that does not exist). "Aborted" is still true then (an id handed out again is
        one that never committed). "Committed" is believed only in the incarnation that ran it, or
        from the last write of that incarnation (the clock row's, or the one the first write of the next
        incarnation recorded): our write committed if and only if that write's id is ours or later."""
        if xid is None or epoch is None:
            return None
        deadline = time.monotonic() + self.settings.detect_seconds
        while True:
            try:
                rows = self._statement(self._sql.fate, (xid, xid, epoch, epoch, xid, epoch, xid))
            except StoreError:
                return None
            if not rows:
                return None
            status, same, last_there, last_ours_or_later, previous_there, previous_ours_or_later = rows[0]
            if status == "aborted":
                return "aborted"
            if not same:
                if last_there:
                    ours = last_ours_or_later
                elif previous_there:
                    ours = previous_ours_or_later
                else:
                    return None  # two incarnations since: what the clock row said of ours is gone
                return "committed" if status == "committed" and ours else "aborted"
            if status == "committed":
                return "committed"
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    @contextlib.contextmanager
    def read(self) -> Iterator[Tx]:
        """A snapshot (``REPEATABLE READ READ ONLY``): no write lock, nothing written, nothing created."""
        work = self._work()
        if not self._schema_ready:
            try:
                self._check_schema_for_read(work)
            except psycopg.Error as exc:
                raise self._error(exc) from None
        work, now = self._begin(work, self._sql.begin_read)
        if now is None:
            self._abort(work)
            raise self._corrupt()
        try:
            yield PgTx(self, work.cur, self._sql, now)
        except psycopg.Error as exc:
            self._abort(work)
            raise self._error(exc) from None
        except CorruptRowError:
            self._abort(work)
            raise self._corrupt() from None
        except BaseException:
            self._abort(work)
            raise
        try:
            work.cur.execute(self._sql.commit)
        except psycopg.Error as exc:
            self._abort(work)
            raise self._error(exc) from None

    # -- liveness ----------------------------------------------------------------------------------

    def register(self) -> tuple[_liveness.TokenSession, bool]:
        session = self._session
        if session is not None and session.pid == os.getpid() and not session.closed:
            return session, False
        self._check_process()
        with self._lock:
            session = self._session
            if session is not None and not session.closed:
                return session, False
            work = self._work()  # first: the token session must not be the only one that works
            from .._shell import SignalsHeldBack

            # Its first connection waits for a server that restarts, as the work connection does (soak on
            # PostgreSQL: a worker failed 182 times with "the database system is starting up"), and before
            # signals are held back: a Ctrl-C meanwhile ends the wait. Made again after a loss, the session
            # is retried on the watcher's own schedule: a holder waits only a heartbeat for it.
            first = self._connect("token", wait=True)
            try:
                # Signals held back until the session is whole and ours: a KeyboardInterrupt raised while
                # its watcher thread starts breaks threading's own lock ("RuntimeError: release unlocked
                # lock", found by scripts/stress.py's SIGINT storm on PostgreSQL) and leaves a half-made
                # session.
                with SignalsHeldBack():
                    session = _liveness.TokenSession(
                        lambda: self._connect("token"), self.description, self._error, first
                    )
                    if session.backend_pid == work.backend_pid:  # two connections, one server session: a pooler
                        session.close()
                        raise StoreError(_liveness.POOLER.format(desc=self.description))
                    self._session = session
            except BaseException:
                with contextlib.suppress(Exception):
                    first.close()  # (closed already if the session took it)
                raise
            return session, True

    def alive(self, token: str) -> bool | None:
        session = self._session
        if session is not None and token == session.name and session.pid == os.getpid():
            return True if session.held else None  # never judge ourselves dead: we may be reconnecting
        key = _liveness.token_key(token)
        if key is None:
            return None
        got, in_grace = self._statement(self._sql.probe, (key,))[0]
        if not got:
            return True  # someone holds the lock
        return None if in_grace else False  # free: dead, unless the server has just (re)started

    def pid_alive(self, pid: int, pid_start: int | None, host: str) -> bool | None:
        return _liveness.pid_alive(pid, pid_start, host)

    def sweep_due(self) -> bool:
        if not self._schema_ready:
            self._prepare_schema()
        return bool(self._statement(self._sql.claim_sweep, (SWEEP_EVERY_SECONDS,)))

    def census(self) -> list[str]:
        session = self._session
        own = session.name if session is not None else ""
        return [r[0] for r in self._statement(self._sql.census, (own,))]

    def tidy(self) -> None:
        """Nothing is left behind by a dead registration but the rows that name it."""

    def forget(self, tokens: set[str]) -> None:
        session = self._session
        if session is not None and session.name in tokens and session.pid == os.getpid():
            self._session = None
            session.close()

    # -- wake-ups ----------------------------------------------------------------------------------

    def kept_channel(self) -> _wakeups.PgChannel:
        return self.register()[0].kept_channel()

    def new_channel_name(self) -> str:
        return self.register()[0].new_channel_name()

    def open_channel(self, name: str) -> _wakeups.PgChannel:
        return self.register()[0].open_channel(name)

    def wake(self, wakes: Sequence[tuple[str, bytes]]) -> None:
        if not wakes:
            return
        channels, texts = _wakeups.payloads(list(wakes))
        work = self._work()
        for attempt in (0, 1):
            try:
                work.cur.execute(_sql.WAKE, (channels, texts))
                return
            except psycopg.Error as exc:
                if attempt == 0 and work.conn.closed:
                    try:
                        work = self._new_work(work)
                    except StoreError:
                        return
                    continue
                self._abort(work)
                # Best effort: a waiter that misses a wake-up looks again at its safety-net moment.
                _log.debug("gcl_local: wake-ups not sent: %s", self.settings.scrub(str(exc)))
                return


_backends: weakref.WeakSet[PostgresBackend] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for backend in list(_backends):
        backend._abandon_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


__all__ = [
    "BOOT_ID",
    "NoSchemaError",
    "PostgresBackend",
    "SWEEP_EVERY_SECONDS",
]


if TYPE_CHECKING:  # mypy checks that each class implements its Protocol of the seam

    def _conforms(
        backend: PostgresBackend, tx: PgTx, session: _liveness.TokenSession, channel: _wakeups.PgChannel
    ) -> tuple[Backend, Tx, Registration, Channel]:
        return backend, tx, session, channel
