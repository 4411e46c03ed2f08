"""Dead waiters and signals while waiting, with real processes and real signals.

A non-blocking attempt (``-n``) reaps the dead holders and dead waiters in its way, as a blocking
one does; SIGTERM and SIGHUP received while waiting take the ticket out of the queue before the
process exits with 128+N. What is left in the file is read without tidying it (``ls``/``inspect``
would reap the dead and hide what was left behind).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from typing import Any

import pytest
from helpers import GCL, Spawned, env, gcl, holding, ok, one_line_error, wait_for

from gcl_local import _admission, _effects, _shell, acquire_lease, create_limit, read_limit, release_lease
from gcl_local._backend import Tx, open_backend


def left_in_file(db: str) -> tuple[int, int]:
    """(leases, tickets) in the file, read without reaping anything."""
    with open_backend(db).read() as tx:
        return tx.count_leases(), tx.count_tickets()


def kill9(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a spawned process and everything in its session (a `gcl run` and its command)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=20)


def test_nonblock_rate_limit_is_not_kept_busy_by_a_killed_waiter(db: str, spawned: Spawned) -> None:
    create_limit("api", 1, slot_decay_per_second=0.01, db=db)
    ok(gcl(db, "rate-limit", "api"))  # full for 100 s: the waiter surely queues
    waiter = spawned.gcl(db, "rate-limit", "api")
    wait_for(lambda: left_in_file(db)[1] == 1, what="the waiter's ticket")
    kill9(waiter)
    # Empty the bucket within 10 ms; the update finds it still full, so it hands nothing to the dead.
    ok(gcl(db, "update", "api", "--slot-decay-per-second", "100"))
    time.sleep(0.05)
    assert left_in_file(db) == (0, 1)  # the dead waiter's ticket is still there
    ok(gcl(db, "rate-limit", "api", "-n"))
    assert left_in_file(db) == (0, 0)


def test_nonblock_run_is_not_kept_busy_by_a_killed_holder_and_waiter(db: str, spawned: Spawned) -> None:
    create_limit("c", 1, db=db)
    holder = spawned.gcl(db, "run", "c", "--", "sleep", "60")
    holding(db, "c", "sleep", holder)
    waiter = spawned.gcl(db, "run", "c", "--", "true")
    wait_for(lambda: read_limit("c", db=db).waiters, what="the waiter")
    kill9(waiter)
    kill9(holder)  # the wrapper and its command
    assert left_in_file(db) == (1, 1)
    ok(gcl(db, "run", "c", "-n", "--", "true"))
    assert left_in_file(db) == (0, 0)


def test_nonblock_still_queues_behind_a_live_waiter(db: str, spawned: Spawned) -> None:
    """Reaping stops at the first live waiter: a big request at the head is not overtaken."""
    create_limit("c", 2, db=db)
    keeper = spawned.sleeper()
    ok(gcl(db, "acquire", "c", "--holder-pid", str(keeper.pid)))
    big = spawned.gcl(db, "run", "c", "--occupy", "2", "--", "true")
    wait_for(lambda: len(read_limit("c", db=db).waiters) == 1, what="the big waiter")
    small = spawned.gcl(db, "run", "c", "--", "true")
    wait_for(lambda: len(read_limit("c", db=db).waiters) == 2, what="the small waiter")
    kill9(small)
    one_line_error(gcl(db, "run", "c", "-n", "--", "true"), 75)
    assert big.poll() is None
    assert [w.slots for w in read_limit("c", db=db).waiters] == [2]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
@pytest.mark.parametrize("command", ["run", "rate-limit", "acquire"])
def test_a_signal_while_waiting_takes_the_ticket_out(db: str, spawned: Spawned, command: str, signum: int) -> None:
    create_limit("c", 1, db=db)
    create_limit("r", 1, slot_decay_per_second=0.01, db=db)
    keeper = spawned.sleeper()
    ok(gcl(db, "acquire", "c", "--holder-pid", str(keeper.pid)))
    ok(gcl(db, "rate-limit", "r"))
    args = {
        "run": ["run", "c", "--", "true"],
        "rate-limit": ["rate-limit", "r"],
        "acquire": ["acquire", "c", "--holder-pid", str(keeper.pid)],
    }[command]
    waiter = spawned.gcl(db, *args)
    wait_for(lambda: left_in_file(db) == (1, 1), what="the waiter's ticket")
    waiter.send_signal(signum)
    out, err = waiter.communicate(timeout=20)
    assert waiter.returncode == 128 + signum, (out, err)
    assert "Traceback" not in err
    assert out == ""
    assert left_in_file(db) == (1, 0)  # the keeper's lease, and no ticket


def test_timeout_around_a_waiting_rate_limit_leaves_no_ticket(db: str) -> None:
    create_limit("r", 1, slot_decay_per_second=0.01, db=db)
    ok(gcl(db, "rate-limit", "r"))
    proc = subprocess.Popen(
        ["timeout", "5", *GCL, "--db", db, "rate-limit", "r"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    try:
        wait_for(lambda: left_in_file(db)[1] == 1, timeout=5.0, what="the waiter's ticket, before timeout fires")
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 124, err  # timeout's own code: it sent SIGTERM
    assert "Traceback" not in err
    assert left_in_file(db) == (0, 0)


def test_a_waiter_far_back_says_so_and_each_watches_the_one_just_ahead(db: str, spawned: Spawned) -> None:
    """The safety net's look: the second in line answers False (nothing to do, look again in 0.5 s),
    the third None (two live waiters ahead: look again in 2 s), and True once the one just ahead of
    it died (a write attempt then reaps it)."""

    create_limit("c", 1, db=db)
    holder = spawned.gcl(db, "run", "c", "--", "sleep", "60")
    holding(db, "c", "sleep", holder)
    waiters = []
    for n in range(1, 4):
        waiters.append(spawned.gcl(db, "run", "c", "--", "true"))
        wait_for(lambda n=n: len(read_limit("c", db=db).waiters) == n, what=f"waiter {n}")
    tickets = [w.ticket for w in sorted(read_limit("c", db=db).waiters, key=lambda w: w.ticket)]

    def probe(ticket: int) -> object:
        with open_backend(db).read() as tx:
            return _admission.probe(tx, ticket, "concurrency")

    assert [probe(t) for t in tickets] == [False, False, None]
    kill9(waiters[1])
    assert [probe(t) for t in (tickets[0], tickets[2])] == [False, True]


def test_a_gcl_acquire_whose_script_exited_neither_blocks_nonblock_callers_nor_waits_on(
    db: str, spawned: Spawned
) -> None:
    # `gcl acquire x z --holder-pid $$` waits behind a holder of x; its script dies (the gcl acquire
    # lives on). Its lease could never be had, so its ticket must not keep `-n` on z busy, and the wait
    # ends at the waiter's next look. Before: `-n` on z found it busy until the wait timed out, and the
    # ticket was dropped only if a release of x happened to read it just after a grant.
    create_limit("x", 1, db=db)
    create_limit("z", 1, db=db)
    holder = spawned.gcl(db, "run", "x", "--", "sleep", "60")
    holding(db, "x", "sleep", holder)
    script = spawned.sleeper()
    waiter = spawned.gcl(db, "acquire", "x", "z", "--holder-pid", str(script.pid), "--timeout", "60")
    wait_for(lambda: read_limit("z", db=db).waiters, what="the waiter")
    kill9(script)
    ok(gcl(db, "acquire", "z", "-n", "--holder-pid", str(os.getpid())))
    _, err = waiter.communicate(timeout=20)
    assert waiter.returncode == 1, err
    assert err.count("\n") == 1 and "exited before the slots were granted" in err, err


def test_a_waiter_that_reaches_the_head_between_its_looks_soon_sees_a_dead_holder(db: str, spawned: Spawned) -> None:
    # A waiter whose safety-net look found two waiters ahead looks again in 2 s. When the queue moved
    # two places before that look (two hand-offs), it was the head on a 2-s watch, and the holder it
    # alone watches died unseen for up to 2.4 s (the chaos soak's "dead holder's lease kept 3.1 s").
    # A releaser now tells the waiter that its grant makes second in line to look every 0.5 s.
    create_limit("c", 1, db=db)
    lease = acquire_lease("c", db=db)
    first = spawned.gcl(db, "run", "c", "--", "true")
    wait_for(lambda: len(read_limit("c", db=db).waiters) == 1, what="waiter 1")
    second = spawned.gcl(db, "run", "c", "--", "sleep", "60")
    wait_for(lambda: len(read_limit("c", db=db).waiters) == 2, what="waiter 2")
    third = spawned.gcl(db, "run", "c", "--", "true")
    wait_for(lambda: len(read_limit("c", db=db).waiters) == 3, what="waiter 3")
    time.sleep(0.8)  # the third's first look (0.4-0.6 s after it queued) found two ahead: next in 1.6-2.4 s
    release_lease(lease.id, db=db)
    assert first.wait(timeout=20) == 0
    holding(db, "c", "sleep", second)
    kill9(second)
    killed = time.monotonic()
    assert third.wait(timeout=20) == 0
    assert time.monotonic() - killed < 1.0


def test_a_waiter_moved_up_by_waiters_that_left_soon_sees_a_dead_holder(db: str, spawned: Spawned) -> None:
    # As above, but the queue moves because the two waiters ahead leave (SIGTERM while waiting takes
    # the ticket out): the last to leave tells the new head.
    create_limit("c", 1, db=db)
    holder = spawned.gcl(db, "run", "c", "--", "sleep", "60")
    holding(db, "c", "sleep", holder)
    ahead = []
    for n in (1, 2):
        ahead.append(spawned.gcl(db, "run", "c", "--", "true"))
        wait_for(lambda n=n: len(read_limit("c", db=db).waiters) == n, what=f"waiter {n}")
    last = spawned.gcl(db, "run", "c", "--", "true")
    wait_for(lambda: len(read_limit("c", db=db).waiters) == 3, what="waiter 3")
    time.sleep(0.8)  # its first look (0.4-0.6 s after it queued) found two ahead: next in 1.6-2.4 s
    for proc in ahead:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    kill9(holder)
    killed = time.monotonic()
    assert last.wait(timeout=20) == 0
    assert time.monotonic() - killed < 1.0


@pytest.mark.parametrize("how", ["release", "own-look"])
def test_whoever_moves_the_queue_tells_the_waiter_it_moves_up_to_second(db: str, how: str) -> None:
    # The head's own look that serves it (after it reaped a dead holder, say) moves the queue as a
    # release does: the waiter that moves up from third to second is told, and no one else.
    create_limit("c", 1, db=db)
    backend, request = _shell.prepare(db, "c", 1, "concurrency")
    held = _effects.transact(backend, _admission.attempt, request, None)
    assert held.lease is not None
    tickets = [_effects.transact(backend, _admission.attempt, request, f"chan-{n}").ticket for n in range(4)]
    time.sleep(_admission.WATCH_AFTER_SECONDS + 0.05)  # old enough to have looked from far back
    effects = _effects.Effects(backend.max_message)

    def move(tx: Tx) -> object:
        if how == "release":
            return _admission.release(tx, effects, held.lease.id)
        tx.delete_lease(tx.select_lease(*_admission.parse_lease_id(held.lease.id)))  # as a reaper would
        return _admission.attempt_ticket(tx, effects, tickets[0], "concurrency")

    backend.write(move)
    told = [(channel, message) for channel, message in effects.wakes if message.startswith(b"?")]
    assert told == [("chan-2", b"?%d\n" % tickets[2])]


def _queue_of_three_far_back(db: str, spawned: Spawned, names: tuple[str, ...] = ("c",)) -> list[subprocess.Popen[str]]:
    """Two waiters, then a third whose first look (0.4-0.6 s after it queued) found two ahead: it looks
    next in 1.6-2.4 s."""
    waiters = []
    for n in (1, 2, 3):
        waiters.append(spawned.gcl(db, "run", *names, "--", "true"))
        wait_for(lambda n=n: len(read_limit(names[0], db=db).waiters) == n, what=f"waiter {n}")
    time.sleep(0.8)
    return waiters


@pytest.mark.parametrize("reaper", ["newcomer", "sweep"])
def test_a_waiter_moved_up_by_reaping_dead_waiters_ahead_soon_sees_a_dead_holder(
    db: str, spawned: Spawned, reaper: str
) -> None:
    # The two waiters ahead die; a `-n` newcomer (or a sweep) reaps them, and the third is now the
    # head, the one that watches the holder. Nothing told it (a review): it kept looking every 2 s,
    # and the holder's death went unseen for up to 2.4 s. Whoever reaps dead waiters now tells the
    # first two of each queue they stood in.
    create_limit("c", 1, db=db)
    holder = spawned.gcl(db, "run", "c", "--", "sleep", "60")
    holding(db, "c", "sleep", holder)
    dead_first, dead_second, last = _queue_of_three_far_back(db, spawned)
    kill9(dead_first)
    kill9(dead_second)
    if reaper == "newcomer":
        one_line_error(gcl(db, "run", "c", "-n", "--", "true"), 75)  # reaps the dead ahead, then refused
    else:
        backend = open_backend(db)
        wait_for(lambda: len(backend.census()) >= 2, what="the dead waiters in the census")
        _effects.transact(backend, _admission.sweep)
    assert [w.pid for w in read_limit("c", db=db).waiters] == [last.pid]
    kill9(holder)
    killed = time.monotonic()
    assert last.wait(timeout=20) == 0
    assert time.monotonic() - killed < 1.0


def test_a_waiter_moved_up_by_a_grant_on_several_limits_soon_sees_a_dead_holder(db: str, spawned: Spawned) -> None:
    # Y waits on a, X on a and b, W on b: W's first look follows X to Y, two ahead, and it looks next
    # in 2 s. A release on a grants Y and X: W is now the head of b, where X holds the slot. The scan
    # of a's queue did not see W move (a review): X's death went unseen for up to 2.4 s.
    create_limit("a", 2, db=db)
    create_limit("b", 1, db=db)
    lease = acquire_lease("a", occupy=2, db=db)
    first = spawned.gcl(db, "run", "a", "--", "true")
    wait_for(lambda: len(read_limit("a", db=db).waiters) == 1, what="the waiter on a")
    both = spawned.gcl(db, "run", "a", "b", "--", "sleep", "60")
    wait_for(lambda: len(read_limit("b", db=db).waiters) == 1, what="the waiter on a and b")
    last = spawned.gcl(db, "run", "b", "--", "true")
    wait_for(lambda: len(read_limit("b", db=db).waiters) == 2, what="the waiter on b")
    time.sleep(0.8)
    release_lease(lease.id, db=db)
    assert first.wait(timeout=20) == 0
    holding(db, "b", "sleep", both)
    kill9(both)
    killed = time.monotonic()
    assert last.wait(timeout=20) == 0
    assert time.monotonic() - killed < 1.0


def _told_to_watch(channel: Any, timeout: float = 1.0) -> set[int]:
    """The tickets that `?` messages on *channel* name, read until *timeout* passes without one."""
    poller = select.poll()
    poller.register(channel.fileno(), select.POLLIN)
    got = b""
    while poller.poll(timeout * 1000):
        got += channel.drain()
    return {int(line[1:]) for line in got.split(b"\n") if line.startswith(b"?")}


@pytest.mark.parametrize("case", ["one-limit-ticket-leaves", "several-limits-ticket-leaves"])
def test_a_waiter_behind_a_ticket_on_several_limits_is_told_when_that_ticket_moves_up(db: str, case: str) -> None:
    # ``probe`` counts places across all of a ticket's limits: W, on c, behind Z (on b and c), behind X
    # (on a and b), is two places back. When X leaves, Z heads its queues and W is next: nothing told W,
    # whose safety net stayed at 2 s (a review). Likewise W on b behind X (on a and b) behind Y (on a),
    # when Y leaves. A waiter that moves up and stands in several queues now carries the telling on.
    several = case == "several-limits-ticket-leaves"
    names = ("a", "b", "c") if several else ("a", "b")
    for name in names:
        create_limit(name, 1, db=db)
    backend, _ = _shell.prepare(db, list(names), 1, "concurrency")
    assert _effects.transact(backend, _admission.attempt, _shell.prepare(db, list(names), 1, "concurrency")[1])
    backend.register()
    channel = backend.kept_channel()
    queue = [("a", "b"), ("b", "c"), ("c",)] if several else [("a",), ("a", "b"), ("b",)]
    tickets = []
    for wanted in queue:
        request = _shell.prepare(db, list(wanted), 1, "concurrency")[1]
        tickets.append(_effects.transact(backend, _admission.attempt, request, channel.name).ticket)
    _told_to_watch(channel, 0.2)  # (nothing yet)
    time.sleep(_admission.WATCH_AFTER_SECONDS + 0.05)
    _effects.transact(backend, _admission.cancel, tickets[0], "concurrency")
    assert tickets[2] in _told_to_watch(channel)
    with backend.read() as tx:
        assert _admission.probe(tx, tickets[2], "concurrency") is False  # one ahead, at the head: watch it
