from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest
from helpers import gcl, ok

import gcl_local
import gcl_local.sqlite._files
from gcl_local import StoreError, concurrency, create_limit, list_limits, read_limit

IS_ROOT = os.geteuid() == 0
NOBODY = 65534

MAKE_GCL_DB = """
import sys, gcl_local, gcl_local.sqlite
db = sys.argv[1]
gcl_local.create_limit("made", 2, slot_decay_per_second=1.0, db=db)
gcl_local.sqlite.get_store(db).close()
"""

MAKE_FOREIGN_DB = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.execute("PRAGMA journal_mode=" + sys.argv[2])
conn.execute("CREATE TABLE t(x INTEGER)")
conn.execute("INSERT INTO t VALUES (42)")
conn.commit()
conn.close()
"""

SET_USER_VERSION = """
import sys, apsw
conn = apsw.Connection(sys.argv[1])
conn.execute("PRAGMA user_version=" + sys.argv[2])
conn.close()
"""


def run_child(procs: Any, code: str, *args: str) -> None:
    child = procs.python(code, *args)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err


def make_gcl_db(procs: Any, path: Path) -> None:
    """A real gcl state file with one limit, written by another process that has closed it."""
    run_child(procs, MAKE_GCL_DB, str(path))
    assert path.stat().st_size > 1000
    assert not Path(f"{path}-wal").exists()


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def assert_store_error(call: Callable[[], object], path: Path, *words: str) -> StoreError:
    """*call* raises a StoreError of one line that names *path* (and *words*), and no apsw error leaks."""
    with pytest.raises(StoreError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for word in words:
        assert word in message
    assert not isinstance(info.value, apsw.Error)
    return info.value


# -- path resolution ---------------------------------------------------------------------------------


def test_db_argument_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = tmp_path / "explicit.db"
    monkeypatch.setenv("GCL_DB", str(tmp_path / "env.db"))
    create_limit("a", 1, db=str(explicit))
    assert explicit.exists()
    assert not (tmp_path / "env.db").exists()
    assert not (tmp_path / "state").exists()


def test_db_argument_may_be_a_path_object(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    create_limit("a", 1, db=path)
    assert [lim.name for lim in list_limits(db=str(path))] == ["a"]


def test_gcl_db_environment_variable_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_db = tmp_path / "env.db"
    monkeypatch.setenv("GCL_DB", str(env_db))
    create_limit("a", 1)
    assert env_db.exists()
    assert not (tmp_path / "state").exists()
    assert [lim.name for lim in list_limits(db=str(env_db))] == ["a"]


def test_gcl_db_with_missing_parent_is_not_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_db = tmp_path / "missing" / "env.db"
    monkeypatch.setenv("GCL_DB", str(env_db))
    assert list_limits() == []  # a reader creates nothing, and there are no limits
    assert_store_error(lambda: create_limit("a", 1), env_db)
    assert not env_db.parent.exists()


def test_default_path_under_xdg_state_home(tmp_path: Path) -> None:
    expected = tmp_path / "state" / "gcl_local" / "gcl.db"
    create_limit("a", 1)
    assert expected.is_file()
    assert mode(expected.parent) == 0o700
    assert mode(expected) == 0o600
    assert [lim.name for lim in list_limits(db=str(expected))] == ["a"]


def test_default_parent_is_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        create_limit("a", 1)
    finally:
        os.umask(old)
    expected = tmp_path / "state" / "gcl_local" / "gcl.db"
    assert mode(expected.parent) == 0o700
    assert mode(expected) == 0o600


def test_default_path_without_xdg_state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_STATE_HOME")
    create_limit("a", 1)
    expected = home / ".local" / "state" / "gcl_local" / "gcl.db"
    assert expected.is_file()
    assert mode(expected.parent) == 0o700


def test_empty_xdg_state_home_counts_as_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_STATE_HOME", "")
    create_limit("a", 1)
    assert (home / ".local" / "state" / "gcl_local" / "gcl.db").is_file()


def test_default_path_follows_a_changed_xdg_state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "one"))
    create_limit("a", 1)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "two"))
    create_limit("a", 2)  # another file, so no LimitExistsError
    assert (tmp_path / "two" / "gcl_local" / "gcl.db").is_file()
    assert read_limit("a", db=str(tmp_path / "one" / "gcl_local" / "gcl.db")).limit == 1
    assert read_limit("a").limit == 2


def test_explicit_path_with_missing_parent_creates_no_directory(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "deeper" / "gcl.db"
    assert_store_error(lambda: create_limit("a", 1, db=str(path)), path, "does not exist")
    assert not (tmp_path / "missing").exists()


# -- file modes ----------------------------------------------------------------------------------------


def token_files(db: str) -> list[Path]:
    return [p for p in Path(f"{db}-run").iterdir() if p.name.endswith(".lock")]


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_private_file_modes_while_held(tmp_path: Path, umask: int) -> None:
    db = str(tmp_path / "gcl.db")
    old = os.umask(umask)
    try:
        create_limit("a", 1, db=db)
        with concurrency("a", db=db):
            assert mode(db) == 0o600
            assert mode(f"{db}-wal") == 0o600
            assert mode(f"{db}-shm") == 0o600
            assert mode(f"{db}-run") == 0o700
            tokens = token_files(db)
            assert tokens
            assert {mode(t) for t in tokens} == {0o600}
            others = [p for p in tmp_path.iterdir() if p.is_file() and mode(p) & 0o077]
            assert others == []
    finally:
        os.umask(old)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_shared_file_modes_in_setgid_directory(tmp_path: Path, umask: int) -> None:
    shared = tmp_path / "team"
    shared.mkdir()
    os.chmod(shared, 0o2770)
    db = str(shared / "gcl.db")
    old = os.umask(umask)
    try:
        create_limit("a", 1, db=db)
        with concurrency("a", db=db):
            assert mode(db) == 0o660
            assert mode(f"{db}-wal") == 0o660
            assert mode(f"{db}-shm") == 0o660
            assert mode(f"{db}-run") & 0o777 == 0o770
            tokens = token_files(db)
            assert tokens
            assert {mode(t) for t in tokens} == {0o660}
            assert [p for p in shared.iterdir() if p.is_file() and mode(p) & 0o007] == []
    finally:
        os.umask(old)


WAIT_FOR_ONE = """
import sys, gcl_local
with gcl_local.concurrency("a", timeout_seconds=20, db=sys.argv[1]):
    pass
"""


def test_waiter_pipe_is_group_writable_in_setgid_directory(tmp_path: Path, procs: Any) -> None:
    shared = tmp_path / "team"
    shared.mkdir()
    os.chmod(shared, 0o2770)
    db = str(shared / "gcl.db")
    create_limit("a", 1, db=db)
    with concurrency("a", db=db):
        child = procs.python(WAIT_FOR_ONE, db)
        deadline = time.monotonic() + 10
        pipes: list[Path] = []
        while not pipes and time.monotonic() < deadline:
            pipes = [p for p in Path(f"{db}-run").iterdir() if stat.S_ISFIFO(p.lstat().st_mode)]
            time.sleep(0.01)
        assert pipes, "the waiter made no pipe"
        # Whoever frees a slot (any user of the team) must be able to write to the waiter's pipe.
        assert {mode(p) for p in pipes} == {0o660}
    child.communicate(timeout=20)
    assert child.returncode == 0


@pytest.mark.sqlite_only("file modes of the state file")
def test_first_file_in_a_fresh_directory_is_0600(db: str) -> None:
    create_limit("a", 1, db=db)
    assert mode(db) == 0o600


def test_the_wal_outlives_a_hot_process_and_an_admin_one_checkpoints(tmp_path: Path) -> None:
    """A process closing the file last checkpointed and deleted the WAL: two fsyncs at its exit and
    two at the next one's first commit, 10-15 ms of every gcl run. A hot process leaves the WAL now,
    and the next one reads it back; a process that made an admin write still checkpoints, so that
    the file alone holds the limits."""
    db = str(tmp_path / "gcl.db")
    ok(gcl(db, "create", "a", "--limit", "1"))
    assert not os.path.exists(f"{db}-wal")
    ok(gcl(db, "run", "a", "--", "true"))
    assert os.path.getsize(f"{db}-wal") > 0
    shown = json.loads(ok(gcl(db, "inspect", "a", "-o", "json")))
    assert (shown["active_slots"], shown["stats"]["immediate_concurrency"]) == (0, 1)
    ok(gcl(db, "update", "a", "--limit", "2"))
    assert not os.path.exists(f"{db}-wal")
    conn = apsw.Connection(db, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert conn.execute("SELECT lim FROM limits WHERE name = 'a'").fetchall() == [(2,)]
    finally:
        conn.close()


# -- files that cannot be used -------------------------------------------------------------------------


def dir_listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def assert_refused_unchanged(path: Path, *words: str) -> StoreError:
    """Both a read and a write refuse *path* with a StoreError, and leave it and its directory as they were."""
    before, listing = snapshot(path), dir_listing(path.parent)
    assert_store_error(lambda: list_limits(db=str(path)), path, *words)
    error = assert_store_error(lambda: create_limit("x", 1, db=str(path)), path, *words)
    assert snapshot(path) == before
    assert dir_listing(path.parent) == listing
    return error


def test_garbage_file_is_refused_and_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database at all\n" * 200)
    assert_refused_unchanged(path, "not a SQLite database")


def test_short_garbage_file_is_refused_and_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "short.db"
    path.write_bytes(b"hello")
    assert_refused_unchanged(path)


def test_truncated_gcl_file_is_refused_and_unchanged(tmp_path: Path, procs: Any) -> None:
    real = tmp_path / "real" / "gcl.db"
    real.parent.mkdir()
    make_gcl_db(procs, real)
    path = tmp_path / "truncated.db"
    path.write_bytes(real.read_bytes()[:1000])
    assert_refused_unchanged(path, "corrupt")


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_foreign_sqlite_file_is_refused_and_unchanged(tmp_path: Path, procs: Any, journal_mode: str) -> None:
    path = tmp_path / "other.db"
    run_child(procs, MAKE_FOREIGN_DB, str(path), journal_mode)
    assert_refused_unchanged(path, "another program")
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert conn.execute("SELECT x FROM t").fetchall() == [(42,)]
        assert conn.execute("SELECT name FROM sqlite_schema").fetchall() == [("t",)]
    finally:
        conn.close()


def test_newer_schema_version_is_refused_and_unchanged(tmp_path: Path, procs: Any) -> None:
    path = tmp_path / "newer.db"
    make_gcl_db(procs, path)
    run_child(procs, SET_USER_VERSION, str(path), "99")
    error = assert_refused_unchanged(path, "99")
    assert "upgrade" in str(error)


def test_current_gcl_file_made_by_another_process_is_used(tmp_path: Path, procs: Any) -> None:
    path = tmp_path / "made.db"
    make_gcl_db(procs, path)
    limit = read_limit("made", db=str(path))
    assert (limit.limit, limit.slot_decay_per_second) == (2, 1.0)


def test_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "adir"
    path.mkdir()
    assert_store_error(lambda: list_limits(db=str(path)), path, "directory")
    assert_store_error(lambda: create_limit("x", 1, db=str(path)), path, "directory")
    assert os.listdir(path) == []
    assert dir_listing(tmp_path) == ["adir"]


def test_empty_db_argument_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        list_limits(db="")
    assert dir_listing(tmp_path) == []


# -- permissions: in this process when not root, in a child that drops to nobody when root ------------


def make_copy_of_gcl_db(procs: Any, path: Path, scratch: Path) -> None:
    made = scratch / "made.db"
    make_gcl_db(procs, made)
    shutil.copyfile(made, path)


def scenario_read_only_file(procs: Any, base: Path, scratch: Path) -> Path:
    path = base / "gcl.db"
    make_copy_of_gcl_db(procs, path, scratch)
    os.chmod(path, 0o400)
    return path


def scenario_unwritable_dir_with_file(procs: Any, base: Path, scratch: Path) -> Path:
    path = base / "gcl.db"
    make_copy_of_gcl_db(procs, path, scratch)
    os.chmod(base, 0o500)
    return path


def scenario_unwritable_dir_without_file(procs: Any, base: Path, scratch: Path) -> Path:
    os.chmod(base, 0o500)
    return base / "gcl.db"


SCENARIOS = [  # (how to make it, whether a read may still work)
    pytest.param(scenario_read_only_file, True, id="read-only-file"),
    pytest.param(scenario_unwritable_dir_with_file, False, id="unwritable-dir-with-file"),
    # No file: a read finds no limits (it creates nothing, so it needs no write access).
    pytest.param(scenario_unwritable_dir_without_file, True, id="unwritable-dir-without-file"),
]


def state_of(base: Path) -> dict[str, tuple[bytes, int]]:
    return {name: snapshot(base / name) for name in os.listdir(base)}


def check_unchanged(base: Path, before: dict[str, tuple[bytes, int]], *, read_may_work: bool) -> None:
    """Every file is as it was; where a read may work, SQLite may have left an empty -wal and -shm."""
    after = state_of(base)
    if read_may_work:
        after = {name: value for name, value in after.items() if name in before}
    assert after == before


def refusals(path: Path) -> list[str]:
    """What a read and a write on *path* do: 'ok', or the StoreError's message."""
    outcomes = []
    for call in (lambda: list_limits(db=str(path)), lambda: create_limit("x", 1, db=str(path))):
        try:
            call()
            outcomes.append("ok")
        except StoreError as exc:
            outcomes.append(f"StoreError: {exc}")
    return outcomes


def check_refusals(outcomes: list[str], path: Path, *, read_may_work: bool) -> None:
    """The write is refused with one line naming the path; so is the read, unless it may work (read-only file)."""
    read, write = outcomes
    for outcome in [write] if read_may_work and read == "ok" else [read, write]:
        assert outcome.startswith("StoreError: "), outcome
        assert "\n" not in outcome
        assert str(path) in outcome


@pytest.mark.skipif(IS_ROOT, reason="root bypasses file permissions")
@pytest.mark.parametrize(("scenario", "read_may_work"), SCENARIOS)
def test_unwritable_is_refused_and_unchanged(tmp_path: Path, procs: Any, scenario: Any, read_may_work: bool) -> None:
    base = tmp_path / "base"
    base.mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    path = scenario(procs, base, scratch)
    before = state_of(base)
    try:
        check_refusals(refusals(path), path, read_may_work=read_may_work)
        check_unchanged(base, before, read_may_work=read_may_work)
    finally:
        os.chmod(base, 0o700)


@pytest.fixture
def nobody_base() -> Iterator[Path]:
    """A directory owned by nobody that nobody can reach (tmp_path's parents are root-only)."""
    top = Path(tempfile.mkdtemp(prefix="gcl-test-"))
    base = top / "base"
    try:
        os.chmod(top, 0o755)
        base.mkdir()
        os.chown(base, NOBODY, NOBODY)
        yield base
    finally:
        shutil.rmtree(top)


def fork_as(uid: int, groups: list[int], umask: int, fn: Callable[[], str]) -> Callable[[], str]:
    """Run *fn* in a forked child that has dropped to *uid* (first of *groups* as its gid).

    Returns a function that waits for the child and returns what *fn* returned. A fork, not a fresh
    interpreter: the venv's python lies under /root, which other users cannot reach; so everything
    the child may need is imported here, before the fork.
    """
    import filelock  # noqa: F401

    import gcl_local._limits
    import gcl_local.sync  # noqa: F401

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        status = 1
        try:
            os.close(read_end)
            os.setgroups(groups)
            os.setgid(groups[0] if groups else uid)
            os.setuid(uid)
            os.umask(umask)
            os.write(write_end, fn().encode())
            status = 0
        except BaseException as exc:
            os.write(write_end, f"{type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(status)
    os.close(write_end)

    def result() -> str:
        with os.fdopen(read_end, "rb") as f:
            data = f.read().decode()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, data
        return data

    return result


def as_nobody(fn: Callable[[], list[str]]) -> list[str]:
    """Run *fn* in a forked child that has dropped to uid/gid nobody; return its result."""
    return fork_as(NOBODY, [], 0o022, lambda: "\0".join(fn()))().split("\0")


@pytest.mark.skipif(not IS_ROOT, reason="dropping to nobody needs root")
@pytest.mark.parametrize(("scenario", "read_may_work"), SCENARIOS)
def test_unwritable_is_refused_and_unchanged_as_nobody(
    tmp_path: Path, procs: Any, nobody_base: Path, scenario: Any, read_may_work: bool
) -> None:
    path = scenario(procs, nobody_base, tmp_path)
    for name in os.listdir(nobody_base):
        os.chown(nobody_base / name, NOBODY, NOBODY)
    before = state_of(nobody_base)
    check_refusals(as_nobody(lambda: refusals(path)), path, read_may_work=read_may_work)
    check_unchanged(nobody_base, before, read_may_work=read_may_work)


TEAM = 12345
ALICE, BOB = 5001, 5002


@pytest.fixture
def team_dir() -> Iterator[Path]:
    """A setgid directory of group TEAM that users ALICE and BOB (members of TEAM, umask 077) share."""
    top = Path(tempfile.mkdtemp(prefix="gcl-test-"))
    shared = top / "team"
    try:
        os.chmod(top, 0o755)
        shared.mkdir()
        os.chown(shared, 0, TEAM)
        os.chmod(shared, 0o2770)
        yield shared
    finally:
        shutil.rmtree(top)


@pytest.mark.skipif(not IS_ROOT, reason="acting as two users needs root")
def test_team_members_wait_for_each_other_in_a_setgid_directory(team_dir: Path) -> None:
    db = str(team_dir / "gcl.db")
    held = team_dir / "held"

    def bob() -> str:
        create_limit("a", 1, db=db)
        with concurrency("a", db=db):
            held.touch()
            deadline = time.monotonic() + 3
            waiters: tuple[gcl_local.Waiter, ...] = ()
            while not waiters and time.monotonic() < deadline:
                waiters = read_limit("a", db=db).waiters  # must not take alice's live waiter for a dead one
                time.sleep(0.02)
        return f"bob saw {len(waiters)} waiter(s)"

    def alice() -> str:
        with concurrency("a", timeout_seconds=10, db=db):
            return "alice got the slot"

    bob_result = fork_as(BOB, [TEAM], 0o077, bob)
    deadline = time.monotonic() + 10
    while not held.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert held.exists()
    alice_result = fork_as(ALICE, [TEAM], 0o077, alice)
    assert bob_result() == "bob saw 1 waiter(s)"
    assert alice_result() == "alice got the slot"


# -- network and VM-shared filesystems ------------------------------------------------------------------


def fake_mountinfo(tmp_path: Path, directory: Path, fstype: str) -> Path:
    mount_point = os.path.realpath(directory).replace(" ", "\\040")
    lines = [
        "22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n",
        f"98 22 0:55 / {mount_point} rw,relatime shared:70 - {fstype} server:/export rw,vers=4.2\n",
    ]
    path = tmp_path / "mountinfo"
    path.write_text("".join(lines))
    return path


@pytest.mark.parametrize("fstype", ["nfs4", "nfs", "fuse.sshfs", "cifs", "9p", "virtiofs"])
def test_network_filesystem_is_refused_before_creating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fstype: str
) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    monkeypatch.setattr(gcl_local.sqlite._files, "MOUNTINFO", str(fake_mountinfo(tmp_path, remote, fstype)))
    path = remote / "gcl.db"
    error = assert_store_error(lambda: create_limit("a", 1, db=str(path)), path)
    assert fstype in str(error)
    assert os.listdir(remote) == []


def test_network_filesystem_is_refused_for_an_existing_file(
    tmp_path: Path, procs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    path = remote / "gcl.db"
    make_gcl_db(procs, path)
    before, listing = snapshot(path), dir_listing(remote)
    monkeypatch.setattr(gcl_local.sqlite._files, "MOUNTINFO", str(fake_mountinfo(tmp_path, remote, "nfs4")))
    error = assert_store_error(lambda: list_limits(db=str(path)), path)
    assert "nfs4" in str(error)
    assert snapshot(path) == before
    assert dir_listing(remote) == listing


def test_network_filesystem_in_a_subdirectory_of_the_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    remote = tmp_path / "remote"
    (remote / "deep").mkdir(parents=True)
    monkeypatch.setattr(gcl_local.sqlite._files, "MOUNTINFO", str(fake_mountinfo(tmp_path, remote, "nfs4")))
    path = remote / "deep" / "gcl.db"
    assert "nfs4" in str(assert_store_error(lambda: create_limit("a", 1, db=str(path)), path))


def test_local_filesystem_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = tmp_path / "local"
    local.mkdir()
    monkeypatch.setattr(gcl_local.sqlite._files, "MOUNTINFO", str(fake_mountinfo(tmp_path, local, "ext4")))
    path = local / "gcl.db"
    create_limit("a", 1, db=str(path))
    assert [lim.name for lim in list_limits(db=str(path))] == ["a"]


def test_a_sibling_mount_with_a_common_prefix_does_not_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "nfs").mkdir()
    local = tmp_path / "nfs-not"
    local.mkdir()
    monkeypatch.setattr(gcl_local.sqlite._files, "MOUNTINFO", str(fake_mountinfo(tmp_path, tmp_path / "nfs", "nfs4")))
    create_limit("a", 1, db=str(local / "gcl.db"))
    assert (local / "gcl.db").exists()


# -- many processes creating the file at once --------------------------------------------------------------

CREATE_AND_USE = """
import os, sys, time
import gcl_local
db = sys.argv[1] or None
go = sys.argv[2]
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
try:
    gcl_local.create_limit("shared", 3, db=db)
    won = "created"
except gcl_local.LimitExistsError:
    won = "exists"
for _ in range(5):
    with gcl_local.concurrency("shared", timeout_seconds=20, db=db) as lease:
        assert lease.token is not None
print(won, flush=True)
"""


@pytest.mark.parametrize("where", ["db-argument", "default-path"])
def test_twelve_processes_create_and_use_a_fresh_file_at_once(tmp_path: Path, procs: Any, where: str) -> None:
    if where == "db-argument":
        path, arg = tmp_path / "fresh.db", str(tmp_path / "fresh.db")
    else:
        path, arg = tmp_path / "state" / "gcl_local" / "gcl.db", ""
    go = tmp_path / "go"
    children = [procs.python(CREATE_AND_USE, arg, str(go)) for _ in range(12)]
    for child in children:
        assert child.stdout.readline().strip() == "ready"
    assert not path.exists()
    go.touch()
    results = []
    for child in children:
        out, err = child.communicate(timeout=30)
        assert child.returncode == 0, err
        results.append(out.strip())
    assert sorted(results) == ["created"] + ["exists"] * 11

    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA journal_mode").fetchall() == [("wal",)]
    finally:
        conn.close()
    assert mode(path) == 0o600
    limits = list_limits(db=str(path))
    assert [(lim.name, lim.limit, lim.active_slots, lim.holders) for lim in limits] == [("shared", 3, 0, ())]


def test_fresh_file_is_initialised_once_for_many_threads_of_one_process(db: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        try:
            barrier.wait()
            create_limit(f"t{i}", 1, db=db)
            with concurrency(f"t{i}", db=db):
                time.sleep(0.01)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert [lim.name for lim in list_limits(db=db)] == [f"t{i}" for i in range(8)]
