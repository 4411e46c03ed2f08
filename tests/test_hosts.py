"""Several hosts on one PostgreSQL server: contention, a partition, a dead host, a server restart, a
SIGKILLed process (issue 12, "Tests: a real server, real hosts, real faults").

Each host is a network namespace (tests/hosts.py) whose processes reach the server over TCP through a
link that a test can cut. Every process writes what happened to it as JSON lines with wall-clock
times (``time.time()``): all hosts are on this one machine, so they share one clock, and one side's
moment can be compared with another's.

The detection time is S = ``DETECT`` seconds (``gcl_detect_seconds=`` in the URL): a cut-off holder
must learn of its loss before the server frees its slots, and the slots must be free within about S.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for
from hosts import Hosts

from gcl_local import create_limit, read_limit
from gcl_local._errors import EX_LEASE_LOST

DETECT = 5.0
"""S: small, to keep the file short (the least the backend accepts)."""
MARGIN = 3.0
"""What a loaded 2-core machine may add to S before a waiter on another host is admitted."""

# One process of a host. argv[1]: a JSON object with "mode", "url", "name" and what the mode needs.
#   hold: take the limit (raise_on_lease_renewal_failure), say "acquired", keep it until a line comes
#         on stdin; "lost" if LeaseRenewalError is raised in the block.
#   wait: take the limit (waiting in line), say "acquired", then keep it until a line on stdin
#         (or for "hold" seconds, if given).
#   loop: from "start_at" to "stop_at" (wall clock), take the limit again and again, keeping each
#         hold in a ledger under flock (a count of holders, independent of gcl_local) and in a log.
WORKER = r"""
import fcntl, json, os, select, sys, time
from gcl_local import LeaseRenewalError, concurrency

cfg = json.loads(sys.argv[1])
url, name, mode = cfg["url"], cfg["name"], cfg["mode"]
if os.environ.get("GCL_TEST_DEBUG"):  # gcl_local's debug log on stderr, with wall-clock times
    import logging
    logging.basicConfig(level=logging.DEBUG, format="%(created).3f %(threadName)s %(message)s")


def say(event, **fields):
    print(json.dumps({"event": event, "t": time.time(), "pid": os.getpid(), **fields}), flush=True)


def wait_for_line(seconds=None):
    # Short sleeps: an exception that the renewal thread injects lands between two of them.
    end = None if seconds is None else time.monotonic() + seconds
    while end is None or time.monotonic() < end:
        ready, _, _ = select.select([sys.stdin], [], [], 0.01)
        if ready:
            return sys.stdin.readline()
    return ""


def ledger(step, record=None):
    # The ledger: {"inside": holders now, "max": most ever, "holds": n}, under flock; the time is read
    # under the lock, so that two holds' times are ordered as their steps are.
    with open(cfg["ledger"] + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(cfg["ledger"]) as f:
                state = json.load(f)
        except FileNotFoundError:
            state = {"inside": 0, "max": 0, "holds": 0}
        now = time.time()
        state["inside"] += step
        state["max"] = max(state["max"], state["inside"])
        state["holds"] += step > 0
        with open(cfg["ledger"] + ".tmp", "w") as f:
            json.dump(state, f)
        os.replace(cfg["ledger"] + ".tmp", cfg["ledger"])
        if record is not None:
            record["end"] = now
            with open(cfg["log"], "a") as f:
                f.write(json.dumps(record) + "\n")
        return now


say("started")
if mode == "hold":
    try:
        with concurrency(name, db=url, raise_on_lease_renewal_failure=True) as lease:
            say("acquired", token=lease.token)
            try:
                wait_for_line()
            except LeaseRenewalError:
                say("lost")
                raise
            say("releasing")
        say("released")
    except BaseException as exc:
        say("raised", error=type(exc).__name__)
elif mode == "wait":
    with concurrency(name, db=url) as lease:
        say("acquired", token=lease.token)
        wait_for_line(cfg.get("hold"))
        say("releasing")
    say("released")
elif mode == "loop":
    while time.time() < cfg["start_at"]:
        time.sleep(0.005)
    holds = 0
    while time.time() < cfg["stop_at"]:
        with concurrency(name, db=url, timeout_seconds=60) as lease:
            start = ledger(+1)
            time.sleep(cfg["hold"])
            ledger(-1, {"host": cfg["host"], "pid": os.getpid(), "token": lease.token, "start": start})
        holds += 1
    say("done", holds=holds)
"""

# The command of `gcl run`: says when it starts (with its fencing token) and when SIGTERM stops it;
# ends when a line comes on its stdin (gcl run's, which it inherits).
COMMAND = r"""
import json, os, select, signal, sys, time


def say(event, **fields):
    print(json.dumps({"event": event, "t": time.time(), "pid": os.getpid(), **fields}), flush=True)


def stopped(signum, frame):
    say("terminated")
    sys.exit(143)


signal.signal(signal.SIGTERM, stopped)
say("acquired", token=int(os.environ["GCL_FENCING_TOKEN"]))
while not select.select([sys.stdin], [], [], 0.05)[0]:
    pass
sys.stdin.readline()
say("done")
"""


class Proc:
    """A process on a host whose stdout is JSON events (read by a thread, each with its arrival)."""

    def __init__(self, popen: subprocess.Popen[str], what: str) -> None:
        self.popen = popen
        self.what = what
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.ended_at: float | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "output", "line": line, "t": time.time()}
            self.events.put(event)
        self.popen.wait()
        self.ended_at = time.time()
        self.events.put({"event": "exit", "t": self.ended_at, "code": self.popen.returncode})

    def expect(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        """The first *event* this process says (waiting for it); fails on its exit or the timeout."""
        for seen in self.seen:
            if seen["event"] == event:
                return seen
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{self.what}: no {event!r} in {timeout} s; saw {self.seen}") from None
            self.seen.append(got)
            if got["event"] == event:
                return got
            if got["event"] == "exit":
                raise AssertionError(f"{self.what} ended before {event!r}: {self.seen} {self.stderr()}")

    def said(self, event: str) -> bool:
        """Whether it has said *event* by now (without waiting)."""
        while True:
            try:
                self.seen.append(self.events.get_nowait())
            except queue.Empty:
                return any(e["event"] == event for e in self.seen)

    def send(self, line: str = "go") -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def stderr(self) -> str:
        if self.popen.poll() is None or self.popen.stderr is None:
            return ""
        return self.popen.stderr.read()


def with_detect(url: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}gcl_detect_seconds={DETECT:g}"


@pytest.fixture
def two_hosts(hosts: Callable[..., Hosts]) -> Hosts:
    h = hosts(2)
    h.url = with_detect(h.url)
    h.local_url = with_detect(h.local_url)
    return h


def worker(h: Hosts, i: int, mode: str, name: str, **cfg: Any) -> Proc:
    config = {"mode": mode, "url": h.url, "name": name, **cfg}
    return Proc(h.python(i, WORKER, json.dumps(config)), f"{mode} {name} on host {i}")


def gcl_run(h: Hosts, i: int, name: str, *options: str, stderr: Any = subprocess.PIPE) -> Proc:
    argv = [sys.executable, "-m", "gcl_local", "--db", h.url, "run", *options, name]
    argv += ["--", sys.executable, "-c", COMMAND]
    return Proc(h.popen(i, argv, stderr=stderr), f"gcl run {' '.join(options)} {name} on host {i}")


def queued(h: Hosts, name: str, n: int = 1) -> None:
    """Wait until *n* processes wait in line on *name* (seen from the test process)."""
    wait_for(lambda: len(read_limit(name, db=h.local_url).waiters) >= n, 30, f"{n} waiter(s) on {name}")


def report(what: str, **seconds: float) -> None:
    """The timings of a test, in its output (`pytest -s`), for the record."""
    print(f"\n{what}: " + ", ".join(f"{k.replace('_', ' ')} {v:.2f} s" for k, v in seconds.items()))


# -- 1. contention ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_hosts_share_one_slot_in_turn(two_hosts: Hosts, tmp_path: Path) -> None:
    h = two_hosts
    create_limit("one", 1, db=h.local_url)
    ledger, log = tmp_path / "ledger.json", tmp_path / "holds.jsonl"
    start_at = time.time() + 3.0  # once every process has imported and connected
    stop_at = start_at + 4.0
    common = {"ledger": str(ledger), "log": str(log), "start_at": start_at, "stop_at": stop_at, "hold": 0.02}
    workers = [worker(h, i, "loop", "one", host=i, **common) for i in (0, 1) for _ in range(2)]
    done = [w.expect("done", 60) for w in workers]

    state = json.loads(ledger.read_text())
    holds = sorted((json.loads(line) for line in log.read_text().splitlines()), key=lambda r: r["start"])
    assert state["max"] == 1, state  # never two holders at once, by a count kept outside gcl_local
    assert state["inside"] == 0, state
    assert len(holds) == state["holds"] == sum(d["holds"] for d in done)
    for before, after in itertools.pairwise(holds):
        assert before["end"] <= after["start"], (before, after)  # no two holds overlap
        assert before["token"] < after["token"], (before, after)  # fencing tokens increase across hosts
    by_host = Counter(r["host"] for r in holds)
    by_pid = Counter(r["pid"] for r in holds)
    assert len(holds) >= 20, len(holds)
    assert set(by_host) == {0, 1}, by_host
    assert min(by_host.values()) >= 0.3 * len(holds), by_host
    assert len(by_pid) == 4, by_pid
    assert min(by_pid.values()) >= 0.5 * max(by_pid.values()), by_pid
    # FIFO: a process that gives the slot back queues behind those already waiting, so one host
    # never keeps it long while the other waits (a few turns in a row happen when the other host's
    # processes, starved of CPU on a loaded machine, have not asked again yet).
    longest, run = 1, 1
    for before, after in itertools.pairwise(holds):
        run = run + 1 if before["host"] == after["host"] else 1
        longest = max(longest, run)
    assert longest <= 8, longest
    gaps = sorted(after["start"] - before["end"] for before, after in itertools.pairwise(holds))
    report("contention", median_hand_off=gaps[len(gaps) // 2], longest_hand_off=gaps[-1])
    print(f"{len(holds)} holds; by host {dict(by_host)}, by process {sorted(by_pid.values())}; longest run {longest}")


# -- 2. partition ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_cut_off_holder_learns_of_its_loss_before_another_host_is_admitted(two_hosts: Hosts) -> None:
    """Host 0 holds three limits: in Python (raise_on_lease_renewal_failure), with `gcl run --strict`
    and with plain `gcl run`; host 1 waits on each. Host 0's link is cut."""
    h = two_hosts
    for name in ("py", "strict", "warn"):
        create_limit(name, 1, db=h.local_url)
    warn_err = Path(h.tmp) / "warn.err"
    with warn_err.open("w") as err:  # a file: read while the process runs
        holders = {
            "py": worker(h, 0, "hold", "py"),
            "strict": gcl_run(h, 0, "strict", "--strict"),
            "warn": gcl_run(h, 0, "warn", stderr=err),
        }
    held = {name: p.expect("acquired") for name, p in holders.items()}
    waiters = {name: worker(h, 1, "wait", name, hold=0.2) for name in holders}
    for name in waiters:
        queued(h, name)

    cut = time.time()
    h.cut(0)
    admitted = {name: w.expect("acquired", DETECT + 20) for name, w in waiters.items()}
    lost = {"py": holders["py"].expect("lost", 30), "strict": holders["strict"].expect("terminated", 30)}
    timings: dict[str, float] = {}
    for name, loss in lost.items():
        timings[f"{name}: loss noticed at"] = loss["t"] - cut
        timings[f"{name}: other host admitted at"] = admitted[name]["t"] - cut
    timings["warn: other host admitted at"] = admitted["warn"]["t"] - cut
    report("partition", **timings)
    for name, loss in lost.items():
        assert loss["t"] < admitted[name]["t"], (name, loss, admitted[name])  # the holder learns first
    for name, got in admitted.items():
        assert got["t"] - cut <= DETECT + MARGIN, (name, got["t"] - cut)
        assert got["token"] > held[name]["token"]  # the fencing token refuses the cut-off holder

    # The Python holder's block ends with LeaseRenewalError (not with the error of the release that
    # follows it on a cut link).
    left = holders["py"].expect("raised", 30)
    assert left["error"] == "LeaseRenewalError", holders["py"].seen
    # gcl run --strict stopped its command (SIGTERM) and exits 76.
    strict = holders["strict"].expect("exit", 30)
    assert strict["code"] == EX_LEASE_LOST, (strict, holders["strict"].stderr())
    # Without --strict, gcl run warns and its command runs on.
    wait_for(lambda: "renewal failed" in warn_err.read_text(), 30, "the warning of gcl run")
    warn = holders["warn"]
    assert warn.popen.poll() is None
    assert not warn.said("terminated")
    h.restore(0)
    warn.send()  # (the command reads gcl run's stdin)
    warn.expect("done", 30)
    assert warn.expect("exit", 30)["code"] == 0
    assert "slots are no longer reserved" in warn_err.read_text()
    report("partition, then", py_block_left_at=left["t"] - cut, gcl_run_strict_exited_at=strict["t"] - cut)


# -- 3. a dead host ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how", ["killed", "powered-off"])
def test_a_dead_hosts_slot_goes_to_another_host(two_hosts: Hosts, how: str) -> None:
    """killed: h.kill (every process SIGKILLed, then the namespace deleted; the kernel closes their
    sockets, so the server hears of it at once). powered-off: its link is cut first, so that no word
    leaves it: only the server's keepalives tell."""
    h = two_hosts
    for name in ("one", "one-run"):
        create_limit(name, 1, db=h.local_url)
    holder = worker(h, 0, "hold", "one")
    run = gcl_run(h, 0, "one-run", "--strict")
    held = holder.expect("acquired")
    run.expect("acquired")
    waiters = [worker(h, 1, "wait", name, hold=0.2) for name in ("one", "one-run")]
    queued(h, "one")
    queued(h, "one-run")

    dead = time.time()
    if how == "powered-off":
        h.cut(0)
    h.kill(0)
    admitted = [w.expect("acquired", DETECT + 20)["t"] - dead for w in waiters]
    report(f"host {how}", python_holders_slot_given_at=admitted[0], gcl_run_holders_slot_given_at=admitted[1])
    assert max(admitted) <= (1.5 if how == "killed" else DETECT + MARGIN), admitted
    assert waiters[0].expect("acquired")["token"] > held["token"]
    for w in waiters:
        assert w.expect("exit", 30)["code"] == 0


# -- 4. server restart ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_holders_and_waiters_live_through_a_server_restart(two_hosts: Hosts) -> None:
    """Host 0 holds "py" (Python, raise_on_lease_renewal_failure) and "run" (`gcl run --strict`); host 1
    waits on both, and host 0 waits on "py" behind host 1. The server restarts (immediate: a crash)."""
    h = two_hosts
    for name in ("py", "run"):
        create_limit(name, 1, db=h.local_url)
    holder, run = worker(h, 0, "hold", "py"), gcl_run(h, 0, "run", "--strict")
    holder.expect("acquired")
    run.expect("acquired")
    first, on_run = worker(h, 1, "wait", "py", hold=0.2), worker(h, 1, "wait", "run", hold=0.2)
    queued(h, "py")
    queued(h, "run")
    second = worker(h, 0, "wait", "py", hold=0.2)
    queued(h, "py", 2)

    restarted = time.time()
    h.restart_server()
    back = time.time()
    # Past the grace period (S from the first write on the new server), holders and waiters are as before.
    time.sleep(DETECT + 2.0)
    for p in (holder, run, first, second, on_run):
        assert p.popen.poll() is None, (p.what, p.seen, p.stderr())
        assert not p.said("acquired") or p in (holder, run), (p.what, p.seen)  # no waiter was let in
    assert not holder.said("lost")
    assert not run.said("terminated")
    after = {name: read_limit(name, db=h.local_url) for name in ("py", "run")}
    assert [len(after["py"].holders), len(after["py"].waiters)] == [1, 2], after["py"]
    assert [len(after["run"].holders), len(after["run"].waiters)] == [1, 1], after["run"]

    holder.send()
    released = holder.expect("released", 30)
    assert holder.expect("exit", 30)["code"] == 0
    assert not holder.said("lost") and not holder.said("raised"), holder.seen  # its block ended normally
    got_first = first.expect("acquired", 30)
    got_second = second.expect("acquired", 30)
    assert released["t"] < got_first["t"], (released, got_first)  # no over-admission
    assert first.expect("releasing")["t"] < got_second["t"]  # the order of the line was kept
    run.send()
    run.expect("done", 30)
    ran = run.expect("exit", 30)
    assert ran["code"] == 0, (ran, run.stderr())
    got_on_run = on_run.expect("acquired", 30)
    assert run.expect("done")["t"] < got_on_run["t"]
    report(
        "server restart",
        restart_took=back - restarted,
        python_holder_released_at=released["t"] - restarted,
        first_waiter_admitted_at=got_first["t"] - restarted,
        gcl_run_waiter_admitted_at=got_on_run["t"] - restarted,
    )


# -- 5. a SIGKILLed process -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sigkilled_process_frees_its_slot_for_another_host_at_once(two_hosts: Hosts) -> None:
    h = two_hosts
    create_limit("one", 1, db=h.local_url)
    holder = worker(h, 0, "hold", "one")
    holder.expect("acquired")
    waiter = worker(h, 1, "wait", "one", hold=0.2)
    queued(h, "one")
    killed = time.time()
    os.kill(holder.popen.pid, signal.SIGKILL)  # (`ip netns exec` runs the program in its own process)
    got = waiter.expect("acquired", 30)
    report("SIGKILL", other_host_admitted_at=got["t"] - killed)
    assert got["t"] - killed < 1.5  # well under S: its session ends with it; the waiter looks every 0.5 s


# -- 6. the README's examples, from two hosts ---------------------------------------------------------------

# A backup of the README's `gcl run nightly-db -- ./backup.sh`: notes when it starts and ends, and
# runs until the file $1 exists.
BACKUP = (
    'echo "$$ start $(date +%s.%N)" >> "$0"; while [ ! -e "$1" ]; do sleep 0.05; done; '
    'sleep 0.2; echo "$$ end $(date +%s.%N)" >> "$0"'
)

# The README's Python example, as a program on a host (`train` says what it was given).
TRAIN = r"""
import json, sys
from gcl_local import concurrency, rate_limit


def train(fencing_token):
    print(json.dumps({"event": "trained", "token": fencing_token}), flush=True)


with concurrency("gpu", occupy=2) as lease:   # waits first come, first served
    train(fencing_token=lease.token)

rate_limit("vendor-api")                      # before each request
print(json.dumps({"event": "done"}), flush=True)
"""


@pytest.mark.slow
def test_the_readmes_examples_work_across_two_hosts(two_hosts: Hosts, tmp_path: Path) -> None:
    """What the README shows a new user, with `export GCL_DB=postgresql://…` on two hosts, each with a
    host name of its own (a UTS namespace): limits made on one host bind the other; `inspect` names
    each holder's host; the Python example and `gcl apply` work there too."""
    h = two_hosts
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "GCL_DB": h.url}

    def named(i: int, argv: list[str]) -> list[str]:
        return ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', f"host{i}", *argv]

    def gcl(i: int, *args: str) -> subprocess.CompletedProcess[str]:
        result = h.run(i, named(i, [sys.executable, "-m", "gcl_local", *args]), env=env, timeout=120)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result

    gcl(0, "create", "nightly-db", "--limit", "2")
    gcl(0, "create", "vendor-api", "--rate", "300/min")
    gcl(1, "create", "gpu", "--limit", "2")

    log, go = tmp_path / "backups.log", tmp_path / "go"
    backups = [
        h.popen(
            i,
            named(
                i, [sys.executable, "-m", "gcl_local", "run", "nightly-db", "--", "sh", "-c", BACKUP, str(log), str(go)]
            ),
            env=env,
        )
        for i in (0, 1, 1, 0)
    ]
    wait_for(lambda: log.exists() and log.read_text().count("start") >= 2, 60, "two backups running")
    queued(h, "nightly-db", 2)
    shown = json.loads(gcl(1, "inspect", "nightly-db", "-o", "json").stdout)
    assert len(shown["holders"]) == 2, shown
    assert {holder["host"] for holder in shown["holders"]} <= {"host0", "host1"}, shown  # each its own host
    assert len(shown["waiters"]) == 2, shown
    ratelimited = gcl(1, "rate-limit", "vendor-api", "--", "echo", "called the vendor")
    assert ratelimited.stdout.strip() == "called the vendor"
    go.touch()
    for backup in backups:
        assert backup.wait(120) == 0, backup.stderr.read() if backup.stderr else ""

    # Never more than 2 backups at once, across the two hosts (their own times, in one log).
    moments = sorted(
        (float(t), +1 if what == "start" else -1)
        for _, what, t in (line.split() for line in log.read_text().splitlines())
    )
    running = peak = 0
    for _, step in moments:
        running += step
        peak = max(peak, running)
    assert peak == 2 and running == 0 and len(moments) == 8, moments

    train = Proc(h.popen(1, named(1, [sys.executable, "-c", TRAIN]), env=env), "the README's Python example on host 1")
    assert isinstance(train.expect("trained", 60)["token"], int)
    train.expect("done", 60)
    assert train.expect("exit", 30)["code"] == 0, train.stderr()

    limits = tmp_path / "limits.toml"
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    limits.write_text(readme.split("## Limits as code", 1)[1].split("```toml", 1)[1].split("```", 1)[0])
    gcl(1, "apply", str(limits))
    listed = {limit["name"]: limit for limit in json.loads(gcl(0, "ls", "-o", "json").stdout)}
    assert set(listed) == {"nightly-db", "vendor-api", "gpu", "render farm"}, listed
    assert listed["vendor-api"]["limit"] == 10 and not listed["render farm"]["active"], listed
