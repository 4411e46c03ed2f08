"""The core: one attempt, one short transaction, never a sleep.

Every function here runs inside a ``BEGIN IMMEDIATE`` transaction that :func:`transact` opens,
and returns a value. Waiting belongs to the sync and async shells. Functions that free capacity
(release, reaping a dead holder, a waiter leaving, an admin change) serve the queue in the same
transaction: the oldest waiters whose requests now fit are granted their slots right there (direct
hand-off), and their pipes are written after the commit, so a woken waiter has nothing to write.

Occupancy of a limit = slots of its leases + the level of its decaying bucket. A request fits
when occupancy + occupy <= limit on every active named limit, and it is admitted only when no older
waiting ticket shares one of its active names (first come, first served).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal, NamedTuple, TypeVar

from . import _log, _sql, _tokens
from ._clock import Instant
from ._errors import (
    ConcurrencySlotAcquisitionError,
    LeaseNotFoundError,
    LimitExistsError,
    LimitNotFoundError,
)
from ._model import DEFAULT_AVG_OCCUPANCY, Lease, Limit, Stats, Waiter, utc, wait_bucket
from ._sql import LeaseRow, LimitRow, TicketRow
from ._store import Store, Tx

EPSILON = 1e-9
"""Slack for float rounding in the bucket level: 2.9999999999 slots fit a limit of 3."""
MIN_OCCUPANCY_SAMPLE = 0.1

Kind = Literal["concurrency", "rate"]


class Holder(NamedTuple):
    """Who asks: the process identity recorded on its leases and tickets."""

    token: str | None
    """The liveness token's name; None when the holder is known only by pid (``gcl acquire``)."""
    pid: int | None
    pid_start: int | None
    host: str
    user: str
    label: str


class Request(NamedTuple):
    names: tuple[str, ...]
    occupy: int
    kind: Kind
    strict: bool
    lease_duration: float
    holder: Holder
    waiter_token: str | None = None
    """The liveness token of the process that waits (it differs from a pid-held lease's holder)."""


class Granted(NamedTuple):
    lease: Lease | None
    """The lease (``token`` None when no slot was taken); None for a rate limit."""
    missing: tuple[str, ...] = ()


class Denied(NamedTuple):
    retry_in: float | None
    """Seconds until decay or an expiry could let the request in; None when only a release can."""
    ticket: int | None = None
    """The queue ticket the request now waits with, if it was queued."""


Outcome = Granted | Denied


GRANT_PREFIX = b"G"
POKE_PREFIX = b"!"
_FIELD_SEP = "\x1e"
_MAX_MESSAGE = 4000  # below PIPE_BUF: one write, never interleaved with another's
# A waiter's pipe may outlive one wait (the sync shell keeps one per thread), so every message
# names the ticket it is meant for: "!<ticket>" (look again) or "G<ticket>" + the grant's fields.


class Effects:
    """What a transaction leaves to do after its commit: waiters to wake, files to remove."""

    __slots__ = ("dead_tokens", "wakes")

    def __init__(self) -> None:
        self.wakes: list[tuple[str, bytes]] = []
        self.dead_tokens: set[str] = set()

    def poke(self, pipe: str, ticket: int) -> None:
        self.wakes.append((pipe, POKE_PREFIX + b"%d\n" % ticket))

    def hand_over(self, pipe: str, ticket: int, granted: Granted) -> None:
        """Tell a waiter it was served, with what it needs to know, so it has nothing left to read or write.

        One line of fields joined by RS (names by US): names never hold control characters.
        """
        lease = granted.lease
        fields = [str(ticket), _sql.NAME_SEP.join(granted.missing)]
        if lease is not None:
            fields += [
                lease.id,
                str(lease.token),
                _sql.NAME_SEP.join(lease.names),
                repr(lease.acquired.timestamp()) if lease.acquired else "",
                repr(lease.expires.timestamp()) if lease.expires else "",
            ]
        message = GRANT_PREFIX + _FIELD_SEP.join(fields).encode() + b"\n"
        self.wakes.append((pipe, message if len(message) <= _MAX_MESSAGE else POKE_PREFIX + b"%d\n" % ticket))


def _split_names(text: str) -> tuple[str, ...]:
    return tuple(text.split(_sql.NAME_SEP)) if text else ()


def read_wake(request: Request, ticket: int, data: bytes) -> tuple[Granted | None, bool]:
    """What our pipe held for *ticket*: the grant if a releaser served us, and whether we were poked.

    Messages for an earlier ticket of ours (a wake-up that came after that wait ended) are ignored.
    """
    poked = False
    mine = b"%d" % ticket
    for line in data.split(b"\n"):
        if line.startswith(POKE_PREFIX):
            poked = poked or line[len(POKE_PREFIX) :] == mine
            continue
        if not line.startswith(GRANT_PREFIX):
            continue
        fields = line[len(GRANT_PREFIX) :].decode().split(_FIELD_SEP)
        if fields[0] != str(ticket):
            continue
        missing = _split_names(fields[1])
        if request.kind == "rate" or len(fields) < 7:
            return Granted(None if request.kind == "rate" else _no_slot_lease(request, None), missing), True
        lease_id, token, names, acquired, expires = fields[2:7]
        holder = request.holder
        lease = Lease(id=lease_id, token=int(token) if token != "None" else None, names=_split_names(names),
                      slots=request.occupy, pid=holder.pid, host=holder.host, user=holder.user, label=holder.label,
                      acquired=utc(float(acquired)) if acquired else None,
                      expires=utc(float(expires)) if expires else None,
                      held_by="token" if holder.token is not None else "pid")  # fmt: skip
        return Granted(lease, missing), True
    return None, poked


def _no_slot_lease(request: Request, wall: float | None) -> Lease:
    """What a request gets when every name it gave is inactive or missing: no slot, no token."""
    holder = request.holder
    return Lease(id="", token=None, names=(), slots=request.occupy, pid=holder.pid, host=holder.host,
                 user=holder.user, label=holder.label, acquired=None if wall is None else utc(wall))  # fmt: skip


T = TypeVar("T")


def transact(store: Store, fn: Callable[..., T], *args: object, blocking: bool = True, durable: bool = False) -> T:
    """Run ``fn(tx, effects, *args)`` in one write transaction, then wake whom it served."""
    effects = Effects()
    result = store.write(lambda tx: fn(tx, effects, *args), blocking=blocking, durable=durable)
    for pipe, message in effects.wakes:
        _tokens.wake(store.run_dir, pipe, message)
    for name in effects.dead_tokens:
        _tokens.remove_token_files(store.run_dir, name)
    return result


# -- liveness ------------------------------------------------------------------------------------


class _Liveness:
    """Liveness answers for one transaction: each token is checked at most once."""

    def __init__(self, tx: Tx) -> None:
        self.tx = tx
        self.answers: dict[str, bool | None] = {}

    def token(self, name: str) -> bool | None:
        if name not in self.answers:
            self.answers[name] = _tokens.token_alive(self.tx.store.run_dir, name)
        return self.answers[name]

    def lease_gone(self, lease: LeaseRow) -> bool:
        """A lease is gone when its holder died; expiry decides only where liveness cannot be checked."""
        if lease.holder_token is not None:
            alive = self.token(lease.holder_token)
            if alive is not None:
                return not alive
        elif lease.pid is not None and not _tokens.pid_alive(lease.pid, lease.pid_start):
            return True
        return lease.expires_boot <= self.tx.now.boot


def _drop_holder(tx: Tx, effects: Effects, token: str, freed: set[str]) -> None:
    """Remove every lease and ticket of a dead process."""
    conn = tx.conn
    for lease in _sql.leases_of_holder(conn, token):
        freed.update(_drop_lease(tx, lease))
    for ticket in _sql.tickets_of_holder(conn, token):
        freed.update(ticket.name_list)
        _sql.delete_ticket(conn, ticket)
    effects.dead_tokens.add(token)
    _log.debug("reaped the leases and tickets of dead holder %s", token)


def _drop_lease(tx: Tx, lease: LeaseRow) -> list[str]:
    """Reclaim a lease (its holder died, or it expired), feeding its occupancy time to its limits'
    averages and history; return its names."""
    _sql.delete_lease(tx.conn, lease)
    _record_occupancy(tx, lease, reclaimed=True)
    return lease.name_list


def _record_occupancy(tx: Tx, lease: LeaseRow, *, reclaimed: bool = False) -> bool:
    """Feed a lease's occupancy to its limits' averages and history; True if anyone waits on them."""
    names = lease.name_list
    if not names:
        return False
    occupied = max(0.0, tx.now.boot - lease.acquired_boot)
    per_slot = max(occupied / max(lease.slots, 1), MIN_OCCUPANCY_SAMPLE)
    unqueued = int(lease.ticket is None)  # its acquisition is counted now (see _count_acquisition)
    return _sql.record_occupancy(tx.conn, names, per_slot, occupied * lease.slots, int(reclaimed), unqueued)


def _reap_leases(tx: Tx, effects: Effects, names: Iterable[str], live: _Liveness, freed: set[str]) -> bool:
    """Free the leases on *names* whose holders died or expired; True if any was freed."""
    conn = tx.conn
    reaped = False
    for name in names:
        for lease in _sql.leases_on(conn, name):
            if not live.lease_gone(lease):
                continue
            reaped = True
            if lease.holder_token is not None and live.token(lease.holder_token) is False:
                _drop_holder(tx, effects, lease.holder_token, freed)
            else:
                freed.update(_drop_lease(tx, lease))
    return reaped


def _reap_tickets(tx: Tx, effects: Effects, tickets: Iterable[int], live: _Liveness, freed: set[str]) -> bool:
    conn = tx.conn
    reaped = False
    for number in tickets:
        ticket = _sql.select_ticket(conn, number)
        if ticket is not None and live.token(ticket.holder_token) is False:
            _drop_holder(tx, effects, ticket.holder_token, freed)  # its tickets, this one included
            reaped = True
    return reaped


# -- the admission test ----------------------------------------------------------------------------


def _active_limits(tx: Tx, request: Request) -> tuple[list[LimitRow], tuple[str, ...]]:
    return _check_request(request, _sql.select_limits(tx.conn, request.names))


def _check_request(request: Request, rows: list[LimitRow]) -> tuple[list[LimitRow], tuple[str, ...]]:
    """The active named limits and the missing names; raise when the request can never be served."""
    found = {r.name for r in rows}
    missing = tuple(n for n in request.names if n not in found)
    if missing and request.strict:
        raise ConcurrencySlotAcquisitionError(
            f"Concurrency limits {list(missing)!r} must be created before acquiring slots."
        )
    active = [r for r in rows if r.active]
    for row in active:
        if request.occupy > row.limit:
            raise ConcurrencySlotAcquisitionError(
                f"Unable to acquire concurrency slots on {list(request.names)!r}: slots requested "
                f"({request.occupy}) is greater than the limit of {row.name!r} ({row.limit})."
            )
    if request.kind == "rate":
        no_decay = [r.name for r in active if r.decay <= 0]
        if no_decay:
            raise ConcurrencySlotAcquisitionError(
                "Only concurrency limits with slot decay can be used for rate limiting. The following "
                f"limits do not have a decay configured: {','.join(repr(n) for n in no_decay)}"
            )
    return active, missing


def _shortfall(tx: Tx, row: LimitRow, occupy: int) -> float:
    """How many slots *occupy* lacks on *row* now (<= 0: it fits)."""
    return _sql.held_slots(tx.conn, row.name) + row.level_at(tx.now.boot) + occupy - row.limit


def _short_limits(tx: Tx, active: list[LimitRow], occupy: int) -> list[LimitRow]:
    return [row for row in active if _shortfall(tx, row, occupy) > EPSILON]


def _retry_in(tx: Tx, short: list[LimitRow], occupy: int) -> float | None:
    """Seconds until decay or a lease expiry could make room on every short limit (None: a release must)."""
    waits = []
    for row in short:
        lacking = _shortfall(tx, row, occupy)
        level = row.level_at(tx.now.boot)
        if row.decay > 0 and lacking <= level + EPSILON:
            waits.append(lacking / row.decay)
            continue
        expiries = [
            lease.expires_boot - tx.now.boot
            for lease in _sql.leases_on(tx.conn, row.name)
            if lease.holder_token is None  # a token holder keeps its lease while it lives
        ]
        if not expiries:
            return None
        waits.append(max(0.0, min(expiries)))
    return max(waits) if waits else None


def _grant(
    tx: Tx, request: Request, active: list[LimitRow], ticket: int | None, since: float | None = None
) -> Lease | None:
    """Take the slots; *since*: when the ticket was taken (None: the request did not queue)."""
    now = tx.now
    if request.kind == "rate":
        served = now if ticket is None else _moment_it_fit(tx, request, active)
        for row in active:
            _sql.set_level(tx.conn, row.name, row.level_at(served.boot) + request.occupy, served)
        if active:
            _count_acquisition(tx, [row.name for row in active], "rate", since)
        return None
    holder = request.holder
    active_names = {row.name for row in active}
    names = tuple(name for name in request.names if name in active_names)  # in the caller's order
    if not names:
        return _no_slot_lease(request, now.wall)
    if ticket is not None:
        _count_acquisition(tx, names, "concurrency", since)
    lease = LeaseRow(
        token=0,
        secret=os.urandom(4).hex(),
        names=_sql.NAME_SEP.join(names),
        slots=request.occupy,
        holder_token=holder.token,
        pid=holder.pid,
        pid_start=holder.pid_start,
        host=holder.host,
        user=holder.user,
        label=holder.label,
        ticket=ticket,
        duration=request.lease_duration,
        acquired_wall=now.wall,
        acquired_boot=now.boot,
        expires_wall=now.wall + request.lease_duration,
        expires_boot=now.boot + request.lease_duration,
    )
    token = _sql.insert_lease(tx.conn, lease, names)
    return _lease(lease._replace(token=token))


_ACQUISITION_COUNTERS = {
    ("concurrency", False): "acq_cn",
    ("concurrency", True): "acq_cw",
    ("rate", False): "acq_rn",
    ("rate", True): "acq_rw",
}


def _count_acquisition(tx: Tx, names: Sequence[str], kind: Kind, since: float | None) -> None:
    """History: one acquisition, and its wait (0 unless it queued and was served in a later transaction).

    A concurrency lease that never queued is counted when it ends, in the statement that its
    release (or reclaim) runs anyway (``_sql.record_occupancy``), and readers add the ones held now:
    the uncontended acquire pays for no write to the limit's row.
    """
    waited = 0.0 if since is None else max(0.0, tx.now.wall - since)
    counter = _ACQUISITION_COUNTERS[kind, waited > 0]
    _sql.count_acquisition(tx.conn, names, counter, wait_bucket(waited), waited)


def _moment_it_fit(tx: Tx, request: Request, active: list[LimitRow]) -> Instant:
    """When a queued rate request first fit: it is charged as if served then (think of GCRA's
    theoretical arrival time), so the moments a waiter spends being woken are not lost to the
    bucket's floor at zero, and the long-run rate is exactly the decay.

    Never earlier than any bucket's last change: a waiter's ticket touches its buckets when it is
    taken (:func:`_enqueue`), so this is never before the waiter arrived, nor before the grant that
    came before it.
    """
    now = tx.now
    moment = 0.0
    for row in active:
        room_at = row.limit - _sql.held_slots(tx.conn, row.name) - request.occupy
        fit = row.level_boot + max(0.0, row.level - room_at) / row.decay
        moment = max(moment, fit)
    moment = min(moment, now.boot)
    return Instant(now.wall - (now.boot - moment), moment, now.boot_id)


def _lease(row: LeaseRow) -> Lease:
    return Lease(
        id=row.id,
        token=row.token,
        names=tuple(row.name_list),
        slots=row.slots,
        pid=row.pid,
        host=row.host,
        user=row.user,
        label=row.label,
        acquired=utc(row.acquired_wall),
        expires=utc(row.expires_wall),
        held_by="token" if row.holder_token is not None else "pid",
    )


# -- acquiring -------------------------------------------------------------------------------------


def attempt(tx: Tx, effects: Effects, request: Request, pipe: str | None = None) -> Outcome:
    """Admit a request now, or deny it; with *pipe*, a denied request takes its ticket in the same transaction."""
    outcome = _attempt(tx, effects, request)
    if isinstance(outcome, Granted):
        return outcome
    if pipe is None:
        _sql.count_failure(tx.conn, request.names, "refusals")  # history: a non-blocking attempt found no room
        return outcome
    return _enqueue(tx, effects, request, pipe)


def _attempt(tx: Tx, effects: Effects, request: Request) -> Outcome:
    """The fast path: admit a request that has no ticket, or deny it (then it may queue)."""
    rows = _sql.select_limits_for_acquire(tx.conn, request.names)
    active, missing = _check_request(request, [row for row, _, _ in rows])
    if not active:
        return Granted(_grant(tx, request, active, None), missing)
    active_names = [row.name for row in active]
    live = _Liveness(tx)
    freed: set[str] = set()
    if any(queued for row, _, queued in rows if row.active):
        # Others wait already: queue behind them, unless they are dead. A non-blocking caller never
        # queues, so it must reap the dead waiters in its way itself, or one killed by SIGKILL would
        # keep it busy for ever.
        if not _reap_dead_heads(tx, effects, active_names, live, freed):
            return Denied(None)
        rows = _sql.select_limits_for_acquire(tx.conn, request.names)  # the dead may have held slots too
    boot = tx.now.boot
    short = [
        row for row, held, _ in rows if row.active and held + row.level_at(boot) + request.occupy - row.limit > EPSILON
    ]
    if short:
        _reap_leases(tx, effects, [r.name for r in short], live, freed)
        if not freed:
            return Denied(None)
    if freed:  # hand what the dead held to the waiters behind them first
        _serve(tx, effects, freed, None)
        if _sql.any_ticket_on(tx.conn, active_names):
            return Denied(None)
        active, missing = _active_limits(tx, request)
        if _short_limits(tx, active, request.occupy):
            return Denied(None)
    return Granted(_grant(tx, request, active, None), missing)


def _reap_dead_heads(tx: Tx, effects: Effects, names: list[str], live: _Liveness, freed: set[str]) -> bool:
    """Reap the dead waiters at the head of the queues on *names*, oldest first; True if none is left.

    It stops at the first live one (or one it cannot tell), so its cost grows with the dead found,
    not with the length of the queue.
    """
    while True:
        head = _sql.oldest_ticket_on(tx.conn, names)
        if head is None:
            return True
        if live.token(head.holder_token) is not False:
            return False
        _drop_holder(tx, effects, head.holder_token, freed)  # its tickets, this one included


def _enqueue(tx: Tx, effects: Effects, request: Request, pipe: str) -> Outcome:
    """Take a ticket (strictly increasing) and serve the queue: the new ticket may be served at once."""
    waiter = request.waiter_token or request.holder.token
    if waiter is None:
        raise ValueError("a waiter needs a liveness token")
    active, _ = _active_limits(tx, request)
    if request.kind == "rate":
        # Bring each bucket's timestamp up to now (its level carried exactly, nothing reset), so the
        # moment this request will be said to have fit is never before it arrived.
        for limit in active:
            _sql.set_level(tx.conn, limit.name, limit.level_at(tx.now.boot), tx.now)
    holder = request.holder
    row = TicketRow(0, _sql.NAME_SEP.join(request.names), request.kind, request.occupy, request.strict,
                    request.lease_duration, waiter, holder.token is None, pipe, holder.pid, holder.pid_start,
                    holder.host, holder.user, holder.label, tx.now.wall)  # fmt: skip
    ticket = _sql.insert_ticket(tx.conn, row)
    outcome = _serve(tx, effects, set(request.names), ticket)
    assert outcome is not None
    return outcome


def attempt_ticket(tx: Tx, effects: Effects, ticket: int, kind: Kind) -> Outcome:
    """A woken waiter looks again: granted by someone else already, or served now, or still denied."""
    row = _sql.select_ticket(tx.conn, ticket)
    if row is None:
        return _granted_ticket(tx, ticket, kind)
    outcome = _serve(tx, effects, set(row.name_list), ticket)
    assert outcome is not None
    return outcome


def probe(tx: Tx, ticket: int, kind: Kind) -> Granted | bool | None:
    """Read-only safety net: our grant if one was missed, else whether a write attempt could help now.

    It could when a waiter ahead of us or a holder of our limits has died, or a lease expired, or,
    at the head of the queue, when our request fits now (a wake-up meant for us was lost, e.g.
    written before our pipe existed): no waiter sleeps on while its request fits. ``None`` says
    no, and that two live waiters at least are ahead of us: nothing there is ours to watch soon.
    """
    row = _sql.select_ticket(tx.conn, ticket)
    if row is None:
        return _granted_ticket(tx, ticket, kind)
    live = _Liveness(tx)
    names = row.name_list
    just_ahead = _sql.ticket_ahead(tx.conn, names, ticket)
    if just_ahead is not None:
        # Each waiter watches the one just ahead of it, the head watches the holders: every death
        # is seen by someone, at a cost that does not grow with the queue.
        ahead = _sql.select_ticket(tx.conn, just_ahead)
        if ahead is None or live.token(ahead.holder_token) is False:
            return ahead is not None
        return None if _sql.ticket_ahead(tx.conn, ahead.name_list, just_ahead) is not None else False
    if any(live.lease_gone(lease) for name in names for lease in _sql.leases_on(tx.conn, name)):
        return True
    request = _request_of(row, names)
    try:
        active, _ = _active_limits(tx, request)
    except ConcurrencySlotAcquisitionError:
        return True  # the look raises it, in the waiter's own process
    return not _short_limits(tx, active, request.occupy)


def _granted_ticket(tx: Tx, ticket: int, kind: Kind) -> Granted:
    if kind == "rate":
        return Granted(None)
    lease = _sql.select_lease_by_ticket(tx.conn, ticket)
    if lease is None:
        # Granted, then released by an admin before we looked: the slots are not ours.
        raise ConcurrencySlotAcquisitionError("The slots granted to this waiter were force-released meanwhile.")
    return Granted(_lease(lease))


def cancel(tx: Tx, effects: Effects, ticket: int, kind: Kind, timed_out: bool = False) -> Granted | None:
    """Leave the queue (*timed_out*: the waiter gave up at its timeout); if the ticket was granted
    meanwhile, return that grant instead."""
    row = _sql.select_ticket(tx.conn, ticket)
    if row is None:
        try:
            return _granted_ticket(tx, ticket, kind)
        except ConcurrencySlotAcquisitionError:
            return None
    _sql.delete_ticket(tx.conn, row)
    if timed_out:
        _sql.count_failure(tx.conn, row.name_list, "timeouts")
    _serve(tx, effects, set(row.name_list), None, freed=True)
    return None


def _serve(tx: Tx, effects: Effects, names: set[str], me: int | None, *, freed: bool = False) -> Outcome | None:
    """Grant the queue on *names* in ticket order, as far as capacity goes; return *me*'s outcome.

    A ticket is served only when no older ticket shares one of its names (so the oldest waiter is
    at the head of each of its queues, and multi-name waiters cannot deadlock) and its request
    fits. A head that does not fit blocks every later ticket on its names: a big request is never
    starved by small ones. For its own ticket (*me*), a waiter also reaps dead waiters ahead of it
    and dead holders of its limits, which may free more names; the scan repeats until nothing
    changes. A releaser does not reap: its transaction is on every hand-off's path.
    """
    conn = tx.conn
    live = _Liveness(tx)
    mine: Outcome | None = None
    pending = set(names)
    while pending:
        scan, pending = sorted(pending), set()
        blocked: set[str] = set()
        for ticket in _queue(tx, scan):
            if blocked.issuperset(scan):
                if me is not None and mine is None:
                    mine = Denied(None, me)  # ours is further back in a blocked queue
                break  # every queue scanned is held up by its head
            row = _sql.select_ticket(conn, ticket)
            if row is None:
                continue  # reaped or served earlier in this scan
            ticket_names = row.name_list
            if blocked.intersection(ticket_names):
                blocked.update(ticket_names)
                mine = Denied(None, me) if ticket == me else mine
                continue
            ahead = _sql.ticket_ahead(conn, ticket_names, ticket)
            if ahead is not None and ticket == me:
                ahead = _reap_just_ahead(tx, effects, ticket_names, ticket, ahead, live, pending)
            if ahead is not None:
                blocked.update(ticket_names)
                mine = Denied(None, me) if ticket == me else mine
                continue
            if me is not None and ticket != me and live.token(row.holder_token) is False:
                # A waiter looking for itself reaps the dead ahead of it (a releaser does not: its
                # transaction is on the hand-off's path, and it checks whom it grants to below).
                _drop_holder(tx, effects, row.holder_token, pending)
                continue
            if row.by_pid and row.pid is not None and not _tokens.pid_alive(row.pid, row.pid_start):
                # A `gcl acquire` whose script has exited: the lease would be reaped at the next
                # look, so it is never handed out, and the ticket must not block the queue. Its
                # waiter (alive) learns it when it looks: its ticket is gone with no lease.
                if ticket == me:
                    raise ConcurrencySlotAcquisitionError(f"The holder process {row.pid} has exited.")
                _sql.delete_ticket(conn, row)
                effects.poke(row.pipe, ticket)
                continue
            request = _request_of(row, ticket_names)
            try:
                active, missing = _active_limits(tx, request)
            except ConcurrencySlotAcquisitionError:
                if ticket == me:
                    raise
                effects.poke(row.pipe, ticket)  # it will raise the error in its own process
                blocked.update(ticket_names)
                continue
            short = _short_limits(tx, active, request.occupy)
            if short and ticket == me and _reap_leases(tx, effects, [r.name for r in short], live, pending):
                active, missing = _active_limits(tx, request)
                short = _short_limits(tx, active, request.occupy)
            if not short:
                if ticket != me and live.token(row.holder_token) is False:
                    _drop_holder(tx, effects, row.holder_token, pending)  # never grant to the dead
                    continue
                granted = Granted(_grant(tx, request, active, ticket, row.since_wall), missing)
                _sql.delete_ticket(conn, row)
                if ticket == me:
                    mine = granted
                else:
                    effects.hand_over(row.pipe, ticket, granted)
                continue
            blocked.update(ticket_names)
            if ticket == me:
                mine = Denied(_retry_in(tx, short, request.occupy), me)
            elif any(r.decay > 0 for r in short) or (
                freed and all(_shortfall(tx, r, request.occupy) <= request.occupy - 1 + EPSILON for r in short)
            ):
                # The head can wait for a computed moment of decay: let it look and set its timer; or
                # room was freed but not enough for it (that counts as an attempt).
                effects.poke(row.pipe, ticket)
        freed = True
    return mine


def _queue(tx: Tx, names: list[str]) -> Iterator[int]:
    """The tickets on *names*, oldest first, read a few at a time.

    A scan of the queue mostly stops at its head (granted, or blocked): it must not cost the
    length of the queue, on every release of a slot that hundreds wait for.
    """
    after, page = 0, 4
    while True:
        tickets = _sql.tickets_on(tx.conn, names, after, page)
        yield from tickets
        if len(tickets) < page:
            return
        after, page = tickets[-1], min(4 * page, 256)


def _reap_just_ahead(
    tx: Tx, effects: Effects, names: tuple[str, ...], ticket: int, ahead: int, live: _Liveness, freed: set[str]
) -> int | None:
    """Reap the dead waiters just ahead of *ticket*, nearest first; return the live one now ahead.

    Only the nearest: a waiter further ahead is watched by the one behind it (see :func:`probe`),
    so the cost grows with the dead found, not with our place in the queue.
    """
    just_ahead: int | None = ahead
    while just_ahead is not None:
        row = _sql.select_ticket(tx.conn, just_ahead)
        if row is not None and live.token(row.holder_token) is not False:
            return just_ahead
        if row is not None:
            _drop_holder(tx, effects, row.holder_token, freed)  # its tickets, this one included
        just_ahead = _sql.ticket_ahead(tx.conn, names, ticket)
    return None


def _request_of(row: TicketRow, names: tuple[str, ...]) -> Request:
    lease_token = None if row.by_pid else row.holder_token
    holder = Holder(lease_token, row.pid, row.pid_start, row.host, row.user, row.label)
    kind: Kind = "rate" if row.kind == "rate" else "concurrency"
    return Request(names, row.slots, kind, row.strict, row.duration, holder, row.holder_token)


def wait_summary(tx: Tx, ticket: int | None, names: list[str]) -> tuple[int, Lease | None]:
    """For a waiting message: how many tickets are ahead of *ticket*, and the oldest holder of *names*."""
    ahead = _sql.count_older_tickets(tx.conn, names, ticket) if ticket is not None else 0
    holders = [lease for name in names for lease in _sql.leases_on(tx.conn, name)]
    oldest = min(holders, key=lambda lease: lease.token, default=None)
    return ahead, None if oldest is None else _lease(oldest)


# -- holding ---------------------------------------------------------------------------------------


def release(tx: Tx, effects: Effects, lease_id: str) -> bool:
    """Give a lease's slots back and serve the queue; False if there was no such lease (idempotent)."""
    lease = _sql.pop_lease(tx.conn, lease_id)
    if lease is None:
        return False
    if _record_occupancy(tx, lease):
        _serve(tx, effects, set(lease.name_list), None, freed=True)
    return True


def _existing_lease(tx: Tx, lease_id: str) -> LeaseRow:
    row = _sql.select_lease(tx.conn, lease_id)
    if row is None:
        raise LeaseNotFoundError(lease_id)
    return row


def renew(tx: Tx, effects: Effects, lease_id: str, duration: float) -> Lease | None:
    """Extend a lease to *duration* seconds from now. A lease that is over (expired, or its holder
    died) is reclaimed instead, and None returned: the caller raises, after this commits."""
    row = _existing_lease(tx, lease_id)
    if _Liveness(tx).lease_gone(row):
        _serve(tx, effects, set(_drop_lease(tx, row)), None, freed=True)
        return None
    _sql.renew_lease(tx.conn, row, duration, tx.now)
    return _lease(_existing_lease(tx, lease_id))


def renewed(store: Store, lease_id: str, duration: float, *, blocking: bool = True) -> Lease:
    """:func:`renew` in its own transaction. :raises LeaseNotFoundError: if the lease is over."""
    lease = transact(store, renew, lease_id, duration, blocking=blocking)
    if lease is None:
        raise LeaseNotFoundError(lease_id)
    return lease


def set_holder(tx: Tx, effects: Effects, lease_id: str, pid: int, label: str) -> None:
    """Name the process that really holds a lease (``gcl run``'s child)."""
    _sql.set_lease_holder(tx.conn, _existing_lease(tx, lease_id), pid, _tokens.process_start_time(pid), label)


# -- administration --------------------------------------------------------------------------------


def create_limit(
    tx: Tx, effects: Effects, name: str, limit: int, decay: float, active: bool, active_slots: int
) -> Limit:
    if _sql.select_limits(tx.conn, [name]):
        raise LimitExistsError(name)
    now = tx.now
    row = LimitRow(name, limit, active, decay, float(active_slots), now.boot, now.wall,
                   DEFAULT_AVG_OCCUPANCY, now.wall, now.wall)  # fmt: skip
    _sql.insert_limit(tx.conn, row)
    return _describe(tx, row)


def update_limit(
    tx: Tx,
    effects: Effects,
    name: str,
    limit: int | None,
    decay: float | None,
    active: bool | None,
    active_slots: int | None,
) -> Limit:
    rows = _sql.select_limits(tx.conn, [name])
    if not rows:
        raise LimitNotFoundError(name)
    row, now = rows[0], tx.now
    # Carry the decay accrued so far before a new rate or level applies; nothing else resets it.
    level, level_boot, level_wall = row.level, row.level_boot, row.level_wall
    if active_slots is not None:
        level, level_boot, level_wall = float(active_slots), now.boot, now.wall
    elif decay is not None and decay != row.decay:
        level, level_boot, level_wall = row.level_at(now.boot), now.boot, now.wall
    new = row._replace(
        limit=row.limit if limit is None else limit,
        decay=row.decay if decay is None else decay,
        active=row.active if active is None else active,
        level=level,
        level_boot=level_boot,
        level_wall=level_wall,
        updated=now.wall,
    )
    _sql.update_limit(tx.conn, new)
    _serve(tx, effects, {name}, None, freed=True)
    return _describe(tx, new)


def delete_limit(tx: Tx, effects: Effects, name: str) -> None:
    if not _sql.delete_limit(tx.conn, name):
        raise LimitNotFoundError(name)
    _serve(tx, effects, {name}, None, freed=True)  # its waiters now find it missing


def reset_stats(tx: Tx, effects: Effects, name: str) -> Limit:
    """Zero the history of a limit."""
    if not _sql.reset_stats(tx.conn, name, tx.now.wall):
        raise LimitNotFoundError(name)
    return _describe(tx, _sql.select_limits(tx.conn, [name])[0])


# -- reading: a snapshot, never a write --------------------------------------------------------------


def read_limit(tx: Tx, name: str) -> Limit:
    """One limit as of the snapshot *tx* (a read transaction): nothing is reaped or written."""
    rows = _sql.select_limits(tx.conn, [name])
    if not rows:
        raise LimitNotFoundError(name)
    return _describe(tx, rows[0], _Snapshot(tx))


def list_limits(tx: Tx) -> list[Limit]:
    """Every limit, by name, as of the snapshot *tx*."""
    snapshot = _Snapshot(tx)
    return [_describe(tx, row, snapshot) for row in _sql.select_all_limits(tx.conn)]


class _Snapshot:
    """What a reader needs to tell the living from the dead without reaping them."""

    def __init__(self, tx: Tx) -> None:
        self.live = _Liveness(tx)
        # After a reboot nothing has rebased the file yet (a reader does not write): every holder
        # and waiter of the old boot is gone, and buckets decay by the wall clock since then.
        self.old_boot = _sql.stored_boot_id(tx.conn) != tx.now.boot_id

    def row(self, tx: Tx, row: LimitRow) -> LimitRow:
        if not self.old_boot:
            return row
        return row._replace(level_boot=tx.now.boot - max(0.0, tx.now.wall - row.level_wall))

    def lease_gone(self, lease: LeaseRow) -> bool:
        return self.old_boot or self.live.lease_gone(lease)

    def ticket_gone(self, ticket: TicketRow) -> bool:
        if self.old_boot or self.live.token(ticket.holder_token) is False:
            return True
        return ticket.by_pid and ticket.pid is not None and not _tokens.pid_alive(ticket.pid, ticket.pid_start)


def sweep(tx: Tx, effects: Effects, live: _Liveness | None = None, freed: set[str] | None = None) -> None:
    """Reap every dead process's token in the run directory, and the rows that name it."""
    if not tx.store.run_dir_is_safe():
        return  # missing, or planted by someone else: nothing of ours to sweep there
    live = live or _Liveness(tx)
    freed_here: set[str] = set()
    run_dir = tx.store.run_dir
    for token in _tokens.tokens_in(run_dir):
        if live.token(token) is False:
            _drop_holder(tx, effects, token, freed_here)
    # And pipes that no token names: a process killed between unlinking a token and its pipes (an
    # earlier gcl_local unlinked the token first) left them, and the token sweep above never sees them.
    for path in _tokens.stale_temporaries(run_dir) + _tokens.orphan_pipes(run_dir):
        with contextlib.suppress(OSError):
            os.unlink(path)
    if freed is not None:
        freed.update(freed_here)
    elif freed_here:
        _serve(tx, effects, freed_here, None, freed=True)


def forget_token(tx: Tx, effects: Effects, token: str) -> None:
    """At a process's exit: remove its token file unless a lease or ticket still names it."""
    if not _sql.leases_of_holder(tx.conn, token) and not _sql.tickets_of_holder(tx.conn, token):
        effects.dead_tokens.add(token)


def _describe(tx: Tx, row: LimitRow, snapshot: _Snapshot | None = None) -> Limit:
    """A limit with its holders, waiters and history; the dead are told apart, not reaped."""
    conn = tx.conn
    snapshot = snapshot or _Snapshot(tx)
    row = snapshot.row(tx, row)
    holders: list[LeaseRow] = []
    reclaimable: list[LeaseRow] = []
    leases = _sql.leases_on(conn, row.name)
    for lease in leases:
        (reclaimable if snapshot.lease_gone(lease) else holders).append(lease)
    held = sum(lease.slots for lease in holders)
    occupancy = held + row.level_at(tx.now.boot)
    stats = _sql.select_stats(conn, row.name).get(row.name)
    return Limit(
        name=row.name,
        limit=row.limit,
        active=row.active,
        slot_decay_per_second=row.decay,
        active_slots=max(0, math.ceil(occupancy - EPSILON)),
        avg_slot_occupancy_seconds=row.avg_occupancy,
        created=utc(row.created),
        updated=utc(row.updated),
        holders=tuple(_lease(lease) for lease in holders),
        waiters=tuple(
            Waiter(t.ticket, t.slots, t.kind, t.pid, t.label, utc(t.since_wall))
            for t in _sql.waiting_on(conn, row.name)
            if not snapshot.ticket_gone(t)
        ),
        reclaimable=tuple(_lease(lease) for lease in reclaimable),
        stats=None if stats is None else _stats(tx, row, stats, holders, leases),
    )


def _stats(tx: Tx, row: LimitRow, stats: _sql.StatsRow, holders: list[LeaseRow], leases: list[LeaseRow]) -> Stats:
    # Slot-seconds of the leases held now count too, so the total only grows (their release adds
    # the same amount to the stored counter).
    held_now = sum(max(0.0, tx.now.boot - lease.acquired_boot) * lease.slots for lease in holders)
    counters = dict(zip(_sql.STATS_COUNTERS, stats.counters, strict=True))
    # Leases that never queued are counted when they end: count those not ended yet too.
    unqueued = sum(1 for lease in leases if lease.ticket is None)
    buckets = (stats.wait_buckets[0] + unqueued, *stats.wait_buckets[1:])
    return Stats(
        since=utc(stats.since or row.created),
        immediate_concurrency=counters["acq_cn"] + unqueued,
        waited_concurrency=counters["acq_cw"],
        immediate_rate=counters["acq_rn"],
        waited_rate=counters["acq_rw"],
        timeouts=counters["timeouts"],
        refusals=counters["refusals"],
        reclaimed=counters["reclaimed"],
        slot_seconds=stats.held_seconds + held_now,
        wait_seconds_sum=stats.wait_sum,
        wait_buckets=buckets,
    )


PREFECT_MAX_WAIT_SECONDS = 30.0
"""Prefect's cap on the Retry-After of a limit without decay (``maximum_concurrency_slot_wait_seconds``)."""


def retry_interval(tx: Tx, request: Request) -> float:
    """The Retry-After a Prefect server would send for *request* now (its mean, without the jitter).

    Prefect's client sleeps that long between the attempts that ``max_retries`` counts (its
    ``concurrency/services.py``); the server computes it in ``_generate_concurrency_locked_response``
    (``server/api/concurrency_limits_v2.py``): ``occupy / slot_decay_per_second`` for a rate limit,
    else ``min(min(avg_slot_occupancy_seconds, 30) * occupy / limit, 30)``. Here: the longest over
    the active limits named (Prefect's own ``denied_slots`` term has no equivalent: we queue instead).
    """
    longest = 0.0
    for row, _, _ in _sql.select_limits_for_acquire(tx.conn, request.names):
        if not row.active or row.limit <= 0:
            continue
        if row.decay > 0:
            interval = request.occupy / row.decay
        else:
            per_slot = min(row.avg_occupancy, PREFECT_MAX_WAIT_SECONDS)
            interval = min(per_slot * request.occupy / row.limit, PREFECT_MAX_WAIT_SECONDS)
        longest = max(longest, interval)
    return longest or DEFAULT_AVG_OCCUPANCY


__all__ = [
    "PREFECT_MAX_WAIT_SECONDS",
    "Denied",
    "Effects",
    "Granted",
    "Holder",
    "Request",
    "attempt",
    "attempt_ticket",
    "cancel",
    "create_limit",
    "delete_limit",
    "list_limits",
    "read_limit",
    "release",
    "renew",
    "reset_stats",
    "retry_interval",
    "transact",
    "EPSILON",
    "GRANT_PREFIX",
    "Kind",
    "MIN_OCCUPANCY_SAMPLE",
    "Outcome",
    "POKE_PREFIX",
    "forget_token",
    "probe",
    "read_wake",
    "renewed",
    "set_holder",
    "sweep",
    "update_limit",
    "wait_summary",
]
