"""`simulate` prices a whole config coherently, however long the simulators run.

Seen in `oracled demo`: after half an hour the perpetuals' funding estimate sat at its cap for
most markets. The simulated USDT/USD walked like a volatile asset (about 2 % an hour) while BTC/USDT
walked the same path as BTC/USD, so everything converted through USDT/USD (USDT venues, the
USDT-margined perpetuals) drifted percents away from the USD venues. A dollar stablecoin holds its
peg; the venues of one asset agree whatever currency they quote it in.
"""

from __future__ import annotations

from oracled.config import parse_config
from oracled.sim.venues import SimulatedVenue, simulate

TICKS = 20_000  # at the demo's 4 ticks a second: 83 minutes


def _config() -> dict[str, object]:
    types = ("kraken", "coinbase", "bitstamp", "binance", "binance_usdm")
    sources: dict[str, object] = {t: {"type": t} for t in types}
    return {
        "sources": sources,
        "routes": [{"from": "USDT", "to": "USD", "via": "USDT/USD"}],
        "markets": [
            {
                "symbol": "USDT/USD",
                "min_sources": 1,
                "sources": [
                    {"source": "kraken", "pair": "USDT/USD"},
                    {"source": "coinbase", "pair": "USDT/USD"},
                    {"source": "bitstamp", "pair": "USDT/USD"},  # its simulator keys by market
                ],
            },
            {
                "symbol": "BTC/USD",
                "min_sources": 1,
                "sources": [
                    {"source": "kraken", "pair": "BTC/USD"},
                    {"source": "coinbase", "pair": "BTC/USD"},
                    {"source": "binance", "pair": "BTC/USDT"},
                ],
                "perp_sources": [{"source": "binance_usdm", "pair": "BTC/USDT"}],
            },
        ],
    }


def _walk(venues: list[SimulatedVenue]) -> dict[tuple[str, str, str], float]:
    """Step every path TICKS times at the same instants; return what each venue prints last."""
    for tick in range(TICKS):
        for venue in venues:
            for path in venue.sim.paths.values():
                path.step(float(tick))
    return {
        (v.source, pair, kind): v.sim.paths[key].published(0.0)
        for v in venues
        for (pair, kind), key in v.keys.items()
    }


async def test_stablecoins_hold_their_peg_and_venues_agree_across_quote_currencies() -> None:
    """After 83 simulated minutes USDT/USD is still within 0.2 % of 1 on every venue, and BTC
    priced through USDT (spot and perpetual) is within 0.3 % of BTC on the USD venues."""
    _, venues = await simulate(parse_config(_config(), env={}))
    try:
        printed = _walk(venues)
    finally:
        for venue in venues:
            await venue.sim.stop()
    usdt = [printed[(sid, "USDT/USD", "spot")] for sid in ("kraken", "coinbase", "bitstamp")]
    assert all(abs(p - 1.0) < 0.002 for p in usdt), usdt
    btc_usd = printed[("kraken", "BTC/USD", "spot")]
    in_usd = {
        "spot": printed[("binance", "BTC/USDT", "spot")] * usdt[0],
        "perp": printed[("binance_usdm", "BTC/USDT", "perp")] * usdt[0],
    }
    for kind, value in in_usd.items():
        assert abs(value / btc_usd - 1.0) < 0.003, (kind, value, btc_usd)
