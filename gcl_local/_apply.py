"""Limits as code: ``gcl apply FILE`` and ``gcl export``.

A TOML file declares limits by name::

    [limits.nightly-db]
    limit = 2

    [limits.vendor-api]
    rate = "300/min"      # or: limit = ... and slot_decay_per_second = ...
    burst = 10
    active = true

``apply`` compares it with the store, prints the plan (create, update with old -> new, unchanged,
delete) and carries it out in one write transaction: all or nothing. It never touches holders,
waiters or a bucket's level. ``--prune`` deletes limits absent from the file, but only those that
an earlier ``apply`` created (the store remembers them), and never one with live holders unless
``--force``. Every error names the file, the line and the key, and changes nothing.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from typing import Any, NamedTuple

from . import _limits
from ._backend import Backend, Tx
from ._effects import Effects, transact
from ._errors import EX_CHANGES_PENDING, InvalidLimitError
from ._model import Limit, validate_count, validate_decay, validate_name
from ._rates import parse_rate, rate_of

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

KEYS = ("limit", "slot_decay_per_second", "rate", "burst", "active")


class Spec(NamedTuple):
    """What the file wants of one limit."""

    name: str
    limit: int
    slot_decay_per_second: float
    active: bool


class Change(NamedTuple):
    action: str  # create | update | unchanged | delete
    name: str
    before: Spec | None
    after: Spec | None

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "name": self.name,
            "before": None if self.before is None else _spec_json(self.before),
            "after": None if self.after is None else _spec_json(self.after),
        }


def _spec_json(spec: Spec) -> dict[str, Any]:
    rate = rate_of(spec.limit, spec.slot_decay_per_second)
    return {
        "limit": spec.limit,
        "slot_decay_per_second": spec.slot_decay_per_second,
        "rate": None if rate is None else f"{rate.calls}/{rate.unit}",
        "burst": None if rate is None else rate.burst,
        "active": spec.active,
    }


# -- reading the file -----------------------------------------------------------------------------


class _Lines:
    """Where a key sits in the file's text: tomllib reports no positions for valid documents."""

    _HEADER = re.compile(r"^\s*\[([^\[\]]+)\]\s*(#.*)?$")
    _KEY = re.compile(r'^\s*("(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+)\s*=')

    def __init__(self, text: str) -> None:
        self.headers: dict[str, int] = {}
        self.keys: dict[tuple[str, str], int] = {}
        table: str | None = None
        in_limits = False  # under [limits] itself: NAME = { limit = 2 } declares a limit on one line
        for number, line in enumerate(text.splitlines(), start=1):
            header = self._HEADER.match(line)
            if header:
                in_limits = header.group(1).strip() == "limits"
                table = self._limit_name(header.group(1))
                if table is not None:
                    self.headers.setdefault(table, number)
                continue
            key = self._KEY.match(line)
            if key and in_limits:
                self.headers.setdefault(_unquote(key.group(1)), number)
            elif key and table is not None:
                self.keys.setdefault((table, _unquote(key.group(1))), number)

    @staticmethod
    def _limit_name(header: str) -> str | None:
        try:
            parsed = tomllib.loads(f"[{header}]")
        except tomllib.TOMLDecodeError:
            return None
        limits = parsed.get("limits")
        if isinstance(limits, dict) and len(limits) == 1:
            return str(next(iter(limits)))
        return None

    def of(self, name: str | None, key: str | None = None) -> int | None:
        if name is not None and key is not None and (name, key) in self.keys:
            return self.keys[name, key]
        return self.headers.get(name) if name is not None else None


def _unquote(key: str) -> str:
    if key[:1] in "\"'":
        try:
            value = tomllib.loads(f"k = {key}")["k"]
        except tomllib.TOMLDecodeError:
            return key
        return str(value)  # a str: tomllib parsed a quoted key
    return key


class FileError(InvalidLimitError):
    """A limits file that cannot be applied: its message names the file, the line and the key."""


def _error(source: str, line: int | None, where: str, message: str) -> FileError:
    place = f"{source}:{line}" if line is not None else source
    return FileError(f"{place}: {where}: {message}" if where else f"{place}: {message}")


def read_file(text: str, source: str) -> list[Spec]:
    """The limits a file declares, checked; :class:`FileError` for the first thing wrong."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = re.search(r"\(at line (\d+), column \d+\)", message)
        line = int(found.group(1)) if found else None
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", message).rstrip(".")
        twice = re.fullmatch(r"Cannot declare \('limits', (.+)\) twice", message)
        if twice:  # the same name declared twice
            raise _error(source, line, f"limits.{_toml_key(_unquote(twice.group(1)))}", "declared twice") from None
        raise _error(source, line, "", f"not valid TOML: {message}") from None
    lines = _Lines(text)
    for key in document:
        if key != "limits":
            raise _error(source, _top_line(text, key), key, "unknown key (a limits file has only [limits.NAME] tables)")
    limits = document.get("limits", {})
    if not isinstance(limits, dict):
        raise _error(source, _top_line(text, "limits"), "limits", "must be tables: [limits.NAME]")
    specs = []
    for name, table in limits.items():
        where = f"limits.{_toml_key(name)}"
        try:
            validate_name(name)
        except InvalidLimitError as exc:
            raise _error(source, lines.of(name), where, str(exc)) from None
        if not isinstance(table, dict):
            raise _error(source, lines.of(name), where, "must be a table of limit, rate, burst, active")
        specs.append(_spec(name, table, source, lines, where))
    return specs


def _top_line(text: str, key: str) -> int | None:
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith((f"{key} ", f"{key}=", f"[{key}", f'"{key}"')):
            return number
    return None


def _spec(name: str, table: Mapping[str, Any], source: str, lines: _Lines, where: str) -> Spec:
    def fail(key: str | None, message: str) -> FileError:
        return _error(source, lines.of(name, key), f"{where}.{key}" if key else where, message)

    for key in table:
        if key not in KEYS:
            raise fail(key, f"unknown key (expected one of: {', '.join(KEYS)})")
    active = table.get("active", True)
    if not isinstance(active, bool):
        raise fail("active", f"must be true or false, not {active!r}")
    if "rate" in table:
        for key in ("limit", "slot_decay_per_second"):
            if key in table:
                raise fail(key, "give either rate (and burst) or limit (and slot_decay_per_second), not both")
        rate_text = table["rate"]
        if not isinstance(rate_text, str):
            raise fail("rate", f'must be a string such as "100/min", not {rate_text!r}')
        try:
            rate = parse_rate(rate_text, table.get("burst"), what="rate", burst_what="burst")
        except InvalidLimitError as exc:
            key = "burst" if str(exc).startswith("burst") else "rate"
            raise fail(key, str(exc)) from None
        return Spec(name, rate.limit, rate.slot_decay_per_second, active)
    if "burst" in table:
        raise fail("burst", 'burst goes with rate (rate = "100/min")')
    if "limit" not in table:
        raise fail(None, 'needs limit = N, or rate = "N/UNIT"')
    try:
        limit = validate_count(table["limit"], "limit")
    except InvalidLimitError as exc:
        raise fail("limit", str(exc)) from None
    try:
        decay = validate_decay(table.get("slot_decay_per_second", 0.0))
    except InvalidLimitError as exc:
        raise fail("slot_decay_per_second", str(exc)) from None
    return Spec(name, limit, decay, active)


# -- the plan ----------------------------------------------------------------------------------------


class PruneRefused(InvalidLimitError):
    """``--prune`` would delete a limit that live processes hold."""


def _same(a: Spec, b: Spec) -> bool:
    return (
        a.limit == b.limit
        and a.active == b.active
        and math.isclose(a.slot_decay_per_second, b.slot_decay_per_second, rel_tol=1e-12, abs_tol=0.0)
    )


def _spec_of(limit: Limit) -> Spec:
    return Spec(limit.name, limit.limit, limit.slot_decay_per_second, limit.active)


def _plan(tx: Tx, effects: Effects, wanted: list[Spec], prune: bool, force: bool, commit: bool) -> list[Change]:
    """Compare and (with *commit*) apply, in the caller's one transaction."""
    existing = {limit.name: limit for limit in _limits.read_all(tx)}
    applied = tx.applied_limits()
    changes: list[Change] = []
    for spec in wanted:
        current = existing.get(spec.name)
        if current is None:
            changes.append(Change("create", spec.name, None, spec))
        elif _same(_spec_of(current), spec):
            changes.append(Change("unchanged", spec.name, _spec_of(current), spec))
        else:
            changes.append(Change("update", spec.name, _spec_of(current), spec))
    if prune:
        named = {spec.name for spec in wanted}
        for name, limit in existing.items():
            if name in named or applied.get(name) != limit.created.timestamp():
                continue
            if limit.holders and not force:
                raise PruneRefused(
                    f"--prune would delete limit {name!r}, which {len(limit.holders)} live process(es) hold; "
                    "nothing changed (--force deletes it anyway)"
                )
            changes.append(Change("delete", name, _spec_of(limit), None))
    if commit:
        for change in changes:
            _carry_out(tx, effects, change)
    return changes


def _carry_out(tx: Tx, effects: Effects, change: Change) -> None:
    after = change.after
    if change.action == "create":
        assert after is not None
        made = _limits.create(tx, effects, after.name, after.limit, after.slot_decay_per_second, after.active, 0)
        tx.mark_applied(after.name, made.created.timestamp())
    elif change.action == "update":
        assert after is not None
        _limits.update(tx, effects, after.name, after.limit, after.slot_decay_per_second, after.active, None)
    elif change.action == "delete":
        _limits.delete(tx, effects, change.name)
        tx.unmark_applied(change.name)


def plan(store: Backend, wanted: list[Spec], *, prune: bool, force: bool, commit: bool) -> list[Change]:
    """The changes that make the store match *wanted*; carried out, all or nothing, with *commit*."""
    return transact(store, _plan, wanted, prune, force, commit, durable=commit)


# -- showing it --------------------------------------------------------------------------------------


def describe(spec: Spec) -> str:
    rate = rate_of(spec.limit, spec.slot_decay_per_second)
    if spec.slot_decay_per_second <= 0:
        text = f"limit {spec.limit}"
    elif rate is not None:
        text = f"rate {rate.calls}/{rate.unit}, burst {rate.burst}"
    else:
        text = f"limit {spec.limit}, decay {spec.slot_decay_per_second:g}/s"
    return text if spec.active else text + ", inactive"


def plan_text(changes: list[Change]) -> str:
    marks = {"create": "+", "update": "~", "unchanged": "=", "delete": "-"}
    lines = []
    for change in changes:
        head = f"{marks[change.action]} {change.action:<9} {change.name!r}"
        if change.action == "update":
            assert change.before is not None
            assert change.after is not None
            lines.append(f"{head}: {describe(change.before)} -> {describe(change.after)}")
        elif change.action == "delete":
            assert change.before is not None
            lines.append(f"{head}: {describe(change.before)}")
        else:
            assert change.after is not None
            lines.append(f"{head}: {describe(change.after)}")
    counts = {action: sum(c.action == action for c in changes) for action in marks}
    lines.append(
        f"Plan: {counts['create']} to create, {counts['update']} to update, {counts['delete']} to delete, "
        f"{counts['unchanged']} unchanged."
    )
    return "\n".join(lines)


def pending(changes: list[Change]) -> bool:
    return any(change.action != "unchanged" for change in changes)


def _toml_key(name: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_-]+", name):
        return name
    import json

    return json.dumps(name, ensure_ascii=False)


def export_text(limits: list[Limit], path: str) -> str:
    """Every limit as a file that ``gcl apply`` reads back unchanged."""
    lines = [f"# gcl export of {path}", "# Apply with: gcl apply FILE (--dry-run to see the plan first)"]
    for limit in limits:
        lines += ["", f"[limits.{_toml_key(limit.name)}]"]
        rate = rate_of(limit.limit, limit.slot_decay_per_second)
        if rate is not None and parse_rate(f"{rate.calls}/{rate.unit}", rate.burst).slot_decay_per_second == (
            limit.slot_decay_per_second
        ):
            lines += [f'rate = "{rate.calls}/{rate.unit}"', f"burst = {rate.burst}"]
        else:
            lines.append(f"limit = {limit.limit}")
            if limit.slot_decay_per_second > 0:
                lines.append(f"slot_decay_per_second = {limit.slot_decay_per_second!r}")
        lines.append(f"active = {'true' if limit.active else 'false'}")
    return "\n".join(lines) + "\n"


__all__ = [
    "EX_CHANGES_PENDING",
    "KEYS",
    "Change",
    "FileError",
    "PruneRefused",
    "Spec",
    "export_text",
    "pending",
    "plan",
    "plan_text",
    "read_file",
    "describe",
]
