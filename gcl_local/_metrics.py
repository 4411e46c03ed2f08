"""Prometheus text exposition format (version 0.0.4) of every limit: ``gcl metrics`` and ``/metrics``.

Gauges of the moment (slots, holders, waiters) and the history kept in the store (counters and the
wait-time histogram). No timestamps: the scraper stamps them. Read from a snapshot: nothing is written.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from datetime import datetime

from ._model import WAIT_BUCKETS, Limit

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXTFILE_NAME = "gcl.prom"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{key}="{_escape_label(value)}"' for key, value in pairs) + "}"


class _Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name, self.kind, self.help = name, kind, help_text
        self.samples: list[str] = []

    def add(self, value: float, labels: Sequence[tuple[str, str]], suffix: str = "") -> None:
        self.samples.append(f"{self.name}{suffix}{_labels(labels)} {_number(value)}")

    def text(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}", *self.samples]
        return "\n".join(lines) + "\n"


def exposition(limits: Sequence[Limit], now: datetime) -> str:
    """The metrics of *limits* as read at *now*, in the text format."""
    families = {
        name: _Family(name, kind, text)
        for name, kind, text in (
            ("gcl_limit_slots", "gauge", "Slots of the limit."),
            ("gcl_limit_active", "gauge", "1 if the limit is active, 0 if it lets everything through."),
            ("gcl_slots_in_use", "gauge", "Slots not available now: held by leases plus the decaying level."),
            ("gcl_holders", "gauge", "Leases holding slots on the limit."),
            ("gcl_waiters", "gauge", "Requests waiting in the queue of the limit."),
            ("gcl_oldest_waiter_age_seconds", "gauge", "How long the oldest waiter has waited (0: none waits)."),
            ("gcl_acquisitions_total", "counter", "Slots acquired, by kind and whether the caller waited."),
            (
                "gcl_acquire_timeouts_total",
                "counter",
                "Acquisitions given up: waited=true at a timeout, waited=false refused without waiting.",
            ),
            ("gcl_leases_reclaimed_total", "counter", "Leases taken back after their holder died or expired."),
            ("gcl_slot_held_seconds_total", "counter", "Slot-seconds held by leases on the limit."),
            ("gcl_acquire_wait_seconds", "histogram", "Time from asking to getting the slots."),
        )
    }
    for limit in limits:
        name = ("limit", limit.name)
        families["gcl_limit_slots"].add(limit.limit, [name])
        families["gcl_limit_active"].add(int(limit.active), [name])
        families["gcl_slots_in_use"].add(limit.active_slots, [name])
        families["gcl_holders"].add(len(limit.holders), [name])
        families["gcl_waiters"].add(len(limit.waiters), [name])
        oldest = min((w.since for w in limit.waiters), default=None)
        age = 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
        families["gcl_oldest_waiter_age_seconds"].add(age, [name])
        stats = limit.stats
        if stats is None:
            continue
        acquisitions = families["gcl_acquisitions_total"]
        for kind, waited, value in (
            ("concurrency", "false", stats.immediate_concurrency),
            ("concurrency", "true", stats.waited_concurrency),
            ("rate", "false", stats.immediate_rate),
            ("rate", "true", stats.waited_rate),
        ):
            acquisitions.add(value, [name, ("kind", kind), ("waited", waited)])
        families["gcl_acquire_timeouts_total"].add(stats.timeouts, [name, ("waited", "true")])
        families["gcl_acquire_timeouts_total"].add(stats.refusals, [name, ("waited", "false")])
        families["gcl_leases_reclaimed_total"].add(stats.reclaimed, [name])
        families["gcl_slot_held_seconds_total"].add(stats.slot_seconds, [name])
        histogram = families["gcl_acquire_wait_seconds"]
        cumulative = 0
        for bound, count in zip((*WAIT_BUCKETS, math.inf), stats.wait_buckets, strict=True):
            cumulative += count
            histogram.add(cumulative, [name, ("le", _number(bound))], "_bucket")
        histogram.add(stats.wait_seconds_sum, [name], "_sum")
        histogram.add(cumulative, [name], "_count")
    return "".join(family.text() for family in families.values())


def write_textfile(directory: str, text: str) -> str:
    """Write *text* to ``directory/gcl.prom`` atomically (a temporary in the same directory, then a
    rename), readable by node_exporter's textfile collector; return the path."""
    target = os.path.join(directory, TEXTFILE_NAME)
    fd, temporary = tempfile.mkstemp(prefix=".gcl.prom.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), 0o644)  # node_exporter runs as another user
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    return target


__all__ = ["CONTENT_TYPE", "TEXTFILE_NAME", "exposition", "write_textfile"]
