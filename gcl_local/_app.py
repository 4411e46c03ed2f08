"""The typer app of ``gcl``: every command, its ``--help`` (with an example), and the admin commands.

Each command is a thin wrapper over one library call; errors become exit codes in
:func:`gcl_local._cli.guarded`.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand

from . import _cli, _output
from ._limits import create_limit, delete_limit, list_limits, read_limit, update_limit

app = typer.Typer(
    name="gcl",
    help="Named concurrency and rate limits for the processes of one machine, kept in one SQLite file.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

# Optional[...] rather than "X | None": typer reads these annotations at run time, on Python 3.10 too.
Output = Annotated[Optional[str], typer.Option("--output", "-o", help="Print JSON instead of text: -o json.")]  # noqa: UP045
Names = Annotated[list[str], typer.Argument(help="Limit names; slots are taken on all of them or none.")]
NamesAndCommand = Annotated[
    list[str], typer.Argument(metavar="NAME... [-- COMMAND...]", help="Limit names, then the command after --.")
]
Occupy = Annotated[int, typer.Option("--occupy", help="Slots to take on each limit.")]
Timeout = Annotated[Optional[float], typer.Option("--timeout", help="Give up after S seconds (exit 75).")]  # noqa: UP045
NonBlock = Annotated[bool, typer.Option("--nonblock", "-n", help="Do not wait: exit 75 if busy.")]
LeaseDuration = Annotated[float, typer.Option("--lease-duration", help="Lease length in seconds (60-86400).")]
Strict = Annotated[bool, typer.Option("--strict", help="Fail (exit 1) if a named limit does not exist.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Say what we wait for, even when not on a terminal.")]
BusyCode = Annotated[int, typer.Option("--busy-exit-code", help="Exit code when busy or timed out.")]


class _State:
    db: str | None = None


class _KeepsRawArgs(TyperCommand):
    """Remembers the arguments as given: click drops the ``--`` that ends the names of ``run``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta["gcl_raw_args"] = list(args)
        result: list[str] = super().parse_args(ctx, args)
        return result


@app.callback()
def _global(
    db: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--db", envvar="GCL_DB", help="State file (default: $XDG_STATE_HOME/gcl_local/gcl.db)."),
    ] = None,
) -> None:
    _State.db = db


def _check_output(output: str | None) -> None:
    if output not in (None, "json"):
        _cli.fail("Only 'json' output format is supported.")


def _done(message: str) -> None:
    sys.stdout.write(message + "\n")


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="Name of the new limit.")],
    limit: Annotated[int, typer.Option("--limit", "-l", help="Number of slots.")],
    slot_decay_per_second: Annotated[
        float, typer.Option("--slot-decay-per-second", help="Slots freed per second (a rate limit).")
    ] = 0.0,
    disable: Annotated[bool, typer.Option("--disable", help="Create it inactive.")] = False,
    active_slots: Annotated[int, typer.Option("--active-slots", help="Initial level of the bucket.")] = 0,
    output: Output = None,
) -> None:
    """Create a limit.

    Example: gcl create nightly-db --limit 2
    """
    _check_output(output)

    def action() -> None:
        made = create_limit(name, limit, slot_decay_per_second=slot_decay_per_second, active=not disable,
                            active_slots=active_slots, db=_State.db)  # fmt: skip
        if output == "json":
            _output.print_json(made.to_json())
        else:
            _done(f"Created global concurrency limit with name {name!r}. Run `gcl inspect {name}` to view details.")

    _run(action)


@app.command("ls")
def ls(output: Output = None) -> None:
    """List every limit: slots used of the limit, decay, holders and waiters.

    Example: gcl ls -o json
    """
    _check_output(output)

    def action() -> None:
        limits = list_limits(db=_State.db)
        if output == "json":
            _output.print_json([limit.to_json() for limit in limits])
        elif not limits:
            _done("No global concurrency limits found.")
        else:
            _done(_output.limits_table(limits))

    _run(action)


@app.command()
def inspect(name: Annotated[str, typer.Argument(help="The limit.")], output: Output = None) -> None:
    """Show one limit with who holds its slots and who waits.

    Example: gcl inspect gpu
    """
    _check_output(output)

    def action() -> None:
        limit = read_limit(name, db=_State.db)
        if output == "json":
            _output.print_json(limit.to_json())
        else:
            _done(_output.limit_details(limit))

    _run(action)


@app.command()
def update(
    name: Annotated[str, typer.Argument(help="The limit.")],
    limit: Annotated[Optional[int], typer.Option("--limit", "-l", help="New number of slots.")] = None,  # noqa: UP045
    slot_decay_per_second: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option("--slot-decay-per-second", help="New decay rate."),
    ] = None,
    enable: Annotated[bool, typer.Option("--enable", help="Make it active.")] = False,
    disable: Annotated[bool, typer.Option("--disable", help="Make it inactive (no limiting).")] = False,
    active_slots: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--active-slots", help="Set the bucket level."),
    ] = None,
    output: Output = None,
) -> None:
    """Change a limit; waiters that now fit are served at once.

    Example: gcl update gpu --limit 4
    """
    _check_output(output)
    if enable and disable:
        _cli.fail("Cannot enable and disable a global concurrency limit at the same time.")
    active = True if enable else False if disable else None

    def action() -> None:
        changed = update_limit(name, limit=limit, slot_decay_per_second=slot_decay_per_second, active=active,
                               active_slots=active_slots, db=_State.db)  # fmt: skip
        if output == "json":
            _output.print_json(changed.to_json())
        else:
            _done(f"Updated global concurrency limit with name {name!r}.")

    _run(action)


def _toggle(name: str, active: bool) -> None:
    word = "enabled" if active else "disabled"

    def action() -> int:
        if read_limit(name, db=_State.db).active == active:
            _cli.fail(f"Global concurrency limit with name {name!r} is already {word}.")
        update_limit(name, active=active, db=_State.db)
        _done(f"{word.capitalize()} global concurrency limit with name {name!r}.")
        return 0

    _run(action)


@app.command()
def enable(name: Annotated[str, typer.Argument(help="The limit.")]) -> None:
    """Make a limit active again.

    Example: gcl enable gpu
    """
    _toggle(name, True)


@app.command()
def disable(name: Annotated[str, typer.Argument(help="The limit.")]) -> None:
    """Make a limit inactive: nothing waits on it and no slots are taken.

    Example: gcl disable gpu
    """
    _toggle(name, False)


@app.command()
def delete(
    name: Annotated[str, typer.Argument(help="The limit.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete a limit (asks first when run from a terminal).

    Example: gcl delete old-limit --yes
    """

    def action() -> None:
        read_limit(name, db=_State.db)
        if not yes and sys.stdin.isatty():
            question = f"Are you sure you want to delete global concurrency limit with name {name!r}?"
            if not typer.confirm(question, default=False):
                _cli.fail("Deletion aborted.")
        delete_limit(name, db=_State.db)
        _done(f"Deleted global concurrency limit with name {name!r}.")

    _run(action)


@app.command(cls=_KeepsRawArgs)
def run(
    ctx: typer.Context,
    names_and_command: NamesAndCommand,
    occupy: Occupy = 1,
    timeout: Timeout = None,
    nonblock: NonBlock = False,
    lease_duration: LeaseDuration = 300.0,
    strict: Strict = False,
    verbose: Verbose = False,
    busy_exit_code: BusyCode = 75,
) -> None:
    """Hold slots while COMMAND runs; exit with its status (75 if the slots were not had).

    Example: gcl run nightly-db --timeout 600 -- ./backup.sh
    """
    names, tail = _split(ctx, names_and_command)
    code = _cli.guarded(
        lambda: _cli.cmd_run(names, tail, occupy=occupy, timeout=timeout, nonblock=nonblock,
                             lease_duration=lease_duration, strict=strict, verbose=verbose, db=_State.db),
        busy_exit_code=busy_exit_code,
    )  # fmt: skip
    raise typer.Exit(code)


@app.command("rate-limit", cls=_KeepsRawArgs)
def rate_limit(
    ctx: typer.Context,
    names_and_command: NamesAndCommand,
    occupy: Occupy = 1,
    timeout: Timeout = None,
    nonblock: NonBlock = False,
    strict: Strict = False,
    verbose: Verbose = False,
    busy_exit_code: BusyCode = 75,
) -> None:
    """Take rate-limit slots (waiting in line), then run COMMAND if one is given.

    Example: gcl rate-limit vendor-api -- curl -s https://api.example.com/
    """
    names, tail = _split(ctx, names_and_command)
    code = _cli.guarded(
        lambda: _cli.cmd_rate_limit(names, tail, occupy=occupy, timeout=timeout, nonblock=nonblock, strict=strict,
                                    verbose=verbose, db=_State.db),
        busy_exit_code=busy_exit_code,
    )  # fmt: skip
    raise typer.Exit(code)


@app.command()
def acquire(
    names: Names,
    occupy: Occupy = 1,
    timeout: Timeout = None,
    nonblock: NonBlock = False,
    lease_duration: LeaseDuration = 300.0,
    holder_pid: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            "--holder-pid",
            help="The process that holds the slots (default: the calling script, found past subshells and "
            "wrappers such as timeout; pass $$ where it cannot be found).",
        ),
    ] = None,
    strict: Strict = False,
    output: Output = None,
    verbose: Verbose = False,
    busy_exit_code: BusyCode = 75,
) -> None:
    """Take slots for a script and print the lease id; they are freed when the holder process exits,
    by `gcl release`, or when the lease ends unless renewed with `gcl renew`.

    Example: lease=$(gcl acquire db --timeout 60) && trap 'gcl release "$lease"' EXIT
    """
    _check_output(output)
    code = _cli.guarded(
        lambda: _cli.cmd_acquire(names, occupy=occupy, timeout=timeout, nonblock=nonblock,
                                 lease_duration=lease_duration, holder_pid=holder_pid, strict=strict, output=output,
                                 verbose=verbose, db=_State.db),
        busy_exit_code=busy_exit_code,
    )  # fmt: skip
    raise typer.Exit(code)


@app.command()
def renew(
    lease: Annotated[str, typer.Argument(help="The lease id.")],
    lease_duration: LeaseDuration = 300.0,
    output: Output = None,
) -> None:
    """Extend a lease to LEASE_DURATION seconds from now.

    Example: gcl renew "$lease" --lease-duration 600
    """
    _check_output(output)
    code = _cli.guarded(lambda: _cli.cmd_renew(lease, lease_duration=lease_duration, output=output, db=_State.db))
    raise typer.Exit(code)


@app.command()
def release(
    lease: Annotated[str, typer.Argument(help="The lease id.")],
    verbose: Verbose = False,
) -> None:
    """Give a lease's slots back (idempotent; also an admin's force-release).

    Example: gcl release 17-9f2c4e1a
    """
    raise typer.Exit(_cli.guarded(lambda: _cli.cmd_release(lease, db=_State.db, verbose=verbose)))


def _split(ctx: typer.Context, values: list[str]) -> tuple[list[str], list[str]]:
    """Click hands over names and command as one list: the raw arguments after ``--`` are the command."""
    raw = ctx.meta.get("gcl_raw_args", [])
    if "--" not in raw:
        return values, []
    tail = raw[raw.index("--") + 1 :]
    return values[: len(values) - len(tail)], tail


def _run(action: Any) -> None:
    raise typer.Exit(_cli.guarded(action))


def run_app(args: list[str]) -> None:
    app(args=args, prog_name="gcl")


__all__ = ["app", "run_app"]
