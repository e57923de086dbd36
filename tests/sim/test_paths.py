"""Scripted price paths: seeded, settable, rampable, spikeable, all as pure functions of time."""

from __future__ import annotations

import pytest

from oracled.sim import PricePath


def test_same_seed_same_walk() -> None:
    """Two paths with one seed walk identically; another seed walks elsewhere."""
    a = PricePath(100.0, seed=1, volatility=0.001)
    b = PricePath(100.0, seed=1, volatility=0.001)
    c = PricePath(100.0, seed=2, volatility=0.001)
    walk_a = [a.step(t) for t in range(50)]
    assert walk_a == [b.step(t) for t in range(50)]
    assert walk_a != [c.step(t) for t in range(50)]
    assert all(95.0 < p < 105.0 for p in walk_a)  # 50 ticks of 0.1 % stay close


def test_zero_volatility_holds_the_price() -> None:
    """With no volatility the mid only moves when told to."""
    path = PricePath(42.0, seed=0, volatility=0.0)
    assert [path.step(t) for t in range(5)] == [42.0] * 5
    path.set(43.5)
    assert path.step(6) == 43.5


def test_ramp_moves_linearly_then_stops_at_the_target() -> None:
    """A ramp interpolates over its duration and lands exactly on the target."""
    path = PricePath(100.0, seed=0, volatility=0.0)
    path.ramp(200.0, 10.0, now=0.0)
    assert path.step(5.0) == pytest.approx(150.0)
    assert path.step(10.0) == 200.0
    assert path.step(11.0) == 200.0


def test_spike_changes_only_what_is_printed_and_expires() -> None:
    """A spike multiplies the published price for its duration; the mid is untouched."""
    path = PricePath(100.0, seed=0, volatility=0.0)
    path.spike(1.2, 2.0, now=0.0)
    assert path.published(1.0) == pytest.approx(120.0)
    assert path.mid == 100.0
    assert path.published(2.0) == 100.0
    path.spike(0.5, None, now=3.0)
    assert path.published(1e9) == 50.0
    path.clear()
    assert path.published(1e9) == 100.0


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_non_positive_prices_are_refused(bad: float) -> None:
    """A path can never be told to print a non-positive or NaN price."""
    with pytest.raises(ValueError, match="must be > 0"):
        PricePath(bad, seed=0, volatility=0.0)
    path = PricePath(1.0, seed=0, volatility=0.0)
    with pytest.raises(ValueError, match="must be > 0"):
        path.set(bad)


def test_venues_sharing_a_market_seed_stay_together_over_a_long_run() -> None:
    """Same market seed, different venue seeds: after 20,000 ticks they differ by basis only."""
    a = PricePath(100.0, seed=1, volatility=0.001, market_seed=7, basis_bps=2.0)
    b = PricePath(100.0, seed=2, volatility=0.001, market_seed=7, basis_bps=2.0)
    alone = PricePath(100.0, seed=3, volatility=0.001)
    widest = 0.0
    for tick in range(20_000):
        now = float(tick)
        a.step(now)
        b.step(now)
        alone.step(now)
        widest = max(widest, abs(a.published(now) / b.published(now) - 1.0))
    assert a.mid == b.mid  # the common walk is identical
    assert widest < 0.002  # about 2 bp of basis each, never near a 1 % outlier threshold
    assert abs(alone.mid / a.mid - 1.0) > 0.002  # an independent walk does drift away
