"""Core.reconfigure: a new config between rounds keeps the state that still applies."""

from __future__ import annotations

from typing import Any

from core_helpers import T0, config, market

from oracled.config import Config, parse_config
from oracled.core import Core
from oracled.model import Quote


def _feed(core: Core, ts: int, prices: dict[str, float], pair: str = "BTC/USD") -> None:
    for source, price in prices.items():
        core.ingest(Quote(source, pair, ts, price=price))


def test_a_kept_market_keeps_its_status_last_good_price_and_quotes() -> None:
    """BTC stays live across the swap without waiting for a new streak; its quotes carry over."""
    core = Core(config([market("BTC/USD", ["a", "b", "c"], min_sources=2)], resume_rounds=3))
    for r in range(4):
        _feed(core, T0 + r * 250, {"a": 100.0, "b": 100.2, "c": 100.1})
        result = core.run_round(T0 + r * 250)
    assert result.report(0).status == "active"
    index = core.index
    new = config(
        [
            market("ETH/USD", ["a", "b"], min_sources=2),
            market("BTC/USD", ["c", "a", "d"], min_sources=2, max_deviation=0.05),
        ],
        resume_rounds=3,
    )
    core.reconfigure(new)
    assert core.index is index and index == {"ETH/USD": 0, "BTC/USD": 1}
    report = core.run_round(T0 + 1000).report(1)  # no new quotes: the old ones are still fresh
    assert report.status in {"active", "degraded"} and report.price == "100.05"  # c and a
    assert [(s.id, s.used) for s in report.sources] == [("c", True), ("a", True), ("d", False)]
    assert report.last_good_price == "100.05"
    assert core.run_round(T0 + 1250).report(0).status == "unknown"  # the new market starts unknown
    assert core.rounds == 6


def test_a_manual_pause_survives_a_reload_and_a_removed_market_is_gone() -> None:
    """Operator state is not reset by a reload; quotes for a removed market are unknown symbols."""
    two = {"min_sources": 2}
    markets = [market("BTC/USD", ["a", "b"], **two), market("ETH/USD", ["a", "b"], **two)]
    core = Core(config(markets, resume_rounds=1))
    core.set_manual("BTC/USD", True)
    core.reconfigure(config([market("BTC/USD", ["a", "b"], **two)], resume_rounds=1))
    _feed(core, T0, {"a": 100.0, "b": 100.0})
    report = core.run_round(T0).report(0)
    assert report.status == "unknown" and "manual" in report.reasons
    assert core.ingest(Quote("a", "ETH/USD", T0, price=1.0)) == "unknown_symbol"


def test_flags_keep_their_meaning_across_a_reload() -> None:
    """A slot flagged before the swap still shows the same flag name after it."""
    core = Core(config([market("BTC/USD", ["a", "b"], min_sources=1)], resume_rounds=1))
    core.ingest(Quote("a", "BTC/USD", T0, price=1.0, flag="at_bound"))
    core.reconfigure(config([market("BTC/USD", ["b", "a"], min_sources=1)], resume_rounds=1))
    report = core.run_round(T0).report(0)
    assert next(s.reason for s in report.sources if s.id == "a") == "at_bound"


def test_a_source_a_reload_disables_leaves_its_slots_at_once() -> None:
    """An operator disables a source (one printing bad prices, say): from the next round its
    slots show `no_quote`, as for a source disabled at start-up, and its last quote no longer
    votes, instead of counting until it ages out and then showing `stale` for ever."""
    markets = [market("BTC/USD", ["a", "b", "c"], min_sources=2)]
    core = Core(config(markets, resume_rounds=1))
    _feed(core, T0, {"a": 100.0, "b": 100.0, "c": 100.8})
    assert all(s.used for s in core.run_round(T0).report(0).sources)
    sources: dict[str, Any] = {sid: {"type": "binance"} for sid in ("a", "b", "c")}
    sources["c"]["enabled"] = False
    core.reconfigure(
        parse_config(
            {"oracle": {"resume_rounds": 1}, "sources": sources, "markets": markets}, env={}
        )
    )
    report = core.run_round(T0 + 250).report(0)
    assert [(s.id, s.used, s.reason, s.value) for s in report.sources] == [
        ("a", True, None, "100.00"),
        ("b", True, None, "100.00"),
        ("c", False, "no_quote", None),
    ]
    assert report.price == "100.00"


def test_a_market_added_on_a_shared_feed_keeps_the_feeds_ordering_bar() -> None:
    """Source a's BTC/USDT feeds BTC/USD through the USDT leg. A reload adds a BTC/USDT market
    (listed first) on the same feed: its new slot holds no quote yet, but a quote older than the
    one BTC/USD holds is still `out_of_order`, not written over BTC/USD's newer value (found by
    reloading a routed config by hand: the older quote was taken and BTC/USD's slot went back)."""
    usdt = market("USDT/USD", ["a", "b"], min_sources=1, price_exponent=-4)
    btc = market("BTC/USD", ["a", "b"], "BTC/USDT", min_sources=1)
    route = [{"from": "USDT", "to": "USD", "via": "USDT/USD"}]
    core = Core(config([usdt, btc], route, resume_rounds=1))
    for source in "ab":
        assert core.ingest(Quote(source, "USDT/USD", T0, price=0.9)) is None
        assert core.ingest(Quote(source, "BTC/USDT", T0, venue_ts=T0, price=50_000.0)) is None
    new_market = market("BTC/USDT", ["a"], min_sources=1)
    core.reconfigure(config([new_market, usdt, btc], route, resume_rounds=1))
    older = Quote("a", "BTC/USDT", T0 + 250, venue_ts=T0 - 100, price=40_000.0)
    assert core.ingest(older) == "out_of_order"
    report = core.run_round(T0 + 250).report(2)
    assert [(s.id, s.value) for s in report.sources] == [("a", "45000.00"), ("b", "45000.00")]
    assert core.book.drops[("a", "out_of_order")] == 1
    newer = Quote("a", "BTC/USDT", T0 + 500, venue_ts=T0 + 400, price=51_000.0)
    assert core.ingest(newer) is None  # a newer quote fills both slots, the new one included
    result = core.run_round(T0 + 500)
    assert result.report(0).sources[0].value == "51000.00"
    assert result.report(2).sources[0].value == "45900.00"  # 51,000 x 0.9


def _chainlink_config(proxy: str) -> Config:
    """ETH/USD from two venues and a Chainlink proxy on a loopback chain."""
    feeds = {"ETH/USD": {"address": proxy, "heartbeat_s": 3600}}
    return parse_config(
        {
            "oracle": {"resume_rounds": 1},
            "chains": {"local": {"chain_id": 31337, "rpc_urls": ["http://127.0.0.1:8545"]}},
            "sources": {
                "a": {"type": "binance"},
                "b": {"type": "binance"},
                "cl": {"type": "chainlink", "chain": "local", "feeds": feeds},
            },
            "markets": [market("ETH/USD", ["a", "b", "cl"], min_sources=2)],
        },
        env={},
    )


def test_a_pair_a_reload_reads_from_another_feed_starts_its_slot_afresh() -> None:
    """A reload points an on-chain source's pair at another contract (an operator correcting
    a proxy address): the old contract's value stops voting at once (`no_quote`), and the new
    contract's round is taken although older than it. Found by reloading a running daemon onto
    another Chainlink proxy: its round was dropped `out_of_order` and the old proxy's answer
    kept voting until its heartbeat ran out. A reload that leaves the feed alone keeps it."""
    core = Core(_chainlink_config("0x5f4eC3Df9cbd43714FE2740f5E3616155c5b8419"))
    _feed(core, T0, {"a": 3000.0, "b": 3000.0})
    assert core.ingest(Quote("cl", "ETH/USD", T0, venue_ts=T0 - 10_000, price=3300.0)) is None
    core.reconfigure(_chainlink_config("0x5f4eC3Df9cbd43714FE2740f5E3616155c5b8419"))
    assert next(s.value for s in core.run_round(T0).report(0).sources if s.id == "cl") == "3300.00"
    core.reconfigure(_chainlink_config("0xF4030086522a5bEEa4988F8cA5B36dbC97BeE88c"))
    report = core.run_round(T0 + 250).report(0)
    assert [(s.id, s.reason) for s in report.sources if s.id == "cl"] == [("cl", "no_quote")]
    older = Quote("cl", "ETH/USD", T0 + 250, venue_ts=T0 - 70_000, price=3010.0)
    assert core.ingest(older) is None
    report = core.run_round(T0 + 500).report(0)
    assert [(s.id, s.value) for s in report.sources if s.id == "cl"] == [("cl", "3010.00")]


def test_reloaded_jump_confirmation_and_global_bounds_apply_from_the_next_round() -> None:
    """A 30 % move held as a jump under `jump_confirm_rounds = 50` is followed in the rounds
    after a reload to 2 (the held count carries over); a reload of `oracle.max_price` below the
    price then excludes every source as `bounds` in the next round."""
    btc = [market("BTC/USD", ["a", "b", "c"], min_sources=2, circuit_breaker=0.1)]
    core = Core(config(btc, resume_rounds=1, jump_confirm_rounds=50))
    ts = T0
    for price in (100.0, 100.0, 130.0, 130.0, 130.0):
        ts += 250
        _feed(core, ts, {"a": price, "b": price, "c": price})
        report = core.run_round(ts).report(0)
    assert report.price is None and "jump" in report.reasons  # held: 3 of 50 rounds
    core.reconfigure(config(btc, resume_rounds=1, jump_confirm_rounds=2))
    ts += 250
    _feed(core, ts, {"a": 130.0, "b": 130.0, "c": 130.0})
    assert core.run_round(ts).report(0).price == "130.00"
    core.reconfigure(config(btc, resume_rounds=1, jump_confirm_rounds=2, max_price=120.0))
    report = core.run_round(ts + 250).report(0)
    assert report.price is None and [s.reason for s in report.sources] == ["bounds"] * 3


def _btc_core(**oracle: Any) -> Core:
    return Core(config([market("BTC/USD", ["a", "b", "c"], min_sources=3)], **oracle))


def test_a_reload_keeps_a_resuming_market_s_healthy_streak() -> None:
    """A market two healthy rounds into a resume_rounds=3 streak is live on the very next round
    after a reload (the streak is part of the gate state a kept market keeps), not three later."""
    core = _btc_core(resume_rounds=3)
    for r in range(2):
        _feed(core, T0 + r * 250, dict.fromkeys("abc", 100.0))
        assert core.run_round(T0 + r * 250).report(0).status == "unknown"
    core.reconfigure(config([market("BTC/USD", ["a", "b", "c"], min_sources=3)], resume_rounds=3))
    _feed(core, T0 + 500, dict.fromkeys("abc", 100.0))
    assert core.run_round(T0 + 500).report(0).status == "degraded"  # live (thin)


def test_a_reloaded_resume_rounds_applies_from_the_next_round() -> None:
    """resume_rounds lowered from 5 to 1 by a reload: the next healthy round is live at once."""
    core = _btc_core(resume_rounds=5)
    _feed(core, T0, dict.fromkeys("abc", 100.0))
    assert core.run_round(T0).report(0).reasons == ["resuming"]
    core.reconfigure(config([market("BTC/USD", ["a", "b", "c"], min_sources=3)], resume_rounds=1))
    _feed(core, T0 + 250, dict.fromkeys("abc", 100.0))
    assert core.run_round(T0 + 250).report(0).status == "degraded"  # live (thin)


def test_a_reloaded_clock_skew_bound_applies_to_the_round_s_freshness() -> None:
    """max_clock_skew_ms raised from 1 s to 5 s by a reload: a quote received 3 s after the round's
    time, not fresh under the old bound, is fresh and votes under the new one."""
    cfg = {"resume_rounds": 1}
    core = _btc_core(max_clock_skew_ms=1_000, **cfg)
    _feed(core, T0, {"a": 100.0, "b": 100.0})
    _feed(core, T0 + 3_000, {"c": 100.0})
    assert core.run_round(T0).report(0).sources[2].used is False
    core.reconfigure(
        config([market("BTC/USD", ["a", "b", "c"], min_sources=3)], max_clock_skew_ms=5_000, **cfg)
    )
    report = core.run_round(T0 + 250).report(0)
    assert report.sources[2].used is True and report.price == "100.00"


def test_a_reload_keeps_the_latest_quotes_and_the_drop_counts() -> None:
    """The book's latest quote per slot (what /v1/markets/{market}/sources shows) and its drop
    counts (the oracled_quotes_dropped_total counter, which must never go back) survive a reload."""
    core = _btc_core(resume_rounds=1)
    _feed(core, T0, {"a": 100.0, "b": 100.0})
    assert core.ingest(Quote("a", "BTC/USD", T0 - 1, price=99.0)) is not None  # out of order
    drops = dict(core.book.drops)
    assert sum(drops.values()) == 1
    latest = dict(core.book.latest)
    core.reconfigure(config([market("BTC/USD", ["a", "b", "c"], min_sources=3)], resume_rounds=1))
    assert dict(core.book.drops) == drops
    assert dict(core.book.latest) == latest and len(latest) == 2


def test_a_reload_that_changes_a_source_s_venue_starts_its_slots_afresh() -> None:
    """Source c moves from one venue type to another under the same id and pair: its old
    venue's quote stops voting at once (`no_quote`) and is no longer shown as its latest; a
    reload that disables a source forgets its latest quote too."""
    markets = [market("BTC/USD", ["a", "b", "c"], min_sources=2)]
    core = Core(config(markets, resume_rounds=1))
    _feed(core, T0, {"a": 100.0, "b": 100.0, "c": 100.2})
    assert core.run_round(T0).report(0).sources[2].used
    sources: dict[str, Any] = {sid: {"type": "binance"} for sid in ("a", "b", "c")}
    sources["c"] = {"type": "okx"}
    doc = {"oracle": {"resume_rounds": 1}, "sources": sources, "markets": markets}
    core.reconfigure(parse_config(doc, env={}))
    assert core.run_round(T0 + 250).report(0).sources[2].reason == "no_quote"
    assert ("c", "BTC/USD", "spot") not in core.book.latest
    sources["b"]["enabled"] = False
    core.reconfigure(parse_config(doc, env={}))
    assert set(core.book.latest) == {("a", "BTC/USD", "spot")}


def test_a_reload_that_changes_lag_ms_judges_the_next_round_by_the_new_one() -> None:
    """a, b, c (9 of 12 weight) last quoted 3 s ago at 50,000; d, e, f quote 49,000 now. Under
    lag_ms 2000 a, b and c lag (stale); a reload to 5000 makes them young again in the next
    round, their quotes kept, and back to 2000 they lag again (docs/pricing.md section 2)."""
    weights = {"a": 3.0, "b": 3.0, "c": 3.0}

    def cfg(lag_ms: int) -> Config:
        btc = market("BTC/USD", "abcdef", weights=weights, lag_ms=lag_ms)
        return config([btc], resume_rounds=1)

    core = Core(cfg(2_000))
    _feed(core, T0, dict.fromkeys("abcdef", 50_000.0))
    core.run_round(T0)
    now = T0 + 3_000
    _feed(core, now, dict.fromkeys("def", 49_000.0))
    reasons = []
    for lag_ms in (2_000, 5_000, 2_000):
        core.reconfigure(cfg(lag_ms))
        report = core.run_round(now).report(0)
        reasons.append("".join("-" if s.used else (s.reason or "?")[0] for s in report.sources))
    assert reasons == ["sss---", "---ooo", "sss---"]
