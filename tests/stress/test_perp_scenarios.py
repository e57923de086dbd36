"""The perpetual scenarios: the mark price through the margin engine, next to the index."""

from __future__ import annotations

import io
import tomllib
from functools import cache

import msgspec

from oracled.config import Config, parse_config
from oracled.core import RoundResult
from oracled.margin import PriceView, parse_accounts
from oracled.replay import replay
from oracled.stress.runner import ORACLE, REFERENCE, StressResult, run_stress
from oracled.stress.scenarios import (
    BTC0,
    PERP_VENUES,
    SCENARIOS,
    build,
    has_perps,
    scenario_accounts,
    scenario_config,
)

ACCOUNTS = parse_accounts(scenario_accounts())
PERP_SCENARIOS = ("perp_wick", "perp_market_crash", "perp_silent")


def _cfg(name: str | None) -> Config:
    return parse_config(tomllib.loads(scenario_config(name)))


@cache
def _result(name: str) -> StressResult:
    return run_stress(_cfg(name), build(name).lines, ACCOUNTS)


def _btc_rounds(cfg: Config, lines: list[bytes]) -> list[RoundResult]:
    rounds: list[RoundResult] = []
    replay(cfg, lines, io.BytesIO(), on_round=rounds.append)
    return rounds


def test_perpetuals_are_opt_in_per_scenario() -> None:
    """Only the perpetual scenarios list perps in their config and quote them on their tape;
    every other scenario's config is the shared one, byte for byte."""
    assert {n for n in SCENARIOS if has_perps(n)} == set(PERP_SCENARIOS)
    for name in SCENARIOS:
        perp_lines = [line for line in build(name).lines[1:] if b'"kind":"perp"' in line]
        if name in PERP_SCENARIOS:
            btc = _cfg(name).market("BTC/USD")
            assert btc is not None
            assert tuple(s.source for s in btc.perp_sources) == PERP_VENUES
            assert len(perp_lines) >= 3 * 300
        else:
            assert scenario_config(name) == scenario_config()
            assert perp_lines == []
    plain = _cfg(None).market("BTC/USD")
    assert plain is not None and plain.perp_sources == ()


def test_one_perp_venue_wick_moves_neither_index_nor_mark() -> None:
    """p2 wicks -12 % for 15 s while spot is flat: the engine prices at the mark, which stays
    with the market (the median of venues and the deviation gate), so nobody is liquidated; the
    engine that marks to p2's book alone liquidates the 10x long and the isolated long wrongly."""
    result = _result("perp_wick")
    summary = result.summary()
    p = summary["policies"]
    oracle, single = p[ORACLE], p["single_venue:p2"]
    assert oracle["price_used"]["mark"] >= 350  # the engine really valued positions at the mark
    assert oracle["price_used"]["index"] == 0
    assert oracle["liquidations"] == 0
    assert oracle["max_error_pct"]["BTC/USD"] < 0.1  # the index
    assert summary["mark"]["rounds"] >= 350
    assert summary["mark"]["max_error_pct"] < 0.1  # the mark, over the whole wick
    assert p[REFERENCE]["liquidations"] == 0
    assert single["max_error_pct"]["BTC/USD"] > 10  # the venue's wick is on the tape
    assert single["wrongful_liquidations"] >= 2
    assert {e["account"] for e in single["events"]} == {"long_10x", "isolated"}


def test_perp_quotes_never_vote_in_the_index() -> None:
    """The wick tape with and without perps configured gives the same index, status and
    reasons every round; only the config with perps publishes a mark."""
    lines = build("perp_wick").lines
    with_perps = _btc_rounds(_cfg("perp_wick"), lines)
    without = _btc_rounds(_cfg(None), lines)
    assert len(with_perps) == len(without) == 360

    def index(rr: RoundResult) -> tuple[str, str | None, list[str]]:
        report = rr.report(rr.layout.markets.index("BTC/USD"))
        return report.status, report.price, list(report.reasons)

    assert [index(rr) for rr in with_perps] == [index(rr) for rr in without]
    marks = [rr.report(rr.layout.markets.index("BTC/USD")).mark for rr in with_perps]
    assert sum(m is not None and m.price is not None for m in marks) >= 350
    assert all(rr.report(rr.layout.markets.index("BTC/USD")).mark is None for rr in without)


def test_a_real_crash_moves_the_mark_down_and_liquidates_at_the_mark() -> None:
    """Spot and perps fall 25 % together: after the jump confirmation the mark is live again,
    follows the reference to within 0.5 % every round, and the engine liquidates the same
    accounts as the clean reference, at the mark, none wrongly; no price stays frozen."""
    result = _result("perp_market_crash")
    summary = result.summary()
    header = build("perp_market_crash").header
    cfg = _cfg("perp_market_crash")
    oracle, ref = summary["policies"][ORACLE], summary["policies"][REFERENCE]
    assert ref["liquidations"] >= 3
    assert oracle["liquidations"] == ref["liquidations"]
    assert oracle["wrongful_liquidations"] == 0 and oracle["missed_liquidations"] == 0
    assert {e["price_kind"] for e in oracle["events"]} == {"mark"}
    assert max(e["price"] for e in oracle["events"]) < BTC0 * 0.8
    confirm_ms = cfg.oracle.jump_confirm_rounds * cfg.oracle.round_interval_ms
    settled = header["move_end_ms"] + confirm_ms + 2 * cfg.oracle.round_interval_ms
    after = [
        (mark, r)
        for ts, mark, r in zip(result.ts, result.marks, result.reference, strict=True)
        if ts >= settled
    ]
    assert len(after) > 250
    for mark, r in after:
        assert mark is not None and r is not None
        assert abs(mark / r - 1) < 0.005
    assert after[-1][0] is not None and after[-1][0] < BTC0 * 0.76
    # The only rounds without a price are the gate's confirmation (and start-up): no freeze.
    assert oracle["price_used"]["none"] <= cfg.oracle.jump_confirm_rounds + 4
    assert oracle["price_used"]["mark"] == summary["mark"]["rounds"]


def test_two_silent_perp_venues_never_hold_the_mark_above_a_falling_index() -> None:
    """p2 and p3 send nothing for a minute from the start of an 8 % fall over 10 s: their last
    quotes count while younger than lag_ms, then are stale once the index has moved more than
    max_deviation since they quoted (docs/mark.md, Inputs 4). The mark is live in every
    round after start-up and never further than max_deviation from oracled's index (0.47 % with
    seed 0; 1.35 % before pricing revision 25, when the pair held the perp median until
    max_age_ms). Nobody is liquidated (the 10x long goes near -8.3 %); the engine reading the
    silent p2 alone stays at the level before the fall."""
    summary = _result("perp_silent").summary()
    btc = _cfg("perp_silent").market("BTC/USD")
    assert btc is not None
    p, mark = summary["policies"], summary["mark"]
    assert mark["rounds"] >= 355
    assert p[ORACLE]["price_used"]["mark"] == mark["rounds"]
    assert mark["max_basis_pct"] <= btc.max_deviation * 100
    assert mark["max_error_pct"] <= btc.max_deviation * 100
    assert p[ORACLE]["liquidations"] == p[REFERENCE]["liquidations"] == 0
    assert p[ORACLE]["max_error_pct"]["BTC/USD"] < 0.1  # the index follows the fall
    assert p["single_venue:p2"]["max_error_pct"]["BTC/USD"] > 8


def test_the_engine_reads_the_mark_as_the_published_report_carries_it() -> None:
    """Every BTC/USD report of the crash read in process (what the stress engine gets) equals
    the same report decoded from its JSON wire form, mark included."""
    cfg = _cfg("perp_market_crash")
    rounds = _btc_rounds(cfg, build("perp_market_crash").lines)
    with_mark = 0
    for rr in rounds:
        report = rr.report(rr.layout.markets.index("BTC/USD"))
        view = PriceView.from_report(report)
        assert view == PriceView.from_json(msgspec.json.encode(report))
        with_mark += view.mark is not None
    assert with_mark >= 340


def test_scenarios_without_perps_report_no_mark_and_price_at_the_index() -> None:
    """A scenario without perps has no mark summary, and its engines never used a mark."""
    summary = run_stress(_cfg(None), build("flash_crash").lines, ACCOUNTS).summary()
    assert summary["mark"] is None
    for policy in summary["policies"].values():
        assert policy["price_used"]["mark"] == 0
        assert policy["price_used"]["index"] > 0
