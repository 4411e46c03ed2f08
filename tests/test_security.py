"""What other users, other programs and hostile input can and cannot do to gcl_local.

File modes (private by default, group-shared only in a setgid directory), what a holder's label
gives away, names that look like SQL, and paths planted in the run directory: a symlink is never
followed, a foreign directory never used.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import gcl_local
from gcl_local import (
    StoreError,
    concurrency,
    create_limit,
    delete_limit,
    list_limits,
    read_limit,
    update_limit,
)
from gcl_local.sqlite import _liveness as tokens_module
from gcl_local.sqlite import _wakeups

REPO = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0


# -- helpers -----------------------------------------------------------------------------------------

pytestmark = pytest.mark.sqlite_only("file-system security of the state file and its run directory")


def mode(path: str | Path) -> int:
    """Permission bits (with setuid/setgid/sticky) of *path* itself, not of what a symlink points to."""
    return stat.S_IMODE(os.lstat(path).st_mode)


def gcl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "gcl_local", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


@contextlib.contextmanager
def held_with_a_waiter(db: str, name: str) -> Iterator[list[Path]]:
    """Hold *name* while a thread of this process waits for it; yield the waiter's pipes."""
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            with concurrency(name, timeout_seconds=30, db=db):
                pass
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=wait)
    with concurrency(name, db=db):
        thread.start()
        # Its ticket is visible only once its pipe is in place (a pipe is made under a temporary
        # name and renamed when its mode is right).
        wait_for(lambda: read_limit(name, db=db).waiters, what="the waiter's ticket")
        yield run_dir_entries(db, ".fifo")
    thread.join(60)
    assert not thread.is_alive()
    assert errors == []


def fingerprint(path: Path) -> tuple[bytes, int, int]:
    """Content (of a regular file), modification time and mode: what must not change."""
    st = os.lstat(path)
    content = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
    return content, st.st_mtime_ns, stat.S_IMODE(st.st_mode)


# -- file modes ----------------------------------------------------------------------------------------


def run_dir_entries(db: str, suffix: str) -> list[Path]:
    return [p for p in Path(f"{db}-run").iterdir() if p.name.endswith(suffix)]


@pytest.mark.parametrize("mask", [0o022, 0o000, 0o077], ids=["umask-022", "umask-000", "umask-077"])
def test_every_file_is_private_by_default(tmp_path: Path, mask: int) -> None:
    db = str(tmp_path / "gcl.db")
    with umask(mask):
        create_limit("a", 1, db=db)
        with held_with_a_waiter(db, "a") as pipes:
            assert mode(db) == 0o600
            assert mode(f"{db}-wal") == 0o600
            assert mode(f"{db}-shm") == 0o600
            assert mode(f"{db}-run") == 0o700
            locks = run_dir_entries(db, ".lock")
            assert locks
            assert {mode(p) for p in locks} == {0o600}
            assert {mode(p) for p in pipes} == {0o600}
            assert all(stat.S_ISFIFO(os.lstat(p).st_mode) for p in pipes)
            everything = [*tmp_path.iterdir(), *Path(f"{db}-run").iterdir()]
            assert [p.name for p in everything if mode(p) & 0o077] == []


@pytest.mark.parametrize("mask", [0o022, 0o077], ids=["umask-022", "umask-077"])
def test_files_in_a_setgid_directory_are_shared_with_the_group_only(tmp_path: Path, mask: int) -> None:
    team = tmp_path / "team"
    team.mkdir()
    os.chmod(team, 0o2770)
    db = str(team / "gcl.db")
    with umask(mask):
        create_limit("a", 1, db=db)
        with held_with_a_waiter(db, "a") as pipes:
            assert mode(db) == 0o660
            assert mode(f"{db}-wal") == 0o660
            assert mode(f"{db}-shm") == 0o660
            assert mode(f"{db}-run") == 0o2770
            assert {mode(p) for p in run_dir_entries(db, ".lock")} == {0o660}
            # Whoever frees a slot - any user of the group - must be able to wake the waiter.
            assert {mode(p) for p in pipes} == {0o660}
            everything = [*team.iterdir(), *Path(f"{db}-run").iterdir()]
            assert [p.name for p in everything if mode(p) & 0o007] == []


def test_default_state_directory_is_private(tmp_path: Path) -> None:
    with umask(0o000):
        create_limit("a", 1)
    state = tmp_path / "state" / "gcl_local"
    assert mode(state) == 0o700
    assert mode(state / "gcl.db") == 0o600


# -- what a holder's label gives away ------------------------------------------------------------------

SECRET = "hunter2-s3cr3t"

HOLD_WITH_SECRET_ARGV = """
import sys, time
from gcl_local import concurrency
db = sys.argv[1]
with concurrency("x", db=db):
    print("held", flush=True)
    time.sleep(60)
"""


def secret_free(db: str) -> None:
    """Neither the library, nor `gcl inspect/ls -o json`, nor the bytes of the files hold the secret."""
    limit = read_limit("x", db=db)
    assert SECRET not in json.dumps(limit.to_json())
    for args in (["inspect", "x", "-o", "json"], ["ls"]):
        shown = gcl("--db", db, *args)
        assert shown.returncode == 0, shown.stderr
        assert SECRET not in shown.stdout
    # Read the raw files from another process: closing a descriptor of the file here would drop
    # this process's SQLite locks.
    scan = subprocess.run(
        [sys.executable, "-c", "import sys; print(any(sys.argv[1].encode() in open(p, 'rb').read() "
         "for p in sys.argv[2:]))", SECRET, *(p for p in (db, f"{db}-wal") if os.path.exists(p))],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert scan.stdout.strip() == "False"


def test_python_program_label_is_only_its_name(db: str, procs: Any, tmp_path: Path) -> None:
    script = tmp_path / "nightly_job.py"
    script.write_text(HOLD_WITH_SECRET_ARGV)
    create_limit("x", 1, db=db)
    child = subprocess.Popen(
        [sys.executable, str(script), db, f"--password={SECRET}", SECRET],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        text=True,
    )
    procs.started.append(child)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "held"
    (holder,) = read_limit("x", db=db).holders
    assert holder.pid == child.pid
    assert holder.label == "nightly_job.py"
    secret_free(db)


def test_python_dash_c_label_has_no_arguments(db: str, procs: Any) -> None:
    create_limit("x", 1, db=db)
    child = procs.python(HOLD_WITH_SECRET_ARGV, db, f"--token={SECRET}", SECRET)
    assert child.stdout.readline().strip() == "held"
    (holder,) = read_limit("x", db=db).holders
    assert SECRET not in holder.label
    assert " " not in holder.label
    assert holder.label in {"-c", "python", "python3", os.path.basename(sys.executable)}
    secret_free(db)


def test_gcl_run_label_is_the_program_name_only(db: str, procs: Any) -> None:
    create_limit("x", 1, db=db)
    run = subprocess.Popen(
        [sys.executable, "-m", "gcl_local", "--db", db, "run", "x", "--", "sh", "-c", "sleep 30; exit 0", SECRET],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.started.append(run)

    def command_holds() -> gcl_local.Lease | None:
        holders = read_limit("x", db=db).holders
        return holders[0] if holders and holders[0].pid != run.pid else None

    holder = wait_for(command_holds, what="gcl run's command to hold the slot")
    try:
        assert holder.label == "sh"
        secret_free(db)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(holder.pid, signal.SIGKILL)  # the command; gcl run then ends by itself
    assert run.wait(30) == 128 + signal.SIGKILL


def test_gcl_acquire_label_is_the_holders_program_name_only(db: str, procs: Any) -> None:
    create_limit("x", 1, db=db)
    shell = subprocess.Popen(["sh", "-c", "sleep 30; exit 0", SECRET])  # two commands: sh does not exec sleep
    procs.started.append(shell)
    got = gcl("--db", db, "acquire", "x", "--holder-pid", str(shell.pid), "-o", "json")
    assert got.returncode == 0, got.stderr
    lease = json.loads(got.stdout)
    assert lease["pid"] == shell.pid
    assert lease["label"] == "sh"
    assert SECRET not in got.stdout
    secret_free(db)


def test_labels_cannot_carry_terminal_escapes(db: str) -> None:
    create_limit("x", 1, db=db)
    with concurrency("x", holder="job\x1b[2J\x1b]0;pwned\x07\r\nline2", db=db):
        (holder,) = read_limit("x", db=db).holders
        assert holder.label.isprintable()
        shown = gcl("--db", db, "inspect", "x")
        assert shown.returncode == 0, shown.stderr
        assert "\x1b" not in shown.stdout
        assert "\x07" not in shown.stdout


# -- names reach SQL only as parameters -------------------------------------------------------------------

INJECTIONS = [
    "x'); DELETE FROM limits; --",
    "'; DROP TABLE limits; --",
    "' OR '1'='1",
    'x"); DROP TABLE leases; --',
    "x' UNION SELECT name, 1, 1, 1, 1, 1, 1, 1, 1, 1 FROM limits --",
    "a_c",
    "*",
]


@pytest.mark.parametrize("name", INJECTIONS)
def test_sql_looking_names_are_stored_literally(db: str, name: str) -> None:
    create_limit("keep-1", 1, db=db)
    create_limit("abc", 2, db=db)
    made = create_limit(name, 3, db=db)
    assert made.name == name
    assert read_limit(name, db=db).name == name
    with concurrency(name, db=db) as lease:
        assert lease.names == (name,)
        assert read_limit(name, db=db).active_slots == 1
        assert read_limit("abc", db=db).active_slots == 0
    update_limit(name, limit=4, db=db)
    assert sorted(limit.name for limit in list_limits(db=db)) == sorted(["keep-1", "abc", name])
    assert read_limit("abc", db=db).limit == 2
    delete_limit(name, db=db)
    assert sorted(limit.name for limit in list_limits(db=db)) == ["abc", "keep-1"]


def test_sql_looking_names_through_the_command_line(db: str) -> None:
    create_limit("keep-1", 1, db=db)
    name = "x'); DELETE FROM limits; --"
    made = gcl("--db", db, "create", name, "--limit", "2")
    assert made.returncode == 0, made.stderr
    shown = gcl("--db", db, "ls", "-o", "json")
    assert sorted(limit["name"] for limit in json.loads(shown.stdout)) == sorted(["keep-1", name])
    run = gcl("--db", db, "run", name, "--", "true")
    assert run.returncode == 0, run.stderr
    assert [limit.name for limit in list_limits(db=db)] == sorted(["keep-1", name])


def test_a_like_pattern_does_not_match_other_names(db: str) -> None:
    create_limit("abc", 1, db=db)
    with pytest.raises(gcl_local.LimitNotFoundError):
        read_limit("a_c", db=db)
    with pytest.raises(gcl_local.LimitNotFoundError):
        read_limit("ABC", db=db)


# -- planted paths: never followed, never used -----------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory of another program's files that gcl_local must never touch."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "precious.txt").write_text("precious data\n")
    return directory


def outside_state(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    return {p.name: fingerprint(p) for p in sorted(directory.iterdir())}


def test_run_dir_that_is_a_symlink_is_refused_for_holding(db: str, outside: Path) -> None:
    create_limit("a", 1, db=db)
    os.symlink(outside, f"{db}-run")
    before = outside_state(outside)
    with pytest.raises(StoreError, match="-run"):
        with concurrency("a", db=db):
            pass
    assert outside_state(outside) == before


def test_run_dir_that_is_a_symlink_is_not_swept(db: str, outside: Path) -> None:
    """Reading limits sweeps dead tokens from the run directory; through a planted symlink that would
    delete another program's *.lock, *.fifo and .*.tmp files: it must refuse or leave them."""
    create_limit("a", 1, db=db)
    (outside / "12345-deadbeef.lock").write_text("another program's lock file\n")
    (outside / ".12345-deadbeef.tmp").write_text("another program's temporary file\n")
    (outside / "12345-deadbeef.1.fifo").write_text("another program's file\n")
    os.symlink(outside, f"{db}-run")
    before = outside_state(outside)
    for call in (lambda: list_limits(db=db), lambda: read_limit("a", db=db)):
        with contextlib.suppress(StoreError):
            call()
        assert outside_state(outside) == before


def test_run_dir_of_another_user_is_refused(db: str) -> None:
    if not IS_ROOT:
        pytest.skip("only root can give a directory to another user")
    create_limit("a", 1, db=db)
    os.mkdir(f"{db}-run", 0o700)
    os.chown(f"{db}-run", 12345, 12345)
    with pytest.raises(StoreError, match="-run"):
        with concurrency("a", db=db):
            pass
    assert os.listdir(f"{db}-run") == []


def test_world_writable_run_dir_is_refused_or_made_private(db: str) -> None:
    """Anyone who can write the run directory can delete a live holder's token and plant a dead one."""
    create_limit("a", 1, db=db)
    os.mkdir(f"{db}-run")
    os.chmod(f"{db}-run", 0o777)
    modes_while_held = []
    with contextlib.suppress(StoreError):  # refusing is fine
        with concurrency("a", db=db):
            modes_while_held.append(mode(f"{db}-run"))
    assert [m for m in modes_while_held if m & 0o077] == [], "slots were held through a world-writable run directory"


@pytest.fixture
def predictable_token(monkeypatch: pytest.MonkeyPatch) -> str:
    """The name this process's next token will get (its random part fixed for the test)."""
    monkeypatch.setattr(tokens_module.os, "urandom", lambda n: bytes.fromhex("deadbeef")[:n])
    return f"{os.getpid()}-deadbeef"


def test_symlink_planted_at_the_token_path_is_not_followed(db: str, outside: Path, predictable_token: str) -> None:
    create_limit("a", 1, db=db)
    os.mkdir(f"{db}-run", 0o700)
    planted = Path(f"{db}-run") / f"{predictable_token}.lock"
    os.symlink(outside / "precious.txt", planted)
    before = outside_state(outside)
    with contextlib.suppress(StoreError):
        with concurrency("a", db=db):
            assert not planted.is_symlink()
    assert outside_state(outside) == before


def test_symlink_planted_at_the_temporary_token_path_is_not_followed(
    db: str, outside: Path, predictable_token: str
) -> None:
    create_limit("a", 1, db=db)
    os.mkdir(f"{db}-run", 0o700)
    os.symlink(outside / "precious.txt", Path(f"{db}-run") / f".{predictable_token}.tmp")
    before = outside_state(outside)
    try:
        with concurrency("a", db=db):
            pass
    except StoreError:
        pass  # refusing is fine; an OSError escaping the public API is not
    assert outside_state(outside) == before


def test_symlink_planted_at_a_waiters_pipe_path_is_not_followed(db: str, outside: Path) -> None:
    create_limit("a", 1, db=db)
    with concurrency("a", db=db):
        token = tokens_module._tokens[str(Path(f"{db}-run"))]
        planted = Path(f"{db}-run") / f"{token.name}.{token._pipes + 1}.fifo"
        os.symlink(outside / "precious.txt", planted)
        before = outside_state(outside)
        outcome: list[BaseException | None] = []

        def wait() -> None:
            try:
                with concurrency("a", timeout_seconds=0.5, db=db):
                    outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=wait)
        thread.start()
        thread.join(60)
        (result,) = outcome
        # A timeout (it used another pipe) or a StoreError (it refused) - never a raw OSError.
        assert isinstance(result, (gcl_local.AcquireConcurrencySlotTimeoutError, StoreError)), repr(result)
        assert outside_state(outside) == before


def test_wake_up_does_not_write_through_a_planted_symlink(db: str, outside: Path) -> None:
    run_dir = Path(f"{db}-run")
    run_dir.mkdir(mode=0o700)
    os.symlink(outside / "precious.txt", run_dir / "1-00000000.1.fifo")
    os.mkfifo(outside / "a-fifo", 0o600)
    os.symlink(outside / "a-fifo", run_dir / "1-00000000.2.fifo")
    before = outside_state(outside)
    reader = os.open(outside / "a-fifo", os.O_RDONLY | os.O_NONBLOCK)
    try:
        _wakeups.wake(run_dir, "1-00000000.1.fifo")
        _wakeups.wake(run_dir, "1-00000000.2.fifo")
        try:
            written = os.read(reader, 10)
        except BlockingIOError:
            written = b""
        assert written == b"", "a byte was written to the FIFO the symlink points at"
    finally:
        os.close(reader)
    assert outside_state(outside) == before


def test_planted_symlinks_named_like_tokens_are_left_alone_by_the_sweep(db: str, outside: Path) -> None:
    create_limit("a", 1, db=db)
    with concurrency("a", db=db):
        pass  # the run directory exists now, made by gcl_local
    run_dir = Path(f"{db}-run")
    (outside / "x.lock").write_text("not gcl's\n")
    os.symlink(outside / "precious.txt", run_dir / "999999-0badf00d.lock")
    os.symlink(outside / "x.lock", run_dir / ".999999-0badf00d.tmp")
    os.symlink(outside / "precious.txt", run_dir / "999999-0badf00d.1.fifo")
    before = outside_state(outside)
    list_limits(db=db)
    with concurrency("a", db=db):
        pass
    assert outside_state(outside) == before


@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
def test_symlink_planted_beside_the_state_file_is_not_followed(db: str, outside: Path, suffix: str) -> None:
    create_limit("a", 1, db=db)
    gcl_local.sqlite.get_store(db).close()
    assert not os.path.exists(f"{db}{suffix}")
    os.symlink(outside / "precious.txt", f"{db}{suffix}")
    before = outside_state(outside)
    with contextlib.suppress(StoreError):
        list_limits(db=db)
    with contextlib.suppress(StoreError):
        create_limit("c", 1, db=db)
    assert outside_state(outside) == before
