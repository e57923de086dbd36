"""The KuCoin simulator speaks the venue's token, WebSocket and REST protocol and its faults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from sim_wire import next_json

from oracled.sim.kucoin import KucoinSim

PRICES = {"BTC-USDT": 67_000.0, "ETH-USDT": 3_500.0}


@pytest.fixture
async def sim() -> AsyncIterator[KucoinSim]:
    venue = KucoinSim(PRICES, seed=3, rate_hz=50.0, ping_interval_s=0.2, ping_timeout_s=0.2)
    async with venue:
        yield venue


async def connect(sim: KucoinSim, http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
    async with http.post(f"{sim.rest_url}/api/v1/bullet-public") as resp:
        data = (await resp.json())["data"]
    endpoint = data["instanceServers"][0]["endpoint"]
    return await http.ws_connect(f"{endpoint}?token={data['token']}&connectId=abc123")


async def test_bullet_points_back_at_the_simulator(
    sim: KucoinSim, http: aiohttp.ClientSession
) -> None:
    """bullet-public returns a token and this simulator's endpoint with its ping settings."""
    async with http.post(f"{sim.rest_url}/api/v1/bullet-public") as resp:
        body = await resp.json()
    assert body["code"] == "200000"
    server = body["data"]["instanceServers"][0]
    assert server["endpoint"] == f"{sim.ws_url}/endpoint"
    assert (server["pingInterval"], server["pingTimeout"]) == (200, 200)
    assert body["data"]["token"] in sim.tokens and sim.bullets == 1


async def test_handshake_without_an_issued_token_is_refused(
    sim: KucoinSim, http: aiohttp.ClientSession
) -> None:
    """A token the venue never issued gets HTTP 401."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(f"{sim.ws_url}/endpoint?token=forged")
    assert info.value.status == 401


async def test_welcome_ack_and_ticker_frames(sim: KucoinSim, http: aiohttp.ClientSession) -> None:
    """Welcome carries the connectId; subscribe is acked with a string id; tickers follow."""
    ws = await connect(sim, http)
    async with ws:
        assert await next_json(ws) == {"id": "abc123", "type": "welcome"}
        await ws.send_str(
            '{"id":7,"type":"subscribe","topic":"/market/ticker:BTC-USDT","response":true}'
        )
        assert await next_json(ws) == {"id": "7", "type": "ack"}
        frame = await next_json(ws)
    assert list(frame) == ["data", "subject", "topic", "type"]
    assert frame["topic"] == "/market/ticker:BTC-USDT" and frame["subject"] == "trade.ticker"
    data = frame["data"]
    assert set(data) == {
        "sequence", "bestAsk", "size", "bestBidSize", "price", "time", "bestAskSize", "bestBid"
    }  # fmt: skip
    assert isinstance(data["time"], int) and isinstance(data["sequence"], str)
    assert 0 < float(data["bestBid"]) < float(data["bestAsk"])


async def test_unknown_symbol_refuses_the_whole_topic(
    sim: KucoinSim, http: aiohttp.ClientSession
) -> None:
    """A topic naming an unlisted symbol gets a 404 error and subscribes nothing; ping gets pong."""
    ws = await connect(sim, http)
    async with ws:
        await next_json(ws)
        await ws.send_str(
            '{"id":3,"type":"subscribe","topic":"/market/ticker:BTC-USDT,FOO-USDT","response":true}'
        )
        error = await next_json(ws)
        assert error["type"] == "error" and error["id"] == "3" and error["code"] == 404
        assert "FOO-USDT" in error["data"]
        await ws.send_str('{"id":"9","type":"ping"}')
        assert await next_json(ws) == {"id": "9", "type": "pong"}
    assert sim.pings_received == 1 and sim.stats.errors_sent == 1


async def test_client_that_stops_pinging_is_closed(
    sim: KucoinSim, http: aiohttp.ClientSession
) -> None:
    """No ping for pingInterval + pingTimeout (0.4 s here) closes the connection."""
    ws = await connect(sim, http)
    async with ws:
        async with asyncio.timeout(2.0):
            while (await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                pass
        assert ws.closed
    assert sim.stats.pong_timeouts == 1


async def test_rest_level1_and_all_tickers(sim: KucoinSim, http: aiohttp.ClientSession) -> None:
    """level1 answers one symbol (400 for an unknown one); allTickers lists every symbol."""
    async with http.get(
        f"{sim.rest_url}/api/v1/market/orderbook/level1", params={"symbol": "ETH-USDT"}
    ) as resp:
        body = await resp.json()
    assert body["code"] == "200000" and set(body["data"]) >= {"sequence", "bestBid", "time"}
    async with http.get(
        f"{sim.rest_url}/api/v1/market/orderbook/level1", params={"symbol": "FOO-USDT"}
    ) as resp:
        assert resp.status == 400 and (await resp.json())["code"] == "900001"
    async with http.get(f"{sim.rest_url}/api/v1/market/allTickers") as resp:
        rows = (await resp.json())["data"]["ticker"]
    assert [r["symbol"] for r in rows] == ["BTC-USDT", "ETH-USDT"]
    sim.rest_status = 503
    async with http.post(f"{sim.rest_url}/api/v1/bullet-public") as resp:
        assert resp.status == 503
    assert sim.stats.rest_requests == 3 and sim.bullets == 1
