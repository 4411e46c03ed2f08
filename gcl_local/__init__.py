"""gcl_local: named concurrency and rate limits for the processes of one machine.

Coordinated through one SQLite file, with no daemon. The API mirrors Prefect's
``prefect.concurrency.sync``; the async twins are in :mod:`gcl_local.asyncio`.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: `import gcl_local` must not cost the import of typing
if TYPE_CHECKING:
    from typing import Any

    from ._errors import (
        AcquireConcurrencySlotTimeoutError,
        ConcurrencySlotAcquisitionError,
        GclError,
        InvalidArgumentError,
        InvalidLimitError,
        LeaseNotFoundError,
        LeaseRenewalError,
        LimitExistsError,
        LimitNotFoundError,
        StoreError,
    )
    from ._limits import create_limit, delete_limit, list_limits, read_limit, update_limit
    from ._model import Lease, Limit, Stats, Waiter
    from ._shell import MissingLimitWarning
    from .sync import acquire_lease, concurrency, rate_limit, release_lease, renew_lease

# Names are loaded on first use (PEP 562): `gcl run`, started by cron every minute, imports only
# what it needs, while `from gcl_local import concurrency` works as usual.
_HOMES = {
    "AcquireConcurrencySlotTimeoutError": "_errors",
    "ConcurrencySlotAcquisitionError": "_errors",
    "GclError": "_errors",
    "InvalidArgumentError": "_errors",
    "InvalidLimitError": "_errors",
    "LeaseNotFoundError": "_errors",
    "LeaseRenewalError": "_errors",
    "LimitExistsError": "_errors",
    "LimitNotFoundError": "_errors",
    "StoreError": "_errors",
    "create_limit": "_limits",
    "delete_limit": "_limits",
    "list_limits": "_limits",
    "read_limit": "_limits",
    "update_limit": "_limits",
    "Lease": "_model",
    "Limit": "_model",
    "Stats": "_model",
    "Waiter": "_model",
    "MissingLimitWarning": "_shell",
    "acquire_lease": "sync",
    "concurrency": "sync",
    "rate_limit": "sync",
    "release_lease": "sync",
    "renew_lease": "sync",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'gcl_local' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"gcl_local.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__version__ = "0.1.0"
"""The version of gcl_local: written here only (pyproject.toml reads it; ``gcl --version`` prints it)."""

__all__ = [
    "AcquireConcurrencySlotTimeoutError",
    "ConcurrencySlotAcquisitionError",
    "GclError",
    "InvalidArgumentError",
    "InvalidLimitError",
    "Lease",
    "LeaseNotFoundError",
    "LeaseRenewalError",
    "Limit",
    "LimitExistsError",
    "LimitNotFoundError",
    "MissingLimitWarning",
    "Stats",
    "StoreError",
    "Waiter",
    "__version__",
    "acquire_lease",
    "concurrency",
    "create_limit",
    "delete_limit",
    "list_limits",
    "rate_limit",
    "read_limit",
    "release_lease",
    "renew_lease",
    "update_limit",
]
