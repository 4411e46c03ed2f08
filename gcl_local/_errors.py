"""The exception tree of gcl_local.

Every error the library raises on purpose derives from :class:`GclError`; no apsw type leaves
the public API. Each class carries the CLI exit code that stands for it, so that ``gcl`` maps
errors to exit codes in one place::

    GclError (exit 1)
    ├── ConcurrencySlotAcquisitionError        occupy > limit, rate limit without decay, strict + missing
    │   ├── AcquireConcurrencySlotTimeoutError  also TimeoutError; not had in time, or -n found it busy (exit 75)
    │   ├── LeaseRenewalError                   the lease could not be renewed and the block was cancelled
    │   └── InvalidArgumentError                also InvalidLimitError: a bad argument to concurrency()/rate_limit()
    ├── LimitNotFoundError                      also LookupError
    ├── LeaseNotFoundError                      also LookupError
    ├── LimitExistsError
    ├── InvalidLimitError                       also ValueError
    ├── StoreError                              the file cannot be used (corrupt, not ours, unwritable, network fs)
    │   └── NoStateFileError                    a reader found no state file (it never creates one)
    └── CommandError                            gcl run could not start the command (exit 126; 127: not found)
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: the hot path must not cost the import of typing (see _stdlib)
if TYPE_CHECKING:
    from typing import ClassVar

EX_USAGE = 2
"""A usage error: an unknown option, a value that cannot be parsed, options that exclude each other."""
EX_CHANGES_PENDING = 4
"""``gcl apply --check``: the store does not match the file yet."""
EX_TEMPFAIL = 75
"""The slots were not had in time, or ``-n`` found them busy (sysexits' EX_TEMPFAIL)."""
EX_LEASE_LOST = 76
"""``gcl run --strict`` stopped its command because the lease was lost (its renewal failed)."""


class GclError(Exception):
    """Base class of every error gcl_local raises on purpose."""

    exit_code: ClassVar[int] = 1


class ConcurrencySlotAcquisitionError(GclError):
    """Slots cannot be acquired: the request can never fit, or a named limit is missing under ``strict``."""


class AcquireConcurrencySlotTimeoutError(ConcurrencySlotAcquisitionError, TimeoutError):
    """The slots were not had within ``timeout_seconds`` or ``max_retries``, or were busy for a non-blocking try.

    ``names`` are the limits asked for and ``waited`` the seconds waited (None: not known), so that a
    message such as the CLI's can say what it gave up on.
    """

    exit_code: ClassVar[int] = EX_TEMPFAIL

    def __init__(self, message: str = "", *, names: tuple[str, ...] = (), waited: float | None = None) -> None:
        super().__init__(message)
        self.names = tuple(names)
        self.waited = waited

    def __reduce__(self) -> tuple[object, ...]:
        return (_timeout_error, (type(self), str(self), self.names, self.waited))


def _timeout_error(
    cls: type[AcquireConcurrencySlotTimeoutError], message: str, names: tuple[str, ...], waited: float | None
) -> AcquireConcurrencySlotTimeoutError:
    return cls(message, names=names, waited=waited)


class LeaseRenewalError(ConcurrencySlotAcquisitionError):
    """A held lease could not be renewed, so its slots are no longer reserved."""


class LimitNotFoundError(GclError, LookupError):
    """No limit has that name."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"Global concurrency limit {self.name!r} not found."

    def __reduce__(self) -> tuple[type[LimitNotFoundError], tuple[str]]:
        return (type(self), (self.name,))


class LeaseNotFoundError(GclError, LookupError):
    """No lease has that id."""

    def __init__(self, lease_id: str) -> None:
        super().__init__(lease_id)
        self.lease_id = lease_id

    def __str__(self) -> str:
        return f"Lease {self.lease_id!r} not found - it may have been released, expired or reclaimed."

    def __reduce__(self) -> tuple[type[LeaseNotFoundError], tuple[str]]:
        return (type(self), (self.lease_id,))


class LimitExistsError(GclError):
    """A limit of that name already exists."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"Global concurrency limit {self.name!r} already exists. Please try creating with a different name."

    def __reduce__(self) -> tuple[type[LimitExistsError], tuple[str]]:
        return (type(self), (self.name,))


class InvalidLimitError(GclError, ValueError):
    """A name or a value breaks the rules; nothing was written."""


class InvalidArgumentError(InvalidLimitError, ConcurrencySlotAcquisitionError):
    """An invalid argument to ``concurrency()`` or ``rate_limit()`` (``occupy``, ``lease_duration``, ...).

    Prefect's server refuses those with a 422, which its client raises as
    :class:`ConcurrencySlotAcquisitionError`: code that catches that around ``concurrency()`` catches
    this too, and it stays a ``ValueError``.
    """


class StoreError(GclError):
    """The state file cannot be used: corrupt, not ours, unwritable, or on a network filesystem."""


class NoStateFileError(StoreError):
    """A reader (``ls``, ``inspect``, ``top``, ``metrics``, ``serve``) found no state file: it never creates one."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path

    def __str__(self) -> str:
        return f"There is no state file yet at {self.path} (the first gcl create, gcl run or library call makes it)."

    def __reduce__(self) -> tuple[type[NoStateFileError], tuple[str]]:
        return (type(self), (self.path,))


class CommandError(GclError):
    """``gcl run`` could not start the command (exit 126, as a shell)."""

    exit_code: ClassVar[int] = 126


class CommandNotFoundError(CommandError):
    """``gcl run`` found no such command (exit 127, as a shell)."""

    exit_code: ClassVar[int] = 127


__all__ = [
    "EX_CHANGES_PENDING",
    "EX_LEASE_LOST",
    "EX_TEMPFAIL",
    "EX_USAGE",
    "CommandError",
    "CommandNotFoundError",
    "AcquireConcurrencySlotTimeoutError",
    "ConcurrencySlotAcquisitionError",
    "GclError",
    "InvalidArgumentError",
    "InvalidLimitError",
    "LeaseNotFoundError",
    "LeaseRenewalError",
    "LimitExistsError",
    "LimitNotFoundError",
    "NoStateFileError",
    "StoreError",
]
