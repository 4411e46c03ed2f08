"""``gcl top``: one frame for scripts, and a live view tested in a real terminal (tmux)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO, Spawned, gcl, installed_or_skip, ok, wait_for

from gcl_local import create_limit, read_limit
from gcl_local._output import width

WIDE = "图形处理器"  # two columns a character


def _tmux_or_install() -> str:
    return installed_or_skip("tmux", "tmux", timeout=240)


class Terminal:
    """A tmux server of our own (its own socket), 80 x 24, killed at teardown."""

    def __init__(self, tmux: str, socket: str) -> None:
        self.base = [tmux, "-L", socket]

    def start(self, command: list[str], env: dict[str, str]) -> None:
        exports = [f"{k}={v}" for k, v in env.items()]
        subprocess.run(
            [*self.base, "new-session", "-d", "-s", "t", "-x", "80", "-y", "24", "env", *exports, *command],
            check=True,
            timeout=20,
        )

    def screen(self) -> str:
        result = subprocess.run(
            [*self.base, "capture-pane", "-p", "-t", "t"], capture_output=True, text=True, check=False
        )
        return result.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.base, "send-keys", "-t", "t", *keys], check=True, timeout=20)

    def alive(self) -> bool:
        return subprocess.run([*self.base, "has-session", "-t", "t"], capture_output=True, check=False).returncode == 0

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=20, check=False)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal(_tmux_or_install(), f"gcl-test-{os.getpid()}")
    try:
        yield term
    finally:
        term.kill()


def test_once_prints_one_frame_that_fits_80_columns(db: str) -> None:
    create_limit("alpha", 2, db=db)
    create_limit(WIDE, 1, slot_decay_per_second=0.5, db=db)
    holder = ok(gcl(db, "acquire", "alpha", "--holder-pid", str(os.getpid()))).strip()
    for args in (["top", "--once"], ["top"]):  # not a terminal: one frame either way
        out = ok(gcl(db, *args))
        assert "\x1b" not in out
        lines = out.splitlines()
        assert "alpha" in out
        assert WIDE in out
        assert "1/2" in out
        assert holder in out  # the holders of the first limit are shown below the table
        assert all(width(line) <= 80 for line in lines), [line for line in lines if width(line) > 80]
    ok(gcl(db, "release", holder))


def test_top_of_no_state_file_creates_nothing(tmp_path: Path) -> None:
    db = str(tmp_path / "none.db")
    assert "No limits yet" in ok(gcl(db, "top", "--once"))
    assert os.listdir(tmp_path) == []


def test_bad_interval_is_a_usage_error(db: str) -> None:
    result = gcl(db, "top", "--interval", "0")
    assert result.returncode == 2
    assert "--interval" in result.stderr


def test_live_view_in_a_real_terminal(db: str, terminal: Terminal, spawned: Spawned) -> None:
    create_limit("alpha", 1, db=db)
    create_limit("beta", 3, db=db)
    sleeper = spawned.sleeper()
    lease_id = ok(gcl(db, "acquire", "alpha", "--holder-pid", str(sleeper.pid))).strip()
    spawned.gcl(db, "run", "alpha", "--", "true")
    wait_for(lambda: read_limit("alpha", db=db).waiters, what="the waiter")
    env = {"PYTHONPATH": str(REPO), "TERM": "xterm-256color", "LANG": "C.UTF-8"}
    terminal.start([sys.executable, "-m", "gcl_local", "--db", db, "top", "--interval", "0.5"], env)

    def framed() -> str | None:
        shown = terminal.screen()
        return shown if "beta" in shown and "WAITING FOR" in shown else None

    screen = wait_for(framed, 30, "a frame")
    assert "alpha: 1 holding, 1 waiting" in screen
    assert lease_id in screen  # the holders of the selected limit
    assert len(screen.splitlines()) <= 24
    terminal.keys("j")
    wait_for(lambda: "beta: 0 holding, 0 waiting" in terminal.screen(), 10, "beta selected")
    terminal.keys("Up")
    wait_for(lambda: "alpha: 1 holding" in terminal.screen(), 10, "alpha selected again")
    sleeper.kill()  # the holder dies: the waiter reclaims its slot, runs, and is gone at a later refresh
    wait_for(lambda: "alpha: 0 holding, 0 waiting" in terminal.screen(), 20, "the view to follow")
    terminal.keys("q")
    deadline = time.monotonic() + 10
    while terminal.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not terminal.alive()  # q quit, and the session ended with it
