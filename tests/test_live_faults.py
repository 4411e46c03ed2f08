"""No slot lost, none given twice, in processes that live on: interrupts, cancellation, fork.

A process that dies is reclaimed by its liveness token; these are the faults that leave the process
alive, so a lease or ticket it does not know about would block the limit for as long as it runs.
Each test checks, while the workers still live, that nothing is held or queued in their names.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gcl_local import concurrency, create_limit, read_limit

REPO = Path(__file__).resolve().parent.parent

INTERRUPTED_LOOPER = """
import os, sys, time
from gcl_local import AcquireConcurrencySlotTimeoutError, concurrency
db, stop = sys.argv[1], sys.argv[2]
entered = 0
interrupts = 0
print("ready", flush=True)

def loop():
    global entered, interrupts
    while not os.path.exists(stop):
        try:
            with concurrency("x", timeout_seconds=5, db=db):
                entered += 1
                time.sleep(0.0005)
        except KeyboardInterrupt:
            interrupts += 1
        except AcquireConcurrencySlotTimeoutError:
            pass

while True:
    try:
        loop()
        break
    except KeyboardInterrupt:
        interrupts += 1
signal_free = __import__("signal")
signal_free.signal(signal_free.SIGINT, signal_free.SIG_IGN)
print(f"{entered} {interrupts}", flush=True)
time.sleep(120)  # alive and outside any block: whatever is still held in our name is a leak
"""


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


@pytest.mark.slow
def test_random_sigints_caught_by_the_workers_leave_nothing_held(db: str, tmp_path: Path) -> None:
    create_limit("x", 1, db=db)
    stop = tmp_path / "stop"
    workers = [_python(INTERRUPTED_LOOPER, db, str(stop)) for _ in range(2)]
    try:
        for worker in workers:  # imported and looping
            assert worker.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        rng = random.Random(20261201)
        sent = 0
        end = time.monotonic() + 8.0
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.0, 0.012))
            with_signal = rng.choice(workers)
            if with_signal.poll() is None:
                with_signal.send_signal(signal.SIGINT)
                sent += 1
        stop.touch()
        reports = []
        for worker in workers:
            line = worker.stdout.readline()  # type: ignore[union-attr]
            if line:
                reports.append(line.split())
        assert reports, ("every worker died", [w.communicate()[1][-2000:] for w in workers])
        alive = [w for w in workers if w.poll() is None]
        assert alive, "no worker lived to be checked"
        limit = read_limit("x", db=db)
        assert limit.holders == (), (sent, reports, limit.holders)
        assert limit.waiters == (), (sent, reports, limit.waiters)
        assert sum(int(entered) for entered, _ in reports) > 100
        assert sum(int(caught) for _, caught in reports) > 200
    finally:
        for worker in workers:
            worker.kill()
            worker.communicate()


CANCELLED_TASKS = """
import asyncio, json, os, random, sys, time
from gcl_local import AcquireConcurrencySlotTimeoutError, read_limit
from gcl_local.asyncio import concurrency
db, seconds = sys.argv[1], float(sys.argv[2])
rng = random.Random(int(sys.argv[3]))
counts = {"entered": 0, "timeouts": 0, "cancelled": 0}

async def worker():
    while True:
        try:
            async with concurrency("c", timeout_seconds=rng.uniform(0.001, 0.05), db=db):
                counts["entered"] += 1
                await asyncio.sleep(0.001)
        except AcquireConcurrencySlotTimeoutError:
            counts["timeouts"] += 1

async def main():
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    tasks = [asyncio.create_task(worker()) for _ in range(4)]
    while loop.time() < end:
        await asyncio.sleep(rng.uniform(0.0, 0.01))
        i = rng.randrange(len(tasks))
        if i % 2 == 0:  # half of the tasks are cancelled at random moments, now and then twice
            tasks[i].cancel()
            if rng.random() < 0.3:
                await asyncio.sleep(rng.uniform(0.0, 0.002))
                tasks[i].cancel()
            try:
                await tasks[i]
            except asyncio.CancelledError:
                counts["cancelled"] += 1
            tasks[i] = asyncio.create_task(worker())
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

asyncio.run(main())
time.sleep(1.0)  # give-backs that run in threads finish
limit = read_limit("c", db=db)
mine = [h.id for h in limit.holders if h.pid == os.getpid()] + [w.ticket for w in limit.waiters if w.pid == os.getpid()]
print(json.dumps({"leaked": mine, **counts}), flush=True)
"""

BUSY_HOLDER = """
import random, sys, time
from gcl_local import concurrency
db, seconds = sys.argv[1], float(sys.argv[2])
end = time.monotonic() + seconds
while time.monotonic() < end:
    with concurrency("c", db=db):
        time.sleep(random.uniform(0.001, 0.03))
"""


@pytest.mark.slow
def test_async_cancellation_during_cleanup_leaves_nothing_held(db: str) -> None:
    create_limit("c", 1, db=db)
    holder = _python(BUSY_HOLDER, db, "7")
    try:
        tasks = _python(CANCELLED_TASKS, db, "6", "7")
        out, err = tasks.communicate(timeout=60)
        assert tasks.returncode == 0, err
        report = json.loads(out)
        assert report["leaked"] == [], report
        assert report["entered"] > 20, report
        assert report["timeouts"] > 20, report
        assert report["cancelled"] > 20, report
    finally:
        holder.kill()
        holder.communicate()


FORKING_HOLDER = """
import multiprocessing, os, sys, time
from gcl_local import concurrency
db, how = sys.argv[1], sys.argv[2]

def child_work():
    time.sleep(0.05)

with concurrency("f", db=db) as lease:
    if how == "fork":
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # unwinds the with block in the child
        os.waitpid(pid, 0)
    else:
        proc = multiprocessing.get_context("fork").Process(target=child_work)
        proc.start()
        proc.join()
    print("child done", flush=True)
    sys.stdin.readline()  # the parent still holds the slot until told to go
"""


@pytest.mark.parametrize("how", ["fork", "multiprocessing"])
def test_a_forked_child_leaving_the_block_does_not_release_the_parents_lease(db: str, how: str) -> None:
    create_limit("f", 1, db=db)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    parent = subprocess.Popen(
        [sys.executable, "-c", FORKING_HOLDER, db, how],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert parent.stdout.readline().strip() == "child done"  # type: ignore[union-attr]
        holders = read_limit("f", db=db).holders
        assert [h.pid for h in holders] == [parent.pid]
        with pytest.raises(Exception, match="busy"), concurrency("f", timeout_seconds=0, db=db):
            pass  # a second holder while the parent holds: two on a limit of 1
        parent.stdin.write("\n")  # type: ignore[union-attr]
        parent.stdin.flush()  # type: ignore[union-attr]
        _, err = parent.communicate(timeout=30)
        assert parent.returncode == 0, err
        assert read_limit("f", db=db).holders == ()
    finally:
        parent.kill()
        parent.communicate()


def test_a_signal_firing_while_handlers_are_restored_leaves_none_held_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chaos run: a Ctrl-C that fires the moment its handler is restored aborted the restoring, and
    SIGTERM stayed held back for good (a later SIGTERM then met a KeyError instead of its handler)."""
    from gcl_local import _shell

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(143)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        real = _shell.signal.signal  # the C module _signal (see gcl_local._stdlib)
        calls = [0]

        def fires_after_first_restore(signum: int, handler: object) -> object:
            result = real(signum, handler)
            if handler is not _shell._hold:
                calls[0] += 1
                if calls[0] == 1:
                    raise KeyboardInterrupt  # the restored handler ran at once
            return result

        held = _shell.SignalsHeldBack()
        held.__enter__()
        assert signal.getsignal(signal.SIGTERM) is _shell._hold
        monkeypatch.setattr(_shell.signal, "signal", fires_after_first_restore)
        with pytest.raises(KeyboardInterrupt):
            held.__exit__(None, None, None)
        monkeypatch.undo()
        assert signal.getsignal(signal.SIGTERM) is on_term
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_signal_firing_while_handlers_are_swapped_leaves_none_held_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The soak on PostgreSQL: a signal that came just before a section ran its handler (which raised)
    between two swaps; the section never opened, nothing put back the handler swapped first, and that
    signal stayed held back for good (a worker that no SIGTERM could stop)."""
    from gcl_local import _shell

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(143)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        real = _shell.signal.signal

        def fires_after_first_swap(signum: int, handler: object) -> object:
            result = real(signum, handler)
            if handler is _shell._hold:
                monkeypatch.undo()
                raise SystemExit(143)  # SIGTERM's handler, not swapped yet, ran at once
            return result

        monkeypatch.setattr(_shell.signal, "signal", fires_after_first_swap)
        with pytest.raises(SystemExit):
            with _shell.SignalsHeldBack():
                pass
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is on_term
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_acquisition_collected_inside_a_transaction_gives_back_outside_it(db: str) -> None:
    """The cyclic GC collects an acquisition dropped with its ticket (an exception's traceback makes the
    cycle: a give-back that failed in a server restart) wherever it strikes: here between two statements
    of a transaction on the same thread. Its give-back must not run inside that transaction (on
    PostgreSQL it committed it halfway and left a ``pg_notify`` row for the next statement: the soak's
    ``IndexError`` in ``_tx._ticket``), yet must still run, soon."""
    import gc

    from gcl_local import _admission, _shell
    from gcl_local._effects import transact

    create_limit("x", 1, db=db)
    backend, request = _shell.prepare(db, "x", 1, "concurrency", timeout_seconds=5)
    with concurrency("x", db=db):  # the one slot: the next request queues
        stranded = _shell.Acquisition(backend, request)
        outcome = stranded.transact(_admission.attempt, request, backend.new_channel_name())
        assert outcome.ticket is not None
        stranded.cycle = stranded  # type: ignore[attr-defined]  # garbage only the cyclic GC finds
        del stranded, outcome
        seen = []

        def work(tx: object, _effects: object) -> None:
            before = tx.count_tickets()  # type: ignore[attr-defined]
            gc.collect()
            seen.append((before, tx.count_tickets()))  # type: ignore[attr-defined]

        transact(backend, work)
        assert seen == [(1, 1)]  # nothing of another transaction ran inside this one
        deadline = time.monotonic() + 5.0
        while True:
            with backend.read() as tx:
                if tx.count_tickets() == 0:
                    break
            assert time.monotonic() < deadline, "the dropped acquisition's ticket was never given back"
            time.sleep(0.02)


@pytest.mark.parametrize("where", ["section", "let-through", "restore"])
def test_every_signal_held_back_is_delivered_when_the_first_handler_raises(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The soak on PostgreSQL (a SIGINT storm): a SIGINT and a SIGTERM held back in one section; the
    SIGINT's handler raised on delivery, and the SIGTERM behind it was dropped, so the worker looped on
    until SIGKILL. Every held signal's handler runs, as CPython runs the rest of its pending signals."""
    from gcl_local import _shell

    ran: list[int] = []

    def on_term(signum: int, frame: object) -> None:
        ran.append(signum)
        raise SystemExit(143)

    def section() -> None:
        held = _shell.SignalsHeldBack()
        with held:
            if where == "restore":  # SIGINT's handler, restored first, runs at once and raises
                real = _shell.signal.signal

                def first_restore_raises(signum: int, handler: object) -> object:
                    result = real(signum, handler)
                    if handler is not _shell._hold:
                        monkeypatch.undo()
                        raise KeyboardInterrupt
                    return result

                monkeypatch.setattr(_shell.signal, "signal", first_restore_raises)
            else:
                signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGTERM)
            if where == "let-through":
                with held.let_through():
                    pass

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with pytest.raises((KeyboardInterrupt, SystemExit)):
            section()
        assert ran == [signal.SIGTERM]
        assert not _shell._held
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is on_term
    finally:
        signal.signal(signal.SIGTERM, previous)


class _LosesTheNextCommit:
    """A work connection's cursor that loses the connection as its next COMMIT goes out (before the server
    has it: the transaction is rolled back), as a server restart does."""

    def __init__(self, work: object) -> None:
        self.work = work
        self.real = work.cur  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    def execute(self, sql: object, *args: object, **kwargs: object) -> object:
        if sql == "COMMIT":
            import psycopg

            self.work.cur = self.real  # type: ignore[attr-defined]
            self.work.conn.close()  # type: ignore[attr-defined]
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return self.real.execute(sql, *args, **kwargs)


def test_a_release_whose_commit_was_lost_is_made_again(pg_url: str) -> None:
    """scripts/stress.py on PostgreSQL with --restart-every: an async worker's release at the end of its
    block met a restart as it committed ("the transaction may or may not have been committed"); the
    block raised, the lease stayed held by a live process outside any block, and a waiter for every slot
    at the head of the queue stalled everyone. Releasing is idempotent: it is run again."""
    from gcl_local._backend import open_backend

    create_limit("x", 1, db=pg_url)
    backend = open_backend(pg_url)
    with concurrency("x", db=pg_url):
        work = backend._work()  # type: ignore[attr-defined]
        work.cur = _LosesTheNextCommit(work)
    assert read_limit("x", db=pg_url).holders == ()
