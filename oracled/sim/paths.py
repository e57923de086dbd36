"""Scripted price paths for the venue simulators: a seeded walk that can be set, ramped or spiked.

Time is passed in (seconds, any monotonic origin) so that a path is a pure function of its seed,
its script and the times it is stepped at: the same calls give the same prices.
"""

from __future__ import annotations

import math
import random

__all__ = ["PricePath"]


class PricePath:
    """The mid price of one symbol.

    `step(now)` moves the walk one tick (log-normal, ``volatility`` per tick) unless a ramp is in
    progress; `published(now)` is what the venue prints, which differs from the mid while a spike
    (this venue alone printing a wrong price) is active.
    """

    __slots__ = ("_ramp", "_rng", "_spike", "mid", "volatility")

    def __init__(self, start: float, *, seed: int | str, volatility: float) -> None:
        if not start > 0.0:
            raise ValueError(f"start price must be > 0, got {start!r}")
        self.mid = start
        self.volatility = volatility
        self._rng = random.Random(seed)
        self._ramp: tuple[float, float, float, float] | None = None  # t0, t1, p0, p1
        self._spike: tuple[float, float | None] | None = None  # factor, until

    def set(self, price: float) -> None:
        """Jump to `price` now and cancel any ramp."""
        if not price > 0.0:
            raise ValueError(f"price must be > 0, got {price!r}")
        self.mid = price
        self._ramp = None

    def ramp(self, target: float, seconds: float, now: float) -> None:
        """Move linearly from the mid to `target` over `seconds`, then walk on from there."""
        if not target > 0.0 or seconds <= 0.0:
            raise ValueError("ramp needs a target > 0 and a duration > 0")
        self._ramp = (now, now + seconds, self.mid, target)

    def spike(self, factor: float, seconds: float | None, now: float) -> None:
        """Print mid * `factor` for `seconds` (None: until cleared); the walk itself goes on."""
        self._spike = (factor, None if seconds is None else now + seconds)

    def clear(self) -> None:
        """Drop spikes and ramps (the mid stays where it is)."""
        self._spike = None
        self._ramp = None

    def step(self, now: float) -> float:
        """Advance one tick and return the new mid."""
        ramp = self._ramp
        if ramp is not None:
            t0, t1, p0, p1 = ramp
            if now >= t1:
                self.mid = p1
                self._ramp = None
            else:
                self.mid = p0 + (p1 - p0) * (now - t0) / (t1 - t0)
        elif self.volatility > 0.0:
            self.mid *= math.exp(self.volatility * self._rng.gauss(0.0, 1.0))
        return self.mid

    def published(self, now: float) -> float:
        """The price this venue prints at `now`: the mid, or the spiked mid."""
        spike = self._spike
        if spike is None:
            return self.mid
        factor, until = spike
        if until is not None and now >= until:
            self._spike = None
            return self.mid
        return self.mid * factor

    def size(self) -> float:
        """A plausible top-of-book quantity, from the same seeded generator."""
        return round(self._rng.uniform(0.01, 5.0), 8)
