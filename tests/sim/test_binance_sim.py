"""The Binance simulator speaks the venue's wire protocol and injects its faults on demand."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from sim_wire import binance_subscribe as subscribe
from sim_wire import next_json

from oracled.sim import BinanceSim

PRICES = {"BTCUSDT": 67_000.0, "ETHUSDT": 3_500.0}


@pytest.fixture
async def sim() -> AsyncIterator[BinanceSim]:
    venue = BinanceSim(PRICES, seed=3, rate_hz=50.0, volatility=0.0)
    async with venue:  # bound first: VenueSim.__aenter__ is typed to return the base class
        yield venue


async def test_subscribe_is_acked_and_frames_have_the_real_shape(
    sim: BinanceSim, http: aiohttp.ClientSession
) -> None:
    """SUBSCRIBE gets {"result":null,"id":N}; frames are combined bookTicker frames with strings."""
    async with http.ws_connect(f"{sim.ws_url}/stream") as ws:
        assert await subscribe(ws, "btcusdt@bookTicker", rid=9) == {"result": None, "id": 9}
        frame = await next_json(ws, pings=True)
    assert frame["stream"] == "btcusdt@bookTicker"
    data = frame["data"]
    assert set(data) == {"u", "s", "b", "B", "a", "A"}
    assert data["s"] == "BTCUSDT" and isinstance(data["u"], int)
    bid, ask = float(data["b"]), float(data["a"])
    assert 0 < bid < 67_000.0 < ask
    assert all(isinstance(data[k], str) and len(data[k].split(".")[1]) == 8 for k in "bBaA")


async def test_unknown_symbol_gets_an_error_frame_and_nothing_is_subscribed(
    sim: BinanceSim, http: aiohttp.ClientSession
) -> None:
    """A request naming an unknown stream is refused whole with Binance's error shape."""
    async with http.ws_connect(f"{sim.ws_url}/stream") as ws:
        reply = await subscribe(ws, "btcusdt@bookTicker", "foousdt@bookTicker", rid=4)
        assert reply == {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 4}
        await ws.send_str('{"method":"LIST_SUBSCRIPTIONS","id":5}')
        assert await next_json(ws, pings=True) == {"result": [], "id": 5}
        await ws.send_str("{not json")
        assert (await next_json(ws, pings=True))["error"]["code"] == 3


async def test_streams_in_the_url_are_subscribed_at_connect(
    sim: BinanceSim, http: aiohttp.ClientSession
) -> None:
    """`/stream?streams=a/b` subscribes without a message, like the real endpoint."""
    url = f"{sim.ws_url}/stream?streams=ethusdt@bookTicker"
    async with http.ws_connect(url) as ws:
        frame = await next_json(ws, pings=True)
    assert frame["data"]["s"] == "ETHUSDT"


async def test_rest_book_ticker(sim: BinanceSim, http: aiohttp.ClientSession) -> None:
    """REST answers all, some (`symbols`) or one (`symbol`) book; unknown symbols get -1121."""
    url = f"{sim.rest_url}/api/v3/ticker/bookTicker"
    async with http.get(url) as resp:
        assert [row["symbol"] for row in await resp.json()] == ["BTCUSDT", "ETHUSDT"]
    async with http.get(url, params={"symbols": '["ETHUSDT"]'}) as resp:
        rows = await resp.json()
    assert set(rows[0]) == {"symbol", "bidPrice", "bidQty", "askPrice", "askQty"}
    async with http.get(url, params={"symbol": "BTCUSDT"}) as resp:
        assert (await resp.json())["symbol"] == "BTCUSDT"
    async with http.get(url, params={"symbols": '["BTCUSDT","FOOUSDT"]'}) as resp:
        assert resp.status == 400
        assert await resp.json() == {"code": -1121, "msg": "Invalid symbol."}
    sim.rest_enabled = False
    async with http.get(url) as resp:
        assert resp.status == 503
    assert sim.stats.rest_requests == 5


async def test_spike_prints_a_wrong_price_for_a_while(sim: BinanceSim) -> None:
    """A spike multiplies this venue's book for its duration, then the book returns."""
    bid, _ = sim.book("BTCUSDT")
    sim.spike("BTCUSDT", 2.0, 0.1)
    spiked, _ = sim.book("BTCUSDT")
    assert spiked == pytest.approx(2 * bid)
    await asyncio.sleep(0.15)
    assert sim.book("BTCUSDT")[0] == pytest.approx(bid)


async def test_disconnect_drops_every_client(sim: BinanceSim, http: aiohttp.ClientSession) -> None:
    """disconnect() cuts each TCP connection; the client sees the socket close."""
    async with (
        http.ws_connect(f"{sim.ws_url}/stream") as one,
        http.ws_connect(f"{sim.ws_url}/stream") as two,
    ):
        await subscribe(one, "btcusdt@bookTicker")
        await subscribe(two, "ethusdt@bookTicker")
        assert sim.disconnect() == 2
        for ws in (one, two):
            async with asyncio.timeout(2.0):
                while (await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                    pass
            assert ws.closed
    assert sim.stats.connections == 2


async def test_refused_handshake_while_ws_disabled(
    sim: BinanceSim, http: aiohttp.ClientSession
) -> None:
    """With ws_enabled off the WebSocket handshake fails with 503 and is counted."""
    sim.ws_enabled = False
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(f"{sim.ws_url}/stream")
    assert info.value.status == 503
    assert sim.stats.refused == 1 and sim.stats.connections == 0


async def test_client_over_the_message_limit_is_closed(
    sim: BinanceSim, http: aiohttp.ClientSession
) -> None:
    """More than 5 messages in a second closes the connection with 1008, as Binance does."""
    async with http.ws_connect(f"{sim.ws_url}/stream") as ws:
        for rid in range(6):
            await ws.send_str(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": rid}))
        async with asyncio.timeout(2.0):
            while (await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                pass
        assert ws.close_code == 1008
    assert sim.stats.rate_limited == 1


async def test_client_that_never_pongs_is_dropped(http: aiohttp.ClientSession) -> None:
    """A client that ignores pings is closed once the pong timeout passes."""
    async with BinanceSim(PRICES, ping_interval_s=0.05, pong_timeout_s=0.12) as venue:
        async with http.ws_connect(f"{venue.ws_url}/stream", autoping=False) as ws:
            async with asyncio.timeout(2.0):
                while (await ws.receive()).type in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.TEXT):
                    pass
        assert venue.stats.pong_timeouts == 1
        assert venue.stats.pings_sent >= 2
