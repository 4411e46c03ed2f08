"""The one waiting policy of the sync and async shells: when a waiter wakes, and what it does then.

A wait is a generator of steps. It never sleeps and does no I/O: it yields :class:`Sleep` (the shell
sleeps on the waiter's channel and sends back what it held), :data:`LOOK` (a real attempt, one
write transaction; the shell sends back its outcome) or :data:`PROBE` (the safety net's read-only
look; the shell sends back its answer), and returns the grant. Each shell only performs the steps.

Every moment it learns is kept as an absolute moment on the monotonic clock: the caller's deadline,
and the moment a denial names (decay or a lease's expiry could let the request in then). A waiter
wakes at the earliest of those, of a wake-up on its channel, and of the safety net; at a due moment it
makes a real attempt. (Keeping the denial's *relative* delay and comparing it with each fresh
safety-net sleep, as 0.1 did, slept for ever whenever the delay was longer than the safety net.)
"""

from __future__ import annotations

import math
import time

from . import _log, _wire
from ._errors import AcquireConcurrencySlotTimeoutError
from ._request import Denied, Granted, Outcome, Request
from ._stdlib import NamedTuple

TYPE_CHECKING = False  # not typing's: the hot path must not cost the import of typing (see _stdlib)
if TYPE_CHECKING:
    from collections.abc import Callable, Generator
    from typing import Any

SAFETY_NET_SECONDS = 0.5
"""A waiter looks at least this often (jittered by ±20 %), in case a wake-up was lost or a holder died ..."""
FAR_BACK_SAFETY_NET_SECONDS = 2.0
"""... but this often when its last look found two live waiters at least ahead of it: all it watches
there is the one just ahead, whose death blocks nobody (a releaser never grants to the dead). Four
hundred waiters looking every 0.5 s took a quarter of a core from the hand-offs they waited for.
The second in the queue keeps looking every 0.5 s: it is the next head. One that moves up to the
first two between two looks is told so (a ``?`` message from the transaction that moved it)."""
DEFAULT_RETRY_SECONDS = 2.0
"""A retry interval when none was computed: Prefect's Retry-After for a new limit of one slot."""
NOTICE_AFTER_SECONDS = 1.0
"""The CLI says what it waits for once a wait has lasted this long."""


class Sleep(NamedTuple):
    """Sleep on the channel for at most *seconds*; send back what it held (``b""`` if nothing came)."""

    seconds: float


LOOK = "look"
"""Make a real attempt for our ticket (one write transaction); send back its :data:`Outcome`."""
PROBE = "probe"
"""The safety net: a read-only look; send back our grant if one was missed, else whether a look could help."""

Step = Sleep | str
if TYPE_CHECKING:
    Steps = Generator[Step, Any, Granted]


def may_wait(timeout_seconds: float | None, max_retries: int | None) -> bool:
    return timeout_seconds != 0 and max_retries != 0


ROUNDING = 1e-9
"""Seconds by which a wake-up may miss the moment it was set for, in floating point alone: ``now + (t -
now)`` need not be ``t`` (the property test of ``wait`` found 5.6e-17 s short, and another sleep)."""


def deadline_of(timeout_seconds: float | None, start: float) -> float | None:
    if timeout_seconds is None or math.isinf(timeout_seconds):
        return None
    return start + timeout_seconds


def timeout_error(
    request: Request, timeout_seconds: float | None, max_retries: int | None = None, *, waited: float | None = None
) -> AcquireConcurrencySlotTimeoutError:
    names = list(request.names)
    if timeout_seconds == 0 or max_retries == 0:
        return AcquireConcurrencySlotTimeoutError(
            f"Concurrency slots on {names!r} are busy.", names=request.names, waited=0.0
        )  # waited 0.0: did not wait, found them busy
    if timeout_seconds is None or math.isinf(timeout_seconds):
        return AcquireConcurrencySlotTimeoutError(
            f"Unable to acquire concurrency slots on {names!r}: retries exhausted.", names=request.names, waited=waited
        )
    return AcquireConcurrencySlotTimeoutError(
        f"Attempt to acquire concurrency slots timed out after {timeout_seconds:g} second(s)",
        names=request.names,
        waited=waited,
    )


def due_moment(outcome: Denied, now: float) -> float | None:
    """The absolute moment a denial names (None: only a release or a death can let us in)."""
    return None if outcome.retry_in is None else now + max(0.0, outcome.retry_in)


def wait(
    request: Request,
    ticket: int,
    denied: Denied,
    *,
    start: float,
    timeout_seconds: float | None,
    max_retries: int | None,
    clock: Callable[[], float] = time.monotonic,
    jitter: Callable[[], float] = _log.jitter,
    channel_made_late: bool = False,
    retry_interval: float | None = None,
) -> Steps:
    """Wait in the queue with *ticket* until granted; *denied* is the outcome that queued us.

    ``timeout_seconds`` counts from *start*. ``max_retries=N`` bounds the wait as Prefect's client
    does: it gives up once N retry intervals (*retry_interval*, the Retry-After a Prefect server
    would send) have passed since *start*, after a last real attempt; the wake-ups in between are
    extra attempts that cost no retry. Raises :class:`AcquireConcurrencySlotTimeoutError`; the shell
    then leaves the queue (keeping a grant that came at the last moment). With *channel_made_late*
    (the channel was made after the ticket), a wake-up may have been sent before it existed:
    it starts with the safety net's look.
    """
    deadline = deadline_of(timeout_seconds, start)
    last_look = False  # Prefect's client makes its last attempt after its last Retry-After: so do we
    if max_retries is not None:
        retries_end = start + max_retries * (DEFAULT_RETRY_SECONDS if retry_interval is None else retry_interval)
        if deadline is None or retries_end < deadline:
            deadline, timeout_seconds, last_look = retries_end, None, True  # the error says: retries exhausted
    due = due_moment(denied, clock())
    safety_net = SAFETY_NET_SECONDS
    if channel_made_late:
        found = yield PROBE
        if isinstance(found, Granted):
            return found
        # Not the 2-s watch yet, even if two are ahead: a waiter that the queue moves up is told so only
        # once it has waited long enough to have made its first look (_admission.WATCH_AFTER_SECONDS).
        if found:
            outcome: Outcome = yield LOOK
            if isinstance(outcome, Granted):
                return outcome
            due = due_moment(outcome, clock())
    # The safety net's next look is an absolute moment too, kept across early wake-ups. (Set afresh at
    # every wake-up, it never came for a waiter woken more often than every 0.4 s by messages that were
    # not for it, and a dead holder ahead of it was not reaped: on PostgreSQL every waiter of a process
    # wakes on the session's socket, for every notification to any of them.)
    net_at: float | None = None
    while True:
        now = clock()
        if deadline is not None and now + ROUNDING >= deadline:
            if last_look:
                last_look = False
                outcome = yield LOOK
                if isinstance(outcome, Granted):
                    return outcome
            raise timeout_error(request, timeout_seconds, waited=clock() - start)
        if net_at is None:
            net_at = now + safety_net * (0.8 + 0.4 * jitter())
        wake_at = net_at
        if due is not None:
            wake_at = min(wake_at, due)
        if deadline is not None:
            wake_at = min(wake_at, deadline)
        data = yield Sleep(max(0.0, wake_at - now))
        heard = _wire.read(request, ticket, data) if data else _wire.NOTHING
        if heard.granted is not None:
            return heard.granted
        poked = heard.poked
        now = clock()
        if heard.watch and safety_net > SAFETY_NET_SECONDS:
            # Next in line, or next but one, since a look that found two ahead: watch as the head does.
            safety_net = SAFETY_NET_SECONDS
            net_at = min(net_at, now + safety_net * (0.8 + 0.4 * jitter()))
        # A timer set for a moment may wake a rounding short of it (now + (t - now)): that is the moment
        # (here, at the deadline and at the safety net's moment too).
        if poked or (due is not None and now + ROUNDING >= due):
            outcome = yield LOOK
            if isinstance(outcome, Granted):
                return outcome
            due = due_moment(outcome, clock())
            safety_net = SAFETY_NET_SECONDS  # poked, or due: the head, most likely
            net_at = None  # a look is as good as the safety net's
            continue
        if (deadline is not None and now + ROUNDING >= deadline) or now + ROUNDING < net_at:
            continue  # the deadline, or woken early (messages for an earlier wait or for others): sleep again
        found = yield PROBE  # the safety net: a read, and a write only when it could help
        if isinstance(found, Granted):
            return found
        safety_net = FAR_BACK_SAFETY_NET_SECONDS if found is None else SAFETY_NET_SECONDS
        net_at = None
        if found:
            outcome = yield LOOK  # not a retry: nothing told us to look
            if isinstance(outcome, Granted):
                return outcome
            due = due_moment(outcome, clock())


__all__ = [
    "DEFAULT_RETRY_SECONDS",
    "LOOK",
    "NOTICE_AFTER_SECONDS",
    "PROBE",
    "FAR_BACK_SAFETY_NET_SECONDS",
    "ROUNDING",
    "SAFETY_NET_SECONDS",
    "Sleep",
    "Step",
    "deadline_of",
    "due_moment",
    "may_wait",
    "timeout_error",
    "wait",
]
