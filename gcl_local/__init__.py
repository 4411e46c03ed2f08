"""gcl_local: named concurrency and rate limits for the processes of one machine.

Coordinated through one SQLite file, with no daemon. The API mirrors Prefect's
``prefect.concurrency.sync``; the async twins are in :mod:`gcl_local.asyncio`.
"""

from __future__ import annotations

from ._clock import FakeClock
from ._errors import (
    AcquireConcurrencySlotTimeoutError,
    ConcurrencySlotAcquisitionError,
    GclError,
    InvalidLimitError,
    LeaseNotFoundError,
    LeaseRenewalError,
    LimitExistsError,
    LimitNotFoundError,
    StoreError,
)
from ._limits import create_limit, delete_limit, list_limits, read_limit, update_limit
from ._model import Lease, Limit, Waiter
from ._shell import MissingLimitWarning
from ._store import Store
from .sync import acquire_lease, concurrency, rate_limit, release_lease, renew_lease

__version__ = "0.1.0"

__all__ = [
    "AcquireConcurrencySlotTimeoutError",
    "ConcurrencySlotAcquisitionError",
    "FakeClock",
    "GclError",
    "InvalidLimitError",
    "Lease",
    "LeaseNotFoundError",
    "LeaseRenewalError",
    "Limit",
    "LimitExistsError",
    "LimitNotFoundError",
    "MissingLimitWarning",
    "Store",
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
