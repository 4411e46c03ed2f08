"""Property-based tests: whatever values, names, command lines or damaged files come in, gcl_local
answers with a result that is right or with an error of its documented type, and an error leaves
the state file as it was.

Each test shares one state file between its examples (hypothesis calls the body many times per
fixture), so every body resets what it changed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import subprocess
import sys
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

import apsw
import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from typer.testing import CliRunner

import gcl_local
from gcl_local import (
    ConcurrencySlotAcquisitionError,
    GclError,
    InvalidLimitError,
    LimitExistsError,
    LimitNotFoundError,
    MissingLimitWarning,
    StoreError,
    _cli,
    _commands,
    _shell,
    concurrency,
    create_limit,
    delete_limit,
    list_limits,
    rate_limit,
    read_limit,
    update_limit,
)
from gcl_local.sqlite import _sql, get_store

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")
MAX_SLOTS = 10**12
"""The documented upper bound of counts (``gcl_local._model.MAX_SLOTS``): below it every count is valid."""

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FEW = settings(FUZZ, max_examples=40)

# -- strategies --------------------------------------------------------------------------------------

NASTY_NAMES = [
    "'; DROP TABLE limits; --",
    "x'); DELETE FROM limits; --",
    "' OR '1'='1",
    'a"b',
    "a\\b",
    "a_c",
    "*",
    "?",
    "1",
    "0x10",
    "NULL",
    "a;b",
    "a b",
    "ü",
    "u\u0308",
    "名前",
    "😀",
    "a\u200bb",
    "\u202eevil",
    "-n",
    "--db",
    "x" * 255,
    "x" * 256,
    "é" * 255,
    "",
    " ",
    " lead",
    "trail ",
    "\u00a0x",
    "x\u3000",
    "a%",
    "%",
    "a/b",
    "a&b",
    "<a>",
    "a\x00b",
    "a\x1fb",
    "a\nb",
    "\x7f",
    "a\x85",
    "\ud800",
    "a\udcffb",
]

names = st.one_of(
    st.sampled_from(NASTY_NAMES),
    st.text(max_size=12),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=8),
    st.text(alphabet="' ;-%_\"\\/&<>()*=\x00\x1f\t\n", min_size=1, max_size=10),
    st.text(alphabet="ab", min_size=250, max_size=260),
)
non_str = st.sampled_from([None, 1, 1.5, b"abc", ["abc"], {"a": 1}, True])
any_name = st.one_of(names, non_str)

SPECIAL_VALUES = [
    *(-1, 0, 1, 2, 3, 10**12, 10**12 + 1, 2**63 - 1, 2**63, 2**64, 10**30, -(10**30), 10**400, -(10**400)),
    *(math.nan, math.inf, -math.inf, -0.0, 0.0, 0.5, 2.0, 1e308, 5e-324),
    *(True, False, None, "3", "nan", "", b"1", [1], {}, 1j),
]
values = st.one_of(st.sampled_from(SPECIAL_VALUES), st.integers(), st.floats(), st.text(max_size=4))


def valid_name(name: object) -> bool:
    """The documented rule: non-empty, <= 255 characters, none of / % & > <, no control characters,
    no leading or trailing whitespace (and text that can be stored, so no lone surrogates), and no
    invisible or format characters (U+200B, U+202E, U+2028, unassigned code points...)."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= 255
        and name == name.strip()
        and not set(name) & set("/%&><")
        and all(unicodedata.category(c) not in ("Cc", "Cs", "Cf", "Co", "Cn", "Zl", "Zp") for c in name)
    )


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def count_verdict(value: object, minimum: int = 0) -> bool | None:
    """True: must be accepted; False: must be refused; None: either (an int above the documented bound)."""
    if not is_int(value):
        return False
    assert isinstance(value, int)
    if value < minimum:
        return False
    return True if value <= MAX_SLOTS else None


def decay_verdict(value: object) -> bool:
    """slot_decay_per_second: a number, finite and >= 0 as a float (an int too big for a float cannot be one)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        as_float = float(value)
    except OverflowError:
        return False
    return math.isfinite(as_float) and as_float >= 0


def seconds_verdict(value: object, low: float = 0.0, high: float = math.inf) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        as_float = float(value)
    except OverflowError:
        return False
    return math.isfinite(as_float) and low <= as_float <= high


# -- helpers -----------------------------------------------------------------------------------------


def snapshot(db: str) -> list[dict[str, Any]]:
    """Everything the library reports about every limit (what an error must leave as it was), but
    the history counters: a refusal is counted, by design (see test_history)."""
    return [{k: v for k, v in limit.to_json().items() if k != "stats"} for limit in list_limits(db=db)]


def fail_escaped(exc: BaseException) -> None:
    pytest.fail(f"{type(exc).__module__}.{type(exc).__qualname__} escaped the public API: {exc!r}")


@contextlib.contextmanager
def only_gcl_errors() -> Iterator[None]:
    """Let GclError through (the caller checks it); anything else, apsw's above all, fails the test."""
    try:
        yield
    except GclError:
        raise
    except Exception as exc:
        fail_escaped(exc)


def attempt(call: Callable[[], T]) -> tuple[T | None, GclError | None]:
    """``(result, None)`` or ``(None, the GclError)``; any other exception fails the test."""
    try:
        with only_gcl_errors():
            result = call()
    except GclError as exc:
        note(f"raised {type(exc).__name__}")
        return None, exc
    note("succeeded")
    return result, None


def note(what: str) -> None:
    """Count an outcome for ``--hypothesis-show-statistics`` (nothing outside a hypothesis test)."""
    with contextlib.suppress(InvalidArgument):
        event(what)


@pytest.fixture(autouse=True)
def _in_a_scratch_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fuzzed command lines may name a relative --db: keep whatever they create out of the repository."""
    scratch = tmp_path / "cwd"
    scratch.mkdir()
    monkeypatch.chdir(scratch)


def hold_once(db: str, name: str = "made", **kwargs: Any) -> gcl_local.Lease:
    kwargs.setdefault("timeout_seconds", 0)
    with concurrency(name, db=db, **kwargs) as lease:
        return lease


# -- the Python API ------------------------------------------------------------------------------------

good_names = names.filter(valid_name)
good_counts = st.one_of(st.integers(min_value=0, max_value=20), st.sampled_from([0, MAX_SLOTS]))
good_decays = st.one_of(
    st.floats(min_value=0, max_value=1e6), st.integers(min_value=0, max_value=100), st.sampled_from([0.0, 5e-324])
)


def draw_fields(
    data: st.DataObject, good: dict[str, st.SearchStrategy[Any]], anything: dict[str, Any]
) -> dict[str, Any]:
    """Valid values for most fields; up to two fields (drawn) get any value at all, valid or not."""
    wild = data.draw(st.sets(st.sampled_from(sorted(good)), max_size=2), label="fields with any value")
    return {field: data.draw(anything[field] if field in wild else good[field], label=field) for field in sorted(good)}


@FUZZ
@given(data=st.data())
def test_create_limit_accepts_exactly_the_valid_values(db: str, data: st.DataObject) -> None:
    fields = draw_fields(
        data,
        {"name": good_names, "limit": good_counts, "decay": good_decays, "active": st.booleans(),
         "active_slots": good_counts},
        {"name": any_name, "limit": values, "decay": values, "active": values, "active_slots": values},
    )  # fmt: skip
    name, limit, decay, active, active_slots = (fields[k] for k in ("name", "limit", "decay", "active", "active_slots"))
    create_limit("existing", 1, db=db)  # an unrelated limit that must survive every example
    try:
        before = snapshot(db)
        verdicts = [valid_name(name), count_verdict(limit), decay_verdict(decay), isinstance(active, bool),
                    count_verdict(active_slots)]  # fmt: skip
        made, error = attempt(
            lambda: create_limit(
                name, limit, slot_decay_per_second=decay, active=active, active_slots=active_slots, db=db
            )
        )
        if isinstance(error, LimitExistsError):
            assert name == "existing"
        elif error is not None:
            assert isinstance(error, InvalidLimitError), error
            assert isinstance(error, ValueError)
            assert False in verdicts or None in verdicts, f"valid values refused: {error}"
            assert "\n" not in str(error)
        if error is not None:
            assert snapshot(db) == before
            return
        assert made is not None
        assert False not in verdicts, "an invalid value was accepted"
        assert name != "existing"
        # What was stored is exactly what was given: names literally, counts exactly.
        assert made.name == name
        assert (made.limit, made.active, made.active_slots) == (limit, active, active_slots)
        assert made.slot_decay_per_second == float(decay)
        read = read_limit(name, db=db)
        assert read.name == name
        assert (read.limit, read.active, read.slot_decay_per_second) == (limit, active, float(decay))
        assert read.active_slots <= active_slots
        listed = [limit.name for limit in list_limits(db=db)]
        assert listed.count(name) == 1
        assert sorted(listed) == sorted(["existing", name])
    finally:
        for limit_ in list_limits(db=db):
            delete_limit(limit_.name, db=db)


@FUZZ
@given(data=st.data())
def test_update_limit_changes_exactly_what_is_valid(db: str, data: st.DataObject) -> None:
    fields = draw_fields(
        data,
        {"name": st.just("target"), "limit": st.one_of(st.none(), good_counts),
         "slot_decay_per_second": st.one_of(st.none(), good_decays), "active": st.one_of(st.none(), st.booleans()),
         "active_slots": st.one_of(st.none(), good_counts)},
        {"name": any_name, "limit": values, "slot_decay_per_second": values, "active": values, "active_slots": values},
    )  # fmt: skip
    name = fields.pop("name")
    with contextlib.suppress(LimitExistsError):
        create_limit("target", 4, slot_decay_per_second=0.0, db=db)
    update_limit("target", limit=4, slot_decay_per_second=0.0, active=True, active_slots=0, db=db)
    before = snapshot(db)
    changes = {k: v for k, v in fields.items() if v is not None}
    verdicts = [valid_name(name)]
    verdicts += [count_verdict(changes["limit"])] if "limit" in changes else []
    verdicts += [decay_verdict(changes["slot_decay_per_second"])] if "slot_decay_per_second" in changes else []
    verdicts += [isinstance(changes["active"], bool)] if "active" in changes else []
    verdicts += [count_verdict(changes["active_slots"])] if "active_slots" in changes else []
    changed, error = attempt(lambda: update_limit(name, **changes, db=db))
    if isinstance(error, LimitNotFoundError):
        assert name != "target"
        assert changes
        assert False not in verdicts
    elif error is not None:
        assert isinstance(error, InvalidLimitError), error
        assert not changes or False in verdicts or None in verdicts, f"valid update refused: {error}"
    if error is not None:
        assert snapshot(db) == before
        return
    assert changed is not None
    assert False not in verdicts
    assert name == "target"
    assert changed.name == "target"
    assert changed.limit == changes.get("limit", 4)
    assert changed.slot_decay_per_second == float(changes.get("slot_decay_per_second", 0.0))
    assert changed.active == changes.get("active", True)
    assert changed.active_slots == changes.get("active_slots", 0)
    assert [limit.name for limit in list_limits(db=db)] == ["target"]


READABLE = ["existing", "Existing", "x'); DELETE FROM limits; --", "名前 😀"]


@FUZZ
@given(name=st.one_of(st.sampled_from([*READABLE, "existing ", "existin", "EXISTING", "x');"]), any_name))
def test_read_limit_finds_only_the_exact_name(db: str, name: object) -> None:
    for readable in READABLE:
        with contextlib.suppress(LimitExistsError):
            create_limit(readable, len(readable), db=db)
    before = snapshot(db)
    found, error = attempt(lambda: read_limit(name, db=db))  # type: ignore[arg-type]
    if isinstance(error, LimitNotFoundError):
        assert isinstance(error, LookupError)
        assert valid_name(name)
        assert name not in READABLE
    elif error is not None:
        assert isinstance(error, InvalidLimitError), error
        assert not valid_name(name)
    else:
        assert found is not None
        assert name in READABLE
        assert found.name == name
        assert found.limit == len(name)  # type: ignore[arg-type]
    assert snapshot(db) == before


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda db, v: create_limit("x", 1, slot_decay_per_second=v, db=db), id="create-decay"),
        pytest.param(lambda db, v: update_limit("x", slot_decay_per_second=v, db=db), id="update-decay"),
        pytest.param(lambda db, v: hold_once(db, "x", timeout_seconds=v), id="concurrency-timeout"),
        pytest.param(lambda db, v: hold_once(db, "x", lease_duration=v), id="concurrency-lease"),
        pytest.param(lambda db, v: rate_limit("x", timeout_seconds=v, db=db), id="rate-limit-timeout"),
        pytest.param(lambda db, v: gcl_local.renew_lease("1-00", v, db=db), id="renew-lease"),
    ],
)
def test_an_int_too_big_for_a_float_is_an_invalid_value(db: str, call: Any) -> None:
    """Python ints have no bound; one that no float can hold is an invalid number, not an OverflowError."""
    create_limit("x", 1, slot_decay_per_second=1.0, db=db)
    before = snapshot(db)
    _, error = attempt(lambda: call(db, 10**400))
    assert isinstance(error, InvalidLimitError), repr(error)
    assert snapshot(db) == before


good_name_lists = st.one_of(
    st.lists(st.one_of(st.sampled_from(["pool", "off", "nowhere"]), good_names), max_size=4),
    st.sampled_from(["pool", "off", "nowhere"]),
)
name_lists = st.one_of(
    good_name_lists,
    any_name,
    st.lists(st.one_of(st.sampled_from(["pool"]), any_name), max_size=3),
    st.sampled_from([5, b"pool", None, ("pool", "pool"), {"pool": 1}]),
)


def names_verdict(given_names: object) -> tuple[bool, tuple[str, ...]]:
    """Whether *given_names* is a valid ``names`` argument, and the names it stands for."""
    if isinstance(given_names, str):
        return valid_name(given_names), (given_names,)
    if isinstance(given_names, Iterable):
        items = list(given_names)  # a list, a tuple, a dict's keys - bytes give ints, which are refused
        return all(valid_name(n) for n in items), tuple(dict.fromkeys(n for n in items if isinstance(n, str)))
    return False, ()


@FUZZ
@given(data=st.data())
def test_concurrency_with_any_arguments(db: str, data: st.DataObject) -> None:
    args = draw_fields(
        data,
        {"names": good_name_lists, "occupy": st.integers(min_value=1, max_value=4),
         "timeout_seconds": st.sampled_from([None, 0, 0.0, 5, 1e9]), "max_retries": st.sampled_from([None, 0, 3]),
         "lease_duration": st.one_of(st.sampled_from([60, 86400]), st.floats(min_value=60, max_value=86400)),
         "strict": st.booleans(),
         "holder": st.one_of(st.none(), st.text(max_size=250), st.just({"type": "flow", "id": "x\x1b[2J"}))},
        {"names": name_lists, "occupy": values, "timeout_seconds": values, "max_retries": values,
         "lease_duration": values, "strict": values, "holder": st.one_of(st.text(), values)},
    )  # fmt: skip
    with contextlib.suppress(LimitExistsError):
        create_limit("pool", 3, db=db)
        create_limit("off", 1, active=False, db=db)
    before = snapshot(db)
    names_ok, wanted = names_verdict(args["names"])
    occupy, strict, holder = args["occupy"], args["strict"], args["holder"]
    verdicts = [
        names_ok,
        count_verdict(occupy, 1),
        args["timeout_seconds"] is None or seconds_verdict(args["timeout_seconds"]),
        True if args["max_retries"] is None else count_verdict(args["max_retries"]),
        seconds_verdict(args["lease_duration"], 60, 86400),
        isinstance(strict, bool),
    ]
    valid = False not in verdicts
    missing = [n for n in wanted if n not in ("pool", "off")]

    def hold() -> tuple[gcl_local.Lease, gcl_local.Limit]:
        with concurrency(args["names"], **{k: v for k, v in args.items() if k != "names"}, db=db) as lease:
            return lease, read_limit("pool", db=db)

    _shell._warned.clear()  # each example is another "process": a missing name warns once per process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        held, error = attempt(hold)
    if isinstance(error, InvalidLimitError):
        assert False in verdicts or None in verdicts, f"valid arguments refused: {error}"
    elif error is not None:
        assert type(error) is ConcurrencySlotAcquisitionError, f"a free limit: {error!r}"
        assert valid
        assert (strict and missing) or ("pool" in wanted and occupy > 3)
    if error is not None:
        assert snapshot(db) == before
        return
    assert held is not None
    lease, inside = held
    assert valid, "invalid arguments were accepted"
    assert not (strict and missing)
    assert lease.slots == occupy
    if "pool" in wanted:
        assert lease.token is not None
        assert lease.names == ("pool",)
        assert inside.active_slots == occupy
        assert [h.id for h in inside.holders] == [lease.id]
    else:
        assert lease.token is None
        assert inside.active_slots == 0
    assert lease.label.isprintable()
    assert len(lease.label) <= 200
    if isinstance(holder, str) and holder.isprintable():
        assert lease.label == holder[:200]
    assert bool(missing) == any(issubclass(w.category, MissingLimitWarning) for w in caught)
    assert read_limit("pool", db=db).active_slots == 0
    assert read_limit("pool", db=db).holders == ()


@FUZZ
@given(data=st.data())
def test_rate_limit_with_any_arguments(db: str, data: st.DataObject) -> None:
    args = draw_fields(
        data,
        {"names": st.one_of(st.lists(st.sampled_from(["bucket", "nodecay", "off", "nowhere"]), max_size=3),
                            st.just("bucket")),
         "occupy": st.integers(min_value=1, max_value=4), "timeout_seconds": st.sampled_from([None, 0, 5.5]),
         "strict": st.booleans()},
        {"names": any_name, "occupy": values, "timeout_seconds": values, "strict": values},
    )  # fmt: skip
    with contextlib.suppress(LimitExistsError):
        create_limit("bucket", 3, slot_decay_per_second=0.001, db=db)
        create_limit("nodecay", 3, db=db)
        create_limit("off", 1, active=False, db=db)
    update_limit("bucket", active_slots=0, db=db)  # an empty bucket: every valid request fits at once
    before = snapshot(db)
    names_ok, wanted = names_verdict(args["names"])
    occupy, strict = args["occupy"], args["strict"]
    verdicts = [
        names_ok,
        count_verdict(occupy, 1),
        args["timeout_seconds"] is None or seconds_verdict(args["timeout_seconds"]),
        isinstance(strict, bool),
    ]
    valid = False not in verdicts
    missing = [n for n in wanted if n not in ("bucket", "nodecay", "off")]
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        _, error = attempt(lambda: rate_limit(args["names"], **{k: v for k, v in args.items() if k != "names"}, db=db))
    if isinstance(error, InvalidLimitError):
        assert False in verdicts or None in verdicts, f"valid arguments refused: {error}"
    elif error is not None:
        assert type(error) is ConcurrencySlotAcquisitionError, f"an empty bucket: {error!r}"
        assert valid
        too_big = any(n in wanted for n in ("bucket", "nodecay")) and occupy > 3
        assert (strict and missing) or too_big or "nodecay" in wanted
    if error is not None:
        assert snapshot(db) == before
        return
    assert valid, "invalid arguments were accepted"
    assert "nodecay" not in wanted
    expected = occupy if "bucket" in wanted else 0
    assert read_limit("bucket", db=db).active_slots == expected


def test_names_differing_only_by_case_or_normalisation_are_distinct(db: str) -> None:
    variants = ["cafe\u0301", "caf\u00e9", "CAF\u00c9", "Caf\u00e9"]
    for i, name in enumerate(variants):
        create_limit(name, i + 1, db=db)
    for i, name in enumerate(variants):
        assert read_limit(name, db=db).limit == i + 1
        assert read_limit(name, db=db).name == name
    assert sorted(limit.name for limit in list_limits(db=db)) == sorted(variants)


def test_missing_name_warning_turned_into_an_error_does_not_leak_the_slots(db: str) -> None:
    """Under ``-W error`` (pytest's filterwarnings=error too) the MissingLimitWarning is raised from
    inside concurrency(); the slots it took on the existing limit must not stay held."""
    create_limit("pool", 1, db=db)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingLimitWarning)
        with pytest.raises(MissingLimitWarning):
            with concurrency(["pool", "nowhere"], timeout_seconds=0, db=db):
                pass
    assert read_limit("pool", db=db).active_slots == 0
    assert read_limit("pool", db=db).holders == ()


# -- the command line ------------------------------------------------------------------------------------

EXIT_CODES = {0, 1, 2, 75}


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """``gcl ARGS`` in this process: (exit code, stdout, stderr); an exception other than SystemExit propagates."""
    runner = CliRunner()
    with runner.isolation() as (out, err, _):
        try:
            _cli.main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        sys.stdout.flush()
        sys.stderr.flush()
        return code, out.getvalue().decode("utf-8", "replace"), err.getvalue().decode("utf-8", "replace")


def assert_clean_failure(code: int, out: str, err: str) -> None:
    assert "Traceback" not in out + err
    if code == 1:
        # One line on stderr, no traceback (warnings about missing limits may come first).
        lines = [line for line in err.splitlines() if not line.startswith("gcl: warning:")]
        assert len(lines) == 1, err
        assert lines[0].startswith("gcl: ")


cli_names = st.one_of(
    st.sampled_from([n for n in NASTY_NAMES if "\x00" not in n]),
    st.text(max_size=10).filter(lambda t: "\x00" not in t and t != "--"),
)
numbers_as_text = st.one_of(
    st.sampled_from(
        [
            "0",
            "1",
            "3",
            "-1",
            "+2",
            "1_000",
            " 4 ",
            "1e3",
            "1.5",
            "nan",
            "inf",
            "-inf",
            "1e400",
            "10000000000000000000000000000000",
            "0x10",
            "",
            "x",
            "٣",
            "True",
        ]
    ),
    st.integers(min_value=-5, max_value=10**13).map(str),
    st.floats().map(str),
    st.text(max_size=4),
)


def cli_int(text: str) -> int:
    """The integer a command-line count stands for (typer also takes an integral float such as "2.0")."""
    try:
        return int(text)
    except ValueError:
        number = float(text)
        assert number.is_integer(), f"{text!r} was accepted as a count"
        return int(number)


def option_list(pairs: list[tuple[str, ...]]) -> list[str]:
    return [part for pair in pairs for part in pair]


good_cli_names = good_names.filter(lambda n: not n.startswith("-"))
good_numbers_as_text = st.integers(min_value=0, max_value=20).map(str)


@FEW
@given(
    name=st.one_of(good_cli_names, cli_names),
    limit_text=st.one_of(good_numbers_as_text, numbers_as_text),
    options=st.lists(
        st.one_of(
            st.tuples(st.sampled_from(["-l", "--limit"]), numbers_as_text),
            st.tuples(st.just("--slot-decay-per-second"), numbers_as_text),
            st.tuples(st.just("--active-slots"), numbers_as_text),
            st.tuples(st.just("--disable")),
            st.tuples(st.sampled_from(["-o", "--output"]), st.sampled_from(["json", "yaml", ""])),
            st.tuples(st.sampled_from(["--bogus", "-x"])),
        ),
        max_size=3,
    ),
)
def test_cli_create_with_any_arguments(db: str, name: str, limit_text: str, options: list[tuple[str, ...]]) -> None:
    with contextlib.suppress(LimitExistsError):
        create_limit("existing", 1, db=db)
    before = snapshot(db)
    options = [("-l", limit_text), *options]
    code, out, err = run_cli(["--db", db, "create", name, *option_list(options)])
    note(f"exit {code}")
    assert code in EXIT_CODES - {75}, (code, out, err)
    assert_clean_failure(code, out, err)
    if code != 0:
        assert snapshot(db) == before
        return
    made = read_limit(name, db=db)
    assert made.name == name
    limits_given = [pair[1] for pair in options if pair[0] in ("-l", "--limit")]
    assert limits_given, "created without a limit"
    assert made.limit == cli_int(limits_given[-1])  # the last one given counts
    assert made.active == ("--disable" not in {pair[0] for pair in options})
    if any(pair[0] in ("-o", "--output") for pair in options):
        assert json.loads(out)["name"] == name
    delete_limit(name, db=db)
    assert snapshot(db) == before


@FEW
@given(
    name=st.one_of(st.sampled_from(["target", "target", "nowhere"]), cli_names),
    options=st.lists(
        st.one_of(
            st.tuples(st.sampled_from(["-l", "--limit"]), st.one_of(good_numbers_as_text, numbers_as_text)),
            st.tuples(st.just("--slot-decay-per-second"), numbers_as_text),
            st.tuples(st.just("--active-slots"), numbers_as_text),
            st.tuples(st.sampled_from(["--enable", "--disable"])),
            st.tuples(st.sampled_from(["-o", "--output"]), st.sampled_from(["json", "text"])),
        ),
        max_size=4,
    ),
)
def test_cli_update_with_any_arguments(db: str, name: str, options: list[tuple[str, ...]]) -> None:
    with contextlib.suppress(LimitExistsError):
        create_limit("target", 2, db=db)
    update_limit("target", limit=2, slot_decay_per_second=0.0, active=True, active_slots=0, db=db)
    before = snapshot(db)
    code, out, err = run_cli(["--db", db, "update", name, *option_list(options)])
    note(f"exit {code}")
    assert code in EXIT_CODES - {75}, (code, out, err)
    assert_clean_failure(code, out, err)
    if code != 0:
        assert snapshot(db) == before
        return
    assert name == "target"
    if any(pair[0] in ("-o", "--output") for pair in options):
        assert json.loads(out)["name"] == "target"


@FEW
@given(
    name=st.one_of(st.sampled_from(["existing", "existing", "existing", "Existing", "existing "]), cli_names),
    output=st.sampled_from([[], ["-o", "json"], ["-o", "xml"]]),
)
def test_cli_inspect_with_any_arguments(db: str, name: str, output: list[str]) -> None:
    with contextlib.suppress(LimitExistsError):
        create_limit("existing", 2, db=db)
    before = snapshot(db)
    code, out, err = run_cli(["--db", db, "inspect", name, *output])
    note(f"exit {code}")
    assert code in EXIT_CODES - {75}, (code, out, err)
    assert_clean_failure(code, out, err)
    assert snapshot(db) == before
    if code == 0:
        assert name == "existing"
        if output == ["-o", "json"]:
            assert json.loads(out)["name"] == "existing"
    elif name == "existing" and output != ["-o", "xml"]:
        pytest.fail(f"inspect of an existing limit failed: {err}")


CHILD_CODE = 7


def fake_exec(command: list[str]) -> int:
    """Stands in for os.execvp, which would replace the test process: run the command, return its code."""
    return subprocess.call(list(command))


@FEW
@given(
    run_names=st.lists(
        st.one_of(st.sampled_from(["free", "busy", "off", "nowhere"]), cli_names), min_size=1, max_size=3
    ),
    options=st.lists(
        st.one_of(
            st.tuples(st.just("--occupy"), numbers_as_text),
            st.tuples(st.just("--timeout"), numbers_as_text),
            st.tuples(st.just("--lease-duration"), st.one_of(st.just("60"), numbers_as_text)),
            st.tuples(st.just("--strict")),
            st.tuples(st.just("-v")),
        ),
        max_size=3,
    ),
)
def test_cli_run_nonblocking_with_any_arguments(db: str, run_names: list[str], options: list[tuple[str, ...]]) -> None:
    with contextlib.suppress(LimitExistsError):
        create_limit("free", 2, db=db)
        create_limit("busy", 1, db=db)
        create_limit("off", 1, active=False, db=db)
    with concurrency("busy", db=db) as held:
        before = snapshot(db)
        command = ["sh", "-c", f"exit {CHILD_CODE}"]
        with mock.patch.object(_commands, "_exec", fake_exec):
            code, out, err = run_cli(["--db", db, "run", "-n", *option_list(options), *run_names, "--", *command])
        note(f"exit {code}")
        assert code in {1, 2, 75, CHILD_CODE}, (code, out, err)
        assert_clean_failure(code, out, err)
        after = snapshot(db)
        if code != CHILD_CODE:
            assert after == before
        else:
            for limit in after:
                limit.pop("avg_slot_occupancy_seconds")  # a finished run feeds the average, nothing else
            for limit in before:
                limit.pop("avg_slot_occupancy_seconds")
            assert after == before
        if code == 75:
            assert "busy" in run_names
        assert [h.id for h in read_limit("busy", db=db).holders] == [held.id]
    assert read_limit("free", db=db).active_slots == 0


def test_cli_run_through_the_typer_app_itself(db: str) -> None:
    """``typer.testing.CliRunner().invoke(app, ...)`` - not only ``gcl_local._cli.main`` - must run the
    command after ``--``, and the one given this time, not one left from an earlier call in the process."""
    from gcl_local._app import app

    create_limit("free", 1, db=db)
    with mock.patch.object(_commands, "_exec", fake_exec):
        code, _, err = run_cli(["--db", db, "run", "--occupy", "x", "free", "--", "sh", "-c", "exit 3"])
    assert code == 2, err  # a usage error, answered by the typer app (which keeps these arguments)
    result = CliRunner().invoke(app, ["--db", db, "run", "-n", "free", "--", "sh", "-c", f"exit {CHILD_CODE}"])
    assert "Traceback" not in result.output
    assert result.exit_code == CHILD_CODE, result.output
    assert read_limit("free", db=db).active_slots == 0


# -- damaged files ----------------------------------------------------------------------------------------

MAKE_GCL_DB = """
import sys, gcl_local, gcl_local.sqlite
db = sys.argv[1]
gcl_local.create_limit("made", 2, slot_decay_per_second=1.0, db=db)
with gcl_local.concurrency("made", db=db):
    pass
gcl_local.sqlite.get_store(db).close()
"""


class ValidFile:
    """The bytes of a real state file (a class, so that hypothesis does not print 36 kB in a report)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"<ValidFile {len(self.data)} bytes>"


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory: pytest.TempPathFactory) -> ValidFile:
    """A real state file, written and closed by another process (no -wal left)."""
    path = tmp_path_factory.mktemp("valid") / "gcl.db"
    done = subprocess.run(
        [sys.executable, "-c", MAKE_GCL_DB, str(path)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert not Path(f"{path}-wal").exists()
    data = path.read_bytes()
    assert data[:16] == b"SQLite format 3\x00"
    return ValidFile(data)


@pytest.fixture(scope="module")
def damaged_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("damaged")


_serial = itertools.count()


def use_damaged(directory: Path, data: bytes, *, must_refuse: bool = False) -> None:
    """Write *data* as a state file and use it: a StoreError that leaves it untouched, or it works."""
    path = directory / f"{next(_serial)}.db"
    path.write_bytes(data)
    db = str(path)
    try:
        _, error = attempt(lambda: list_limits(db=db))
    finally:
        get_store(db).close()
    if error is not None:
        assert isinstance(error, StoreError), repr(error)
        assert "\n" not in str(error)
        assert path.read_bytes() == data, "a refused file was changed"
        return
    assert not must_refuse, "a damaged file was used (and may have been changed)"
    # It works: then every call either works or fails with a documented error, never with apsw's.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MissingLimitWarning)
            attempt(lambda: read_limit("made", db=db))
            attempt(lambda: create_limit("fuzz", 1, db=db))
            attempt(lambda: update_limit("fuzz", limit=2, db=db))
            attempt(lambda: hold_once(db))
    finally:
        get_store(db).close()


def flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    damaged = bytearray(data)
    for offset, bit in flips:
        damaged[offset % len(damaged)] ^= 1 << bit
    return bytes(damaged)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(min_value=0, max_value=99), st.integers(0, 7)), min_size=1, max_size=3))
@example(flips=[(60, 7)])  # the sign bit of user_version: a negative schema version
@example(flips=[(18, 0), (19, 0)])  # read/write format 3: a file that SQLite may only read
def test_bit_flips_in_the_header_are_refused_or_harmless(valid_file: ValidFile, damaged_dir: Path, flips) -> None:
    use_damaged(damaged_dir, flip(valid_file.data, flips))


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(min_value=0, max_value=4095), st.integers(0, 7)), min_size=1, max_size=4))
def test_bit_flips_in_the_first_page_are_refused_or_harmless(valid_file: ValidFile, damaged_dir: Path, flips) -> None:
    use_damaged(damaged_dir, flip(valid_file.data, flips))


@FUZZ
@given(data=st.data())
def test_truncated_files_are_refused_or_harmless(valid_file: ValidFile, damaged_dir: Path, data: st.DataObject) -> None:
    cut = data.draw(st.integers(min_value=1, max_value=len(valid_file.data) - 1))
    use_damaged(damaged_dir, valid_file.data[:cut])


@FUZZ
@given(garbage=st.binary(min_size=1, max_size=5000).filter(lambda b: not b.startswith(b"SQLite format 3")))
@example(garbage=b"x")
def test_garbage_files_are_refused_untouched(damaged_dir: Path, garbage: bytes) -> None:
    use_damaged(damaged_dir, garbage, must_refuse=True)


GCL_APP_ID = _sql.APPLICATION_ID


def make_sqlite_file(path: Path, app_id: int, user_version: int, tables: list[str]) -> bytes:
    conn = apsw.Connection(str(path))
    try:
        conn.execute(f"PRAGMA application_id={app_id}")
        conn.execute(f"PRAGMA user_version={user_version}")
        for table in tables:
            conn.execute(f'CREATE TABLE "{table}"(x)')
    finally:
        conn.close()
    return path.read_bytes()


int32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)


@FUZZ
@given(
    app_id=st.one_of(st.just(GCL_APP_ID), st.just(0), int32),
    user_version=st.one_of(st.sampled_from([-1, 0, 1, 2, -(2**31), 2**31 - 1]), int32),
    tables=st.lists(st.sampled_from(["t", "limits", "leases", "meta", "x y"]), unique=True, max_size=3),
)
# Ours at version 1 with a table of version 1 but not all of them: the migration to version 2 ran
# (and changed the file) before the file was refused (found by CI, 2026-12-01).
@example(app_id=GCL_APP_ID, user_version=1, tables=["t", "limits"])
def test_foreign_sqlite_files_are_refused_untouched(
    damaged_dir: Path, app_id: int, user_version: int, tables: list[str]
) -> None:
    # An empty SQLite file may be initialised, and so may one that carries our id at version 0 (a
    # creation that stopped half-way); every other foreign or unknown file must be refused as it is.
    assume(tables or app_id != 0 or user_version != 0)
    ours_unversioned = app_id == GCL_APP_ID and user_version == 0
    path = damaged_dir / f"{next(_serial)}-source.db"
    data = make_sqlite_file(path, app_id, user_version, tables)
    use_damaged(damaged_dir, data, must_refuse=not ours_unversioned)


@pytest.mark.parametrize("version", [-1, -2, -(2**31), 0, _sql.SCHEMA_VERSION + 1, 2**31 - 1])
def test_our_file_with_an_unknown_schema_version_is_refused_untouched(
    valid_file: ValidFile, damaged_dir: Path, version: int
) -> None:
    path = damaged_dir / f"{next(_serial)}-version.db"
    path.write_bytes(valid_file.data)
    conn = apsw.Connection(str(path))
    try:
        conn.execute(f"PRAGMA user_version={version}")
    finally:
        conn.close()
    use_damaged(damaged_dir, path.read_bytes(), must_refuse=True)


DAMAGED_ROWS = {
    "limit-is-text": "UPDATE limits SET lim = 'abc'",
    "limit-is-blob": "UPDATE limits SET lim = x'00'",
    "decay-is-text": "UPDATE limits SET decay = 'fast'",
    "level-is-infinite": "UPDATE limits SET level = 1e308 * 10",
    "name-is-not-utf8": "UPDATE limits SET name = CAST(x'6dff' AS TEXT)",
    "boot-id-is-not-utf8": "INSERT OR REPLACE INTO meta(key, value) VALUES ('boot_id', CAST(x'ff' AS TEXT))",
}


@pytest.mark.parametrize("damage", DAMAGED_ROWS.values(), ids=DAMAGED_ROWS.keys())
def test_rows_damaged_by_another_writer_give_a_store_error_or_documented_types(
    valid_file: ValidFile, damaged_dir: Path, damage: str
) -> None:
    """Corrupt content (as a bit flip in a data page or a foreign writer leaves it) must surface as a
    StoreError - or be read as values of the documented types - never as a TypeError or UnicodeDecodeError."""
    path = damaged_dir / f"{next(_serial)}-rows.db"
    path.write_bytes(valid_file.data)
    conn = apsw.Connection(str(path))
    try:
        conn.execute(damage)
    finally:
        conn.close()
    db = str(path)
    try:
        for call in (
            lambda: list_limits(db=db),
            lambda: read_limit("made", db=db),
            lambda: hold_once(db),
        ):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MissingLimitWarning)
                result, _ = attempt(call)
            for limit in result if isinstance(result, list) else [result]:
                if isinstance(limit, gcl_local.Limit):
                    assert isinstance(limit.name, str)
                    assert is_int(limit.limit)
                    assert is_int(limit.active_slots)
                    assert isinstance(limit.slot_decay_per_second, float)
                    assert math.isfinite(limit.slot_decay_per_second)
    finally:
        get_store(db).close()
