"""The chaos run (scripts/stress.py), briefly: workers of every kind are SIGKILLed while they hold and wait.

It checks, with a ledger kept outside gcl_local, that the limit is never exceeded, and at the end that
the state file is intact and empty and no token or pipe file is left behind.
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
SECONDS = 15


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
def test_chaos_run_never_over_admits_and_leaves_nothing_behind(tmp_path: Path) -> None:
    proc, summary, output = run_stress(tmp_path, SECONDS)

    assert "over-admissions: 0" in proc.stdout, output
    assert summary["over_admissions"] == 0, output
    assert summary["max_holders"] <= summary["limit"], output
    assert summary["kills"] >= 10, output
    assert summary["acquisitions"] > 0, output
    assert all(n > 0 for n in summary["acquisitions_by_kind"].values()), output
    assert summary["integrity"] == "ok", output
    assert summary["active_slots"] == 0, output
    assert summary["leases_left"] == 0, output
    assert summary["tickets_left"] == 0, output
    assert summary["run_files_left"] == [], output
    assert summary["failures"] == [], output
    assert proc.returncode == 0, output


@pytest.mark.slow
def test_chaos_run_catches_an_over_admission(tmp_path: Path) -> None:
    """The harness itself: gcl_local is given one slot more than the ledger allows, and the run must fail."""
    proc, summary, output = run_stress(tmp_path, 4, "--limit", "2", "--gcl-limit", "3", "--workers", "6")
    assert proc.returncode == 1, output
    assert summary["over_admissions"] > 0, output
    assert summary["max_holders"] > summary["limit"], output
