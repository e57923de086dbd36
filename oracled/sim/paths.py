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

    Several simulated venues of one market pass the same `market_seed`: they then walk the same
    common path (step for step) and each adds its own small mean-reverting basis of about
    `basis_bps`, so independent venues agree the way real ones do, however long they run.
    Without a market seed each venue walks alone and venues drift apart over time.
    """

    __slots__ = ("_basis", "_basis_bps", "_noise", "_ramp", "_rng", "_spike", "mid", "volatility")

    def __init__(
        self,
        start: float,
        *,
        seed: int | str,
        volatility: float,
        market_seed: int | str | None = None,
        basis_bps: float = 0.0,
    ) -> None:
        if not start > 0.0:
            raise ValueError(f"start price must be > 0, got {start!r}")
        self.mid = start
        self.volatility = volatility
        self._rng = random.Random(seed if market_seed is None else market_seed)
        self._noise = random.Random(seed)
        self._basis = 0.0
        self._basis_bps = basis_bps
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
        if self._basis_bps > 0.0:  # AR(1) basis: stationary spread of about basis_bps
            shock = self._basis_bps * 1e-4 * 0.2 * self._noise.gauss(0.0, 1.0)
            self._basis = 0.98 * self._basis + shock
        return self.mid

    def published(self, now: float) -> float:
        """The price this venue prints at `now`: the mid, or the spiked mid."""
        spike = self._spike
        mid = self.mid * (1.0 + self._basis)
        if spike is None:
            return mid
        factor, until = spike
        if until is not None and now >= until:
            self._spike = None
            return mid
        return mid * factor

    def size(self) -> float:
        """A plausible top-of-book quantity, from the same seeded generator."""
        return round(self._noise.uniform(0.01, 5.0), 8)
