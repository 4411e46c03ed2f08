"""The history of each limit: counters and a wait-time histogram kept in the store (issue 13, item 1)."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone

import apsw
import pytest
from helpers import Spawned, gcl, ok, wait_for

from gcl_local import concurrency, create_limit, rate_limit, read_limit
from gcl_local._model import WAIT_BUCKETS, Stats, wait_bucket
from gcl_local.sqlite._sql import APPLICATION_ID, MIGRATIONS


def stats_of(db: str, name: str) -> Stats:
    stats = read_limit(name, db=db).stats
    assert stats is not None
    return stats


def test_acquisitions_failures_and_waits_are_counted(db: str, spawned: Spawned) -> None:
    create_limit("a", 1, db=db)
    with concurrency("a", db=db):
        time.sleep(0.2)
    lease_id = ok(gcl(db, "acquire", "a", "--holder-pid", str(os.getpid()))).strip()
    assert gcl(db, "run", "a", "-n", "--", "true").returncode == 75  # refused: non-blocking
    assert gcl(db, "run", "a", "--timeout", "0.2", "--", "true").returncode == 75  # timed out
    waiter = spawned.gcl(db, "run", "a", "--", "true")  # waits for the holder, then gets its slot
    wait_for(lambda: read_limit("a", db=db).waiters, what="the waiter")
    time.sleep(0.2)
    ok(gcl(db, "release", lease_id))
    assert waiter.wait(timeout=20) == 0
    stats = stats_of(db, "a")
    assert (stats.immediate_concurrency, stats.waited_concurrency) == (2, 1)
    assert (stats.immediate_rate, stats.waited_rate) == (0, 0)
    assert (stats.timeouts, stats.refusals, stats.reclaimed) == (1, 1, 0)
    assert stats.acquisitions == 3
    assert sum(stats.wait_buckets) == 3
    assert stats.wait_buckets[0] == 2  # the two that did not wait
    assert 0.2 < stats.wait_seconds_sum < 10  # the waiter's: it waited through the 0.2-s sleep
    assert stats.slot_seconds >= 0.2 + 0.4
    p50, p95 = stats.wait_quantile(0.5), stats.wait_quantile(0.95)
    assert p50 is not None
    assert p50 <= 0.001
    assert p95 is not None
    assert 0.1 < p95 <= 10


def test_rate_acquisitions_are_counted_by_kind(db: str) -> None:
    create_limit("r", 1, slot_decay_per_second=20.0, db=db)
    for _ in range(3):
        rate_limit("r", db=db)
    stats = stats_of(db, "r")
    assert stats.immediate_rate + stats.waited_rate == 3
    assert stats.waited_rate >= 1  # the bucket holds one: the later calls waited for its decay
    assert stats.immediate_concurrency == stats.waited_concurrency == 0


def test_slot_seconds_include_the_leases_held_now(db: str) -> None:
    create_limit("a", 3, db=db)
    with concurrency("a", occupy=2, db=db):
        time.sleep(0.3)
        during = stats_of(db, "a").slot_seconds
        assert during >= 0.6
    after = stats_of(db, "a").slot_seconds
    assert after >= during  # a counter: never smaller when the lease ends


def test_a_reclaimed_holder_is_counted(db: str, spawned: Spawned) -> None:
    create_limit("a", 1, db=db)
    sleeper = spawned.sleeper()
    ok(gcl(db, "acquire", "a", "--holder-pid", str(sleeper.pid)))
    sleeper.kill()
    sleeper.wait()
    ok(gcl(db, "run", "a", "--", "true"))
    assert stats_of(db, "a").reclaimed == 1


def test_reset_stats_zeroes_the_history_and_nothing_else(db: str) -> None:
    create_limit("a", 2, db=db)
    with concurrency("a", db=db):
        pass
    before = read_limit("a", db=db)
    assert before.stats is not None
    assert before.stats.acquisitions == 1
    shown = json.loads(ok(gcl(db, "update", "a", "--reset-stats", "-o", "json")))
    assert shown["stats"]["immediate_concurrency"] == 0
    after = read_limit("a", db=db)
    assert after.stats is not None
    assert after.stats.acquisitions == 0
    assert sum(after.stats.wait_buckets) == 0
    assert after.stats.slot_seconds == 0.0
    assert after.stats.since > before.stats.since
    assert (after.limit, after.avg_slot_occupancy_seconds) == (before.limit, before.avg_slot_occupancy_seconds)
    ok(gcl(db, "update", "a", "--limit", "3", "--reset-stats"))
    assert read_limit("a", db=db).limit == 3
    assert "not found" in gcl(db, "update", "nope", "--reset-stats").stderr


def test_counters_survive_in_the_file(db: str) -> None:
    create_limit("a", 1, db=db)
    with concurrency("a", db=db):
        pass
    out = ok(gcl(db, "inspect", "a", "-o", "json"))  # another process reads them from the file
    assert json.loads(out)["stats"]["immediate_concurrency"] == 1
    assert "1 acquired (0 waited)" in ok(gcl(db, "inspect", "a"))


@pytest.mark.sqlite_only("a SQLite file of schema version 1 (the PostgreSQL schema began at its version 1)")
def test_a_version_1_file_is_migrated_and_keeps_its_limits(db: str) -> None:
    conn = apsw.Connection(db)
    conn.execute("PRAGMA journal_mode=WAL")
    for statement in MIGRATIONS[1]:
        conn.execute(statement)
    conn.execute("INSERT INTO limits VALUES ('old', 2, 1, 0.0, 0.0, 0.0, 0.0, 2.0, 1000.0, 1000.0)")
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute("PRAGMA user_version=1")
    conn.close()
    limit = read_limit("old", db=db)
    assert limit.limit == 2
    assert limit.stats is not None
    assert limit.stats.acquisitions == 0
    assert limit.stats.since == limit.created
    with concurrency("old", db=db):
        pass
    assert stats_of(db, "old").immediate_concurrency == 1
    check = apsw.Connection(db)
    assert check.execute("PRAGMA user_version").fetchall()[0][0] == 2
    check.close()


@pytest.mark.parametrize(
    ("seconds", "bucket"),
    [(0.0, 0), (0.001, 0), (0.0011, 1), (0.5, 3), (1.0, 3), (59.0, 5), (600.0, 6), (601.0, 7)],
)
def test_wait_buckets(seconds: float, bucket: int) -> None:
    assert wait_bucket(seconds) == bucket
    assert len(WAIT_BUCKETS) == 7


def test_wait_quantiles_interpolate_in_their_bucket() -> None:
    stats = Stats(_epoch(), 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0, (0, 0, 0, 10, 0, 0, 0, 0))
    assert stats.wait_quantile(0.5) == pytest.approx(0.55)  # halfway through (0.1, 1]
    assert Stats(_epoch(), 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0, (0,) * 7 + (4,)).wait_quantile(0.5) == 600.0
    assert Stats(_epoch(), 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0, (0,) * 8).wait_quantile(0.5) is None


def _epoch() -> datetime:
    return datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_a_waiter_in_the_queue_counts_as_waited(db: str, spawned: Spawned) -> None:
    create_limit("q", 1, db=db)
    ok(gcl(db, "acquire", "q", "--holder-pid", str(os.getpid())))
    waiter = spawned.gcl(db, "run", "q", "--", "true")
    wait_for(lambda: read_limit("q", db=db).waiters, what="the waiter")
    time.sleep(0.05)
    (lease,) = read_limit("q", db=db).holders
    ok(gcl(db, "release", lease.id))
    assert waiter.wait(timeout=20) == 0
    stats = stats_of(db, "q")
    assert (stats.immediate_concurrency, stats.waited_concurrency) == (1, 1)
    assert sum(stats.wait_buckets[2:]) == 1  # it waited more than 10 ms
