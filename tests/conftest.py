from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import Spawned, drop_schema, pg_server_url, pg_unavailable, with_schema
from hosts import Hosts

from gcl_local import _backend, _shell
from gcl_local.sqlite import _liveness, _store

# The suite sends SIGINT, SIGTERM and SIGHUP to its processes and checks their handlers: started in the
# background (`cmd &` in a script ignores SIGINT) or under nohup (SIGHUP), it would inherit those
# ignored, and so would every process it starts. Start from the defaults, as a terminal gives them.
signal.signal(signal.SIGINT, signal.default_int_handler)
for _signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT):
    signal.signal(_signum, signal.SIG_DFL)

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
    for backend in list(_backend._backends.values()):  # PostgreSQL: the connections of this thread
        with contextlib.suppress(Exception):
            backend.close()
        session = getattr(backend, "_session", None)
        if session is not None:
            with contextlib.suppress(Exception):
                session.close()
    _backend._backends.clear()


# Backends. `db` is a fresh SQLite state file by default. A test marked `both_backends` (a module:
# `pytestmark = pytest.mark.both_backends`) runs twice, ids `sqlite` and `postgres`, the latter with
# `db` a PostgreSQL URL of its own schema (see pg_url); `sqlite_only("reason")` then skips the
# postgres case with that reason. ALL_TESTS_ON_BOTH_BACKENDS = True does so for every test using `db`.
ALL_TESTS_ON_BOTH_BACKENDS = True
BACKENDS = ("sqlite", "postgres")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db" not in metafunc.fixturenames:
        return
    if not (ALL_TESTS_ON_BOTH_BACKENDS or metafunc.definition.get_closest_marker("both_backends")):
        return
    only = metafunc.definition.get_closest_marker("sqlite_only")
    pg_marks = []
    if only is not None:
        reason = only.args[0] if only.args else only.kwargs.get("reason", "")
        pg_marks.append(pytest.mark.skip(reason=f"not on PostgreSQL: {reason}"))
    metafunc.parametrize(
        "db",
        [pytest.param("sqlite", id="sqlite"), pytest.param("postgres", id="postgres", marks=pg_marks)],
        indirect=True,
    )


@pytest.fixture
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Path of a fresh state file (not created yet); on the `postgres` case, a URL of a fresh schema."""
    backend = getattr(request, "param", "sqlite")
    if backend == "postgres":
        url: str = request.getfixturevalue("pg_url")
        return url
    return str(tmp_path / "gcl.db")


@pytest.fixture(params=["sqlite", "postgres"])
def store_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store on each backend: a SQLite file, or a PostgreSQL schema of its own (pg_url)."""
    if request.param == "sqlite":
        return str(tmp_path / "gcl.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def pg_url() -> Iterator[str]:
    """$GCL_TEST_PG with `gcl_schema=<a name of its own>` (the schema does not exist yet: the backend
    creates it on first use); the schema is dropped (CASCADE) at teardown. Skips, saying why, where
    there is no server (scripts/test starts one) or no psycopg."""
    reason = pg_unavailable()
    if reason is not None:
        pytest.skip(reason)
    base = pg_server_url()
    assert base is not None
    schema = f"gcl_test_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    try:
        yield with_schema(base, schema)
    finally:
        drop_schema(base, schema)


@pytest.fixture
def hosts() -> Iterator[Callable[..., Hosts]]:
    """Make simulated hosts: ``hosts(2)`` gives two network namespaces wired to a hub namespace
    that runs a PostgreSQL server of their own (see tests/hosts.py); all torn down at the end.
    Skips, saying why, when not root or without `ip`."""
    made: list[Hosts] = []

    def make(n: int = 2, *, server: bool = True) -> Hosts:
        h = Hosts.create_or_skip(n, server=server)
        made.append(h)
        return h

    try:
        yield make
    finally:
        for h in made:
            h.cleanup()


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


@pytest.fixture
def own_pg_server() -> Iterator[tuple[str, str]]:
    """A PostgreSQL server of this test's own (URL, directory): the test restarts it."""
    reason = pg_unavailable()
    if reason is not None:
        pytest.skip(reason)
    started = subprocess.run(
        [str(REPO / "scripts" / "pg-server"), "start"], capture_output=True, text=True, timeout=300, check=False
    )
    if started.returncode == 3:
        pytest.skip(started.stderr.strip())
    assert started.returncode == 0, started.stderr
    values = dict(w.split("=", 1) for w in shlex.split(started.stdout) if "=" in w)
    try:
        yield values["GCL_TEST_PG"], values["GCL_TEST_PG_DIR"]
    finally:
        stop = [str(REPO / "scripts" / "pg-server"), "stop", values["GCL_TEST_PG_DIR"]]
        subprocess.run(stop, capture_output=True, timeout=60, check=False)
