"""``gcl acquire`` in shell scripts: the lease belongs to the script, whatever subshell or wrapper
stands between, in bash and in dash; or ``gcl acquire`` refuses and asks for ``--holder-pid $$``.

Real shells run real scripts; the only thing faked is a missing ``/proc``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import Spawned, env, gcl, ok, one_line_error, wait_for

from gcl_local import _holder, create_limit, read_limit
from gcl_local._cli import main

SHELLS = [shell for shell in ("bash", "dash") if shutil.which(shell)]

# Each form used to give the lease to a subshell or to `timeout`, gone as soon as gcl printed.
FORMS = {
    "plain": 'lease=$(gcl acquire "$NAME")',
    "or-exit": 'lease=$(gcl acquire "$NAME" || exit 1)',
    "stderr-too": 'lease=$(gcl acquire "$NAME" 2>&1)',
    "piped": 'lease=$(gcl acquire "$NAME" | tail -1)',
    "timeout": 'lease=$(timeout 70 gcl acquire "$NAME" --timeout 60)',
}

# Enter, hold the slot a while, leave: no release, so the slot is freed only when the script exits.
SCRIPT = """set -e
{form}
echo "enter $$ $lease" >> "$LOG"
sleep 1
echo "exit $$" >> "$LOG"
"""


@pytest.fixture
def shell_env(db: str, tmp_path: Path) -> dict[str, str]:
    """``gcl`` on PATH (a script that execs this Python), and GCL_DB."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "gcl"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m gcl_local "$@"\n')
    script.chmod(0o755)
    return env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", GCL_DB=db)


def start(spawned: Spawned, argv: list[str], environ: dict[str, str]) -> subprocess.Popen[str]:
    """A shell in its own session, with its own environment; killed with its children at teardown."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ,
        start_new_session=True,
    )  # fmt: skip
    spawned.started.append(proc)
    return proc


def overlaps(log: list[str]) -> list[str]:
    """Lines where a script entered while another was still inside."""
    inside: str | None = None
    bad = []
    for line in log:
        word, pid = line.split()[:2]
        if word == "enter":
            if inside is not None:
                bad.append(f"{pid} entered while {inside} was inside")
            inside = pid
        elif inside == pid:
            inside = None
    return bad


@pytest.mark.parametrize("form", list(FORMS))
def test_three_copies_of_a_script_never_hold_a_limit_of_one_together(
    db: str, spawned: Spawned, shell_env: dict[str, str], tmp_path: Path, form: str
) -> None:
    script = tmp_path / "job.sh"
    script.write_text(SCRIPT.format(form=FORMS[form]))
    runs: dict[str, list[subprocess.Popen[str]]] = {}
    for shell in SHELLS:  # bash and dash side by side, each on its own limit
        create_limit(shell, 1, db=db)
        log = tmp_path / f"{shell}.log"
        log.touch()
        runs[shell] = [
            start(spawned, [shell, str(script)], {**shell_env, "NAME": shell, "LOG": str(log)}) for _ in range(3)
        ]
    for shell, procs in runs.items():
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, (shell, err)
            assert "Traceback" not in err
        lines = (tmp_path / f"{shell}.log").read_text().splitlines()
        assert [line.split()[0] for line in lines].count("enter") == 3, (shell, lines)
        assert overlaps(lines) == [], (shell, form, lines)
        # Each exited without `gcl release`: its lease went with it.
        wait_for(lambda shell=shell: not read_limit(shell, db=db).holders, what="the last lease to go")


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("form", ["or-exit", "timeout"])
def test_the_lease_names_the_script(
    db: str, spawned: Spawned, shell_env: dict[str, str], tmp_path: Path, shell: str, form: str
) -> None:
    create_limit("db", 1, db=db)
    go = tmp_path / "go"
    script = f'{FORMS[form]}\necho "$$ $lease"\nwhile [ ! -e {go} ]; do sleep 0.05; done\n'
    proc = start(spawned, [shell, "-c", script], {**shell_env, "NAME": "db"})
    assert proc.stdout is not None
    pid, lease_id = proc.stdout.readline().split()
    assert int(pid) == proc.pid
    (holder,) = read_limit("db", db=db).holders
    assert (holder.id, holder.pid, holder.label, holder.held_by) == (lease_id, proc.pid, shell, "pid")
    one_line_error(gcl(db, "run", "db", "-n", "--", "true"), 75)
    go.touch()
    assert proc.wait(timeout=20) == 0
    ok(gcl(db, "run", "db", "-n", "--", "true"))


def _pid_namespace() -> list[str] | None:
    """An ``unshare`` prefix that runs a command as pid 1 of a new PID namespace, if this machine allows it."""
    if not shutil.which("unshare"):
        return None
    for prefix in (
        ["unshare", "--pid", "--fork", "--mount-proc"],
        ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc"],
    ):
        argv = [*prefix, "sh", "-c", "echo $$"]
        probe = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30)
        if probe.returncode == 0 and probe.stdout.strip() == "1":
            return prefix
    return None


@pytest.mark.parametrize("shell", SHELLS)
def test_a_script_that_is_pid_1_is_refused_with_a_hint(
    db: str, shell_env: dict[str, str], tmp_path: Path, shell: str
) -> None:
    """As in a container: the walk up from a subshell reaches pid 1, never a holder by guess."""
    prefix = _pid_namespace()
    if prefix is None:
        pytest.skip("no PID namespaces here (unshare)")
    create_limit("db", 1, db=db)
    script = f"""
    {FORMS["or-exit"]} || echo "refused=$?" >&2
    {FORMS["plain"]} || echo "refused=$?" >&2
    lease=$(gcl acquire "$NAME" -n --holder-pid $$) && echo "ok $lease"
    """
    result = subprocess.run(
        [*prefix, shell, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        env={**shell_env, "NAME": "db"},
        timeout=60,
    )
    errors = result.stderr.splitlines()
    assert errors[1::2] == ["refused=1", "refused=2"], result.stderr  # `|| exit 1` turned the 2 into 1
    for line in errors[0::2]:
        assert line.startswith("gcl: cannot tell which process should hold the lease"), result.stderr
        assert line.endswith("pass --holder-pid $$"), result.stderr
    assert result.stdout.startswith("ok "), result.stderr  # with the hint followed, it works


def test_without_proc_acquire_refuses_before_touching_the_file(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_holder, "PROC", str(tmp_path / "no-proc"))
    with pytest.raises(SystemExit) as exited:
        main(["--db", db, "acquire", "db"])
    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("gcl: cannot tell which process should hold the lease")
    assert "--holder-pid $$" in line
    assert not os.path.exists(db)


def test_a_waiter_whose_holder_exits_is_never_granted(db: str, spawned: Spawned) -> None:
    """The queue drops the ticket of a `gcl acquire` whose holder has died: no lease, no fencing token spent."""
    create_limit("x", 1, db=db)
    keeper, doomed = spawned.sleeper(), spawned.sleeper()
    first = json.loads(ok(gcl(db, "acquire", "x", "--holder-pid", str(keeper.pid), "-o", "json")))
    waiter = spawned.gcl(db, "acquire", "x", "--holder-pid", str(doomed.pid))
    wait_for(lambda: read_limit("x", db=db).waiters, what="the waiter")
    doomed.kill()
    doomed.wait()
    ok(gcl(db, "release", first["id"]))  # the release hands the slot to the oldest waiter...
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 1, (out, err)
    assert out == ""
    (line,) = err.splitlines()
    assert f"holder process {doomed.pid}" in line
    assert "exited" in line
    limit = read_limit("x", db=db)
    assert (limit.holders, limit.waiters) == ((), ())
    # ...but it never handed out a lease: the next one has the very next fencing token.
    after = json.loads(ok(gcl(db, "acquire", "x", "--holder-pid", str(keeper.pid), "-o", "json")))
    assert after["token"] == first["token"] + 1


def test_a_gcl_acquire_adopted_outside_its_session_is_refused(db: str) -> None:
    """When the script (and its subshell) were killed while ``gcl acquire`` started, ``gcl`` is adopted
    by whoever reaps orphans: a process of another session, never the holder (the chaos run found its
    driver, a subreaper, holding such a lease). Here ``gcl`` runs in a session of its own under pytest."""
    create_limit("x", 1, db=db)
    environ = env(GCL_DB=db)
    proc = subprocess.run(
        [sys.executable, "-m", "gcl_local", "acquire", "x"], capture_output=True, text=True, env=environ,
        start_new_session=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--holder-pid" in proc.stderr
    assert read_limit("x", db=db).holders == ()
