"""Mark price through the real core: estimators, fallbacks, gates, conversion, reload."""

from __future__ import annotations

import pytest
from mark_rig import B, Rig, make_config

from oracled.aggregate.book import DropReason
from oracled.core import Core
from oracled.model import MarkEstimators, Quote


def test_mark_is_the_median_of_basis_ema_and_perp_median_with_irregular_round_times() -> None:
    """Index 100, perp 101 / 103 / 100 at 1 s, 61 s, 181 s (H = 60 s): EMA 1, 2, 0.5.

    Mark = median of (index + EMA, perp median) = their mean: 101, 102.5, 100.25.
    """
    rig = Rig()
    first = rig.mark(B + 1_000, p=101.0)
    assert first.estimators == MarkEstimators("101.00", "101.00", None)
    assert (first.price, first.basis, first.perps_used, first.reason) == ("101.00", "1.00", 1, None)
    second = rig.mark(B + 61_000, p=103.0)
    assert second.estimators == MarkEstimators("102.00", "103.00", None)
    assert (second.price, second.basis) == ("102.50", "3.00")
    third = rig.mark(B + 181_000, p=100.0)
    assert third.estimators == MarkEstimators("100.50", "100.00", None)
    assert (third.price, third.basis) == ("100.25", "0.00")


def test_perp_median_spans_venues_with_a_usdt_perp_converted_through_the_live_leg() -> None:
    """p 101.2 (USD) and q 102 USDT at USDT/USD 0.998 = 101.796: median 101.498, basis 1.498."""
    rig = Rig()
    mark = rig.mark(B + 1_000, usdt=0.998, p=101.2, q=102.0)
    assert mark.perps_used == 2
    assert mark.estimators.perp_median == "101.50"
    assert mark.basis == "1.50"
    assert mark.price == "101.50"  # first sample: the EMA equals the basis


def test_a_usdt_perp_is_ignored_while_its_conversion_leg_is_not_live() -> None:
    """Without a live USDT/USD the q perp never counts (as spot slots): only p is used."""
    rig = Rig()
    report = rig.round(B + 1_000, usdt=None, p=101.0, q=500.0)
    assert report.status in ("active", "degraded")
    assert report.mark is not None
    assert report.mark.perps_used == 1
    assert report.mark.estimators.perp_median == "101.00"


def test_a_perp_far_from_the_index_is_ignored() -> None:
    """p at 106 is 6 % from the index (limit 5 %): only q at 101 counts."""
    rig = Rig()
    mark = rig.mark(B + 1_000, p=106.0, q=101.0)
    assert (mark.perps_used, mark.estimators.perp_median, mark.price) == (1, "101.00", "101.00")


def test_a_perp_quote_its_source_flagged_as_not_a_price_never_counts() -> None:
    """p quotes 101 flagged (a source's own verdict that its value is not a price, as a spot slot
    would be excluded): only q counts, until p quotes again without a flag."""
    rig = Rig()
    assert (
        rig.core.ingest(
            Quote("p", "BTC/USD", B + 1_000, price=101.0, kind="perp", flag="liquidity")
        )
        is None
    )
    mark = rig.mark(B + 1_000, q=100.5)
    assert (mark.perps_used, mark.estimators.perp_median) == (1, "100.50")
    mark = rig.mark(B + 2_000, p=101.0, q=100.5)
    assert (mark.perps_used, mark.estimators.perp_median) == (2, "100.75")


def test_without_a_fresh_perp_the_mark_falls_back_to_index_plus_the_decayed_basis() -> None:
    """Basis EMA 1 at 1 s; at 61 s the perp is stale (max age 5 s): fallback 100 + 1 x 0.5."""
    rig = Rig()
    rig.mark(B + 1_000, p=101.0)
    mark = rig.mark(B + 61_000)
    assert mark.estimators == MarkEstimators(None, None, "100.50")
    assert (mark.price, mark.basis, mark.premium, mark.perps_used) == ("100.50", None, None, 0)


def test_with_fewer_perps_than_min_perp_sources_the_mark_falls_back_as_with_none() -> None:
    """min_perp_sources = 2: both perps at 101 give the mark 101 (basis EMA 1). Six seconds
    later q is stale and p alone prints 104, inside the 5 % limit. With the default minimum of
    one the perp median follows p to 104; with two the round counts as one without perps: the
    fallback, index plus the basis decayed over 6 s (100 + 1 x 0.5^0.1 = 100.93), and no
    premium sample."""
    rig = Rig(make_config(mark={"min_perp_sources": 2}))
    mark = rig.mark(B + 1_000, p=101.0, q=101.0)
    assert (mark.perps_used, mark.price) == (2, "101.00")
    mark = rig.mark(B + 1_000 + 6_000, p=104.0)  # q's quote is 6 s old: stale (max age 5 s)
    assert mark.perps_used == 0
    assert mark.estimators.perp_median is None and mark.premium is None
    assert (mark.estimators.fallback, mark.price) == ("100.93", "100.93")
    default = Rig()  # min_perp_sources = 1: the same rounds follow p
    default.mark(B + 1_000, p=101.0, q=101.0)
    followed = default.mark(B + 1_000 + 6_000, p=104.0)
    assert (followed.perps_used, followed.estimators.perp_median) == (1, "104.00")


def test_a_perp_market_that_never_had_a_perp_quote_marks_at_the_index() -> None:
    """No basis ever observed: the fallback is the index alone."""
    mark = Rig().mark(B + 1_000)
    assert mark.estimators == MarkEstimators(None, None, "100.00")
    assert mark.price == "100.00"


def test_a_paused_index_gives_a_null_mark_with_its_reason_even_with_fresh_perps() -> None:
    """Spot quotes stop (stale after 5 s): the index pauses and so does the mark, reason index."""
    rig = Rig()
    rig.mark(B + 1_000, p=101.0)
    report = rig.round(B + 10_000, index=None, p=101.0, q=101.0)
    assert report.status == "paused" and report.price is None
    assert report.mark is not None
    assert report.mark.price is None
    assert report.mark.reason == "index"
    assert report.mark.estimators == MarkEstimators(None, None, None)
    assert (report.mark.basis, report.mark.premium, report.mark.perps_used) == (None, None, 0)


def test_markets_without_perps_publish_no_mark() -> None:
    """USDT/USD has no perp_sources: its mark is null; a config with no perps skips the step."""
    rig = Rig()
    rig.round(B + 1_000, p=101.0)
    assert rig.last is not None
    assert rig.last.report(rig.core.index["USDT/USD"]).mark is None
    plain = Core(make_config(perps=False))
    result = plain.run_round(B + 1_000)
    assert result.mark is None
    assert all(r.mark is None for r in result.reports())


def test_a_reload_keeps_the_basis_ema_of_a_market_that_stays_perpetual() -> None:
    """EMA 1 before the reload; after it, perp 103 one half-life later gives EMA 2 as before."""
    rig = Rig()
    rig.mark(B + 1_000, p=101.0)
    rig.core.reconfigure(make_config(mark={"premium_clamp": 0.001}))
    mark = rig.mark(B + 61_000, p=103.0)
    assert mark.estimators.basis_ema == "102.00"


def test_bid_ask_perps_use_their_mid_for_the_mark() -> None:
    """p bid 100.8 ask 101.2: mid 101, basis 1; premium (100.8 - 100) / 100 = 0.008."""
    mark = Rig().mark(B + 1_000, p=(100.8, 101.2))
    assert (mark.estimators.perp_median, mark.basis) == ("101.00", "1.00")
    assert mark.premium == "0.00800000"


@pytest.mark.parametrize("votes", [False, True], ids=["mark_only", "also_votes"])
def test_a_perp_lone_bid_is_no_price_and_the_mid_held_before_still_counts(votes: bool) -> None:
    """A perpetual quote with a lone bid (no ask, no last price) is no price: dropped as
    `no_price` whether p only feeds the mark or also votes. With nothing held yet the mark uses
    q alone (101), not p's bid of 101.4; with p's two-sided mid of 100.5 held, the lone bid
    leaves it in place and the mark counts both (median 100.75). Before, the mark-only
    configuration kept the lone bid, which displaced p's mid (`one_sided`: q alone, 101), while
    a voting p dropped it and kept counting."""
    voting = [{"source": s, "pair": "BTC/USD"} for s in "abc"]
    voting.append({"source": "p", "pair": "BTC/USD", "kind": "perp"})
    rig = Rig(make_config(sources=voting) if votes else make_config())

    def lone_bid(now: int) -> DropReason | None:
        return rig.core.ingest(Quote("p", "BTC/USD", now, bid=101.4, kind="perp"))

    assert lone_bid(B + 1_000) == DropReason.NO_PRICE
    mark = rig.mark(B + 1_000, q=101.0)
    assert (mark.perps_used, mark.estimators.perp_median) == (1, "101.00")
    assert rig.mark(B + 2_000, p=(100.4, 100.6), q=101.0).perps_used == 2
    assert lone_bid(B + 3_000) == DropReason.NO_PRICE
    mark = rig.mark(B + 3_000, q=101.0)
    assert (mark.perps_used, mark.estimators.perp_median) == (2, "100.75")


def test_a_reload_that_makes_a_market_perpetual_starts_its_mark_afresh() -> None:
    """BTC/USD had no perpetuals before the reload, so there is no state to carry: the first
    mark after it is computed from its own first sample (EMA = basis), as for a new market."""
    rig = Rig(make_config(perps=False))
    rig.round(B + 1_000)
    rig.core.reconfigure(make_config())
    mark = rig.mark(B + 2_000, p=102.0)
    assert mark.estimators == MarkEstimators("102.00", "102.00", None)
    assert (mark.basis, mark.perps_used) == ("2.00", 1)


def test_a_basis_that_rounds_to_zero_is_never_printed_negative() -> None:
    """A perp a thousandth below the index: the basis rounds to zero at the market's two
    decimals and is published as "0.00", never "-0.00"."""
    mark = Rig().mark(B + 1_000, p=99.999)
    assert mark.basis == "0.00"
    assert mark.estimators.basis_ema == "100.00"


def test_a_reloaded_perp_deviation_limit_applies_from_the_next_round() -> None:
    """p at 106 is 6 % from the index: ignored under the 5 % limit, counted from the round after
    a reload that raises `max_perp_deviation` to 10 %, and ignored again after one that brings
    it back (a reload that reports a mark setting changed must apply it)."""
    rig = Rig()
    assert rig.mark(B + 1_000, p=106.0, q=101.0).perps_used == 1
    rig.core.reconfigure(make_config(mark={"max_perp_deviation": 0.1}))
    mark = rig.mark(B + 2_000, p=106.0, q=101.0)
    assert (mark.perps_used, mark.estimators.perp_median) == (2, "103.50")
    rig.core.reconfigure(make_config())
    assert rig.mark(B + 3_000, p=106.0, q=101.0).perps_used == 1


def test_a_perpetual_that_also_votes_in_the_index_still_counts_for_the_mark() -> None:
    """A market may list a perpetual among its voting `sources` (kind perp) and in its
    perp_sources too: each of its quotes then votes in the index and is the mark's perp input,
    with both sides or a last price alone. Before, the voting slot took the quote and the mark
    never saw it (`no_quote`, the fallback)."""
    spot = [{"source": s, "pair": "BTC/USD"} for s in "abc"]
    rig = Rig(make_config(sources=[*spot, {"source": "p", "pair": "BTC/USD", "kind": "perp"}]))
    for now, p in ((B + 1_000, (100.4, 100.6)), (B + 2_000, 100.5)):
        report = rig.round(now, p=p)
        assert (report.status, report.price) == ("active", "100.00")
        assert [(s.id, s.used) for s in report.sources][-1] == ("p", True)
        assert report.mark is not None
        assert (report.mark.perps_used, report.mark.estimators.perp_median) == (1, "100.50")
        assert report.mark.price == "100.50"


def test_the_basis_scales_with_the_index_through_a_crash() -> None:
    """Perps 4.5 % under an index of 100 for two minutes (H = 60 s), then the index falls to 3
    (a jump, held 4 rounds, then followed): the mark keeps the perps' discount as a share of the
    new index, 2.87 in the fallback and with the perps back at 2.88, never the old 4.5 *dollars*
    under it. Before, the EMA held the basis in price units: the fallback published a mark of
    -1.25 and, with the perps back, 0.84 (the mean of -1.21 and 2.88) against an index of 3.00."""
    rig = Rig(make_config(max_price=1e6))
    t = B
    for _ in range(120):
        t += 1_000
        rig.mark(t, index=100.0, p=95.5)
    for _ in range(4):
        t += 1_000
        assert rig.mark(t, index=3.0).reason == "index"  # the jump is held
    t += 1_000
    fallback = rig.mark(t, index=3.0)
    assert (fallback.price, fallback.estimators.fallback) == ("2.87", "2.87")
    t += 1_000
    back = rig.mark(t, index=3.0, p=2.88)  # 4 % under: the EMA moves from -4.5 % towards it
    assert back.estimators == MarkEstimators("2.87", "2.88", None)
    assert back.price == "2.87"


def test_a_mark_below_one_unit_of_the_last_decimal_is_no_mark_price() -> None:
    """Index 1.00 at two decimals (its resolution floor, so live) and both perps at 0.006,
    within a max_perp_deviation of 0.995: the mark, 0.006, would be published as "0.01" or
    "0.00". It is null with reason `bounds`, while the index stays live; once the perps come
    back to the index the mark is priced again. (An index under 100 units of the last digit is
    not live at all, docs/pricing.md, *Numbers*: the index is at the floor to keep it live.)"""
    rig = Rig(make_config(mark={"max_perp_deviation": 0.995}))
    report = rig.round(B + 1_000, index=1.0, p=0.006, q=0.006)
    assert (report.status, report.price) == ("active", "1.00")
    assert report.mark is not None
    assert (report.mark.price, report.mark.reason, report.mark.perps_used) == (None, "bounds", 2)
    assert rig.last is not None and rig.last.mark is not None
    assert rig.last.mark.values[rig.core.index["BTC/USD"]].mode == "none"
    later = rig.mark(B + 3_600_000, index=1.0, p=1.0, q=1.0)
    assert (later.price, later.reason) == ("1.00", None)
