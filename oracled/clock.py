"""Injectable clocks. Only the runtime and the sources read time, always through one of these."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["FIRST_MS", "LAST_MS", "Clock", "ManualClock", "SystemClock"]

#: The times the daemon takes for milliseconds since the epoch: 13 digits, 2001-09-09 to
#: 2286-11-20. A wall clock before `FIRST_MS` was never set (a machine without a battery-backed
#: clock, before its time sync): the round loop waits for it. A `ts` of the tape or a signing
#: lease outside the range was written in another unit (seconds, microseconds) or by such a
#: clock, and is refused.
FIRST_MS, LAST_MS = 10**12, 10**13 - 1


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock time in integer milliseconds since the Unix epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards (timeouts, intervals)."""
        ...


class SystemClock:
    """The real clock."""

    __slots__ = ()

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to: for tests and for replay."""

    __slots__ = ("_ms",)

    def __init__(self, start_ms: int = 0) -> None:
        self._ms = start_ms

    def now_ms(self) -> int:
        return self._ms

    def monotonic(self) -> float:
        return self._ms / 1000.0

    def advance(self, ms: int) -> None:
        self._ms += ms
