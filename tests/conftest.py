from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Spawned

from gcl_local import _shell
from gcl_local.sqlite import _liveness, _store

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test touches the user's real state file: the default path points into tmp_path."""
    monkeypatch.delenv("GCL_DB", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    _shell._warned.clear()  # each test is a fresh process as far as warnings of missing limits go


@pytest.fixture(autouse=True)
def _fresh_process_state() -> Iterator[None]:
    """After each test, close what its state files left open in this process (connections, tokens,
    kept pipes), as its exit would: 400 tests in one process must not run out of descriptors."""
    yield
    for token in list(_liveness._tokens.values()):
        with contextlib.suppress(OSError):
            os.close(token.fd)
    _liveness._tokens.clear()
    for store in list(_store._stores.values()):
        with contextlib.suppress(Exception):
            store.close()
    _store._stores.clear()
    _store._stores_by_arg.clear()


@pytest.fixture
def db(tmp_path: Path) -> str:
    """Path of a fresh state file (not created yet)."""
    return str(tmp_path / "gcl.db")


@pytest.fixture(params=["sqlite", "postgres"])
def store_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store on each backend: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        return str(tmp_path / "gcl.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def pg_url() -> str:
    url = os.environ.get("GCL_TEST_PG")
    if not url:
        pytest.skip("no PostgreSQL server: GCL_TEST_PG is not set (scripts/test starts one)")
    return url


class Procs:
    """Start Python child processes running a snippet; every one is killed and reaped at teardown."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def python(self, code: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.Popen(  # type: ignore[call-overload]
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            **kwargs,
        )
        self.started.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=10)


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.cleanup()


@pytest.fixture
def spawned() -> Iterator[Spawned]:
    """Background processes in their own sessions, killed with their children at teardown."""
    s = Spawned()
    try:
        yield s
    finally:
        s.cleanup()
