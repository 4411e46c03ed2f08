"""Wake-ups through LISTEN/NOTIFY: a waiter's channel, and what a message may hold.

Every channel of a process is a LISTEN on its token session (see ``_liveness``), so that a waiting
process needs no connection of its own for them. The session's watcher thread reads the notifications
and hands each to its channel: a message queue and a pipe whose read end is what the waiter polls
(``fileno()``). Messages are sent after the commit that decided them, all in one autocommit statement
(``Backend.wake``): a NOTIFY inside the write transaction would hold the server's global notify lock
until its commit.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from typing import Protocol

MAX_MESSAGE = 7990
"""A NOTIFY payload must be shorter than 8000 bytes; a longer message is cut to a mere poke by the core."""


class _Owner(Protocol):
    def drop(self, channel: PgChannel) -> None: ...


class PgChannel:
    """One waiter's channel: its name is LISTENed to on the token session, its messages come through a pipe."""

    __slots__ = ("__weakref__", "_messages", "_name", "_owner", "_pid", "_r", "_w")

    def __init__(self, owner: _Owner, name: str) -> None:
        self._owner = owner
        self._name = name
        self._pid = os.getpid()
        self._messages: deque[str] = deque()
        self._r, self._w = os.pipe()  # close-on-exec: a child process never holds it
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    @property
    def name(self) -> str:
        return self._name

    def fileno(self) -> int:
        return self._r

    def deliver(self, payload: str) -> None:
        """From the watcher thread: queue a message, then make the pipe readable (in that order, so a
        waiter that saw the pipe readable finds the message)."""
        self._messages.append(payload)
        self.poke()

    def poke(self) -> None:
        """Make the pipe readable with no message: look again (the session was lost and made again,
        and wake-ups may have been missed meanwhile)."""
        with contextlib.suppress(OSError):  # full (readable already) or closed
            os.write(self._w, b"!")

    def drain(self) -> bytes:
        if self._r < 0:
            return b""
        with contextlib.suppress(OSError):
            while os.read(self._r, 4096):
                pass
        out = []
        while self._messages:
            message = self._messages.popleft()
            out.append(message if message.endswith("\n") else message + "\n")
        return "".join(out).encode("utf-8", "replace")

    def close(self) -> None:
        """Stop listening; safe to call twice, and in a forked child (the channel is the parent's)."""
        r, w, self._r, self._w = self._r, self._w, -1, -1
        if r < 0 or self._pid != os.getpid():
            return
        self._owner.drop(self)
        for fd in (r, w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def abandon(self) -> None:
        """In a forked child: close our copies of the pipe, and nothing else."""
        r, w, self._r, self._w = self._r, self._w, -1, -1
        for fd in (r, w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def __del__(self) -> None:
        self.close()  # a thread's kept channel goes when the thread does


def payloads(wakes: list[tuple[str, bytes]]) -> tuple[list[str], list[str]]:
    """Channels and payloads for one ``pg_notify`` statement (messages too long to carry are left out:
    the core never makes one, and one would fail the whole statement)."""
    channels, texts = [], []
    for channel, message in wakes:
        if len(message) <= MAX_MESSAGE:
            channels.append(channel)
            texts.append(message.decode("utf-8", "replace"))
    return channels, texts


__all__ = ["MAX_MESSAGE", "PgChannel", "payloads"]
