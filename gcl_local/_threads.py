"""The helper threads gcl starts leave the process's signals to its main thread."""

from __future__ import annotations

import threading
from collections.abc import Callable

from ._stdlib import signal

_FROM_OUTSIDE = frozenset(signal.valid_signals()) - {
    signal.SIGABRT,
    signal.SIGBUS,
    signal.SIGFPE,
    signal.SIGILL,
    signal.SIGSEGV,
    signal.SIGSYS,
    signal.SIGTRAP,
}
"""Every signal but the faults, which a thread raises for itself."""


def start_thread(target: Callable[..., object], name: str, *args: object, daemon: bool = True) -> threading.Thread:
    """Start a helper thread that blocks every signal sent to the process.

    The kernel gives such a signal to any thread that does not block it. Python runs the handler in
    the main thread wherever it came, so this matters only when the main thread blocks a signal to
    take it with ``sigtimedwait`` (``gcl run``): the signal went to a helper, Python noted it for a
    handler, and ``sigtimedwait`` never saw it (a SIGTERM that never reached the command). Blocked in
    every helper, signals reach a process with helpers as they reach one without. The thread is
    started with them blocked (it inherits the mask), so there is no moment when it takes one.
    """
    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, _FROM_OUTSIDE)
    try:
        thread = threading.Thread(target=target, args=args, name=name, daemon=daemon)
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
    return thread


__all__ = ["start_thread"]
