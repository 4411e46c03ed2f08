"""What the sync and async shells share: checking arguments, naming the holder, owning what a call
took (:class:`Acquisition`) and holding back signals across the moments that must not be split.

When to wake and what to do then is decided in ``_waiting``; ``sync`` and ``asyncio`` only sleep.
"""

from __future__ import annotations

import atexit
import os
import queue
import sys
import threading

from . import _admission, _log, _process, _reaping
from ._backend import Backend, DbArg, LostCommitError, Registration, WouldBlock, open_backend
from ._effects import transact
from ._errors import GclError, InvalidArgumentError, InvalidLimitError, NoStateFileError, StoreError
from ._model import (
    DEFAULT_LEASE_SECONDS,
    MAX_LEASE_SECONDS,
    MIN_LEASE_SECONDS,
    validate_bool,
    validate_count,
    validate_names,
    validate_seconds,
)
from ._request import Granted, Holder, Outcome, Request
from ._stdlib import signal
from ._threads import start_thread

TYPE_CHECKING = False  # not typing's: the hot path must not cost the import of typing (see _stdlib)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any, TypeVar

    from ._request import Kind

    T = TypeVar("T")

MAX_LABEL = 200


class MissingLimitWarning(UserWarning):
    """A named limit does not exist, so nothing limits on that name."""


def label_of(holder: Any) -> str:
    """A short label for a holder: Prefect's ``holder`` (type and id), a string, or this program's name.

    Only the program's name, never its arguments: a command line can hold secrets.
    """
    if holder is None:
        return _program_name()
    if isinstance(holder, str):
        text = holder
    elif isinstance(holder, dict) and "type" in holder and "id" in holder:
        text = f"{holder['type']}:{holder['id']}"
    elif hasattr(holder, "type") and hasattr(holder, "id"):
        text = f"{holder.type}:{holder.id}"
    else:
        text = str(holder)
    return _printable(text)


def _printable(text: str) -> str:
    if not text.isprintable():
        text = "".join(c if c.isprintable() else "?" for c in text)
    return text[:MAX_LABEL]


_program: str | None = None


def _program_name() -> str:
    global _program
    if _program is None:
        _program = _printable(os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "") or "python"
    return _program


def registration(backend: Backend) -> Registration:
    """This process's liveness registration on *backend*; the first one sweeps for the dead (now and then)."""
    token, created = backend.register()
    if created:
        if backend.sweep_due():
            transact(backend, _admission.sweep)  # processes that died without cleaning up
        atexit.register(_forget_registration, backend, token)
    return token


def _forget_registration(backend: Backend, token: Registration) -> None:
    """At exit, remove this process's registration if nothing names it any more."""
    if token.pid != os.getpid():
        return
    try:
        transact(backend, _reaping.forget_registration, token.name)
    except Exception:
        _log.debug("could not remove registration %s at exit", token.name, exc_info=True)


def prepare(
    db: DbArg,
    names: str | Iterable[str],
    occupy: int,
    kind: Kind,
    *,
    timeout_seconds: float | None = None,
    max_retries: int | None = None,
    strict: bool = False,
    lease_duration: float = DEFAULT_LEASE_SECONDS,
    holder: Any = None,
    holder_pid: int | None = None,
) -> tuple[Backend, Request]:
    """Check every argument of an acquisition, then open the backend and describe the request.

    Nothing touches the store before every check has passed: a bad value creates no file and no row.
    """
    check_wait_args(timeout_seconds, max_retries)
    backend = open_backend(db)
    request = make_request(
        backend, names, occupy, kind, strict=strict, lease_duration=lease_duration, holder=holder,
        holder_pid=holder_pid,
    )  # fmt: skip
    return backend, request


def make_request(
    backend: Backend,
    names: str | Iterable[str],
    occupy: int,
    kind: Kind,
    *,
    strict: bool = False,
    lease_duration: float = DEFAULT_LEASE_SECONDS,
    holder: Any = None,
    holder_pid: int | None = None,
) -> Request:
    """Check every argument and describe the request; nothing touches the file before this passes."""
    plain = type(occupy) is int and type(strict) is bool and type(lease_duration) in (int, float)
    if plain and holder_pid is None and type(names) is str and (holder is None or type(holder) is str):
        # The same request again (a loop around concurrency()): reuse the checked description.
        # Only plain values are keys (True == 1 must not pass for a checked occupy of 1).
        key = (backend, names, occupy, kind, strict, lease_duration, type(lease_duration), holder, os.getpid())
        request = _recent.get(key)
        if request is None:
            request = _describe(backend, names, occupy, kind, strict, lease_duration, holder, None)
            if len(_recent) >= 256:
                _recent.clear()
            _recent[key] = request
        return request
    return _describe(backend, names, occupy, kind, strict, lease_duration, holder, holder_pid)


_recent: dict[tuple[Any, ...], Request] = {}


def _describe(
    backend: Backend,
    names: str | Iterable[str],
    occupy: int,
    kind: Kind,
    strict: bool,
    lease_duration: float,
    holder: Any,
    holder_pid: int | None,
) -> Request:
    try:
        checked = validate_names(names)
        validate_count(occupy, "occupy", minimum=1)
        validate_bool(strict, "strict")
        validate_seconds(lease_duration, "lease_duration", minimum=MIN_LEASE_SECONDS, maximum=MAX_LEASE_SECONDS)
    except InvalidLimitError as exc:  # caught as Prefect's ConcurrencySlotAcquisitionError too (its 422)
        raise InvalidArgumentError(str(exc)) from None
    label = label_of(holder)
    host, user = _identity()
    if holder_pid is not None:
        if isinstance(holder_pid, bool) or not isinstance(holder_pid, int) or holder_pid <= 0:
            raise InvalidArgumentError(f"holder_pid must be a positive process id, not {holder_pid!r}.")
        start = _process.process_start_time(holder_pid)
        if not _process.pid_alive(holder_pid, start):
            raise InvalidArgumentError(f"holder_pid {holder_pid} is not a running process.")
        who = Holder(None, holder_pid, start, host, user, label)
        return Request(checked, occupy, kind, strict, float(lease_duration), who, None)
    token = registration(backend) if checked else None
    pid = os.getpid()
    who = Holder(token.name if token else None, pid, _own_start_time(), host, user, label)
    return Request(checked, occupy, kind, strict, float(lease_duration), who, who.registration)


_start_time: tuple[int, int | None] | None = None
_host_user: tuple[str, str] | None = None


def _identity() -> tuple[str, str]:
    global _host_user
    if _host_user is None:
        _host_user = (_process.host_name(), _process.user_name())
    return _host_user


def _own_start_time() -> int | None:
    global _start_time
    pid = os.getpid()
    if _start_time is None or _start_time[0] != pid:
        _start_time = (pid, _process.process_start_time(pid))
    return _start_time[1]


def check_wait_args(timeout_seconds: object, max_retries: object) -> None:
    try:
        if timeout_seconds is not None:
            validate_seconds(timeout_seconds, "timeout_seconds")
        if max_retries is not None:
            validate_count(max_retries, "max_retries")
    except InvalidLimitError as exc:
        raise InvalidArgumentError(str(exc)) from None


_warned: set[str] = set()
"""Missing names this process has warned about: each one is warned about once (Prefect #19250)."""


def warn_missing(granted: Granted) -> None:
    """Warn about missing names, once per name per process, by one warning (``logging.captureWarnings``
    routes it to logging; a log line beside it would say it twice). The caller's
    :class:`Acquisition` gives the slots back if this raises (``-W error``)."""
    new = [name for name in granted.missing if name not in _warned]
    if not new:
        return
    import warnings  # only for a missing limit: not every start

    message = f"Concurrency limits {new!r} do not exist - skipping acquisition."
    _log.debug(message)
    warnings.warn(message, MissingLimitWarning, stacklevel=4)
    _warned.update(new)  # after the warning: under -W error it raises again next time


# -- signals -----------------------------------------------------------------------------------------

_HELD_BACK = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGALRM")  # those programs give Python handlers that raise
    if hasattr(signal, name)
)
_MAIN_THREAD = threading.main_thread().ident


class SignalsHeldBack:
    """Holds back signals with Python handlers (Ctrl-C's KeyboardInterrupt, a handler that raises on
    SIGTERM or SIGALRM) for the length of a short critical section, then delivers them.

    A transaction that grants, queues or releases, and the recording of what it committed, must not
    be split by an exception: a lease or ticket that commits with nobody left to own it is stranded
    in a live process. Only the main thread runs signal handlers, so elsewhere this does nothing.
    Handlers that are not Python functions (the default action, ignore) are left alone: a signal
    that kills the process is a crash, and crashes are reclaimed. Sections may nest: the outermost
    one delivers.
    """

    __slots__ = ("saved",)

    def __enter__(self) -> None:
        saved: dict[int, Any] | None = None
        if threading.get_ident() == _MAIN_THREAD:
            try:
                for signum in _HELD_BACK:
                    handler = signal.getsignal(signum)
                    if callable(handler) and handler is not _hold:
                        if saved is None:
                            saved = {}
                        saved[signum] = handler  # noted first: a swap cut short is undone below
                        signal.signal(signum, _hold)
            except BaseException:
                # The handler of a signal not swapped yet ran between two swaps (a signal that came just
                # before the section) and raised: the section never opens, so its exit would not put
                # back the handlers swapped so far, and their signals would stay held back for good
                # (scripts/stress.py on PostgreSQL: a worker that no SIGTERM could stop).
                if saved:
                    _restore(saved)
                raise
        self.saved = saved

    def __exit__(self, *exc_info: object) -> None:
        saved = self.saved
        if saved:
            try:
                _restore(saved)
            finally:  # a handler restored first may raise: what was held back is delivered all the same
                _deliver(saved)

    def let_through(self) -> LetThrough:
        """For a sleep inside a long section (a whole wait): the real handlers run meanwhile, so a
        Ctrl-C ends the sleep, and what was held back so far is delivered first; held back again after."""
        return LetThrough(self.saved)


class LetThrough:
    """See :meth:`SignalsHeldBack.let_through`."""

    __slots__ = ("saved",)

    def __init__(self, saved: dict[int, Any] | None) -> None:
        self.saved = saved

    def __enter__(self) -> None:
        saved = self.saved
        if saved:
            try:
                try:
                    _restore(saved)
                finally:
                    _deliver(saved)
            except BaseException:
                self.__exit__()
                raise

    def __exit__(self, *exc_info: object) -> None:
        if self.saved:
            for signum in self.saved:
                signal.signal(signum, _hold)


def _restore(saved: dict[int, Any]) -> None:
    try:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    finally:
        # A signal restored first may fire (and raise) before the others are restored: restore them
        # anyway, or they would stay held back for good.
        for signum, handler in saved.items():
            if signal.getsignal(signum) is _hold:
                signal.signal(signum, handler)


def _deliver(saved: dict[int, Any]) -> None:
    if _held:
        signums = list(dict.fromkeys(_held))
        _held.clear()
        _run_handlers(signums, saved)


def _run_handlers(signums: list[int], saved: dict[int, Any]) -> None:
    """Run the handler of each signal, in the order they came; a handler that raises raises here, once
    the others have run too (as CPython runs the rest of its pending signals at its next check): a later
    exception replaces it, with it as its context. (A SIGTERM held back behind a SIGINT whose handler
    raised was dropped: scripts/stress.py on PostgreSQL, a worker in a SIGINT storm no SIGTERM stopped.)"""
    for index, signum in enumerate(signums):
        handler = saved.get(signum) or signal.getsignal(signum)
        if callable(handler) and handler is not _hold:
            try:
                handler(signum, None)
            except BaseException:
                _run_handlers(signums[index + 1 :], saved)
                raise


_held: list[int] = []
"""Signals that arrived during a section (only the main thread runs handlers: no lock needed)."""


def _hold(signum: int, _frame: object) -> None:
    _held.append(signum)


# -- one call's claim on the store ----------------------------------------------------------------------


class Acquisition:
    """What one call holds while it acquires: its ticket, then its lease, recorded the moment they commit.

    Whatever happens next (a timeout, an interrupt, a cancelled task, a fork), each is either handed
    to the caller or given back exactly once, and only by the process that took it. Thread-safe: the
    async shell records from worker threads.
    """

    def __init__(self, backend: Backend, request: Request) -> None:
        self.backend = backend
        self.request = request
        self.pid = os.getpid()
        self.ticket: int | None = None
        self.lease_id: str | None = None
        self.orphaned = False
        """The async task that owned this call is gone: whatever a worker thread commits now is given back."""
        self._lock = threading.Lock()

    def record(self, outcome: Outcome) -> Outcome:
        """Note what a transaction just committed for us; call with signals held back."""
        with self._lock:
            if isinstance(outcome, Granted):
                self.ticket = None
                lease = outcome.lease
                if lease is not None and lease.token is not None:
                    self.lease_id = lease.id
            elif outcome.ticket is not None:
                self.ticket = outcome.ticket
        if self.ticket is not None or self.lease_id is not None:
            _start_giver()  # here, never in __del__ (see _give_back_dropped)
        return outcome

    def transact(self, fn: Callable[..., Outcome], *args: object, blocking: bool = True) -> Outcome:
        """One write step of the acquisition, recorded before any signal can intervene."""
        with SignalsHeldBack():
            return self.record(transact(self.backend, fn, *args, blocking=blocking))

    def look(self, blocking: bool = True) -> Outcome:
        """A real attempt for our ticket: served now, by someone else already, or still denied."""
        assert self.ticket is not None
        return self.transact(_admission.attempt_ticket, self.ticket, self.request.kind, blocking=blocking)

    def retry_interval(self) -> float:
        """The interval between the retries that ``max_retries`` counts: Prefect's Retry-After (a read)."""
        with self.backend.read() as tx:
            return _admission.retry_interval(tx, self.request)

    def probe(self) -> Granted | bool | None:
        assert self.ticket is not None
        try:
            with self.backend.read() as tx:
                found = _admission.probe(tx, self.ticket, self.request.kind)
        except NoStateFileError:
            raise
        except StoreError:
            # A read cut short (a server that restarts under it: unlike a write, a read is not run again)
            # says nothing: the real look decides, and it waits the restart out (tests/test_hosts.py, the
            # restart test: a waiter failed with "server closed the connection unexpectedly").
            return True
        return self.record(found) if isinstance(found, Granted) else found  # type: ignore[return-value]

    def served(self, granted: Granted) -> Granted:
        """A grant that came through our channel: the releaser committed it for our ticket."""
        with SignalsHeldBack():
            self.record(granted)
        return granted

    def abandon(self, *, keep_late: bool = False) -> Granted | None:
        """Leave the queue and give back a lease not yet handed over.

        With *keep_late* (a timeout), a grant that came to our ticket at the last moment is kept and
        returned instead. An interrupt must not leave the ticket behind: see :func:`to_the_end`.
        """
        if self.pid != os.getpid():
            return None  # a forked child: what we see was taken by the parent
        late = to_the_end(lambda: self._leave(timed_out=keep_late))
        if late is not None and keep_late and not self.orphaned:
            return late
        to_the_end(self._give_back)
        return None

    def release(self, blocking: bool = True) -> None:
        """Give back the lease (the end of a block): only in the process that took it, only once.

        :raises WouldBlock: if not *blocking* and the write lock is taken (nothing was done).
        """
        if self.pid == os.getpid():  # a forked child leaving the block: the lease is its parent's
            to_the_end(lambda: self._give_back(blocking))

    def release_lost(self, blocking: bool = True) -> None:
        """Give back a lease whose renewal failed, if the store still has it: once, and only as a
        courtesy. Its slots are no longer ours; the caller's error is that loss (LeaseRenewalError,
        ``gcl run``'s exit 76), not this release, which on a cut link fails after the connection's
        timeouts (tests/test_hosts.py: its StoreError replaced the LeaseRenewalError of the block).

        :raises WouldBlock: as :meth:`release`."""
        try:
            self.release(blocking)
        except WouldBlock:
            raise
        except GclError as exc:
            _log.debug("a lost lease was not given back: %s", exc)
        self.disown()

    def __del__(self) -> None:
        # The last line of defence: an exception that struck between the code that recorded a
        # ticket or lease and the code that owns it (a few bytecodes that no signal mask covers)
        # drops this object with something still recorded. Give it back rather than strand it.
        # (getattr: an interrupt may have cut __init__ short, before anything was recorded.)
        # Not here, though: a finalizer runs wherever the cyclic GC strikes, in any thread, maybe between
        # two statements of a transaction on that thread's own connection (see _give_back_dropped).
        held = getattr(self, "ticket", None) is not None or getattr(self, "lease_id", None) is not None
        if held and getattr(self, "pid", None) == os.getpid():
            try:
                _dropped.put(self)  # (SimpleQueue.put is reentrant: safe in a finalizer)
            except BaseException:  # at interpreter exit (the module's globals may be gone): the exit frees it
                pass

    def disown(self) -> None:
        """The lease now belongs to someone else (``gcl acquire`` hands it to the calling shell)."""
        self.lease_id = None

    def _leave(self, *, timed_out: bool = False) -> Granted | None:
        """Cancel our ticket (idempotent: it may run again after an interruption); *timed_out* counts it."""
        ticket = self.ticket
        if ticket is None:
            return None
        late = _again_if_lost(lambda: transact(self.backend, _admission.cancel, ticket, self.request.kind, timed_out))
        with self._lock:
            if self.ticket == ticket:
                self.ticket = None
        if late is not None:
            self.record(late)
        return late

    def _give_back(self, blocking: bool = True) -> None:
        """Release our lease (idempotent: releasing a released lease does nothing)."""
        lease_id = self.lease_id
        if lease_id is not None:
            _again_if_lost(lambda: transact(self.backend, _admission.release, lease_id, blocking=blocking))
            with self._lock:
                if self.lease_id == lease_id:
                    self.lease_id = None


def _again_if_lost(work: Callable[[], T]) -> T:
    """Run an idempotent give-back again when its commit was lost (a server that restarted as it
    committed): failing would leave its lease or ticket recorded in a live process, given back only if
    and when the GC collects the acquisition, while the lease blocks the limit (scripts/stress.py on
    PostgreSQL with --restart-every: an async worker's release failed so, its lease leaked, and a
    waiter for every slot at the head of the queue stalled everyone)."""
    for attempt in (0, 1, 2):
        try:
            return work()
        except LostCommitError:
            if attempt == 2:
                raise
            _log.debug("a give-back's commit was lost: again")
    raise AssertionError("unreachable")


_dropped: queue.SimpleQueue[Acquisition] = queue.SimpleQueue()
"""Acquisitions dropped with a ticket or lease still recorded, to be given back by the giver thread."""
_giver_pid = 0
_giver_lock = threading.Lock()


def _start_giver() -> None:
    """Start this process's giver thread, once (again in a forked child), from ordinary code: starting a
    thread from a finalizer could deadlock on threading's own locks."""
    global _giver_pid
    if _giver_pid == os.getpid():
        return
    with _giver_lock:
        if _giver_pid != os.getpid():
            start_thread(_give_back_dropped, "gcl-give-back")
            _giver_pid = os.getpid()


def _give_back_dropped() -> None:
    """Give back what dropped acquisitions still hold, on this thread's own connection.

    ``Acquisition.__del__`` did it itself, in the thread that collected it: the cyclic GC ran it between
    two statements of a transaction on that thread's PostgreSQL work connection, and the finalizer's
    own transaction committed the half-done one (and freed its write lock), then left its wake-up's
    result for the interrupted statement (scripts/stress.py on PostgreSQL, an async worker after a
    server restart: ``IndexError`` in ``_tx._ticket``, a ``pg_notify`` row read as a ticket row)."""
    while True:
        acquisition = _dropped.get()
        try:
            acquisition.abandon()
        except Exception:
            _log.debug("a dropped acquisition could not give back its slots", exc_info=True)
        del acquisition


def to_the_end(work: Callable[[], T]) -> T:
    """Run a give-back to its end: signals held back, and run again if something that cannot be held
    back (an exception injected into the thread) interrupted it; such an interruption, or a signal
    that arrived meanwhile, is raised once the work is done. *work* must be idempotent."""
    interrupted: BaseException | None = None
    while True:
        done = False
        try:
            with SignalsHeldBack():
                result = work()
                done = True
        except BaseException as exc:
            if isinstance(exc, Exception) and not done:
                raise  # a real error (an unusable file): running it again would not help
            interrupted = interrupted or exc
        if done:
            if interrupted is not None:
                raise interrupted
            return result


__all__ = [
    "Acquisition",
    "LetThrough",
    "MAX_LABEL",
    "MissingLimitWarning",
    "SignalsHeldBack",
    "check_wait_args",
    "label_of",
    "make_request",
    "to_the_end",
    "prepare",
    "registration",
    "warn_missing",
]
