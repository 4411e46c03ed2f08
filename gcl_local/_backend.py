"""The seam between the core and a store: what the core asks of a backend, and nothing more.

The core (``_admission``, ``_reaping``, ``_limits``) decides; a backend stores rows, tells the living
from the dead, and carries wake-ups. A backend implements :class:`Backend` and the :class:`Tx` it
hands to the core's work; the core never sees SQL, files, pipes or a driver.

Two backends exist: :mod:`gcl_local.sqlite` (one host: a file, flock-ed tokens, named pipes, the
boot clock) and :mod:`gcl_local.postgres` (many hosts: session advisory locks, LISTEN/NOTIFY, the
server's clock). :func:`open_backend` picks one from the ``db`` value.

Names travel as tuples of names, in the order the caller gave them; moments as :class:`Instant`
readings of the backend's own clock, read once per transaction.
"""

from __future__ import annotations

import os
import threading

from ._clock import Instant
from ._errors import GclError, StoreError
from ._stdlib import NamedTuple, Protocol

TYPE_CHECKING = False  # not typing's: the hot path must not cost the import of typing (see _stdlib)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from contextlib import AbstractContextManager
    from typing import TypeVar

    T = TypeVar("T")

# -- rows --------------------------------------------------------------------------------------------


class LimitRow(NamedTuple):
    name: str
    limit: int
    active: bool
    decay: float
    level: float
    """The level of the decaying bucket at ``level_boot``."""
    level_boot: float
    level_wall: float
    avg_occupancy: float
    created: float
    updated: float


class LeaseRow(NamedTuple):
    token: int
    """The fencing token: given by the backend, never reused, always increasing."""
    secret: str
    names: tuple[str, ...]
    slots: int
    registration: str | None
    """The holder's liveness registration; None when the lease is held by pid (``gcl acquire``)."""
    pid: int | None
    pid_start: int | None
    host: str
    user: str
    label: str
    ticket: int | None
    """The queue ticket it was granted to, if any."""
    duration: float
    acquired_wall: float
    acquired_boot: float
    expires_wall: float
    expires_boot: float


class TicketRow(NamedTuple):
    ticket: int
    """Arrival order: given by the backend, never reused, always increasing."""
    names: tuple[str, ...]
    kind: str
    slots: int
    strict: bool
    duration: float
    registration: str
    """The waiting process's liveness registration."""
    by_pid: bool
    """The lease will be held by pid, not by that registration."""
    channel: str
    """Where the waiter hears its wake-ups (see :meth:`Backend.wake`)."""
    pid: int | None
    pid_start: int | None
    host: str
    user: str
    label: str
    since_wall: float


class QueuePlace(NamedTuple):
    """A ticket in a queue, with what a releaser needs to tell its waiter something."""

    ticket: int
    channel: str
    since_wall: float
    several: bool
    """Whether the ticket is on several names: its place in the queues of the others may change too."""


STATS_COUNTERS = ("acq_cn", "acq_cw", "acq_rn", "acq_rw", "timeouts", "refusals", "reclaimed")
"""Acquisitions by kind (c: concurrency, r: rate) and whether they waited (w) or not (n); timeouts,
refusals of non-blocking attempts, leases reclaimed from the dead."""
WAIT_BUCKET_COUNT = 8
OCCUPANCY_SPAN = 2.0
"""Prefect's moving average of slot occupancy: each sample moves it by ``1 / (OCCUPANCY_SPAN * limit)``
of the difference (about the last ``2 * limit`` samples count)."""


class StatsRow(NamedTuple):
    counters: tuple[int, ...]
    """In the order of :data:`STATS_COUNTERS`."""
    held_seconds: float
    wait_sum: float
    wait_buckets: tuple[int, ...]
    since: float
    """Wall time they were last zeroed; 0: when the limit was created."""


class CorruptRowError(Exception):
    """A row holds values no version of gcl_local writes: something else damaged the store."""


class WouldBlock(GclError):
    """A non-blocking transaction found the write lock taken (internal: the async shell then uses a thread)."""


class LostCommitError(StoreError):
    """The connection was lost while the transaction committed: it may or may not have been committed.

    Whoever runs an idempotent transaction (a release, leaving the queue) runs it again."""


# -- a transaction -------------------------------------------------------------------------------------


class Tx(Protocol):
    """One transaction in progress, and the typed row operations the core may run in it.

    A write transaction is serialised against every other write on the same store (all-or-nothing
    admission over several names, with no deadlock); a read transaction sees one consistent snapshot
    and never writes.
    """

    @property
    def now(self) -> Instant:
        """The backend's clock, read once, after the lock was taken."""

    @property
    def backend(self) -> Backend: ...

    def predates_boot(self) -> bool:
        """Whether the stored moments belong to an earlier boot (and so every holder is gone); a read
        transaction cannot rebase them. Always False where time is not per boot (a server's clock)."""

    def wake_on_commit(self, wakes: Sequence[tuple[str, bytes]]) -> bool:
        """Send these messages with the commit, if the store can (PostgreSQL delivers a NOTIFY at commit,
        and only then). False: the caller sends them once the commit is done (``Backend.wake``)."""

    # limits
    def select_limits(self, names: Sequence[str]) -> list[LimitRow]: ...
    def select_limits_for_acquire(self, names: Sequence[str]) -> list[tuple[LimitRow, int, bool]]:
        """The named limits, each with its held slots and whether anyone waits on it."""

    def select_all_limits(self) -> list[LimitRow]:
        """Every limit, by name."""

    def insert_limit(self, row: LimitRow) -> None: ...
    def update_limit(self, row: LimitRow) -> None:
        """Store every field but ``name`` and ``created``."""

    def set_level(self, name: str, level: float, at: Instant) -> None: ...
    def delete_limit(self, name: str) -> bool:
        """False if there was none. Its leases keep their slots on the name until released."""

    def held_slots(self, name: str) -> int: ...

    # leases
    def insert_lease(self, row: LeaseRow) -> int:
        """Insert (``row.token`` is ignored); return the new fencing token."""

    def select_lease(self, token: int, secret: str) -> LeaseRow | None: ...
    def select_lease_by_ticket(self, ticket: int) -> LeaseRow | None: ...
    def leases_on(self, name: str) -> list[LeaseRow]:
        """By fencing token."""

    def leases_of_holder(self, registration: str) -> list[LeaseRow]: ...
    def pop_lease(self, token: int, secret: str) -> LeaseRow | None:
        """Delete a lease and return it (None if there is none): the release path."""

    def delete_lease(self, lease: LeaseRow) -> None: ...
    def renew_lease(self, lease: LeaseRow, duration: float, now: Instant) -> None: ...
    def set_lease_holder(self, lease: LeaseRow, pid: int, pid_start: int | None, label: str) -> None: ...

    # history
    def record_occupancy(
        self, names: Sequence[str], seconds_per_slot: float, slot_seconds: float, reclaimed: int, unqueued: int
    ) -> bool:
        """On the active limits among *names* with a limit above 0, move ``avg_occupancy`` towards
        *seconds_per_slot* by ``1 / (OCCUPANCY_SPAN * limit)`` of the difference; on every one of
        *names* add *slot_seconds* to the slot-seconds held, *reclaimed* to ``reclaimed``, and
        *unqueued* to ``acq_cn`` and the first wait bucket.
        Return whether anyone waits on one of *names*."""

    def count_acquisition(self, names: Sequence[str], counter: str, bucket: int, waited: float) -> None:
        """Add one to *counter* and to wait bucket *bucket*, and *waited* to the sum of waits, on *names*."""

    def count_failure(self, names: Sequence[str], counter: str) -> None:
        """Add one to *counter* (``timeouts`` or ``refusals``) on the active limits among *names*."""

    def select_stats(self, name: str | None = None) -> dict[str, StatsRow]: ...
    def reset_stats(self, name: str, wall: float) -> bool:
        """Zero a limit's history from *wall* on; False if there is no such limit."""

    # the queue
    def insert_ticket(self, row: TicketRow) -> int:
        """Insert (``row.ticket`` is ignored); return the new ticket."""

    def select_ticket(self, ticket: int) -> TicketRow | None: ...
    def tickets_on(self, names: Sequence[str], after: int = 0, limit: int = -1) -> list[QueuePlace]:
        """Tickets on any of *names* younger than *after*, oldest first, at most *limit* (-1: all); the
        cost follows *limit*, not the length of the queue."""

    def ticket_ahead(self, names: Sequence[str], ticket: int) -> int | None:
        """The youngest ticket older than *ticket* on any of *names*."""

    def count_older_tickets(self, names: Sequence[str], ticket: int) -> int: ...
    def oldest_ticket_on(self, names: Sequence[str]) -> TicketRow | None: ...
    def any_ticket_on(self, names: Sequence[str]) -> bool: ...
    def tickets_of_holder(self, registration: str) -> list[TicketRow]: ...
    def waiting_on(self, name: str) -> list[TicketRow]:
        """By ticket."""

    def delete_ticket(self, ticket: TicketRow) -> None: ...

    # audits (tests, the soak): every row, dead or alive
    def count_leases(self) -> int: ...
    def count_tickets(self) -> int: ...

    # limits as code
    def applied_limits(self) -> dict[str, float]:
        """Name -> creation time of each limit that ``gcl apply`` created."""

    def mark_applied(self, name: str, created: float) -> None: ...
    def unmark_applied(self, name: str) -> None: ...


# -- liveness and wake-ups -------------------------------------------------------------------------------


class Registration(Protocol):
    """This process's liveness registration on a backend: alive exactly as long as the process (and
    any child it was handed to) lives."""

    @property
    def name(self) -> str:
        """What leases and tickets record as ``registration``."""

    @property
    def pid(self) -> int: ...

    def inheritable(self) -> int:
        """A descriptor that keeps the registration alive in a child process that inherits it."""

    @property
    def held(self) -> bool:
        """False while the registration may have been lost (its session ended: a server restart, a cut
        link); the holder's leases must then prove themselves at once (see ``_renewal``)."""


class Channel(Protocol):
    """Where one waiter hears its wake-ups."""

    @property
    def name(self) -> str:
        """What a ticket records, for :meth:`Backend.wake`."""

    def fileno(self) -> int:
        """Readable when a wake-up may have come (-1 once closed)."""

    def drain(self) -> bytes:
        """The messages that came, each ending in a newline (empty if none)."""

    def close(self) -> None: ...


class Backend(Protocol):
    """A store: transactions over its rows, liveness and wake-ups."""

    @property
    def description(self) -> str:
        """What messages call the store (a path, or a URL without its password)."""

    @property
    def max_message(self) -> int:
        """The longest wake-up message :meth:`wake` carries whole."""

    @property
    def heartbeat_seconds(self) -> float | None:
        """How long a holder whose registration was lost (:attr:`Registration.held` False) waits for it
        to be made again before it counts its leases as lost; it looks at it every quarter of that
        (None: while the process lives, it is held: one host's kernel says so). A server frees a lost
        holder's slots after a detection time that is longer than this plus the client's own timeout,
        so a holder learns of the loss first."""

    def write(self, work: Callable[[Tx], T], *, durable: bool = False, blocking: bool = True) -> T:
        """Run ``work(tx)`` in one short write transaction and commit it. *work* may run more than once
        (a server that restarts rolls a transaction back, and the backend runs it again): only its last
        run, the one committed, counts.

        *durable*: the commit survives a crash of the machine (admin writes; on a server, every
        grant). :raises WouldBlock: if not *blocking* and another writer holds the lock.
        """

    def read(self) -> AbstractContextManager[Tx]:
        """A consistent snapshot that writes nothing and takes no write lock.

        :raises NoStateFileError: where reading would have to create the store.
        """

    def close(self) -> None:
        """Close this thread's connection."""

    # liveness
    def register(self) -> tuple[Registration, bool]:
        """This process's registration (made on first use), and whether it was just made."""

    def alive(self, token: str) -> bool | None:
        """Whether the process registered as *token* lives; None when it cannot be told."""

    def pid_alive(self, pid: int, pid_start: int | None, host: str) -> bool | None:
        """Whether process *pid* (started at *pid_start*) on *host* lives; None when it cannot be told
        from here (another host)."""

    def sweep_due(self) -> bool:
        """Whether a newcomer should sweep the registrations now (and it says someone did)."""

    def census(self) -> list[str]:
        """The registrations a sweep should check (those of processes that may have died)."""

    def tidy(self) -> None:
        """Remove leftovers that no registration names (best effort, after a sweep)."""

    def forget(self, tokens: set[str]) -> None:
        """After a commit: the registrations of *tokens* are dead or unused; remove what is left of them."""

    # wake-ups
    def kept_channel(self) -> Channel:
        """The calling thread's channel, kept across its waits."""

    def new_channel_name(self) -> str:
        """A fresh name for :meth:`open_channel` (an async wait names its channel before it makes it)."""

    def open_channel(self, name: str) -> Channel: ...

    def wake(self, wakes: Sequence[tuple[str, bytes]]) -> None:
        """After a commit: send each message to its channel; a channel that is gone is no error."""


# -- choosing a backend ------------------------------------------------------------------------------------

POSTGRES_SCHEMES = ("postgresql://", "postgres://")

DbArg = str | os.PathLike[str] | Backend | None
"""What ``db=`` accepts: a path (or None: ``$GCL_DB``, else the default file), a PostgreSQL URL, or a backend."""

_backends: dict[tuple[object, ...], Backend] = {}
_backends_lock = threading.Lock()


def is_postgres(db: object) -> bool:
    return isinstance(db, str) and db.startswith(POSTGRES_SCHEMES)


def open_backend(db: DbArg) -> Backend:
    """The process-wide backend of *db* (*db* itself when it already is one).

    A PostgreSQL URL (``postgresql://`` or ``postgres://``, also from ``$GCL_DB``) imports the driver;
    anything else is a SQLite file, and imports nothing more.
    """
    if db is not None and not isinstance(db, (str, os.PathLike)):
        return db
    chosen = os.environ.get("GCL_DB") or None if db is None else db
    if is_postgres(chosen):
        env = os.environ  # what the URL leaves out comes from there: key on it too
        key: tuple[object, ...] = (chosen, env.get("GCL_PG_SCHEMA"), env.get("GCL_PG_DETECT_SECONDS"), os.getpid())
        backend = _backends.get(key)
        if backend is None:
            from ._shell import SignalsHeldBack

            with SignalsHeldBack():  # an interrupt halfway through importing the driver breaks it for good
                from .postgres import PostgresBackend

            with _backends_lock:
                backend = _backends.get(key) or PostgresBackend(str(chosen))
                _backends[key] = backend
        return backend
    from .sqlite import get_store

    return get_store(db)


def _forget_after_fork() -> None:
    _backends.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


__all__ = [
    "OCCUPANCY_SPAN",
    "STATS_COUNTERS",
    "WAIT_BUCKET_COUNT",
    "Backend",
    "Channel",
    "CorruptRowError",
    "DbArg",
    "LeaseRow",
    "LimitRow",
    "LostCommitError",
    "Registration",
    "StatsRow",
    "TicketRow",
    "Tx",
    "WouldBlock",
    "is_postgres",
    "open_backend",
    "POSTGRES_SCHEMES",
    "QueuePlace",
]
