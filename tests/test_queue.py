"""The first-come-first-served queue across processes, sync and async waiters alike."""

from __future__ import annotations

import json
import time

import pytest

from gcl_local import (
    AcquireConcurrencySlotTimeoutError,
    acquire_lease,
    concurrency,
    create_limit,
    delete_limit,
    read_limit,
    release_lease,
    update_limit,
)

SYNC_WAITER = """
import json, sys, time
from gcl_local import concurrency
db, name, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])
with concurrency(name, timeout_seconds=60, db=db):
    got = time.monotonic()
    time.sleep(hold)
print(json.dumps(got))
"""

ASYNC_WAITER = """
import asyncio, json, sys, time
from gcl_local.asyncio import concurrency

async def main(db, name, hold):
    async with concurrency(name, timeout_seconds=60, db=db):
        got = time.monotonic()
        await asyncio.sleep(hold)
    return got

print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))))
"""

PAIRS = """
import json, sys, time
from gcl_local import concurrency
db, names, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
spans = []
for _ in range(n):
    with concurrency(names, timeout_seconds=60, db=db):
        start = time.monotonic()
        time.sleep(0.005)
        spans.append((start, time.monotonic()))
print(json.dumps(spans))
"""

PATIENT = """
import json, sys, warnings
from gcl_local import concurrency
db, strict = sys.argv[1], sys.argv[2] == "strict"
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        with concurrency("one", timeout_seconds=30, strict=strict, db=db) as lease:
            result = {"token": lease.token}
    except Exception as exc:
        result = {"error": type(exc).__name__}
result["warnings"] = [type(w.message).__name__ for w in caught]
print(json.dumps(result))
"""

HOLD = """
import sys, time
from gcl_local import concurrency
with concurrency("one", db=sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""

SMALL_LOOP = """
import os, sys, time
from gcl_local import concurrency
db, stop = sys.argv[1], sys.argv[2]
print("looping", flush=True)
while not os.path.exists(stop):
    with concurrency("pool", timeout_seconds=60, db=db):
        time.sleep(0.05)
"""


def wait_for(predicate, what: str, children=(), timeout: float = 30.0) -> None:
    """Poll until *predicate* holds; fail at once, with its stderr, if one of *children* exits meanwhile."""
    deadline = time.monotonic() + timeout
    while not predicate():
        for child in children:
            if child.poll() is not None:
                pytest.fail(f"child {child.pid} exited with {child.returncode}: {child.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def waiting_pids(name: str, db: str) -> list[int | None]:
    return [w.pid for w in read_limit(name, db=db).waiters]


def enqueue_in_order(procs, db: str, programs: list[str], hold: float = 0.05):
    """Start one waiter per program, 150 ms apart, each only once the previous one is queued."""
    children = []
    for program in programs:
        child = procs.python(program, db, "one", str(hold))
        children.append(child)
        wait_for(lambda: len(waiting_pids("one", db)) == len(children), "a waiter to queue", children)
        time.sleep(0.15)
    assert waiting_pids("one", db) == [c.pid for c in children]
    return children


def got_times(children) -> list[float]:
    times = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        times.append(json.loads(out))
    return times


def test_waiters_are_served_in_arrival_order(db, procs):
    create_limit("one", 1, db=db)
    held = acquire_lease("one", db=db)
    children = enqueue_in_order(procs, db, [SYNC_WAITER] * 6)
    release_lease(held.id, db=db)
    times = got_times(children)
    assert times == sorted(times)
    assert read_limit("one", db=db).waiters == ()


def test_a_release_of_several_slots_serves_as_many_waiters_as_fit_and_no_more(db, procs):
    # A releaser's scan goes on while a grant leaves room, and ends at the first grant that fills the
    # limit: the fourth waiter gets in only when one of the first three leaves.
    create_limit("one", 3, db=db)
    held = acquire_lease("one", occupy=3, db=db)
    children = enqueue_in_order(procs, db, [SYNC_WAITER] * 4, hold=1.0)
    released = time.monotonic()
    release_lease(held.id, db=db)
    now = read_limit("one", db=db)  # the release granted in its own transaction: nobody had to look
    assert sorted(h.pid for h in now.holders) == sorted(c.pid for c in children[:3])
    assert waiting_pids("one", db) == [children[3].pid]
    times = got_times(children)
    assert times[3] - released >= 0.95, [got - released for got in times]
    assert read_limit("one", db=db).waiters == ()


def test_async_and_sync_waiters_share_one_queue(db, procs):
    create_limit("one", 1, db=db)
    held = acquire_lease("one", db=db)
    children = enqueue_in_order(procs, db, [SYNC_WAITER, ASYNC_WAITER] * 3)
    release_lease(held.id, db=db)
    times = got_times(children)
    assert times == sorted(times)


def test_a_killed_waiter_does_not_block_the_next(db, procs):
    create_limit("one", 1, db=db)
    held = acquire_lease("one", db=db)
    doomed, patient = enqueue_in_order(procs, db, [SYNC_WAITER, SYNC_WAITER])
    doomed.kill()
    doomed.wait()
    released = time.monotonic()
    release_lease(held.id, db=db)
    (got,) = got_times([patient])
    assert got - released < 1.0
    assert read_limit("one", db=db).waiters == ()


def test_a_waiter_gets_the_slot_of_a_holder_killed_meanwhile(db, procs):
    create_limit("one", 1, db=db)
    holder = procs.python(HOLD, db)
    assert holder.stdout.readline().strip() == "held"
    (waiter,) = enqueue_in_order(procs, db, [SYNC_WAITER])
    killed = time.monotonic()
    holder.kill()
    (got,) = got_times([waiter])
    assert got - killed < 1.0


def test_a_waiter_gets_the_slot_of_a_pid_holder_that_died_meanwhile(db, procs):
    create_limit("one", 1, db=db)
    owner = procs.python("import time; time.sleep(60)")
    acquire_lease("one", holder_pid=owner.pid, db=db)
    (waiter,) = enqueue_in_order(procs, db, [SYNC_WAITER])
    killed = time.monotonic()
    owner.kill()
    owner.wait()
    (got,) = got_times([waiter])
    assert got - killed < 1.0


def queue_patient(procs, db: str, how: str = "lenient"):
    child = procs.python(PATIENT, db, how)
    wait_for(lambda: waiting_pids("one", db) == [child.pid], "the waiter to queue", [child])
    return child


def result_of(child) -> dict:
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    return json.loads(out)


def test_disabling_a_limit_lets_its_waiters_through(db, procs):
    create_limit("one", 1, db=db)
    acquire_lease("one", db=db)
    waiter = queue_patient(procs, db)
    start = time.monotonic()
    assert update_limit("one", active=False, db=db).active is False
    assert result_of(waiter) == {"token": None, "warnings": []}
    assert time.monotonic() - start < 5
    assert read_limit("one", db=db).waiters == ()


def test_deleting_a_limit_lets_its_waiters_through_with_a_warning(db, procs):
    create_limit("one", 1, db=db)
    acquire_lease("one", db=db)
    lenient = queue_patient(procs, db)
    strict = procs.python(PATIENT, db, "strict")
    wait_for(lambda: waiting_pids("one", db) == [lenient.pid, strict.pid], "both waiters to queue", [lenient, strict])
    delete_limit("one", db=db)
    assert result_of(lenient) == {"token": None, "warnings": ["MissingLimitWarning"]}
    assert result_of(strict) == {"error": "ConcurrencySlotAcquisitionError", "warnings": []}


def test_a_timed_out_waiter_leaves_no_ticket(db):
    create_limit("one", 1, db=db)
    held = acquire_lease("one", db=db)
    with pytest.raises(AcquireConcurrencySlotTimeoutError):
        with concurrency("one", timeout_seconds=0.3, db=db):
            pass
    assert read_limit("one", db=db).waiters == ()
    release_lease(held.id, db=db)
    with concurrency("one", timeout_seconds=0, db=db) as lease:  # no phantom ticket ahead of us
        assert lease.token is not None


def test_multi_name_waiters_in_opposite_orders_all_finish(db, procs):
    create_limit("a", 1, db=db)
    create_limit("b", 1, db=db)
    orders = [["a", "b"], ["b", "a"]] * 3
    children = [procs.python(PAIRS, db, json.dumps(names), "10") for names in orders]
    spans = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        spans.extend(json.loads(out))
    assert len(spans) == 60
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    level = 0
    for _, step in events:
        level += step
        assert level <= 1
    assert read_limit("a", db=db).active_slots == read_limit("b", db=db).active_slots == 0


def test_a_big_request_is_not_starved_by_small_ones(db, procs, tmp_path):
    create_limit("pool", 4, db=db)
    stop = tmp_path / "stop"
    smalls = [procs.python(SMALL_LOOP, db, str(stop)) for _ in range(4)]
    for child in smalls:
        assert child.stdout.readline().strip() == "looping"
    wait_for(lambda: read_limit("pool", db=db).active_slots > 0, "the small ones to churn", smalls)
    time.sleep(0.3)  # let them churn
    start = time.monotonic()
    with concurrency("pool", occupy=4, timeout_seconds=15, db=db) as lease:
        waited = time.monotonic() - start
        limit = read_limit("pool", db=db)
        assert [h.id for h in limit.holders] == [lease.id]
        assert limit.active_slots == 4
    stop.touch()
    assert waited < 1.5  # about one hold: the small ones queued behind it, none barged in
    for child in smalls:
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
