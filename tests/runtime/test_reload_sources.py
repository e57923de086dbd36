"""A reload stops the sources it restarts or disables before the core takes the new config."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import numpy as np
from one_venue import service_running

from oracled.config import load_config
from oracled.service import Service
from oracled.sim import BinanceSim

VENUES = ("a", "b", "c", "d")


def _toml(urls: list[tuple[str, str]], enabled: bool) -> str:
    out = ['[oracle]\nround_interval_ms = 50\n\n[api]\nlisten = "127.0.0.1:0"\n']
    for sid, (ws, rest) in zip(VENUES, urls, strict=True):
        on = "true" if enabled or sid == "a" else "false"
        out.append(
            f'[sources.{sid}]\ntype = "binance"\nws_url = "{ws}"\nrest_url = "{rest}"\n'
            f"enabled = {on}\n"
        )
    entries = ", ".join(f'{{ source = "{s}", pair = "BTC/USDT" }}' for s in VENUES)
    out.append(f'[[markets]]\nsymbol = "BTC/USDT"\nmin_sources = 1\nsources = [{entries}]\n')
    return "\n".join(out)


def _write(path: Path, text: str) -> None:
    path.write_text(text)


async def _all_quoted(service: Service) -> None:
    """Until every slot of BTC/USDT holds a quote."""
    async with asyncio.timeout(10):
        for _ in itertools.count():
            if np.isfinite(service.core.book.mid[0]).all():
                return
            await asyncio.sleep(0.02)


async def test_sources_a_reload_disables_put_no_quote_in_the_new_book(tmp_path: Path) -> None:
    """A reload that disables b, c and d: their slots are empty from the swap on (docs/config.md:
    'its last quotes stop counting at once'), so none of their quotes may reach the book after
    it. Each stopped source used to be cancelled only once the one before it had stopped, so
    the others went on streaming into the new config's book meanwhile."""
    sims = [BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=200.0) for _ in VENUES]
    for sim in sims:
        await sim.start()
    try:
        urls = [(sim.ws_url, sim.rest_url) for sim in sims]
        path = tmp_path / "oracled.toml"
        _write(path, _toml(urls, True))
        service = Service(load_config(path), config_path=path)
        async with service_running(service):
            await _all_quoted(service)
            for _ in range(5):
                _write(path, _toml(urls, False))
                changes = await service.reload("test")
                assert changes["sources_restarted"] == ["b", "c", "d"]
                held = np.isfinite(service.core.book.mid[0]).tolist()
                assert held == [True, False, False, False], held
                _write(path, _toml(urls, True))
                await service.reload("test")
                await _all_quoted(service)
    finally:
        for sim in sims:
            await sim.stop()
