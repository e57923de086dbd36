"""The engine's decisions: liquidation, shortfall and deleveraging, freezes, the pause policy."""

from __future__ import annotations

import os
import tomllib
from typing import Any

import msgspec
import pytest
from margin_helpers import T0, spec, view

from oracled.config import parse_config
from oracled.core import Core, RoundResult
from oracled.margin import (
    FreezeCall,
    Liquidation,
    MarginCall,
    MarginEngine,
    PriceView,
    Shortfall,
    UnfreezeCall,
    encode_decision,
)
from oracled.model import Quote
from oracled.replay import replay
from oracled.stress.scenarios import build, scenario_config

FLAT: list[dict[str, Any]] = [{"initial": 0.02, "maintenance": 0.01}]
BANKRUPT_SET: list[dict[str, Any]] = [
    {
        "id": "a",
        "collateral": {"USD": 20_000},
        "positions": [{"instrument": "BTC-PERP", "qty": 10, "entry": 50_000}],
    },
    {
        "id": "b",
        "collateral": {"USD": 100_000},
        "positions": [{"instrument": "BTC-PERP", "qty": -10, "entry": 50_000}],
    },
    {
        "id": "c",
        "collateral": {"USD": 100_000},
        "positions": [{"instrument": "BTC-PERP", "qty": -5, "entry": 60_000}],
    },
]


def _bankrupt_engine(fund: float) -> MarginEngine:
    policy = {"insurance_fund": fund, "liquidation_fee": 0.0}
    return MarginEngine(spec(BANKRUPT_SET, policy=policy, tiers=FLAT))


def test_shortfall_is_paid_by_the_insurance_fund_then_by_ranked_deleveraging() -> None:
    """A: 20k against 10 long from 50k, closed at 47k: owes 10k; fund pays 1k, 9k deleveraged.

    Bankruptcy price 47k + 10k/10 = 48k; 9 units at 1k each. C ranks first (profit ratio
    0.2167 x leverage 1.42 = 0.31 against B's 0.06 x 3.6 = 0.22) and gives all 5; B gives 4.
    """
    engine = _bankrupt_engine(1_000)
    engine.on_report(view("BTC/USD", 47_000, round=7, signature="0xsig"))
    decisions = engine.step(T0)
    call = next(d for d in decisions if isinstance(d, MarginCall) and d.account == "a")
    assert call.state == "liquidatable" and call.drivers[0].round == 7
    liq = next(d for d in decisions if isinstance(d, Liquidation))
    assert (liq.account, liq.qty, liq.price) == ("a", 10, 47_000)
    assert liq.bankruptcy_price == pytest.approx(48_000)
    assert liq.driver.signature == "0xsig" and liq.driver.price == "47000.00"
    short = next(d for d in decisions if isinstance(d, Shortfall))
    assert short.amount == pytest.approx(10_000)
    assert short.insurance_paid == pytest.approx(1_000) and short.insurance_fund == 0
    assert short.socialized == pytest.approx(9_000) and short.unresolved == 0
    assert [d.account for d in short.deleveraged] == ["c", "b"]
    got = [(d.qty, d.price, d.loss) for d in short.deleveraged]
    assert got == [(-5, pytest.approx(48_000), pytest.approx(5_000)), (-4, 48_000, 4_000)]
    assert engine.accounts["c"].positions == []
    assert engine.accounts["c"].cash["USD"] == pytest.approx(100_000 + 5 * 12_000)
    assert engine.accounts["b"].positions[0].qty == pytest.approx(-6)
    assert engine.accounts["b"].cash["USD"] == pytest.approx(100_000 + 4 * 2_000)
    assert engine.accounts["a"].positions == [] and engine.accounts["a"].cash["USD"] == 0


def test_a_large_fund_absorbs_the_whole_shortfall() -> None:
    """With 50k in the fund nothing is socialized and no counterparty is touched."""
    engine = _bankrupt_engine(50_000)
    engine.on_report(view("BTC/USD", 47_000))
    short = next(d for d in engine.step(T0) if isinstance(d, Shortfall))
    assert short.insurance_paid == pytest.approx(10_000) and short.socialized == 0
    assert short.insurance_fund == pytest.approx(40_000) and short.deleveraged == []
    assert engine.accounts["c"].positions[0].qty == -5


def test_partial_liquidation_stops_once_the_pool_is_above_maintenance() -> None:
    """Two instruments: closing the larger one (BTC) is enough; the ETH position stays."""
    acct: dict[str, Any] = {
        "id": "e",
        "collateral": {"USD": 2_000},
        "positions": [
            {"instrument": "BTC-PERP", "qty": 1, "entry": 50_000},
            {"instrument": "ETH-PERP", "qty": 1, "entry": 3_000},
        ],
    }
    engine = MarginEngine(spec([acct], tiers=FLAT, policy={"liquidation_fee": 0.01}))
    engine.on_report(view("BTC/USD", 48_500))
    engine.on_report(view("ETH/USD", 3_000))
    # equity 2,000 - 1,500 = 500 < maintenance 485 + 150 = 635
    decisions = engine.step(T0)
    liqs = [d for d in decisions if isinstance(d, Liquidation)]
    assert [d.instrument for d in liqs] == ["BTC-PERP"]
    # 1 % of 48,500 is 485, but only 500 - 150 is spare above the ETH maintenance
    assert liqs[0].fee == pytest.approx(350)
    assert engine.accounts["e"].cash["USD"] == pytest.approx(150)
    assert [p.instrument for p in engine.accounts["e"].positions] == ["ETH-PERP"]
    assert engine.insurance_fund == pytest.approx(350)
    assert engine.state("e") == "reduce_only"


def test_isolated_loss_never_reaches_the_cross_pool() -> None:
    """An isolated short wiped out beyond its margin leaves the cross collateral untouched."""
    acct: dict[str, Any] = {
        "id": "f",
        "collateral": {"USD": 10_000},
        "positions": [
            {"instrument": "BTC-PERP", "qty": -1, "entry": 50_000, "isolated_margin": 1_000}
        ],
    }
    engine = MarginEngine(spec([acct], tiers=FLAT, policy={"insurance_fund": 5_000}))
    engine.on_report(view("BTC/USD", 52_000))
    decisions = engine.step(T0)
    liq = next(d for d in decisions if isinstance(d, Liquidation))
    assert liq.scope == "isolated:BTC-PERP" and liq.bankruptcy_price == pytest.approx(51_000)
    short = next(d for d in decisions if isinstance(d, Shortfall))
    assert short.amount == pytest.approx(1_000) and short.insurance_paid == pytest.approx(1_000)
    assert engine.accounts["f"].cash == {"USD": 10_000}


def test_a_paused_market_freezes_liquidation_with_its_reason() -> None:
    """Paused with reason jump: no liquidation, a freeze naming the market and the reason."""
    engine = _bankrupt_engine(0)
    engine.on_report(view("BTC/USD", 50_000, ts=T0))
    assert [d for d in engine.step(T0) if isinstance(d, Liquidation)] == []
    paused = view("BTC/USD", None, ts=T0 + 250, status="paused", reasons=["jump"], last_good=50_000)
    engine.on_report(paused)
    decisions = engine.step(T0 + 250)
    assert not any(isinstance(d, Liquidation) for d in decisions)
    freezes = [d for d in decisions if isinstance(d, FreezeCall)]
    assert {d.account for d in freezes} == {"a", "b", "c"}
    assert freezes[0].markets == ["BTC/USD"] and freezes[0].reasons == ["paused:jump"]
    assert freezes[0].drivers[0].status == "paused"
    # the same freeze is not repeated every step
    assert engine.step(T0 + 500) == []
    engine.on_report(view("BTC/USD", 47_000, ts=T0 + 750))
    decisions = engine.step(T0 + 750)
    assert any(isinstance(d, UnfreezeCall) for d in decisions)
    assert any(isinstance(d, Liquidation) for d in decisions)


def test_a_stale_report_freezes_like_a_pause() -> None:
    """A live report older than max_report_age_ms is not acted upon."""
    engine = MarginEngine(spec(BANKRUPT_SET, tiers=FLAT, policy={"max_report_age_ms": 1_000}))
    engine.on_report(view("BTC/USD", 40_000, ts=T0))
    decisions = engine.step(T0 + 1_001)
    assert not any(isinstance(d, Liquidation) for d in decisions)
    assert next(d for d in decisions if isinstance(d, FreezeCall)).reasons == ["stale_report"]


def test_a_stall_freezes_until_a_report_of_a_later_round_and_counts_as_a_pause() -> None:
    """After `mark_stalled` (the daemon's `stalled` frame) a young live report is not acted
    upon: the freeze says `stalled`. The same round's report again does not end it; the next
    round's does. A stall that outlasts the grace period is a pause like any other: under
    after_grace = "last_good", the last good price with the buffer (account a: see the grace
    test below)."""
    policy = {"pause_grace_ms": 60_000, "max_report_age_ms": 1_000_000, "after_grace": "last_good"}
    engine = MarginEngine(spec(BANKRUPT_SET, tiers=FLAT, policy=policy))
    engine.on_report(view("BTC/USD", 40_000, ts=T0, round=7))
    engine.book.mark_stalled()
    decisions = engine.step(T0 + 100)
    assert not any(isinstance(d, Liquidation) for d in decisions)
    assert {tuple(d.reasons) for d in decisions if isinstance(d, FreezeCall)} == {("stalled",)}
    engine.on_report(view("BTC/USD", 40_000, ts=T0, round=7))
    assert engine.step(T0 + 200) == []
    engine.on_report(view("BTC/USD", 40_000, ts=T0 + 250, round=8))
    assert any(isinstance(d, Liquidation) for d in engine.step(T0 + 300))
    late = MarginEngine(spec(BANKRUPT_SET[:1], tiers=FLAT, policy=policy))
    late.on_report(view("BTC/USD", 48_600, ts=T0))
    late.book.mark_stalled()
    assert not any(isinstance(d, Liquidation) for d in late.step(T0 + 60_000))
    liquidated = [d for d in late.step(T0 + 60_001) if isinstance(d, Liquidation)]
    assert liquidated and liquidated[0].driver.kind == "last_good"


def test_a_report_from_the_future_is_not_fresh_however_long_it_stays() -> None:
    """A daemon clock an hour ahead stamps its reports an hour ahead: their age stayed
    negative, so the engine acted on it (here: liquidated) at once and, once the stream stopped,
    for an hour and 5 s instead of 5 s. Now a report more than
    max_report_future_ms (2 s by default) ahead is frozen on with reason `future_report`; one
    within it is used."""
    hour = 3_600_000
    engine = MarginEngine(spec(BANKRUPT_SET, tiers=FLAT))
    engine.on_report(view("BTC/USD", 40_000, ts=T0 + hour))
    decisions = engine.step(T0) + engine.step(T0 + hour // 2)
    assert not any(isinstance(d, Liquidation) for d in decisions)
    frozen = [d for d in decisions if isinstance(d, FreezeCall)]
    assert frozen and {tuple(d.reasons) for d in frozen} == {("future_report",)}
    assert all(d.paused_ms == 0 for d in frozen)
    near = MarginEngine(spec(BANKRUPT_SET, tiers=FLAT))
    near.on_report(view("BTC/USD", 40_000, ts=T0 + 2_000))
    assert any(isinstance(d, Liquidation) for d in near.step(T0))


def test_reports_in_stream_order_replace_one_from_the_future_at_once() -> None:
    """A daemon clock set back an hour after a report stamped ahead: its next reports are
    older by their time. Taken `in_order` (one stream, as the service takes them) each is the
    newest: the market is priced by it at once, and a stall ends with it. Without `in_order`
    (reports from anywhere) the newest by time is kept, as before."""
    hour = 3_600_000
    for in_order, held in ((True, T0 + 250), (False, T0 + hour)):
        engine = MarginEngine(spec(BANKRUPT_SET, tiers=FLAT))
        engine.on_report(view("BTC/USD", 49_000, ts=T0 + hour, round=9), in_order=in_order)
        engine.book.mark_stalled()
        engine.on_report(view("BTC/USD", 40_000, ts=T0 + 250, round=1), in_order=in_order)
        assert engine.book.latest["BTC/USD"].ts == held
        liquidated = any(isinstance(d, Liquidation) for d in engine.step(T0 + 300))
        assert liquidated is in_order


def test_degraded_prices_are_used_only_when_the_policy_allows() -> None:
    """allow_degraded = false turns a degraded report into a freeze."""
    for allow, liquidated in ((True, True), (False, False)):
        engine = MarginEngine(spec(BANKRUPT_SET, tiers=FLAT, policy={"allow_degraded": allow}))
        engine.on_report(view("BTC/USD", 47_000, status="degraded", reasons=["outlier"]))
        got = any(isinstance(d, Liquidation) for d in engine.step(T0))
        assert got is liquidated


def test_after_the_grace_period_the_last_good_price_is_used_with_a_wider_buffer() -> None:
    """after_grace = "last_good": frozen for the 60 s grace, then the last good 48.6k with
    maintenance x 1.5 liquidates.

    a: equity 20,000 + 10 x (48,600 - 50,000) = 6,000 against 1 % x 486k = 4,860 (fine while
    live), but 4,860 x 1.5 = 7,290 on the last good price after the grace period.
    """
    policy = {
        "pause_grace_ms": 60_000,
        "pause_buffer": 0.5,
        "max_report_age_ms": 1_000_000,
        "after_grace": "last_good",
    }
    engine = MarginEngine(spec(BANKRUPT_SET[:1], tiers=FLAT, policy=policy))
    engine.on_report(view("BTC/USD", 48_600, ts=T0))
    assert not any(isinstance(d, Liquidation) for d in engine.step(T0))
    paused = view(
        "BTC/USD", None, ts=T0 + 1_000, status="paused", reasons=["stale"], last_good=48_600
    )
    engine.on_report(paused)
    assert not any(isinstance(d, Liquidation) for d in engine.step(T0 + 60_000))
    decisions = engine.step(T0 + 60_001)
    liq = next(d for d in decisions if isinstance(d, Liquidation))
    assert liq.driver.kind == "last_good" and liq.driver.price == "48600.00"
    assert liq.maintenance == pytest.approx(7_290)


def test_with_degraded_not_allowed_the_grace_period_never_leads_to_a_degraded_price() -> None:
    """allow_degraded = false, after_grace = "last_good": a market degraded past the grace
    period is valued at the last report the policy accepted (active at 50k), not at the
    degraded 40k the daemon keeps calling its last good price; at 40k account a would be
    liquidated on a price the policy refused a moment before."""
    policy = {
        "allow_degraded": False,
        "pause_grace_ms": 60_000,
        "max_report_age_ms": 100_000,
        "after_grace": "last_good",
    }
    engine = MarginEngine(spec(BANKRUPT_SET[:1], tiers=FLAT, policy=policy))
    engine.on_report(view("BTC/USD", 50_000, ts=T0))
    assert engine.step(T0) == []
    for k in range(1, 250):
        ts = T0 + 250 * k
        engine.on_report(view("BTC/USD", 40_000, ts=ts, status="degraded", reasons=["outlier"]))
    frozen = engine.step(T0 + 60_000)
    assert [type(d) for d in frozen] == [FreezeCall]
    decisions = engine.step(T0 + 60_001)
    assert not any(isinstance(d, Liquidation) for d in decisions)
    unfreeze = next(d for d in decisions if isinstance(d, UnfreezeCall))
    assert [(r.kind, r.price) for r in unfreeze.drivers] == [("last_good", "50000.00")]


@pytest.mark.parametrize("code", ["market_removed", "unknown_market"])
def test_a_market_the_daemon_no_longer_serves_stays_frozen_past_the_grace_period(code: str) -> None:
    """A market the daemon removed (or says it does not have) is frozen with that code for as
    long as it stays away, whatever `after_grace` says: the last good price is for a pause,
    which ends; a removed market never reports again, so that price would only grow older.
    docs/margin.md: these freezes hold until a report of the market arrives again."""
    policy = {
        "pause_grace_ms": 60_000,
        "pause_buffer": 0.5,
        "max_report_age_ms": 1_000_000,
        "after_grace": "last_good",  # the policy that would otherwise act on a last good price
    }
    engine = MarginEngine(spec(BANKRUPT_SET[:1], tiers=FLAT, policy=policy))
    engine.on_report(view("BTC/USD", 48_600, ts=T0))
    assert not any(isinstance(d, Liquidation) for d in engine.step(T0))
    engine.book.mark_unavailable("BTC/USD", code)
    frozen = engine.step(T0 + 1_000)
    assert [type(d) for d in frozen] == [FreezeCall]
    for later in (T0 + 60_001, T0 + 3_600_000, T0 + 10**9):
        assert engine.step(later) == []  # no liquidation, no unfreeze on the last good price
    assert engine.prices(T0 + 10**9)["BTC/USD"].reason == code  # type: ignore[union-attr]
    engine.on_report(view("BTC/USD", 48_600, ts=T0 + 10**9))  # back: priced again
    back = engine.step(T0 + 10**9)
    assert [(type(d), [r.kind for r in d.drivers]) for d in back] == [(UnfreezeCall, ["index"])]


def test_the_freeze_policy_never_liquidates_on_a_last_good_price() -> None:
    """after_grace = "freeze", set or by default: however long the pause, no liquidation."""
    for policy in ({"after_grace": "freeze", "pause_grace_ms": 0}, {"pause_grace_ms": 0}):
        engine = MarginEngine(spec(BANKRUPT_SET[:1], tiers=FLAT, policy=policy))
        engine.on_report(
            view("BTC/USD", None, ts=T0, status="paused", reasons=["quorum"], last_good=10_000)
        )
        assert not any(isinstance(d, Liquidation) for d in engine.step(T0 + 10**9))


def test_by_default_nothing_is_liquidated_on_the_last_good_price_after_a_daemon_outage() -> None:
    """The daemon is down for 10 minutes (past the 5 minute grace) and comes back
    `unknown:resuming` with the last good 48.6k. Account a is not liquidatable at 48.6k
    (equity 6,000 against maintenance 4,860: warning); the old default, after_grace =
    "last_good", liquidated it on that first report from the buffer alone (maintenance x 1.5 =
    7,290), on a price ten minutes old. By default the account stays frozen, then is priced by
    the first live report; "last_good", chosen explicitly, still liquidates."""
    outage = 600_000
    resuming = view(
        "BTC/USD", None, ts=T0 + outage, status="unknown", reasons=["resuming"], last_good=48_600
    )
    for after_grace, liquidated in ((None, False), ("last_good", True)):
        policy = {} if after_grace is None else {"after_grace": after_grace}
        engine = MarginEngine(spec(BANKRUPT_SET[:1], tiers=FLAT, policy=policy))
        engine.on_report(view("BTC/USD", 48_600, ts=T0))
        assert [(type(d), d.state) for d in engine.step(T0)] == [(MarginCall, "warning")]  # type: ignore[union-attr]
        engine.step(T0 + 6_000)  # stale_report: the stream went quiet
        engine.on_report(resuming)
        decisions = engine.step(T0 + outage)
        assert any(isinstance(d, Liquidation) for d in decisions) is liquidated
        if not liquidated:
            assert engine.prices(T0 + outage)["BTC/USD"].reason == "unknown:resuming"  # type: ignore[union-attr]
            engine.on_report(view("BTC/USD", 48_600, ts=T0 + outage + 1_000))
            back = engine.step(T0 + outage + 1_000)
            assert [type(d) for d in back] == [UnfreezeCall]


def test_a_margin_call_near_its_level_is_not_cleared_and_raised_at_every_tick() -> None:
    """10 BTC long from 50k on 7,500 USD: equity 7,500 + 10 (P - 50,000) against a warning
    level of 0.15 P, so the account sits on it at 50k. The price ticks 50,010 / 49,990 each
    second for a minute. With call_hysteresis = 0 (the behaviour before) that is a margin call
    at every tick but the first, warning and healthy in turn (59); by default one call to
    warning, cleared only when the price is back above 50,038 (equity >= warning level x 1.05:
    not at 50,030, at 50,100). Worse states still come at once: 49,990 is warning again, 49,800
    reduce-only (equity 5,500 < 0.12 P = 5,976) at that step; 49,860 (equity 6,100 over the bare
    5,983) stays reduce-only; 49,700 (equity 4,500 < maintenance 4,970) liquidates at once."""
    account = [{"id": "a", "collateral": {"USD": 7_500}, "positions": [_long(10, 50_000)]}]
    ticks = [50_010.0 if k % 2 == 0 else 49_990.0 for k in range(60)]
    for band, calls in ((0.0, 59), (None, 1)):
        policy = {} if band is None else {"call_hysteresis": band}
        engine = MarginEngine(spec(account, tiers=FLAT, policy=policy))
        states = []
        for k, price in enumerate(ticks):
            engine.on_report(view("BTC/USD", price, ts=T0 + 1_000 * k, round=k + 1))
            states += [d.state for d in engine.step(T0 + 1_000 * k) if isinstance(d, MarginCall)]
        assert len(states) == calls
        assert (
            states[:2] == (["warning"] if band is None else ["warning", "healthy"])[: len(states)]
        )
        if band is not None:
            continue
        path = [(50_030.0, []), (50_100.0, ["healthy"]), (49_990.0, ["warning"])]
        path += [(49_800.0, ["reduce_only"]), (49_860.0, []), (49_700.0, ["liquidatable"])]
        for k, (price, expect) in enumerate(path, start=100):
            engine.on_report(view("BTC/USD", price, ts=T0 + 1_000 * k, round=k))
            decisions = engine.step(T0 + 1_000 * k)
            assert [d.state for d in decisions if isinstance(d, MarginCall)][:1] == expect
        assert any(isinstance(d, Liquidation) for d in decisions)


def _long(qty: float, entry: float) -> dict[str, Any]:
    return {"instrument": "BTC-PERP", "qty": qty, "entry": entry}


def test_decisions_encode_as_tagged_json_with_their_drivers() -> None:
    """Every decision is one JSON object with its kind and the report that drove it."""
    engine = _bankrupt_engine(1_000)
    engine.on_report(view("BTC/USD", 47_000, round=9))
    decoded = [msgspec.json.decode(encode_decision(d)) for d in engine.step(T0)]
    assert [d["kind"] for d in decoded[:3]] == ["margin_call", "liquidation", "shortfall"]
    assert decoded[1]["driver"]["round"] == 9 and decoded[1]["driver"]["market"] == "BTC/USD"
    assert decoded[2]["drivers"][0]["status"] == "active"


def test_a_fallback_mark_is_used_replaced_by_the_index_or_frozen_on_as_the_policy_says() -> None:
    """Account a (equity 20,000 + 10 x (P - 50,000), maintenance 0.1 P) is liquidatable below
    48,485. Index 49,000, mark 47,000 in fallback (no perpetual counted). `mark_fallback`:
    `use` (the default, as before) liquidates on that mark; `index` values the position at the
    index and does not; `freeze` freezes the market with reason `mark_fallback` and liquidates
    nothing until a mark made from the perpetuals comes. Before, there was no way to tell the
    engine not to act on a fallback mark."""
    fallback = view("BTC/USD", 49_000, mark=47_000, mark_mode="fallback")
    taken: dict[str, list[Any]] = {}
    for choice in ("use", "index", "freeze"):
        engine = MarginEngine(spec(BANKRUPT_SET[:1], tiers=FLAT, policy={"mark_fallback": choice}))
        engine.on_report(fallback)
        taken[choice] = engine.step(T0)
    liquidated = [d for d in taken["use"] if isinstance(d, Liquidation)]
    assert liquidated and liquidated[0].driver.kind == "mark"
    assert not any(isinstance(d, Liquidation | FreezeCall) for d in taken["index"])
    assert [d.reasons for d in taken["freeze"] if isinstance(d, FreezeCall)] == [["mark_fallback"]]
    assert not any(isinstance(d, Liquidation) for d in taken["freeze"])
    engine.on_report(view("BTC/USD", 49_000, ts=T0 + 250, round=2, mark=47_000))
    decisions = engine.step(T0 + 250)
    assert any(isinstance(d, UnfreezeCall) for d in decisions)
    liquidated = [d for d in decisions if isinstance(d, Liquidation)]
    assert liquidated and liquidated[0].driver.kind == "mark"


def _out_of_band_report() -> RoundResult:
    """A core's round of BTC/USD: the index live at 48,000, the perpetual 4.5 % above it, so
    the mark (about 50,160) is over the market's `max_price` of 50,000: null, reason `bounds`,
    its estimators made from the perpetual."""
    cfg = parse_config(
        {
            "oracle": {"round_interval_ms": 250, "resume_rounds": 1},
            "sources": {
                "alpha": {"type": "binance"},
                "beta": {"type": "kraken"},
                "perp": {"type": "okx"},
            },
            "markets": [
                {
                    "symbol": "BTC/USD",
                    "min_sources": 1,
                    "max_price": 50_000,
                    "sources": [{"source": s, "pair": "BTC/USD"} for s in ("alpha", "beta")],
                    "perp_sources": [{"source": "perp", "pair": "BTC/USD"}],
                }
            ],
        },
        env={},
    )
    core = Core(cfg)
    core.ingest(Quote("alpha", "BTC/USD", T0 - 10, price=48_000.0))
    core.ingest(Quote("beta", "BTC/USD", T0 - 10, price=48_000.0))
    core.ingest(Quote("perp", "BTC/USD", T0 - 10, price=48_000.0 * 1.045, kind="perp"))
    return core.run_round(T0)


def test_a_live_index_whose_mark_is_out_of_its_band_is_no_perpetuals_mark_to_the_policy() -> None:
    """A perpetual market's live report without a mark (out of its band: `bounds`) has no mark
    made from the perpetuals, as a fallback has not: `mark_fallback = "freeze"` freezes it
    (reason `mark_fallback`) rather than liquidate on the index, and `index` and `use` value
    positions at the index (there is no mark to use), on the wire and in process alike.
    Account a (20,000 USD, 10 BTC-PERP long from 50,000) is liquidatable at 48,000. Before,
    a report without a mark passed for a spot market's: `freeze` liquidated on the index."""
    report = _out_of_band_report().report(0)
    assert report.status == "active" and report.mark is not None
    assert (report.mark.price, report.mark.reason) == (None, "bounds")
    for reading in (
        PriceView.from_report(report),
        PriceView.from_json(msgspec.json.encode(report)),
    ):
        taken: dict[str, list[Any]] = {}
        for choice in ("use", "index", "freeze"):
            policy = {"mark_fallback": choice}
            engine = MarginEngine(spec(BANKRUPT_SET[:1], tiers=FLAT, policy=policy))
            engine.on_report(reading)
            taken[choice] = engine.step(T0)
        for choice in ("use", "index"):
            liquidated = [d for d in taken[choice] if isinstance(d, Liquidation)]
            assert liquidated and liquidated[0].driver.kind == "index", choice
        frozen = [d.reasons for d in taken["freeze"] if isinstance(d, FreezeCall)]
        assert frozen == [["mark_fallback"]]
        assert not any(isinstance(d, Liquidation) for d in taken["freeze"])


def test_the_mark_mode_of_the_cores_reports_is_read_from_them_in_process_and_on_the_wire() -> None:
    """The perp_wick scenario replayed through the core: with its perpetual quotes, every live
    BTC/USD report's mark is `perps`; without them, `fallback` (index plus basis: none seen).
    The in-process view (stress) and the report's JSON (the stream) read the same mode."""
    cfg = parse_config(tomllib.loads(scenario_config("perp_wick")))
    lines = build("perp_wick").lines[:200]
    for tape, mode in ((lines, "perps"), ([x for x in lines if b'"perp"' not in x], "fallback")):
        modes: set[tuple[str | None, str | None]] = set()

        def on_round(rr: RoundResult, modes: set[tuple[str | None, str | None]] = modes) -> None:
            report = rr.report(rr.layout.markets.index("BTC/USD"))
            here = PriceView.from_report(report)
            wire = PriceView.from_json(msgspec.json.encode(report))
            if here.live:
                modes.add((here.mark_mode, wire.mark_mode))

        with open(os.devnull, "wb") as sink:
            replay(cfg, tape, sink, on_round=on_round)
        assert modes == {(mode, mode)}
