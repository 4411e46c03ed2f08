"""Slot semantics and multi-process behaviour of concurrency() and rate_limit().

Real processes, real files, real signals. Exact decay and expiry use a FakeClock through
``Store(db, clock=FakeClock())`` passed as ``db=``; everything else runs on the real clocks.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import threading
import time
import warnings
from pathlib import Path

import pytest
from helpers import is_postgres

from gcl_local import (
    AcquireConcurrencySlotTimeoutError,
    ConcurrencySlotAcquisitionError,
    InvalidLimitError,
    LeaseNotFoundError,
    MissingLimitWarning,
    acquire_lease,
    concurrency,
    create_limit,
    list_limits,
    rate_limit,
    read_limit,
    release_lease,
    renew_lease,
    update_limit,
)
from gcl_local._clock import FakeClock
from gcl_local.sqlite import Store

# -- child programs ----------------------------------------------------------------------------------

LOOP = """
import json, sys, time
from gcl_local import concurrency
db, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
spans = []
for _ in range(n):
    with concurrency(name, timeout_seconds=60, db=db) as lease:
        start = time.monotonic()
        time.sleep(0.01)
        spans.append((start, time.monotonic(), lease.token))
print(json.dumps(spans))
"""

HOLD = """
import json, sys, time
from gcl_local import concurrency
db, name = sys.argv[1], sys.argv[2]
with concurrency(name, occupy=int(sys.argv[3]), holder=sys.argv[4], db=db) as lease:
    print(json.dumps({"id": lease.id, "token": lease.token}), flush=True)
    time.sleep(60)
"""

HOLD_FAKE_CLOCK = """
import sys, time
from gcl_local import concurrency
from gcl_local._clock import FakeClock
from gcl_local.sqlite import Store
with concurrency("one", lease_duration=60, db=Store(sys.argv[1], clock=FakeClock())):
    print("held", flush=True)
    time.sleep(60)
"""

SLEEP = "import time; time.sleep(60)"

HAMMER = """
import json, os, sys, time
from gcl_local import AcquireConcurrencySlotTimeoutError, rate_limit, read_limit
db, go, stop = sys.argv[1:4]
read_limit("api", db=db)  # warm up: on a server, the first call imports the driver and connects (0.3-1 s)
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
granted = denied = 0
while not os.path.exists(stop):
    try:
        rate_limit("api", timeout_seconds=0, db=db)
        granted += 1
    except AcquireConcurrencySlotTimeoutError:
        denied += 1
print(json.dumps([granted, denied]))
"""


INSPECT = """
import os, sys
from gcl_local import list_limits
db, stop = sys.argv[1], sys.argv[2]
print("inspecting", flush=True)
while not os.path.exists(stop):
    list_limits(db=db)
"""

STARTERS = """
import json, os, sys
from gcl_local import concurrency
db, n = sys.argv[1], int(sys.argv[2])
errors = []
for _ in range(n):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            with concurrency("pool", timeout_seconds=10, db=db):
                pass
        except BaseException as exc:
            os.write(write, repr(exc).encode()[:500])
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        message = f.read().decode()
    os.waitpid(pid, 0)
    if message:
        errors.append(message)
print(json.dumps(errors))
"""


# -- helpers -----------------------------------------------------------------------------------------


def read_line(proc, timeout: float = 30.0) -> str:
    """The next line a child prints; fail with its stderr if it prints nothing in time."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not box or not box[0]:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"child printed nothing: {err}")
    return box[0].strip()


def finish(proc, timeout: float = 60.0) -> str:
    """Wait for a child to exit 0 and return its stdout."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def max_overlap(spans) -> int:
    """The largest number of intervals open at one moment (an end before a start at the same instant)."""
    events = sorted([(s[0], 1) for s in spans] + [(s[1], -1) for s in spans])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def busy(name: str, db, **kwargs) -> bool:
    """True when *name* has no room for one more slot right now (a non-blocking try)."""
    try:
        with concurrency(name, timeout_seconds=0, db=db, **kwargs):
            return False
    except AcquireConcurrencySlotTimeoutError:
        return True


def respawn_at(procs, pid: int):
    """Start a sleeping child that gets *pid* (needs a writable ns_last_pid); skip when that cannot be done."""
    for _ in range(50):
        try:
            Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        except OSError:
            pytest.skip("cannot choose the next PID here (ns_last_pid is not writable)")
        proc = procs.python(SLEEP)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    pytest.skip(f"could not get PID {pid} back (the system is forking too much)")


@pytest.fixture
def clock_store(db: str) -> tuple[FakeClock, Store]:
    if is_postgres(db):
        pytest.skip("a fake clock: the time of a PostgreSQL store is the server's, which no test can move")
    clock = FakeClock()
    return clock, Store(db, clock=clock)


# -- many processes ----------------------------------------------------------------------------------


def test_eight_processes_never_exceed_a_limit_of_three(db, procs):
    create_limit("pool", 3, db=db)
    children = [procs.python(LOOP, db, "pool", "15") for _ in range(8)]
    spans = [span for child in children for span in json.loads(finish(child))]
    assert len(spans) == 120
    assert max_overlap(spans) <= 3
    assert read_limit("pool", db=db).active_slots == 0


def test_processes_starting_while_others_inspect_do_not_fail(db, procs, tmp_path):
    create_limit("pool", 1000, db=db)
    stop = tmp_path / "stop"
    inspectors = [procs.python(INSPECT, db, str(stop)) for _ in range(2)]
    for inspector in inspectors:
        assert read_line(inspector) == "inspecting"
    # Each forked process makes its own liveness token (on PostgreSQL, and imports the driver: fewer)
    starters = procs.python(STARTERS, db, "40" if is_postgres(db) else "150")
    errors = json.loads(finish(starters))
    stop.touch()
    for inspector in inspectors:
        finish(inspector)
    assert errors == []


def test_fencing_tokens_strictly_increase_across_processes(db, procs):
    create_limit("one", 1, db=db)
    children = [procs.python(LOOP, db, "one", "5") for _ in range(3)]
    spans = sorted(span for child in children for span in json.loads(finish(child)))
    tokens = [token for _, _, token in spans]
    assert len(tokens) == 15
    assert all(a < b for a, b in itertools.pairwise(tokens))
    with concurrency("one", db=db) as lease:
        assert lease.token > tokens[-1]


def test_sigkilled_holders_slot_is_taken_within_a_second(db, procs):
    create_limit("one", 1, db=db)
    holder = procs.python(HOLD, db, "one", "1", "victim")
    read_line(holder)
    assert busy("one", db)
    holder.send_signal(signal.SIGKILL)
    start = time.monotonic()
    with concurrency("one", timeout_seconds=5, db=db) as lease:
        assert time.monotonic() - start < 1.0
        assert lease.token is not None


def test_reused_pid_does_not_keep_a_dead_token_holders_slot(db, procs):
    create_limit("one", 1, db=db)
    holder = procs.python(HOLD, db, "one", "1", "victim")
    read_line(holder)
    pid = holder.pid
    assert [h.pid for h in read_limit("one", db=db).holders] == [pid]
    holder.kill()
    holder.wait()
    impostor = respawn_at(procs, pid)
    assert impostor.poll() is None
    with concurrency("one", timeout_seconds=0, db=db) as lease:
        assert lease.token is not None


def test_pid_held_lease_is_freed_when_its_process_dies(db, procs):
    create_limit("one", 1, db=db)
    owner = procs.python(SLEEP)
    lease = acquire_lease("one", holder_pid=owner.pid, db=db)
    holders = read_limit("one", db=db).holders
    assert [(h.id, h.pid, h.held_by) for h in holders] == [(lease.id, owner.pid, "pid")]
    assert busy("one", db)
    owner.kill()
    owner.wait()
    assert not busy("one", db)
    assert release_lease(lease.id, db=db) is False


def test_pid_held_lease_is_not_kept_by_a_process_that_reuses_the_pid(db, procs):
    create_limit("one", 1, db=db)
    owner = procs.python(SLEEP)
    lease = acquire_lease("one", holder_pid=owner.pid, db=db)
    assert busy("one", db)
    owner.kill()
    owner.wait()
    time.sleep(0.05)  # start times are in clock ticks: the impostor starts in a later tick
    impostor = respawn_at(procs, owner.pid)
    assert impostor.poll() is None
    assert not busy("one", db)
    assert release_lease(lease.id, db=db) is False


def test_holder_pid_of_a_dead_process_is_refused(db, procs):
    create_limit("one", 1, db=db)
    gone = procs.python("pass")
    gone.wait()
    with pytest.raises(InvalidLimitError):
        acquire_lease("one", holder_pid=gone.pid, db=db)
    assert read_limit("one", db=db).active_slots == 0


def test_read_limit_during_a_hold_shows_the_holder(db, procs):
    create_limit("pool", 3, db=db)
    child = procs.python(HOLD, db, "pool", "2", "nightly-backup")
    held = json.loads(read_line(child))
    limit = read_limit("pool", db=db)
    assert limit.active_slots == 2
    assert limit.waiters == ()
    (holder,) = limit.holders
    assert (holder.id, holder.token, holder.slots) == (held["id"], held["token"], 2)
    assert (holder.pid, holder.host, holder.label) == (child.pid, os.uname().nodename, "nightly-backup")
    assert holder.names == ("pool",)
    assert holder.held_by == "token"
    assert [lim.active_slots for lim in list_limits(db=db)] == [2]


def test_library_works_in_a_forked_child(db):
    create_limit("pool", 2, db=db)
    with concurrency("pool", db=db) as mine:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a process that has threads
            pid = os.fork()
        if pid == 0:
            code = 1
            try:
                with concurrency("pool", timeout_seconds=5, db=db) as lease:
                    code = 0 if lease.token > mine.token and lease.id != mine.id else 3
            except BaseException:
                code = 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The child exiting (and closing its copy of our token) must not free our slot.
        assert [h.id for h in read_limit("pool", db=db).holders] == [mine.id]
        assert busy("pool", db, occupy=2)
    assert read_limit("pool", db=db).active_slots == 0


def test_threads_hammering_one_limit_never_exceed_it(db):
    create_limit("pool", 2, db=db)
    spans: list[tuple[float, float]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work() -> None:
        try:
            for _ in range(20):
                with concurrency("pool", timeout_seconds=60, db=db):
                    start = time.monotonic()
                    time.sleep(0.002)
                    end = time.monotonic()
                with lock:
                    spans.append((start, end))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert len(spans) == 160
    assert max_overlap(spans) <= 2
    assert read_limit("pool", db=db).active_slots == 0


# -- rate limits on the real clock -------------------------------------------------------------------


def test_rate_limit_lets_a_burst_through_then_one_per_decay_step(db):
    create_limit("api", 2, slot_decay_per_second=10.0, db=db)
    start = time.monotonic()
    done = []
    for _ in range(12):
        rate_limit("api", timeout_seconds=5, db=db)
        done.append(time.monotonic() - start)
    assert done[1] < 0.08  # the burst
    assert 0.9 <= done[-1] <= 1.1
    assert 0.07 <= done[2] <= 0.2


def test_denied_attempts_do_not_stall_decay(db, procs, tmp_path):
    create_limit("api", 1, slot_decay_per_second=2.0, db=db)
    go, stop = tmp_path / "go", tmp_path / "stop"
    hammer = procs.python(HAMMER, db, str(go), str(stop))
    assert read_line(hammer) == "ready"
    rate_limit("api", timeout_seconds=0, db=db)
    start = time.monotonic()
    go.touch()
    # The hammer is alone for 0.3 s (no waiter queued, so each try is judged on the level), then we wait too.
    time.sleep(0.3)
    rate_limit("api", timeout_seconds=5, db=db)
    elapsed = time.monotonic() - start
    stop.touch()
    granted, denied = json.loads(finish(hammer))
    assert 0.45 <= elapsed <= 0.7
    assert granted == 0
    assert denied >= 10


# -- the rules, one by one ---------------------------------------------------------------------------


def test_occupy_takes_that_many_slots(db):
    create_limit("pool", 3, db=db)
    with concurrency("pool", occupy=2, db=db) as lease:
        assert lease.slots == 2
        assert read_limit("pool", db=db).active_slots == 2
        assert busy("pool", db, occupy=2)
        assert not busy("pool", db, occupy=1)
    assert read_limit("pool", db=db).active_slots == 0


def test_names_as_str_or_list_with_duplicates_collapsed(db):
    create_limit("a", 1, db=db)
    create_limit("b", 1, db=db)
    with concurrency("a", db=db) as lease:
        assert lease.names == ("a",)
    with concurrency(["a", "b", "a"], db=db) as lease:
        assert lease.names == ("a", "b")
        assert read_limit("a", db=db).active_slots == 1
        assert read_limit("b", db=db).active_slots == 1
        with pytest.raises(AcquireConcurrencySlotTimeoutError):  # a waiting request collapses them too
            with concurrency(["b", "b"], timeout_seconds=0.2, db=db):
                pass
    assert read_limit("a", db=db).active_slots == 0
    assert read_limit("b", db=db).waiters == ()


def test_several_names_are_taken_all_or_nothing(db):
    create_limit("a", 1, db=db)
    create_limit("b", 1, db=db)
    with concurrency("b", db=db):
        with pytest.raises(AcquireConcurrencySlotTimeoutError):
            with concurrency(["a", "b"], timeout_seconds=0, db=db):
                pass
        assert read_limit("a", db=db).active_slots == 0
        assert read_limit("a", db=db).holders == ()
    update_limit("a", slot_decay_per_second=1.0, db=db)
    update_limit("b", slot_decay_per_second=1.0, active_slots=1, db=db)
    with pytest.raises(AcquireConcurrencySlotTimeoutError):
        rate_limit(["a", "b"], timeout_seconds=0, db=db)
    assert read_limit("a", db=db).active_slots == 0


def test_inactive_limits_are_pass_through(db):
    create_limit("off", 0, active=False, db=db)
    with concurrency("off", occupy=5, db=db) as outer, concurrency("off", occupy=5, strict=True, db=db) as inner:
        assert outer.token is None
        assert inner.token is None
    rate_limit("off", occupy=5, strict=True, db=db)  # no decay needed on an inactive limit
    assert read_limit("off", db=db).active_slots == 0


def test_missing_names_warn_once_per_name_and_do_not_limit(db, caplog):
    # Once per name per process (Prefect #19250: a warning per task buries everything else), and
    # once, not twice: one warning, no log line beside it at WARNING level.
    create_limit("a", 1, db=db)
    with caplog.at_level(logging.WARNING, logger="gcl_local"):
        with pytest.warns(MissingLimitWarning, match="nope"):
            with concurrency("nope", db=db) as lease:
                assert lease.token is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a second warning about 'nope' would raise here
            with concurrency(["a", "nope"], db=db) as lease:
                assert lease.token is not None
                assert lease.names == ("a",)
                assert read_limit("a", db=db).active_slots == 1
            rate_limit("nope", db=db)
        with pytest.warns(MissingLimitWarning, match=r"\['other'\]"):  # a new name: warned about, alone
            rate_limit(["nope", "other"], db=db)
    assert caplog.text == ""
    create_limit("off", 1, active=False, db=db)
    with pytest.warns(MissingLimitWarning, match="third"):
        with concurrency(["off", "third"], db=db) as lease:
            assert lease.token is None


def test_missing_warning_raised_as_an_error_leaves_no_slot_taken(db):
    create_limit("a", 1, db=db)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingLimitWarning)  # as under python -W error, or pytest's filterwarnings
        with pytest.raises(MissingLimitWarning):
            with concurrency(["a", "nope"], db=db):
                pass
        assert read_limit("a", db=db).active_slots == 0
        with pytest.raises(MissingLimitWarning):
            acquire_lease(["a", "nope"], db=db)  # the caller never learns the lease id: nothing may be held
        assert read_limit("a", db=db).active_slots == 0


def test_strict_raises_when_any_named_limit_is_missing(db):
    create_limit("a", 1, slot_decay_per_second=1.0, db=db)
    with pytest.raises(ConcurrencySlotAcquisitionError, match="nope"):
        with concurrency(["a", "nope"], strict=True, db=db):
            pass
    with pytest.raises(ConcurrencySlotAcquisitionError, match="nope"):
        rate_limit(["a", "nope"], strict=True, db=db)
    limit = read_limit("a", db=db)
    assert (limit.active_slots, limit.holders) == (0, ())


@pytest.mark.parametrize(("limit", "occupy"), [(2, 3), (0, 1)])
def test_occupy_above_the_limit_fails_at_once(db, limit, occupy):
    create_limit("small", limit, slot_decay_per_second=1.0, db=db)
    start = time.monotonic()
    with pytest.raises(ConcurrencySlotAcquisitionError) as caught:
        with concurrency("small", occupy=occupy, timeout_seconds=10, db=db):
            pass
    assert not isinstance(caught.value, AcquireConcurrencySlotTimeoutError)
    with pytest.raises(ConcurrencySlotAcquisitionError) as caught:
        rate_limit("small", occupy=occupy, timeout_seconds=10, db=db)
    assert not isinstance(caught.value, AcquireConcurrencySlotTimeoutError)
    assert time.monotonic() - start < 2.0
    assert read_limit("small", db=db).waiters == ()


def test_rate_limit_needs_decay_on_every_active_named_limit(db):
    create_limit("fast", 5, slot_decay_per_second=1.0, db=db)
    create_limit("plain", 5, db=db)
    create_limit("off", 5, active=False, db=db)
    with pytest.raises(ConcurrencySlotAcquisitionError, match="plain") as caught:
        rate_limit(["fast", "plain"], db=db)
    assert not isinstance(caught.value, AcquireConcurrencySlotTimeoutError)
    assert read_limit("fast", db=db).active_slots == 0
    rate_limit(["fast", "off"], db=db)
    assert read_limit("fast", db=db).active_slots == 1


@pytest.mark.parametrize("seconds", [0, 59.9, 86400.5, -1])
def test_lease_duration_out_of_range_is_a_value_error(db, seconds):
    create_limit("a", 1, db=db)
    with pytest.raises(ValueError):
        with concurrency("a", lease_duration=seconds, db=db):
            pass
    with pytest.raises(ValueError):
        acquire_lease("a", lease_duration=seconds, db=db)
    assert read_limit("a", db=db).active_slots == 0


@pytest.mark.parametrize("seconds", [60, 86400])
def test_lease_duration_bounds_are_accepted(db, seconds):
    create_limit("a", 1, db=db)
    with concurrency("a", lease_duration=seconds, db=db) as lease:
        assert lease.expires is not None
        assert lease.acquired is not None
        assert (lease.expires - lease.acquired).total_seconds() == pytest.approx(seconds, abs=0.01)


def test_max_retries_zero_tries_once(db):
    create_limit("one", 1, db=db)
    held = acquire_lease("one", db=db)
    start = time.monotonic()
    with pytest.raises(AcquireConcurrencySlotTimeoutError):
        with concurrency("one", max_retries=0, db=db):
            pass
    assert time.monotonic() - start < 0.5
    assert read_limit("one", db=db).waiters == ()
    release_lease(held.id, db=db)
    with concurrency("one", max_retries=0, db=db) as lease:
        assert lease.token is not None


def test_max_retries_wake_ups_that_do_not_serve_cost_no_retry(db):
    # Prefect's client counts its Retry-After sleeps, not the releases it never sees: a release
    # that leaves the waiter short wakes it for a free look; the budget (here 1 x 2 s) still holds.
    create_limit("pool", 4, db=db)
    held = [acquire_lease("pool", db=db) for _ in range(4)]
    outcome: list[str] = []

    def wait() -> None:
        try:
            with concurrency("pool", occupy=3, max_retries=1, db=db):
                outcome.append("granted")
        except AcquireConcurrencySlotTimeoutError:
            outcome.append("gave up")

    waiter = threading.Thread(target=wait)
    started = time.monotonic()
    waiter.start()
    try:
        deadline = time.monotonic() + 10
        while not read_limit("pool", db=db).waiters and time.monotonic() < deadline:
            time.sleep(0.02)
        release_lease(held[0].id, db=db)  # woken, still 1 slot short: no retry spent
        time.sleep(0.3)
        assert waiter.is_alive()
        release_lease(held[1].id, db=db)
        release_lease(held[2].id, db=db)  # now it fits, within its budget (1.5 s: 2 s x 3 slots / 4)
        waiter.join(3)
    finally:
        for lease in held[3:]:
            release_lease(lease.id, db=db)
        waiter.join(30)
    assert outcome == ["granted"]
    assert time.monotonic() - started < 2.0


def test_timeout_counts_from_the_call(db):
    create_limit("one", 1, db=db)
    acquire_lease("one", db=db)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        with concurrency("one", timeout_seconds=0.5, db=db):
            pass
    assert 0.45 <= time.monotonic() - start <= 1.5
    assert read_limit("one", db=db).waiters == ()


def test_release_is_idempotent(db):
    create_limit("one", 1, db=db)
    lease = acquire_lease("one", db=db)
    assert release_lease(lease.id, db=db) is True
    assert release_lease(lease.id, db=db) is False
    assert read_limit("one", db=db).active_slots == 0
    with concurrency("one", db=db) as lease:
        assert release_lease(lease.id, db=db) is True  # force-released by an admin: the exit still works
    assert release_lease(lease.id, db=db) is False


def test_renew_lease_extends_from_now(db, clock_store):
    clock, store = clock_store
    create_limit("one", 1, db=store)
    lease = acquire_lease("one", lease_duration=60, db=store)
    clock.advance(30)
    renewed = renew_lease(lease.id, 120, db=store)
    assert (renewed.id, renewed.token) == (lease.id, lease.token)
    assert renewed.expires is not None
    assert renewed.expires.timestamp() == pytest.approx(clock.wall + 120)
    with pytest.raises(ValueError):
        renew_lease(lease.id, 30, db=store)
    release_lease(lease.id, db=store)
    with pytest.raises(LeaseNotFoundError):
        renew_lease(lease.id, 120, db=store)


def test_avg_slot_occupancy_changes_after_a_release(clock_store):
    clock, store = clock_store
    create_limit("one", 1, db=store)
    before = read_limit("one", db=store).avg_slot_occupancy_seconds
    with concurrency("one", db=store):
        clock.advance(30)
    after = read_limit("one", db=store).avg_slot_occupancy_seconds
    assert before < after <= 30


# -- exact decay on a fake clock ---------------------------------------------------------------------


def test_decay_is_continuous_and_carries_fractions(clock_store):
    clock, store = clock_store
    create_limit("api", 6, slot_decay_per_second=0.5, active_slots=5, db=store)
    clock.advance(1.0)
    # Writes in between: a lease taken and given back, and an update of an unrelated field.
    with concurrency("api", db=store):
        pass
    update_limit("api", active=True, db=store)
    clock.advance(0.9)  # 1.9 s: the level fell by 0.95, to 4.05
    assert read_limit("api", db=store).active_slots == 5
    assert busy("api", store, occupy=2)
    with pytest.raises(AcquireConcurrencySlotTimeoutError):
        rate_limit("api", occupy=2, timeout_seconds=0, db=store)
    clock.advance(0.1)  # 2.0 s: 4.0 exactly
    assert read_limit("api", db=store).active_slots == 4
    rate_limit("api", occupy=2, timeout_seconds=0, db=store)
    assert read_limit("api", db=store).active_slots == 6


def test_update_of_an_unrelated_field_does_not_reset_decay(clock_store):
    clock, store = clock_store
    create_limit("api", 4, slot_decay_per_second=1.0, active_slots=4, db=store)
    clock.advance(2.0)
    assert update_limit("api", limit=5, db=store).active_slots == 2
    clock.advance(0.5)
    assert read_limit("api", db=store).active_slots == 2  # 1.5, rounded up
    with concurrency("api", occupy=3, timeout_seconds=0, db=store):
        pass
    # A new rate carries the level reached so far.
    update_limit("api", slot_decay_per_second=0.25, db=store)
    clock.advance(2.0)
    assert read_limit("api", db=store).active_slots == 1  # 1.5 - 0.5


def test_decay_never_frees_held_slots(clock_store):
    clock, store = clock_store
    create_limit("pool", 2, slot_decay_per_second=5.0, db=store)
    with concurrency("pool", occupy=2, db=store):
        clock.advance(100)
        assert read_limit("pool", db=store).active_slots == 2
        assert busy("pool", store)


# -- expiry and clock steps on a fake clock ------------------------------------------------------------


def test_pid_held_lease_expires_unless_renewed(clock_store, procs):
    clock, store = clock_store
    create_limit("one", 1, db=store)
    owner = procs.python(SLEEP)
    lease = acquire_lease("one", lease_duration=60, holder_pid=owner.pid, db=store)
    clock.advance(50)
    renew_lease(lease.id, 60, db=store)
    clock.advance(59)  # 109 s after acquiring, 59 s after renewing
    assert busy("one", store)
    clock.advance(2)
    assert not busy("one", store)
    assert owner.poll() is None
    with pytest.raises(LeaseNotFoundError):
        renew_lease(lease.id, 60, db=store)


def test_an_expired_pid_held_lease_cannot_be_renewed(clock_store, procs):
    clock, store = clock_store
    create_limit("one", 1, db=store)
    owner = procs.python(SLEEP)
    lease = acquire_lease("one", lease_duration=60, holder_pid=owner.pid, db=store)
    clock.advance(61)
    # Nobody looked since it expired; expiry is computed from timestamps, so that must not matter.
    with pytest.raises(LeaseNotFoundError):
        renew_lease(lease.id, 60, db=store)
    assert not busy("one", store)


def test_token_held_lease_is_not_taken_from_a_live_holder_past_expiry(clock_store, procs):
    clock, store = clock_store
    create_limit("one", 1, db=store)
    holder = procs.python(HOLD_FAKE_CLOCK, str(store.path))
    assert read_line(holder) == "held"
    clock.advance(10_000)
    assert busy("one", store)
    assert [h.pid for h in read_limit("one", db=store).holders] == [holder.pid]
    holder.kill()
    holder.wait()
    assert not busy("one", store)


def test_wall_clock_steps_neither_expire_leases_nor_stall_decay(clock_store, procs):
    clock, store = clock_store
    create_limit("one", 1, db=store)
    create_limit("api", 1, slot_decay_per_second=1.0, db=store)
    owner = procs.python(SLEEP)
    acquire_lease("one", lease_duration=60, holder_pid=owner.pid, db=store)
    rate_limit("api", db=store)
    clock.step_wall(3600)
    assert busy("one", store)
    with pytest.raises(AcquireConcurrencySlotTimeoutError):
        rate_limit("api", timeout_seconds=0, db=store)
    clock.step_wall(-7200)
    clock.advance(1.0)
    rate_limit("api", timeout_seconds=0, db=store)
    assert busy("one", store)
    clock.advance(58.0)
    assert busy("one", store)
    clock.advance(2.0)
    assert not busy("one", store)


@pytest.mark.sqlite_only("a reboot of one host; a server's clock does not restart (see the restart tests)")
def test_reboot_drops_every_lease_and_rebases_decay_by_wall_clock(db, procs):
    clock = FakeClock()
    before = Store(db, clock=clock)
    create_limit("cpu", 100, slot_decay_per_second=1.0, active_slots=50, db=before)
    owner = procs.python(SLEEP)
    acquire_lease("cpu", occupy=10, holder_pid=owner.pid, db=before)
    acquire_lease("cpu", occupy=5, db=before)
    assert read_limit("cpu", db=before).active_slots == 65
    before.close()
    clock.reboot(downtime=10.0)
    after = Store(db, clock=clock)
    limit = read_limit("cpu", db=after)
    assert limit.holders == ()
    assert limit.active_slots == 40
    clock.advance(5.0)
    assert read_limit("cpu", db=after).active_slots == 35
