"""Waits that end on time: rate limits from 0.1/s to 50/s, full buckets, deadlines and retries.

Behaviour with generous bounds (the machines are noisy): the n-th call of a rate limit returns no
earlier than its ideal moment after the common start, within ideal + 1 s of the first call, and the
last within ideal + 0.75 s, for the sync API, the async API and ``gcl rate-limit``, from one process
and from four. Before the waiting policy kept every moment as an absolute deadline, any decay slower
than about 2/s slept for ever.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
from helpers import GCL, is_postgres

from gcl_local import (
    AcquireConcurrencySlotTimeoutError,
    concurrency,
    create_limit,
    rate_limit,
    update_limit,
)

REPO = Path(__file__).resolve().parent.parent

CALLER = """
import asyncio, sys, time
db, name, calls, out, shell = sys.argv[1:6]
calls = int(calls)
if shell == "sync":
    from gcl_local import rate_limit
else:
    from gcl_local.asyncio import rate_limit
# Warm up, then wait at the barrier: on a server the first call imports the driver and connects
# (0.3 s of CPU each, 21 processes on 2 cores), which is cold start (the benchmark's), not pace.
from gcl_local import read_limit
read_limit(name, db=db)
print("ready", flush=True)
start = float(sys.stdin.readline())
time.sleep(max(0.0, start - time.time()))
async def calls_async():
    for _ in range(calls):
        await rate_limit(name, timeout_seconds=60, db=db)
        with open(out, "a") as f:
            f.write(f"{time.time()!r}\\n")
if shell == "async":
    asyncio.run(calls_async())
else:
    for _ in range(calls):
        rate_limit(name, timeout_seconds=60, db=db)
        with open(out, "a") as f:
            f.write(f"{time.time()!r}\\n")
"""

CLI_CALLER = """
sleep "$(python3 -c "import time,sys; print(max(0.0, float(sys.argv[1]) - time.time()))" "$START")"
i=0
while [ "$i" -lt "$CALLS" ]; do
    $GCL rate-limit "$NAME" --timeout 60 || exit 1
    date +%s.%N >> "$OUT"
    i=$((i + 1))
done
"""


class Case(NamedTuple):
    limit: int
    decay: float
    processes: int
    calls_each: int

    @property
    def name(self) -> str:
        return f"l{self.limit}-d{self.decay:g}-p{self.processes}"

    def ideal(self, n: int) -> float:
        """Seconds after the first call at which call *n* (1-based, over all processes) is due."""
        return max(0, n - self.limit) / self.decay


LIBRARY_CASES = [
    Case(1, 0.1, 1, 2),  # the seed's example: about 10 s between runs
    Case(1, 0.5, 1, 3),  # the example: hung for ever
    Case(1, 1.5, 4, 1),  # several processes queued on a slow decay
    Case(1, 1.8, 1, 3),
    Case(5, 0.3, 1, 6),
    Case(5, 5.0, 1, 15),  # occupy fits the burst, then 5/s
    Case(1, 20.0, 4, 10),
    Case(5, 50.0, 4, 25),
    Case(5, 2.0, 4, 3),
]
# The CLI starts a Python process per call (tens of ms): its sweep stays below what that can reach.
CLI_CASES = [
    Case(1, 0.1, 1, 2),
    Case(1, 0.5, 1, 3),
    Case(1, 1.5, 4, 1),
    Case(5, 2.0, 1, 8),
    Case(1, 5.0, 4, 3),
]


def _run_sweep(db: str, tmp_path: Path, cases: list[Case], shell: str) -> None:
    for case in cases:
        create_limit(case.name, case.limit, slot_decay_per_second=case.decay, db=db)
    # The CLI's processes start at the barrier (each call is a process); the library's warm up first
    # and are then given the barrier.
    start = time.time() + 2.5
    procs = []
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for case in cases:
        out = tmp_path / f"{case.name}.times"
        for _ in range(case.processes):
            if shell == "cli":
                cli_env = dict(env, START=repr(start), CALLS=str(case.calls_each), NAME=case.name, OUT=str(out),
                               GCL=" ".join([*GCL, "--db", db]))  # fmt: skip
                procs.append(subprocess.Popen(["bash", "-c", CLI_CALLER], env=cli_env, stderr=subprocess.PIPE))
            else:
                args = [db, case.name, str(case.calls_each), str(out), shell]
                pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
                procs.append(subprocess.Popen([sys.executable, "-c", CALLER, *args], env=env, text=True, **pipes))
    if shell != "cli":
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n", proc.communicate()
        start = time.time() + 0.2
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{start!r}\n")
            proc.stdin.flush()
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            proc.kill()
    for case in cases:
        times = sorted(float(t) for t in (tmp_path / f"{case.name}.times").read_text().split())
        assert len(times) == case.processes * case.calls_each
        first = times[0]
        for n, at in enumerate(times, start=1):
            ideal = case.ideal(n)
            # Never early, measured from the barrier: no grant precedes it and a return only lags its
            # grant. (Measured from the first return, a first call slow to return made later ones
            # look early: CI saw call 6 at 0.164 s of a due 0.2 s.)
            assert start + ideal - 0.01 <= at, (case, n, at - start, ideal)
            # Never more than 1 s later than both its due moment and the call before it (a CLI call
            # also waits for its own process to start: within the burst, that is all it waits for).
            due = max(first + ideal, times[n - 2] if n > 1 else first)
            # (On a server, a CLI call's process also imports the driver first: 0.5-1 s of CPU each.)
            late = (2.0 if shell == "cli" else 1.0) + ((3.0 if shell == "cli" else 1.0) if is_postgres(db) else 0.0)
            assert at - due <= late, (case, n, at - first, ideal)
        if shell != "cli":  # (the CLI's pace is also its processes' start-up)
            # A waiter late to wake loses nothing (it is charged as of the moment it fit): the last
            # call is on time even if one in the middle was not.
            assert times[-1] - first <= case.ideal(len(times)) + 0.75, (case, times[-1] - first)
        # On a server a CLI call also closes its connections before its process is seen to end, a
        # woken waiter hears of its grant through the server (NOTIFY), and a grant made late is
        # charged at the moment it fit (GCRA): returns lag their charges by more than on one host.
        # On one host too, a grant made late is charged when it fit: when every process of the sweep
        # (22 at once, on 2 cores) stalls, the returns that follow bunch (a clean-clone CI run, async,
        # 20/s: 5 returns within 5.5 ms, where a lag of 0.15 s allowed 4). Issue 9's own bound lets a
        # return be 0.5 s late.
        lag = (1.0 if shell == "cli" else 0.4) if is_postgres(db) else 0.3
        _check_windows(case, times, lag)


def _check_windows(case: Case, times: list[float], lag: float) -> None:
    """Never more calls than the limit allows in any window: burst + rate x window. Return times lag
    the grants (a process's exit, for the CLI), by up to *lag* on a loaded machine: the slack."""
    for i, begin in enumerate(times):
        for j in range(i, len(times)):
            window = times[j] - begin
            allowed = case.limit + case.decay * (window + lag)
            assert j - i + 1 <= allowed + 1e-9, (case, i, j, window)


@pytest.mark.slow
@pytest.mark.parametrize("shell", ["sync", "async"])
def test_rate_sweep_library(db: str, tmp_path: Path, shell: str) -> None:
    _run_sweep(db, tmp_path, LIBRARY_CASES, shell)


@pytest.mark.slow
def test_rate_sweep_cli(db: str, tmp_path: Path) -> None:
    _run_sweep(db, tmp_path, CLI_CASES, "cli")


def test_the_readme_example_returns_in_about_two_seconds(db: str) -> None:
    subprocess.run([*GCL, "--db", db, "create", "api", "-l", "1", "--slot-decay-per-second", "0.5"], check=True)
    subprocess.run([*GCL, "--db", db, "rate-limit", "api"], check=True, timeout=10)
    began = time.monotonic()
    subprocess.run([*GCL, "--db", db, "rate-limit", "api"], check=True, timeout=30)
    assert 1.8 <= time.monotonic() - began <= 2.8


def _elapsed_until_held(db: str, names: str | list[str], **kwargs: object) -> float:
    began = time.monotonic()
    with concurrency(names, db=db, **kwargs):  # type: ignore[arg-type]
        return time.monotonic() - began


def test_concurrency_on_a_full_bucket_enters_when_it_has_decayed(db: str) -> None:
    create_limit("full", 2, slot_decay_per_second=1.0, db=db)
    update_limit("full", active_slots=2, db=db)  # an admin filled it
    assert 0.95 <= _elapsed_until_held(db, "full", timeout_seconds=10) <= 1.5


def test_concurrency_after_rate_limit_calls_waits_for_decay(db: str) -> None:
    create_limit("mixed", 1, slot_decay_per_second=0.8, db=db)
    rate_limit("mixed", db=db)
    assert 1.2 <= _elapsed_until_held(db, "mixed", timeout_seconds=10) <= 1.8


def test_occupying_the_whole_of_a_decaying_limit_waits_for_it_to_empty(db: str) -> None:
    create_limit("whole", 5, slot_decay_per_second=5.0, db=db)
    rate_limit("whole", occupy=5, db=db)
    began = time.monotonic()
    rate_limit("whole", occupy=5, timeout_seconds=10, db=db)
    assert 0.95 <= time.monotonic() - began <= 1.5


@pytest.mark.parametrize(
    ("decay_full_for", "held_for", "expected"),
    [(2.0, 0.0, 2.0), (2.0, 1.0, 2.0), (0.5, 1.5, 1.5)],
    ids=["decay-only", "held-then-decay", "decay-then-held"],
)
def test_one_decaying_and_one_concurrency_name(
    db: str, procs: object, decay_full_for: float, held_for: float, expected: float
) -> None:
    create_limit("r", 1, slot_decay_per_second=1 / decay_full_for, db=db)
    create_limit("c", 1, db=db)
    if held_for:
        holder = procs.python(  # type: ignore[attr-defined]
            "import sys, time\nfrom gcl_local import concurrency\n"
            "with concurrency('c', db=sys.argv[1]):\n    print('in', flush=True)\n    time.sleep(float(sys.argv[2]))\n",
            db,
            str(held_for),
        )
        assert holder.stdout.readline().strip() == "in"
    began = time.monotonic()
    rate_limit("r", db=db)  # the bucket is full from now on, for decay_full_for seconds
    with concurrency(["r", "c"], timeout_seconds=10, db=db):
        elapsed = time.monotonic() - began
    assert expected - 0.2 <= elapsed <= expected + 0.6


def test_a_slot_due_before_the_deadline_is_had(db: str) -> None:
    create_limit("due", 1, slot_decay_per_second=1.0, db=db)
    rate_limit("due", db=db)
    began = time.monotonic()
    rate_limit("due", timeout_seconds=5, db=db)
    assert 0.95 <= time.monotonic() - began <= 1.5


def test_a_slot_due_after_the_deadline_times_out_near_it(db: str) -> None:
    create_limit("late", 1, slot_decay_per_second=0.1, db=db)
    rate_limit("late", db=db)
    began = time.monotonic()
    with pytest.raises(AcquireConcurrencySlotTimeoutError):
        rate_limit("late", timeout_seconds=1, db=db)
    assert 0.95 <= time.monotonic() - began <= 1.4


def test_a_full_bucket_holds_a_timed_concurrency_past_its_deadline_not_for_ever(db: str) -> None:
    create_limit("f", 1, slot_decay_per_second=0.2, db=db)
    update_limit("f", active_slots=1, db=db)
    began = time.monotonic()
    with pytest.raises(AcquireConcurrencySlotTimeoutError):
        _elapsed_until_held(db, "f", timeout_seconds=1.5)
    assert 1.45 <= time.monotonic() - began <= 2.0


def test_single_caller_keeps_the_exact_rate(db: str) -> None:
    # 20/s for 2 s from one caller: woken a little late each time, it must not lose that time.
    create_limit("exact", 1, slot_decay_per_second=20.0, db=db)
    rate_limit("exact", db=db)
    began = time.monotonic()
    for _ in range(40):
        rate_limit("exact", db=db)
    elapsed = time.monotonic() - began
    assert 1.95 <= elapsed <= 2.0 + 0.06, json.dumps(elapsed)
