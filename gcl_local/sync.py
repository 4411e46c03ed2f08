"""Blocking API, as ``prefect.concurrency.sync``: ``concurrency()`` and ``rate_limit()``.

Example::

    from gcl_local import concurrency, rate_limit

    with concurrency("gpu", occupy=2, timeout_seconds=60) as lease:
        train(fencing_token=lease.token)

    rate_limit("vendor-api")  # returns once a slot of the decaying bucket was had
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from collections.abc import Iterable, Iterator
from typing import Any

from . import _core, _shell
from ._core import Denied, Granted, Request
from ._errors import AcquireConcurrencySlotTimeoutError, InvalidLimitError
from ._model import DEFAULT_LEASE_SECONDS, Lease, validate_seconds
from ._renewal import Renewal, renewer
from ._store import Store, get_store

DbArg = str | os.PathLike[str] | Store | None


def _wait_readable(fd: int, seconds: float) -> bool:
    """Sleep until *fd* is readable or *seconds* pass (poll, not select: descriptors may exceed 1024)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0.0, seconds) * 1000.0))


def acquire_slots(
    store: Store,
    request: Request,
    timeout_seconds: float | None,
    max_retries: int | None,
    on_wait: Any = None,
) -> Granted:
    """Wait in the queue until the request is granted; the one blocking wait loop of the sync shell."""
    start = time.monotonic()
    may_wait = timeout_seconds != 0 and max_retries != 0
    pipe = _shell.kept_pipe(store) if may_wait else None
    outcome = _core.transact(store, _core.attempt, request, pipe.name if pipe else None)
    if isinstance(outcome, Granted):
        return outcome
    if outcome.ticket is None or pipe is None:
        raise _shell.timeout_error(request, timeout_seconds, max_retries)
    deadline = _shell.deadline_of(timeout_seconds, start)
    queue = _shell.Queued(store, request, outcome.ticket, pipe)
    told = False
    try:
        outcome = queue.open_pipe() or outcome
        while isinstance(outcome, Denied):
            now = time.monotonic()
            left = _shell.remaining(deadline, now)
            if left == 0:
                raise _shell.timeout_error(request, timeout_seconds)
            if on_wait is not None and not told and now - start >= 1.0:
                told = True
                on_wait(queue)
            sleep, moment = queue.next_sleep(outcome, left)
            assert queue.pipe is not None
            data = queue.pipe.drain() if _wait_readable(queue.pipe.fd, sleep) else b""
            looked, counted = queue.after_wake(data, moment)
            outcome = looked or outcome
            if queue.counts_as_attempt(counted, outcome, max_retries):
                raise _shell.timeout_error(request, timeout_seconds)
        queue.ticket = None  # served: nothing to leave
        return outcome
    except BaseException as exc:
        late = queue.leave(keep_late=isinstance(exc, AcquireConcurrencySlotTimeoutError))
        if late is not None:
            return late  # granted at the last moment of a timeout: take it
        raise
    finally:
        queue.close()


@contextlib.contextmanager
def concurrency(
    names: str | Iterable[str],
    occupy: int = 1,
    timeout_seconds: float | None = None,
    max_retries: int | None = None,
    lease_duration: float = DEFAULT_LEASE_SECONDS,
    strict: bool = False,
    holder: Any = None,
    raise_on_lease_renewal_failure: bool | None = None,
    *,
    db: DbArg = None,
) -> Iterator[Lease]:
    """Hold *occupy* slots on every named limit for the duration of the block.

    The slots are taken all or nothing, first come first served, and kept by a lease that a
    daemon thread renews; they are released on exit, and at once if the process dies.

    :param names: one limit name or a list of them.
    :param timeout_seconds: give up after this many seconds (None: wait as long as it takes).
    :param max_retries: give up after this many wake-ups that did not serve the request (0: try once).
    :param lease_duration: seconds, 60 to 86400; renewed every 0.75 x duration while held.
    :param strict: raise if any named limit is missing, instead of warning.
    :param holder: a label for ``gcl inspect`` (a string, or Prefect's ``ConcurrencyLeaseHolder``).
    :param raise_on_lease_renewal_failure: stop the block if the lease is lost (default: *strict*).
    :param db: the state file (default: ``$GCL_DB``, else ``$XDG_STATE_HOME/gcl_local/gcl.db``).
    :raises AcquireConcurrencySlotTimeoutError: when the slots were not had in time.
    :raises ConcurrencySlotAcquisitionError: when the request can never be served.
    """
    store = get_store(db)
    request = _shell.make_request(
        store, names, occupy, "concurrency", strict=strict, lease_duration=lease_duration, holder=holder
    )
    _shell.check_wait_args(timeout_seconds, max_retries)
    raise_on_failure = strict if raise_on_lease_renewal_failure is None else bool(raise_on_lease_renewal_failure)
    granted = acquire_slots(store, request, timeout_seconds, max_retries)
    lease = granted.lease
    assert lease is not None
    try:  # from the first moment: an interrupt must not strand the slots in a live process
        _shell.warn_missing(store, granted)
        if lease.token is None:
            yield lease
            return
        renewal = Renewal(store, lease.id, request.lease_duration, raise_on_failure)
        renewals = renewer()
        renewals.add(renewal)
        try:
            yield lease
        finally:
            renewals.cancel(renewal)
    finally:
        if lease.token is not None:
            _core.transact(store, _core.release, lease.id)


def rate_limit(
    names: str | Iterable[str],
    occupy: int = 1,
    timeout_seconds: float | None = None,
    strict: bool = False,
    *,
    db: DbArg = None,
) -> None:
    """Take *occupy* slots of every named limit's decaying bucket, waiting (first come, first served) if needed.

    Every active named limit must have ``slot_decay_per_second`` > 0. The slots are never released:
    they decay.

    :raises AcquireConcurrencySlotTimeoutError: when the slots were not had in time.
    :raises ConcurrencySlotAcquisitionError: when the request can never be served.
    """
    store = get_store(db)
    request = _shell.make_request(store, names, occupy, "rate", strict=strict)
    _shell.check_wait_args(timeout_seconds, None)
    _shell.warn_missing(store, acquire_slots(store, request, timeout_seconds, None))


def acquire_lease(
    names: str | Iterable[str],
    occupy: int = 1,
    timeout_seconds: float | None = None,
    max_retries: int | None = None,
    lease_duration: float = DEFAULT_LEASE_SECONDS,
    strict: bool = False,
    holder: Any = None,
    *,
    holder_pid: int | None = None,
    db: DbArg = None,
) -> Lease:
    """Take slots and keep them past this call (for ``gcl acquire``): nobody renews or releases them.

    With *holder_pid* the lease belongs to that process: freed at once when it dies, and at the
    lease's end unless renewed. Without it, the calling process holds the lease by its token.
    """
    store = get_store(db)
    request = _shell.make_request(
        store, names, occupy, "concurrency", strict=strict, lease_duration=lease_duration, holder=holder,
        holder_pid=holder_pid,
    )  # fmt: skip
    if holder_pid is not None:
        request = _with_waiter(store, request)
    _shell.check_wait_args(timeout_seconds, max_retries)
    granted = acquire_slots(store, request, timeout_seconds, max_retries)
    _shell.warn_missing(store, granted)
    assert granted.lease is not None
    return granted.lease


def _with_waiter(store: Store, request: Request) -> Request:
    return request._replace(waiter_token=_shell.token_of(store).name)


def release_lease(lease_id: str, *, db: DbArg = None) -> bool:
    """Give a lease's slots back (idempotent; also an admin's force-release). False if it was not held."""
    if not isinstance(lease_id, str):
        raise InvalidLimitError(f"A lease id must be a string, not {lease_id!r}.")
    return _core.transact(get_store(db), _core.release, lease_id)


def renew_lease(lease_id: str, lease_duration: float = DEFAULT_LEASE_SECONDS, *, db: DbArg = None) -> Lease:
    """Extend a lease to *lease_duration* seconds from now.

    :raises LeaseNotFoundError: if the lease was released, expired or reclaimed.
    """
    validate_seconds(lease_duration, "lease_duration", minimum=60, maximum=86400)
    return _core.renewed(get_store(db), lease_id, float(lease_duration))


__all__ = ["acquire_lease", "acquire_slots", "concurrency", "rate_limit", "release_lease", "renew_lease"]
