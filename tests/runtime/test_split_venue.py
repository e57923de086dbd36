"""A venue's instruments split over several sources of its type, the workaround the config's
warning names for more instruments than the venue serves on one connection: each source keeps a
connection of its own with its part of the symbols, and each market is priced by its own."""

from __future__ import annotations

import asyncio
from pathlib import Path

from one_venue import service_running

from oracled.config import config_warnings, load_config
from oracled.model import Status
from oracled.service import Service
from oracled.sim import BinanceSim

PAIRS = {"a": ("BTC/USDT", "SOL/USDT"), "b": ("ETH/USDT",)}


def _split_toml(ws: str, rest: str) -> str:
    """Sources `a` and `b`, both `binance` at the same venue, with disjoint pairs."""
    head = '[oracle]\nround_interval_ms = 50\n\n[api]\nlisten = "127.0.0.1:0"\n'
    sources = [
        f'[sources.{sid}]\ntype = "binance"\nws_url = "{ws}"\nrest_url = "{rest}"\n'
        for sid in PAIRS
    ]
    markets = [
        f'[[markets]]\nsymbol = "{pair}"\nmin_sources = 1\n'
        f'sources = [{{ source = "{sid}", pair = "{pair}" }}]\n'
        for sid, pairs in PAIRS.items()
        for pair in pairs
    ]
    out = [head, *sources, *markets]
    return "\n".join(out)


async def test_one_venue_split_over_two_sources_streams_each_part_on_its_own_connection(
    tmp_path: Path,
) -> None:
    """Two sources of type binance at one venue, one with BTC and SOL, the other with ETH: the
    config loads without a warning (no market lists both, so the venue votes once), the venue
    sees two connections subscribed to disjoint symbols, and every market goes live (degraded:
    one source is its quorum) priced by the source that carries its pair."""
    prices = {"BTCUSDT": 50_000.0, "ETHUSDT": 3_000.0, "SOLUSDT": 150.0}
    async with BinanceSim(prices, rate_hz=20.0) as sim:
        path = tmp_path / "oracled.toml"
        path.write_text(_split_toml(sim.ws_url, sim.rest_url))
        cfg = load_config(path)
        assert config_warnings(cfg) == []
        service = Service(cfg, config_path=path)
        async with service_running(service):
            async with asyncio.timeout(10):
                while True:
                    await asyncio.sleep(0.05)
                    result = service.hub.latest_result
                    if result is not None and all(int(s) <= Status.DEGRADED for s in result.status):
                        break
            assert sorted(sorted(c.streams) for c in sim.clients) == [
                ["BTCUSDT", "SOLUSDT"],
                ["ETHUSDT"],
            ]
            assert sim.stats.connections == 2
            used = {
                report.market: [s.id for s in report.sources if s.used]
                for report in result.reports()
            }
            assert used == {"BTC/USDT": ["a"], "SOL/USDT": ["a"], "ETH/USDT": ["b"]}
