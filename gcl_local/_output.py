"""What the CLI prints: tables that fit 80 terminal columns, or JSON of the library's own records."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from ._model import DEFAULT_AVG_OCCUPANCY, Lease, Limit

WIDTH = 80


def width(text: str) -> int:
    """Columns *text* takes on a terminal: wide (CJK, emoji) characters take two, combining ones none."""
    if text.isascii():
        return len(text)
    import unicodedata

    total = 0
    for c in text:
        if unicodedata.combining(c) or unicodedata.category(c) in ("Mn", "Me", "Cf"):
            continue
        total += 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1
    return total


def _cut(text: str, room: int) -> str:
    """*text* cut to *room* columns, an ellipsis marking the cut."""
    if width(text) <= room:
        return text
    out, used = [], 0
    for c in text:
        w = width(c)
        if used + w > room - 1:
            break
        out.append(c)
        used += w
    return "".join(out) + "…"


def count(n: int) -> str:
    """A slot count that stays narrow: exact below a million, else 3 significant digits (1.5M, 1T)."""
    if n < 10**6:
        return str(n)
    for size, suffix in ((10**12, "T"), (10**9, "G"), (10**6, "M")):
        if n >= size:
            return f"{n / size:.3g}{suffix}"
    return str(n)  # pragma: no cover


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    return duration(max(0.0, (now - moment).total_seconds()))


def duration(seconds: float) -> str:
    """Human-sized: 850ms, 42s, 3m, 2h5m, 3d."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m"
    if seconds < 86400:
        hours, minutes = divmod(int(seconds) // 60, 60)
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    return f"{seconds // 86400:.0f}d"


def _table(rows: Sequence[Sequence[str]], headers: Sequence[str], flexible: Sequence[int] = ()) -> str:
    """A plain table (in tabulate's "simple" look) no wider than :data:`WIDTH`, measured in terminal
    columns: the *flexible* columns (names, labels, hosts) give up room, cut with an ellipsis."""
    widths = [max([width(h), *(width(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    gaps = 2 * (len(headers) - 1)
    while sum(widths) + gaps > WIDTH:
        shrinkable = [i for i in flexible if widths[i] > max(width(headers[i]), 4)]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: widths[i])
        widths[widest] -= 1

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, cell in enumerate(cells):
            text = _cut(cell, widths[i])
            parts.append(text + " " * (widths[i] - width(text)))
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def header(store: str) -> str:
    """The first line of ``ls`` and ``inspect``: which store they read (two jobs may look at different ones)."""
    if store.startswith(("postgresql://", "postgres://")):
        return f"Store: {store}"
    return f"State file: {store}"


def print_json(value: Any) -> None:
    import json  # only for -o json: `gcl ls` prints a table without it

    json.dump(value, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def limits_table(limits: Sequence[Limit]) -> str:
    from ._rates import describe_rate

    rows = [
        (
            limit.name,
            "yes" if limit.active else "no",
            f"{count(limit.active_slots)}/{count(limit.limit)}",
            describe_rate(limit.limit, limit.slot_decay_per_second),
            str(len(limit.holders)),
            str(len(limit.waiters)),
        )
        for limit in limits
    ]
    return _table(rows, ["NAME", "ACTIVE", "USED", "RATE", "HOLDERS", "WAITING"], flexible=(0, 3))


def limit_details(limit: Limit) -> str:
    from ._rates import describe_rate

    now = datetime.now(timezone.utc)
    rate = describe_rate(limit.limit, limit.slot_decay_per_second)
    if limit.slot_decay_per_second > 0 and not rate.startswith("decay"):
        rate += f" (decay {limit.slot_decay_per_second:.6g} slots/s)"
    # A limit nobody has used yet has no average: Prefect's starting value is not a measurement.
    occupancy = (
        "-"
        if limit.avg_slot_occupancy_seconds == DEFAULT_AVG_OCCUPANCY
        else (f"{limit.avg_slot_occupancy_seconds:.3g}s per slot")
    )
    lines = [
        *_wrapped("name:          ", limit.name),
        f"active:        {'yes' if limit.active else 'no'}",
        f"used:          {limit.active_slots} of {limit.limit} slots",
        f"rate:          {rate}",
        f"avg occupancy: {occupancy}",
        f"created:       {limit.created.isoformat(timespec='seconds')}",
        f"updated:       {limit.updated.isoformat(timespec='seconds')}",
        *history_lines(limit),
        "",
    ]
    if limit.holders:
        lines.append(holders_table(limit.holders, now))
    else:
        lines.append("No holders.")
    if limit.reclaimable:
        lines += [
            "",
            "Holders that died or whose lease ended (reclaimed by the next acquisition that needs the room):",
            holders_table(limit.reclaimable, now, dead=True),
        ]
    if limit.waiters:
        rows = [
            (str(w.ticket), count(w.slots), w.kind, str(w.pid or "-"), w.label, _ago(w.since, now))
            for w in limit.waiters
        ]
        lines += ["", _table(rows, ["TICKET", "SLOTS", "KIND", "PID", "LABEL", "WAITING"], flexible=(4,))]
    return "\n".join(lines)


def _wrapped(label: str, text: str) -> list[str]:
    """*label* then *text*, folded so that no line is wider than the terminal budget (in columns)."""
    room = WIDTH - len(label)
    parts, current, used = [], "", 0
    for c in text:
        w = width(c)
        if used + w > room:
            parts.append(current)
            current, used = "", 0
        current += c
        used += w
    parts.append(current)
    return [label + parts[0], *(" " * len(label) + part for part in parts[1:])]


def history_lines(limit: Limit) -> list[str]:
    """What ``inspect`` says of a limit's history: acquisitions, failures, and the waits' percentiles."""
    stats = limit.stats
    if stats is None:
        return []
    waited = stats.waited_concurrency + stats.waited_rate
    p50, p95 = stats.wait_quantile(0.5), stats.wait_quantile(0.95)
    waits = "-" if p50 is None or p95 is None else f"p50 {wait_text(p50)}, p95 {wait_text(p95)}"
    return [
        f"history:       {stats.acquisitions} acquired ({waited} waited), {stats.timeouts} timed out, "
        f"{stats.refusals} refused, {stats.reclaimed} reclaimed",
        f"waits:         {waits}; since {stats.since.isoformat(timespec='seconds')}",
    ]


def wait_text(seconds: float) -> str:
    """A wait from the histogram, short: ``0.4ms``, ``12ms``, ``3.2s``, ``>10m`` past its last bucket."""
    if seconds >= 600:
        return ">10m"
    if seconds < 0.01:
        return f"{seconds * 1000:.2g}ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    return duration(seconds) if seconds >= 60 else f"{seconds:.2g}s"


def holders_table(holders: Sequence[Lease], now: datetime, *, dead: bool = False) -> str:
    rows = []
    for lease in holders:
        left = "-" if lease.expires is None else duration(max(0.0, (lease.expires - now).total_seconds()))
        if dead:
            left = "dead" if lease.expires is None or lease.expires > now else "ended"
        elif lease.held_by == "token" and lease.expires is not None and lease.expires < now:
            left = "alive"  # a live token holder keeps its slots past the lease's end
        rows.append(
            (
                lease.id,
                count(lease.slots),
                str(lease.pid or "-"),
                lease.host,
                lease.label,
                _ago(lease.acquired, now),
                left,
            )
        )
    # Only the host and the label give up room, never the lease id: it is copied into gcl release.
    return _table(rows, ["LEASE", "SLOTS", "PID", "HOST", "LABEL", "AGE", "EXPIRES"], flexible=(3, 4))


__all__ = [
    "WIDTH",
    "count",
    "duration",
    "header",
    "history_lines",
    "holders_table",
    "limit_details",
    "limits_table",
    "print_json",
    "wait_text",
    "width",
]
