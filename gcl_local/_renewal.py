"""Lease renewal for the sync shell: one daemon thread per process renews every held lease.

A lease is renewed every 0.75 x its duration, never right after it was acquired (that would be a
wasted write). A failed renewal is retried twice, about 1 s and 2 s later; after that (or at once
when the lease is gone) the failure handler runs: with ``raise_on_lease_renewal_failure`` it
raises :class:`LeaseRenewalError` in the thread that holds the block, as Prefect cancels it (an
exception injected into a thread takes effect at its next bytecode, not inside a blocking call).
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time

from . import _core, _log
from ._errors import GclError, LeaseNotFoundError, LeaseRenewalError
from ._store import Store

RENEWAL_FRACTION = 0.75
RETRY_DELAYS = (1.0, 2.0)


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

    def __init__(self, store: Store, lease_id: str, duration: float, raise_on_failure: bool) -> None:
        self.store = store
        self.lease_id = lease_id
        self.duration = duration
        self.raise_on_failure = raise_on_failure
        self.thread_id = threading.get_ident()
        self.cancelled = False
        self.failed = False
        self.failures = 0

    def cancel(self) -> None:
        self.cancelled = True

    def renew_once(self) -> float | None:
        """Renew; return the delay until the next try, or None when done with this lease."""
        if self.cancelled:
            return None
        try:
            _core.renewed(self.store, self.lease_id, self.duration)
        except GclError as exc:
            self.failures += 1
            if not isinstance(exc, LeaseNotFoundError) and self.failures <= len(RETRY_DELAYS):
                _log.debug("renewal of lease %s failed (%s); retrying", self.lease_id, exc)
                return RETRY_DELAYS[self.failures - 1] * (0.75 + 0.55 * _log.jitter())
            self._fail()
            return None
        self.failures = 0
        return RENEWAL_FRACTION * self.duration

    def _fail(self) -> None:
        if self.cancelled:
            return
        self.failed = True
        message = renewal_failed_message(self.lease_id, self.raise_on_failure)
        if not self.raise_on_failure:
            _log.warning(message)
            return
        _log.error(message)
        import ctypes  # only here: its import is slow and most processes never need it

        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id), ctypes.py_object(LeaseRenewalError))


class Renewer:
    """The process's renewal thread and its schedule (a heap; released leases are dropped lazily)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._heap: list[tuple[float, int, Renewal]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._cancelled = 0

    def add(self, renewal: Renewal) -> None:
        self._schedule(renewal, RENEWAL_FRACTION * renewal.duration)

    def cancel(self, renewal: Renewal) -> None:
        renewal.cancel()
        with self._wake:
            self._cancelled += 1
            if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
                self._heap = [entry for entry in self._heap if not entry[2].cancelled]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def _schedule(self, renewal: Renewal, delay: float) -> None:
        with self._wake:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._order), renewal))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="gcl-lease-renewal", daemon=True)
                self._thread.start()
            if self._heap[0][2] is renewal:
                self._wake.notify()  # only an earlier deadline needs the thread to look again

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._wake.wait(timeout)
                _, _, renewal = heapq.heappop(self._heap)
                if renewal.cancelled:
                    self._cancelled = max(0, self._cancelled - 1)
                    continue
            delay = renewal.renew_once()
            if delay is not None:
                self._schedule(renewal, delay)


_renewer: Renewer | None = None
_renewer_lock = threading.Lock()


def renewer() -> Renewer:
    global _renewer
    with _renewer_lock:
        if _renewer is None or _renewer.pid != os.getpid():
            _renewer = Renewer()  # after fork() the parent's thread does not exist here
        return _renewer


__all__ = ["RENEWAL_FRACTION", "Renewal", "Renewer", "renewal_failed_message", "renewer"]
