"""Blocking API, as ``prefect.concurrency.sync``: ``concurrency()`` and ``rate_limit()``.

Example::

    from gcl_local import concurrency, rate_limit

    with concurrency("gpu", occupy=2, timeout_seconds=60) as lease:
        train(fencing_token=lease.token)

    rate_limit("vendor-api")  # returns once a slot of the decaying bucket was had
"""

from __future__ import annotations

import contextlib
import time

from . import _admission, _shell, _waiting
from . import sqlite as _sqlite  # noqa: F401  the embedded store, loaded now: not by a fresh process's first call
from ._backend import Backend, Channel, DbArg, open_backend
from ._effects import transact
from ._errors import AcquireConcurrencySlotTimeoutError, ConcurrencySlotAcquisitionError, InvalidLimitError
from ._model import DEFAULT_LEASE_SECONDS, MAX_LEASE_SECONDS, MIN_LEASE_SECONDS, Lease, validate_seconds
from ._renewal import Renewal, renewer
from ._request import Granted, Request
from ._shell import Acquisition, SignalsHeldBack

TYPE_CHECKING = False  # not typing's: the hot path must not cost the import of typing (see _stdlib)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any


def _wait_readable(fd: int, seconds: float) -> bool:
    """Sleep until *fd* is readable or *seconds* pass (poll, not select: descriptors may exceed 1024)."""
    import select  # only a call that waits needs it: not gcl run on free slots

    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0.0, seconds) * 1000.0))


def acquire_slots(
    backend: Backend,
    request: Request,
    timeout_seconds: float | None,
    max_retries: int | None,
    on_wait: Callable[[Acquisition], None] | None = None,
    acquisition: Acquisition | None = None,
) -> Granted:
    """Wait in the queue until the request is granted: the sync shell, which only sleeps.

    What it takes is recorded in *acquisition* the moment it commits; if this raises, nothing is left
    behind. The caller that passes *acquisition* owns the returned lease through it (its ``release``).
    """
    start = time.monotonic()
    acquisition = acquisition or Acquisition(backend, request)
    channel = backend.kept_channel() if _waiting.may_wait(timeout_seconds, max_retries) else None
    # Signals are held back for the whole call but for its sleeps: a Ctrl-C lands in a sleep (or just
    # after a transaction), never between a commit and the code that owns it or gives it back.
    held = SignalsHeldBack()
    with held:
        return _acquire(acquisition, channel, held, start, timeout_seconds, max_retries, on_wait)


def _acquire(
    acquisition: Acquisition,
    channel: Channel | None,
    held: SignalsHeldBack,
    start: float,
    timeout_seconds: float | None,
    max_retries: int | None,
    on_wait: Callable[[Acquisition], None] | None,
) -> Granted:
    request = acquisition.request
    try:
        outcome = acquisition.transact(_admission.attempt, request, channel.name if channel else None)
        if isinstance(outcome, Granted):
            return outcome
        if outcome.ticket is None or channel is None:
            raise _waiting.timeout_error(request, timeout_seconds, max_retries, waited=time.monotonic() - start)
        interval = None if max_retries is None else acquisition.retry_interval()
        steps = _waiting.wait(
            request, outcome.ticket, outcome, start=start, timeout_seconds=timeout_seconds, max_retries=max_retries,
            retry_interval=interval,
        )  # fmt: skip
        answer: Any = None
        while True:
            try:
                step = steps.send(answer)
            except StopIteration as done:
                granted: Granted = done.value
                return acquisition.served(granted)
            if step is _waiting.LOOK:
                answer = acquisition.look()
            elif step is _waiting.PROBE:
                answer = acquisition.probe()
            else:
                assert isinstance(step, _waiting.Sleep)
                if on_wait is not None and time.monotonic() - start >= _waiting.NOTICE_AFTER_SECONDS:
                    on_wait(acquisition)
                    on_wait = None
                with held.let_through():
                    readable = _wait_readable(channel.fileno(), step.seconds)
                answer = channel.drain() if readable else b""
    except BaseException as exc:
        late = acquisition.abandon(keep_late=isinstance(exc, AcquireConcurrencySlotTimeoutError))
        if late is not None:
            return late  # granted at the last moment of a timeout: take it
        raise


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
    daemon thread renews; they are released on exit, and at once if the process dies. The lease
    belongs to the process that acquired it: a forked child leaving the block neither releases nor
    renews it.

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
    backend, request = _shell.prepare(
        db, names, occupy, "concurrency", timeout_seconds=timeout_seconds, max_retries=max_retries, strict=strict,
        lease_duration=lease_duration, holder=holder,
    )  # fmt: skip
    raise_on_failure = strict if raise_on_lease_renewal_failure is None else bool(raise_on_lease_renewal_failure)
    acquisition = Acquisition(backend, request)
    renewal: Renewal | None = None
    try:  # from before the first transaction: an interrupt must not strand the slots in a live process
        granted = acquire_slots(backend, request, timeout_seconds, max_retries, acquisition=acquisition)
        lease = granted.lease
        assert lease is not None
        _shell.warn_missing(granted)
        if lease.token is None:
            yield lease
            return
        renewal = Renewal(backend, lease.id, request.lease_duration, raise_on_failure)
        renewals = renewer()
        renewals.add(renewal)
        try:
            yield lease
        finally:
            renewals.cancel(renewal)
    finally:
        with SignalsHeldBack():  # the first thing on the way out: a Ctrl-C now waits for the release
            if renewal is not None and renewal.failed:
                acquisition.release_lost()  # (its error must not replace the block's LeaseRenewalError)
            else:
                acquisition.release()


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
    backend, request = _shell.prepare(db, names, occupy, "rate", timeout_seconds=timeout_seconds, strict=strict)
    _shell.warn_missing(acquire_slots(backend, request, timeout_seconds, None))


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
    backend, request = _shell.prepare(
        db, names, occupy, "concurrency", timeout_seconds=timeout_seconds, max_retries=max_retries, strict=strict,
        lease_duration=lease_duration, holder=holder, holder_pid=holder_pid,
    )  # fmt: skip
    if holder_pid is not None:
        request = _with_waiter(backend, request)
    acquisition = Acquisition(backend, request)
    try:
        granted = acquire_slots(backend, request, timeout_seconds, max_retries, acquisition=acquisition)
        _shell.warn_missing(granted)
        acquisition.disown()  # from here on the lease is the caller's
    finally:
        acquisition.release()  # given back only if something failed before it was handed over
    assert granted.lease is not None
    return granted.lease


def _with_waiter(backend: Backend, request: Request) -> Request:
    return request._replace(waiter_registration=_shell.registration(backend).name)


def release_lease(lease_id: str, *, db: DbArg = None) -> bool:
    """Give a lease's slots back (idempotent; also an admin's force-release). False if it was not held."""
    if not isinstance(lease_id, str):
        raise InvalidLimitError(f"A lease id must be a string, not {lease_id!r}.")
    return transact(open_backend(db), _admission.release, lease_id)


def renew_lease(lease_id: str, lease_duration: float = DEFAULT_LEASE_SECONDS, *, db: DbArg = None) -> Lease:
    """Extend a lease to *lease_duration* seconds from now.

    :raises LeaseNotFoundError: if the lease was released, expired or reclaimed.
    """
    validate_seconds(lease_duration, "lease_duration", minimum=MIN_LEASE_SECONDS, maximum=MAX_LEASE_SECONDS)
    return _admission.renewed(open_backend(db), lease_id, float(lease_duration))


# As from prefect.concurrency.sync: code that catches these needs only its import changed.
__all__ = [
    "AcquireConcurrencySlotTimeoutError",
    "ConcurrencySlotAcquisitionError",
    "DbArg",
    "acquire_lease",
    "acquire_slots",
    "concurrency",
    "rate_limit",
    "release_lease",
    "renew_lease",
]
