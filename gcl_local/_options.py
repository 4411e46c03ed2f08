"""The options of the commands that the small parser reads, in one table.

``gcl run``, ``rate-limit``, ``acquire``, ``renew`` and ``release`` are started by cron and scripts
many times a minute; ``ls``, ``inspect`` and ``metrics`` by people, monitors and cron. A plain
invocation of one of them is parsed by the small parser in :mod:`gcl_local._cli`, which imports
neither typer nor click. The typer app (:mod:`gcl_local._app`) declares the same commands, for
``--help`` and for every mistake, from the same table: each :class:`Option` here gives its flags,
type, default, metavar and help text to both, and ``tests/test_cli_parsers.py`` checks that the two
parse every argument list to the same call of the same command function (:mod:`gcl_local._commands`).

Defaults come from named constants, never bare literals: the lease length from :mod:`gcl_local._model`,
the busy exit code from :mod:`gcl_local._errors`.
"""

from __future__ import annotations

from ._errors import EX_TEMPFAIL
from ._model import DEFAULT_LEASE_SECONDS, MAX_LEASE_SECONDS, MIN_LEASE_SECONDS

DEFAULT_OCCUPY = 1
"""Slots taken on each named limit, as ``concurrency(occupy=1)``."""
MAX_EXIT_CODE = 255
"""The largest exit status a process can have: ``--busy-exit-code`` is 0 to this."""
OUTPUT_FORMATS = ("json",)
"""What ``-o`` accepts."""


class Option:
    """One option: the keyword of the command function it fills, its flags and how its value is read.

    ``kind`` is ``bool`` for a flag (present: True), else the type its value is converted to:
    ``int``, ``float`` or ``str``. ``choices`` and ``minimum``/``maximum`` restrict the value;
    ``envvar`` names an environment variable read when the option is not given (when not empty).
    """

    __slots__ = ("choices", "default", "dest", "envvar", "flags", "help", "kind", "maximum", "metavar", "minimum")

    def __init__(
        self,
        dest: str,
        flags: tuple[str, ...],
        kind: type,
        default: object,
        help: str,
        *,
        metavar: str | None = None,
        choices: tuple[str, ...] | None = None,
        minimum: int | None = None,
        maximum: int | None = None,
        envvar: str | None = None,
    ) -> None:
        self.dest = dest
        self.flags = flags
        self.kind = kind
        self.default = default
        self.help = help
        self.metavar = metavar
        self.choices = choices
        self.minimum = minimum
        self.maximum = maximum
        self.envvar = envvar

    def __repr__(self) -> str:
        return f"Option({'/'.join(self.flags)})"


DB = Option(
    "db", ("--db",), str, None, "State file (as gcl --db PATH; default: $GCL_DB, else per user).", metavar="PATH"
)
OCCUPY = Option("occupy", ("--occupy",), int, DEFAULT_OCCUPY, "Slots to take on each limit.", metavar="N")
TIMEOUT = Option(
    "timeout", ("--timeout",), float, None, f"Give up after SECONDS (exit {EX_TEMPFAIL}).", metavar="SECONDS"
)
NONBLOCK = Option("nonblock", ("--nonblock", "-n"), bool, False, f"Do not wait: exit {EX_TEMPFAIL} if busy.")
LEASE_DURATION = Option(
    "lease_duration",
    ("--lease-duration",),
    float,
    DEFAULT_LEASE_SECONDS,
    f"Lease length in seconds ({MIN_LEASE_SECONDS:g}-{MAX_LEASE_SECONDS:g}).",
    metavar="SECONDS",
)
STRICT = Option("strict", ("--strict",), bool, False, "Fail (exit 1) if a named limit does not exist.")
VERBOSE = Option("verbose", ("--verbose", "-v"), bool, False, "Say what we wait for, even when not on a terminal.")
BUSY_EXIT_CODE = Option(
    "busy_exit_code",
    ("--busy-exit-code",),
    int,
    EX_TEMPFAIL,
    f"Exit code when busy or timed out (0-{MAX_EXIT_CODE}).",
    metavar="CODE",
    minimum=0,
    maximum=MAX_EXIT_CODE,
)
HOLDER_PID = Option(
    "holder_pid",
    ("--holder-pid",),
    int,
    None,
    "The process that holds the slots (default: the calling script, found past subshells and wrappers such as "
    "timeout; pass $$ where it cannot be found).",
    metavar="PID",
)
OUTPUT = Option("output", ("--output", "-o"), str, None, "Print JSON: -o json.", metavar="json", choices=OUTPUT_FORMATS)
RELEASE_VERBOSE = Option("verbose", ("--verbose", "-v"), bool, False, "Say whether the lease was held.")
FILE = Option("file", ("--file", "-f"), str, None, "With -o json: write the JSON to PATH.", metavar="PATH")
TEXTFILE = Option(
    "textfile",
    ("--textfile",),
    str,
    None,
    "Write DIR/gcl.prom atomically (node_exporter's textfile collector).",
    metavar="DIR",
)

GLOBAL_DB = Option(
    "db",
    ("--db",),
    str,
    None,
    "State file (default: $GCL_DB, else $XDG_STATE_HOME/gcl_local/gcl.db).",
    metavar="PATH",
    envvar="GCL_DB",
)
VERSION = Option("version", ("--version",), bool, False, "Print the version and exit.")
GLOBAL_OPTIONS = (GLOBAL_DB, VERSION)
"""Options of ``gcl`` itself, before the command. A command's own ``--db`` wins over the global one."""

# What a command takes besides options: names and a command after --, names, one value, or nothing.
NAMES_AND_COMMAND = "names_and_command"
NAMES = "names"
ONE = "one"
NOTHING = "nothing"


class Command:
    """A command the small parser reads: the function it calls, what it takes, its options."""

    __slots__ = ("function", "options", "takes", "value")

    def __init__(self, function: str, takes: str, options: tuple[Option, ...], value: str = "") -> None:
        self.function = function
        """The name of the function in :mod:`gcl_local._commands`."""
        self.takes = takes
        self.options = options
        self.value = value
        """With ``takes=ONE``: the keyword that the one value fills."""


_WAITING = (OCCUPY, TIMEOUT, NONBLOCK)
COMMANDS = {
    "run": Command("cmd_run", NAMES_AND_COMMAND, (*_WAITING, LEASE_DURATION, STRICT, VERBOSE, BUSY_EXIT_CODE, DB)),
    "rate-limit": Command("cmd_rate_limit", NAMES_AND_COMMAND, (*_WAITING, STRICT, VERBOSE, BUSY_EXIT_CODE, DB)),
    "acquire": Command(
        "cmd_acquire", NAMES, (*_WAITING, LEASE_DURATION, HOLDER_PID, STRICT, OUTPUT, VERBOSE, BUSY_EXIT_CODE, DB)
    ),
    "renew": Command("cmd_renew", ONE, (LEASE_DURATION, OUTPUT, DB), value="lease_id"),
    "release": Command("cmd_release", ONE, (RELEASE_VERBOSE, DB), value="lease_id"),
    "ls": Command("cmd_ls", NOTHING, (OUTPUT, DB)),
    "inspect": Command("cmd_inspect", ONE, (OUTPUT, FILE, DB), value="name"),
    "metrics": Command("cmd_metrics", NOTHING, (TEXTFILE, DB)),
}
"""Every command the small parser reads; any other goes to the typer app."""

__all__ = [
    "BUSY_EXIT_CODE",
    "COMMANDS",
    "DB",
    "DEFAULT_OCCUPY",
    "FILE",
    "GLOBAL_DB",
    "GLOBAL_OPTIONS",
    "HOLDER_PID",
    "LEASE_DURATION",
    "MAX_EXIT_CODE",
    "NAMES",
    "NAMES_AND_COMMAND",
    "NONBLOCK",
    "NOTHING",
    "OCCUPY",
    "ONE",
    "OUTPUT",
    "OUTPUT_FORMATS",
    "RELEASE_VERBOSE",
    "STRICT",
    "TEXTFILE",
    "TIMEOUT",
    "VERBOSE",
    "VERSION",
    "Command",
    "Option",
]
