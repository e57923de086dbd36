"""`oracled run` whose log reader goes away keeps pricing: its lines are dropped and counted.

Found with `oracled run ... 2>&1 | head -3`: once `head` had its lines, the next log line raised
BrokenPipeError up through the code that logged it, and the daemon stopped within two seconds
with exit code 0, as if an operator had asked it to. A log collector that restarts, a terminal
that closes, or a shell pipe must not take the prices away.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from children import stop
from daemon import ADMIN_TOKEN, free_port, sim_config
from venue_sims import BinanceVenues

pytestmark = pytest.mark.integration

PRICES = {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0, "USDTUSD": 1.0}


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    try:
        async with session.get(url) as resp:
            return resp.status, await resp.text()
    except aiohttp.ClientError:
        return 0, ""


def _dropped(metrics: str) -> float:
    line = next(x for x in metrics.splitlines() if x.startswith("oracled_log_lines_dropped_total"))
    return float(line.split()[1])


async def test_a_daemon_whose_log_reader_is_gone_runs_on_and_counts_the_lost_lines(
    binance_venues: BinanceVenues, tmp_path: Path
) -> None:
    """The only reader of the daemon's log pipe closes it after the first line. The daemon goes
    on: healthy, pricing (3 venues: `degraded`, thin, or `active`), its lost lines counted (a
    SIGHUP reload logs more of them), and it still stops on SIGTERM with exit code 0."""
    venues = await binance_venues(PRICES, 3, market_seed=7)
    config = tmp_path / "oracled.toml"
    config.write_text(sim_config([(v.ws_url, v.rest_url) for v in venues]))
    port = free_port()
    listen = f"127.0.0.1:{port}"
    base = f"http://{listen}"
    proc = subprocess.Popen(  # noqa: ASYNC220 - starting, not waiting
        [sys.executable, "-m", "oracled.cli", "run", "--config", str(config), "--listen", listen],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, ORACLED_TEST_ADMIN_TOKEN=ADMIN_TOKEN),
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        first = await asyncio.to_thread(proc.stdout.readline)
        assert first.startswith(b"{")
        proc.stdout.close()  # the reader goes away; the daemon's next line has nowhere to go
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as session:
            deadline = loop.time() + 20
            metrics = ""
            while loop.time() < deadline:
                assert proc.poll() is None, f"the daemon stopped: exit code {proc.returncode}"
                status, body = await _get(session, base + "/v1/prices/BTC-USD")
                if status == 200 and json.loads(body)["status"] in {"active", "degraded"}:
                    status, metrics = await _get(session, base + "/metrics")
                    if status == 200 and _dropped(metrics) > 0:
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"no price, or no lost line counted: {body[:300]}")
            before = _dropped(metrics)
            proc.send_signal(signal.SIGHUP)  # a reload logs what it did: more lost lines
            while loop.time() < deadline:
                assert proc.poll() is None, f"the daemon stopped: exit code {proc.returncode}"
                _, metrics = await _get(session, base + "/metrics")
                if metrics and _dropped(metrics) > before:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the reload's lines were not counted")
            status, _ = await _get(session, base + "/healthz")
            assert status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0
    finally:
        stop(proc)
