"""The CLI speaks its own words (issue 14, item 5): flags as typed, one-line usage errors with a hint,
readable help, the same options in the same places, names that show what they are, tables that fit.

Every check runs ``gcl`` as a user does, as a process, and compares the exact output and exit code.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from helpers import GCL, Spawned, env, gcl, gcl_all, header, holding, ok, one_line_error

from gcl_local import Lease, __version__, list_limits, read_limit
from gcl_local._output import holders_table, width

COMMANDS = [
    "create", "ls", "inspect", "update", "enable", "disable", "delete", "apply", "export",
    "run", "rate-limit", "acquire", "renew", "release",
]  # fmt: skip


def test_errors_name_the_flag_the_user_typed(db: str) -> None:
    ok(gcl(db, "create", "a", "-l", "1"))
    decay, limit, slots, update_decay, timeout, lease = gcl_all(
        db,
        [
            ["create", "b", "-l", "1", "--slot-decay-per-second", "-1"],
            ["create", "b", "--limit", "-1"],
            ["create", "b", "-l", "1", "--active-slots", "-2"],
            ["update", "a", "--slot-decay-per-second", "inf"],
            ["run", "a", "--timeout", "-1", "--", "true"],
            ["run", "a", "--lease-duration", "5", "--", "true"],
        ],
    )
    assert one_line_error(decay) == "gcl: --slot-decay-per-second must be a finite number >= 0, not -1.0."
    assert one_line_error(limit) == "gcl: --limit must be at least 0, not -1."
    assert one_line_error(slots) == "gcl: --active-slots must be at least 0, not -2."
    assert one_line_error(update_decay) == "gcl: --slot-decay-per-second must be a finite number >= 0, not inf."
    assert one_line_error(timeout) == "gcl: --timeout must be at least 0 seconds, not -1.0."
    assert one_line_error(lease) == "gcl: --lease-duration must be at least 60 and at most 86400 seconds, not 5.0."
    assert [limit.name for limit in list_limits(db=db)] == ["a"]


def test_usage_errors_are_one_line_with_a_hint(db: str) -> None:
    bad_number, unknown_option, unknown_command, missing_limit = gcl_all(
        db,
        [
            ["run", "a", "--timeout", "abc", "--", "true"],
            ["ls", "--frob"],
            ["frob"],
            ["create", "x"],
        ],
    )
    line = one_line_error(bad_number, 2)
    assert line.startswith("gcl: Invalid value for '--timeout'")
    assert line.endswith("(see: gcl run --help)")
    assert one_line_error(unknown_option, 2).startswith("gcl: No such option: --frob (")
    assert one_line_error(unknown_option, 2).endswith(" (see: gcl ls --help)")
    assert one_line_error(unknown_command, 2) == "gcl: No such command 'frob'. (see: gcl --help)"
    assert (
        one_line_error(missing_limit, 2) == "gcl: --limit N (or --rate N/UNIT) is required: gcl create NAME --limit N"
    )
    assert not Path(db).exists()  # a usage error touches no file


def test_help_shows_readable_placeholders_and_an_example_for_every_command(db: str) -> None:
    results = gcl_all(db, [[command, "--help"] for command in COMMANDS] + [["--help"]])
    for command, result in zip([*COMMANDS, "gcl"], results, strict=True):
        text = ok(result)
        assert "Example: " in text, command
        assert re.search(rf"Example: .*gcl {command if command != 'gcl' else ''}", text), command
        assert not re.search(r"[{}]|<[a-z\[\]|]+>", text), (command, text)
    run_help = ok(results[COMMANDS.index("run")])
    assert run_help.startswith("Usage: gcl run [OPTIONS] NAME... [-- COMMAND...]\n")
    assert "--timeout SECONDS" in run_help
    assert "--occupy N" in run_help
    release_help = ok(results[COMMANDS.index("release")])
    assert release_help.startswith("Usage: gcl release [OPTIONS] LEASE\n")
    assert "wait" not in release_help  # -v says whether the lease was held
    assert "-v, --verbose  Say whether the lease was held." in release_help
    assert "--install-completion" in ok(results[-1])  # shell completion, as typer offers it


@pytest.mark.parametrize("code", ["256", "-1"])
def test_busy_exit_code_outside_0_to_255_is_refused_before_anything_runs(db: str, tmp_path: Path, code: str) -> None:
    # 256 used to exit 0 (256 % 256) although the command never ran.
    ok(gcl(db, "create", "a", "-l", "0"))
    marker = tmp_path / "ran"
    hot, typer_path = gcl_all(
        db,
        [
            ["run", "a", "-n", "--busy-exit-code", code, "--", "touch", str(marker)],
            ["run", "a", f"--busy-exit-code={code}", "--frob", "--", "touch", str(marker)],
        ],
    )
    assert "--busy-exit-code" in one_line_error(hot, 2)
    assert one_line_error(typer_path, 2)
    assert not marker.exists()


def test_busy_exit_code_255_is_used(db: str) -> None:
    ok(gcl(db, "create", "a", "-l", "1"))
    holder = gcl(db, "acquire", "a", "--holder-pid", "1")
    ok(holder)
    assert one_line_error(gcl(db, "run", "a", "-n", "--busy-exit-code", "255", "--", "true"), 255)


@pytest.mark.parametrize("command", [["acquire", "a", "--holder-pid", "1"], ["ls"], ["inspect", "a"], ["renew", "x"]])
def test_output_accepts_only_json_everywhere(db: str, command: list[str]) -> None:
    ok(gcl(db, "create", "a", "-l", "1"))
    result = gcl(db, *command, "-o", "yaml")
    assert "'yaml' is not one of 'json'" in one_line_error(result, 2)
    assert result.stdout == ""
    assert read_limit("a", db=db).holders == ()  # acquire -o yaml took nothing


def test_db_works_after_every_command_and_wins_over_the_environment(db: str, tmp_path: Path) -> None:
    other = str(tmp_path / "other.db")
    ok(gcl(None, "create", "a", "-l", "3", "--db", db))
    ok(gcl(None, "--db", other, "create", "b", "-l", "1"))
    after, before, by_env, env_and_flag = (
        gcl(None, "ls", "--db", db),
        gcl(None, "--db", db, "ls"),
        gcl(None, "ls", GCL_DB=db),
        gcl(None, "inspect", "a", "-o", "json", "--db", db, GCL_DB=other),
    )
    assert ok(after) == ok(before) == ok(by_env)
    assert ok(after).startswith(f"{header(db)}\n")
    assert json.loads(ok(env_and_flag))["name"] == "a"
    for command in (["update", "a", "-l", "4"], ["disable", "a"], ["enable", "a"], ["export"]):
        ok(gcl(None, *command, "--db", db))
    ok(gcl(None, "run", "a", "--db", db, "--", "true"))
    lease = ok(gcl(None, "acquire", "a", "--holder-pid", "1", "--db", db)).strip()
    ok(gcl(None, "renew", lease, "--db", db))
    ok(gcl(None, "release", lease, "--db", db))
    ok(gcl(None, "delete", "a", "--yes", "--db", db))
    assert list_limits(db=db) == []
    assert [limit.name for limit in list_limits(db=other)] == ["b"]


@pytest.mark.parametrize(
    ("name", "code"), [("a\u200bb", "U+200B"), ("a\u2028b", "U+2028"), ("x\u202eevil", "U+202E"), ("a\u2060", "U+2060")]
)
def test_names_refuse_invisible_and_format_characters(db: str, name: str, code: str) -> None:
    # A right-to-left override made `gcl ls` show another name than the one stored.
    line = one_line_error(gcl(db, "create", name, "-l", "1"))
    assert "invisible or format characters" in line or "whitespace" in line
    if "whitespace" not in line:
        assert line.endswith(f"({code}).")
    assert not Path(db).exists()


def test_wide_and_accented_names_are_accepted(db: str) -> None:
    for name in ("café", "日本語のリミット", "gpu-🙂"):
        ok(gcl(db, "create", name, "-l", "1"))
    assert len(list_limits(db=db)) == 3


def test_ls_fits_80_columns_with_huge_numbers_and_wide_names(db: str) -> None:
    big = str(10**12)
    for args in (
        ["create", "x" * 200, "-l", big, "--active-slots", big],
        ["create", "日本語" * 20, "-l", big],
        ["create", "🙂" * 30, "--rate", f"{10**12}/day", "--burst", str(10**12 - 7)],
        ["create", "small", "-l", "3"],
    ):
        ok(gcl(db, *args))
    out = ok(gcl(db, "ls"))
    assert out.startswith(f"{header(db)}\n")  # the path is never cut: it is what the user looks for
    for line in out.splitlines()[1:]:
        assert width(line) <= 80, (width(line), line)
    assert "1T/1T" in out
    assert re.search(r"^small\s+yes\s+0/3\s+-\s+0\s+0$", out, re.M)


def test_holders_table_fits_80_columns_with_7_digit_pids_and_long_hosts() -> None:
    now = datetime.now(timezone.utc)
    lease = Lease(
        id="123456789-9f2c4e1a", token=123456789, names=("a",), slots=10**12, pid=4194304,
        host="build-server-with-a-very-long-host-name.example.internal", user="u",
        label="長いプログラム名のコマンド-🙂🙂🙂", acquired=now - timedelta(hours=5), expires=now + timedelta(days=1),
    )  # fmt: skip
    table = holders_table([lease, lease._replace(label="sleep", host="h")], now)
    for line in table.splitlines():
        assert width(line) <= 80, (width(line), line)
    assert "4194304" in table
    assert "123456789-9f2c4e1a" in table


def test_inspect_of_a_held_limit_fits_80_columns(db: str, spawned: Spawned, tmp_path: Path) -> None:
    ok(gcl(db, "create", "ü" * 100, "-l", str(10**12)))
    program = tmp_path / ("長い名前のプログラム" * 3)
    program.symlink_to("/bin/sleep")
    runner = spawned.gcl(db, "run", "ü" * 100, "--occupy", str(10**11), "--", str(program), "30")
    holding(db, "ü" * 100, program.name, runner)
    out = ok(gcl(db, "inspect", "ü" * 100))
    for line in out.splitlines()[1:]:
        assert width(line) <= 80, (width(line), line)


def test_messages_quote_names_for_the_shell_and_fit_80_columns(db: str) -> None:
    made, spaced, quote = gcl_all(
        db, [["create", "nightly-db", "-l", "2"], ["create", "a b", "-l", "1"], ["create", "it's", "-l", "1"]]
    )
    assert ok(made) == "Created limit 'nightly-db': see it with gcl inspect nightly-db\n"
    assert ok(spaced) == "Created limit 'a b': see it with gcl inspect 'a b'\n"
    assert ok(quote) == """Created limit "it's": see it with gcl inspect 'it'"'"'s'\n"""
    # the suggested command works as printed
    out = subprocess.run(
        ["sh", "-c", ok(spaced).split("with ", 1)[1].replace("gcl ", f"{' '.join(GCL)} --db {shlex.quote(db)} ", 1)],
        capture_output=True, text=True, env=env(), check=False,
    )  # fmt: skip
    assert "name:          a b" in ok(out)
    for args in (["update", "nightly-db", "-l", "3"], ["disable", "nightly-db"], ["enable", "nightly-db"],
                 ["delete", "nightly-db", "--yes"]):  # fmt: skip
        result = gcl(db, *args)
        assert len(ok(result).rstrip("\n")) <= 80
        assert ok(result).count("\n") == 1


def test_version(db: str) -> None:
    assert ok(gcl(db, "--version")) == f"gcl {__version__}\n"
    assert not Path(db).exists()


def test_gcl_alone_prints_the_help_on_stderr_and_exits_2(db: str) -> None:
    result = gcl(None)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("Usage: gcl [OPTIONS] COMMAND [ARGS]...\n")
    assert "Commands:" in result.stderr


def test_shell_completion_completes_commands(db: str) -> None:
    result = gcl(None, _GCL_COMPLETE="complete_bash", COMP_WORDS="gcl cr", COMP_CWORD="1")
    assert ok(result) == "create\n"
