"""Conversion routes, checked against hand computations: inverted legs, chained legs, bounds in
the market's units, the leg's full precision and what the confidence band does (not) carry."""

from __future__ import annotations

from core_helpers import T0, config, market, quote

from oracled.core import Core
from oracled.model import Quote, Report

USDT_VIA_INVERSE = {"from": "USDT", "to": "USD", "via": "USD/USDT"}
EUR_ROUTE = {"from": "EUR", "to": "USD", "via": "EUR/USD"}


def _round(core: Core, ts: int, quotes: list[tuple[str, str, float]]) -> dict[str, Report]:
    for source, pair, price in quotes:
        assert core.ingest(quote(source, pair, price, ts)) is None
    return {r.market: r for r in core.run_round(ts).reports()}


def test_a_chained_route_through_an_inverted_leg_is_computed_legs_first() -> None:
    """BTC/USD (listed first) is quoted in EUR; EUR/USD is quoted in USDT; the USDT leg is the
    inverted market USD/USDT at 1.25. By hand: EUR/USD = 1.5 / 1.25 = 1.2 and BTC/USD =
    53,000 x 1.2 = 63,600, in the first round, whatever the order of the markets in the config."""
    core = Core(
        config(
            [
                market("BTC/USD", "ab", "BTC/EUR", min_sources=2),
                market("EUR/USD", "ab", "EUR/USDT", min_sources=2, price_exponent=-5),
                market("USD/USDT", "ab", min_sources=2, price_exponent=-4),
            ],
            [EUR_ROUTE, USDT_VIA_INVERSE],
            resume_rounds=1,
        )
    )
    reports = _round(
        core,
        T0,
        [
            *((s, "USD/USDT", 1.25) for s in "ab"),
            *((s, "EUR/USDT", 1.5) for s in "ab"),
            *((s, "BTC/EUR", 53_000.0) for s in "ab"),
        ],
    )
    assert reports["EUR/USD"].price == "1.20000"
    assert reports["BTC/USD"].price == "63600.00"
    assert [s.value for s in reports["BTC/USD"].sources] == ["63600.00", "63600.00"]


def test_the_markets_bounds_apply_to_the_converted_value() -> None:
    """BTC/USD has max_price 70,000. With USDT at 0.8 USD, a BTC/USDT quote of 80,000 is 64,000 USD
    and used, though 80,000 is above the band; one of 90,000 USDT is 72,000 USD: excluded as
    `bounds`, its converted value shown. The band is the market's, in the market's units."""
    core = Core(
        config(
            [
                market("USDT/USD", "ab", min_sources=2, price_exponent=-4),
                {
                    "symbol": "BTC/USD",
                    "min_sources": 2,
                    "max_price": 70_000,
                    "sources": [
                        {"source": "a", "pair": "BTC/USDT"},
                        {"source": "b", "pair": "BTC/USD"},
                        {"source": "c", "pair": "BTC/USD"},
                    ],
                },
            ],
            [{"from": "USDT", "to": "USD", "via": "USDT/USD"}],
            resume_rounds=1,
        )
    )
    legs = [("a", "USDT/USD", 0.8), ("b", "USDT/USD", 0.8)]
    direct = [("b", "BTC/USD", 64_000.0), ("c", "BTC/USD", 64_000.0)]
    btc = _round(core, T0, [*legs, *direct, ("a", "BTC/USDT", 80_000.0)])["BTC/USD"]
    a = btc.sources[0]
    assert (a.value, a.reason) == ("64000.00", None)
    btc = _round(core, T0 + 250, [*legs, *direct, ("a", "BTC/USDT", 90_000.0)])["BTC/USD"]
    a = btc.sources[0]
    assert (a.value, a.used, a.reason) == ("72000.00", False, "bounds")
    assert btc.price == "64000.00"


def test_the_leg_converts_at_full_precision_not_at_its_published_rounding() -> None:
    """USDT/USD publishes two decimals: 1.0049 is shown as "1.00". A BTC/USDT quote of 60,000
    converts to 60,000 x 1.0049 = 60,294, not 60,000 x 1.00. (The leg is above 1.00: below it,
    two decimals cannot show it within 1 % and USDT/USD is not published live at all.)"""
    core = Core(
        config(
            [
                market("USDT/USD", "ab", min_sources=2),
                market("BTC/USD", "ab", "BTC/USDT", min_sources=2),
            ],
            [{"from": "USDT", "to": "USD", "via": "USDT/USD"}],
            resume_rounds=1,
        )
    )
    reports = _round(
        core,
        T0,
        [*((s, "USDT/USD", 1.0049) for s in "ab"), *((s, "BTC/USDT", 60_000.0) for s in "ab")],
    )
    assert reports["USDT/USD"].price == "1.00"
    assert reports["BTC/USD"].price == "60294.00"


def test_the_legs_own_band_is_not_added_to_a_routed_markets_confidence() -> None:
    """The USDT/USD venues disagree (0.98, 1.00, 1.02: quartiles 0.98 and 1.02 by cumulative
    weight, so confidence 0.02), the ETH/USDT venues agree at 2,000. Every ETH/USD value is 2,000 x
    the one leg price 1.00, so ETH/USD's confidence is 0.00: the leg's uncertainty is published
    with the leg market, not carried into the markets that convert through it."""
    core = Core(
        config(
            [
                market("USDT/USD", "abc", min_sources=3, max_deviation=0.05, price_exponent=-4),
                market("ETH/USD", "abc", "ETH/USDT", min_sources=3),
            ],
            [{"from": "USDT", "to": "USD", "via": "USDT/USD"}],
            resume_rounds=1,
        )
    )
    leg = [("a", "USDT/USD", 0.98), ("b", "USDT/USD", 1.0), ("c", "USDT/USD", 1.02)]
    reports = _round(core, T0, [*leg, *((s, "ETH/USDT", 2_000.0) for s in "abc")])
    assert (reports["USDT/USD"].price, reports["USDT/USD"].confidence) == ("1.0000", "0.0200")
    assert (reports["ETH/USD"].price, reports["ETH/USD"].confidence) == ("2000.00", "0.00")


def test_after_a_leg_pause_each_level_of_a_chain_waits_for_its_own_streak() -> None:
    """BTC/USD converts through EUR/USD, which converts through USD/USDT (resume_rounds 3). The
    USDT leg is paused by hand, then released: it is live on the third round, EUR/USD two rounds
    after it (its streak starts the round its leg is live), BTC/USD two rounds after EUR/USD."""
    core = Core(
        config(
            [
                market("BTC/USD", "ab", "BTC/EUR", min_sources=2),
                market("EUR/USD", "ab", "EUR/USDT", min_sources=2),
                market("USD/USDT", "ab", min_sources=2),
            ],
            [EUR_ROUTE, USDT_VIA_INVERSE],
            resume_rounds=3,
        )
    )
    quotes = [
        *((s, "USD/USDT", 1.25) for s in "ab"),
        *((s, "EUR/USDT", 1.5) for s in "ab"),
        *((s, "BTC/EUR", 53_000.0) for s in "ab"),
    ]
    ts = T0
    for _ in range(9):
        ts += 250
        reports = _round(core, ts, quotes)
    assert {r.status for r in reports.values()} == {"degraded"}  # live, thin: two of two
    core.set_manual("USD/USDT", True)
    ts += 250
    reports = _round(core, ts, quotes)
    statuses = [reports[m].status for m in ("USD/USDT", "EUR/USD", "BTC/USD")]
    assert statuses == ["paused", "unknown", "unknown"]
    assert reports["BTC/USD"].reasons == ["quorum", "route"]  # its leg EUR/USD is not live
    core.set_manual("USD/USDT", False)
    live: list[tuple[bool, ...]] = []
    for _ in range(7):
        ts += 250
        reports = _round(core, ts, quotes)
        live.append(tuple(reports[m].price is not None for m in ("USD/USDT", "EUR/USD", "BTC/USD")))
    assert live == [
        (False, False, False),
        (False, False, False),
        (True, False, False),
        (True, False, False),
        (True, True, False),
        (True, True, False),
        (True, True, True),
    ]
    assert reports["BTC/USD"].price == "63600.00"


def test_a_leg_listed_the_other_way_round_divides_the_quote() -> None:
    """USD/USDT is live at 0.992 (USD priced in USDT) and BTC/USDT quotes 50,029.66: BTC/USD is
    50,029.66 / 0.992 = 50,433.12500000000388..., published "50433.13". Multiplying by the leg's
    reciprocal instead rounds twice, lands on 50,433.125 exactly, and that tie published
    "50433.12"."""
    core = Core(
        config(
            [
                market("USD/USDT", "ab", min_sources=2, price_exponent=-4),
                market("BTC/USD", "ab", "BTC/USDT", min_sources=2),
            ],
            [USDT_VIA_INVERSE],
            resume_rounds=1,
        )
    )
    for source in "ab":
        assert core.ingest(quote(source, "USD/USDT", 0.992, T0)) is None
        assert core.ingest(quote(source, "BTC/USDT", 50_029.66, T0)) is None
    result = core.run_round(T0)
    assert result.value[1, 0] == 50_029.66 / 0.992
    btc = result.report(1)
    assert (btc.status, btc.price) == ("degraded", "50433.13")


def test_a_perpetual_through_a_leg_listed_the_other_way_round_is_divided_too() -> None:
    """The mark's perpetuals convert through the same leg as spot slots (docs/mark.md): a
    BTC/USDT perpetual at 50,029.66 through USD/USDT at 0.992 has the mid 50,029.66 / 0.992."""
    cfg = config(
        [
            market("USD/USDT", "ab", min_sources=2, price_exponent=-4),
            {
                **market("BTC/USD", "ab", min_sources=2),
                "perp_sources": [{"source": "p", "pair": "BTC/USDT"}],
            },
        ],
        [USDT_VIA_INVERSE],
        resume_rounds=1,
    )
    core = Core(cfg)
    for source in "ab":
        assert core.ingest(quote(source, "USD/USDT", 0.992, T0)) is None
        assert core.ingest(quote(source, "BTC/USD", 50_433.0, T0)) is None
    perp = Quote("p", "BTC/USDT", T0, price=50_029.66, kind="perp")
    assert core.ingest(perp) is None
    result = core.run_round(T0)
    assert result.mark is not None
    assert result.mark.values[1].perp_mids == (50_029.66 / 0.992,)


def test_a_flagged_slot_behind_a_dead_leg_shows_its_flag_and_the_market_names_both() -> None:
    """A slot blocked by a non-live leg whose source also flagged its value has two reasons;
    a slot shows one, the source's flag, and the market's reasons name both (docs/pricing.md
    section 3): fixing the leg alone would not bring that slot back."""
    core = Core(
        config(
            [
                market("USDT/USD", "ab", min_sources=2, price_exponent=-4),
                market("BTC/USD", "ab", "BTC/USDT", min_sources=2),
            ],
            [{"from": "USDT", "to": "USD", "via": "USDT/USD"}],
            resume_rounds=1,
        )
    )
    # USDT/USD has no quote: not live, so both BTC/USD slots are blocked by their leg.
    flagged = Quote("a", "BTC/USDT", T0, price=60_000.0, flag="liquidity")
    assert core.ingest(flagged) is None
    assert core.ingest(quote("b", "BTC/USDT", 60_000.0, T0)) is None
    btc = core.run_round(T0).report(1)
    assert [(s.id, s.reason) for s in btc.sources] == [("a", "liquidity"), ("b", "route")]
    assert (btc.status, btc.reasons) == ("unknown", ["quorum", "route", "flagged"])
