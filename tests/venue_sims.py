"""Simulated venues started the same way by tests of several folders."""

from __future__ import annotations

from collections.abc import Mapping

from oracled.sim import BinanceSim


class BinanceVenues:
    """Starts simulated Binance venues of one market path (`market_seed`), each with its own
    noise (`seed`): `await binance_venues(prices, 3, market_seed=42)`; `stop` stops them all."""

    def __init__(self) -> None:
        self._started: list[BinanceSim] = []

    async def __call__(
        self, prices: Mapping[str, float], count: int, *, market_seed: int
    ) -> list[BinanceSim]:
        sims = [
            BinanceSim(dict(prices), seed=i, rate_hz=20.0, market_seed=market_seed)
            for i in range(count)
        ]
        for sim in sims:
            await sim.start()
            self._started.append(sim)
        return sims

    async def stop(self) -> None:
        for sim in self._started:
            await sim.stop()
