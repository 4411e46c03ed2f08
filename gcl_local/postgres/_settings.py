"""What a ``postgresql://`` URL selects: the server (libpq's own parameters), our schema, and the
detection time S, and how each of our sessions is set up from them.

Our own parameters are URL query parameters that start with ``gcl_``; they are taken out before libpq
sees the URL (libpq refuses parameters it does not know)::

    postgresql://jobs@db.example/ops?gcl_schema=gcl_batch&gcl_detect_seconds=10

- ``gcl_schema`` (else ``$GCL_PG_SCHEMA``, else ``gcl``): the schema that holds every table; lower-case
  letters, digits and ``_``, at most 63 characters, not starting with ``pg_``.
- ``gcl_detect_seconds`` (else ``$GCL_PG_DETECT_SECONDS``, else 20; from 5 to 3600): S, the time
  within which the server ends the session of a host that died or was cut off, and so frees its slots.

Everything else is libpq's: ``PGHOST``, ``PGUSER``, ``PGPASSWORD``, ``PGSERVICE``, ``~/.pgpass`` and
service files work as for ``psql``. A password never leaves this module except to libpq:
:attr:`Settings.description` is the URL without it, and :meth:`Settings.scrub` blanks it out of any
text (a driver's message) that is about to be shown.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from .._errors import StoreError

DEFAULT_SCHEMA = "gcl"
DEFAULT_DETECT_SECONDS = 20.0
MIN_DETECT_SECONDS = 5.0
MAX_DETECT_SECONDS = 3600.0
LOCK_WAIT_SECONDS = 30
"""A writer that waited this long for the write lock reports a stuck client (as the SQLite store does)."""
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def redact(url: str) -> str:
    """*url* without its password (in the user info, or a ``password=`` query parameter)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # Where libpq ends the user info: at the first '@' before any '/'.
    stop = min((i for i in (rest.find("@"), rest.find("/")) if i >= 0), default=-1)
    if stop >= 0 and rest[stop] == "@":
        user = rest[:stop].partition(":")[0]
        rest = f"{user}@{rest[stop + 1 :]}" if user else rest[stop + 1 :]
    path, q, query = rest.partition("?")
    if q:
        kept = [p for p in query.split("&") if unquote(p.partition("=")[0]) != "password"]
        rest = path + ("?" + "&".join(kept) if kept else "")
    return f"{scheme}{sep}{rest}"


def _secrets(url: str) -> tuple[str, ...]:
    """The passwords that *url* and the environment hold, raw and decoded (for :meth:`Settings.scrub`)."""
    found: set[str] = set()
    _, sep, rest = url.partition("://")
    stop = min((i for i in (rest.find("@"), rest.find("/")) if i >= 0), default=-1)
    if sep and stop >= 0 and rest[stop] == "@":
        password = rest[:stop].partition(":")[2]
        found.update((password, unquote(password)))
    for part in rest.partition("?")[2].split("&"):
        key, _, value = part.partition("=")
        if unquote(key) == "password":
            found.update((value, unquote(value)))
    found.add(os.environ.get("PGPASSWORD", ""))
    # (Not one-letter ones: blanking every 'a' would hide the message, and libpq never quotes a password.)
    return tuple(sorted((s for s in found if len(s) >= 3), key=len, reverse=True))


def derived_key(purpose: str, schema: str) -> int:
    """A constant advisory-lock key of our own for *schema*: always negative, so it never equals a
    registration's key (always positive)."""
    digest = hashlib.blake2b(f"gcl_local {purpose} {schema}".encode(), digest_size=8).digest()
    return -(int.from_bytes(digest, "big") & (2**63 - 1)) - 1


@dataclass(frozen=True)
class Settings:
    url: str
    """The URL without our parameters: what libpq parses."""
    description: str
    schema: str
    detect_seconds: float
    conninfo: dict[str, str]
    """libpq's parameters from the URL (the environment fills in the rest at connect time)."""
    secrets: tuple[str, ...] = field(repr=False)

    @property
    def grace_seconds(self) -> float:
        """After a server restart or failover, nobody is judged dead for this long: every living client
        notices the loss (at once for a restart; within S/2 through its keepalives for a dead server),
        reconnects and takes its lock again."""
        return self.detect_seconds

    @property
    def heartbeat_seconds(self) -> float:
        """How long a holder whose session was lost waits for it to be made again before it counts its
        lease as lost (``_renewal``; it looks every quarter of that): the client's own timeout (see
        :meth:`connect_params`), this and that look together stay below the least time the server takes
        to drop a cut-off session, so a cut-off holder learns of it first. S/5: 4 s with S = 20, 1 s with
        S = 5; a server restart is over well within it."""
        return self.detect_seconds / 5

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def connect_params(self, role: str) -> dict[str, str]:
        """libpq parameters for one of our sessions; *role* is ``"token"`` (the liveness session: idle for
        ever, never in a transaction, its lock waits have no end) or ``"work"`` (transactions).

        Detection by TCP (a Unix socket needs none: a process's death closes it at once). With
        ``tcp_user_timeout`` set, Linux drops a connection at the first keepalive probe (or
        retransmission) that finds it has heard nothing for that long; only the answers to a side's *own*
        probes count as hearing (the other side's probes are old segments, dropped unread), so each side
        last heard up to one of its own idle periods before a cut:

        - the server drops a session S after it last heard (idle S/10, probes S/10 apart, at least 1 s;
          ``tcp_user_timeout`` S): between S minus that idle period and S after the cut (4 to 5 s with
          S = 5, 18 to 20 s with S = 20);
        - the client gives up at most S/4 after it last heard (idle S/10, probes S/20 apart,
          ``tcp_user_timeout`` S/4), rounded up to a probe: at most 2 s after the cut with S = 5, 5 s
          with S = 20. A holder then has :attr:`heartbeat_seconds` to get its session back, and so
          learns of its loss before the server frees its slots.

        (Measured with S = 5, tests/test_hosts.py: the server idle S/2 dropped a session as early as 3.1 s
        after a cut, while the client, idle S/4 with S/2 of user timeout, noticed only at 3.1 s; now the
        client notices within 1.9 s and the server drops at 4.2 s or later.)
        """
        s = self.detect_seconds
        params = dict(self.conninfo)
        params.setdefault("application_name", "gcl_local" if role == "work" else "gcl_local liveness")
        params.setdefault("connect_timeout", str(max(2, math.ceil(s / 2))))
        params.setdefault("keepalives", "1")
        params.setdefault("keepalives_idle", str(max(1, int(s / 10))))
        params.setdefault("keepalives_interval", str(max(1, int(s / 20))))
        params.setdefault("keepalives_count", "5")
        params.setdefault("tcp_user_timeout", str(int(s * 250)))
        params["client_encoding"] = "UTF8"
        server = {
            "search_path": "pg_catalog",
            "tcp_keepalives_idle": str(max(1, int(s / 10))),
            "tcp_keepalives_interval": str(max(1, int(s / 10))),
            "tcp_keepalives_count": "5",
            "tcp_user_timeout": str(int(s * 1000)),
            "statement_timeout": "0",
            "idle_session_timeout": "0",  # it would end an idle holder's session (and free its slots)
        }
        if role == "work":
            # Our statements are index lookups: a generic plan is right for them, and planning anew at
            # each run (which PostgreSQL may choose for a statement with an array parameter) costs more
            # than running them.
            server["plan_cache_mode"] = "force_generic_plan"
            # And plain index scans, which mark the index entries of deleted rows dead as they pass them:
            # every acquire and release inserts and deletes a lease's rows, and a bitmap scan visits each
            # dead entry again until a vacuum (measured: 1.0 ms against 0.4 ms over 5000 of them).
            server["enable_bitmapscan"] = "off"
            server["lock_timeout"] = f"{LOCK_WAIT_SECONDS}s"
            # A writer stopped inside a transaction (SIGSTOP, a debugger) holds the write lock: it loses
            # its session (and the transaction) after S, as a dead host would.
            server["idle_in_transaction_session_timeout"] = f"{int(s * 1000)}"
        else:
            server["lock_timeout"] = "0"
        options = " ".join(f"-c {k}={v}" for k, v in server.items())
        params["options"] = f"{params['options']} {options}" if params.get("options") else options
        return params


def parse(url: str) -> Settings:
    """The settings of a ``postgresql://`` or ``postgres://`` URL.

    :raises StoreError: for an unusable URL or value (the message holds no password).
    """
    description = redact(url)
    secrets = _secrets(url)
    base, q, query = url.partition("?")
    ours: dict[str, str] = {}
    kept: list[str] = []
    for part in query.split("&") if q else []:
        key = unquote(part.partition("=")[0])
        if key.startswith("gcl_"):
            ours[key] = unquote(part.partition("=")[2])
        elif part:
            kept.append(part)
    unknown = set(ours) - {"gcl_schema", "gcl_detect_seconds"}
    if unknown:
        raise StoreError(f"Unknown parameter {sorted(unknown)[0]} in the PostgreSQL URL {description}.")
    schema = ours.get("gcl_schema") or os.environ.get("GCL_PG_SCHEMA") or DEFAULT_SCHEMA
    if not _SCHEMA_NAME.fullmatch(schema) or schema.startswith("pg_"):
        raise StoreError(
            f"Invalid schema name {schema!r} for {description}: use lower-case letters, digits and _, "
            "at most 63 characters, not starting with pg_."
        )
    detect_text = ours.get("gcl_detect_seconds") or os.environ.get("GCL_PG_DETECT_SECONDS") or ""
    try:
        detect = float(detect_text) if detect_text else DEFAULT_DETECT_SECONDS
    except ValueError:
        detect = math.nan
    if not MIN_DETECT_SECONDS <= detect <= MAX_DETECT_SECONDS:
        raise StoreError(
            f"Invalid detection time {detect_text!r} for {description}: give seconds from "
            f"{MIN_DETECT_SECONDS:g} to {MAX_DETECT_SECONDS:g} (gcl_detect_seconds= or GCL_PG_DETECT_SECONDS)."
        )
    stripped = base + ("?" + "&".join(kept) if kept else "")
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo = {k: str(v) for k, v in conninfo_to_dict(stripped).items() if v is not None}
    except Exception as exc:  # psycopg.ProgrammingError; its text may quote the URL
        first = _scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, secrets)
        raise StoreError(f"Invalid PostgreSQL URL {description}: {first}") from None
    return Settings(stripped, description, schema, detect, conninfo, secrets)


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


__all__ = [
    "DEFAULT_DETECT_SECONDS",
    "DEFAULT_SCHEMA",
    "LOCK_WAIT_SECONDS",
    "MAX_DETECT_SECONDS",
    "MIN_DETECT_SECONDS",
    "Settings",
    "derived_key",
    "parse",
    "redact",
]
