"""Who a process is: its start time (to tell a reused pid from its first owner), whether it lives,
and the host and user it runs as."""

from __future__ import annotations

import os


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


__all__ = ["host_name", "pid_alive", "process_start_time", "user_name"]
