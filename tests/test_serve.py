"""``gcl serve``: a real server in a subprocess, asked over TCP and a Unix socket, and its page
rendered by a real browser (headless Chromium)."""

from __future__ import annotations

import hashlib
import html
import http.client
import json
import os
import re
import select
import signal
import socket
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from helpers import GCL, Spawned, gcl, holding, installed_or_skip, ok, one_line_error, wait_for
from prometheus_client.parser import text_string_to_metric_families

from gcl_local import create_limit, read_limit

WEIRD = 'we"ird é 图形处理器'  # a quote, an accent, wide characters; < > & / % are refused in names
EVIL_LABEL = '<img src=x onerror="document.title=1">&amp;'


class Server:
    """A running ``gcl serve`` and the URL it printed."""

    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc, self.url = proc, url
        parts = urlsplit(url)
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.token = parts.query.removeprefix("token=")

    def get(self, path: str, *, token: bool = True, headers: dict[str, str] | None = None) -> tuple[int, Any, str]:
        """``(status, headers, body)`` of GET *path*, with the token as a query parameter by default."""
        url = self.base + path
        if token:
            url += ("&" if "?" in path else "?") + "token=" + self.token
        request = urllib.request.Request(url, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status, response.headers, response.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.headers, exc.read().decode("utf-8")

    def stop(self, sig: int) -> tuple[int, str]:
        """Send *sig*; the exit code and what it said on stderr."""
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=20)
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read()


def start(spawned: Spawned, db: str, *args: str) -> Server:
    proc = spawned.gcl(db, "serve", *args)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline().strip() if ready else ""
    if not line:
        proc.kill()
        raise AssertionError(f"gcl serve printed no URL: {proc.communicate(timeout=20)}")
    return Server(proc, line)


@pytest.fixture
def busy(db: str, spawned: Spawned) -> dict[str, int]:
    """Three limits; a holder on each of two, and a waiter queued on one: their pids."""
    create_limit("gpu", 1, db=db)
    create_limit(WEIRD, 3, db=db)
    create_limit("vendor-api", 5, slot_decay_per_second=2.0, db=db)
    holder = spawned.start(
        [*GCL, "--db", db, "run", "gpu", "--", "sleep", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    evil = spawned.start(
        [
            GCL[0],
            "-c",
            "import sys, time; from gcl_local import concurrency\n"
            "with concurrency(sys.argv[1], holder=sys.argv[2], db=sys.argv[3]): time.sleep(60)",
            WEIRD,
            EVIL_LABEL,
            db,
        ]
    )
    # (gcl run names its command's pid on the lease 0.1 s after starting it: until then, its own)
    sleeper = holding(db, "gpu", "sleep", holder).pid
    waiter = spawned.start(
        [*GCL, "--db", db, "run", "gpu", "--", "true"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(lambda: read_limit("gpu", db=db).waiters, what="the waiter")
    wait_for(lambda: read_limit(WEIRD, db=db).holders, what="the holder with a strange label")
    assert sleeper is not None
    return {"holder": sleeper, "waiter": waiter.pid, "evil": evil.pid, "gcl_run": holder.pid}


def _without_additions(limit: dict[str, Any]) -> dict[str, Any]:
    """An /api/limits entry as ``gcl ls -o json`` prints it: without what serve adds, nor the one
    counter that grows while we look (slot-seconds of the leases held now)."""
    limit = json.loads(json.dumps(limit))
    del limit["history"]
    for lease in limit["holders"] + limit["reclaimable"]:
        del lease["age_seconds"], lease["expires_in_seconds"]
    for waiter in limit["waiters"]:
        del waiter["age_seconds"]
    del limit["stats"]["slot_seconds"]
    return limit


def test_routes_need_the_token_and_serve_what_ls_and_metrics_print(
    db: str, spawned: Spawned, busy: dict[str, int]
) -> None:
    server = start(spawned, db, "--port", "0")
    assert server.url.startswith("http://127.0.0.1:")
    assert len(server.token) >= 40
    # without the token, or with a wrong one: 403 everywhere
    for path in ("/", "/api/limits", "/api/limits/gpu", "/metrics"):
        assert server.get(path, token=False)[0] == 403, path
        assert server.get(path + "?token=" + server.token[:-1] + "x", token=False)[0] == 403, path
        assert server.get(path, token=False, headers={"Authorization": "Bearer nope"})[0] == 403, path
    code, headers, body = server.get("/api/limits", token=False)
    assert "token" in json.loads(body)["error"]

    code, headers, body = server.get("/")
    assert code == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src 'sha256-" in headers["Content-Security-Policy"]
    assert "://" not in body.replace(html.escape(db), "")  # nothing fetched from elsewhere: it works offline
    assert html.escape(db, quote=True) in body

    # the same data as gcl ls -o json, plus the history read out
    code, headers, body = server.get("/api/limits", token=False, headers={"Authorization": "Bearer " + server.token})
    assert code == 200
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    served = json.loads(body)
    listed = json.loads(ok(gcl(db, "ls", "-o", "json")))
    assert [_without_additions(limit) for limit in served] == [
        {**limit, "stats": {k: v for k, v in limit["stats"].items() if k != "slot_seconds"}} for limit in listed
    ]
    gpu = next(limit for limit in served if limit["name"] == "gpu")
    assert [h["pid"] for h in gpu["holders"]] == [busy["holder"]]
    assert gpu["holders"][0]["age_seconds"] >= 0
    assert 0 < gpu["holders"][0]["expires_in_seconds"] <= 300
    assert [w["pid"] for w in gpu["waiters"]] == [busy["waiter"]]
    assert gpu["waiters"][0]["age_seconds"] >= 0
    assert gpu["history"]["oldest_wait_seconds"] >= 0
    assert gpu["history"]["acquisitions"] == 1  # the lease held now, which did not wait
    assert 0 <= gpu["history"]["wait_p50_seconds"] <= gpu["history"]["wait_p95_seconds"] <= 0.001

    # one limit, by its name quoted in the URL
    code, _, body = server.get("/api/limits/" + quote(WEIRD))
    weird = json.loads(body)
    assert code == 200
    assert weird["name"] == WEIRD
    assert weird["holders"][0]["label"] == EVIL_LABEL
    for missing in ("nope", quote("a/b", safe=""), "%ff", ""):
        code, headers, body = server.get("/api/limits/" + missing)
        assert code == 404, missing
        assert headers["Content-Type"].startswith("application/json"), missing
        assert json.loads(body)["error"], missing
    assert server.get("/nothing-here")[0] == 404

    # the metrics of gcl metrics, which a Prometheus parser reads
    code, headers, body = server.get("/metrics")
    assert code == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }
    assert values["gcl_holders", (("limit", "gpu"),)] == 1
    assert values["gcl_waiters", (("limit", "gpu"),)] == 1
    assert values["gcl_limit_slots", (("limit", WEIRD),)] == 3

    # read-only: other methods are refused
    request = urllib.request.Request(server.base + "/api/limits?token=" + server.token, method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=20)
    assert refused.value.code == 405
    refused.value.close()

    code, stderr = server.stop(signal.SIGINT)  # Ctrl-C is the way to stop it: exit 0
    assert code == 0, stderr
    assert server.token not in stderr
    assert "Traceback" not in stderr


@pytest.mark.sqlite_only("the state file is checked byte for byte (test_snapshots does it on PostgreSQL)")
def test_it_never_writes_and_needs_no_state_file(db: str, spawned: Spawned, tmp_path: Path) -> None:
    create_limit("a", 2, db=db)
    files = sorted(p.name for p in tmp_path.glob("gcl.db*") if p.is_file() and not p.name.endswith("-shm"))
    assert "gcl.db" in files

    def contents() -> dict[str, str]:
        return {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in files}

    before = contents()
    server = start(spawned, db, "--port", "0")
    for path in ("/", "/api/limits", "/api/limits/a", "/metrics") * 3:
        assert server.get(path)[0] == 200
    assert contents() == before
    assert server.stop(signal.SIGTERM)[0] == 128 + signal.SIGTERM

    missing = str(tmp_path / "nowhere" / "gcl.db")
    server = start(spawned, missing, "--port", "0")
    assert json.loads(server.get("/api/limits")[2]) == []
    assert server.get("/api/limits/a")[0] == 404
    assert all(line.startswith("#") for line in server.get("/metrics")[2].splitlines())
    assert server.stop(signal.SIGINT)[0] == 0
    assert not os.path.exists(tmp_path / "nowhere")


def test_no_token_is_a_choice_and_other_sites_are_refused(db: str, spawned: Spawned) -> None:
    create_limit("a", 1, db=db)
    server = start(spawned, db, "--port", "0", "--no-token")
    assert "token" not in server.url
    assert server.get("/api/limits", token=False)[0] == 200
    # a page of another site that points its name at 127.0.0.1 (DNS rebinding) is refused
    assert server.get("/api/limits", token=False, headers={"Host": "evil.example"})[0] == 403
    assert server.get("/api/limits", token=False, headers={"Host": "localhost:1234"})[0] == 200
    assert server.stop(signal.SIGINT)[0] == 0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=20)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(20)
        sock.connect(self.socket_path)
        self.sock = sock


def _get_unix(path: str, url: str) -> tuple[int, str]:
    connection = _UnixConnection(path)
    try:
        connection.request("GET", url)
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8")
    finally:
        connection.close()


def test_unix_socket_is_private_and_needs_no_token(db: str, spawned: Spawned, tmp_path: Path) -> None:
    create_limit("a", 1, db=db)
    path = str(tmp_path / "gcl.sock")
    server = start(spawned, db, "--uds", path)
    assert server.url == "http+unix://" + path.replace("/", "%2F") + "/"
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    code, body = _get_unix(path, "/api/limits")
    assert code == 200
    assert [limit["name"] for limit in json.loads(body)] == ["a"]
    assert _get_unix(path, "/api/limits/b")[0] == 404
    assert "gcl_limit_slots" in _get_unix(path, "/metrics")[1]
    # a second server on the same socket is refused; the first keeps it
    result = gcl(db, "serve", "--uds", path)
    assert "another server listens" in one_line_error(result)
    assert _get_unix(path, "/")[0] == 200
    code, stderr = server.stop(signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, stderr
    assert not os.path.exists(path)  # removed on the way out

    # a socket left by a killed server is replaced; a file that is no socket is not
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    server = start(spawned, db, "--uds", path)
    assert _get_unix(path, "/api/limits")[0] == 200
    assert server.stop(signal.SIGINT)[0] == 0
    Path(path).write_text("mine")
    assert "not a socket" in one_line_error(gcl(db, "serve", "--uds", path))
    assert Path(path).read_text() == "mine"


def test_flags_are_checked_before_anything_is_touched(db: str, tmp_path: Path) -> None:
    for args in (
        ["--uds", str(tmp_path / "s"), "--port", "1"],
        ["--uds", str(tmp_path / "s"), "--host", "localhost"],
        ["--uds", str(tmp_path / "s"), "--open"],
        ["--port", "65536"],
        ["--port", "-1"],
        ["--port", "http"],
        ["--host", ""],
    ):
        assert one_line_error(gcl(db, "serve", *args), 2), args
    assert os.listdir(tmp_path) == []


def test_a_port_in_use_is_one_line_and_exit_1(db: str) -> None:
    create_limit("a", 1, db=db)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(gcl(db, "serve", "--port", str(port)))
    assert f"127.0.0.1:{port}" in line
    assert "in use" in line
    assert "--port 0" in line


# -- a real browser ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    return installed_or_skip("chromium", "chromium")


def render(chromium: str, spawned: Spawned, url: str, profile: Path) -> str:
    """The DOM of *url* after its script ran, as headless Chromium dumps it."""
    browser = spawned.start(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", url],
    )  # fmt: skip
    try:
        out, err = browser.communicate(timeout=90)
    finally:
        if browser.poll() is None:
            os.killpg(browser.pid, signal.SIGKILL)
    assert browser.returncode == 0, err[-2000:]
    return out


def test_the_page_shows_limits_holders_and_waiters_in_a_browser(
    db: str, spawned: Spawned, busy: dict[str, int], chromium: str, tmp_path: Path
) -> None:
    server = start(spawned, db, "--port", "0")
    dom = render(chromium, spawned, server.url, tmp_path / "profile")
    assert "updated " in dom, dom[-3000:]  # the script ran and fetched the API
    for name in ("gpu", WEIRD, "vendor-api"):
        assert f"<bdi>{html.escape(name, quote=False)}</bdi>" in dom, name
    assert f'<td class="num pid">{busy["holder"]}</td>' in dom  # the holder of gpu, by pid
    assert f'<tr class="waiter"><td class="num">1</td><td class="num pid">{busy["waiter"]}</td>' in dom
    assert "Waiters (first come, first served)" in dom
    assert "decay 2/s" in dom
    # a label is text, never markup
    assert html.escape(EVIL_LABEL, quote=False) in dom
    assert "<img" not in dom

    # without the token the page is refused, and the browser shows why
    dom = render(chromium, spawned, server.base + "/", tmp_path / "profile")
    assert "needs the token" in dom
    assert "<bdi>" not in dom
    assert server.stop(signal.SIGINT)[0] == 0


@pytest.mark.sqlite_only("it removes the state file under the server")
def test_the_page_says_when_it_cannot_read(db: str, spawned: Spawned, chromium: str, tmp_path: Path) -> None:
    create_limit("a", 1, db=db)
    server = start(spawned, db, "--port", "0", "--no-token")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.unlink(db + suffix)
    dom = render(chromium, spawned, server.url, tmp_path / "profile")
    assert 'id="status" class="error"' in dom
    assert "not updated since" in dom
    assert server.stop(signal.SIGINT)[0] == 0


def test_help_has_an_example_and_readable_placeholders(db: str) -> None:
    text = ok(gcl(db, "serve", "--help"))
    assert re.search(r"Example: gcl serve", text)
    assert "--uds PATH" in text
    assert not re.search(r"[{}]|<[a-z\[\]|]+>", text), text
    assert re.search(r"^\s+serve\s", ok(gcl(db, "--help")), re.M)
    assert not os.path.exists(db)


def test_open_hands_the_browser_a_private_file_not_the_token(db: str, spawned: Spawned, tmp_path: Path) -> None:
    """The browser's command line is visible to every user (ps): the token must not be on it."""
    seen = tmp_path / "seen"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {seen}.arg\ncat "${{1#file://}}" > {seen}.page\n')
    browser.chmod(0o700)
    create_limit("a", 1, db=db)
    proc = spawned.start(["env", f"BROWSER={browser}", *GCL, "--db", db, "serve", "--port", "0", "--open"])
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    wait_for(lambda: os.path.exists(f"{seen}.page") and os.path.getsize(f"{seen}.page"), what="the browser")
    arg = Path(f"{seen}.arg").read_text()
    token = url.split("token=")[1]
    assert arg.startswith("file://")
    assert token not in arg
    assert html.escape(url, quote=True) in Path(f"{seen}.page").read_text()
    redirect = arg.removeprefix("file://")
    assert stat.S_IMODE(os.stat(redirect).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(redirect)).st_mode) == 0o700
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    assert not os.path.exists(os.path.dirname(redirect))  # removed when the server stops
