"""Who holds a ``gcl acquire`` lease: the script that called it, found in ``/proc``.

The lease of ``gcl acquire`` is held by a pid and freed at once when that process dies, so it
must name the script, not whatever process happens to be ``gcl``'s parent. In
``lease=$(gcl acquire db || exit 1)``, ``$(gcl acquire db | tail -1)`` or
``$(timeout 70 gcl acquire db)`` that parent is a forked subshell or a wrapper program, gone a
moment after ``gcl`` prints the lease while the script goes on. So we walk up from the parent:

- past **wrapper programs** that only exec or wait for their command (:data:`WRAPPERS`);
- past **forked subshells**: a process running the same program (``/proc/PID/exe``) with the same
  arguments (``/proc/PID/cmdline``) as its parent, and where the kernel shows it, at the same stack
  address. A fork keeps its parent's address space; a fresh exec of the same program gets a new,
  randomised one, so a nested ``bash`` started with the same arguments is not taken for a subshell.

The first process that is neither is the holder, if it is in our session (else it adopted an
orphan whose script was killed meanwhile: refused). Where the chain cannot be read (no ``/proc``, a
process of another user, a process that ended meanwhile) or the walk reaches pid 1 (where orphans
go, and a container's init: never a holder by guess), there is no answer and the caller refuses.
"""

from __future__ import annotations

import os

from ._stdlib import NamedTuple

PROC = "/proc"
"""Where the process table is read from (tests point this elsewhere to see the refusal)."""

WRAPPERS = frozenset(["timeout", "time", "env", "nice", "nohup", "stdbuf", "ionice", "chrt", "taskset", "setsid"])
"""Programs that run one command and exec it or wait for it: never the script that holds a lease."""
REAPERS = frozenset(["systemd", "init", "tini", "dumb-init", "catatonit", "s6-svscan", "runsvdir"])
"""Programs that adopt orphans (pid 1, or a subreaper such as ``systemd --user``): when a killed
script's subshell is adopted, the walk reaches one of these, which is never the holder."""
MULTI_CALL = frozenset(["busybox", "toybox", "coreutils"])
"""Binaries that are many programs: their name is in argv[0] (``timeout`` as a busybox applet)."""
MAX_DEPTH = 64
_STAT_PPID = 1  # fields of /proc/PID/stat after the command name: 0 is field 3 ("state")
_STAT_SESSION = 3
_STAT_STARTSTACK = 25


class _Process(NamedTuple):
    ppid: int
    session: int
    exe: str
    cmdline: bytes
    stack: int
    """Start address of the stack; 0 when the kernel does not show it to us."""

    @property
    def program(self) -> str:
        name = os.path.basename(self.exe.removesuffix(" (deleted)"))
        if name in MULTI_CALL:
            name = os.path.basename(self.cmdline.split(b"\0", 1)[0].decode(errors="replace"))
        return name


def _read(pid: int) -> _Process | None:
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"{PROC}/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        exe = os.readlink(f"{PROC}/{pid}/exe")  # fails for a zombie: its parent is no holder either
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()  # the command name may hold spaces and parentheses
    try:
        return _Process(
            int(fields[_STAT_PPID]), int(fields[_STAT_SESSION]), exe, cmdline, int(fields[_STAT_STARTSTACK])
        )
    except (IndexError, ValueError):
        return None


def _is_fork_of(child: _Process, parent: _Process) -> bool:
    if child.exe != parent.exe or child.cmdline != parent.cmdline:
        return False
    return child.stack == parent.stack or 0 in (child.stack, parent.stack)


def script_pid() -> tuple[int | None, str]:
    """The pid that should hold a ``gcl acquire`` lease, or None and why it cannot be told."""
    if not os.path.isdir(f"{PROC}/self"):
        return None, f"no {PROC} to find the calling script in"
    pid = os.getppid()
    # The script, its subshells and its wrappers share our session (a fork keeps it). A process in
    # another one has adopted an orphan: `gcl` itself, or a subshell or wrapper above it, whose
    # script was killed meanwhile. Never take it for the holder.
    session = os.getsid(0)
    for _ in range(MAX_DEPTH):
        if pid == 1:
            return None, "the calling script would be pid 1, where orphans go"
        if pid <= 0:
            return None, "the calling process is outside this PID namespace"
        proc = _read(pid)
        if proc is None:
            return None, f"cannot read process {pid} in {PROC}"
        skip = proc.program in WRAPPERS
        if not skip:
            parent = _read(proc.ppid) if proc.ppid > 0 else None
            skip = parent is not None and _is_fork_of(proc, parent)
        if not skip:
            if proc.program in REAPERS or proc.session != session:
                return None, f"the calling script has exited (pid {pid} adopted what it left running)"
            return pid, ""
        pid = proc.ppid
    return None, f"more than {MAX_DEPTH} wrappers and subshells above gcl"


__all__ = [
    "MAX_DEPTH",
    "MULTI_CALL",
    "PROC",
    "REAPERS",
    "WRAPPERS",
    "script_pid",
]
