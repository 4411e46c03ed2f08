"""Helpers shared by the CLI tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from gcl_local import Lease, read_limit

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
GCL = [sys.executable, "-m", "gcl_local"]
Result = subprocess.CompletedProcess[str]


def wait_for(predicate: Callable[[], T | None], timeout: float = 20.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def holding(db: str, name: str, label: str, proc: subprocess.Popen[str]) -> Lease:
    """Wait until ``gcl run`` (*proc*) holds *name* and has named its command (*label*) as the holder."""

    def holder() -> Lease | None:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} ended early: {proc.returncode} {proc.communicate()}")
        holders = read_limit(name, db=db).holders
        if not holders or holders[0].label != label:
            return None
        # gcl run takes the lease under its own pid, then names its command's pid once started
        return None if holders[0].pid == proc.pid else holders[0]

    return wait_for(holder, what=f"a holder of {name!r} named {label!r}")


def env(**extra: str) -> dict[str, str]:
    result = dict(os.environ)
    result["PYTHONPATH"] = str(REPO) + os.pathsep + result.get("PYTHONPATH", "")
    result.update(extra)
    return result


def _start(db: str | None, args: Sequence[str], input: str | None, extra_env: dict[str, str]) -> subprocess.Popen[str]:
    prefix = ["--db", db] if db is not None else []
    return subprocess.Popen(
        [*GCL, *prefix, *args],
        stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(**extra_env),
    )


def _finish(proc: subprocess.Popen[str], input: str | None = None) -> Result:
    try:
        out, err = proc.communicate(input, timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def gcl(db: str | None, *args: str, input: str | None = None, **extra_env: str) -> Result:
    """Run ``gcl [--db DB] ARGS`` to completion; stdin is /dev/null unless *input* is given."""
    return _finish(_start(db, args, input, extra_env), input)


def gcl_all(db: str | None, cases: Sequence[Sequence[str]]) -> list[Result]:
    """Run several independent ``gcl`` commands at once; their results in order."""
    started = [_start(db, args, None, {}) for args in cases]
    return [_finish(proc) for proc in started]


def ok(result: Result) -> str:
    assert result.returncode == 0, (result.args, result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


def one_line_error(result: Result, code: int = 1) -> str:
    """The command failed with *code* and said why in exactly one line on stderr, without a traceback."""
    assert result.returncode == code, (result.args, result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.args
    lines = result.stderr.splitlines()
    assert len(lines) == 1, (result.args, result.stderr)
    assert lines[0].startswith("gcl: "), (result.args, result.stderr)
    return lines[0]


class Spawned:
    """Background processes, each in its own session; killed with their children at teardown."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def start(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(list(argv), text=True, env=env(), start_new_session=True, **kwargs)
        self.started.append(proc)
        return proc

    def gcl(self, db: str, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
        return self.start([*GCL, "--db", db, *args], **kwargs)

    def sleeper(self) -> subprocess.Popen[str]:
        """A process to name with --holder-pid."""
        return self.start(["sleep", "60"])

    def cleanup(self) -> None:
        for proc in self.started:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate(timeout=30)


def installed_or_skip(tool: str, package: str, timeout: float = 600) -> str:
    """The path of *tool*; installed from Debian's *package* first when missing and we may (root)."""
    import pytest

    found = shutil.which(tool)
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", package], capture_output=True, timeout=timeout, check=False)
        found = shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} is not installed and could not be installed (apt-get install -y {package})")
    return found


# PostgreSQL: scripts/test runs the suite under scripts/pg-server, which exports GCL_TEST_PG (a
# libpq URL of a throwaway server on a private Unix socket). Each test gets its own schema through
# the URL's `gcl_schema` query parameter, which the PostgreSQL backend honours (and strips before it
# hands the URL to libpq, which knows no such parameter).
PG_ENV = "GCL_TEST_PG"
SCHEMA_PARAM = "gcl_schema"


def is_postgres(db: str | None) -> bool:
    return db is not None and db.startswith(("postgresql://", "postgres://"))


def pg_server_url() -> str | None:
    """$GCL_TEST_PG when it names a server (scripts/test sets it; `off` or empty: none)."""
    url = os.environ.get(PG_ENV, "")
    return url if is_postgres(url) else None


def pg_unavailable() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None when they can."""
    if pg_server_url() is None:
        value = os.environ.get(PG_ENV)
        where = f"{PG_ENV}={value!r} names no server" if value else f"{PG_ENV} is not set"
        return f"{where}: run the tests through scripts/test (or scripts/pg-server run -- pytest ...)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed: pip install '.[postgres]' (scripts/setup dev does)"
    return None


def with_schema(url: str, schema: str) -> str:
    """*url* with `gcl_schema=<schema>` set in its query."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != SCHEMA_PARAM]
    query.append((SCHEMA_PARAM, schema))
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


def split_schema(url: str) -> tuple[str, str | None]:
    """(the libpq URL without `gcl_schema`, the schema named there or None)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in pairs if k == SCHEMA_PARAM), None)
    rest = [(k, v) for k, v in pairs if k != SCHEMA_PARAM]
    return urlunsplit(parts._replace(query=urlencode(rest, safe="/"))), schema


def header(db: str) -> str:
    """The first line of ``ls`` and ``inspect`` for the store *db*."""
    return f"Store: {db}" if is_postgres(db) else f"State file: {db}"


def store_exists(db: str) -> bool:
    """Whether the store of *db* has been made: the state file, or the PostgreSQL schema."""
    if not is_postgres(db):
        return os.path.exists(db)
    schema = split_schema(db)[1] or "gcl"
    with pg_connect(db) as conn:
        return bool(conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchall())


def pg_connect(url: str, **kwargs: Any) -> Any:
    """A psycopg connection (autocommit) to the server of *url*, a `gcl_schema` parameter ignored."""
    import psycopg

    kwargs.setdefault("autocommit", True)
    kwargs.setdefault("connect_timeout", 10)
    return psycopg.connect(split_schema(url)[0], **kwargs)


def drop_schema(url: str, schema: str, lock_timeout: float = 5.0) -> None:
    """DROP SCHEMA ... CASCADE; a session that still holds a lock on something in it (a process the
    test left in a transaction) is terminated after *lock_timeout* seconds, and the drop retried."""
    import psycopg
    from psycopg import sql

    with pg_connect(url) as conn:
        conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(lock_timeout * 1000)}ms")))
        drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        for _ in range(5):
            try:
                conn.execute(drop)
                return
            except psycopg.errors.LockNotAvailable:
                conn.execute(
                    "SELECT pg_terminate_backend(l.pid) FROM pg_locks l"
                    " WHERE l.pid <> pg_backend_pid() AND l.granted AND ("
                    "  l.relation IN (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON c.relnamespace = n.oid"
                    "                 WHERE n.nspname = %(s)s)"
                    "  OR (l.classid = 'pg_namespace'::regclass"
                    "      AND l.objid = (SELECT oid FROM pg_namespace WHERE nspname = %(s)s)))",
                    {"s": schema},
                )
                time.sleep(0.1)
        conn.execute(drop)
