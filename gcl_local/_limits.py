"""Administration of limits: create, read, list, update, delete, and the transactions behind them.

Every function checks its arguments before it touches the store, so an invalid value never
reaches it; writes that change a limit are durable once the call returns. Reads take a snapshot
(no write lock, nothing written): dead holders are shown as reclaimable, not reaped.
"""

from __future__ import annotations

import math

from ._admission import EPSILON, lease_of, level_at, serve
from ._backend import STATS_COUNTERS, Backend, DbArg, LeaseRow, LimitRow, StatsRow, Tx, open_backend
from ._effects import Effects, transact
from ._errors import InvalidLimitError, LimitExistsError, LimitNotFoundError, NoStateFileError
from ._model import (
    DEFAULT_AVG_OCCUPANCY,
    Limit,
    Stats,
    Waiter,
    utc,
    validate_bool,
    validate_count,
    validate_decay,
    validate_name,
)
from ._reaping import Snapshot


def create_limit(
    name: str,
    limit: int,
    *,
    slot_decay_per_second: float = 0.0,
    active: bool = True,
    active_slots: int = 0,
    db: DbArg = None,
) -> Limit:
    """Create a limit of *limit* slots; with ``slot_decay_per_second`` > 0 it can also rate-limit.

    :raises LimitExistsError: if a limit of that name exists.
    :raises InvalidLimitError: for an invalid name or value.
    """
    validate_name(name)
    validate_count(limit, "limit")
    decay = validate_decay(slot_decay_per_second)
    validate_bool(active, "active")
    validate_count(active_slots, "active_slots")
    return transact(open_backend(db), create, name, limit, decay, active, active_slots, durable=True)


def read_limit(name: str, *, db: DbArg = None) -> Limit:
    """The limit called *name*, with its occupancy, holders, waiters and history, from a snapshot.

    A read takes no write lock and writes nothing: holders that died are listed in ``reclaimable``,
    not reaped. It never creates the state file.

    :raises LimitNotFoundError: if there is none (also when there is no state file yet).
    """
    validate_name(name)
    try:
        return snapshot(open_backend(db), name)[0]
    except NoStateFileError:
        raise LimitNotFoundError(name) from None


def list_limits(*, db: DbArg = None) -> list[Limit]:
    """Every limit, by name, with its occupancy, holders, waiters and history, from one snapshot.

    Like :func:`read_limit`, it writes nothing; with no state file yet there are no limits.
    """
    try:
        return snapshot(open_backend(db))
    except NoStateFileError:
        return []


def snapshot(backend: Backend, name: str | None = None) -> list[Limit]:
    """Every limit (or the one called *name*) from one read transaction: what ``ls``, ``inspect``,
    ``top``, ``metrics`` and ``serve`` show.

    :raises NoStateFileError: if there is no state file yet (none is created).
    :raises LimitNotFoundError: if *name* is given and there is no such limit.
    :raises InvalidLimitError: if *name* is not a valid name (checked before the store is touched).
    """
    if name is not None:
        validate_name(name)
    with backend.read() as tx:
        return read_all(tx) if name is None else [read_one(tx, name)]


def reset_stats(name: str, *, db: DbArg = None) -> Limit:
    """Zero the history of a limit (its counters and wait-time histogram).

    :raises LimitNotFoundError: if there is no such limit.
    """
    validate_name(name)
    return transact(open_backend(db), reset, name, durable=True)


def update_limit(
    name: str,
    *,
    limit: int | None = None,
    slot_decay_per_second: float | None = None,
    active: bool | None = None,
    active_slots: int | None = None,
    db: DbArg = None,
) -> Limit:
    """Change the given fields of a limit (the others stay); waiters that now fit are served at once.

    Setting ``active_slots`` sets the level of the decaying bucket; it never touches held leases.

    :raises LimitNotFoundError: if there is no such limit.
    :raises InvalidLimitError: for an invalid value, or when no field is given.
    """
    validate_name(name)
    if limit is None and slot_decay_per_second is None and active is None and active_slots is None:
        raise InvalidLimitError("No update arguments provided.")
    new_limit = None if limit is None else validate_count(limit, "limit")
    decay = None if slot_decay_per_second is None else validate_decay(slot_decay_per_second)
    new_active = None if active is None else validate_bool(active, "active")
    slots = None if active_slots is None else validate_count(active_slots, "active_slots")
    backend = open_backend(db)
    return transact(backend, update, name, new_limit, decay, new_active, slots, durable=True)


def delete_limit(name: str, *, db: DbArg = None) -> None:
    """Delete a limit; its holders keep running, and its waiters find it missing.

    The holders are not forgotten: a limit created again under the same name counts their slots
    until they release them, so it does not admit new holders beside them.

    :raises LimitNotFoundError: if there is no such limit.
    """
    validate_name(name)
    transact(open_backend(db), delete, name, durable=True)


# -- the transactions ----------------------------------------------------------------------------


def create(tx: Tx, effects: Effects, name: str, limit: int, decay: float, active: bool, active_slots: int) -> Limit:
    if tx.select_limits([name]):
        raise LimitExistsError(name)
    now = tx.now
    row = LimitRow(name, limit, active, decay, float(active_slots), now.boot, now.wall,
                   DEFAULT_AVG_OCCUPANCY, now.wall, now.wall)  # fmt: skip
    tx.insert_limit(row)
    return _describe(tx, row)


def update(
    tx: Tx,
    effects: Effects,
    name: str,
    limit: int | None,
    decay: float | None,
    active: bool | None,
    active_slots: int | None,
) -> Limit:
    rows = tx.select_limits([name])
    if not rows:
        raise LimitNotFoundError(name)
    row, now = rows[0], tx.now
    # Carry the decay accrued so far before a new rate or level applies; nothing else resets it.
    level, level_boot, level_wall = row.level, row.level_boot, row.level_wall
    if active_slots is not None:
        level, level_boot, level_wall = float(active_slots), now.boot, now.wall
    elif decay is not None and decay != row.decay:
        level, level_boot, level_wall = level_at(row, now.boot), now.boot, now.wall
    new = row._replace(
        limit=row.limit if limit is None else limit,
        decay=row.decay if decay is None else decay,
        active=row.active if active is None else active,
        level=level,
        level_boot=level_boot,
        level_wall=level_wall,
        updated=now.wall,
    )
    tx.update_limit(new)
    serve(tx, effects, {name}, None, freed=True)
    return _describe(tx, new)


def delete(tx: Tx, effects: Effects, name: str) -> None:
    if not tx.delete_limit(name):
        raise LimitNotFoundError(name)
    serve(tx, effects, {name}, None, freed=True)  # its waiters now find it missing


def reset(tx: Tx, effects: Effects, name: str) -> Limit:
    """Zero the history of a limit."""
    if not tx.reset_stats(name, tx.now.wall):
        raise LimitNotFoundError(name)
    return _describe(tx, tx.select_limits([name])[0])


def read_one(tx: Tx, name: str) -> Limit:
    """One limit as of the snapshot *tx* (a read transaction): nothing is reaped or written."""
    rows = tx.select_limits([name])
    if not rows:
        raise LimitNotFoundError(name)
    return _describe(tx, rows[0], Snapshot(tx))


def read_all(tx: Tx) -> list[Limit]:
    """Every limit, by name, as of the snapshot *tx*."""
    snapshot = Snapshot(tx)
    return [_describe(tx, row, snapshot) for row in tx.select_all_limits()]


def _describe(tx: Tx, row: LimitRow, snapshot: Snapshot | None = None) -> Limit:
    """A limit with its holders, waiters and history; the dead are told apart, not reaped."""
    snapshot = snapshot or Snapshot(tx)
    row = snapshot.row(tx, row)
    holders: list[LeaseRow] = []
    reclaimable: list[LeaseRow] = []
    leases = tx.leases_on(row.name)
    for lease in leases:
        (reclaimable if snapshot.lease_gone(lease) else holders).append(lease)
    held = sum(lease.slots for lease in holders)
    occupancy = held + level_at(row, tx.now.boot)
    stats = tx.select_stats(row.name).get(row.name)
    return Limit(
        name=row.name,
        limit=row.limit,
        active=row.active,
        slot_decay_per_second=row.decay,
        active_slots=max(0, math.ceil(occupancy - EPSILON)),
        avg_slot_occupancy_seconds=row.avg_occupancy,
        created=utc(row.created),
        updated=utc(row.updated),
        holders=tuple(lease_of(lease) for lease in holders),
        waiters=tuple(
            Waiter(t.ticket, t.slots, t.kind, t.pid, t.label, utc(t.since_wall))
            for t in tx.waiting_on(row.name)
            if not snapshot.ticket_gone(t)
        ),
        reclaimable=tuple(lease_of(lease) for lease in reclaimable),
        stats=None if stats is None else _stats(tx, row, stats, holders, leases),
    )


def _stats(tx: Tx, row: LimitRow, stats: StatsRow, holders: list[LeaseRow], leases: list[LeaseRow]) -> Stats:
    # Slot-seconds of the leases held now count too, so the total only grows (their release adds
    # the same amount to the stored counter).
    held_now = sum(max(0.0, tx.now.boot - lease.acquired_boot) * lease.slots for lease in holders)
    counters = dict(zip(STATS_COUNTERS, stats.counters, strict=True))
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


__all__ = [
    "create",
    "create_limit",
    "delete",
    "delete_limit",
    "list_limits",
    "read_all",
    "read_limit",
    "read_one",
    "reset",
    "reset_stats",
    "snapshot",
    "update",
    "update_limit",
]
