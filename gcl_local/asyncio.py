"""Async API, as ``prefect.concurrency.asyncio``: ``concurrency()`` and ``rate_limit()``.

The event loop is never blocked for longer than one short transaction: each transaction is tried
without waiting for SQLite's write lock, and only when that lock is busy does it run in a worker
thread. A waiter sleeps on its channel through ``loop.add_reader``, in the same queue as sync waiters.

Example::

    from gcl_local.asyncio import concurrency, rate_limit

    async with concurrency("gpu", occupy=2) as lease:
        await train(fencing_token=lease.token)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time

from . import _admission, _shell, _waiting
from . import sqlite as _sqlite  # noqa: F401  the embedded store, loaded now: not by a fresh process's first call
from ._backend import Backend, Channel, DbArg, WouldBlock
from ._errors import AcquireConcurrencySlotTimeoutError, ConcurrencySlotAcquisitionError, LeaseRenewalError
from ._model import DEFAULT_LEASE_SECONDS, Lease
from ._renewal import Renewal, renewal_failed_message, renewer
from ._request import Granted, Request
from ._shell import Acquisition
from ._threads import start_thread

TYPE_CHECKING = False  # not typing's (see _stdlib)
if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable
    from typing import Any, TypeVar

    T = TypeVar("T")


async def _off_the_loop(acquisition: Acquisition, call: Callable[[bool], T]) -> T:
    """Run ``call(blocking)`` on the loop if the store's write lock is free, else in a worker thread."""
    try:
        return call(False)
    except WouldBlock:
        return await _in_thread(acquisition, lambda: call(True))


async def _in_thread(acquisition: Acquisition, work: Callable[[], T]) -> T:
    """Run *work* in a worker thread. A thread cannot be stopped: if we are cancelled meanwhile,
    whatever it commits (a lease, a ticket, a late grant) would belong to nobody, so whoever of the
    thread and the cancelled task comes second gives it back."""
    lock = threading.Lock()
    state = {"orphaned": False, "finished": False}

    def run() -> T:
        try:
            return work()
        finally:
            with lock:
                state["finished"] = True
                orphaned = state["orphaned"]
            if orphaned:
                acquisition.abandon()

    future = asyncio.get_running_loop().run_in_executor(None, run)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        # Nobody awaits the thread's outcome now: an error it ends with (a lost connection) is retrieved
        # here, or asyncio prints "Future exception was never retrieved" (scripts/stress.py on PostgreSQL).
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        acquisition.orphaned = True
        with lock:
            state["orphaned"] = True
            finished = state["finished"]
        if finished:
            start_thread(acquisition.abandon, "gcl-give-back", daemon=False)
        raise


async def _wait_readable(fd: int, seconds: float) -> bool:
    """Sleep until *fd* is readable or *seconds* pass (no ``wait_for``: on 3.11 it can swallow a cancel)."""
    loop = asyncio.get_running_loop()
    woken = loop.create_future()

    def wake(readable: bool) -> None:
        if not woken.done():
            woken.set_result(readable)

    loop.add_reader(fd, wake, True)
    timer = loop.call_later(seconds, wake, False)
    try:
        return bool(await woken)
    finally:
        timer.cancel()
        loop.remove_reader(fd)


async def acquire_slots(
    backend: Backend,
    request: Request,
    timeout_seconds: float | None,
    max_retries: int | None,
    acquisition: Acquisition | None = None,
) -> Granted:
    """The async twin of :func:`gcl_local.sync.acquire_slots`: the same steps, slept on the event loop."""
    start = time.monotonic()
    acquisition = acquisition or Acquisition(backend, request)
    if _waiting.may_wait(timeout_seconds, max_retries):
        _shell.registration(backend)
        channel_name: str | None = backend.new_channel_name()
    else:
        channel_name = None
    channel: Channel | None = None
    try:
        outcome = await _off_the_loop(
            acquisition,
            lambda blocking: acquisition.transact(_admission.attempt, request, channel_name, blocking=blocking),
        )
        if isinstance(outcome, Granted):
            return outcome
        if outcome.ticket is None or channel_name is None:
            raise _waiting.timeout_error(request, timeout_seconds, max_retries, waited=time.monotonic() - start)
        # The channel is made after the ticket (it is this wait's own): the policy starts with a look
        # for what was sent before it existed. Reads never wait for the write lock.
        channel = backend.open_channel(channel_name)
        interval = None if max_retries is None else acquisition.retry_interval()
        steps = _waiting.wait(
            request, outcome.ticket, outcome, start=start, timeout_seconds=timeout_seconds, max_retries=max_retries,
            channel_made_late=True, retry_interval=interval,
        )  # fmt: skip
        answer: Any = None
        while True:
            try:
                step = steps.send(answer)
            except StopIteration as done:
                served: Granted = done.value
                return acquisition.served(served)
            if step is _waiting.LOOK:
                answer = await _off_the_loop(acquisition, acquisition.look)
            elif step is _waiting.PROBE:
                answer = acquisition.probe()
            else:
                assert isinstance(step, _waiting.Sleep)
                answer = channel.drain() if await _wait_readable(channel.fileno(), step.seconds) else b""
    except BaseException as exc:
        keep = isinstance(exc, AcquireConcurrencySlotTimeoutError)
        late = await _in_thread(acquisition, functools.partial(acquisition.abandon, keep_late=keep))
        if late is not None:
            return late  # granted at the last moment of a timeout: take it
        raise
    finally:
        if channel is not None:
            channel.close()


@contextlib.asynccontextmanager
async def concurrency(
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
) -> AsyncIterator[Lease]:
    """Hold slots for the duration of an ``async with`` block; see :func:`gcl_local.sync.concurrency`."""
    backend, request = _shell.prepare(
        db, names, occupy, "concurrency", timeout_seconds=timeout_seconds, max_retries=max_retries, strict=strict,
        lease_duration=lease_duration, holder=holder,
    )  # fmt: skip
    raising = strict if raise_on_lease_renewal_failure is None else bool(raise_on_lease_renewal_failure)
    acquisition = Acquisition(backend, request)
    renewal: Renewal | None = None
    try:  # from before the first transaction: a cancellation must not strand the slots in a live process
        granted = await acquire_slots(backend, request, timeout_seconds, max_retries, acquisition)
        lease = granted.lease
        assert lease is not None
        _shell.warn_missing(granted)
        if lease.token is None:
            yield lease
            return
        # The process's renewal thread renews it, as for the sync shell; a lost lease cancels this task.
        renewal = Renewal(backend, lease.id, request.lease_duration, raising, _canceller())
        renewer().add(renewal)
        try:
            yield lease
        except asyncio.CancelledError:
            if renewal.failed and raising:
                raise LeaseRenewalError(renewal_failed_message(lease.id, True)) from None
            raise
        finally:
            renewal.cancel()
    finally:
        if acquisition.lease_id is not None:
            lost = renewal is not None and renewal.failed  # (see Acquisition.release_lost)
            await _off_the_loop(acquisition, acquisition.release_lost if lost else acquisition.release)


def _canceller() -> Callable[[], None]:
    """Cancel the calling task from another thread (the renewal thread), if its loop still runs."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def cancel() -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to stop
            loop.call_soon_threadsafe(task.cancel, "lease renewal failed")

    return cancel


async def rate_limit(
    names: str | Iterable[str],
    occupy: int = 1,
    timeout_seconds: float | None = None,
    strict: bool = False,
    *,
    db: DbArg = None,
) -> None:
    """Take rate-limit slots, waiting without blocking the loop; see :func:`gcl_local.sync.rate_limit`."""
    backend, request = _shell.prepare(db, names, occupy, "rate", timeout_seconds=timeout_seconds, strict=strict)
    _shell.warn_missing(await acquire_slots(backend, request, timeout_seconds, None))


# As from prefect.concurrency.asyncio: code that catches these needs only its import changed.
__all__ = [
    "AcquireConcurrencySlotTimeoutError",
    "ConcurrencySlotAcquisitionError",
    "acquire_slots",
    "concurrency",
    "rate_limit",
]
