"""The PostgreSQL store: gcl_local for processes on many hosts (``db="postgresql://..."``).

Needs the ``postgres`` extra (psycopg 3), imported only when such a URL is used, and PostgreSQL 12
or newer (``tcp_user_timeout``).

**Selecting it.** ``postgresql://`` and ``postgres://`` URLs; libpq's environment variables, service
files and ``~/.pgpass`` work as for ``psql``. Our own settings are ``gcl_*`` query parameters, taken
out of the URL before libpq sees it:

- ``gcl_schema=NAME`` (else ``$GCL_PG_SCHEMA``, else ``gcl``): the schema that holds every table. It is
  created on first write (under an advisory lock of its own, so many processes may start at once),
  versioned in its ``meta`` table with a marker, and refused, untouched, when it is newer than this
  gcl_local or holds tables that are not ours. Nothing outside it is written.
- ``gcl_detect_seconds=S`` (else ``$GCL_PG_DETECT_SECONDS``, else 20; 5 to 3600): the detection time.

Messages name the store by the URL without its password (:attr:`PostgresBackend.description`).

**Liveness** (``_liveness``): a process is alive while its token session holds a session advisory lock
on its own random key. A process that dies frees it at once (its socket closes); a host that dies or
is cut off, within S: the server drops a session S after it last heard from it (keepalives S/10 idle
and apart; ``tcp_user_timeout`` S), which is 0.9 S to S after a cut, while the client gives up on its
side S/4 after it last heard (keepalives S/10 idle, S/20 apart; ``tcp_user_timeout`` S/4). A holder
whose session is lost waits a heartbeat (``heartbeat_seconds``, S/5) for it to be made again, and
then counts its lease as lost: so a cut-off holder learns first. With S = 20: the client at 5 s at
most, the holder gives up at 10 s at most (looking every S/20), the server at 18 to 20 s. After the
server restarts, recovers from a crash or fails over, nobody is judged dead for a grace period of S
(from the moment a write first saw the new incarnation: a number in an UNLOGGED table, which crash
recovery empties), while the living reconnect and take their locks again.

**Connections** per process: one work connection per thread that runs transactions, and one token
session per process that holds or waits (it also carries the LISTENs of its wake-ups). So 2 for a
holder or a waiter (``gcl run`` included), 1 for a reader, 1 more per extra thread: a server's
``max_connections`` (default 100, of which 3 are reserved) must cover 2 x the holders and waiters
at any moment. A transaction-mode pooler (PgBouncer ``pool_mode=transaction``) breaks session locks
and LISTEN: it is detected and refused.

**Durability.** Every write commits with ``synchronous_commit`` on (or whatever stronger level the
server asks): a grant reported to a caller survives a server crash. With asynchronous replication, a
failover may lose the last commits (grants, and fencing tokens that are then given again).
"""

from __future__ import annotations

from ._store import NoSchemaError, PostgresBackend

__all__ = ["NoSchemaError", "PostgresBackend"]
