"""A reload of a threshold says what it changed, and the next round is priced with it.

Found reloading a running daemon by hand: a new `oracle.resume_rounds`, `oracle.min_price` or
`api.ready_fraction` was applied, but the answer and the `config reloaded` log said nothing had
changed (every list empty), so an operator could not tell a typo from a change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from one_venue import service_running
from ports import free_port

from oracled.config import load_config
from oracled.core import RoundResult
from oracled.service import Service
from oracled.sim import BinanceSim


def _toml(
    ws: list[tuple[str, str]],
    oracle: str = "",
    market: str = "",
    *,
    resume: int = 2,
    ready: float = 1.0,
) -> str:
    sources = "".join(
        f'[sources.s{i}]\ntype = "binance"\nws_url = "{w}"\nrest_url = "{r}"\n\n'
        for i, (w, r) in enumerate(ws, 1)
    )
    entries = ", ".join(f'{{ source = "s{i}", pair = "BTC/USDT" }}' for i in range(1, len(ws) + 1))
    return (
        f"[oracle]\nround_interval_ms = 50\nresume_rounds = {resume}\n{oracle}\n"
        f'[api]\nadmin_token_env = "ORACLED_RELOAD_TEST_NO_TOKEN"\nready_fraction = {ready}\n\n'
        f"{sources}"
        f'[[markets]]\nsymbol = "BTC/USDT"\nmin_sources = 1\nmax_deviation = 0.05\n'
        f"circuit_breaker = 0.5\nsources = [{entries}]\n{market}\n"
        # No venue quotes ETH: a market that is never live, for /readyz.
        '[[markets]]\nsymbol = "ETH/USDT"\nmin_sources = 1\n'
        'sources = [{ source = "s1", pair = "ETH/USDT" }]\n'
    )


async def _next_round(
    service: Service, after: int, check: Callable[[RoundResult], bool] | None = None
) -> RoundResult:
    """The first round numbered above `after` (that passes `check`, if given)."""
    async with asyncio.timeout(10):
        while True:
            result = service.hub.latest_result
            if result is not None and result.round > after and (check is None or check(result)):
                return result
            await asyncio.sleep(0.01)


def _btc(result: RoundResult) -> Any:
    return result.report(0)


def _live(result: RoundResult) -> bool:
    return _btc(result).price is not None


def _write(path: Path, text: str) -> None:
    path.write_text(text)  # a small file, between rounds: the test's own loop may wait for it


async def _reload(service: Service, path: Path, text: str) -> tuple[dict[str, object], int]:
    """Reload `text`; the answer and the last round published under the old config.

    Read when the reload returns, not before it starts: rounds go on while it reads the file
    and stops sources, and on a loaded machine one ran in between, under the old config (the
    tight max_deviation's round then priced both venues). The core takes the new config and
    the reload returns with no wait between (no chain here), so every later round has it."""
    _write(path, text)
    changes = await service.reload("test")
    result = service.hub.latest_result
    assert result is not None
    return changes, result.round


async def test_a_reloaded_threshold_is_reported_and_prices_the_next_round(tmp_path: Path) -> None:
    """Global and per-market thresholds and an API setting, each reloaded on a running service:
    the answer names every applied setting in `settings_changed` (per-market ones also list the
    market in `markets_changed`) and the first round after it runs with the new value:
    `oracle.max_price` below the price pauses the market, a market's own `max_price` too, a long
    `oracle.resume_rounds` holds the market back that many rounds, a tight `max_deviation`
    leaves two venues 3 % apart without a majority, and `api.ready_fraction` changes what
    /readyz answers."""
    async with (
        BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=40.0, volatility=0.0) as low,
        BinanceSim({"BTCUSDT": 51_500.0}, rate_hz=40.0, volatility=0.0) as high,
        aiohttp.ClientSession() as http,
    ):
        venues = [(low.ws_url, low.rest_url), (high.ws_url, high.rest_url)]
        base = _toml(venues)
        path = tmp_path / "oracled.toml"
        _write(path, base)
        port = free_port()
        service = Service(load_config(path), config_path=path, listen=f"127.0.0.1:{port}")
        async with service_running(service):
            first = await _next_round(service, 0, _live)
            assert [s.used for s in _btc(first).sources] == [True, True]

            changes, before = await _reload(service, path, _toml(venues, "max_price = 40000.0"))
            assert changes["settings_changed"] == ["oracle.max_price"]
            assert changes["markets_changed"] == changes["needs_restart"] == []
            assert not _live(await _next_round(service, before))

            changes, before = await _reload(service, path, _toml(venues, market="max_price = 4e4"))
            assert changes["settings_changed"] == [
                "oracle.max_price",
                "markets.BTC/USDT.max_price",
            ]
            assert changes["markets_changed"] == ["BTC/USDT"]
            assert not _live(await _next_round(service, before))

            changes, before = await _reload(service, path, _toml(venues, resume=30))
            assert changes["settings_changed"] == [
                "oracle.resume_rounds",
                "markets.BTC/USDT.max_price",
            ]
            back = await _next_round(service, before, _live)
            assert back.round - before >= 30  # 2 rounds would have done before the reload

            changes, before = await _reload(service, path, base.replace("0.05", "0.001", 1))
            assert changes["settings_changed"] == [
                "oracle.resume_rounds",
                "markets.BTC/USDT.max_deviation",
            ]
            assert changes["markets_changed"] == ["BTC/USDT"]
            report = _btc(await _next_round(service, before))  # two venues 3 % apart
            assert report.price is None and "dispersion" in report.reasons, report

            changes, before = await _reload(service, path, base)
            await _next_round(service, before, _live)
            url = f"http://127.0.0.1:{port}/readyz"
            async with http.get(url) as resp:  # ETH/USDT is never live: 1 of 2 markets
                assert (resp.status, (await resp.json())["required"]) == (503, 2)
            changes, _ = await _reload(service, path, _toml(venues, ready=0.5))
            assert changes["settings_changed"] == ["api.ready_fraction"]
            async with http.get(url) as resp:
                assert (resp.status, (await resp.json())["required"]) == (200, 1)
