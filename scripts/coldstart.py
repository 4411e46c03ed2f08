#!/usr/bin/env python3
"""Cold start of the ``gcl`` command against ``python -c pass``, in one run; where the time goes.

Usage: .venv/bin/python scripts/coldstart.py [--runs 10] [--top 12]

Times, interleaved round by round on a fresh state file with a limit ``job`` (from the bytecode
that ``pip install`` wrote, as an installed ``gcl`` runs): ``python -c pass``, ``gcl run job -- true``,
``gcl ls``, ``gcl ls -o json``, ``gcl inspect job -o json``, ``gcl --version``; prints best and median
of each and their ratio to ``python -c pass``. Then the biggest cumulative imports (``python -X
importtime``) of ``gcl run`` and ``gcl ls``. Goals (issue 11): ``gcl run`` <= 3 x ``python -c pass``;
``gcl ls`` <= 150 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
RUN_GOAL_RATIO = 3.0
LS_GOAL_SECONDS = 0.150


def timed(commands: dict[str, list[str]], runs: int, env: dict[str, str]) -> dict[str, list[float]]:
    """Wall times of each command, interleaved round by round, after one warm-up run each."""
    for cmd in commands.values():
        subprocess.run(cmd, env=env, capture_output=True, timeout=60, check=True)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, cmd in commands.items():
            t0 = time.perf_counter()
            # No timeout=: with one, Popen.wait polls (sleeps of 0.5 ms doubling to 50 ms), and every
            # time measured would be rounded up to the next poll (16, 32, 64, 114 ms...).
            subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            times[name].append(time.perf_counter() - t0)
    return times


def import_profile(cmd: list[str], env: dict[str, str], top: int) -> list[tuple[int, int, str]]:
    """The *top* imports by cumulative time (us), as ``-X importtime`` reports them: (cumulative, self, module)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *cmd], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cumulative, module = line.removeprefix("import time:").split("|")
        rows.append((int(cumulative), int(self_us), module[1:].rstrip()))  # nested ones stay indented
    total = sum(c for c, _, m in rows if not m.startswith(" "))
    rows.sort(reverse=True)
    return [(total, 0, "(all imports)"), *((c, s, m.strip()) for c, s, m in rows[:top])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs of each command (default 10)")
    parser.add_argument("--top", type=int, default=12, help="imports to list per command (default 12)")
    args = parser.parse_args()
    gcl = str(VENV_BIN / "gcl")
    with tempfile.TemporaryDirectory(prefix="gcl-coldstart-") as directory:
        env = {**os.environ, "GCL_DB": os.path.join(directory, "gcl.db")}
        subprocess.run([gcl, "create", "job", "--limit", "1"], env=env, capture_output=True, check=True)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "gcl run job -- true": [gcl, "run", "job", "--", "true"],
            "gcl ls": [gcl, "ls"],
            "gcl ls -o json": [gcl, "ls", "-o", "json"],
            "gcl inspect job -o json": [gcl, "inspect", "job", "-o", "json"],
            "gcl --version": [gcl, "--version"],
        }
        times = timed(commands, args.runs, env)
        base = statistics.median(times["python -c pass"])
        print(f"{'command':<26} {'best':>9} {'median':>9} {'x python':>9}   ({args.runs} runs each, interleaved)")
        for name, ts in times.items():
            median = statistics.median(ts)
            print(f"{name:<26} {min(ts) * 1e3:>7.1f}ms {median * 1e3:>7.1f}ms {median / base:>8.2f}x")
        run_ratio = statistics.median(times["gcl run job -- true"]) / base
        ls_median = statistics.median(times["gcl ls"])
        print()
        print(f"gcl run: {run_ratio:.2f} x python -c pass (goal <= {RUN_GOAL_RATIO:g} x): "
              f"{'met' if run_ratio <= RUN_GOAL_RATIO else 'NOT met'}")  # fmt: skip
        print(f"gcl ls: {ls_median * 1e3:.1f} ms (goal <= {LS_GOAL_SECONDS * 1e3:.0f} ms): "
              f"{'met' if ls_median <= LS_GOAL_SECONDS else 'NOT met'}")  # fmt: skip
        for label, cmd in (("gcl run job -- true", [gcl, "run", "job", "--", "true"]), ("gcl ls", [gcl, "ls"])):
            print(f"\n-X importtime of {label}: cumulative, self, module (us)")
            for cumulative, self_us, module in import_profile(cmd, env, args.top):
                print(f"  {cumulative:>7} {self_us:>7}  {module}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
