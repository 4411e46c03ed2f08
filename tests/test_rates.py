"""Rates in plain words (issue 14, item 2): ``--rate N/UNIT [--burst B]``, shown back the same way,
and the promise the README states: at most N calls in any window of one UNIT.
"""

from __future__ import annotations

import json

import pytest
from helpers import gcl, gcl_all, ok, one_line_error

from gcl_local import create_limit, read_limit
from gcl_local._rates import describe_rate, parse_rate


@pytest.mark.parametrize(
    ("words", "burst", "limit", "decay", "shown"),
    [
        ("100/min", None, 1, 100 / 60, "100/min, burst 1"),
        ("5/s", None, 1, 5.0, "5/s, burst 1"),
        ("300/minutes", "10", 10, 291 / 60, "300/min, burst 10"),
        ("2/hour", None, 1, 2 / 3600, "2/h, burst 1"),
        ("1000/d", "1000", 1000, 1 / 86400, "1000/day, burst 1000"),
        ("300/min", None, 1, 5.0, "5/s, burst 1"),  # the same limit as 5/s: shown in the smallest unit
    ],
)
def test_create_with_a_rate_sets_limit_and_decay_and_shows_it_back(
    db: str, words: str, burst: str | None, limit: int, decay: float, shown: str
) -> None:
    extra = ["--burst", burst] if burst else []
    ok(gcl(db, "create", "api", "--rate", words, *extra))
    made = read_limit("api", db=db)
    assert made.limit == limit
    assert made.slot_decay_per_second == pytest.approx(decay, rel=1e-12)
    ls_out, inspect_out = gcl_all(db, [["ls"], ["inspect", "api"]])
    assert f"  {shown}  " in ok(ls_out)
    assert f"rate:          {shown} (decay " in ok(inspect_out)


def test_update_with_a_rate(db: str) -> None:
    create_limit("api", 3, db=db)
    out = ok(gcl(db, "update", "api", "--rate", "60/min", "--burst", "2", "-o", "json"))
    changed = json.loads(out)
    assert (changed["limit"], changed["slot_decay_per_second"]) == (2, pytest.approx(59 / 60))
    assert describe_rate(changed["limit"], changed["slot_decay_per_second"]) == "60/min, burst 2"


def test_rate_mistakes_are_named_in_the_users_words(db: str) -> None:
    create_limit("api", 3, db=db)
    unit, count, burst, burst_alone, mixed, mixed_decay = gcl_all(
        db,
        [
            ["create", "x", "--rate", "100/fortnight"],
            ["create", "x", "--rate", "many/min"],
            ["create", "x", "--rate", "10/min", "--burst", "11"],
            ["update", "api", "--burst", "3"],
            ["create", "x", "--rate", "10/min", "--limit", "3"],
            ["update", "api", "--rate", "10/min", "--slot-decay-per-second", "1"],
        ],
    )
    assert one_line_error(unit) == (
        "gcl: --rate must look like 100/min (N per one of s, sec, second, m, min, minute, h, hour, d, day), "
        "not '100/fortnight'."
    )
    assert one_line_error(count) == "gcl: --rate must start with a whole number of calls, not 'many/min'."
    assert one_line_error(burst) == "gcl: --burst must be a whole number from 1 to the rate's 10, not 11."
    assert one_line_error(burst_alone, 2) == "gcl: --burst goes with --rate (e.g. --rate 100/min --burst 5)."
    assert "give it without --limit" in one_line_error(mixed, 2)
    assert "give it without --limit" in one_line_error(mixed_decay, 2)
    assert read_limit("api", db=db).limit == 3


def test_limits_without_rate_words_show_their_decay(db: str) -> None:
    create_limit("odd", 3, slot_decay_per_second=0.1234567, db=db)
    assert "decay 0.1235/s" in ok(gcl(db, "ls"))


# -- the promise: at most N calls in any window of one UNIT ----------------------------------------------

WORKER = """
import sys, time
from gcl_local import rate_limit
db, calls = sys.argv[1], int(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
for _ in range(calls):
    rate_limit("api", db=db)
    print(time.monotonic(), flush=True)
"""


def _call_moments(db: str, procs: object, workers: int, calls: int) -> list[float]:
    started = [procs.python(WORKER, db, str(calls), stdin=-1) for _ in range(workers)]  # type: ignore[attr-defined]
    for proc in started:
        assert proc.stdout.readline() == "ready\n"
    for proc in started:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    moments: list[float] = []
    for proc in started:
        out, err = proc.communicate(timeout=120)
        assert err == ""
        moments += [float(line) for line in out.split()]
    assert len(moments) == workers * calls
    return sorted(moments)


def _most_in_a_window(moments: list[float], window: float) -> int:
    """The most calls in any window [t, t + window) (it suffices to start windows at calls)."""
    most, j = 0, 0
    for i, start in enumerate(moments):
        j = max(j, i)
        while j < len(moments) and moments[j] < start + window:
            j += 1
        most = max(most, j - i)
    return most


# A call is timed when rate_limit returns, a little after its grant; a late return can make two
# grants look closer than they were. Windows are measured this much shorter to allow for it.
SLACK = 0.12


@pytest.mark.slow
@pytest.mark.parametrize(("rate", "burst"), [("10/s", 1), ("10/s", 4)])
def test_at_most_n_calls_in_any_window_of_one_unit(db: str, procs: object, rate: str, burst: int) -> None:
    parsed = parse_rate(rate, burst)
    create_limit("api", parsed.limit, slot_decay_per_second=parsed.slot_decay_per_second, db=db)
    moments = _call_moments(db, procs, workers=4, calls=7)
    assert _most_in_a_window(moments, 1.0 - SLACK) <= 10
    # and the rate is used, not wasted: the long-run pace is (N + 1 - B) per second after the burst
    pace = (len(moments) - burst) / (moments[-1] - moments[0])
    assert pace == pytest.approx(10 + 1 - burst, rel=0.2)


@pytest.mark.slow
def test_the_careless_way_breaks_the_quota_the_test_would_catch(db: str, procs: object) -> None:
    # limit = burst and decay = N / UNIT, as one would write it by hand: B + N - 1 calls in the first window.
    create_limit("api", 4, slot_decay_per_second=10.0, db=db)
    moments = _call_moments(db, procs, workers=4, calls=7)
    assert _most_in_a_window(moments, 1.0 - SLACK) > 10
