"""A price the market's decimals cannot show within 1 % is paused for `resolution`, never
published live (0.014 at two decimals went out `active` as "0.01", 29 % off; a value below one
unit, 0.004 as "0.00", is out of the market's band: tests/core/test_round_edges.py)."""

from __future__ import annotations

from core_helpers import ROUND_MS, Scenario, config, market

from oracled.config import RESOLUTION_UNITS, resolution_floor
from oracled.model import Quote, Report


def _coin(price: float) -> dict[str, dict[str, float]]:
    return {"XYZ/USD": dict.fromkeys("abc", price)}


def _summary(r: Report) -> tuple[str, list[str], str | None, str | None]:
    return r.status, r.reasons, r.price, r.last_good_price


def _scenario(**extra: object) -> Scenario:
    """XYZ/USD at the default two decimals (floor 1.00), three sources, 3 rounds to resume."""
    return Scenario(config([market("XYZ/USD", "abc", min_sources=2, **extra)], resume_rounds=3))


def test_the_floor_is_a_hundred_units_of_the_last_digit_exactly() -> None:
    """The floor is 100 units of 10 ** price_exponent, the nearest float to it (1.0 at two
    decimals, not 100 * 0.01), at every exponent the config allows."""
    assert RESOLUTION_UNITS == 100
    assert resolution_floor(-2) == 1.0
    assert resolution_floor(0) == 100.0
    assert resolution_floor(-8) == 1e-6
    assert resolution_floor(-18) == 1e-16


def test_a_price_the_decimals_show_coarsely_is_never_published_live() -> None:
    """0.014 at two decimals would be "0.01", 29 % off. From the first round on the market is
    unknown (it never had a price) with reason resolution, however many healthy rounds pass."""
    sc = _scenario()
    for reports in sc.rounds(10, _coin(0.014)):
        assert _summary(reports["XYZ/USD"]) == ("unknown", ["resolution"], None, None)
    assert sc.last is not None
    assert sc.last.transitions == ()  # unknown from the start: no status change to log


def test_a_live_market_falling_below_its_floor_is_paused_at_once_and_resumes_after_the_streak() -> (
    None
):
    """Live at 1.05; a move to 0.98 (inside the circuit breaker: no jump hold) pauses it in that
    round with reason resolution and the last good price kept; back at 1.02 it resumes only after
    resume_rounds healthy rounds, as after any other hard reason. The pause and the resume are
    one transition each."""
    sc = _scenario()
    assert _summary(sc.rounds(3, _coin(1.05))[-1]["XYZ/USD"]) == ("active", [], "1.05", "1.05")
    paused = sc.rounds(4, _coin(0.98))
    for reports in paused:
        assert _summary(reports["XYZ/USD"]) == ("paused", ["resolution"], None, "1.05")
    back = sc.rounds(3, _coin(1.02))
    assert [_summary(r["XYZ/USD"]) for r in back] == [
        ("paused", ["resuming"], None, "1.05"),
        ("paused", ["resuming"], None, "1.05"),
        ("active", [], "1.02", "1.02"),
    ]


def test_pause_and_resume_are_each_one_transition_with_the_reason() -> None:
    """The round that pauses for resolution carries one transition naming the reason (what the
    daemon logs and counts); the rounds after it carry none until the market is live again."""
    sc = _scenario()
    sc.rounds(3, _coin(1.05))
    sc.round(_coin(0.98))
    assert sc.last is not None
    assert [(t.market, t.old, t.new, t.reasons) for t in sc.last.transitions] == [
        ("XYZ/USD", "active", "paused", ("resolution",))
    ]
    for prices in (_coin(0.98), _coin(1.02), _coin(1.02)):
        sc.round(prices)
        assert sc.last.transitions == ()
    sc.round(_coin(1.02))
    assert [(t.old, t.new) for t in sc.last.transitions] == [("paused", "active")]


def test_the_floor_follows_each_markets_precision_and_a_price_on_it_is_live() -> None:
    """0.98 is paused at two decimals (floor 1.00) and live at four (floor 0.01) in the same
    round; 1.00, exactly 100 units of the last digit, is live at two decimals."""
    sc = Scenario(
        config(
            [
                market("XYZ/USD", "abc", min_sources=2),
                market("ABC/USD", "abc", min_sources=2, price_exponent=-4),
            ],
            resume_rounds=3,
        )
    )
    both = {"XYZ/USD": dict.fromkeys("abc", 0.98), "ABC/USD": dict.fromkeys("abc", 0.98)}
    reports = sc.rounds(3, both)[-1]
    assert _summary(reports["XYZ/USD"]) == ("unknown", ["resolution"], None, None)
    assert _summary(reports["ABC/USD"]) == ("active", [], "0.9800", "0.9800")
    on_floor = {"XYZ/USD": dict.fromkeys("abc", 1.0), "ABC/USD": dict.fromkeys("abc", 0.98)}
    assert _summary(sc.rounds(3, on_floor)[-1]["XYZ/USD"]) == ("active", [], "1.00", "1.00")


def test_a_coarse_price_is_not_a_jump_and_the_way_back_is_not_shortened() -> None:
    """From 50.00 to 0.50 is a 99 % move: it is paused for resolution, not held as a jump (a
    jump confirmed after jump_confirm_rounds would otherwise publish "0.50", 1 % steps). Coming
    back at 50.00 needs the full healthy streak."""
    sc = Scenario(
        config([market("XYZ/USD", "abc", min_sources=2)], resume_rounds=3, jump_confirm_rounds=2)
    )
    sc.rounds(3, _coin(50.0))
    for reports in sc.rounds(6, _coin(0.5)):
        assert _summary(reports["XYZ/USD"]) == ("paused", ["resolution"], None, "50.00")
    back = [r["XYZ/USD"].status for r in sc.rounds(3, _coin(50.0))]
    assert back == ["paused", "paused", "active"]


def test_a_perpetual_markets_mark_is_null_while_its_index_is_paused_for_resolution() -> None:
    """The mark never outlives the index: with the index below its floor the mark is null (reason
    index) where it would have been "0.01"."""
    mk = market("XYZ/USD", "abc", min_sources=2)
    mk["perp_sources"] = [{"source": "p", "pair": "XYZ/USD"}]
    sc = Scenario(config([mk], resume_rounds=1))
    for _ in range(3):
        perp = Quote("p", "XYZ/USD", sc.now + ROUND_MS, bid=0.01399, ask=0.01401, kind="perp")
        assert sc.core.ingest(perp) is None
        report = sc.round(_coin(0.014))["XYZ/USD"]
        assert (report.status, report.reasons, report.price) == ("unknown", ["resolution"], None)
        assert report.mark is not None
        assert (report.mark.price, report.mark.reason) == (None, "index")
