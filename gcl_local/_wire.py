"""The wake-up messages: what a releaser tells a waiter after its commit, and how the waiter reads it.

A waiter's channel may outlive one wait (the sync shell keeps one per thread), so every message
names the ticket it is meant for, on one line:

- ``!<ticket>``: look again (room was freed, or a moment of decay is due);
- ``?<ticket>``: you are next in line, or next but one: watch as the head does (the safety net's
  look every 0.5 s, not 2 s), though there is nothing to look at now;
- ``G<ticket>`` RS missing-names RS lease-id RS fencing-token RS names RS acquired RS expires: you
  were served, with what you need to know, so you have nothing left to read or write. Names are
  joined by US; names never hold control characters. A missing fencing token or time is empty.
"""

from __future__ import annotations

from ._model import Lease, utc
from ._request import Granted, Request, no_slot_lease
from ._stdlib import NamedTuple

GRANT_PREFIX = b"G"
POKE_PREFIX = b"!"
WATCH_PREFIX = b"?"
FIELD_SEP = "\x1e"
NAME_SEP = "\x1f"


def poke(ticket: int) -> bytes:
    return POKE_PREFIX + b"%d\n" % ticket


def watch(ticket: int) -> bytes:
    return WATCH_PREFIX + b"%d\n" % ticket


def grant(ticket: int, granted: Granted, max_message: int) -> bytes:
    """The message that hands *granted* to the waiter of *ticket* (a poke if it would be too long:
    the waiter then reads its grant from the store)."""
    lease = granted.lease
    fields = [str(ticket), NAME_SEP.join(granted.missing)]
    if lease is not None:
        fields += [
            lease.id,
            "" if lease.token is None else str(lease.token),
            NAME_SEP.join(lease.names),
            repr(lease.acquired.timestamp()) if lease.acquired else "",
            repr(lease.expires.timestamp()) if lease.expires else "",
        ]
    message = GRANT_PREFIX + FIELD_SEP.join(fields).encode() + b"\n"
    return message if len(message) <= max_message else poke(ticket)


def _split_names(text: str) -> tuple[str, ...]:
    return tuple(text.split(NAME_SEP)) if text else ()


class Heard(NamedTuple):
    """What a waiter's channel held for its ticket."""

    granted: Granted | None
    """The grant, if a releaser served us."""
    poked: bool
    """Look again now (a grant counts as a poke)."""
    watch: bool
    """We are near the head of the queue: look every 0.5 s."""


NOTHING = Heard(None, False, False)


def read(request: Request, ticket: int, data: bytes) -> Heard:
    """What our channel held for *ticket*.

    Messages for an earlier ticket of ours (a wake-up that came after that wait ended) are ignored.
    """
    poked = watch = False
    mine = b"%d" % ticket
    for line in data.split(b"\n"):
        if line.startswith(POKE_PREFIX):
            poked = poked or line[len(POKE_PREFIX) :] == mine
            continue
        if line.startswith(WATCH_PREFIX):
            watch = watch or line[len(WATCH_PREFIX) :] == mine
            continue
        if not line.startswith(GRANT_PREFIX):
            continue
        fields = line[len(GRANT_PREFIX) :].decode().split(FIELD_SEP)
        if fields[0] != str(ticket):
            continue
        missing = _split_names(fields[1])
        if request.kind == "rate" or len(fields) < 7:
            lease = None if request.kind == "rate" else no_slot_lease(request, None)
            return Heard(Granted(lease, missing), True, watch)
        lease_id, token, names, acquired, expires = fields[2:7]
        holder = request.holder
        lease = Lease(id=lease_id, token=int(token) if token else None, names=_split_names(names),
                      slots=request.occupy, pid=holder.pid, host=holder.host, user=holder.user, label=holder.label,
                      acquired=utc(float(acquired)) if acquired else None,
                      expires=utc(float(expires)) if expires else None,
                      held_by="token" if holder.registration is not None else "pid")  # fmt: skip
        return Heard(Granted(lease, missing), True, watch)
    return Heard(None, poked, watch)


__all__ = [
    "FIELD_SEP",
    "GRANT_PREFIX",
    "NAME_SEP",
    "NOTHING",
    "POKE_PREFIX",
    "WATCH_PREFIX",
    "Heard",
    "grant",
    "poke",
    "read",
    "watch",
]
