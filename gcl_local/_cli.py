"""The ``gcl`` command's entry point and its small parser.

``gcl run``, ``rate-limit``, ``acquire``, ``renew`` and ``release`` are started by cron and scripts
many times a minute, and ``ls``, ``inspect`` and ``metrics`` by people and monitors: a plain
invocation of one of them is parsed here, from the table in :mod:`gcl_local._options`, by a parser
that imports neither typer nor click, and goes straight to its function in
:mod:`gcl_local._commands`. Everything else — the admin commands, ``--help``, and any argument this
parser does not take as it is (an unknown option, a value in an unusual spelling, a mistake) — goes
to the typer app in :mod:`gcl_local._app`, which reads the same table and calls the same functions,
so that a usage error reads the same whichever way it came.
"""

from __future__ import annotations

import os
import sys

from ._options import COMMANDS, GLOBAL_OPTIONS, NAMES, NAMES_AND_COMMAND, NOTHING, ONE, Option

TYPE_CHECKING = False  # not typing's: this module must not cost the import of typing
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, NoReturn

Call = tuple[str, dict[str, "Any"]]
"""The name of a function in :mod:`gcl_local._commands` and its keyword arguments."""


def _number(text: str, kind: type) -> float | int | None:
    """*text* as an int or float, in its plain spelling only (``-12``, ``0.5``); None for any other.

    Other spellings (``1e3``, ``+2``, ``1_000``, ``inf``, ``2.0`` for an int) go to the typer app,
    which has its own rules for them: the two parsers must never read one value differently.
    """
    digits = text[1:] if text.startswith("-") else text
    whole, dot, fraction = digits.partition(".")
    if not (whole.isascii() and whole.isdigit()):
        return None
    if not dot:
        return int(text) if kind is int else float(text)
    if kind is int or not (fraction.isascii() and fraction.isdigit()):
        return None
    return float(text)


def _value(option: Option, text: str) -> object:
    """The value of *option* given as *text*, or ``_REFUSED`` when the typer app should read it."""
    if option.kind is str:
        if option.choices is not None and text not in option.choices:
            return _REFUSED
        return text
    value = _number(text, option.kind)
    if value is None:
        return _REFUSED
    too_low = option.minimum is not None and value < option.minimum
    too_high = option.maximum is not None and value > option.maximum
    return _REFUSED if too_low or too_high else value


_REFUSED = object()


def _take(args: list[str], i: int, table: dict[str, Option], values: dict[str, object]) -> int | None:
    """Read the option at ``args[i]`` into *values*; the index after it, or None if it is not one of *table*."""
    flag, equals, inline = args[i].partition("=") if args[i].startswith("--") else (args[i], "", "")
    option = table.get(flag)
    if option is None:
        return None
    if option.kind is bool:
        if equals:  # --strict=yes: a flag takes no value
            return None
        values[option.dest] = True
        return i + 1
    if not equals:
        i += 1
        if i >= len(args):
            return None
        inline = args[i]
    value = _value(option, inline)
    if value is _REFUSED:
        return None
    values[option.dest] = value
    return i + 1


def _flags(options: Sequence[Option]) -> dict[str, Option]:
    return {flag: option for option in options for flag in option.flags}


_GLOBAL_FLAGS = _flags(GLOBAL_OPTIONS)
_COMMAND_FLAGS = {name: _flags(command.options) for name, command in COMMANDS.items()}


def parse(argv: Sequence[str]) -> Call | None:
    """The call that ``gcl ARGV`` stands for, or None when the typer app should parse (and explain) it."""
    args = list(argv)
    given: dict[str, object] = {}
    i = 0
    while i < len(args) and args[i].startswith("-"):  # gcl's own options, before the command
        after = _take(args, i, _GLOBAL_FLAGS, given)
        if after is None:
            return None
        i = after
    if given.pop("version", False):  # eager, as typer's: whatever follows
        return "cmd_version", {}
    for option in GLOBAL_OPTIONS:
        from_environment = os.environ.get(option.envvar) if option.envvar else None
        if option.dest not in given and from_environment:  # as click: an empty one is not given
            value = _value(option, from_environment)
            if value is _REFUSED:
                return None
            given[option.dest] = value
    if i >= len(args) or args[i] not in COMMANDS:
        return None
    command = COMMANDS[args[i]]
    flags = _COMMAND_FLAGS[args[i]]
    values: dict[str, object] = {option.dest: option.default for option in command.options}
    values["db"] = given.get("db")  # the command's own --db, read below, wins
    positionals: list[str] = []
    tail: list[str] | None = None
    i += 1
    while i < len(args):
        arg = args[i]
        if arg == "--":
            tail = args[i + 1 :]
            break
        if arg.startswith("-") and arg != "-":
            after = _take(args, i, flags, values)
            if after is None:
                return None
            i = after
        else:
            positionals.append(arg)
            i += 1
    if command.takes == NAMES_AND_COMMAND:
        if not positionals and not tail:  # typer's "Missing argument"
            return None
        values["names"], values["command"] = positionals, tail or []
    elif tail:  # after --, typer would take more names or values: let it
        return None
    elif command.takes == NAMES:
        if not positionals:
            return None
        values["names"] = positionals
    elif command.takes == ONE:
        if len(positionals) != 1:
            return None
        values[command.value] = positionals[0]
    elif command.takes == NOTHING and positionals:
        return None
    return command.function, values


def _small_call(args: list[str]) -> Call:
    """The call the small parser reads in *args*; anything else is run by the typer app, which exits."""
    call = parse(args)
    if call is None:
        from ._app import run_app

        run_app(args)  # it exits, as the command functions' codes do
    return call


def _run(call: Call) -> int:
    from . import _commands

    function, kwargs = call
    code: int = getattr(_commands, function)(**kwargs)
    return code


def main(argv: Sequence[str] | None = None) -> None:
    """``gcl ARGV`` in this process (tests, embedders): it ends by raising ``SystemExit``."""
    raise SystemExit(_run(_small_call(list(sys.argv[1:] if argv is None else argv))))


def program() -> NoReturn:
    """Entry point of ``gcl`` and ``python -m gcl_local``: a command the small parser reads, then a quick exit.

    Tearing the interpreter down (clearing every module, a last garbage collection) took 10 ms of
    every ``gcl run`` once gcl_local, apsw and threading were loaded: a fifth of what it cost beyond
    ``python -c pass`` (issue 11). A hot command needs none of it: the exit handlers still run (they
    remove this process's liveness token), the output is flushed, and the kernel frees the rest
    (locks, descriptors; its connections do not checkpoint on close anyway, see
    ``gcl_local.sqlite._store``). The typer app's commands (admin writes among them) exit as usual.
    """
    call = _small_call(sys.argv[1:])
    try:
        code: object = _run(call)
    except SystemExit as exc:  # a command's error: fail() gives its exit code
        code = exc.code
    import atexit
    import threading

    for thread in threading.enumerate():  # as the interpreter's own exit: a give-back under way ends first
        if not thread.daemon and thread is not threading.current_thread():
            thread.join()
    atexit._run_exitfuncs()
    if code is not None and not isinstance(code, int):
        sys.stderr.write(f"{code}\n")  # as SystemExit with a message
        code = 1
    try:  # as Python's own exit: a failure to flush stdout exits 120, one of stderr is ignored
        if sys.stdout is not None:
            sys.stdout.flush()
    except OSError:
        code = 120
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    except OSError:
        pass
    os._exit(code or 0)


__all__ = ["Call", "main", "parse", "program"]
