"""Chaos run for gcl_local: many processes fight over one limit while the driver SIGKILLs, SIGTERMs and SIGINTs them.

Usage: .venv/bin/python scripts/stress.py [--seconds 20 | --minutes M] [--faults all|none|LIST] [--seed S]
                                          [--workers 10] [--limit 3] [--json SUMMARY.json] [--keep] [-v]

Base workers (``--workers``, kinds ``--kinds``, restarted whenever they die) loop acquiring the limit
(mostly 1 slot, sometimes 2 or all) and hold it for 5-50 ms; they wait, time out, or try once:

  sync     ``with gcl_local.concurrency(...)``; SIGTERM raises in it, as Ctrl-C would
  async    ``async with gcl_local.asyncio.concurrency(...)``, two tasks per process; some
           acquisitions are cancelled from outside (as ``asyncio.timeout()`` would)
  cli      ``gcl run NAME -- python stress.py --role child``: the child command holds the slot

Faults (``--faults``, all on by default; ``--fault-workers`` processes for each that needs workers):

  sigint   sync workers that catch KeyboardInterrupt and keep looping on ``with concurrency()``; the
           driver sends them random SIGINTs (``--sigint-rate``, 100/s overall, to a random half of
           them at a time so that the others can reach the head of the queue), which land in waits,
           in transactions, just after commits, in the block and in the release; besides, each
           transaction of theirs is followed by a SIGINT of their own with probability
           ``--sigint-after-commit`` (half of them before the COMMIT, half just after it)
  cancel   async workers whose tasks are cancelled at random: while acquiring, while the acquisition
           times out (``timeout_seconds`` uniform 0.001-0.05), in the block, and during the cleanup
           (the release in ``__aexit__``)
  fork     workers that fork inside a ``with concurrency()`` block: ``os.fork()``, the child leaving
           the block by ``sys.exit(0)``; and ``multiprocessing`` with the fork start method (the child
           may also take a slot of its own); the parent holds on for 50-250 ms after its child is gone
  nonblock ``gcl run NAME -n -- true``, ``gcl rate-limit NAME-rate -n`` (and some waiting
           ``gcl rate-limit``) in a loop while waiters and holders are SIGKILLed and SIGTERMed; exit
           codes must be 0 or 75, and the rate limit is checked against its grants
  sigterm  the driver SIGTERMs (``--term-rate``) waiters (as ``timeout`` does: the process; as systemd
           does: the process and all its descendants), some holders and some ``-n`` callers
  shell    bash and dash scripts that loop over ``gcl acquire`` in the forms
           ``lease=$(gcl acquire db || exit 1)``, ``$(gcl acquire db 2>&1)``, ``$(gcl acquire db | tail
           -1)``, ``lease=$(timeout 70 gcl acquire db --timeout 60)`` and ``lease=$(gcl acquire db)``,
           record entering and leaving their block in the ledger (``stress.py --ledger``, keyed by the
           shell's pid) and release with ``gcl release``; ``set -e``, and SIGTERM ends the loop

The ledger (outside gcl_local): a JSON file replaced only under ``flock`` on a separate lock file.
Whoever holds a slot adds its slots (and its fencing token) on entering its block and checks the new
total <= limit (else an over-admission); it takes them off on leaving. Every worker also records
when it starts and stops waiting, in a file of its own (``wait/<pid>``: written before it can take a
ticket, removed after it left the queue; counts go to ``counts/``), so that the ledger lock is not the
bottleneck of the run. The driver kills (about 3 times a second) a random victim: a
holder, a waiter, a ``gcl run`` wrapper or child, a ``-n`` caller. It takes the ledger lock, SIGKILLs
the victim while still holding it, waits until the victim is dead, takes the victim's entries off
the ledger and only then unlocks. gcl_local frees the victim's slot only once the victim is dead,
so a new holder can enter the ledger only after the entry is gone: "total <= limit" stays an exact
test. SIGTERMs are sent under the ledger lock too; every holder leaves its block (and the ledger)
on SIGTERM before it exits.

Twice a second the driver audits the state file read-only under the ledger lock, with the process
table and the liveness of every token (tried with a shared lock, as gcl_local does). Grace periods are
``--leak-seconds``, or 3 x the longest legitimate window seen in the last minute (a lease granted but
not yet entered) when the machine is so loaded that it is longer:

  lost lease         a process in its block (per the ledger) whose lease is gone or whose lease's
                     holder is dead: at once, no grace (a block starts after its grant and ends
                     before its release)
  leaked lease       a lease of a live holder that no process in its block accounts for (by fencing
                     token; by slots and liveness token for ``gcl run``), for longer than the grace
                     (the moments between a grant and entering the block, and between leaving it and
                     the release); a ``gcl run`` whose child command is starting up or exiting is
                     excused, however long that takes
  ticket w/o waiter  a ticket of a live waiter that no waiting process (per its wait file; a ``gcl run``
                     wrapper counts as waiting until its command starts) accounts for, for longer than
                     the grace; found by walking up from the ticket's processes to their ancestors, so
                     a ``gcl acquire`` counts for the script that runs it (the ``gcl acquire`` of a
                     script the driver killed, still waiting, is counted apart, not as a violation)
  dead rows          a dead holder's lease kept while others wait, a dead waiter's ticket kept at the
                     head of the queue, for longer than the grace
  over the limit     more slots leased than the limit (the one gcl_local was given)
  stall              a waiter waiting longer than ``--stall-seconds``, or no acquisition for that
                     long (longer on a loaded machine, as the grace)

At the end: SIGTERM to every worker, wait (never for ever: stragglers get their stacks dumped and
are killed), one sweep (as a newcomer on a crowded run directory does; reads never tidy), then
check: 0 over-admissions, the ledger back to 0, no fencing token entered twice in the whole run, no
async cancellation lost, no async worker kept a lease after all its tasks ended, the rate limit
never granted more than ``limit + decay * t`` in any window of its grants, ``PRAGMA
integrity_check`` ok, no leases, tickets or holders left, no token or pipe files left in
``<db>-run/``, no worker died of an error or with an unexpected exit code. Prints counts per fault
kind and per violation; the last line says OK, or FAILED with every violated check and its count.
Exits 0 when every check passed, 1 otherwise.

Self-tests of the harness: ``--limit 2 --gcl-limit 3`` gives gcl_local one slot more than the ledger
allows (the run must then fail with over-admissions); ``--inject-leaks`` adds a process that keeps a
lease it never uses and runs a ``gcl acquire`` it does not wait for (the run must then fail with a
leaked lease and a ticket without waiter).
"""

from __future__ import annotations

# Only light imports here: a shell worker runs ``python -S stress.py --ledger ...`` three times per
# acquisition. The others are imported where they are used.
import contextlib
import fcntl
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
BASE_KINDS = ("sync", "async", "cli")
FAULTS = ("sigint", "cancel", "fork", "nonblock", "sigterm", "shell")
FAULT_KINDS = {
    "sigint": ("sigint",),
    "cancel": ("acancel",),
    "fork": ("fork", "mpfork"),
    "nonblock": ("nonblock",),
    "sigterm": (),
    "shell": ("bash", "dash"),
}
"""Worker kinds each fault adds, assigned in turn to its ``--fault-workers`` processes."""
SYNC_KINDS = ("sync", "sigint", "fork", "mpfork")
ASYNC_KINDS = ("async", "acancel")
PY_KINDS = (*SYNC_KINDS, *ASYNC_KINDS)
SHELL_KINDS = ("bash", "dash")
SHELL_FORMS = (
    ("exit1", 'lease=$(gcl acquire "$STRESS_NAME" || exit 1)'),
    ("stderr", 'lease=$(gcl acquire "$STRESS_NAME" 2>&1)'),
    ("tail", 'lease=$(gcl acquire "$STRESS_NAME" | tail -1)'),
    ("timeout", 'lease=$(timeout 70 gcl acquire "$STRESS_NAME" --timeout 60)'),
    ("plain", 'lease=$(gcl acquire "$STRESS_NAME")'),
)
EX_TEMPFAIL = 75
LEDGER_TIMEOUT = 10.0
"""The driver gives up on the ledger lock after this long (a worker stuck holding it)."""
DEATH_TIMEOUT = 5.0
"""A SIGKILLed victim must be dead within this long."""
MAX_LOG = 20
KILL_CATEGORIES = {"holder": 0.3, "waiter": 0.3, "wrapper": 0.15, "child": 0.1, "ncaller": 0.15}
"""SIGKILL victims, by weight: a ledger holder; a waiting worker (or one between acquisitions; for a
shell script, the shell or its ``gcl acquire``); a `gcl run` wrapper whose child command runs; a
`gcl run` child not in the ledger (starting up, or done); a ``-n`` caller or rate waiter."""
TERM_CATEGORIES = {"waiter": 0.6, "holder": 0.2, "ncaller": 0.2}
"""SIGTERM victims, by weight (holders leave their block cleanly on SIGTERM)."""
VIOLATIONS = {
    "over-admission": "more holders in their blocks than the limit (ledger)",
    "gcl-over-limit": "gcl_local leased more slots than the limit",
    "lost-lease": "a process in its block without a live lease",
    "leaked-lease": "a live process kept a lease outside its block",
    "ticket-without-waiter": "a live process kept a ticket while not waiting",
    "dead-lease-kept": "a dead holder's lease kept while others waited",
    "dead-ticket-kept": "a dead waiter's ticket kept at the head of the queue",
    "stall": "no acquisition, or a waiter starved",
    "duplicate-token": "a fencing token handed out twice",
    "rate-over-admission": "the rate limit granted more than limit + decay * t",
    "lost-cancellation": "an async task went on (or timed out) after it was cancelled",
    "async-leak-at-exit": "an async worker held leases after all its tasks ended",
    "nonblock-exit": "a -n caller exited with a code other than 0 or 75",
    "unexpected-exit": "a worker exited with an unexpected code",
    "holder-died": "a ledger holder died inside its block without being killed",
    "traceback": "a traceback in a worker log",
    "ledger": "the ledger was left inconsistent",
    "left-behind": "leases, tickets, occupancy or token/pipe files left at the end",
    "integrity": "PRAGMA integrity_check failed",
    "stop": "workers did not stop after SIGTERM",
    "driver": "the driver itself failed",
}


def tolerated(args: Any) -> tuple[type[BaseException], ...]:
    """What a worker counts rather than dies of: with server restarts, a StoreError (a process that connects
    for the first time while the server is down is told so at once; a COMMIT under way when the server went down
    may or may not have been committed). What it may leave behind, the audits still see."""
    if not getattr(args, "restart_every", 0):
        return ()
    from gcl_local import StoreError

    return (StoreError,)


def is_pg(db: object) -> bool:
    """Whether *db* names a PostgreSQL store (else a SQLite state file)."""
    return str(db).startswith(("postgresql://", "postgres://"))


def rate_name(name: str) -> str:
    return f"{name}-rate"


def selftest_name(name: str) -> str:
    return f"{name}-selftest"


# -- the ledger ------------------------------------------------------------------------------------

PENDING: Counter[str] = Counter()
"""Counts of this process (fault events, outcomes), written to its own file by Ledger.flush()."""


class LedgerStuckError(RuntimeError):
    pass


class LedgerTx:
    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.dirty = False


class Ledger:
    """Slots held, by pid, in a JSON file replaced atomically under an flock on a separate lock file.

    Waits and counts stay off that lock (it must not become the bottleneck of the run): each process
    keeps its waits in ``wait/<pid>`` (written before it may take a ticket, removed after it has left the
    queue) and its counts in ``counts/<pid>-<start>.json``.
    """

    def __init__(self, work: str | Path, db: str | None = None) -> None:
        work = Path(work)
        self.run_dir = f"{Path(db).absolute()}-run" if db and not is_pg(db) else None  # (SQLite: token files)
        self._gcl_token: str | None = None
        self.lock_path = work / "ledger.lock"
        self.data_path = work / "ledger.json"
        self.tmp_path = work / "ledger.json.tmp"
        self.tokens_path = work / "tokens.log"
        self.rate_path = work / "rate.log"
        self.wait_dir = work / "wait"
        self.count_dir = work / "counts"
        self.pid = os.getpid()
        self._start: int | None = None
        self._waits = 0
        self._flushed = time.monotonic()

    def init(self, limit: int) -> None:
        state = {
            "limit": limit,
            "holders": {},
            "acquisitions": {},
            "shell": {},
            "involved": {},
            "over_admissions": 0,
            "ledger_errors": 0,
            "max_seen": 0,
            "duplicate_tokens": 0,
            "log": [],
        }
        self.lock_path.touch()
        for path in (self.tokens_path, self.rate_path):
            path.write_bytes(b"")
        for d in (self.wait_dir, self.count_dir):
            d.mkdir(exist_ok=True)
            for entry in d.iterdir():
                entry.unlink()
        self._write(state)

    def _write(self, state: dict[str, Any]) -> None:
        _replace(self.tmp_path, self.data_path, json.dumps(state, separators=(",", ":")).encode())

    @contextlib.contextmanager
    def locked(self, timeout: float | None = None) -> Iterator[LedgerTx]:
        """The ledger, locked; written back on a clean exit if ``tx.dirty``."""
        self._check_pid()
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

    def _check_pid(self) -> None:
        if os.getpid() != self.pid:
            raise RuntimeError("a Ledger must not be used in a forked child: make a new one")

    def start_time(self) -> int | None:
        if self._start is None:
            self._start = start_time(self.pid)
        return self._start

    def wait(self, delta: int, kind: str, *, pid: int | None = None, start: int | None = None) -> None:
        """Record that a wait of this process starts (+1) or ends (-1); for a shell script, of the shell *pid*.

        Written before the wait may take a ticket and removed once it has left the queue; an audit reads
        these files after its snapshot of the state file, so it sees every wait its tickets belong to.
        """
        self._check_pid()
        if pid is None:
            self._waits = max(0, self._waits + delta)
            pid, start, n = self.pid, self.start_time(), self._waits
        else:
            n = 1 if delta > 0 else 0
        path = self.wait_dir / str(pid)
        if n:
            data = json.dumps({"n": n, "start": start, "kind": kind}).encode()
            _replace(self.wait_dir / f".{os.getpid()}.tmp", path, data)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.maybe_flush()

    def waiting(self) -> dict[int, dict[str, Any]]:
        """{pid: {"n", "start", "kind"}} of every recorded wait (the processes may have died since)."""
        found = {}
        for entry in os.listdir(self.wait_dir):
            if entry.isdigit():
                with contextlib.suppress(OSError, ValueError):
                    found[int(entry)] = json.loads((self.wait_dir / entry).read_bytes())
        return found

    def drop_waiting(self, pid: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.wait_dir / str(pid)).unlink()

    def enter(
        self,
        kind: str,
        slots: int,
        token: int | None,
        *,
        waited: bool = True,
        pid: int | None = None,
        start: int | None = None,
        form: str | None = None,
    ) -> None:
        """Called by a holder on entering its block (for a shell, with the shell's *pid*); ends its wait."""
        if pid is None:
            key, start, gcl = str(self.pid), self.start_time(), self.gcl_token()
        else:
            key, gcl = str(pid), None
        with self.locked() as tx:
            st = tx.state
            if pid is not None and not alive(pid, start):
                return  # the shell was killed meanwhile: the driver took its entries off
            entry = st["holders"].setdefault(
                key, {"n": 0, "start": start, "kind": kind, "gcl": gcl, "tokens": [], "form": form}
            )
            entry["n"] += slots
            total = sum(e["n"] for e in st["holders"].values())
            acq = st["acquisitions"]
            acq[kind] = acq.get(kind, 0) + 1
            if form is not None:
                _bump(st["shell"], f"{kind}:{form}:entered")
            st["max_seen"] = max(st["max_seen"], total)
            if total > st["limit"]:
                st["over_admissions"] += 1
                _note(st, f"OVER-ADMISSION: {total} slots held > limit {st['limit']}: {_holders_text(st)}")
                for e in st["holders"].values():  # which kinds were in their blocks then
                    _bump(st["involved"], e["kind"] + (f":{e['form']}" if e.get("form") else ""))
            if token is not None:
                if any(token in e["tokens"] for e in st["holders"].values()):
                    st["duplicate_tokens"] += 1
                    _note(st, f"DUPLICATE fencing token {token} (pid {key}): {_holders_text(st)}")
                entry["tokens"].append(token)
                fd = os.open(self.tokens_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
                try:
                    os.write(fd, f"{token} {key} {kind}\n".encode())
                finally:
                    os.close(fd)
            tx.dirty = True
        if waited:
            self.wait(-1, kind, pid=pid, start=start)

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

    def leave(self, slots: int, token: int | None, *, pid: int | None = None, start: int | None = None) -> None:
        """Called by a holder on leaving its block."""
        key = str(self.pid if pid is None else pid)
        with self.locked() as tx:
            st = tx.state
            if pid is not None and not alive(pid, start):
                return  # the shell was killed in its block: the driver took its entry off
            entry = st["holders"].get(key)
            if entry is None or entry["n"] < slots:
                _note(st, f"pid {key} left the ledger with {slots} slots but had entered {entry}")
                st["ledger_errors"] += 1
            else:
                entry["n"] -= slots
                if token is not None and token in entry["tokens"]:
                    entry["tokens"].remove(token)
                if entry["n"] == 0:
                    del st["holders"][key]
            tx.dirty = True
        self.maybe_flush()

    def shell_count(self, key: str) -> None:
        with self.locked() as tx:
            _bump(tx.state["shell"], key)
            tx.dirty = True

    def violation(self, key: str, text: str) -> None:
        """A violation a worker sees itself (a lost cancellation, leases kept at exit): counted and flushed now."""
        PENDING[f"violation:{key}"] += 1
        print(f"stress: VIOLATION {key}: {text}", file=sys.stderr, flush=True)
        self.flush()

    def flush(self) -> None:
        """Write this process's counts (all of them, so far) to its own file."""
        self._check_pid()
        self._flushed = time.monotonic()
        path = self.count_dir / f"{self.pid}-{self.start_time()}.json"
        _replace(self.count_dir / f".{self.pid}.tmp", path, json.dumps(PENDING).encode())

    def maybe_flush(self) -> None:
        if time.monotonic() - self._flushed > 1.0:
            self.flush()

    def counts(self) -> Counter[str]:
        """The counts of every process, summed."""
        total: Counter[str] = Counter()
        for path in self.count_dir.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                total.update(json.loads(path.read_bytes()))
        return total

    def read(self) -> dict[str, Any]:
        with self.locked(LEDGER_TIMEOUT) as tx:
            return tx.state


def _replace(tmp: Path, path: Path, data: bytes) -> None:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _bump(counters: dict[str, int], key: str) -> None:
    counters[key] = counters.get(key, 0) + 1


def _note(st: dict[str, Any], text: str) -> None:
    if len(st["log"]) < MAX_LOG:
        st["log"].append(f"{time.strftime('%H:%M:%S')} {text}")


def _holders_text(st: dict[str, Any]) -> str:
    return ", ".join(
        f"{pid}({e['kind']}{':' + e['form'] if e.get('form') else ''}:{e['n']})" for pid, e in st["holders"].items()
    )


def ledger_main(argv: list[str]) -> int:
    """``stress.py --ledger WORK SHELL_PID OP [ARGS]``: the ledger for a shell script, keyed by the shell's pid.

    OP is ``wait`` (the script starts waiting), ``enter LEASE FORM`` (it entered its block with LEASE,
    and stopped waiting), ``leave LEASE`` or ``nolease FORM TEXT`` (``gcl acquire`` printed no lease).
    Nothing is recorded once the shell is dead: the driver killed it and took its entries off.
    """
    work, shell, op, *rest = argv
    pid = int(shell)
    if os.getppid() != pid:
        return 0  # orphaned: the shell is dead already
    start = start_time(pid)
    kind = os.environ.get("STRESS_KIND", "shell")
    ledger = Ledger(work)
    if op == "wait":
        ledger.wait(+1, kind, pid=pid, start=start)
    elif op == "enter":
        lease, form = rest
        ledger.enter(kind, 1, int(lease.split("-")[0]), pid=pid, start=start, form=SHELL_FORMS[int(form)][0])
    elif op == "leave":
        ledger.leave(1, int(rest[0].split("-")[0]), pid=pid, start=start)
    elif op == "nolease":
        form, text = rest
        ledger.shell_count(f"{kind}:{SHELL_FORMS[int(form)][0]}:no-lease")
        print(
            f"stress: {kind} form {SHELL_FORMS[int(form)][0]}: gcl acquire printed no lease: {text!r}", file=sys.stderr
        )
    else:
        raise ValueError(f"unknown ledger op {op!r}")
    return 0


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


def alive(pid: int, start: int | None) -> bool:
    """Whether *pid* is still the process that started at *start*, and not a zombie."""
    fields = _proc_stat(pid)
    if not fields or len(fields) <= 19 or fields[0] == b"Z":
        return False
    return start is None or int(fields[19]) == start


Table = dict[int, tuple[int, str, int]]


def process_table(root: int | None = None) -> Table:
    """{pid: (ppid, state, start time)} of *root* and its descendants (default: this process's), found through
    ``/proc/PID/task/TID/children``; of every process where the kernel has no such files. Only these are read:
    the machine may run hundreds of other processes. A process born or reparented meanwhile may be missed:
    use ``lookup`` where that matters."""
    root = os.getpid() if root is None else root
    table: Table = {}
    if not os.path.exists(f"/proc/{root}/task/{root}/children"):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                lookup(table, int(entry))
        return table
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in table or lookup(table, pid) is None:
            continue
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
    return table


def lookup(table: Table, pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time) of *pid* from *table*, or read now (and added to it); None: no such process."""
    info = table.get(pid)
    if info is None and pid > 0:
        fields = _proc_stat(pid)
        if fields and len(fields) > 19:
            info = table[pid] = (int(fields[1]), fields[0].decode(), int(fields[19]))
    return info


def children_map(table: Table) -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for pid, (ppid, state, _) in table.items():
        if state != "Z":
            kids.setdefault(ppid, []).append(pid)
    return kids


def descendants(kids: dict[int, list[int]], pid: int) -> list[int]:
    found, todo = [], list(kids.get(pid, ()))
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(kids.get(p, ()))
    return found


def ancestors(table: Table, pid: int, stop: int) -> list[int]:
    """*pid* and its ancestors, up to (not including) *stop* or init."""
    chain: list[int] = []
    while pid > 1 and pid != stop and len(chain) < 16:
        info = lookup(table, pid)
        if info is None:
            break
        chain.append(pid)
        pid = info[0]
    return chain


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def children_of(ppid: int) -> list[int]:
    return [pid for pid, (parent, _, _) in process_table(ppid).items() if parent == ppid]


def become_subreaper() -> bool:
    """Adopt orphaned descendants (a ``gcl run`` child whose wrapper was killed), so we reap them."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def kill_and_wait(pid: int, expected_start: int | None, timeout: float = DEATH_TIMEOUT) -> str:
    """SIGKILL *pid* if it still is the process that started at *expected_start*; wait until it is dead.

    Returns "killed", "gone" (no such process, or a zombie already), or "alive" (did not die in time).
    """
    import select

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


def signal_if(pid: int, start: int | None, signum: int) -> bool:
    """Send *signum* to *pid* if it is still the process that started at *start*."""
    if not alive(pid, start):
        return False
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def token_alive(run_dir: Path, token: str) -> bool | None:
    """Whether the process holding liveness token *token* lives: it keeps the token file flocked (exclusive).

    Tried with a shared lock, as gcl_local itself does: two shared probes of a dead token both see it dead, so
    this one never makes a dead token look alive to gcl_local. (/proc/locks is no substitute: it is read a page
    at a time, and locks that come and go meanwhile make it skip entries.) None: not a regular file of ours.
    """
    try:
        fd = os.open(run_dir / f"{token}.lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def gcl_command() -> list[str]:
    gcl = Path(sys.executable).parent / "gcl"
    return [str(gcl)] if gcl.exists() else [sys.executable, "-m", "gcl_local"]


# -- workers: plans and signals --------------------------------------------------------------------


class StopError(BaseException):
    """Raised by the SIGTERM handler: leave cleanly (like KeyboardInterrupt)."""


_gate = [False]
"""True only while a sync worker runs gcl_local (its ``with concurrency()`` entry and exit) or sleeps in its
block: only then does a SIGINT or SIGTERM raise in it. Set and cleared by single stores, which no signal
handler can split, as the first statement of each ``finally`` and ``except``: the ledger is never left half
changed by an interrupt, while gcl_local meets one anywhere."""
_stop = [False]


def _landing(frame: Any) -> str:
    """Where an interrupt lands: in a transaction, just after a commit (injected), elsewhere in gcl_local, ..."""
    where = "in-hold"
    f = frame
    while f is not None:
        code = f.f_code
        if code.co_name == "_write_then_interrupt":
            return "after-commit"
        if code.co_name == "_work_then_interrupt":
            return "before-commit"
        if "gcl_local" in code.co_filename:
            if code.co_filename.endswith("_store.py") and code.co_name == "write":  # sqlite/ or postgres/_store.py
                return "in-transaction"
            where = "in-gcl_local"
        elif where == "in-hold" and code.co_filename.endswith("contextlib.py"):
            where = "in-contextlib"
        f = f.f_back
    return where


def _on_signal(signum: int, frame: Any) -> None:
    if signum == signal.SIGTERM:
        _stop[0] = True
        if _gate[0]:
            PENDING[f"sigterm:raised:{_landing(frame)}"] += 1
            raise StopError
        return
    if _gate[0]:
        PENDING[f"sigint:raised:{_landing(frame)}"] += 1
        raise KeyboardInterrupt
    PENDING["sigint:outside-gcl_local"] += 1  # dropped: the worker is busy with the ledger


def _install_commit_interrupts(probability: float, rng: random.Random, db: str) -> None:
    """Interrupt this process (SIGINT to itself) around some of its commits: just before (inside the
    transaction) or just after ``COMMIT`` (before gcl_local has looked at what it committed)."""
    import threading

    if is_pg(db):
        from gcl_local.postgres._store import PostgresBackend as Store
    else:
        from gcl_local.sqlite._store import Store  # type: ignore[assignment]

    original = Store.write
    main = threading.main_thread()

    def write(self: Any, work: Any, *args: Any, **kwargs: Any) -> Any:
        if not _gate[0] or threading.current_thread() is not main or rng.random() >= probability:
            return original(self, work, *args, **kwargs)
        if rng.random() < 0.5:

            def _work_then_interrupt(tx: Any) -> Any:
                result = work(tx)
                PENDING["sigint:injected:before-commit"] += 1
                signal.raise_signal(signal.SIGINT)
                return result

            return original(self, _work_then_interrupt, *args, **kwargs)
        return _write_then_interrupt(original, self, work, args, kwargs)

    Store.write = write  # type: ignore[method-assign]


def _write_then_interrupt(original: Any, store: Any, work: Any, args: Any, kwargs: Any) -> Any:
    result = original(store, work, *args, **kwargs)
    PENDING["sigint:injected:after-commit"] += 1
    signal.raise_signal(signal.SIGINT)
    return result


class Plan:
    __slots__ = ("cancel", "cancel_at", "hold", "occupy", "timeout")

    def __init__(self, occupy: int, timeout: float | None, hold: float) -> None:
        self.occupy = occupy
        self.timeout = timeout
        self.hold = hold
        self.cancel: str | None = None
        """How an async task is cancelled: outer (base async), acquire, timeout, hold, exit; None: not."""
        self.cancel_at = 0.0


def plan(rng: random.Random, args: Any) -> Plan:
    r = rng.random()
    occupy = args.limit if r < 0.05 else min(2, args.limit) if r < 0.2 else 1
    occupy = max(1, occupy)
    r = rng.random()
    timeout = None if r < 0.65 else 0.0 if r < 0.8 else rng.uniform(0.01, 0.5)
    hold = rng.uniform(args.hold_min, args.hold_max) / 1000
    return Plan(occupy, timeout, hold)


def plan_async(rng: random.Random, args: Any, kind: str) -> Plan:
    p = plan(rng, args)
    if kind == "async":
        if rng.random() < args.async_cancel_rate:
            p.cancel, p.cancel_at = "outer", rng.uniform(0.005, 0.3)
        return p
    r = rng.random()
    p.timeout = rng.uniform(0.001, 0.05) if r < 0.7 else 0.0 if r < 0.8 else None
    r = rng.random()
    if r < 0.3:
        return p
    if r < 0.7:
        if r >= 0.55 and p.timeout:
            p.cancel, p.cancel_at = "timeout", p.timeout + rng.uniform(0.0, 0.004)  # as it times out
        else:
            p.cancel, p.cancel_at = "acquire", rng.uniform(0.0, 1.5 * (p.timeout or 0.03))
    else:
        p.cancel = "hold" if r < 0.85 else "exit"
    return p


# -- workers ---------------------------------------------------------------------------------------


def run_sync_worker(args: Any) -> int:
    """sync, sigint, fork and mpfork workers: ``with concurrency()`` in a loop.

    Every ledger change happens with the gate shut; gcl_local code and the hold run with it open.
    """
    from gcl_local import AcquireConcurrencySlotTimeoutError, concurrency

    kind = args.role
    signal.signal(signal.SIGTERM, _on_signal)
    rng = random.Random(args.seed)
    if kind == "sigint":
        signal.signal(signal.SIGINT, _on_signal)
        if args.sigint_after_commit > 0:
            _install_commit_interrupts(args.sigint_after_commit, random.Random(args.seed + 1), args.db)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked since the driver started us
    ledger = Ledger(args.work, args.db)
    me = os.getpid()
    restart_errors = tolerated(args)
    while not _stop[0]:
        p = plan(rng, args)
        waiting = p.timeout != 0  # a try-once never takes a ticket
        if waiting:
            ledger.wait(+1, kind)
        try:
            _gate[0] = True
            with concurrency(args.name, occupy=p.occupy, timeout_seconds=p.timeout, db=args.db) as lease:
                _gate[0] = False
                ledger.enter(kind, p.occupy, lease.token, waited=waiting)
                waiting = False
                try:
                    _gate[0] = True
                    if kind in ("fork", "mpfork"):
                        _fork_in_block(kind, p, rng, args, ledger)
                    else:
                        time.sleep(p.hold)
                finally:
                    _gate[0] = False
                    if os.getpid() == me:
                        ledger.leave(p.occupy, lease.token)
                    _gate[0] = True
            _gate[0] = False
        except AcquireConcurrencySlotTimeoutError:
            _gate[0] = False
            PENDING[f"timeouts:{kind}"] += 1
        except restart_errors as exc:
            _gate[0] = False
            PENDING[f"store-errors:{kind}"] += 1
            print(f"stress: store error: {exc}", file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            _gate[0] = False
            PENDING["sigint:caught"] += 1
        except StopError:
            _gate[0] = False
            break
        finally:
            _gate[0] = False
            if waiting and os.getpid() == me:
                ledger.wait(-1, kind)
        ledger.maybe_flush()
        time.sleep(rng.uniform(0, 0.005))
    ledger.flush()
    return 0


def _fork_in_block(kind: str, p: Plan, rng: random.Random, args: Any, ledger: Ledger) -> None:
    """Inside the block (gate open): fork a child that leaves the block; hold on after it is gone."""
    time.sleep(p.hold / 2)
    _gate[0] = False
    if kind == "fork":
        child = os.fork()
        if child == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            time.sleep(rng.uniform(0, 0.003))
            sys.exit(0)  # leaves the `with concurrency()` block in the child, as a forked helper's exit would
        PENDING["fork:forks"] += 1
        _, status = os.waitpid(child, 0)
        PENDING[f"fork:child-exit:{os.waitstatus_to_exitcode(status)}"] += 1
    else:
        import multiprocessing

        context = multiprocessing.get_context("fork")
        proc = context.Process(target=_mp_child, args=(args, rng.random() < 0.5), daemon=True)
        proc.start()
        PENDING["mpfork:forks"] += 1
        proc.join(10.0)
        if proc.exitcode is None:
            print(f"stress: multiprocessing child {proc.pid} still runs after 10 s", file=sys.stderr)
            proc.kill()
            proc.join()
        PENDING[f"mpfork:child-exit:{proc.exitcode}"] += 1
    ledger.flush()
    _gate[0] = True
    time.sleep(rng.uniform(0.05, 0.25))  # a slot freed by the child's exit would go to a waiter now


def _mp_child(args: Any, acquire: bool) -> None:
    """A multiprocessing child forked inside its parent's block; it may try for a slot of its own, then exits."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    PENDING.clear()
    _gate[0] = False
    if acquire:
        from gcl_local import AcquireConcurrencySlotTimeoutError, concurrency

        ledger = Ledger(args.work, args.db)
        try:
            with concurrency(args.name, timeout_seconds=0, db=args.db) as lease:
                ledger.enter("mpchild", 1, lease.token, waited=False)
                try:
                    time.sleep(0.005)
                finally:
                    ledger.leave(1, lease.token)
        except AcquireConcurrencySlotTimeoutError:
            PENDING["mpfork:child-busy"] += 1
        except tolerated(args) as exc:
            PENDING["store-errors:mpchild"] += 1
            print(f"stress: store error: {exc}", file=sys.stderr, flush=True)
        ledger.flush()
    sys.exit(0)


def run_async_worker(args: Any) -> int:
    import asyncio

    return asyncio.run(_async_main(args))


async def _async_main(args: Any) -> int:
    import asyncio
    import traceback

    from gcl_local import AcquireConcurrencySlotTimeoutError
    from gcl_local.asyncio import concurrency

    kind = args.role
    ledger = Ledger(args.work, args.db)
    stopping = False
    running = asyncio.get_running_loop()

    async def one(p: Plan, state: dict[str, Any]) -> None:
        waiting = p.timeout != 0  # a try-once never takes a ticket
        if waiting:
            ledger.wait(+1, kind)
        try:
            async with concurrency(args.name, occupy=p.occupy, timeout_seconds=p.timeout, db=args.db) as lease:
                if state["cancelled"] or stopping:
                    # This task was cancelled before it got here: gcl_local lost the cancellation.
                    ledger.violation("swallowed", f"{kind} task entered its block after a cancel ({p.cancel})")
                ledger.enter(kind, p.occupy, lease.token, waited=waiting)  # synchronous: a cancel cannot split it
                waiting = False
                try:
                    if p.cancel == "hold":
                        task = asyncio.current_task()
                        assert task is not None
                        running.call_later(random.uniform(0, p.hold), cancel, task, state, "hold")
                    await asyncio.sleep(p.hold)
                finally:
                    ledger.leave(p.occupy, lease.token)
                    if p.cancel == "exit":  # lands in __aexit__, while the release runs
                        task = asyncio.current_task()
                        assert task is not None
                        cancel(task, state, "exit")
        finally:
            if waiting:
                ledger.wait(-1, kind)

    def cancel(task: asyncio.Task[Any], state: dict[str, Any], mode: str) -> None:
        if task.cancel():
            state["cancelled"] = True
            PENDING[f"cancel:issued:{mode}"] += 1

    async def loop(index: int) -> None:
        rng = random.Random(args.seed * 101 + index)
        while not stopping:
            p = plan_async(rng, args, kind)
            state = {"cancelled": False}
            inner = asyncio.ensure_future(one(p, state))
            timer = None
            if p.cancel in ("outer", "acquire", "timeout"):
                # Cancelled from outside (as asyncio.timeout() would), without asyncio.wait_for: on
                # Python < 3.12 it may itself swallow a cancellation.
                timer = running.call_later(p.cancel_at, cancel, inner, state, p.cancel)
            try:
                await inner
            except asyncio.CancelledError:
                if stopping or not inner.cancelled():
                    raise
                PENDING[f"cancel:landed:{p.cancel}"] += 1
            except AcquireConcurrencySlotTimeoutError:
                PENDING[f"timeouts:{kind}"] += 1
                if state["cancelled"]:
                    ledger.violation("lost_cancels", f"{kind} task cancelled ({p.cancel}) raised a timeout instead")
            except tolerated(args) as exc:
                PENDING[f"store-errors:{kind}"] += 1
                print(f"stress: store error: {exc}", file=sys.stderr, flush=True)
            else:
                if state["cancelled"]:
                    ledger.violation("lost_cancels", f"{kind} task cancelled ({p.cancel}) went on to the end")
            finally:
                if timer is not None:
                    timer.cancel()
            ledger.maybe_flush()
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

    # A task cancelled while a worker thread of its acquisition was still in a transaction has ended, but the
    # thread gives back what it got once it is done (on PostgreSQL that takes longer): wait for that too.
    deadline = time.monotonic() + 5.0
    while True:
        try:
            kept = [h for h in read_limit(args.name, db=args.db).holders if h.pid == os.getpid()]
        except tolerated(args):
            kept = []  # (the server restarts: this process's sessions, and so its leases, are known by the audits)
            break
        if not kept or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.05)
    if kept:
        print(f"leases kept after every task ended: {[h.id for h in kept]}", file=sys.stderr)
        ledger.violation("leaked", f"{kind} worker {os.getpid()} kept {[h.id for h in kept]} after all its tasks ended")
    ledger.flush()
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


def run_child(args: Any) -> int:
    """The command under ``gcl run``: it holds the slot. SIGTERM (forwarded at the end) is ignored:
    the hold is short and ends by itself."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ledger = Ledger(args.work, args.db)
    # On SQLite the ledger knows the lease by the liveness token the child inherited (its file); on PostgreSQL
    # the inherited token is a socket, so by the fencing token that gcl run hands its command.
    token = int(os.environ["GCL_FENCING_TOKEN"]) if is_pg(args.db) else None
    ledger.enter("cli", args.occupy, token, waited=False)
    try:
        time.sleep(args.hold)
    finally:
        ledger.leave(args.occupy, token)
    return 0


def _set_stop(_signum: int, _frame: Any) -> None:
    _stop[0] = True


def run_nonblock_worker(args: Any) -> int:
    """``gcl run NAME -n -- true`` and ``gcl rate-limit NAME-rate -n`` in a loop, and some waiting ``rate-limit``."""
    signal.signal(signal.SIGTERM, _set_stop)
    ledger = Ledger(args.work, args.db)
    rng = random.Random(args.seed)
    gcl = [*gcl_command(), "--db", args.db]
    rate = rate_name(args.name)
    while not _stop[0]:
        r = rng.random()
        if r < 0.5:
            op, argv = "run-n", [*gcl, "run", args.name, "-n", "--", "true"]
        elif r < 0.8:
            op, argv = "rate-n", [*gcl, "rate-limit", rate, "-n"]
        else:
            op, argv = "rate-wait", [*gcl, "rate-limit", rate, "--timeout", f"{rng.uniform(0.05, 1.0):.3f}"]
        if op == "rate-wait":
            ledger.wait(+1, "nonblock")
        began = time.monotonic()
        pid = os.posix_spawn(argv[0], argv, os.environ)
        _, status = os.waitpid(pid, 0)
        ended = time.monotonic()
        if op == "rate-wait":
            ledger.wait(-1, "nonblock")
        code = os.waitstatus_to_exitcode(status)
        PENDING[f"nonblock:{op}:{code}"] += 1
        if code == 0 and op != "run-n":
            fd = os.open(ledger.rate_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            try:
                os.write(fd, f"{began:.6f} {ended:.6f}\n".encode())
            finally:
                os.close(fd)
        if code not in (0, EX_TEMPFAIL, -9, -15, 128 + 15) and not (code == 1 and args.restart_every):
            ledger.violation("nonblock", f"{' '.join(argv)} (pid {pid}) exited with {code}")
        ledger.maybe_flush()
        time.sleep(rng.uniform(0, 0.01))
    ledger.flush()
    return 0


def run_leaker(args: Any) -> int:
    """Self-test: keep a lease without using it, and run a ``gcl acquire`` nobody waits for."""
    from gcl_local import acquire_lease

    signal.signal(signal.SIGTERM, _set_stop)
    lease = acquire_lease(selftest_name(args.name), db=args.db)
    argv = [*gcl_command(), "--db", args.db, "acquire", selftest_name(args.name)]
    child = os.posix_spawn(argv[0], argv, os.environ)
    print(f"stress: leaker holds lease {lease.id}; gcl acquire {child} waits behind it", file=sys.stderr)
    while not _stop[0]:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    return 0


SHELL_SCRIPT = r"""# The shell worker of scripts/stress.py (run by bash and by dash): gcl acquire in its usual forms.
set -e
stop=
trap 'stop=1' TERM
led() { "$STRESS_PY" -S "$STRESS_PYC" --ledger "$STRESS_WORK" $$ "$@"; }
r=$STRESS_SEED
while [ -z "$stop" ]; do
    r=$(( (r * 1103515245 + 12345) % 2147483648 ))
    form=$(( r / 65536 % 5 ))
    hold=0.0$(( r / 7 % 5 + 1 ))
    led wait
    case $form in
    0) @FORM0@ ;;
    1) @FORM1@ ;;
    2) @FORM2@ ;;
    3) @FORM3@ ;;
    *) @FORM4@ ;;
    esac
    case $lease in
    [0-9]*-[0-9a-f]*) ;;
    *) led nolease "$form" "$lease"; exit 3 ;;
    esac
    led enter "$lease" "$form"
    sleep "$hold"
    led leave "$lease"
    gcl release "$lease"
done
"""


def shell_script() -> str:
    text = SHELL_SCRIPT
    for i, (_, form) in enumerate(SHELL_FORMS):
        text = text.replace(f"@FORM{i}@", form)
    return text


# -- the driver --------------------------------------------------------------------------------------


class Proc:
    __slots__ = ("kind", "log", "pid", "slot", "spawned", "start")

    def __init__(self, pid: int, slot: int, kind: str, start: int | None, log: Path) -> None:
        self.pid = pid
        self.slot = slot
        self.kind = kind
        self.start = start
        self.log = log
        self.spawned = time.monotonic()


class Stats:
    def __init__(self) -> None:
        self.spawned: Counter[str] = Counter()
        self.kills: Counter[str] = Counter()
        self.terms: Counter[str] = Counter()
        self.sigints = 0
        self.kill_misses = 0
        self.exits: Counter[str] = Counter()
        self.orphans_reaped = 0
        self.orphan_exits: Counter[str] = Counter()
        self.audits = 0
        self.max_leases = 0
        self.max_tickets = 0
        self.forced_at_stop = 0
        self.restarts: list[float] = []
        """PostgreSQL: how long each server restart took."""


class Victim:
    __slots__ = ("kind", "owner", "pid", "start", "what")

    def __init__(self, pid: int, what: str, kind: str, start: int | None, owner: int | None = None) -> None:
        self.pid = pid
        self.what = what
        self.kind = kind
        self.start = start
        self.owner = owner
        """The driver's worker this process belongs to (a shell for its gcl acquire, a wrapper for its child)."""


class Driver:
    def __init__(self, args: Any, work: Path, db: Path | str) -> None:
        self.args = args
        self.work = work
        self.db = db
        self.pg = is_pg(db)
        self.me = os.getpid()
        self.ledger = Ledger(work)
        self.rng = random.Random(args.seed)
        self.stats = Stats()
        self.failures: list[str] = []
        self.violations: Counter[str] = Counter()
        self.violations_by: Counter[str] = Counter()
        self.procs: dict[int, Proc] = {}
        self.slots: dict[int, int | None] = {}
        self.slot_kinds = [args.kinds[i % len(args.kinds)] for i in range(args.workers)]
        for fault in args.faults:
            kinds = FAULT_KINDS[fault]
            self.slot_kinds += [kinds[i % len(kinds)] for i in range(args.fault_workers if kinds else 0)]
        if args.inject_leaks:
            self.slot_kinds.append("leaker")
        self.killed: set[int] = set()
        self.termed: set[int] = set()
        self.disturbed: set[int] = set()
        """Shells whose gcl acquire (or other descendant) was killed or terminated: they may exit with its code."""
        self.killed_child_parents: set[int] = set()
        self.storm: set[int] = set()
        """The sigint workers that get SIGINTs now."""
        self.stopping = False
        self.spawn_count = 0
        self.servers: set[int] = set()
        self.last_restart = 0.0
        self.restart_grace = 0.0
        """On PostgreSQL, S: after a restart nobody is judged dead for that long (a waiter at the head that
        died then is not reaped, and nobody else watches the holders: a dead holder's lease waits too)."""
        """Servers that restart_server made our children (we are a subreaper): never a worker of ours."""
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = str(REPO) + os.pathsep + self.env.get("PYTHONPATH", "")
        self.env.pop("GCL_DB", None)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.shells = {kind: shutil_which(kind) or shutil_which("bash") or "/bin/sh" for kind in SHELL_KINDS}
        self.shell_path = work / "shell-worker.sh"
        self.pyc = work / "stress.pyc"
        """This script, compiled: the shell workers' ledger helper starts from it (a script is compiled anew on
        every start, and PYTHONDONTWRITEBYTECODE may be set)."""
        self.unaccounted_since: dict[int, float] = {}
        self.lonely_ticket_since: dict[int, float] = {}
        self.dead_since: dict[int, float] = {}
        self.dead_ticket_since: dict[int, float] = {}
        self.orphan_tickets: set[int] = set()
        self.windows: list[tuple[float, float]] = []
        """(when, how long): legitimate windows seen lately (a lease not yet entered that then was: a leaked lease
        never is), which make the grace longer on a loaded machine."""
        self.max_grace = args.leak_seconds
        self.reported: set[str] = set()
        self.last_acquisitions = -1
        self.last_progress = time.monotonic()
        self.names = [args.name]
        if "nonblock" in args.faults:
            self.names.append(rate_name(args.name))
        if args.inject_leaks:
            self.names.append(selftest_name(args.name))

    def fail(self, category: str, text: str, kind: str | None = None, n: int = 1) -> None:
        self.violations[category] += n
        if kind is not None:
            self.violations_by[f"{category}:{kind}"] += n
        if len(self.failures) < 50:
            self.failures.append(f"[{category}] {text}")
        if self.args.verbose or len(self.failures) <= 10:
            print(f"  FAIL [{category}]: {text}", file=sys.stderr, flush=True)

    def grace(self, now: float) -> float:
        """--leak-seconds, or 3 x the longest legitimate window seen in the last minute if that is longer."""
        self.windows = [w for w in self.windows if w[0] > now - 60.0]
        grace = max(float(self.args.leak_seconds), 3.0 * max((w[1] for w in self.windows), default=0.0))
        self.max_grace = max(self.max_grace, grace)
        return grace

    def fail_once(self, key: str, category: str, text: str, kind: str | None = None) -> None:
        if key not in self.reported:
            self.reported.add(key)
            self.fail(category, text, kind)

    def say(self, text: str) -> None:
        if self.args.verbose:
            print(f"  {text}", file=sys.stderr, flush=True)

    # -- spawning and reaping ----------------------------------------------------------------------

    def spawn(self, slot: int) -> None:
        kind = self.slot_kinds[slot]
        self.spawn_count += 1
        seed = self.args.seed * 1_000_003 + self.spawn_count
        common = ["--work", str(self.work), "--limit", str(self.args.limit), "--seed", str(seed), "--db", str(self.db)]
        if self.args.restart_every:
            common += ["--restart-every", str(self.args.restart_every)]  # (workers then count StoreErrors)
        env = self.env
        if kind in PY_KINDS or kind in ("nonblock", "leaker"):
            argv = [sys.executable, str(SCRIPT), "--role", kind, "--name", self.args.name, *common]
            argv += ["--hold-ms", f"{self.args.hold_min},{self.args.hold_max}", "--tasks", str(self.args.tasks)]
            argv += ["--async-cancel-rate", str(self.args.async_cancel_rate)]
            argv += ["--sigint-after-commit", str(self.args.sigint_after_commit)]
        elif kind == "cli":
            argv = self.cli_argv(common)
        else:
            argv = [self.shells[kind], str(self.shell_path)]
            env = dict(self.env)
            bin_dir = Path(gcl_command()[0]).parent if len(gcl_command()) == 1 else self.work / "bin"
            env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
            env.update(
                GCL_DB=str(self.db), STRESS_PY=sys.executable, STRESS_PYC=str(self.pyc), STRESS_WORK=str(self.work),
                STRESS_NAME=self.args.name, STRESS_SEED=str(seed % 2147483647 + 1), STRESS_KIND=kind,
            )  # fmt: skip
        log = self.work / f"worker-{slot}-{kind}.log"
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        # A sigint worker starts with SIGINT blocked, and unblocks it once its handler is in place.
        mask = {signal.SIGINT} if kind == "sigint" else set()
        # A shell script runs in a session of its own, as cron and systemd start one: a subshell of a
        # killed script that this driver adopts is then outside the script's session, and its
        # `gcl acquire` refuses rather than take the driver for its holder.
        group = {"setsid": True} if kind in ("bash", "dash") else {"setpgroup": 0}
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions, setsigmask=mask, **group)
        self.procs[pid] = Proc(pid, slot, kind, start_time(pid), log)
        self.slots[slot] = pid
        self.stats.spawned[kind] += 1

    def cli_argv(self, common: list[str]) -> list[str]:
        rng, args = self.rng, self.args
        p = plan(rng, args)
        use_script = len(gcl_command()) == 1 and rng.random() < 0.85  # else `python -m gcl_local`
        head = gcl_command() if use_script else [sys.executable, "-m", "gcl_local"]
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
                return not self.servers or bool(self.children())
            if pid in self.servers:
                self.servers.discard(pid)  # (an old server, after the next restart)
                continue
            self.exited(pid, os.waitstatus_to_exitcode(status))

    def children(self) -> list[int]:
        """Our children (adopted orphans too), but no server that a restart left with us."""
        return [pid for pid in children_of(self.me) if pid not in self.servers]

    def exited(self, pid: int, code: int) -> None:
        proc = self.procs.pop(pid, None)
        killed = pid in self.killed
        termed = pid in self.termed
        self.killed.discard(pid)
        self.termed.discard(pid)
        if proc is None:  # an orphan adopted by us: a gcl run child, a shell's command, a forked child
            self.stats.orphans_reaped += 1
            self.stats.orphan_exits[str(code)] += 1
            return
        self.stats.exits[f"{proc.kind}:{code}"] += 1
        expected = {-9} if killed else set()
        if termed or self.stopping:
            expected |= {0, -15, 128 + 15}
        if proc.kind == "cli":
            expected |= {0, EX_TEMPFAIL}
            if pid in self.killed_child_parents:
                expected.add(128 + 9)
        if self.args.restart_every and (proc.kind == "cli" or proc.kind in SHELL_KINDS):
            expected |= {1, 3}  # a gcl that connected while the server was down (see tolerated())
        if proc.kind in SHELL_KINDS and (pid in self.disturbed or termed):
            # set -e: the script ends with the status of its gcl acquire (or 3: it printed no lease)
            expected |= {0, 1, 3, EX_TEMPFAIL, 124, 128 + 9, 128 + 15}
        if code not in expected:
            self.fail(
                "unexpected-exit", f"{proc.kind} worker {pid} exited with {code} (log {proc.log}):\n{tail(proc.log)}",
                proc.kind,
            )  # fmt: skip
        self.killed_child_parents.discard(pid)
        self.disturbed.discard(pid)
        if self.slots.get(proc.slot) == pid:
            self.slots[proc.slot] = None
            if not self.stopping:
                self.spawn(proc.slot)

    # -- choosing victims --------------------------------------------------------------------------

    def victims(self, st: dict[str, Any], table: Table) -> dict[str, list[Victim]]:
        """Who can be signalled now, by category (see KILL_CATEGORIES and TERM_CATEGORIES)."""
        holders = {int(pid): e for pid, e in st["holders"].items()}
        kids = children_map(table)
        live = {pid: p for pid, p in self.procs.items() if pid in table and table[pid][1] != "Z"}
        found: dict[str, list[Victim]] = {c: [] for c in (*KILL_CATEGORIES, *TERM_CATEGORIES)}
        for pid, e in holders.items():
            parent = (lookup(table, pid) or (0, "", 0))[0]
            owner = pid if pid in live else parent if parent in live else None
            what = "child" if e["kind"] == "cli" else e["kind"]
            found["holder"].append(Victim(pid, what, e["kind"], e["start"], owner))
        for pid, p in live.items():
            if p.kind == "leaker":
                continue
            children = [c for c in kids.get(pid, ()) if c not in self.procs]
            if p.kind == "cli":
                if children:
                    found["wrapper"].append(Victim(pid, "wrapper", "cli", p.start, pid))
                    for c in children:
                        if c not in holders:
                            found["child"].append(Victim(c, "child", "cli", table[c][2], pid))
                else:
                    found["waiter"].append(Victim(pid, "wrapper", "cli", p.start, pid))
            elif p.kind == "nonblock":
                for c in children:
                    found["ncaller"].append(Victim(c, "ncaller", "nonblock", table[c][2], pid))
            elif pid not in holders:
                found["waiter"].append(Victim(pid, p.kind, p.kind, p.start, pid))
                if p.kind in SHELL_KINDS:
                    for c in descendants(kids, pid):
                        if "acquire" in cmdline(c):
                            found["waiter"].append(Victim(c, "gcl-acquire", p.kind, table[c][2], pid))
        for c in kids.get(self.me, ()):  # orphaned `gcl run` children, adopted by us
            if c not in self.procs and c not in holders and "child" in cmdline(c)[3:5]:
                found["child"].append(Victim(c, "child", "cli", table[c][2]))
        return found

    def pick(self, found: dict[str, list[Victim]], weights: dict[str, float]) -> tuple[str, Victim] | None:
        categories = [c for c in weights if found[c]]
        if not categories:
            return None
        category = self.rng.choices(categories, [weights[c] for c in categories])[0]
        by_kind: dict[str, list[Victim]] = {}
        for victim in found[category]:
            by_kind.setdefault(victim.kind, []).append(victim)  # balanced across kinds
        return category, self.rng.choice(by_kind[self.rng.choice(sorted(by_kind))])

    # -- killing -----------------------------------------------------------------------------------

    def kill_one(self) -> None:
        """SIGKILL one random victim under the ledger lock, and take its ledger entries off before unlocking."""
        weights = dict(KILL_CATEGORIES)
        if "nonblock" not in self.args.faults:
            weights.pop("ncaller")
        with self.ledger.locked(LEDGER_TIMEOUT) as tx:
            table = process_table()
            chosen = self.pick(self.victims(tx.state, table), weights)
            if chosen is None:
                return
            category, v = chosen
            holders = tx.state["holders"]
            result = kill_and_wait(v.pid, v.start)
            if result == "alive":
                self.fail("driver", f"{v.what} {v.pid} did not die within {DEATH_TIMEOUT:g} s of SIGKILL")
            if result == "gone":
                self.stats.kill_misses += 1
                if str(v.pid) in holders:
                    self.fail("holder-died", f"ledger holder {v.pid} ({v.kind}) was gone without leaving the ledger")
            else:
                self.stats.kills[f"{category}:{v.what}"] += 1
                if v.pid in self.procs:
                    self.killed.add(v.pid)
                if v.what == "child" and v.owner in self.procs:
                    self.killed_child_parents.add(v.owner)
                if v.kind in SHELL_KINDS and v.owner is not None and v.owner != v.pid:
                    self.disturbed.add(v.owner)
            if str(v.pid) in holders:
                del holders[str(v.pid)]
                tx.dirty = True
            self.ledger.drop_waiting(v.pid)
            self.say(f"kill {category} {v.what} {v.pid}: {result}")

    def term_one(self) -> None:
        """SIGTERM one random victim, under the ledger lock: as ``timeout`` does (the process) or as systemd
        does (the process and all its descendants; only for waiters, whose helpers may die with them)."""
        weights = dict(TERM_CATEGORIES)
        if "nonblock" not in self.args.faults:
            weights.pop("ncaller")
        with self.ledger.locked(LEDGER_TIMEOUT) as tx:
            table = process_table()
            found = self.victims(tx.state, table)
            found["holder"] = [v for v in found["holder"] if v.pid in self.procs]  # our workers only
            chosen = self.pick(found, weights)
            if chosen is None:
                return
            category, v = chosen
            targets = [v.pid]
            mode = "process"
            if category == "waiter" and v.what != "gcl-acquire" and self.rng.random() < 0.5:
                mode = "tree"
                targets += descendants(children_map(table), v.pid)
            sent = False
            for pid in targets:
                if pid in table and signal_if(pid, table[pid][2], signal.SIGTERM):
                    sent = True
                    if pid in self.procs:  # (others are reaped by their parents, not by us)
                        self.termed.add(pid)
            if not sent:
                return
            self.stats.terms[f"{category}:{v.what}:{mode}"] += 1
            if v.kind in SHELL_KINDS and v.owner is not None:
                self.disturbed.add(v.owner)
            self.say(f"term {category} {v.what} {v.pid} ({mode})")

    def sigint_one(self) -> None:
        pids = [pid for pid, p in self.procs.items() if p.kind == "sigint"]
        stormy = [pid for pid in pids if pid in self.storm]
        if not stormy and pids:  # the storm's workers died: a new one takes over
            self.storm.add(self.rng.choice(pids))
            stormy = [pid for pid in pids if pid in self.storm]
        pids = stormy
        if pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.rng.choice(pids), signal.SIGINT)  # not reaped yet: the pid is still ours
                self.stats.sigints += 1

    # -- auditing ----------------------------------------------------------------------------------

    def audit(self) -> None:
        from gcl_local._backend import open_backend

        store = open_backend(str(self.db))  # rows through the backend seam, on either backend
        run_dir = None if self.pg else Path(store.run_dir)  # type: ignore[attr-defined]
        self.restart_grace = getattr(store, "detect_seconds", 0.0)
        with self.ledger.locked(LEDGER_TIMEOUT) as tx:
            st = tx.state
            leases: dict[int, Any] = {}
            queues: dict[str, list[Any]] = {}
            with store.read() as rtx:
                for name in self.names:
                    for lease in rtx.leases_on(name):
                        leases[lease.token] = lease
                    queues[name] = rtx.waiting_on(name)
                wall = rtx.now.wall
            on_limit = [x for x in leases.values() if self.args.name in x.names]
            tickets = {t.ticket: t for q in queues.values() for t in q}
            # Liveness is judged now, while nobody can enter or leave the ledger.
            table = process_table()
            liveness: dict[str, bool | None] = {}
            for token in {x.registration for x in leases.values()} | {t.registration for t in tickets.values()}:
                if token is not None:
                    # PostgreSQL: as gcl_local asks (None just after a server restart, while the living take
                    # their locks again: unknown, and no check counts it as dead or alive).
                    liveness[token] = store.alive(token) if run_dir is None else token_alive(run_dir, token)
            for pid, e in list(st["holders"].items()):  # entries of processes that are gone
                info = lookup(table, int(pid))
                if info is None or info[1] == "Z" or info[2] != e["start"]:
                    del st["holders"][pid]
                    tx.dirty = True
                    self.fail("holder-died", f"ledger holder {pid} ({e['kind']}) died in its block", e["kind"])
            holders = dict(st["holders"])
        waiting = {}  # read after the snapshot of the state file: every wait its tickets belong to is there
        for pid, e in self.ledger.waiting().items():
            info = lookup(table, pid)
            if info is not None and info[1] != "Z" and info[2] == e["start"]:
                waiting[str(pid)] = e
            elif info is None:
                self.ledger.drop_waiting(pid)
        now = time.monotonic()
        self.stats.audits += 1
        self.stats.max_leases = max(self.stats.max_leases, len(on_limit))
        self.stats.max_tickets = max(self.stats.max_tickets, len(tickets))
        acquisitions = sum(st["acquisitions"].values())
        if acquisitions != self.last_acquisitions:
            self.last_acquisitions, self.last_progress = acquisitions, now
        elif now - self.last_progress > self.args.stall_seconds * self.grace(now) / self.args.leak_seconds:
            self.fail_once("stall", "stall", f"no acquisition for {now - self.last_progress:.1f} s\n{self.dump()}")

        def alive_lease(lease: Any) -> bool | None:
            if lease.registration is not None:
                return liveness.get(lease.registration)
            info = lookup(table, lease.pid or 0)
            return info is not None and info[1] != "Z" and (lease.pid_start is None or info[2] == lease.pid_start)

        held = sum(lease.slots for lease in on_limit)
        gcl_limit = self.args.limit if self.args.gcl_limit is None else self.args.gcl_limit
        if held > gcl_limit:
            rows = [(x.token, x.pid, x.label, x.slots) for x in on_limit]
            self.fail("gcl-over-limit", f"gcl_local leases {held} slots on {self.args.name!r} > {gcl_limit}: {rows}")
        starting = self._starting_children(table, holders, run_dir)
        self._audit_leases(leases, holders, table, alive_lease, now, wall, bool(tickets), starting)
        self._audit_tickets(queues, waiting, table, liveness, now, wall)

    def _starting_children(self, table: Table, holders: dict[str, Any], run_dir: Path | None) -> dict[str, int]:
        """{liveness token: pid} of `gcl run` children that live but are not in the ledger: starting up (Python
        takes a while) or exiting after their block. Their wrapper's lease is not a leak (while the child has used
        less than 2 s of CPU: its block lasts 50 ms at most). On PostgreSQL (no *run_dir*), keyed by
        ``fencing:<its lease's fencing token>`` instead (its inherited token is a socket)."""
        kids = children_map(table)
        found = {}
        parents = [pid for pid, p in self.procs.items() if p.kind == "cli"] + [self.me]
        for parent in parents:
            for pid in kids.get(parent, ()):
                if pid in self.procs or str(pid) in holders:
                    continue
                cmd = cmdline(pid)
                if cmd[2:4] != ["--role", "child"] or cpu_seconds(pid) >= 2.0:
                    continue
                if run_dir is None:
                    fencing = environment_of(pid).get("GCL_FENCING_TOKEN")
                    if fencing:
                        found[f"fencing:{fencing}"] = pid
                    continue
                with contextlib.suppress(OSError):
                    for fd in os.listdir(f"/proc/{pid}/fd"):
                        with contextlib.suppress(OSError):
                            target = os.readlink(f"/proc/{pid}/fd/{fd}")
                            if os.path.dirname(target) == str(run_dir) and target.endswith(".lock"):
                                found[os.path.basename(target)[: -len(".lock")]] = pid
        return found

    def _owner_kind(self, table: Table, *pids: int | None) -> str:
        """The kind of the driver's worker that *pids* (or one of their ancestors) belong to."""
        if self.me in pids:
            return "driver"  # an orphan's gcl acquire took its new parent, this subreaper, for its holder
        for pid in pids:
            for p in ancestors(table, pid or 0, self.me):
                if p in self.procs:
                    return self.procs[p].kind
        return "orphan"

    def _audit_leases(
        self, leases: dict[int, Any], holders: dict[str, Any], table: Table, alive_lease: Any, now: float,
        wall: float, anyone_waits: bool, starting: dict[str, int],
    ) -> None:  # fmt: skip
        by_fencing = {t: (pid, e) for pid, e in holders.items() for t in e["tokens"]}
        cli_slots: Counter[str] = Counter()  # `gcl run` children: slots by liveness token (no fencing token)
        for pid, e in holders.items():
            if e["kind"] == "cli" and not e["tokens"]:  # (on PostgreSQL a child knows its fencing token)
                if e.get("gcl") is None:
                    self.fail_once(f"notoken:{pid}", "ledger", f"gcl run child {pid} holds no gcl_local token", "cli")
                cli_slots[e.get("gcl") or f"pid:{pid}"] += e["n"]
        # A process in its block whose lease is gone or whose holder is dead: at once, no grace.
        for token, (pid, e) in by_fencing.items():
            lease = leases.get(token)
            if lease is None or alive_lease(lease) is False or (alive_lease(lease) is None and not self.pg):
                kind = e["kind"] + (f":{e['form']}" if e.get("form") else "")
                state = "gone" if lease is None else f"held by dead {lease.pid} ({lease.label})"
                self.fail_once(
                    f"lost:{token}", "lost-lease",
                    f"LOST LEASE: {kind} pid {pid} is in its block with fencing token {token}, whose lease is {state}",
                    kind,
                )  # fmt: skip
        lease_slots: Counter[str] = Counter()
        for lease in leases.values():
            if lease.token not in by_fencing and lease.registration is not None and alive_lease(lease):
                lease_slots[lease.registration] += lease.slots
        for token, n in cli_slots.items():
            if lease_slots[token] < n:
                self.fail(
                    "lost-lease", f"LOST LEASE: gcl run child with token {token} holds {n} slots in the ledger, "
                    f"gcl_local has {lease_slots[token]} live ones", "cli",
                )  # fmt: skip
        # A live holder's lease that no process in its block accounts for, past the grace period.
        seen_unaccounted, seen_dead, accounted = set(), set(), set()
        grace = self.grace(now)
        for lease in sorted(leases.values(), key=lambda x: x.token):
            state = alive_lease(lease)
            if lease.token in by_fencing:
                accounted.add(lease.token)
                continue
            if state and lease.registration is not None and cli_slots[lease.registration] >= lease.slots:
                cli_slots[lease.registration] -= lease.slots
                accounted.add(lease.token)
                continue
            if state and (lease.registration in starting or f"fencing:{lease.token}" in starting):
                continue  # its `gcl run` child starts up or exits: not a leak, and no window to learn from
            if state is None and self.pg:
                continue  # unknown (just after a server restart): neither a leak nor a dead holder's lease
            if state:
                seen_unaccounted.add(lease.token)
                # (Counted from the server's return at the earliest: while it is down nothing is given back.)
                first = max(self.unaccounted_since.setdefault(lease.token, now), self.last_restart)
                if now - first > grace:
                    kind = self._owner_kind(table, lease.pid, _token_pid(lease.registration))
                    mates = {p: e for p, e in holders.items() if e.get("gcl") == lease.registration}
                    self.fail_once(
                        f"leak:{lease.token}", "leaked-lease",
                        f"LEAKED LEASE {lease.token}-{lease.secret} on {list(lease.names)}: "
                        f"held by live pid {lease.pid} ({lease.label}, "
                        f"{kind}) for {now - first:.1f} s outside any block (age {wall - lease.acquired_wall:.1f} s); "
                        f"holder {describe(lease.pid or 0)}; token {lease.registration} of "
                        f"{describe(_token_pid(lease.registration) or 0)}; ledger entries with that token: {mates}",
                        kind,
                    )  # fmt: skip
            else:  # dead (a missing token file is a dead holder too)
                seen_dead.add(lease.token)
                # Kept since it was first seen dead, or since the grace after a restart ended: while the
                # server is down nobody can reclaim anything (10-second CI run, restarts every 4 s: 3.0 s
                # counted), and for S after it the head of the queue may be a dead waiter nobody judges
                # (150 s soak, S = 5: a pid-held lease of a killed dash script kept 3.2 s after a restart).
                first = max(self.dead_since.setdefault(lease.token, now), self.last_restart + self.restart_grace)
                if anyone_waits and now - first > grace:
                    kind = self._owner_kind(table, lease.pid, _token_pid(lease.registration))
                    self.fail_once(
                        f"dead:{lease.token}", "dead-lease-kept",
                        f"dead holder's lease {lease.token}-{lease.secret} (pid {lease.pid}, "
                        f"token {lease.registration}) kept "
                        f"{now - first:.1f} s while others wait",
                        kind,
                    )  # fmt: skip
        self.windows += [(now, now - v) for k, v in self.unaccounted_since.items() if k in accounted]
        self.unaccounted_since = {k: v for k, v in self.unaccounted_since.items() if k in seen_unaccounted}
        self.dead_since = {k: v for k, v in self.dead_since.items() if k in seen_dead}

    def _audit_tickets(
        self, queues: dict[str, list[Any]], waiting: dict[str, Any], table: Table, liveness: dict[str, bool | None],
        now: float, wall: float,
    ) -> None:  # fmt: skip
        kids = children_map(table)
        grace = self.grace(now)
        claims: dict[int, list[Any]] = {}  # the waiting process a live ticket belongs to -> its tickets
        lonely = []
        seen_dead: set[int] = set()
        starved = []
        for name, queue in queues.items():
            at_head = True  # dead tickets matter where they stand before every live one (the head of the queue)
            for ticket in queue:
                if self.pg and liveness.get(ticket.registration) is None:
                    at_head = False  # unknown (just after a server restart): neither dead nor lonely
                    continue
                if liveness.get(ticket.registration) is not True:
                    if at_head:
                        seen_dead.add(ticket.ticket)
                        first = self.dead_ticket_since.setdefault(ticket.ticket, now)
                        if now - first > grace:
                            self.fail_once(
                                f"deadticket:{ticket.ticket}", "dead-ticket-kept",
                                f"dead waiter's ticket {ticket.ticket} (pid {ticket.pid}) kept {now - first:.1f} s at "
                                f"the head of the queue of {name!r}",
                                self._owner_kind(table, ticket.pid, _token_pid(ticket.registration)),
                            )  # fmt: skip
                    continue
                at_head = False
                if (
                    wall - ticket.since_wall > self.args.stall_seconds * grace / self.args.leak_seconds
                    and f"starved:{ticket.ticket}" not in self.reported
                ):
                    self.reported.add(f"starved:{ticket.ticket}")
                    starved.append(f"{ticket.ticket} (pid {ticket.pid}, {wall - ticket.since_wall:.1f} s)")
                owner = self._waiter_of(table, kids, waiting, ticket.pid, _token_pid(ticket.registration))
                if owner is None and (
                    self._orphaned(table, ticket.pid, _token_pid(ticket.registration))
                    # PostgreSQL: a registration names no pid; a gcl acquire (a ticket by pid) whose script is dead
                    or (self.pg and ticket.by_pid and not alive(ticket.pid or 0, ticket.pid_start))
                ):
                    # e.g. the gcl acquire of a shell we killed: it still waits (the library cannot know its
                    # script is gone, and a lease it gets for a dead shell is freed at once)
                    self.orphan_tickets.add(ticket.ticket)
                elif owner is None:
                    lonely.append(ticket)
                else:
                    claims.setdefault(owner, []).append(ticket)
        for owner, owned in claims.items():
            allowed = self._waits(owner, waiting, kids)
            owned.sort(key=lambda t: t.ticket, reverse=True)  # a waiter's current ticket is its newest
            lonely += owned[allowed:]
        seen_lonely = set()
        for ticket in {t.ticket: t for t in lonely}.values():
            seen_lonely.add(ticket.ticket)
            first = self.lonely_ticket_since.setdefault(ticket.ticket, now)
            if now - first > grace:
                kind = self._owner_kind(table, ticket.pid, _token_pid(ticket.registration))
                self.fail_once(
                    f"lonely:{ticket.ticket}", "ticket-without-waiter",
                    f"TICKET WITHOUT WAITER: ticket {ticket.ticket} on {list(ticket.names)} of live pid "
                    f"{ticket.pid} ({ticket.label}, {kind}, token {ticket.registration}) kept {now - first:.1f} s "
                    "while nobody of it waits",
                    kind,
                )  # fmt: skip
        self.lonely_ticket_since = {k: v for k, v in self.lonely_ticket_since.items() if k in seen_lonely}
        self.dead_ticket_since = {k: v for k, v in self.dead_ticket_since.items() if k in seen_dead}
        if starved:
            self.fail("stall", f"waiters starved longer than {self.args.stall_seconds:g} s: {', '.join(starved)}")

    def _waiter_of(
        self, table: Table, kids: dict[int, list[int]], waiting: dict[str, Any], *pids: int | None
    ) -> int | None:
        """The process that waits for a ticket of *pids*: the nearest ancestor (or self) recorded as waiting,
        or a `gcl run` wrapper whose command has not started."""
        for pid in pids:
            for p in ancestors(table, pid or 0, self.me):
                e = waiting.get(str(p))
                if e is not None and e["start"] == table[p][2]:
                    return p
                proc = self.procs.get(p)
                if proc is not None and proc.kind == "cli":
                    return p
        return None

    def _orphaned(self, table: Table, *pids: int | None) -> bool:
        """Whether the live ones of *pids* are all orphans we adopted (their worker was killed), none of a worker."""
        chains = [ancestors(table, pid or 0, self.me) for pid in pids]
        chains = [c for c in chains if c]
        return bool(chains) and all(table[c[-1]][0] == self.me and not any(p in self.procs for p in c) for c in chains)

    def _waits(self, pid: int, waiting: dict[str, Any], kids: dict[int, list[int]]) -> int:
        """How many waits *pid* has now."""
        proc = self.procs.get(pid)
        if proc is not None and proc.kind == "cli":
            return 0 if kids.get(pid) else 1
        e = waiting.get(str(pid))
        return int(e["n"]) if e else 0

    def dump(self) -> str:
        """What the state file and the run directory hold now (read-only)."""
        from gcl_local._backend import open_backend

        store = open_backend(str(self.db))
        lines = []
        with store.read() as rtx:
            for name in self.names:
                for lease in rtx.leases_on(name):
                    lines.append(
                        f"    {name}: lease {lease.token}-{lease.secret} pid {lease.pid} slots {lease.slots} "
                        f"token {lease.registration}"
                    )
                for t in rtx.waiting_on(name):
                    lines.append(
                        f"    {name}: ticket {t.ticket} pid {t.pid} slots {t.slots} token {t.registration} "
                        f"channel {t.channel}"
                    )
        if not self.pg:
            with contextlib.suppress(OSError):
                lines.append(f"    run dir: {sorted(os.listdir(store.run_dir))}")  # type: ignore[attr-defined]
        st = self.ledger.read()
        lines.append(f"    ledger: holders {st['holders']}, waiting {self.ledger.waiting()}")
        return "\n".join(lines)

    # -- the run -----------------------------------------------------------------------------------

    def run(self, seconds: float) -> None:
        import py_compile

        self.shell_path.write_text(shell_script())
        py_compile.compile(str(SCRIPT), cfile=str(self.pyc), doraise=True)
        if len(gcl_command()) > 1:  # no `gcl` script beside this python: the shell workers get one
            (self.work / "bin").mkdir(exist_ok=True)
            wrapper = self.work / "bin" / "gcl"
            wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m gcl_local "$@"\n')
            wrapper.chmod(0o755)
        for slot in range(len(self.slot_kinds)):
            self.spawn(slot)
        start = time.monotonic()
        end = start + seconds
        faults, args, rng = self.args.faults, self.args, self.rng
        gap_max = min(1.0, 2.0 / args.kill_rate) if args.kill_rate else 0.0
        next_kill = start + rng.uniform(0.05, gap_max) if gap_max else float("inf")
        term_rate = args.term_rate if "sigterm" in faults else 0.0
        next_term = start + rng.expovariate(term_rate) if term_rate > 0 else float("inf")
        sigint_rate = args.sigint_rate if "sigint" in faults else 0.0
        next_sigint = start + rng.expovariate(sigint_rate) if sigint_rate > 0 else float("inf")
        next_storm = start
        next_audit = start + args.audit_interval
        next_report = start + 10.0
        next_restart = start + args.restart_every if args.restart_every else float("inf")
        while (now := time.monotonic()) < end:
            self.reap()
            if now >= next_kill:
                self.kill_one()
                self.reap()
                next_kill = time.monotonic() + rng.uniform(0.05, gap_max)
            if now >= next_term:
                self.term_one()
                next_term = time.monotonic() + rng.expovariate(term_rate)
            if now >= next_storm:
                # SIGINTs go to a random half of the sigint workers at a time (at least one): the others can
                # reach the head of the queue, and get their SIGINTs while they hold and release.
                pids = [pid for pid, p in self.procs.items() if p.kind == "sigint"]
                self.storm = {pid for pid in pids if rng.random() < 0.5} or set(rng.sample(pids, min(1, len(pids))))
                next_storm = now + rng.uniform(0.3, 2.0)
            sent = 0
            while now >= next_sigint and sent < 10:
                self.sigint_one()
                sent += 1
                next_sigint += rng.expovariate(sigint_rate)
            next_sigint = max(next_sigint, now - 0.1)  # never a burst to catch up after a slow step
            if args.audit_interval > 0 and now >= next_audit:
                self.audit()
                next_audit = time.monotonic() + args.audit_interval
            if now >= next_restart:
                self.restart_server()
                next_restart = time.monotonic() + args.restart_every * rng.uniform(0.5, 1.5)
            if now >= next_report:
                st = self.ledger.read()
                print(
                    f"  {now - start:5.0f} s: {sum(st['acquisitions'].values())} acquisitions, "
                    f"{sum(self.stats.kills.values())} kills, {sum(self.stats.terms.values())} SIGTERMs, "
                    f"{self.stats.sigints} SIGINTs, max {st['max_seen']}, {st['over_admissions']} over-admissions, "
                    f"{len(self.failures)} failures",
                    flush=True,
                )
                next_report += 10.0
            time.sleep(0.002)

    def restart_server(self) -> None:
        """PostgreSQL: restart the server as a crash does (``pg_ctl restart -m immediate``): every session,
        lock and LISTEN is gone, the rows stay. Workers that hold, wait or commit meanwhile must carry on."""
        import subprocess

        began = time.monotonic()
        result = subprocess.run(
            [str(REPO / "scripts" / "pg-server"), "restart", self.args.pg_dir, "immediate"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            self.fail("driver", f"the server did not restart: {result.stderr.strip()}")
            return
        self.stats.restarts.append(time.monotonic() - began)
        self.last_restart = time.monotonic()
        with contextlib.suppress(OSError, ValueError):  # its postmaster is ours now, if pg_ctl left it
            self.servers.add(int((Path(self.args.pg_dir) / "data" / "postmaster.pid").read_text().split()[0]))
        self.say(f"server restarted in {self.stats.restarts[-1]:.2f} s")

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
        lingering = self.children()
        self.fail("stop", f"{len(lingering)} processes did not stop within {self.args.stop_timeout:g} s of SIGTERM")
        for pid in lingering:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)  # the stacks go to its log
            proc = self.procs.get(pid)
            if proc is not None and proc.kind in ASYNC_KINDS:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGUSR2)
        time.sleep(0.5)
        self.fail("stop", f"  state now:\n{self.dump()}")
        for pid in lingering:
            proc = self.procs.get(pid)
            self.fail("stop", f"  still running: {pid} {proc.kind if proc else cmdline(pid)} state {proc_state(pid)}")
            if proc is not None:
                self.fail("stop", f"  its log ends:\n{tail(proc.log, 6000)}")
        self.stats.forced_at_stop = len(lingering)
        self.force_all()

    def force_all(self) -> None:
        """SIGKILL every descendant still alive (their ledger entries go), and reap them all."""
        with contextlib.suppress(LedgerStuckError), self.ledger.locked(LEDGER_TIMEOUT) as tx:
            for pid in list(self.procs):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)  # the wrapper's group holds its child too
            for pid in self.children():
                kill_and_wait(pid, None, 1.0)
                tx.state["holders"].pop(str(pid), None)
                tx.dirty = True
            for pid in list(self.procs):
                kill_and_wait(pid, None, 1.0)
            for pid, e in list(tx.state["holders"].items()):  # e.g. children of wrappers, killed with their group
                if not alive(int(pid), e["start"]):
                    del tx.state["holders"][pid]
                    tx.dirty = True
        deadline = time.monotonic() + 10.0
        self.stopping = True
        while self.reap() and time.monotonic() < deadline:
            for pid in self.children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)


def cpu_seconds(pid: int) -> float:
    fields = _proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields and len(fields) > 12 else 0.0


def describe(pid: int) -> str:
    """A process in a few words, for a report: state, age, CPU time, parent, command."""
    fields = _proc_stat(pid)
    if not fields or len(fields) <= 19:
        return f"pid {pid} gone"
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    age = uptime - int(fields[19]) / tick
    cpu = (int(fields[11]) + int(fields[12])) / tick
    return (
        f"pid {pid} state {fields[0].decode()} age {age:.1f} s cpu {cpu:.2f} s ppid {int(fields[1])} "
        f"cmd {' '.join(cmdline(pid))[:160]!r}"
    )


def environment_of(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in data.split(b"\0") if item)
    return {k: v for k, _, v in pairs}


def _token_pid(token: str | None) -> int | None:
    """The pid in a liveness token's name (``<pid>-<random>``), if it has one."""
    head = (token or "").split("-", 1)[0]
    return int(head) if head.isdigit() else None


def shutil_which(name: str) -> str | None:
    import shutil

    return shutil.which(name)


def tail(path: Path, size: int = 3000) -> str:
    try:
        data = path.read_bytes()[-size:]
    except OSError:
        return ""
    return data.decode(errors="replace")


# -- final checks ------------------------------------------------------------------------------------


def check_rate(grants: list[tuple[float, float]], limit: int, decay: float) -> tuple[int, str]:
    """Grants of a rate limit (each known to lie within [began, ended]) against limit + decay * t.

    Every grant whose interval lies in a window [a, b] was granted in it, and a bucket that starts empty
    grants at most limit + decay * (b - a) in any such window. Windows span from each grant's start to
    each later end (up to 5 s). Returns (the worst excess, its window).
    """
    import bisect

    grants = sorted(grants)
    starts = [s for s, _ in grants]
    worst, where = 0, ""
    for i, (a, _) in enumerate(grants):
        ends = sorted(e for _, e in grants[i : bisect.bisect_left(starts, a + 5.0)])
        for count, b in enumerate(ends, 1):
            allowed = limit + decay * (b - a)
            if count > allowed + 1e-6 and count - allowed > worst:
                worst = int(count - allowed + 0.999999)
                where = f"{count} grants within {b - a:.3f} s (allowed {allowed:.2f})"
    return worst, where


def final_checks(driver: Driver) -> dict[str, Any]:
    from gcl_local import _admission, _effects, read_limit
    from gcl_local._backend import open_backend

    args, db = driver.args, driver.db
    checks: dict[str, Any] = {}
    st = driver.ledger.read()
    checks["ledger_left"] = st["holders"]
    if st["holders"]:
        driver.fail("ledger", f"ledger not back to 0: {st['holders']}")
    if st["over_admissions"]:
        driver.fail(
            "over-admission", f"{st['over_admissions']} over-admissions:\n    " + "\n    ".join(st["log"]),
            n=st["over_admissions"],
        )  # fmt: skip
        for kind, n in st["involved"].items():
            driver.violations_by[f"over-admission:{kind}"] += n
    if st["ledger_errors"]:
        driver.fail("ledger", f"{st['ledger_errors']} ledger errors:\n    " + "\n    ".join(st["log"]))
    tokens: Counter[int] = Counter()
    for line in driver.ledger.tokens_path.read_text().splitlines():
        tokens[int(line.split()[0])] += 1
    dups = {t: n for t, n in tokens.items() if n > 1}
    checks["fencing_tokens"] = len(tokens)
    checks["duplicate_tokens"] = len(dups) + st["duplicate_tokens"]
    if dups or st["duplicate_tokens"]:
        driver.fail(
            "duplicate-token", f"fencing tokens entered twice: {sorted(dups)[:20]} ({st['duplicate_tokens']} at once)",
            n=len(dups) or st["duplicate_tokens"],
        )  # fmt: skip
    counters = driver.ledger.counts()
    checks["counters"] = dict(counters)
    leaked, swallowed, lost = (counters[f"violation:{k}"] for k in ("leaked", "swallowed", "lost_cancels"))
    if leaked:
        driver.fail(
            "async-leak-at-exit",
            f"{leaked} async workers still held leases after all their tasks had ended (at SIGTERM): "
            "leaked slots, held as long as the process lives",
            n=leaked,
        )
    if swallowed or lost:
        driver.fail(
            "lost-cancellation",
            f"{swallowed} async tasks entered their block after they were cancelled, "
            f"{lost} cancelled tasks ended without CancelledError (see the acancel/async worker logs)",
            n=swallowed + lost,
        )
    if counters["violation:nonblock"]:
        driver.fail(
            "nonblock-exit", f"{counters['violation:nonblock']} -n callers exited with another code than 0 or 75",
            "nonblock", counters["violation:nonblock"],
        )  # fmt: skip
    if "nonblock" in args.faults:
        grants = []
        for line in driver.ledger.rate_path.read_text().splitlines():
            began, ended = line.split()
            grants.append((float(began), float(ended)))
        excess, where = check_rate(grants, args.rate_limit, args.rate_decay)
        checks["rate_grants"] = len(grants)
        checks["rate_excess"] = excess
        if excess:
            driver.fail("rate-over-admission", f"rate limit over-admitted by {excess}: {where}", "nonblock", excess)

    store = open_backend(str(db))
    run_dir = None if driver.pg else Path(store.run_dir)  # type: ignore[attr-defined]
    detect = getattr(store, "detect_seconds", 0.0)
    if driver.last_restart and time.monotonic() - driver.last_restart < detect + 5.0:
        # For S after the first write on a restarted server nobody is judged dead (the living take their locks
        # again): what the killed held is reclaimed only after that.
        _effects.transact(store, _admission.sweep)
        time.sleep(detect + 0.5)
    with store.read() as rtx:
        files = sorted(os.listdir(run_dir)) if run_dir is not None and run_dir.is_dir() else []
        checks["before_sweep"] = {
            "leases": rtx.count_leases(),
            "tickets": rtx.count_tickets(),
            "run_files": len(files),
            "tokens": sum(f.endswith(".lock") for f in files),
            "pipes": sum(f.endswith(".fifo") for f in files),
        }
    _effects.transact(store, _admission.sweep)  # what a newcomer does on a crowded run directory (reads never tidy)
    # A sweep looks at registrations: the lease of a holder by pid (a gcl acquire's script) killed when nobody
    # needed the room any more is taken back only by the next acquisition that needs the room. Be that newcomer
    # (a process of its own, which leaves nothing behind).
    import subprocess

    checks["reclaimable_at_end"] = 0
    for name in driver.names:
        limit = read_limit(name, db=str(db))
        if limit.reclaimable and name != rate_name(args.name):
            checks["reclaimable_at_end"] += len(limit.reclaimable)
            newcomer = [*gcl_command(), "--db", str(db), "run", name, "--occupy", str(limit.limit), "-n", "--", "true"]
            subprocess.run(newcomer, capture_output=True, timeout=60, check=False, env=driver.env)
    left = {}
    for name in driver.names:
        limit = read_limit(name, db=str(db))
        slots = 0 if name == rate_name(args.name) else limit.active_slots  # a rate limit's bucket decays
        if slots or limit.holders or limit.waiters:
            left[name] = f"active_slots {limit.active_slots}, holders {limit.holders}, waiters {limit.waiters}"
        if name == args.name:
            checks["active_slots"] = limit.active_slots
            checks["holders_left"] = len(limit.holders)
            checks["waiters_left"] = len(limit.waiters)
    if left:
        driver.fail("left-behind", f"occupancy not back to 0: {left}")
    left_files = (
        sorted(e for e in os.listdir(run_dir) if e.endswith((".lock", ".fifo", ".tmp")))
        if run_dir is not None and run_dir.is_dir()
        else []
    )
    checks["run_files_left"] = left_files
    if left_files:
        driver.fail("left-behind", f"files left in {run_dir} after the final sweep: {left_files}")

    if driver.pg:  # the server looks after its own integrity; the rows through the seam
        with store.read() as rtx:
            checks["leases_left"], checks["tickets_left"] = rtx.count_leases(), rtx.count_tickets()
        checks["integrity"] = "ok"
        store.close()
    else:
        import apsw

        from gcl_local.sqlite._sql import integrity_check

        store.close()
        conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READWRITE)
        try:
            conn.set_busy_timeout(10_000)
            checks["integrity"] = integrity_check(conn)
            checks["leases_left"] = conn.execute("SELECT count(*) FROM leases").fetchall()[0][0]
            checks["tickets_left"] = conn.execute("SELECT count(*) FROM tickets").fetchall()[0][0]
        finally:
            conn.close()
    if checks["integrity"] != "ok":
        driver.fail("integrity", f"PRAGMA integrity_check: {checks['integrity']}")
    if checks["leases_left"] or checks["tickets_left"]:
        driver.fail("left-behind", f"rows left: {checks['leases_left']} leases, {checks['tickets_left']} tickets")

    swallowed_interrupts = 0
    for log in sorted(driver.work.glob("worker-*.log")):
        text = log.read_text(errors="replace")
        for block in text.split("Traceback (most recent call last)")[1:]:
            # An interrupt raised inside a finalizer ("Exception ignored in ...") is swallowed by Python: counted,
            # not a harness error (what it may have left behind, the audits see).
            if block.rstrip().endswith(("KeyboardInterrupt", "StopError")) or "\nKeyboardInterrupt" in block[:4000]:
                swallowed_interrupts += 1
                continue
            lines = [x for x in block.splitlines() if x.strip() and not x.strip().startswith("^")]
            driver.fail("traceback", f"traceback in {log.name}, ending:\n" + "\n".join(lines[-7:]))
            break
    checks["interrupts_in_finalizers"] = swallowed_interrupts
    checks["ledger"] = st
    return checks


def nest(counters: dict[str, int], prefix: str) -> dict[str, Any]:
    """The counters named ``prefix:a:b`` as nested dicts ``{a: {b: n}}``."""
    out: dict[str, Any] = {}
    head = f"{prefix}:" if prefix else ""
    for key, n in sorted(counters.items()):
        if not key.startswith(head):
            continue
        node = out
        parts = key[len(head) :].split(":")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {} if child is None else {"": child}
            node = child
        node[parts[-1]] = n
    return out


def summarize(driver: Driver, checks: dict[str, Any], seconds: float, elapsed: float) -> dict[str, Any]:
    st = checks.get("ledger") or {}
    acq = st.get("acquisitions", {})
    counters = checks.get("counters") or dict(driver.ledger.counts())
    stats = driver.stats
    by_what: Counter[str] = Counter()
    for key, n in stats.kills.items():
        by_what[key.split(":")[1]] += n
    faults = {
        "sigint": {
            "sent_by_driver": stats.sigints, **nest(counters, "sigint"), "sigterm_raised": nest(counters, "sigterm"),
        },
        "cancel": {**nest(counters, "cancel"), "timeouts": counters.get("timeouts:acancel", 0)},
        "fork": {"fork": nest(counters, "fork"), "multiprocessing": nest(counters, "mpfork"),
                 "mpchild_acquisitions": acq.get("mpchild", 0)},
        "nonblock": {**nest(counters, "nonblock"), "rate_grants": checks.get("rate_grants")},
        "sigterm": dict(sorted(stats.terms.items())),
        "shell": nest(st.get("shell", {}), ""),
    }  # fmt: skip
    return {
        "ok": not driver.failures,
        "seconds": seconds,
        "elapsed": round(elapsed, 1),
        "workers": len(driver.slot_kinds),
        "kinds": dict(Counter(driver.slot_kinds)),
        "faults_enabled": list(driver.args.faults),
        "limit": driver.args.limit,
        "seed": driver.args.seed,
        "db": str(driver.db),
        "acquisitions": sum(acq.values()),
        "acquisitions_by_kind": acq,
        "timeouts_by_kind": {**nest(counters, "timeouts"), "cli": stats.exits.get(f"cli:{EX_TEMPFAIL}", 0)},
        "async_cancelled": counters.get("cancel:landed:outer", 0),
        "async_cancel_lost": counters.get("violation:swallowed", 0) + counters.get("violation:lost_cancels", 0),
        "async_workers_leaking": counters.get("violation:leaked", 0),
        "faults": faults,
        "kills": sum(stats.kills.values()),
        "server_restarts": len(stats.restarts),
        "store_errors": nest(counters, "store-errors"),
        "longest_restart": round(max(stats.restarts, default=0.0), 2),
        "kills_by": dict(sorted(stats.kills.items())),
        "kills_by_victim": dict(by_what),
        "kill_misses": stats.kill_misses,
        "terms": sum(stats.terms.values()),
        "sigints": stats.sigints,
        "spawned": dict(stats.spawned),
        "exits": dict(sorted(stats.exits.items())),
        "orphans_reaped": stats.orphans_reaped,
        "orphan_tickets": len(driver.orphan_tickets),
        "max_holders": st.get("max_seen", 0),
        "over_admissions": st.get("over_admissions", 0),
        "duplicate_tokens": checks.get("duplicate_tokens", st.get("duplicate_tokens", 0)),
        "audits": stats.audits,
        "max_grace": round(driver.max_grace, 2),
        "max_leases_seen": stats.max_leases,
        "max_tickets_seen": stats.max_tickets,
        "forced_at_stop": stats.forced_at_stop,
        "integrity": checks.get("integrity"),
        "active_slots": checks.get("active_slots"),
        "before_sweep": checks.get("before_sweep"),
        "reclaimable_at_end": checks.get("reclaimable_at_end"),
        "leases_left": checks.get("leases_left"),
        "tickets_left": checks.get("tickets_left"),
        "run_files_left": checks.get("run_files_left"),
        "interrupts_in_finalizers": checks.get("interrupts_in_finalizers"),
        "violations": dict(driver.violations),
        "violations_by_kind": dict(sorted(driver.violations_by.items())),
        "failures": driver.failures,
    }


def print_summary(s: dict[str, Any]) -> None:
    print(f"gcl_local stress: {s['elapsed']} s ({s['seconds']:g} s of chaos), {s['workers']} workers {s['kinds']}, "
          f"limit {s['limit']}, seed {s['seed']}, faults {','.join(s['faults_enabled']) or 'none'}")  # fmt: skip
    print(f"  acquisitions: {s['acquisitions']} {s['acquisitions_by_kind']}")
    print(f"  timeouts: {s['timeouts_by_kind']}, async cancelled from outside: {s['async_cancelled']}")
    print(f"  kills: {s['kills']} {s['kills_by_victim']} (by category {s['kills_by']}; {s['kill_misses']} missed)")
    if s["server_restarts"]:
        print(
            f"  server restarts: {s['server_restarts']} (the longest took {s['longest_restart']} s); "
            f"store errors in workers: {s['store_errors']}"
        )
    print(f"  processes spawned: {s['spawned']}, orphans reaped: {s['orphans_reaped']}, tickets of orphans "
          f"(the gcl acquire of a killed script, still waiting): {s['orphan_tickets']}")  # fmt: skip
    for fault in s["faults_enabled"]:
        print(f"  fault {fault}: {json.dumps(s['faults'][fault], separators=(',', ':'))}")
    print(f"  max concurrent holders (ledger slots): {s['max_holders']} of limit {s['limit']}")
    print(f"  over-admissions: {s['over_admissions']}")
    print(f"  duplicate fencing tokens: {s['duplicate_tokens']}")
    print(f"  async cancellations lost: {s['async_cancel_lost']}, async workers leaking leases: "
          f"{s['async_workers_leaking']}")  # fmt: skip
    print(f"  audits: {s['audits']} (max {s['max_leases_seen']} leases, {s['max_tickets_seen']} tickets seen; "
          f"grace up to {s['max_grace']} s)")  # fmt: skip
    print(f"  before the final sweep: {s['before_sweep']}; reclaimable after it: {s['reclaimable_at_end']}")
    print(f"  interrupts swallowed by finalizers (Exception ignored): {s['interrupts_in_finalizers']}")
    print(f"  integrity_check: {s['integrity']}")
    print(
        f"  occupancy after: active_slots {s['active_slots']}, leases {s['leases_left']}, tickets {s['tickets_left']}"
    )
    print(f"  token/pipe files left: {len(s['run_files_left'] or [])}")
    if s["violations"]:
        print("  violations:")
        for category, n in sorted(s["violations"].items(), key=lambda kv: -kv[1]):
            kinds = {
                k.split(":", 1)[1]: v for k, v in s["violations_by_kind"].items() if k.split(":", 1)[0] == category
            }
            print(f"    {category}: {n}  ({VIOLATIONS.get(category, '')}){'  by kind ' + str(kinds) if kinds else ''}")
    if s["failures"]:
        print(f"  first {min(len(s['failures']), 12)} of {len(s['failures'])} failed checks:")
        for text in s["failures"][:12]:
            print("    - " + text.replace("\n", "\n      ")[:1500])
        print("FAILED: " + ", ".join(f"{c} ({n})" for c, n in sorted(s["violations"].items(), key=lambda kv: -kv[1])))
    else:
        print("OK: every check passed")


def drive(args: Any) -> int:
    import shutil
    import tempfile
    import traceback

    from gcl_local import LimitExistsError, create_limit, update_limit

    seconds = args.minutes * 60 if args.minutes is not None else args.seconds
    if args.work:
        work = Path(args.work).absolute()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="gcl-stress-"))
    db: Path | str
    fresh_schema = None
    if is_pg(args.db):
        db, fresh_schema = pg_schema_url(args.db)
        from gcl_local._backend import open_backend

        shown = open_backend(db).description  # (without a password)
    else:
        db = shown = Path(args.db).absolute() if args.db else work / "gcl.db"
    print(f"gcl_local stress: work dir {work}, db {shown}, seed {args.seed}, driver pid {os.getpid()}", flush=True)
    gcl_limit = args.limit if args.gcl_limit is None else args.gcl_limit
    limits = [(args.name, gcl_limit, 0.0)]
    if "nonblock" in args.faults:
        limits.append((rate_name(args.name), args.rate_limit, args.rate_decay))
    if args.inject_leaks:
        limits.append((selftest_name(args.name), 1, 0.0))
    for name, limit, decay in limits:
        try:
            create_limit(name, limit, slot_decay_per_second=decay, db=str(db))
        except LimitExistsError:
            update_limit(name, limit=limit, slot_decay_per_second=decay, active=True, active_slots=0, db=str(db))
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
            driver.audit()
            driver.stop()
        except BaseException as exc:
            driver.fail("driver", f"driver error: {exc!r}\n{traceback.format_exc()}")
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
    if summary["ok"] and not args.keep and fresh_schema is not None:
        drop_pg_schema(str(db), fresh_schema)
        fresh_schema = None
    if summary["ok"] and not args.keep and not args.work:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work dir kept: {work}")
    if fresh_schema is not None:
        print(f"schema kept: {fresh_schema}")
    return 0 if summary["ok"] else 1


def pg_schema_url(url: str) -> tuple[str, str | None]:
    """*url* with a new schema of the run's own (``gcl_schema=``; dropped after a run that passed, unless
    ``--keep``), unless it names one (or ``$GCL_PG_SCHEMA`` does); and that new schema."""
    from urllib.parse import parse_qsl, urlsplit

    if os.environ.get("GCL_PG_SCHEMA") or any(k == "gcl_schema" for k, _ in parse_qsl(urlsplit(url).query)):
        return url, None
    schema = f"gcl_stress_{os.getpid()}_{random.randrange(16**6):06x}"
    return f"{url}{'&' if '?' in url else '?'}gcl_schema={schema}", schema


def drop_pg_schema(url: str, schema: str) -> None:
    import psycopg

    from gcl_local.postgres._settings import parse

    with psycopg.connect(parse(url).url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def parse_args(argv: list[str] | None = None) -> Any:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workers", type=int, default=10, help="base worker processes (default 10)")
    p.add_argument("--limit", type=int, default=3, help="the limit (default 3)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the chaos (default 20)")
    p.add_argument("--minutes", type=float, default=None, help="length in minutes, for a soak (overrides --seconds)")
    p.add_argument(
        "--db", default=None,
        help="state file (default: in a new temporary directory), or a PostgreSQL URL (postgresql://...; a new\n"
        "schema of the run's own unless it names one with gcl_schema=)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random; printed)")
    p.add_argument("--name", default="stress", help="limit name (default 'stress'; also NAME-rate for -n callers)")
    p.add_argument(
        "--kinds", default="sync,async,cli", help="base worker kinds, assigned in turn (default sync,async,cli)"
    )
    p.add_argument(
        "--faults", default="all",
        help=f"faults to inject: 'all' (default), 'none', or a list of {','.join(FAULTS)}",
    )  # fmt: skip
    p.add_argument("--no-fault", action="append", default=[], metavar="FAULT", help="leave out FAULT (repeatable)")
    p.add_argument(
        "--fault-workers", type=int, default=2,
        help="processes for each fault with workers (sigint, cancel, fork+multiprocessing, nonblock, bash+dash; "
        "default 2)",
    )  # fmt: skip
    p.add_argument("--kill-rate", type=float, default=3.0, help="kills per second (>= 1; 0: none, to debug; default 3)")
    p.add_argument("--term-rate", type=float, default=1.0, help="SIGTERMs per second (fault sigterm; default 1)")
    p.add_argument("--sigint-rate", type=float, default=100.0, help="SIGINTs per second, overall (fault sigint; 100)")
    p.add_argument(
        "--sigint-after-commit", type=float, default=0.05,
        help="fault sigint: share of a sigint worker's transactions it interrupts itself just before or after the\n"
        "COMMIT (default 0.05; 0: none)",
    )  # fmt: skip
    p.add_argument("--rate-limit", type=int, default=2, help="limit of NAME-rate for -n callers (default 2)")
    p.add_argument("--rate-decay", type=float, default=3.0, help="slot decay per second of NAME-rate (default 3)")
    p.add_argument("--hold-ms", default="5,50", help="hold time range in ms (default 5,50)")
    p.add_argument("--tasks", type=int, default=2, help="concurrent tasks per async worker (default 2)")
    p.add_argument(
        "--async-cancel-rate", type=float, default=0.15,
        help="share of base async acquisitions cancelled from outside after 5-300 ms (default 0.15)",
    )  # fmt: skip
    p.add_argument("--audit-interval", type=float, default=0.5, help="seconds between audits (0: none)")
    p.add_argument(
        "--stall-seconds", type=float, default=15.0,
        help="no acquisition / a waiter this long: fail (default 15; longer on a loaded machine, as the grace)",
    )  # fmt: skip
    p.add_argument(
        "--leak-seconds", "--grace", type=float, default=3.0,
        help="grace: a lease outside any block, a ticket without a waiter, a dead row this long: fail (default 3;\n"
        "longer on a loaded machine: 3 x the longest legitimate window seen in the last minute)",
    )  # fmt: skip
    p.add_argument("--stop-timeout", type=float, default=15.0, help="seconds to wait after SIGTERM (default 15)")
    p.add_argument(
        "--restart-every", type=float, default=0.0, metavar="SECONDS",
        help="PostgreSQL: restart the server as a crash would (pg_ctl restart -m immediate) every SECONDS\n"
        "(0.5-1.5 x, at random; default 0: never); needs --pg-dir",
    )  # fmt: skip
    p.add_argument(
        "--pg-dir", default=os.environ.get("GCL_TEST_PG_DIR"),
        help="the server's directory for --restart-every, as scripts/pg-server makes it (default $GCL_TEST_PG_DIR)",
    )  # fmt: skip
    p.add_argument(
        "--gcl-limit", type=int, default=None,
        help="self-test: give gcl_local this limit while the ledger checks --limit (the run must then fail)",
    )  # fmt: skip
    p.add_argument(
        "--inject-leaks", action="store_true",
        help="self-test: a process keeps a lease outside any block and a gcl acquire nobody waits for\n"
        "(on NAME-selftest; the run must then fail with a leaked lease and a ticket without waiter)",
    )  # fmt: skip
    p.add_argument("--json", default=None, help="also write the summary as JSON to this file")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, ledger) even on success")
    p.add_argument("-v", "--verbose", action="store_true", help="print every kill and SIGTERM")
    # worker roles (internal)
    roles = ["driver", *PY_KINDS, "child", "nonblock", "leaker"]
    p.add_argument("--role", choices=roles, default="driver", help=argparse.SUPPRESS)
    p.add_argument("--work", help="work directory: ledger, worker logs, the state file (default: a new temporary one)")
    p.add_argument("--occupy", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--hold", type=float, default=0.01, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    lo, _, hi = args.hold_ms.partition(",")
    args.hold_min, args.hold_max = float(lo), float(hi or lo)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not args.kinds or set(args.kinds) - set(BASE_KINDS):
        p.error(f"--kinds: choose from {','.join(BASE_KINDS)}")
    faults = {"all": list(FAULTS), "none": []}.get(args.faults)
    if faults is None:
        faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = (set(faults) | set(args.no_fault)) - set(FAULTS)
    if unknown:
        p.error(f"--faults/--no-fault: unknown {sorted(unknown)}; choose from {','.join(FAULTS)}")
    args.faults = [f for f in FAULTS if f in faults and f not in args.no_fault]
    if args.workers < 0 or args.limit < 1 or args.tasks < 1 or not (args.kill_rate >= 1 or args.kill_rate == 0):
        p.error("--limit and --tasks must be >= 1, --workers >= 0; --kill-rate >= 1 (0: no kills, for debugging)")
    if args.restart_every and (args.role == "driver") and not (is_pg(args.db) and args.pg_dir):
        p.error("--restart-every needs a PostgreSQL --db and the server's --pg-dir (or $GCL_TEST_PG_DIR)")
    if args.seed is None:
        args.seed = random.randrange(1, 1_000_000)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--ledger":
        return ledger_main(argv[1:])
    args = parse_args(argv)
    import faulthandler

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the driver asks for stacks of a hung worker
    if args.role in SYNC_KINDS:
        try:
            return run_sync_worker(args)
        finally:
            # A SIGINT while the interpreter shuts down must not change the exit status: Python then puts back
            # SIG_DFL (but leaves SIG_IGN), and a signal sent to the process may go to any thread (a mask won't do).
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    if args.role in ASYNC_KINDS:
        return run_async_worker(args)
    if args.role == "child":
        return run_child(args)
    if args.role == "nonblock":
        return run_nonblock_worker(args)
    if args.role == "leaker":
        return run_leaker(args)
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
