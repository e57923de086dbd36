"""The mark price's formulas as plain functions of floats, so that each can be checked by hand.

Nothing here keeps state; `engine.py` holds the per-market state and calls these once per round.
docs/mark.md gives the formulas with the reasons for each choice.

They run per perpetual market per round, so they bound values with comparisons (`clip`) rather
than the builtin `min` and `max`, whose call costs more than the formula around it.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import nan

__all__ = [
    "clip",
    "decay",
    "ema_update",
    "funding_rate",
    "median",
    "premium_of",
]


def clip(value: float, low: float, high: float) -> float:
    """`min(max(value, low), high)`, with the same result for every float (NaN and signed zeros
    included: like `max`, a bound replaces `value` only if strictly beyond it)."""
    if low > value:
        value = low
    if high < value:
        value = high
    return value


def decay(elapsed_ms: float, half_life_ms: float) -> float:
    """The weight an old value keeps after `elapsed_ms`: 1/2 per half-life, 1 for no time."""
    if elapsed_ms <= 0.0:
        return 1.0
    return float(0.5 ** (elapsed_ms / half_life_ms))


def ema_update(ema: float, sample: float, elapsed_ms: float, half_life_ms: float) -> float:
    """Move the EMA towards `sample` by how much time passed, not by how many samples came.

    With irregular sample times a per-sample alpha would weigh a burst of quotes more than a
    quiet minute; decaying by elapsed time makes the result depend on time only. A NaN `ema`
    (no sample yet) starts at the sample.
    """
    if ema != ema:  # NaN: first sample
        return sample
    keep = decay(elapsed_ms, half_life_ms)
    return ema * keep + sample * (1.0 - keep)


def median(values: Sequence[float]) -> float:
    """The median (mean of the middle two for an even count); NaN for no values."""
    n = len(values)
    if n == 0:
        return nan
    if n == 1:  # the common case of a market with one perpetual venue: no sort
        return values[0]
    ordered = sorted(values)
    mid = n // 2
    if n % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) * 0.5


def premium_of(index: float, mid: float, bid: float | None, ask: float | None) -> float:
    """One venue's premium over the index, as a fraction of the index.

    With a bid and an ask this is the impact-price form at the top of the book: positive only if
    a seller could sell above the index, negative only if a buyer could buy below it, zero while
    the index sits inside the spread. With a single price it is (price - index) / index.
    """
    if bid is not None and ask is not None:
        above = bid - index  # what a seller gets over the index, if positive
        below = index - ask  # what a buyer saves under it, if positive
        return ((above if above > 0.0 else 0.0) - (below if below > 0.0 else 0.0)) / index
    return (mid - index) / index


def funding_rate(premium: float, interest: float, clamp: float, cap: float) -> float:
    """Funding for one interval: premium + clamp(interest - premium, -clamp, +clamp), capped."""
    return clip(premium + clip(interest - premium, -clamp, clamp), -cap, cap)
