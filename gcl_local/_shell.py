"""What the sync and async shells share: checking arguments, naming the holder, joining the queue.

The waiting loops themselves (about fifteen lines each) live in ``sync`` and ``asyncio``.
"""

from __future__ import annotations

import atexit
import math
import os
import sys
import warnings
from collections.abc import Iterable
from typing import Any

from . import _core, _log, _tokens
from ._core import Denied, Granted, Holder, Kind, Outcome, Request
from ._errors import AcquireConcurrencySlotTimeoutError, InvalidLimitError, StoreError
from ._model import (
    DEFAULT_LEASE_SECONDS,
    MAX_LEASE_SECONDS,
    MIN_LEASE_SECONDS,
    validate_bool,
    validate_count,
    validate_names,
    validate_seconds,
)
from ._store import Store

SAFETY_NET_SECONDS = 0.5
"""A waiter looks again at least this often, in case a wake-up was lost or a holder died."""
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


SWEEP_ABOVE = 64
"""Sweep the run directory when a process starts using it and finds more files than this."""


def token_of(store: Store) -> _tokens.ProcessToken:
    run_dir = store.ensure_run_dir()
    try:
        token, created = _tokens.process_token(run_dir, store.file_mode)
    except OSError as exc:
        raise StoreError(f"Cannot create a liveness token in {run_dir}: {exc.strerror or exc}.") from None
    if created:
        if len(os.listdir(store.run_dir)) > SWEEP_ABOVE:
            _core.transact(store, _core.sweep)  # processes that died without cleaning up
        atexit.register(_forget_token, store, token)
    return token


def kept_pipe(store: Store) -> _tokens.Pipe:
    """The calling thread's wake-up pipe, kept across its waits."""
    token = token_of(store)
    try:
        return token.thread_pipe(store.run_dir, store.file_mode)
    except OSError as exc:
        raise StoreError(f"Cannot create a wake-up pipe in {store.run_dir}: {exc.strerror or exc}.") from None


def _forget_token(store: Store, token: _tokens.ProcessToken) -> None:
    """At exit, remove this process's token file if nothing names it any more."""
    if token.pid != os.getpid():
        return
    try:
        _core.transact(store, _core.forget_token, token.name)
    except Exception:
        _log.debug("could not remove token %s at exit", token.name, exc_info=True)


def make_request(
    store: Store,
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
        key = (store, names, occupy, kind, strict, lease_duration, type(lease_duration), holder, os.getpid())
        request = _recent.get(key)
        if request is None:
            request = _describe(store, names, occupy, kind, strict, lease_duration, holder, None)
            if len(_recent) >= 256:
                _recent.clear()
            _recent[key] = request
        return request
    return _describe(store, names, occupy, kind, strict, lease_duration, holder, holder_pid)


_recent: dict[tuple[Any, ...], Request] = {}


def _describe(
    store: Store,
    names: str | Iterable[str],
    occupy: int,
    kind: Kind,
    strict: bool,
    lease_duration: float,
    holder: Any,
    holder_pid: int | None,
) -> Request:
    checked = validate_names(names)
    validate_count(occupy, "occupy", minimum=1)
    validate_bool(strict, "strict")
    validate_seconds(lease_duration, "lease_duration", minimum=MIN_LEASE_SECONDS, maximum=MAX_LEASE_SECONDS)
    label = label_of(holder)
    host, user = _identity()
    if holder_pid is not None:
        if isinstance(holder_pid, bool) or not isinstance(holder_pid, int) or holder_pid <= 0:
            raise InvalidLimitError(f"holder_pid must be a positive process id, not {holder_pid!r}.")
        start = _tokens.process_start_time(holder_pid)
        if not _tokens.pid_alive(holder_pid, start):
            raise InvalidLimitError(f"holder_pid {holder_pid} is not a running process.")
        who = Holder(None, holder_pid, start, host, user, label)
        return Request(checked, occupy, kind, strict, float(lease_duration), who, None)
    token = token_of(store) if checked else None
    pid = os.getpid()
    who = Holder(token.name if token else None, pid, _own_start_time(), host, user, label)
    return Request(checked, occupy, kind, strict, float(lease_duration), who, who.token)


_start_time: tuple[int, int | None] | None = None
_host_user: tuple[str, str] | None = None


def _identity() -> tuple[str, str]:
    global _host_user
    if _host_user is None:
        _host_user = (_tokens.host_name(), _tokens.user_name())
    return _host_user


def _own_start_time() -> int | None:
    global _start_time
    pid = os.getpid()
    if _start_time is None or _start_time[0] != pid:
        _start_time = (pid, _tokens.process_start_time(pid))
    return _start_time[1]


def check_wait_args(timeout_seconds: object, max_retries: object) -> None:
    if timeout_seconds is not None:
        validate_seconds(timeout_seconds, "timeout_seconds")
    if max_retries is not None:
        validate_count(max_retries, "max_retries")


def warn_missing(store: Store, granted: Granted) -> None:
    """Warn about missing names; if the warning is made an error, give back what was taken first."""
    if not granted.missing:
        return
    message = f"Concurrency limits {list(granted.missing)!r} do not exist - skipping acquisition."
    _log.warning(message)
    try:
        warnings.warn(message, MissingLimitWarning, stacklevel=4)
    except BaseException:
        give_back(store, granted)
        raise


def give_back(store: Store, outcome: Outcome, kind: Kind = "concurrency") -> None:
    """Return what nobody will use: the slots of a grant, or a ticket (and a grant that came to it meanwhile)."""
    if isinstance(outcome, Denied) and outcome.ticket is not None:
        outcome = _core.transact(store, _core.cancel, outcome.ticket, kind) or outcome
    if isinstance(outcome, Granted) and outcome.lease is not None and outcome.lease.token is not None:
        _core.transact(store, _core.release, outcome.lease.id)


def timeout_error(
    request: Request, timeout_seconds: float | None, max_retries: int | None = None
) -> AcquireConcurrencySlotTimeoutError:
    if timeout_seconds == 0 or max_retries == 0:
        return AcquireConcurrencySlotTimeoutError(f"Concurrency slots on {list(request.names)!r} are busy.")
    if timeout_seconds is None:
        return AcquireConcurrencySlotTimeoutError(
            f"Unable to acquire concurrency slots on {list(request.names)!r}: retries exhausted."
        )
    return AcquireConcurrencySlotTimeoutError(
        f"Attempt to acquire concurrency slots timed out after {timeout_seconds:g} second(s)"
    )


class Queued:
    """A request in the queue: its ticket, its pipe, and how long to sleep next.

    The ticket is taken in the same transaction as the first attempt; the pipe is made just after,
    so a grant written before the pipe existed is found by :meth:`peek`.
    """

    def __init__(self, store: Store, request: Request, ticket: int, pipe: _tokens.Pipe | str) -> None:
        self.store = store
        self.request = request
        self.ticket: int | None = ticket
        self.kept = not isinstance(pipe, str)
        """The pipe is the thread's own, kept across waits (sync), not one made for this wait (async)."""
        self.pipe: _tokens.Pipe | None = None if isinstance(pipe, str) else pipe
        self.pipe_name = pipe if isinstance(pipe, str) else pipe.name
        self.attempts = 0

    def open_pipe(self) -> Granted | None:
        """Make our pipe (if it is not a kept one); return the grant if we were served before it existed."""
        if self.pipe is not None:
            return None  # it existed before the ticket: any grant is in it
        try:
            self.pipe = _tokens.Pipe(self.store.run_dir, self.pipe_name, self.store.file_mode)
        except OSError as exc:  # the ticket names this pipe: no other name will do
            raise StoreError(f"Cannot create a wake-up pipe in {self.store.run_dir}: {exc.strerror}.") from None
        return self.peek()

    def next_sleep(self, outcome: Denied, remaining: float | None) -> tuple[float, bool]:
        """Seconds to sleep, and whether waking then is a computed moment (which counts as an attempt)."""
        sleep = SAFETY_NET_SECONDS * (0.8 + 0.4 * _log.jitter())
        moment = False
        if outcome.retry_in is not None and outcome.retry_in <= sleep:
            sleep, moment = outcome.retry_in, True
        if remaining is not None and remaining < sleep:
            sleep, moment = remaining, False
        return max(0.0, sleep), moment

    def woken(self, data: bytes) -> tuple[Granted | None, bool]:
        """(the grant, whether poked) from what the pipe held for our ticket."""
        assert self.ticket is not None
        return _core.read_wake(self.request, self.ticket, data) if data else (None, False)

    def after_wake(self, data: bytes, moment: bool) -> tuple[Outcome | None, bool]:
        """What a wake-up brought: a grant, or a new look (after a poke or at the computed moment), or
        nothing; and whether it counts as an attempt."""
        granted, poked = self.woken(data)
        if granted is not None:
            return granted, False
        if poked or moment:
            return self.look(), True
        if data:
            return None, False  # only messages for an earlier wait of this thread
        found = self.probe()  # the safety net: a read, and a write only when it could help
        if isinstance(found, Granted):
            return found, False
        return (self.look() if found else None), False

    def counts_as_attempt(self, counted: bool, outcome: Outcome, max_retries: int | None) -> bool:
        """Count a wake-up that did not serve us; True when ``max_retries`` is used up.

        The first attempt was the call itself: ``max_retries=N`` gives up after N + 1 attempts.
        """
        if isinstance(outcome, Granted) or not counted:
            return False
        self.attempts += 1
        return max_retries is not None and self.attempts >= max_retries

    def look(self) -> Outcome:
        assert self.ticket is not None
        return _core.transact(self.store, _core.attempt_ticket, self.ticket, self.request.kind)

    def peek(self) -> Granted | None:
        """Was the grant handed to us? (a read, without the write lock)."""
        assert self.ticket is not None
        with self.store.read() as tx:
            return _core.peek_ticket(tx, self.ticket, self.request.kind)

    def probe(self) -> Granted | bool:
        assert self.ticket is not None
        with self.store.read() as tx:
            return _core.probe(tx, self.ticket, self.request.kind)

    def leave(self, *, keep_late: bool) -> Granted | None:
        """Remove the ticket. A grant that arrived meanwhile is returned if *keep_late* (a timeout at the
        last moment takes it), else given back."""
        try:
            if self.ticket is None:
                return None
            late = _core.transact(self.store, _core.cancel, self.ticket, self.request.kind)
            if late is not None and not keep_late:
                give_back(self.store, late)
                return None
            return late
        finally:
            self.close()

    def close(self) -> None:
        if self.pipe is not None and not self.kept:
            self.pipe.close()


def remaining(deadline: float | None, now: float) -> float | None:
    return None if deadline is None else max(0.0, deadline - now)


def deadline_of(timeout_seconds: float | None, start: float) -> float | None:
    if timeout_seconds is None or math.isinf(timeout_seconds):
        return None
    return start + timeout_seconds


__all__ = [
    "SAFETY_NET_SECONDS",
    "MissingLimitWarning",
    "Queued",
    "check_wait_args",
    "deadline_of",
    "label_of",
    "make_request",
    "remaining",
    "timeout_error",
    "token_of",
    "warn_missing",
]
