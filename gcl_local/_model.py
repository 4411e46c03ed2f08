"""The records the library returns, and the rules every name and value must follow."""

from __future__ import annotations

import math
from collections.abc import Iterable

from ._errors import InvalidLimitError
from ._stdlib import NamedTuple, datetime, timezone

TYPE_CHECKING = False  # not typing's: the records must not cost the import of typing (see _stdlib)
if TYPE_CHECKING:
    from typing import Any

MAX_NAME_LENGTH = 255
MAX_SLOTS = 10**12
"""Upper bound of ``limit``, ``active_slots`` and ``occupy``: keeps the float arithmetic of decay exact."""
MIN_LEASE_SECONDS = 60.0
MAX_LEASE_SECONDS = 86400.0
DEFAULT_LEASE_SECONDS = 300.0
DEFAULT_AVG_OCCUPANCY = 2.0
"""``avg_slot_occupancy_seconds`` of a limit nobody has used yet (Prefect's starting value)."""
_FORBIDDEN_NAME_CHARS = frozenset("/%&><")


def validate_name(name: object) -> str:
    """Return *name* if it is a valid limit name, else raise :class:`InvalidLimitError`."""
    if not isinstance(name, str):
        raise InvalidLimitError(f"Limit name must be a string, not {type(name).__name__}.")
    if not name:
        raise InvalidLimitError("Limit name must not be empty.")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidLimitError(f"Limit name must be at most {MAX_NAME_LENGTH} characters, not {len(name)}.")
    if name != name.strip():
        raise InvalidLimitError(f"Limit name {name!r} must not start or end with whitespace.")
    bad = sorted(_FORBIDDEN_NAME_CHARS.intersection(name))
    if bad:
        raise InvalidLimitError(f"Limit name {name!r} must not contain {' '.join(bad)}.")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
        raise InvalidLimitError(f"Limit name {name!r} must not contain control characters.")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidLimitError(f"Limit name {name!r} is not valid unicode text.") from None
    if not name.isascii():
        _check_visible(name)
    return name


_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
"""Unicode categories a name must not use: controls, format characters (zero-width space U+200B,
right-to-left override U+202E, ...), line and paragraph separators (U+2028), unassigned code points.
A right-to-left override makes ``gcl ls`` show another name than the one stored."""


def _check_visible(name: str) -> None:
    import unicodedata  # only for names beyond ASCII: the hot path of an ASCII name never loads it

    for c in name:
        if unicodedata.category(c) in _INVISIBLE:
            raise InvalidLimitError(
                f"Limit name {name!r} must not contain invisible or format characters (U+{ord(c):04X})."
            )


def validate_names(names: str | Iterable[str]) -> tuple[str, ...]:
    """Names as given to ``concurrency``/``rate_limit``: a str or a list; duplicates collapsed, order kept."""
    if isinstance(names, str):
        names = [names]
    elif not isinstance(names, Iterable):
        raise InvalidLimitError(f"names must be a string or a list of strings, not {type(names).__name__}.")
    return tuple(dict.fromkeys(validate_name(n) for n in names))


def validate_count(value: object, what: str, *, minimum: int = 0) -> int:
    """An integer in ``[minimum, MAX_SLOTS]``; bools and floats are refused rather than guessed at."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidLimitError(f"{what} must be an integer, not {value!r}.")
    if value < minimum:
        raise InvalidLimitError(f"{what} must be at least {minimum}, not {value}.")
    if value > MAX_SLOTS:
        raise InvalidLimitError(f"{what} must be at most {MAX_SLOTS}, not {value}.")
    return value


def validate_decay(value: object, what: str = "slot_decay_per_second") -> float:
    """``slot_decay_per_second``: a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidLimitError(f"{what} must be a number, not {value!r}.")
    decay = _as_float(value)
    if decay is None or not math.isfinite(decay) or decay < 0:
        raise InvalidLimitError(f"{what} must be a finite number >= 0, not {value!r}.")
    return decay


def validate_seconds(value: object, what: str, *, minimum: float = 0.0, maximum: float = math.inf) -> float:
    """A finite number of seconds within ``[minimum, maximum]``."""
    seconds = None if isinstance(value, bool) else _as_float(value)
    if seconds is None or not math.isfinite(seconds):
        raise InvalidLimitError(f"{what} must be a finite number of seconds, not {value!r}.")
    if not minimum <= seconds <= maximum:
        upper = "" if maximum == math.inf else f" and at most {maximum:g}"
        raise InvalidLimitError(f"{what} must be at least {minimum:g}{upper} seconds, not {value!r}.")
    return seconds


def _as_float(value: object) -> float | None:
    """*value* as a float, or None when it is no number or an integer too big for a float."""
    if not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def validate_bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidLimitError(f"{what} must be True or False, not {value!r}.")
    return value


def utc(wall: float) -> datetime:
    return datetime.fromtimestamp(wall, tz=timezone.utc)


class Lease(NamedTuple):
    """Slots held by one ``concurrency()`` block, ``gcl run`` or ``gcl acquire``.

    ``token`` is the fencing token: strictly increasing per file, so a resource can refuse work
    from a holder whose lease was superseded. It is ``None`` when no slot was taken (every name
    inactive or missing).
    """

    id: str
    token: int | None
    names: tuple[str, ...]
    slots: int
    pid: int | None = None
    host: str = ""
    user: str = ""
    label: str = ""
    acquired: datetime | None = None
    expires: datetime | None = None
    held_by: str = "token"
    """How the holder's liveness is checked: ``token`` (a kernel-released flock) or ``pid``."""

    def to_json(self) -> dict[str, Any]:
        result: dict[str, Any] = _jsonable(self)
        return result


class Waiter(NamedTuple):
    """A request waiting in the first-come-first-served queue."""

    ticket: int
    slots: int
    kind: str
    pid: int | None
    label: str
    since: datetime

    def to_json(self) -> dict[str, Any]:
        result: dict[str, Any] = _jsonable(self)
        return result


WAIT_BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 600.0)
"""Upper bounds (seconds) of the wait-time histogram's buckets; a last bucket takes the rest (+Inf)."""


def wait_bucket(seconds: float) -> int:
    """The index of the histogram bucket that a wait of *seconds* falls in (``len(WAIT_BUCKETS)``: +Inf)."""
    for index, bound in enumerate(WAIT_BUCKETS):
        if seconds <= bound:
            return index
    return len(WAIT_BUCKETS)


class Stats(NamedTuple):
    """What happened on a limit since ``since`` (its creation, or ``gcl update --reset-stats``).

    Counters kept in the state file, updated by the transactions that grant, refuse, release and
    reclaim. ``slot_seconds`` counts the slot-seconds of leases that ended plus those of the
    leases held now, so it only grows. Every acquisition's wait (0 when it did not wait) is in the
    histogram ``wait_buckets``: counts per bucket of :data:`WAIT_BUCKETS`, not cumulative, the last
    one past 600 s.
    """

    since: datetime
    immediate_concurrency: int
    waited_concurrency: int
    immediate_rate: int
    waited_rate: int
    timeouts: int
    """Waiters that gave up at their timeout (or ``max_retries``)."""
    refusals: int
    """Non-blocking attempts (``-n``, ``timeout_seconds=0``, ``max_retries=0``) that found no room."""
    reclaimed: int
    """Leases taken back from holders that died or whose lease expired."""
    slot_seconds: float
    wait_seconds_sum: float
    wait_buckets: tuple[int, ...]

    @property
    def acquisitions(self) -> int:
        return self.immediate_concurrency + self.waited_concurrency + self.immediate_rate + self.waited_rate

    def wait_quantile(self, q: float) -> float | None:
        """The *q*-quantile of the waits, interpolated in its bucket as Prometheus does (None: no data).

        In the last bucket (past 600 s) it is that bucket's lower bound, 600 s.
        """
        total = sum(self.wait_buckets)
        if total == 0:
            return None
        rank = q * total
        seen = 0
        lower = 0.0
        for index, count in enumerate(self.wait_buckets):
            if index == len(WAIT_BUCKETS):
                return lower
            upper = WAIT_BUCKETS[index]
            if count and seen + count >= rank:
                return lower + (upper - lower) * (rank - seen) / count
            seen += count
            lower = upper
        return lower

    def to_json(self) -> dict[str, Any]:
        result: dict[str, Any] = _jsonable(self)
        return result


class Limit(NamedTuple):
    """A named limit as stored, with its occupancy, holders and waiters as of one moment."""

    name: str
    limit: int
    active: bool
    slot_decay_per_second: float
    active_slots: int
    """Slots not available now: held by leases plus the decaying level, rounded up."""
    avg_slot_occupancy_seconds: float
    created: datetime
    updated: datetime
    holders: tuple[Lease, ...] = ()
    """The live holders (and holders by pid whose lease has not ended)."""
    waiters: tuple[Waiter, ...] = ()
    """Live waiters, oldest first."""
    reclaimable: tuple[Lease, ...] = ()
    """Leases whose holder has died or whose lease expired, not reclaimed yet (a reader never
    writes): the next acquisition that needs the room takes them back. Not in ``active_slots``."""
    stats: Stats | None = None
    """The history of the limit (None where it was not read)."""

    @property
    def id(self) -> str:
        """A stable UUID, like Prefect's limit ids: the same for every read of this limit, and new
        when a limit of the same name is created again."""
        import uuid

        namespace = uuid.UUID("5b0c6f3e-9a47-4a8e-8f57-6c1d0e2a7b11")  # gcl_local's own, fixed for ever
        return str(uuid.uuid5(namespace, f"{self.name}\x1f{self.created.timestamp()!r}"))

    def to_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {"id": self.id, **_jsonable(self)}
        return result


def _jsonable(value: Any) -> Any:
    if hasattr(value, "_asdict"):  # one of the records above
        return {k: _jsonable(v) for k, v in value._asdict().items()}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


__all__ = [
    "DEFAULT_AVG_OCCUPANCY",
    "DEFAULT_LEASE_SECONDS",
    "MAX_LEASE_SECONDS",
    "MAX_NAME_LENGTH",
    "MAX_SLOTS",
    "MIN_LEASE_SECONDS",
    "WAIT_BUCKETS",
    "Lease",
    "Limit",
    "Stats",
    "Waiter",
    "utc",
    "validate_bool",
    "validate_count",
    "validate_decay",
    "validate_name",
    "validate_names",
    "validate_seconds",
    "wait_bucket",
]
