"""The admin commands of ``gcl``, run as real processes: create, ls, inspect, update, enable, disable, delete.

What a command printed is checked on its own output; what it did to the file is read back through the
library (in-process, which is much faster than another ``gcl`` process). Independent invocations run
side by side to keep the file's runtime modest.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, TypeVar

import pytest
from helpers import GCL, Result, Spawned, env, gcl, gcl_all, header, holding, ok, one_line_error, wait_for
from typer.testing import CliRunner

from gcl_local import Limit, LimitNotFoundError, list_limits, read_limit
from gcl_local._app import app
from gcl_local._cli import main

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ["create", "ls", "inspect", "update", "enable", "disable", "delete", "apply", "export"]
HOT_COMMANDS = ["run", "rate-limit", "acquire", "renew", "release"]
T = TypeVar("T")


def usage_error(result: Result) -> str:
    assert result.returncode == 2, (result.args, result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.args
    assert result.stderr.strip(), result.args
    return result.stderr


def in_process(capsys: pytest.CaptureFixture[str], db: str, *args: str) -> Result:
    """``gcl --db DB ARGS`` through the real entry point, in this process (for the big matrices: fast)."""
    with pytest.raises(SystemExit) as exited:
        main(["--db", db, *args])
    out, err = capsys.readouterr()
    code = exited.value.code
    return subprocess.CompletedProcess(["gcl", *args], code if isinstance(code, int) else 1, out, err)


def as_json(db: str, *args: str) -> Any:
    return json.loads(ok(gcl(db, *args, "-o", "json")))


def names_in(db: str) -> list[str]:
    return [limit.name for limit in list_limits(db=db)]


def waiting(db: str, name: str) -> Limit:
    return wait_for(lambda: (lim := read_limit(name, db=db)).waiters and lim, what=f"a waiter on {name!r}")


# -- create ---------------------------------------------------------------------------------------


def test_create_prints_a_confirmation_and_the_limit_exists(db: str) -> None:
    out = ok(gcl(db, "create", "nightly", "-l", "2"))
    assert "'nightly'" in out
    limit = read_limit("nightly", db=db)
    assert (limit.limit, limit.active, limit.slot_decay_per_second, limit.active_slots) == (2, True, 0.0, 0)


def test_create_with_every_option_and_json_output(db: str) -> None:
    made = as_json(
        db, "create", "api", "--limit", "3", "--slot-decay-per-second", "0.5", "--disable", "--active-slots", "2"
    )
    assert made["name"] == "api"
    assert made["limit"] == 3
    assert made["slot_decay_per_second"] == 0.5
    assert made["active"] is False
    assert made["active_slots"] == 2
    assert made["holders"] == []
    assert made["waiters"] == []
    assert {"avg_slot_occupancy_seconds", "created", "updated"} <= set(made)
    stored = read_limit("api", db=db)
    assert (stored.limit, stored.active, stored.slot_decay_per_second) == (3, False, 0.5)


def test_create_an_existing_name_fails(db: str) -> None:
    ok(gcl(db, "create", "a", "-l", "1"))
    line = one_line_error(gcl(db, "create", "a", "-l", "5"))
    assert "already exists" in line
    assert read_limit("a", db=db).limit == 1


INVALID_CREATE = [
    ["x/y", "-l", "1"],
    ["x" * 256, "-l", "1"],
    ["", "-l", "1"],
    [" x", "-l", "1"],
    ["x\ty", "-l", "1"],
    ["x", "-l", "-1"],
    ["x", "-l", "1", "--slot-decay-per-second", "nan"],
    ["x", "-l", "1", "--slot-decay-per-second", "inf"],
    ["x", "-l", "1", "--slot-decay-per-second", "-0.5"],
    ["x", "-l", "1", "--active-slots", "-1"],
]


def test_create_rejects_invalid_values_with_one_line(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    for args in INVALID_CREATE:
        one_line_error(in_process(capsys, db, "create", *args))
    assert names_in(db) == []


def test_create_rejects_invalid_values_as_a_process(db: str) -> None:
    slash, nan = gcl_all(
        db, [["create", "x/y", "-l", "1"], ["create", "x", "-l", "1", "--slot-decay-per-second", "nan"]]
    )
    assert "/" in one_line_error(slash)
    assert "nan" in one_line_error(nan)
    assert names_in(db) == []


CREATE_USAGE_ERRORS = [
    ["x", "-l", "abc"],
    ["x", "-l", "1.5"],
    ["x", "-l", "1", "--active-slots", "0.5"],
    ["x", "-l", "1", "--slot-decay-per-second", "fast"],
    ["x"],
    [],
    ["x", "-l", "1", "--bogus"],
]


def test_create_usage_errors_exit_2(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    for args in CREATE_USAGE_ERRORS:
        usage_error(in_process(capsys, db, "create", *args))
    assert names_in(db) == []


def test_create_usage_error_as_a_process(db: str) -> None:
    assert "--limit" in usage_error(gcl(db, "create", "x", "-l", "abc"))
    assert not Path(db).exists()


# -- ls -------------------------------------------------------------------------------------------


def test_ls_when_empty(db: str) -> None:
    text, as_json_text = gcl_all(db, [["ls"], ["ls", "-o", "json"]])
    assert ok(text) == f"{header(db)}\nNo state file yet: gcl create NAME --limit N makes it.\n"
    assert json.loads(ok(as_json_text)) == []
    ok(gcl(db, "create", "a", "-l", "1"))
    ok(gcl(db, "delete", "a"))
    text, as_json_text = gcl_all(db, [["ls"], ["ls", "-o", "json"]])
    assert ok(text) == f"{header(db)}\nNo limits yet: gcl create NAME --limit N\n"
    assert json.loads(ok(as_json_text)) == []


def test_ls_table_and_json(db: str) -> None:
    ok(gcl(db, "create", "alpha", "-l", "2"))
    ok(gcl(db, "create", "beta", "-l", "7", "--slot-decay-per-second", "1.5", "--disable"))
    text, as_json_text = gcl_all(db, [["ls"], ["ls", "-o", "json"]])
    lines = ok(text).splitlines()
    assert lines[0] == header(db)
    assert lines[1].split() == ["NAME", "ACTIVE", "USED", "RATE", "HOLDERS", "WAITING"]
    assert set(lines[2]) <= {"-", " "}
    assert lines[3:] == [
        "alpha  yes     0/2   -                0        0",
        "beta   no      0/7   96/min, burst 7  0        0",
    ]
    listed = {item["name"]: item for item in json.loads(ok(as_json_text))}
    assert sorted(listed) == ["alpha", "beta"]
    assert listed["alpha"]["limit"] == 2
    assert listed["beta"]["active"] is False
    assert listed["beta"]["slot_decay_per_second"] == 1.5


# -- inspect --------------------------------------------------------------------------------------


def test_inspect_details_without_holders(db: str) -> None:
    ok(gcl(db, "create", "gpu", "-l", "4", "--slot-decay-per-second", "0.25"))
    text, as_json_text, missing, missing_json = gcl_all(
        db,
        [["inspect", "gpu"], ["inspect", "gpu", "-o", "json"], ["inspect", "nope"], ["inspect", "nope", "-o", "json"]],
    )
    out = ok(text)
    assert re.search(r"^name:\s+gpu$", out, re.M)
    assert re.search(r"^active:\s+yes$", out, re.M)
    assert re.search(r"^used:\s+0 of 4 slots$", out, re.M)
    assert re.search(r"^rate:\s+18/min, burst 4 \(decay 0.25 slots/s\)$", out, re.M)
    assert re.search(r"^avg occupancy:\s+-$", out, re.M)  # nobody used it yet: no invented average
    assert out.startswith(f"{header(db)}\n")
    assert "No holders." in out
    limit = json.loads(ok(as_json_text))
    assert (limit["name"], limit["limit"], limit["holders"], limit["waiters"]) == ("gpu", 4, [], [])
    assert "'nope'" in one_line_error(missing)
    one_line_error(missing_json)
    assert missing_json.stdout == ""


def test_inspect_shows_the_holder_of_a_running_command(db: str, spawned: Spawned) -> None:
    ok(gcl(db, "create", "gpu", "-l", "2"))
    runner = spawned.gcl(db, "run", "gpu", "--", "sleep", "30")
    holder = holding(db, "gpu", "sleep", runner)
    assert holder.pid != runner.pid  # the command, not the wrapper, holds the slot
    text, ls_text = gcl_all(db, [["inspect", "gpu"], ["ls"]])
    out = ok(text)
    assert re.search(r"^used:\s+1 of 2 slots$", out, re.M)
    assert "No holders." not in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["LEASE", "SLOTS"])
    assert lines[header].split() == ["LEASE", "SLOTS", "PID", "HOST", "LABEL", "AGE", "EXPIRES"]
    row = lines[header + 2].split()
    assert row[:3] == [holder.id, "1", str(holder.pid)]
    assert row[4] == "sleep"
    ls_row = next(line.split() for line in ok(ls_text).splitlines() if line.startswith("gpu"))
    assert ls_row == ["gpu", "yes", "1/2", "-", "1", "0"]


def test_inspect_json_has_holders_and_waiters(db: str, spawned: Spawned) -> None:
    ok(gcl(db, "create", "gpu", "-l", "1"))
    holder_proc = spawned.gcl(db, "run", "gpu", "--", "sleep", "30")
    holder = holding(db, "gpu", "sleep", holder_proc)
    waiter_proc = spawned.gcl(db, "run", "gpu", "--", "true")
    waiting(db, "gpu")
    limit = as_json(db, "inspect", "gpu")
    assert limit["active_slots"] == 1
    (shown,) = limit["holders"]
    assert shown["id"] == holder.id
    assert shown["pid"] == holder.pid
    assert shown["label"] == "sleep"
    assert shown["names"] == ["gpu"]
    assert shown["slots"] == 1
    assert isinstance(shown["token"], int)
    assert {"host", "user", "acquired", "expires", "held_by"} <= set(shown)
    (waiter,) = limit["waiters"]
    assert waiter["pid"] == waiter_proc.pid
    assert waiter["slots"] == 1
    assert waiter["kind"] == "concurrency"
    assert {"ticket", "label", "since"} <= set(waiter)
    text = ok(gcl(db, "inspect", "gpu"))
    assert re.search(r"^\s*TICKET\s+SLOTS\s+KIND\s+PID\s+LABEL\s+WAITING\s*$", text, re.M)
    assert re.search(rf"^\s*{waiter['ticket']}\s+1\s+concurrency\s+{waiter_proc.pid}\s", text, re.M)
    os.killpg(holder_proc.pid, signal.SIGKILL)
    assert waiter_proc.wait(timeout=20) == 0


# -- update, enable, disable ----------------------------------------------------------------------


def test_update_changes_fields(db: str) -> None:
    ok(gcl(db, "create", "a", "-l", "1"))
    out = ok(gcl(db, "update", "a", "-l", "5", "--slot-decay-per-second", "0.25"))
    assert "'a'" in out
    limit = read_limit("a", db=db)
    assert (limit.limit, limit.slot_decay_per_second) == (5, 0.25)
    changed = as_json(db, "update", "a", "--active-slots", "3")
    assert changed["active_slots"] == 3
    assert changed["limit"] == 5


def test_update_enable_and_disable(db: str) -> None:
    ok(gcl(db, "create", "a", "-l", "1"))
    ok(gcl(db, "update", "a", "--disable"))
    assert read_limit("a", db=db).active is False
    ok(gcl(db, "update", "a", "--enable"))
    assert read_limit("a", db=db).active is True


def test_update_errors(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    ok(gcl(db, "create", "a", "-l", "1"))
    both, nothing, missing = gcl_all(
        db, [["update", "a", "--enable", "--disable"], ["update", "a"], ["update", "nope", "-l", "2"]]
    )
    assert "enable and disable" in one_line_error(both, 2)
    assert "nothing to change" in one_line_error(nothing, 2)
    assert "'nope'" in one_line_error(missing)
    for args in (["-l", "-3"], ["--slot-decay-per-second", "nan"], ["--active-slots", "-1"]):
        one_line_error(in_process(capsys, db, "update", "a", *args))
    limit = read_limit("a", db=db)
    assert (limit.limit, limit.active, limit.slot_decay_per_second, limit.active_slots) == (1, True, 0.0, 0)


def test_enable_and_disable(db: str) -> None:
    ok(gcl(db, "create", "a", "-l", "1"))
    assert "already enabled" in one_line_error(gcl(db, "enable", "a"))
    assert "'a'" in ok(gcl(db, "disable", "a"))
    assert read_limit("a", db=db).active is False
    assert "already disabled" in one_line_error(gcl(db, "disable", "a"))
    assert "'a'" in ok(gcl(db, "enable", "a"))
    assert read_limit("a", db=db).active is True


def test_enable_disable_missing_limit_fails(db: str) -> None:
    for result in gcl_all(db, [["enable", "nope"], ["disable", "nope"]]):
        assert "'nope'" in one_line_error(result)


# -- delete ---------------------------------------------------------------------------------------


def test_delete_with_yes(db: str) -> None:
    ok(gcl(db, "create", "a", "-l", "1"))
    assert "'a'" in ok(gcl(db, "delete", "a", "--yes"))
    assert names_in(db) == []


def test_delete_without_a_terminal_does_not_ask(db: str) -> None:
    ok(gcl(db, "create", "a", "-l", "1"))
    result = gcl(db, "delete", "a", input="n\n")
    assert "Are you sure" not in ok(result) + result.stderr
    assert names_in(db) == []


def test_a_recreated_limit_counts_the_holders_of_the_deleted_one(db: str, spawned: Spawned, tmp_path: Path) -> None:
    """Deleting and re-creating a limit must not admit new holders beside the old ones."""
    ok(gcl(db, "create", "x", "-l", "1"))
    go = tmp_path / "go"
    holder = spawned.gcl(db, "run", "x", "--", "sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done")
    lease = holding(db, "x", "sh", holder)
    ok(gcl(db, "delete", "x", "--yes"))
    ok(gcl(db, "create", "x", "-l", "1"))
    one_line_error(gcl(db, "run", "x", "-n", "--", "true"), 75)
    limit = read_limit("x", db=db)
    assert (limit.active_slots, [h.id for h in limit.holders]) == (1, [lease.id])
    go.touch()
    assert holder.wait(timeout=20) == 0
    ok(gcl(db, "run", "x", "-n", "--", "true"))
    assert read_limit("x", db=db).holders == ()


def test_delete_missing_limit_fails(db: str) -> None:
    for result in gcl_all(db, [["delete", "nope", "--yes"], ["delete", "nope"]]):
        one_line_error(result)


def _on_terminal(args: list[str], answer: bytes) -> tuple[int, str]:
    """Run gcl with stdin, stdout and stderr on a pseudo-terminal; answer its question; return (code, output)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([*GCL, *args], stdin=slave, stdout=slave, stderr=slave, env=env())
    finally:
        os.close(slave)
    output = b""
    answered = False
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every process holding the terminal has ended
                break
            if not chunk:
                break
            output += chunk
            if not answered and b"Are you sure" in output:
                os.write(master, answer)
                answered = True
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, output.decode(errors="replace")


def test_delete_asks_on_a_terminal(db: str) -> None:
    ok(gcl(db, "create", "a", "-l", "1"))
    code, output = _on_terminal(["--db", db, "delete", "a"], b"n\n")
    assert "Are you sure" in output
    assert "Deletion aborted." in output
    assert "Traceback" not in output
    assert code == 1
    assert read_limit("a", db=db).limit == 1

    code, output = _on_terminal(["--db", db, "delete", "a"], b"y\n")
    assert "Are you sure" in output
    assert code == 0, output
    assert names_in(db) == []


def test_delete_with_yes_does_not_ask_on_a_terminal(db: str) -> None:
    ok(gcl(db, "create", "a", "-l", "1"))
    code, output = _on_terminal(["--db", db, "delete", "a", "--yes"], b"n\n")
    assert code == 0, output
    assert "Are you sure" not in output
    with pytest.raises(LimitNotFoundError):
        read_limit("a", db=db)


# -- output format, help, usage -------------------------------------------------------------------


def test_output_formats_other_than_json_fail(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    ok(gcl(db, "create", "a", "-l", "1"))
    one_line_error(gcl(db, "ls", "-o", "yaml"), 2)
    for args in [["inspect", "a"], ["create", "b", "-l", "1"], ["update", "a", "-l", "3"]]:
        result = in_process(capsys, db, *args, "-o", "yaml")
        one_line_error(result, 2)
        assert result.stdout == ""
    assert [(lim.name, lim.limit) for lim in list_limits(db=db)] == [("a", 1)]


def test_help_of_every_command_has_an_example(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    for command in COMMANDS + HOT_COMMANDS:
        out = ok(in_process(capsys, db, command, "--help"))
        assert "Example" in out, command
        assert f"gcl {command}" in out, command
    assert not Path(db).exists()  # asking for help touches no file


def test_help_as_a_process(db: str) -> None:
    for command, result in zip(["create", "run"], gcl_all(db, [["create", "--help"], ["run", "-h"]]), strict=True):
        assert "Example" in ok(result), command


def test_top_level_help_lists_every_command(db: str) -> None:
    out = ok(gcl(db, "--help"))
    for command in COMMANDS + HOT_COMMANDS:
        assert re.search(rf"^\s+{re.escape(command)}\s", out, re.M), command


USAGE_ERRORS = [
    ["frobnicate"],
    ["ls", "--bogus"],
    ["ls", "extra"],
    ["inspect"],
    ["update"],
    ["enable"],
    ["disable"],
    ["delete"],
    ["update", "a", "-l", "many"],
    ["delete", "a", "--force"],
]


def test_usage_errors_exit_2(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    for args in USAGE_ERRORS:
        usage_error(in_process(capsys, db, *args))
    usage_error(gcl(db, "frobnicate"))


def test_cli_runner_in_process(db: str) -> None:
    """The typer app also works in-process."""
    runner = CliRunner()
    result = runner.invoke(app, ["--db", db, "create", "inproc", "-l", "3"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["--db", db, "ls", "-o", "json"])
    assert result.exit_code == 0, result.output
    assert [item["name"] for item in json.loads(result.stdout)] == ["inproc"]
    result = runner.invoke(app, ["--db", db, "inspect", "missing"])
    assert result.exit_code == 1


# -- width ----------------------------------------------------------------------------------------


def _too_wide(text: str) -> list[str]:
    """Lines wider than 80 columns, but the header: it names the store as it was given (a path, a URL)."""
    return [line for line in text.splitlines() if len(line) > 80 and not line.startswith(("State file: ", "Store: "))]


def test_ls_fits_80_columns(db: str) -> None:
    ok(gcl(db, "create", "n" * 255, "-l", "1"))
    ok(gcl(db, "create", "short", "-l", "1000000", "--slot-decay-per-second", "0.123456789"))
    out = ok(gcl(db, "ls"))
    assert "short" in out
    assert _too_wide(out) == []


def test_inspect_fits_80_columns(db: str, spawned: Spawned, tmp_path: Path) -> None:
    long_name = "n" * 255
    long_program = tmp_path / ("a-very-long-program-name-" * 8)
    long_program.symlink_to("/bin/sleep")
    ok(gcl(db, "create", long_name, "-l", "1"))
    runner = spawned.gcl(db, "run", long_name, "--", str(long_program), "30")
    holder = holding(db, long_name, long_program.name, runner)
    assert len(holder.label) == 200
    waiter = spawned.gcl(db, "run", long_name, "--", str(long_program), "0")
    waiting(db, long_name)
    assert waiter.poll() is None
    out = ok(gcl(db, "inspect", long_name))
    assert holder.id in out
    assert str(waiter.pid) in out
    assert _too_wide(out) == []


# -- the state file -------------------------------------------------------------------------------


def test_db_option_and_environment_variable(db: str, tmp_path: Path) -> None:
    other = str(tmp_path / "other.db")
    ok(gcl(db, "create", "via-option", "-l", "1"))
    ok(gcl(None, "create", "via-env", "-l", "1", GCL_DB=other))
    assert names_in(db) == ["via-option"]
    assert names_in(other) == ["via-env"]
    from_env = json.loads(ok(gcl(None, "ls", "-o", "json", GCL_DB=db)))
    assert [lim["name"] for lim in from_env] == ["via-option"]
    option_wins = json.loads(ok(gcl(db, "ls", "-o", "json", GCL_DB=other)))
    assert [lim["name"] for lim in option_wins] == ["via-option"]


def test_default_path_is_under_xdg_state_home(tmp_path: Path) -> None:
    ok(gcl(None, "create", "default", "-l", "1"))
    assert (tmp_path / "state" / "gcl_local" / "gcl.db").is_file()
    assert [lim["name"] for lim in json.loads(ok(gcl(None, "ls", "-o", "json")))] == ["default"]


UNUSABLE_FILE_COMMANDS = [
    ["ls"],
    ["create", "a", "-l", "1"],
    ["acquire", "a", "-n"],
    ["run", "a", "-n", "--", "true"],
    ["rate-limit", "a", "-n"],
    ["release", "1-abc"],
]


def test_unusable_file_fails_with_one_line_and_is_left_alone(tmp_path: Path) -> None:
    garbage = tmp_path / "not-a-db"
    content = b"this is not a database\n" * 400 + bytes(range(256)) * 8
    garbage.write_bytes(content)
    for args, result in zip(UNUSABLE_FILE_COMMANDS, gcl_all(str(garbage), UNUSABLE_FILE_COMMANDS), strict=True):
        assert "not-a-db" in one_line_error(result), args
    assert garbage.read_bytes() == content


def test_unusable_file_gets_nothing_written_beside_it(tmp_path: Path) -> None:
    """A file that is not ours (a wrong --db) must not get gcl's own files created next to it."""
    garbage = tmp_path / "not-a-db"
    garbage.write_bytes(b"\x00garbage\xff" * 1000)
    for args in [["ls"], ["acquire", "a", "-n"], ["run", "a", "-n", "--", "true"], ["rate-limit", "a", "-n"]]:
        one_line_error(gcl(str(garbage), *args))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-db"], args
