"""The small parser and the typer app read every option of the table alike (issue 11, item 4).

``gcl run``, ``rate-limit``, ``acquire``, ``renew``, ``release``, ``ls``, ``inspect`` and ``metrics``
are parsed by the small parser of ``gcl_local._cli`` when it can, else by the typer app; both are
made from the one table in ``gcl_local._options``. Here a matrix of argument lists goes through
both: the call the small parser makes (a function of ``gcl_local._commands`` and every keyword
argument), and the call the typer app makes (recorded by stand-ins for those functions). Where the
small parser takes the arguments, the typer app must make the very same call, each value of the
same type; where it does not, it hands them to the typer app, which answers for both - so a bad
value gets the same error either way.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from gcl_local import _app, _cli, _commands, _options
from gcl_local._errors import EX_TEMPFAIL
from gcl_local._model import DEFAULT_LEASE_SECONDS

Outcome = tuple[Any, ...]

POSITIONALS = {
    _options.NAMES_AND_COMMAND: [["a"], ["a", "b", "--", "cmd", "-x", "--", "y"], ["a", "--"], ["--", "cmd"]],
    _options.NAMES: [["a"], ["a", "b"]],
    _options.ONE: [["L-1"]],
    _options.NOTHING: [[]],
}
PLAIN_VALUES: dict[type, list[str]] = {int: ["0", "7", "-1", "256"], float: ["0", "0.5", "-1", "3600.25"]}
ODD_VALUES: dict[type, list[str]] = {
    int: ["007", "2.0", "1e3", "+2", "1_0", " 3", "x", "", "٣", "256", "-0", "99999999999999999999999", "0x10"],
    float: ["1.", ".5", "1e3", "nan", "inf", "-inf", "x", "", "1_0.5", " 2", "+1", "٣", "1e400"],
    str: ["", "-", "a b", "--strict", "=x", "é"],
}


def _recorder(name: str, calls: list[Outcome]) -> Any:
    def record(**kwargs: Any) -> int:
        calls.append((name, kwargs))
        return 0

    return record


def typer_outcome(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Outcome:
    """The call the typer app makes for ``gcl ARGV``, or ("error", exit code, stderr) when it makes none."""
    calls: list[Outcome] = []
    with monkeypatch.context() as patch:
        for name in dir(_commands):
            if name.startswith("cmd_"):
                patch.setattr(_commands, name, _recorder(name, calls))
        capsys.readouterr()
        try:
            _app.run_app(argv)
        except SystemExit as exc:
            code = exc.code
        _, err = capsys.readouterr()
    if calls:
        assert len(calls) == 1, calls
        return calls[0]
    return ("error", code, err)


def typed(call: Outcome) -> Outcome:
    """A call with each value's type beside it: 5 and 5.0 are equal, but not the same reading."""
    if call[0] == "error":
        return call
    name, kwargs = call
    return name, {key: (type(value).__name__, value) for key, value in kwargs.items()}


def option_spellings(option: _options.Option, value: str) -> Iterator[list[str]]:
    for flag in option.flags:
        if option.kind is bool:
            yield [flag]
        elif flag.startswith("--"):
            yield [flag, value]
            yield [f"{flag}={value}"]
        else:
            yield [flag, value]
            yield [f"{flag}{value}"]  # -ojson: the small parser leaves it to typer


def cases() -> Iterator[tuple[list[str], bool]]:
    """(argv, whether the small parser must take it) for every command of the table."""
    for word, command in _options.COMMANDS.items():
        positionals = POSITIONALS[command.takes]
        for args in positionals:
            yield [word, *args], True
        first = positionals[0]
        for option in command.options:
            for value in PLAIN_VALUES.get(option.kind, list(option.choices or ["x", "some/path"])):
                for spelling in option_spellings(option, value):
                    attached = len(spelling) == 1 and option.kind is not bool and not spelling[0].startswith("--")
                    yield [word, *first, *spelling], not attached and in_range(option, value)
            value = _plain_spelling(option)
            yield [word, *value, *first], True  # before the positionals too
            for value in [] if option.kind is bool else ODD_VALUES.get(option.kind, ODD_VALUES[str]):
                yield [word, *first, f"{option.flags[0]}={value}"], False
            if option.kind is bool:
                yield [word, *first, f"{option.flags[0]}=1"], False  # a flag takes no value
            else:
                yield [word, *first, option.flags[0]], False  # its value is missing
        # every option at once, twice (the last one counts), and gcl's own --db before the command
        everything = [part for option in command.options for part in _plain_spelling(option)]
        yield [word, *first, *everything], True
        yield [word, *everything, *first, *everything], True
        yield ["--db", "global.db", word, *first], True
        yield ["--db=global.db", word, *first, "--db", "local.db"], True
        yield ["--db", "global.db", word, "--db", "", *first], True
        for wrong in (["--bogus"], ["-h"], ["--help"], ["-nv"], ["-"], ["extra", "values"]):
            yield [word, *first, *wrong], False
    yield from [
        (["--version"], True),
        (["--db", "x", "--version"], True),
        (["--version", "ls"], True),
        (["--version", "frob"], True),
        (["--version", "--bogus"], False),
        (["--version", "--db"], False),
        (["--db"], False),
        (["--db", "x"], False),
        ([], False),
        (["frob"], False),
        (["--bogus", "ls"], False),
        (["--occupy", "2", "run", "a", "--", "true"], False),
    ]


def in_range(option: _options.Option, value: str) -> bool:
    if option.kind is not int:
        return True
    return (option.minimum is None or int(value) >= option.minimum) and (
        option.maximum is None or int(value) <= option.maximum
    )


def _plain_spelling(option: _options.Option) -> list[str]:
    if option.kind is bool:
        return [option.flags[-1]]
    value = PLAIN_VALUES.get(option.kind, list(option.choices or ["x"]))[1 if option.kind is not str else 0]
    if option.maximum is not None:
        value = str(option.maximum)
    return [option.flags[0], value]


CASES = list(cases())


def test_the_matrix_is_big_and_both_ways_are_exercised() -> None:
    assert len(CASES) > 500
    taken = sum(1 for argv, _ in CASES if _cli.parse(argv) is not None)
    assert 250 < taken < len(CASES) - 150


def mismatches(
    cases: list[tuple[list[str], bool]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> list[tuple[Any, ...]]:
    found = []
    for argv, must in cases:
        small = _cli.parse(argv)
        if small is None:
            if must:
                found.append((argv, "the small parser left it to typer", typer_outcome(argv, monkeypatch, capsys)))
            continue
        expected = typed(small)
        got = typed(typer_outcome(argv, monkeypatch, capsys))
        if got != expected:
            found.append((argv, expected, got))
    return found


def test_the_small_parser_and_typer_make_the_same_call(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    found = mismatches(CASES, monkeypatch, capsys)
    assert found == [], "\n".join(map(repr, found[:20]))


@pytest.mark.parametrize("environment", ["env.db", ""])
def test_gcl_db_from_the_environment_reads_the_same(
    environment: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """$GCL_DB stands for gcl's own --db (an empty one for none); a --db given wins."""
    monkeypatch.setenv("GCL_DB", environment)
    cases = [(argv, must) for argv, must in CASES if "--db" in " ".join(argv) or len(argv) <= 2]
    assert len(cases) > 50
    found = mismatches(cases, monkeypatch, capsys)
    assert found == [], "\n".join(map(repr, found[:20]))
    call = _cli.parse(["ls"])
    assert call is not None
    assert call[1]["db"] == (environment or None)


def test_the_tables_flags_defaults_and_help_are_typers() -> None:
    """Each command of the table has exactly the table's options in the typer app, with its flags,
    default, metavar and help; and its defaults are the named constants."""
    group = typer.main.get_command(_app.app)
    assert isinstance(group, typer.core.TyperGroup)
    for word, command in _options.COMMANDS.items():
        params = {p.name: p for p in group.commands[word].params if p.param_type_name == "option"}
        assert set(params) == {option.dest for option in command.options}, word
        for option in command.options:
            param = params[option.dest]
            assert sorted([*param.opts, *param.secondary_opts]) == sorted(option.flags), (word, option)
            assert param.default == option.default, (word, option)
            assert param.help == option.help, (word, option)
            if option.metavar is not None:
                assert param.metavar == option.metavar, (word, option)
    (db, version) = sorted((p for p in group.params if p.name in ("db", "version")), key=lambda p: p.name)
    assert sorted(db.opts) == list(_options.GLOBAL_DB.flags)
    assert db.envvar == _options.GLOBAL_DB.envvar == "GCL_DB"
    assert sorted(version.opts) == list(_options.VERSION.flags)
    assert list(_options.OUTPUT_FORMATS) == [f.value for f in _app._Format]
    assert _options.OCCUPY.default == 1
    assert _options.LEASE_DURATION.default == DEFAULT_LEASE_SECONDS
    assert _options.BUSY_EXIT_CODE.default == EX_TEMPFAIL


def test_every_command_function_is_called_by_a_parser() -> None:
    """No command function is orphaned: each is the target of a table entry or of a typer command."""
    text = "".join(Path(module.__file__ or "").read_text(encoding="utf-8") for module in (_app, _options))
    for name in dir(_commands):
        if name.startswith("cmd_"):
            assert name in text, name


@pytest.mark.parametrize("argv", [["--version"], ["--db", "x", "--version", "ls"]])
def test_version_reads_the_same_both_ways(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as small:
        _cli.main(argv)
    small_out = capsys.readouterr()
    with pytest.raises(SystemExit) as via_typer:
        _app.run_app(argv)
    assert (small.value.code, small_out) == (via_typer.value.code, capsys.readouterr())
    from gcl_local import __version__

    assert small_out.out == f"gcl {__version__}\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["ls"],
        ["ls", "-o", "json"],
        ["inspect", "job", "-o", "json"],
        ["inspect", "nowhere"],
        ["metrics"],
        ["--version"],
        ["run", "job", "--", "true"],
        ["release", "1-x"],
    ],
)
def test_the_small_parsers_commands_import_no_typer_click_or_pydantic(tmp_path: Any, argv: list[str]) -> None:
    code = (
        "import sys; from gcl_local._cli import main\n"
        "try:\n    main(sys.argv[1:])\n"
        "except SystemExit:\n    pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'typer', 'click', 'pydantic', 'rich', 'tabulate'}))"
    )
    db = str(tmp_path / "gcl.db")
    subprocess.run(
        [sys.executable, "-c", "import sys, gcl_local; gcl_local.create_limit('job', 1, db=sys.argv[1])", db],
        check=True,
        timeout=60,
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "--db", db, *argv], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout


def _imported_modules(module: Any) -> set[str]:
    """The gcl_local modules a module imports, at its top or inside its functions."""
    tree = ast.parse(Path(module.__file__ or "").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module)
            else:
                found.update(alias.name for alias in node.names)
    return found


def test_no_import_cycle_between_the_parsers_and_the_commands() -> None:
    """_cli (the small parser) may load _app (typer) for what it does not take; nothing loads _cli
    but the entry points, and the command functions load neither parser."""
    assert "_cli" not in _imported_modules(_app)
    assert not {"_cli", "_app"} & _imported_modules(_commands)
    assert not {"_cli", "_app", "_commands"} & _imported_modules(_options)
