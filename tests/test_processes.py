"""gcl_local across fork(), multiprocessing start methods and threads.

A connection must never cross fork(); a forked child must not keep its parent's slots alive; and
however many processes or threads compete, a limit is never exceeded and every slot comes back.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest
from helpers import env, is_postgres

import gcl_local
from gcl_local import (
    AcquireConcurrencySlotTimeoutError,
    concurrency,
    create_limit,
    list_limits,
    read_limit,
    update_limit,
)
from gcl_local.sqlite import Store, get_store

# -- helpers -----------------------------------------------------------------------------------------


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The largest number of intervals open at one moment (an end sorts before a start at the same instant)."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def busy(name: str, db: object, occupy: int = 1) -> bool:
    """True when *name* has no room for *occupy* more slots now (a non-blocking try)."""
    try:
        with concurrency(name, occupy=occupy, timeout_seconds=0, db=db):  # type: ignore[arg-type]
            return False
    except AcquireConcurrencySlotTimeoutError:
        return True


def integrity(db: str) -> str:
    """SQLite's own check of the file, through a separate read-only connection."""
    conn = apsw.Connection(db, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    return ",".join(str(row[0]) for row in rows)


@contextlib.contextmanager
def quiet_fork() -> Iterator[None]:
    """fork() of a process that has threads warns on Python >= 3.12; the children here only use gcl_local."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def fork_and_run(body: Any) -> int:
    """Fork; the child runs ``body()`` and leaves by os._exit with its result (1 on an exception)."""
    with quiet_fork():
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            code = int(body())
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                os.write(2, f"child failed: {exc!r}\n".encode())
        finally:
            os._exit(code)
    return pid


def wait_exit_code(pid: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"child {pid} did not finish in {timeout}s")


def pid_lives(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


# -- fork() -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_store", [False, True], ids=["db-path", "store-object"])
@pytest.mark.sqlite_only("it compares the SQLite store's connections (test_pg_backend forks on PostgreSQL)")
def test_forked_child_uses_the_library_on_its_own_connection(db: str, as_store: bool) -> None:
    target: object = Store(db) if as_store else db
    create_limit("pool", 3, db=target)  # type: ignore[arg-type]
    with concurrency("pool", db=target) as mine:  # type: ignore[arg-type]
        store = target if isinstance(target, Store) else get_store(db)
        parent_conn = store._connection().conn
        parent_pid = os.getpid()

        def child() -> int:
            # A fresh connection, never the parent's: the parent's stays open and unused here.
            create_limit("made-in-child", 1, db=target)  # type: ignore[arg-type]
            with concurrency(["pool", "made-in-child"], timeout_seconds=10, db=target) as lease:  # type: ignore[arg-type]
                mine_now = (target if isinstance(target, Store) else get_store(db))._connection().conn
                if mine_now is parent_conn or os.getpid() == parent_pid:
                    return 3
                if lease.token is None or lease.token <= mine.token or lease.pid != os.getpid():
                    return 4
                holders = {h.id for h in read_limit("pool", db=target).holders}  # type: ignore[arg-type]
                if holders != {mine.id, lease.id}:
                    return 5
            if read_limit("made-in-child", db=target).active_slots != 0:  # type: ignore[arg-type]
                return 6
            return 0

        assert wait_exit_code(fork_and_run(child)) == 0
        # The parent goes on on its own connection, which the child neither used nor closed.
        assert store._connection().conn is parent_conn
        assert [h.id for h in read_limit("pool", db=target).holders] == [mine.id]  # type: ignore[arg-type]
        update_limit("made-in-child", limit=2, db=target)  # type: ignore[arg-type]
        with concurrency("pool", occupy=2, timeout_seconds=10, db=target):  # type: ignore[arg-type]
            assert busy("pool", target)
    assert {limit.name: limit.active_slots for limit in list_limits(db=target)} == {"made-in-child": 0, "pool": 0}  # type: ignore[arg-type]
    assert integrity(db) == "ok"


@pytest.mark.sqlite_only("it checks the SQLite file with PRAGMA integrity_check")
def test_many_forked_children_and_the_parent_share_a_limit(db: str, tmp_path: Path) -> None:
    """Eight forked children and the parent (which holds a connection and a renewing lease throughout)."""
    create_limit("pool", 2, db=db)
    create_limit("parent-only", 1, db=db)
    spans_dir = tmp_path / "spans"
    spans_dir.mkdir()

    def child() -> int:
        lines = []
        for _ in range(5):
            with concurrency("pool", timeout_seconds=60, db=db):
                start = time.monotonic()
                time.sleep(0.005)
                lines.append(f"{start} {time.monotonic()}")
        (spans_dir / str(os.getpid())).write_text("\n".join(lines))
        return 0

    with concurrency("parent-only", db=db) as held:
        pids = [fork_and_run(child) for _ in range(8)]
        parent_spans = []
        for _ in range(5):  # the parent keeps working meanwhile
            with concurrency("pool", timeout_seconds=60, db=db):
                start = time.monotonic()
                time.sleep(0.005)
                parent_spans.append((start, time.monotonic()))
        assert [wait_exit_code(pid) for pid in pids] == [0] * 8
        assert [h.id for h in read_limit("parent-only", db=db).holders] == [held.id]
    spans = list(parent_spans)
    for path in spans_dir.iterdir():
        for line in path.read_text().splitlines():
            start_text, end_text = line.split()
            spans.append((float(start_text), float(end_text)))
    assert len(spans) == 45
    assert max_overlap(spans) <= 2
    assert [limit.active_slots for limit in list_limits(db=db)] == [0, 0]
    assert integrity(db) == "ok"


# -- multiprocessing --------------------------------------------------------------------------------------


def _pool_worker(job: tuple[str, str, int]) -> list[tuple[float, float, int, int]]:
    """One worker task: several concurrency() blocks, each recorded as (start, end, token, pid)."""
    db, name, rounds = job
    spans = []
    for _ in range(rounds):
        with gcl_local.concurrency(name, timeout_seconds=60, db=db) as lease:
            start = time.monotonic()
            time.sleep(0.01)
            spans.append((start, time.monotonic(), lease.token, os.getpid()))
    return spans


def _worker_started(ready_dir: str) -> None:
    Path(ready_dir, str(os.getpid())).touch()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
@pytest.mark.sqlite_only("it checks the SQLite file with PRAGMA integrity_check")
def test_multiprocessing_pool_never_exceeds_the_limit(db: str, method: str, tmp_path: Path) -> None:
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    ready = tmp_path / "ready"
    ready.mkdir()
    create_limit("pool", 2, db=db)
    with concurrency("pool", db=db) as parent_lease:  # the parent holds a connection and a lease while it forks
        update_limit("pool", limit=3, db=db)
        context = multiprocessing.get_context(method)
        with quiet_fork(), context.Pool(4, initializer=_worker_started, initargs=(str(ready),)) as pool:
            deadline = time.monotonic() + 120
            while len(os.listdir(ready)) < 4 and time.monotonic() < deadline:
                time.sleep(0.01)  # every worker runs before the work is handed out, so that they compete
            result = pool.map_async(_pool_worker, [(db, "pool", 6)] * 8, chunksize=1)
            per_task = result.get(timeout=180)
        # Two slots for the workers, one for the parent's block.
        assert [h.id for h in read_limit("pool", db=db).holders] == [parent_lease.id]
    spans = [span for task in per_task for span in task]
    assert len(spans) == 48
    assert max_overlap([(s[0], s[1]) for s in spans]) <= 2
    tokens = [s[2] for s in spans]
    assert len(set(tokens)) == len(tokens)
    assert min(tokens) > parent_lease.token  # type: ignore[operator]
    assert len({s[3] for s in spans}) >= 2  # the work was spread over several processes
    assert os.getpid() not in {s[3] for s in spans}
    limit = read_limit("pool", db=db)
    assert (limit.active_slots, limit.holders, limit.waiters) == (0, (), ())
    assert integrity(db) == "ok"


# -- threads --------------------------------------------------------------------------------------------


@pytest.mark.sqlite_only("it counts the token files of the run directory")
def test_threads_hammering_one_limit(db: str) -> None:
    create_limit("pool", 3, db=db)
    spans: list[tuple[float, float]] = []
    tokens: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start_together = threading.Barrier(16)

    def work() -> None:
        try:
            start_together.wait(30)
            for _ in range(25):
                with concurrency("pool", timeout_seconds=120, db=db) as lease:
                    start = time.monotonic()
                    time.sleep(0.001)
                    end = time.monotonic()
                with lock:
                    spans.append((start, end))
                    tokens.append(lease.token)  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not any(thread.is_alive() for thread in threads), "threads still running after 300 s"
    assert errors == []
    assert len(spans) == 16 * 25
    assert max_overlap(spans) <= 3
    assert len(set(tokens)) == len(tokens)
    limit = read_limit("pool", db=db)
    assert (limit.active_slots, limit.holders, limit.waiters) == (0, (), ())
    assert [p.name for p in Path(f"{db}-run").iterdir() if p.name.endswith(".fifo")] == []
    assert integrity(db) == "ok"


# -- a forked child must not keep its dead parent's slots -------------------------------------------------

HOLD_THEN_FORK = """
import os, sys, time
from gcl_local import concurrency
db, how = sys.argv[1], sys.argv[2]

def say(line):
    os.write(1, (line + "\\n").encode())  # one write: lines of parent and child never interleave

def nap():
    say("child")  # fork() has returned here: the at-fork handlers have run
    time.sleep(120)

with concurrency("one", db=db) as lease:
    if how == "fork":
        child = os.fork()
        if child == 0:
            nap()
            os._exit(0)
    elif how == "fork-and-use":
        child = os.fork()
        if child == 0:
            with concurrency("other", db=db) as own:
                say(own.id)
                time.sleep(120)
            os._exit(0)
    elif how == "multiprocessing":
        import multiprocessing
        proc = multiprocessing.get_context("fork").Process(target=nap, daemon=False)
        proc.start()
        child = proc.pid
    else:
        import subprocess
        child = subprocess.Popen(["sleep", "120"], close_fds=False).pid  # returns once exec succeeded
    say(f"{lease.id} {child}")
    time.sleep(120)
"""


@pytest.mark.parametrize("how", ["fork", "fork-and-use", "multiprocessing", "popen-keeping-fds"])
def test_a_child_does_not_keep_its_killed_parents_slot(db: str, procs: Any, how: str) -> None:
    create_limit("one", 1, db=db)
    create_limit("other", 1, db=db)
    parent = procs.python(HOLD_THEN_FORK, db, how)
    # The parent prints "LEASE CHILD-PID"; a forked child prints one word once it runs (in any order).
    lines = [parent.stdout.readline().split() for _ in range(1 if how == "popen-keeping-fds" else 2)]
    assert all(lines), parent.stderr.read() if parent.poll() is not None else lines
    child_word = next((line[0] for line in lines if len(line) == 1), None)
    own_lease = child_word if how == "fork-and-use" else None
    lease_id, child_text = next(line for line in lines if len(line) == 2)
    child = int(child_text)
    try:
        assert [h.id for h in read_limit("one", db=db).holders] == [lease_id]
        assert busy("one", db)
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        assert pid_lives(child), "the child should still be running"
        # At once: the first non-blocking try after the parent's death gets the slot.
        with concurrency("one", timeout_seconds=0, db=db) as lease:
            assert lease.id != lease_id
        assert lease_id not in {h.id for h in read_limit("one", db=db).holders}
        if own_lease is not None:
            # The child's own lease, taken after the fork, lives as long as the child does.
            assert [h.id for h in read_limit("other", db=db).holders] == [own_lease]
            assert busy("other", db)
        assert pid_lives(child)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    if own_lease is not None:
        # The child's lease ends with the child (a killed thread group releases its files when its last
        # thread is gone, a little after its leader shows as a zombie).
        deadline = time.monotonic() + 30
        while busy("other", db) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not busy("other", db)


LIST_OPEN_FILES = """
import os
for fd in os.listdir("/proc/self/fd"):
    try:
        print(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        pass
"""


def open_files(pid: int) -> list[str]:
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return targets


@pytest.mark.sqlite_only("it looks for the token file among open descriptors")
def test_subprocess_children_do_not_inherit_the_token(db: str) -> None:
    """A program started with every descriptor kept (close_fds=False) still must not hold our token."""
    create_limit("one", 1, db=db)
    run_dir = f"{db}-run/"
    with concurrency("one", db=db):
        assert any(target.startswith(run_dir) for target in open_files(os.getpid())), "no token descriptor found"
        listing = subprocess.run(
            [sys.executable, "-c", LIST_OPEN_FILES],
            close_fds=False,
            capture_output=True,
            text=True,
            check=True,
        )
        inherited = [target for target in listing.stdout.splitlines() if target.startswith(run_dir)]
        assert inherited == []


THREAD_SIGNAL_MASKS = """
import sys, threading
from gcl_local import concurrency, create_limit

def blocked(thread):
    with open(f"/proc/self/task/{thread.native_id}/status") as f:
        mask = int(next(line for line in f if line.startswith("SigBlk:")).split()[1], 16)
    return [signum for signum in range(1, 65) if mask >> (signum - 1) & 1]

create_limit("a", 1, db=sys.argv[1])
with concurrency("a", db=sys.argv[1]):
    for thread in threading.enumerate():
        if thread is not threading.main_thread():
            print(thread.name, *blocked(thread))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads the threads' signal masks in /proc")
def test_the_threads_gcl_starts_leave_the_signals_to_the_main_thread(db: str) -> None:
    """A signal sent to the process goes to any thread that does not block it. ``gcl run`` blocks the
    ones it forwards in its main thread to take them with sigtimedwait, and a SIGTERM that went to
    the thread giving back dropped slots never reached the command (tests/test_run.py). Every thread
    gcl starts blocks them all from its first instant, whatever the store."""
    done = subprocess.run(
        [sys.executable, "-c", THREAD_SIGNAL_MASKS, db],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env(),
    )
    assert done.returncode == 0, done.stderr
    threads = {name: set(map(int, signals)) for name, *signals in map(str.split, done.stdout.splitlines())}
    ours = {name for name in threads if name.startswith("gcl-")}
    expected = {"gcl-give-back", "gcl-lease-renewal"} | ({"gcl-pg-liveness"} if is_postgres(db) else set())
    assert expected <= ours, threads
    for name in ours:
        assert {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1} <= threads[name], name
        assert signal.SIGSEGV not in threads[name], name
