"""A property test: the core, driven on a FakeClock, agrees with a small reference model.

The model: occupancy of a limit = slots of its held leases + max(0, level - decay x elapsed), the
level being set by rate limits and by an admin's ``active_slots``. A non-blocking request is granted
iff it fits every active named limit. Times and rates are binary fractions, so the arithmetic is exact.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from gcl_local import (
    AcquireConcurrencySlotTimeoutError,
    ConcurrencySlotAcquisitionError,
    acquire_lease,
    create_limit,
    rate_limit,
    read_limit,
    release_lease,
    renew_lease,
    update_limit,
)
from gcl_local._clock import FakeClock
from gcl_local.sqlite import Store

EPSILON = 1e-9
NAMES = ("a", "b")
name_sets = st.sampled_from([("a",), ("b",), ("a", "b"), ("b", "a")])
decays = st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0])
limits = st.integers(0, 5)
first_decays = st.sampled_from([0.25, 0.5, 1.0, 2.0])  # zero comes later, through set_decay
first_limits = st.integers(1, 6)


@dataclass
class ModelLimit:
    limit: int
    decay: float
    active: bool
    level: float
    since: float

    def level_at(self, now: float) -> float:
        return max(0.0, self.level - self.decay * max(0.0, now - self.since))


@dataclass
class ModelLease:
    names: tuple[str, ...]
    slots: int


@dataclass
class Model:
    limits: dict[str, ModelLimit] = field(default_factory=dict)
    leases: dict[str, ModelLease] = field(default_factory=dict)

    def held(self, name: str) -> int:
        return sum(lease.slots for lease in self.leases.values() if name in lease.names)

    def occupancy(self, name: str, now: float) -> float:
        return self.held(name) + self.limits[name].level_at(now)

    def active_slots(self, name: str, now: float) -> int:
        return max(0, math.ceil(self.occupancy(name, now) - EPSILON))

    def outcome(self, names: tuple[str, ...], occupy: int, now: float, *, rate: bool) -> tuple[str, list[str]]:
        """("error" | "granted" | "denied", the active names)."""
        active = [n for n in names if self.limits[n].active]
        if any(occupy > self.limits[n].limit for n in active):
            return "error", active
        if rate and any(self.limits[n].decay <= 0 for n in active):
            return "error", active
        fits = all(self.occupancy(n, now) + occupy - self.limits[n].limit <= EPSILON for n in active)
        return ("granted" if fits else "denied"), active


class CoreMachine(RuleBasedStateMachine):
    base: Path

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(dir=self.base))
        self.clock = FakeClock()
        self.store = Store(self.dir / "gcl.db", clock=self.clock)
        self.model = Model()
        self.released: list[str] = []

    @property
    def now(self) -> float:
        return self.clock.boot

    @initialize(
        limit_a=first_limits, limit_b=first_limits, decay_a=first_decays, decay_b=first_decays, level=st.integers(0, 3)
    )
    def create(self, limit_a: int, limit_b: int, decay_a: float, decay_b: float, level: int) -> None:
        for name, limit, decay in (("a", limit_a, decay_a), ("b", limit_b, decay_b)):
            created = create_limit(name, limit, slot_decay_per_second=decay, active_slots=level, db=self.store)
            assert created.active_slots == level
            self.model.limits[name] = ModelLimit(limit, decay, True, float(level), self.now)

    @rule(names=name_sets, occupy=st.integers(1, 3))
    def acquire(self, names: tuple[str, ...], occupy: int) -> None:
        expected, active = self.model.outcome(names, occupy, self.now, rate=False)
        event(f"acquire: {expected}")
        try:
            lease = acquire_lease(list(names), occupy=occupy, lease_duration=60, timeout_seconds=0, db=self.store)
        except AcquireConcurrencySlotTimeoutError:
            assert expected == "denied"
            return
        except ConcurrencySlotAcquisitionError:
            assert expected == "error"
            return
        assert expected == "granted"
        if not active:
            assert lease.token is None
            return
        assert lease.token is not None
        assert sorted(lease.names) == sorted(active)
        self.model.leases[lease.id] = ModelLease(lease.names, occupy)
        for name in active:
            assert self.model.occupancy(name, self.now) <= self.model.limits[name].limit + EPSILON
            assert read_limit(name, db=self.store).active_slots <= self.model.limits[name].limit

    @rule(names=name_sets, occupy=st.integers(1, 3))
    def rate(self, names: tuple[str, ...], occupy: int) -> None:
        expected, active = self.model.outcome(names, occupy, self.now, rate=True)
        event(f"rate: {expected}")
        try:
            rate_limit(list(names), occupy=occupy, timeout_seconds=0, db=self.store)
        except AcquireConcurrencySlotTimeoutError:
            assert expected == "denied"
            return
        except ConcurrencySlotAcquisitionError:
            assert expected == "error"
            return
        assert expected == "granted"
        for name in active:
            limit = self.model.limits[name]
            limit.level, limit.since = limit.level_at(self.now) + occupy, self.now
            assert self.model.occupancy(name, self.now) <= limit.limit + EPSILON

    @rule(data=st.data())
    @precondition(lambda self: self.model.leases)
    def release(self, data: st.DataObject) -> None:
        lease_id = data.draw(st.sampled_from(sorted(self.model.leases)))
        assert release_lease(lease_id, db=self.store) is True
        del self.model.leases[lease_id]
        self.released.append(lease_id)

    @rule(data=st.data())
    @precondition(lambda self: self.released)
    def release_again(self, data: st.DataObject) -> None:
        assert release_lease(data.draw(st.sampled_from(self.released)), db=self.store) is False

    @rule(data=st.data(), seconds=st.sampled_from([60, 300]))
    @precondition(lambda self: self.model.leases)
    def renew(self, data: st.DataObject, seconds: int) -> None:
        lease_id = data.draw(st.sampled_from(sorted(self.model.leases)))
        renewed = renew_lease(lease_id, seconds, db=self.store)
        assert renewed.id == lease_id
        assert renewed.expires is not None
        assert renewed.expires.timestamp() == pytest.approx(self.clock.wall + seconds, abs=1e-5)

    @rule()
    def release_all(self) -> None:
        for lease_id in list(self.model.leases):
            assert release_lease(lease_id, db=self.store) is True
            self.released.append(lease_id)
        self.model.leases.clear()

    @rule(seconds=st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.75, 3.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(name=st.sampled_from(NAMES), limit=limits)
    def set_limit(self, name: str, limit: int) -> None:
        update_limit(name, limit=limit, db=self.store)
        self.model.limits[name].limit = limit

    @rule(name=st.sampled_from(NAMES), decay=decays)
    def set_decay(self, name: str, decay: float) -> None:
        update_limit(name, slot_decay_per_second=decay, db=self.store)
        limit = self.model.limits[name]
        limit.level, limit.since, limit.decay = limit.level_at(self.now), self.now, decay

    @rule(name=st.sampled_from(NAMES), level=st.integers(0, 5))
    def set_active_slots(self, name: str, level: int) -> None:
        update_limit(name, active_slots=level, db=self.store)
        limit = self.model.limits[name]
        limit.level, limit.since = float(level), self.now

    @rule(name=st.sampled_from(NAMES), active=st.booleans())
    def set_active(self, name: str, active: bool) -> None:
        update_limit(name, active=active, db=self.store)
        self.model.limits[name].active = active

    @invariant()
    def occupancy_matches_the_model(self) -> None:
        for name, expected in self.model.limits.items():
            limit = read_limit(name, db=self.store)
            assert (limit.limit, limit.active, limit.slot_decay_per_second) == (
                expected.limit,
                expected.active,
                expected.decay,
            )
            assert limit.active_slots == self.model.active_slots(name, self.now)
            assert sorted(h.id for h in limit.holders) == sorted(
                i for i, lease in self.model.leases.items() if name in lease.names
            )
            assert limit.waiters == ()

    def teardown(self) -> None:
        try:
            self.release_all()
            for name in self.model.limits:
                expected = max(0, math.ceil(self.model.limits[name].level_at(self.now) - EPSILON))
                assert read_limit(name, db=self.store).active_slots == expected
        finally:
            self.store.close()
            shutil.rmtree(self.dir, ignore_errors=True)


def test_core_agrees_with_the_reference_model(tmp_path: Path) -> None:
    CoreMachine.base = tmp_path
    run_state_machine_as_test(
        CoreMachine, settings=settings(max_examples=60, stateful_step_count=30, deadline=None, database=None)
    )
