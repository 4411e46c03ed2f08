"""The ``gcl`` command: entry point, the hot commands, and the one place errors become exit codes.

``gcl run``, ``rate-limit``, ``acquire``, ``renew`` and ``release`` are started by cron and scripts
many times a minute, so a plain invocation of one of them is parsed here by a small parser that
imports nothing heavy. Everything else — the admin commands, ``--help``, and any argument the small
parser does not understand (so usage errors read the same) — goes to the typer app in ``_app``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from ._errors import EX_TEMPFAIL, EX_USAGE, AcquireConcurrencySlotTimeoutError, GclError


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
        fail("interrupted", 130)
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


# -- the hot commands --------------------------------------------------------------------------------


def _waiting_notice(names: Sequence[str], verbose: bool) -> Any:
    """After about a second of waiting, say on stderr what we wait for (only for a person, or with -v)."""
    if not (verbose or sys.stderr.isatty()):
        return None

    def notice(acquisition: Any) -> None:
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


@contextlib.contextmanager
def _unwinding_signals() -> Iterator[None]:
    """While waiting, SIGTERM and SIGHUP exit with 128+N by unwinding, so that the ticket is taken
    out of the queue on the way (their default action would kill us and leave it to be reaped).

    A signal the caller ignores (``nohup``) stays ignored. After the first one both are ignored:
    the clean-up it started must not be cut short by a second.
    """
    import signal

    caught = [sig for sig in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(sig) is not signal.SIG_IGN]

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


def cmd_run(
    names: Sequence[str],
    command: Sequence[str],
    *,
    occupy: int = 1,
    timeout: float | None = None,
    nonblock: bool = False,
    lease_duration: float = 300.0,
    strict: bool = False,
    verbose: bool = False,
    db: str | None = None,
) -> int:
    from . import _runner, _shell
    from ._backend import open_backend as get_store
    from .sync import acquire_slots

    _require_names(names, "gcl run NAME... -- COMMAND...")
    if not command:
        fail("no command given: gcl run NAME... -- COMMAND...", EX_USAGE)
    _check_values(occupy, timeout, lease_duration)
    store = get_store(db)
    request = _shell.make_request(
        store, names, occupy, "concurrency", strict=strict, lease_duration=lease_duration,
        holder=os.path.basename(command[0]),
    )  # fmt: skip
    acquisition = _shell.Acquisition(store, request)
    try:  # from before the first transaction: a signal must not strand the slots
        with _unwinding_signals():
            notice = _waiting_notice(names, verbose)
            granted = acquire_slots(store, request, timeout, 0 if nonblock else None, notice, acquisition)
        _warn_missing(granted.missing)
        assert granted.lease is not None
        if granted.lease.token is None:  # nothing to hold: run it plainly
            return _exec(command)
        return _runner.run_command(store, request, command, acquisition, granted.lease)
    finally:
        acquisition.release()


def cmd_rate_limit(
    names: Sequence[str],
    command: Sequence[str],
    *,
    occupy: int = 1,
    timeout: float | None = None,
    nonblock: bool = False,
    strict: bool = False,
    verbose: bool = False,
    db: str | None = None,
) -> int:
    from . import _shell
    from ._backend import open_backend as get_store
    from .sync import acquire_slots

    _require_names(names, "gcl rate-limit NAME... [-- COMMAND...]")
    _check_values(occupy, timeout)
    store = get_store(db)
    request = _shell.make_request(store, names, occupy, "rate", strict=strict)
    with _unwinding_signals():
        granted = acquire_slots(store, request, 0 if nonblock else timeout, None, _waiting_notice(names, verbose))
    _warn_missing(granted.missing)
    return _exec(command) if command else 0


def cmd_acquire(
    names: Sequence[str],
    *,
    occupy: int = 1,
    timeout: float | None = None,
    nonblock: bool = False,
    lease_duration: float = 300.0,
    holder_pid: int | None = None,
    strict: bool = False,
    output: str | None = None,
    verbose: bool = False,
    db: str | None = None,
) -> int:
    from . import _process, _shell
    from ._backend import open_backend as get_store
    from ._errors import ConcurrencySlotAcquisitionError
    from .sync import acquire_slots

    _check_values(occupy, timeout, lease_duration)
    pid = _holder_of_lease(holder_pid)
    store = get_store(db)
    request = _shell.make_request(
        store, names, occupy, "concurrency", strict=strict, lease_duration=lease_duration,
        holder=_program_of(pid), holder_pid=pid,
    )  # fmt: skip
    request = request._replace(waiter_registration=_shell.registration(store).name)
    holder = request.holder
    acquisition = _shell.Acquisition(store, request)
    try:  # given back if anything fails before the lease is printed: nobody else would know its id
        with _unwinding_signals():
            try:
                notice = _waiting_notice(names, verbose)
                granted = acquire_slots(store, request, timeout, 0 if nonblock else None, notice, acquisition)
            except ConcurrencySlotAcquisitionError:
                if not _process.pid_alive(pid, holder.pid_start):  # the queue dropped our ticket for it
                    _holder_gone(holder)
                raise
            lease = granted.lease
            assert lease is not None
            # A pid-held lease of a dead process would be reaped by the next look: never hand one out.
            if lease.token is not None and not _process.pid_alive(pid, holder.pid_start):
                _holder_gone(holder)
            _warn_missing(granted.missing)
            _print_lease(lease, output)
            sys.stdout.flush()  # here, not at exit: a lease id nobody read must be given back
            acquisition.disown()  # the calling script holds it now
    finally:
        acquisition.release()
    return 0


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


def _holder_gone(holder: Any) -> NoReturn:
    fail(f"the holder process {holder.pid} ({holder.label}) exited before the slots were granted; no lease taken.")


def cmd_renew(lease_id: str, *, lease_duration: float = 300.0, output: str | None = None, db: str | None = None) -> int:
    from .sync import renew_lease

    _check_values(1, None, lease_duration)
    _print_lease(renew_lease(lease_id, lease_duration, db=db), output, quiet=True)
    return 0


def cmd_release(lease_id: str, *, db: str | None = None, verbose: bool = False) -> int:
    from .sync import release_lease

    released = release_lease(lease_id, db=db)
    if verbose:
        sys.stderr.write(f"gcl: lease {lease_id} {'released' if released else 'was not held'}\n")
    return 0


def _print_lease(lease: Any, output: str | None, *, quiet: bool = False) -> None:
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
        fail(f"Cannot run {command[0]!r}: {exc.strerror}.", 127 if isinstance(exc, FileNotFoundError) else 126)


# -- the small parser for the hot path ------------------------------------------------------------------

_FLAGS = {"-n": "nonblock", "--nonblock": "nonblock", "--strict": "strict", "-v": "verbose", "--verbose": "verbose"}
_VALUES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "--occupy": ("occupy", int),
    "--timeout": ("timeout", float),
    "--lease-duration": ("lease_duration", float),
    "--holder-pid": ("holder_pid", int),
    "--busy-exit-code": ("busy_exit_code", int),
    "-o": ("output", str),
    "--output": ("output", str),
    "--db": ("db", str),
}
_ALLOWED = {
    "run": {"occupy", "timeout", "nonblock", "lease_duration", "strict", "verbose", "busy_exit_code", "db"},
    "rate-limit": {"occupy", "timeout", "nonblock", "strict", "verbose", "busy_exit_code", "db"},
    "acquire": {
        "occupy",
        "timeout",
        "nonblock",
        "lease_duration",
        "holder_pid",
        "strict",
        "output",
        "verbose",
        "busy_exit_code",
        "db",
    },
    "renew": {"lease_duration", "output", "db"},
    "release": {"db", "verbose"},
}


def parse_hot(argv: Sequence[str]) -> tuple[str, list[str], list[str], dict[str, Any]] | None:
    """``(command, positionals, after --, options)``, or None when typer should parse (and explain) it."""
    options: dict[str, Any] = {}
    args = list(argv)
    while args and args[0] == "--db" and len(args) > 1:  # the global option, before the command
        options["db"] = args[1]
        args = args[2:]
    if not args or args[0] not in _ALLOWED:
        return None
    command, rest = args[0], args[1:]
    positionals: list[str] = []
    tail: list[str] = []
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg == "--":
            tail = rest[i + 1 :]
            break
        key, _, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if arg in _FLAGS:
            options[_FLAGS[arg]] = True
        elif key in _VALUES:
            name, convert = _VALUES[key]
            if not inline:
                i += 1
                if i >= len(rest):
                    return None
                inline = rest[i]
            try:
                options[name] = convert(inline)
            except ValueError:
                return None
        elif arg.startswith("-") and arg != "-":
            return None
        else:
            positionals.append(arg)
        i += 1
    if not set(options) <= _ALLOWED[command] or not positionals:
        return None
    # Values the typer app refuses as usage errors: let it say so, in the same words.
    if options.get("output", "json") != "json" or not 0 <= options.get("busy_exit_code", 0) <= 255:
        return None
    if command in ("renew", "release") and (len(positionals) != 1 or tail):
        return None
    if command == "acquire" and tail:
        return None
    return command, positionals, tail, options


def dispatch_hot(command: str, positionals: list[str], tail: list[str], options: dict[str, Any]) -> int:
    busy = options.pop("busy_exit_code", EX_TEMPFAIL)
    if command == "run":
        return guarded(lambda: cmd_run(positionals, tail, **options), busy_exit_code=busy)
    if command == "rate-limit":
        return guarded(lambda: cmd_rate_limit(positionals, tail, **options), busy_exit_code=busy)
    if command == "acquire":
        return guarded(lambda: cmd_acquire(positionals, **options), busy_exit_code=busy)
    if command == "renew":
        return guarded(lambda: cmd_renew(positionals[0], **options))
    return guarded(lambda: cmd_release(positionals[0], **options))


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``gcl`` and ``python -m gcl_local``."""
    args = list(sys.argv[1:] if argv is None else argv)
    parsed = parse_hot(args)
    if parsed is not None:
        raise SystemExit(dispatch_hot(*parsed))
    from ._app import run_app

    run_app(args)


__all__ = ["EX_USAGE", "fail", "guarded", "main", "parse_hot"]
