"""Wake-up pipes left behind without their liveness token are swept, and the order of removal
keeps that from happening again."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from helpers import Spawned, gcl, ok, wait_for

from gcl_local import _admission, _effects, create_limit, read_limit
from gcl_local.sqlite import _liveness, get_store

pytestmark = pytest.mark.sqlite_only("the run directory of the SQLite store")


def sweep(db: str) -> None:
    """What processes run now and then as they start (readers such as ``gcl ls`` never write)."""
    _effects.transact(get_store(db), _admission.sweep)


def pipes_in(run_dir: str) -> list[str]:
    return sorted(e for e in os.listdir(run_dir) if e.endswith(_liveness.PIPE_SUFFIX))


def test_the_sweep_removes_a_pipe_whose_token_is_gone(db: str, spawned: Spawned) -> None:
    create_limit("a", 1, db=db)
    keeper = spawned.sleeper()
    lease_id = ok(gcl(db, "acquire", "a", "--holder-pid", str(keeper.pid))).strip()
    waiter = spawned.gcl(db, "run", "a", "--", "true")  # a live waiter: its pipe must stay
    wait_for(lambda: read_limit("a", db=db).waiters, what="the waiter")
    run_dir = get_store(db).run_dir
    (live,) = pipes_in(run_dir)
    # What a process killed between unlinking a dead token and its pipes left behind.
    orphan = os.path.join(run_dir, "4242-deadbeef.1.fifo")
    os.mkfifo(orphan, 0o600)
    assert not os.path.exists(os.path.join(run_dir, "4242-deadbeef.lock"))
    sweep(db)  # as a process does when it starts, now and then
    assert pipes_in(run_dir) == [live]
    assert stat.S_ISFIFO(os.lstat(os.path.join(run_dir, live)).st_mode)
    ok(gcl(db, "release", lease_id))  # the waiter still hears its wake-up
    assert waiter.wait(timeout=20) == 0


def test_a_token_is_unlinked_after_its_pipes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed halfway, the remover leaves a token (found dead and swept later), never a bare pipe."""
    run_dir = str(tmp_path)
    name = "4242-deadbeef"
    (tmp_path / f"{name}.lock").touch()
    for n in (1, 2):
        os.mkfifo(tmp_path / f"{name}.{n}.fifo")
    unlinked: list[str] = []
    real_unlink = os.unlink

    def recording_unlink(path: str) -> None:
        unlinked.append(os.path.basename(path))
        real_unlink(path)

    monkeypatch.setattr(os, "unlink", recording_unlink)
    _liveness.remove_token_files(run_dir, name)
    assert sorted(unlinked[:2]) == [f"{name}.1.fifo", f"{name}.2.fifo"]
    assert unlinked[2:] == [f"{name}.lock"]
    assert os.listdir(run_dir) == []


def test_the_sweep_removes_a_new_pipe_temporary_whose_token_is_dead(db: str) -> None:
    """A process killed between making its pipe under a temporary name and renaming it (the chaos
    run found one) leaves a young ``.fifo.tmp``: its dead token tells it is stale at once."""
    create_limit("a", 1, db=db)
    run_dir = get_store(db).run_dir
    os.makedirs(run_dir, exist_ok=True)
    dead = os.path.join(run_dir, ".4243-deadbeef.3.fifo.tmp")
    os.mkfifo(dead, 0o600)
    token = _liveness.process_token(run_dir, 0o600)[0]  # a live token: its temporary must stay
    alive = os.path.join(run_dir, f".{token.name}.9.fifo.tmp")
    os.mkfifo(alive, 0o600)
    sweep(db)
    assert not os.path.lexists(dead)
    assert os.path.lexists(alive)
    os.unlink(alive)


def test_the_sweep_removes_a_new_token_temporary_whose_maker_is_dead(db: str, spawned: Spawned) -> None:
    """A process killed between creating its token under a temporary name and renaming it."""
    create_limit("a", 1, db=db)
    run_dir = get_store(db).run_dir
    os.makedirs(run_dir, exist_ok=True)
    gone = spawned.sleeper()
    gone.kill()
    gone.wait()
    dead = os.path.join(run_dir, f".{gone.pid}-deadbeef.tmp")
    Path(dead).touch()
    alive = os.path.join(run_dir, f".{os.getpid()}-cafef00d.tmp")  # a live maker: not yet locked
    Path(alive).touch()
    sweep(db)
    assert not os.path.lexists(dead)
    assert os.path.lexists(alive)
    os.unlink(alive)
