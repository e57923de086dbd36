"""The mark's formulas against hand-computed values."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oracled.mark import decay, ema_update, funding_rate, median, premium_of
from oracled.mark.formulas import clip

H = 60_000.0  # a one-minute half-life, in ms


def test_decay_halves_per_half_life_and_keeps_everything_for_no_time() -> None:
    """decay(t) = 0.5 ** (t / H); zero or negative elapsed time keeps the old value whole."""
    assert decay(0, H) == 1.0
    assert decay(-5, H) == 1.0
    assert decay(H, H) == 0.5
    assert decay(2 * H, H) == 0.25
    assert decay(H / 2, H) == pytest.approx(1 / math.sqrt(2), abs=1e-15)


def test_ema_with_irregular_sample_times_matches_the_hand_computation() -> None:
    """Samples 1 at 0 s, 3 at 60 s, 0 at 180 s with H = 60 s: EMA 1, then 2, then 0.5.

    60 s is one half-life: 1 x 0.5 + 3 x 0.5 = 2. The next gap is 120 s, two half-lives:
    2 x 0.25 + 0 x 0.75 = 0.5.
    """
    ema = ema_update(math.nan, 1.0, 0, H)
    assert ema == 1.0
    ema = ema_update(ema, 3.0, 60_000, H)
    assert ema == 2.0
    ema = ema_update(ema, 0.0, 120_000, H)
    assert ema == 0.5


def test_a_burst_of_samples_weighs_the_same_as_one_sample_over_the_same_time() -> None:
    """The same value sampled at 30 s and 60 s gives the EMA one sample at 60 s gives.

    After 30 s: 1 x 2^-0.5 + 3 x (1 - 2^-0.5); after 30 s more the old 1 keeps 2^-0.5 x 2^-0.5
    = 0.5 of its weight, exactly as in one 60 s step: 2. A per-sample alpha would give more.
    """
    burst = ema_update(ema_update(1.0, 3.0, 30_000, H), 3.0, 30_000, H)
    assert burst == pytest.approx(2.0, abs=1e-12)


@given(
    start=st.floats(-1e3, 1e3),
    value=st.floats(-1e3, 1e3),
    gaps=st.lists(st.integers(0, 600_000), min_size=1, max_size=20),
)
def test_a_constant_sample_gives_the_same_ema_however_time_is_split(
    start: float, value: float, gaps: list[int]
) -> None:
    """For a held value the EMA depends only on the total elapsed time, not on the sampling."""
    split = start
    for gap in gaps:
        split = ema_update(split, value, gap, H)
    whole = ema_update(start, value, sum(gaps), H)
    assert split == pytest.approx(whole, rel=1e-9, abs=1e-9)


def test_median_of_odd_even_and_empty_inputs() -> None:
    """Middle value; mean of the middle two; NaN for nothing (no estimate at all)."""
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert median([101.0, 102.0]) == 101.5  # two estimators: their mean
    assert math.isnan(median([]))


@pytest.mark.parametrize(
    ("bid", "ask", "expected"),
    [
        (100.2, 100.4, 0.002),  # a seller gets 100.2 > index: premium (100.2 - 100) / 100
        (99.9, 100.1, 0.0),  # index inside the spread: no premium either way
        (99.5, 99.7, -0.003),  # a buyer pays 99.7 < index: discount (99.7 - 100) / 100
        (100.0, 100.0, 0.0),  # locked at the index
    ],
)
def test_premium_with_bid_and_ask_uses_the_impact_form(
    bid: float, ask: float, expected: float
) -> None:
    """(max(0, bid - index) - max(0, index - ask)) / index at an index of 100."""
    mid = (bid + ask) / 2
    assert premium_of(100.0, mid, bid, ask) == pytest.approx(expected, abs=1e-15)


def test_premium_with_a_single_price_is_its_distance_from_the_index() -> None:
    """(price - index) / index: 100.25 over 100 is 0.0025."""
    assert premium_of(100.0, 100.25, None, None) == pytest.approx(0.0025, abs=1e-15)


INTEREST, CLAMP, CAP = 0.0001, 0.0005, 0.0075


@pytest.mark.parametrize(
    ("premium", "expected"),
    [
        (0.0001, 0.0001),  # premium = interest: the clamp term is 0
        (0.0, 0.0001),  # interest - premium = 0.0001, inside the clamp
        (0.0006, 0.0001),  # interest - premium = -0.0005: exactly at the lower clamp
        (0.0010, 0.0005),  # -0.0009 clamped to -0.0005: 0.0010 - 0.0005
        (-0.0004, 0.0001),  # interest - premium = +0.0005: exactly at the upper clamp
        (-0.0010, -0.0005),  # +0.0011 clamped to +0.0005: -0.0010 + 0.0005
        (0.0080, 0.0075),  # 0.0080 - 0.0005 = 0.0075: exactly at the cap
        (0.0090, 0.0075),  # 0.0085 capped
        (-0.0080, -0.0075),  # -0.0080 + 0.0005 = -0.0075: exactly at the floor
        (-0.0200, -0.0075),  # -0.0195 capped
    ],
)
def test_funding_rate_at_each_boundary_of_the_clamp_and_the_cap(
    premium: float, expected: float
) -> None:
    """F = P + clamp(I - P, -c, c), then clamped to [-cap, cap] (I 0.01 %, c 0.05 %, cap 0.75 %)."""
    assert funding_rate(premium, INTEREST, CLAMP, CAP) == pytest.approx(expected, abs=1e-15)


def _same(a: float, b: float) -> bool:
    """The same float bit for bit: NaN equals NaN, 0.0 differs from -0.0."""
    return struct.pack("<d", a) == struct.pack("<d", b)


_ANY = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, math.nan])


@given(value=_ANY, low=_ANY, high=_ANY)
def test_clip_is_min_of_max_for_every_float(value: float, low: float, high: float) -> None:
    """`clip` replaces the builtins for speed only: NaN and signed zeros come out as they did."""
    assert _same(clip(value, low, high), min(max(value, low), high))


@given(index=_ANY, bid=_ANY, ask=_ANY)
def test_premium_with_bid_and_ask_is_the_max_form_bit_for_bit(
    index: float, bid: float, ask: float
) -> None:
    """The comparisons in `premium_of` give what `max(0.0, ...)` gave, NaN and -0.0 included."""
    try:
        want = (max(0.0, bid - index) - max(0.0, index - ask)) / index
    except ZeroDivisionError:
        with pytest.raises(ZeroDivisionError):
            premium_of(index, math.nan, bid, ask)
        return
    assert _same(premium_of(index, math.nan, bid, ask), want)


@given(premium=_ANY, interest=_ANY, clamp=_ANY, cap=_ANY)
def test_funding_rate_is_the_min_max_form_bit_for_bit(
    premium: float, interest: float, clamp: float, cap: float
) -> None:
    """`funding_rate` through `clip` is the builtin form for every float input."""
    want = min(max(premium + min(max(interest - premium, -clamp), clamp), -cap), cap)
    assert _same(funding_rate(premium, interest, clamp, cap), want)
