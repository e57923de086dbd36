"""The whole core (book, routes, aggregation, gates, mark) fed whatever a broken or hostile
source could send: NaN, infinities, zero, negatives, denormals, values that overflow when added
or converted, lone sides, crossed books, any venue time, kinds and pairs mixed up."""

from __future__ import annotations

import math
from decimal import Decimal

import msgspec
from core_helpers import ROUND_MS, T0, USDT_ROUTE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oracled.config import Config, parse_config
from oracled.core import Core, RoundResult
from oracled.model import Kind, Quote

SPOT = "abcdef"  # e and f quote BTC in USDT, through the USDT/USD leg
LIVE = ("active", "degraded")
KINDS: tuple[Kind, ...] = ("spot", "perp")


def _config(min_sources: int, skew: int, weights: list[float], perp_votes: bool) -> Config:
    """USDT/USD (b quotes it inverted, USD/USDT) and BTC/USD with two perpetuals (p direct,
    q in USDT); with `perp_votes`, p is also one of BTC/USD's voting sources."""
    btc = [
        {"source": s, "pair": "BTC/USDT" if s in "ef" else "BTC/USD", "weight": w}
        for s, w in zip(SPOT, weights, strict=True)
    ]
    if perp_votes:
        btc.append({"source": "p", "pair": "BTC/USD", "kind": "perp"})
    markets = [
        {
            "symbol": "USDT/USD",
            "price_exponent": -6,
            "min_sources": 2,
            "sources": [
                {"source": s, "pair": "USD/USDT" if s == "b" else "USDT/USD"} for s in "abcd"
            ],
        },
        {
            "symbol": "BTC/USD",
            "min_sources": min_sources,
            "max_age_ms": 1_000,
            "sources": btc,
            "perp_sources": [
                {"source": "p", "pair": "BTC/USD"},
                {"source": "q", "pair": "BTC/USDT"},
            ],
        },
    ]
    return parse_config(
        {
            "oracle": {"resume_rounds": 2, "jump_confirm_rounds": 2, "max_clock_skew_ms": skew},
            "sources": {s: {"type": "okx"} for s in SPOT + "pq"},
            "markets": markets,
            "routes": [USDT_ROUTE],
        },
        env={},
    )


hostile = st.one_of(
    st.sampled_from(
        (math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, 5e-324, 1e-310, 1e308, 1.7e308, 1e13)
    ),
    st.floats(),
)
usdt, btc = st.floats(0.95, 1.05), st.floats(45_000.0, 70_000.0)
value = st.one_of(st.none(), usdt, btc, hostile)
quote = st.tuples(
    st.sampled_from(SPOT + "pq"),
    st.sampled_from(("BTC/USD", "BTC/USDT", "USDT/USD", "USD/USDT")),
    st.sampled_from(KINDS),
    value,
    value,
    value,
    st.one_of(st.none(), st.integers(-3_000, 3_000), st.sampled_from((-(2**62), 2**62, 2**63 - 1))),
)
# Per round: a price every spot source of USDT/USD then of BTC/USD quotes as its pair (None: no
# such quotes), sane or not, so that hostile values also come as a majority; then single quotes.
level = st.one_of(st.none(), hostile)
tape = st.lists(
    st.tuples(st.one_of(usdt, level), st.one_of(btc, level), st.lists(quote, max_size=12)),
    min_size=1,
    max_size=16,
)
# source, pair, kind, price, bid, ask, venue time relative to the round (None: not sent)
Raw = tuple[str, str, Kind, float | None, float | None, float | None, int | None]
Round = tuple[float | None, float | None, list[Raw]]


def _play(cfg: Config, rounds: list[Round]) -> list[RoundResult]:
    core = Core(cfg)
    results = []
    for r, (usdt_level, btc_level, quotes) in enumerate(rounds):
        now = T0 + r * ROUND_MS
        for level, symbol in ((usdt_level, "USDT/USD"), (btc_level, "BTC/USD")):
            if level is not None:
                for slot in cfg.markets[core.index[symbol]].sources:
                    core.ingest(Quote(slot.source, slot.pair, now, price=level, kind=slot.kind))
        for source, pair, kind, price, bid, ask, ahead in quotes:
            venue_ts = None if ahead is None else now + ahead
            core.ingest(
                Quote(
                    source, pair, now, price=price, bid=bid, ask=ask, kind=kind, venue_ts=venue_ts
                )
            )
        results.append(core.run_round(now))
    return results


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tape,
    st.integers(1, 4),
    st.integers(0, 3_000),
    st.lists(st.floats(0.001, 1e6), min_size=len(SPOT), max_size=len(SPOT)),
    st.booleans(),
)
def test_hostile_quotes_never_raise_nor_reach_a_published_price(
    rounds: list[Round],
    min_sources: int,
    skew: int,
    weights: list[float],
    perp_votes: bool,
) -> None:
    """Whatever the quotes, no round raises; a live report's price is inside the values that
    voted, each inside the price band (so finite and positive), above zero at the market's
    precision, its confidence within the band's ceiling (docs/pricing.md section 5) and its
    mark, if any, above zero too; a report that is not live has no price, no confidence and
    no mark price. The same tape gives the same bytes."""
    cfg = _config(min_sources, skew, weights, perp_votes)
    results = _play(cfg, rounds)
    again = _play(cfg, rounds)
    enc = msgspec.json.Encoder()
    for result, twin in zip(results, again, strict=True):
        reports = result.reports()
        assert [enc.encode(r) for r in reports] == [enc.encode(r) for r in twin.reports()]
        for i, report in enumerate(reports):
            mark = report.mark
            if report.status not in LIVE:
                assert report.price is None and report.confidence is None, report
                assert mark is None or mark.price is None, report
                continue
            price = float(result.price[i])
            voted = [float(result.value[i, k]) for k, s in enumerate(report.sources) if s.used]
            assert len(voted) >= cfg.markets[i].min_sources
            band = cfg.oracle.min_price, cfg.oracle.max_price  # no market sets its own
            assert all(band[0] <= v <= band[1] for v in voted), report
            assert min(voted) <= price <= max(voted), report
            assert report.price is not None and Decimal(report.price) > 0, report
            d = cfg.markets[i].max_deviation
            assert float(result.confidence[i]) <= price * d / (1.0 - d) * (1.0 + 1e-9)
            if mark is not None:
                assert mark.price is not None and Decimal(mark.price) > 0, report
