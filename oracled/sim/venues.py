"""One simulator per configured source: how each source type's venue is simulated.

The demo and the end-to-end tests point a whole config at loopback venues. For every enabled
source this module builds the adapter (without connecting it) to learn the venue symbols of the
pairs the config needs, starts that type's simulator serving exactly those symbols at coherent
prices, and returns the config with the source's URLs pointed at it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from oracled.clock import ManualClock
from oracled.config import Config, parse_config
from oracled.model import Kind
from oracled.sim._base import VenueSim
from oracled.sources import build_source
from oracled.sources.stats import SourceStats

__all__ = ["SIMULATORS", "SimulatedVenue", "simulate", "usd_level"]

# Rough USD levels used to start simulated walks; any other asset starts at 10 USD.
USD_LEVELS: Mapping[str, float] = {
    "BTC": 97_000.0, "ETH": 3_600.0, "SOL": 240.0, "XRP": 2.4, "BNB": 690.0, "DOGE": 0.38,
    "ADA": 1.0, "AVAX": 40.0, "LINK": 22.0, "DOT": 7.5, "LTC": 110.0, "BCH": 450.0, "TRX": 0.25,
    "UNI": 13.0, "ATOM": 7.0, "XLM": 0.42, "NEAR": 5.5, "AAVE": 330.0, "ETC": 28.0, "FIL": 5.5,
    "SHIB": 0.000022, "USDT": 1.0, "USDC": 1.0, "USD": 1.0,
}  # fmt: skip

# Dollar stablecoins (and the dollar): a pair of two of them holds its peg instead of walking.
# If USDT/USD walked like a coin while BTC/USDT walks BTC/USD's path, everything converted
# through USDT/USD (USDT venues, USDT-margined perpetuals) would drift away from the USD venues.
PEGGED: frozenset[str] = frozenset({"USD", "USDT", "USDC"})


def usd_level(asset: str) -> float:
    return USD_LEVELS.get(asset, 10.0)


def _keyed(symbol: str, pair: str, kind: Kind) -> str:
    return symbol


# source type -> ("module:Class", sim key of a venue symbol, extra constructor arguments)
SIMULATORS: Mapping[str, tuple[str, Callable[[str, str, Kind], str], Mapping[str, Any]]] = {
    "binance": ("oracled.sim.binance:BinanceSim", _keyed, {}),
    "binance_usdm": ("oracled.sim.binance_usdm:BinanceUsdmSim", _keyed, {}),
    "bybit_spot": (
        "oracled.sim.bybit:BybitSim", lambda s, p, k: f"spot:{s}", {"categories": ("spot",)}
    ),
    "bybit_linear": (
        "oracled.sim.bybit:BybitSim", lambda s, p, k: f"linear:{s}", {"categories": ("linear",)}
    ),
    "coinbase": ("oracled.sim.coinbase:CoinbaseSim", _keyed, {}),
    "gemini": ("oracled.sim.gemini:GeminiSim", _keyed, {}),
    "gemini_ws": ("oracled.sim.gemini_ws:GeminiWsSim", _keyed, {}),
    "kraken": ("oracled.sim.kraken:KrakenSim", _keyed, {}),
    "okx": ("oracled.sim.okx:OkxSim", _keyed, {}),
    "kucoin": ("oracled.sim.kucoin:KucoinSim", _keyed, {}),
    "bitstamp": ("oracled.sim.bitstamp:BitstampSim", lambda s, p, k: s, {}),
    "pyth_hermes": ("oracled.sim.pyth_hermes:PythHermesSim", _keyed, {}),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class SimulatedVenue:
    """A running simulator for one source, and the sim key of each (pair, kind) it serves."""

    source: str
    type: str
    sim: VenueSim
    keys: Mapping[tuple[str, Kind], str]


def _pairs(cfg: Config, sid: str) -> list[tuple[str, Kind]]:
    seen: dict[tuple[str, Kind], None] = {}
    for market in cfg.markets:
        for ms in (*market.sources, *market.perp_sources):
            if ms.source == sid:
                seen[(ms.pair, ms.kind)] = None
    return list(seen)


def _sim_prices(
    type_name: str,
    instruments: Mapping[str, tuple[str, Kind]],
    seed: int,
    key_of: Callable[[str, str, Kind], str],
) -> tuple[dict[str, float], dict[str, str], set[str]]:
    """Start prices keyed as the type's simulator expects them, each key's common walk seed
    (by base asset, so that BTCUSDT on one venue and BTC-USD on another move together), and the
    keys of pegged pairs (USDT/USD, USDC/USDT: they do not walk)."""
    prices: dict[str, float] = {}
    seeds: dict[str, str] = {}
    pegged: set[str] = set()
    for symbol, (pair, kind) in instruments.items():
        base, quote = pair.split("/")
        key = pair if type_name == "bitstamp" else symbol
        prices[key] = usd_level(base) / usd_level(quote)
        seeds[key] = seeds[key_of(symbol, pair, kind)] = f"{seed}:{base}"
        if base in PEGGED and quote in PEGGED:
            pegged.add(key_of(symbol, pair, kind))  # the simulator's own key of its path
    return prices, seeds, pegged


async def simulate(
    cfg: Config,
    *,
    seed: int = 1,
    rate_hz: float = 4.0,
    liveness: Mapping[str, float] | None = None,
    stagger: bool = False,
) -> tuple[Config, list[SimulatedVenue]]:
    """Start a simulator for every enabled source; return the re-pointed config and the venues.

    `liveness` overrides source settings for every source (e.g. ``liveness_timeout_s=3.0``).
    All venues share one market seed, so they walk the same prices with a small basis each.
    `stagger` spreads each venue's updates over its tick (see `VenueSim`).
    """
    venues: list[SimulatedVenue] = []
    data = cfg.model_dump(by_alias=True, exclude={"admin_token"})
    async with aiohttp.ClientSession() as session:
        for i, (sid, src) in enumerate(cfg.sources.items()):
            if not src.enabled or src.type not in SIMULATORS:
                continue
            adapter = build_source(
                sid, src, _pairs(cfg, sid), lambda q: None, ManualClock(), session, SourceStats(sid)
            )
            path, key_of, extra = SIMULATORS[src.type]
            module, _, name = path.partition(":")
            sim_cls = getattr(importlib.import_module(module), name)
            prices, seeds, pegged = _sim_prices(src.type, adapter.instruments, seed, key_of)
            sim: VenueSim = sim_cls(
                prices,
                seed=i + 1,
                market_seed=seeds,
                rate_hz=rate_hz,
                stagger=stagger,
                **extra,
            )
            for key in pegged:  # only the venue's own small basis moves them
                sim.paths[key].volatility = 0.0
            await sim.start()
            keys = {
                (pair, kind): key_of(symbol, pair, kind)
                for symbol, (pair, kind) in adapter.instruments.items()
            }
            venues.append(SimulatedVenue(sid, src.type, sim, keys))
            data["sources"][sid].update(
                ws_url=sim.ws_url, rest_url=sim.rest_url, **(liveness or {})
            )
    return parse_config(data), venues
