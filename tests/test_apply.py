"""Limits as code (issue 14, item 1): ``gcl apply FILE`` and ``gcl export``, as a user runs them."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import Spawned, env, gcl, holding, is_postgres, ok, one_line_error

from gcl_local import create_limit, delete_limit, list_limits, read_limit, update_limit

SHELLS = [shell for shell in ("bash", "dash") if shutil.which(shell)]

FILE = """\
# the limits of this host
[limits.nightly-db]
limit = 2

[limits.vendor-api]
rate = "300/min"      # or limit + slot_decay_per_second
burst = 10
active = true

[limits."a b"]
limit = 1
active = false
"""


def write(tmp_path: Path, text: str, name: str = "limits.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def state(db: str) -> list[tuple[str, int, float, bool]]:
    return [(lim.name, lim.limit, round(lim.slot_decay_per_second, 9), lim.active) for lim in list_limits(db=db)]


def test_dry_run_check_apply_then_check_again(db: str, tmp_path: Path) -> None:
    path = write(tmp_path, FILE)
    plan = (
        "+ create    'nightly-db': limit 2\n"
        "+ create    'vendor-api': rate 300/min, burst 10\n"
        "+ create    'a b': limit 1, inactive\n"
        "Plan: 3 to create, 0 to update, 0 to delete, 0 unchanged.\n"
    )
    dry = gcl(db, "apply", path, "--dry-run")
    assert ok(dry) == plan + "Dry run: nothing changed.\n"
    check = gcl(db, "apply", "--check", path)
    assert check.returncode == 4
    assert check.stdout == plan
    assert state(db) == []
    assert ok(gcl(db, "apply", path)) == plan + "Applied.\n"
    assert state(db) == [("a b", 1, 0.0, False), ("nightly-db", 2, 0.0, True), ("vendor-api", 10, 4.85, True)]
    again = gcl(db, "apply", path, "--check")
    assert ok(again) == (
        "= unchanged 'nightly-db': limit 2\n"
        "= unchanged 'vendor-api': rate 300/min, burst 10\n"
        "= unchanged 'a b': limit 1, inactive\n"
        "Plan: 0 to create, 0 to update, 0 to delete, 3 unchanged.\n"
    )


def test_a_plan_shows_every_kind_of_change_and_json(db: str, tmp_path: Path) -> None:
    ok(gcl(db, "apply", write(tmp_path, FILE)))
    create_limit("by-hand", 1, db=db)
    changed = FILE.replace("limit = 2", "limit = 3").replace("limit = 1\nactive = false", "limit = 1\nactive = true")
    changed = changed.replace('[limits.vendor-api]\nrate = "300/min"      # or limit + slot_decay_per_second\n'
                              'burst = 10\nactive = true\n', "[limits.new]\nrate = \"5/s\"\n")  # fmt: skip
    path = write(tmp_path, changed, "v2.toml")
    out = ok(gcl(db, "apply", path, "--prune"))
    assert out == (
        "~ update    'nightly-db': limit 2 -> limit 3\n"
        "+ create    'new': rate 5/s, burst 1\n"
        "~ update    'a b': limit 1, inactive -> limit 1\n"
        "- delete    'vendor-api': rate 300/min, burst 10\n"
        "Plan: 1 to create, 2 to update, 1 to delete, 0 unchanged.\n"
        "Applied.\n"
    )
    assert [name for name, *_ in state(db)] == ["a b", "by-hand", "new", "nightly-db"]  # by hand: never pruned
    as_json = json.loads(ok(gcl(db, "apply", path, "--prune", "--check", "-o", "json")))
    assert as_json["applied"] is False
    assert as_json["pending"] is False
    assert [c["action"] for c in as_json["changes"]] == ["unchanged"] * 3
    assert as_json["changes"][1]["after"] == {
        "limit": 1, "slot_decay_per_second": 5.0, "rate": "5/s", "burst": 1, "active": True,
    }  # fmt: skip


@pytest.mark.parametrize("shell", SHELLS)
def test_export_round_trips_through_apply_in_a_pipeline(db: str, shell: str) -> None:
    create_limit("plain", 2, db=db)
    create_limit("rated", 1, slot_decay_per_second=100 / 60, db=db)
    create_limit("odd decay", 3, slot_decay_per_second=0.1234567, active=False, db=db)
    create_limit("日本", 10**12, db=db)
    create_limit('quote"d', 0, db=db)
    gcl_cmd = f"{sys.executable} -m gcl_local --db {shlex.quote(db)}"
    fresh = db.replace("gcl_schema=", "gcl_schema=fresh_") if is_postgres(db) else db + ".fresh"
    script = (
        f"{gcl_cmd} export | {gcl_cmd} apply --check - && "
        f"{gcl_cmd} export | {sys.executable} -m gcl_local --db {shlex.quote(fresh)} apply - >/dev/null && "
        f"{sys.executable} -m gcl_local --db {shlex.quote(fresh)} export | {gcl_cmd} apply --check - >/dev/null"
    )
    result = subprocess.run([shell, "-c", script], capture_output=True, text=True, env=env(), check=False)
    assert result.returncode == 0, result.stderr
    assert "Plan: 0 to create, 0 to update, 0 to delete, 5 unchanged." in result.stdout
    assert state(fresh) == state(db)
    exported = ok(gcl(db, "export"))
    assert '[limits.rated]\nrate = "100/min"\nburst = 1\nactive = true\n' in exported
    assert '[limits."odd decay"]\nlimit = 3\nslot_decay_per_second = 0.1234567\nactive = false\n' in exported


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[limits.ok]\nlimit = 1\n\n[limits.vendor-api]\nrate = "300/min"\nbrust = 10\n',
         "limits.toml:6: limits.vendor-api.brust: unknown key (expected one of: limit, slot_decay_per_second, rate, "
         "burst, active)"),
        ("[limits.ok]\nlimit = 1\n[limits.x]\nlimit = 1\n\n[limits.x]\nlimit = 2\n",
         "limits.toml:6: limits.x: declared twice"),
        ("[limits.ok]\nlimit = 1\n[limits.x]\nlimit = -1\n",
         "limits.toml:4: limits.x.limit: limit must be at least 0, not -1."),
        ("[limits.ok]\nlimit = 1\n[limits.x]\nlimit = 1\nactive = 'yes'\n",
         "limits.toml:5: limits.x.active: must be true or false, not 'yes'"),
        ('[limits.ok]\nlimit = 1\n[limits.x]\nrate = "10/min"\nburst = 11\n',
         "limits.toml:5: limits.x.burst: burst must be a whole number from 1 to the rate's 10, not 11."),
        ('[limits.ok]\nlimit = 1\n[limits.x]\nrate = "10/min"\nlimit = 3\n',
         "limits.toml:5: limits.x.limit: give either rate (and burst) or limit (and slot_decay_per_second), not both"),
        ("[limits.ok]\nlimit = 1\n[limits.x]\nactive = true\n",
         'limits.toml:3: limits.x: needs limit = N, or rate = "N/UNIT"'),
        ('[limits.ok]\nlimit = 1\n[limits."a\\u202eb"]\nlimit = 1\n',
         "limits.toml:3: limits.\"a\u202eb\": Limit name 'a\\u202eb' must not contain invisible or format characters "
         "(U+202E)."),
        ("[limit.x]\nlimit = 3\n", "limits.toml:1: limit: unknown key (a limits file has only [limits.NAME] tables)"),
        ("[limits]\nok = {limit = 1}\nx = {limit = 1, rate = '1/s'}\n",
         "limits.toml:3: limits.x.limit: give either rate (and burst) or limit (and slot_decay_per_second), not both"),
        ("[limits.x\nlimit = 3\n", "limits.toml:1: not valid TOML: Expected ']' at the end of a table declaration"),
    ],
)  # fmt: skip
def test_a_bad_file_names_file_line_and_key_and_changes_nothing(
    db: str, tmp_path: Path, text: str, message: str
) -> None:
    create_limit("before", 1, db=db)
    path = write(tmp_path, text)
    result = gcl(db, "apply", path)
    assert one_line_error(result) == f"gcl: {tmp_path}/{message}"
    assert state(db) == [("before", 1, 0.0, True)]


def test_stdin_is_named_as_such(db: str) -> None:
    result = gcl(db, "apply", "-", input="[limits.x]\nlimit = 'two'\n")
    assert one_line_error(result) == "gcl: <stdin>:2: limits.x.limit: limit must be an integer, not 'two'."


def test_prune_never_deletes_a_held_limit_without_force(db: str, tmp_path: Path, spawned: Spawned) -> None:
    ok(gcl(db, "apply", write(tmp_path, "[limits.gpu]\nlimit = 1\n[limits.db]\nlimit = 1\n")))
    runner = spawned.gcl(db, "run", "gpu", "--", "sleep", "30")
    holding(db, "gpu", "sleep", runner)
    only_new = write(tmp_path, "[limits.other]\nlimit = 1\n", "v2.toml")
    refused = gcl(db, "apply", only_new, "--prune")
    assert one_line_error(refused) == (
        "gcl: --prune would delete limit 'gpu', which 1 live process(es) hold; nothing changed "
        "(--force deletes it anyway)"
    )
    assert [name for name, *_ in state(db)] == ["db", "gpu"]  # all or nothing: 'other' was not created either
    assert one_line_error(gcl(db, "apply", only_new, "--force"), 2) == "gcl: --force goes with --prune."
    out = ok(gcl(db, "apply", only_new, "--prune", "--force"))
    assert "- delete    'gpu': limit 1\n" in out
    assert [name for name, *_ in state(db)] == ["other"]
    assert runner.poll() is None  # its holder keeps running


def test_prune_forgets_a_limit_deleted_and_made_again_by_hand(db: str, tmp_path: Path) -> None:
    ok(gcl(db, "apply", write(tmp_path, "[limits.a]\nlimit = 1\n")))
    delete_limit("a", db=db)
    create_limit("a", 5, db=db)  # by hand now: no longer apply's to delete
    out = ok(gcl(db, "apply", write(tmp_path, "", "empty.toml"), "--prune"))
    assert out == "Plan: 0 to create, 0 to update, 0 to delete, 0 unchanged.\nNothing to change.\n"
    assert state(db) == [("a", 5, 0.0, True)]


def test_without_prune_nothing_is_deleted(db: str, tmp_path: Path) -> None:
    ok(gcl(db, "apply", write(tmp_path, "[limits.a]\nlimit = 1\n")))
    out = ok(gcl(db, "apply", write(tmp_path, "", "empty.toml")))
    assert out == "Plan: 0 to create, 0 to update, 0 to delete, 0 unchanged.\nNothing to change.\n"
    assert [name for name, *_ in state(db)] == ["a"]


def test_apply_never_touches_holders_or_the_bucket_level(db: str, tmp_path: Path, spawned: Spawned) -> None:
    ok(gcl(db, "apply", write(tmp_path, '[limits.gpu]\nlimit = 2\n[limits.api]\nrate = "10/h"\nburst = 5\n')))
    update_limit("api", active_slots=3, db=db)
    runner = spawned.gcl(db, "run", "gpu", "--", "sleep", "30")
    lease = holding(db, "gpu", "sleep", runner)
    ok(gcl(db, "apply", write(tmp_path, '[limits.gpu]\nlimit = 3\n[limits.api]\nrate = "20/h"\nburst = 5\n', "2")))
    gpu, api = read_limit("gpu", db=db), read_limit("api", db=db)
    assert [h.id for h in gpu.holders] == [lease.id]
    assert (gpu.limit, gpu.active_slots) == (3, 1)
    assert api.active_slots == 3  # the level decays on, from where it was
    assert api.slot_decay_per_second == pytest.approx(16 / 3600)


def test_the_readme_example_applies(db: str, tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Limits as code", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    path = write(tmp_path, example)
    assert gcl(db, "apply", "--check", path).returncode == 4
    ok(gcl(db, "apply", "--prune", path))
    assert ok(gcl(db, "apply", "--check", path)).endswith("0 to create, 0 to update, 0 to delete, 3 unchanged.\n")
    assert state(db) == [("nightly-db", 2, 0.0, True), ("render farm", 3, 0.0, False), ("vendor-api", 10, 4.85, True)]
