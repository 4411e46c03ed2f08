"""Async API, as ``prefect.concurrency.asyncio``: ``concurrency()`` and ``rate_limit()``.

The event loop is never blocked for longer than one short transaction: each transaction is tried
without waiting for SQLite's write lock, and only when that lock is busy does it run in a worker
thread. A waiter sleeps on its pipe through ``loop.add_reader``, in the same queue as sync waiters.

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
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

from . import _core, _log, _renewal, _shell
from ._core import Denied, Granted, Request
from ._errors import AcquireConcurrencySlotTimeoutError, GclError, LeaseNotFoundError, LeaseRenewalError
from ._model import DEFAULT_LEASE_SECONDS, Lease
from ._renewal import renewal_failed_message
from ._store import Store, WouldBlock, get_store
from .sync import DbArg

T = TypeVar("T")


async def _transact(store: Store, fn: Callable[..., T], *args: object) -> T:
    try:
        return _core.transact(store, fn, *args, blocking=False)
    except WouldBlock:
        return await asyncio.to_thread(_core.transact, store, fn, *args)


async def _attempt(store: Store, request: Request, pipe_name: str | None) -> _core.Outcome:
    """The first attempt; when it must run in a thread and we are cancelled meanwhile, undo what it did.

    A thread cannot be stopped: whatever its transaction commits (a lease, a ticket) would belong to
    nobody, so whoever of the thread and the cancelled task comes second gives it back.
    """
    try:
        return _core.transact(store, _core.attempt, request, pipe_name, blocking=False)
    except WouldBlock:
        pass
    lock = threading.Lock()
    state: dict[str, Any] = {"abandoned": False, "outcome": None}

    def work() -> _core.Outcome:
        outcome = _core.transact(store, _core.attempt, request, pipe_name)
        with lock:
            abandoned = state["abandoned"]
            state["outcome"] = outcome
        if abandoned:
            _shell.give_back(store, outcome, request.kind)
        return outcome

    future = asyncio.get_running_loop().run_in_executor(None, work)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with lock:
            state["abandoned"] = True
            finished = state["outcome"]
        if finished is not None:
            threading.Thread(target=_shell.give_back, args=(store, finished, request.kind), name="gcl-undo").start()
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
    store: Store, request: Request, timeout_seconds: float | None, max_retries: int | None
) -> Granted:
    """The async twin of :func:`gcl_local.sync.acquire_slots`."""
    start = time.monotonic()
    may_wait = timeout_seconds != 0 and max_retries != 0
    pipe_name = _shell.token_of(store).new_pipe_name() if may_wait else None
    outcome = await _attempt(store, request, pipe_name)
    if isinstance(outcome, Granted):
        return outcome
    if outcome.ticket is None or pipe_name is None:
        raise _shell.timeout_error(request, timeout_seconds, max_retries)
    deadline = _shell.deadline_of(timeout_seconds, start)
    queue = _shell.Queued(store, request, outcome.ticket, pipe_name)
    try:
        outcome = queue.open_pipe() or outcome  # reads never wait for the write lock
        while isinstance(outcome, Denied):
            left = _shell.remaining(deadline, time.monotonic())
            if left == 0:
                raise _shell.timeout_error(request, timeout_seconds)
            sleep, moment = queue.next_sleep(outcome, left)
            assert queue.pipe is not None
            data = queue.pipe.drain() if await _wait_readable(queue.pipe.fd, sleep) else b""
            looked, counted = await _after_wake(queue, data, moment)
            outcome = looked or outcome
            if queue.counts_as_attempt(counted, outcome, max_retries):
                raise _shell.timeout_error(request, timeout_seconds)
        queue.ticket = None
        return outcome
    except BaseException as exc:
        # Leaving (and giving back a grant that came meanwhile) runs in a thread that finishes even
        # if we are cancelled again while we wait for it.
        keep = isinstance(exc, AcquireConcurrencySlotTimeoutError)
        late = await asyncio.shield(asyncio.to_thread(functools.partial(queue.leave, keep_late=keep)))
        if late is not None:
            return late  # granted at the last moment of a timeout: take it
        raise
    finally:
        queue.close()


async def _after_wake(queue: _shell.Queued, data: bytes, moment: bool) -> tuple[_core.Outcome | None, bool]:
    """:meth:`Queued.after_wake`, with its write transactions kept off the event loop when busy."""
    granted, poked = queue.woken(data)
    if granted is not None:
        return granted, False
    if not (poked or moment):
        if data:
            return None, False
        found = queue.probe()
        if isinstance(found, Granted):
            return found, False
        if not found:
            return None, False
    return await _transact(queue.store, _core.attempt_ticket, queue.ticket, queue.request.kind), poked or moment


async def _renew_forever(store: Store, lease_id: str, duration: float, raising: bool, owner: asyncio.Task[Any]) -> None:
    while True:
        await asyncio.sleep(_renewal.RENEWAL_FRACTION * duration)
        for delay in (*_renewal.RETRY_DELAYS, None):
            try:
                await asyncio.to_thread(_core.renewed, store, lease_id, duration)
                break
            except LeaseNotFoundError:
                delay = None
            except GclError:
                pass
            if delay is None:
                message = renewal_failed_message(lease_id, raising)
                if raising:
                    _log.error(message)
                    owner.cancel(msg="lease renewal failed")
                else:
                    _log.warning(message)
                return
            await asyncio.sleep(delay)


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
    store = get_store(db)
    request = _shell.make_request(
        store, names, occupy, "concurrency", strict=strict, lease_duration=lease_duration, holder=holder
    )
    _shell.check_wait_args(timeout_seconds, max_retries)
    raising = strict if raise_on_lease_renewal_failure is None else bool(raise_on_lease_renewal_failure)
    granted = await acquire_slots(store, request, timeout_seconds, max_retries)
    lease = granted.lease
    assert lease is not None
    try:  # from the first moment: a cancellation must not strand the slots in a live process
        _shell.warn_missing(store, granted)
        if lease.token is None:
            yield lease
            return
        owner = asyncio.current_task()
        assert owner is not None
        renewing = asyncio.create_task(_renew_forever(store, lease.id, request.lease_duration, raising, owner))
        try:
            yield lease
        except asyncio.CancelledError:
            if renewing.done() and not renewing.cancelled():
                raise LeaseRenewalError(renewal_failed_message(lease.id, True)) from None
            raise
        finally:
            renewing.cancel()
    finally:
        if lease.token is not None:
            await asyncio.shield(_transact(store, _core.release, lease.id))


async def rate_limit(
    names: str | Iterable[str],
    occupy: int = 1,
    timeout_seconds: float | None = None,
    strict: bool = False,
    *,
    db: DbArg = None,
) -> None:
    """Take rate-limit slots, waiting without blocking the loop; see :func:`gcl_local.sync.rate_limit`."""
    store = get_store(db)
    request = _shell.make_request(store, names, occupy, "rate", strict=strict)
    _shell.check_wait_args(timeout_seconds, None)
    _shell.warn_missing(store, await acquire_slots(store, request, timeout_seconds, None))


__all__ = ["acquire_slots", "concurrency", "rate_limit"]
