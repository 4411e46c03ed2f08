"""``gcl metrics``: Prometheus text format 0.0.4, checked with prometheus_client's own parser."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from helpers import Spawned, gcl, ok, one_line_error, wait_for
from prometheus_client.parser import text_string_to_metric_families

from gcl_local import concurrency, create_limit, read_limit

WEIRD = 'we"ird\\name é'


def parse(text: str) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_parse_and_say_what_happened(db: str, spawned: Spawned) -> None:
    create_limit("a", 1, db=db)
    create_limit(WEIRD, 3, slot_decay_per_second=1.0, active=False, db=db)
    with concurrency("a", db=db):
        pass
    lease_id = ok(gcl(db, "acquire", "a", "--holder-pid", str(os.getpid()))).strip()
    assert gcl(db, "run", "a", "-n", "--", "true").returncode == 75
    spawned.gcl(db, "run", "a", "--", "true")
    wait_for(lambda: read_limit("a", db=db).waiters, what="the waiter")
    text = ok(gcl(db, "metrics"))
    families = parse(text)
    kinds = {name: family.type for name, family in families.items()}  # type: ignore[attr-defined]
    assert kinds == {
        "gcl_limit_slots": "gauge",
        "gcl_limit_active": "gauge",
        "gcl_slots_in_use": "gauge",
        "gcl_holders": "gauge",
        "gcl_waiters": "gauge",
        "gcl_oldest_waiter_age_seconds": "gauge",
        "gcl_acquisitions": "counter",
        "gcl_acquire_timeouts": "counter",
        "gcl_leases_reclaimed": "counter",
        "gcl_slot_held_seconds": "counter",
        "gcl_acquire_wait_seconds": "histogram",
    }
    for family in families.values():
        assert family.documentation  # type: ignore[attr-defined]
    got = samples(text)
    a = (("limit", "a"),)
    assert got["gcl_limit_slots", a] == 1
    assert got["gcl_slots_in_use", a] == 1
    assert got["gcl_holders", a] == 1
    assert got["gcl_waiters", a] == 1
    assert got["gcl_oldest_waiter_age_seconds", a] > 0
    assert got["gcl_acquisitions_total", (("kind", "concurrency"), ("limit", "a"), ("waited", "false"))] == 2
    assert got["gcl_acquire_timeouts_total", (("limit", "a"), ("waited", "false"))] == 1
    assert got["gcl_acquire_wait_seconds_count", a] == 2
    assert got["gcl_acquire_wait_seconds_bucket", (("le", "+Inf"), ("limit", "a"))] == 2
    assert got["gcl_acquire_wait_seconds_bucket", (("le", "0.001"), ("limit", "a"))] == 2
    weird = (("limit", WEIRD),)
    assert got["gcl_limit_active", weird] == 0  # the label came back as it was, escaped on the way
    assert got["gcl_limit_slots", weird] == 3
    assert all(len(line.split(" ")) >= 2 for line in text.splitlines() if not line.startswith("#"))
    assert not any(
        line.rsplit(" ", 1)[-1].isdigit() and len(line.rsplit(" ", 1)[-1]) >= 13 for line in text.splitlines()
    )
    ok(gcl(db, "release", lease_id))


def test_textfile_is_written_atomically_for_node_exporter(db: str, tmp_path: Path) -> None:
    create_limit("a", 2, db=db)
    out = tmp_path / "collector"
    out.mkdir()
    assert ok(gcl(db, "metrics", "--textfile", str(out))) == ""
    assert os.listdir(out) == ["gcl.prom"]  # no temporary left behind
    target = out / "gcl.prom"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert samples(target.read_text())["gcl_limit_slots", (("limit", "a"),)] == 2
    first = target.stat().st_ino
    ok(gcl(db, "metrics", "--textfile", str(out)))
    assert target.stat().st_ino != first  # replaced by a rename, never rewritten in place


def test_textfile_needs_a_directory_and_nothing_is_touched(db: str, tmp_path: Path) -> None:
    result = gcl(db, "metrics", "--textfile", str(tmp_path / "missing"))
    assert "--textfile" in one_line_error(result, 2)
    assert not os.path.exists(db)


def test_metrics_of_no_state_file_are_empty_and_create_nothing(tmp_path: Path) -> None:
    db = str(tmp_path / "none.db")
    text = ok(gcl(db, "metrics"))
    assert all(line.startswith("#") for line in text.splitlines())
    assert len(parse(text)) == 11
    assert os.listdir(tmp_path) == []
