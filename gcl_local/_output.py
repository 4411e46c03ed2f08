"""What the CLI prints: tables that fit 80 columns (tabulate), or JSON of the library's own records."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from ._model import Lease, Limit

WIDTH = 80


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


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


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    from tabulate import tabulate  # only the admin commands print tables: keep it off the hot path

    return str(tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True))


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def limits_table(limits: Sequence[Limit]) -> str:
    rows = [
        (
            _cut(limit.name, 24),
            "yes" if limit.active else "no",
            f"{limit.active_slots}/{limit.limit}",
            f"{limit.slot_decay_per_second:g}",
            str(len(limit.holders)),
            str(len(limit.waiters)),
        )
        for limit in limits
    ]
    return _table(rows, ["NAME", "ACTIVE", "USED", "DECAY/S", "HOLDERS", "WAITING"])


def limit_details(limit: Limit) -> str:
    now = datetime.now(timezone.utc)
    lines = [
        *_wrapped("name:          ", limit.name),
        f"active:        {'yes' if limit.active else 'no'}",
        f"used:          {limit.active_slots} of {limit.limit} slots",
        f"decay:         {limit.slot_decay_per_second:g} slots/s",
        f"avg occupancy: {limit.avg_slot_occupancy_seconds:.3g}s per slot",
        f"created:       {limit.created.isoformat(timespec='seconds')}",
        f"updated:       {limit.updated.isoformat(timespec='seconds')}",
        "",
    ]
    if limit.holders:
        lines.append(holders_table(limit.holders, now))
    else:
        lines.append("No holders.")
    if limit.waiters:
        rows = [
            (str(w.ticket), str(w.slots), w.kind, str(w.pid or "-"), _cut(w.label, 24), _ago(w.since, now))
            for w in limit.waiters
        ]
        lines += ["", _table(rows, ["TICKET", "SLOTS", "KIND", "PID", "LABEL", "WAITING"])]
    return "\n".join(lines)


def _wrapped(label: str, text: str) -> list[str]:
    """*label* then *text*, folded so that no line is wider than the terminal budget."""
    room = WIDTH - len(label)
    parts = [text[i : i + room] for i in range(0, len(text), room)] or [""]
    return [label + parts[0], *(" " * len(label) + part for part in parts[1:])]


def holders_table(holders: Sequence[Lease], now: datetime) -> str:
    rows = []
    for lease in holders:
        left = "-" if lease.expires is None else duration(max(0.0, (lease.expires - now).total_seconds()))
        if lease.held_by == "token" and lease.expires is not None and lease.expires < now:
            left = "alive"  # a live token holder keeps its slots past the lease's end
        rows.append(
            (
                lease.id,
                str(lease.slots),
                str(lease.pid or "-"),
                _cut(lease.host, 12),
                _cut(lease.label, 16),
                _ago(lease.acquired, now),
                left,
            )
        )
    return _table(rows, ["LEASE", "SLOTS", "PID", "HOST", "LABEL", "AGE", "EXPIRES"])


__all__ = ["duration", "holders_table", "limit_details", "limits_table", "print_json"]
