"""The typer app of ``gcl``: every command, its ``--help`` (with an example), and the admin commands.

Each command is a thin wrapper over one library call; errors become exit codes in
:func:`gcl_local._cli.guarded`.
"""

from __future__ import annotations

import sys
from enum import Enum
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand

try:  # typer >= 0.2x carries its own click
    from typer._click import exceptions as _click
except ImportError:  # pragma: no cover - older typer, on click
    from click import exceptions as _click  # type: ignore[import-not-found,no-redef,unused-ignore]

from . import _cli, _output
from ._errors import NoStateFileError
from ._limits import create_limit, delete_limit, list_limits, read_limit, reset_stats, snapshot, update_limit

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


class _Format(str, Enum):
    json = "json"


Output = Annotated[
    Optional[_Format],  # noqa: UP045
    typer.Option("--output", "-o", metavar="json", help="Print JSON: -o json."),
]
Db = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--db", metavar="PATH", help="State file (as gcl --db PATH; default: $GCL_DB, else per user)."),
]
Name = Annotated[str, typer.Argument(metavar="NAME", help="The limit.")]
Names = Annotated[
    list[str], typer.Argument(metavar="NAME...", help="Limit names; slots are taken on all of them or none.")
]
NamesAndCommand = Annotated[
    list[str], typer.Argument(metavar="NAME... [-- COMMAND...]", help="Limit names, then the command after --.")
]
Occupy = Annotated[int, typer.Option("--occupy", metavar="N", help="Slots to take on each limit.")]
Timeout = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option("--timeout", metavar="SECONDS", help="Give up after SECONDS (exit 75)."),
]
NonBlock = Annotated[bool, typer.Option("--nonblock", "-n", help="Do not wait: exit 75 if busy.")]
LeaseDuration = Annotated[
    float, typer.Option("--lease-duration", metavar="SECONDS", help="Lease length in seconds (60-86400).")
]
Strict = Annotated[bool, typer.Option("--strict", help="Fail (exit 1) if a named limit does not exist.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Say what we wait for, even when not on a terminal.")]
BusyCode = Annotated[
    int,
    typer.Option("--busy-exit-code", metavar="CODE", min=0, max=255, help="Exit code when busy or timed out (0-255)."),
]
Rate = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--rate", metavar="N/UNIT", help="A rate limit in words: at most N calls in any window of one "
                 "UNIT (s, min, h, day). Sets the limit and the decay."),
]  # fmt: skip
Burst = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option("--burst", metavar="B", help="With --rate: at most B of the N calls at once (default 1)."),
]


class _State:
    db: str | None = None


def _db(local: str | None) -> str | None:
    """``--db`` given after the command wins over the one before it (and over $GCL_DB)."""
    return local if local is not None else _State.db


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


def _version(value: bool) -> None:
    if value:
        from . import __version__

        sys.stdout.write(f"gcl {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _global(
    db: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--db", envvar="GCL_DB", metavar="PATH",
                     help="State file (default: $GCL_DB, else $XDG_STATE_HOME/gcl_local/gcl.db)."),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_version, help="Print the version and exit.")
    ] = False,
) -> None:  # fmt: skip
    _State.db = db


def _done(message: str) -> None:
    sys.stdout.write(message + "\n")


def _q(name: str) -> str:
    """*name* as the shell wants it in a command we suggest: ``gcl inspect 'a b'``."""
    import shlex

    return shlex.quote(name)


def _limit_values(limit: int | None, decay: float | None, active_slots: int | None) -> None:
    """Check values before anything touches the file, naming them as the user typed them."""
    from ._model import validate_count, validate_decay

    if limit is not None:
        validate_count(limit, "--limit")
    if decay is not None:
        validate_decay(decay, "--slot-decay-per-second")
    if active_slots is not None:
        validate_count(active_slots, "--active-slots")


def _rate_values(
    rate: str | None, burst: int | None, limit: int | None, decay: float | None
) -> tuple[int | None, float | None]:
    """``--rate``/``--burst`` as a limit and a decay (usage errors when mixed with --limit and friends)."""
    if rate is None:
        if burst is not None:
            _cli.fail("--burst goes with --rate (e.g. --rate 100/min --burst 5).", _cli.EX_USAGE)
        return limit, decay
    if limit is not None or decay is not None:
        _cli.fail("--rate sets the limit and the decay: give it without --limit and --slot-decay-per-second.",
                  _cli.EX_USAGE)  # fmt: skip
    from ._rates import parse_rate

    parsed = parse_rate(rate, burst)
    return parsed.limit, parsed.slot_decay_per_second


@app.command(cls=_Command)
def create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Name of the new limit.")],
    limit: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--limit", "-l", metavar="N", help="Number of slots (required unless --rate)."),
    ] = None,
    slot_decay_per_second: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option("--slot-decay-per-second", metavar="RATE", help="Slots freed per second (a rate limit)."),
    ] = None,
    rate: Rate = None,
    burst: Burst = None,
    disable: Annotated[bool, typer.Option("--disable/--no-disable", help="Create it inactive.")] = False,
    active_slots: Annotated[int, typer.Option("--active-slots", metavar="N", help="Initial level of the bucket.")] = 0,
    output: Output = None,
    db: Db = None,
) -> None:
    """Create a limit: N slots at once, or a rate in words.

    Example: gcl create nightly-db --limit 2; gcl create vendor-api --rate 100/min
    """

    def action() -> None:
        slots, decay = _rate_values(rate, burst, limit, slot_decay_per_second)
        if slots is None:
            _cli.fail("--limit N (or --rate N/UNIT) is required: gcl create NAME --limit N", _cli.EX_USAGE)
        _limit_values(slots, decay, active_slots)
        made = create_limit(name, slots, slot_decay_per_second=decay or 0.0, active=not disable,
                            active_slots=active_slots, db=_db(db))  # fmt: skip
        if output == "json":
            _output.print_json(made.to_json())
        else:
            _done(f"Created limit {name!r}: see it with gcl inspect {_q(name)}")

    _run(action)


@app.command("ls", cls=_Command)
def ls(output: Output = None, db: Db = None) -> None:
    """List every limit: slots used of the limit, rate, holders and waiters.

    Example: gcl ls -o json
    """

    def action() -> None:
        from ._backend import open_backend as get_store

        store = get_store(_db(db))
        try:
            limits = snapshot(store)
        except NoStateFileError as exc:  # a reader never creates the file
            if output == "json":
                _output.print_json([])
                sys.stderr.write(f"gcl: {exc}\n")
            else:
                _done(_output.header(str(store.description)))
                _done("No state file yet: gcl create NAME --limit N makes it.")
            return
        if output == "json":
            _output.print_json([limit.to_json() for limit in limits])
            return
        _done(_output.header(str(store.description)))
        _done(_output.limits_table(limits) if limits else "No limits yet: gcl create NAME --limit N")

    _run(action)


@app.command(cls=_Command)
def inspect(
    name: Name,
    output: Output = None,
    file: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--file", "-f", metavar="PATH", help="With -o json: write the JSON to PATH."),
    ] = None,
    db: Db = None,
) -> None:
    """Show one limit with who holds its slots and who waits.

    Example: gcl inspect gpu; gcl inspect gpu -o json --file gpu.json
    """
    if file is not None and output != "json":
        _cli.fail("--file needs -o json: gcl inspect NAME -o json --file PATH", _cli.EX_USAGE)

    def action() -> None:
        from ._backend import open_backend as get_store

        store = get_store(_db(db))
        limit = snapshot(store, name)[0]
        if output == "json" and file is not None:
            import json

            try:
                with open(file, "w", encoding="utf-8") as f:
                    json.dump(limit.to_json(), f, indent=2, ensure_ascii=False)
                    f.write("\n")
            except OSError as exc:
                _cli.fail(f"cannot write {file}: {exc.strerror}")
            _done(f"Limit {name!r} written to {file}")
        elif output == "json":
            _output.print_json(limit.to_json())
        else:
            _done(_output.header(str(store.description)))
            _done(_output.limit_details(limit))

    _run(action)


@app.command(cls=_Command)
def update(
    name: Name,
    limit: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--limit", "-l", metavar="N", help="New number of slots."),
    ] = None,
    slot_decay_per_second: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option("--slot-decay-per-second", metavar="RATE", help="New decay rate."),
    ] = None,
    rate: Rate = None,
    burst: Burst = None,
    enable: Annotated[bool, typer.Option("--enable/--no-enable", help="Make it active.")] = False,
    disable: Annotated[bool, typer.Option("--disable/--no-disable", help="Make it inactive (no limiting).")] = False,
    active_slots: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--active-slots", metavar="N", help="Set the bucket level."),
    ] = None,
    reset_stats_: Annotated[
        bool, typer.Option("--reset-stats", help="Zero its history: counters and wait-time histogram.")
    ] = False,
    output: Output = None,
    db: Db = None,
) -> None:
    """Change a limit; waiters that now fit are served at once.

    Example: gcl update gpu --limit 4; gcl update vendor-api --rate 300/min --burst 10; gcl update gpu --reset-stats
    """
    if enable and disable:
        _cli.fail("Cannot enable and disable a limit at the same time.", _cli.EX_USAGE)
    active = True if enable else False if disable else None

    def action() -> None:
        slots, decay = _rate_values(rate, burst, limit, slot_decay_per_second)
        settings = not (slots is None and decay is None and active is None and active_slots is None)
        if not settings and not reset_stats_:
            _cli.fail(
                "nothing to change: give --limit, --rate, --slot-decay-per-second, --enable, --disable, "
                "--active-slots or --reset-stats", _cli.EX_USAGE,
            )  # fmt: skip
        _limit_values(slots, decay, active_slots)
        if settings:
            changed = update_limit(name, limit=slots, slot_decay_per_second=decay, active=active,
                                   active_slots=active_slots, db=_db(db))  # fmt: skip
        if reset_stats_:
            changed = reset_stats(name, db=_db(db))
        if output == "json":
            _output.print_json(changed.to_json())
        else:
            _done(f"Updated limit {name!r}.")

    _run(action)


def _toggle(name: str, active: bool, db: str | None) -> None:
    word = "enabled" if active else "disabled"

    def action() -> int:
        if read_limit(name, db=_db(db)).active == active:
            _cli.fail(f"Limit {name!r} is already {word}.")
        update_limit(name, active=active, db=_db(db))
        _done(f"{word.capitalize()} limit {name!r}.")
        return 0

    _run(action)


@app.command(cls=_Command)
def enable(name: Name, db: Db = None) -> None:
    """Make a limit active again.

    Example: gcl enable gpu
    """
    _toggle(name, True, db)


@app.command(cls=_Command)
def disable(name: Name, db: Db = None) -> None:
    """Make a limit inactive: nothing waits on it and no slots are taken.

    Example: gcl disable gpu
    """
    _toggle(name, False, db)


@app.command(cls=_Command)
def delete(
    name: Name,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    db: Db = None,
) -> None:
    """Delete a limit (asks first when run from a terminal).

    Example: gcl delete old-limit --yes
    """

    def action() -> None:
        read_limit(name, db=_db(db))
        asked = not yes and sys.stdin.isatty()
        if asked and not typer.confirm(f"Are you sure you want to delete limit {name!r}?", default=False):
            _cli.fail("Deletion aborted.")
        delete_limit(name, db=_db(db))
        _done(f"Deleted limit {name!r}.")

    _run(action)


@app.command("apply", cls=_Command)
def apply_(
    file: Annotated[str, typer.Argument(metavar="FILE", help="The TOML file of limits; - reads stdin.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan, change nothing.")] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Change nothing; exit 0 if the store matches, 4 if changes are pending.")
    ] = False,
    prune: Annotated[
        bool, typer.Option("--prune", help="Delete limits absent from FILE (only those an earlier apply created).")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="With --prune: delete limits that are held, too.")] = False,
    output: Output = None,
    db: Db = None,
) -> None:
    """Make the store match a file of limits, all or nothing; print the plan.

    Example: gcl apply /etc/gcl/limits.toml --dry-run
    """
    if force and not prune:
        _cli.fail("--force goes with --prune.", _cli.EX_USAGE)

    def action() -> int:
        from . import _apply

        source = "<stdin>" if file == "-" else file
        try:
            if file == "-":
                text = sys.stdin.read()
            else:
                with open(file, encoding="utf-8") as f:
                    text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            _cli.fail(f"cannot read {source}: {getattr(exc, 'strerror', None) or exc}")
        wanted = _apply.read_file(text, source)
        commit = not (dry_run or check)
        changes = _apply.plan(get_store_of(db), wanted, prune=prune, force=force, commit=commit)
        if output == "json":
            _output.print_json({"applied": commit, "changes": [c.to_json() for c in changes],
                                "pending": _apply.pending(changes) and not commit})  # fmt: skip
        else:
            _done(_apply.plan_text(changes))
            if commit:
                _done("Applied." if _apply.pending(changes) else "Nothing to change.")
            elif dry_run:
                _done("Dry run: nothing changed.")
        if check and _apply.pending(changes):
            return _apply.EX_CHANGES_PENDING
        return 0

    _run(action)


@app.command(cls=_Command)
def export(db: Db = None) -> None:
    """Print every limit as a file for gcl apply.

    Example: gcl export > limits.toml; gcl export | gcl apply --check -
    """

    def action() -> None:
        from . import _apply

        store = get_store_of(db)
        sys.stdout.write(_apply.export_text(list_limits(db=store), str(store.description)))

    _run(action)


def _limits_now(db: str | None) -> tuple[Any, list[Any]]:
    """The store and a snapshot of every limit ([] when there is no state file yet: none is created)."""
    from ._backend import open_backend as get_store

    store = get_store(_db(db))
    try:
        return store, snapshot(store)
    except NoStateFileError:
        return store, []


@app.command(cls=_Command)
def metrics(
    textfile: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--textfile", metavar="DIR", help="Write DIR/gcl.prom atomically (node_exporter's textfile collector)."
        ),
    ] = None,
    db: Db = None,
) -> None:
    """Print every limit's metrics in Prometheus text format (read-only).

    Example: gcl metrics; gcl metrics --textfile /var/lib/node_exporter/textfile_collector
    """
    import os

    if textfile is not None and not os.path.isdir(textfile):
        _cli.fail(f"--textfile: {textfile} is not a directory.", _cli.EX_USAGE)

    def action() -> None:
        from datetime import datetime, timezone

        from . import _metrics

        _, limits = _limits_now(db)
        text = _metrics.exposition(limits, datetime.now(timezone.utc))
        if textfile is None:
            sys.stdout.write(text)
            return
        try:
            _metrics.write_textfile(textfile, text)
        except OSError as exc:
            _cli.fail(f"--textfile: cannot write to {textfile}: {exc.strerror or exc}.")

    _run(action)


@app.command(cls=_Command)
def top(
    once: Annotated[
        bool, typer.Option("--once", help="Print one frame and exit (also when not on a terminal).")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", metavar="SECONDS", help="Seconds between refreshes (default 1).")
    ] = 1.0,
    db: Db = None,
) -> None:
    """A live view of every limit, its holders and waiters (read-only); j/k or arrows select, q quits.

    Example: gcl top; gcl top --once; gcl top --interval 5
    """
    import math

    if not (math.isfinite(interval) and 0.1 <= interval <= 3600):
        _cli.fail(f"--interval must be between 0.1 and 3600 seconds, not {interval:g}.", _cli.EX_USAGE)

    def action() -> None:
        from . import _top

        store, _ = _limits_now(db)
        _top.run(str(store.description), lambda: _limits_now(db)[1], interval, once)

    _run(action)


@app.command(cls=_Command)
def serve(
    host: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--host", metavar="HOST", help="Address to listen on (default 127.0.0.1)."),
    ] = None,
    port: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--port", metavar="PORT", min=0, max=65535, help="TCP port (default 8765; 0: any free port)."),
    ] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the page in a web browser.")] = False,
    uds: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--uds", metavar="PATH", help="Listen on a Unix socket (mode 0600) instead of TCP; no token."),
    ] = None,
    no_token: Annotated[
        bool, typer.Option("--no-token", help="Serve without a token: anyone who reaches the port can read it.")
    ] = False,
    db: Db = None,
) -> None:
    """Serve a read-only web page of every limit, its holders and waiters (also /api/limits and /metrics).

    The URL it prints carries a random token that every request needs, as Jupyter's does.

    Example: gcl serve --open; gcl serve --uds ~/gcl.sock
    """
    if uds is not None and (host is not None or port is not None):
        _cli.fail("--uds listens on a Unix socket: it excludes --host and --port.", _cli.EX_USAGE)
    if uds is not None and open_browser:
        _cli.fail("--open needs a TCP port: a browser cannot open a Unix socket.", _cli.EX_USAGE)
    if uds == "" or host == "":
        _cli.fail(f"{'--uds' if uds == '' else '--host'} must not be empty.", _cli.EX_USAGE)

    def action() -> int:
        from . import _serve

        return _serve.serve(
            get_store_of(db),
            host=_serve.DEFAULT_HOST if host is None else host,
            port=_serve.DEFAULT_PORT if port is None else port,
            uds=uds,
            token=not no_token,
            open_browser=open_browser,
        )

    _run(action)


def get_store_of(db: str | None) -> Any:
    from ._backend import open_backend as get_store

    return get_store(_db(db))


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
    db: Db = None,
) -> None:
    """Hold slots while COMMAND runs; exit with its status (75 if the slots were not had).

    Example: gcl run nightly-db --timeout 600 -- ./backup.sh
    """
    names, tail = _split(ctx, names_and_command)
    code = _cli.guarded(
        lambda: _cli.cmd_run(names, tail, occupy=occupy, timeout=timeout, nonblock=nonblock,
                             lease_duration=lease_duration, strict=strict, verbose=verbose, db=_db(db)),
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
    db: Db = None,
) -> None:
    """Take rate-limit slots (waiting in line), then run COMMAND if one is given.

    Example: gcl rate-limit vendor-api -- curl -s https://api.example.com/
    """
    names, tail = _split(ctx, names_and_command)
    code = _cli.guarded(
        lambda: _cli.cmd_rate_limit(names, tail, occupy=occupy, timeout=timeout, nonblock=nonblock, strict=strict,
                                    verbose=verbose, db=_db(db)),
        busy_exit_code=busy_exit_code,
    )  # fmt: skip
    raise typer.Exit(code)


@app.command(cls=_Command)
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
            metavar="PID",
            help="The process that holds the slots (default: the calling script, found past subshells and "
            "wrappers such as timeout; pass $$ where it cannot be found).",
        ),
    ] = None,
    strict: Strict = False,
    output: Output = None,
    verbose: Verbose = False,
    busy_exit_code: BusyCode = 75,
    db: Db = None,
) -> None:
    """Take slots for a script and print the lease id; they are freed when the holder process exits,
    by `gcl release`, or when the lease ends unless renewed with `gcl renew`.

    Example: lease=$(gcl acquire db --timeout 60) && trap 'gcl release "$lease"' EXIT
    """
    code = _cli.guarded(
        lambda: _cli.cmd_acquire(names, occupy=occupy, timeout=timeout, nonblock=nonblock,
                                 lease_duration=lease_duration, holder_pid=holder_pid, strict=strict, output=output,
                                 verbose=verbose, db=_db(db)),
        busy_exit_code=busy_exit_code,
    )  # fmt: skip
    raise typer.Exit(code)


@app.command(cls=_Command)
def renew(
    lease: Annotated[str, typer.Argument(metavar="LEASE", help="The lease id.")],
    lease_duration: LeaseDuration = 300.0,
    output: Output = None,
    db: Db = None,
) -> None:
    """Extend a lease to LEASE_DURATION seconds from now.

    Example: gcl renew "$lease" --lease-duration 600
    """
    code = _cli.guarded(lambda: _cli.cmd_renew(lease, lease_duration=lease_duration, output=output, db=_db(db)))
    raise typer.Exit(code)


@app.command(cls=_Command)
def release(
    lease: Annotated[str, typer.Argument(metavar="LEASE", help="The lease id.")],
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Say whether the lease was held.")] = False,
    db: Db = None,
) -> None:
    """Give a lease's slots back (idempotent; also an admin's force-release).

    Example: gcl release 17-9f2c4e1a
    """
    raise typer.Exit(_cli.guarded(lambda: _cli.cmd_release(lease, db=_db(db), verbose=verbose)))


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
    """Run the typer app; a usage error is one line and a hint, in the CLI's words, not click's box."""
    try:
        code = app(args=args, prog_name="gcl", standalone_mode=False)
    except _click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:  # plain `gcl`: the help, as before
            sys.stderr.write(exc.ctx.get_help() + "\n")
            raise SystemExit(_cli.EX_USAGE) from None
        command = exc.ctx.command_path if exc.ctx is not None else "gcl"
        message = " ".join(exc.format_message().split())
        _cli.fail(f"{message} (see: {command} --help)", _cli.EX_USAGE)
    except _click.ClickException as exc:
        _cli.fail(" ".join(exc.format_message().split()), exc.exit_code)
    except typer.Abort:
        _cli.fail("aborted.", 1)
    raise SystemExit(code if isinstance(code, int) else 0)


__all__ = ["app", "run_app"]
