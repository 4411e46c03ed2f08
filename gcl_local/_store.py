"""The state file: where it is, whether it can be used, and short transactions on it.

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
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import apsw

from . import _log, _sql
from ._clock import SYSTEM_CLOCK, Clock, Instant
from ._errors import GclError, NoStateFileError, StoreError

MOUNTINFO = "/proc/self/mountinfo"
"""Where the mount table is read from (tests point this at a fake table)."""

NETWORK_FILESYSTEMS = frozenset(
    [
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb3",
        "smbfs",
        "9p",
        "virtiofs",
        "fakeowner",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "beegfs",
        "afs",
        "ocfs2",
        "gfs2",
        "davfs",
        "ncpfs",
        "vboxsf",
        "vmhgfs",
        "prl_fs",
    ]
)
BUSY_GIVE_UP_SECONDS = 30.0
"""A write lock held this long means a stuck process, not contention: report it."""


def default_path() -> str:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "gcl_local", "gcl.db")


def resolve_path(db: str | os.PathLike[str] | None) -> tuple[str, bool]:
    """The state file's path, and whether it is the default one (whose parent we may create)."""
    if db is None:
        env = os.environ.get("GCL_DB")
        if env:
            return os.path.abspath(os.path.expanduser(env)), False
        return default_path(), True
    text = os.fspath(db)
    if not text:
        raise StoreError("The state file path must not be empty.")
    return os.path.abspath(os.path.expanduser(text)), False


def _unescape_mount(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def filesystem_type(directory: str) -> str | None:
    """The type of the filesystem that holds *directory*, from the mount table (None if unknown)."""
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return None
    target = os.path.realpath(directory)
    best, best_type = "", None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        mount_point = _unescape_mount(fields[4])
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, right.split()[0]
    return best_type


def _check_local(path: str) -> None:
    fstype = filesystem_type(os.path.dirname(path))
    if fstype and (fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse")):
        raise StoreError(
            f"State file {path} is on a {fstype!r} filesystem. SQLite WAL needs shared memory and reliable "
            "locks, which only local filesystems give; put it on a local disk (set GCL_DB or --db)."
        )


def _shared_dir(directory: str) -> bool:
    """A setgid directory marks files that a team's users share on purpose."""
    try:
        return bool(os.stat(directory).st_mode & stat.S_ISGID)
    except OSError:
        return False


def file_mode(directory: str) -> int:
    return 0o660 if _shared_dir(directory) else 0o600


def _prepare_file(path: str, is_default: bool) -> bool:
    """Check the path and create an empty file with the right mode if there is none; True if created."""
    parent = os.path.dirname(path)
    if is_default and not os.path.exists(parent):
        try:
            os.makedirs(parent, mode=0o700, exist_ok=True)
            os.chmod(parent, 0o700)
        except OSError as exc:
            raise StoreError(f"Cannot create the state directory {parent}: {exc.strerror}.") from None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise StoreError(f"Cannot use state file {path}: {exc.strerror}.") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise StoreError(f"Cannot use state file {path}: it is a directory; give the path of a file.")
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"Cannot use state file {path}: it is not a regular file.")
        if 0 < st.st_size < 512:  # SQLite files are empty or at least one 512-byte page
            raise StoreError(f"Cannot use state file {path}: it is not a SQLite database (wrong path?).")
        return False
    if not os.path.isdir(parent):
        raise StoreError(f"Cannot create state file {path}: the directory {parent} does not exist.")
    _check_local(path)
    mode = file_mode(parent)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except FileExistsError:
        return False  # another process created it a moment ago; it initialises it under the lock
    except OSError as exc:
        raise StoreError(
            f"Cannot create state file {path}: {exc.strerror}; the directory must be writable by you."
        ) from None
    try:
        os.fchmod(fd, mode)  # the umask must not take the group bits of a shared directory
    finally:
        os.close(fd)
    return True


def _corrupt(path: str) -> StoreError:
    name = os.path.basename(path)
    return StoreError(
        f"State file {path} is corrupt. It holds only transient slot state: remove {name}, "
        f"{name}-wal and {name}-shm when no process uses them, and recreate the limits."
    )


def _explain_open_error(path: str, exc: apsw.Error) -> StoreError:
    parent = os.path.dirname(path)
    extended = getattr(exc, "extendedresult", None)
    if isinstance(exc, apsw.NotADBError):
        return StoreError(f"Cannot use state file {path}: it is not a SQLite database (wrong path?).")
    if isinstance(exc, apsw.CorruptError):
        return _corrupt(path)
    if isinstance(exc, apsw.ReadOnlyError) or extended == apsw.SQLITE_READONLY_DIRECTORY:
        if extended == apsw.SQLITE_READONLY_DIRECTORY or not os.access(parent, os.W_OK):
            return StoreError(
                f"Cannot use state file {path}: its directory {parent} is not writable by you, and SQLite "
                "must create -wal and -shm files there."
            )
        culprits = [p for p in (path, f"{path}-wal", f"{path}-shm") if os.path.exists(p)]
        culprits = [p for p in culprits if not os.access(p, os.W_OK)] or culprits[:1]
        return StoreError(f"Cannot use state file {path}: {culprits[0]} is not writable by you.")
    if isinstance(exc, apsw.CantOpenError):
        if not os.path.isdir(parent):
            return StoreError(f"Cannot open state file {path}: the directory {parent} does not exist.")
        return StoreError(f"Cannot open state file {path}: permission denied or not a file.")
    if isinstance(exc, apsw.BusyError):
        return StoreError(
            f"Timed out after {BUSY_GIVE_UP_SECONDS:g}s waiting for the write lock of {path}; another "
            f"process holds it (see: fuser {path})."
        )
    if isinstance(exc, (apsw.ProtocolError, apsw.IOError)):
        return StoreError(
            f"Cannot use state file {path}: the filesystem does not give the shared memory and locking "
            f"SQLite WAL needs ({exc})."
        )
    return StoreError(f"Cannot use state file {path}: {exc}.")


FRONT_POLL_SECONDS = 0.0001
"""How often a writer that holds the turnstile tries SQLite's write lock (held by a writer that
does not use the turnstile: an admin command, or a process before its run directory is checked)."""
TURNSTILE_POLLS = 8
"""A writer tries the turnstile this many times (about a millisecond: a transaction or two) before
it queues for it in the kernel, through a helper thread (which costs more than a short wait)."""
TURNSTILE = "turnstile"
"""The file in the run directory that writers queue on with ``flock``."""


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

    threading.Thread(target=take, name="gcl-turnstile", daemon=True).start()
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


T = TypeVar("T")

_leaked: list[object] = []
"""Connections opened before a fork: the child must neither use nor close them."""


class Store:
    """A state file, its connections (one per thread) and its run directory."""

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

    # -- connections -----------------------------------------------------------------------------

    def _connection(self) -> _Connection:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.pid == os.getpid():
            return conn
        if conn is not None:
            _leaked.append(conn.conn)  # opened before fork(): closing it here would harm the parent
        if self._pid != os.getpid():
            self._pid = os.getpid()
        if not self._ready:
            with self._lock:
                if not self._ready:
                    self._initialise()
                    self._ready = True
        conn = self._open()
        self._local.conn = conn
        return conn

    def _open(self) -> _Connection:
        try:
            conn = _Connection(self.path, self._turnstile_path)
            c = conn.conn
            c.execute("PRAGMA synchronous=NORMAL")
            c.execute("PRAGMA journal_size_limit=8388608")
            c.execute("PRAGMA foreign_keys=OFF")
        except apsw.Error as exc:
            raise _explain_open_error(self.path, exc) from None
        return conn

    def _turnstile_path(self) -> str | None:
        """Where writers queue: in the run directory, once this process has checked that it is ours."""
        return os.path.join(self.run_dir, TURNSTILE) if self._run_dir_ok == os.getpid() else None

    def _initialise(self) -> None:
        """Check the file once per process; create or migrate the schema under a sidecar file lock."""
        created = _prepare_file(self.path, self._is_default)
        if not created:
            _check_local(self.path)
            if self._header_ok():
                return
        from filelock import FileLock  # only on first use of a file: its import is slow

        lock_path = f"{self.path}.lock"
        try:
            with FileLock(lock_path, mode=file_mode(os.path.dirname(self.path))):
                self._create_or_migrate()
        except OSError as exc:
            raise StoreError(f"Cannot lock {lock_path}: {exc.strerror or exc}.") from None

    def _header_ok(self) -> bool:
        """True when the file holds our current schema; raise when it can never be ours."""
        try:
            conn = apsw.Connection(str(self.path), flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_NOFOLLOW)
            try:
                conn.set_busy_timeout(5000)
                app_id, version, empty = _sql.read_header(conn)
            finally:
                conn.close()
        except apsw.Error as exc:
            raise _explain_open_error(self.path, exc) from None
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
            raise _explain_open_error(self.path, exc) from None
        except _sql.CorruptRowError:
            raise _corrupt(self.path) from None

    # -- transactions ----------------------------------------------------------------------------

    def write(self, work: Callable[[Tx], T], *, durable: bool = False, blocking: bool = True) -> T:
        """Run ``work(tx)`` in one short ``BEGIN IMMEDIATE`` transaction; "now" is read once, inside the lock.

        A plain method rather than a context manager: this is the hot path of every acquire and release.
        """
        conn = self._connection()
        c = conn.conn
        conn.blocking = blocking
        try:
            if durable:
                c.execute("PRAGMA synchronous=FULL")  # an admin write reported as done survives power loss
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
                tx = Tx(self, c, self.clock.now())
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
            raise _explain_open_error(self.path, exc) from None
        except (UnicodeDecodeError, _sql.CorruptRowError):
            raise _corrupt(self.path) from None
        finally:
            conn.blocking = True
            if durable:
                c.execute("PRAGMA synchronous=NORMAL")

    @contextlib.contextmanager
    def read(self) -> Iterator[Tx]:
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
                tx = Tx(self, c, self.clock.now())
                if not conn.boot_checked and _sql.stored_boot_id(c) == tx.now.boot_id:
                    conn.boot_checked = True  # nothing to rebase: the next write need not look
                yield tx
            finally:
                if c.in_transaction:
                    c.execute("COMMIT")
        except apsw.Error as exc:
            raise _explain_open_error(self.path, exc) from None
        except (UnicodeDecodeError, _sql.CorruptRowError):
            raise _corrupt(self.path) from None

    def close(self) -> None:
        """Close this thread's connection (others close when their threads' stores are collected)."""
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.pid == os.getpid():
            conn.close()
        self._local.conn = None

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
        shared = _shared_dir(os.path.dirname(self.path))
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
        shared = _shared_dir(os.path.dirname(self.path))
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


class WouldBlock(GclError):
    """A non-blocking transaction found the write lock taken (internal: the async shell then uses a thread)."""


class Tx:
    """A transaction in progress: the connection and the one "now" of the transaction."""

    __slots__ = ("conn", "now", "store")

    def __init__(self, store: Store, conn: apsw.Connection, now: Instant) -> None:
        self.store = store
        self.conn = conn
        self.now = now


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
    "BUSY_GIVE_UP_SECONDS",
    "FRONT_POLL_SECONDS",
    "MOUNTINFO",
    "NETWORK_FILESYSTEMS",
    "Store",
    "TURNSTILE",
    "TURNSTILE_POLLS",
    "Tx",
    "WouldBlock",
    "default_path",
    "file_mode",
    "filesystem_type",
    "get_store",
    "resolve_path",
]
