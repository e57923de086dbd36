"""Edges of a round's slot filters that a one-character change in core.py would cross: the
inclusive price bounds and the floor of the market's precision, quotes from ahead of the
round's clock, and which reason a slot that is both stale and routed through a dead leg gets."""

from __future__ import annotations

from core_helpers import T0, config, market, quote
from hypothesis import given, settings
from hypothesis import strategies as st

from oracled.config import WEIGHT_RANGE
from oracled.core import Core
from oracled.model import Quote


def test_values_exactly_at_the_market_bounds_are_in_bounds() -> None:
    """The market's [min_price, max_price] band is closed: sources at exactly 40,000 and 60,000
    with bounds 40,000..60,000 vote (all three are needed for the quorum), and the price is the
    median, 50,000."""
    btc = market(
        "BTC/USD",
        "abc",
        min_sources=3,
        min_price=40_000,
        max_price=60_000,
        max_deviation=0.25,
        circuit_breaker=0.5,
    )
    core = Core(config([btc], resume_rounds=1))
    for s, price in zip("abc", (40_000.0, 50_000.0, 60_000.0), strict=True):
        assert core.ingest(quote(s, "BTC/USD", price, T0)) is None
    report = core.run_round(T0).report(0)
    assert [(s.id, s.used, s.reason) for s in report.sources] == [
        ("a", True, None),
        ("b", True, None),
        ("c", True, None),
    ]
    assert (report.status, report.price) == ("degraded", "50000.00")  # degraded: thin


def _round_with_c_ahead_by(ahead_ms: int) -> tuple[bool, str, str | None]:
    """Round at T0 with a and b received at T0 and c received `ahead_ms` after the round's time
    (max_clock_skew_ms 1,000); returns (c used, status, price)."""
    core = Core(config([market("BTC/USD", "abc", min_sources=3)], resume_rounds=1,
                       max_clock_skew_ms=1_000))  # fmt: skip
    for s in "ab":
        assert core.ingest(quote(s, "BTC/USD", 50_000.0, T0)) is None
    assert core.ingest(quote("c", "BTC/USD", 50_000.0, T0 + ahead_ms)) is None
    report = core.run_round(T0).report(0)
    return report.sources[2].used, report.status, report.price


def test_a_quote_from_ahead_of_the_round_counts_only_within_the_clock_skew_bound() -> None:
    """A quote stamped up to max_clock_skew_ms after the round's time is fresh and votes; one
    stamped a millisecond later is not a price of this round: it does not vote, and without it
    the market has no quorum and no price."""
    assert _round_with_c_ahead_by(1_000) == (True, "degraded", "50000.00")
    assert _round_with_c_ahead_by(1_001) == (False, "unknown", None)


def test_a_stale_routed_slot_is_stale_not_route() -> None:
    """Freshness comes first (the round's step 1): a routed source whose own quote is too old is
    excluded as `stale` even while its leg is not live, so the operator looks at the venue, and
    the market (quorum lost) says `quorum, stale`, not `route`."""
    btc = market("BTC/USD", "ab", min_sources=3, max_age_ms=1_000)
    btc["sources"].append({"source": "r", "pair": "BTC/USDT"})
    cfg = config(
        [market("USDT/USD", ["u1", "u2", "u3"]), btc],
        [{"from": "USDT", "to": "USD", "via": "USDT/USD"}],
        resume_rounds=1,
    )
    core = Core(cfg)
    assert core.ingest(quote("r", "BTC/USDT", 50_000.0, T0)) is None
    for s in "ab":
        assert core.ingest(quote(s, "BTC/USD", 50_000.0, T0 + 2_000)) is None
    report = core.run_round(T0 + 2_000).report(1)
    assert {s.id: s.reason for s in report.sources} == {"a": None, "b": None, "r": "stale"}
    assert (report.status, report.reasons) == ("unknown", ["quorum", "stale"])


def test_a_stale_slot_whose_last_quote_was_flagged_is_stale() -> None:
    """A flag belongs to the quote that carried it: once that quote is too old the slot is
    `stale` like any other, and the market (quorum lost) says `quorum, stale`, not `flagged`
    (which would make it `unknown` as if the source were still reporting a non-price)."""
    core = Core(config([market("BTC/USD", "abc", min_sources=3, max_age_ms=1_000)],
                       resume_rounds=1))  # fmt: skip
    for s in "abc":
        assert core.ingest(quote(s, "BTC/USD", 50_000.0, T0)) is None
    assert core.run_round(T0).report(0).status == "degraded"
    flagged = Quote("c", "BTC/USD", T0 + 250, price=1.0, flag="liquidity")
    assert core.ingest(flagged) is None
    for s in "ab":
        assert core.ingest(quote(s, "BTC/USD", 50_000.0, T0 + 2_000)) is None
    report = core.run_round(T0 + 2_000).report(0)
    assert report.sources[2].reason == "stale"
    assert (report.status, report.reasons) == ("paused", ["quorum", "stale"])


def test_a_source_exactly_max_deviation_from_the_centre_is_kept() -> None:
    """Outliers are values *more than* max_deviation from the centre: with a 25 % limit and a
    centre of 50,000, a source at 62,500 (exactly +25 %, exact in binary) votes."""
    btc = market("BTC/USD", "abcde", max_deviation=0.25, circuit_breaker=0.5)
    core = Core(config([btc], resume_rounds=1))
    for s, price in zip("abcde", (50_000.0,) * 4 + (62_500.0,), strict=True):
        assert core.ingest(quote(s, "BTC/USD", price, T0)) is None
    report = core.run_round(T0).report(0)
    assert all(s.used for s in report.sources)
    assert (report.status, report.reasons, report.price) == ("active", [], "50000.00")


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 99), st.integers(1, 1_000), st.booleans())
def test_a_source_exactly_a_decimal_max_deviation_from_the_centre_is_kept(
    permille: int, thousands: int, below: bool
) -> None:
    """The same edge with a max_deviation of k / 1000, which binary cannot hold (0.01, 0.003):
    four sources at a centre c (a multiple of 1,000) and one exactly c x k / 1000 away, an
    integer, vote; one a unit further is an outlier. (Measured as |v / c - 1|, the division's
    rounding put 101 on a centre of 100 at 0.010000000000000009: an outlier at 1 %.)"""
    centre = 1_000.0 * thousands
    off = float(thousands * permille)  # centre x permille / 1000, exactly
    sign = -1.0 if below else 1.0
    btc = market("BTC/USD", "abcde", max_deviation=permille / 1000, circuit_breaker=0.5)
    for value, kept in ((centre + sign * off, True), (centre + sign * (off + 1.0), False)):
        core = Core(config([btc], resume_rounds=1))
        for s, price in zip("abcde", (centre,) * 4 + (value,), strict=True):
            assert core.ingest(quote(s, "BTC/USD", price, T0)) is None
        report = core.run_round(T0).report(0)
        assert report.sources[-1].reason == (None if kept else "outlier"), (value, centre)
        assert (report.status, report.price) == (
            "active" if kept else "degraded",
            format(centre, ".2f"),
        )


def test_age_ms_is_null_only_for_a_source_without_a_quote() -> None:
    """The contract's `age_ms` is null without a quote: a source that never quoted has none, a
    quoted one has its age at the round's time (300 ms), stale or not."""
    core = Core(config([market("BTC/USD", "abcd", min_sources=2)], resume_rounds=1))
    for s in "abc":
        assert core.ingest(quote(s, "BTC/USD", 50_000.0, T0)) is None
    report = core.run_round(T0 + 300).report(0)
    assert [(s.id, s.reason, s.age_ms) for s in report.sources] == [
        ("a", None, 300),
        ("b", None, 300),
        ("c", None, 300),
        ("d", "no_quote", None),
    ]


def test_a_recovery_is_a_transition_as_much_as_a_pause() -> None:
    """Transitions (logged and counted) name every status change, the way back up included:
    unknown to active when the streak is met, active to paused, paused to active."""
    core = Core(config([market("BTC/USD", "abc", min_sources=2, max_price=1e6)], resume_rounds=1))
    seen = []
    for r, prices in enumerate(((50_000.0,) * 3, (50_000.0, 2e6, 2e6), (50_000.0,) * 3)):
        for s, price in zip("abc", prices, strict=True):
            assert core.ingest(quote(s, "BTC/USD", price, T0 + r * 250)) is None
        seen += [(t.old, t.new) for t in core.run_round(T0 + r * 250).transitions]
    assert seen == [("unknown", "active"), ("active", "paused"), ("paused", "active")]


def test_a_round_result_keeps_its_own_last_good_price_after_later_rounds() -> None:
    """Reports are built from a RoundResult on demand, possibly after later rounds have run: a
    paused round's last good price and time stay those of that round (50,000 at T0), not the
    ones a later round moved on to (52,000 at T0 + 500)."""
    core = Core(config([market("BTC/USD", "abc", min_sources=2, max_price=1e6)], resume_rounds=1))
    for r, prices in enumerate(((50_000.0,) * 3, (50_000.0, 2e6, 2e6), (52_000.0,) * 3)):
        for s, price in zip("abc", prices, strict=True):
            assert core.ingest(quote(s, "BTC/USD", price, T0 + r * 250)) is None
        result = core.run_round(T0 + r * 250)
        if r == 1:
            paused = result
    assert result.report(0).last_good_price == "52000.00"
    report = paused.report(0)
    assert (report.status, report.last_good_price, report.last_good_ts) == (
        "paused",
        "50000.00",
        T0,
    )


def test_the_round_result_counts_the_sources_that_voted() -> None:
    """RoundResult.used (the metrics' sources-used figure) is the number of voting sources: 3
    of 4 here, the fourth excluded as an outlier."""
    core = Core(config([market("BTC/USD", "abcd", min_sources=2)], resume_rounds=1))
    for s, price in zip("abcd", (50_000.0,) * 3 + (60_000.0,), strict=True):
        assert core.ingest(quote(s, "BTC/USD", price, T0)) is None
    result = core.run_round(T0)
    assert result.used.tolist() == [3]
    assert [s.used for s in result.report(0).sources] == [True, True, True, False]


def test_the_extreme_weights_the_config_takes_still_give_the_textbook_median() -> None:
    """Every weight at the top of the accepted range (64 sources of 1e12, as many as a market may
    list) or at its bottom (1e-12) still splits evenly: the median of 49,000 to 51,000 spread
    evenly is 50,000, all of them voting. Beyond the range the sums
    overflowed or lost precision (three weights of 1e308 left the market without a price; three
    of 5e-324 gave 50,500), which is why the config refuses them."""
    low, high = WEIGHT_RANGE
    ids = [f"s{k:02d}" for k in range(64)]
    prices = [49_000.0 + 2_000.0 * k / 63 for k in range(64)]
    for weight in (low, high):
        btc = market(
            "BTC/USD",
            ids,
            weights=dict.fromkeys(ids, weight),
            min_sources=3,
            max_deviation=0.25,
            circuit_breaker=0.5,
        )
        core = Core(config([btc], resume_rounds=1))
        for s, price in zip(ids, prices, strict=True):
            assert core.ingest(quote(s, "BTC/USD", price, T0)) is None
        report = core.run_round(T0).report(0)
        assert all(s.used for s in report.sources), weight
        assert (report.status, report.price) == ("active", "50000.00"), weight


def test_a_value_below_one_unit_of_the_last_decimal_is_out_of_bounds() -> None:
    """A market with two decimals cannot publish 0.004 but as "0.00", a zero price: a value
    below one unit of its last decimal (0.01 here, whatever min_price says) is excluded as
    `bounds`, so the market pauses for its quorum instead. 0.01 itself still counts as a value
    (used, not `bounds`), though one unit is too coarse to publish live: the market is paused
    for `resolution` (tests/core/test_resolution.py). Found by the hostile-quotes property: a
    market fed 0.0039 at two decimals went live at "0.00"."""
    core = Core(config([market("X/USD", "abc", min_sources=2, circuit_breaker=0.99)],
                       resume_rounds=1))  # fmt: skip
    for s in "abc":
        assert core.ingest(quote(s, "X/USD", 1.0, T0)) is None
    assert core.run_round(T0).report(0).price == "1.00"
    for s in "abc":
        assert core.ingest(quote(s, "X/USD", 0.004, T0 + 250)) is None
    report = core.run_round(T0 + 250).report(0)
    assert (report.status, report.reasons, report.price) == ("paused", ["quorum"], None)
    assert {s.reason for s in report.sources} == {"bounds"}
    for s in "abc":
        assert core.ingest(quote(s, "X/USD", 0.01, T0 + 500)) is None
    report = core.run_round(T0 + 500).report(0)
    assert {(s.used, s.reason) for s in report.sources} == {(True, None)}
    assert (report.status, report.reasons, report.price) == ("paused", ["resolution"], None)
