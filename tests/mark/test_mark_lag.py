"""The perpetuals' lag rule (docs/mark.md, Inputs; pricing revision 25).

A perp venue silent behind an open socket keeps its last quote fresh until `max_age_ms`. Through
a fast move the silent ones held the perp median, and with it the mark that margin engines
liquidate on, at the level before the move, up to `max_perp_deviation` from the index. A perp
quote older than the market's `lag_ms` now counts only while it is within `max_deviation` of
where the index and the kept basis put the perpetuals.

BTC/USD (mark_rig): spot a, b, c; perps p (BTC/USD), q (BTC/USDT through USDT/USD) and r
(BTC/USD); `lag_ms` 2 s and `max_deviation` 1 % (the defaults), `max_age_ms` 5 s.
"""

from __future__ import annotations

import math

from mark_rig import B, Rig, make_config

from oracled.mark import MarkValues
from oracled.model import Quote

BTC = 1  # market index in mark_rig's config


def _rig(**mark: object) -> Rig:
    return Rig(make_config(more_perps="r", mark=dict(mark)))


def _step(
    rig: Rig,
    now: int,
    index: float,
    *,
    p: float | None = None,
    q: float | None = None,
    r: float | None = None,
) -> MarkValues:
    """One round: spot at `index`, each perp given a quote received now (None: silent)."""
    if r is not None:
        assert rig.core.ingest(Quote("r", "BTC/USD", now, price=r, kind="perp")) is None
    rig.round(now, index=index, p=p, q=q)
    assert rig.last is not None and rig.last.mark is not None
    return rig.last.mark.values[BTC]


def test_two_silent_perps_of_three_no_longer_hold_the_mark_through_a_fall() -> None:
    """An 8 % fall over 10 s with p and r silent from its start (min_perp_sources 2): their
    quotes count while they are young (2 s), then are `stale` once the index has left them by
    more than 1 %, and the mark falls back to the index and the kept basis instead of the old
    level (before revision 25: the perp median at the old level until 5 s, the mark up to 1.3 %
    above the index)."""
    rig = _rig(min_perp_sources=2)
    for s in range(5):  # calm: all three quote a small premium
        _step(rig, B + s * 1_000, 100.0, p=100.05, q=100.05, r=100.05)
    start = B + 4_000
    worst_after_lag = 0.0
    for tenth in range(1, 101):  # 8 % in 10 s, a round every 100 ms
        now = start + tenth * 100
        index = 100.0 * (1.0 - 0.008 * tenth / 10)
        v = _step(rig, now, index, q=index * 1.0005)
        if tenth > 20:  # p and r older than lag_ms
            off = index * 0.01 * (1 + 1e-12)
            left = abs(100.05 - index * (1.0 + 0.0005)) > off  # the basis EMA is about 0.05 %
            if left:
                assert v.perp_reasons == ("stale", "too_few", "stale"), (tenth, v)
                assert v.mode == "fallback", v
            worst_after_lag = max(worst_after_lag, abs(v.price / index - 1.0))
    assert worst_after_lag < 0.002  # the kept basis (0.05 %) and the moves of its samples


def test_quiet_perps_near_the_index_and_the_basis_keep_counting() -> None:
    """A calm market: p and r silent for 4 s (older than lag_ms) at a 2 % premium the basis EMA
    has learnt still count, though 2 % from the index itself: they are judged against the index
    times one plus the kept basis, not against the index."""
    rig = _rig(max_perp_deviation=0.05)
    for s in range(120):  # two minutes at a steady 2 % premium: the EMA (60 s half-life) is there
        _step(rig, B + s * 1_000, 100.0, p=102.0, q=102.0, r=102.0)
    last = B + 119_000
    v = _step(rig, last + 4_000, 100.0, q=102.0)
    assert v.perp_reasons == (None, None, None), v
    assert v.perps_used == 3


def test_without_a_basis_yet_an_old_perp_is_judged_against_the_index() -> None:
    """No basis sample yet (the EMA is NaN): the level is the index itself. An old quote 1.5 %
    above it is stale, one exactly 1 % above it counts (the boundary counts, as everywhere)."""
    rig = _rig()
    rig.core.ingest(Quote("p", "BTC/USD", B, price=101.5, kind="perp"))
    rig.core.ingest(Quote("r", "BTC/USD", B, price=101.0, kind="perp"))
    # min_perp_sources 1; spot only from here, the index at 100
    v = _step(rig, B + 3_000, 100.0)
    assert v.perp_reasons == ("stale", "no_quote", None), v
    assert v.perp_mids[0] == 101.5  # its mid is kept for /v1/markets/{market}/sources


def test_a_young_perp_is_never_judged_by_the_rule() -> None:
    """A young print 3 % from the index (within max_perp_deviation) counts as before: the rule
    judges only quotes older than lag_ms, and one venue's fresh print is the deviation check's
    business."""
    rig = _rig()
    v = _step(rig, B, 100.0, p=103.0)
    assert v.perp_reasons == (None, "no_quote", "no_quote"), v
    assert math.isclose(v.perp_median, 103.0)


def test_an_old_routed_perp_is_judged_in_market_units() -> None:
    """q quotes BTC/USDT, converted through USDT/USD at 0.98: 102.04 USDT is 100 USD. Old and
    converted it sits at the index and counts; unconverted it would be 2 % off."""
    rig = _rig()
    rig.round(B, index=100.0, usdt=0.98, q=100.0 / 0.98)
    assert rig.last is not None and rig.last.mark is not None
    rig.round(B + 3_000, index=100.0, usdt=0.98)
    assert rig.last is not None and rig.last.mark is not None
    v = rig.last.mark.values[BTC]
    assert v.perp_reasons == ("no_quote", None, "no_quote"), v
    # the index moves 2 % under the old routed quote: stale
    rig.round(B + 4_000, index=102.0, usdt=0.98)
    assert rig.last is not None and rig.last.mark is not None
    assert rig.last.mark.values[BTC].perp_reasons == ("no_quote", "stale", "no_quote")


def test_lag_ms_is_the_markets_own() -> None:
    """A market with lag_ms 10 s keeps a 3 s old perp 2 % off the index counting; the same at
    2 s makes it stale."""
    for lag, want in ((10_000, None), (2_000, "stale")):
        rig = Rig(make_config(more_perps="r", lag_ms=lag))
        rig.core.ingest(Quote("r", "BTC/USD", B, price=102.0, kind="perp"))
        v = _step(rig, B + 3_000, 100.0)
        assert v.perp_reasons[2] == want, (lag, v)
