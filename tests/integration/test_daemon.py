"""`oracled run` as a subprocess against Binance-protocol simulators on loopback.

These tests drive the real daemon the way an operator and a downstream engine see it: the HTTP
API, the WebSocket stream, /metrics, the admin gate, faults injected at the venues, and SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from children import stop_async
from daemon import ADMIN_TOKEN, Daemon, sim_config
from venue_sims import BinanceVenues

from oracled import __version__
from oracled.config import load_config
from oracled.core import PRICING_REVISION
from oracled.sim import BinanceSim
from oracled.tape import pricing_digest

PRICES = {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0, "USDTUSD": 1.0}
pytestmark = pytest.mark.integration


@pytest.fixture
async def venues(binance_venues: BinanceVenues) -> list[BinanceSim]:
    return await binance_venues(PRICES, 5, market_seed=42)


@pytest.fixture
async def daemon(venues: list[BinanceSim], tmp_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon(sim_config([(s.ws_url, s.rest_url) for s in venues]), tmp_path)
    await d.start()
    yield d
    await d.close()


async def test_prices_flow_and_every_endpoint_answers(daemon: Daemon) -> None:
    """All markets go live; prices, sources, info, readiness and metrics agree with each other."""
    await daemon.wait_for(lambda: _ready(daemon), 20, "ready")
    status, prices = await daemon.get("/v1/prices")
    assert status == 200
    by_market = {r["market"]: r for r in prices}
    assert set(by_market) == {"USDT/USD", "BTC/USD", "ETH/USD"}
    btc = by_market["BTC/USD"]
    assert btc["status"] in {"active", "degraded"}
    assert 55_000 < float(btc["price"]) < 65_000
    assert sum(s["used"] for s in btc["sources"]) >= 3

    status, detail = await daemon.get("/v1/markets/BTC-USD/sources")
    assert status == 200, detail
    assert [s["source"] for s in detail["sources"]] == ["v1", "v2", "v3", "v4", "v5"]
    assert all(s["quote"] is not None and s["age_ms"] is not None for s in detail["sources"])

    status, body = await daemon.get("/v1/prices/NOPE-USD")
    assert status == 404 and "error" in body

    status, text = await daemon.get("/metrics")
    assert status == 200
    assert 'oracled_market_status{market="BTC/USD",status="active"}' in text or (
        'oracled_market_status{market="BTC/USD",status="degraded"} 1.0' in text
    )
    assert "oracled_round_duration_seconds_count" in text
    assert 'oracled_source_up{source="v1"} 1.0' in text
    # `oracled run` froze its start-up objects, and the collector's pauses are timed.
    frozen = next(
        line for line in text.splitlines() if line.startswith("oracled_gc_frozen_objects")
    )
    assert float(frozen.split()[1]) > 10_000
    assert 'oracled_gc_pause_seconds_count{generation="0"}' in text


async def _ready(daemon: Daemon) -> bool:
    status, _ = await daemon.get("/readyz")
    return status == 200


async def test_the_stream_delivers_each_new_report_of_subscribed_markets(daemon: Daemon) -> None:
    """A subscriber to BTC/USD receives BTC/USD reports round after round, nothing else."""
    await daemon.wait_status("BTC/USD", {"active", "degraded"})
    assert daemon.session is not None
    async with daemon.session.ws_connect(daemon.base + "/v1/stream") as ws:
        await ws.send_json({"op": "subscribe", "markets": ["BTC/USD"]})
        rounds: list[int] = []
        async with asyncio.timeout(10):
            while len(rounds) < 5:
                msg = json.loads((await ws.receive()).data)
                if msg["type"] == "report":
                    assert msg["data"]["market"] == "BTC/USD"
                    rounds.append(msg["data"]["round"])
        assert rounds == sorted(rounds) and len(set(rounds)) == 5


async def test_one_venue_spike_is_excluded_and_never_moves_the_price(
    daemon: Daemon, venues: list[BinanceSim]
) -> None:
    """Venue 3 prints BTC 30% high: excluded as an outlier; the price stays with the others."""
    before = await daemon.wait_status("BTC/USD", {"active", "degraded"})
    venues[2].spike("BTCUSDT", 1.3, 30.0)

    async def excluded() -> dict[str, object] | None:
        report = await daemon.report("BTC/USD")
        v3 = next(s for s in report["sources"] if s["id"] == "v3")
        return report if v3["reason"] == "outlier" else None

    report = await daemon.wait_for(excluded, 10, "v3 excluded as outlier")
    assert report["status"] == "degraded" and "outlier" in report["reasons"]
    assert abs(float(report["price"]) / float(before["price"]) - 1) < 0.01


async def test_quorum_loss_pauses_with_null_price_then_resumes(
    daemon: Daemon, venues: list[BinanceSim]
) -> None:
    """Three of five venues go silent with sockets open: paused, price null; back: active again."""
    await daemon.wait_status("BTC/USD", {"active", "degraded"})
    for sim in venues[:3]:
        sim.rest_enabled = False
        sim.silence(None)
    paused = await daemon.wait_status("BTC/USD", {"paused", "unknown"}, limit_s=15)
    assert paused["price"] is None and paused["confidence"] is None
    assert paused["last_good_price"] is not None
    assert "quorum" in paused["reasons"]
    for sim in venues:
        sim.rest_enabled = True
        sim.reset()
    resumed = await daemon.wait_status("BTC/USD", {"active", "degraded"}, limit_s=20)
    assert resumed["price"] is not None
    # The daemon logs each move: live at start-up, paused for the quorum, live again.
    live = ("active", "degraded")
    moves = [
        (e["new"], e["reasons"]) for e in daemon.events("market status") if e["market"] == "BTC/USD"
    ]
    up = next(i for i, (new, _) in enumerate(moves) if new in live)
    down = next((i for i, (new, _) in enumerate(moves) if i > up and new not in live), None)
    assert down is not None, f"the quorum loss was not logged: {moves}"
    assert moves[down][0] in ("paused", "unknown") and "quorum" in moves[down][1], moves
    assert any(new in live for new, _ in moves[down + 1 :]), moves


async def test_manual_pause_and_resume_through_the_admin_endpoint(daemon: Daemon) -> None:
    """The bearer token is required and a wrong one is refused; a manual pause shows reason
    manual and null price."""
    await daemon.wait_status("ETH/USD", {"active", "degraded"})
    status, body = await daemon.post("/v1/admin/markets/ETH-USD/pause")
    assert status == 401, body
    wrong = {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}x"}
    status, body = await daemon.post("/v1/admin/markets/ETH-USD/pause", headers=wrong)
    assert status == 401, body
    assert (await daemon.report("ETH/USD"))["status"] != "paused"
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    status, body = await daemon.post("/v1/admin/markets/ETH-USD/pause", headers=headers)
    assert status == 200, body
    paused = await daemon.wait_status("ETH/USD", {"paused"})
    assert paused["reasons"] == ["manual"] and paused["price"] is None
    status, _ = await daemon.post("/v1/admin/markets/ETH-USD/resume", headers=headers)
    assert status == 200
    await daemon.wait_status("ETH/USD", {"active", "degraded"})


async def test_a_price_below_the_markets_resolution_is_paused_never_published_as_zero(
    daemon: Daemon, venues: list[BinanceSim]
) -> None:
    """Every venue prints ETH at 0.014 USDT; ETH/USD has two decimals, so the price would go out
    as "0.01", 29 % off (before: held as a jump, then `active` at "0.01"). It is paused for
    resolution with a null price, on /v1/prices and in /metrics, logged once, and live again
    at 3,000 after the resume streak."""
    await daemon.wait_status("ETH/USD", {"active", "degraded"})
    for sim in venues:
        sim.set_price("ETHUSDT", 0.014)
    paused = await daemon.wait_status("ETH/USD", {"paused"})
    assert paused["reasons"] == ["resolution"]
    assert (paused["price"], paused["confidence"]) == (None, None)
    assert float(paused["last_good_price"]) > 1_000
    for _ in range(10):  # past jump_confirm_rounds (5): a held jump would be followed by now
        await asyncio.sleep(0.1)
        report = await daemon.report("ETH/USD")
        assert (report["status"], report["reasons"], report["price"]) == (
            "paused", ["resolution"], None
        ), report  # fmt: skip
    _, text = await daemon.get("/metrics")
    assert 'oracled_market_status{market="ETH/USD",status="paused"} 1.0' in text
    for sim in venues:
        sim.set_price("ETHUSDT", 3_000.0)
    resumed = await daemon.wait_status("ETH/USD", {"active", "degraded"})
    assert float(resumed["price"]) > 1_000
    moves = [
        (e["old"], e["new"], e["reasons"])
        for e in daemon.events("market status")
        if e["market"] == "ETH/USD" and "resolution" in e["reasons"]
    ]
    assert len(moves) == 1 and moves[0][1] == "paused", moves


async def test_sigterm_stops_the_daemon_cleanly(daemon: Daemon) -> None:
    """SIGTERM: exit code 0 and one `stopped` line naming the parts it closed, with no part
    left at its limit on the way: from `shutting down` to the exit, no task abandoned, nothing
    warned or failed. (How long a stop takes: benchmarks/bench_stop.py.)"""
    await daemon.wait_status("BTC/USD", {"active", "degraded"})
    code = await asyncio.to_thread(daemon.terminate)
    assert code == 0, daemon.logs()[-3000:]
    records = [json.loads(ln) for ln in daemon.logs().splitlines() if ln.startswith("{")]
    events = [r["event"] for r in records]
    assert events.count("shutting down") == 1 and events.count("stopped") == 1, events[-20:]
    stop = records[events.index("shutting down") :]
    assert [r for r in stop if r["level"] not in ("debug", "info")] == []
    assert list(records[events.index("stopped")]["parts_s"]) == ["tasks", "api", "session"]


async def test_garbage_frames_are_counted_and_never_published(
    daemon: Daemon, venues: list[BinanceSim]
) -> None:
    """Malformed frames and bad prices from a venue are counted as malformed or dropped."""
    await daemon.wait_status("BTC/USD", {"active", "degraded"})
    venues[0].garbage(50)

    async def counted() -> bool:
        _, text = await daemon.get("/metrics")
        for line in str(text).splitlines():
            if line.startswith('oracled_source_malformed_frames_total{source="v1"}'):
                return float(line.split()[-1]) > 0
        return False

    await daemon.wait_for(counted, 10, "malformed frames counted")
    report = await daemon.report("BTC/USD")
    assert report["status"] in {"active", "degraded"}
    assert 55_000 < float(report["price"]) < 65_000


async def test_a_client_session_to_the_api_gets_json_errors_for_bad_requests(
    daemon: Daemon,
) -> None:
    """Bad paths and bad market names are 4xx with a JSON error body."""
    assert daemon.session is not None
    for method, path, expected in (
        ("GET", "/v1/prices/%%%", None),  # a market name that is not one
        ("GET", "/v1/no-such-endpoint", 404),
        ("POST", "/v1/prices", 405),
        ("POST", "/v1/admin/markets/BTC-USD/pause", 401),
    ):
        async with daemon.session.request(method, daemon.base + path) as resp:
            assert 400 <= resp.status < 500, (path, resp.status)
            assert expected is None or resp.status == expected, (path, resp.status)
            assert resp.content_type == "application/json", (path, resp.content_type)
            body = await resp.json()
            assert body["error"]["code"] and body["error"]["message"], (path, body)


async def test_record_writes_a_tape_that_replay_reads_back(
    venues: list[BinanceSim], tmp_path: Path
) -> None:
    """`oracled record` writes the contract's tape; `oracled replay` of it gives live reports."""
    tape = tmp_path / "live.jsonl"
    d = Daemon(sim_config([(s.ws_url, s.rest_url) for s in venues]), tmp_path)
    d.argv[1] = "record"
    await d.start("--out", str(tape))
    try:
        live = await d.wait_status("BTC/USD", {"active", "degraded"})

        async def later_rounds() -> bool:  # keep recording: the tape must reach past that round
            return int((await d.report("BTC/USD"))["round"]) >= int(live["round"]) + 10

        await d.wait_for(later_rounds, 10, "ten more rounds recorded")
        assert await asyncio.to_thread(d.terminate) == 0
    finally:
        await d.close()
    lines = tape.read_bytes().splitlines()
    digest = pricing_digest(load_config(d.config))  # what replay compares its config with
    header = json.loads(lines[0])
    # Where the daemon's round numbers start (dbeae56), so that replayed rounds are numbered as
    # the published ones: a round and its time in ms.
    first_round, first_round_ts = header.pop("first_round"), header.pop("first_round_ts")
    assert header == {
        "format": "oracled-tape",
        "version": 2,
        "config_sha256": digest,
        "pricing_revision": PRICING_REVISION,  # the rules its reports were computed under
        "software_version": __version__,
    }
    assert isinstance(first_round, int) and 1 <= first_round <= int(live["round"])
    assert isinstance(first_round_ts, int) and 10**12 <= first_round_ts <= int(live["ts"])
    assert len(lines) > 50
    out = tmp_path / "reports.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "oracled.cli",
        "replay",
        "--config",
        str(d.config),
        str(tape),
        "--out",
        str(out),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await proc.communicate()
    finally:
        await stop_async(proc)
    assert proc.returncode == 0, err.decode()
    assert b"warning" not in err  # the config it was recorded with
    reports = [json.loads(x) for x in out.read_bytes().splitlines()]
    # The replayed rounds price BTC/USD live from the tape, where the daemon priced it live.
    replayed = [
        float(r["price"])
        for r in reports
        if r["market"] == "BTC/USD" and r["status"] in ("active", "degraded")
    ]
    assert len(replayed) >= 10
    assert all(abs(price / float(live["price"]) - 1) < 0.01 for price in replayed)


async def test_sighup_reloads_the_config_file_and_an_invalid_file_changes_nothing(
    daemon: Daemon, venues: list[BinanceSim]
) -> None:
    """Edit the file, SIGHUP: ETH/USD is gone and BTC/USD stays live; a broken file is refused."""
    await daemon.wait_status("BTC/USD", {"active", "degraded"})
    text = daemon.config.read_text()
    eth = text.index('[[markets]]\nsymbol = "ETH/USD"')
    daemon.config.write_text(text[:eth])
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)

    async def eth_gone() -> bool:
        status, body = await daemon.get("/v1/markets")
        return status == 200 and [m["symbol"] for m in body["markets"]] == ["USDT/USD", "BTC/USD"]

    await daemon.wait_for(eth_gone, 10, "ETH/USD removed by the reload")
    status, _ = await daemon.get("/v1/prices/ETH-USD")
    assert status == 404
    report = await daemon.report("BTC/USD")
    assert report["status"] in {"active", "degraded"}  # no new warm-up: its state was kept

    daemon.config.write_text(text[:eth].replace("min_sources = 3", "min_sources = 0", 1))
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    status, body = await daemon.post("/v1/admin/reload", headers=headers)
    assert status == 422
    assert "markets[0].min_sources: must be >= 1" in body["error"]["message"]
    daemon.proc.send_signal(signal.SIGHUP)
    await daemon.wait_for(lambda: "config reload refused" in daemon.logs(), 10, "refusal logged")
    status, body = await daemon.get("/v1/markets")
    assert [m["min_sources"] for m in body["markets"]] == [3, 3]
