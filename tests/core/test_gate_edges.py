"""Edges of the gates that a one-character change in them would cross: the band's exact limit,
the quorum's reason bits, the jump counter's resets, degraded markets' hysteresis, downward
jumps and the time of the last good price. Driven through the real core with real quotes."""

from __future__ import annotations

from typing import Any

from core_helpers import ROUND_MS, T0, Scenario, config, market, quote, standard_config, with_prices
from hypothesis import given, settings
from hypothesis import strategies as st

from oracled.model import Quote, Report


def _summary(r: Report) -> tuple[str, list[str], str | None]:
    return r.status, r.reasons, r.price


def _btc(price: float, sources: str = "abcde") -> dict[str, dict[str, float]]:
    return {"BTC/USD": dict.fromkeys(sources, price)}


def test_a_band_of_exactly_max_confidence_ratio_is_live() -> None:
    """Dispersion is a band *above* max_confidence_ratio x price (docs/pricing.md): five sources
    with quartiles 49,900 and 50,100 give a confidence of exactly 100 = 0.002 x 50,000 (exact in
    binary), which under a 0.002 limit is live, not dispersion."""
    spread = {"a": 49_750.0, "b": 49_900.0, "c": 50_000.0, "d": 50_100.0, "e": 50_250.0}
    cfg = config([market("BTC/USD", "abcde", max_confidence_ratio=0.002)], resume_rounds=1)
    btc = Scenario(cfg).round({"BTC/USD": spread})["BTC/USD"]
    assert (btc.status, btc.price, btc.confidence) == ("active", "50000.00", "100.00")


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 98), st.integers(1, 2_000))
def test_a_band_of_exactly_a_decimal_max_confidence_ratio_is_live(
    per_10k: int, ten_thousands: int
) -> None:
    """The same edge with a ratio of k / 10,000, which binary cannot hold (0.0096): five sources
    around a price p (a multiple of 10,000) whose quartiles lie p x k / 10,000 either side, an
    integer, are live; quartiles half a unit further out are dispersion. (The limit's product
    rounded below the band for about one such ratio and price in fifteen: 0.0096 x 20,000,000
    came out under 192,000, and the market was paused.)"""
    price = 10_000.0 * ten_thousands
    band = float(ten_thousands * per_10k)  # price x per_10k / 10,000, exactly
    limit = {"max_confidence_ratio": per_10k / 10_000}
    for extra, expected in ((0.0, "active"), (1.0, "unknown")):
        low, high = price - band, price + band + extra
        spread = dict(zip("abcde", (low, low, price, high, high), strict=True))
        cfg = config([market("BTC/USD", "abcde", **limit)], resume_rounds=1)
        btc = Scenario(cfg).round({"BTC/USD": spread})["BTC/USD"]
        assert all(s.used for s in btc.sources), btc
        assert btc.status == expected, (price, band, extra, btc)
        if expected == "unknown":
            assert btc.reasons == ["dispersion"], btc


def test_a_wide_band_over_exactly_min_sources_is_dispersion() -> None:
    """Enough fresh sources for dispersion (docs/pricing.md) include exactly min_sources:
    three sources at 49,750 / 50,000 / 50,250 (confidence 250, above 0.1 % of 50,000) are
    dispersion and not a live thin price."""
    cfg = config(
        [market("BTC/USD", "abc", min_sources=3, max_confidence_ratio=0.001)], resume_rounds=1
    )
    prices = {"BTC/USD": {"a": 49_750.0, "b": 50_000.0, "c": 50_250.0}}
    btc = Scenario(cfg).round(prices)["BTC/USD"]
    assert _summary(btc) == ("unknown", ["dispersion"], None)


def test_one_stale_source_that_costs_the_quorum_is_named() -> None:
    """Of three sources with min_sources 3, one stops quoting: once its quote is older than
    max_age_ms the market is paused for `quorum` and `stale` (one stale source is enough)."""
    cfg = config([market("BTC/USD", "abc", min_sources=3, max_age_ms=1_000)], resume_rounds=1)
    sc = Scenario(cfg)
    assert _summary(sc.round(_btc(50_000.0, "abc"))["BTC/USD"])[0] == "degraded"  # thin
    seen = [_summary(r["BTC/USD"]) for r in sc.rounds(5, _btc(50_000.0, "ab"))]
    # c is exactly 1,000 ms old in round 4 (still fresh) and 1,250 ms in round 5.
    assert seen[:4] == [("degraded", ["thin"], "50000.00")] * 4
    assert seen[4] == ("paused", ["quorum", "stale"], None)


def _mixed_config() -> Any:
    """BTC/USD with four direct voters, a source that will go stale, one that flags its values,
    and one routed through USDT/USD, a leg that never gets a quote (so it is never live)."""
    btc = market("BTC/USD", ["a", "b", "c", "d", "s", "f"], max_age_ms=1_000)
    btc["sources"].append({"source": "r", "pair": "BTC/USDT"})
    return config(
        [market("USDT/USD", ["u1", "u2", "u3"]), btc],
        [{"from": "USDT", "to": "USD", "via": "USDT/USD"}],
        resume_rounds=3,
        jump_confirm_rounds=4,
    )


def _mixed_round(sc: Scenario, price: float) -> dict[str, Report]:
    """a-d at `price`, r fresh (blocked by its leg), f flagged; s never quotes after round 1."""
    sc.now += ROUND_MS
    core = sc.core
    for s in "abcd":
        assert core.ingest(quote(s, "BTC/USD", price, sc.now)) is None
    assert core.ingest(quote("r", "BTC/USDT", price, sc.now)) is None
    assert core.ingest(Quote("f", "BTC/USD", sc.now, price=1.0, flag="at_bound")) is None
    if sc.now == T0:
        assert core.ingest(quote("s", "BTC/USD", price, sc.now)) is None
    sc.last = core.run_round(sc.now)
    return {r.market: r for r in sc.last.reports()}


def test_stale_route_and_flagged_only_explain_a_lost_quorum() -> None:
    """`stale`, `route` and `flagged` are reasons "with quorum" (docs/pricing.md): a market that
    keeps its quorum but is held for a jump says `jump` alone and is `paused`, not `unknown`,
    although one of its sources is stale, one blocked by its leg and one flagged."""
    sc = Scenario(_mixed_config())
    history = [_mixed_round(sc, 50_000.0) for _ in range(8)]
    assert _summary(history[-1]["BTC/USD"]) == ("active", [], "50000.00")
    btc = _mixed_round(sc, 60_000.0)["BTC/USD"]
    assert _summary(btc) == ("paused", ["jump"], None)
    assert {s.id: s.reason for s in btc.sources if not s.used} == {
        "s": "stale",
        "f": "at_bound",
        "r": "route",
    }


def test_rounds_without_quorum_do_not_confirm_a_jump() -> None:
    """Rounds whose candidate is beyond the breaker but lacks a quorum (two of five in bounds) are
    paused for `quorum` alone and do not count towards the confirmation: when all five agree on
    the new level, it is still held for the full jump_confirm_rounds (4) rounds."""
    cfg = config(
        [market("BTC/USD", "abcde", max_price=1e6)], resume_rounds=3, jump_confirm_rounds=4
    )
    sc = Scenario(cfg)
    assert _summary(sc.rounds(3, _btc(50_000.0))[-1]["BTC/USD"])[0] == "active"
    split = {"BTC/USD": {"a": 60_000.0, "b": 60_000.0, "c": 2e6, "d": 2e6, "e": 2e6}}
    for r in sc.rounds(4, split):
        assert _summary(r["BTC/USD"]) == ("paused", ["quorum"], None)
    seen = [_summary(r["BTC/USD"]) for r in sc.rounds(5, _btc(60_000.0))]
    assert seen == [("paused", ["jump"], None)] * 4 + [("active", [], "60000.00")]


def test_a_held_jump_that_falls_back_starts_the_confirmation_again() -> None:
    """Two held rounds at +20 %, then back inside the breaker until live again: the next jump is
    held for the full jump_confirm_rounds (4), the two earlier rounds are not carried over."""
    sc = Scenario(config([market("BTC/USD", "abcde")], resume_rounds=3, jump_confirm_rounds=4))
    assert _summary(sc.rounds(3, _btc(50_000.0))[-1]["BTC/USD"])[0] == "active"
    assert [_summary(r["BTC/USD"])[1] for r in sc.rounds(2, _btc(60_000.0))] == [["jump"]] * 2
    back = [_summary(r["BTC/USD"]) for r in sc.rounds(3, _btc(50_000.0))]
    assert back[-1] == ("active", [], "50000.00")
    seen = [_summary(r["BTC/USD"]) for r in sc.rounds(5, _btc(60_000.0))]
    assert seen == [("paused", ["jump"], None)] * 4 + [("active", [], "60000.00")]


def test_a_second_jump_right_after_a_confirmed_one_is_held_in_full() -> None:
    """A confirmed jump to 60,000 followed at once by another +20 % (72,000): the second move is
    held for the full jump_confirm_rounds too, never accepted on the first round."""
    sc = Scenario(config([market("BTC/USD", "abcde")], resume_rounds=3, jump_confirm_rounds=4))
    sc.rounds(3, _btc(50_000.0))
    first = [_summary(r["BTC/USD"]) for r in sc.rounds(5, _btc(60_000.0))]
    assert first[-1] == ("active", [], "60000.00")
    seen = [_summary(r["BTC/USD"]) for r in sc.rounds(5, _btc(72_000.0))]
    assert seen == [("paused", ["jump"], None)] * 4 + [("active", [], "72000.00")]


def test_a_degraded_market_that_followed_a_jump_stays_live() -> None:
    """A thin market (exactly min_sources) goes live through a confirmed jump with a healthy
    streak of one; being live (degraded counts as live), it stays live in the next rounds
    instead of waiting for resume_rounds again."""
    cfg = config([market("BTC/USD", "abc", min_sources=3)], resume_rounds=3, jump_confirm_rounds=2)
    sc = Scenario(cfg)
    assert _summary(sc.rounds(3, _btc(50_000.0, "abc"))[-1]["BTC/USD"])[0] == "degraded"
    seen = [_summary(r["BTC/USD"]) for r in sc.rounds(5, _btc(60_000.0, "abc"))]
    assert seen == [("paused", ["jump"], None)] * 2 + [("degraded", ["thin"], "60000.00")] * 3


def test_a_crash_beyond_the_breaker_is_held_like_a_rally() -> None:
    """The breaker is on the size of the move both ways: every source falling 20 % is held for
    jump_confirm_rounds rounds with reason jump, then followed."""
    sc = Scenario(standard_config(jump_confirm_rounds=4, resume_rounds=3))
    sc.rounds(6)
    moved = with_prices(BTC_USD=dict.fromkeys("abcde", 40_000.0))
    seen = [_summary(r["BTC/USD"]) for r in sc.rounds(5, moved)]
    assert seen == [("paused", ["jump"], None)] * 4 + [("active", [], "40000.00")]


def test_the_last_good_time_is_the_last_live_round_not_a_resuming_one() -> None:
    """While a market resumes after a pause, last_good_ts stays the time of its last live round;
    it moves only when the market is live again, to that round's time."""
    cfg = config(
        [market("BTC/USD", "abcde", max_price=1e6)], resume_rounds=3, jump_confirm_rounds=4
    )
    sc = Scenario(cfg)
    sc.rounds(3, _btc(50_000.0))
    good_ts = sc.now
    broken = {"BTC/USD": {"a": 50_000.0, "b": 50_000.0, "c": 2e6, "d": 2e6, "e": 2e6}}
    assert _summary(sc.round(broken)["BTC/USD"])[0] == "paused"
    resuming = [r["BTC/USD"] for r in sc.rounds(2, _btc(50_000.0))]
    assert [(r.reasons, r.last_good_ts) for r in resuming] == [(["resuming"], good_ts)] * 2
    live = sc.round(_btc(50_000.0))["BTC/USD"]
    assert (live.status, live.last_good_ts) == ("active", sc.now)


def test_a_paused_market_back_beyond_the_breaker_still_needs_the_resume_streak() -> None:
    """A market paused for its quorum whose sources come back 20 % away is held for the jump
    and then still needs resume_rounds (10) healthy rounds: the confirmation of a jump is not a
    shorter way back than the streak (jump_confirm_rounds 2 would have made it live in 3)."""
    cfg = config(
        [market("BTC/USD", "abcde", max_price=1e6)], resume_rounds=10, jump_confirm_rounds=2
    )
    sc = Scenario(cfg)
    assert _summary(sc.rounds(10, _btc(50_000.0))[-1]["BTC/USD"])[0] == "active"
    split = {"BTC/USD": {"a": 60_000.0, "b": 60_000.0, "c": 2e6, "d": 2e6, "e": 2e6}}
    assert _summary(sc.round(split)["BTC/USD"]) == ("paused", ["quorum"], None)
    seen = [_summary(r["BTC/USD"]) for r in sc.rounds(10, _btc(60_000.0))]
    assert seen == [
        *[("paused", ["jump"], None)] * 2,
        *[("paused", ["resuming"], None)] * 7,
        ("active", [], "60000.00"),
    ]


def test_a_release_from_a_manual_pause_beyond_the_breaker_needs_the_resume_streak() -> None:
    """An operator pauses a market, the price moves 20 % meanwhile, the pause is lifted: the
    market is live only after resume_rounds (10) healthy rounds, as every release is, not after
    the jump's confirmation (3 rounds)."""
    cfg = config([market("BTC/USD", "abcde")], resume_rounds=10, jump_confirm_rounds=2)
    sc = Scenario(cfg)
    sc.rounds(10, _btc(50_000.0))
    sc.core.set_manual("BTC/USD", True)
    assert _summary(sc.round(_btc(60_000.0))["BTC/USD"]) == ("paused", ["manual"], None)
    sc.core.set_manual("BTC/USD", False)
    seen = [_summary(r["BTC/USD"]) for r in sc.rounds(10, _btc(60_000.0))]
    assert seen == [
        *[("paused", ["jump"], None)] * 2,
        *[("paused", ["resuming"], None)] * 7,
        ("active", [], "60000.00"),
    ]


def test_a_live_market_follows_a_confirmed_jump_without_waiting_for_the_resume_streak() -> None:
    """The other side of the two tests above: a market that was live when the jump began
    follows it after jump_confirm_rounds (2) held rounds, even with resume_rounds at 10
    (docs/pricing.md, section 6: the hold is the confirmation)."""
    cfg = config([market("BTC/USD", "abcde")], resume_rounds=10, jump_confirm_rounds=2)
    sc = Scenario(cfg)
    sc.rounds(10, _btc(50_000.0))
    seen = [_summary(r["BTC/USD"]) for r in sc.rounds(4, _btc(60_000.0))]
    assert seen == [("paused", ["jump"], None)] * 2 + [("active", [], "60000.00")] * 2


def test_a_crash_that_settles_on_the_breakers_edge_is_followed_not_frozen() -> None:
    """Every source falls to about -10 %, the 10 % breaker, and the level then wobbles by
    0.05 % around it: beyond the breaker one round (held), inside it the next. The rounds of
    the hold count towards the streak, so the market is live again in the first round inside
    the breaker. (Before, the hold and the streak reset each other and the market stayed
    paused as long as the wobble lasted, far longer than jump_confirm_rounds.)"""
    sc = Scenario(config([market("BTC/USD", "abcde")], resume_rounds=3, jump_confirm_rounds=4))
    assert _summary(sc.rounds(3, _btc(50_000.0))[-1]["BTC/USD"])[0] == "active"
    seen = [_summary(sc.round(_btc(p))["BTC/USD"]) for p in [44_975.0, 45_025.0] * 4]
    assert seen == [
        ("paused", ["jump"], None),
        *[("active", [], "45025.00"), ("active", [], "44975.00")] * 3,
        ("active", [], "45025.00"),
    ]


def test_a_crash_that_bounces_inside_the_breaker_is_followed_after_the_hold_only() -> None:
    """A live market's sources fall 15 % (held), bounce to -5 % (inside the breaker: live
    there, its streak unbroken by the held round), then fall to -50 %: that move began in a
    live market and is followed after jump_confirm_rounds (1), not after resume_rounds (6)."""
    sc = Scenario(config([market("BTC/USD", "abcde")], resume_rounds=6, jump_confirm_rounds=1))
    assert _summary(sc.rounds(6, _btc(50_000.0))[-1]["BTC/USD"])[0] == "active"
    seen = [_summary(sc.round(_btc(p))["BTC/USD"]) for p in (42_500.0, 47_500.0, 25_000.0)]
    assert seen == [
        ("paused", ["jump"], None),
        ("active", [], "47500.00"),
        ("paused", ["jump"], None),
    ]
    assert _summary(sc.round(_btc(25_000.0))["BTC/USD"]) == ("active", [], "25000.00")


def test_a_further_jump_during_a_hold_is_not_published_in_the_round_it_appears() -> None:
    """Every source falls 15 % (held four rounds), then prints 50 % below the last good price
    in the fifth: the hold's count is due, but that level was never seen before and lies 41 %
    from the level held the round before, so it is held once more and followed in the next
    round it persists. (Before, it went live in the very round it appeared, where the same
    fall from a live market is held for all of jump_confirm_rounds.)"""
    sc = Scenario(config([market("BTC/USD", "abcde")], resume_rounds=3, jump_confirm_rounds=4))
    assert _summary(sc.rounds(3, _btc(50_000.0))[-1]["BTC/USD"])[0] == "active"
    seen = [_summary(r["BTC/USD"]) for r in sc.rounds(4, _btc(42_500.0))]
    assert seen == [("paused", ["jump"], None)] * 4
    seen = [_summary(r["BTC/USD"]) for r in sc.rounds(2, _btc(25_000.0))]
    assert seen == [("paused", ["jump"], None), ("active", [], "25000.00")]


def test_a_hold_through_a_steady_fall_is_confirmed_while_it_falls() -> None:
    """The other side: a crash that falls 15 % (held) and keeps falling 3 % a round, inside the
    breaker from one round to the next, is confirmed after jump_confirm_rounds as before, while
    it still falls, and followed round by round from there."""
    sc = Scenario(config([market("BTC/USD", "abcde")], resume_rounds=3, jump_confirm_rounds=4))
    sc.rounds(3, _btc(50_000.0))
    levels = [42_500.0 * 0.97**k for k in range(7)]
    seen = [_summary(sc.round(_btc(p))["BTC/USD"]) for p in levels]
    assert seen == [("paused", ["jump"], None)] * 4 + [
        ("active", [], format(p, ".2f")) for p in levels[4:]
    ]
