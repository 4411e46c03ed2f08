"""The hot commands of ``gcl`` with real processes and real signals: run, rate-limit, acquire, renew, release."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import pytest
from helpers import GCL, Result, Spawned, env, gcl, gcl_all, holding, is_postgres, ok, one_line_error, wait_for

from gcl_local import create_limit, read_limit

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def free(db: str, name: str) -> bool:
    limit = read_limit(name, db=db)
    return limit.active_slots == 0 and not limit.holders


def alive(pid: int) -> bool:
    """Running, and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        return int(f.read().rpartition(")")[2].split()[1])


@pytest.fixture
def shell_env(db: str, tmp_path: Path) -> dict[str, str]:
    """Environment for shell scripts: ``gcl`` on PATH (exec-ing this Python), and GCL_DB."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "gcl"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m gcl_local "$@"\n')
    script.chmod(0o755)
    return env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", GCL_DB=db)


def bash(script: str, shell_env: dict[str, str], cwd: Path) -> Result:
    return subprocess.run(
        ["bash", "-c", script],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=shell_env,
        cwd=cwd,
        timeout=60,
    )


# -- gcl run: exit codes ----------------------------------------------------------------------------


def test_run_exits_with_the_commands_code(db: str) -> None:
    create_limit("a", 2, db=db)
    three, zero = gcl_all(db, [["run", "a", "--", "sh", "-c", "exit 3"], ["run", "a", "--", "true"]])
    assert three.returncode == 3
    assert three.stderr == ""
    assert zero.returncode == 0
    assert free(db, "a")


def test_run_exits_128_plus_the_signal_that_killed_the_command(db: str) -> None:
    create_limit("a", 2, db=db)
    term, kill = gcl_all(
        db, [["run", "a", "--", "sh", "-c", "kill -TERM $$"], ["run", "a", "--", "sh", "-c", "kill -KILL $$"]]
    )
    assert term.returncode == 143
    assert kill.returncode == 137
    assert "Traceback" not in term.stderr + kill.stderr
    assert free(db, "a")


def test_busy_and_timeout_exit_75(db: str, spawned: Spawned, tmp_path: Path) -> None:
    create_limit("a", 1, db=db)
    keeper = spawned.sleeper()
    ok(gcl(db, "acquire", "a", "--holder-pid", str(keeper.pid)))
    marker = tmp_path / "ran"
    started = time.monotonic()
    nonblock, timed_out, custom, acquire, acquire_custom = gcl_all(
        db,
        [
            ["run", "a", "-n", "--", "touch", str(marker)],
            ["run", "a", "--timeout", "1", "--", "touch", str(marker)],
            ["run", "a", "--nonblock", "--busy-exit-code", "9", "--", "touch", str(marker)],
            ["acquire", "a", "-n"],
            ["acquire", "a", "--timeout", "0.5", "--busy-exit-code", "9"],
        ],
    )
    elapsed = time.monotonic() - started
    assert one_line_error(nonblock, 75) == "gcl: slots on 'a' are busy; not waiting."
    # cron mails this line: it names the limit and how long it waited
    assert re.fullmatch(r"gcl: gave up after waiting 1\.\ds for slots on 'a'\.", one_line_error(timed_out, 75))
    one_line_error(custom, 9)
    one_line_error(acquire, 75)
    assert acquire.stdout == ""
    one_line_error(acquire_custom, 9)
    assert elapsed >= 1.0
    assert not marker.exists()
    assert len(read_limit("a", db=db).holders) == 1
    assert read_limit("a", db=db).waiters == ()


def test_strict_with_a_missing_limit_exits_1(db: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    strict, lenient = gcl_all(
        db, [["run", "nope", "--strict", "--", "touch", str(marker)], ["run", "nope", "--", "echo", "ran anyway"]]
    )
    assert "nope" in one_line_error(strict)
    assert not marker.exists()
    assert lenient.returncode == 0
    assert lenient.stdout == "ran anyway\n"
    assert "nope" in lenient.stderr  # a warning, and no limiting


def test_run_on_an_inactive_limit_does_not_limit(db: str) -> None:
    create_limit("off", 1, active=False, db=db)
    result = gcl(db, "run", "off", "--", "sh", "-c", "exit 4")
    assert result.returncode == 4
    assert result.stderr == ""


def test_run_a_missing_command(db: str) -> None:
    create_limit("a", 1, db=db)
    create_limit("r", 5, slot_decay_per_second=1.0, db=db)
    run, rate = gcl_all(
        db, [["run", "a", "--", "/nonexistent/command"], ["rate-limit", "r", "--", "/nonexistent/command"]]
    )
    assert run.returncode != 0
    assert "/nonexistent/command" in one_line_error(run, run.returncode)
    assert "/nonexistent/command" in one_line_error(rate, rate.returncode)
    assert rate.returncode != 0
    assert free(db, "a")


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["run", "a"], id="run-without-command"),
        pytest.param(["run"], id="run-without-names"),
        pytest.param(["run", "a", "--occupy", "x", "--", "true"], id="run-bad-occupy"),
        pytest.param(["run", "a", "--bogus", "--", "true"], id="run-unknown-option"),
        pytest.param(["acquire"], id="acquire-without-names"),
        pytest.param(["acquire", "a", "--bogus"], id="acquire-unknown-option"),
        pytest.param(["rate-limit", "a", "--bogus", "--", "true"], id="rate-limit-unknown-option"),
        pytest.param(["rate-limit", "a", "--occupy=x"], id="rate-limit-bad-occupy"),
        pytest.param(["renew"], id="renew-without-lease"),
        pytest.param(["release", "a", "b"], id="release-two-leases"),
        pytest.param(["rate-limit"], id="rate-limit-without-names"),
    ],
)
def test_usage_errors_exit_2(db: str, args: list[str]) -> None:
    result = gcl(db, *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.strip()


@pytest.mark.parametrize("strict", ["", "--strict"], ids=["lenient", "strict"])
@pytest.mark.parametrize("command", ["run", "rate-limit"])
def test_no_limit_name_is_a_usage_error(
    db: str, shell_env: dict[str, str], tmp_path: Path, command: str, strict: str
) -> None:
    """`gcl run $UNSET -- cmd` must not run cmd unlimited: a script's mistake is not "no limit"."""
    marker = tmp_path / "ran"
    written = gcl(db, command, *strict.split(), "--", "touch", str(marker))
    from_a_script = bash(f"gcl {command} $UNSET {strict} -- touch {marker}", shell_env, tmp_path)
    for result in (written, from_a_script):
        line = one_line_error(result, 2)
        assert f"no limit name given: gcl {command} NAME..." in line
    assert not marker.exists()


def test_invalid_values_exit_1(db: str, tmp_path: Path) -> None:
    create_limit("a", 1, db=db)
    create_limit("counted", 1, db=db)
    marker = tmp_path / "ran"
    results = gcl_all(
        db,
        [
            ["run", "a", "--occupy", "0", "--", "touch", str(marker)],
            ["run", "a", "--occupy", "2", "--", "touch", str(marker)],
            ["run", "a", "--lease-duration", "10", "--", "touch", str(marker)],
            ["run", "a", "--timeout", "-1", "--", "touch", str(marker)],
            ["run", "a/b", "--", "touch", str(marker)],
            ["rate-limit", "counted", "--", "touch", str(marker)],
            ["acquire", "a", "--holder-pid", "0"],
        ],
    )
    for result in results:
        one_line_error(result)
    assert not marker.exists()
    assert free(db, "a")


def test_invalid_values_are_named_as_options_and_touch_no_file(db: str) -> None:
    """Checked before the state file is opened (it is never created), and named as typed, not as Python names them."""
    cases = [
        ("--occupy", ["run", "a", "--occupy", "0", "--", "true"]),
        ("--timeout", ["run", "a", "--timeout", "-1", "--", "true"]),
        ("--lease-duration", ["run", "a", "--lease-duration", "10", "--", "true"]),
        ("--timeout", ["rate-limit", "r", "--timeout", "inf"]),
        ("--lease-duration", ["acquire", "a", "--lease-duration", "5", "--holder-pid", str(os.getpid())]),
        ("--holder-pid", ["acquire", "a", "--holder-pid", "0"]),
        ("--holder-pid", ["acquire", "a", "--holder-pid", "999999999"]),
        ("--lease-duration", ["renew", "1-deadbeef", "--lease-duration", "5"]),
    ]
    for (flag, _), result in zip(cases, gcl_all(db, [args for _, args in cases]), strict=True):
        assert flag in one_line_error(result), result.args
    assert not os.path.exists(db)
    assert not os.path.exists(f"{db}-run")


# -- gcl run: the command's input, output and signals -------------------------------------------


def test_output_and_input_pass_through(db: str) -> None:
    create_limit("a", 1, db=db)
    result = gcl(db, "run", "a", "--", "sh", "-c", "echo out; echo err >&2; cat; exit 5", input="some input\n")
    assert result.returncode == 5
    assert result.stdout == "out\nsome input\n"
    assert result.stderr == "err\n"


def test_options_after_the_double_dash_belong_to_the_command(db: str) -> None:
    create_limit("a", 1, db=db)
    hot, typer_path = gcl_all(
        db,
        [
            ["run", "a", "--", "echo", "-n", "--timeout", "--", "x"],
            ["run", "a", "-nv", "--", "echo", "-n", "--timeout", "--", "x"],  # -nv: parsed by typer
        ],
    )
    assert ok(hot) == "--timeout -- x"
    assert ok(typer_path) == "--timeout -- x"
    assert hot.stderr == ""


def test_options_after_the_names_are_options_on_every_parser_path(db: str, spawned: Spawned) -> None:
    """``-nv`` (combined short flags) is left to typer by the fast parser; it must mean -n -v there too."""
    create_limit("a", 1, db=db)
    create_limit("r", 1, slot_decay_per_second=0.1, db=db)
    keeper = spawned.sleeper()
    ok(gcl(db, "acquire", "a", "--holder-pid", str(keeper.pid)))
    ok(gcl(db, "rate-limit", "r"))
    run, rate = gcl_all(
        db,
        [
            ["run", "--timeout", "3", "a", "-nv", "--", "true"],
            ["rate-limit", "--timeout", "3", "r", "-nv", "--", "true"],
        ],
    )
    assert "busy" in one_line_error(run, 75)
    assert "busy" in one_line_error(rate, 75)


def test_the_lease_names_the_commands_pid_and_program(db: str, spawned: Spawned) -> None:
    create_limit("a", 1, db=db)
    wrapper = spawned.gcl(db, "run", "a", "--", "sleep", "30")
    holder = holding(db, "a", "sleep", wrapper)
    assert holder.pid != wrapper.pid
    assert parent_of(holder.pid) == wrapper.pid
    shown = json.loads(ok(gcl(db, "inspect", "a", "-o", "json")))["holders"]
    assert [(h["pid"], h["label"], h["slots"]) for h in shown] == [(holder.pid, "sleep", 1)]
    with open(f"/proc/{holder.pid}/comm", encoding="utf-8") as f:
        assert f.read().strip() == "sleep"


def test_a_quick_command_costs_neither_the_naming_nor_the_renewal_thread(db: str) -> None:
    """A cron job with nothing to do ends within ``SETTLE_SECONDS``: its lease is never renamed (one
    write less) and never handed to the renewal thread (no thread started). A longer one is both."""
    create_limit("a", 1, db=db)
    code = (
        "import sys, threading\nfrom gcl_local import _admission\nfrom gcl_local._cli import main\n"
        "named = []\nset_holder = _admission.set_holder\n"
        "_admission.set_holder = lambda *args: named.append(args[4]) or set_holder(*args)\n"
        "try:\n    main(['--db', sys.argv[1], 'run', 'a', '--', *sys.argv[2:]])\nexcept SystemExit:\n    pass\n"
        "print(named, [t.name for t in threading.enumerate() if t.name == 'gcl-lease-renewal'])"
    )
    for command, expected in ((["true"], "[] []"), (["sleep", "0.3"], "['sleep'] ['gcl-lease-renewal']")):
        argv = [sys.executable, "-c", code, db, *command]
        done = subprocess.run(argv, env=env(), capture_output=True, text=True, check=True, timeout=60)
        assert done.stdout.strip() == expected, done.stderr
    assert free(db, "a")


def test_the_program_exits_at_once_yet_flushes_and_runs_its_exit_handlers(db: str) -> None:
    """``gcl`` skips the interpreter's teardown (10 ms of every gcl run): its output must still be
    flushed, and its exit handlers must still remove its liveness token and pipe."""
    create_limit("a", 1, db=db)
    lease_id = ok(gcl(db, "acquire", "a", "--holder-pid", str(os.getpid()))).strip()
    assert read_limit("a", db=db).holders[0].id == lease_id
    released = gcl(db, "release", "-v", lease_id)
    assert (released.returncode, released.stderr) == (0, f"gcl: lease {lease_id} released\n")
    one_line_error(gcl(db, "run", "--strict", "missing", "--", "true"), 1)
    if not is_postgres(db):  # (on PostgreSQL the token is a session, which ends with the process)
        assert [name for name in os.listdir(f"{db}-run") if name != "turnstile"] == []  # no token, no pipe


def test_sigterm_reaches_the_command_and_the_slot_is_freed(db: str, spawned: Spawned, tmp_path: Path) -> None:
    create_limit("a", 1, db=db)
    ready, marker = tmp_path / "ready", tmp_path / "terminated"
    script = f"trap 'echo term > {marker}; exit 0' TERM; touch {ready}; while :; do sleep 0.05; done"
    wrapper = spawned.gcl(db, "run", "a", "--", "sh", "-c", script)
    holding(db, "a", "sh", wrapper)
    wait_for(ready.exists, what="the command to start")
    wrapper.send_signal(signal.SIGTERM)
    _, err = wrapper.communicate(timeout=20)
    assert wrapper.returncode == 0, err
    assert marker.read_text() == "term\n"
    assert free(db, "a")
    ok(gcl(db, "run", "a", "-n", "--", "true"))


def test_a_sigterm_that_comes_between_two_waits_for_a_signal_still_reaches_the_command(
    db: str, spawned: Spawned, tmp_path: Path
) -> None:
    """``gcl run`` blocks the signals it forwards and takes them with ``sigtimedwait``. One that came
    while its main thread was not in ``sigtimedwait`` (a few microseconds a second, longer on a busy
    machine) went to a thread that did not block it, the one that gives back dropped slots (started
    by the grant, before the block), where Python only noted it for a handler that drops it: the
    command never got it and ``gcl run`` waited for ever (a CI run on a starved machine). Here the
    main thread's look at the command takes a second once the command is ready, and the signal comes
    then."""
    create_limit("a", 1, db=db)
    ready, between, marker = tmp_path / "ready", tmp_path / "between", tmp_path / "terminated"
    code = (
        "import os, sys, time\nfrom gcl_local import _runner\nfrom gcl_local._cli import main\n"
        "exited = _runner._exited\n"
        "def slow(pid):\n"
        f"    if os.path.exists({str(ready)!r}) and not os.path.exists({str(between)!r}):\n"
        f"        open({str(between)!r}, 'w').close()\n"
        "        time.sleep(1.0)\n"
        "    return exited(pid)\n"
        "_runner._exited = slow\n"
        "main(['--db', sys.argv[1], 'run', 'a', '--', *sys.argv[2:]])\n"
    )
    script = f"trap 'echo term > {marker}; exit 0' TERM; touch {ready}; while :; do sleep 0.05; done"
    wrapper = spawned.start([sys.executable, "-c", code, db, "sh", "-c", script])
    wait_for(between.exists, what="gcl run to look at its command once it is ready")
    wrapper.send_signal(signal.SIGTERM)
    try:
        _, err = wrapper.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("the SIGTERM never reached the command: gcl run still waits for it")
    assert wrapper.returncode == 0, err
    assert marker.read_text() == "term\n"
    assert free(db, "a")


def test_under_nohup_a_sighup_to_gcl_run_is_ignored_as_by_the_command_alone(
    db: str, spawned: Spawned, tmp_path: Path
) -> None:
    """``nohup gcl run`` ignored SIGHUP only while waiting: once the command ran, gcl run caught it
    (exec reset it to the default in the command) and forwarded it, and the command died (129)."""
    create_limit("a", 1, db=db)
    ready, marker = tmp_path / "ready", tmp_path / "done"
    script = f"touch {ready}; sleep 1; echo done > {marker}"
    wrapper = spawned.start(["nohup", *GCL, "--db", db, "run", "a", "--", "sh", "-c", script])
    holding(db, "a", "sh", wrapper)
    wait_for(ready.exists, what="the command to start")
    wrapper.send_signal(signal.SIGHUP)
    _, err = wrapper.communicate(timeout=20)
    assert wrapper.returncode == 0, err
    assert marker.read_text() == "done\n"
    assert free(db, "a")


def test_gcl_run_started_with_sigchld_ignored_still_gives_the_commands_status(db: str) -> None:
    """A parent that ignores SIGCHLD passes that on through exec; the kernel then reaps the command
    itself and ``waitpid`` fails (ECHILD): gcl run ended with a traceback and status 1."""
    create_limit("a", 1, db=db)
    ignoring = (
        "import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); os.execv(sys.argv[1], sys.argv[1:])"
    )
    for command in ("exit 3", "sleep 0.3; exit 3"):
        argv = [sys.executable, "-c", ignoring, *GCL, "--db", db, "run", "a", "--", "sh", "-c", command]
        done = subprocess.run(argv, env=env(), capture_output=True, text=True, timeout=60, check=False)
        assert (done.returncode, done.stderr) == (3, ""), command
    assert free(db, "a")


@pytest.mark.parametrize(
    ("signum", "code"),
    [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)],
    ids=["TERM", "HUP", "INT"],
)
def test_a_forwarded_signal_kills_the_command(
    db: str, spawned: Spawned, tmp_path: Path, signum: int, code: int
) -> None:
    create_limit("a", 1, db=db)
    # Python rather than sleep: a test runner started in the background may pass SIGINT on ignored.
    child = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_DFL); time.sleep(60)"
    wrapper = spawned.gcl(db, "run", "a", "--", sys.executable, "-c", child)
    holder = holding(db, "a", os.path.basename(sys.executable), wrapper)
    wait_for(lambda: alive(holder.pid) and "SigCgt" in Path(f"/proc/{holder.pid}/status").read_text())
    time.sleep(0.3)  # let the child's interpreter reach its sleep
    wrapper.send_signal(signum)
    _, err = wrapper.communicate(timeout=20)
    assert wrapper.returncode == code, err
    assert "Traceback" not in err
    assert not alive(holder.pid)
    assert free(db, "a")


def test_a_killed_wrapper_leaves_the_slot_held_until_the_command_ends(
    db: str, spawned: Spawned, tmp_path: Path
) -> None:
    create_limit("a", 1, db=db)
    go = tmp_path / "go"
    wrapper = spawned.gcl(db, "run", "a", "--", "sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done")
    holder = holding(db, "a", "sh", wrapper)
    wrapper.kill()
    wrapper.wait(timeout=20)  # not communicate(): the command still holds the wrapper's pipes
    assert alive(holder.pid)
    one_line_error(gcl(db, "run", "a", "-n", "--", "true"), 75)
    assert [h.id for h in read_limit("a", db=db).holders] == [holder.id]
    go.touch()
    wait_for(lambda: not alive(holder.pid), what="the command to end")
    ok(gcl(db, "run", "a", "-n", "--", "true"))  # free at once: no retry
    assert free(db, "a")


def test_the_slot_is_held_exactly_while_the_command_runs(db: str, shell_env: dict[str, str], tmp_path: Path) -> None:
    create_limit("a", 1, db=db)
    result = bash(
        "gcl run a -- sh -c 'gcl run a -n -- true; echo \"inner=$?\"'; gcl run a -n -- echo after", shell_env, tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "inner=75\nafter\n"


# -- waiting notice ----------------------------------------------------------------------------------


def _readable(fd: int, seconds: float) -> bool:
    poller = select.poll()  # not select(): it fails on descriptors above 1024
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(seconds * 1000))


def test_the_waiting_notice_on_a_terminal(db: str, spawned: Spawned) -> None:
    create_limit("a", 1, db=db)
    keeper = spawned.sleeper()
    ok(gcl(db, "acquire", "a", "--holder-pid", str(keeper.pid)))
    master, slave = pty.openpty()
    try:
        started = time.monotonic()
        waiter = spawned.gcl(db, "run", "a", "--", "true", stderr=slave)
    finally:
        os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 20
        while b"\n" not in seen and time.monotonic() < deadline:
            if _readable(master, 0.2):
                seen += os.read(master, 4096)
        told_after = time.monotonic() - started
        text = seen.decode()
        assert re.search(rf"waiting for 'a' \(0 ahead, held by pid {keeper.pid}\b", text), text
        assert told_after >= 0.9
        keeper.kill()
        keeper.wait()
        assert waiter.wait(timeout=20) == 0
    finally:
        os.close(master)


def test_the_waiting_notice_in_a_pipe_only_with_verbose(db: str, spawned: Spawned) -> None:
    create_limit("a", 1, db=db)
    keeper = spawned.sleeper()
    ok(gcl(db, "acquire", "a", "--holder-pid", str(keeper.pid)))
    verbose, quiet = gcl_all(
        db, [["run", "a", "--verbose", "--timeout", "2", "--", "true"], ["run", "a", "--timeout", "2", "--", "true"]]
    )
    assert verbose.returncode == 75
    lines = verbose.stderr.splitlines()
    assert len(lines) == 2, verbose.stderr
    assert re.fullmatch(rf"gcl: waiting for 'a' \([01] ahead, held by pid {keeper.pid} .*\)", lines[0])
    assert re.fullmatch(r"gcl: gave up after waiting 2\.\ds for slots on 'a'\.", one_line_error(quiet, 75))


# -- rate-limit ----------------------------------------------------------------------------------


def test_rate_limit_paces_calls(db: str, shell_env: dict[str, str], tmp_path: Path) -> None:
    create_limit("r", 1, slot_decay_per_second=4.0, db=db)
    create_limit("roomy", 100, slot_decay_per_second=4.0, db=db)
    loop = "for i in 1 2 3 4 5; do gcl rate-limit {} || exit 1; done"
    started = time.monotonic()
    ok(bash(loop.format("roomy"), shell_env, tmp_path))
    overhead = time.monotonic() - started
    started = time.monotonic()
    ok(bash(loop.format("r"), shell_env, tmp_path))
    paced = time.monotonic() - started
    assert paced >= 0.95  # 4 intervals of 0.25 s after the first call
    assert paced <= max(1.0, overhead) + 2.5, (paced, overhead)


def test_rate_limit_nonblock_when_the_bucket_is_full(db: str, tmp_path: Path) -> None:
    create_limit("r", 1, slot_decay_per_second=0.2, db=db)
    marker = tmp_path / "ran"
    ok(gcl(db, "rate-limit", "r", "-n"))
    busy, custom = gcl_all(
        db, [["rate-limit", "r", "-n", "--", "touch", str(marker)], ["rate-limit", "r", "-n", "--busy-exit-code", "9"]]
    )
    one_line_error(busy, 75)
    one_line_error(custom, 9)
    assert not marker.exists()


def test_rate_limit_runs_the_command_with_its_exit_code(db: str) -> None:
    create_limit("r", 5, slot_decay_per_second=1.0, db=db)
    result = gcl(db, "rate-limit", "r", "--", "sh", "-c", "echo out; cat; echo err >&2; exit 4", input="in\n")
    assert result.returncode == 4
    assert result.stdout == "out\nin\n"
    assert result.stderr == "err\n"
    assert read_limit("r", db=db).active_slots == 1  # the slot stays in the bucket


def test_rate_limit_errors(db: str) -> None:
    create_limit("no-decay", 3, db=db)
    create_limit("r", 1, slot_decay_per_second=1.0, db=db)
    no_decay, too_many, strict = gcl_all(
        db,
        [["rate-limit", "no-decay"], ["rate-limit", "r", "--occupy", "2"], ["rate-limit", "missing", "--strict"]],
    )
    one_line_error(no_decay)
    one_line_error(too_many)
    one_line_error(strict)
    assert read_limit("r", db=db).active_slots == 0


# -- acquire, renew, release ---------------------------------------------------------------------


def test_acquire_prints_a_lease_id(db: str, spawned: Spawned) -> None:
    create_limit("a", 2, db=db)
    keeper = spawned.sleeper()
    result = gcl(db, "acquire", "a", "--holder-pid", str(keeper.pid))
    lease_id = ok(result).strip()
    assert re.fullmatch(r"\S+", lease_id)
    assert result.stdout == lease_id + "\n"
    assert result.stderr == ""
    (holder,) = read_limit("a", db=db).holders
    assert (holder.id, holder.pid, holder.held_by, holder.label) == (lease_id, keeper.pid, "pid", "sleep")
    as_json = json.loads(ok(gcl(db, "acquire", "a", "--holder-pid", str(keeper.pid), "-o", "json")))
    assert as_json["names"] == ["a"]
    assert as_json["pid"] == keeper.pid
    assert isinstance(as_json["token"], int)
    assert as_json["token"] > holder.token  # type: ignore[operator]


def test_a_lease_of_a_holder_pid_goes_when_that_process_dies(db: str, spawned: Spawned) -> None:
    create_limit("a", 1, db=db)
    keeper, other = spawned.sleeper(), spawned.sleeper()
    ok(gcl(db, "acquire", "a", "--holder-pid", str(keeper.pid)))
    one_line_error(gcl(db, "acquire", "a", "-n", "--holder-pid", str(other.pid)), 75)
    keeper.kill()
    keeper.wait()
    lease_id = ok(gcl(db, "acquire", "a", "-n", "--holder-pid", str(other.pid))).strip()
    assert [h.id for h in read_limit("a", db=db).holders] == [lease_id]


def test_acquire_is_held_by_the_calling_shell(
    db: str, spawned: Spawned, shell_env: dict[str, str], tmp_path: Path
) -> None:
    create_limit("x", 1, db=db)
    go = tmp_path / "go"
    script = f'L=$(gcl acquire x) || exit 1; echo "$L $$"; while [ ! -e {go} ]; do sleep 0.05; done'
    shell = subprocess.Popen(
        ["bash", "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, env=shell_env
    )
    spawned.started.append(shell)
    assert shell.stdout is not None
    lease_id, pid = shell.stdout.readline().split()
    assert int(pid) == shell.pid
    (holder,) = read_limit("x", db=db).holders
    assert (holder.id, holder.pid, holder.label, holder.held_by) == (lease_id, shell.pid, "bash", "pid")
    one_line_error(gcl(db, "run", "x", "-n", "--", "true"), 75)
    go.touch()
    assert shell.wait(timeout=20) == 0
    ok(gcl(db, "run", "x", "-n", "--", "true"))


def test_renew_extends_the_lease(db: str, spawned: Spawned) -> None:
    create_limit("a", 1, db=db)
    keeper = spawned.sleeper()
    lease = json.loads(ok(gcl(db, "acquire", "a", "--holder-pid", str(keeper.pid), "-o", "json")))
    renewed = json.loads(ok(gcl(db, "renew", lease["id"], "--lease-duration", "900", "-o", "json")))
    assert renewed["id"] == lease["id"]
    gained = datetime.fromisoformat(renewed["expires"]) - datetime.fromisoformat(lease["expires"])
    assert 500 < gained.total_seconds() < 700  # 300 s -> 900 s from (nearly) the same moment
    plain = gcl(db, "renew", lease["id"])
    assert ok(plain) == ""
    assert plain.stderr == ""
    (holder,) = read_limit("a", db=db).holders
    assert holder.expires is not None
    assert holder.expires < datetime.fromisoformat(renewed["expires"])  # renewed to the default 300 s


def test_renew_errors(db: str, spawned: Spawned) -> None:
    create_limit("a", 1, db=db)
    keeper = spawned.sleeper()
    lease_id = ok(gcl(db, "acquire", "a", "--holder-pid", str(keeper.pid))).strip()
    unknown, short = gcl_all(db, [["renew", "999-deadbeef"], ["renew", lease_id, "--lease-duration", "5"]])
    assert "999-deadbeef" in one_line_error(unknown)
    one_line_error(short)


def test_release_is_idempotent(db: str, spawned: Spawned) -> None:
    create_limit("a", 1, db=db)
    keeper = spawned.sleeper()
    lease_id = ok(gcl(db, "acquire", "a", "--holder-pid", str(keeper.pid))).strip()
    first = gcl(db, "release", lease_id)
    assert ok(first) == ""
    assert first.stderr == ""
    assert free(db, "a")
    second = gcl(db, "release", lease_id, "--verbose")
    assert ok(second) == ""
    assert "not held" in second.stderr
    ok(gcl(db, "release", "12345-00000000"))


def test_released_by_a_trap_when_the_script_fails(db: str, shell_env: dict[str, str], tmp_path: Path) -> None:
    create_limit("db", 1, db=db)
    script = """
    set -e
    lease=$(gcl acquire db) && trap 'gcl release "$lease"' EXIT
    gcl run db -n -- true || echo "busy=$?"
    false
    echo "not reached"
    """
    result = bash(script, shell_env, tmp_path)
    assert result.returncode == 1
    assert result.stdout == "busy=75\n"
    assert free(db, "db")
    ok(gcl(db, "run", "db", "-n", "--", "true"))


def test_released_by_the_trap_even_while_the_holder_lives(
    db: str, spawned: Spawned, shell_env: dict[str, str], tmp_path: Path
) -> None:
    """The lease's holder outlives the script here: only the trap can have freed the slot."""
    create_limit("db", 1, db=db)
    keeper = spawned.sleeper()
    script = f"""
    lease=$(gcl acquire db --holder-pid {keeper.pid}) && trap 'gcl release "$lease"' EXIT
    gcl run db -n -- true || echo "busy=$?"
    exit 7
    """
    result = bash(script, shell_env, tmp_path)
    assert result.returncode == 7
    assert result.stdout == "busy=75\n"
    assert alive(keeper.pid)
    assert free(db, "db")


def test_the_trap_idiom_with_a_missing_limit(db: str, shell_env: dict[str, str], tmp_path: Path) -> None:
    """No limit, no limiting (a warning); and whatever acquire printed, release accepts it."""
    script = """
    lease=$(gcl acquire nope) && trap 'gcl release "$lease"' EXIT
    echo "body ran"
    """
    result = bash(script, shell_env, tmp_path)
    assert result.stdout == "body ran\n"
    assert "nope" in result.stderr
    assert result.returncode == 0, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_the_first_hot_command_on_a_fresh_machine_creates_the_default_file(tmp_path: Path) -> None:
    """No --db, no GCL_DB and no state directory yet: the default path's parent is created (0700)."""
    state = tmp_path / "state"  # XDG_STATE_HOME, as conftest sets it; it does not exist yet
    assert not state.exists()
    run = subprocess.run(
        [*GCL, "run", "x", "--", "echo", "hi"],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env(),
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "hi\n"
    assert (state / "gcl_local" / "gcl.db").is_file()
    assert (state / "gcl_local").stat().st_mode & 0o777 == 0o700
