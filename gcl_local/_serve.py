"""``gcl serve``: a read-only local web page of every limit, with its JSON and its metrics.

Routes: ``/`` (the page, :mod:`gcl_local._serve_page`), ``/api/limits`` (what ``gcl ls -o json``
prints, plus the history read out: ages, p50/p95 wait), ``/api/limits/NAME`` (one limit; 404 when
there is none) and ``/metrics`` (what ``gcl metrics`` prints). Every answer comes from a snapshot:
the server never takes the write lock and never writes.

The state file is private, so by default every request must carry the token printed at start, as
``?token=`` or ``Authorization: Bearer``; ``--uds PATH`` listens on a Unix socket of mode 0600
instead (its permissions are the key), and ``--no-token`` drops the check on purpose. The standard
library's server, imported only by this command.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import json
import os
import secrets
import socket
import socketserver
import stat
import sys
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from . import _commands, _metrics, _serve_page
from ._backend import Backend
from ._errors import GclError, InvalidLimitError, LimitNotFoundError, NoStateFileError
from ._limits import snapshot
from ._model import Lease, Limit, validate_name

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


class ListenError(GclError):
    """``gcl serve`` cannot listen where it was asked to (port in use, address not ours, bad socket path)."""


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return max(0.0, (later - earlier).total_seconds())


def _lease_json(lease: Lease, now: datetime) -> dict[str, Any]:
    data = lease.to_json()
    data["age_seconds"] = _seconds(now, lease.acquired)
    data["expires_in_seconds"] = _seconds(lease.expires, now)
    return data


def limit_json(limit: Limit, now: datetime) -> dict[str, Any]:
    """``limit.to_json()`` (as ``gcl ls -o json``) plus what the page shows without clock arithmetic:
    ``age_seconds`` of each holder and waiter, ``expires_in_seconds`` of each holder, and ``history``
    (acquisitions, oldest wait, p50/p95 wait from the histogram)."""
    data = limit.to_json()
    data["holders"] = [_lease_json(lease, now) for lease in limit.holders]
    data["reclaimable"] = [_lease_json(lease, now) for lease in limit.reclaimable]
    for entry, waiter in zip(data["waiters"], limit.waiters, strict=True):
        entry["age_seconds"] = _seconds(now, waiter.since)
    stats = limit.stats
    data["history"] = {
        "acquisitions": None if stats is None else stats.acquisitions,
        "oldest_wait_seconds": _seconds(now, min((w.since for w in limit.waiters), default=None)),
        "wait_p50_seconds": None if stats is None else stats.wait_quantile(0.5),
        "wait_p95_seconds": None if stats is None else stats.wait_quantile(0.95),
    }
    return data


def _read(store: Backend, name: str | None = None) -> list[Limit]:
    """A snapshot; no state file yet means no limits (nothing is created)."""
    try:
        return snapshot(store, name)
    except NoStateFileError:
        if name is not None:
            raise LimitNotFoundError(name) from None
        return []
    finally:
        store.close()  # each request has a thread of its own: close its connection with it


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "gcl-serve"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection of a closed tab is let go

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _not_allowed(self) -> None:
        self._send(405, "text/plain; charset=utf-8", b"405: gcl serve is read-only (GET and HEAD).\n", True,
                   {"Allow": "GET, HEAD"})  # fmt: skip

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def _answer(self, *, body: bool) -> None:
        url = urlsplit(self.path)
        path = url.path
        is_api = path.startswith("/api/")
        if not self._host_ok():
            self._error(403, "unexpected Host header (a page of another site may not read this one)", is_api, body)
            return
        if not self._token_ok(url.query):
            self._error(403, "this gcl serve needs the token it printed at start: open its URL (…/?token=…)",
                        is_api, body)  # fmt: skip
            return
        server = self.server
        try:
            if path == "/":
                self._send(200, "text/html; charset=utf-8", _serve_page.page(str(server.store.description)), body,
                           {"Content-Security-Policy": _serve_page.CONTENT_SECURITY_POLICY})  # fmt: skip
            elif path == "/api/limits":
                now = datetime.now(timezone.utc)
                self._json(200, [limit_json(limit, now) for limit in _read(server.store)], body)
            elif path.startswith("/api/limits/"):
                name = unquote(path[len("/api/limits/") :], errors="strict")
                validate_name(name)
                limit = _read(server.store, name)[0]
                self._json(200, limit_json(limit, datetime.now(timezone.utc)), body)
            elif path == "/metrics":
                limits = _read(server.store)
                text = _metrics.exposition(limits, datetime.now(timezone.utc))
                self._send(200, _metrics.CONTENT_TYPE, text.encode("utf-8"), body)
            else:
                self._error(404, f"no such page: {path}", is_api, body)
        except (LimitNotFoundError, InvalidLimitError, UnicodeDecodeError) as exc:
            message = str(exc) if isinstance(exc, GclError) else "the name is not valid UTF-8"
            self._error(404, message, is_api, body)
        except GclError as exc:  # the state file cannot be read now (removed, corrupt, ...)
            self._error(503, str(exc), is_api, body)

    def _host_ok(self) -> bool:
        """Bound to a loopback address, answer only requests addressed to one: a web page of another
        site that renames itself to 127.0.0.1 (DNS rebinding) must not read us (matters with --no-token)."""
        if not self.server.loopback:
            return True
        host = self.headers.get("Host", "")
        host = host.rpartition("]")[0].lstrip("[") if host.startswith("[") else host.partition(":")[0]
        host = host.lower()
        return host in _LOOPBACK_NAMES or host.endswith(".localhost") or host == self.server.host.lower()

    def _token_ok(self, query: str) -> bool:
        token = self.server.token
        if token is None:
            return True
        given = parse_qs(query).get("token", [None])[-1]
        scheme, _, credentials = self.headers.get("Authorization", "").partition(" ")
        if given is None and scheme.lower() in ("bearer", "token"):
            given = credentials.strip()
        return given is not None and hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))

    def _error(self, code: int, message: str, is_api: bool, body: bool) -> None:
        if is_api:
            self._json(code, {"error": message}, body)
        else:
            self._send(code, "text/plain; charset=utf-8", f"{code}: {message}\n".encode(), body)

    def _json(self, code: int, value: Any, body: bool) -> None:
        data = json.dumps(value, ensure_ascii=False, indent=1).encode("utf-8") + b"\n"
        self._send(code, "application/json; charset=utf-8", data, body)

    def _send(self, code: int, content_type: str, data: bytes, body: bool, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a request line would print the token of the URL."""

    def version_string(self) -> str:
        return self.server_version

    def address_string(self) -> str:
        return str(self.client_address[0]) if self.client_address else "unix socket"


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a browser's open connection must not hold up the stop
    store: Backend
    token: str | None
    host: str = ""
    loopback: bool = False

    def server_bind(self) -> None:
        # HTTPServer's own would look the host up in the DNS (getfqdn), which can hang for seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A browser that went away mid-answer is no news; anything else is one line on stderr."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            sys.stderr.write(f"gcl serve: error answering a request: {type(exc).__name__}: {exc}\n")


class _UnixServer(_Server):
    address_family = socket.AF_UNIX
    socket_inode = 0

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", 0


def _family(host: str, port: int) -> socket.AddressFamily:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {host}: {exc.strerror}.") from None
    return infos[0][0]


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen_tcp(host: str, port: int) -> _Server:
    family = _family(host, port)
    server_class = type("_TCPServer", (_Server,), {"address_family": family})
    try:
        server: _Server = server_class((host, port), _Handler)
    except OSError as exc:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(f"cannot listen on {where}: the port is in use (another gcl serve? try --port 0 "
                              "for any free port).") from None  # fmt: skip
        raise ListenError(f"cannot listen on {where}: {exc.strerror or exc}.") from None
    server.host, server.loopback = host, _is_loopback(host)
    return server


def _listen_unix(path: str) -> _UnixServer:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ListenError(f"--uds {path}: {exc.strerror}.") from None
    else:
        if not stat.S_ISSOCK(mode):
            raise ListenError(f"--uds {path}: it exists and is not a socket; not replacing it.")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a socket nobody listens on any more, left by a server that was killed
        except OSError as exc:
            raise ListenError(f"--uds {path}: {exc.strerror}.") from None
        else:
            raise ListenError(f"--uds {path}: another server listens on it.")
        finally:
            probe.close()
    old_umask = os.umask(0o177)  # created 0600: nobody else may connect, not even for a moment
    try:
        server = _UnixServer(path, _Handler)  # type: ignore[arg-type]  # typeshed knows only TCP addresses
    except OSError as exc:
        raise ListenError(f"--uds {path}: {exc.strerror or exc}.") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    server.socket_inode = os.stat(path).st_ino
    return server


def _open_in_browser(url: str, secret: bool) -> str | None:
    """Open *url* in a browser, from a thread (a browser in the terminal must not keep us from
    serving it). A URL with the token is not put on the browser's command line, which every user can
    read in ``ps``: the browser opens a private file (0600, in a 0700 directory) that sends it on, as
    Jupyter does. Return that file's path (removed when the server stops)."""
    import html
    import tempfile
    import threading
    import webbrowser

    redirect = None
    target = url
    if secret:
        try:
            redirect = os.path.join(tempfile.mkdtemp(prefix="gcl-serve-"), "open.html")
            fd = os.open(redirect, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                link = html.escape(url, quote=True)
                f.write(f'<!DOCTYPE html><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={link}">'
                        f'<title>gcl serve</title><p><a href="{link}">Open gcl serve</a></p>\n')  # fmt: skip
        except OSError as exc:
            sys.stderr.write(f"gcl serve: cannot start a browser ({exc}); open the URL yourself.\n")
            return redirect
        target = "file://" + redirect

    def start() -> None:
        if not webbrowser.open(target):
            sys.stderr.write("gcl serve: no browser could be started; open the URL yourself.\n")

    # Not _threads.start_thread: the browser it starts would inherit the blocked signals.
    threading.Thread(target=start, name="gcl-serve-browser", daemon=True).start()
    return redirect


def serve(
    store: Backend,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    uds: str | None = None,
    token: bool = True,
    open_browser: bool = False,
) -> int:
    """Serve until Ctrl-C (exit 0) or SIGTERM/SIGHUP (128+N). The URL is the one line on stdout."""
    uds = None if uds is None else os.path.abspath(uds)
    redirect: str | None = None
    _read(store)  # an unusable state file is said now, in one line, before listening
    server: _Server = _listen_unix(uds) if uds is not None else _listen_tcp(host, port)
    server.store = store
    server.token = secrets.token_urlsafe(32) if token and uds is None else None
    try:
        with _commands.unwinding_signals():  # SIGTERM, SIGHUP: exit 128+N (Ctrl-C: 0, see serve())
            if uds is not None:
                url = "http://localhost/"
                sys.stdout.write(f"http+unix://{uds.replace('/', '%2F')}/\n")
                how = f"on the Unix socket {uds} (mode 0600): curl --unix-socket {uds} {url}api/limits"
            else:
                bound_host, bound_port = str(server.server_address[0]), int(server.server_address[1])
                shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bound_host, bound_host)  # noqa: S104
                url = f"http://{f'[{shown}]' if ':' in shown else shown}:{bound_port}/"
                url += f"?token={server.token}" if server.token else ""
                sys.stdout.write(url + "\n")
                how = "open the URL above" + (" (the token in it is the key)" if server.token else "")
                if server.token is None and not server.loopback:
                    how += f"; WARNING: without a token anyone who reaches {bound_host} can read it"
            sys.stdout.flush()
            sys.stderr.write(f"gcl serve: a read-only view of {store.description}; {how}. Ctrl-C stops it.\n")
            sys.stderr.flush()
            if open_browser:
                redirect = _open_in_browser(url, server.token is not None)
            server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:  # Ctrl-C is how one stops a viewer: not a failure
        return 0
    finally:
        server.server_close()
        if redirect is not None:
            import shutil

            shutil.rmtree(os.path.dirname(redirect), ignore_errors=True)
        if isinstance(server, _UnixServer) and uds is not None:
            with contextlib.suppress(OSError):
                if os.stat(uds).st_ino == server.socket_inode:  # still ours, not a newer server's
                    os.unlink(uds)
    return 0  # pragma: no cover - serve_forever returns only by an exception


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ListenError", "limit_json", "serve"]
