"""The SQLite backend: the processes of one host, coordinated through one state file.

- ``_store``: the :class:`Store` (the backend): connections, short transactions, the writers'
  turnstile, liveness and wake-ups in the run directory beside the file;
- ``_sql``: every SQL statement and the schema (:class:`~gcl_local.sqlite._sql.SqliteTx`);
- ``_files``: where the file is and whether it can be used;
- ``_liveness``: flock-ed token files; ``_wakeups``: named pipes.
"""

from __future__ import annotations

from ._store import Store, get_store

__all__ = ["Store", "get_store"]
