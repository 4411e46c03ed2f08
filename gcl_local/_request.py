"""What a caller asks for, and what the core answers: the request, its holder, and the outcome."""

from __future__ import annotations

from ._model import Lease, utc
from ._stdlib import NamedTuple

TYPE_CHECKING = False  # not typing's: the hot path must not cost the import of typing (see _stdlib)
if TYPE_CHECKING:
    from typing import Literal

    Kind = Literal["concurrency", "rate"]


class Holder(NamedTuple):
    """Who asks: the process identity recorded on its leases and tickets."""

    registration: str | None
    """Its liveness registration; None when the holder is known only by pid (``gcl acquire``)."""
    pid: int | None
    pid_start: int | None
    host: str
    user: str
    label: str


class Request(NamedTuple):
    names: tuple[str, ...]
    occupy: int
    kind: Kind
    strict: bool
    lease_duration: float
    holder: Holder
    waiter_registration: str | None = None
    """The liveness registration of the process that waits (it differs from a pid-held lease's holder)."""


class Granted(NamedTuple):
    lease: Lease | None
    """The lease (``token`` None when no slot was taken); None for a rate limit."""
    missing: tuple[str, ...] = ()


class Denied(NamedTuple):
    retry_in: float | None
    """Seconds until decay or an expiry could let the request in; None when only a release can."""
    ticket: int | None = None
    """The queue ticket the request now waits with, if it was queued."""


Outcome = Granted | Denied


def no_slot_lease(request: Request, wall: float | None) -> Lease:
    """What a request gets when every name it gave is inactive or missing: no slot, no token."""
    holder = request.holder
    return Lease(id="", token=None, names=(), slots=request.occupy, pid=holder.pid, host=holder.host,
                 user=holder.user, label=holder.label, acquired=None if wall is None else utc(wall))  # fmt: skip


__all__ = ["Denied", "Granted", "Holder", "Outcome", "Request", "no_slot_lease"]
