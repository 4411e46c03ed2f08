"""Kernel-released liveness tokens, wake-up pipes, and who a process is.

Each process that holds or waits for slots keeps one *token*: a file in the run directory beside
the state file, created under a temporary name, ``flock``-ed, then renamed into place, so a token
under its final name is locked from the moment it is visible until its process (and any child it
was handed to) has exited. Another process tells a dead holder from a live one by trying the
lock: the kernel drops it at exit, whatever PID reuse or PID namespaces do.

Each waiting request has a named pipe; whoever frees capacity writes a byte to the pipe of the
waiter it served or that should look again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import threading
import time

TOKEN_SUFFIX = ".lock"
PIPE_SUFFIX = ".fifo"


class ProcessToken:
    """This process's liveness token in one run directory."""

    def __init__(self, run_dir: str, mode: int) -> None:
        self.pid = os.getpid()
        for _ in range(8):
            self.name = f"{self.pid}-{os.urandom(4).hex()}"
            tmp = os.path.join(run_dir, f".{self.name}.tmp")
            try:
                fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
                break
            except FileExistsError:
                continue  # something sits at that name (maybe planted): never open it, take another
        else:
            raise FileExistsError(f"no free token name in {run_dir}")
        self.path = os.path.join(run_dir, self.name + TOKEN_SUFFIX)
        try:
            os.fchmod(fd, mode)  # the umask must not take the group bits of a shared directory
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocking: a sweeper may be probing it for a moment
            os.rename(tmp, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.fd = fd
        self._pipes = 0
        self._lock = threading.Lock()
        self._threads = threading.local()

    def new_pipe_name(self) -> str:
        with self._lock:
            self._pipes += 1
            return f"{self.name}.{self._pipes}{PIPE_SUFFIX}"

    def thread_pipe(self, run_dir: str, mode: int) -> Pipe:
        """The calling thread's own pipe, made once and kept for every wait of that thread."""
        pipe: Pipe | None = getattr(self._threads, "pipe", None)
        if pipe is None or pipe.fd < 0:
            pipe = new_pipe(run_dir, self, mode)
            self._threads.pipe = pipe
        return pipe


_tokens: dict[str, ProcessToken] = {}
_tokens_lock = threading.Lock()


def process_token(run_dir: str, mode: int) -> tuple[ProcessToken, bool]:
    """This process's token in *run_dir*, and whether it was just created."""
    key = str(run_dir)
    token = _tokens.get(key)
    if token is not None and token.pid == os.getpid():
        return token, False
    with _tokens_lock:
        token = _tokens.get(key)
        if token is not None and token.pid == os.getpid():
            return token, False
        token = ProcessToken(run_dir, mode)
        _tokens[key] = token
        return token, True


def _close_tokens_in_child() -> None:
    # A forked child must not keep the parent's tokens alive after the parent dies; closing our
    # copy of the descriptor leaves the parent's lock in place.
    for token in _tokens.values():
        with contextlib.suppress(OSError):
            os.close(token.fd)
    _tokens.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_tokens_in_child)


def token_alive(run_dir: str, name: str) -> bool | None:
    """Whether the process that holds token *name* still runs; None when that cannot be told.

    A missing token means a dead process: a token is visible from before any lease or ticket names
    it until its process died and a reaper removed it (or its process removed it at exit, when
    nothing named it any more).
    """
    mine = _tokens.get(str(run_dir))
    if mine is not None and mine.name == name and mine.pid == os.getpid():
        return True
    try:
        fd = os.open(
            os.path.join(run_dir, name + TOKEN_SUFFIX), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        )
    except FileNotFoundError:
        return False
    except OSError:
        return None  # a planted symlink or a file we may not read: not evidence of death
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            # Shared: two processes probing the same dead token at once must both see it dead.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False
    finally:
        os.close(fd)  # also drops the lock we may just have taken


def remove_token_files(run_dir: str, name: str) -> None:
    """Unlink a dead process's pipes, then its token.

    In that order: a token is made before its pipes and removed after them, so a pipe whose token
    is gone is an orphan that :func:`orphan_pipes` finds, even when this process was killed halfway.
    """
    with contextlib.suppress(OSError):
        for entry in os.listdir(run_dir):
            if entry.startswith(name + ".") and entry.endswith(PIPE_SUFFIX):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(run_dir, entry))
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(run_dir, name + TOKEN_SUFFIX))


def orphan_pipes(run_dir: str) -> list[str]:
    """Pipes whose token file no longer exists: their process is gone (a token outlives its pipes)."""
    try:
        entries = os.listdir(run_dir)
    except OSError:
        return []
    tokens = {e for e in entries if e.endswith(TOKEN_SUFFIX)}
    found = []
    for entry in entries:
        if entry.startswith(".") or not entry.endswith(PIPE_SUFFIX):
            continue  # a temporary: stale_temporaries() judges those
        token = entry[: -len(PIPE_SUFFIX)].rpartition(".")[0] + TOKEN_SUFFIX  # "<token>.<n>.fifo"
        if token in tokens:
            continue
        # A listing is no snapshot: a token made while it was read may be missing from it. Its pipes
        # come after it, so if the token is there now, the pipe is no orphan.
        if not os.path.lexists(os.path.join(run_dir, token)):
            found.append(os.path.join(run_dir, entry))
    return found


def tokens_in(run_dir: str) -> list[str]:
    """Names of the token files in *run_dir*."""
    try:
        entries = os.listdir(run_dir)
    except OSError:
        return []
    return [e[: -len(TOKEN_SUFFIX)] for e in entries if e.endswith(TOKEN_SUFFIX) and not e.startswith(".")]


STALE_TEMPORARY_SECONDS = 60.0


def stale_temporaries(run_dir: str) -> list[str]:
    """Temporary token and pipe files whose creator died between creating and renaming them.

    Old ones, or those whose maker is dead: a token's temporary names its maker's pid (a live maker
    may not have locked it yet), and a pipe is made only by a process whose token is in place.
    """
    found = []
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in os.listdir(run_dir):
            if entry.startswith(".") and entry.endswith(".tmp"):
                path = os.path.join(run_dir, entry)
                if entry.endswith(PIPE_SUFFIX + ".tmp"):  # ".<token>.<n>.fifo.tmp"
                    owner = entry[1 : -len(PIPE_SUFFIX + ".tmp")].rpartition(".")[0]
                    if owner and token_alive(run_dir, owner) is False:
                        found.append(path)
                        continue
                else:  # ".<pid>-<random>.tmp": a token being made by process <pid>
                    creator = entry[1:].partition("-")[0]
                    if creator.isdigit() and not pid_alive(int(creator), None):
                        found.append(path)
                        continue
                try:
                    if now - os.lstat(path).st_mtime < STALE_TEMPORARY_SECONDS:
                        continue
                except OSError:
                    continue
                try:
                    # O_NONBLOCK: a pipe's temporary must not make us wait for a writer.
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
                except OSError:
                    continue
                try:
                    if stat.S_ISFIFO(os.fstat(fd).st_mode):
                        found.append(path)  # a pipe is renamed into place at once: an old one is stale
                        continue
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    found.append(path)
                except BlockingIOError:
                    pass
                finally:
                    os.close(fd)
    return found


class Pipe:
    """A waiter's named pipe, read end open; closed and unlinked by :meth:`close`."""

    def __init__(self, run_dir: str, name: str, mode: int) -> None:
        self.fd = -1
        self.pid = os.getpid()
        self.name = name
        self.path = os.path.join(run_dir, name)
        if os.path.lexists(self.path):
            raise FileExistsError(f"{self.path} exists")
        # Made under a temporary name and renamed into place once its mode is right: mkfifo obeys
        # the umask, and a team's shared directory needs the group bits from the first moment.
        tmp = os.path.join(run_dir, f".{name}.tmp")
        os.mkfifo(tmp, mode)
        try:
            # O_RDWR: the pipe never reports EOF, and writers find a reader at once. O_NOFOLLOW and
            # the check below: what we open must be the pipe we made, not something swapped in.
            fd = os.open(tmp, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.close(fd)
                raise FileExistsError(f"{tmp} is not our pipe")
            os.fchmod(fd, mode)
            os.rename(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.fd = fd

    def drain(self) -> bytes:
        """Read whatever woke us (empty if nothing)."""
        chunks = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)

    def __del__(self) -> None:
        self.close()  # a thread's kept pipe goes when the thread does

    def close(self) -> None:
        """Close and unlink; safe to call twice (a second close must not hit a reused descriptor)."""
        fd, self.fd = self.fd, -1
        if fd < 0 or self.pid != os.getpid():
            return  # a forked child's copy: the pipe is its parent's
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def new_pipe(run_dir: str, token: ProcessToken, mode: int) -> Pipe:
    """A new pipe under a fresh name; a name already taken (maybe by a planted file) is skipped, never opened."""
    for _ in range(8):
        try:
            return Pipe(run_dir, token.new_pipe_name(), mode)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free pipe name in {run_dir}")


def wake(run_dir: str, pipe_name: str, message: bytes = b"!") -> None:
    """Write a short message (< PIPE_BUF: atomic) to a waiter's pipe; a waiter that is gone is no error."""
    try:
        fd = os.open(os.path.join(run_dir, pipe_name), os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return  # ENXIO: no reader (dead); ENOENT: gone; ELOOP: planted symlink
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.write(fd, message)
    except OSError:
        pass  # EAGAIN: a wake-up is already pending
    finally:
        os.close(fd)


def process_start_time(pid: int) -> int | None:
    """The start time of *pid* in clock ticks since boot (Linux), to tell a reused PID from its first owner."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int, start_time: int | None) -> bool:
    """Whether *pid* is the same live process that was recorded (by PID and start time)."""
    if pid <= 0:
        return False
    if os.path.isdir("/proc/self"):
        now_start = process_start_time(pid)
        if now_start is None:
            return False
        if start_time is not None and now_start != start_time:
            return False
        return not _is_zombie(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return True
    fields = data[data.rfind(b")") + 2 :].split()
    return bool(fields) and fields[0] == b"Z"


def host_name() -> str:
    return os.uname().nodename


def user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


__all__ = [
    "PIPE_SUFFIX",
    "Pipe",
    "ProcessToken",
    "STALE_TEMPORARY_SECONDS",
    "TOKEN_SUFFIX",
    "host_name",
    "new_pipe",
    "orphan_pipes",
    "pid_alive",
    "process_start_time",
    "process_token",
    "remove_token_files",
    "stale_temporaries",
    "token_alive",
    "tokens_in",
    "user_name",
    "wake",
]
