"""Quotes that lag the market (docs/pricing.md section 2): a fresh quote older than `lag_ms` is
stale when two or more younger quotes agree on a level more than `max_deviation` away from it.
Venues silent behind open sockets must not hold a price through a move as a weight majority."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from oracled.config import ConfigError
from oracled.core import Core
from oracled.model import Report
from tests.core.core_helpers import T0, config, market, quote

HEAVY = {"a": 3.0, "b": 3.0, "c": 3.0}  # a, b, c: 9 of 12 weight; d, e, f: one each


def _core(**extra: object) -> Core:
    btc = market("BTC/USD", "abcdef", weights=HEAVY, **extra)
    core = Core(config([btc], resume_rounds=1))
    for s in "abcdef":
        assert core.ingest(quote(s, "BTC/USD", 50_000.0, T0)) is None
    assert core.run_round(T0).report(0).status == "active"
    return core


def _round(core: Core, now: int, prices: Mapping[str, float]) -> Report:
    for s, price in prices.items():
        assert core.ingest(quote(s, "BTC/USD", price, now)) is None
    return core.run_round(now).report(0)


def _reasons(report: Report) -> str:
    return "".join("-" if s.used else (s.reason or "?")[0] for s in report.sources)


def test_a_weight_majority_older_than_lag_ms_is_outvoted_by_a_younger_quorum() -> None:
    """a, b, c (9 of 12 weight) last quoted 2,001 ms ago at 50,000; d, e, f (3, the quorum)
    quote 49,000 now. Before the rule a, b, c were the centre and d, e, f outliers: the market
    was live at 50,000, where nobody quoted any more."""
    report = _round(_core(), T0 + 2_001, dict.fromkeys("def", 49_000.0))
    assert _reasons(report) == "sss---"
    assert [s.age_ms for s in report.sources[:3]] == [2_001] * 3  # younger than max_age_ms
    assert (report.status, report.reasons, report.price) == ("degraded", ["thin"], "49000.00")


def test_a_quote_exactly_lag_ms_old_still_votes() -> None:
    """Older than `lag_ms` lags; as old as it does not: at 2,000 ms a, b, c are the centre and
    the three younger quotes the outliers."""
    report = _round(_core(), T0 + 2_000, dict.fromkeys("def", 49_000.0))
    assert _reasons(report) == "---ooo"
    assert (report.status, report.price) == ("degraded", "50000.00")


def test_old_quotes_that_agree_with_the_younger_ones_keep_their_vote() -> None:
    """A quiet book is not a silent venue: old quotes within `max_deviation` of the younger
    quorum's centre vote, whatever their age under `max_age_ms`."""
    report = _round(_core(), T0 + 9_000, dict.fromkeys("def", 49_600.0))
    assert _reasons(report) == "------"
    assert report.status == "active"


def test_lag_ms_is_the_market_s_own() -> None:
    """With `lag_ms = 5000`, quotes 4,000 ms old are young: they still hold the centre."""
    report = _round(_core(lag_ms=5_000), T0 + 4_000, dict.fromkeys("def", 49_000.0))
    assert _reasons(report) == "---ooo"
    report = _round(_core(lag_ms=5_000), T0 + 5_001, dict.fromkeys("def", 49_000.0))
    assert _reasons(report) == "sss---"


def test_two_young_quotes_under_the_quorum_pause_the_market_rather_than_leave_it_behind() -> None:
    """Two young quotes that agree, under `min_sources = 3`: the old quotes are stale all the
    same, and the market, short of its quorum, pauses (`quorum`, `stale`) where it stayed live
    at 50,000, a level nobody quoted any more, with d and e its outliers."""
    report = _round(_core(), T0 + 3_000, dict.fromkeys("de", 49_000.0))
    assert _reasons(report) == "sss--s"
    assert (report.status, report.reasons, report.price) == ("paused", ["quorum", "stale"], None)


def test_one_heavy_young_venue_cannot_leave_behind_an_old_value_the_others_agree_with() -> None:
    """Under `min_sources = 2`, young d at 50,000 (weight 1) and e at 50,450 (weight 5, within
    1 % of d); old a, b, c at 49,600, 0.8 % from d but 1.7 % from e. By weight e alone is the
    young centre; the rule reads the young values by count (the two middle ones), so e's print
    never makes a value stale that d, the other young venue, agrees with."""
    weights = {"a": 3.0, "b": 3.0, "c": 3.0, "d": 1.0, "e": 5.0}
    btc = market("BTC/USD", "abcde", weights=weights, min_sources=2)
    core = Core(config([btc], resume_rounds=1))
    for s in "abcde":
        assert core.ingest(quote(s, "BTC/USD", 49_600.0, T0)) is None
    assert core.run_round(T0).report(0).status == "active"
    report = _round(core, T0 + 3_000, {"d": 50_000.0, "e": 50_450.0})
    assert [s.reason for s in report.sources][:3] == [None, None, None]


def test_one_young_venue_never_outvotes_the_others_even_at_a_quorum_of_one() -> None:
    """`min_sources = 1`: one venue quoting alone would be a quorum, but a lone print must
    never move the price: the young set needs two venues at least."""
    report = _round(_core(min_sources=1), T0 + 3_000, {"d": 48_000.0})
    assert _reasons(report) == "---o--"
    assert report.price == "50000.00"
    report = _round(_core(min_sources=1), T0 + 3_000, dict.fromkeys("de", 48_000.0))
    assert _reasons(report) == "sss--s"
    assert report.price == "48000.00"


def test_young_quotes_that_disagree_among_themselves_outvote_nobody() -> None:
    """d, e and f are young but no quorum of them agrees (2 % apart each): there is no younger
    market to lag, so the old quotes vote as before."""
    report = _round(_core(), T0 + 3_000, {"d": 48_000.0, "e": 49_000.0, "f": 50_000.0})
    assert _reasons(report)[:3] == "---"
    assert report.price == "50000.00"


def test_every_old_quote_is_judged_alike_whatever_its_weight() -> None:
    """Under `min_sources = 2`, d and e (young, agreeing) are a quorum: f's quote, as old as
    a, b and c's and as far from them, is stale with theirs, light as it is."""
    report = _round(_core(min_sources=2), T0 + 3_000, dict.fromkeys("de", 49_000.0))
    assert _reasons(report) == "sss--s"
    assert (report.status, report.price) == ("degraded", "49000.00")


@pytest.mark.parametrize(
    ("value", "words"), [(0, "must be >= 1"), (-1, "must be >= 1"), (86_400_001, "must be <= ")]
)
def test_lag_ms_out_of_range_is_refused(value: int, words: str) -> None:
    with pytest.raises(ConfigError, match=rf"markets\[0\]\.lag_ms: {words}"):
        config([market("BTC/USD", "abc", lag_ms=value)])


def test_a_lagging_leg_never_makes_quotes_routed_through_another_leg_stale() -> None:
    """BTC/USD quoted through two legs: a, b, c in USDT (3 of 6 weight), d and e in USDC (1.5
    each), f directly. USDT falls 2 %: the BTC/USDT books reprice at once, the USDT/USD books
    have not followed, so a, b and c, young, agree on BTC +2 %; d, e and f are quiet (BTC and
    USDC flat), their quotes right and older than `lag_ms`. a, b and c share their leg's error:
    they must not judge d and e, whose leg is another. Judged by every young slot (pricing
    revision 23), d and e were stale, a, b and c the weight majority, and BTC/USD went out 2 %
    high."""
    usdt, usdc = (market(leg, "uv", min_sources=2) for leg in ("USDT/USD", "USDC/USD"))
    btc = {
        "symbol": "BTC/USD",
        "min_sources": 2,
        "sources": [
            *({"source": s, "pair": "BTC/USDT"} for s in "abc"),
            *({"source": s, "pair": "BTC/USDC", "weight": 1.5} for s in "de"),
            {"source": "f", "pair": "BTC/USD"},
        ],
    }
    routes = [
        {"from": "USDT", "to": "USD", "via": "USDT/USD"},
        {"from": "USDC", "to": "USD", "via": "USDC/USD"},
    ]
    core = Core(config([usdt, usdc, btc], routes, resume_rounds=1))
    pairs = {"a": "BTC/USDT", "b": "BTC/USDT", "c": "BTC/USDT", "d": "BTC/USDC", "e": "BTC/USDC"}
    for now, price in ((T0, 50_000.0), (T0 + 3_000, 51_000.0)):
        for s in "uv":
            for leg in ("USDT/USD", "USDC/USD"):
                assert core.ingest(quote(s, leg, 1.0, now)) is None
        for s, pair in pairs.items() | {("f", "BTC/USD")}:
            if now == T0 or pair == "BTC/USDT":
                assert core.ingest(quote(s, pair, price, now)) is None
        result = core.run_round(now)
    report = result.report(result.layout.markets.index("BTC/USD"))
    assert [s.age_ms for s in report.sources] == [0, 0, 0, 3_000, 3_000, 3_000]
    assert _reasons(report) == "ooo---"
    assert report.price == "50000.00"
