"""The Gemini simulator speaks the v2 market-data protocol with a coherent book and its faults."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from oracled.sim.gemini import GeminiSim

PRICES = {"BTCUSD": 67_000.0, "ETHUSD": 3_500.0}
SUBSCRIBE = '{"type":"subscribe","subscriptions":[{"name":"l2","symbols":%s}]}'


@pytest.fixture
async def sim() -> AsyncIterator[GeminiSim]:
    venue = GeminiSim(PRICES, seed=3, rate_hz=50.0, heartbeat_s=0.05)
    async with venue:
        yield venue


async def next_json(ws: aiohttp.ClientWebSocketResponse, kind: str, within_s: float = 2.0) -> Any:
    """The next text frame of type `kind` (heartbeats and others are skipped)."""
    async with asyncio.timeout(within_s):
        while True:
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            frame = json.loads(msg.data)
            if frame.get("type") == kind:
                return frame


async def test_snapshot_then_diffs_rebuild_the_venue_book(
    sim: GeminiSim, http: aiohttp.ClientSession
) -> None:
    """Applying the snapshot and the diffs in order gives exactly the venue's current levels."""
    async with http.ws_connect(f"{sim.ws_url}/v2/marketdata") as ws:
        await ws.send_str(SUBSCRIBE % '["BTCUSD"]')
        snapshot = await next_json(ws, "l2_updates")
        assert {"trades", "auction_events"} <= set(snapshot)
        book = {(s, p): q for s, p, q in snapshot["changes"]}
        for _ in range(20):
            diff = await next_json(ws, "l2_updates")
            assert "trades" not in diff
            for side, price, qty in diff["changes"]:
                if float(qty) == 0:
                    del book[side, price]
                else:
                    book[side, price] = qty
        await ws.close()
    assert book == sim._books["BTCUSD"]
    bids = [float(p) for s, p in book if s == "buy"]
    asks = [float(p) for s, p in book if s == "sell"]
    assert len(bids) == len(asks) == sim.depth and max(bids) < min(asks)


async def test_heartbeats_and_trades_have_the_recorded_shape(
    sim: GeminiSim, http: aiohttp.ClientSession
) -> None:
    """Heartbeats carry a ms timestamp; trade frames carry symbol, price and a ms timestamp."""
    async with http.ws_connect(f"{sim.ws_url}/v2/marketdata") as ws:
        beat = await next_json(ws, "heartbeat")
        assert set(beat) == {"type", "timestamp"} and beat["timestamp"] > 1_600_000_000_000
        await ws.send_str(SUBSCRIBE % '["ETHUSD"]')
        await next_json(ws, "l2_updates")
        assert sim.trade("ETHUSD") == 1
        trade = await next_json(ws, "trade")
    assert trade["symbol"] == "ETHUSD" and float(trade["price"]) > 0
    assert {"event_id", "timestamp", "quantity", "side", "tid"} <= set(trade)


async def test_unknown_symbol_is_refused_whole(sim: GeminiSim, http: aiohttp.ClientSession) -> None:
    """A subscribe naming an unknown symbol gets an error frame and subscribes nothing."""
    async with http.ws_connect(f"{sim.ws_url}/v2/marketdata") as ws:
        await ws.send_str(SUBSCRIBE % '["BTCUSD","FOOUSD"]')
        error = await next_json(ws, "error")
        assert error["reason"] == "InvalidSymbol" and error["result"] == "error"
        await ws.send_str("{nope")
        assert (await next_json(ws, "error"))["reason"] == "InvalidJson"
    assert sim.stats.errors_sent == 2
    assert sim.stats.frames_sent == 0


async def test_rest_pubticker(sim: GeminiSim, http: aiohttp.ClientSession) -> None:
    """pubticker answers bid, ask, last and volume; unknown symbols get 400; faults apply."""
    async with http.get(f"{sim.rest_url}/v1/pubticker/btcusd") as resp:
        body = await resp.json()
    assert set(body) == {"bid", "ask", "volume", "last"}
    assert float(body["bid"]) < float(body["ask"])
    async with http.get(f"{sim.rest_url}/v1/pubticker/foousd") as resp:
        assert resp.status == 400
        assert (await resp.json())["reason"] == "InvalidSymbol"
    sim.rest_status = 503
    async with http.get(f"{sim.rest_url}/v1/pubticker/btcusd") as resp:
        assert resp.status == 503
    assert sim.stats.rest_requests == 3
