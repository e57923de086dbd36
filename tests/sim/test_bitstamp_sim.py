"""The Bitstamp simulator speaks the WebSocket v2 and REST ticker protocols and injects faults."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sim_wire import next_json

from oracled.sim.bitstamp import BitstampSim, market

PRICES = {"BTC/USD": 67_000.0, "ETH/USD": 3_500.0}


@pytest.fixture
async def sim() -> AsyncIterator[BitstampSim]:
    venue = BitstampSim(PRICES, seed=3, rate_hz=50.0, volatility=0.0)
    async with venue:
        yield venue


async def subscribe(ws: aiohttp.ClientWebSocketResponse, channel: str) -> Any:
    await ws.send_str(json.dumps({"event": "bts:subscribe", "data": {"channel": channel}}))
    return await next_json(ws)


def test_market_names_follow_bitstamp() -> None:
    """Canonical pairs become Bitstamp's lower-case market names."""
    assert market("BTC/USD") == "btcusd" and market("USDT/EUR") == "usdteur"


async def test_subscribe_is_acked_and_books_have_the_real_shape(
    sim: BitstampSim, http: aiohttp.ClientSession
) -> None:
    """bts:subscribe is acked by channel; data events carry string levels and time stamps."""
    async with http.ws_connect(f"{sim.ws_url}/") as ws:
        ack = await subscribe(ws, "order_book_btcusd")
        frame = await next_json(ws)
    assert ack == {
        "event": "bts:subscription_succeeded",
        "channel": "order_book_btcusd",
        "data": {},
    }
    assert frame["event"] == "data" and frame["channel"] == "order_book_btcusd"
    data = frame["data"]
    assert set(data) == {"timestamp", "microtimestamp", "bids", "asks"}
    assert int(data["microtimestamp"]) // 1_000_000 == int(data["timestamp"])
    assert len(data["bids"]) == len(data["asks"]) == 3
    bids = [float(p) for p, _ in data["bids"]]
    asks = [float(p) for p, _ in data["asks"]]
    assert bids == sorted(bids, reverse=True) and asks == sorted(asks)
    assert bids[0] < 67_000.0 < asks[0]


async def test_errors_heartbeat_and_unsubscribe(
    sim: BitstampSim, http: aiohttp.ClientSession
) -> None:
    """Unknown markets and unreadable requests get bts:error; heartbeat gets its answer."""
    async with http.ws_connect(f"{sim.ws_url}/") as ws:
        unknown = await subscribe(ws, "order_book_foousd")
        await ws.send_str("{not json")
        unreadable = await next_json(ws)
        await ws.send_str('{"event":"bts:heartbeat"}')
        heartbeat = await next_json(ws)
        await ws.send_str('{"event":"bts:unsubscribe","data":{"channel":"order_book_ethusd"}}')
        unsubscribed = await next_json(ws)
    assert unknown == {
        "event": "bts:error",
        "channel": "order_book_foousd",
        "data": {"code": None, "message": "Bad subscription string."},
    }
    assert unreadable["event"] == "bts:error" and unreadable["channel"] == ""
    assert heartbeat == {"event": "bts:heartbeat", "channel": "", "data": {"status": "success"}}
    assert unsubscribed["event"] == "bts:unsubscription_succeeded"
    assert sim.stats.errors_sent == 2


async def test_request_reconnect_reaches_every_client(
    sim: BitstampSim, http: aiohttp.ClientSession
) -> None:
    """request_reconnect() sends bts:request_reconnect to each connected client."""
    async with http.ws_connect(f"{sim.ws_url}/") as ws:
        await asyncio.sleep(0.05)
        assert sim.request_reconnect() == 1
        assert (await next_json(ws))["event"] == "bts:request_reconnect"


async def test_rest_tickers(sim: BitstampSim, http: aiohttp.ClientSession) -> None:
    """All-pairs and one-pair tickers have Bitstamp's fields; faults apply to both."""
    async with http.get(f"{sim.rest_url}/api/v2/ticker/") as resp:
        rows = await resp.json()
    assert [r["pair"] for r in rows] == ["BTC/USD", "ETH/USD"]
    assert {"timestamp", "bid", "ask", "last", "open_24", "market_type"} <= set(rows[0])
    assert float(rows[0]["bid"]) < 67_000.0 < float(rows[0]["ask"])
    async with http.get(f"{sim.rest_url}/api/v2/ticker/ethusd/") as resp:
        assert "pair" not in await resp.json()
    async with http.get(f"{sim.rest_url}/api/v2/ticker/foousd/") as resp:
        assert resp.status == 404
    sim.rest_status = 400
    async with http.get(f"{sim.rest_url}/api/v2/ticker/") as resp:
        assert resp.status == 400
    assert sim.stats.rest_requests == 4
