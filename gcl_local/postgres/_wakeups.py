"""Wake-ups through LISTEN/NOTIFY: a waiter's channel, and what a message may hold.

Every channel of a process is a LISTEN on its token session (see ``_liveness``), so that a waiting
process needs no connection of its own for them. What a waiter polls (``fileno()``) is, on Linux, an
epoll instance over the session's socket and the channel's own pipe: a notification wakes the waiter
itself, which reads the session (``drain``) and keeps its own messages. Messages for other channels
that it read on the way go to their queues, and their pipes wake their waiters. (Through a thread
that read the session for everyone, a wake-up took two wake-ups of a sleeping thread: 0.3 ms more on
the machine it was measured on.) Elsewhere, the session's watcher thread reads it and every waiter
polls its pipe.

Messages go with the COMMIT of the transaction that decided them, all in one statement
(``PgTx.wake_on_commit``): the server delivers a NOTIFY at commit, and only if it commits. Its global
notify lock is then held until the commit ends, which costs nothing more here, since every write
holds the store's one write lock that long anyway; sent after the commit, the messages cost every
hand-off a round trip more.
"""

from __future__ import annotations

import contextlib
import os
import select
from collections import deque
from typing import Protocol

MAX_MESSAGE = 7990
"""A NOTIFY payload must be shorter than 8000 bytes; a longer message is cut to a mere poke by the core."""
DIRECT = hasattr(select, "epoll") and hasattr(select, "POLLRDHUP")
"""Whether waiters read the session themselves (Linux), rather than through the watcher thread."""


class _Owner(Protocol):
    def drop(self, channel: PgChannel) -> None: ...
    def pump(self) -> None: ...


class PgChannel:
    """One waiter's channel: its name is LISTENed to on the token session; its messages come through a
    queue, and a pipe says when the queue has some."""

    __slots__ = ("__weakref__", "_epoll", "_messages", "_name", "_owner", "_pid", "_r", "_socket", "_w")

    def __init__(self, owner: _Owner, name: str, socket: int) -> None:
        self._owner = owner
        self._name = name
        self._pid = os.getpid()
        self._messages: deque[str] = deque()
        self._r, self._w = os.pipe()  # close-on-exec: a child process never holds it
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._socket = -1
        self._epoll: select.epoll | None = None
        if DIRECT:
            self._epoll = select.epoll()  # close-on-exec too
            self._epoll.register(self._r, select.EPOLLIN)
            self.bind(socket)

    @property
    def name(self) -> str:
        return self._name

    def fileno(self) -> int:
        if self._r < 0:
            return -1
        return self._epoll.fileno() if self._epoll is not None else self._r

    def bind(self, socket: int) -> None:
        """Poll the session's (new) socket too (under the session's lock)."""
        if self._epoll is None or socket < 0 or self._r < 0:
            return
        self.unbind()
        with contextlib.suppress(OSError):
            self._epoll.register(socket, select.EPOLLIN)
            self._socket = socket

    def unbind(self) -> None:
        """Stop polling the session's socket: it is lost, or about to be closed (and its number reused)."""
        socket, self._socket = self._socket, -1
        if self._epoll is not None and socket >= 0:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(socket)

    def deliver(self, payload: str) -> None:
        """Queue a message, then make the pipe readable (in that order, so a waiter that saw the pipe
        readable finds the message)."""
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
        if self._epoll is not None:
            self._owner.pump()  # read the session: ours come to our queue, others' to theirs
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
        if self._r < 0 or self._pid != os.getpid():
            return
        self._owner.drop(self)
        self.abandon()

    def abandon(self) -> None:
        """Close our descriptors, and nothing else (also in a forked child: our copies)."""
        r, w, self._r, self._w = self._r, self._w, -1, -1
        epoll, self._epoll, self._socket = self._epoll, None, -1
        if epoll is not None:
            with contextlib.suppress(OSError):
                epoll.close()
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


__all__ = [
    "DIRECT",
    "MAX_MESSAGE",
    "PgChannel",
    "payloads",
]
