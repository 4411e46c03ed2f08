"""The PostgreSQL test infrastructure itself: the `db`/`pg_url` fixtures, and simulated hosts."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import SCHEMA_PARAM, drop_schema, is_postgres, pg_connect, split_schema, with_schema
from hosts import Hosts


@pytest.mark.both_backends
def test_db_fixture_gives_each_backend_a_fresh_store(db: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    backend = request.node.callspec.id
    if backend == "sqlite":
        assert not is_postgres(db)
        assert Path(db).parent == tmp_path
        assert not Path(db).exists()
        return
    assert backend == "postgres"
    assert is_postgres(db)
    base, schema = split_schema(db)
    assert schema is not None
    assert schema.startswith("gcl_test_")
    assert SCHEMA_PARAM not in base
    with pg_connect(db) as conn:  # the schema is left for the backend to create
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() == (0,)


@pytest.mark.both_backends
@pytest.mark.sqlite_only("checks that sqlite_only skips the postgres case")
def test_sqlite_only_skips_the_postgres_case(db: str) -> None:
    assert not is_postgres(db)


@pytest.mark.sqlite_only("it checks the default case")
def test_db_is_sqlite_unless_asked(db: str) -> None:
    assert not is_postgres(db)


def test_the_server_answers(pg_url: str) -> None:
    with pg_connect(pg_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert int(conn.execute("SHOW max_connections").fetchone()[0]) >= 300


def test_schema_urls_round_trip() -> None:
    url = "postgresql://postgres@/postgres?host=/tmp/gcl-pg.abc&port=5432"
    with_s = with_schema(url, "s1")
    assert split_schema(with_s) == (url, "s1")
    assert split_schema(with_schema(with_s, "s2")) == (url, "s2")


def test_drop_schema_ends_a_session_that_holds_it(pg_url: str) -> None:
    """A test may leave a process in a transaction on its schema: teardown still drops it."""
    schema = split_schema(pg_url)[1]
    assert schema is not None
    with pg_connect(pg_url) as setup:
        setup.execute(f'CREATE SCHEMA "{schema}"')
        setup.execute(f'CREATE TABLE "{schema}".t (x int)')
    holder = pg_connect(pg_url, autocommit=False)
    holder.execute(f'LOCK TABLE "{schema}".t IN ACCESS EXCLUSIVE MODE')
    started = time.monotonic()
    drop_schema(pg_url, schema, lock_timeout=0.2)
    assert time.monotonic() - started < 5
    with pg_connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() == (0,)
    assert holder.closed or holder.broken or holder.info.transaction_status != 0
    holder.close()


# A client for a host: connects to argv[1] (with a short TCP user timeout, so that a partition is
# noticed in about a second), then for each line on stdin runs SELECT 1 and prints a JSON line.
CLIENT = """
import json, sys, time
import psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True, connect_timeout=3, tcp_user_timeout=1000,
                       keepalives_idle=1, keepalives_interval=1, keepalives_count=1)
print(json.dumps({"connected": conn.execute("SELECT inet_client_addr()::text").fetchone()[0]}), flush=True)
for line in sys.stdin:
    started = time.monotonic()
    try:
        value = conn.execute("SELECT 1").fetchone()[0]
        print(json.dumps({"value": value, "seconds": time.monotonic() - started}), flush=True)
    except psycopg.Error as e:
        print(json.dumps({"error": type(e).__name__, "seconds": time.monotonic() - started}), flush=True)
"""


def send(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()


def reply(proc: subprocess.Popen[str]) -> dict[str, object]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.communicate(timeout=10)
    result: dict[str, object] = json.loads(line)
    return result


def ask(proc: subprocess.Popen[str]) -> dict[str, object]:
    send(proc)
    return reply(proc)


def connected(proc: subprocess.Popen[str]) -> object:
    return reply(proc)["connected"]


@pytest.mark.slow
def test_hosts_reach_the_server_and_a_cut_link_fails_only_its_host(hosts: Callable[..., Hosts]) -> None:
    h = hosts(2)
    a, b = (h.python(i, CLIENT, h.url) for i in range(2))
    assert connected(a) == f"{h.addr(0)}/32"
    assert connected(b) == f"{h.addr(1)}/32"
    assert ask(a)["value"] == 1
    assert ask(b)["value"] == 1

    h.cut(1)
    send(b)
    assert ask(a)["value"] == 1  # host 0 is unaffected while host 1's query hangs
    cut_off = reply(b)
    assert "error" in cut_off, cut_off  # ... until its TCP user timeout (1 s) gives up
    assert 0.5 < float(str(cut_off["seconds"])) < 10, cut_off
    assert h.run(1, ["true"]).returncode == 0  # the host itself lives on

    h.restore(1)
    again = h.python(1, CLIENT, h.url)
    assert connected(again) == f"{h.addr(1)}/32"
    assert ask(again)["value"] == 1
    assert ask(a)["value"] == 1


@pytest.mark.slow
def test_killing_a_host_ends_its_processes_and_restarting_the_server_keeps_rows(hosts: Callable[..., Hosts]) -> None:
    h = hosts(2)
    sleeper = h.popen(0, ["sleep", "60"])
    client = h.python(1, CLIENT, h.url)
    connected(client)
    assert sleeper.pid in h.pids(0) or h.pids(0)
    with pg_connect(h.local_url) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (1)")
    h.kill(0)
    assert sleeper.poll() is not None
    assert h.pids(0) == []
    h.restart_server()
    after = ask(client)  # the session did not survive the restart
    assert "error" in after, after
    with pg_connect(h.local_url) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(1,)]
