"""The SQLite backend: one state file, short transactions on it, and the run directory beside it.

One SQLite file in WAL mode, opened with apsw only (a second SQLite copy or a foreign ``close()``
of the file in this process would silently drop SQLite's POSIX locks). Each thread of each process
gets its own connection; a connection is never used across ``fork()``: the child drops the
parent's connections without closing them and opens its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import threading
import time

import apsw

from .. import _log, _process
from .._backend import CorruptRowError, WouldBlock
from .._clock import SYSTEM_CLOCK, Clock
from .._errors import NoStateFileError, StoreError
from .._threads import start_thread
from . import _liveness, _sql, _wakeups
from ._files import (
    BUSY_GIVE_UP_SECONDS,
    check_local,
    corrupt,
    explain_open_error,
    file_mode,
    prepare_file,
    resolve_path,
    shared_dir,
)
from ._sql import SqliteTx

TYPE_CHECKING = False  # not typing's: the hot path must not cost the import of typing (see .._stdlib)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from typing import Any, TypeVar

    T = TypeVar("T")

FRONT_POLL_SECONDS = 0.0001
"""How often a writer that holds the turnstile tries SQLite's write lock (held by a writer that
does not use the turnstile: an admin command, or a process before its run directory is checked)."""
TURNSTILE_POLLS = 8
"""A writer tries the turnstile this many times (about a millisecond: a transaction or two) before
it queues for it in the kernel, through a helper thread (which costs more than a short wait)."""
TURNSTILE = "turnstile"
"""The file in the run directory that writers queue on with ``flock``."""
SWEEP_ABOVE = 64
"""Sweep the run directory when a process starts using it and finds more files than this ..."""
SWEEP_EVERY_SECONDS = 60.0
"""... and nobody swept it for this long. (A sweep reads every token: one per newcomer made 300
processes starting at once cost 300 x 600 liveness checks under the write lock.)"""
SWEPT = "swept"
"""The file in the run directory whose modification time says when it was last swept."""


def _busy_handler(connection: _Connection) -> Any:
    """Short jittered sleeps, slowly growing: SQLite's own schedule sleeps up to 100 ms and starves old waiters."""
    started = [0.0]

    def handler(attempts: int) -> bool:
        if not connection.blocking:
            return False
        if attempts == 0:
            started[0] = time.monotonic()
        elif time.monotonic() - started[0] > BUSY_GIVE_UP_SECONDS:
            return False
        if connection.queued:
            # Through the turnstile: the only writer of its kind polling, so briskly.
            time.sleep(FRONT_POLL_SECONDS * (0.5 + _log.jitter()))
        else:
            time.sleep(min(0.002, 0.0001 * (1 + attempts // 4)) * (0.5 + _log.jitter()))
        return True

    return handler


_turnstiles: set[int] = set()
"""Turnstile descriptors open in this process: a forked child closes its copies (one of them must not
keep the parent's flock held after the parent left the turnstile, or died)."""


class _Connection:
    """One apsw connection, owned by one thread of one process.

    A writer that finds the write lock taken at its first try takes an ``flock`` of the turnstile
    file for its transaction: such writers wait for each other asleep in the kernel, in its queue,
    rather than all polling SQLite's write lock.
    Hundreds of processes polling at once (a crontab starting 300 jobs on one limit) took both
    cores from the transaction they waited for, a collapse that fed itself: half of 200 processes
    started at once gave up after 30 s. And each poll is a reader for a moment: a dozen writers
    polling kept the WAL from ever restarting (93 MB in 4 s on a limit of 8), which slowed every
    transaction. The kernel drops the flock of a process that dies; a wait for it ends at
    ``BUSY_GIVE_UP_SECONDS``, as a wait for SQLite's lock does.
    """

    __slots__ = ("blocking", "boot_checked", "conn", "pid", "queued", "turnstile", "turnstile_path")

    def __init__(self, path: str, turnstile_path: Callable[[], str | None]) -> None:
        self.pid = os.getpid()
        self.blocking = True
        self.boot_checked = False
        self.queued = False
        self.turnstile = -1
        """The turnstile's descriptor: -1 not opened yet, -2 none to use (then a writer only polls)."""
        self.turnstile_path = turnstile_path
        flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_NOFOLLOW
        self.conn = apsw.Connection(str(path), flags=flags)
        self.conn.set_busy_handler(_busy_handler(self))

    def enter(self, blocking: bool) -> None:
        """Take the turnstile, waiting at most ``BUSY_GIVE_UP_SECONDS`` (when *blocking*; else raise
        :class:`WouldBlock` if it is taken). Without a turnstile (none to use yet, or the wait ran
        out), a writer goes on to SQLite's own lock, whose wait ends as this one would."""
        if self.turnstile == -1:
            self.turnstile = _open_turnstile(self.turnstile_path())
        if self.turnstile < 0:
            return
        try:
            for _ in range(TURNSTILE_POLLS):
                try:
                    fcntl.flock(self.turnstile, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self.queued = True
                    return
                except BlockingIOError:
                    if not blocking:
                        raise WouldBlock from None
                    time.sleep(FRONT_POLL_SECONDS * (0.5 + _log.jitter()))
            self.queued = _wait_flock(self.turnstile, BUSY_GIVE_UP_SECONDS)
        except OSError:
            return

    def leave(self) -> None:
        """Let the next writer in (nothing to do unless we took the turnstile)."""
        if self.queued:
            self.queued = False
            with contextlib.suppress(OSError):
                fcntl.flock(self.turnstile, fcntl.LOCK_UN)

    def close(self) -> None:
        self.conn.close()
        if self.turnstile >= 0:
            _turnstiles.discard(self.turnstile)
            with contextlib.suppress(OSError):
                os.close(self.turnstile)
        self.turnstile = -2


def _wait_flock(fd: int, seconds: float) -> bool:
    """Take the flock of *fd*, waiting at most *seconds*: True if taken.

    A helper thread blocks in the kernel, in its queue, for us: no CPU is spent while waiting, and
    the wait stays bounded (a stopped process at the front must not hang every writer for good). If
    we stop waiting first, the thread gives the lock back as soon as it gets it.
    """
    own = os.dup(fd)  # the same open file (so the lock is ours), and a descriptor nobody else reuses
    _turnstiles.add(own)
    got, guard, gave_up = threading.Event(), threading.Lock(), [False]

    def take() -> None:
        try:
            fcntl.flock(own, fcntl.LOCK_EX)
            with guard:
                if gave_up[0]:
                    fcntl.flock(own, fcntl.LOCK_UN)
                else:
                    got.set()
        except OSError:
            pass
        finally:
            _turnstiles.discard(own)
            os.close(own)

    start_thread(take, "gcl-turnstile")
    try:
        if got.wait(max(0.0, seconds)):
            return True
    except BaseException:  # interrupted: the lock must not stay taken for a writer that left
        with guard:
            gave_up[0] = True
            if got.is_set():
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
        raise
    with guard:
        gave_up[0] = True
        return got.is_set()


def _open_turnstile(path: str | None) -> int:
    """The turnstile's descriptor, or -2 when there is none to use (no checked run directory yet)."""
    if path is None:
        return -2
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except OSError:
        return -2
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError("not a regular file")
        if st.st_uid == os.getuid():
            os.fchmod(fd, file_mode(os.path.dirname(os.path.dirname(path))))  # a team's members open it too
    except OSError:
        os.close(fd)
        return -2
    _turnstiles.add(fd)
    return fd


_leaked: list[object] = []
"""Connections opened before a fork: the child must neither use nor close them."""


class Store:
    """A state file, its connections (one per thread) and its run directory: the SQLite backend."""

    def __init__(self, db: str | os.PathLike[str] | None = None, *, clock: Clock | None = None) -> None:
        self.path, self._is_default = resolve_path(db)
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.run_dir = f"{self.path}-run"
        self._local = threading.local()
        self._pid = os.getpid()
        self._ready = False
        self._lock = threading.Lock()
        self._mode: int | None = None
        self._run_dir_ok = 0
        self._wrote_durably = False
        """Whether this process made an admin (durable) write: its connections checkpoint on close."""
        self.description = self.path

    # -- connections -----------------------------------------------------------------------------

    def _connection(self) -> _Connection:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.pid == os.getpid():
            return conn
        if conn is not None:
            _leaked.append(conn.conn)  # opened before fork(): closing it here would harm the parent
        if self._pid != os.getpid():
            self._pid = os.getpid()
        conn = None
        if not self._ready:
            with self._lock:
                if not self._ready:
                    conn = self._initialise()
                    self._ready = True
        conn = conn or self._open()
        # Now that the file is known to be ours: the last connection to close would checkpoint the
        # WAL into the file and delete it, two fsyncs at every exit, and two more (the new WAL's
        # header and its directory) at the next process's first commit: 10-15 ms of every gcl run
        # on a virtual disk. The WAL stays instead (SQLite checkpoints it every 1000 pages, about 110
        # gcl runs), and the next process to open the file alone reads it back: recovery grows with
        # the WAL, 0.4 ms at 10 pages to 4 ms at 1000 on the same disk (a gcl run adds 9). A durable
        # (admin) write turns the checkpoint back on: write().
        conn.conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 0 if self._wrote_durably else 1)
        self._local.conn = conn
        return conn

    def _open(self) -> _Connection:
        try:
            conn = _Connection(self.path, self._turnstile_path)
        except apsw.Error as exc:
            raise explain_open_error(self.path, exc) from None
        try:
            c = conn.conn
            c.execute("PRAGMA synchronous=NORMAL")  # (reads the file: a corrupt one fails here)
            c.execute("PRAGMA journal_size_limit=8388608")
            c.execute("PRAGMA foreign_keys=OFF")
        except apsw.Error as exc:
            conn.close()  # now: left to the collector, it kept the -wal and -shm files it made
            raise explain_open_error(self.path, exc) from None
        return conn

    def _turnstile_path(self) -> str | None:
        """Where writers queue: in the run directory, once this process has checked that it is ours."""
        return os.path.join(self.run_dir, TURNSTILE) if self._run_dir_ok == os.getpid() else None

    def _initialise(self) -> _Connection | None:
        """Check the file once per process; create or migrate the schema under a sidecar file lock.

        Returns the connection that found the schema current (None when it was made or migrated):
        the header is read on the connection that goes on to be used, since opening and closing one
        more cost every ``gcl run`` a millisecond.
        """
        created = prepare_file(self.path, self._is_default)
        if not created:
            check_local(self.path)
            conn = self._open()
            try:
                if self._header_ok(conn.conn):
                    return conn
            except BaseException:
                conn.close()
                raise
            conn.close()  # a file that changes mode or schema now gets a connection opened afterwards
        from filelock import FileLock  # only on first use of a file: its import is slow

        lock_path = f"{self.path}.lock"
        try:
            with FileLock(lock_path, mode=file_mode(os.path.dirname(self.path))):
                self._create_or_migrate()
        except OSError as exc:
            raise StoreError(f"Cannot lock {lock_path}: {exc.strerror or exc}.") from None
        return None

    def _header_ok(self, conn: apsw.Connection) -> bool:
        """True when the file holds our current schema; raise when it can never be ours."""
        try:
            app_id, version, empty = _sql.read_header(conn)
        except apsw.Error as exc:
            raise explain_open_error(self.path, exc) from None
        if empty:
            return False
        self._check_header(app_id, version)
        return version == _sql.SCHEMA_VERSION

    def _check_header(self, app_id: int, version: int) -> None:
        if app_id == _sql.APPLICATION_ID and version < 1:
            raise StoreError(
                f"State file {self.path} is corrupt (schema version {version}). It holds only transient slot "
                f"state: remove {os.path.basename(self.path)} and its -wal and -shm files when no process "
                "uses them, and recreate the limits."
            )
        if app_id != _sql.APPLICATION_ID:
            raise StoreError(
                f"Cannot use state file {self.path}: it is a SQLite database of another program; "
                "gcl_local will not change it. Choose another path."
            )
        if version > _sql.SCHEMA_VERSION:
            raise StoreError(
                f"State file {self.path} has schema version {version}, newer than this gcl_local "
                f"understands ({_sql.SCHEMA_VERSION}); upgrade gcl_local."
            )

    def _create_or_migrate(self) -> None:
        try:
            conn = apsw.Connection(str(self.path), flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_NOFOLLOW)
            try:
                conn.set_busy_timeout(10000)
                app_id, version, empty = _sql.read_header(conn)
                if not empty:
                    self._check_header(app_id, version)
                if version == _sql.SCHEMA_VERSION and not empty:
                    return
                if empty:  # (a file of ours is in WAL mode already: a migration must not touch what it refuses)
                    conn.execute("PRAGMA journal_mode=WAL").fetchall()
                conn.execute("PRAGMA synchronous=FULL")  # a new schema is an admin write: durable
                _sql.migrate(conn, 0 if empty else version)
            finally:
                conn.close()
        except apsw.Error as exc:
            raise explain_open_error(self.path, exc) from None
        except CorruptRowError:
            raise corrupt(self.path) from None

    # -- transactions ----------------------------------------------------------------------------

    def write(self, work: Callable[[SqliteTx], T], *, durable: bool = False, blocking: bool = True) -> T:
        """Run ``work(tx)`` in one short ``BEGIN IMMEDIATE`` transaction; "now" is read once, inside the lock.

        A plain method rather than a context manager: this is the hot path of every acquire and release.
        """
        conn = self._connection()
        c = conn.conn
        conn.blocking = blocking
        try:
            if durable:
                c.execute("PRAGMA synchronous=FULL")  # an admin write reported as done survives power loss
                # ... and once its process closes the file last, the file alone holds it (a copy of
                # gcl.db without its -wal has the limits, as before the WAL was kept: _connection()).
                self._wrote_durably = True
                c.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 0)
            try:  # BEGIN inside: an interrupt just after it must not leave the transaction open
                conn.blocking = False  # one try first: uncontended, a writer needs no turnstile
                try:
                    c.execute("BEGIN IMMEDIATE")
                except apsw.BusyError:
                    if not blocking:
                        raise WouldBlock from None
                    conn.blocking = True
                    conn.enter(blocking)
                    c.execute("BEGIN IMMEDIATE")
                tx = SqliteTx(self, c, self.clock.now())
                if not conn.boot_checked:
                    _sql.rebase_after_reboot(c, tx.now)
                    conn.boot_checked = True
                result = work(tx)
                c.execute("COMMIT")
                return result
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
            finally:
                conn.leave()
        except apsw.Error as exc:
            raise explain_open_error(self.path, exc) from None
        except (UnicodeDecodeError, CorruptRowError):
            raise corrupt(self.path) from None
        finally:
            conn.blocking = True
            if durable:
                c.execute("PRAGMA synchronous=NORMAL")

    @contextlib.contextmanager
    def read(self) -> Iterator[SqliteTx]:
        """A read transaction: a consistent snapshot, taken without the write lock, that writes nothing.

        It never creates the file (:class:`NoStateFileError` when there is none). After a reboot,
        times are not rebased (that is a write): readers check ``_sql.stored_boot_id`` themselves.
        """
        if not self._ready and not os.path.exists(self.path):
            raise NoStateFileError(self.path)
        conn = self._connection()
        c = conn.conn
        try:
            try:  # BEGIN inside: an interrupt just after it must not leave the snapshot open
                c.execute("BEGIN DEFERRED")
                tx = SqliteTx(self, c, self.clock.now())
                if not conn.boot_checked and _sql.stored_boot_id(c) == tx.now.boot_id:
                    conn.boot_checked = True  # nothing to rebase: the next write need not look
                yield tx
            finally:
                if c.in_transaction:
                    c.execute("COMMIT")
        except apsw.Error as exc:
            raise explain_open_error(self.path, exc) from None
        except (UnicodeDecodeError, CorruptRowError):
            raise corrupt(self.path) from None

    def close(self) -> None:
        """Close this thread's connection and kept pipe (others close when their threads' stores are collected)."""
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.pid == os.getpid():
            conn.close()
        self._local.conn = None
        pipe: _wakeups.Pipe | None = getattr(self._local, "pipe", None)
        if pipe is not None:
            pipe.close()
        self._local.pipe = None

    @property
    def file_mode(self) -> int:
        """Mode of every file we create: 0600, or 0660 in a setgid (shared) directory."""
        if self._mode is None:
            self._mode = file_mode(os.path.dirname(self.path))
        return self._mode

    def ensure_run_dir(self) -> str:
        """The directory beside the file that holds liveness tokens and wake-up pipes (0700, or 2770 shared)."""
        if self._run_dir_ok == os.getpid():
            return self.run_dir
        self._connection()  # the file first: it checks the path and creates the default directory
        d = self.run_dir
        shared = shared_dir(os.path.dirname(self.path))
        mode = 0o2770 if shared else 0o700
        try:
            os.mkdir(d, mode)
            os.chmod(d, mode)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError(f"Cannot create {d}: {exc.strerror}.") from None
        if not self.run_dir_is_safe():
            raise StoreError(
                f"Refusing to use {d}: it must be a real directory owned by you (or by the shared group), "
                "writable by nobody else."
            )
        self._run_dir_ok = os.getpid()
        return d

    def run_dir_is_safe(self) -> bool:
        """Whether the run directory is ours to trust: not a symlink, ours (or the group's), not open to others.

        Loose modes on a directory we own are tightened rather than refused.
        """
        shared = shared_dir(os.path.dirname(self.path))
        try:
            st = os.lstat(self.run_dir)
        except OSError:
            return False
        mine = st.st_uid == os.getuid()
        if not stat.S_ISDIR(st.st_mode) or not (
            mine or (shared and st.st_gid == os.stat(os.path.dirname(self.path)).st_gid)
        ):
            return False
        loose = st.st_mode & (0o002 if shared else 0o022)
        if loose and mine:
            os.chmod(self.run_dir, 0o2770 if shared else 0o700)
            return True
        return not loose

    # -- liveness: a flock-ed token file per process in the run directory -------------------------

    def register(self) -> tuple[_liveness.ProcessToken, bool]:
        run_dir = self.ensure_run_dir()
        try:
            return _liveness.process_token(run_dir, self.file_mode)
        except OSError as exc:
            raise StoreError(f"Cannot create a liveness token in {run_dir}: {exc.strerror or exc}.") from None

    def alive(self, token: str) -> bool | None:
        return _liveness.token_alive(self.run_dir, token)

    def pid_alive(self, pid: int, pid_start: int | None, host: str) -> bool | None:
        return _process.pid_alive(pid, pid_start)  # one host: every holder is on this one

    def sweep_due(self) -> bool:
        """Whether a newcomer should sweep: many files, and no sweep for a while (then it says it swept)."""
        marker = os.path.join(self.run_dir, SWEPT)
        with contextlib.suppress(OSError):
            if time.time() - os.stat(marker).st_mtime < SWEEP_EVERY_SECONDS:
                return False
        if len(os.listdir(self.run_dir)) <= SWEEP_ABOVE:
            return False
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            fd = os.open(marker, flags, self.file_mode)
            try:
                os.utime(fd)
            finally:
                os.close(fd)
        except OSError:
            pass  # (then every newcomer sweeps, as before)
        return True

    def census(self) -> list[str]:
        if not self.run_dir_is_safe():
            return []  # missing, or planted by someone else: nothing of ours to sweep there
        return _liveness.tokens_in(self.run_dir)

    def tidy(self) -> None:
        """Pipes that no token names: a process killed between unlinking a token and its pipes (an
        earlier gcl_local unlinked the token first) left them, and no token sweep ever sees them."""
        if not self.run_dir_is_safe():
            return
        for path in _liveness.stale_temporaries(self.run_dir) + _liveness.orphan_pipes(self.run_dir):
            with contextlib.suppress(OSError):
                os.unlink(path)

    def forget(self, tokens: set[str]) -> None:
        for name in tokens:
            _liveness.remove_token_files(self.run_dir, name)

    # -- wake-ups: a named pipe per waiter -----------------------------------------------------------

    max_message = _wakeups.MAX_MESSAGE
    heartbeat_seconds: float | None = None  # the kernel keeps a live process's flock: nothing to prove

    def kept_channel(self) -> _wakeups.Pipe:
        """The calling thread's own pipe, made once and kept for every wait of that thread."""
        token, _ = self.register()
        pipe: _wakeups.Pipe | None = getattr(self._local, "pipe", None)
        if pipe is None or pipe.fd < 0 or pipe.pid != os.getpid():
            try:
                pipe = _wakeups.new_pipe(self.run_dir, token, self.file_mode)
            except OSError as exc:
                raise StoreError(f"Cannot create a wake-up pipe in {self.run_dir}: {exc.strerror or exc}.") from None
            self._local.pipe = pipe
        return pipe

    def new_channel_name(self) -> str:
        token, _ = self.register()
        return token.new_pipe_name()

    def open_channel(self, name: str) -> _wakeups.Pipe:
        """Make the wake-up pipe a ticket names (no other name will do)."""
        try:
            return _wakeups.Pipe(self.run_dir, name, self.file_mode)
        except OSError as exc:
            raise StoreError(f"Cannot create a wake-up pipe in {self.run_dir}: {exc.strerror or exc}.") from None

    def wake(self, wakes: Sequence[tuple[str, bytes]]) -> None:
        for pipe, message in wakes:
            _wakeups.wake(self.run_dir, pipe, message)


_stores: dict[tuple[str, int], Store] = {}
_stores_by_arg: dict[tuple[object, object, int], Store] = {}
_stores_lock = threading.Lock()


def get_store(db: str | os.PathLike[str] | Store | None) -> Store:
    """The process-wide :class:`Store` of a path (or *db* itself when it already is one)."""
    if isinstance(db, Store):
        return db
    # The default path follows the environment: key on everything it is made of.
    env = os.environ
    arg_key = (db, (env.get("GCL_DB"), env.get("XDG_STATE_HOME"), env.get("HOME")) if db is None else None, os.getpid())
    store = _stores_by_arg.get(arg_key)
    if store is not None:
        return store
    path, _ = resolve_path(db)
    key = (str(path), os.getpid())
    with _stores_lock:
        store = _stores.get(key) or Store(path if db is not None else None)
        _stores[key] = store
        _stores_by_arg[arg_key] = store
    return store


def _forget_after_fork() -> None:
    # Our copies of the parent's turnstile descriptors: closing them leaves the parent's flock alone.
    for fd in list(_turnstiles):
        with contextlib.suppress(OSError):
            os.close(fd)
    _turnstiles.clear()
    _leaked.extend(_stores.values())  # their threads' connections must not be closed in the child either
    for store in _stores.values():
        conn = getattr(store._local, "conn", None)
        if conn is not None:
            _leaked.append(conn.conn)
            store._local.conn = None
    _stores.clear()
    _stores_by_arg.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


__all__ = [
    "FRONT_POLL_SECONDS",
    "SWEEP_ABOVE",
    "SWEEP_EVERY_SECONDS",
    "SWEPT",
    "Store",
    "TURNSTILE",
    "TURNSTILE_POLLS",
    "get_store",
]
