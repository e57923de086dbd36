"""Restart safety: `kill -9` at any moment leaves an audit trail of whole rounds, and a restarted
daemon starts every market from `unknown`, never `active` before its quorum is rebuilt.

The daemon runs as `oracled run` on the shipped config's venues for BTC/USD and its stablecoin
legs (each source on its loopback simulator), with the audit trail on and a round every 100 ms,
so that a kill lands while rounds are being written. The restarted daemon comes up while every
venue is stalled: its first rounds have no quotes at all. Every report it publishes is checked
twice: on the stream, subscribed before the venues come back, and in the audit trail, which holds
every round from the first.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import tomli_w
from daemon import Daemon
from restart_rig import first_live, reports_after, whole_rounds

from oracled.config import Config, load_config
from oracled.sim.venues import SimulatedVenue, simulate

ROOT = Path(__file__).resolve().parents[2]
KEEP = {"USDT/USD", "USDC/USD", "BTC/USD"}
RESUME_ROUNDS = 5
pytestmark = pytest.mark.integration


def _config(audit: Path) -> Config:
    cfg = load_config(ROOT / "config" / "default.toml", env={})
    data = cfg.model_dump(by_alias=True, exclude={"admin_token"})
    data["markets"] = [m for m in data["markets"] if m["symbol"] in KEEP]
    for market in data["markets"]:
        market["max_age_ms"] = 1500
    used = {(s["source"], s["pair"]) for m in data["markets"] for s in m["sources"]}
    used |= {(s["source"], s["pair"]) for m in data["markets"] for s in m["perp_sources"]}
    for sid, source in data["sources"].items():
        source["instruments"] = {
            pair: name for pair, name in source["instruments"].items() if (sid, pair) in used
        }
    data["oracle"].update(round_interval_ms=100, resume_rounds=RESUME_ROUNDS, jump_confirm_rounds=3)
    data["api"]["admin_token_env"] = "ORACLED_TEST_ADMIN_TOKEN"
    data["audit"].update(enabled=True, path=str(audit))
    return Config.model_validate(data)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[str, Config, list[SimulatedVenue]]]:
    liveness = {"liveness_timeout_s": 1.0, "rest_poll_interval_s": 0.5, "reconnect_max_s": 1.0}
    cfg, venues = await simulate(
        _config(tmp_path / "audit.sqlite3"), rate_hz=10.0, liveness=liveness
    )
    text = tomli_w.dumps(cfg.model_dump(by_alias=True, exclude={"admin_token"}, exclude_none=True))
    try:
        yield text, cfg, venues
    finally:
        for venue in venues:
            await venue.sim.stop()


async def _rounds_written(daemon: Daemon, at_least: int) -> None:
    async def written() -> bool:
        status, text = await daemon.get("/metrics")
        lines = [
            ln for ln in str(text).splitlines() if ln.startswith("oracled_audit_rounds_total ")
        ]
        return status == 200 and bool(lines) and float(lines[0].split()[1]) >= at_least

    await daemon.wait_for(written, 20.0, f"{at_least} rounds in the audit trail")


async def _watch(base: str, seen: list[dict[str, Any]], subscribed: asyncio.Event) -> None:
    """Every report the stream sends, from the moment of subscribing."""
    url = base.replace("http", "ws", 1) + "/v1/stream"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.send_json({"op": "subscribe"})
        async for msg in ws:
            frame = json.loads(msg.data)
            if frame.get("type") == "subscribed":
                subscribed.set()
            elif frame.get("type") == "report":
                seen.append(frame["data"])


async def test_kill_9_leaves_whole_rounds_and_the_restart_waits_for_quorum(
    tmp_path: Path, world: tuple[str, Config, list[SimulatedVenue]]
) -> None:
    """After SIGKILL the trail opens clean with whole rounds only; the restarted daemon, started
    while the venues are stalled, publishes no live price until each market has had
    `resume_rounds` rounds with a quorum of sources, and never a live price below quorum."""
    text, cfg, venues = world
    audit = tmp_path / "audit.sqlite3"
    quorum = {m.symbol: m.min_sources for m in cfg.markets}

    (tmp_path / "run1").mkdir()
    first = Daemon(text, tmp_path / "run1")
    try:
        await first.start()
        await first.wait_status("BTC/USD", {"active"}, 30.0)
        await _rounds_written(first, 30)
        assert first.proc is not None
        first.proc.kill()  # SIGKILL: no drain, no close, while rounds are being written
        first.proc.wait()
    finally:
        await first.close()
    rounds, boundary = whole_rounds(audit, len(KEEP))
    assert rounds >= 30

    for venue in venues:  # the restart meets stalled venues: no quote at all at first
        venue.sim.rest_enabled = False
        venue.sim.silence(None)
    (tmp_path / "run2").mkdir()
    second = Daemon(text, tmp_path / "run2")
    seen: list[dict[str, Any]] = []
    subscribed = asyncio.Event()
    watcher: asyncio.Task[None] | None = None
    try:
        await second.start()
        watcher = asyncio.create_task(_watch(second.base, seen, subscribed), name="watch")
        async with asyncio.timeout(10.0):
            await subscribed.wait()
        await _rounds_written(second, 10)  # stalled rounds, written and streamed
        for venue in venues:
            venue.sim.reset()
        for market in sorted(KEEP):
            await second.wait_status(market, {"active"}, 30.0)
        await asyncio.sleep(0.5)
        assert second.proc is not None
        second.proc.kill()  # and once more, now with a restarted writer's rounds in the file
        second.proc.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        await second.close()
    after, _ = whole_rounds(audit, len(KEEP))
    assert after > rounds

    # The stream: subscribed while stalled, so the first reports of each market are not live.
    assert seen, "no report reached the stream subscriber"
    for market in KEEP:
        mine = [r for r in seen if r["market"] == market]
        assert mine and mine[0]["status"] == "unknown" and mine[0]["price"] is None
        assert any(r["status"] == "active" for r in mine)

    # The trail: every report of the restarted daemon from its first round.
    by_market: dict[str, list[tuple[int, Any]]] = {}
    for round_id, report in reports_after(audit, boundary, KEEP):
        by_market.setdefault(report.market, []).append((round_id, report))
    assert set(by_market) == KEEP
    for market, rows in by_market.items():
        assert rows[0][1].status == "unknown", market
        start = first_live(rows, quorum[market], RESUME_ROUNDS)
        assert start is not None, f"{market} never went live after the restart"
