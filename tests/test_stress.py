"""The chaos run (scripts/stress.py), briefly: workers of every kind are SIGKILLed, SIGTERMed and SIGINTed while
they hold and wait; some fork in their blocks, cancel their tasks, call ``-n``, or use ``gcl acquire`` from shells.

It checks, with a ledger kept outside gcl_local, that the limit is never exceeded, that no live process keeps a
lease outside its block or a ticket it does not wait with, that no process in its block lost its lease, and at
the end that the state file is intact and empty and no token or pipe file is left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
STRESS = REPO / "scripts" / "stress.py"
SECONDS = 10


def run_stress(
    tmp_path: Path, seconds: float, *args: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], str]:
    summary_path = tmp_path / "summary.json"
    command = [sys.executable, str(STRESS), "--seconds", str(seconds), "--json", str(summary_path)]
    command += ["--work", str(tmp_path / "work"), *args]
    try:
        proc = subprocess.run(
            command,
            check=False,
            capture_output=True,
            text=True,
            timeout=seconds + 75,  # the script has its own deadlines; this one only guards against a hang
            cwd=tmp_path,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"stress.py did not finish in time:\n{exc.stdout!s}\n{exc.stderr!s}")
    output = f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert summary_path.exists(), output
    return proc, json.loads(summary_path.read_text()), output


@pytest.mark.slow
def test_chaos_run_never_over_admits_leaks_or_leaves_anything_behind(tmp_path: Path) -> None:
    # 5 s more than the others: every fault must be injected, and in a clean-clone CI run on a machine
    # 1.5 x slower than usual (29 min for the suite) a 10-s run issued no cancellation of an async task.
    # Quiet, the same seed (7474) gives 9 async acquisitions and 17 cancellations in 15 s.
    proc, summary, output = run_stress(tmp_path, SECONDS + 5)

    # Every fault was injected.
    assert summary["faults_enabled"] == ["sigint", "cancel", "fork", "nonblock", "sigterm", "shell"], output
    assert summary["kills"] >= 10, output
    assert summary["terms"] >= 3, output
    assert summary["sigints"] >= 300, output
    assert all(summary["spawned"].get(kind, 0) > 0 for kind in summary["kinds"]), output
    assert sum(summary["faults"]["sigint"]["raised"].values()) > 0, output
    cancels = summary["faults"]["cancel"]
    if cancels.get("timeouts", 0) + summary["acquisitions_by_kind"].get("acancel", 0) > 0:
        # (The workers that cancel made attempts: some were cancelled. Two clean-clone CI runs on a
        # starved machine had those workers make none in the whole run, while the others ran.)
        assert sum(cancels.get("issued", {}).values()) > 0, output
    assert summary["acquisitions"] > 0, output
    assert all(summary["acquisitions_by_kind"].get(kind, 0) > 0 for kind in ("sync", "async")), output

    # No violation of any kind.
    assert "over-admissions: 0" in proc.stdout, output
    assert summary["over_admissions"] == 0, output
    assert summary["max_holders"] <= summary["limit"], output
    assert summary["duplicate_tokens"] == 0, output
    assert summary["violations"] == {}, output
    assert summary["integrity"] == "ok", output
    assert summary["active_slots"] == 0, output
    assert summary["leases_left"] == 0, output
    assert summary["tickets_left"] == 0, output
    assert summary["run_files_left"] == [], output
    assert summary["failures"] == [], output
    assert proc.returncode == 0, output


@pytest.mark.slow
def test_chaos_run_catches_over_admissions_and_leaks(tmp_path: Path) -> None:
    """The harness itself: gcl_local is given one slot more than the ledger allows, and a process keeps a lease
    outside any block and a ticket it does not wait with; the run must fail with each of them."""
    proc, summary, output = run_stress(
        tmp_path, 5, "--limit", "2", "--gcl-limit", "3", "--workers", "6", "--faults", "none", "--inject-leaks",
        "--leak-seconds", "1.5",
    )  # fmt: skip
    assert proc.returncode == 1, output
    assert summary["over_admissions"] > 0, output
    assert summary["max_holders"] > summary["limit"], output
    assert summary["violations"].get("over-admission", 0) > 0, output
    assert summary["violations"].get("leaked-lease", 0) > 0, output
    assert summary["violations"].get("ticket-without-waiter", 0) > 0, output
    assert "FAILED: " in proc.stdout, output


@pytest.mark.slow
def test_chaos_run_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    """The same run on a PostgreSQL store (a schema of its own), with fewer workers: each process of a
    PostgreSQL client imports the driver, which a 2-core machine feels."""
    url = f"{pg_url}&gcl_detect_seconds=5"
    proc, summary, output = run_stress(tmp_path, SECONDS, "--db", url, "--workers", "6", "--fault-workers", "1")

    assert summary["faults_enabled"] == ["sigint", "cancel", "fork", "nonblock", "sigterm", "shell"], output
    assert summary["kills"] >= 10, output
    assert summary["terms"] >= 3, output
    assert summary["acquisitions"] > 0, output
    assert "over-admissions: 0" in proc.stdout, output
    assert summary["over_admissions"] == 0, output
    assert summary["max_holders"] <= summary["limit"], output
    assert summary["duplicate_tokens"] == 0, output
    assert summary["violations"] == {}, output
    assert summary["active_slots"] == 0, output
    assert summary["leases_left"] == 0, output
    assert summary["tickets_left"] == 0, output
    assert summary["failures"] == [], output
    assert proc.returncode == 0, output


@pytest.mark.slow
def test_chaos_run_on_postgresql_lives_through_server_restarts(tmp_path: Path, own_pg_server: tuple[str, str]) -> None:
    """The server restarts as after a crash (pg_ctl restart -m immediate) every few seconds of the run: calls under
    way then wait for it, holders keep their slots, waiters their place; nothing is over-admitted or left behind.
    (A process that connects for the first time while the server is down is told so: counted, not a failure.)"""
    url, pg_dir = own_pg_server
    proc, summary, output = run_stress(
        tmp_path, SECONDS, "--db", f"{url}&gcl_detect_seconds=5", "--workers", "6", "--fault-workers", "1",
        "--restart-every", "4", "--pg-dir", pg_dir,
    )  # fmt: skip

    assert summary["server_restarts"] >= 1, output
    assert summary["kills"] >= 10, output
    assert summary["acquisitions"] > 0, output
    assert summary["over_admissions"] == 0, output
    assert summary["duplicate_tokens"] == 0, output
    assert summary["violations"] == {}, output
    assert summary["active_slots"] == 0, output
    assert summary["leases_left"] == 0, output
    assert summary["tickets_left"] == 0, output
    assert proc.returncode == 0, output
