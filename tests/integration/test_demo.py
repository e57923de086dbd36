"""`oracled demo`: the shipped config against a simulator per venue, and its scripted spike."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon

ROOT = Path(__file__).resolve().parents[2]
SPIKE_EVENT = "demo: one venue prints 8% too high"


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon((ROOT / "config" / "default.toml").read_text(), tmp_path)
    d.argv = [sys.executable, "demo"]
    await d.start("--duration", "35")
    yield d
    await d.close()


def _events(daemon: Daemon) -> list[dict[str, Any]]:
    return [json.loads(line) for line in daemon.logs().splitlines() if line.startswith("{")]


async def test_the_demo_prices_every_market_excludes_its_spike_and_stops_cleanly(
    demo: Daemon,
) -> None:
    """Every market of the shipped config goes live on loopback venues; the venue the script
    spikes 8 % high is excluded as an outlier while BTC/USD's price stays put; the demo froze its
    start-up objects like `oracled run`, and it exits 0 when --duration ends."""

    async def all_live() -> list[dict[str, Any]] | None:
        status, prices = await demo.get("/v1/prices")
        live = status == 200 and all(p["status"] in ("active", "degraded") for p in prices)
        return prices if live else None

    prices = await demo.wait_for(all_live, 30, "every market active or degraded")
    assert len(prices) == 23
    before = await demo.report("BTC/USD")

    _, text = await demo.get("/metrics")
    frozen = next(line for line in text.splitlines() if line.startswith("oracled_gc_frozen"))
    assert float(frozen.split()[1]) > 10_000

    spike = await demo.wait_for(
        lambda: next((e for e in _events(demo) if e["event"].startswith(SPIKE_EVENT)), None),
        30,
        "the scripted spike",
    )
    assert spike["market"] == "BTC/USD"

    async def excluded() -> dict[str, Any] | None:
        report = await demo.report("BTC/USD")
        slot = next(s for s in report["sources"] if s["id"] == spike["venue"])
        return report if slot["reason"] == "outlier" else None

    report = await demo.wait_for(excluded, 10, f"{spike['venue']} excluded as an outlier")
    assert report["status"] in ("active", "degraded") and "outlier" in report["reasons"]
    assert abs(float(report["price"]) / float(before["price"]) - 1) < 0.01

    assert demo.proc is not None
    assert await asyncio.to_thread(demo.proc.wait, 30) == 0, demo.logs()[-2000:]
    assert any(e["event"] == "stopped" for e in _events(demo))
