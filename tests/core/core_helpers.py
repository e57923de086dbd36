"""Builders shared by the core tests: small configs as dicts, and quote feeding."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from oracled.config import Config, parse_config
from oracled.core import Core, RoundResult
from oracled.model import Quote, Report

T0 = 1_700_000_000_000
ROUND_MS = 250


def market(
    symbol: str,
    sources: Iterable[str],
    pair: str | None = None,
    *,
    weights: Mapping[str, float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A market table whose sources all quote `pair` (default: the market's own symbol)."""
    weights = weights or {}
    return {
        "symbol": symbol,
        "sources": [
            {"source": s, "pair": pair or symbol, "weight": weights.get(s, 1.0)} for s in sources
        ],
        **extra,
    }


def config(
    markets: list[dict[str, Any]],
    routes: list[dict[str, str]] | None = None,
    **oracle: Any,
) -> Config:
    """A validated config with every source id used by `markets` declared as a binance source,
    or as an okx source (which serves spot and perpetuals) when a market lists it among its
    perp_sources: binance serves no perpetuals, and the config refuses a kind a venue lacks."""
    perps = {s["source"] for m in markets for s in m.get("perp_sources", ())}
    ids = sorted({s["source"] for m in markets for s in m["sources"]} | perps)
    return parse_config(
        {
            "oracle": oracle,
            "sources": {sid: {"type": "okx" if sid in perps else "binance"} for sid in ids},
            "markets": markets,
            "routes": routes or [],
        },
        env={},
    )


USDT_ROUTE = {"from": "USDT", "to": "USD", "via": "USDT/USD"}


def standard_config(**oracle: Any) -> Config:
    """USDT/USD (4 direct), BTC/USD (5), ETH/USD (4 routed via USDT), JPY/USD (4 inverted)."""
    return config(
        [
            market("USDT/USD", "abcd", price_exponent=-6),
            market("BTC/USD", "abcde"),
            market("ETH/USD", "abcd", "ETH/USDT"),
            market("JPY/USD", "abcd", "USD/JPY", price_exponent=-8),
        ],
        [USDT_ROUTE],
        **{"resume_rounds": 3, "jump_confirm_rounds": 4, **oracle},
    )


def quote(source: str, pair: str, price: float, ts: int, venue_ts: int | None = None) -> Quote:
    return Quote(source=source, pair=pair, recv_ts=ts, price=price, venue_ts=venue_ts)


def feed(core: Core, ts: int, prices: Mapping[str, Mapping[str, float]]) -> None:
    """Ingest `prices[pair][source]` at receive time `ts`; fail loudly on any drop."""
    for pair, by_source in prices.items():
        for source, price in by_source.items():
            dropped = core.ingest(quote(source, pair, price, ts))
            assert dropped is None, (source, pair, price, dropped)


@dataclass
class Round:
    """One round of a tape: the quotes received before it and operator commands."""

    quotes: list[Quote]
    manual: dict[str, bool]


def play(
    cfg: Config,
    tape: Sequence[Round],
    each: Callable[[Core, RoundResult], None] | None = None,
) -> list[RoundResult]:
    """Feed each round's quotes, apply its operator commands, run it at T0 + r rounds; `each`
    sees the core right after each round, its book still as the round read it."""
    core = Core(cfg)
    results = []
    for r, rnd in enumerate(tape):
        for q in rnd.quotes:
            core.ingest(q)
        for market, paused in rnd.manual.items():
            core.set_manual(market, paused)
        results.append(core.run_round(T0 + r * ROUND_MS))
        if each is not None:
            each(core, results[-1])
    return results


def by_market(result: RoundResult) -> dict[str, Report]:
    return {r.market: r for r in result.reports()}


CALM: dict[str, dict[str, float]] = {
    "USDT/USD": dict.fromkeys("abcd", 1.0),
    "BTC/USD": dict.fromkeys("abcde", 50_000.0),
    "ETH/USDT": dict.fromkeys("abcd", 2_000.0),
    "USD/JPY": dict.fromkeys("abcd", 150.0),
}


class Scenario:
    """Drives a Core round by round: quotes received at the round's time, then the round."""

    def __init__(self, cfg: Config) -> None:
        self.core = Core(cfg)
        self.now = T0 - ROUND_MS
        self.last: RoundResult | None = None

    def round(self, prices: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, Report]:
        self.now += ROUND_MS
        feed(self.core, self.now, CALM if prices is None else prices)
        self.last = self.core.run_round(self.now)
        return by_market(self.last)

    def rounds(
        self, n: int, prices: Mapping[str, Mapping[str, float]] | None = None
    ) -> list[dict[str, Report]]:
        return [self.round(prices) for _ in range(n)]


def with_prices(**changes: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """CALM with some pairs' per-source prices replaced (pair names use _ for /)."""
    out = {pair: dict(v) for pair, v in CALM.items()}
    for key, by_source in changes.items():
        out[key.replace("_", "/")].update(by_source)
    return out


def went_live_legitimately(reps: list[Report], r: int, resume: int) -> bool:
    """Round r is live after a round that was not: either the resume_rounds rounds ending at r
    all had a quorum, agreement and no operator pause (nothing but `resuming` or `jump`), or
    the market was live right before a hold of `jump` rounds that r follows."""
    window = reps[r - resume + 1 : r] if r + 1 >= resume else None
    if window is not None and all(set(rep.reasons) <= {"resuming", "jump"} for rep in window):
        return True
    k = r - 1
    while k >= 0 and reps[k].reasons == ["jump"]:
        k -= 1
    return k < r - 1 and k >= 0 and reps[k].status in ("active", "degraded")
