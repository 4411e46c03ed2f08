"""Liveness on a PostgreSQL server: a process is alive while its *token session* holds its lock.

Each registered process opens one session that never runs a transaction and takes a session-level
advisory lock on a random positive 63-bit key: its registration is named ``pg-<key>``. The server
drops the lock when the session ends: at once when the process dies on any host (its socket closes),
and within the detection time S when its host dies or is cut off (keepalives; see ``_settings``).
Others test a registration with ``pg_try_advisory_xact_lock(key)`` on their own work connection
(never on the token session itself: a session's advisory locks are re-entrant).

``gcl run``'s command inherits the session's socket: the session, and so the lock, lasts while either
process holds the socket, as a kernel-released flock does on one host.

The same session carries every LISTEN of the process (``_wakeups``: waiters read it themselves). A
watcher thread, asleep in ``poll`` on its socket, notices a lost session (a server restart; a cut link,
through the client's keepalives within S/4): it reconnects, takes the same key again (waiting, if the server
still holds the old session, until the server lets it go: the lock passes straight to the waiting
request, so nobody sees it free in between) and LISTENs again. Meanwhile :attr:`TokenSession.held` is
False, and ``alive()`` of this registration answers None in this process: a holder whose heartbeat
finds it so must count its lease as lost (others may have reaped it once the server let it go).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import secrets
import select
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import psycopg

from .. import _process
from .._errors import StoreError
from .._threads import start_thread
from . import _sql, _wakeups
from ._wakeups import PgChannel

_TOKEN = re.compile(r"pg-([1-9][0-9]{0,18})")
_log = logging.getLogger("gcl_local")


def token_name(key: int) -> str:
    return f"pg-{key}"


def token_key(name: str) -> int | None:
    """The advisory-lock key a registration name stands for (None: not one of ours)."""
    m = _TOKEN.fullmatch(name)
    key = int(m.group(1)) if m else 0
    return key if 0 < key < 2**63 else None


def split_key(key: int) -> tuple[int, int]:
    """How ``pg_locks`` shows a bigint advisory key: ``(classid, objid)``, with ``objsubid = 1``."""
    return key >> 32, key & 0xFFFFFFFF


POOLER = (
    "{desc} looks like a connection pooler in transaction mode (PgBouncer's pool_mode=transaction): a "
    "session's advisory lock and LISTEN do not survive its transactions there, and gcl_local's liveness "
    "needs them. Connect to the server directly, or through a pool in session mode."
)


class TokenSession:
    """This process's registration on one store (a :class:`~gcl_local._backend.Registration`), and the
    session that carries its wake-up channels."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        description: str,
        error: Callable[[Exception], StoreError],
        first: psycopg.Connection[Any] | None = None,
    ) -> None:
        """*connect* makes the session again after it was lost (the watcher's own schedule retries it);
        *first*, if given, is the connection to make it on first."""
        self.pid = os.getpid()
        self._connect = connect
        self._first = first
        self._description = description
        self._error = error
        self._lock = threading.RLock()
        """Held around every use of the session's connection (the watcher thread reads it too)."""
        self._channels: dict[str, PgChannel] = {}
        self._unlisten: deque[str] = deque()
        self._numbers = itertools.count(1)
        self._threads = threading.local()
        self.closed = False
        self.held = True
        """False while the session is lost and not made again yet."""
        self.generation = 0
        """How often the session was made again."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.key = 0
        self.conn: psycopg.Connection[Any] | None = None
        self.fd = -1
        self.backend_pid = 0
        try:
            self.conn, self.key, self.backend_pid = self._open(None)
        except BaseException:
            self._close_pipes()
            raise
        self.fd = self.conn.pgconn.socket
        self._thread = start_thread(_watch, "gcl-pg-liveness", weakref.ref(self))

    # -- Registration ------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return token_name(self.key)

    def inheritable(self) -> int:
        with self._lock:
            if self.conn is None or not self.held:
                raise StoreError(f"The connection to {self._description} is lost; it is being made again.")
            return self.fd

    # -- the session -------------------------------------------------------------------------------

    def _open(self, key: int | None) -> tuple[psycopg.Connection[Any], int, int]:
        """Connect and take the lock: on a new random key (*key* None), else on *key* again, waiting for
        the server to let go of our old session if it still holds it."""
        conn, self._first = self._first or self._connect(), None
        try:
            cur = conn.cursor()
            got, backend_pid = False, 0
            if key is None:
                for _ in range(8):
                    key = 1 + secrets.randbelow(2**63 - 1)
                    got, backend_pid = cur.execute(_sql.TRY_TOKEN_LOCK, (key,)).fetchone() or (False, 0)
                    if got:
                        break
                if not got:
                    raise StoreError(f"No free liveness key on {self._description}.")
            else:
                backend_pid = (cur.execute(_sql.TOKEN_LOCK, (key,)).fetchone() or (None, 0))[1]
            assert key is not None
            # In a later transaction of the same session, the lock must show under the same backend:
            # through a transaction-mode pooler, it does not.
            visible = cur.execute(_sql.TOKEN_VISIBLE, (backend_pid, *split_key(key))).fetchone()
            if not (visible and visible[0]):
                raise StoreError(POOLER.format(desc=self._description))
            conn.add_notify_handler(lambda n: self._dispatch(n.channel, n.payload))
        except BaseException as exc:
            with contextlib.suppress(Exception):
                conn.close()
            if isinstance(exc, Exception) and _is_driver_error(exc):
                raise self._error(exc) from None
            raise
        return conn, key, int(backend_pid)

    def _dispatch(self, channel: str, payload: str) -> None:
        target = self._channels.get(channel)
        if target is not None:
            target.deliver(payload)

    def _lost_locked(self) -> None:
        """The session failed (seen by any thread, holding the lock): the watcher makes it again; until
        then no waiter polls its socket."""
        self.held = False
        for channel in list(self._channels.values()):
            channel.unbind()
        self._nudge()

    def _nudge(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"!")

    def pump(self) -> None:
        """Read what the session has: hand each notification to its channel; notice a lost session."""
        with self._lock:
            conn = self.conn
            if conn is None or not self.held or self.closed:
                return
            try:
                pgconn = conn.pgconn
                pgconn.consume_input()
                while (n := pgconn.notifies()) is not None:
                    self._dispatch(n.relname.decode("utf-8", "replace"), n.extra.decode("utf-8", "replace"))
                if pgconn.status != psycopg.pq.ConnStatus.OK:
                    raise ConnectionError
            except Exception:
                self._lost_locked()

    def poll_once(self, timeout: float | None) -> None:
        """The watcher's step: sleep until the session has something (or a nudge), then handle it.

        Where waiters read the session themselves, the watcher wakes only for its end (the server
        closed it, or the keepalives gave up), unless no channel is open."""
        if not self.held or self.conn is None:
            self._remake()
            return
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        mask = select.POLLIN
        if _wakeups.DIRECT and self._channels:
            mask = select.POLLRDHUP  # (and POLLERR, POLLHUP, which poll always reports)
        poller.register(self.fd, mask)
        events = dict(poller.poll(None if timeout is None else timeout * 1000))
        if self._wake_r in events:
            with contextlib.suppress(OSError):
                while os.read(self._wake_r, 4096):
                    pass
        if self.fd in events or not events:
            self.pump()  # (also now and then: notifications for a channel whose waiter is busy elsewhere)
        with self._lock:
            try:
                while self.conn is not None and self.held and self._unlisten:
                    name = self._unlisten.popleft()
                    if name not in self._channels:
                        self.conn.execute(_sql.unlisten(name))
            except Exception:
                self._lost_locked()

    def _remake(self) -> None:
        """Reconnect, take our key again, LISTEN again; retry until it works or the session is closed."""
        with self._lock:
            old, self.conn = self.conn, None
            self._lost_locked()  # (no channel polls the old socket: its number may be reused)
        if old is not None:
            with contextlib.suppress(Exception):
                old.close()
        delay, tries = 0.05, 0
        while not self.closed:
            tries += 1
            try:
                conn, _, backend_pid = self._open(self.key)
                with self._lock:
                    if self.closed:
                        conn.close()
                        return
                    for name in list(self._channels):
                        conn.execute(_sql.listen(name))
                    self._unlisten.clear()
                    self.conn, self.fd, self.backend_pid = conn, conn.pgconn.socket, backend_pid
                    self.held = True
                    self.generation += 1
                    channels = list(self._channels.values())
                    for channel in channels:
                        channel.bind(self.fd)
                for channel in channels:
                    channel.poke()  # wake-ups may have been missed meanwhile: look again
                _log.info("gcl_local: the session to %s was lost and is made again", self._description)
                return
            except Exception as exc:
                _log.debug("gcl_local: cannot make the session to %s again yet: %s", self._description, exc)
            self._sleep(delay)
            # Often at first: a holder waits only a heartbeat (S/5) for its session after a server restart
            # before it counts its leases as lost (_renewal), and the server is back within a second.
            delay = min(0.25 if tries < 20 else 1.0, delay * 2)

    def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(OSError):
            select.select([self._wake_r], [], [], seconds)
            while os.read(self._wake_r, 4096):
                pass

    # -- channels ----------------------------------------------------------------------------------

    def new_channel_name(self) -> str:
        # Channel names are identifiers (at most 63 bytes), per database: the key makes them ours.
        return f"gcl_{self.key:x}_{next(self._numbers)}"

    def open_channel(self, name: str) -> PgChannel:
        with self._lock:
            channel = PgChannel(self, name, self.fd if self.conn is not None and self.held else -1)
            self._channels[name] = channel  # before LISTEN: a notification may come with its reply
            if self.conn is not None and self.held:
                try:
                    self.conn.execute(_sql.listen(name))
                except Exception as exc:
                    if not _is_driver_error(exc):
                        raise
                    self._lost_locked()  # the watcher LISTENs again once the session is back
        self._nudge()  # the watcher now waits for the session's end only
        return channel

    def kept_channel(self) -> PgChannel:
        channel: PgChannel | None = getattr(self._threads, "channel", None)
        if channel is None or channel.fileno() < 0:
            channel = self.open_channel(self.new_channel_name())
            self._threads.channel = channel
        return channel

    def drop(self, channel: PgChannel) -> None:
        """A channel was closed: UNLISTEN, by the watcher (no lock is taken here: this may run in a
        finaliser, on any thread, at any moment)."""
        if self._channels.get(channel.name) is channel:
            self._channels.pop(channel.name, None)
            self._unlisten.append(channel.name)
            self._nudge()

    # -- the end -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Let the lock go and close the session (this process is done with the store)."""
        self.closed = True
        self._nudge()
        with self._lock:
            conn, self.conn = self.conn, None
            self.held = False
            channels = list(self._channels.values())
            self._channels.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()  # the session's end lets the lock go
        for channel in channels:
            channel.abandon()
        if threading.current_thread() is not self._thread:
            self._thread.join(1.0)
        self._close_pipes()

    def _close_pipes(self) -> None:
        r, w, self._wake_r, self._wake_w = self._wake_r, self._wake_w, -1, -1
        for fd in (r, w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def abandon(self) -> list[object]:
        """In a forked child: close our copies of the channels' descriptors and of our pipes, without a
        word to the server (the session is the parent's; the backend closes our copy of its socket, as
        of every connection, so that the parent's lock does not outlive the parent in us). Returns what
        must never be finalised in the child."""
        self.closed = True
        self.held = False
        for channel in list(self._channels.values()):
            channel.abandon()
        self._close_pipes()
        return [self, self.conn, *self._channels.values()]


def _watch(ref: weakref.ReferenceType[TokenSession]) -> None:
    while True:
        session = ref()
        if session is None or session.closed or session.pid != os.getpid():
            return
        try:
            # A timeout only so that a session dropped by everyone lets its thread end.
            session.poll_once(60.0)
        except Exception as exc:
            _log.debug("gcl_local: liveness watcher: %s", exc)
            time.sleep(0.1)
        del session


def _is_driver_error(exc: BaseException) -> bool:
    import psycopg

    return isinstance(exc, psycopg.Error)


def pid_alive(pid: int, pid_start: int | None, host: str) -> bool | None:
    """Whether *pid* (started at *pid_start*) on *host* lives: known only on this host."""
    if host != _process.host_name():
        return None
    return _process.pid_alive(pid, pid_start)


__all__ = ["POOLER", "TokenSession", "pid_alive", "split_key", "token_key", "token_name"]
