"""Code written for Prefect runs here with only its import changed (issue 14, item 7), and the small
promises around it: ``gcl run`` tells its command what it holds (item 3), a missing limit warns
once (item 4).
"""

from __future__ import annotations

import asyncio
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import Spawned, env, gcl, gcl_all, ok, one_line_error

import gcl_local.asyncio as gcl_asyncio
import gcl_local.sync as gcl_sync
from gcl_local import (
    AcquireConcurrencySlotTimeoutError,
    ConcurrencySlotAcquisitionError,
    InvalidLimitError,
    create_limit,
    read_limit,
)

SHELLS = [shell for shell in ("bash", "dash") if shutil.which(shell)]


def test_prefects_exceptions_are_importable_where_prefect_has_them() -> None:
    # from prefect.concurrency.sync import ConcurrencySlotAcquisitionError, AcquireConcurrencySlotTimeoutError
    for module in (gcl_sync, gcl_asyncio):
        assert module.ConcurrencySlotAcquisitionError is ConcurrencySlotAcquisitionError
        assert module.AcquireConcurrencySlotTimeoutError is AcquireConcurrencySlotTimeoutError
        assert {"ConcurrencySlotAcquisitionError", "AcquireConcurrencySlotTimeoutError"} <= set(module.__all__)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [({"occupy": 0}, "occupy"), ({"occupy": 1.5}, "occupy"), ({"lease_duration": 5}, "lease_duration"),
     ({"timeout_seconds": -1}, "timeout_seconds"), ({"max_retries": -1}, "max_retries")],
)  # fmt: skip
def test_invalid_arguments_are_caught_as_prefects_error_and_stay_value_errors(
    db: str, kwargs: dict[str, object], word: str
) -> None:
    # Prefect's server answers 422, raised by its client as ConcurrencySlotAcquisitionError.
    with pytest.raises(ConcurrencySlotAcquisitionError, match=word) as sync_error:
        with gcl_sync.concurrency("a", db=db, **kwargs):  # type: ignore[arg-type]
            pass
    assert isinstance(sync_error.value, ValueError)
    assert isinstance(sync_error.value, InvalidLimitError)

    async def main() -> None:
        async with gcl_asyncio.concurrency("a", db=db, **kwargs):  # type: ignore[arg-type]
            pass

    with pytest.raises(ConcurrencySlotAcquisitionError, match=word) as async_error:
        asyncio.run(main())
    assert isinstance(async_error.value, ValueError)
    assert not Path(db).exists()  # checked before anything touched the file


HOLD = """
import sys, time
from gcl_local import concurrency
with concurrency("a", db=sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""

PREFECT_CODE = """
import sys, time
from gcl_local.sync import concurrency, AcquireConcurrencySlotTimeoutError
start = time.monotonic()
try:
    with concurrency("a", max_retries=int(sys.argv[2]), db=sys.argv[1]):
        print("held")
except AcquireConcurrencySlotTimeoutError as exc:
    print(f"gave up after {time.monotonic() - start:.2f}: {exc}")
"""


def test_max_retries_bounds_the_wait_behind_a_long_holder_as_prefect_does(db: str, procs: object) -> None:
    # Prefect gives up after N Retry-After sleeps: about 4 s for N = 2 on a new limit of one slot
    # (Retry-After = min(avg_slot_occupancy_seconds 2.0 x 1 slot / limit 1, 30)). It used to wait for ever.
    create_limit("a", 1, db=db)
    holder = procs.python(HOLD, db)  # type: ignore[attr-defined]
    assert holder.stdout.readline() == "held\n"
    waiter = procs.python(PREFECT_CODE, db, "2")  # type: ignore[attr-defined]
    out, err = waiter.communicate(timeout=30)
    assert err == ""
    assert out.startswith("gave up after ")
    waited = float(out.split()[3].rstrip(":"))
    assert 3.9 <= waited <= 5.5, out
    assert out.endswith("Unable to acquire concurrency slots on ['a']: retries exhausted.\n")
    assert read_limit("a", db=db).waiters == ()


def test_max_retries_is_served_when_the_holder_leaves_within_the_budget(db: str, procs: object) -> None:
    create_limit("a", 1, db=db)
    holder = procs.python(HOLD, db)  # type: ignore[attr-defined]
    assert holder.stdout.readline() == "held\n"
    waiter = procs.python(PREFECT_CODE, db, "2")  # type: ignore[attr-defined]
    time.sleep(1.0)
    holder.kill()
    out, _ = waiter.communicate(timeout=30)
    assert out == "held\n"


def test_inspect_file_writes_the_json_with_a_stable_id(db: str, tmp_path: Path) -> None:
    ok(gcl(db, "create", "gpu", "-l", "2"))
    target = tmp_path / "gpu.json"
    written, printed, again, no_json = gcl_all(
        db,
        [
            ["inspect", "gpu", "-o", "json", "--file", str(target)],
            ["inspect", "gpu", "-o", "json"],
            ["ls", "-o", "json"],
            ["inspect", "gpu", "--file", str(tmp_path / "x.json")],
        ],
    )
    assert ok(written) == f"Limit 'gpu' written to {target}\n"
    on_file = json.loads(target.read_text())
    assert on_file == json.loads(ok(printed))
    first_id = on_file["id"]
    assert len(first_id) == 36
    assert json.loads(ok(again))[0]["id"] == first_id  # the same id on every read
    assert one_line_error(no_json, 2) == "gcl: --file needs -o json: gcl inspect NAME -o json --file PATH"
    assert not (tmp_path / "x.json").exists()
    ok(gcl(db, "delete", "gpu", "--yes"))
    ok(gcl(db, "create", "gpu", "-l", "2"))
    assert json.loads(ok(gcl(db, "inspect", "gpu", "-o", "json")))["id"] != first_id  # a new limit, a new id


def test_no_enable_and_no_disable_exist_as_in_prefect(db: str) -> None:
    ok(gcl(db, "create", "a", "-l", "1", "--no-disable"))
    ok(gcl(db, "update", "a", "-l", "2", "--no-enable", "--no-disable"))
    limit = read_limit("a", db=db)
    assert (limit.limit, limit.active) == (2, True)
    ok(gcl(db, "update", "a", "--disable", "--no-enable"))
    assert read_limit("a", db=db).active is False


@pytest.mark.parametrize("shell", SHELLS)
def test_gcl_run_tells_its_command_the_lease_the_token_and_the_limits(db: str, shell: str) -> None:
    create_limit("a", 2, db=db)
    create_limit("b", 1, db=db)
    script = (
        'printf "%s|%s|%s\\n" "$GCL_LEASE_ID" "$GCL_FENCING_TOKEN" "$GCL_LIMITS"; '
        f'{sys.executable} -m gcl_local --db "$DB" inspect a -o json'
    )
    result = subprocess.run(
        [sys.executable, "-m", "gcl_local", "--db", db, "run", "a", "b", "nope", "--", shell, "-c", script],
        capture_output=True, text=True, env=env(DB=db), check=False,
    )  # fmt: skip
    first, rest = ok(result).split("\n", 1)
    lease_id, token, limits = first.split("|", 2)
    (holder,) = json.loads(rest.split("\n", 1)[1] if not rest.startswith("{") else rest)["holders"]
    assert lease_id == holder["id"]
    assert token == str(holder["token"])
    assert lease_id.startswith(f"{token}-")
    assert limits == "a"  # one name a line: a, then b
    assert rest.startswith("b\n")


@pytest.mark.parametrize("shell", SHELLS)
def test_the_command_can_release_its_own_lease_early(db: str, shell: str, spawned: Spawned, tmp_path: Path) -> None:
    create_limit("a", 1, db=db)
    gcl_cmd = f"{sys.executable} -m gcl_local --db {shlex.quote(db)}"
    marker = tmp_path / "released"
    runner = spawned.gcl(db, "run", "a", "--", shell, "-c",
                         f'{gcl_cmd} release "$GCL_LEASE_ID" && touch {marker}; sleep 30')  # fmt: skip
    deadline = time.monotonic() + 20
    while not marker.exists():
        assert time.monotonic() < deadline, runner.stderr.read() if runner.poll() is not None else "no release"
        time.sleep(0.05)
    # released by the command itself while it still runs: the next caller gets in at once
    assert read_limit("a", db=db).holders == ()
    ok(gcl(db, "run", "a", "-n", "--", "true"))
    assert runner.poll() is None


WARN_THRICE = """
import logging, sys
from gcl_local import concurrency, rate_limit
logging.basicConfig(level=logging.WARNING)
for _ in range(3):
    with concurrency("nope", db=sys.argv[1]):
        pass
rate_limit("nope", db=sys.argv[1])
"""


def test_a_missing_limit_warns_once_per_process_and_once_not_twice(db: str, procs: object) -> None:
    create_limit("a", 1, db=db)
    _, err = procs.python(WARN_THRICE, db).communicate(timeout=30)  # type: ignore[attr-defined]
    lines = [line for line in err.splitlines() if "nope" in line]
    assert len(lines) == 1, err
    assert "MissingLimitWarning: Concurrency limits ['nope'] do not exist - skipping acquisition." in lines[0]


def test_gcl_run_warns_once_about_a_missing_limit(db: str) -> None:
    create_limit("a", 1, db=db)
    result = gcl(db, "run", "a", "nope", "--", "true")
    assert result.returncode == 0
    assert result.stderr == "gcl: warning: limits ['nope'] do not exist - not limiting on them\n"
