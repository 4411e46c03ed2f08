"""Several hosts on one machine: network namespaces wired to a hub that runs a PostgreSQL server.

Layout (nothing is added to the root namespace, so runs of other worktrees cannot clash with ours)::

    <prefix>hub   bridge br0 10.77.0.1/24, PostgreSQL listening there (and on its Unix socket)
      |- h0 <veth> eth0  in <prefix>h0   10.77.0.10/24
      |- h1 <veth> eth0  in <prefix>h1   10.77.0.11/24
      ...

Processes of a host reach the server at ``Hosts.url`` (TCP through their link, which ``cut`` and
``restore`` partition and heal); the test process reaches it at ``Hosts.local_url`` (its Unix
socket, which no cut affects: for setting up and inspecting). A process in a host namespace could
reach the Unix socket too (the file system is shared): hand it ``url``, never ``local_url``.

``kill(i)`` SIGKILLs every process of host *i* (and by default deletes its namespace: a dead host).
``restart_server()`` restarts PostgreSQL in the hub (``pg_ctl restart -m immediate``).
``cleanup()`` (the `hosts` fixture's finaliser) ends it all; namespaces left by a test process
that was itself killed are swept by the next ``Hosts``: their names carry the creator's pid.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PG_SERVER = REPO / "scripts" / "pg-server"
SUBNET = "10.77.0"
SERVER_ADDR = f"{SUBNET}.1"
PORT = 5432
_NAME = re.compile(r"^gcl(\d+)x(\d+)(hub|h\d+)$")
_counter = itertools.count()


def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "simulated hosts need root (ip netns add)"
    if shutil.which("ip") is None:
        return "simulated hosts need `ip` (Debian's iproute2)"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def netns_pids(ns: str) -> list[int]:
    result = _ip("netns", "pids", ns, check=False)
    return [int(p) for p in result.stdout.split()] if result.returncode == 0 else []


def _kill_all(ns: str, timeout: float = 10.0) -> None:
    """SIGKILL every process in *ns* until none is left (a process may fork meanwhile)."""
    deadline = time.monotonic() + timeout
    while pids := netns_pids(ns):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes left in {ns}: {pids}")
        time.sleep(0.01)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> None:
    """Delete the namespaces (and their servers' directories) of Hosts whose test process is gone."""
    listing = _ip("netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NAME.match(name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        with contextlib.suppress(RuntimeError):
            _kill_all(name)
        _ip("netns", "del", name, check=False)
        if m.group(3) == "hub":
            shutil.rmtree(Path(tempfile.gettempdir()) / f"{name}.d", ignore_errors=True)


class Hosts:
    def __init__(self, n: int, *, server: bool = True) -> None:
        self.prefix = f"gcl{os.getpid()}x{next(_counter)}"
        self.hub = f"{self.prefix}hub"
        self.names = [f"{self.prefix}h{i}" for i in range(n)]
        self.server_addr = SERVER_ADDR
        self.url = ""  # TCP, for the hosts' processes
        self.local_url = ""  # Unix socket, for the test process
        self.pg_dir = ""
        self.tmp = Path(tempfile.gettempdir()) / f"{self.hub}.d"
        self._made: list[str] = []
        self._procs: list[subprocess.Popen[str]] = []
        self._cut: set[int] = set()
        self.deleted: set[int] = set()
        try:
            self._wire()
            if server:
                self.start_server()
        except BaseException:
            self.cleanup()
            raise

    @classmethod
    def create_or_skip(cls, n: int = 2, *, server: bool = True) -> Hosts:
        import pytest

        reason = unavailable()
        if reason is not None:
            pytest.skip(reason)
        sweep_stale()
        try:
            return cls(n, server=server)
        except _NoServer as e:
            pytest.skip(str(e))
        except RuntimeError as e:
            if "netns" in str(e) and ("Operation not permitted" in str(e) or "Permission denied" in str(e)):
                pytest.skip(f"cannot make network namespaces here: {e}")
            raise

    def addr(self, i: int) -> str:
        return f"{SUBNET}.{10 + i}"

    def _port(self, i: int) -> str:
        return f"h{i}"

    def _wire(self) -> None:
        self.tmp.mkdir(mode=0o755)
        _ip("netns", "add", self.hub)
        self._made.append(self.hub)
        hub = ("-n", self.hub)
        _ip(*hub, "link", "set", "lo", "up")
        _ip(*hub, "link", "add", "br0", "type", "bridge")
        _ip(*hub, "addr", "add", f"{SERVER_ADDR}/24", "dev", "br0")
        _ip(*hub, "link", "set", "br0", "up")
        for i, ns in enumerate(self.names):
            _ip("netns", "add", ns)
            self._made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip(*hub, "link", "add", self._port(i), "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip(*hub, "link", "set", self._port(i), "master", "br0")
            _ip(*hub, "link", "set", self._port(i), "up")
            _ip("-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    # -- the server -------------------------------------------------------------------------------

    def start_server(self) -> None:
        env = dict(os.environ, TMPDIR=str(self.tmp))
        start = [str(PG_SERVER), "start", "--tcp", f"{SERVER_ADDR}/24", "--port", str(PORT)]
        result = subprocess.run(
            ["ip", "netns", "exec", self.hub, *start],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        if result.returncode == 3:
            raise _NoServer(result.stderr.strip())
        if result.returncode != 0:
            raise RuntimeError(f"pg-server start in {self.hub}: {result.stderr.strip()}")
        values = dict(w.split("=", 1) for w in shlex.split(result.stdout) if "=" in w)
        self.local_url = values["GCL_TEST_PG"]
        self.url = values["GCL_TEST_PG_TCP"]
        self.pg_dir = values["GCL_TEST_PG_DIR"]

    def restart_server(self, mode: str = "immediate") -> None:
        """pg_ctl restart -m *mode*, in the hub (where the server's address is)."""
        subprocess.run(
            ["ip", "netns", "exec", self.hub, str(PG_SERVER), "restart", self.pg_dir, mode],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )

    def stop_server(self) -> None:
        if self.pg_dir:
            subprocess.run([str(PG_SERVER), "stop", self.pg_dir], capture_output=True, timeout=60, check=False)
            self.pg_dir = ""

    # -- processes --------------------------------------------------------------------------------

    def argv(self, i: int, argv: Sequence[str]) -> list[str]:
        """*argv* to run inside host *i*."""
        return ["ip", "netns", "exec", self.names[i], *argv]

    def run(self, i: int, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("timeout", 60)
        kwargs.setdefault("env", _env())
        return subprocess.run(self.argv(i, argv), text=True, check=kwargs.pop("check", False), **kwargs)

    def popen(self, i: int, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start *argv* in host *i* (stdin, stdout and stderr pipes by default); killed at cleanup."""
        kwargs.setdefault("stdin", subprocess.PIPE)
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("env", _env())
        proc = subprocess.Popen(self.argv(i, argv), text=True, **kwargs)
        self._procs.append(proc)
        return proc

    def python(self, i: int, code: str, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
        """This interpreter running *code* in host *i*, with the repository on its path."""
        return self.popen(i, [sys.executable, "-c", code, *args], **kwargs)

    def pids(self, i: int) -> list[int]:
        return netns_pids(self.names[i])

    # -- faults -----------------------------------------------------------------------------------

    def cut(self, i: int) -> None:
        """Partition host *i*: its bridge port stops forwarding both ways. Its link stays up (no
        carrier loss, no error on send): its packets are lost as behind a failed switch."""
        self._cut.add(i)
        result = subprocess.run(
            ["bridge", "-n", self.hub, "link", "set", "dev", self._port(i), "state", "0"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:  # no `bridge` tool: take the hub's end of the link down instead
            _ip("-n", self.hub, "link", "set", self._port(i), "down")

    def restore(self, i: int) -> None:
        """Heal the partition of host *i*."""
        self._cut.discard(i)
        _ip("-n", self.hub, "link", "set", self._port(i), "up")
        subprocess.run(
            ["bridge", "-n", self.hub, "link", "set", "dev", self._port(i), "state", "3"],
            capture_output=True,
            timeout=30,
            check=False,
        )

    def kill(self, i: int, *, delete: bool = True) -> None:
        """SIGKILL every process of host *i*; then, by default, delete its namespace (the host is
        gone: its end of the link vanishes with it)."""
        ns = self.names[i]
        _kill_all(ns)
        for proc in self._procs:
            if proc.args[:4] == ["ip", "netns", "exec", ns]:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.communicate(timeout=10)
        if delete and i not in self.deleted:
            _ip("netns", "del", ns, check=False)
            self.deleted.add(i)

    def cleanup(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        self.stop_server()
        for ns in self._made:
            with contextlib.suppress(RuntimeError):
                _kill_all(ns)
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
                proc.communicate(timeout=10)
        for ns in reversed(self._made):
            _ip("netns", "del", ns, check=False)
        self._made.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


class _NoServer(Exception):
    """No PostgreSQL server binaries, and no way to install them."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env
