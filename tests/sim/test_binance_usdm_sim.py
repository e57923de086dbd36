"""The Binance USD-M simulator speaks the /public book ticker protocol and its REST."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from sim_wire import binance_subscribe as subscribe
from sim_wire import next_json

from oracled.sim.binance_usdm import BinanceUsdmSim

PRICES = {"BTCUSDT": 67_000.0, "ETHUSDT": 3_500.0}


@pytest.fixture
async def sim() -> AsyncIterator[BinanceUsdmSim]:
    venue = BinanceUsdmSim(PRICES, seed=3, rate_hz=50.0, volatility=0.0)
    async with venue:
        yield venue


async def test_public_path_serves_futures_book_tickers(
    sim: BinanceUsdmSim, http: aiohttp.ClientSession
) -> None:
    """/public acks a bookTicker SUBSCRIBE and sends frames with e, u, E, T and string prices."""
    async with http.ws_connect(f"{sim.ws_url}/public/stream") as ws:
        assert await subscribe(ws, "btcusdt@bookTicker", rid=7) == {"result": None, "id": 7}
        first, second = (
            (await next_json(ws, pings=True))["data"],
            (await next_json(ws, pings=True))["data"],
        )
    assert set(first) == {"e", "u", "E", "T", "s", "b", "B", "a", "A"}
    assert first["e"] == "bookTicker" and first["s"] == "BTCUSDT"
    assert second["u"] > first["u"] and first["E"] > 1_600_000_000_000 and first["T"] < first["E"]
    assert 0 < float(first["b"]) < 67_000.0 < float(first["a"])


async def test_public_path_refuses_mark_price_streams_and_market_is_not_served(
    sim: BinanceUsdmSim, http: aiohttp.ClientSession
) -> None:
    """/public refuses a mark price stream; /market (the venue's mark prices, which the adapter
    does not read) is not served."""
    async with http.ws_connect(f"{sim.ws_url}/public/stream") as ws:
        refused = await subscribe(ws, "btcusdt@markPrice@1s", rid=1)
        assert refused == {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 1}
        await ws.send_str('{"method":"LIST_SUBSCRIPTIONS","id":2}')
        assert await next_json(ws, pings=True) == {"result": [], "id": 2}
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused_path:
        await http.ws_connect(f"{sim.ws_url}/market/stream")
    assert refused_path.value.status == 404
    assert sim.stats.connections == 1


async def test_streams_in_the_url_are_subscribed_at_connect(
    sim: BinanceUsdmSim, http: aiohttp.ClientSession
) -> None:
    """`?streams=` subscribes at connect without a message."""
    async with http.ws_connect(f"{sim.ws_url}/public/stream?streams=ethusdt@bookTicker") as ws:
        assert (await next_json(ws, pings=True))["data"]["s"] == "ETHUSDT"


async def test_rest_book_ticker_one_or_all(
    sim: BinanceUsdmSim, http: aiohttp.ClientSession
) -> None:
    """REST answers one symbol as an object, no symbol as the full list, an unknown one -1121."""
    url = f"{sim.rest_url}/fapi/v1/ticker/bookTicker"
    async with http.get(url) as resp:
        rows = await resp.json()
    assert [r["symbol"] for r in rows] == ["BTCUSDT", "ETHUSDT"]
    async with http.get(url, params={"symbol": "ETHUSDT"}) as resp:
        row = await resp.json()
    assert set(row) == {
        "symbol",
        "bidPrice",
        "bidQty",
        "askPrice",
        "askQty",
        "time",
        "lastUpdateId",
    }
    async with http.get(url, params={"symbol": "FOOUSDT"}) as resp:
        assert resp.status == 400 and (await resp.json())["code"] == -1121
    sim.rest_status = 429
    async with http.get(url) as resp:
        assert resp.status == 429
    assert sim.stats.rest_requests == 4


async def test_client_over_the_message_limit_is_closed(
    sim: BinanceUsdmSim, http: aiohttp.ClientSession
) -> None:
    """More than 10 messages a second closes the connection with 1008 (garbage: test_sim_shared)."""
    async with http.ws_connect(f"{sim.ws_url}/public/stream") as ws:
        await subscribe(ws, "btcusdt@bookTicker")
        for rid in range(11):
            await ws.send_str(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": rid}))
        async with asyncio.timeout(2.0):
            while (await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                pass
        assert ws.close_code == 1008
    assert sim.stats.rate_limited == 1
