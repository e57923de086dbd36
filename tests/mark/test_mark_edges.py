"""Edges of the mark engine that a one-character change in it would cross: the perp filters'
exact limits, routed perps through an inverted leg and with a bid and ask, and the funding state
across a boundary and across reloads. Index 100 unless said; premium of a single price p is
(p - 100) / 100; interest 0.0001, clamp 0.0005 (the defaults), so a premium above 0.0006 gives
F = premium - 0.0005."""

from __future__ import annotations

from typing import Any

import numpy as np
from mark_rig import SPOT, B, Rig, make_config

from oracled.aggregate.book import DropReason, Layout
from oracled.config import DEFAULT_MAX_CLOCK_SKEW_MS, parse_config
from oracled.core import Core
from oracled.mark import MarkEngine
from oracled.model import Quote

MINUTE = {"funding_interval_s": 60}


def _spot(rig: Rig, now: int) -> None:
    for source in SPOT:
        rig._ingest(Quote(source, "USDT/USD", now, price=1.0))
        rig._ingest(Quote(source, "BTC/USD", now, price=100.0))


def test_a_perp_exactly_max_perp_deviation_from_the_index_counts() -> None:
    """The filter drops perps *farther* than max_perp_deviation: with 0.25 (exact in binary), a
    perp at 125 on an index of 100 is exactly at the limit and counts."""
    rig = Rig(make_config(mark={"max_perp_deviation": 0.25}))
    mark = rig.mark(B + 1_000, p=125.0)
    assert (mark.perps_used, mark.estimators.perp_median) == (1, "125.00")


def test_a_perp_exactly_a_decimal_max_perp_deviation_from_the_index_counts() -> None:
    """The same edge with 0.03, which binary cannot hold: perps at 103 and 97 on an index of 100
    are exactly at the limit and count, 103.01 and 96.99 do not. (Measured as |mid / x - 1|,
    the division's rounding put 103 at 0.030000000000000027, beyond the limit.)"""
    for p, used in ((103.0, 1), (97.0, 1), (103.01, 0), (96.99, 0)):
        rig = Rig(make_config(mark={"max_perp_deviation": 0.03}))
        mark = rig.mark(B + 1_000, p=p)
        assert mark.perps_used == used, p


def test_a_perp_quote_counts_up_to_its_age_limit_by_venue_time() -> None:
    """BTC/USD's max_age_ms is 5,000: a perp quote 5,000 ms old counts, 5,001 ms old does not;
    the age is by the venue's time where sent (received just now, sent 5,001 ms ago: too old)."""
    rig = Rig()
    rig._ingest(Quote("p", "BTC/USD", B, price=101.0, kind="perp"))
    _spot(rig, B + 5_000)
    assert rig.mark(B + 5_000).perps_used == 1
    _spot(rig, B + 5_001)
    assert rig.mark(B + 5_001).perps_used == 0
    rig._ingest(Quote("q", "BTC/USDT", B + 6_000, price=101.0, venue_ts=B + 999, kind="perp"))
    assert rig.mark(B + 6_000).perps_used == 0


def test_a_perp_quote_from_ahead_of_the_round_counts_only_within_the_clock_skew() -> None:
    """A perp quote received max_clock_skew_ms after the round's time counts in that round; one
    received a millisecond later is not a price of this round and does not."""
    for ahead, used in ((DEFAULT_MAX_CLOCK_SKEW_MS, 1), (DEFAULT_MAX_CLOCK_SKEW_MS + 1, 0)):
        rig = Rig()
        rig._ingest(Quote("p", "BTC/USD", B + 1_000 + ahead, price=101.0, kind="perp"))
        assert rig.mark(B + 1_000).perps_used == used, ahead


def test_a_perp_print_outside_the_global_price_band_is_dropped_at_the_door() -> None:
    """docs/pricing.md section 1 checks every quote at the door, perpetuals too: p quotes 101,
    then a book of 1e308 / 1.7e308 (each side finite, their mid overflows to infinity), a last
    price of 1e13 and one of 5e-324, outside [oracle.min_price, oracle.max_price]: each is dropped
    as `absurd` and counted, and p's 101 keeps counting. Before, each was held as p's latest
    quote: p stopped counting, and its mid read "inf" on /v1/markets/{market}/sources."""
    rig = Rig()
    rig.round(B + 1_000, p=101.0)
    for bad in (
        Quote("p", "BTC/USD", B + 1_500, bid=1e308, ask=1.7e308, kind="perp"),
        Quote("p", "BTC/USD", B + 1_500, price=1e13, kind="perp"),
        Quote("p", "BTC/USD", B + 1_500, price=5e-324, kind="perp"),
    ):
        assert rig.core.ingest(bad) == DropReason.ABSURD, bad
    assert rig.core.book.drops[("p", DropReason.ABSURD)] == 3
    mark = rig.mark(B + 2_000)
    assert (mark.perps_used, mark.estimators.perp_median) == (1, "101.00")


def _inverted_leg_config() -> Any:
    """BTC/USD with a BTC/USDT perp converted through USD/USDT, a leg listed the other way."""
    spot = [{"source": s, "pair": "BTC/USD"} for s in SPOT]
    return parse_config(
        {
            "oracle": {"round_interval_ms": 1_000, "resume_rounds": 1},
            "sources": {s: {"type": "okx" if s == "q" else "binance"} for s in "abcq"},
            "markets": [
                {
                    "symbol": "USD/USDT",
                    "price_exponent": -4,
                    "min_sources": 2,
                    "sources": [{"source": s, "pair": "USD/USDT"} for s in SPOT],
                },
                {
                    "symbol": "BTC/USD",
                    "min_sources": 2,
                    "sources": spot,
                    "perp_sources": [{"source": "q", "pair": "BTC/USDT"}],
                },
            ],
            "routes": [{"from": "USDT", "to": "USD", "via": "USD/USDT"}],
        },
        env={},
    )


def test_a_perp_through_an_inverted_leg_is_divided_by_it() -> None:
    """USD/USDT at 0.8 (a USDT is worth 1.25 USD): a BTC/USDT perp at 100 is 100 / 0.8 = 125 USD,
    which on an index of 125 counts and is the perp median (times 0.8 it would be 80, too far)."""
    core = Core(_inverted_leg_config())
    for s in SPOT:
        assert core.ingest(Quote(s, "USD/USDT", B, price=0.8)) is None
        assert core.ingest(Quote(s, "BTC/USD", B, price=125.0)) is None
    assert core.ingest(Quote("q", "BTC/USDT", B, price=100.0, kind="perp")) is None
    mark = core.run_round(B).report(1).mark
    assert mark is not None
    assert (mark.perps_used, mark.estimators.perp_median) == (1, "125.00")


def test_an_old_perp_through_an_inverted_leg_is_judged_in_its_own_currency() -> None:
    """q quotes BTC/USDT at 100 with USD/USDT at 1.00, then falls silent while USD/USDT rises 3 %
    and BTC/USD falls to 100 / 1.03: BTC/USDT has not moved, and q's quote, 100 / 1.03 USD, is
    the index. 3 s old, it counts: the index in USDT (x times the inverted leg) is where it was
    (not so in USD, which moved 2.9 %, nor x divided by the leg, which moved 5.7 %)."""
    core = Core(_inverted_leg_config())
    for s in SPOT:
        assert core.ingest(Quote(s, "USD/USDT", B, price=1.0)) is None
        assert core.ingest(Quote(s, "BTC/USD", B, price=100.0)) is None
    assert core.ingest(Quote("q", "BTC/USDT", B, price=100.0, kind="perp")) is None
    core.run_round(B)
    later = B + 3_000
    for s in SPOT:
        assert core.ingest(Quote(s, "USD/USDT", later, price=1.03)) is None
        assert core.ingest(Quote(s, "BTC/USD", later, price=100.0 / 1.03)) is None
    res = core.run_round(later)
    assert res.mark is not None
    v = res.mark.values[1]
    assert v.perp_reasons == (None,), v
    assert v.perps_used == 1


def test_a_routed_perp_s_bid_and_ask_are_converted_for_the_premium() -> None:
    """USDT/USD at 0.5: q's bid 202 and ask 206 USDT are 101 and 103 USD, so the impact premium
    on an index of 100 is (101 - 100) / 100 = 0.01, not (202 - 100) / 100."""
    mark = Rig().mark(B + 1_000, usdt=0.5, q=(202.0, 206.0))
    assert (mark.perps_used, mark.estimators.perp_median) == (1, "102.00")
    assert mark.premium == "0.01000000"


def test_a_sample_straddling_a_boundary_weighs_only_its_time_after_it() -> None:
    """Rounds at 50 s, 61 s and 62 s with premiums 0.002, 0.002, 0.004: in the interval from 60 s
    the 61 s sample weighs 1 s (not the 11 s since the 50 s round) and the 62 s one 1 s, so the
    estimate is F(0.003) = 0.0025 (with 11 s it would be F(0.0021667) = 0.0016667)."""
    rig = Rig(make_config(mark=MINUTE))
    rig.mark(B + 50_000, p=100.2)
    rig.mark(B + 61_000, p=100.2)
    assert rig.mark(B + 62_000, p=100.4).funding_rate_estimate == "0.00250000"


def test_a_round_time_that_goes_back_onto_a_boundary_settles_nothing() -> None:
    """The core takes its round time as given: rounds at 30 s and 35 s (premium 0.002), then one
    at 0 s, a boundary the running interval began at, then 60 s. The round at 0 s belongs to
    the interval before and adds nothing; the running interval settles at 60 s, not at 0 s,
    and the grid stays on 60 s. (Before, the round at 0 s settled it early, stamped 60 s, and
    every later boundary was named one interval ahead: last_funding_ts 120 s at 60 s.)"""
    rig = Rig(make_config(mark=MINUTE))
    rig.mark(B + 30_000, p=100.2)
    rig.mark(B + 35_000, p=100.2)
    back = rig.core.run_round(B).report(rig.core.index["BTC/USD"]).mark
    assert back is not None
    assert (back.last_funding_rate, back.last_funding_ts, back.next_funding_ts) == (
        None,
        None,
        B + 60_000,
    )
    on = rig.mark(B + 60_000, p=100.2)
    assert (on.last_funding_rate, on.last_funding_ts, on.next_funding_ts) == (
        "0.00150000",
        B + 60_000,
        B + 120_000,
    )


def test_a_reload_keeps_the_running_funding_interval_and_the_time_of_the_last_round() -> None:
    """Premium 0.002 at 10 s (weight 1 s: the first round's interval), a reload, then 0.004 at
    40 s: the second sample weighs the 30 s since the round before the reload, so the estimate is
    F((0.002 x 1 + 0.004 x 30) / 31) = F(0.0039355) = 0.0034355."""
    rig = Rig(make_config(mark=MINUTE))
    rig.mark(B + 10_000, p=100.2)
    rig.core.reconfigure(make_config(mark=MINUTE))
    assert rig.mark(B + 40_000, p=100.4).funding_rate_estimate == "0.00343548"


def test_a_reload_that_changes_the_funding_interval_restarts_the_running_average() -> None:
    """A sample of 0.002 at 10 s in a 60 s interval, then a reload to 120 s intervals: the old
    sample belongs to another grid and is dropped, so 0.004 at 20 s (weight 10 s) alone gives
    F(0.004) = 0.0035 (keeping it would give F(0.0038182) = 0.0033182), and no rate is settled."""
    rig = Rig(make_config(mark=MINUTE))
    rig.mark(B + 10_000, p=100.2)
    rig.core.reconfigure(make_config(mark={"funding_interval_s": 120}))
    mark = rig.mark(B + 20_000, p=100.4)
    assert mark.funding_rate_estimate == "0.00350000"
    assert (mark.last_funding_rate, mark.last_funding_ts) == (None, None)
    assert mark.next_funding_ts == B + 120_000


def test_a_reload_that_tightens_max_perp_deviation_cuts_the_carried_basis_to_it() -> None:
    """p at 109 under a 10 % limit makes the basis EMA +9 %; a reload to 2 % keeps the EMA
    (docs/mark.md, Config) cut to +2 %, so every estimator stays within the limit in force.
    One second later p's 109 is too far, and the fallback is 100 x (1 + 0.02 x 0.5^(1/60)) =
    101.98; with p back at 101 a second after that, the basis EMA is 101.98 and the mark their
    mean, 101.49. Before, the old +9 % was carried whole: a fallback of 108.90, then a basis
    EMA of 108.82 and a mark of 104.91, 9 % and 5 % from the index under a 2 % limit."""
    rig = Rig(make_config(mark={"max_perp_deviation": 0.1}))
    assert rig.mark(B + 1_000, p=109.0).price == "109.00"
    rig.core.reconfigure(make_config(mark={"max_perp_deviation": 0.02}))
    fallback = rig.mark(B + 2_000)
    assert (fallback.estimators.fallback, fallback.price) == ("101.98", "101.98")
    back = rig.mark(B + 3_000, p=101.0)
    assert (back.estimators.basis_ema, back.estimators.perp_median) == ("101.98", "101.00")
    assert back.price == "101.49"


def test_a_perp_source_a_reload_disables_stops_counting_at_once() -> None:
    """p and q both count; a reload disables p: from the next round only q counts (p's last
    quote, still fresh, does not), as for a spot slot."""
    rig = Rig()
    assert rig.mark(B + 1_000, p=101.0, q=101.0).perps_used == 2
    cfg = make_config()
    doc = cfg.model_dump(by_alias=True)
    doc["sources"]["p"]["enabled"] = False
    rig.core.reconfigure(parse_config(doc, env={}))
    assert rig.mark(B + 2_000).perps_used == 1


def test_a_perp_a_reload_reads_from_another_instrument_starts_afresh() -> None:
    """A reload points p's BTC/USD at another instrument of its venue: the old instrument's quote
    stops counting at once; q, unchanged, keeps counting."""
    rig = Rig()
    assert rig.mark(B + 1_000, p=101.0, q=101.0).perps_used == 2
    doc = make_config().model_dump(by_alias=True)
    doc["sources"]["p"]["instruments"] = {"BTC/USD": "BTC-USDC-SWAP"}
    rig.core.reconfigure(parse_config(doc, env={}))
    assert rig.mark(B + 2_000).perps_used == 1


def test_a_reload_that_changes_the_funding_interval_clears_the_last_rate_until_its_boundary() -> (
    None
):
    """One-minute intervals: 0.002 at 30 s and 60 s settles F(0.002) = 0.0015 at 60 s. A reload
    to 120 s intervals at 70 s: the settled rate belongs to the old grid, so `last_funding_rate`
    and `last_funding_ts` are null from the next round until the first boundary of the new grid
    (120 s), where the interval running at the reload settles on the samples from the last round
    before it on: 0.004 for 10 s + 49 s + 1 s, F(0.004) = 0.0035. A reload that keeps the
    interval keeps the settled rate (docs/mark.md, Config)."""
    for interval, after in ((120, (None, None)), (60, ("0.00150000", B + 60_000))):
        rig = Rig(make_config(mark=MINUTE))
        rig.mark(B + 30_000, p=100.2)
        settled = rig.mark(B + 60_000, p=100.2)
        assert (settled.last_funding_rate, settled.last_funding_ts) == ("0.00150000", B + 60_000)
        rig.core.reconfigure(make_config(mark={"funding_interval_s": interval}))
        for now in (B + 70_000, B + 119_000):
            mark = rig.mark(now, p=100.4)
            assert (mark.last_funding_rate, mark.last_funding_ts) == after, interval
        if interval == 120:
            assert mark.next_funding_ts == B + 120_000
            boundary = rig.mark(B + 120_000, p=100.4)
            assert (boundary.last_funding_rate, boundary.last_funding_ts) == (
                "0.00350000",
                B + 120_000,
            )


def test_a_perp_quote_with_a_venue_time_far_in_the_past_is_stale_and_the_round_runs() -> None:
    """The door bounds a venue time from above only. One beyond int64 stopped every round while
    its quote was held (the step could not convert it), and one at int64's lower limit wrapped
    its age into a negative number and read as ahead ("future"): each is stale, as any time
    older than max_age_ms, and the other perpetual still counts."""
    for venue_ts in (-(10**20), -(2**63), -(2**62) - 1):
        rig = Rig()
        rig._ingest(Quote("p", "BTC/USD", B + 1_000, price=101.0, kind="perp", venue_ts=venue_ts))
        mark = rig.mark(B + 1_000, q=101.0)
        assert rig.last is not None and rig.last.mark is not None
        values = rig.last.mark.values[rig.core.index["BTC/USD"]]
        assert values.perp_reasons == ("stale", None), venue_ts
        assert (mark.perps_used, mark.estimators.perp_median) == (1, "101.00"), venue_ts


def _engine_of_x(perps: str) -> MarkEngine:
    """An engine of one market, X/USD (spot a), with these perpetual venues for it."""
    cfg = parse_config(
        {
            "sources": {"a": {"type": "binance"}, **{p: {"type": "okx"} for p in perps}},
            "markets": [
                {
                    "symbol": "X/USD",
                    "min_sources": 1,
                    "sources": [{"source": "a", "pair": "X/USD"}],
                    "perp_sources": [{"source": p, "pair": "X/USD"} for p in perps],
                }
            ],
        },
        env={},
    )
    return MarkEngine(cfg, Layout.from_config(cfg))


def test_an_equal_copy_of_a_held_perp_quote_with_the_other_zero_is_read_again() -> None:
    """The step takes quotes that compare equal to last round's as the ones it read then, and
    0.0 == -0.0: a copy with the other zero must still be read, or the perp's mid keeps the
    sign of the one before. (Only a zero: the door holds none, the engine is driven directly.)"""
    engine = _engine_of_x("p")
    key = ("p", "X/USD", "perp")
    index = np.array([100.0])
    minus, plus = (Quote("p", "X/USD", B, price=zero, kind="perp") for zero in (-0.0, 0.0))
    assert minus == plus
    mids = [engine.step(B + 1_000, index, {key: q}).values[0].perp_mids for q in (minus, plus)]
    assert repr(mids) == "[(-0.0,), (0.0,)]"


def test_the_same_quotes_held_under_other_keys_are_read_again() -> None:
    """The step takes a mapping whose quotes are last round's, in order, as unchanged only if
    its keys are too: the same quote held for another perpetual counts for that one."""
    engine = _engine_of_x("pr")
    quote = Quote("p", "X/USD", B, price=101.0, kind="perp")
    index = np.array([100.0])
    reasons = [
        engine.step(B + 1_000 * k, index, {(s, "X/USD", "perp"): quote}).values[0].perp_reasons
        for k, s in enumerate("ppr")
    ]
    assert reasons == [(None, "no_quote")] * 2 + [("no_quote", None)]
