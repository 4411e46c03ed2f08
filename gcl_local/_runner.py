"""``gcl run``: hold slots for exactly as long as a command runs.

The command inherits this process's liveness token (an flock-ed descriptor), so its slots stay
held while it lives even if ``gcl run`` itself is killed, and are freed at once when it ends. The
lease names the command's pid and program name, so ``gcl inspect`` shows what really holds it, once
the command has run for ``SETTLE_SECONDS``.

SIGINT, SIGTERM and SIGHUP sent to ``gcl run`` are forwarded to the command, except a signal that
the terminal sent to the whole foreground process group: the command has it already.

If the lease is lost while the command runs (its renewal fails: on a server, the holder's host was
cut off long enough for the server to free its slots), ``gcl run`` warns; with ``--strict`` it stops
the command (SIGTERM, then SIGKILL after ``LOST_LEASE_GRACE_SECONDS``) and exits with
:data:`~gcl_local._errors.EX_LEASE_LOST`, as ``consul lock`` does.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence

from . import _admission, _shell
from ._backend import Backend
from ._effects import transact
from ._errors import EX_LEASE_LOST, CommandError, CommandNotFoundError, GclError
from ._model import Lease
from ._renewal import Renewal, renewer
from ._request import Request
from ._stdlib import signal

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
LOST_LEASE_GRACE_SECONDS = 5.0
"""How long a command stopped for a lost lease gets between SIGTERM and SIGKILL (Consul's grace)."""
SETTLE_SECONDS = 0.1
"""A command that ends sooner (a cron job with nothing to do) is not named on its lease, and its lease
is not given to the renewal thread: it costs neither a write nor a thread. The lease meanwhile names
``gcl run`` (the label is the command's already); the first renewal is 45 s away at the earliest."""
_SI_KERNEL = 0x80  # si_code of a signal the kernel (e.g. the tty driver) sent


def exit_status(returncode: int) -> int:
    """A shell's view of a child's end: its code, or 128+N when signal N killed it."""
    return 128 - returncode if returncode < 0 else returncode


def program_label(command: Sequence[str]) -> str:
    return _shell.label_of(os.path.basename(command[0]))


def command_environment(lease: Lease) -> dict[str, str]:
    """What ``gcl run`` tells its command: the lease (for ``gcl release``/``renew``), its fencing token
    (for the resource it protects) and the limits it holds, one name a line (names hold no newline)."""
    environment = dict(os.environ)
    environment["GCL_LEASE_ID"] = lease.id
    environment["GCL_FENCING_TOKEN"] = str(lease.token)
    environment["GCL_LIMITS"] = "\n".join(lease.names)
    return environment


def run_command(
    store: Backend,
    request: Request,
    command: Sequence[str],
    acquisition: _shell.Acquisition,
    lease: Lease,
    *,
    strict: bool = False,
) -> int:
    """Run *command* holding *lease*, the grant of *acquisition*; release it when the command ends.

    *strict*: stop the command if the lease is lost meanwhile.
    """
    lease_id = acquisition.lease_id
    assert lease_id is not None
    token = _shell.registration(store)
    pending: list[int] = []
    # A signal the caller ignores (nohup's SIGHUP, SIGINT for `cmd &` in a script) stays ignored, for
    # us and for the command, which inherits that; a caught one would be reset to the default by exec.
    forwarded = [sig for sig in FORWARDED if signal.getsignal(sig) != signal.SIG_IGN]
    previous = {sig: signal.signal(sig, lambda signum, _frame: pending.append(signum)) for sig in forwarded}
    # With SIGCHLD ignored (inherited from a parent that set it) the kernel reaps the command itself:
    # no SIGCHLD and no status to wait for (ECHILD). The command gets the default too.
    previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        try:
            child = _spawn(command, token.inheritable(), command_environment(lease))
        except OSError as exc:
            acquisition.release()
            error = CommandNotFoundError if isinstance(exc, FileNotFoundError) else CommandError
            raise error(f"Cannot run {command[0]!r}: {exc.strerror}.") from None
        return _supervise(store, request, acquisition, child, program_label(command), pending, forwarded, strict)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _spawn(command: Sequence[str], token_fd: int, environment: dict[str, str]) -> int:
    """Start *command* with our stdin/stdout/stderr and the liveness token; posix_spawn spares
    ``gcl run`` the import of subprocess."""
    os.set_inheritable(token_fd, True)
    try:
        # Python ignores SIGPIPE and SIGXFSZ; the command must get the defaults, as from a shell.
        return os.posix_spawnp(command[0], list(command), environment, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
    finally:
        os.set_inheritable(token_fd, False)


def _name_holder(store: Backend, lease_id: str, pid: int, label: str) -> None:
    with contextlib.suppress(GclError):
        transact(store, _admission.set_holder, lease_id, pid, label)


def _exited(pid: int) -> int | None:
    """The command's exit status if it has ended (reaping it), else None."""
    done, status = os.waitpid(pid, os.WNOHANG)
    return exit_status(os.waitstatus_to_exitcode(status)) if done else None


class _LostLease:
    """Stops the command once its lease is lost (called from the renewal thread, under ``--strict``)."""

    def __init__(self, child: int) -> None:
        self.child = child
        self.stopped_at: float | None = None

    def __call__(self) -> None:
        self.stopped_at = time.monotonic()
        _forward(self.child, signal.SIGTERM)

    def kill_if_late(self) -> None:
        if self.stopped_at is not None and time.monotonic() - self.stopped_at >= LOST_LEASE_GRACE_SECONDS:
            _forward(self.child, signal.SIGKILL)


def _supervise(
    store: Backend,
    request: Request,
    acquisition: _shell.Acquisition,
    child: int,
    label: str,
    pending: list[int],
    forwarded: Sequence[int],
    strict: bool,
) -> int:
    lease_id = acquisition.lease_id
    assert lease_id is not None
    waiting = hasattr(signal, "sigtimedwait")
    watched = {*forwarded, signal.SIGCHLD}
    if waiting:
        # Every signal then waits for sigtimedwait below, where its sender can be told: the helper
        # threads (the giver, started by the grant; the renewal thread) block them all (_threads).
        signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    lost = _LostLease(child)
    renewal = Renewal(store, lease_id, request.lease_duration, strict, lost)
    renewals = renewer()
    settled_at: float | None = time.monotonic() + SETTLE_SECONDS
    try:
        for signum in pending:  # arrived while the command was starting: forward them
            _forward(child, signum)
        pending.clear()
        if not waiting:
            _name_holder(store, lease_id, child, label)
            renewals.add(renewal)
            for sig in forwarded:
                signal.signal(sig, lambda s, _f: _forward(child, s))
            code = exit_status(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]))
            return EX_LEASE_LOST if lost.stopped_at is not None else code
        while True:
            ended = _exited(child)
            if ended is not None:
                return EX_LEASE_LOST if lost.stopped_at is not None else ended
            if settled_at is not None and time.monotonic() >= settled_at:
                settled_at = None  # it is no quick command: name it, and renew its lease
                _name_holder(store, lease_id, child, label)
                renewals.add(renewal)
            lost.kill_if_late()
            wait = 1.0 if settled_at is None else max(0.0, settled_at - time.monotonic())
            info = signal.sigtimedwait(watched, wait)
            if info is not None and info.si_signo != signal.SIGCHLD and info.si_code != _SI_KERNEL:
                _forward(child, info.si_signo)
    finally:
        renewals.cancel(renewal)
        # (Before the forwarded signals are unblocked: they must not cut it short.)
        if renewal.failed:
            # The lease is lost: giving it back is a courtesy, whose error (on a cut link) turned the
            # documented exit status 76 into 1 (tests/test_hosts.py, the partition test).
            acquisition.release_lost()
        else:
            acquisition.release()
        if waiting:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)


def _forward(child: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(child, signum)


__all__ = [
    "FORWARDED",
    "LOST_LEASE_GRACE_SECONDS",
    "SETTLE_SECONDS",
    "command_environment",
    "exit_status",
    "program_label",
    "run_command",
]
