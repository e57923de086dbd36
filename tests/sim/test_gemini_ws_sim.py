"""The simulator of Gemini's current WebSocket API speaks its request protocol and bookTicker
frames, and answers REST pubticker."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sim_wire import WS, next_json

from oracled.sim.gemini_ws import GeminiWsSim

PRICES = {"BTCUSD": 67_000.0, "ethusd": 3_500.0}  # either case: the venue's names are lower case


@pytest.fixture
async def sim() -> AsyncIterator[GeminiWsSim]:
    venue = GeminiWsSim(PRICES, seed=3, rate_hz=50.0, volatility=0.0)
    async with venue:  # bound first: VenueSim.__aenter__ is typed to return the base class
        yield venue


async def ask(ws: WS, request: dict[str, Any]) -> Any:
    await ws.send_str(json.dumps(request))
    return await next_json(ws)


async def test_subscribe_is_acked_and_frames_have_the_documented_shape(
    sim: GeminiWsSim, http: aiohttp.ClientSession
) -> None:
    """SUBSCRIBE answers status 200 under the request's id; frames are bare bookTickers with
    quoted decimals and an event time in ns that rises from frame to frame."""
    async with http.ws_connect(sim.ws_url) as ws:
        request = {"id": 9, "method": "SUBSCRIBE", "params": ["btcusd@bookTicker"]}
        assert await ask(ws, request) == {"id": 9, "status": 200, "result": None}
        frames = [await next_json(ws) for _ in range(3)]
    assert all(set(f) == {"u", "E", "s", "b", "B", "a", "A"} and f["s"] == "btcusd" for f in frames)
    assert frames[0]["E"] < frames[1]["E"] < frames[2]["E"]
    assert frames[0]["E"] > 1_700_000_000 * 10**9  # Unix ns
    assert 0 < float(frames[0]["b"]) < 67_000.0 < float(frames[0]["a"])


async def test_an_unknown_stream_refuses_the_request_whole(
    sim: GeminiWsSim, http: aiohttp.ClientSession
) -> None:
    """A request naming a stream the venue does not list is refused with the documented error
    envelope and nothing in it is subscribed; other methods answer as documented."""
    async with http.ws_connect(sim.ws_url) as ws:
        params = ["btcusd@bookTicker", "foousd@bookTicker"]
        reply = await ask(ws, {"id": 4, "method": "SUBSCRIBE", "params": params})
        assert reply == {
            "id": 4,
            "status": 400,
            "error": {"code": -1100, "msg": "Invalid stream: foousd@bookTicker"},
        }
        listed = await ask(ws, {"id": "5", "method": "LIST_SUBSCRIPTIONS"})
        assert listed == {"id": "5", "status": 200, "result": []}
        assert (await ask(ws, {"id": "ping", "method": "ping"}))["status"] == 200
        await ws.send_str("{not json")
        assert (await next_json(ws))["error"]["code"] == -1000
    assert sim.pings_received == 1 and sim.stats.errors_sent == 2


async def test_rest_pubticker(sim: GeminiWsSim, http: aiohttp.ClientSession) -> None:
    """pubticker answers a listed symbol's bid and ask in either case; an unknown one is 400."""
    async with http.get(f"{sim.rest_url}/v1/pubticker/ETHUSD") as resp:
        ticker = await resp.json()
    assert 0 < float(ticker["bid"]) < 3_500.0 < float(ticker["ask"])
    async with http.get(f"{sim.rest_url}/v1/pubticker/foousd") as resp:
        assert resp.status == 400 and (await resp.json())["reason"] == "InvalidSymbol"
