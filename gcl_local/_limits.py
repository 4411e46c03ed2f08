"""Administration of limits from Python: create, read, list, update, delete.

Every function checks its arguments before it touches the file, so an invalid value never
reaches it; writes that change a limit are durable (``synchronous=FULL``) once the call returns.
"""

from __future__ import annotations

from . import _core
from ._errors import InvalidLimitError, LimitNotFoundError, NoStateFileError
from ._model import Limit, validate_bool, validate_count, validate_decay, validate_name
from ._store import Store, get_store
from .sync import DbArg


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
    return _core.transact(get_store(db), _core.create_limit, name, limit, decay, active, active_slots, durable=True)


def read_limit(name: str, *, db: DbArg = None) -> Limit:
    """The limit called *name*, with its occupancy, holders, waiters and history, from a snapshot.

    A read takes no write lock and writes nothing: holders that died are listed in ``reclaimable``,
    not reaped. It never creates the state file.

    :raises LimitNotFoundError: if there is none (also when there is no state file yet).
    """
    validate_name(name)
    try:
        return snapshot(get_store(db), name)[0]
    except NoStateFileError:
        raise LimitNotFoundError(name) from None


def list_limits(*, db: DbArg = None) -> list[Limit]:
    """Every limit, by name, with its occupancy, holders, waiters and history, from one snapshot.

    Like :func:`read_limit`, it writes nothing; with no state file yet there are no limits.
    """
    try:
        return snapshot(get_store(db))
    except NoStateFileError:
        return []


def snapshot(store: Store, name: str | None = None) -> list[Limit]:
    """Every limit (or the one called *name*) from one read transaction: what ``ls``, ``inspect``,
    ``top``, ``metrics`` and ``serve`` show.

    :raises NoStateFileError: if there is no state file yet (none is created).
    :raises LimitNotFoundError: if *name* is given and there is no such limit.
    :raises InvalidLimitError: if *name* is not a valid name (checked before the store is touched).
    """
    if name is not None:
        validate_name(name)
    with store.read() as tx:
        return _core.list_limits(tx) if name is None else [_core.read_limit(tx, name)]


def reset_stats(name: str, *, db: DbArg = None) -> Limit:
    """Zero the history of a limit (its counters and wait-time histogram).

    :raises LimitNotFoundError: if there is no such limit.
    """
    validate_name(name)
    return _core.transact(get_store(db), _core.reset_stats, name, durable=True)


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
    store = get_store(db)
    return _core.transact(store, _core.update_limit, name, new_limit, decay, new_active, slots, durable=True)


def delete_limit(name: str, *, db: DbArg = None) -> None:
    """Delete a limit; its holders keep running, and its waiters find it missing.

    The holders are not forgotten: a limit created again under the same name counts their slots
    until they release them, so it does not admit new holders beside them.

    :raises LimitNotFoundError: if there is no such limit.
    """
    validate_name(name)
    _core.transact(get_store(db), _core.delete_limit, name, durable=True)


__all__ = ["create_limit", "delete_limit", "list_limits", "read_limit", "reset_stats", "snapshot", "update_limit"]
