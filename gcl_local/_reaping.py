"""Reaping, and the liveness decisions behind it: who is dead, what they held, what a reader shows.

A lease is gone when its holder died, and expiry decides only where liveness cannot be told (a lease
held by pid on another host, or a registration the backend cannot judge). A dead process's leases
and tickets go together. Reaping is done by the process that needs the room (a waiter for itself,
a newcomer at the head of a queue): never by a releaser, whose transaction is on every hand-off's
path. Readers tell the dead apart without reaping them (:class:`Snapshot`).
"""

from __future__ import annotations

from collections.abc import Iterable

from . import _log
from ._backend import LeaseRow, LimitRow, TicketRow, Tx
from ._effects import Effects

MIN_OCCUPANCY_SAMPLE = 0.1
"""Seconds: a shorter hold counts as this long in the moving average of occupancy."""


class Liveness:
    """Liveness answers for one transaction: each registration is checked at most once."""

    def __init__(self, tx: Tx) -> None:
        self.tx = tx
        self.answers: dict[str, bool | None] = {}

    def alive(self, name: str) -> bool | None:
        if name not in self.answers:
            self.answers[name] = self.tx.backend.alive(name)
        return self.answers[name]

    def holder_exited(self, ticket: TicketRow) -> bool:
        """Whether the process a ticket's lease would be held by (``gcl acquire``'s script) has exited:
        its lease would be reaped at the next look, so the ticket is never served, nor may it block."""
        if not ticket.by_pid or ticket.pid is None:
            return False
        return self.tx.backend.pid_alive(ticket.pid, ticket.pid_start, ticket.host) is False

    def lease_gone(self, lease: LeaseRow) -> bool:
        """A lease is gone when its holder died; expiry decides only where liveness cannot be checked."""
        if lease.registration is not None:
            alive = self.alive(lease.registration)
            if alive is not None:
                return not alive
        elif lease.pid is not None and self.tx.backend.pid_alive(lease.pid, lease.pid_start, lease.host) is False:
            return True
        return lease.expires_boot <= self.tx.now.boot


def drop_holder(tx: Tx, effects: Effects, registration: str, freed: set[str]) -> None:
    """Remove every lease and ticket of a dead process."""
    for lease in tx.leases_of_holder(registration):
        freed.update(drop_lease(tx, lease))
    for ticket in tx.tickets_of_holder(registration):
        freed.update(ticket.names)
        effects.vacated.update(ticket.names)
        tx.delete_ticket(ticket)
    effects.dead_registrations.add(registration)
    _log.debug("reaped the leases and tickets of dead holder %s", registration)


def drop_lease(tx: Tx, lease: LeaseRow) -> tuple[str, ...]:
    """Reclaim a lease (its holder died, or it expired), feeding its occupancy time to its limits'
    averages and history; return its names."""
    tx.delete_lease(lease)
    record_occupancy(tx, lease, reclaimed=True)
    return lease.names


def record_occupancy(tx: Tx, lease: LeaseRow, *, reclaimed: bool = False) -> bool:
    """Feed a lease's occupancy to its limits' averages and history; True if anyone waits on them."""
    names = lease.names
    if not names:
        return False
    occupied = max(0.0, tx.now.boot - lease.acquired_boot)
    per_slot = max(occupied / max(lease.slots, 1), MIN_OCCUPANCY_SAMPLE)
    unqueued = int(lease.ticket is None)  # its acquisition is counted now (see ``_admission.count_acquisition``)
    return tx.record_occupancy(names, per_slot, occupied * lease.slots, int(reclaimed), unqueued)


def reap_leases(tx: Tx, effects: Effects, names: Iterable[str], live: Liveness, freed: set[str]) -> bool:
    """Free the leases on *names* whose holders died or expired; True if any was freed."""
    reaped = False
    for name in names:
        for lease in tx.leases_on(name):
            if not live.lease_gone(lease):
                continue
            reaped = True
            if lease.registration is not None and live.alive(lease.registration) is False:
                drop_holder(tx, effects, lease.registration, freed)
            else:
                freed.update(drop_lease(tx, lease))
    return reaped


def reap_dead_heads(tx: Tx, effects: Effects, names: list[str], live: Liveness, freed: set[str]) -> bool:
    """Reap the dead waiters at the head of the queues on *names*, oldest first; True if none is left.

    It stops at the first live one (or one it cannot tell), so its cost grows with the dead found,
    not with the length of the queue.
    """
    while True:
        head = tx.oldest_ticket_on(names)
        if head is None:
            return True
        if live.alive(head.registration) is False:
            drop_holder(tx, effects, head.registration, freed)  # its tickets, this one included
        elif live.holder_exited(head):
            tx.delete_ticket(head)  # its waiter (alive) learns it when it looks: no ticket, no lease
            effects.poke(head.channel, head.ticket)
            freed.update(head.names)
            effects.vacated.update(head.names)
        else:
            return False


def reap_just_ahead(
    tx: Tx, effects: Effects, names: tuple[str, ...], ticket: int, ahead: int, live: Liveness, freed: set[str]
) -> int | None:
    """Reap the dead waiters just ahead of *ticket*, nearest first; return the live one now ahead.

    Only the nearest: a waiter further ahead is watched by the one behind it (see ``_admission.probe``),
    so the cost grows with the dead found, not with our place in the queue.
    """
    just_ahead: int | None = ahead
    while just_ahead is not None:
        row = tx.select_ticket(just_ahead)
        if row is not None and live.alive(row.registration) is not False:
            return just_ahead
        if row is not None:
            drop_holder(tx, effects, row.registration, freed)  # its tickets, this one included
        just_ahead = tx.ticket_ahead(names, ticket)
    return None


class Snapshot:
    """What a reader needs to tell the living from the dead without reaping them."""

    def __init__(self, tx: Tx) -> None:
        self.live = Liveness(tx)
        # After a reboot nothing has rebased the file yet (a reader does not write): every holder
        # and waiter of the old boot is gone, and buckets decay by the wall clock since then.
        self.old_boot = tx.predates_boot()

    def row(self, tx: Tx, row: LimitRow) -> LimitRow:
        if not self.old_boot:
            return row
        return row._replace(level_boot=tx.now.boot - max(0.0, tx.now.wall - row.level_wall))

    def lease_gone(self, lease: LeaseRow) -> bool:
        return self.old_boot or self.live.lease_gone(lease)

    def ticket_gone(self, ticket: TicketRow) -> bool:
        return self.old_boot or self.live.alive(ticket.registration) is False or self.live.holder_exited(ticket)


def sweep(tx: Tx, effects: Effects, freed: set[str]) -> None:
    """Reap every registration the backend's census finds dead, and the rows that name it."""
    live = Liveness(tx)
    for registration in tx.backend.census():
        if live.alive(registration) is False:
            drop_holder(tx, effects, registration, freed)


def forget_registration(tx: Tx, effects: Effects, registration: str) -> None:
    """At a process's exit: forget its registration unless a lease or ticket still names it."""
    if not tx.leases_of_holder(registration) and not tx.tickets_of_holder(registration):
        effects.dead_registrations.add(registration)


__all__ = [
    "Liveness",
    "MIN_OCCUPANCY_SAMPLE",
    "Snapshot",
    "drop_holder",
    "drop_lease",
    "forget_registration",
    "reap_dead_heads",
    "reap_just_ahead",
    "reap_leases",
    "record_occupancy",
    "sweep",
]
