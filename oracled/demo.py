"""`oracled demo`: the whole daemon against simulated venues on loopback, with a fault script.

Each simulated venue speaks Binance's real wire protocol, so the daemon runs exactly as in
production, only pointed at 127.0.0.1. Without `--config`, five venues quote BTC, ETH and SOL in
USDT and USDT/USD. With `--config FILE`, every source of that file gets a simulated venue serving
the pairs its markets need, and the file's markets, gates and API settings are used as they are.

The script cycles through: normal prices; one venue printing a spike (excluded as an outlier,
price unmoved); one venue going silent with its socket open (detected, its quotes age out); a
majority of venues silent (quorum lost: markets pause with `price: null`); recovery (markets resume
after the hysteresis window).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from oracled.config import Config, parse_config
from oracled.service import Service
from oracled.sim import BinanceSim

__all__ = ["demo_config", "run_demo", "simulated"]

# Rough USD levels used to start simulated walks; any other asset starts at 10 USD.
USD_LEVELS = {
    "BTC": 97_000.0, "ETH": 3_600.0, "SOL": 240.0, "XRP": 2.4, "BNB": 690.0, "DOGE": 0.38,
    "ADA": 1.0, "AVAX": 40.0, "LINK": 22.0, "DOT": 7.5, "LTC": 110.0, "BCH": 450.0, "TRX": 0.25,
    "UNI": 13.0, "ATOM": 7.0, "XLM": 0.42, "NEAR": 5.5, "AAVE": 330.0, "ETC": 28.0, "FIL": 5.5,
    "SHIB": 0.000022, "USDT": 1.0, "USDC": 1.0, "USD": 1.0,
}  # fmt: skip
_MARKETS = {"BTC/USD": -2, "ETH/USD": -2, "SOL/USD": -3}
_LOG = structlog.get_logger("oracled").bind(component="demo")


def _level(asset: str) -> float:
    return USD_LEVELS.get(asset, 10.0)


def demo_config(urls: list[tuple[str, str]], listen: str) -> Config:
    """The built-in demo config for `len(urls)` venues given as (ws_url, rest_url)."""
    names = [f"venue{i + 1}" for i in range(len(urls))]
    sources = {
        name: {"type": "binance", "ws_url": ws, "rest_url": rest}
        for name, (ws, rest) in zip(names, urls, strict=True)
    }
    quorum = len(names) // 2 + 1
    markets: list[dict[str, Any]] = [
        {
            "symbol": "USDT/USD",
            "price_exponent": -6,
            "min_sources": quorum,
            "max_age_ms": 3000,
            "max_deviation": 0.005,
            "circuit_breaker": 0.03,
            "sources": [{"source": n, "pair": "USDT/USD"} for n in names],
        }
    ]
    markets += [
        {
            "symbol": symbol,
            "price_exponent": exponent,
            "min_sources": quorum,
            "max_age_ms": 3000,
            "max_deviation": 0.01,
            "circuit_breaker": 0.1,
            "sources": [{"source": n, "pair": symbol.replace("/USD", "/USDT")} for n in names],
        }
        for symbol, exponent in _MARKETS.items()
    ]
    return parse_config(
        {
            "oracle": {"round_interval_ms": 250, "resume_rounds": 8, "jump_confirm_rounds": 8},
            "api": {"listen": listen},
            "sources": sources,
            "markets": markets,
            "routes": [{"from": "USDT", "to": "USD", "via": "USDT/USD"}],
        }
    )


def simulated(cfg: Config, urls: dict[str, tuple[str, str]]) -> Config:
    """`cfg` with every source pointed at its simulator and short liveness settings."""
    data = cfg.model_dump(by_alias=True, exclude={"admin_token"})
    for sid, (ws, rest) in urls.items():
        data["sources"][sid].update(
            ws_url=ws,
            rest_url=rest,
            instruments={},
            liveness_timeout_s=3.0,
            rest_poll_interval_s=1.0,
            reconnect_max_s=5.0,
        )
    return parse_config(data)


def _venue_prices(cfg: Config, sid: str) -> dict[str, float]:
    """Start prices, by Binance symbol, of every pair that source `sid` must quote."""
    prices: dict[str, float] = {}
    for market in cfg.markets:
        for ms in market.sources:
            if ms.source == sid:
                base, quote = ms.pair.split("/")
                prices[f"{base}{quote}"] = _level(base) / _level(quote)
    return prices


async def _script(sims: list[BinanceSim], symbol: str) -> None:
    """The fault script, repeated until the demo stops."""
    n = len(sims)
    while True:
        _LOG.info("demo: all venues healthy", next_in_s=15)
        await asyncio.sleep(15)
        _LOG.warning(
            "demo: last venue prints 8% too high for 15 s: expect it excluded", symbol=symbol
        )
        sims[-1].spike(symbol, 1.08, 15.0)
        await asyncio.sleep(18)
        _LOG.warning("demo: one venue goes silent with its socket open and REST off")
        sims[0].rest_enabled = False
        sims[0].silence(None)
        await asyncio.sleep(12)
        _LOG.warning("demo: a majority of venues goes silent: expect markets paused (quorum)")
        for sim in sims[: n // 2 + 1]:
            sim.rest_enabled = False
            sim.silence(None)
        await asyncio.sleep(15)
        _LOG.info("demo: every venue recovers: expect markets to resume after the hysteresis")
        for sim in sims:
            sim.reset()
        await asyncio.sleep(10)


async def _main(
    listen: str, venues: int, duration: float | None, record: Path | None, base: Config | None
) -> None:
    if base is None:
        ids = [f"venue{i + 1}" for i in range(venues)]
        prices = [{"BTCUSDT": 97_000.0, "ETHUSDT": 3_600.0, "SOLUSDT": 240.0, "USDTUSD": 1.0}]
        prices *= venues
    else:
        ids = [sid for sid, s in base.sources.items() if s.enabled]
        prices = [_venue_prices(base, sid) for sid in ids]
    sims = [BinanceSim(p, seed=i + 1, market_seed=1) for i, p in enumerate(prices)]
    for sim in sims:
        await sim.start()
    try:
        urls = {sid: (s.ws_url, s.rest_url) for sid, s in zip(ids, sims, strict=True)}
        if base is None:
            cfg = simulated(demo_config(list(urls.values()), listen), urls)
        else:
            cfg = simulated(base, urls)
        symbol = next(iter(sims[-1].paths))
        service = Service(cfg, listen=listen, record=record)
        url = f"http://{listen}"
        _LOG.info(
            "demo: try",
            prices=f"{url}/v1/prices",
            metrics=f"{url}/metrics",
            sources=f"{url}/v1/markets/{cfg.markets[-1].symbol.replace('/', '-')}/sources",
        )
        script = asyncio.create_task(_script(sims, symbol), name="demo-script")
        runner = asyncio.create_task(service.run(), name="service")
        if duration is not None:
            asyncio.get_running_loop().call_later(duration, service.stop)
        await runner
        script.cancel()
    finally:
        for sim in sims:
            await sim.stop()


def run_demo(
    listen: str,
    venues: int,
    duration: float | None,
    record: Path | None,
    base: Config | None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None,
) -> None:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_main(listen, venues, duration, record, base))
