"""Time as the store sees it.

Every stored moment is kept twice: wall-clock seconds (for display, and to bridge a reboot) and
seconds of the boot clock (``CLOCK_BOOTTIME`` on Linux: never stepped, counts suspend). Elapsed
time is measured on the boot clock while the file's stored boot id is the current one; after a
reboot the store rebases every stored boot time from wall-clock deltas clamped at >= 0 (see
``gcl_local.sqlite``), so a wall-clock step can neither expire a live lease early nor stall decay.
"""

from __future__ import annotations

import time

from ._stdlib import NamedTuple, Protocol


class Instant(NamedTuple):
    """One reading of the clocks, taken once per transaction."""

    wall: float
    """Seconds since the epoch (``time.time()``)."""
    boot: float
    """Seconds on the boot clock, comparable across processes of one boot."""
    boot_id: str
    """Identifies the boot that ``boot`` belongs to."""


class Clock(Protocol):
    """Where "now" comes from; tests inject a fake one."""

    def now(self) -> Instant: ...


def _read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:  # (text mode would import a codec)
            return f.read().decode().strip()
    except OSError:
        # No boot id (macOS): derive one from the moment the monotonic clock started, to the
        # minute. A drift only makes the store treat the moment as a reboot, which rebases by
        # wall clock, clamped: safe, merely less exact.
        return f"mono-{round((time.time() - time.monotonic()) / 60)}"


_BOOT_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


class SystemClock:
    """The real clocks of this machine."""

    def __init__(self) -> None:
        self._boot_id = _read_boot_id()

    def now(self) -> Instant:
        return Instant(time.time(), time.clock_gettime(_BOOT_CLOCK), self._boot_id)


class FakeClock:
    """A clock that moves only when told to; for tests of decay, expiry and clock steps."""

    def __init__(self, wall: float = 1_700_000_000.0, boot: float = 1000.0, boot_id: str = "boot-a") -> None:
        self.wall = wall
        self.boot = boot
        self.boot_id = boot_id

    def now(self) -> Instant:
        return Instant(self.wall, self.boot, self.boot_id)

    def advance(self, seconds: float) -> None:
        """Let *seconds* pass on both clocks."""
        self.wall += seconds
        self.boot += seconds

    def step_wall(self, seconds: float) -> None:
        """Step the wall clock alone, as NTP or an admin might."""
        self.wall += seconds

    def reboot(self, *, downtime: float = 10.0, boot_id: str | None = None) -> None:
        """Start a new boot: the boot clock restarts near zero, the wall clock moves on."""
        self.wall += downtime
        self.boot = 5.0
        self.boot_id = boot_id or f"{self.boot_id}+"


SYSTEM_CLOCK: Clock = SystemClock()

__all__ = ["SYSTEM_CLOCK", "Clock", "FakeClock", "Instant", "SystemClock"]
