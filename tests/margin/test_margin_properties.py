"""Properties: no liquidation without a price move, none on a paused price."""

from __future__ import annotations

from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from margin_helpers import T0, spec, view

from oracled.margin import Liquidation, MarginEngine, assess_cross

prices = st.floats(min_value=1_000, max_value=200_000, allow_nan=False)
qtys = st.floats(min_value=-20, max_value=20, allow_nan=False).filter(lambda q: abs(q) > 1e-3)


@st.composite
def accounts(draw: st.DrawFn) -> dict[str, Any]:
    positions = [
        {"instrument": "BTC-PERP", "qty": draw(qtys), "entry": draw(prices)}
        for _ in range(draw(st.integers(0, 3)))
    ]
    if draw(st.booleans()):
        positions.append(
            {
                "instrument": "BTC-PERP",
                "qty": draw(qtys),
                "entry": draw(prices),
                "isolated_margin": draw(st.floats(min_value=100, max_value=1e6)),
            }
        )
    return {
        "id": "x",
        "collateral": {
            "USD": draw(st.floats(min_value=-1e5, max_value=1e7)),
            "BTC": draw(st.floats(min_value=0, max_value=50)),
        },
        "positions": positions,
    }


@settings(max_examples=150, deadline=None)
@given(
    acct=accounts(),
    price=prices,
    later=st.lists(
        st.tuples(st.sampled_from(["active", "degraded"]), st.integers(1, 4_000)), min_size=1
    ),
)
def test_a_healthy_account_never_becomes_liquidatable_without_a_price_move(
    acct: dict[str, Any], price: float, later: list[tuple[str, int]]
) -> None:
    """Reports at the same price (any round, time, live status) never liquidate a healthy pool."""
    engine = MarginEngine(spec([acct]))
    engine.on_report(view("BTC/USD", price, ts=T0))
    assume(assess_cross(engine.accounts["x"], engine.spec, engine.prices(T0)).state == "healthy")
    first = engine.step(T0)  # an isolated position may go: its own margin, not the pool's
    assert not any(isinstance(d, Liquidation) and d.scope == "cross" for d in first)
    ts = T0
    for n, (status, gap) in enumerate(later, start=2):
        ts += gap
        engine.on_report(view("BTC/USD", price, ts=ts, round=n, status=status))
        decisions = engine.step(ts)
        assert not any(isinstance(d, Liquidation) and d.scope == "cross" for d in decisions)
        assert engine.state("x") != "liquidatable"


@settings(max_examples=150, deadline=None)
@given(
    acct=accounts(),
    path=st.lists(
        st.tuples(prices, st.sampled_from(["active", "degraded", "paused", "unknown"])),
        min_size=1,
        max_size=12,
    ),
    after_grace=st.sampled_from(["freeze", "last_good"]),
    before=st.one_of(st.none(), prices),
)
def test_a_paused_price_never_liquidates(
    acct: dict[str, Any], path: list[tuple[float, str]], after_grace: str, before: float | None
) -> None:
    """While the market is paused or unknown (within the grace period) nothing is liquidated.
    `before`: the daemon's last good price from before the engine started (None: it had
    none), the one price a pause that comes first offers the engine that it never saw live."""
    policy = {"after_grace": after_grace, "pause_grace_ms": 3_600_000}
    engine = MarginEngine(spec([acct], policy=policy))
    last_good = before
    for n, (price, status) in enumerate(path, start=1):
        ts = T0 + n * 1_000
        live = status in ("active", "degraded")
        engine.on_report(view("BTC/USD", price, ts=ts, round=n, status=status, last_good=last_good))
        decisions = engine.step(ts)
        liquidations = [d for d in decisions if isinstance(d, Liquidation)]
        if not live:
            assert liquidations == []
        for d in liquidations:
            assert d.driver.status in ("active", "degraded") and d.driver.round == n
        if live:
            last_good = price
