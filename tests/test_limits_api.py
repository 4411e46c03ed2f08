from __future__ import annotations

import inspect
import json
import math
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from helpers import is_postgres, store_exists

import gcl_local
from gcl_local import (
    AcquireConcurrencySlotTimeoutError,
    GclError,
    InvalidLimitError,
    Limit,
    LimitExistsError,
    LimitNotFoundError,
    concurrency,
    create_limit,
    delete_limit,
    list_limits,
    read_limit,
    update_limit,
)

LIMIT_FIELDS = {
    "id",
    "name",
    "limit",
    "active",
    "slot_decay_per_second",
    "active_slots",
    "avg_slot_occupancy_seconds",
    "created",
    "updated",
    "holders",
    "waiters",
    "reclaimable",
    "stats",
}

INVALID_NAMES = [
    pytest.param("a/b", id="slash"),
    pytest.param("a%b", id="percent"),
    pytest.param("a&b", id="ampersand"),
    pytest.param("a>b", id="greater"),
    pytest.param("a<b", id="less"),
    pytest.param("", id="empty"),
    pytest.param(" a", id="leading-space"),
    pytest.param("a ", id="trailing-space"),
    pytest.param("\ta", id="leading-tab"),
    pytest.param("a\n", id="trailing-newline"),
    pytest.param("x" * 256, id="256-chars"),
    pytest.param("a\nb", id="newline"),
    pytest.param("a\tb", id="tab"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\x7fb", id="del"),
    pytest.param("a\x1fb", id="unit-separator"),
    pytest.param("a\x85b", id="c1-control"),
    pytest.param(1, id="int"),
    pytest.param(None, id="none"),
    pytest.param(b"abc", id="bytes"),
    pytest.param(["abc"], id="list"),
]

INVALID_COUNTS = [
    pytest.param(-1, id="negative"),
    pytest.param(1.5, id="float"),
    pytest.param(2.0, id="integral-float"),
    pytest.param("3", id="str"),
    pytest.param(True, id="true"),
    pytest.param(False, id="false"),
    pytest.param(math.nan, id="nan"),
]

INVALID_DECAYS = [
    pytest.param(math.nan, id="nan"),
    pytest.param(math.inf, id="inf"),
    pytest.param(-math.inf, id="-inf"),
    pytest.param(-1, id="-1"),
    pytest.param(-0.5, id="-0.5"),
    pytest.param("1.0", id="str"),
    pytest.param([1.0], id="list"),
    pytest.param(None, id="none"),
]


def file_state(db: str) -> dict[str, bytes | None]:
    """The bytes of the state file and its -wal and -shm (None for a file that does not exist)."""
    state: dict[str, bytes | None] = {}
    for suffix in ("", "-wal", "-shm"):
        path = Path(db + suffix)
        state[suffix] = path.read_bytes() if path.exists() else None
    return state


@pytest.fixture
def base(db: str) -> str:
    """A state file holding one limit, 'base'; the file is open in this process."""
    create_limit("base", 3, db=db)
    return db


# -- signatures and the exception tree -----------------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "keyword_only"),
    [
        (create_limit, {"slot_decay_per_second", "active", "active_slots", "db"}),
        (read_limit, {"db"}),
        (list_limits, {"db"}),
        (update_limit, {"limit", "slot_decay_per_second", "active", "active_slots", "db"}),
        (delete_limit, {"db"}),
    ],
)
def test_admin_functions_take_db_and_fields_by_keyword_only(fn: object, keyword_only: set[str]) -> None:
    params = inspect.signature(fn).parameters  # type: ignore[arg-type]
    found = {name for name, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert found == keyword_only


def test_db_passed_positionally_is_a_type_error(db: str) -> None:
    with pytest.raises(TypeError):
        read_limit("x", db)  # type: ignore[misc]
    with pytest.raises(TypeError):
        delete_limit("x", db)  # type: ignore[misc]
    assert not os.path.exists(db)


def test_exception_tree() -> None:
    assert issubclass(LimitNotFoundError, GclError)
    assert issubclass(LimitNotFoundError, LookupError)
    assert issubclass(LimitExistsError, GclError)
    assert issubclass(InvalidLimitError, GclError)
    assert issubclass(InvalidLimitError, ValueError)
    assert issubclass(gcl_local.StoreError, GclError)


def test_exceptions_are_exported_at_top_level() -> None:
    for name in ("GclError", "LimitNotFoundError", "LimitExistsError", "InvalidLimitError", "StoreError", "Limit"):
        assert name in gcl_local.__all__
        assert hasattr(gcl_local, name)


# -- create and read -----------------------------------------------------------------------------


def test_create_returns_limit_with_defaults(db: str) -> None:
    before = datetime.now(timezone.utc)
    limit = create_limit("gpu", 2, db=db)
    after = datetime.now(timezone.utc)
    assert isinstance(limit, Limit)
    assert limit.name == "gpu"
    assert limit.limit == 2
    assert limit.active is True
    assert limit.slot_decay_per_second == 0.0
    assert limit.active_slots == 0
    assert limit.avg_slot_occupancy_seconds == 2.0  # Prefect's starting value
    assert limit.holders == ()
    assert limit.waiters == ()
    assert limit.created.tzinfo is not None
    slack = timedelta(seconds=1)
    assert before - slack <= limit.created <= after + slack
    assert limit.updated == limit.created


def test_read_returns_what_create_stored(db: str) -> None:
    created = create_limit("api", 10, slot_decay_per_second=2.5, active=False, active_slots=4, db=db)
    read = read_limit("api", db=db)
    assert read.name == "api"
    assert read.limit == 10
    assert read.active is False
    assert read.slot_decay_per_second == 2.5
    assert 0 < read.active_slots <= 4
    assert read.created == created.created
    assert read.updated == created.updated


def test_create_accepts_an_int_decay_and_stores_a_float(db: str) -> None:
    limit = create_limit("api", 5, slot_decay_per_second=2, db=db)
    assert limit.slot_decay_per_second == 2.0
    assert isinstance(read_limit("api", db=db).slot_decay_per_second, float)


def test_create_with_active_slots_is_visible_on_read(db: str) -> None:
    create_limit("busy", 5, active_slots=3, db=db)
    assert read_limit("busy", db=db).active_slots == 3


def test_limit_zero_is_valid(db: str) -> None:
    assert create_limit("closed", 0, db=db).limit == 0
    assert read_limit("closed", db=db).limit == 0


def test_create_existing_raises_and_keeps_the_original(db: str) -> None:
    first = create_limit("gpu", 2, db=db)
    with pytest.raises(LimitExistsError, match="gpu") as info:
        create_limit("gpu", 9, slot_decay_per_second=1.0, db=db)
    assert info.value.name == "gpu"
    assert isinstance(info.value, GclError)
    again = read_limit("gpu", db=db)
    assert (again.limit, again.slot_decay_per_second, again.created) == (2, 0.0, first.created)


def test_read_missing_raises_limit_not_found(db: str) -> None:
    create_limit("gpu", 2, db=db)
    with pytest.raises(LimitNotFoundError, match="nope") as info:
        read_limit("nope", db=db)
    assert info.value.name == "nope"
    assert isinstance(info.value, LookupError)


def test_read_missing_on_a_fresh_file_raises_limit_not_found(db: str) -> None:
    with pytest.raises(LimitNotFoundError):
        read_limit("nope", db=db)


def test_names_are_case_sensitive(db: str) -> None:
    create_limit("gpu", 1, db=db)
    create_limit("GPU", 2, db=db)
    assert read_limit("gpu", db=db).limit == 1
    assert read_limit("GPU", db=db).limit == 2
    with pytest.raises(LimitNotFoundError):
        read_limit("Gpu", db=db)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("x" * 255, id="255-chars"),
        pytest.param("göteborg-Ωmega-東京", id="unicode"),
        pytest.param("my limit", id="inner-space"),
        pytest.param("a.b-c_d:e+f=g@h#i!j,k;l'm\"n(o)", id="punctuation"),
        pytest.param("a", id="one-char"),
    ],
)
def test_valid_names_round_trip(db: str, name: str) -> None:
    assert create_limit(name, 1, db=db).name == name
    assert read_limit(name, db=db).name == name
    assert [lim.name for lim in list_limits(db=db)] == [name]
    update_limit(name, limit=2, db=db)
    delete_limit(name, db=db)
    assert list_limits(db=db) == []


def test_list_limits_empty_then_sorted_by_name(db: str) -> None:
    assert list_limits(db=db) == []
    for name in ("b", "c", "a"):
        create_limit(name, 1, db=db)
    limits = list_limits(db=db)
    assert [lim.name for lim in limits] == ["a", "b", "c"]
    assert all(isinstance(lim, Limit) for lim in limits)


def test_list_and_read_agree(db: str) -> None:
    create_limit("a", 1, db=db)
    create_limit("b", 2, slot_decay_per_second=0.5, db=db)
    assert list_limits(db=db) == [read_limit("a", db=db), read_limit("b", db=db)]


# -- Limit.to_json -------------------------------------------------------------------------------


def test_to_json_has_every_field_and_is_json(db: str) -> None:
    limit = create_limit("gpu", 2, slot_decay_per_second=0.5, db=db)
    data = limit.to_json()
    assert set(data) == LIMIT_FIELDS
    assert json.loads(json.dumps(data)) == data
    assert data["name"] == "gpu"
    assert data["limit"] == 2
    assert data["active"] is True
    assert data["slot_decay_per_second"] == 0.5
    assert data["active_slots"] == 0
    assert data["holders"] == []
    assert data["waiters"] == []
    assert datetime.fromisoformat(data["created"]) == limit.created
    assert datetime.fromisoformat(data["updated"]) == limit.updated


def test_holders_while_a_block_is_held(db: str) -> None:
    create_limit("gpu", 3, db=db)
    with concurrency("gpu", occupy=2, db=db) as lease:
        limit = read_limit("gpu", db=db)
        assert limit.active_slots == 2
        assert len(limit.holders) == 1
        holder = limit.holders[0]
        assert holder.id == lease.id
        assert holder.token == lease.token
        assert holder.slots == 2
        assert holder.pid == os.getpid()
        data = limit.to_json()
        assert json.loads(json.dumps(data)) == data
        assert data["holders"][0]["id"] == lease.id
        assert data["holders"][0]["pid"] == os.getpid()
    after = read_limit("gpu", db=db)
    assert after.active_slots == 0
    assert after.holders == ()


def test_waiters_show_a_waiting_process(db: str, procs: Any) -> None:
    create_limit("one", 1, db=db)
    code = (
        "import sys, gcl_local\n"
        "with gcl_local.concurrency('one', timeout_seconds=20, holder='waiting-child', db=sys.argv[1]):\n"
        "    print('got it', flush=True)\n"
    )
    with concurrency("one", db=db):
        child = procs.python(code, db)
        deadline = time.monotonic() + 10
        waiters: tuple[gcl_local.Waiter, ...] = ()
        while time.monotonic() < deadline and not waiters:
            waiters = read_limit("one", db=db).waiters
            time.sleep(0.02)
        assert len(waiters) == 1
        assert waiters[0].pid == child.pid
        assert waiters[0].slots == 1
        assert waiters[0].label == "waiting-child"
        data = read_limit("one", db=db).to_json()
        assert data["waiters"][0]["pid"] == child.pid
        assert json.loads(json.dumps(data)) == data
    out, err = child.communicate(timeout=20)
    assert child.returncode == 0, err
    assert "got it" in out
    assert read_limit("one", db=db).waiters == ()


# -- update ----------------------------------------------------------------------------------------


def test_update_without_arguments_is_invalid(base: str) -> None:
    before = file_state(base)
    with pytest.raises(InvalidLimitError, match=r"^No update arguments provided\.$"):
        update_limit("base", db=base)
    assert file_state(base) == before


def test_update_without_arguments_of_missing_limit_is_invalid_or_not_found(base: str) -> None:
    with pytest.raises((InvalidLimitError, LimitNotFoundError)):
        update_limit("nope", db=base)


def test_update_missing_raises_limit_not_found(base: str) -> None:
    with pytest.raises(LimitNotFoundError, match="nope"):
        update_limit("nope", limit=3, db=base)
    assert [lim.name for lim in list_limits(db=base)] == ["base"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"limit": 7}, (7, 1.5, True)),
        ({"limit": 0}, (0, 1.5, True)),
        ({"slot_decay_per_second": 4.0}, (5, 4.0, True)),
        ({"slot_decay_per_second": 0.0}, (5, 0.0, True)),
        ({"active": False}, (5, 1.5, False)),
        ({"active": True}, (5, 1.5, True)),
        ({"limit": 9, "active": False}, (9, 1.5, False)),
        ({"active_slots": 0}, (5, 1.5, True)),
    ],
)
def test_update_changes_only_the_given_fields(db: str, change: dict[str, object], expected: tuple[object, ...]) -> None:
    created = create_limit("x", 5, slot_decay_per_second=1.5, db=db)
    time.sleep(0.01)
    returned = update_limit("x", **change, db=db)  # type: ignore[arg-type]
    read = read_limit("x", db=db)
    assert (returned.limit, returned.slot_decay_per_second, returned.active) == expected
    assert (read.limit, read.slot_decay_per_second, read.active) == expected
    assert read.name == "x"
    assert read.created == created.created
    assert read.updated > created.updated
    assert read.updated == returned.updated


def test_successive_updates_accumulate(db: str) -> None:
    create_limit("x", 5, db=db)
    update_limit("x", limit=6, db=db)
    update_limit("x", slot_decay_per_second=0.25, db=db)
    update_limit("x", active=False, db=db)
    read = read_limit("x", db=db)
    assert (read.limit, read.slot_decay_per_second, read.active) == (6, 0.25, False)


def test_update_active_slots_sets_the_level(db: str) -> None:
    create_limit("x", 5, db=db)
    returned = update_limit("x", active_slots=3, db=db)
    assert returned.active_slots == 3
    assert read_limit("x", db=db).active_slots == 3
    update_limit("x", active_slots=0, db=db)
    assert read_limit("x", db=db).active_slots == 0


def test_update_of_other_fields_keeps_the_level(db: str) -> None:
    create_limit("x", 5, active_slots=4, db=db)
    update_limit("x", limit=10, db=db)
    assert read_limit("x", db=db).active_slots == 4
    update_limit("x", active=False, db=db)
    update_limit("x", active=True, db=db)
    assert read_limit("x", db=db).active_slots == 4
    update_limit("x", slot_decay_per_second=0.001, db=db)  # the level stays; it starts to decay now
    assert read_limit("x", db=db).active_slots == 4


def test_active_slots_decay_over_time(db: str) -> None:
    create_limit("x", 10, slot_decay_per_second=20.0, active_slots=8, db=db)
    time.sleep(0.2)  # 8 - 20 * 0.2 = 4 at most
    assert read_limit("x", db=db).active_slots <= 4


def test_active_slots_set_by_admin_take_room(db: str) -> None:
    create_limit("x", 2, active_slots=2, db=db)
    with pytest.raises(AcquireConcurrencySlotTimeoutError):
        with concurrency("x", timeout_seconds=0, db=db):
            pass
    update_limit("x", active_slots=1, db=db)
    with concurrency("x", timeout_seconds=0, db=db):
        assert read_limit("x", db=db).active_slots == 2


def test_update_active_slots_never_touches_held_leases(db: str) -> None:
    create_limit("x", 5, db=db)
    with concurrency("x", occupy=2, db=db) as lease:
        update_limit("x", active_slots=1, db=db)
        held = read_limit("x", db=db)
        assert held.active_slots == 3
        assert [h.id for h in held.holders] == [lease.id]
        update_limit("x", active_slots=0, db=db)  # does not free the leased slots either
        assert read_limit("x", db=db).active_slots == 2
        update_limit("x", active_slots=1, db=db)
    assert read_limit("x", db=db).active_slots == 1


# -- delete ----------------------------------------------------------------------------------------


def test_delete_removes_the_limit(db: str) -> None:
    create_limit("a", 1, db=db)
    create_limit("b", 1, db=db)
    assert delete_limit("a", db=db) is None
    with pytest.raises(LimitNotFoundError):
        read_limit("a", db=db)
    assert [lim.name for lim in list_limits(db=db)] == ["b"]


def test_delete_missing_raises_limit_not_found(base: str) -> None:
    with pytest.raises(LimitNotFoundError, match="nope"):
        delete_limit("nope", db=base)
    assert [lim.name for lim in list_limits(db=base)] == ["base"]


def test_delete_twice_raises_the_second_time(db: str) -> None:
    create_limit("a", 1, db=db)
    delete_limit("a", db=db)
    with pytest.raises(LimitNotFoundError):
        delete_limit("a", db=db)


def test_delete_while_held_then_recreate(db: str) -> None:
    """The holders of a deleted limit count on a limit created again under its name, until they release."""
    create_limit("a", 1, active_slots=0, db=db)
    with concurrency("a", db=db) as lease:
        delete_limit("a", db=db)
        assert list_limits(db=db) == []
        fresh = create_limit("a", 4, db=db)
        assert fresh.active_slots == 1
        assert [h.id for h in fresh.holders] == [lease.id]
    assert read_limit("a", db=db).active_slots == 0
    assert read_limit("a", db=db).holders == ()


# -- invalid input never reaches the file ----------------------------------------------------------


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_name_is_refused_everywhere(base: str, name: object) -> None:
    listed = list_limits(db=base)
    before = file_state(base)
    calls = [
        lambda: create_limit(name, 1, db=base),  # type: ignore[arg-type]
        lambda: read_limit(name, db=base),  # type: ignore[arg-type]
        lambda: update_limit(name, limit=1, db=base),  # type: ignore[arg-type]
        lambda: delete_limit(name, db=base),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(InvalidLimitError) as info:
            call()
        assert isinstance(info.value, ValueError)
        assert isinstance(info.value, GclError)
        assert "\n" not in str(info.value)
    assert file_state(base) == before
    assert list_limits(db=base) == listed


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_name_creates_no_file(db: str, name: object) -> None:
    with pytest.raises(InvalidLimitError):
        create_limit(name, 1, db=db)  # type: ignore[arg-type]
    assert not store_exists(db)
    if not is_postgres(db):
        assert os.listdir(os.path.dirname(db)) == []


@pytest.mark.parametrize("value", [*INVALID_COUNTS, pytest.param(None, id="none")])
def test_invalid_limit_on_create(base: str, value: object) -> None:
    listed = list_limits(db=base)
    before = file_state(base)
    with pytest.raises(InvalidLimitError):
        create_limit("new", value, db=base)  # type: ignore[arg-type]
    assert file_state(base) == before
    assert list_limits(db=base) == listed


@pytest.mark.parametrize("value", INVALID_COUNTS)
def test_invalid_active_slots_on_create(base: str, value: object) -> None:
    listed = list_limits(db=base)
    before = file_state(base)
    with pytest.raises(InvalidLimitError):
        create_limit("new", 5, active_slots=value, db=base)  # type: ignore[arg-type]
    assert file_state(base) == before
    assert list_limits(db=base) == listed


@pytest.mark.parametrize("value", INVALID_DECAYS)
def test_invalid_decay_on_create(base: str, value: object) -> None:
    listed = list_limits(db=base)
    before = file_state(base)
    with pytest.raises(InvalidLimitError):
        create_limit("new", 5, slot_decay_per_second=value, db=base)  # type: ignore[arg-type]
    assert file_state(base) == before
    assert list_limits(db=base) == listed


@pytest.mark.parametrize("value", [pytest.param("yes", id="str"), pytest.param(None, id="none")])
def test_invalid_active_on_create(base: str, value: object) -> None:
    before = file_state(base)
    with pytest.raises(InvalidLimitError):
        create_limit("new", 5, active=value, db=base)  # type: ignore[arg-type]
    assert file_state(base) == before


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"limit": -1}, id="limit-negative"),
        pytest.param({"limit": 1.5}, id="limit-float"),
        pytest.param({"limit": "3"}, id="limit-str"),
        pytest.param({"limit": True}, id="limit-bool"),
        pytest.param({"active_slots": -1}, id="active_slots-negative"),
        pytest.param({"active_slots": 0.5}, id="active_slots-float"),
        pytest.param({"active_slots": True}, id="active_slots-bool"),
        pytest.param({"slot_decay_per_second": math.nan}, id="decay-nan"),
        pytest.param({"slot_decay_per_second": math.inf}, id="decay-inf"),
        pytest.param({"slot_decay_per_second": -1}, id="decay-negative"),
        pytest.param({"slot_decay_per_second": "2"}, id="decay-str"),
        pytest.param({"active": "no"}, id="active-str"),
        # One bad field spoils the whole update: the good ones are not applied either.
        pytest.param({"limit": 9, "slot_decay_per_second": math.nan}, id="good-limit-bad-decay"),
        pytest.param({"active": False, "limit": -2}, id="good-active-bad-limit"),
        pytest.param({"active_slots": 2, "slot_decay_per_second": -0.1}, id="good-slots-bad-decay"),
    ],
)
def test_invalid_update_changes_nothing(base: str, value: dict[str, object]) -> None:
    listed = list_limits(db=base)
    before = file_state(base)
    with pytest.raises(InvalidLimitError):
        update_limit("base", **value, db=base)  # type: ignore[arg-type]
    assert file_state(base) == before
    assert list_limits(db=base) == listed


def test_invalid_error_messages_name_the_problem(db: str) -> None:
    with pytest.raises(InvalidLimitError, match="limit"):
        create_limit("x", -1, db=db)
    with pytest.raises(InvalidLimitError, match="slot_decay_per_second"):
        create_limit("x", 1, slot_decay_per_second=math.nan, db=db)
    with pytest.raises(InvalidLimitError, match="active_slots"):
        create_limit("x", 1, active_slots=-1, db=db)
    with pytest.raises(InvalidLimitError, match="255"):
        create_limit("x" * 256, 1, db=db)
