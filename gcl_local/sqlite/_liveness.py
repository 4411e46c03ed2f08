"""Liveness on one host: kernel-released tokens in the run directory.

Each process that holds or waits for slots keeps one *token*: a file in the run directory beside
the state file, created under a temporary name, ``flock``-ed, then renamed into place, so a token
under its final name is locked from the moment it is visible until its process (and any child it
was handed to) has exited. Another process tells a dead holder from a live one by trying the
lock: the kernel drops it at exit, whatever PID reuse or PID namespaces do.

A token's wake-up pipes (``_wakeups``) are named after it, so that a sweep can tell orphans.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import threading
import time

from .._process import pid_alive

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

    def inheritable(self) -> int:
        """The flock-ed descriptor: a child that inherits it keeps this token alive."""
        return self.fd

    held = True
    """A flock is held until the process (and every child it was handed to) ends."""

    def new_pipe_name(self) -> str:
        with self._lock:
            self._pipes += 1
            return f"{self.name}.{self._pipes}{PIPE_SUFFIX}"


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


__all__ = [
    "PIPE_SUFFIX",
    "ProcessToken",
    "STALE_TEMPORARY_SECONDS",
    "TOKEN_SUFFIX",
    "orphan_pipes",
    "process_token",
    "remove_token_files",
    "stale_temporaries",
    "token_alive",
    "tokens_in",
]
