"""The naive policies and the clean reference read a source's value the way the core does:
an inverse pair is inverted, and a conversion leg listed the other way round is divided by."""

from __future__ import annotations

import pytest

from oracled.config import Config, parse_config
from oracled.core import Core
from oracled.model import Quote
from oracled.stress.policies import QuoteWatch

T0 = 1_700_000_000_000


def _config() -> Config:
    """JPY/USD from venues quoting USD/JPY; BTC/USD from venues quoting BTC/USDT, converted
    through a USD/USDT market (the leg listed the other way round)."""
    venues = ("a", "b", "c")
    return parse_config(
        {
            "sources": {v: {"type": "binance"} for v in venues},
            "routes": [{"from": "USDT", "to": "USD", "via": "USD/USDT"}],
            "markets": [
                {
                    "symbol": "JPY/USD",
                    "price_exponent": -8,
                    "sources": [{"source": v, "pair": "USD/JPY"} for v in venues],
                },
                {
                    "symbol": "USD/USDT",
                    "price_exponent": -6,
                    "sources": [{"source": v, "pair": "USD/USDT"} for v in venues],
                },
                {
                    "symbol": "BTC/USD",
                    "sources": [{"source": v, "pair": "BTC/USDT"} for v in venues],
                },
            ],
        },
        env={},
    )


def test_inverse_pairs_and_legs_convert_like_the_core() -> None:
    """USD/JPY at 150 is JPY/USD at 1/150 for every policy; with USDT at 0.80 USD (USD/USDT at
    1.25), BTC/USDT at 62,500 is BTC/USD at 50,000 for the clean reference."""
    watch = QuoteWatch(_config())
    for v in ("a", "b", "c"):
        watch.on_quote(Quote(v, "USD/JPY", T0, price=150.0))
        watch.on_quote(Quote(v, "USD/USDT", T0, price=1.25))
        watch.on_quote(Quote(v, "BTC/USDT", T0, price=62_500.0))
    reference = watch.reference(T0)
    assert reference["JPY/USD"] == pytest.approx(1 / 150)
    assert reference["BTC/USD"] == pytest.approx(50_000.0)
    assert watch.plain_median()["JPY/USD"] == pytest.approx(1 / 150)
    assert watch.single_venue("a")["JPY/USD"] == pytest.approx(1 / 150)


PROXY = "0x5f4eC3Df9cbd43714FE2740f5E3616155c5b8419"


def test_the_clean_reference_ages_each_slot_by_its_own_limit_like_the_core() -> None:
    """A Chainlink slot (heartbeat 3600 s) quoted 30 s ago and a venue slot with its own 60 s
    `max_age_ms` quoted 40 s ago are fresh for the core in a market of `max_age_ms` 5 s, so the
    clean reference takes them too: the median of 3,000, 3,002, 3,010 and 3,020, as the core
    uses exactly these four; the fifth venue, 40 s old on the market's limit, is stale for both."""
    cfg = parse_config(
        {
            "chains": {"eth": {"chain_id": 1, "rpc_urls_env": "TEST_ETH_RPC"}},
            "sources": {
                **{v: {"type": "binance"} for v in ("a", "b", "slow", "late")},
                "cl": {
                    "type": "chainlink",
                    "chain": "eth",
                    "feeds": {"ETH/USD": {"address": PROXY, "heartbeat_s": 3600}},
                },
            },
            "markets": [
                {
                    "symbol": "ETH/USD",
                    "min_sources": 1,
                    "max_age_ms": 5_000,
                    "sources": [
                        {"source": "a", "pair": "ETH/USD"},
                        {"source": "b", "pair": "ETH/USD"},
                        {"source": "cl", "pair": "ETH/USD"},
                        {"source": "slow", "pair": "ETH/USD", "max_age_ms": 60_000},
                        {"source": "late", "pair": "ETH/USD"},
                    ],
                }
            ],
        },
        env={"TEST_ETH_RPC": "http://127.0.0.1:8545"},
    )
    now = T0 + 60_000
    quotes = [
        Quote("a", "ETH/USD", now - 1_000, price=3_000.0),
        Quote("b", "ETH/USD", now - 1_000, price=3_002.0),
        Quote("cl", "ETH/USD", now - 30_000, price=3_010.0),
        Quote("slow", "ETH/USD", now - 40_000, price=3_020.0),
        Quote("late", "ETH/USD", now - 40_000, price=2_000.0),
    ]
    watch, core = QuoteWatch(cfg), Core(cfg)
    for q in quotes:
        watch.on_quote(q)
        assert core.ingest(q) is None
    report = core.run_round(now).report(0)
    assert [s.reason for s in report.sources] == [None, None, None, None, "stale"]
    assert watch.reference(now)["ETH/USD"] == pytest.approx(3_006.0)


def test_quotes_the_core_refuses_at_the_door_are_no_value_for_any_policy() -> None:
    """A crossed book, a venue time ten minutes ahead of receipt, a price outside the oracle's
    band and a quote older than the one held are dropped by the core (docs/pricing.md §1); the
    watch ignores them too. Before, the future quote (60,000) stayed 'fresh' for ten minutes
    and was the clean reference alone once the real quotes went stale, though the oracle never
    saw it."""
    cfg = parse_config(
        {
            "oracle": {"max_price": 1_000_000.0},
            "sources": {v: {"type": "binance"} for v in ("a", "b", "c", "d")},
            "markets": [
                {
                    "symbol": "BTC/USD",
                    "min_sources": 1,
                    "max_age_ms": 5_000,
                    "sources": [{"source": v, "pair": "BTC/USD"} for v in ("a", "b", "c", "d")],
                }
            ],
        },
        env={},
    )
    quotes = [
        Quote("a", "BTC/USD", T0, price=50_000.0),
        Quote("b", "BTC/USD", T0, price=50_010.0),
        Quote("b", "BTC/USD", T0, bid=51_000.0, ask=50_900.0),  # crossed
        Quote("c", "BTC/USD", T0, venue_ts=T0 + 600_000, price=60_000.0),  # future
        Quote("d", "BTC/USD", T0, price=50_020.0),
        Quote("d", "BTC/USD", T0, price=2_000_000.0),  # absurd
        Quote("a", "BTC/USD", T0, venue_ts=T0 - 1_000, price=40_000.0),  # out of order
    ]
    watch, core = QuoteWatch(cfg), Core(cfg)
    refused = []
    for q in quotes:
        watch.on_quote(q)
        reason = core.ingest(q)
        if reason is not None:
            refused.append(str(reason))
    assert refused == ["crossed", "future", "absurd", "out_of_order"]
    assert watch.reference(T0 + 1_000)["BTC/USD"] == pytest.approx(50_010.0)
    assert watch.plain_median()["BTC/USD"] == pytest.approx(50_010.0)
    assert [watch.single_venue(v)["BTC/USD"] for v in ("a", "c")] == [50_000.0, None]
    assert watch.reference(T0 + 60_000)["BTC/USD"] is None  # all stale: no clean value


def test_the_clean_reference_drops_values_outside_the_markets_own_bounds_like_the_core() -> None:
    """A market's own `min_price`/`max_price` bound the converted value in the core (slot reason
    `bounds`); the clean reference drops the same values. With USDT at 0.50 USD, BTC/USDT at
    100,000 is 50,000 USD, inside BTC/USD's [45,000, 55,000] though the venue's figure is not,
    and BTC/USDT at 60,000 is 30,000 USD, outside. Before, the reference took the two 30,000s
    and was 40,050 where the oracle priced 50,005."""
    venues = ("a", "b", "c", "d")
    cfg = parse_config(
        {
            "sources": {v: {"type": "binance"} for v in venues},
            "routes": [{"from": "USDT", "to": "USD", "via": "USDT/USD"}],
            "markets": [
                {
                    "symbol": "USDT/USD",
                    "price_exponent": -6,
                    "min_sources": 1,
                    "sources": [{"source": v, "pair": "USDT/USD"} for v in venues],
                },
                {
                    "symbol": "BTC/USD",
                    "min_sources": 1,
                    "max_deviation": 0.5,
                    "min_price": 45_000.0,
                    "max_price": 55_000.0,
                    "sources": [{"source": v, "pair": "BTC/USDT"} for v in venues],
                },
            ],
        },
        env={},
    )
    watch, core = QuoteWatch(cfg), Core(cfg)
    quotes = [Quote(v, "USDT/USD", T0, price=0.5) for v in venues]
    for v, price in zip(venues, (100_000.0, 100_020.0, 60_000.0, 60_200.0), strict=True):
        quotes.append(Quote(v, "BTC/USDT", T0, price=price))
    for q in quotes:
        watch.on_quote(q)
        assert core.ingest(q) is None
    for k in range(1, 6):  # the leg market goes live after its resume rounds
        report = core.run_round(T0 + 100 * k).report(core.index["BTC/USD"])
    assert [s.reason for s in report.sources] == [None, None, "bounds", "bounds"]
    assert watch.reference(T0 + 500)["BTC/USD"] == pytest.approx(50_005.0)
