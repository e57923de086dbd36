"""The Kraken simulator speaks the v2 WebSocket and REST Ticker protocols and injects faults."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sim_wire import next_json

from oracled.sim.kraken import KrakenSim, rest_names

PRICES = {"BTC/USD": 67_000.0, "ETH/USD": 3_500.0, "SOL/USDT": 150.0}


@pytest.fixture
async def sim() -> AsyncIterator[KrakenSim]:
    venue = KrakenSim(PRICES, seed=3, rate_hz=50.0, volatility=0.0, heartbeat_s=0.05)
    async with venue:
        yield venue


async def until(ws: aiohttp.ClientWebSocketResponse, **match: Any) -> Any:
    """The next message that has every key and value of `match`, skipping others; none within
    two seconds fails (heartbeats alone would otherwise keep the loop going for ever)."""
    async with asyncio.timeout(2.0):
        while True:
            frame = await next_json(ws)
            if all(frame.get(key) == value for key, value in match.items()):
                return frame


async def test_status_then_per_symbol_acks_then_snapshots(
    sim: KrakenSim, http: aiohttp.ClientSession
) -> None:
    """Connect gets a status; subscribe gets one ack per symbol, then a snapshot per symbol."""
    async with http.ws_connect(f"{sim.ws_url}/v2") as ws:
        status = await next_json(ws)
        assert status["channel"] == "status" and status["data"][0]["system"] == "online"
        request = {"channel": "ticker", "symbol": ["BTC/USD", "ETH/USD"], "event_trigger": "bbo"}
        await ws.send_str(json.dumps({"method": "subscribe", "params": request, "req_id": 7}))
        ack_btc, snapshot, ack_eth, _ = [await next_json(ws) for _ in range(4)]
    for ack, symbol in ((ack_btc, "BTC/USD"), (ack_eth, "ETH/USD")):
        assert ack["method"] == "subscribe" and ack["success"] is True and ack["req_id"] == 7
        assert ack["result"] == {"channel": "ticker", "symbol": symbol, "snapshot": True}
        assert {"time_in", "time_out"} <= set(ack)
    assert snapshot["type"] == "snapshot"
    assert snapshot["channel"] == "ticker"
    (row,) = snapshot["data"]
    assert {"symbol", "bid", "bid_qty", "ask", "ask_qty", "last", "timestamp"} <= set(row)
    assert isinstance(row["bid"], float) and row["bid"] < row["ask"]
    assert row["timestamp"].endswith("Z") and len(row["timestamp"]) == 27


async def test_updates_follow_and_unknown_symbols_are_refused_alone(
    sim: KrakenSim, http: aiohttp.ClientSession
) -> None:
    """A bad symbol gets its own error with the request id; the good one still streams."""
    async with http.ws_connect(f"{sim.ws_url}/v2") as ws:
        params = {"channel": "ticker", "symbol": ["FOO/USD", "ETH/USD"]}
        await ws.send_str(json.dumps({"method": "subscribe", "params": params, "req_id": 2}))
        error = await until(ws, success=False)
        update = await until(ws, channel="ticker", type="update")
    assert error["error"] == "Currency pair not supported FOO/USD"
    assert error["symbol"] == "FOO/USD" and error["req_id"] == 2
    assert update["data"][0]["symbol"] == "ETH/USD"
    assert sim.stats.errors_sent == 1


async def test_ping_pong_and_malformed_requests(
    sim: KrakenSim, http: aiohttp.ClientSession
) -> None:
    """ping gets pong with its req_id; unreadable or unknown requests get success:false."""
    async with http.ws_connect(f"{sim.ws_url}/v2") as ws:
        await next_json(ws)  # status
        await ws.send_str('{"method":"ping","req_id":101}')
        pong = await next_json(ws)
        await ws.send_str("{not json")
        bad = await next_json(ws)
        await ws.send_str('{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD"]}}')
        channel = await next_json(ws)
    assert pong["method"] == "pong" and pong["req_id"] == 101
    assert bad["success"] is False and bad["error"] == "Malformed request"
    assert channel["success"] is False and "book" in channel["error"]


async def test_heartbeats_only_once_subscribed(sim: KrakenSim, http: aiohttp.ClientSession) -> None:
    """Like Kraken, heartbeats start with the first subscription."""
    async with http.ws_connect(f"{sim.ws_url}/v2") as ws:
        await next_json(ws)  # status
        with pytest.raises(TimeoutError):
            await next_json(ws, within_s=0.2)
        params = {"channel": "ticker", "symbol": ["SOL/USDT"]}
        await ws.send_str(json.dumps({"method": "subscribe", "params": params}))
        assert await until(ws, channel="heartbeat") == {"channel": "heartbeat"}


def test_rest_names_follow_krakens_legacy_keys() -> None:
    """Classic assets get X/Z-prefixed keys; BTC and DOGE are asked for as XBT and XDG."""
    assert rest_names("BTC/USD") == ("XBTUSD", "XXBTZUSD")
    assert rest_names("ETH/EUR") == ("ETHEUR", "XETHZEUR")
    assert rest_names("BTC/USDT") == ("XBTUSDT", "XBTUSDT")
    assert rest_names("DOGE/USD") == ("XDGUSD", "XDGUSD")
    assert rest_names("SOL/USD") == ("SOLUSD", "SOLUSD")
    assert rest_names("USDT/USD") == ("USDTUSD", "USDTZUSD")  # Z on the quote side only
    assert rest_names("EUR/USD") == ("EURUSD", "ZEURZUSD")  # fiat against fiat: Z on both


async def test_rest_ticker(sim: KrakenSim, http: aiohttp.ClientSession) -> None:
    """REST answers by legacy key; an unknown pair spoils the request with HTTP 200 and error."""
    url = f"{sim.rest_url}/0/public/Ticker"
    async with http.get(url, params={"pair": "XBTUSD,SOLUSDT"}) as resp:
        body = await resp.json()
    assert body["error"] == [] and set(body["result"]) == {"XXBTZUSD", "SOLUSDT"}
    row = body["result"]["XXBTZUSD"]
    assert set(row) == {"a", "b", "c", "v", "p", "t", "l", "h", "o"}
    assert float(row["b"][0]) < 67_000.0 < float(row["a"][0])
    async with http.get(url, params={"pair": "XBTUSD,FOOUSD"}) as resp:
        assert resp.status == 200
        assert await resp.json() == {"error": ["EQuery:Unknown asset pair"]}
    async with http.get(url) as resp:
        assert set((await resp.json())["result"]) == {"XXBTZUSD", "XETHZUSD", "SOLUSDT"}
    sim.rest_status = 429  # a rate limit: said as Kraken says its errors, inside HTTP 200
    async with http.get(url) as resp:
        assert resp.status == 200 and "Retry-After" not in resp.headers
        assert await resp.json() == {"error": ["EAPI:Rate limit exceeded"], "result": {}}
    assert sim.stats.rest_requests == 4


async def test_rest_rate_limit_wording_is_chosen_and_reset(
    sim: KrakenSim, http: aiohttp.ClientSession
) -> None:
    """`rate_limit_error` words the 429's error list; `reset` puts back the documented
    ``EAPI:Rate limit exceeded``; other statuses stay a generic error under their status."""
    url = f"{sim.rest_url}/0/public/Ticker"
    sim.rest_status, sim.rate_limit_error = 429, "EGeneral:Too many requests"
    async with http.get(url) as resp:
        assert resp.status == 200
        assert await resp.json() == {"error": ["EGeneral:Too many requests"], "result": {}}
    sim.rest_status = 502
    async with http.get(url) as resp:
        assert resp.status == 502
    sim.reset()
    sim.rest_status = 429
    async with http.get(url) as resp:
        assert (await resp.json())["error"] == ["EAPI:Rate limit exceeded"]


async def test_a_request_past_the_rest_limit_is_refused_as_kraken_words_a_rate_limit(
    http: aiohttp.ClientSession,
) -> None:
    """With `rest_limit` (requests in a window), the request past it answers Kraken's rate-limit
    error list under HTTP 200, counted in `rest_limited`; the ones within it answer prices."""
    async with KrakenSim(PRICES, rate_hz=1.0, rest_limit=(2, 60.0)) as venue:
        url = f"{venue.rest_url}/0/public/Ticker"
        bodies = []
        for _ in range(3):
            async with http.get(url, params={"pair": "XBTUSD"}) as resp:
                assert resp.status == 200
                bodies.append(await resp.json())
    assert [body["error"] for body in bodies] == [[], [], ["EAPI:Rate limit exceeded"]]
    assert venue.rest_limited == 1 and venue.stats.rest_requests == 3
