"""The typer app of ``gcl``: every command, its ``--help`` (with an example), and every usage error.

Each command parses its options and calls its function in :mod:`gcl_local._commands`, which does the
work and maps errors to exit codes. The options of the commands that the small parser of
:mod:`gcl_local._cli` also reads are made from the same table, :mod:`gcl_local._options`.
"""

from __future__ import annotations

import sys
from enum import Enum
from typing import Annotated, Any, NoReturn, Optional

import typer
from typer.core import TyperCommand

try:  # typer >= 0.2x carries its own click
    from typer._click import exceptions as _click
except ImportError:  # pragma: no cover - older typer, on click
    from click import exceptions as _click  # type: ignore[import-not-found,no-redef,unused-ignore]

from . import _commands
from . import _options as opt
from ._commands import TOP_INTERVAL
from ._errors import EX_TEMPFAIL, EX_USAGE
from ._model import DEFAULT_LEASE_SECONDS

MAX_PORT = 65535

app = typer.Typer(
    name="gcl",
    help="Named concurrency and rate limits for the processes of one machine, kept in one SQLite file.\n\n"
    "Example: gcl create nightly-db --limit 2 && gcl run nightly-db -- ./backup.sh",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

# Optional[...] rather than "X | None": typer reads these annotations at run time, on Python 3.10 too.


def _option(option: opt.Option, **extra: Any) -> Any:
    """The ``typer.Option`` of an option of the table: the same flags, metavar, help and range."""
    return typer.Option(
        *option.flags,
        metavar=option.metavar,
        help=option.help,
        min=option.minimum,
        max=option.maximum,
        envvar=option.envvar,
        **extra,
    )


class _Format(str, Enum):
    """What ``-o`` accepts (``opt.OUTPUT_FORMATS``)."""

    json = "json"


def _text(output: _Format | None) -> str | None:
    return None if output is None else output.value


_Output = Annotated[Optional[_Format], _option(opt.OUTPUT)]  # noqa: UP045
_Db = Annotated[Optional[str], _option(opt.DB)]  # noqa: UP045
_Name = Annotated[str, typer.Argument(metavar="NAME", help="The limit.")]
_Lease = Annotated[str, typer.Argument(metavar="LEASE", help="The lease id.")]
_Names = Annotated[
    list[str], typer.Argument(metavar="NAME...", help="Limit names; slots are taken on all of them or none.")
]
_NamesAndCommand = Annotated[
    list[str], typer.Argument(metavar="NAME... [-- COMMAND...]", help="Limit names, then the command after --.")
]
_Occupy = Annotated[int, _option(opt.OCCUPY)]
_Timeout = Annotated[Optional[float], _option(opt.TIMEOUT)]  # noqa: UP045
_NonBlock = Annotated[bool, _option(opt.NONBLOCK)]
_LeaseDuration = Annotated[float, _option(opt.LEASE_DURATION)]
_Strict = Annotated[bool, _option(opt.STRICT)]
_Verbose = Annotated[bool, _option(opt.VERBOSE)]
_BusyCode = Annotated[int, _option(opt.BUSY_EXIT_CODE)]
_HolderPid = Annotated[Optional[int], _option(opt.HOLDER_PID)]  # noqa: UP045
_Rate = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--rate", metavar="N/UNIT", help="A rate limit in words: at most N calls in any window of one "
                 "UNIT (s, min, h, day). Sets the limit and the decay."),
]  # fmt: skip
_Burst = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option("--burst", metavar="B", help="With --rate: at most B of the N calls at once (default 1)."),
]


class _State:
    db: str | None = None


def _db(local: str | None) -> str | None:
    """``--db`` given after the command wins over the one before it (and over $GCL_DB)."""
    return local if local is not None else _State.db


def _exit(code: int) -> NoReturn:
    raise typer.Exit(code)


def _tidy_help(text: str) -> str:
    """Help with readable placeholders: ``NAME...``, not typer's ``{NAME...}...`` and ``<list[str]>``."""
    import re

    def usage(match: re.Match[str]) -> str:
        inner = match.group(1)
        return inner if "..." in inner else inner + (match.group(2) or "")

    text = re.sub(r"\{([^{}]+)\}(\.\.\.)?", usage, text)
    text = re.sub(r" <[^<>\s]+>", lambda m: " " * len(m.group()), text)  # the same width: columns stay aligned
    return "\n".join(line.rstrip() for line in text.split("\n"))


class _Command(TyperCommand):
    def get_help(self, ctx: Any) -> str:
        return _tidy_help(str(super().get_help(ctx)))


class _KeepsRawArgs(_Command):
    """Remembers the arguments as given: click drops the ``--`` that ends the names of ``run``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta["gcl_raw_args"] = list(args)
        result: list[str] = super().parse_args(ctx, args)
        return result


def _split(ctx: typer.Context, values: list[str]) -> tuple[list[str], list[str]]:
    """Click hands over names and command as one list: the raw arguments after ``--`` are the command."""
    raw = ctx.meta.get("gcl_raw_args", [])
    if "--" not in raw:
        return values, []
    tail = raw[raw.index("--") + 1 :]
    return values[: len(values) - len(tail)], tail


def _version(value: bool) -> None:
    if value:
        _exit(_commands.cmd_version())


@app.callback()
def _global(
    db: Annotated[Optional[str], _option(opt.GLOBAL_DB)] = None,  # noqa: UP045
    version: Annotated[bool, _option(opt.VERSION, is_eager=True, callback=_version)] = False,
) -> None:
    _State.db = db


@app.command("create", cls=_Command)
def _create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Name of the new limit.")],
    limit: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--limit", "-l", metavar="N", help="Number of slots (required unless --rate)."),
    ] = None,
    slot_decay_per_second: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option("--slot-decay-per-second", metavar="RATE", help="Slots freed per second (a rate limit)."),
    ] = None,
    rate: _Rate = None,
    burst: _Burst = None,
    disable: Annotated[bool, typer.Option("--disable/--no-disable", help="Create it inactive.")] = False,
    active_slots: Annotated[int, typer.Option("--active-slots", metavar="N", help="Initial level of the bucket.")] = 0,
    output: _Output = None,
    db: _Db = None,
) -> None:
    """Create a limit: N slots at once, or a rate in words.

    Example: gcl create nightly-db --limit 2; gcl create vendor-api --rate 100/min
    """
    _exit(_commands.cmd_create(
        name=name, limit=limit, slot_decay_per_second=slot_decay_per_second, rate=rate, burst=burst, disable=disable,
        active_slots=active_slots, output=_text(output), db=_db(db),
    ))  # fmt: skip


@app.command("ls", cls=_Command)
def _ls(output: _Output = None, db: _Db = None) -> None:
    """List every limit: slots used of the limit, rate, holders and waiters.

    Example: gcl ls -o json
    """
    _exit(_commands.cmd_ls(output=_text(output), db=_db(db)))


@app.command("inspect", cls=_Command)
def _inspect(
    name: _Name,
    output: _Output = None,
    file: Annotated[Optional[str], _option(opt.FILE)] = None,  # noqa: UP045
    db: _Db = None,
) -> None:
    """Show one limit with who holds its slots and who waits.

    Example: gcl inspect gpu; gcl inspect gpu -o json --file gpu.json
    """
    _exit(_commands.cmd_inspect(name=name, output=_text(output), file=file, db=_db(db)))


@app.command("update", cls=_Command)
def _update(
    name: _Name,
    limit: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--limit", "-l", metavar="N", help="New number of slots."),
    ] = None,
    slot_decay_per_second: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option("--slot-decay-per-second", metavar="RATE", help="New decay rate."),
    ] = None,
    rate: _Rate = None,
    burst: _Burst = None,
    enable: Annotated[bool, typer.Option("--enable/--no-enable", help="Make it active.")] = False,
    disable: Annotated[bool, typer.Option("--disable/--no-disable", help="Make it inactive (no limiting).")] = False,
    active_slots: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--active-slots", metavar="N", help="Set the bucket level."),
    ] = None,
    reset_stats: Annotated[
        bool, typer.Option("--reset-stats", help="Zero its history: counters and wait-time histogram.")
    ] = False,
    output: _Output = None,
    db: _Db = None,
) -> None:
    """Change a limit; waiters that now fit are served at once.

    Example: gcl update gpu --limit 4; gcl update vendor-api --rate 300/min --burst 10; gcl update gpu --reset-stats
    """
    _exit(_commands.cmd_update(
        name=name, limit=limit, slot_decay_per_second=slot_decay_per_second, rate=rate, burst=burst, enable=enable,
        disable=disable, active_slots=active_slots, reset_stats=reset_stats, output=_text(output), db=_db(db),
    ))  # fmt: skip


@app.command("enable", cls=_Command)
def _enable(name: _Name, db: _Db = None) -> None:
    """Make a limit active again.

    Example: gcl enable gpu
    """
    _exit(_commands.cmd_toggle(name=name, active=True, db=_db(db)))


@app.command("disable", cls=_Command)
def _disable(name: _Name, db: _Db = None) -> None:
    """Make a limit inactive: nothing waits on it and no slots are taken.

    Example: gcl disable gpu
    """
    _exit(_commands.cmd_toggle(name=name, active=False, db=_db(db)))


def _confirm(question: str) -> bool:
    return bool(typer.confirm(question, default=False))


@app.command("delete", cls=_Command)
def _delete(
    name: _Name,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    db: _Db = None,
) -> None:
    """Delete a limit (asks first when run from a terminal).

    Example: gcl delete old-limit --yes
    """
    _exit(_commands.cmd_delete(name=name, yes=yes, db=_db(db), confirm=_confirm))


@app.command("apply", cls=_Command)
def _apply(
    file: Annotated[str, typer.Argument(metavar="FILE", help="The TOML file of limits; - reads stdin.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan, change nothing.")] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Change nothing; exit 0 if the store matches, 4 if changes are pending.")
    ] = False,
    prune: Annotated[
        bool, typer.Option("--prune", help="Delete limits absent from FILE (only those an earlier apply created).")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="With --prune: delete limits that are held, too.")] = False,
    output: _Output = None,
    db: _Db = None,
) -> None:
    """Make the store match a file of limits, all or nothing; print the plan.

    Example: gcl apply /etc/gcl/limits.toml --dry-run
    """
    _exit(_commands.cmd_apply(
        file=file, dry_run=dry_run, check=check, prune=prune, force=force, output=_text(output), db=_db(db)
    ))  # fmt: skip


@app.command("export", cls=_Command)
def _export(db: _Db = None) -> None:
    """Print every limit as a file for gcl apply.

    Example: gcl export > limits.toml; gcl export | gcl apply --check -
    """
    _exit(_commands.cmd_export(db=_db(db)))


@app.command("metrics", cls=_Command)
def _metrics(
    textfile: Annotated[Optional[str], _option(opt.TEXTFILE)] = None,  # noqa: UP045
    db: _Db = None,
) -> None:
    """Print every limit's metrics in Prometheus text format (read-only).

    Example: gcl metrics; gcl metrics --textfile /var/lib/node_exporter/textfile_collector
    """
    _exit(_commands.cmd_metrics(textfile=textfile, db=_db(db)))


@app.command("top", cls=_Command)
def _top(
    once: Annotated[
        bool, typer.Option("--once", help="Print one frame and exit (also when not on a terminal).")
    ] = False,
    interval: Annotated[
        float,
        typer.Option("--interval", metavar="SECONDS", help=f"Seconds between refreshes (default {TOP_INTERVAL:g})."),
    ] = TOP_INTERVAL,
    db: _Db = None,
) -> None:
    """A live view of every limit, its holders and waiters (read-only); j/k or arrows select, q quits.

    Example: gcl top; gcl top --once; gcl top --interval 5
    """
    _exit(_commands.cmd_top(once=once, interval=interval, db=_db(db)))


@app.command("serve", cls=_Command)
def _serve(
    host: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--host", metavar="HOST", help="Address to listen on (default 127.0.0.1)."),
    ] = None,
    port: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--port", metavar="PORT", min=0, max=MAX_PORT, help="TCP port (default 8765; 0: any free port)."),
    ] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the page in a web browser.")] = False,
    uds: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--uds", metavar="PATH", help="Listen on a Unix socket (mode 0600) instead of TCP; no token."),
    ] = None,
    no_token: Annotated[
        bool, typer.Option("--no-token", help="Serve without a token: anyone who reaches the port can read it.")
    ] = False,
    db: _Db = None,
) -> None:
    """Serve a read-only web page of every limit, its holders and waiters (also /api/limits and /metrics).

    The URL it prints carries a random token that every request needs, as Jupyter's does.

    Example: gcl serve --open; gcl serve --uds ~/gcl.sock
    """
    _exit(_commands.cmd_serve(
        host=host, port=port, open_browser=open_browser, uds=uds, no_token=no_token, db=_db(db)
    ))  # fmt: skip


# The commands of the table (_options.COMMANDS), which the small parser of _cli reads too, are ls,
# inspect and metrics above, and these.


@app.command("run", cls=_KeepsRawArgs)
def _run(
    ctx: typer.Context,
    names_and_command: _NamesAndCommand,
    occupy: _Occupy = opt.DEFAULT_OCCUPY,
    timeout: _Timeout = None,
    nonblock: _NonBlock = False,
    lease_duration: _LeaseDuration = DEFAULT_LEASE_SECONDS,
    strict: _Strict = False,
    verbose: _Verbose = False,
    busy_exit_code: _BusyCode = EX_TEMPFAIL,
    db: _Db = None,
) -> None:
    """Hold slots while COMMAND runs; exit with its status (75 if the slots were not had).

    Example: gcl run nightly-db --timeout 600 -- ./backup.sh
    """
    names, command = _split(ctx, names_and_command)
    _exit(_commands.cmd_run(
        names=names, command=command, occupy=occupy, timeout=timeout, nonblock=nonblock, lease_duration=lease_duration,
        strict=strict, verbose=verbose, busy_exit_code=busy_exit_code, db=_db(db),
    ))  # fmt: skip


@app.command("rate-limit", cls=_KeepsRawArgs)
def _rate_limit(
    ctx: typer.Context,
    names_and_command: _NamesAndCommand,
    occupy: _Occupy = opt.DEFAULT_OCCUPY,
    timeout: _Timeout = None,
    nonblock: _NonBlock = False,
    strict: _Strict = False,
    verbose: _Verbose = False,
    busy_exit_code: _BusyCode = EX_TEMPFAIL,
    db: _Db = None,
) -> None:
    """Take rate-limit slots (waiting in line), then run COMMAND if one is given.

    Example: gcl rate-limit vendor-api -- curl -s https://api.example.com/
    """
    names, command = _split(ctx, names_and_command)
    _exit(_commands.cmd_rate_limit(
        names=names, command=command, occupy=occupy, timeout=timeout, nonblock=nonblock, strict=strict,
        verbose=verbose, busy_exit_code=busy_exit_code, db=_db(db),
    ))  # fmt: skip


@app.command("acquire", cls=_Command)
def _acquire(
    names: _Names,
    occupy: _Occupy = opt.DEFAULT_OCCUPY,
    timeout: _Timeout = None,
    nonblock: _NonBlock = False,
    lease_duration: _LeaseDuration = DEFAULT_LEASE_SECONDS,
    holder_pid: _HolderPid = None,
    strict: _Strict = False,
    output: _Output = None,
    verbose: _Verbose = False,
    busy_exit_code: _BusyCode = EX_TEMPFAIL,
    db: _Db = None,
) -> None:
    """Take slots for a script and print the lease id; they are freed when the holder process exits,
    by `gcl release`, or when the lease ends unless renewed with `gcl renew`.

    Example: lease=$(gcl acquire db --timeout 60) && trap 'gcl release "$lease"' EXIT
    """
    _exit(_commands.cmd_acquire(
        names=names, occupy=occupy, timeout=timeout, nonblock=nonblock, lease_duration=lease_duration,
        holder_pid=holder_pid, strict=strict, output=_text(output), verbose=verbose, busy_exit_code=busy_exit_code,
        db=_db(db),
    ))  # fmt: skip


@app.command("renew", cls=_Command)
def _renew(
    lease: _Lease,
    lease_duration: _LeaseDuration = DEFAULT_LEASE_SECONDS,
    output: _Output = None,
    db: _Db = None,
) -> None:
    """Extend a lease to LEASE_DURATION seconds from now.

    Example: gcl renew "$lease" --lease-duration 600
    """
    _exit(_commands.cmd_renew(lease_id=lease, lease_duration=lease_duration, output=_text(output), db=_db(db)))


@app.command("release", cls=_Command)
def _release(
    lease: _Lease,
    verbose: Annotated[bool, _option(opt.RELEASE_VERBOSE)] = False,
    db: _Db = None,
) -> None:
    """Give a lease's slots back (idempotent; also an admin's force-release).

    Example: gcl release 17-9f2c4e1a
    """
    _exit(_commands.cmd_release(lease_id=lease, verbose=verbose, db=_db(db)))


def run_app(args: list[str]) -> NoReturn:
    """Run the typer app; a usage error is one line and a hint, in the CLI's words, not click's box."""
    try:
        code = app(args=args, prog_name="gcl", standalone_mode=False)
    except _click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:  # plain `gcl`: the help, as before
            sys.stderr.write(exc.ctx.get_help() + "\n")
            raise SystemExit(EX_USAGE) from None
        command = exc.ctx.command_path if exc.ctx is not None else "gcl"
        message = " ".join(exc.format_message().split())
        _commands.fail(f"{message} (see: {command} --help)", EX_USAGE)
    except _click.ClickException as exc:
        _commands.fail(" ".join(exc.format_message().split()), exc.exit_code)
    except typer.Abort:
        _commands.fail("aborted.", 1)
    raise SystemExit(code if isinstance(code, int) else 0)


__all__ = ["MAX_PORT", "app", "run_app"]
