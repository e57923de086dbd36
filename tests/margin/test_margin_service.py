"""`oracled margin` against a real `oracled run` on simulated venues, through the WS stream."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from children import stop

# The daemon harness lives beside the integration tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from daemon import ADMIN_TOKEN, Daemon, sim_config

from oracled.sim import BinanceSim

pytestmark = pytest.mark.integration
PRICES = {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0, "USDTUSD": 1.0}
ACCOUNTS = {
    "policy": {"max_report_age_ms": 3_000, "pause_grace_ms": 600_000, "liquidation_fee": 0.0},
    "assets": {"USD": {}},
    "instruments": {
        "BTC-PERP": {"market": "BTC/USD", "tiers": [{"initial": 0.02, "maintenance": 0.01}]}
    },
    "accounts": [
        # equity 10,000 against 600 maintenance: healthy
        {
            "id": "calm",
            "collateral": {"USD": 10_000},
            "positions": [{"instrument": "BTC-PERP", "qty": 1, "entry": 60_000}],
        },
        # equity 6,500 - 6,000 = 500 against 600: liquidatable as soon as a price arrives
        {
            "id": "tight",
            "collateral": {"USD": 6_500},
            "positions": [{"instrument": "BTC-PERP", "qty": 1, "entry": 66_000}],
        },
    ],
}


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    sims = [BinanceSim(PRICES, seed=i, rate_hz=20.0, market_seed=42) for i in range(5)]
    for sim in sims:
        await sim.start()
    d = Daemon(sim_config([(s.ws_url, s.rest_url) for s in sims]), tmp_path)
    await d.start()
    yield d
    await d.close()
    for sim in sims:
        await sim.stop()


def _argv(accounts: Path, url: str) -> list[str]:
    cmd = [sys.executable, "-m", "oracled.cli", "margin", "--accounts", str(accounts)]
    return [*cmd, "--url", url, "--step-ms", "200", "--log-format", "json"]


def _decisions(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def _wait(path: Path, proc: subprocess.Popen[bytes], match: Any, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"margin service exited with {proc.returncode}"
        found = [d for d in _decisions(path) if match(d)]
        if found:
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {what}; decisions: {_decisions(path)}")


async def test_margin_service_liquidates_on_live_reports_and_freezes_on_a_pause(
    daemon: Daemon, tmp_path: Path
) -> None:
    """Decisions follow the published stream: a liquidation on a live price with its report,
    a freeze with the reason when an operator pauses the market, an unfreeze when it resumes."""
    await daemon.wait_status("BTC/USD", {"active", "degraded"}, limit_s=20)
    accounts = tmp_path / "accounts.json"
    accounts.write_text(json.dumps(ACCOUNTS))
    out = tmp_path / "decisions.jsonl"
    url = f"ws://127.0.0.1:{daemon.port}/v1/stream"
    with out.open("wb") as sink, (tmp_path / "margin.log").open("wb") as log:
        proc = subprocess.Popen(  # noqa: ASYNC220 - starting, not waiting
            _argv(accounts, url),
            stdout=sink,
            stderr=log,
        )
    try:
        liq = await _wait(out, proc, lambda d: d["kind"] == "liquidation", "liquidation")
        assert liq["account"] == "tight" and liq["instrument"] == "BTC-PERP"
        driver = liq["driver"]
        assert driver["market"] == "BTC/USD" and driver["status"] in ("active", "degraded")
        assert driver["round"] > 0 and 55_000 < float(driver["price"]) < 65_000
        assert not any(
            d["account"] == "calm" and d["kind"] == "liquidation" for d in _decisions(out)
        )

        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        status, _ = await daemon.post("/v1/admin/markets/BTC-USD/pause", headers=headers)
        assert status == 200
        freeze = await _wait(
            out, proc, lambda d: d["kind"] == "freeze" and d["account"] == "calm", "freeze"
        )
        assert freeze["markets"] == ["BTC/USD"] and freeze["reasons"] == ["paused:manual"]
        assert freeze["drivers"][0]["status"] == "paused"

        status, _ = await daemon.post("/v1/admin/markets/BTC-USD/resume", headers=headers)
        assert status == 200
        await _wait(
            out, proc, lambda d: d["kind"] == "unfreeze" and d["account"] == "calm", "unfreeze"
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        stop(proc)
