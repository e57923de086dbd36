"""A reload of a bad file, by the admin endpoint or by SIGHUP, changes nothing: every kind of
mistake an operator can make in the file is refused whole, logged and counted, naming the key.

The config checks are tested file by file in tests/config; this drives the same mistakes
through a running daemon, where "refused" must also mean that no source was stopped or
restarted and the rounds go on priced by the config in force.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import aiohttp
import pytest
from one_venue import service_running
from ports import free_port
from structlog.testing import capture_logs

from oracled.config import load_config
from oracled.core import RoundResult
from oracled.service import Service
from oracled.sim import BinanceSim

TOKEN_ENV = "ORACLED_REFUSED_RELOAD_TOKEN"
TOKEN = "refused-reload-token-0123456789"
MARKET = 'symbol = "BTC/USDT"\nmin_sources = 1\nsources = [{ source = "good", pair = "BTC/USDT" }]'


def _toml(ws: str, rest: str, port: int) -> str:
    return (
        f'[oracle]\nround_interval_ms = 50\n\n[api]\nlisten = "127.0.0.1:{port}"\n'
        f'admin_token_env = "{TOKEN_ENV}"\n\n'
        f'[sources.good]\ntype = "binance"\nws_url = "{ws}"\nrest_url = "{rest}"\n\n'
        f"[[markets]]\n{MARKET}\n"
    )


#: (what is wrong, how the good file is edited, the problem the refusal must name).
MISTAKES: list[tuple[str, tuple[str, str], str]] = [
    ("wrong type", ("min_sources = 1", 'min_sources = "1"'), "markets[0].min_sources: must be an"),
    ("nan", ('type = "binance"', 'type = "binance"\nliveness_timeout_s = nan'),
     "sources.good.liveness_timeout_s: must be a finite number"),
    ("inf", ("[oracle]", "[chains.eth]\nchain_id = 1\nmax_block_age_s = inf\n\n[oracle]"),
     "chains.eth.max_block_age_s: must be a finite number"),
    ("negative duration", ('type = "binance"', 'type = "binance"\nreconnect_max_s = -1.0'),
     "sources.good.reconnect_max_s: must be >= 0.001"),
    ("zero interval", ("round_interval_ms = 50", "round_interval_ms = 0"),
     "oracle.round_interval_ms: must be >= 10"),
    ("empty list", ('sources = [{ source = "good", pair = "BTC/USDT" }]', "sources = []"),
     "markets[0].sources: must list 1 to 64 sources"),
    ("duplicate market", (MARKET, f"{MARKET}\n\n[[markets]]\n{MARKET}"),
     "markets[1].symbol: duplicate market BTC/USDT"),
    ("source id in another case", ("[sources.good]", "[sources.Good]"), "sources.Good (key): "),
    ("unknown key", ("round_interval_ms = 50", "round_interval_ms = 50\nround_intervall_ms = 50"),
     "oracle.round_intervall_ms: is not a known key"),
    ("quorum above the sources", ("min_sources = 1", "min_sources = 2"),
     "markets[0].min_sources: 2 exceeds the 1 source(s) listed"),
    ("route via a missing market",
     ("[[markets]]", '[[routes]]\nfrom = "USDT"\nto = "USD"\nvia = "USDT/USD"\n\n[[markets]]'),
     "routes[0].via: market USDT/USD is not configured"),
    ("weight beyond its range", ('pair = "BTC/USDT" }', 'pair = "BTC/USDT", weight = 1e308 }'),
     "markets[0].sources[0].weight: must be from 1e-12 to 1e+12"),
    ("not TOML", ("[oracle]", "[oracle"), ": not valid TOML"),
]  # fmt: skip


def _refused(service: Service) -> float:
    found = re.search(
        r'^oracled_config_reloads_total\{result="refused"\} (\S+)$',
        service.metrics.render()[0].decode(),
        flags=re.M,
    )
    return float(found.group(1)) if found else 0.0


async def _refused_above(service: Service, count: float) -> None:
    async with asyncio.timeout(10):
        while True:
            if _refused(service) > count:
                return
            await asyncio.sleep(0.01)


async def _priced_round(service: Service, after: int) -> RoundResult:
    async with asyncio.timeout(10):
        while True:
            result = service.hub.latest_result
            if result is not None and result.round > after and result.report(0).price:
                return result
            await asyncio.sleep(0.01)


async def test_every_mistake_in_a_reloaded_file_is_refused_whole_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each mistake (a wrong type, nan, inf, a negative duration, a zero interval, an empty
    list, a duplicate market, a source id in upper case, a typo'd key, a quorum above the
    sources listed, a route through a market that is not configured, a weight beyond its range,
    a file that is no TOML), reloaded through POST /v1/admin/reload: 422 naming the key and the
    problem, `config reload refused` logged with it, the refused counter up by one; the config
    in force is the same object, the source's task the same (not stopped, not restarted), and
    the next round is priced. One more through SIGHUP: logged and counted the same way."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    async with (
        BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=40.0, volatility=0.0) as sim,
        aiohttp.ClientSession() as http,
    ):
        port = free_port()
        good = _toml(sim.ws_url, sim.rest_url, port)
        path = tmp_path / "oracled.toml"
        path.write_text(good)
        service = Service(load_config(path), config_path=path)
        url = f"http://127.0.0.1:{port}/v1/admin/reload"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with service_running(service):
            last = await _priced_round(service, 0)
            cfg, task = service.cfg, service._source_tasks["good"]
            for what, (old, new), problem in MISTAKES:
                assert old in good, what
                path.write_text(good.replace(old, new, 1))
                refused = _refused(service)
                with capture_logs() as logs:
                    async with http.post(url, headers=auth) as resp:
                        assert resp.status == 422, what
                        message = (await resp.json())["error"]["message"]
                assert problem in message, (what, message)
                lines = [e for e in logs if e["event"] == "config reload refused"]
                assert len(lines) == 1, what
                assert any(problem in p for p in lines[0]["problems"]), (what, lines)
                assert _refused(service) == refused + 1, what
                assert service.cfg is cfg, what
                assert service._source_tasks["good"] is task, what
                last = await _priced_round(service, last.round)

            path.write_text(good.replace("min_sources = 1", "min_sources = 2"))
            refused = _refused(service)
            with capture_logs() as logs:
                os.kill(os.getpid(), signal.SIGHUP)
                await _refused_above(service, refused)
            lines = [e for e in logs if e["event"] == "config reload refused"]
            assert [e["actor"] for e in lines] == ["SIGHUP"]
            assert lines[0]["problems"] == [
                "markets[0].min_sources: 2 exceeds the 1 source(s) listed"
            ]
            assert service.cfg is cfg and service._source_tasks["good"] is task
            await _priced_round(service, last.round)


async def test_a_reload_from_a_path_that_became_a_fifo_is_refused_without_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The config replaced by a FIFO that nobody writes: the reload (SIGHUP, then the admin
    endpoint) used to wait on it for ever, in the thread that reads the file, and every later
    reload queued behind it. Now each is refused at once, naming the path and what it is:
    logged and counted, the config in force and the source's task kept, the rounds priced."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    async with (
        BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=40.0, volatility=0.0) as sim,
        aiohttp.ClientSession() as http,
    ):
        port = free_port()
        path = tmp_path / "oracled.toml"
        path.write_text(_toml(sim.ws_url, sim.rest_url, port))
        service = Service(load_config(path), config_path=path)
        problem = f"{path}: cannot read (a FIFO, not a regular file)"
        async with service_running(service):
            last = await _priced_round(service, 0)
            cfg, task = service.cfg, service._source_tasks["good"]
            path.unlink()
            os.mkfifo(path)
            with capture_logs() as logs:
                os.kill(os.getpid(), signal.SIGHUP)
                await _refused_above(service, 0)
                url = f"http://127.0.0.1:{port}/v1/admin/reload"
                async with http.post(url, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                    status, body = resp.status, await resp.json()
            lines = [e for e in logs if e["event"] == "config reload refused"]
            assert [(e["actor"], e["problems"]) for e in lines] == [
                ("SIGHUP", [problem]),
                ("api", [problem]),
            ]
            assert (status, body["error"]["message"]) == (
                422,
                f"the new config was refused: {problem}",
            )
            assert _refused(service) == 2
            assert service.cfg is cfg and service._source_tasks["good"] is task
            await _priced_round(service, last.round)
