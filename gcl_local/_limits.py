"""Administration of limits from Python: create, read, list, update, delete.

Every function checks its arguments before it touches the file, so an invalid value never
reaches it; writes that change a limit are durable (``synchronous=FULL``) once the call returns.
"""

from __future__ import annotations

from . import _core
from ._errors import InvalidLimitError
from ._model import Limit, validate_bool, validate_count, validate_decay, validate_name
from ._store import get_store
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
    """The limit called *name*, with its occupancy, holders and waiters now.

    :raises LimitNotFoundError: if there is none.
    """
    validate_name(name)
    return _core.transact(get_store(db), _core.read_limit, name)


def list_limits(*, db: DbArg = None) -> list[Limit]:
    """Every limit, by name, with its occupancy, holders and waiters now."""
    return _core.transact(get_store(db), _core.list_limits)


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


__all__ = ["create_limit", "delete_limit", "list_limits", "read_limit", "update_limit"]
