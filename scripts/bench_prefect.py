"""Prefect's own global concurrency limits on scenarios 1, 2, 3, 4 and 6 of scripts/bench.py; prints one markdown table.

Needs a Prefect server and a Python with Prefect (not the project's .venv), e.g. a scratch venv and a
throwaway SQLite-backed server with its own home:

  python3 -m venv /tmp/prefect-venv && /tmp/prefect-venv/bin/pip install prefect
  PREFECT_HOME=/tmp/prefect-home /tmp/prefect-venv/bin/prefect server start --host 127.0.0.1 --port 4299 &
  PREFECT_HOME=/tmp/prefect-home PREFECT_API_URL=http://127.0.0.1:4299/api \\
      /tmp/prefect-venv/bin/python scripts/bench_prefect.py [--only 1,6] [--fair-seconds 4]

Each scenario creates its own limit (``get_client().create_global_concurrency_limit``) and deletes it
afterwards, and measures with Prefect's ``prefect.concurrency.sync.concurrency`` / ``rate_limit``, with the
definitions of scripts/bench.py: fresh spawned processes that import Prefect (and, except in scenario 6,
take the slot once to warm up), meet at a start barrier and start at one shared monotonic moment.
Scenarios 3 and 4 run for bench.py's 2 s and 4 s, and again for longer when that gives too few samples.
Each worker notes, from the start barrier on, the HTTP requests its Prefect client sends and the
Retry-After of every 423 (a thin wrapper on httpx's ``send``, measurement only). Progress goes to stderr,
the table to stdout. Standard library and Prefect only.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import re
import statistics
import sys
import threading
import time
import traceback
import urllib.request
import uuid
from dataclasses import dataclass, field

CTX = mp.get_context("spawn")
SETUP_TIMEOUT = 120.0
"""Seconds for the workers to import Prefect and warm up (several processes on a small machine)."""
RUN_TIMEOUT = 180.0
"""Seconds from the start barrier for a scenario's workers to report back."""
RETURN_LAG = 0.005
ENOUGH_HANDOFFS = 20
"""Scenario 3 runs again for --handoff-long seconds when it saw fewer hand-offs than this."""
ENOUGH_ROUNDS = 12
"""Scenario 4 runs again for --fair-long seconds when processes averaged fewer rounds (as bench.py's many_rounds)."""


@dataclass
class Row:
    scenario: str
    prefect: str
    notes: str = ""
    samples: int = 0


@dataclass
class Http:
    """What a worker's Prefect client sent once armed: requests by ``METHOD path status`` (ids
    elided), and the Retry-After of each 423."""

    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    retry_after: list[float] = field(default_factory=list)

    def add(self, other: Http) -> None:
        self.requests.update(other.requests)
        self.retry_after.extend(other.retry_after)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if abs(seconds) < 0.1 else f"{seconds * 1e3:.0f} ms"


# -- Prefect, in the driver ---------------------------------------------------------------------------


def api_url() -> str:
    url = os.environ.get("PREFECT_API_URL", "")
    if not url:
        raise SystemExit("set PREFECT_API_URL, e.g. http://127.0.0.1:4299/api")
    return url.rstrip("/")


def server_get(path: str) -> object:
    with urllib.request.urlopen(api_url() + path, timeout=10) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def prefect_limit(tag: str, limit: int, decay: float = 0.0):
    """A fresh global concurrency limit for one scenario, deleted afterwards; yields its name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    name = f"gcl-bench-{tag}-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=limit, slot_decay_per_second=decay)
        )
    try:
        yield name
    finally:
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name(name)


# -- the multi-process runner (as in scripts/bench.py) -------------------------------------------------


class Gate:
    """The start barrier: wait for every process, then sleep until the moment the driver chose."""

    def __init__(self, barrier, go, start) -> None:
        self.barrier, self.go, self.start = barrier, go, start
        self.passed = False

    def __call__(self) -> float:
        self.barrier.wait(SETUP_TIMEOUT)
        if not self.go.wait(SETUP_TIMEOUT):
            raise RuntimeError("no start signal from the driver")
        self.passed = True
        start = self.start.value
        time.sleep(max(0.0, start - time.monotonic()))
        return start


def _worker_entry(index: int, fn, args: tuple, barrier, go, start, results) -> None:
    gate = Gate(barrier, go, start)
    try:
        http = watch_http()
        value = fn(gate, *args)
        results.put((index, True, (value, dict(http.requests), list(http.retry_after))))
    except BaseException:
        if not gate.passed:
            barrier.abort()
        results.put((index, False, traceback.format_exc()))


def run_workers(jobs: list[tuple], lead: float = 0.05) -> tuple[float, list, Http]:
    """Run ``fn(gate, *args)`` for each ``(fn, *args)`` in its own spawned process; return (start,
    results, the HTTP all workers sent after the start barrier)."""
    barrier, go, start = CTX.Barrier(len(jobs) + 1), CTX.Event(), CTX.Value("d", 0.0)
    results = CTX.Queue()
    procs = [
        CTX.Process(target=_worker_entry, args=(i, job[0], job[1:], barrier, go, start, results), daemon=True)
        for i, job in enumerate(jobs)
    ]
    out: list = [None] * len(jobs)
    http = Http()
    finished = False
    try:
        for proc in procs:
            proc.start()
        try:
            barrier.wait(SETUP_TIMEOUT)
        except Exception:
            _raise_worker_error(results, "a worker failed before the start barrier")
        start.value = time.monotonic() + lead
        go.set()
        deadline = time.monotonic() + RUN_TIMEOUT
        for _ in jobs:
            try:
                index, ok, value = results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"workers did not finish within {RUN_TIMEOUT:.0f} s of the start") from None
            if not ok:
                raise RuntimeError(f"worker {index} failed:\n{value}")
            out[index] = value[0]
            http.add(Http(collections.Counter(value[1]), value[2]))
        finished = True
        return start.value, out, http
    finally:
        _stop(procs, finished)


def _stop(procs: list, finished: bool) -> None:
    for proc in procs:
        proc.join(timeout=10 if finished else 0.1)
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


# -- worker bodies (run in the spawned processes) -------------------------------------------------------


UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
HTTP = Http()
ARMED = threading.Event()
HTTP_LOCK = threading.Lock()


def _note(request, response) -> None:
    if not ARMED.is_set():
        return
    what = f"{request.method} {UUID_RE.sub('{id}', request.url.path)} {response.status_code}"
    with HTTP_LOCK:
        HTTP.requests[what] += 1
        if response.status_code == 423:
            HTTP.retry_after.append(float(response.headers.get("Retry-After", "nan")))


def watch_http() -> Http:
    """Wrap httpx's ``send`` (sync and async clients) to note what Prefect sends once :func:`arm`
    is called (measurement only); imports Prefect's HTTP stack."""
    import httpx

    sync_send, async_send = httpx.Client.send, httpx.AsyncClient.send

    def send(self, request, **kwargs):
        response = sync_send(self, request, **kwargs)
        _note(request, response)
        return response

    async def asend(self, request, **kwargs):
        response = await async_send(self, request, **kwargs)
        _note(request, response)
        return response

    httpx.Client.send, httpx.AsyncClient.send = send, asend
    return HTTP


def arm(gate: Gate) -> float:
    """Pass the start barrier, then start noting HTTP."""
    start = gate()
    ARMED.set()
    return start


def w_latency(gate: Gate, name: str, warmup: int, iters: int) -> list[float]:
    """Uncontended acquire+release latencies, in seconds."""
    from prefect.concurrency.sync import concurrency

    for _ in range(warmup):
        with concurrency(name):
            pass
    arm(gate)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        with concurrency(name):
            pass
        times.append(time.perf_counter() - t0)
    return times


def w_utilization(gate: Gate, name: str, iters: int, hold: float) -> dict:
    from prefect.concurrency.sync import concurrency

    with concurrency(name):
        pass
    arm(gate)
    busy = 0.0
    for _ in range(iters):
        with concurrency(name):
            t0 = time.monotonic()
            time.sleep(hold)
            busy += time.monotonic() - t0
    return {"busy": busy, "end": time.monotonic()}


def w_loop(gate: Gate, name: str, hold: float, seconds: float) -> list[tuple[float, ...]]:
    """Loop acquire / hold / release on a limit of 1; (requested, acquired, leaving, released) per round."""
    from prefect.concurrency.sync import concurrency

    with concurrency(name):
        pass
    stop = arm(gate) + seconds
    rounds = []
    while time.monotonic() < stop:
        requested = time.monotonic()
        with concurrency(name):
            acquired = time.monotonic()
            time.sleep(hold)
            leaving = time.monotonic()
        rounds.append((requested, acquired, leaving, time.monotonic()))
    return rounds


def w_rate(gate: Gate, name: str, calls: int) -> list[float]:
    """*calls* rate-limited calls from the start barrier, with no warm-up call (the first call's cost
    counts); the moment each returned."""
    from prefect.concurrency.sync import rate_limit

    arm(gate)
    returned = []
    for _ in range(calls):
        rate_limit(name)
        returned.append(time.monotonic())
    return returned


# -- scenarios (run in the driver) ---------------------------------------------------------------------


def retry_note(http: Http) -> str:
    """The HTTP requests by status; the Retry-After of the 423s. (A 503 is the server's SQLITE_BUSY,
    which Prefect's HTTP client retries itself after an exponential back-off, 2 s at first.)"""
    statuses = collections.Counter()
    for what, count in http.requests.items():
        statuses[what.rsplit(" ", 1)[1]] += count
    by_status = ", ".join(f"{status} x{count}" for status, count in sorted(statuses.items()))
    note = f"HTTP after the start barrier by status: {by_status}"
    sleeps = http.retry_after
    if sleeps:
        note += (
            f"; 423 Retry-After median {ms(statistics.median(sleeps))} (min {ms(min(sleeps))}, max {ms(max(sleeps))})"
        )
    return note


def per_cycle(http: Http, cycles: int) -> str:
    """HTTP requests per acquire+release, by kind."""
    return ", ".join(f"{what} x{count / cycles:.2f}" for what, count in sorted(http.requests.items()))


def s1_uncontended(args: argparse.Namespace) -> Row:
    with prefect_limit("s1", 1) as name:
        _, [times], http = run_workers([(w_latency, name, args.latency_warmup, args.latency_iters)])
    times.sort()
    return Row(
        "1. uncontended acquire+release, median",
        ms(statistics.median(times)),
        f"{args.latency_iters} iterations after {args.latency_warmup} of warm-up; p10 {ms(percentile(times, 0.1))}, "
        f"p90 {ms(percentile(times, 0.9))}, min {ms(times[0])}, max {ms(times[-1])}; "
        f"HTTP per cycle: {per_cycle(http, len(times))}",
    )


def percentile(ordered: list[float], q: float) -> float:
    return ordered[int(q * (len(ordered) - 1))]


def s2_utilization(args: argparse.Namespace) -> Row:
    procs, limit, iters, hold = 6, 3, 20, 0.020
    with prefect_limit("s2", limit) as name:
        start, results, http = run_workers([(w_utilization, name, iters, hold)] * procs)
    wall = max(r["end"] for r in results) - start
    busy = sum(r["busy"] for r in results)
    return Row(
        f"2. utilization, {procs} procs, limit {limit}, {iters} x 20 ms holds each",
        f"{busy / (wall * limit):.3f}",
        f"busy slot-time / (wall x limit); wall {wall:.1f} s for {busy:.2f} s of holds; {retry_note(http)}",
    )


def handoffs(rounds: list[tuple[float, ...]]) -> list[tuple[float, float]]:
    """For consecutive holders A, B where B waited before A left: (B acquired - A's block ended;
    A's release call)."""
    ordered = sorted(rounds, key=lambda r: r[1])
    return [(b[1] - a[2], a[3] - a[2]) for a, b in itertools.pairwise(ordered) if b[0] < a[2]]


def s3_handoff(args: argparse.Namespace) -> list[Row]:
    rows = [handoff_row(args.handoff_seconds)]
    if rows[0].samples < ENOUGH_HANDOFFS:
        log(f"  only {rows[0].samples} hand-offs: again for {args.handoff_long:g} s")
        rows.append(handoff_row(args.handoff_long, f" (longer: {args.handoff_seconds:g} s gave too few)"))
    return rows


def handoff_row(seconds: float, why: str = "") -> Row:
    procs, hold = 4, 0.002
    with prefect_limit("s3", 1) as name:
        _, results, http = run_workers([(w_loop, name, hold, seconds)] * procs)
    rounds = [r for per_proc in results for r in per_proc]
    found = handoffs(rounds)
    label = f"3. hand-off as felt, limit 1, {procs} procs, 2 ms holds, {seconds:g} s{why}, median"
    if not found:
        return Row(label, "no hand-off seen", f"{len(rounds)} rounds; {retry_note(http)}")
    gaps = sorted(gap for gap, _ in found)
    release = statistics.median(r for _, r in found)
    return Row(
        label,
        f"{ms(statistics.median(gaps))} (p90 {ms(percentile(gaps, 0.9))}, n={len(gaps)})",
        f"B's block starts - A's block ends, for acquisitions that waited; median of A's release call "
        f"{ms(release)}; {len(rounds)} rounds in all; {retry_note(http)}",
        samples=len(gaps),
    )


def jain(counts: list[int]) -> float:
    return sum(counts) ** 2 / (len(counts) * sum(c * c for c in counts))


def s4_fairness(args: argparse.Namespace) -> list[Row]:
    rows = [fairness_row(args.fair_seconds)]
    if rows[0].samples < ENOUGH_ROUNDS:
        log(f"  only {rows[0].samples} rounds per process on average: again for {args.fair_long:g} s")
        rows.append(fairness_row(args.fair_long, f" (longer: {args.fair_seconds:g} s gave tiny counts)"))
    return rows


def fairness_row(seconds: float, why: str = "") -> Row:
    procs, hold = 8, 0.002
    with prefect_limit("s4", 1) as name:
        _, results, http = run_workers([(w_loop, name, hold, seconds)] * procs)
    counts = [len(rounds) for rounds in results]
    return Row(
        f"4. Jain fairness, {procs} procs, limit 1, 2 ms holds, {seconds:g} s{why}",
        f"{jain(counts):.4f} (counts {min(counts)}..{max(counts)})",
        f"per-process acquisition counts {sorted(counts)}; {retry_note(http)}",
        samples=int(statistics.mean(counts)),
    )


def excess_calls(times: list[float], burst: int, decay: float) -> int:
    """Calls beyond burst + decay x window in the worst window (0 when the promise holds)."""
    times = sorted(times)
    worst = 0
    for i, begin in enumerate(times):
        for j in range(i, len(times)):
            allowed = math.floor(burst + decay * (times[j] - begin + RETURN_LAG) + 1e-9)
            worst = max(worst, j - i + 1 - allowed)
    return worst


def s6_rate(args: argparse.Namespace) -> Row:
    procs, calls, burst, decay = 4, 10, 5, 20.0
    ideal = (procs * calls - burst) / decay
    with prefect_limit("s6", burst, decay) as name:
        start, results, http = run_workers([(w_rate, name, calls)] * procs)
    times = [t for returned in results for t in returned]
    wall = max(times) - start
    first = min(returned[0] - start for returned in results)
    error = abs(wall - ideal) / ideal
    paced = abs(wall - first - ideal) / ideal  # as bench.py: the fresh process's start-up taken out
    return Row(
        f"6. rate limit, {procs} procs x {calls} calls, burst {burst}, decay {decay:g}/s, ideal {ideal:.2f} s",
        f"{wall:.3f} s (error {error * 100:.2f} %, from the first grant {paced * 100:.2f} %, "
        f"excess {excess_calls(times, burst, decay)}, first call {ms(first)})",
        f"from the start barrier, no warm-up call (first call: the earliest first return of a fresh process); "
        f"excess: calls over burst + rate x (window + 5 ms) in the worst window; {retry_note(http)}",
    )


SCENARIOS = {1: s1_uncontended, 2: s2_utilization, 3: s3_handoff, 4: s4_fairness, 6: s6_rate}


# -- report ----------------------------------------------------------------------------------------------


def machine(load: tuple[float, float, float]) -> list[str]:
    from importlib.metadata import version

    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    server = "?"
    with contextlib.suppress(Exception):
        server = str(server_get("/version"))
    return [
        f"- machine: nproc {len(os.sched_getaffinity(0))}, {model}, {platform.system()} {platform.release()}, "
        f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        f"- Python {platform.python_version()}, prefect {version('prefect')} (client); server API {server} "
        f"at {api_url()}",
    ]


def table(rows: list[Row]) -> list[str]:
    head = ["scenario", "Prefect GCL", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([r.scenario, r.prefect, r.notes]) + " |" for r in rows]
    return lines


def run_scenario(number: int, args: argparse.Namespace) -> tuple[list[Row], bool]:
    log(f"scenario {number} ...")
    t0 = time.monotonic()
    try:
        found, ok = SCENARIOS[number](args), True
        rows = found if isinstance(found, list) else [found]
    except Exception as exc:
        log(traceback.format_exc())
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        rows, ok = [Row(f"{number}. {SCENARIOS[number].__name__}", f"error: {first}")], False
    log(f"scenario {number}: {time.monotonic() - t0:.1f} s")
    return rows, ok


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated scenario numbers out of 1,2,3,4,6")
    parser.add_argument("--latency-iters", type=int, default=200, help="scenario 1's timed iterations")
    parser.add_argument("--latency-warmup", type=int, default=20, help="scenario 1's warm-up iterations")
    parser.add_argument("--handoff-seconds", type=float, default=2.0, help="scenario 3's duration")
    parser.add_argument("--handoff-long", type=float, default=20.0, help="scenario 3's duration when 2 s is too short")
    parser.add_argument("--fair-seconds", type=float, default=4.0, help="scenario 4's duration")
    parser.add_argument("--fair-long", type=float, default=30.0, help="scenario 4's duration when 4 s is too short")
    args = parser.parse_args()
    try:
        args.chosen = [int(n) for n in args.only.split(",") if n.strip()] or list(SCENARIOS)
    except ValueError:
        parser.error("--only takes scenario numbers, e.g. 1,6")
    if unknown := [n for n in args.chosen if n not in SCENARIOS]:
        parser.error(f"no scenario {unknown[0]} here (there are {', '.join(map(str, SCENARIOS))})")
    return args


def main() -> int:
    args = parse_args()
    if server_get("/health") is not True:
        raise SystemExit(f"no healthy Prefect server at {api_url()}")
    began, load = time.monotonic(), os.getloadavg()
    results = [run_scenario(number, args) for number in args.chosen]
    print("\n".join(machine(load)))
    print()
    print("\n".join(table([row for rows, _ in results for row in rows])))
    print()
    print(f"Run took {time.monotonic() - began:.0f} s.")
    return 0 if all(ok for _, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
