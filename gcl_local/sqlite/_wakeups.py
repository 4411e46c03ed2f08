"""Wake-ups on one host: a named pipe per waiter in the run directory.

Whoever frees capacity writes a short message (below ``PIPE_BUF``: one write, never interleaved
with another's) to the pipe of the waiter it served or that should look again, after its commit.
"""

from __future__ import annotations

import contextlib
import os
import stat

from ._liveness import ProcessToken

MAX_MESSAGE = 4000
"""Below ``PIPE_BUF``: a message is written whole by one write."""

_READ_SIZE = 65536
"""What one read of a pipe asks for: the most that a pipe holds by default."""


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

    def fileno(self) -> int:
        return self.fd

    def drain(self) -> bytes:
        """Read whatever woke us (empty if nothing).

        A read shorter than asked for took everything there was: no second read to learn that (on
        every hand-off's path). What is written after it stays, and wakes the next sleep at once."""
        chunks = []
        while True:
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                break
            chunks.append(data)
            if len(data) < _READ_SIZE:
                break
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


__all__ = ["MAX_MESSAGE", "Pipe", "new_pipe", "wake"]
