"""The manual pauses file's one-writer lock (`<file>.lock`) in two daemon processes: a lock file
removed under the writing daemon, or its directory removed and made again, lets a second daemon
lock a new one and keep its pauses there; the first then rewrites the file no more."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from daemon import ADMIN_TOKEN, Daemon, sim_config
from venue_sims import BinanceVenues

from oracled.sim import BinanceSim

PRICES = {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0, "USDTUSD": 1.0}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
pytestmark = pytest.mark.integration


@pytest.fixture
async def venues(binance_venues: BinanceVenues) -> list[BinanceSim]:
    return await binance_venues(PRICES, 3, market_seed=42)


@pytest.mark.parametrize("lost", ["lock file removed", "directory made again"])
async def test_a_daemon_whose_pauses_lock_is_gone_never_lifts_the_seconds_pause(
    venues: list[BinanceSim], tmp_path: Path, lost: str
) -> None:
    """The first daemon pauses BTC/USD; its lock file goes; the second, started on the same
    file, pauses ETH/USD and keeps it there. The first's next pause found its lock gone: it
    was answered 500 `not_saved` (counted, one error naming the lock) and the file kept the
    second's pauses. Before, the first rewrote the file with its own pauses alone, lifting the
    second's at its next restart."""
    state = tmp_path / "state"
    state.mkdir()
    pauses = state / "pauses.json"
    text = sim_config([(s.ws_url, s.rest_url) for s in venues], min_sources=1)
    text = text.replace("[oracle]\n", f'[oracle]\nmanual_pauses_file = "{pauses}"\n', 1)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = Daemon(text, tmp_path / "a"), Daemon(text, tmp_path / "b")
    try:
        await first.start()
        status, body = await first.post("/v1/admin/markets/BTC-USD/pause", headers=ADMIN)
        assert status == 200, body
        if lost == "lock file removed":
            pauses.with_name(pauses.name + ".lock").unlink()
        else:
            shutil.rmtree(state)
            state.mkdir()
        await second.start()
        status, body = await second.post("/v1/admin/markets/ETH-USD/pause", headers=ADMIN)
        assert status == 200, body
        status, body = await first.post("/v1/admin/markets/USDT-USD/pause", headers=ADMIN)
        assert status == 500 and body["error"]["code"] == "not_saved", body
        _, metrics = await first.get("/metrics")
        assert "\noracled_manual_pauses_save_failures_total 1.0\n" in metrics
        assert "\noracled_manual_pauses_kept 0.0\n" in metrics
        assert second.terminate() == 0 and first.terminate() == 0
    finally:
        await first.close()
        await second.close()
    # the second's pauses: with the old file, the first's BTC/USD it read at its start too
    kept = ["ETH/USD"] if lost == "directory made again" else ["BTC/USD", "ETH/USD"]
    assert list(json.loads(pauses.read_text())["paused"]) == kept
    (event,) = first.events("manual pauses lock lost: no pause is kept until a restart")
    assert event["lock"] == f"{pauses}.lock" and event["level"] == "error"
