"""`oracled record` when its tape cannot be written: prices go on, the failure is loud."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from daemon import Daemon, sim_config

from oracled.sim import BinanceSim

PRICES = {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0, "USDTUSD": 1.0}
pytestmark = pytest.mark.integration


@pytest.fixture
async def venues() -> AsyncIterator[list[BinanceSim]]:
    sims = [BinanceSim(PRICES, seed=i, rate_hz=20.0, market_seed=42) for i in range(3)]
    for sim in sims:
        await sim.start()
    yield sims
    for sim in sims:
        await sim.stop()


async def test_a_tape_that_cannot_be_written_stops_the_tape_not_the_rounds(
    venues: list[BinanceSim], tmp_path: Path
) -> None:
    """A full disk under the tape (/dev/full: every write fails with ENOSPC) is logged once with
    the path and the error, and the rounds go on publishing; recording stops there, so the
    tape stays a clean prefix, and `record` exits 1 because its tape is incomplete. Before, the
    write error killed the round loop at its first flush: the API served round 4 for ever,
    /healthz said ok, and nothing was logged until the shutdown."""
    d = Daemon(sim_config([(s.ws_url, s.rest_url) for s in venues]), tmp_path)
    d.argv[1] = "record"
    await d.start("--out", "/dev/full")
    try:

        async def rounds_go_on() -> bool:
            status, body = await d.get("/v1/prices/BTC-USD")
            return status == 200 and int(body["round"]) >= 40

        await d.wait_for(rounds_go_on, 15, "rounds past the tape's first failed write")
        failures = d.events("tape not written: recording stopped; prices go on")
        assert len(failures) == 1, d.logs()[-3000:]
        assert failures[0]["path"] == "/dev/full"
        assert "No space left on device" in failures[0]["error"]
        assert await asyncio.to_thread(d.terminate) == 1
        assert "fatal" not in d.logs()
    finally:
        await d.close()
