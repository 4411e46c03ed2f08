"""Admission and queue serving: the core's one attempt, in one short transaction, never a sleep.

Every function here runs inside a write transaction that :func:`~gcl_local._effects.transact` opens
(or a read one, for :func:`probe`), and returns a value. Waiting belongs to the shells (``sync``,
``asyncio``) and their one policy (``_waiting``). Functions that free capacity (release, reaping a
dead holder, a waiter leaving, an admin change) serve the queue in the same transaction: the oldest
waiters whose requests now fit are granted their slots right there (direct hand-off), and their
channels are told after the commit, so a woken waiter has nothing to write.

Occupancy of a limit = slots of its leases + the level of its decaying bucket. A request fits
when occupancy + occupy <= limit on every active named limit, and it is admitted only when no older
waiting ticket shares one of its active names (first come, first served).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

from . import _process, _reaping
from ._backend import Backend, LeaseRow, LimitRow, QueuePlace, TicketRow, Tx
from ._clock import Instant
from ._effects import Effects, transact
from ._errors import ConcurrencySlotAcquisitionError, LeaseNotFoundError
from ._model import DEFAULT_AVG_OCCUPANCY, Lease, utc, wait_bucket
from ._request import Denied, Granted, Holder, Outcome, Request, no_slot_lease
from ._stdlib import NamedTuple

TYPE_CHECKING = False  # not typing's: the hot path must not cost the import of typing (see _stdlib)
if TYPE_CHECKING:
    from ._request import Kind

EPSILON = 1e-9
"""Slack for float rounding in the bucket level: 2.9999999999 slots fit a limit of 3."""


def level_at(row: LimitRow, boot: float) -> float:
    """The bucket level of *row* at *boot*: continuous decay, fractions carried."""
    if row.decay <= 0 or row.level <= 0:
        return max(row.level, 0.0)
    return max(0.0, row.level - row.decay * max(0.0, boot - row.level_boot))


def format_lease_id(token: int, secret: str) -> str:
    """A lease id: ``<fencing token>-<secret>`` (the secret keeps others from guessing ids)."""
    return f"{token}-{secret}"


def parse_lease_id(lease_id: str) -> tuple[int, str] | None:
    token, sep, secret = lease_id.partition("-")
    if not sep or not token.isdigit() or len(token) > 18:
        return None
    return int(token), secret


def _active_limits(tx: Tx, request: Request) -> tuple[list[LimitRow], tuple[str, ...]]:
    return _check_request(request, tx.select_limits(request.names))


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


def _shortfall(tx: Tx, row: LimitRow, occupy: int, held: dict[str, int] | None = None) -> float:
    """How many slots *occupy* lacks on *row* now (<= 0: it fits); *held*: the held slots, if just read."""
    slots = tx.held_slots(row.name) if held is None else held[row.name]
    return slots + level_at(row, tx.now.boot) + occupy - row.limit


def _short_limits(tx: Tx, active: list[LimitRow], occupy: int) -> list[LimitRow]:
    return [row for row in active if _shortfall(tx, row, occupy) > EPSILON]


def _short_of(rows: list[tuple[LimitRow, int, bool]], occupy: int, boot: float) -> list[LimitRow]:
    """``_short_limits`` of rows read with their held slots (``Tx.select_limits_for_acquire``)."""
    return [row for row, held, _ in rows if row.active and held + level_at(row, boot) + occupy - row.limit > EPSILON]


def _filled(rows: list[tuple[LimitRow, int, bool]], request: Request, boot: float) -> set[str]:
    """The limits that a concurrency grant of *request* (on *rows*, read before it) left with no room for
    one more slot, and no decay to make some: only a release can let anyone in there now."""
    if request.kind == "rate":
        return set()
    return {
        row.name
        for row, held, _ in rows
        if row.active and row.decay == 0 and held + request.occupy + level_at(row, boot) + 1 - row.limit > EPSILON
    }


def _retry_in(tx: Tx, short: list[LimitRow], occupy: int, held: dict[str, int] | None = None) -> float | None:
    """Seconds until decay or a lease expiry could make room on every short limit (None: a release must)."""
    waits = []
    for row in short:
        lacking = _shortfall(tx, row, occupy, held)
        level = level_at(row, tx.now.boot)
        if row.decay > 0 and lacking <= level + EPSILON:
            waits.append(lacking / row.decay)
            continue
        expiries = [
            lease.expires_boot - tx.now.boot
            for lease in tx.leases_on(row.name)
            if lease.registration is None  # a registered holder keeps its lease while it lives
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
            tx.set_level(row.name, level_at(row, served.boot) + request.occupy, served)
        if active:
            _count_acquisition(tx, [row.name for row in active], "rate", since)
        return None
    holder = request.holder
    active_names = {row.name for row in active}
    names = tuple(name for name in request.names if name in active_names)  # in the caller's order
    if not names:
        return no_slot_lease(request, now.wall)
    if ticket is not None:
        _count_acquisition(tx, names, "concurrency", since)
    lease = LeaseRow(
        token=0,
        secret=os.urandom(4).hex(),
        names=names,
        slots=request.occupy,
        registration=holder.registration,
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
    token = tx.insert_lease(lease)
    return lease_of(lease._replace(token=token))


_ACQUISITION_COUNTERS = {
    ("concurrency", False): "acq_cn",
    ("concurrency", True): "acq_cw",
    ("rate", False): "acq_rn",
    ("rate", True): "acq_rw",
}


def _count_acquisition(tx: Tx, names: Sequence[str], kind: Kind, since: float | None) -> None:
    """History: one acquisition, and its wait (0 unless it queued and was served in a later transaction).

    A concurrency lease that never queued is counted when it ends, in the statement that its
    release (or reclaim) runs anyway (``Tx.record_occupancy``), and readers add the ones held now:
    the uncontended acquire pays for no write to the limit's row.
    """
    waited = 0.0 if since is None else max(0.0, tx.now.wall - since)
    counter = _ACQUISITION_COUNTERS[kind, waited > 0]
    tx.count_acquisition(names, counter, wait_bucket(waited), waited)


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
        room_at = row.limit - tx.held_slots(row.name) - request.occupy
        fit = row.level_boot + max(0.0, row.level - room_at) / row.decay
        moment = max(moment, fit)
    moment = min(moment, now.boot)
    return Instant(now.wall - (now.boot - moment), moment, now.boot_id)


def lease_of(row: LeaseRow) -> Lease:
    """The caller's view of a lease row."""
    return Lease(
        id=format_lease_id(row.token, row.secret),
        token=row.token,
        names=tuple(row.names),
        slots=row.slots,
        pid=row.pid,
        host=row.host,
        user=row.user,
        label=row.label,
        acquired=utc(row.acquired_wall),
        expires=utc(row.expires_wall),
        held_by="token" if row.registration is not None else "pid",
    )


class _Refusal(NamedTuple):
    """What ``_attempt`` learned in saying no, for the ticket that may follow in the same transaction."""

    active: list[LimitRow]
    """The request's active limits, as they are now."""
    live: _reaping.Liveness
    short: list[LimitRow] | None = None
    """When nobody waits on any of the request's limits: those that lack room for it, after reaping.
    A ticket taken now is then the only one there, and would be denied on them."""
    held: dict[str, int] | None = None
    """With *short*: the slots held on each of the request's limits."""


def attempt(tx: Tx, effects: Effects, request: Request, channel: str | None = None) -> Outcome:
    """Admit a request now, or deny it; with *channel*, a denied request takes its ticket in the same transaction."""
    outcome = _attempt(tx, effects, request)
    if isinstance(outcome, Granted):
        return outcome
    if channel is None:
        tx.count_failure(request.names, "refusals")  # history: a non-blocking attempt found no room
        return Denied(None)
    return _enqueue(tx, effects, request, channel, outcome)


def _attempt(tx: Tx, effects: Effects, request: Request) -> Granted | _Refusal:
    """The fast path: admit a request that has no ticket, or deny it (then it may queue)."""
    rows = tx.select_limits_for_acquire(request.names)
    active, missing = _check_request(request, [row for row, _, _ in rows])
    if not active:
        return Granted(_grant(tx, request, active, None), missing)
    active_names = [row.name for row in active]
    live = _reaping.Liveness(tx)
    freed: set[str] = set()
    if any(queued for row, _, queued in rows if row.active):
        # Others wait already: queue behind them, unless they are dead. A non-blocking caller never
        # queues, so it must reap the dead waiters in its way itself, or one killed by SIGKILL would
        # keep it busy for ever.
        if not _reaping.reap_dead_heads(tx, effects, active_names, live, freed):
            return _Refusal(active, live)
        rows = tx.select_limits_for_acquire(request.names)  # the dead may have held slots too
    short = _short_of(rows, request.occupy, tx.now.boot)
    if short:
        _reaping.reap_leases(tx, effects, [r.name for r in short], live, freed)
        if not freed:
            if missing or any(queued for _, _, queued in rows):
                return _Refusal(active, live)
            return _Refusal(active, live, short, {row.name: held for row, held, _ in rows})
    if freed:  # hand what the dead held to the waiters behind them first
        serve(tx, effects, freed, None)
        active, missing = _active_limits(tx, request)
        if tx.any_ticket_on(active_names) or _short_limits(tx, active, request.occupy):
            return _Refusal(active, live)
    return Granted(_grant(tx, request, active, None), missing)


def _enqueue(tx: Tx, effects: Effects, request: Request, channel: str, refusal: _Refusal) -> Outcome:
    """Take a ticket (strictly increasing) and serve the queue: the new ticket may be served at once."""
    waiter = request.waiter_registration or request.holder.registration
    if waiter is None:
        raise ValueError("a waiter needs a liveness registration")
    active = refusal.active
    if request.kind == "rate":
        # Bring each bucket's timestamp up to now (its level carried exactly, nothing reset), so the
        # moment this request will be said to have fit is never before it arrived.
        for limit in active:
            tx.set_level(limit.name, level_at(limit, tx.now.boot), tx.now)
    holder = request.holder
    row = TicketRow(0, request.names, request.kind, request.occupy, request.strict,
                    request.lease_duration, waiter, holder.registration is None, channel, holder.pid, holder.pid_start,
                    holder.host, holder.user, holder.label, tx.now.wall)  # fmt: skip
    ticket = tx.insert_ticket(row)
    if refusal.short is not None and not row.by_pid:
        # The only ticket on its limits, at the head, and short on the rows just read: what ``serve``
        # would find, at 7 statements (round trips on a server) more on the path of every waiter.
        return Denied(_retry_in(tx, refusal.short, request.occupy, refusal.held), ticket)
    outcome = serve(tx, effects, set(request.names), ticket, live=refusal.live)
    assert outcome is not None
    return outcome


def attempt_ticket(tx: Tx, effects: Effects, ticket: int, kind: Kind) -> Outcome:
    """A woken waiter looks again: granted by someone else already, or served now, or still denied."""
    row = tx.select_ticket(ticket)
    if row is None:
        return _granted_ticket(tx, ticket, kind)
    outcome = serve(tx, effects, set(row.names), ticket)
    assert outcome is not None
    return outcome


def probe(tx: Tx, ticket: int, kind: Kind) -> Granted | bool | None:
    """Read-only safety net: our grant if one was missed, else whether a write attempt could help now.

    It could when a waiter ahead of us or a holder of our limits has died, or a lease expired, or,
    at the head of the queue, when our request fits now (a wake-up meant for us was lost, e.g.
    sent before our channel existed): no waiter sleeps on while its request fits. ``None`` says
    no, and that two live waiters at least are ahead of us: nothing there is ours to watch soon.
    """
    row = tx.select_ticket(ticket)
    if row is None:
        return _granted_ticket(tx, ticket, kind)
    live = _reaping.Liveness(tx)
    if live.holder_exited(row):
        return True  # a look fails the wait in the waiter's own process (a releaser may never reach it)
    names = row.names
    just_ahead = tx.ticket_ahead(names, ticket)
    if just_ahead is not None:
        # Each waiter watches the one just ahead of it, the head watches the holders: every death
        # is seen by someone, at a cost that does not grow with the queue.
        ahead = tx.select_ticket(just_ahead)
        if ahead is None or live.alive(ahead.registration) is False:
            return ahead is not None
        return None if tx.ticket_ahead(ahead.names, just_ahead) is not None else False
    if any(live.lease_gone(lease) for name in names for lease in tx.leases_on(name)):
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
    lease = tx.select_lease_by_ticket(ticket)
    if lease is None:
        # Granted, then released by an admin before we looked: the slots are not ours.
        raise ConcurrencySlotAcquisitionError("The slots granted to this waiter were force-released meanwhile.")
    return Granted(lease_of(lease))


def cancel(tx: Tx, effects: Effects, ticket: int, kind: Kind, timed_out: bool = False) -> Granted | None:
    """Leave the queue (*timed_out*: the waiter gave up at its timeout); if the ticket was granted
    meanwhile, return that grant instead."""
    row = tx.select_ticket(ticket)
    if row is None:
        try:
            return _granted_ticket(tx, ticket, kind)
        except ConcurrencySlotAcquisitionError:
            return None
    tx.delete_ticket(row)
    _vacate(effects, row.names)
    if timed_out:
        tx.count_failure(row.names, "timeouts")
    front = tx.tickets_on(row.names, 0, 2)
    if front and ticket < front[-1].ticket:
        moved = [place for place in front if place.ticket > ticket]
        _tell_front(tx, effects, moved)
        _follow_several(tx, effects, moved)
    serve(tx, effects, set(row.names), None, freed=True)
    return None


def serve(
    tx: Tx,
    effects: Effects,
    names: set[str],
    me: int | None,
    *,
    freed: bool = False,
    live: _reaping.Liveness | None = None,
) -> Outcome | None:
    """Grant the queue on *names* in ticket order, as far as capacity goes; return *me*'s outcome.

    A ticket is served only when no older ticket shares one of its names (so the oldest waiter is
    at the head of each of its queues, and multi-name waiters cannot deadlock) and its request
    fits. A head that does not fit blocks every later ticket on its names: a big request is never
    starved by small ones. For its own ticket (*me*), a waiter also reaps dead waiters ahead of it
    and dead holders of its limits, which may free more names; the scan repeats until nothing
    changes. A releaser does not reap: its transaction is on every hand-off's path.
    """
    live = _reaping.Liveness(tx) if live is None else live  # (answers had in this transaction are kept)
    mine: Outcome | None = None
    pending = set(names)
    while pending:
        scan, pending = sorted(pending), set()
        blocked: set[str] = set()
        places = _queue(tx, scan)
        front = _Front()
        for position, place in enumerate(places):
            ticket = place.ticket
            if blocked.issuperset(scan):
                if me is not None and mine is None:
                    mine = Denied(None, me)  # ours is further back in a blocked queue
                front.stays(place)
                break  # every queue scanned is held up by its head
            row = tx.select_ticket(ticket)
            if row is None:
                front.removed += 1
                continue  # reaped or served earlier in this scan
            ticket_names = row.names
            if blocked.intersection(ticket_names):
                blocked.update(ticket_names)
                mine = Denied(None, me) if ticket == me else mine
                front.stays(place)
                continue
            # The first ticket of a scan is the oldest on the scanned names, so on its own if it has no
            # other (the usual hand-off: one round trip less on a server).
            head = position == 0 and set(ticket_names).issubset(scan)
            ahead = None if head else tx.ticket_ahead(ticket_names, ticket)
            if ahead is not None and ticket == me:
                ahead = _reaping.reap_just_ahead(tx, effects, ticket_names, ticket, ahead, live, pending)
            if ahead is not None:
                blocked.update(ticket_names)
                mine = Denied(None, me) if ticket == me else mine
                front.stays(place)
                continue
            if me is not None and ticket != me and live.alive(row.registration) is False:
                # A waiter looking for itself reaps the dead ahead of it (a releaser does not: its
                # transaction is on the hand-off's path, and it checks whom it grants to below).
                _reaping.drop_holder(tx, effects, row.registration, pending)
                front.removed += 1
                continue
            if live.holder_exited(row):
                # A `gcl acquire` whose script has exited: the lease would be reaped at the next
                # look, so it is never handed out, and the ticket must not block the queue. Its
                # waiter (alive) learns it when it looks: its ticket is gone with no lease.
                if ticket == me:
                    raise ConcurrencySlotAcquisitionError(f"The holder process {row.pid} has exited.")
                tx.delete_ticket(row)
                effects.poke(row.channel, ticket)
                front.removed += 1
                _vacate(effects, ticket_names)
                continue
            request = _request_of(row, ticket_names)
            try:
                rows = tx.select_limits_for_acquire(request.names)  # with their held slots: one read
                active, missing = _check_request(request, [r for r, _, _ in rows])
            except ConcurrencySlotAcquisitionError:
                if ticket == me:
                    raise
                effects.poke(row.channel, ticket)  # it will raise the error in its own process
                blocked.update(ticket_names)
                front.stays(place)
                continue
            short = _short_of(rows, request.occupy, tx.now.boot)
            held: dict[str, int] | None = {r.name: slots for r, slots, _ in rows}
            if short and ticket == me and _reaping.reap_leases(tx, effects, [r.name for r in short], live, pending):
                active, missing = _active_limits(tx, request)
                short, held = _short_limits(tx, active, request.occupy), None
            if not short:
                if ticket != me and live.alive(row.registration) is False:
                    _reaping.drop_holder(tx, effects, row.registration, pending)  # never grant to the dead
                    front.removed += 1
                    continue
                granted = Granted(_grant(tx, request, active, ticket, row.since_wall), missing)
                tx.delete_ticket(row)
                front.removed += 1
                _vacate(effects, ticket_names)
                if ticket == me:
                    mine = granted
                else:
                    effects.hand_over(row.channel, ticket, granted)
                if me is None and _filled(rows, request, tx.now.boot).issuperset(scan):
                    # Every later ticket names a full limit: it would be read and found short, and told
                    # nothing. A releaser ends its scan here (4 statements less on every hand-off).
                    break
                continue
            front.stays(place)
            blocked.update(ticket_names)
            if ticket == me:
                mine = Denied(_retry_in(tx, short, request.occupy, held), me)
            elif any(r.decay > 0 for r in short) or (
                freed and all(_shortfall(tx, r, request.occupy, held) <= request.occupy - 1 + EPSILON for r in short)
            ):
                # The head can wait for a computed moment of decay: let it look and set its timer; or
                # room was freed but not enough for it (that counts as an attempt).
                effects.poke(row.channel, ticket)
        front.tell(tx, effects, places)
        freed = True
    return mine


def _queue(tx: Tx, names: list[str]) -> Iterator[QueuePlace]:
    """The tickets on *names*, oldest first, read a few at a time.

    A scan of the queue mostly stops at its head (granted, or blocked): it must not cost the
    length of the queue, on every release of a slot that hundreds wait for.
    """
    after, page = 0, 4
    while True:
        places = tx.tickets_on(names, after, page)
        yield from places
        if len(places) < page:
            return
        after, page = places[-1].ticket, min(4 * page, 256)


WATCH_AFTER_SECONDS = 0.3
"""A waiter queued for longer may have made its first safety-net look (0.4-0.6 s after it queued) and
found two waiters ahead: it then looks every 2 s, and must be told when it nears the head."""


def _tell_front(tx: Tx, effects: Effects, places: Iterable[QueuePlace]) -> None:
    """Tell the waiters of *places*, which the queue has just moved up to the head or next to it, to
    watch as the head does (a look every 0.5 s): one that last looked from further back would look
    again only in 2 s, and the head alone watches the holders, whose death it must see in about
    half a second. (Chaos soak: a dead holder's lease kept 3.1 s while that waiter slept.)"""
    for place in places:
        if tx.now.wall - place.since_wall > WATCH_AFTER_SECONDS:
            effects.watch(place.channel, place.ticket)


def _vacate(effects: Effects, names: Sequence[str]) -> None:
    """A ticket on several names left: a scan follows the merged queue of the names it scans, in which a
    waiter on one of the others may not move, and ``probe`` counts places across all of a ticket's
    names. Such waiters are told at the end of the transaction (:func:`tell_vacated`)."""
    if len(names) > 1:
        effects.vacated.update(names)


def _follow_several(tx: Tx, effects: Effects, moved: Iterable[QueuePlace]) -> None:
    """Waiters that moved up and stand in several queues: ``probe`` counts places across all of a
    ticket's names, so a waiter behind one of them in another queue may now be one behind the head.
    Those queues are told at the end of the transaction (:func:`tell_vacated`)."""
    for place in moved:
        if place.several:
            row = tx.select_ticket(place.ticket)
            if row is not None:
                effects.vacated.update(row.names)


def tell_vacated(tx: Tx, effects: Effects) -> None:
    """Tell the first two waiters of each queue in ``effects.vacated`` to watch as the head does.

    Those queues lost tickets in ways a scan does not follow (dead waiters reaped anywhere in them, by
    a newcomer, a look or a sweep; tickets on several names), so whether a waiter there moved up from
    third place or further back is not known: the first two are told, whether they moved or not (it
    costs a wake-up, on these rare paths only; a waiter that already watches ignores it). A told
    waiter on several names carries the telling on to its other queues."""
    done: set[str] = set()
    while pending := effects.vacated - done:
        name = min(pending)
        done.add(name)
        places = tx.tickets_on([name], 0, 2)
        _tell_front(tx, effects, places)
        _follow_several(tx, effects, places)
    effects.vacated.clear()


class _Front:
    """The first two tickets that one scan of the queue leaves in it, and how many it took out ahead of
    each: a ticket that moves from third place or further back to the first two is told so."""

    __slots__ = ("kept", "removed")

    def __init__(self) -> None:
        self.kept: list[tuple[QueuePlace, int]] = []
        self.removed = 0

    def stays(self, place: QueuePlace) -> None:
        if len(self.kept) < 2:
            self.kept.append((place, self.removed))

    def tell(self, tx: Tx, effects: Effects, places: Iterator[QueuePlace]) -> None:
        """At the end of the scan; the places not scanned yet are read only when the scan took some
        out and has not reached the second that stays (at a hand-off, from the page read already)."""
        if not self.removed:
            return
        while len(self.kept) < 2:
            place = next(places, None)
            if place is None:
                break
            self.kept.append((place, self.removed))
        moved = [place for index, (place, removed) in enumerate(self.kept) if index + removed >= 2]
        _tell_front(tx, effects, moved)
        _follow_several(tx, effects, [place for place, removed in self.kept if removed])


def _request_of(row: TicketRow, names: tuple[str, ...]) -> Request:
    lease_registration = None if row.by_pid else row.registration
    holder = Holder(lease_registration, row.pid, row.pid_start, row.host, row.user, row.label)
    kind: Kind = "rate" if row.kind == "rate" else "concurrency"
    return Request(names, row.slots, kind, row.strict, row.duration, holder, row.registration)


def wait_summary(tx: Tx, ticket: int | None, names: list[str]) -> tuple[int, Lease | None]:
    """For a waiting message: how many tickets are ahead of *ticket*, and the oldest holder of *names*."""
    ahead = tx.count_older_tickets(names, ticket) if ticket is not None else 0
    holders = [lease for name in names for lease in tx.leases_on(name)]
    oldest = min(holders, key=lambda lease: lease.token, default=None)
    return ahead, None if oldest is None else lease_of(oldest)


def release(tx: Tx, effects: Effects, lease_id: str) -> bool:
    """Give a lease's slots back and serve the queue; False if there was no such lease (idempotent)."""
    key = parse_lease_id(lease_id)
    lease = None if key is None else tx.pop_lease(*key)
    if lease is None:
        return False
    if _reaping.record_occupancy(tx, lease):
        serve(tx, effects, set(lease.names), None, freed=True)
    return True


def _existing_lease(tx: Tx, lease_id: str) -> LeaseRow:
    key = parse_lease_id(lease_id)
    row = None if key is None else tx.select_lease(*key)
    if row is None:
        raise LeaseNotFoundError(lease_id)
    return row


def renew(tx: Tx, effects: Effects, lease_id: str, duration: float) -> Lease | None:
    """Extend a lease to *duration* seconds from now. A lease that is over (expired, or its holder
    died) is reclaimed instead, and None returned: the caller raises, after this commits."""
    row = _existing_lease(tx, lease_id)
    if _reaping.Liveness(tx).lease_gone(row):
        serve(tx, effects, set(_reaping.drop_lease(tx, row)), None, freed=True)
        return None
    tx.renew_lease(row, duration, tx.now)
    return lease_of(_existing_lease(tx, lease_id))


def renewed(backend: Backend, lease_id: str, duration: float, *, blocking: bool = True) -> Lease:
    """:func:`renew` in its own transaction. :raises LeaseNotFoundError: if the lease is over."""
    lease = transact(backend, renew, lease_id, duration, blocking=blocking)
    if lease is None:
        raise LeaseNotFoundError(lease_id)
    return lease


def set_holder(tx: Tx, effects: Effects, lease_id: str, pid: int, label: str) -> None:
    """Name the process that really holds a lease (``gcl run``'s child)."""
    tx.set_lease_holder(_existing_lease(tx, lease_id), pid, _process.process_start_time(pid), label)


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
    for row, _, _ in tx.select_limits_for_acquire(request.names):
        if not row.active or row.limit <= 0:
            continue
        if row.decay > 0:
            interval = request.occupy / row.decay
        else:
            per_slot = min(row.avg_occupancy, PREFECT_MAX_WAIT_SECONDS)
            interval = min(per_slot * request.occupy / row.limit, PREFECT_MAX_WAIT_SECONDS)
        longest = max(longest, interval)
    return longest or DEFAULT_AVG_OCCUPANCY


def sweep(tx: Tx, effects: Effects) -> None:
    """Reap every dead registration the backend knows of (and its leftovers), then serve the queues
    they stood in."""
    freed: set[str] = set()
    _reaping.sweep(tx, effects, freed)
    tx.backend.tidy()
    if freed:
        serve(tx, effects, freed, None, freed=True)


__all__ = [
    "EPSILON",
    "PREFECT_MAX_WAIT_SECONDS",
    "attempt",
    "attempt_ticket",
    "cancel",
    "format_lease_id",
    "lease_of",
    "level_at",
    "parse_lease_id",
    "probe",
    "release",
    "renew",
    "renewed",
    "retry_interval",
    "serve",
    "set_holder",
    "sweep",
    "tell_vacated",
    "wait_summary",
    "WATCH_AFTER_SECONDS",
]
