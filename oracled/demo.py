"""`oracled demo`: the whole daemon against simulated venues on loopback, with a fault script.

Each simulated venue speaks Binance's real wire protocol, so the daemon runs exactly as in
production, only pointed at 127.0.0.1. The script cycles through: normal prices, one venue
printing a spike (excluded as an outlier, price unmoved), one venue going silent with its socket
open (detected, its quotes age out), most venues silent (quorum lost: markets pause with
`price: null`), and recovery (markets resume after the hysteresis window).
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

__all__ = ["demo_config", "run_demo"]

START_PRICES = {"BTCUSDT": 97_000.0, "ETHUSDT": 3_600.0, "SOLUSDT": 240.0, "USDTUSD": 1.0}
_MARKETS = {"BTC/USD": -2, "ETH/USD": -2, "SOL/USD": -3}


def demo_config(urls: list[tuple[str, str]], listen: str) -> Config:
    """A config for `len(urls)` simulated venues given as (ws_url, rest_url)."""
    names = [f"venue{i + 1}" for i in range(len(urls))]
    sources = {
        name: {
            "type": "binance",
            "ws_url": ws,
            "rest_url": rest,
            "liveness_timeout_s": 3.0,
            "rest_poll_interval_s": 1.0,
            "reconnect_max_s": 5.0,
        }
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


async def _script(sims: list[BinanceSim], log: structlog.typing.FilteringBoundLogger) -> None:
    """The fault script, repeated until the demo stops."""
    while True:
        log.info("demo: all venues healthy", next_in_s=15)
        await asyncio.sleep(15)
        log.warning("demo: venue3 prints BTC 8% too high for 15 s: expect it excluded as outlier")
        sims[2].spike("BTCUSDT", 1.08, 15.0)
        await asyncio.sleep(18)
        log.warning("demo: venue4 goes silent with its socket open and REST off")
        sims[3].rest_enabled = False
        sims[3].silence(None)
        await asyncio.sleep(12)
        log.warning("demo: a majority of venues goes silent: expect markets paused (quorum)")
        for sim in sims[: len(sims) // 2 + 1]:
            sim.rest_enabled = False
            sim.silence(None)
        await asyncio.sleep(15)
        log.info("demo: every venue recovers: expect markets to resume after the hysteresis")
        for sim in sims:
            sim.rest_enabled = True
            sim.reset()
        await asyncio.sleep(10)


async def _main(listen: str, venues: int, duration: float | None, record: Path | None) -> None:
    log = structlog.get_logger("oracled").bind(component="demo")
    sims = [BinanceSim(START_PRICES, seed=i + 1) for i in range(venues)]
    for sim in sims:
        await sim.start()
    try:
        cfg = demo_config([(s.ws_url, s.rest_url) for s in sims], listen)
        service = Service(cfg, listen=listen, record=record)
        base = f"http://{listen}"
        log.info(
            "demo: try", prices=f"{base}/v1/prices", sources=f"{base}/v1/markets/BTC-USD/sources"
        )
        script = asyncio.create_task(_script(sims, log), name="demo-script")
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
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None,
) -> None:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_main(listen, venues, duration, record))
