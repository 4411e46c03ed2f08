"""Where the state file is, whether it can be used, and what its errors mean.

The file must be on a local filesystem (SQLite's WAL needs shared memory and POSIX locks that
network filesystems do not give); files we create get mode 0600, or 0660 in a setgid (shared)
directory.
"""

from __future__ import annotations

import os
import stat

import apsw

from .._errors import StoreError

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
    if text.startswith(("postgresql://", "postgres://")):  # never a file of that name
        raise StoreError("A PostgreSQL URL is not a state file path (gcl_local.open_backend takes either).")
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


def check_local(path: str) -> None:
    fstype = filesystem_type(os.path.dirname(path))
    if fstype and (fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse")):
        raise StoreError(
            f"State file {path} is on a {fstype!r} filesystem. SQLite WAL needs shared memory and reliable "
            "locks, which only local filesystems give; put it on a local disk (set GCL_DB or --db)."
        )


def shared_dir(directory: str) -> bool:
    """A setgid directory marks files that a team's users share on purpose."""
    try:
        return bool(os.stat(directory).st_mode & stat.S_ISGID)
    except OSError:
        return False


def file_mode(directory: str) -> int:
    return 0o660 if shared_dir(directory) else 0o600


def prepare_file(path: str, is_default: bool) -> bool:
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
    check_local(path)
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


def corrupt(path: str) -> StoreError:
    name = os.path.basename(path)
    return StoreError(
        f"State file {path} is corrupt. It holds only transient slot state: remove {name}, "
        f"{name}-wal and {name}-shm when no process uses them, and recreate the limits."
    )


def explain_open_error(path: str, exc: apsw.Error) -> StoreError:
    parent = os.path.dirname(path)
    extended = getattr(exc, "extendedresult", None)
    if isinstance(exc, apsw.NotADBError):
        return StoreError(f"Cannot use state file {path}: it is not a SQLite database (wrong path?).")
    if isinstance(exc, apsw.CorruptError):
        return corrupt(path)
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


__all__ = [
    "BUSY_GIVE_UP_SECONDS",
    "MOUNTINFO",
    "NETWORK_FILESYSTEMS",
    "check_local",
    "corrupt",
    "default_path",
    "explain_open_error",
    "file_mode",
    "filesystem_type",
    "prepare_file",
    "resolve_path",
    "shared_dir",
]
