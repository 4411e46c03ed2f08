"""Chaos run for gcl_local: many processes fight over one limit while the driver SIGKILLs them.

Usage: .venv/bin/python scripts/stress.py [--workers 10] [--limit 3] [--seconds 20 | --minutes M]
                                          [--db PATH] [--seed S] [--json SUMMARY.json] [--keep] [-v]

Workers (restarted whenever they die) loop acquiring the limit (mostly 1 slot, sometimes 2 or all)
and hold it for 5-50 ms; they wait, time out, or try once:

  sync   ``with gcl_local.concurrency(...)``; SIGTERM raises in it, as Ctrl-C would
  async  ``async with gcl_local.asyncio.concurrency(...)``, two tasks per process; some
         acquisitions are cancelled from outside (as ``asyncio.timeout()`` would)
  cli    ``gcl run NAME -- python stress.py --role child``: the child command holds the slot

An independent ledger (outside gcl_local) counts the slots held: a JSON map {pid: slots} in the
work directory, replaced only under ``flock`` on a separate lock file. Whoever holds a slot adds
its slots on entering its block (and checks the new total <= limit: else an over-admission) and
takes them off on leaving. The driver kills (at least once a second) a random victim: a holder, a
waiter, a ``gcl run`` wrapper whose child runs, or a ``gcl run`` child. It takes the ledger lock,
SIGKILLs the victim while still holding it, waits until the victim is dead, takes the victim's own
entry off the ledger and only then unlocks. gcl_local frees the victim's slot only once the victim
is dead, so a new holder can enter the ledger only after the entry is gone: "total <= limit" stays
an exact test. For ``gcl run`` the entry belongs to the child command (the process that holds the
slot); a killed wrapper leaves its child running, counted, and holding the slot. The driver is a
child subreaper: orphaned children are reaped too.

Twice a second the driver also audits the state file read-only under the ledger lock: the leases
on the limit never hold more than the limit; every ledger holder still has its lease (no lease
lost); no live process keeps a lease it does not use (a leaked lease); no dead holder's lease or
dead waiter's ticket stays while others wait; no waiter waits for ever; acquisitions go on.

At the end: SIGTERM to every worker, wait (never for ever: stragglers get their stacks dumped and
are killed), ``list_limits`` once (gcl_local reaps and sweeps), then check: 0 over-admissions,
ledger back to 0, no async task entered its block after it was cancelled, no async worker kept a
lease after all its tasks ended, ``PRAGMA integrity_check`` ok, the limit's occupancy 0 with no
holders or waiters, no lease or ticket rows, no token or pipe files left in ``<db>-run/``, no
worker died of an error. Prints a summary; exits 0 when every check passed, 1 otherwise.

Self-test of the harness: ``--limit 2 --gcl-limit 3`` gives gcl_local one slot more than the ledger
allows; the run must then fail with over-admissions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import json
import os
import random
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
KINDS = ("sync", "async", "cli")
EX_TEMPFAIL = 75
LEDGER_TIMEOUT = 10.0
"""The driver gives up on the ledger lock after this long (a worker stuck holding it)."""
DEATH_TIMEOUT = 5.0
"""A SIGKILLed victim must be dead within this long."""
MAX_LOG = 20
CATEGORIES = {"holder": 0.35, "waiter": 0.3, "wrapper": 0.2, "child": 0.15}
"""Kill victims, by weight: a ledger holder; a waiting worker (or one between acquisitions); a `gcl run`
wrapper whose child command runs; a `gcl run` child not in the ledger (starting up, or done)."""


# -- the ledger ------------------------------------------------------------------------------------


class LedgerStuckError(RuntimeError):
    pass


class LedgerTx:
    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.dirty = False


class Ledger:
    """Slots held, by pid, in a JSON file replaced atomically under an flock on a separate lock file."""

    def __init__(self, work: Path, db: str | None = None) -> None:
        self.run_dir = f"{Path(db).absolute()}-run" if db else None
        self._gcl_token: str | None = None
        self.lock_path = work / "ledger.lock"
        self.data_path = work / "ledger.json"
        self.tmp_path = work / "ledger.json.tmp"

    def init(self, limit: int) -> None:
        state = {
            "limit": limit,
            "holders": {},
            "acquisitions": dict.fromkeys(KINDS, 0),
            "timeouts": dict.fromkeys(KINDS, 0),
            "cancelled": 0,
            "swallowed": 0,
            "leaked": 0,
            "max_seen": 0,
            "violations": 0,
            "duplicate_tokens": 0,
            "log": [],
        }
        self.lock_path.touch()
        self._write(state)

    def _write(self, state: dict[str, Any]) -> None:
        data = json.dumps(state, separators=(",", ":")).encode()
        fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(self.tmp_path, self.data_path)

    @contextlib.contextmanager
    def locked(self, timeout: float | None = None) -> Iterator[LedgerTx]:
        """The ledger, locked; written back on a clean exit if ``tx.dirty``."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CLOEXEC)
        try:
            if timeout is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise LedgerStuckError(f"ledger lock not had in {timeout:g} s") from None
                        time.sleep(0.0005)
            with open(self.data_path, "rb") as f:
                tx = LedgerTx(json.loads(f.read()))
            yield tx
            if tx.dirty:
                self._write(tx.state)
        finally:
            os.close(fd)

    def enter(self, kind: str, slots: int, token: int | None) -> None:
        """Called by a holder on entering its block."""
        pid = os.getpid()
        with self.locked() as tx:
            st = tx.state
            entry = st["holders"].setdefault(
                str(pid),
                {"n": 0, "start": start_time(pid), "kind": kind, "ppid": os.getppid(), "gcl": self.gcl_token(),
                 "tokens": []},
            )  # fmt: skip
            entry["n"] += slots
            total = sum(e["n"] for e in st["holders"].values())
            st["acquisitions"][kind] += 1
            st["max_seen"] = max(st["max_seen"], total)
            if total > st["limit"]:
                st["violations"] += 1
                _note(st, f"OVER-ADMISSION: {total} slots held > limit {st['limit']}: {_holders_text(st)}")
            if token is not None:
                if any(token in e["tokens"] for e in st["holders"].values()):
                    st["duplicate_tokens"] += 1
                    _note(st, f"DUPLICATE fencing token {token} (pid {pid}): {_holders_text(st)}")
                entry["tokens"].append(token)
            tx.dirty = True

    def gcl_token(self) -> str | None:
        """The name of the gcl_local liveness token this process holds (a ``gcl run`` child inherited its wrapper's)."""
        if self._gcl_token is None and self.run_dir is not None:
            with contextlib.suppress(OSError):
                for fd in os.listdir("/proc/self/fd"):
                    with contextlib.suppress(OSError):
                        target = os.readlink(f"/proc/self/fd/{fd}")
                        if os.path.dirname(target) == self.run_dir and target.endswith(".lock"):
                            self._gcl_token = os.path.basename(target)[: -len(".lock")]
                            break
        return self._gcl_token

    def leave(self, slots: int, token: int | None) -> None:
        """Called by a holder on leaving its block."""
        pid = str(os.getpid())
        with self.locked() as tx:
            st = tx.state
            entry = st["holders"].get(pid)
            if entry is None or entry["n"] < slots:
                _note(st, f"pid {pid} left the ledger with {slots} slots but had entered {entry}")
                st["violations"] += 1
            else:
                entry["n"] -= slots
                if token is not None and token in entry["tokens"]:
                    entry["tokens"].remove(token)
                if entry["n"] == 0:
                    del st["holders"][pid]
            tx.dirty = True

    def count(self, key: str, kind: str | None = None) -> None:
        with self.locked() as tx:
            if kind is None:
                tx.state[key] += 1
            else:
                tx.state[key][kind] += 1
            tx.dirty = True

    def read(self) -> dict[str, Any]:
        with self.locked(LEDGER_TIMEOUT) as tx:
            return tx.state


def _note(st: dict[str, Any], text: str) -> None:
    if len(st["log"]) < MAX_LOG:
        st["log"].append(f"{time.strftime('%H:%M:%S')} {text}")


def _holders_text(st: dict[str, Any]) -> str:
    return ", ".join(f"{pid}({e['kind']}:{e['n']})" for pid, e in st["holders"].items())


# -- processes ---------------------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].split()


def start_time(pid: int) -> int | None:
    fields = _proc_stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def proc_state(pid: int) -> str | None:
    """'R', 'S', 'Z', ... or None when there is no such process."""
    fields = _proc_stat(pid)
    return fields[0].decode() if fields else None


def process_table() -> dict[int, tuple[int, str, int | None]]:
    """{pid: (ppid, state, start time)} of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _proc_stat(int(entry))
            if fields and len(fields) > 19:
                table[int(entry)] = (int(fields[1]), fields[0].decode(), int(fields[19]))
    return table


def children_of(ppid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _proc_stat(int(entry))
            if fields and len(fields) > 2 and int(fields[1]) == ppid:
                found.append(int(entry))
    return found


def become_subreaper() -> bool:
    """Adopt orphaned descendants (a ``gcl run`` child whose wrapper was killed), so we reap them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def kill_and_wait(pid: int, expected_start: int | None, timeout: float = DEATH_TIMEOUT) -> str:
    """SIGKILL *pid* if it still is the process that started at *expected_start*; wait until it is dead.

    Returns "killed", "gone" (no such process, or a zombie already), or "alive" (did not die in time).
    """
    pidfd = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return "gone"
        except OSError:
            pidfd = None
    try:
        now_start = start_time(pid)  # checked after pidfd_open: the pidfd names this very process
        if now_start is None or (expected_start is not None and now_start != expected_start):
            return "gone"
        if proc_state(pid) == "Z":
            return "gone"
        try:
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return "gone"
        deadline = time.monotonic() + timeout
        if pidfd is not None:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            if poller.poll(timeout * 1000):
                return "killed"
            return "alive"
        while time.monotonic() < deadline:
            if proc_state(pid) in (None, "Z") or start_time(pid) != now_start:
                return "killed"
            time.sleep(0.001)
        return "alive"
    finally:
        if pidfd is not None:
            os.close(pidfd)


def flocked_inodes() -> set[tuple[int, int, int]]:
    """(major, minor, inode) of every file with an flock held now, from /proc/locks (no lock is tried)."""
    found = set()
    try:
        with open("/proc/locks") as f:
            lines = f.readlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or parts[1] == "->" or parts[1] != "FLOCK":
            continue
        try:
            major, minor, inode = parts[5].split(":")
            found.add((int(major, 16), int(minor, 16), int(inode)))
        except ValueError:
            continue
    return found


# -- workers -----------------------------------------------------------------------------------------


class StopError(BaseException):
    """Raised by the SIGTERM handler: leave cleanly (like KeyboardInterrupt)."""


_critical = {"depth": 0, "pending": False}


def _on_sigterm(_signum: int, _frame: Any) -> None:
    if _critical["depth"]:
        _critical["pending"] = True  # never between a ledger change and its write
        return
    raise StopError


@contextlib.contextmanager
def critical() -> Iterator[None]:
    _critical["depth"] += 1
    try:
        yield
    finally:
        _critical["depth"] -= 1
    if not _critical["depth"] and _critical["pending"]:
        raise StopError


@dataclass
class Plan:
    occupy: int
    timeout: float | None
    hold: float
    outer: float | None = None


def plan(rng: random.Random, args: argparse.Namespace, *, cancellable: bool = False) -> Plan:
    r = rng.random()
    occupy = args.limit if r < 0.05 else min(2, args.limit) if r < 0.2 else 1
    occupy = max(1, occupy)
    r = rng.random()
    timeout = None if r < 0.65 else 0.0 if r < 0.8 else rng.uniform(0.01, 0.5)
    hold = rng.uniform(args.hold_min, args.hold_max) / 1000
    outer = rng.uniform(0.005, 0.3) if cancellable and rng.random() < args.async_cancel_rate else None
    return Plan(occupy, timeout, hold, outer)


def run_sync_worker(args: argparse.Namespace) -> int:
    from gcl_local import AcquireConcurrencySlotTimeoutError, concurrency

    signal.signal(signal.SIGTERM, _on_sigterm)
    ledger = Ledger(Path(args.work), args.db)
    rng = random.Random(args.seed)
    try:
        while True:
            p = plan(rng, args)
            try:
                with concurrency(args.name, occupy=p.occupy, timeout_seconds=p.timeout, db=args.db) as lease:
                    entered = False
                    try:
                        with critical():
                            ledger.enter("sync", p.occupy, lease.token)
                            entered = True
                        time.sleep(p.hold)
                    finally:
                        if entered:
                            with critical():
                                ledger.leave(p.occupy, lease.token)
            except AcquireConcurrencySlotTimeoutError:
                with critical():
                    ledger.count("timeouts", "sync")
            time.sleep(rng.uniform(0, 0.005))
    except StopError:
        return 0


def run_async_worker(args: argparse.Namespace) -> int:
    return asyncio.run(_async_main(args))


async def _async_main(args: argparse.Namespace) -> int:
    from gcl_local import AcquireConcurrencySlotTimeoutError
    from gcl_local.asyncio import concurrency

    ledger = Ledger(Path(args.work), args.db)
    stopping = False

    async def one(p: Plan, cancelled: list[bool]) -> None:
        async with concurrency(args.name, occupy=p.occupy, timeout_seconds=p.timeout, db=args.db) as lease:
            if cancelled[0] or stopping:
                # This task was cancelled before it got here: gcl_local lost the cancellation.
                ledger.count("swallowed")
            ledger.enter("async", p.occupy, lease.token)  # synchronous: a cancellation cannot split it
            try:
                await asyncio.sleep(p.hold)
            finally:
                ledger.leave(p.occupy, lease.token)

    async def loop(index: int) -> None:
        rng = random.Random(args.seed * 101 + index)
        running = asyncio.get_running_loop()
        while not stopping:
            p = plan(rng, args, cancellable=True)
            cancelled = [False]
            try:
                if p.outer is None:
                    await one(p, cancelled)
                    continue
                # Cancelled from outside after p.outer seconds (as asyncio.timeout() would), without
                # asyncio.wait_for: on Python < 3.12 it may itself swallow a cancellation.
                inner = asyncio.ensure_future(one(p, cancelled))

                def expire(inner: asyncio.Future[None] = inner, cancelled: list[bool] = cancelled) -> None:
                    cancelled[0] = True
                    inner.cancel()

                timer = running.call_later(p.outer, expire)
                try:
                    await inner
                except asyncio.CancelledError:
                    if stopping or not inner.cancelled():
                        raise
                    ledger.count("cancelled")
                finally:
                    timer.cancel()
            except AcquireConcurrencySlotTimeoutError:
                ledger.count("timeouts", "async")
            await asyncio.sleep(rng.uniform(0, 0.005))

    def stop() -> None:
        nonlocal stopping
        stopping = True
        for task in tasks:
            task.cancel()

    def dump_tasks() -> None:
        for task in asyncio.all_tasks():
            print(f"{task!r}:", file=sys.stderr)
            print(await_chain(task.get_coro()), file=sys.stderr)
        timers = sorted(getattr(running, "_scheduled", []), key=lambda h: h.when())
        print(
            f"loop time {running.time():.3f}; timers: {[(round(h.when(), 3), h) for h in timers[:5]]}", file=sys.stderr
        )
        sys.stderr.flush()

    tasks = [asyncio.create_task(loop(i)) for i in range(args.tasks)]
    running = asyncio.get_running_loop()
    running.add_signal_handler(signal.SIGTERM, stop)
    running.add_signal_handler(signal.SIGUSR2, dump_tasks)  # the driver asks for the tasks of a hung worker
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
    for error in errors:
        traceback.print_exception(type(error), error, error.__traceback__)
    # Every task has ended: once the releases still in flight are done, this process must hold nothing.
    deadline = time.monotonic() + 5.0
    while len(asyncio.all_tasks()) > 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    from gcl_local import read_limit

    kept = [h for h in read_limit(args.name, db=args.db).holders if h.pid == os.getpid()]
    if kept:
        print(f"leases kept after every task ended: {[h.id for h in kept]}", file=sys.stderr)
        ledger.count("leaked")
    return 1 if errors else 0


def await_chain(obj: Any) -> str:
    """Where a coroutine waits, frame by frame, through awaited coroutines and async generators."""
    lines = []
    for _ in range(40):
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "ag_frame", None) or getattr(obj, "gi_frame", None)
        if frame is not None:
            lines.append(f"    {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        nxt = getattr(obj, "cr_await", None) or getattr(obj, "ag_await", None) or getattr(obj, "gi_yieldfrom", None)
        if nxt is None and frame is not None:
            nxt = getattr(frame.f_locals.get("self"), "gen", None)  # an @asynccontextmanager's generator
        if nxt is None or nxt is obj:
            lines.append(f"    waiting on {obj!r}")
            break
        obj = nxt
    return "\n".join(lines)


def run_child(args: argparse.Namespace) -> int:
    """The command under ``gcl run``: it holds the slot. SIGTERM (forwarded at the end) is ignored:
    the hold is short and ends by itself."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ledger = Ledger(Path(args.work), args.db)
    ledger.enter("cli", args.occupy, None)
    try:
        time.sleep(args.hold)
    finally:
        ledger.leave(args.occupy, None)
    return 0


# -- the driver --------------------------------------------------------------------------------------


@dataclass
class Proc:
    pid: int
    slot: int
    kind: str
    start: int | None
    log: Path
    spawned: float


@dataclass
class Stats:
    spawned: Counter[str] = field(default_factory=Counter)
    kills: Counter[str] = field(default_factory=Counter)
    kill_misses: int = 0
    exits: Counter[str] = field(default_factory=Counter)
    orphans_reaped: int = 0
    audits: int = 0
    max_leases: int = 0
    max_tickets: int = 0
    forced_at_stop: int = 0


class Driver:
    def __init__(self, args: argparse.Namespace, work: Path, db: Path) -> None:
        self.args = args
        self.work = work
        self.db = db
        self.ledger = Ledger(work)
        self.rng = random.Random(args.seed)
        self.stats = Stats()
        self.failures: list[str] = []
        self.procs: dict[int, Proc] = {}
        self.slots: dict[int, int | None] = {}
        self.killed: set[int] = set()
        self.killed_child_parents: set[int] = set()
        self.stopping = False
        self.spawn_count = 0
        self.gcl = Path(sys.executable).parent / "gcl"
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = str(REPO) + os.pathsep + self.env.get("PYTHONPATH", "")
        self.env.pop("GCL_DB", None)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.unaccounted_since: dict[str, float] = {}
        self.dead_since: dict[str, float] = {}
        self.dead_ticket_since: dict[int, float] = {}
        self.reported: set[str] = set()
        self.last_acquisitions = -1
        self.last_progress = time.monotonic()

    def fail(self, text: str) -> None:
        if len(self.failures) < 50:
            self.failures.append(text)
        if self.args.verbose or len(self.failures) <= 10:
            print(f"  FAIL: {text}", file=sys.stderr, flush=True)

    def say(self, text: str) -> None:
        if self.args.verbose:
            print(f"  {text}", file=sys.stderr, flush=True)

    # -- spawning and reaping ----------------------------------------------------------------------

    def kind_of(self, slot: int) -> str:
        kinds = self.args.kinds
        return kinds[slot % len(kinds)]

    def spawn(self, slot: int) -> None:
        kind = self.kind_of(slot)
        self.spawn_count += 1
        seed = self.args.seed * 1_000_003 + self.spawn_count
        common = ["--work", str(self.work), "--limit", str(self.args.limit), "--seed", str(seed), "--db", str(self.db)]
        holds = ["--hold-ms", f"{self.args.hold_min},{self.args.hold_max}"]
        if kind in ("sync", "async"):
            argv = [sys.executable, str(SCRIPT), "--role", kind, "--name", self.args.name]
            argv += [
                *common,
                *holds,
                "--tasks",
                str(self.args.tasks),
                "--async-cancel-rate",
                str(self.args.async_cancel_rate),
            ]
        else:
            argv = self.cli_argv(common)
        log = self.work / f"worker-{slot}-{kind}.log"
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        pid = os.posix_spawn(argv[0], argv, self.env, file_actions=actions, setpgroup=0)
        self.procs[pid] = Proc(pid, slot, kind, start_time(pid), log, time.monotonic())
        self.slots[slot] = pid
        self.stats.spawned[kind] += 1

    def cli_argv(self, common: list[str]) -> list[str]:
        rng, args = self.rng, self.args
        p = plan(rng, args)
        use_script = self.gcl.exists() and rng.random() < 0.85  # else `python -m gcl_local`
        head = [str(self.gcl)] if use_script else [sys.executable, "-m", "gcl_local"]
        opts = ["--occupy", str(p.occupy)] if p.occupy != 1 or rng.random() < 0.5 else []
        r = rng.random()
        if r < 0.15:
            opts.append("-n")
        elif r < 0.3:
            opts += ["--timeout", f"{rng.uniform(0.05, 1.0):.3f}"]
        child = [sys.executable, str(SCRIPT), "--role", "child", *common]
        child += ["--occupy", str(p.occupy), "--hold", f"{p.hold:.4f}"]
        return [*head, "--db", str(self.db), "run", args.name, *opts, "--", *child]

    def reap(self) -> bool:
        """Reap every exited child; False when there are no children at all."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            self.exited(pid, os.waitstatus_to_exitcode(status))

    def exited(self, pid: int, code: int) -> None:
        proc = self.procs.pop(pid, None)
        killed = pid in self.killed
        self.killed.discard(pid)
        if proc is None:  # an orphaned `gcl run` child, adopted by us
            self.stats.orphans_reaped += 1
            if code not in (0, -9 if killed else 0):
                self.fail(f"orphaned gcl run child {pid} exited with {code}")
            return
        self.stats.exits[f"{proc.kind}:{code}"] += 1
        expected = {-9} if killed else set()
        if proc.kind == "cli":
            expected |= {0, EX_TEMPFAIL}
            if pid in self.killed_child_parents:
                expected.add(128 + 9)
        if self.stopping:
            expected |= {0, -15, 128 + 15}
        if code not in expected:
            self.fail(f"{proc.kind} worker {pid} exited with {code} (log {proc.log}):\n{tail(proc.log)}")
        self.killed_child_parents.discard(pid)
        if self.slots.get(proc.slot) == pid:
            self.slots[proc.slot] = None
            if not self.stopping:
                self.spawn(proc.slot)

    # -- killing -----------------------------------------------------------------------------------

    def kill_one(self) -> None:
        """SIGKILL one random victim under the ledger lock, and take its ledger entry off before unlocking."""
        with self.ledger.locked(LEDGER_TIMEOUT) as tx:
            holders = {int(pid): e for pid, e in tx.state["holders"].items()}
            table = process_table()
            me = os.getpid()
            live = {pid: p for pid, p in self.procs.items() if pid in table and table[pid][1] != "Z"}
            # (pid, what, kind, start) by category
            choices: dict[str, list[tuple[int, str, str, int | None]]] = {k: [] for k in CATEGORIES}
            for pid, e in holders.items():
                choices["holder"].append((pid, "child" if e["kind"] == "cli" else e["kind"], e["kind"], e["start"]))
            parents = {pid for pid, p in live.items() if p.kind == "cli"} | {me}
            with_child = set()
            for pid, (ppid, state, start) in table.items():
                if ppid in parents and state != "Z" and pid not in self.procs:
                    with_child.add(ppid)  # a `gcl run` child (or an orphaned one, now ours)
                    if pid not in holders:
                        choices["child"].append((pid, "child", "cli", start))
            for pid, p in live.items():
                if pid in with_child:
                    choices["wrapper"].append((pid, "wrapper", "cli", p.start))
                elif pid not in holders:
                    choices["waiter"].append((pid, "wrapper" if p.kind == "cli" else p.kind, p.kind, p.start))
            categories = [c for c in CATEGORIES if choices[c]]
            if not categories:
                return
            category = self.rng.choices(categories, [CATEGORIES[c] for c in categories])[0]
            by_kind: dict[str, list[tuple[int, str, str, int | None]]] = {}
            for victim in choices[category]:
                by_kind.setdefault(victim[2], []).append(victim)  # balanced across kinds
            pid, what, kind, expected_start = self.rng.choice(by_kind[self.rng.choice(sorted(by_kind))])
            parent = table.get(pid, (0, "", None))[0]
            result = kill_and_wait(pid, expected_start)
            if result == "alive":
                self.fail(f"{what} {pid} did not die within {DEATH_TIMEOUT:g} s of SIGKILL")
            if result == "gone":
                self.stats.kill_misses += 1
                if pid in holders:
                    self.fail(f"ledger holder {pid} ({kind}) was gone without leaving the ledger")
            else:
                self.stats.kills[f"{category}:{what}"] += 1
                self.killed.add(pid)
                if what == "child" and parent in self.procs:
                    self.killed_child_parents.add(parent)
            if str(pid) in tx.state["holders"]:
                del tx.state["holders"][str(pid)]
                tx.dirty = True
            self.say(f"kill {category} {what} {pid}: {result}")

    # -- auditing ----------------------------------------------------------------------------------

    def audit(self) -> None:
        from gcl_local import _sql
        from gcl_local._store import get_store

        store = get_store(str(self.db))
        run_dir = Path(store.run_dir)
        with self.ledger.locked(LEDGER_TIMEOUT) as tx:
            st = tx.state
            with store.read() as rtx:
                leases = _sql.leases_on(rtx.conn, self.args.name)
                tickets = _sql.waiting_on(rtx.conn, self.args.name)
                wall = rtx.now.wall
            # Liveness is judged now, while nobody can enter or leave the ledger: from /proc/locks,
            # without trying the tokens' locks (a try would make a dead token look alive to gcl_local).
            flocked = flocked_inodes()
            liveness: dict[str, bool | None] = {}
            for token in {x.holder_token for x in leases} | {t.holder_token for t in tickets}:
                if token is not None:
                    try:
                        s = os.stat(run_dir / f"{token}.lock")
                        liveness[token] = (os.major(s.st_dev), os.minor(s.st_dev), s.st_ino) in flocked
                    except OSError:
                        liveness[token] = None
        now = time.monotonic()
        self.stats.audits += 1
        self.stats.max_leases = max(self.stats.max_leases, len(leases))
        self.stats.max_tickets = max(self.stats.max_tickets, len(tickets))
        acquisitions = sum(st["acquisitions"].values())
        if acquisitions != self.last_acquisitions:
            self.last_acquisitions, self.last_progress = acquisitions, now
        elif now - self.last_progress > self.args.stall_seconds:
            self.fail_once("stall", f"no acquisition for {now - self.last_progress:.1f} s\n{self.dump()}")

        def alive(token: str | None) -> bool | None:
            return None if token is None else liveness.get(token)

        held = sum(lease.slots for lease in leases)
        if held > self.args.limit:
            self.fail(f"gcl_local holds {held} slots on {self.args.name!r} > limit {self.args.limit}: {leases}")
        # Slots by liveness token: a `gcl run` child holds its wrapper's token (and the lease may still
        # name the wrapper's pid if the wrapper died before naming the child).
        ledger_slots: Counter[str] = Counter()
        for pid, e in st["holders"].items():
            if e.get("gcl") is None:
                self.fail_once(f"notoken:{pid}", f"ledger holder {pid} ({e['kind']}) holds no gcl_local token")
            ledger_slots[e.get("gcl") or f"pid:{pid}"] += e["n"]
        lease_slots: Counter[str] = Counter()
        for lease in leases:
            if alive(lease.holder_token) and lease.holder_token is not None:
                lease_slots[lease.holder_token] += lease.slots
        for token, n in ledger_slots.items():
            if lease_slots[token] < n:
                rows = "\n".join(
                    f"      lease {x.id} pid {x.pid} slots {x.slots} token {x.holder_token} "
                    f"alive {alive(x.holder_token)}"
                    for x in leases
                )
                self.fail(
                    f"LOST LEASE: token {token} holds {n} slots in the ledger, gcl_local has {lease_slots[token]}; "
                    f"ledger: {st['holders']}; leases:\n{rows}\n      run dir: {sorted(os.listdir(run_dir))}"
                )
        seen_unaccounted, seen_dead = set(), set()
        for lease in leases:
            state = alive(lease.holder_token)
            if state and lease_slots[lease.holder_token or ""] > ledger_slots[lease.holder_token or ""]:
                seen_unaccounted.add(lease.id)
                first = self.unaccounted_since.setdefault(lease.id, now)
                if now - first > self.args.leak_seconds:
                    self.fail_once(
                        f"leak:{lease.id}",
                        f"LEAKED LEASE {lease.id}: held by live pid {lease.pid} ({lease.label}) for "
                        f"{now - first:.1f} s without being in use (age {wall - lease.acquired_wall:.1f} s)",
                    )
            elif not state:
                seen_dead.add(lease.id)
                first = self.dead_since.setdefault(lease.id, now)
                if tickets and now - first > self.args.leak_seconds:
                    self.fail_once(
                        f"dead:{lease.id}",
                        f"dead holder's lease {lease.id} (pid {lease.pid}, token {lease.holder_token}, "
                        f"{'missing' if state is None else 'dead'}) kept {now - first:.1f} s while "
                        f"{len(tickets)} wait",
                    )
        self.unaccounted_since = {k: v for k, v in self.unaccounted_since.items() if k in seen_unaccounted}
        self.dead_since = {k: v for k, v in self.dead_since.items() if k in seen_dead}
        seen_tickets = set()
        starved = []
        at_head = True  # dead tickets matter where they stand before every live one (the head of the queue)
        for ticket in tickets:
            if alive(ticket.holder_token) is not True:
                if not at_head:
                    continue
                seen_tickets.add(ticket.ticket)
                first = self.dead_ticket_since.setdefault(ticket.ticket, now)
                if now - first > self.args.leak_seconds:
                    self.fail_once(
                        f"deadticket:{ticket.ticket}",
                        f"dead waiter's ticket {ticket.ticket} (pid {ticket.pid}) kept {now - first:.1f} s at the "
                        "head of the queue",
                    )
                continue
            at_head = False
            if wall - ticket.since_wall > self.args.stall_seconds and f"starved:{ticket.ticket}" not in self.reported:
                self.reported.add(f"starved:{ticket.ticket}")
                starved.append(f"{ticket.ticket} (pid {ticket.pid}, {wall - ticket.since_wall:.1f} s)")
        if starved:
            self.fail(f"waiters starved longer than {self.args.stall_seconds:g} s: {', '.join(starved)}\n{self.dump()}")
        self.dead_ticket_since = {k: v for k, v in self.dead_ticket_since.items() if k in seen_tickets}

    def fail_once(self, key: str, text: str) -> None:
        if key not in self.reported:
            self.reported.add(key)
            self.fail(text)

    def dump(self) -> str:
        """What the state file and the run directory hold now (read-only)."""
        from gcl_local import _sql
        from gcl_local._store import get_store

        store = get_store(str(self.db))
        lines = []
        with store.read() as rtx:
            for lease in _sql.leases_on(rtx.conn, self.args.name):
                lines.append(f"    lease {lease.id} pid {lease.pid} slots {lease.slots} token {lease.holder_token}")
            for t in _sql.waiting_on(rtx.conn, self.args.name):
                lines.append(f"    ticket {t.ticket} pid {t.pid} slots {t.slots} token {t.holder_token} pipe {t.pipe}")
        with contextlib.suppress(OSError):
            lines.append(f"    run dir: {sorted(os.listdir(store.run_dir))}")
        lines.append(f"    ledger: {self.ledger.read()['holders']}")
        return "\n".join(lines)

    # -- the run -----------------------------------------------------------------------------------

    def run(self, seconds: float) -> None:
        for slot in range(self.args.workers):
            self.spawn(slot)
        start = time.monotonic()
        end = start + seconds
        gap_max = min(1.0, 2.0 / self.args.kill_rate) if self.args.kill_rate else 0.0
        next_kill = start + self.rng.uniform(0.05, gap_max) if gap_max else float("inf")
        next_audit = start + self.args.audit_interval
        next_report = start + 10.0
        while (now := time.monotonic()) < end:
            self.reap()
            if now >= next_kill:
                self.kill_one()
                self.reap()
                next_kill = time.monotonic() + self.rng.uniform(0.05, gap_max)
            if self.args.audit_interval > 0 and now >= next_audit:
                self.audit()
                next_audit = time.monotonic() + self.args.audit_interval
            if now >= next_report:
                st = self.ledger.read()
                print(
                    f"  {now - start:5.0f} s: {sum(st['acquisitions'].values())} acquisitions, "
                    f"{sum(self.stats.kills.values())} kills, max {st['max_seen']}, "
                    f"{st['violations']} over-admissions, {len(self.failures)} failures",
                    flush=True,
                )
                next_report += 10.0
            time.sleep(0.005)

    def stop(self) -> None:
        """SIGTERM every worker, wait for all of them (and adopted orphans); SIGKILL what lingers."""
        self.stopping = True
        for pid in list(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.args.stop_timeout
        while self.reap() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.reap():
            return
        lingering = children_of(os.getpid())
        self.fail(f"{len(lingering)} processes did not stop within {self.args.stop_timeout:g} s of SIGTERM")
        for pid in lingering:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)  # the stacks go to its log
            proc = self.procs.get(pid)
            if proc is not None and proc.kind == "async":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGUSR2)
        time.sleep(0.5)
        self.fail(f"  state now:\n{self.dump()}")
        for pid in lingering:
            proc = self.procs.get(pid)
            self.fail(f"  still running: {pid} {proc.kind if proc else 'orphan'} state {proc_state(pid)}")
            if proc is not None:
                self.fail(f"  its log ends:\n{tail(proc.log, 6000)}")
        self.stats.forced_at_stop = len(lingering)
        self.force_all()

    def force_all(self) -> None:
        """SIGKILL every descendant still alive (their ledger entries go), and reap them all."""
        with contextlib.suppress(LedgerStuckError), self.ledger.locked(LEDGER_TIMEOUT) as tx:
            for pid in list(self.procs):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)  # the wrapper's group holds its child too
            for pid in children_of(os.getpid()):
                kill_and_wait(pid, None, 1.0)
                tx.state["holders"].pop(str(pid), None)
                tx.dirty = True
            for pid in list(self.procs):
                kill_and_wait(pid, None, 1.0)
            for pid, e in list(tx.state["holders"].items()):  # e.g. children of wrappers, killed with their group
                if start_time(int(pid)) != e["start"] or proc_state(int(pid)) in (None, "Z"):
                    del tx.state["holders"][pid]
                    tx.dirty = True
        deadline = time.monotonic() + 10.0
        self.stopping = True
        while self.reap() and time.monotonic() < deadline:
            for pid in children_of(os.getpid()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)


def tail(path: Path, size: int = 3000) -> str:
    try:
        data = path.read_bytes()[-size:]
    except OSError:
        return ""
    return data.decode(errors="replace")


# -- final checks ------------------------------------------------------------------------------------


def final_checks(driver: Driver) -> dict[str, Any]:
    import apsw

    from gcl_local import _sql, list_limits, read_limit
    from gcl_local._store import get_store

    args, db = driver.args, driver.db
    checks: dict[str, Any] = {}
    st = driver.ledger.read()
    checks["ledger_left"] = st["holders"]
    if st["holders"]:
        driver.fail(f"ledger not back to 0: {st['holders']}")
    if st["violations"]:
        driver.fail(f"{st['violations']} over-admissions / ledger errors:\n    " + "\n    ".join(st["log"]))
    if st["duplicate_tokens"]:
        driver.fail(f"{st['duplicate_tokens']} duplicate fencing tokens")
    if st["leaked"]:
        driver.fail(
            f"{st['leaked']} async workers still held leases after all their tasks had ended (at SIGTERM): "
            "leaked slots, held as long as the process lives"
        )
    if st["swallowed"]:
        driver.fail(
            f"{st['swallowed']} async acquisitions went on after their task was cancelled (a lost cancellation): "
            "the task entered its block holding slots"
        )

    store = get_store(str(db))
    run_dir = Path(store.run_dir)
    with store.read() as rtx:
        checks["before_sweep"] = {
            "leases": _sql.count_leases(rtx.conn),
            "tickets": _sql.count_tickets(rtx.conn),
            "run_files": len(os.listdir(run_dir)) if run_dir.is_dir() else 0,
        }
    list_limits(db=str(db))
    limit = read_limit(args.name, db=str(db))
    checks["active_slots"] = limit.active_slots
    checks["holders_left"] = len(limit.holders)
    checks["waiters_left"] = len(limit.waiters)
    if limit.active_slots or limit.holders or limit.waiters:
        driver.fail(
            f"occupancy not back to 0: active_slots {limit.active_slots}, holders {limit.holders}, "
            f"waiters {limit.waiters}"
        )
    left = sorted(e for e in os.listdir(run_dir) if e.endswith((".lock", ".fifo", ".tmp"))) if run_dir.is_dir() else []
    checks["run_files_left"] = left
    if left:
        driver.fail(f"files left in {run_dir}: {left}")
    store.close()

    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READWRITE)
    try:
        conn.set_busy_timeout(10_000)
        checks["integrity"] = _sql.integrity_check(conn)
        checks["leases_left"] = _sql.count_leases(conn)
        checks["tickets_left"] = _sql.count_tickets(conn)
    finally:
        conn.close()
    if checks["integrity"] != "ok":
        driver.fail(f"PRAGMA integrity_check: {checks['integrity']}")
    if checks["leases_left"] or checks["tickets_left"]:
        driver.fail(f"rows left: {checks['leases_left']} leases, {checks['tickets_left']} tickets")

    for log in sorted(driver.work.glob("worker-*.log")):
        text = log.read_text(errors="replace")
        if "Traceback" in text:
            at = text.index("Traceback")
            driver.fail(f"traceback in {log.name}:\n{text[at : at + 3000]}")
    checks["ledger"] = st
    return checks


def summarize(driver: Driver, checks: dict[str, Any], seconds: float, elapsed: float) -> dict[str, Any]:
    st = checks.get("ledger") or {}
    acq = st.get("acquisitions", {})
    stats = driver.stats
    by_what: Counter[str] = Counter()
    for key, n in stats.kills.items():
        by_what[key.split(":")[1]] += n
    return {
        "ok": not driver.failures,
        "seconds": seconds,
        "elapsed": round(elapsed, 1),
        "workers": driver.args.workers,
        "kinds": dict(Counter(driver.kind_of(s) for s in range(driver.args.workers))),
        "limit": driver.args.limit,
        "seed": driver.args.seed,
        "db": str(driver.db),
        "acquisitions": sum(acq.values()),
        "acquisitions_by_kind": acq,
        "timeouts_by_kind": {**st.get("timeouts", {}), "cli": stats.exits.get(f"cli:{EX_TEMPFAIL}", 0)},
        "async_cancelled": st.get("cancelled", 0),
        "async_cancel_lost": st.get("swallowed", 0),
        "async_workers_leaking": st.get("leaked", 0),
        "kills": sum(stats.kills.values()),
        "kills_by": dict(sorted(stats.kills.items())),
        "kills_by_victim": dict(by_what),
        "kill_misses": stats.kill_misses,
        "spawned": dict(stats.spawned),
        "orphans_reaped": stats.orphans_reaped,
        "max_holders": st.get("max_seen", 0),
        "over_admissions": st.get("violations", 0),
        "duplicate_tokens": st.get("duplicate_tokens", 0),
        "audits": stats.audits,
        "max_leases_seen": stats.max_leases,
        "max_tickets_seen": stats.max_tickets,
        "forced_at_stop": stats.forced_at_stop,
        "integrity": checks.get("integrity"),
        "active_slots": checks.get("active_slots"),
        "before_sweep": checks.get("before_sweep"),
        "leases_left": checks.get("leases_left"),
        "tickets_left": checks.get("tickets_left"),
        "run_files_left": checks.get("run_files_left"),
        "failures": driver.failures,
    }


def print_summary(s: dict[str, Any]) -> None:
    print(f"gcl_local stress: {s['elapsed']} s ({s['seconds']:g} s of chaos), {s['workers']} workers {s['kinds']}, "
          f"limit {s['limit']}, seed {s['seed']}")  # fmt: skip
    print(f"  acquisitions: {s['acquisitions']} {s['acquisitions_by_kind']}")
    print(f"  timeouts: {s['timeouts_by_kind']}, async cancelled from outside: {s['async_cancelled']}")
    print(f"  async cancellations lost: {s['async_cancel_lost']}, async workers leaking leases: "
          f"{s['async_workers_leaking']}")  # fmt: skip
    print(f"  kills: {s['kills']} {s['kills_by_victim']} (by category {s['kills_by']}; {s['kill_misses']} missed)")
    print(f"  processes spawned: {s['spawned']}, orphaned gcl run children reaped: {s['orphans_reaped']}")
    print(f"  max concurrent holders (ledger slots): {s['max_holders']} of limit {s['limit']}")
    print(f"  over-admissions: {s['over_admissions']}")
    print(f"  duplicate fencing tokens: {s['duplicate_tokens']}")
    print(f"  audits: {s['audits']} (max {s['max_leases_seen']} leases, {s['max_tickets_seen']} tickets seen)")
    print(f"  before the final sweep: {s['before_sweep']}")
    print(f"  integrity_check: {s['integrity']}")
    print(
        f"  occupancy after: active_slots {s['active_slots']}, leases {s['leases_left']}, tickets {s['tickets_left']}"
    )
    print(f"  token/pipe files left: {len(s['run_files_left'] or [])}")
    if s["failures"]:
        print(f"FAILED: {len(s['failures'])} failed checks")
        for text in s["failures"]:
            print(f"  - {text}")
    else:
        print("OK: every check passed")


def drive(args: argparse.Namespace) -> int:
    from gcl_local import LimitExistsError, create_limit, update_limit

    seconds = args.minutes * 60 if args.minutes is not None else args.seconds
    if args.work:
        work = Path(args.work).absolute()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="gcl-stress-"))
    db = Path(args.db).absolute() if args.db else work / "gcl.db"
    print(f"gcl_local stress: work dir {work}, db {db}, seed {args.seed}", flush=True)
    gcl_limit = args.limit if args.gcl_limit is None else args.gcl_limit
    try:
        create_limit(args.name, gcl_limit, db=str(db))
    except LimitExistsError:
        update_limit(args.name, limit=gcl_limit, active=True, db=str(db))
    driver = Driver(args, work, db)
    driver.ledger.init(args.limit)
    if not become_subreaper():
        print("  (could not become a child subreaper: orphans are reaped by init)", file=sys.stderr)
    driver.audit()  # opens the state file for reading before any worker runs

    def watchdog(_signum: int, _frame: Any) -> None:
        raise TimeoutError("stress.py watchdog: the run took far too long")

    signal.signal(signal.SIGALRM, watchdog)
    signal.alarm(int(seconds + args.stop_timeout + 120))
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    began = time.monotonic()
    checks: dict[str, Any] = {}
    try:
        try:
            driver.run(seconds)
            driver.stop()
        except BaseException as exc:
            driver.fail(f"driver error: {exc!r}\n{traceback.format_exc()}")
            driver.force_all()
            if isinstance(exc, KeyboardInterrupt):
                raise
        else:
            checks = final_checks(driver)
    finally:
        signal.alarm(0)
        driver.force_all()  # a no-op after a clean stop
    summary = summarize(driver, checks, seconds, time.monotonic() - began)
    print_summary(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if summary["ok"] and not args.keep and not args.work:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work dir kept: {work}")
    return 0 if summary["ok"] else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workers", type=int, default=10, help="worker processes (default 10)")
    p.add_argument("--limit", type=int, default=3, help="the limit (default 3)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the chaos (default 20)")
    p.add_argument("--minutes", type=float, default=None, help="length in minutes, for a soak (overrides --seconds)")
    p.add_argument("--db", default=None, help="state file (default: in a new temporary directory)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random; printed)")
    p.add_argument("--name", default="stress", help="limit name (default 'stress')")
    p.add_argument("--kinds", default="sync,async,cli", help="worker kinds, assigned in turn (default sync,async,cli)")
    p.add_argument("--kill-rate", type=float, default=3.0, help="kills per second (>= 1; 0: none, to debug; default 3)")
    p.add_argument("--hold-ms", default="5,50", help="hold time range in ms (default 5,50)")
    p.add_argument("--tasks", type=int, default=2, help="concurrent tasks per async worker (default 2)")
    p.add_argument(
        "--async-cancel-rate", type=float, default=0.15,
        help="share of async acquisitions cancelled from outside after 5-300 ms (default 0.15)",
    )  # fmt: skip
    p.add_argument("--audit-interval", type=float, default=0.5, help="seconds between audits (0: none)")
    p.add_argument("--stall-seconds", type=float, default=15.0, help="no acquisition / a waiter this long: fail")
    p.add_argument("--leak-seconds", type=float, default=3.0, help="a leaked lease or dead row this long: fail")
    p.add_argument("--stop-timeout", type=float, default=15.0, help="seconds to wait after SIGTERM (default 15)")
    p.add_argument(
        "--gcl-limit", type=int, default=None,
        help="self-test: give gcl_local this limit while the ledger checks --limit (the run must then fail)",
    )  # fmt: skip
    p.add_argument("--json", default=None, help="also write the summary as JSON to this file")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, ledger) even on success")
    p.add_argument("-v", "--verbose", action="store_true", help="print every kill")
    # worker roles (internal)
    p.add_argument("--role", choices=["driver", "sync", "async", "child"], default="driver", help=argparse.SUPPRESS)
    p.add_argument("--work", help="work directory: ledger, worker logs, the state file (default: a new temporary one)")
    p.add_argument("--occupy", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--hold", type=float, default=0.01, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    lo, _, hi = args.hold_ms.partition(",")
    args.hold_min, args.hold_max = float(lo), float(hi or lo)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not args.kinds or set(args.kinds) - set(KINDS):
        p.error(f"--kinds: choose from {','.join(KINDS)}")
    if args.workers < 1 or args.limit < 1 or args.tasks < 1 or not (args.kill_rate >= 1 or args.kill_rate == 0):
        p.error("--workers, --limit and --tasks must be >= 1; --kill-rate >= 1 (0: no kills, for debugging)")
    if args.seed is None:
        args.seed = random.randrange(1, 1_000_000)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role != "driver":
        import faulthandler

        faulthandler.register(signal.SIGUSR1, all_threads=True)  # the driver asks for stacks of a hung worker
    if args.role == "sync":
        return run_sync_worker(args)
    if args.role == "async":
        return run_async_worker(args)
    if args.role == "child":
        return run_child(args)
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
