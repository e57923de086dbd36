"""`oracled run` whose log reader is alive but not reading keeps pricing: a slow sink never
stalls the core.

Found reading oracled/logs.py: every log line was written by the thread that logged it, the
event loop included. A reader that stops reading (a stuck log shipper, a paused terminal) fills
the pipe (64 KiB on Linux) and the next line's write blocked the event loop: no more rounds, no
API, no venues. Lines now go to a bounded queue that one writer thread empties.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from children import stop
from daemon import ADMIN_TOKEN, free_port, sim_config
from venue_sims import BinanceVenues

from oracled.service import STOP_WORST_CASE_S

pytestmark = pytest.mark.integration

PRICES = {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0, "USDTUSD": 1.0}
_TIMEOUT = aiohttp.ClientTimeout(total=2)


def _metric(metrics: str, name: str) -> float:
    line = next(x for x in metrics.splitlines() if x.startswith(name + " "))
    return float(line.split()[1])


async def _metrics(session: aiohttp.ClientSession, base: str) -> str:
    """/metrics, or "" when it does not answer within 2 s (the event loop is blocked)."""
    try:
        async with session.get(base + "/metrics", timeout=_TIMEOUT) as r:
            return await r.text() if r.status == 200 else ""
    except (aiohttp.ClientError, TimeoutError):
        return ""


async def _pause_and_resume(session: aiohttp.ClientSession, base: str) -> None:
    """An operator's pause and resume of a market: each logs a line (who did what)."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for action in ("pause", "resume"):
        url = f"{base}/v1/admin/markets/BTC-USD/{action}"
        try:
            async with session.post(url, headers=headers, json={}, timeout=_TIMEOUT) as resp:
                await resp.read()
        except (aiohttp.ClientError, TimeoutError):  # a blocked event loop answers nothing
            pass


async def test_a_daemon_whose_log_reader_stopped_reading_runs_on_and_stops_on_sigterm(
    binance_venues: BinanceVenues, tmp_path: Path
) -> None:
    """The daemon's stderr is a pipe nobody reads. Pauses and resumes through the admin API and
    SIGHUPs make it log (each says who did what) until the pipe is full and the queue too; its
    rounds go on (`oracled_rounds_total` keeps rising, /metrics answers), the lines the writer
    could not keep are counted in `oracled_log_lines_dropped_total`, and SIGTERM still ends it
    with exit code 0 within STOP_WORST_CASE_S, the pipe still unread. Before, the first write
    to the full pipe blocked the event loop: /metrics stopped answering, the rounds stopped."""
    venues = await binance_venues(PRICES, 3, market_seed=7)
    config = tmp_path / "oracled.toml"
    config.write_text(sim_config([(v.ws_url, v.rest_url) for v in venues]))
    listen = f"127.0.0.1:{free_port()}"
    base = f"http://{listen}"
    read_end, write_end = os.pipe()  # the reader: alive (the read end stays open), not reading
    try:
        command = ["oracled.cli", "run", "--config", str(config), "--listen", listen]
        proc = subprocess.Popen(  # noqa: ASYNC220 - starting, not waiting
            [sys.executable, "-m", *command],
            stdout=write_end,
            stderr=write_end,
            env=dict(os.environ, ORACLED_TEST_ADMIN_TOKEN=ADMIN_TOKEN),
            cwd=tmp_path,
        )
    finally:
        os.close(write_end)
    try:
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as session:
            deadline = loop.time() + 30
            while not (metrics := await _metrics(session, base)):
                assert proc.poll() is None, f"the daemon stopped: exit code {proc.returncode}"
                assert loop.time() < deadline, "the daemon never answered /metrics"
                await asyncio.sleep(0.1)
            # operators' pauses and reloads log lines until the pipe is full and the writer far
            # behind; a blocked event loop answers /metrics no more, and this runs to the deadline
            while not metrics or _metric(metrics, "oracled_log_lines_dropped_total") == 0:
                assert proc.poll() is None, f"the daemon stopped: exit code {proc.returncode}"
                assert loop.time() < deadline, "no dropped line counted: " + (
                    str(_metric(metrics, "oracled_rounds_total"))
                    if metrics
                    else "/metrics does not answer: the event loop is blocked"
                )
                proc.send_signal(signal.SIGHUP)
                await asyncio.gather(*(_pause_and_resume(session, base) for _ in range(20)))
                metrics = await _metrics(session, base)
            # the pipe still full and unread, the rounds go on: a later count is higher
            rounds = _metric(metrics, "oracled_rounds_total")
            deadline = loop.time() + 30
            while not metrics or _metric(metrics, "oracled_rounds_total") <= rounds:
                assert proc.poll() is None, f"the daemon stopped: exit code {proc.returncode}"
                assert loop.time() < deadline, "the rounds stopped" + (
                    "" if metrics else ", /metrics does not answer: the event loop is blocked"
                )
                await asyncio.sleep(0.1)
                metrics = await _metrics(session, base)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, STOP_WORST_CASE_S + 2)
        stop_s = time.monotonic() - sent
        assert code == 0, f"exit code {code} after {stop_s:.1f} s"
    finally:
        stop(proc)
        os.close(read_end)
