"""Helpers shared by the CLI tests."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

from gcl_local import Lease, read_limit

T = TypeVar("T")


def wait_for(predicate: Callable[[], T | None], timeout: float = 20.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def holding(db: str, name: str, label: str, proc: subprocess.Popen[str]) -> Lease:
    """Wait until ``gcl run`` (*proc*) holds *name* and has named its command (*label*) as the holder."""

    def holder() -> Lease | None:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} ended early: {proc.returncode} {proc.communicate()}")
        holders = read_limit(name, db=db).holders
        if not holders or holders[0].label != label:
            return None
        # gcl run takes the lease under its own pid, then names its command's pid once started
        return None if holders[0].pid == proc.pid else holders[0]

    return wait_for(holder, what=f"a holder of {name!r} named {label!r}")
