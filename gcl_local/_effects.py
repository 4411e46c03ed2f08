"""Running the core's work: one write transaction, then what it left to do after its commit.

The core's transactions never touch a channel or a file: they note whom to wake and which dead
registrations to forget in an :class:`Effects`, and :func:`transact` carries them out once the
transaction has committed (a woken waiter must find the grant already there).
"""

from __future__ import annotations

import os

from . import _wire

_sched_yield = getattr(os, "sched_yield", None)

TYPE_CHECKING = False  # not typing's: the hot path must not cost the import of typing (see _stdlib)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    from ._backend import Backend, Tx
    from ._request import Granted

    T = TypeVar("T")


class Effects:
    """What a transaction leaves to do after its commit: waiters to wake, registrations to forget."""

    __slots__ = ("dead_registrations", "max_message", "vacated", "wakes")

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self.wakes: list[tuple[str, bytes]] = []
        self.dead_registrations: set[str] = set()
        self.vacated: set[str] = set()
        """Names whose queues lost tickets in ways a scan of the queue does not follow (reaped waiters,
        tickets on several names): their first waiters are told at the end of the transaction."""

    def poke(self, channel: str, ticket: int) -> None:
        self.wakes.append((channel, _wire.poke(ticket)))

    def watch(self, channel: str, ticket: int) -> None:
        message = (channel, _wire.watch(ticket))
        if message not in self.wakes:  # (told once, however many of its queues moved)
            self.wakes.append(message)

    def hand_over(self, channel: str, ticket: int, granted: Granted) -> None:
        self.wakes.append((channel, _wire.grant(ticket, granted, self.max_message)))


def _yield_to_woken() -> None:
    """Let a woken waiter run now. The kernel tends to queue a woken process on the waker's CPU, where
    it waits until the waker sleeps or is preempted: 0.45 ms of the SQLite hand-off's 1.5 ms went
    there (scenario 3: B woken 1.40 ms after A's block ended, A's release call 0.94 ms)."""
    if _sched_yield is not None:
        _sched_yield()


def transact(backend: Backend, fn: Callable[..., T], *args: object, blocking: bool = True, durable: bool = False) -> T:
    """Run ``fn(tx, effects, *args)`` in one write transaction, then wake whom it served."""
    effects = Effects(backend.max_message)

    def work(tx: Tx) -> T:
        # A backend may run it again when its first run was rolled back (a server that restarted
        # meanwhile): what that run left to do is void.
        effects.wakes.clear()
        effects.dead_registrations.clear()
        effects.vacated.clear()
        result = fn(tx, effects, *args)
        if effects.vacated:  # (rare: waiters were reaped, or a ticket on several names left)
            from ._admission import tell_vacated

            tell_vacated(tx, effects)
        if effects.wakes and tx.wake_on_commit(effects.wakes):
            effects.wakes.clear()  # they go with the commit
        return result

    result = backend.write(work, blocking=blocking, durable=durable)
    if effects.wakes:
        backend.wake(effects.wakes)
        _yield_to_woken()
    if effects.dead_registrations:
        backend.forget(effects.dead_registrations)
    return result


__all__ = ["Effects", "transact"]
