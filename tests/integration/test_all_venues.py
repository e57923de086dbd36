"""End to end over every venue: the daemon on the shipped config's sources, each on its simulator.

Every adapter speaks to its own venue simulator on loopback with the venue's real wire protocol;
the daemon runs as a subprocess. Prices from all sources must be used; a spiking venue must be
excluded; a venue that goes silent (socket open, REST off) must be dropped as stale and used again
once it recovers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from daemon import Daemon

from oracled.config import Config, load_config
from oracled.sim.venues import SimulatedVenue, simulate

ROOT = Path(__file__).resolve().parents[2]
KEEP = {"USDT/USD", "USDC/USD", "BTC/USD"}
pytestmark = pytest.mark.integration


def _trimmed_default() -> Config:
    """The shipped config reduced to BTC/USD and its stablecoin legs, with short timings."""
    cfg = load_config(ROOT / "config" / "default.toml", env={})
    data = cfg.model_dump(by_alias=True, exclude={"admin_token"})
    data["markets"] = [m for m in data["markets"] if m["symbol"] in KEEP]
    for market in data["markets"]:
        market["max_age_ms"] = 1500
    used = {(s["source"], s["pair"]) for m in data["markets"] for s in m["sources"]}
    for sid, source in data["sources"].items():
        source["instruments"] = {
            pair: name for pair, name in source["instruments"].items() if (sid, pair) in used
        }
    data["oracle"].update(round_interval_ms=100, resume_rounds=3, jump_confirm_rounds=3)
    data["api"]["admin_token_env"] = "ORACLED_TEST_ADMIN_TOKEN"
    data["audit"]["enabled"] = False  # the shipped config writes a trail in the working directory
    return Config.model_validate(data)


def _toml(cfg: Config) -> str:
    data = cfg.model_dump(by_alias=True, exclude={"admin_token"}, exclude_none=True)
    return tomli_w.dumps(data)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Daemon, dict[str, SimulatedVenue]]]:
    liveness = {"liveness_timeout_s": 1.0, "rest_poll_interval_s": 0.5, "reconnect_max_s": 1.0}
    cfg, venues = await simulate(_trimmed_default(), rate_hz=10.0, liveness=liveness)
    daemon = Daemon(_toml(cfg), tmp_path)
    try:
        await daemon.start()
        yield daemon, {v.source: v for v in venues}
    finally:
        await daemon.close()
        for venue in venues:
            await venue.sim.stop()


def _by_id(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in report["sources"]}


async def test_every_venue_feeds_the_price_and_faults_are_contained(
    world: tuple[Daemon, dict[str, SimulatedVenue]],
) -> None:
    """All BTC/USD sources used; a spike excluded; a silent venue drops out and comes back."""
    daemon, venues = world
    spot_ids = {
        s.source for m in _trimmed_default().markets if m.symbol == "BTC/USD" for s in m.sources
    }

    async def all_used() -> dict[str, Any] | None:
        status, report = await daemon.get("/v1/prices/BTC-USD")
        if status != 200:
            return None
        used = {sid for sid, s in _by_id(report).items() if s["used"]}
        return report if used == spot_ids and report["status"] == "active" else None

    report = await daemon.wait_for(all_used, 30, "every BTC/USD source used")
    assert len(spot_ids) >= 7
    price = float(report["price"])

    kraken = venues["kraken"]
    kraken.sim.spike(kraken.keys[("BTC/USD", "spot")], 1.25, None)

    async def spike_excluded() -> dict[str, Any] | None:
        report = await daemon.report("BTC/USD")
        return report if _by_id(report)["kraken"]["reason"] == "outlier" else None

    report = await daemon.wait_for(spike_excluded, 10, "kraken's spike excluded")
    assert report["status"] == "degraded" and "outlier" in report["reasons"]
    assert abs(float(report["price"]) / price - 1) < 0.01
    kraken.sim.reset()

    gemini = venues["gemini"]
    gemini.sim.rest_enabled = False
    gemini.sim.silence(None)

    async def silent_dropped() -> dict[str, Any] | None:
        report = await daemon.report("BTC/USD")
        return report if _by_id(report)["gemini"]["reason"] == "stale" else None

    report = await daemon.wait_for(silent_dropped, 15, "gemini dropped as stale")
    assert report["status"] in {"active", "degraded"} and report["price"] is not None

    gemini.sim.reset()

    async def recovered() -> dict[str, Any] | None:
        report = await daemon.report("BTC/USD")
        return report if _by_id(report)["gemini"]["used"] else None

    await daemon.wait_for(recovered, 20, "gemini used again")
    status, sources = await daemon.get("/v1/markets/BTC-USD/sources")
    assert status == 200
    states = {s["source"]: (s["connection"] or {}).get("state") for s in sources["sources"]}
    assert set(states.values()) <= {"streaming", "polling"}, states
