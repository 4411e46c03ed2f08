"""Readers (``ls``, ``inspect``, ``read_limit``, ``list_limits``) read a snapshot: no write lock, no write.

Issue 11, item 2: a page, a live view or a metrics scrape that polls must not compete with the hot
path for the write lock, must not change the file, and must not create one where there is none.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import Procs
from helpers import Spawned, gcl, is_postgres, ok, one_line_error, pg_connect, split_schema, wait_for

from gcl_local import LimitNotFoundError, _admission, _effects, create_limit, list_limits, read_limit
from gcl_local.sqlite import get_store

HOLD_WRITE_LOCK = """
import sys, time
from gcl_local._backend import open_backend
def hold(tx):
    print("locked", flush=True)
    time.sleep(60)
open_backend(sys.argv[1]).write(hold)
"""


def test_ls_and_inspect_answer_while_another_process_holds_the_write_lock(db: str, procs: Procs) -> None:
    ok(gcl(db, "create", "a", "-l", "2"))
    ok(gcl(db, "acquire", "a", "--holder-pid", str(os.getpid())))
    locker = procs.python(HOLD_WRITE_LOCK, db)
    assert locker.stdout is not None
    assert locker.stdout.readline().strip() == "locked"
    started = time.monotonic()
    shown = json.loads(ok(gcl(db, "ls", "-o", "json")))
    inspected = json.loads(ok(gcl(db, "inspect", "a", "-o", "json")))
    library = read_limit("a", db=db)
    elapsed = time.monotonic() - started
    assert elapsed < 10, elapsed  # a writer would wait 30 s for the lock, then fail
    assert [limit["name"] for limit in shown] == ["a"]
    assert inspected["active_slots"] == library.active_slots == 1
    assert locker.poll() is None  # it still held the lock all along


def test_a_read_writes_nothing(db: str) -> None:
    create_limit("a", 1, db=db)
    ok(gcl(db, "acquire", "a", "--holder-pid", str(os.getpid())))
    before = _written(db)
    time.sleep(0.05)
    for args in (["ls"], ["ls", "-o", "json"], ["inspect", "a"]):
        ok(gcl(db, *args))
    list_limits(db=db)
    read_limit("a", db=db)
    assert _written(db) == before


def _written(db: str) -> object:
    """What a write would change: the file and its WAL; on PostgreSQL the clock row every write moves."""
    if not is_postgres(db):
        return [(os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in (db, f"{db}-wal")]
    schema = split_schema(db)[1]
    with pg_connect(db) as conn:
        return conn.execute(f"SELECT * FROM {schema}.clock").fetchall()


def test_a_read_of_a_missing_file_creates_nothing_and_says_so(tmp_path: Path) -> None:
    db = str(tmp_path / "typo.db")
    listing = ok(gcl(db, "ls"))
    assert "No state file yet" in listing
    as_json = gcl(db, "ls", "-o", "json")
    assert json.loads(ok(as_json)) == []
    assert "no state file yet" in as_json.stderr.lower()
    assert "no state file yet" in one_line_error(gcl(db, "inspect", "a")).lower()
    assert list_limits(db=db) == []
    with pytest.raises(LimitNotFoundError):
        read_limit("a", db=db)
    assert list(tmp_path.iterdir()) == []


def test_the_default_state_directory_is_not_created_by_a_read(tmp_path: Path) -> None:
    assert "No state file yet" in ok(gcl(None, "ls"))
    assert list_limits() == []
    assert not (tmp_path / "state").exists()


def test_a_dead_holder_is_shown_as_reclaimable_not_reaped(db: str, spawned: Spawned) -> None:
    create_limit("a", 2, db=db)
    sleeper = spawned.sleeper()
    lease_id = ok(gcl(db, "acquire", "a", "--holder-pid", str(sleeper.pid))).strip()
    assert [h.id for h in read_limit("a", db=db).holders] == [lease_id]
    sleeper.kill()
    sleeper.wait()
    for _ in range(2):  # the second read finds it still there: the first did not reap it
        limit = read_limit("a", db=db)
        assert limit.holders == ()
        assert [h.id for h in limit.reclaimable] == [lease_id]
        assert limit.active_slots == 0  # its slot goes to the next one who asks
        (shown,) = json.loads(ok(gcl(db, "ls", "-o", "json")))
        assert [h["id"] for h in shown["reclaimable"]] == [lease_id]
    shown_text = ok(gcl(db, "inspect", "a"))
    assert "Holders that died" in shown_text
    assert lease_id in shown_text
    assert limit.stats is not None
    assert limit.stats.reclaimed == 0
    ok(gcl(db, "run", "a", "--occupy", "2", "--", "true"))  # needs the room: reclaims it
    limit = read_limit("a", db=db)
    assert limit.reclaimable == ()
    assert limit.stats is not None
    assert limit.stats.reclaimed == 1


def test_a_dead_waiter_is_left_out(db: str, spawned: Spawned) -> None:
    create_limit("a", 1, db=db)
    ok(gcl(db, "acquire", "a", "--holder-pid", str(os.getpid())))
    waiter = spawned.gcl(db, "run", "a", "--", "true")
    wait_for(lambda: read_limit("a", db=db).waiters, what="the waiter")
    waiter.kill()
    waiter.wait()
    assert read_limit("a", db=db).waiters == ()


@pytest.mark.sqlite_only("the run directory of the SQLite store")
def test_the_run_directory_is_swept_by_writers_not_readers(db: str) -> None:
    create_limit("a", 1, db=db)
    run_dir = get_store(db).run_dir
    os.makedirs(run_dir, exist_ok=True)
    stale = os.path.join(run_dir, "4242-deadbeef.1.fifo")
    os.mkfifo(stale, 0o600)
    list_limits(db=db)
    assert os.path.lexists(stale)
    _effects.transact(get_store(db), _admission.sweep)
    assert not os.path.lexists(stale)
