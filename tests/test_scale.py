"""Hundreds of waiters on one limit: every one served, first come first served, at a linear cost.

A crontab that starts 300 scrapers at the top of the hour behind one limit is ordinary. Before the
turnstile, 200 processes arriving at once polled SQLite's write lock together and took both cores
from the transaction they waited for: half of them gave up after 30 s ("Timed out ... waiting for
the write lock"). Before the queue was read a page at a time, each newcomer also checked the
liveness of every waiter ahead of it, and each hand-off read the whole queue.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gcl_local import concurrency, create_limit, read_limit

REPO = Path(__file__).resolve().parent.parent

LAUNCHER = """
import os, sys
from gcl_local import concurrency
db, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
go_r, go_w = os.pipe()
children = []
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        os.close(go_w)
        os.read(go_r, 1)  # all start together: the burst a crontab makes
        try:
            with concurrency("one", db=db, timeout_seconds=240):
                fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                os.write(fd, f"{os.getpid()}\\n".encode())
                os.close(fd)
        except BaseException as exc:
            sys.stderr.write(f"{os.getpid()}: {exc!r}\\n")
            os._exit(1)
        os._exit(0)
    children.append(pid)
os.close(go_w)
failed = sum(os.waitpid(pid, 0)[1] != 0 for pid in children)
sys.exit(min(failed, 100))
"""


def _crowd(db: str, tmp_path: Path, n: int) -> tuple[float, float]:
    """*n* processes start at once behind a held slot; return (seconds until all queued, seconds to
    serve them all once the slot is released), after checking that they were served in queue order."""
    out = tmp_path / f"served-{n}"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with concurrency("one", db=db):
        launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, db, str(n), str(out)], env=env,
                                    stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            began = time.monotonic()
            while len(waiters := read_limit("one", db=db).waiters) < n:
                assert launcher.poll() is None, launcher.communicate()[1]
                assert time.monotonic() - began < 120, f"only {len(waiters)} of {n} queued after 120 s"
                time.sleep(0.05)
            queued = time.monotonic() - began
            order = [w.pid for w in sorted(waiters, key=lambda w: w.ticket)]
            released = time.monotonic()
        except BaseException:
            launcher.kill()
            raise
    try:
        _, err = launcher.communicate(timeout=240)
    finally:
        launcher.kill()
    served = time.monotonic() - released
    assert launcher.returncode == 0, err
    assert [int(pid) for pid in out.read_text().split()] == order  # first come, first served
    return queued, served


@pytest.mark.slow
@pytest.mark.sqlite_only("300 processes need 600 connections (the test server allows 300), and each imports the driver")
def test_hundreds_of_waiters_are_served_in_order_at_a_linear_cost(db: str, tmp_path: Path) -> None:
    create_limit("one", 1, db=db)
    few = _crowd(db, tmp_path, 30)
    many = _crowd(db, tmp_path, 300)
    for phase, at_30, at_300 in zip(("queueing", "serving"), few, many, strict=True):
        # Per waiter, 300 may cost at most 3 times what 30 did (plus 10 ms of noise): the collapse
        # cost 30 times as much, and half the waiters.
        assert at_300 / 300 <= 3 * at_30 / 30 + 0.010, (phase, few, many)
