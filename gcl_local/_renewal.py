"""Lease renewal for the sync shell: one daemon thread per process renews every held lease.

A lease is renewed every 0.75 x its duration, never right after it was acquired (that would be a
wasted write). A failed renewal is retried twice, about 1 s and 2 s later; after that (or at once
when the lease is gone) the failure handler runs: with ``raise_on_lease_renewal_failure`` it
raises :class:`LeaseRenewalError` in the thread that holds the block, as Prefect cancels it (an
exception injected into a thread takes effect at its next bytecode, not inside a blocking call).

On a server (a backend with ``heartbeat_seconds``), the thread also looks at each lease's registration
every quarter of a heartbeat: once it is lost (a cut link, a restart), the lease is given up unless the
registration is back within a heartbeat, and then proved by a renewal at once.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable

from . import _admission, _log
from ._backend import Backend
from ._errors import GclError, LeaseNotFoundError, LeaseRenewalError
from ._threads import start_thread

RENEWAL_FRACTION = 0.75
RETRY_DELAYS = (1.0, 2.0)
DOUBT_LOOK_SECONDS = 0.1
"""While a lease's registration is in doubt, how often the renewal thread looks whether it is back."""
LOOK_FRACTION = 0.25
"""On a backend with a heartbeat, the renewal thread looks at its leases' registrations this often (a
fraction of the heartbeat): the time it takes to notice a lost one counts against the detection time."""


def renewal_failed_message(lease_id: str, raising: bool) -> str:
    if raising:
        return (
            f"Concurrency lease {lease_id} renewal failed - slots are no longer reserved. "
            "Terminating execution to prevent over-allocation."
        )
    return (
        f"Concurrency lease {lease_id} renewal failed - slots are no longer reserved. "
        "Execution will continue, but concurrency limits may be exceeded."
    )


class Renewal:
    """One held lease the renewer looks after."""

    def __init__(
        self,
        store: Backend,
        lease_id: str,
        duration: float,
        raise_on_failure: bool,
        stop: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.lease_id = lease_id
        self.duration = duration
        self.raise_on_failure = raise_on_failure
        self.thread_id = threading.get_ident()
        self.stop = stop or self._raise_in_holder
        """How a lost lease stops the block: the sync shell raises in its thread, the async one cancels its task."""
        self.cancelled = False
        self.failed = False
        self.failures = 0
        self.due = 0.0
        self.generation = 0
        """Bumped when the renewal is rescheduled out of turn: older entries of it in the heap are stale."""
        self.heartbeat = store.heartbeat_seconds
        self.registration = store.register()[0] if self.heartbeat is not None else None
        self.doubted_since: float | None = None
        """When the renewal thread first saw the registration in doubt (monotonic), until it is back."""

    def doubted(self) -> bool:
        """Whether the registration that keeps this lease may have been lost: prove the lease now."""
        return self.registration is not None and not self.registration.held and not self.failed

    def cancel(self) -> None:
        self.cancelled = True

    def renew_once(self) -> float | None:
        """Renew; return the delay until the next try, or None when done with this lease."""
        if self.cancelled:
            return None
        if self.doubted():
            return self._await_registration()
        if self.doubted_since is not None:  # it is back: prove the lease now (it is gone if reaped meanwhile)
            self.doubted_since = None
            self.failures = 0
        try:
            _admission.renewed(self.store, self.lease_id, self.duration)
        except GclError as exc:
            self.failures += 1
            if not isinstance(exc, LeaseNotFoundError) and self.failures <= len(RETRY_DELAYS):
                _log.debug("renewal of lease %s failed (%s); retrying", self.lease_id, exc)
                return RETRY_DELAYS[self.failures - 1] * (0.75 + 0.55 * _log.jitter())
            self._fail()
            return None
        self.failures = 0
        return RENEWAL_FRACTION * self.duration

    def _await_registration(self) -> float | None:
        """The registration is in doubt (its session was lost: a cut link, a server restart), and the
        server may free the slots soon after (see ``postgres._settings``: with S = 5, 2 s after the client
        noticed). A renewal through the store cannot promise an answer by then: on a cut link it blocks
        for its connection timeout and then retries, 1 s and 2 s later (tests/test_hosts.py caught it:
        the cut-off holder learnt of its loss 9 s after another host had been given its slot). So wait,
        without blocking, for the session to be made again (after a restart the server is back within a
        second) and give the lease up if it is not back within a heartbeat of the moment we saw it lost;
        once it is back, the next renewal proves the lease (gone, if it was reaped meanwhile)."""
        assert self.heartbeat is not None
        now = time.monotonic()
        if self.doubted_since is None:
            self.doubted_since = now
        left = self.doubted_since + self.heartbeat - now
        if left > 0:
            return min(left, DOUBT_LOOK_SECONDS)
        _log.debug("the registration of lease %s was not made again within %gs", self.lease_id, self.heartbeat)
        self._fail()
        return None

    def _fail(self) -> None:
        if self.cancelled:
            return
        self.failed = True
        message = renewal_failed_message(self.lease_id, self.raise_on_failure)
        if not self.raise_on_failure:
            _log.warning(message)
            return
        _log.error(message)
        self.stop()

    def _raise_in_holder(self) -> None:
        import ctypes  # only here: its import is slow and most processes never need it

        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id), ctypes.py_object(LeaseRenewalError))


TICK_SECONDS = 5.0
"""The renewal thread looks at its schedule at least this often; a lease is at least 60 s long. Leases on
a backend with a heartbeat (a server) are looked at every ``LOOK_FRACTION`` of a heartbeat: a lost
registration must be noticed, and the lease given up, before the server gives the slots away."""


class Renewer:
    """The process's renewal thread and its schedule.

    Acquiring and releasing only append to a list and set a flag (no lock, no wake-up: they are on
    every block's path); the thread takes new leases into its heap when it wakes, at least every
    ``TICK_SECONDS``, which is early enough for the shortest lease (renewed 45 s after its start).
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._new: list[Renewal] = []
        self._heap: list[tuple[float, int, int, Renewal]] = []
        self._order = itertools.count()
        self._started = False
        self._start_lock = threading.Lock()
        self._tick = TICK_SECONDS
        self._watched: list[Renewal] = []
        """Renewals whose registration can be lost while the process lives (on a server)."""

    def add(self, renewal: Renewal) -> None:
        renewal.due = time.monotonic() + RENEWAL_FRACTION * renewal.duration
        if renewal.heartbeat is not None:
            self._tick = min(self._tick, renewal.heartbeat * LOOK_FRACTION)
        self._new.append(renewal)  # atomic under the GIL
        if not self._started:
            with self._start_lock:
                if not self._started:
                    start_thread(self._run, "gcl-lease-renewal")
                    self._started = True

    def cancel(self, renewal: Renewal) -> None:
        renewal.cancel()

    def _run(self) -> None:
        import heapq  # only the thread needs it, and a quick gcl run never starts the thread (1 ms)

        while True:
            now = time.monotonic()
            while self._new:
                renewal = self._new.pop()
                if not renewal.cancelled:
                    self._push(renewal)
                    if renewal.heartbeat is not None:
                        self._watched.append(renewal)
            self._watched = [r for r in self._watched if not r.cancelled]
            for renewal in self._watched:
                if renewal.doubted() and renewal.due > now:
                    renewal.due = now  # its session was lost: renew now, and fail if it cannot
                    renewal.generation += 1
                    self._push(renewal)
            while self._heap and (self._heap[0][3].cancelled or self._heap[0][0] <= now):
                _, _, generation, renewal = heapq.heappop(self._heap)
                if renewal.cancelled or generation != renewal.generation:
                    continue
                delay = renewal.renew_once()
                if delay is not None:
                    renewal.due = time.monotonic() + delay
                    self._push(renewal)
            if len(self._heap) > 64:  # forget released leases that are not due yet
                self._heap = [e for e in self._heap if not e[3].cancelled and e[2] == e[3].generation]
                heapq.heapify(self._heap)
            next_due = self._heap[0][0] - time.monotonic() if self._heap else self._tick
            time.sleep(min(self._tick, max(0.0, next_due)))

    def _push(self, renewal: Renewal) -> None:
        import heapq  # (the thread's, as in _run)

        heapq.heappush(self._heap, (renewal.due, next(self._order), renewal.generation, renewal))


_renewer: Renewer | None = None
_renewer_lock = threading.Lock()


def renewer() -> Renewer:
    global _renewer
    with _renewer_lock:
        if _renewer is None or _renewer.pid != os.getpid():
            _renewer = Renewer()  # after fork() the parent's thread does not exist here
        return _renewer


__all__ = [
    "RENEWAL_FRACTION",
    "RETRY_DELAYS",
    "DOUBT_LOOK_SECONDS",
    "LOOK_FRACTION",
    "Renewal",
    "Renewer",
    "TICK_SECONDS",
    "renewal_failed_message",
    "renewer",
]
