"""``gcl top``: a live view of every limit, its holders and its waiters, in the terminal.

Read from snapshots (never the write lock, never a write). rich is imported here only, so no other
command pays for it. ``--once`` (or a stdout that is not a terminal) prints one frame and exits.
"""

from __future__ import annotations

import os
import select
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from ._model import Limit
from ._output import count, duration, wait_text

BAR_WIDTH = 10
RATE_WINDOW_SECONDS = 60.0


class Rates:
    """Acquisitions per minute of each limit, from the counters seen over the last minute."""

    def __init__(self) -> None:
        self.seen: dict[str, deque[tuple[float, int]]] = {}

    def update(self, limits: Sequence[Limit], at: float) -> None:
        for limit in limits:
            if limit.stats is None:
                continue
            samples = self.seen.setdefault(limit.name, deque())
            samples.append((at, limit.stats.acquisitions))
            while len(samples) > 2 and at - samples[1][0] >= RATE_WINDOW_SECONDS:
                samples.popleft()

    def per_minute(self, limit: Limit, now: datetime) -> float | None:
        samples = self.seen.get(limit.name)
        if samples and len(samples) >= 2 and samples[-1][0] - samples[0][0] >= 1.0:
            (t0, n0), (t1, n1) = samples[0], samples[-1]
            return max(0, n1 - n0) * 60.0 / (t1 - t0)
        if limit.stats is None:
            return None
        minutes = (now - limit.stats.since).total_seconds() / 60.0  # one frame: the average since
        return limit.stats.acquisitions / minutes if minutes > 0 else None


def _bar(used: int, limit: int) -> Text:
    filled = BAR_WIDTH if limit == 0 and used else round(BAR_WIDTH * min(used, limit) / limit) if limit else 0
    style = "red" if limit and used >= limit else "yellow" if limit and used * 2 >= limit else "green"
    bar = Text("█" * filled, style=style)
    bar.append("░" * (BAR_WIDTH - filled), style="dim")
    bar.append(f" {count(used)}/{count(limit)}")
    return bar


def _ago(then: datetime | None, now: datetime) -> str:
    return "-" if then is None else duration(max(0.0, (now - then).total_seconds()))


def limits_table(limits: Sequence[Limit], selected: int, rates: Rates, now: datetime) -> Table:
    table = Table(box=None, pad_edge=False, expand=True, header_style="bold", show_edge=False)
    table.add_column("NAME", ratio=1, no_wrap=True, overflow="ellipsis", min_width=6)
    table.add_column("USED", no_wrap=True)
    table.add_column("DECAY/S", justify="right", no_wrap=True)
    table.add_column("HOLD", justify="right", no_wrap=True)
    table.add_column("WAIT", justify="right", no_wrap=True)
    table.add_column("OLDEST", justify="right", no_wrap=True)
    table.add_column("ACQ/MIN", justify="right", no_wrap=True)
    table.add_column("P50", justify="right", no_wrap=True)
    table.add_column("P95", justify="right", no_wrap=True)
    for index, limit in enumerate(limits):
        stats = limit.stats
        p50 = None if stats is None else stats.wait_quantile(0.5)
        p95 = None if stats is None else stats.wait_quantile(0.95)
        rate = rates.per_minute(limit, now)
        oldest = min((w.since for w in limit.waiters), default=None)
        name = Text(limit.name if limit.active else f"{limit.name} (off)")
        table.add_row(
            name,
            _bar(limit.active_slots, limit.limit),
            f"{limit.slot_decay_per_second:.3g}" if limit.slot_decay_per_second else "-",
            str(len(limit.holders)) + (f"+{len(limit.reclaimable)}†" if limit.reclaimable else ""),
            str(len(limit.waiters)),
            _ago(oldest, now),
            "-" if rate is None else f"{rate:.3g}",
            "-" if p50 is None else wait_text(p50),
            "-" if p95 is None else wait_text(p95),
            style="reverse" if index == selected else None,
        )
    return table


def details(limit: Limit, now: datetime) -> RenderableType:
    holders = Table(box=None, pad_edge=False, expand=True, header_style="bold", show_edge=False)
    for column, ratio in (("LEASE", None), ("TOKEN", None), ("PID", None), ("HOST", 1), ("LABEL", 2)):
        holders.add_column(column, no_wrap=True, overflow="ellipsis", ratio=ratio, min_width=4 if ratio else None)
    holders.add_column("AGE", justify="right", no_wrap=True)
    holders.add_column("EXPIRES", justify="right", no_wrap=True)
    for lease, dead in [(h, False) for h in limit.holders] + [(h, True) for h in limit.reclaimable]:
        left = "-" if lease.expires is None else duration(max(0.0, (lease.expires - now).total_seconds()))
        holders.add_row(
            lease.id, str(lease.token), str(lease.pid or "-"), lease.host, lease.label, _ago(lease.acquired, now),
            "dead†" if dead else left, style="dim" if dead else None,
        )  # fmt: skip
    waiters = Table(box=None, pad_edge=False, expand=True, header_style="bold", show_edge=False)
    waiters.add_column("#", justify="right", no_wrap=True)
    waiters.add_column("PID", no_wrap=True)
    waiters.add_column("LABEL", ratio=1, no_wrap=True, overflow="ellipsis", min_width=4)
    waiters.add_column("SLOTS", justify="right", no_wrap=True)
    waiters.add_column("WAITING FOR", justify="right", no_wrap=True)
    for position, waiter in enumerate(limit.waiters, 1):
        waiters.add_row(
            str(position), str(waiter.pid or "-"), waiter.label, count(waiter.slots), _ago(waiter.since, now)
        )
    title = Text(f"{limit.name}: ", style="bold", no_wrap=True, overflow="ellipsis")
    title.append(f"{len(limit.holders)} holding, {len(limit.waiters)} waiting", style="not bold")
    parts: list[RenderableType] = [title]
    parts += [holders] if limit.holders or limit.reclaimable else [Text("No holders.", style="dim")]
    parts += [waiters] if limit.waiters else [Text("No waiters.", style="dim")]
    return Group(*parts)


def frame(path: str, limits: Sequence[Limit], selected: int, rates: Rates, live: bool) -> RenderableType:
    now = datetime.now(timezone.utc)
    head = Text(f"gcl top  {path}", style="bold", no_wrap=True, overflow="ellipsis")
    keys = "  j/k or ↑/↓ select, q quits" if live else ""
    head.append(f"  {now.astimezone().strftime('%H:%M:%S')}{keys}", style="dim")
    if not limits:
        return Group(head, Text("No limits yet: gcl create NAME --limit N"))
    parts: list[RenderableType] = [head, limits_table(limits, selected, rates, now), Text("")]
    parts.append(details(limits[selected], now))
    if any(limit.reclaimable for limit in limits):
        parts.append(Text("† holder dead or lease ended: reclaimed by the next acquisition that needs the room", "dim"))
    return Group(*parts)


def run(path: str, read: Callable[[], list[Limit]], interval: float, once: bool) -> None:
    """Show the limits that *read* returns: once, or every *interval* seconds until ``q``."""
    rates = Rates()
    if once or not (sys.stdout.isatty() and sys.stdin.isatty()):
        limits = read()
        rates.update(limits, time.monotonic())
        width = os.get_terminal_size().columns if sys.stdout.isatty() else 80
        Console(width=width, highlight=False).print(frame(path, limits, 0, rates, live=False))
        return
    import termios
    import tty

    from rich.live import Live

    console = Console(highlight=False)
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    selected = 0
    try:
        tty.setcbreak(fd)
        with Live(console=console, screen=True, auto_refresh=False) as live:
            next_read = 0.0
            shown: list[Limit] = []
            while True:
                if time.monotonic() >= next_read:
                    shown = read()
                    rates.update(shown, time.monotonic())
                    next_read = time.monotonic() + interval
                selected = max(0, min(selected, len(shown) - 1))
                live.update(frame(path, shown, selected, rates, live=True), refresh=True)
                ready, _, _ = select.select([fd], [], [], max(0.0, next_read - time.monotonic()))
                if not ready:
                    continue
                keys = os.read(fd, 32).decode(errors="replace")
                if "q" in keys or "Q" in keys:
                    return
                if keys in ("j", "\x1b[B", "\x1bOB"):
                    selected += 1
                elif keys in ("k", "\x1b[A", "\x1bOA"):
                    selected -= 1
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


__all__ = [
    "BAR_WIDTH",
    "RATE_WINDOW_SECONDS",
    "Rates",
    "details",
    "frame",
    "limits_table",
    "run",
]
