"""Silent instruments through the daemon: a venue that keeps one symbol's subscription but never
quotes it, on a connection that stays healthy, shows in /metrics within the symbol's markets'
max_age_ms, and the limit follows a reload without restarting the source."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from one_venue import one_venue_toml, service_running

from oracled.config import load_config, parse_config
from oracled.service import Service, silent_limits
from oracled.sim import BinanceSim

_SILENT = re.compile(r'^oracled_source_silent_instruments\{source="good"\} (\S+)$', re.M)


def _two_markets(ws: str, rest: str, eth_max_age_ms: int) -> str:
    """`good` quotes BTC/USDT (max_age_ms 500) and ETH/USDT (`eth_max_age_ms`)."""
    return (
        one_venue_toml(ws, rest).replace("min_sources = 1", "min_sources = 1\nmax_age_ms = 500")
        + f"""
[[markets]]
symbol = "ETH/USDT"
min_sources = 1
max_age_ms = {eth_max_age_ms}
sources = [{{ source = "good", pair = "ETH/USDT" }}]
"""
    )


async def _silent(service: Service, count: int) -> None:
    """Wait until /metrics says `count` silent instruments for `good`."""
    async with asyncio.timeout(5):
        while True:
            found = _SILENT.findall(service.metrics.render()[0].decode())
            if found == [f"{float(count)}"]:
                return
            await asyncio.sleep(0.05)


async def test_a_symbol_the_venue_never_quotes_is_a_silent_instrument_in_the_metrics(
    tmp_path: Path,
) -> None:
    """ETHUSDT subscribed and acknowledged but never sent: /metrics lists one silent instrument
    for the source within seconds (its market's max_age_ms, 600 ms, not the 10 s a source is
    given without the service), while the source streams BTCUSDT; a reload that gives ETH/USDT a
    minute clears it at the source's next scan, without restarting the source."""
    async with BinanceSim({"BTCUSDT": 50_000.0, "ETHUSDT": 3_000.0}, rate_hz=20.0) as sim:
        sim.mute("ETHUSDT")
        path = tmp_path / "oracled.toml"
        path.write_text(_two_markets(sim.ws_url, sim.rest_url, 600))
        service = Service(load_config(path), config_path=path)
        async with service_running(service):
            await _silent(service, 1)
            stats = service.source_stats["good"]
            assert list(stats.silent_instruments) == ["ETHUSDT"]
            assert stats.state.value == "streaming" and stats.reconnects == 0
            path.write_text(_two_markets(sim.ws_url, sim.rest_url, 60_000))
            changes = await service.reload("test")
            assert changes["sources_restarted"] == [] and changes["markets_changed"] == ["ETH/USDT"]
            await _silent(service, 0)
            assert sim.stats.connections == 1


def test_an_instruments_limit_is_the_longest_age_any_of_its_markets_allows() -> None:
    """A pair quoted for two markets gets the larger max_age_ms (silent longer, it is of use to
    none), a slot's own max_age_ms counts, and a perpetual gets its market's max_age_ms."""
    cfg = parse_config(
        {
            "sources": {"a": {"type": "okx"}, "b": {"type": "binance"}},
            "markets": [
                {
                    "symbol": "BTC/USDT",
                    "min_sources": 1,
                    "max_age_ms": 4_000,
                    "sources": [
                        {"source": "a", "pair": "BTC/USDT"},
                        {"source": "b", "pair": "BTC/USDT", "max_age_ms": 9_000},
                    ],
                    "perp_sources": [{"source": "a", "pair": "BTC/USDT"}],
                },
                {  # BTC/USDT again, converted through USDT/USD
                    "symbol": "BTC/USD",
                    "min_sources": 1,
                    "max_age_ms": 7_000,
                    "sources": [{"source": "a", "pair": "BTC/USDT"}],
                },
                {
                    "symbol": "USDT/USD",
                    "min_sources": 1,
                    "sources": [{"source": "b", "pair": "USDT/USD"}],
                },
            ],
            "routes": [{"from": "USDT", "to": "USD", "via": "USDT/USD"}],
        },
        env={},
    )
    assert silent_limits(cfg) == {
        "a": {("BTC/USDT", "spot"): 7_000, ("BTC/USDT", "perp"): 4_000},
        "b": {("BTC/USDT", "spot"): 9_000, ("USDT/USD", "spot"): 10_000},
    }
