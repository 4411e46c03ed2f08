"""Benchmarks of gcl_local against its baselines; prints one markdown table (for BENCHMARKS.md).

Usage: .venv/bin/python scripts/bench.py [--quick] [--only 1,3,9] [--waiters 4,50,200,400] [--db URL]

With --db postgresql://... it also measures PostgreSQL's floors there with psycopg alone (`--only pg`:
only those), in a second table; on a throwaway server:
  scripts/pg-server run --durable -- sh -c '.venv/bin/python scripts/bench.py --only pg --db "$GCL_TEST_PG"'
(--durable: fsync on, without which synchronous_commit=on flushes nothing).

Baselines, run in the same invocation:
  SQLite floor    two bare ``BEGIN IMMEDIATE; UPDATE one row; COMMIT`` (apsw, WAL, synchronous=NORMAL)
  flock           fcntl.flock LOCK_EX + LOCK_UN; for limit > 1 a hand-rolled N-slot flock
                  (try every slot file with LOCK_NB, else block on the slot picked by pid)
  portalocker     BoundedSemaphore with its default check_interval (it polls every 0.25 s); its
                  default timeout (5 s) is raised to 60 s so that slow polling is measured, not an error
  pyrate-limiter  SQLiteBucket (sliding-window log, file lock) with Rate(5, 250 ms) and default buffer_ms
  PostgreSQL floors (--db; psycopg, no gcl_local code; over the URL's transport, a Unix socket above)
                  P1 two ``BEGIN; SELECT ... FOR UPDATE; UPDATE; COMMIT``, synchronous_commit on and off;
                  P2 the same with ``pg_advisory_xact_lock`` first; P3 NOTIFY -> LISTEN to another,
                  awake process; P4 connect; P5 ``python -c "import psycopg"``

Every multi-process scenario spawns fresh processes, each opening its own state; the workers meet at
a start barrier after their imports and warm-up, start at one shared monotonic moment (system-wide on
Linux) and report their own timestamps back through a queue. Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import math
import multiprocessing as mp
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

CTX = mp.get_context("spawn")
VENV_BIN = Path(sys.executable).parent
KINDS = ("gcl", "flock", "porta")
PORTA_TIMEOUT = 60.0
SETUP_TIMEOUT = 60.0


@dataclass(frozen=True)
class Config:
    latency_iters: int = 3000
    util_iters: int = 20
    handoff_seconds: float = 2.0
    fair_seconds: float = 4.0
    big_reps: int = 5
    idle_seconds: float = 3.0
    many_limits: int = 1000
    store_iters: int = 1000
    cli_runs: int = 10
    many_waiters: tuple[int, ...] = (4, 50, 200, 400)
    many_seconds: float = 4.0
    many_rounds: int = 12
    """... and at least long enough for about this many rounds per process (Jain needs more than 2 or 3)."""


QUICK = Config(
    latency_iters=500, util_iters=8, handoff_seconds=0.75, fair_seconds=1.0, big_reps=2, idle_seconds=1.0,
    store_iters=200, cli_runs=3, many_waiters=(4, 50), many_seconds=1.5, many_rounds=5,
)  # fmt: skip


@dataclass
class Row:
    scenario: str
    gcl: str
    goal: str
    met: bool | None
    floor: str = "n/a"
    flock: str = "n/a"
    porta: str = "n/a"
    pyrate: str = "n/a"
    notes: str = ""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} µs"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if abs(seconds) < 0.1 else f"{seconds * 1e3:.0f} ms"


# -- locks under test (built inside the worker processes) -------------------------------------------


class SlotFlock:
    """flock(2) as a semaphore of *slots* slot files; with one slot, a plain blocking LOCK_EX."""

    def __init__(self, directory: str, name: str, slots: int) -> None:
        flags = os.O_CREAT | os.O_RDWR | os.O_CLOEXEC
        self.fds = [os.open(os.path.join(directory, f"{name}.{i}.flock"), flags, 0o600) for i in range(slots)]
        self.held = -1

    def __enter__(self) -> SlotFlock:
        if len(self.fds) > 1:
            for fd in self.fds:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                self.held = fd
                return self
        fd = self.fds[os.getpid() % len(self.fds)]
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.held = fd
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.held, fcntl.LOCK_UN)


def db_path(directory: str) -> str:
    """Where gcl_local keeps its state for a scenario: a file in *directory*, or with ``--gcl-on-db`` a
    PostgreSQL schema of the scenario's own on the ``--db`` server (named after *directory*)."""
    server = os.environ.get("GCL_BENCH_PG")
    if not server:
        return os.path.join(directory, "gcl.db")
    schema = "gcl_bench_" + hashlib.sha1(directory.encode()).hexdigest()[:12]
    return f"{server}{'&' if '?' in server else '?'}gcl_schema={schema}"


def drop_bench_schemas(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'gcl\\_bench\\_%'").fetchall()
        for (schema,) in rows:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def make_lock(kind: str, directory: str, name: str, limit: int = 1, occupy: int = 1):
    """A factory of context managers that hold *occupy* slot(s) of the limit *name*."""
    if kind == "gcl":
        from gcl_local import concurrency

        path = db_path(directory)
        return lambda: concurrency(name, occupy=occupy, db=path)
    if kind == "flock":
        slot_flock = SlotFlock(directory, name, limit)
        return lambda: slot_flock
    if kind == "porta":
        import portalocker

        sem = portalocker.BoundedSemaphore(limit, name=name, directory=directory, timeout=PORTA_TIMEOUT)
        return lambda: sem
    raise ValueError(kind)


def sqlite_floor(directory: str):
    """One acquire+release as the bare minimum of two write transactions on a one-row table."""
    import apsw

    conn = apsw.Connection(os.path.join(directory, "floor.db"))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE slot(id INTEGER PRIMARY KEY, n INTEGER); INSERT INTO slot VALUES (1, 0)")

    def cycle() -> None:
        conn.execute("BEGIN IMMEDIATE; UPDATE slot SET n = n + 1 WHERE id = 1; COMMIT")
        conn.execute("BEGIN IMMEDIATE; UPDATE slot SET n = n - 1 WHERE id = 1; COMMIT")

    return cycle


def create_limits(directory: str, *limits: tuple[str, int, float]) -> None:
    from gcl_local import create_limit

    for name, limit, decay in limits:
        create_limit(name, limit, slot_decay_per_second=decay, db=db_path(directory))


# -- the multi-process runner ---------------------------------------------------------------------


class Gate:
    """The start barrier: wait for every process, then sleep until the moment the driver chose."""

    def __init__(self, barrier, go, start, setup_timeout: float = SETUP_TIMEOUT) -> None:
        self.barrier, self.go, self.start = barrier, go, start
        self.setup_timeout = setup_timeout
        self.passed = False

    def __call__(self) -> float:
        self.barrier.wait(self.setup_timeout)
        if not self.go.wait(self.setup_timeout):
            raise RuntimeError("no start signal from the driver")
        self.passed = True
        start = self.start.value
        time.sleep(max(0.0, start - time.monotonic()))
        return start


def _worker_entry(index: int, fn, args: tuple, barrier, go, start, results, setup_timeout: float) -> None:
    gate = Gate(barrier, go, start, setup_timeout)
    try:
        results.put((index, True, fn(gate, *args)))
    except BaseException:
        if not gate.passed:
            barrier.abort()
        results.put((index, False, traceback.format_exc()))


def run_workers(
    jobs: list[tuple], timeout: float, setup_timeout: float = SETUP_TIMEOUT, lead: float = 0.05, during=None
) -> tuple[float, list]:
    """Run ``fn(gate, *args)`` for each ``(fn, *args)`` in its own spawned process; return (start, results).

    *lead*: seconds between the barrier and the shared start; *during(start, pids)*, if given, runs in
    the driver once the start moment is set (to sample the workers from outside).
    """
    barrier, go, start = CTX.Barrier(len(jobs) + 1), CTX.Event(), CTX.Value("d", 0.0)
    results = CTX.Queue()
    procs = [
        CTX.Process(
            target=_worker_entry, args=(i, job[0], job[1:], barrier, go, start, results, setup_timeout), daemon=True
        )
        for i, job in enumerate(jobs)
    ]
    out: list = [None] * len(jobs)
    finished = False
    try:
        for proc in procs:
            proc.start()
        try:
            barrier.wait(setup_timeout)
        except Exception:
            _raise_worker_error(results, "a worker failed before the start barrier")
        start.value = time.monotonic() + lead
        go.set()
        if during is not None:
            during(start.value, [proc.pid for proc in procs])
        deadline = time.monotonic() + timeout
        for _ in jobs:
            try:
                index, ok, value = results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"workers did not finish within {timeout:.0f} s") from None
            if not ok:
                raise RuntimeError(f"worker {index} failed:\n{value}")
            out[index] = value
        finished = True
        return start.value, out
    finally:
        for proc in procs:
            proc.join(timeout=5 if finished else 0.1)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)


def _raise_worker_error(results, what: str) -> None:
    """Raise with the first worker error that is not the broken barrier (the cause, not its echoes)."""
    reports = []
    with contextlib.suppress(queue.Empty):
        while True:
            _, ok, value = results.get(timeout=5 if not reports else 1)
            if not ok:
                reports.append(value)
    causes = [r for r in reports if "BrokenBarrierError" not in r] or reports or ["(no report)"]
    raise RuntimeError(f"{what} ({len(reports)} reports):\n{causes[0]}")


# -- worker bodies (run in the spawned processes) ---------------------------------------------------


def w_latency(gate: Gate, kind: str, directory: str, iters: int) -> list[float]:
    """Uncontended acquire+release latencies, in seconds."""
    if kind == "floor":
        cycle = sqlite_floor(directory)
    else:
        lock = make_lock(kind, directory, "a")

        def cycle() -> None:
            with lock():
                pass

    for _ in range(max(100, iters // 10)):
        cycle()
    gate()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        cycle()
        times.append(time.perf_counter() - t0)
    return times


def w_utilization(gate: Gate, kind: str, directory: str, limit: int, iters: int, hold: float) -> dict:
    lock = make_lock(kind, directory, "u", limit)
    with lock():
        pass
    gate()
    busy = 0.0
    for _ in range(iters):
        with lock():
            t0 = time.monotonic()
            time.sleep(hold)
            busy += time.monotonic() - t0
    return {"busy": busy, "end": time.monotonic()}


def w_loop(gate: Gate, kind: str, directory: str, hold: float, seconds: float) -> list[tuple[float, ...]]:
    """Loop acquire / hold / release on a limit of 1; per round (requested, acquired, leaving, released,
    woken, begun, committed, sent), where *woken* is when the waiter's last sleep on its pipe ended,
    and the last three are moments of the release: its transaction began (the write lock taken and
    "now" read), committed, and its wake-ups were sent (gcl only; else NaN)."""
    lock = make_lock(kind, directory, "h")
    woken = [math.nan]
    marks: dict[str, float] = {}
    if kind == "gcl":  # measurement only: note when each sleep on the pipe ends, and the release's moments
        from gcl_local import _backend, sync

        sleep_on_pipe = sync._wait_readable

        def noting(fd: int, seconds: float) -> bool:
            readable = sleep_on_pipe(fd, seconds)
            woken[0] = time.monotonic()
            return readable

        sync._wait_readable = noting
        backend_class = type(_backend.open_backend(db_path(directory)))
        write, wake = backend_class.write, backend_class.wake

        def timed_write(self, work, **options):
            def timed_work(tx):
                marks["begun"] = time.monotonic()
                return work(tx)

            result = write(self, timed_work, **options)
            marks["committed"] = marks["sent"] = time.monotonic()  # (on a server the wake-ups go with the commit)
            return result

        def timed_wake(self, wakes):
            wake(self, wakes)
            marks["sent"] = time.monotonic()

        backend_class.write, backend_class.wake = timed_write, timed_wake
    with lock():
        pass
    stop = gate() + seconds
    rounds = []
    while time.monotonic() < stop:
        requested = time.monotonic()
        woken[0] = math.nan
        with lock():
            acquired = time.monotonic()
            time.sleep(hold)
            marks.clear()
            leaving = time.monotonic()
        released = time.monotonic()
        release = [marks.get(key, math.nan) for key in ("begun", "committed", "sent")]
        rounds.append((requested, acquired, leaving, released, woken[0], *release))
    return rounds


def w_small(gate: Gate, directory: str, hold: float, stop) -> int:
    lock = make_lock("gcl", directory, "big")
    with lock():
        pass
    end = gate() + 60
    count = 0
    while not stop.is_set() and time.monotonic() < end:
        with lock():
            time.sleep(hold)
        count += 1
    return count


def w_big(gate: Gate, directory: str, reps: int, stop) -> list[float]:
    lock = make_lock("gcl", directory, "big", occupy=4)
    with lock():
        pass
    gate()
    waits = []
    try:
        time.sleep(0.3)  # let the small ones reach their steady state
        for _ in range(reps):
            t0 = time.monotonic()
            with lock():
                waits.append(time.monotonic() - t0)
                time.sleep(0.005)
            time.sleep(0.2)
    finally:
        stop.set()
    return waits


def w_rate(gate: Gate, kind: str, directory: str, calls: int, burst: int = 5, period_ms: int = 250) -> list[float]:
    """*calls* rate-limited calls from the start barrier, with no warm-up call (the first call's cost
    counts); the moment each returned."""
    if kind == "gcl":
        from gcl_local import rate_limit

        path = db_path(directory)

        def take() -> None:
            rate_limit("r", db=path)
    else:
        from pyrate_limiter import Limiter, Rate, SQLiteBucket

        path = os.path.join(directory, "pyrate.db")
        limiter = Limiter(SQLiteBucket.init_from_file([Rate(burst, period_ms)], table="r", db_path=path,
                                                      use_file_lock=True))  # fmt: skip

        def take() -> None:
            if not limiter.try_acquire("r", blocking=True):
                raise RuntimeError("pyrate-limiter refused")

    gate()
    returned = []
    for _ in range(calls):
        take()
        returned.append(time.monotonic())
    return returned


RETURN_LAG = 0.005
"""Return times lag the grants they report (a process being scheduled); windows allow this much."""


def excess_calls(times: list[float], burst: int, decay: float) -> int:
    """Calls beyond burst + decay x window in the worst window (0 when the promise holds)."""
    times = sorted(times)
    worst = 0
    for i, begin in enumerate(times):
        for j in range(i, len(times)):
            allowed = math.floor(burst + decay * (times[j] - begin + RETURN_LAG) + 1e-9)
            worst = max(worst, j - i + 1 - allowed)
    return worst


def w_hold(gate: Gate, kind: str, directory: str, seconds: float) -> None:
    lock = make_lock(kind, directory, "w")
    with lock():
        pass
    gate()
    with lock():
        time.sleep(seconds)


def w_idle_wait(gate: Gate, kind: str, directory: str) -> tuple[float, float]:
    """CPU seconds and wall seconds spent waiting behind the holder."""
    lock = make_lock(kind, directory, "w")
    with lock():
        pass
    gate()
    time.sleep(0.2)  # the holder has the slot by now
    cpu0, wall0 = time.process_time(), time.monotonic()
    with lock():
        cpu1, wall1 = time.process_time(), time.monotonic()
        time.sleep(0.001)
    return cpu1 - cpu0, wall1 - wall0


def w_hold_many(gate: Gate, directory: str, count: int, stop) -> None:
    from gcl_local import concurrency

    path = db_path(directory)
    with contextlib.ExitStack() as stack:
        leases = [stack.enter_context(concurrency(f"l{i:04d}", db=path)) for i in range(count)]
        if any(lease.token is None for lease in leases):
            raise RuntimeError("a lease took no slot")
        gate()
        if not stop.wait(300):
            raise RuntimeError("never told to stop")


def w_store_latency(gate: Gate, empty_dir: str, full_dir: str, iters: int, stop) -> tuple[list[float], list[float]]:
    """Uncontended latency on an empty and on a full file, alternating to share the machine's noise."""
    try:
        locks = [make_lock("gcl", d, "probe") for d in (empty_dir, full_dir)]
        times: tuple[list[float], list[float]] = ([], [])
        for i in range(200):
            with locks[i % 2]():
                pass
        gate()
        for _ in range(iters):
            for lock, out in zip(locks, times, strict=True):
                t0 = time.perf_counter()
                with lock():
                    pass
                out.append(time.perf_counter() - t0)
        return times
    finally:
        stop.set()


def w_many(gate: Gate, kind: str, directory: str, limit: int, seconds: float) -> list[tuple[float, ...]]:
    """Loop on an empty block; (requested, block started, block ended, released) per round."""
    lock = make_lock(kind, directory, "m", limit)
    with lock():
        pass
    stop = gate() + seconds
    rounds = []
    clock = time.monotonic
    while clock() < stop:
        requested = clock()
        with lock():
            acquired = clock()
            leaving = clock()
        rounds.append((requested, acquired, leaving, clock()))
    return rounds


def w_idle_many(gate: Gate, kind: str, directory: str) -> None:
    """Wait behind the holder (w_hold on "w"), then pass."""
    lock = make_lock(kind, directory, "w")
    with lock():
        pass
    gate()
    time.sleep(0.2)  # the holder has the slot by now
    with lock():
        pass


def w_empty_blocks(gate: Gate, directory: str, name: str, seconds: float) -> list[float]:
    """Loop on an empty block of *name* (a limit nobody else waits on); the moment each block started."""
    lock = make_lock("gcl", directory, name)
    with lock():
        pass
    stop = gate() + seconds
    started = []
    while time.monotonic() < stop:
        with lock():
            started.append(time.monotonic())
    return started


# -- scenarios (run in the driver) ------------------------------------------------------------------


def scenario_dir(tag: str) -> contextlib.AbstractContextManager[str]:
    return tempfile.TemporaryDirectory(prefix=f"gcl-bench-{tag}-", dir="/tmp")


def per_kind_dir(root: str, kind: str) -> str:
    path = os.path.join(root, kind)
    os.mkdir(path)
    return path


def s1_uncontended(cfg: Config) -> Row:
    medians = {}
    with scenario_dir("s1") as root:
        for kind in ("floor", *KINDS):
            directory = per_kind_dir(root, kind)
            if kind == "gcl":
                create_limits(directory, ("a", 1, 0.0))
            _, [times] = run_workers([(w_latency, kind, directory, cfg.latency_iters)], timeout=120)
            medians[kind] = statistics.median(times)
    ratio = medians["gcl"] / medians["floor"]
    return Row(
        "1. uncontended acquire+release, median",
        f"{us(medians['gcl'])} ({ratio:.1f} x floor)",
        "≤ 3 x floor",
        ratio <= 3,
        floor=us(medians["floor"]),
        flock=us(medians["flock"]),
        porta=us(medians["porta"]),
        notes=f"{cfg.latency_iters} iterations after warm-up",
    )


def s2_utilization(cfg: Config) -> Row:
    procs, limit, hold = 6, 3, 0.020
    cells = {}
    with scenario_dir("s2") as root:
        for kind in KINDS:
            directory = per_kind_dir(root, kind)
            if kind == "gcl":
                create_limits(directory, ("u", limit, 0.0))
            jobs = [(w_utilization, kind, directory, limit, cfg.util_iters, hold)] * procs
            start, results = run_workers(jobs, timeout=120)
            wall = max(r["end"] for r in results) - start
            cells[kind] = sum(r["busy"] for r in results) / (wall * limit)
    return Row(
        f"2. utilization, {procs} procs, limit {limit}, {cfg.util_iters} x 20 ms holds each",
        f"{cells['gcl']:.3f}",
        "≥ 0.97",
        cells["gcl"] >= 0.97,
        flock=f"{cells['flock']:.3f} (N-slot)",
        porta=f"{cells['porta']:.3f}",
        notes="busy slot-time / (wall x limit)",
    )


def handoffs(rounds: list[tuple[float, ...]]) -> list[tuple[float, ...]]:
    """For consecutive holders A, B where B waited before A left, each from A's block end: (B acquired,
    as a user feels it; A's release call returned; B woken; A's release transaction began; it
    committed; its wake-ups were sent)."""
    ordered = sorted(rounds, key=lambda r: r[1])
    return [
        (b[1] - a[2], a[3] - a[2], b[4] - a[2], a[5] - a[2], a[6] - a[2], a[7] - a[2])
        for a, b in itertools.pairwise(ordered)
        if b[0] < a[2]
    ]


def s3_handoff(cfg: Config) -> Row:
    procs, hold = 4, 0.002
    cells, p90, parts = {}, {}, {}
    with scenario_dir("s3") as root:
        for kind in KINDS:
            directory = per_kind_dir(root, kind)
            if kind == "gcl":
                create_limits(directory, ("h", 1, 0.0))
            jobs = [(w_loop, kind, directory, hold, cfg.handoff_seconds)] * procs
            _, results = run_workers(jobs, timeout=120)
            found = handoffs([r for rounds in results for r in rounds])
            gaps = sorted(f[0] for f in found)
            cells[kind] = statistics.median(gaps)
            p90[kind] = gaps[int(0.9 * (len(gaps) - 1))]
            cells[kind + "n"] = len(gaps)
            parts[kind] = [statistics.median(f[i] for f in found) for i in range(1, 6)]
    cell = {kind: f"{ms(cells[kind])} (p90 {ms(p90[kind])}, n={cells[kind + 'n']})" for kind in KINDS}
    release, woken, begun, committed, sent = parts["gcl"]
    return Row(
        f"3. hand-off as felt, limit 1, {procs} procs, 2 ms holds, median",
        cell["gcl"],
        "≤ 0.5 ms",
        cells["gcl"] <= 0.0005,
        flock=cell["flock"],
        porta=cell["porta"],
        notes=f"B's block starts - A's block ends; medians, from A's block end: A's release transaction "
        f"began (write lock, now) {ms(begun)}, committed {ms(committed)}, its wake-up sent {ms(sent)}, B woken "
        f"{ms(woken)}, B's block {ms(cells['gcl'])}; A's release call returned {ms(release)} (it yields its CPU)",
    )


def jain(counts: list[int]) -> float:
    return sum(counts) ** 2 / (len(counts) * sum(c * c for c in counts))


def s4_fairness(cfg: Config) -> Row:
    procs, hold = 8, 0.002
    cells = {}
    with scenario_dir("s4") as root:
        for kind in KINDS:
            directory = per_kind_dir(root, kind)
            if kind == "gcl":
                create_limits(directory, ("h", 1, 0.0))
            jobs = [(w_loop, kind, directory, hold, cfg.fair_seconds)] * procs
            _, results = run_workers(jobs, timeout=120)
            counts = [len(rounds) for rounds in results]
            cells[kind] = (jain(counts), min(counts), max(counts))
    cell = {kind: f"{j:.4f} (counts {lo}..{hi})" for kind, (j, lo, hi) in cells.items()}
    return Row(
        f"4. Jain fairness, {procs} procs, limit 1, 2 ms holds, {cfg.fair_seconds:g} s",
        cell["gcl"],
        "≥ 0.995",
        cells["gcl"][0] >= 0.995,
        flock=cell["flock"],
        porta=cell["porta"],
        notes="per-process acquisition counts",
    )


def s5_big_request(cfg: Config) -> Row:
    smalls, hold = 4, 0.005
    with scenario_dir("s5") as directory:
        create_limits(directory, ("big", 4, 0.0))
        stop = CTX.Event()
        jobs = [(w_big, directory, cfg.big_reps, stop)] + [(w_small, directory, hold, stop)] * smalls
        _, results = run_workers(jobs, timeout=120)
    waits, counts = results[0], results[1:]
    return Row(
        f"5. occupy=4 on limit 4 vs {smalls} procs looping occupy=1 (5 ms holds), worst wait",
        f"{ms(max(waits))} (median {ms(statistics.median(waits))}, n={len(waits)})",
        "≤ 1 s",
        max(waits) <= 1.0,
        notes=f"small ones served {sum(counts)} times meanwhile; no multi-slot request in the baselines",
    )


def _rate_run(root: str, procs: int, calls: int, burst: int, decay: float) -> dict[str, tuple[float, int, float]]:
    """(wall from the start barrier to the last call, worst excess over the promise, cost of a fresh
    process's first call) for gcl and pyrate. The first call is the earliest first return: the others
    queue behind it (one process may take the whole burst), so their medians measure the line, not
    the call."""
    period_ms = round(burst / decay * 1000)  # pyrate's sliding window: burst calls per burst/decay s
    out = {}
    for kind in ("gcl", "pyrate"):
        directory = per_kind_dir(root, kind)
        if kind == "gcl":
            create_limits(directory, ("r", burst, decay))
        start, results = run_workers([(w_rate, kind, directory, calls, burst, period_ms)] * procs, timeout=300)
        times = [t for returned in results for t in returned]
        first = min(returned[0] - start for returned in results)
        out[kind] = (max(times) - start, excess_calls(times, burst, decay), first)
    return out


def s6_rate(cfg: Config) -> Row:
    procs, calls, burst, decay = 4, 10, 5, 20.0
    ideal = (procs * calls - burst) / decay
    with scenario_dir("s6") as root:
        runs = _rate_run(root, procs, calls, burst, decay)
    error = {kind: abs(wall - ideal) / ideal for kind, (wall, _, _) in runs.items()}
    # Paced from the first grant: the same schedule with the fresh process's start-up (its imports and
    # connections: the PostgreSQL driver's import alone is a few hundred ms) taken out.
    paced = {kind: abs(wall - first - ideal) / ideal for kind, (wall, _, first) in runs.items()}
    cell = {
        kind: f"{wall:.3f} s (error {error[kind] * 100:.2f} %, from the first grant {paced[kind] * 100:.2f} %, "
        f"excess {excess}, first call {ms(first)})"
        for kind, (wall, excess, first) in runs.items()
    }
    return Row(
        f"6. rate limit, {procs} procs x {calls} calls, burst {burst}, decay {decay:g}/s, ideal {ideal:.2f} s",
        cell["gcl"],
        "error ≤ 0.5 %, excess 0",
        error["gcl"] <= 0.005 and runs["gcl"][1] == 0,
        pyrate=cell["pyrate"],
        notes="from the start barrier, no warm-up call (first call: the earliest first return of a fresh process, "
        "from the barrier); pyrate: Rate(5, 250 ms); excess: calls over burst + "
        "rate x (window + 5 ms of return lag) in the worst window",
    )


def s10_slow_rates(cfg: Config) -> Row:
    """Limit 1 at 0.5/s and 1/s: 5 calls from one process, 2 calls each from 3 processes."""
    errors: dict[str, list[float]] = {"gcl": [], "pyrate": []}
    excess = {"gcl": 0, "pyrate": 0}
    parts = []
    for decay in (0.5, 1.0):
        for procs, calls in ((1, 5), (3, 2)):
            ideal = (procs * calls - 1) / decay
            with scenario_dir("s10") as root:
                runs = _rate_run(root, procs, calls, 1, decay)
            for kind, (wall, over, _) in runs.items():
                errors[kind].append(abs(wall - ideal) / ideal)
                excess[kind] += over
            parts.append(f"{decay:g}/s {procs}x{calls}: {runs['gcl'][0]:.2f} s of {ideal:g}")
    cell = {kind: f"worst error {max(e) * 100:.2f} %, excess {excess[kind]}" for kind, e in errors.items()}
    return Row(
        "10. slow rate limits, limit 1 at 0.5/s and 1/s, 1 proc x 5 calls and 3 procs x 2 calls",
        cell["gcl"],
        "error ≤ 0.5 %, excess 0",
        max(errors["gcl"]) <= 0.005 and excess["gcl"] == 0,
        pyrate=cell["pyrate"],
        notes="; ".join(parts) + "; from the start barrier, no warm-up call",
    )


def s7_idle_cpu(cfg: Config) -> Row:
    waiters = 8
    cells = {}
    with scenario_dir("s7") as root:
        for kind in KINDS:
            directory = per_kind_dir(root, kind)
            if kind == "gcl":
                create_limits(directory, ("w", 1, 0.0))
            jobs = [(w_hold, kind, directory, cfg.idle_seconds + 0.2)] + [(w_idle_wait, kind, directory)] * waiters
            _, results = run_workers(jobs, timeout=120)
            shares = [cpu / wall * 100 for cpu, wall in results[1:]]
            waited = statistics.mean(wall for _, wall in results[1:])
            cells[kind] = (max(shares), statistics.mean(shares), waited)
    cell = {kind: f"{hi:.3f} % (mean {mean:.3f} %, waited {w:.1f} s)" for kind, (hi, mean, w) in cells.items()}
    return Row(
        f"7. CPU of {waiters} procs waiting ~{cfg.idle_seconds:g} s behind a held slot, worst",
        cell["gcl"],
        "≤ 0.5 % of a core",
        cells["gcl"][0] <= 0.5,
        flock=cell["flock"],
        porta=cell["porta"],
        notes="process CPU time from just before the wait to acquisition",
    )


def s8_big_file(cfg: Config) -> Row:
    n = cfg.many_limits
    with scenario_dir("s8") as root:
        empty, full = per_kind_dir(root, "empty"), per_kind_dir(root, "full")
        create_limits(empty, ("probe", 1, 0.0))
        create_limits(full, ("probe", 1, 0.0), *((f"l{i:04d}", 1, 0.0) for i in range(n)))
        stop = CTX.Event()
        jobs = [(w_hold_many, full, n, stop), (w_store_latency, empty, full, cfg.store_iters, stop)]
        _, results = run_workers(jobs, timeout=300)
    empty_median, full_median = (statistics.median(times) for times in results[1])
    ratio = full_median / empty_median
    return Row(
        f"8. uncontended latency with {n} limits and {n} held leases in the file",
        f"{us(full_median)} ({ratio:.2f} x empty file: {us(empty_median)})",
        "≤ 1.5 x empty file",
        ratio <= 1.5,
        notes=f"{cfg.store_iters} iterations each, alternating files",
    )


def timed_runs(commands: dict[str, list[str]], runs: int, env: dict[str, str]) -> dict[str, float]:
    """Median wall time of each command, interleaved round by round; a failing command gets NaN."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for name, cmd in list(commands.items()):  # warm-up, and drop what does not run
        if subprocess.run(cmd, env=env, capture_output=True, timeout=30, check=False).returncode != 0:
            del commands[name]
    for _ in range(runs):
        for name, cmd in commands.items():
            t0 = time.perf_counter()
            # No timeout=: with one, Popen.wait polls in sleeps up to 50 ms, and every time would be
            # rounded up to the next poll (a run of 75 ms read 114 ms).
            subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) if ts else math.nan for name, ts in times.items()}


def s9_cli(cfg: Config) -> Row:
    with scenario_dir("s9") as directory:
        create_limits(directory, ("job", 1, 0.0))
        env = {**os.environ, "GCL_DB": db_path(directory)}  # bytecode cached: see private_bytecode_cache()
        lock_file = os.path.join(directory, "job.flock")
        commands = {
            "gcl": [str(VENV_BIN / "gcl"), "run", "job", "--", "true"],
            "python": [sys.executable, "-c", "pass"],
            "flock": ["flock", lock_file, "true"],
        }
        if shutil.which("sem"):
            commands["sem"] = ["sem", "--fg", "--id", lock_file, "true"]
        medians = timed_runs(commands, cfg.cli_runs, env)
    gcl, python = medians["gcl"], medians["python"]
    sem = ms(medians["sem"]) if "sem" in medians else "n/a (not installed)"
    return Row(
        "9. CLI cold start `gcl run job -- true`, median",
        f"{ms(gcl)} ({gcl / python:.1f} x `python -c pass`)" if not math.isnan(gcl) else "n/a (gcl not found)",
        "≤ 3 x `python -c pass` (issue 11)",
        None if math.isnan(gcl) else gcl <= 3 * python,
        flock=f"{ms(medians['flock'])} (`flock FILE true`)",
        notes=f"`python -c pass`: {ms(medians['python'])}; GNU sem: {sem}; {cfg.cli_runs} runs each, bytecode cached",
    )


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """CPU time used so far by each of these processes that still runs (scheduler run time, ns precision)."""
    found = {}
    for pid in pids:
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/schedstat") as f:
            found[pid] = int(f.read().split()[0]) / 1e9
    return found


def sample_cpu(window: tuple[float, float], out: dict, skip: int = 0):
    """A ``during`` hook: the workers' CPU seconds between two moments relative to the start (but
    the first *skip* workers'). Sampled inside the run, so that no worker has exited yet."""

    def during(start: float, pids: list[int]) -> None:
        pids = pids[skip:]
        time.sleep(max(0.0, start + window[0] - time.monotonic()))
        t0, before = time.monotonic(), cpu_seconds(pids)
        time.sleep(max(0.0, start + window[1] - time.monotonic()))
        after = cpu_seconds(pids)
        out["wall"] = time.monotonic() - t0
        out["cpu"] = sum(after[pid] - before[pid] for pid in after if pid in before)
        out["missing"] = len(pids) - len(after.keys() & before.keys())

    return during


def slot_handoffs(rounds: list[tuple[float, ...]], window: tuple[float, float]) -> list[float]:
    """Per acquisition that waited for a release: its block start - the last block end before it,
    for acquisitions in *window*. (Pairing the k-th block end with the (k + limit)-th start, as for
    a limit of 1, measures the limit x the interval on a limit of 8 whose holders leave at once.)"""
    ends = sorted(r[2] for r in rounds)
    gaps = []
    for requested, acquired, *_ in rounds:
        if not window[0] <= acquired < window[1]:
            continue
        k = bisect.bisect_left(ends, acquired) - 1
        if k >= 0 and ends[k] > requested:  # a block ended while it waited: it was served by a release
            gaps.append(acquired - ends[k])
    return gaps


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class ManyResult:
    rate: float
    p50: float
    p99: float
    n_handoffs: int
    jain: float
    lo: int
    hi: int
    cpu: float  # cores used by all the looping processes together
    seconds: float

    def cell(self) -> str:
        handoff = f"hand-off p50 {ms(self.p50)} / p99 {ms(self.p99)}" if self.n_handoffs else "nobody waits"
        per_acquisition = f"{self.cpu / self.rate * 1e6:,.0f} µs/acq" if self.rate else "no acquisition"
        return (
            f"{self.rate:,.0f}/s; {handoff}; Jain {self.jain:.4f} ({self.lo}..{self.hi}); "
            f"CPU {self.cpu * 100:.0f} % ({per_acquisition})"
        )


MANY_SETTLE = 1.0
"""Seconds after the shared start that are not measured: N processes asking at the same moment is a
burst of N enqueues, not the steady state."""


def run_many(kind: str, directory: str, procs: int, limit: int, seconds: float) -> ManyResult:
    sampled: dict = {}
    jobs = [(w_many, kind, directory, limit, MANY_SETTLE + seconds)] * procs
    start, results = run_workers(
        jobs, timeout=seconds + 300, setup_timeout=300, lead=0.1 + procs * 0.001,
        during=sample_cpu((MANY_SETTLE, MANY_SETTLE + 0.9 * seconds), sampled),
    )  # fmt: skip
    begin, stop = start + MANY_SETTLE, start + MANY_SETTLE + seconds
    counts = [sum(begin <= r[1] < stop for r in rounds) for rounds in results]
    # With no more processes than slots nobody waits: there is no hand-off to time.
    everything = [r for rounds in results for r in rounds]
    gaps = slot_handoffs(everything, (begin, stop)) if procs > limit else []
    return ManyResult(
        rate=sum(counts) / seconds,
        p50=percentile(gaps, 0.5) if gaps else math.nan,
        p99=percentile(gaps, 0.99) if gaps else math.nan,
        n_handoffs=len(gaps),
        jain=jain(counts) if any(counts) else 0.0,
        lo=min(counts),
        hi=max(counts),
        cpu=sampled["cpu"] / sampled["wall"],
        seconds=seconds,
    )


def many_waiters(cfg: Config, limit: int, number: int) -> list[Row]:
    found: dict[tuple[str, int], ManyResult] = {}
    for procs in cfg.many_waiters:
        for kind in ("gcl", "flock"):
            with scenario_dir(f"s{number}") as directory:
                if kind == "gcl":
                    create_limits(directory, ("m", limit, 0.0))
                seconds = max(cfg.many_seconds, procs * cfg.many_rounds / 500)  # about 500-800 acquisitions/s
                found[kind, procs] = result = run_many(kind, directory, procs, limit, seconds)
                log(f"  {kind} {procs} waiters, limit {limit}: {result.cell()}")
    base = found["gcl", cfg.many_waiters[0]]
    rows = []
    for procs in cfg.many_waiters:
        gcl = found["gcl", procs]
        met = gcl.jain >= 0.99 and gcl.rate >= 0.8 * base.rate
        if gcl.n_handoffs and base.n_handoffs:
            met = met and gcl.p50 <= 2 * base.p50
        rows.append(
            Row(
                f"{number}. many waiters, {procs} procs looping on an empty block, limit {limit}",
                gcl.cell(),
                f"≥ 0.8 x the rate and ≤ 2 x the p50 of {cfg.many_waiters[0]} procs; Jain ≥ 0.99",
                met,
                flock=found["flock", procs].cell(),
                notes=f"{gcl.seconds:.1f} s after a {MANY_SETTLE:g} s settle; hand-off: next block start - previous "
                "block end; CPU: all the looping processes together",
            )
        )
    return rows


def s11_many_waiters(cfg: Config) -> list[Row]:
    return many_waiters(cfg, 1, 11)


def s12_many_waiters_8_slots(cfg: Config) -> list[Row]:
    return many_waiters(cfg, 8, 12)


def s13_idle_many(cfg: Config) -> list[Row]:
    """CPU per idle waiter, behind a slot held for the whole window, as the queue grows."""
    rows, base = [], None
    for procs in cfg.many_waiters:
        cells = {}
        for kind in ("gcl", "flock"):
            with scenario_dir("s13") as directory:
                if kind == "gcl":
                    create_limits(directory, ("w", 1, 0.0))
                sampled: dict = {}
                hold = cfg.idle_seconds + 2.2  # the first 2 s: every waiter queues (a burst of them at once)
                jobs = [(w_hold, kind, directory, hold)] + [(w_idle_many, kind, directory)] * procs
                run_workers(
                    jobs, timeout=hold + 300, setup_timeout=300, lead=0.1 + procs * 0.001,
                    during=sample_cpu((2.0, hold - 0.2), sampled, skip=1),
                )  # fmt: skip
                cells[kind] = sampled["cpu"] / sampled["wall"] / procs * 100
        base = cells["gcl"] if base is None else base
        rows.append(
            Row(
                f"13. CPU per idle waiter, {procs} procs behind a held slot",
                f"{cells['gcl']:.3f} % of a core",
                f"≤ 0.5 % and flat (≤ 2 x {cfg.many_waiters[0]} procs)",
                cells["gcl"] <= 0.5 and cells["gcl"] <= 2 * max(base, 0.02),
                flock=f"{cells['flock']:.3f} %",
                notes=f"mean over the waiters, a {hold - 2.2:.1f} s window once all queued, from /proc/PID/schedstat",
            )
        )
    return rows


def s14_independent_limits(cfg: Config) -> Row:
    """Throughput on one hot limit against four independent ones: do limits that share nothing wait
    for each other? (Every write of a store takes one lock: SQLite's, or PostgreSQL's advisory lock.)"""
    seconds = cfg.many_seconds
    rates = {}
    layouts = {"1 proc": ["a"], "4 procs, one limit of 4": ["h"] * 4, "4 procs, 4 limits": ["a", "b", "c", "d"]}
    for layout, names in layouts.items():
        with scenario_dir("s14") as directory:
            create_limits(directory, *((name, 4 if name == "h" else 1, 0.0) for name in sorted(set(names))))
            jobs = [(w_empty_blocks, directory, name, MANY_SETTLE + seconds) for name in names]
            start, results = run_workers(jobs, timeout=seconds + 120)
            begin, stop = start + MANY_SETTLE, start + MANY_SETTLE + seconds
            rates[layout] = sum(begin <= t < stop for started in results for t in started) / seconds
            log(f"  {layout}: {rates[layout]:.0f} acquisitions/s")
    one, hot, apart = rates.values()
    return Row(
        "14. throughput, 4 procs on one limit of 4 vs on 4 limits of their own (empty blocks, nobody waits)",
        f"one limit {hot:.0f}/s, 4 limits {apart:.0f}/s (1 proc alone: {one:.0f}/s)",
        "for the record: 4 limits ≥ one limit",
        apart >= 0.95 * hot,
        notes=f"{seconds:g} s after a {MANY_SETTLE:g} s settle; acquire+release per second, all processes together",
    )


SCENARIOS = {
    1: s1_uncontended,
    2: s2_utilization,
    3: s3_handoff,
    4: s4_fairness,
    5: s5_big_request,
    6: s6_rate,
    7: s7_idle_cpu,
    8: s8_big_file,
    9: s9_cli,
    10: s10_slow_rates,
    11: s11_many_waiters,
    12: s12_many_waiters_8_slots,
    13: s13_idle_many,
    14: s14_independent_limits,
}


# -- PostgreSQL floors (--db URL): psycopg alone, no gcl_local code --------------------------------
#
# The floors against which gcl_local's scenarios on PostgreSQL will be judged (issue 12): what the
# server and the driver cost by themselves on this machine. Tables live in a scratch schema of their
# own, dropped at the end; a `gcl_schema` parameter of the URL is ignored.

PG_SLOT_KEY = 0x67636C  # pg_advisory_xact_lock key of the "global lock" floor


@dataclass
class PgRow:
    scenario: str
    gcl: str
    floor_on: str
    floor_off: str = "n/a"
    goal: str = ""
    met: bool | None = None
    notes: str = ""


def libpq_url(url: str) -> str:
    """*url* without the `gcl_schema` query parameter (libpq knows no such parameter)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "gcl_schema"]
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


@contextlib.contextmanager
def pg_scratch_schema(url: str):
    """A schema of our own holding ``slot(id, n)`` with one row; yields its name, drops it after."""
    import psycopg

    schema = f"gcl_bench_{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.slot (id int PRIMARY KEY, n bigint NOT NULL)")
        conn.execute(f"INSERT INTO {schema}.slot VALUES (1, 0)")
    try:
        yield schema
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def pg_cycle_times(url: str, schema: str, iters: int, synchronous_commit: bool, xact_lock: bool) -> list[float]:
    """One acquire+release as two minimal write transactions, one statement per round trip:
    [``SELECT pg_advisory_xact_lock(K)``;] ``SELECT n … FOR UPDATE``; ``UPDATE``; ``COMMIT``
    (psycopg sends the BEGIN itself), the first adding 1 and the second taking it back."""
    import psycopg

    conn = psycopg.connect(url)
    conn.execute(f"SET synchronous_commit = {'on' if synchronous_commit else 'off'}")
    conn.commit()
    lock = f"SELECT pg_advisory_xact_lock({PG_SLOT_KEY})"
    select = f"SELECT n FROM {schema}.slot WHERE id = 1 FOR UPDATE"
    update = f"UPDATE {schema}.slot SET n = n + %s WHERE id = 1"

    def transaction(delta: int) -> None:
        if xact_lock:
            conn.execute(lock)
        conn.execute(select).fetchone()
        conn.execute(update, (delta,))
        conn.commit()

    try:
        for _ in range(max(100, iters // 10)):
            transaction(1)
            transaction(-1)
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            transaction(1)
            transaction(-1)
            times.append(time.perf_counter() - t0)
        return times
    finally:
        conn.close()


class PgListener:
    """The payloads of the notifications that reach an autocommit connection LISTENing on one
    channel. Those that arrive while psycopg runs a query are drained by psycopg itself (to its
    notify handlers): catch those as well as the ones read off the socket."""

    def __init__(self, conn, channel: str) -> None:
        self.conn, self.pgconn = conn, conn.pgconn
        self.payloads: collections.deque[str] = collections.deque()
        conn.add_notify_handler(lambda note: self.payloads.append(note.payload))
        conn.execute(f"LISTEN {channel}")

    def wait(self, timeout: float) -> str:
        """The next payload, waiting in select(2) on the connection's socket."""
        import selectors

        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.pgconn.socket, selectors.EVENT_READ)
            while not self.payloads:
                self.pgconn.consume_input()
                while (note := self.pgconn.notifies()) is not None:
                    self.payloads.append(note.extra.decode())
                if self.payloads:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no notification")
                sel.select(left)
        return self.payloads.popleft()


def w_pg_echo(url: str, ping: str, pong: str, count: int, ready, results) -> None:
    """LISTEN *ping*; on each notification note the moment it woke, then NOTIFY *pong* with the
    same payload. After *count* of them, report the moments."""
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True) as conn:
            listener = PgListener(conn, ping)
            ready.set()
            woke = []
            for _ in range(count):
                payload = listener.wait(30.0)
                woke.append(time.monotonic())
                conn.execute("SELECT pg_notify(%s, %s)", (pong, payload))
            results.put((True, woke))
    except BaseException:
        results.put((False, traceback.format_exc()))


def pg_notify_times(url: str, count: int) -> tuple[list[float], list[float]]:
    """(one-way NOTIFY → awake listener woken, full ping-pong) times of *count* notifications; the
    listener is another process blocked in select(2) on its connection's socket."""
    import psycopg

    ping, pong = f"gcl_bench_ping_{os.getpid()}", f"gcl_bench_pong_{os.getpid()}"
    warm = max(20, count // 10)
    ready, results = CTX.Event(), CTX.Queue()
    proc = CTX.Process(target=w_pg_echo, args=(url, ping, pong, warm + count, ready, results), daemon=True)
    proc.start()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            listener = PgListener(conn, pong)
            if not ready.wait(SETUP_TIMEOUT):
                raise RuntimeError("the listener did not start")
            sent, round_trips = [], []
            for i in range(warm + count):
                t0 = time.monotonic()
                conn.execute("SELECT pg_notify(%s, %s)", (ping, str(i)))
                payload = listener.wait(30.0)
                round_trips.append(time.monotonic() - t0)
                sent.append(t0)
                if payload != str(i):
                    raise RuntimeError(f"notification {i} came back as {payload!r}")
            ok, woke = results.get(timeout=30)
            if not ok:
                raise RuntimeError(f"listener failed:\n{woke}")
        one_way = [w - s for w, s in zip(woke[warm:], sent[warm:], strict=True)]
        return one_way, round_trips[warm:]
    finally:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)


def pg_connect_times(url: str, count: int) -> list[float]:
    import psycopg

    times = []
    for _ in range(count + 5):
        t0 = time.perf_counter()
        psycopg.connect(url).close()
        times.append(time.perf_counter() - t0)
    return times[5:]


def pg_floors(url: str, cfg: Config) -> list[PgRow]:
    """PostgreSQL's floors (psycopg only), each row a median; both synchronous_commit settings where
    they matter."""
    import psycopg

    with psycopg.connect(url) as conn:
        fsync = conn.execute("SHOW fsync").fetchone()[0]
    flushes = "" if fsync == "on" else "; **fsync=off on this server: `on` flushes nothing** (pg-server --durable)"
    rows = []
    with pg_scratch_schema(url) as schema:
        for xact_lock in (False, True):
            medians = {}
            for sync in (True, False):
                log(f"  pg: two transactions, xact lock {xact_lock}, synchronous_commit {'on' if sync else 'off'}")
                medians[sync] = statistics.median(pg_cycle_times(url, schema, cfg.latency_iters, sync, xact_lock))
            what = "BEGIN; SELECT … FOR UPDATE; UPDATE; COMMIT"
            if xact_lock:
                what = what.replace("BEGIN; ", "BEGIN; pg_advisory_xact_lock; ")
            rows.append(
                PgRow(
                    f"P{len(rows) + 1}. floor of acquire+release: two `{what}`, median",
                    "—",
                    us(medians[True]),
                    us(medians[False]),
                    notes=f"{cfg.latency_iters} iterations after warm-up, one round trip per statement{flushes}",
                )
            )
    log("  pg: NOTIFY → LISTEN")
    count = max(200, cfg.latency_iters // 3)
    one_way, round_trips = pg_notify_times(url, count)
    rows.append(
        PgRow(
            "P3. NOTIFY → LISTEN, other process awake (from `SELECT pg_notify` sent to the listener woken), median",
            "—",
            us(statistics.median(one_way)),
            notes=f"p90 {us(percentile(one_way, 0.9))}; ping-pong round trip {us(statistics.median(round_trips))}; "
            f"{count} notifications, autocommit",
        )
    )
    log("  pg: connect")
    connects = pg_connect_times(url, max(50, cfg.latency_iters // 15))
    host = "Unix socket" if "host=/" in url or "@/" in url else "as the URL says"
    rows.append(
        PgRow(
            "P4. connect + close (`psycopg.connect(url)`), median",
            "—",
            ms(statistics.median(connects)),
            notes=f"{host}; min {ms(min(connects))}; {len(connects)} connections",
        )
    )
    log("  pg: import psycopg")
    runs = max(8, cfg.cli_runs)
    commands = {"psycopg": [sys.executable, "-c", "import psycopg"], "python": [sys.executable, "-c", "pass"]}
    imports = timed_runs(commands, runs, dict(os.environ))
    rows.append(
        PgRow(
            'P5. `python -c "import psycopg"`, median',
            "—",
            ms(imports["psycopg"]),
            notes=f"`python -c pass`: {ms(imports['python'])}; {runs} runs each, bytecode cached",
        )
    )
    return rows


def pg_machine(url: str) -> list[str]:
    import psycopg

    with psycopg.connect(url) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]
        settings = conn.execute(
            "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings"
            " WHERE name IN ('fsync', 'max_connections', 'shared_buffers', 'wal_sync_method')"
        ).fetchone()[0]
    return [
        f"- PostgreSQL {server} ({settings}), psycopg {psycopg.__version__} ({psycopg.pq.__impl__}, "
        f"libpq {psycopg.pq.version()})"
    ]


def pg_table(rows: list[PgRow]) -> list[str]:
    head = ["PostgreSQL", "gcl_local", "floor, synchronous_commit on", "floor, off", "goal", "met?", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        met = "n/a" if r.met is None else ("yes" if r.met else "**no**")
        cells = [r.scenario, r.gcl, r.floor_on, r.floor_off, r.goal, met, r.notes]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# -- report ------------------------------------------------------------------------------------------


def machine(load: tuple[float, float, float]) -> list[str]:
    from importlib.metadata import version

    import apsw

    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    df = subprocess.run(["df", "--output=fstype", "/tmp"], capture_output=True, text=True, check=False)
    fstype = df.stdout.split()[-1] if df.returncode == 0 else "?"
    packages = ", ".join(f"{name} {version(name)}" for name in ("gcl_local", "portalocker", "pyrate-limiter"))
    return [
        f"- machine: nproc {len(os.sched_getaffinity(0))}, {model}, {platform.system()} {platform.release()}, "
        f"/tmp on {fstype}, load average at start {load[0]:.1f}",
        f"- Python {platform.python_version()}, apsw {apsw.apsw_version()}, SQLite {apsw.sqlite_lib_version()}",
        f"- {packages}",
    ]


def table(rows: list[Row]) -> list[str]:
    head = ["scenario", "gcl_local", "SQLite floor", "flock", "portalocker", "pyrate-limiter", "goal", "met?", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        met = "n/a" if r.met is None else ("yes" if r.met else "**no**")
        cells = [r.scenario, r.gcl, r.floor, r.flock, r.porta, r.pyrate, r.goal, met, r.notes]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def private_bytecode_cache(directory: str) -> None:
    """Let child processes cache bytecode in *directory*, even under PYTHONDONTWRITEBYTECODE.

    Workers start faster, and the CLI is timed as an installed one runs: from cached bytecode.
    """
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = directory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations: a smoke run of under a minute")
    parser.add_argument(
        "--only", default="", help="comma-separated scenario numbers, e.g. 1,3,9; `pg`: the PostgreSQL floors (--db)"
    )
    parser.add_argument("--waiters", default="", help="process counts of scenarios 11-13, e.g. 4,400")
    parser.add_argument(
        "--gcl-on-db",
        action="store_true",
        help="run gcl_local's side of the scenarios on the --db server (a schema each) instead of a SQLite file",
    )
    parser.add_argument(
        "--db",
        default="",
        metavar="URL",
        help="a postgresql:// URL: also measure PostgreSQL's floors there (psycopg alone), in a table of their own",
    )
    args = parser.parse_args()
    cfg = QUICK if args.quick else Config()
    if args.waiters:
        cfg = dataclasses.replace(cfg, many_waiters=tuple(int(n) for n in args.waiters.split(",")))
    if args.db and not args.db.startswith(("postgresql://", "postgres://")):
        parser.error("--db takes a postgresql:// URL")
    wanted = [n.strip() for n in args.only.split(",") if n.strip()]
    with_pg = bool(args.db) and (not wanted or "pg" in wanted)
    if "pg" in wanted and not args.db:
        parser.error("--only pg needs --db URL")
    try:
        chosen = [int(n) for n in wanted if n != "pg"] if wanted else list(SCENARIOS)
    except ValueError:
        parser.error("--only takes scenario numbers, e.g. 1,3,9, or pg")
    if unknown := [n for n in chosen if n not in SCENARIOS]:
        parser.error(f"no scenario {unknown[0]} (there are 1 to {len(SCENARIOS)})")
    if args.gcl_on_db:
        if not args.db:
            parser.error("--gcl-on-db needs --db URL")
        os.environ["GCL_BENCH_PG"] = args.db  # the workers inherit it
    began, load = time.monotonic(), os.getloadavg()
    rows, failed = [], False
    pyc = tempfile.TemporaryDirectory(prefix="gcl-bench-pyc-", dir="/tmp")
    private_bytecode_cache(pyc.name)
    for number in chosen:
        log(f"scenario {number} ...")
        t0 = time.monotonic()
        try:
            found = SCENARIOS[number](cfg)
            rows.extend(found if isinstance(found, list) else [found])
        except Exception as exc:
            failed = True
            log(traceback.format_exc())
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            rows.append(Row(f"{number}. {SCENARIOS[number].__name__}", f"error: {first}", "", False))
        log(f"scenario {number}: {time.monotonic() - t0:.1f} s")
    pg_rows: list[PgRow] = []
    pg_lines: list[str] = []
    if with_pg:
        url = libpq_url(args.db)
        log("PostgreSQL floors ...")
        t0 = time.monotonic()
        try:
            pg_lines = pg_machine(url)
            pg_rows = pg_floors(url, cfg)
        except Exception as exc:
            failed = True
            log(traceback.format_exc())
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            pg_rows.append(PgRow("PostgreSQL floors", f"error: {first}", "", met=False))
        log(f"PostgreSQL floors: {time.monotonic() - t0:.1f} s")
    print("\n".join(machine(load) + pg_lines))
    print()
    if rows:
        print("\n".join(table(rows)))
        print()
    if pg_rows:
        print("\n".join(pg_table(pg_rows)))
        print()
    if args.gcl_on_db:
        drop_bench_schemas(libpq_url(args.db))
        print("gcl_local's column: on PostgreSQL (--gcl-on-db); its floors are in the table of PostgreSQL floors.")
    print(f"Run took {time.monotonic() - began:.0f} s ({'--quick' if args.quick else 'full run'}).")
    pyc.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
