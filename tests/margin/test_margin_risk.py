"""Hand-checked margin arithmetic: equity, tiered margin, states, liquidation prices."""

from __future__ import annotations

import json
from typing import Any

import pytest
from margin_helpers import T0, spec, view

from oracled.margin import (
    MarginEngine,
    PriceView,
    Resolved,
    assess_cross,
    assess_isolated,
    liquidation_price,
    tier_levels,
)
from oracled.margin.config import Tier
from oracled.margin.decisions import Liquidation
from oracled.margin.risk import Assessment, Levels, settle

LONG: dict[str, Any] = {
    "id": "alice",
    "collateral": {"USD": 10_000, "BTC": 1.0},
    "positions": [{"instrument": "BTC-PERP", "qty": 5, "entry": 40_000}],
}


def _engine(accounts: list[dict[str, Any]], **kw: Any) -> MarginEngine:
    return MarginEngine(spec(accounts, **kw))


def test_tier_brackets_charge_each_part_of_the_notional_at_its_own_rate() -> None:
    """250k notional: 100k at 1 % plus 150k at 2.5 % maintenance; initial 2 % and 5 %."""
    tiers = [Tier.model_validate(t) for t in spec([]).instruments["BTC-PERP"].model_dump()["tiers"]]
    levels = tier_levels(tiers, 250_000)
    assert levels.maintenance == pytest.approx(1_000 + 3_750)
    assert levels.initial == pytest.approx(2_000 + 7_500)
    assert levels.warning == pytest.approx(1.5 * 4_750)
    assert levels.reduce_only == pytest.approx(1.2 * 4_750)
    assert tier_levels(tiers, 600_000).maintenance == pytest.approx(1_000 + 10_000 + 5_000)


def test_equity_values_collateral_with_haircut_and_positions_at_the_price() -> None:
    """10k USD + 1 BTC x 50k x 0.9 + 5 x (50k - 40k) = 105k; healthy at 4,750 maintenance."""
    engine = _engine([LONG])
    engine.on_report(view("BTC/USD", 50_000))
    a = assess_cross(engine.accounts["alice"], engine.spec, engine.prices(T0))
    assert a.equity == pytest.approx(105_000)
    assert a.levels.maintenance == pytest.approx(4_750)
    assert a.state == "healthy"


def test_liquidation_price_solves_equity_equal_to_tiered_maintenance() -> None:
    """5.9 P - 190,000 = 1,000 + 0.025 (5 P - 100,000): P = 188,500 / 5.775."""
    engine = _engine([LONG])
    engine.on_report(view("BTC/USD", 50_000))
    prices = engine.prices(T0)
    usable = {m: p for m, p in prices.items() if isinstance(p, Resolved)}
    got = liquidation_price(engine.accounts["alice"], engine.spec, usable, "BTC/USD")
    assert got == pytest.approx(188_500 / 5.775, rel=1e-9)


def test_states_step_down_through_warning_and_reduce_only_to_liquidatable() -> None:
    """One 1 BTC long with 1,500 USD at 1 % maintenance: each threshold crossed in turn."""
    acct: dict[str, Any] = {
        "id": "bob",
        "collateral": {"USD": 1_500},
        "positions": [{"instrument": "BTC-PERP", "qty": 1, "entry": 50_000}],
    }
    engine = _engine([acct])
    # equity = 1,500 + (P - 50,000); maintenance = 0.01 P (warning 1.5x, reduce-only 1.2x)
    expected = {50_000: "healthy", 49_200: "warning", 49_000: "reduce_only", 48_400: "liquidatable"}
    for price, state in expected.items():
        engine.on_report(view("BTC/USD", price))
        a = assess_cross(engine.accounts["bob"], engine.spec, engine.prices(T0))
        assert a.state == state, (price, a)


def test_isolated_short_is_judged_on_its_own_margin() -> None:
    """Short 2 at 50k with 2,000 isolated: at 50.5k equity 1,000 < maintenance 1,025."""
    acct: dict[str, Any] = {
        "id": "carol",
        "collateral": {"USD": 1_000_000},
        "positions": [
            {"instrument": "BTC-PERP", "qty": -2, "entry": 50_000, "isolated_margin": 2_000}
        ],
    }
    engine = _engine([acct])
    engine.on_report(view("BTC/USD", 50_500))
    prices = engine.prices(T0)
    iso = assess_isolated(engine.accounts["carol"].positions[0], engine.spec, prices)
    assert iso.equity == pytest.approx(1_000)
    assert iso.levels.maintenance == pytest.approx(1_025)
    assert iso.state == "liquidatable"
    cross = assess_cross(engine.accounts["carol"], engine.spec, prices)
    assert cross.state == "healthy" and cross.equity == pytest.approx(1_000_000)


def test_mark_price_values_positions_and_index_values_collateral() -> None:
    """With a live mark of 50,100 and an index of 50,000: 0.9 x 50,000 + 5 x 10,100 + 10,000."""
    engine = _engine([LONG])
    engine.on_report(view("BTC/USD", 50_000, mark=50_100))
    a = assess_cross(engine.accounts["alice"], engine.spec, engine.prices(T0))
    assert a.equity == pytest.approx(10_000 + 45_000 + 50_500)
    assert a.drivers[0].kind == "mark" and a.drivers[0].price == "50100.00"


def test_mark_is_ignored_when_the_policy_says_index() -> None:
    """use_mark = false: positions are valued at the index even when a mark is published."""
    engine = _engine([LONG], policy={"use_mark": False})
    engine.on_report(view("BTC/USD", 50_000, mark=50_100))
    a = assess_cross(engine.accounts["alice"], engine.spec, engine.prices(T0))
    assert a.equity == pytest.approx(105_000)
    assert a.drivers[0].kind == "index"


def test_netting_across_strategies_and_strategy_limits() -> None:
    """Long 4 in one strategy, short 3 in another: margin on net 1; each strategy checked alone."""
    acct: dict[str, Any] = {
        "id": "dan",
        "collateral": {"USD": 20_000},
        "strategies": {
            "trend": {"balance": 1_000},
            "hedge": {"balance": 15_000, "max_notional": 100_000},
        },
        "positions": [
            {"instrument": "BTC-PERP", "qty": 4, "entry": 50_000, "strategy": "trend"},
            {"instrument": "BTC-PERP", "qty": -3, "entry": 50_000, "strategy": "hedge"},
        ],
    }
    engine = _engine([acct])
    engine.on_report(view("BTC/USD", 50_000))
    a = assess_cross(engine.accounts["dan"], engine.spec, engine.prices(T0))
    assert a.levels.maintenance == pytest.approx(500)  # net 1 BTC = 50k at 1 %
    assert a.state == "healthy"
    # trend: 200k gross needs 1,000 + 2,500 maintenance > its 1,000 balance; hedge: 150k > 100k
    assert a.reasons == ("strategy:trend:margin", "strategy:hedge:notional")


def test_concentration_limit_makes_the_account_reduce_only() -> None:
    """A 250k position over a 200k instrument limit is reduce-only even with ample equity."""
    engine = _engine([LONG], max_notional=200_000)
    engine.on_report(view("BTC/USD", 50_000))
    a = assess_cross(engine.accounts["alice"], engine.spec, engine.prices(T0))
    assert a.state == "reduce_only"
    assert a.reasons == ("concentration:BTC-PERP",)


def test_an_in_process_report_with_a_mark_reads_like_the_wire_form() -> None:
    """`PriceView.from_report` takes a core Report; its live mark values positions."""
    from oracled.margin import PriceView
    from oracled.model import Mark, MarkEstimators, Report

    estimators = MarkEstimators(basis_ema="50100.00", perp_median="50100.00", fallback=None)
    mark = Mark(
        price="50100.00",
        reason=None,
        estimators=estimators,
        basis="100.00",
        premium="0.002",
        perps_used=2,
        funding_rate_estimate="0.0001",
        last_funding_rate=None,
        last_funding_ts=None,
        next_funding_ts=T0 + 28_800_000,
    )
    report = Report(
        market="BTC/USD",
        ts=T0,
        round=3,
        status="active",
        reasons=[],
        price="50000.00",
        confidence="1.00",
        last_good_price="50000.00",
        last_good_ts=T0,
        sources=[],
        mark=mark,
    )
    engine = _engine([LONG])
    engine.on_report(PriceView.from_report(report))
    a = assess_cross(engine.accounts["alice"], engine.spec, engine.prices(T0))
    assert a.equity == pytest.approx(10_000 + 45_000 + 50_500)
    assert (a.drivers[0].kind, a.drivers[0].round) == ("mark", 3)


def test_a_report_whose_routed_slots_name_their_leg_reads_as_any_other() -> None:
    """A slot's `via` (routed slots only) is nothing the engine reads: the report's JSON and
    the in-process report give the same view, priced as without it."""
    import msgspec

    from oracled.margin import PriceView
    from oracled.model import Report, SourceValue

    routed = SourceValue("b", "BTC/USDT", "49990.00", 1.0, True, None, 120, via="USDT/USD")
    direct = SourceValue("a", "BTC/USD", "50010.00", 1.0, True, None, 80)
    report = Report(
        market="BTC/USD",
        ts=T0,
        round=3,
        status="active",
        reasons=[],
        price="50000.00",
        confidence="10.00",
        last_good_price="50000.00",
        last_good_ts=T0,
        sources=[direct, routed],
    )
    data = msgspec.json.encode(report)
    assert b'"via":"USDT/USD"' in data
    wire, local = PriceView.from_json(data), PriceView.from_report(report)
    assert wire == local
    engine = _engine([LONG])
    engine.on_report(wire)
    a = assess_cross(engine.accounts["alice"], engine.spec, engine.prices(T0))
    assert a.equity == pytest.approx(10_000 + 45_000 + 50_000)


def test_a_reports_prices_must_be_positive_finite_decimals() -> None:
    """The price, the last good price and the mark are read as the contract writes them
    (`64000.5`, `0.000022001`, `1e-07`); anything else is a ValueError naming it, never a
    live NaN, infinity, zero or negative price (float() took `NaN`, `inf`, `1_000`, ` 5`)."""
    base = {"market": "BTC/USD", "ts": T0, "round": 1, "status": "active"}
    for text in ("64000.5", "0.000022001", "1e-07", "5"):
        assert PriceView.from_json(json.dumps(base | {"price": text})).price == float(text)
    for key in ("price", "last_good_price", "mark"):
        for text in ("NaN", "inf", "-inf", "0", "-5", "1e400", "1_000", " 5", "abc", ""):
            value: Any = {"price": text} if key == "mark" else text
            with pytest.raises(ValueError, match="not a price"):
                PriceView.from_json(json.dumps(base | {"price": "1.0", key: value}))


def test_the_call_band_delays_only_a_better_state_and_never_touches_maintenance() -> None:
    """settle(): levels maintenance 100, reduce-only 120, warning 150, band 5 %. From warning,
    equity 155 (over 150, under 157.5) stays warning and 158 is healthy; from reduce_only,
    equity 125 (under 126) stays reduce_only and 160 is healthy at once; a worse state is taken
    at once (warning at 130 from healthy); from liquidatable (a partial liquidation), equity 101
    is reduce_only: the band is never on maintenance, so a liquidated pool is not held
    liquidatable; a concentration-forced reduce_only stays so whatever the equity."""
    levels = Levels(initial=200, maintenance=100, warning=150, reduce_only=120)

    def got(state: str, equity: float, previous: str, reasons: tuple[str, ...] = ()) -> str:
        return settle(Assessment("cross", state, equity, levels, reasons, ()), previous, 0.05)

    assert got("healthy", 155, "warning") == "warning"
    assert got("healthy", 158, "warning") == "healthy"
    assert got("warning", 125, "reduce_only") == "reduce_only"
    assert got("healthy", 160, "reduce_only") == "healthy"
    assert got("warning", 130, "healthy") == "warning"
    assert got("reduce_only", 101, "liquidatable") == "reduce_only"
    assert got("reduce_only", 500, "warning", ("concentration:BTC-PERP",)) == "reduce_only"
    assert got("frozen", float("nan"), "warning") == "frozen"


@pytest.mark.parametrize("price", [10_007, 10_010, 10_021, 60_005, 99_993])
def test_an_account_exactly_on_maintenance_is_not_liquidated_and_a_cent_below_is(
    price: int,
) -> None:
    """1 BTC long from P with P / 100 USD, at price P: equity P / 100 against 1 % maintenance,
    P / 100 too, exactly on the level: `reduce_only`, and a step liquidates nothing. In binary
    floats 0.01 x 10,007 is 100.07000000000001, above the equity's 100.07, so the account was
    liquidated at that price, as at about one such price in seven. A cent less of collateral is
    below the level and is liquidated."""
    for cash, state in ((price / 100, "reduce_only"), (price / 100 - 0.01, "liquidatable")):
        acct = {
            "id": "edge",
            "collateral": {"USD": float(f"{cash:.2f}")},
            "positions": [{"instrument": "BTC-PERP", "qty": 1, "entry": price}],
        }
        engine = _engine([acct])
        engine.on_report(view("BTC/USD", price))
        a = assess_cross(engine.accounts["edge"], engine.spec, engine.prices(T0))
        assert a.state == state, (price, cash, a.equity, a.levels.maintenance)
        liquidated = [d for d in engine.step(T0) if isinstance(d, Liquidation)]
        assert bool(liquidated) == (state == "liquidatable")
