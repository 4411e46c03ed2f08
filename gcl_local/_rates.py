"""Rates in plain words: ``--rate 100/min --burst B`` to a limit and a decay, and back.

The promise: a rate limit made from ``N/UNIT`` with burst ``B`` lets **at most N calls through in
any window of one UNIT** (a window that holds its start but not its end: two calls exactly one
UNIT apart count in different windows). Of those, at most B come at once.

Why the decay is ``(N + 1 - B) / UNIT``, not ``N / UNIT``: the bucket holds at most B slots, and in
a window of length T it also admits what decayed meanwhile, less than ``decay * T`` in a window
open at its end. So a window holds fewer than ``B + decay * T`` calls, that is at most N when
``decay * T = N + 1 - B``. With the default burst of 1, the decay is exactly N per UNIT, so the
long-run rate is the full N per UNIT too; a larger burst lowers the long-run rate to
``N + 1 - B`` per UNIT (a burst of N lets N calls through at once, then one per UNIT). A careless
``limit = B, decay = N / UNIT`` would let ``B + N - 1`` calls through in the first window and break
the quota it copies.
"""

from __future__ import annotations

from ._errors import InvalidLimitError
from ._model import MAX_SLOTS
from ._stdlib import NamedTuple

UNITS: dict[str, float] = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}
_SHOWN = (("s", 1.0), ("min", 60.0), ("h", 3600.0), ("day", 86400.0))
_CANONICAL = {seconds: unit for unit, seconds in _SHOWN}
DEFAULT_BURST = 1


class Rate(NamedTuple):
    """``calls`` per ``unit`` (one of :data:`UNITS`), at most ``burst`` at once."""

    calls: int
    unit: str
    burst: int = DEFAULT_BURST

    @property
    def seconds(self) -> float:
        return UNITS[self.unit]

    @property
    def limit(self) -> int:
        return self.burst

    @property
    def slot_decay_per_second(self) -> float:
        return (self.calls + 1 - self.burst) / self.seconds

    def __str__(self) -> str:
        return f"{self.calls}/{self.unit}, burst {self.burst}"


def parse_rate(text: str, burst: int | None = None, *, what: str = "--rate", burst_what: str = "--burst") -> Rate:
    """``"100/min"`` (and a burst) as a :class:`Rate`; :class:`InvalidLimitError` names *what* was wrong."""
    count_text, slash, unit_text = text.strip().partition("/")
    unit = unit_text.strip().lower()
    if unit.endswith("s") and unit[:-1] in UNITS and len(unit) > 1:
        unit = unit[:-1]  # minutes, hours, days, seconds
    if not slash or unit not in UNITS:
        units = ", ".join(UNITS)
        raise InvalidLimitError(f"{what} must look like 100/min (N per one of {units}), not {text!r}.")
    try:
        count = int(count_text.strip())
    except ValueError:
        raise InvalidLimitError(f"{what} must start with a whole number of calls, not {text!r}.") from None
    if not 1 <= count <= MAX_SLOTS:
        raise InvalidLimitError(f"{what} must allow between 1 and {MAX_SLOTS} calls, not {count}.")
    chosen = DEFAULT_BURST if burst is None else burst
    if isinstance(chosen, bool) or not isinstance(chosen, int) or not 1 <= chosen <= count:
        raise InvalidLimitError(f"{burst_what} must be a whole number from 1 to the rate's {count}, not {chosen!r}.")
    return Rate(count, _CANONICAL[UNITS[unit]], chosen)


def rate_of(limit: int, slot_decay_per_second: float) -> Rate | None:
    """The rate words of a stored limit: the smallest unit in which it allows a whole number of calls
    (``300/min, burst 1`` is the same limit as ``5/s, burst 1``, and is shown so), or None (no decay,
    or no unit fits: then the raw decay says it best)."""
    if slot_decay_per_second <= 0 or limit < 1:
        return None
    for unit, seconds in _SHOWN:
        count = slot_decay_per_second * seconds + limit - 1
        nearest = round(count)
        if nearest >= limit and abs(count - nearest) <= 1e-9 * max(1.0, count):
            return Rate(int(nearest), unit, limit)
    return None


def describe_rate(limit: int, slot_decay_per_second: float) -> str:
    """What ``ls`` and ``inspect`` show: ``100/min, burst 1``, or the decay when no words fit."""
    if slot_decay_per_second <= 0:
        return "-"
    rate = rate_of(limit, slot_decay_per_second)
    return str(rate) if rate is not None else f"decay {slot_decay_per_second:.4g}/s"


__all__ = ["DEFAULT_BURST", "UNITS", "Rate", "describe_rate", "parse_rate", "rate_of"]
