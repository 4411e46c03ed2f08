"""The commands of ``gcl``: one function per command, and the one place errors become exit codes.

Both parsers call these: the small parser of :mod:`gcl_local._cli` (the hot commands and the
readers, without typer) and the typer app of :mod:`gcl_local._app` (every command, ``--help``, and
every mistake). Each ``cmd_*`` function takes the parsed options as keyword arguments, all of them,
checks their values (naming them as the user typed them), does its work through the library,
prints, and returns the exit code: a gcl error becomes its code with one line on stderr, never a
traceback. This module imports only what every command needs; the rest is imported by the command
that uses it, so that ``gcl run`` loads neither the tables nor ``apply``'s TOML.
"""

from __future__ import annotations

import contextlib
import os
import sys

from ._errors import EX_TEMPFAIL, EX_USAGE, AcquireConcurrencySlotTimeoutError, GclError, NoStateFileError

TYPE_CHECKING = False  # not typing's: this module must not cost the import of typing
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from typing import NoReturn

    from ._backend import Backend
    from ._model import Lease, Limit
    from ._shell import Acquisition

EX_INTERRUPTED = 130
"""Ctrl-C: 128 + SIGINT, as a shell reports it."""
TOP_INTERVAL = 1.0
"""Seconds between the frames of ``gcl top``."""
TOP_INTERVAL_RANGE = (0.1, 3600.0)


def open_store(db: str | None) -> Backend:
    """The store of ``--db`` (None: ``$GCL_DB``, else the default path): every command gets it here."""
    from ._backend import open_backend

    return open_backend(db)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line on stderr and exit: the only way a command reports an error."""
    sys.stderr.write(f"gcl: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def guarded(action: Callable[[], int | None], *, busy_exit_code: int = EX_TEMPFAIL) -> int:
    """Run a command; map every gcl error to its exit code with one line on stderr, never a traceback."""
    try:
        return action() or 0
    except AcquireConcurrencySlotTimeoutError as exc:
        fail(busy_message(exc), busy_exit_code)
    except GclError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", EX_INTERRUPTED)
    except BrokenPipeError:
        os._exit(1)


def busy_message(exc: AcquireConcurrencySlotTimeoutError) -> str:
    """What cron mails when slots were not had: which limits, and how long we waited."""
    if not exc.names:
        return str(exc)
    names = ", ".join(repr(name) for name in exc.names)
    if exc.waited == 0.0:
        return f"slots on {names} are busy; not waiting."
    if exc.waited is None:
        return f"gave up waiting for slots on {names}."
    return f"gave up after waiting {exc.waited:.1f}s for slots on {names}."


def _done(message: str) -> None:
    sys.stdout.write(message + "\n")


def cmd_version() -> int:
    """``gcl --version``."""
    from . import __version__

    _done(f"gcl {__version__}")
    return 0


# -- run, rate-limit, acquire, renew, release: the hot commands ------------------------------------------


def cmd_run(
    *,
    names: Sequence[str],
    command: Sequence[str],
    occupy: int,
    timeout: float | None,
    nonblock: bool,
    lease_duration: float,
    strict: bool,
    verbose: bool,
    busy_exit_code: int,
    db: str | None,
) -> int:
    """``gcl run``: hold slots while the command runs; its exit status."""

    def action() -> int:
        from . import _runner, _shell
        from .sync import acquire_slots

        _require_names(names, "gcl run NAME... -- COMMAND...")
        if not command:
            fail("no command given: gcl run NAME... -- COMMAND...", EX_USAGE)
        _check_values(occupy, timeout, lease_duration)
        store = open_store(db)
        request = _shell.make_request(
            store, names, occupy, "concurrency", strict=strict, lease_duration=lease_duration,
            holder=os.path.basename(command[0]),
        )  # fmt: skip
        acquisition = _shell.Acquisition(store, request)
        try:  # from before the first transaction: a signal must not strand the slots
            with unwinding_signals():
                notice = _waiting_notice(names, verbose)
                granted = acquire_slots(store, request, timeout, 0 if nonblock else None, notice, acquisition)
            _warn_missing(granted.missing)
            assert granted.lease is not None
            if granted.lease.token is None:  # nothing to hold: run it plainly
                return _exec(command)
            return _runner.run_command(store, request, command, acquisition, granted.lease, strict=strict)
        finally:
            acquisition.release()

    return guarded(action, busy_exit_code=busy_exit_code)


def cmd_rate_limit(
    *,
    names: Sequence[str],
    command: Sequence[str],
    occupy: int,
    timeout: float | None,
    nonblock: bool,
    strict: bool,
    verbose: bool,
    busy_exit_code: int,
    db: str | None,
) -> int:
    """``gcl rate-limit``: take rate slots (waiting in line), then run the command if one is given."""

    def action() -> int:
        from . import _shell
        from .sync import acquire_slots

        _require_names(names, "gcl rate-limit NAME... [-- COMMAND...]")
        _check_values(occupy, timeout)
        store = open_store(db)
        request = _shell.make_request(store, names, occupy, "rate", strict=strict)
        with unwinding_signals():
            granted = acquire_slots(store, request, 0 if nonblock else timeout, None, _waiting_notice(names, verbose))
        _warn_missing(granted.missing)
        return _exec(command) if command else 0

    return guarded(action, busy_exit_code=busy_exit_code)


def cmd_acquire(
    *,
    names: Sequence[str],
    occupy: int,
    timeout: float | None,
    nonblock: bool,
    lease_duration: float,
    holder_pid: int | None,
    strict: bool,
    output: str | None,
    verbose: bool,
    busy_exit_code: int,
    db: str | None,
) -> int:
    """``gcl acquire``: take slots for the calling script and print the lease id."""

    def action() -> int:
        from . import _process, _shell
        from ._errors import ConcurrencySlotAcquisitionError
        from .sync import acquire_slots

        _check_values(occupy, timeout, lease_duration)
        pid = _holder_of_lease(holder_pid)
        store = open_store(db)
        request = _shell.make_request(
            store, names, occupy, "concurrency", strict=strict, lease_duration=lease_duration,
            holder=_program_of(pid), holder_pid=pid,
        )  # fmt: skip
        request = request._replace(waiter_registration=_shell.registration(store).name)
        holder = request.holder
        acquisition = _shell.Acquisition(store, request)
        try:  # given back if anything fails before the lease is printed: nobody else would know its id
            with unwinding_signals():
                try:
                    notice = _waiting_notice(names, verbose)
                    granted = acquire_slots(store, request, timeout, 0 if nonblock else None, notice, acquisition)
                except ConcurrencySlotAcquisitionError:
                    if not _process.pid_alive(pid, holder.pid_start):  # the queue dropped our ticket for it
                        _holder_gone(holder.pid, holder.label)
                    raise
                lease = granted.lease
                assert lease is not None
                # A pid-held lease of a dead process would be reaped by the next look: never hand one out.
                if lease.token is not None and not _process.pid_alive(pid, holder.pid_start):
                    _holder_gone(holder.pid, holder.label)
                _warn_missing(granted.missing)
                _print_lease(lease, output)
                sys.stdout.flush()  # here, not at exit: a lease id nobody read must be given back
                acquisition.disown()  # the calling script holds it now
        finally:
            acquisition.release()
        return 0

    return guarded(action, busy_exit_code=busy_exit_code)


def cmd_renew(*, lease_id: str, lease_duration: float, output: str | None, db: str | None) -> int:
    """``gcl renew``: extend a lease to *lease_duration* seconds from now."""

    def action() -> None:
        from .sync import renew_lease

        _check_values(1, None, lease_duration)
        _print_lease(renew_lease(lease_id, lease_duration, db=db), output, quiet=True)

    return guarded(action)


def cmd_release(*, lease_id: str, verbose: bool, db: str | None) -> int:
    """``gcl release``: give a lease's slots back (idempotent)."""

    def action() -> None:
        from .sync import release_lease

        released = release_lease(lease_id, db=db)
        if verbose:
            sys.stderr.write(f"gcl: lease {lease_id} {'released' if released else 'was not held'}\n")

    return guarded(action)


def _check_values(occupy: int, timeout: float | None, lease_duration: float | None = None) -> None:
    """Check the options before anything touches the file, and name them as the user typed them
    (the library's own checks would name its Python parameters)."""
    from ._model import MAX_LEASE_SECONDS, MIN_LEASE_SECONDS, validate_count, validate_seconds

    validate_count(occupy, "--occupy", minimum=1)
    if timeout is not None:
        validate_seconds(timeout, "--timeout")
    if lease_duration is not None:
        validate_seconds(lease_duration, "--lease-duration", minimum=MIN_LEASE_SECONDS, maximum=MAX_LEASE_SECONDS)


def _require_names(names: Sequence[str], usage: str) -> None:
    # `gcl run $UNSET -- cmd` would otherwise run the command unlimited, silently: a script's
    # mistake must not pass for "no limit" (the library keeps Prefect's empty-list no-op).
    if not names:
        fail(f"no limit name given: {usage}", EX_USAGE)


def _waiting_notice(names: Sequence[str], verbose: bool) -> Callable[[Acquisition], None] | None:
    """After about a second of waiting, say on stderr what we wait for (only for a person, or with -v)."""
    if not (verbose or sys.stderr.isatty()):
        return None

    def notice(acquisition: Acquisition) -> None:
        from . import _admission

        with acquisition.backend.read() as tx:
            ahead, holder = _admission.wait_summary(tx, acquisition.ticket, list(names))
        who = ""
        if holder is not None:
            from ._output import duration

            who = f", held by pid {holder.pid} {holder.label!r}"
            if holder.acquired is not None:
                from datetime import datetime, timezone

                who += f" for {duration((datetime.now(timezone.utc) - holder.acquired).total_seconds())}"
        quoted = ", ".join(repr(n) for n in names)
        sys.stderr.write(f"gcl: waiting for {quoted} ({ahead} ahead{who})\n")
        sys.stderr.flush()

    return notice


@contextlib.contextmanager
def unwinding_signals() -> Iterator[None]:
    """While waiting, SIGTERM and SIGHUP exit with 128+N by unwinding, so that the ticket is taken
    out of the queue on the way (their default action would kill us and leave it to be reaped).

    A signal the caller ignores (``nohup``) stays ignored. After the first one both are ignored:
    the clean-up it started must not be cut short by a second.
    """
    from ._stdlib import signal

    caught = [sig for sig in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(sig) != signal.SIG_IGN]

    def unwind(signum: int, _frame: object) -> None:
        for sig in caught:
            signal.signal(sig, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, unwind) for sig in caught}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _holder_of_lease(holder_pid: int | None) -> int:
    """The process that will hold a ``gcl acquire`` lease: ``--holder-pid``, else the calling script."""
    from . import _holder, _process

    if holder_pid is None:
        pid, why = _holder.script_pid()
        if pid is None:
            fail(f"cannot tell which process should hold the lease ({why}); pass --holder-pid $$", EX_USAGE)
        return pid
    if holder_pid <= 0:
        fail(f"--holder-pid must be a positive process id, not {holder_pid}.")
    if not _process.pid_alive(holder_pid, None):
        fail(f"--holder-pid {holder_pid} is not a running process.")
    return holder_pid


def _holder_gone(pid: int | None, label: str) -> NoReturn:
    fail(f"the holder process {pid} ({label}) exited before the slots were granted; no lease taken.")


def _print_lease(lease: Lease, output: str | None, *, quiet: bool = False) -> None:
    if output == "json":
        from ._output import print_json

        print_json(lease.to_json())
    elif not quiet:
        # No slot taken (every name missing or inactive): print a placeholder that release accepts.
        sys.stdout.write(f"{lease.id or 'none'}\n")


def _program_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return f"pid {pid}"


def _warn_missing(missing: Sequence[str]) -> None:
    if missing:
        sys.stderr.write(f"gcl: warning: limits {list(missing)!r} do not exist - not limiting on them\n")


def _exec(command: Sequence[str]) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(command[0], list(command))  # noqa: S606 - the user's own command, as given
    except OSError as exc:
        from ._errors import CommandError, CommandNotFoundError

        error = CommandNotFoundError if isinstance(exc, FileNotFoundError) else CommandError
        raise error(f"Cannot run {command[0]!r}: {exc.strerror}.") from None


# -- ls, inspect, metrics, top, serve: the readers (a snapshot: no write lock, no write, no file made) ---


def _snapshot(store: Backend, name: str | None = None) -> list[Limit]:
    from ._limits import snapshot

    return snapshot(store, name)


def _limits_now(db: str | None) -> tuple[Backend, list[Limit]]:
    """The store and a snapshot of every limit ([] when there is no state file yet: none is created)."""
    store = open_store(db)
    try:
        return store, _snapshot(store)
    except NoStateFileError:
        return store, []


def cmd_ls(*, output: str | None, db: str | None) -> int:
    """``gcl ls``: every limit, as a table or JSON."""

    def action() -> None:
        from . import _output

        store = open_store(db)
        try:
            limits = _snapshot(store)
        except NoStateFileError as exc:  # a reader never creates the file
            if output == "json":
                _output.print_json([])
                sys.stderr.write(f"gcl: {exc}\n")
            else:
                _done(_output.header(store.description))
                _done("No state file yet: gcl create NAME --limit N makes it.")
            return
        if output == "json":
            _output.print_json([limit.to_json() for limit in limits])
            return
        _done(_output.header(store.description))
        _done(_output.limits_table(limits) if limits else "No limits yet: gcl create NAME --limit N")

    return guarded(action)


def cmd_inspect(*, name: str, output: str | None, file: str | None, db: str | None) -> int:
    """``gcl inspect``: one limit with its holders and waiters; with ``-o json --file PATH``, into a file."""
    if file is not None and output != "json":
        fail("--file needs -o json: gcl inspect NAME -o json --file PATH", EX_USAGE)

    def action() -> None:
        from . import _output

        store = open_store(db)
        limit = _snapshot(store, name)[0]
        if output == "json" and file is not None:
            import json

            try:
                with open(file, "w", encoding="utf-8") as f:
                    json.dump(limit.to_json(), f, indent=2, ensure_ascii=False)
                    f.write("\n")
            except OSError as exc:
                fail(f"cannot write {file}: {exc.strerror}")
            _done(f"Limit {name!r} written to {file}")
        elif output == "json":
            _output.print_json(limit.to_json())
        else:
            _done(_output.header(store.description))
            _done(_output.limit_details(limit))

    return guarded(action)


def cmd_metrics(*, textfile: str | None, db: str | None) -> int:
    """``gcl metrics``: every limit in Prometheus' text format, on stdout or atomically into DIR/gcl.prom."""
    if textfile is not None and not os.path.isdir(textfile):
        fail(f"--textfile: {textfile} is not a directory.", EX_USAGE)

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
            fail(f"--textfile: cannot write to {textfile}: {exc.strerror or exc}.")

    return guarded(action)


def cmd_top(*, once: bool, interval: float, db: str | None) -> int:
    """``gcl top``: a live view (one frame with ``--once`` or without a terminal)."""
    import math

    low, high = TOP_INTERVAL_RANGE
    if not (math.isfinite(interval) and low <= interval <= high):
        fail(f"--interval must be between {low:g} and {high:g} seconds, not {interval:g}.", EX_USAGE)

    def action() -> None:
        from . import _top

        store, _ = _limits_now(db)
        _top.run(store.description, lambda: _limits_now(db)[1], interval, once)

    return guarded(action)


def cmd_serve(
    *, host: str | None, port: int | None, open_browser: bool, uds: str | None, no_token: bool, db: str | None
) -> int:
    """``gcl serve``: a read-only web page, /api/limits and /metrics, until Ctrl-C."""
    if uds is not None and (host is not None or port is not None):
        fail("--uds listens on a Unix socket: it excludes --host and --port.", EX_USAGE)
    if uds is not None and open_browser:
        fail("--open needs a TCP port: a browser cannot open a Unix socket.", EX_USAGE)
    if uds == "" or host == "":
        fail(f"{'--uds' if uds == '' else '--host'} must not be empty.", EX_USAGE)

    def action() -> int:
        from . import _serve

        return _serve.serve(
            open_store(db),
            host=_serve.DEFAULT_HOST if host is None else host,
            port=_serve.DEFAULT_PORT if port is None else port,
            uds=uds,
            token=not no_token,
            open_browser=open_browser,
        )

    return guarded(action)


# -- create, update, enable, disable, delete, apply, export: the admin commands ----------------------------


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
            fail("--burst goes with --rate (e.g. --rate 100/min --burst 5).", EX_USAGE)
        return limit, decay
    if limit is not None or decay is not None:
        fail("--rate sets the limit and the decay: give it without --limit and --slot-decay-per-second.", EX_USAGE)
    from ._rates import parse_rate

    parsed = parse_rate(rate, burst)
    return parsed.limit, parsed.slot_decay_per_second


def _print_limit(limit: Limit) -> None:
    from ._output import print_json

    print_json(limit.to_json())


def cmd_create(
    *,
    name: str,
    limit: int | None,
    slot_decay_per_second: float | None,
    rate: str | None,
    burst: int | None,
    disable: bool,
    active_slots: int,
    output: str | None,
    db: str | None,
) -> int:
    """``gcl create``: a limit of N slots, or a rate in words."""

    def action() -> None:
        from ._limits import create_limit

        slots, decay = _rate_values(rate, burst, limit, slot_decay_per_second)
        if slots is None:
            fail("--limit N (or --rate N/UNIT) is required: gcl create NAME --limit N", EX_USAGE)
        _limit_values(slots, decay, active_slots)
        made = create_limit(name, slots, slot_decay_per_second=decay or 0.0, active=not disable,
                            active_slots=active_slots, db=db)  # fmt: skip
        if output == "json":
            _print_limit(made)
        else:
            _done(f"Created limit {name!r}: see it with gcl inspect {_q(name)}")

    return guarded(action)


def cmd_update(
    *,
    name: str,
    limit: int | None,
    slot_decay_per_second: float | None,
    rate: str | None,
    burst: int | None,
    enable: bool,
    disable: bool,
    active_slots: int | None,
    reset_stats: bool,
    output: str | None,
    db: str | None,
) -> int:
    """``gcl update``: change a limit, or zero its history."""
    if enable and disable:
        fail("Cannot enable and disable a limit at the same time.", EX_USAGE)
    active = True if enable else False if disable else None

    def action() -> None:
        from . import _limits

        slots, decay = _rate_values(rate, burst, limit, slot_decay_per_second)
        settings = not (slots is None and decay is None and active is None and active_slots is None)
        if not settings and not reset_stats:
            fail(
                "nothing to change: give --limit, --rate, --slot-decay-per-second, --enable, --disable, "
                "--active-slots or --reset-stats", EX_USAGE,
            )  # fmt: skip
        _limit_values(slots, decay, active_slots)
        if settings:
            changed = _limits.update_limit(name, limit=slots, slot_decay_per_second=decay, active=active,
                                           active_slots=active_slots, db=db)  # fmt: skip
        if reset_stats:
            changed = _limits.reset_stats(name, db=db)
        if output == "json":
            _print_limit(changed)
        else:
            _done(f"Updated limit {name!r}.")

    return guarded(action)


def cmd_toggle(*, name: str, active: bool, db: str | None) -> int:
    """``gcl enable`` (*active*) and ``gcl disable``."""
    word = "enabled" if active else "disabled"

    def action() -> None:
        from ._limits import read_limit, update_limit

        if read_limit(name, db=db).active == active:
            fail(f"Limit {name!r} is already {word}.")
        update_limit(name, active=active, db=db)
        _done(f"{word.capitalize()} limit {name!r}.")

    return guarded(action)


def cmd_delete(*, name: str, yes: bool, db: str | None, confirm: Callable[[str], bool]) -> int:
    """``gcl delete``: asks first (through *confirm*) when stdin is a terminal, unless *yes*."""

    def action() -> None:
        from ._limits import delete_limit, read_limit

        read_limit(name, db=db)
        if not yes and sys.stdin.isatty() and not confirm(f"Are you sure you want to delete limit {name!r}?"):
            fail("Deletion aborted.")
        delete_limit(name, db=db)
        _done(f"Deleted limit {name!r}.")

    return guarded(action)


def cmd_apply(
    *, file: str, dry_run: bool, check: bool, prune: bool, force: bool, output: str | None, db: str | None
) -> int:
    """``gcl apply``: make the store match a file of limits, all or nothing; print the plan."""
    if force and not prune:
        fail("--force goes with --prune.", EX_USAGE)

    def action() -> int:
        from . import _apply, _output

        source = "<stdin>" if file == "-" else file
        try:
            if file == "-":
                text = sys.stdin.read()
            else:
                with open(file, encoding="utf-8") as f:
                    text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read {source}: {getattr(exc, 'strerror', None) or exc}")
        wanted = _apply.read_file(text, source)
        commit = not (dry_run or check)
        changes = _apply.plan(open_store(db), wanted, prune=prune, force=force, commit=commit)
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

    return guarded(action)


def cmd_export(*, db: str | None) -> int:
    """``gcl export``: every limit as a file for ``gcl apply``."""

    def action() -> None:
        from . import _apply
        from ._limits import list_limits

        store = open_store(db)
        sys.stdout.write(_apply.export_text(list_limits(db=store), store.description))

    return guarded(action)


__all__ = [
    "EX_INTERRUPTED",
    "TOP_INTERVAL",
    "TOP_INTERVAL_RANGE",
    "busy_message",
    "cmd_acquire",
    "cmd_apply",
    "cmd_create",
    "cmd_delete",
    "cmd_export",
    "cmd_inspect",
    "cmd_ls",
    "cmd_metrics",
    "cmd_rate_limit",
    "cmd_release",
    "cmd_renew",
    "cmd_run",
    "cmd_serve",
    "cmd_toggle",
    "cmd_top",
    "cmd_update",
    "cmd_version",
    "fail",
    "guarded",
    "open_store",
    "unwinding_signals",
]
