"""The Bybit simulator speaks the v5 public protocol on both paths and answers REST tickers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sim_wire import next_json

from oracled.sim.bybit import BybitSim

PRICES = {"BTCUSDT": 67_000.0, "ETHUSDT": 3_500.0}


@pytest.fixture
async def sim() -> AsyncIterator[BybitSim]:
    venue = BybitSim(PRICES, seed=4, rate_hz=50.0)
    async with venue:
        yield venue


async def send(ws: aiohttp.ClientWebSocketResponse, op: str, *args: str, rid: str = "1") -> Any:
    await ws.send_str(json.dumps({"op": op, "args": list(args), "req_id": rid}))
    return await next_json(ws)


async def answer(ws: aiohttp.ClientWebSocketResponse, op: str, *args: str, rid: str = "1") -> Any:
    """`send`, on a socket already subscribed: data frames (they carry a topic) passed over."""
    await ws.send_str(json.dumps({"op": op, "args": list(args), "req_id": rid}))
    while "topic" in (frame := await next_json(ws)):
        pass
    return frame


async def test_spot_level1_is_pushed_as_snapshots_only(
    sim: BybitSim, http: aiohttp.ClientSession
) -> None:
    """Spot acks with ret_msg "subscribe", then pushes level 1 as snapshots only, each the whole
    best level of both sides with a rising u and ts: Bybit's orderbook page says level 1 data
    "has snapshot message only" (the simulator sent deltas with size-0 removals before)."""
    async with http.ws_connect(f"{sim.ws_url}/v5/public/spot") as ws:
        ack = await send(ws, "subscribe", "orderbook.1.BTCUSDT", rid="5")
        assert ack == {"success": True, "ret_msg": "subscribe", "conn_id": ack["conn_id"],
                       "req_id": "5", "op": "subscribe"}  # fmt: skip
        frames = [await next_json(ws) for _ in range(6)]
    assert all(f["type"] == "snapshot" and f["topic"] == "orderbook.1.BTCUSDT" for f in frames)
    us, stamps = [f["data"]["u"] for f in frames], [f["ts"] for f in frames]
    assert us == sorted(set(us)) and stamps == sorted(set(stamps))
    for frame in frames:
        [(bid, bid_size)], [(ask, ask_size)] = frame["data"]["b"], frame["data"]["a"]  # one level
        assert all(isinstance(x, str) for x in (bid, bid_size, ask, ask_size))
        assert 0 < float(bid) < float(ask) and float(bid_size) > 0 and float(ask_size) > 0


async def test_linear_ticker_snapshot_then_partial_deltas(
    sim: BybitSim, http: aiohttp.ClientSession
) -> None:
    """Linear acks with an empty ret_msg; the snapshot is full and some deltas carry no price."""
    async with http.ws_connect(f"{sim.ws_url}/v5/public/linear") as ws:
        assert (await send(ws, "subscribe", "tickers.ETHUSDT"))["ret_msg"] == ""
        snap = await next_json(ws)
        deltas = [await next_json(ws) for _ in range(8)]
    assert snap["type"] == "snapshot" and {"bid1Price", "ask1Price", "markPrice"} <= set(
        snap["data"]
    )
    assert all(d["type"] == "delta" and d["data"]["symbol"] == "ETHUSDT" for d in deltas)
    assert any("bid1Price" not in d["data"] for d in deltas)
    assert any("bid1Price" in d["data"] for d in deltas)


async def test_pongs_refusals_and_limits(sim: BybitSim, http: aiohttp.ClientSession) -> None:
    """Pings get JSON pongs; unknown, misrouted, repeated, over-long subscriptions are refused."""
    async with http.ws_connect(f"{sim.ws_url}/v5/public/spot") as ws:
        pong = await send(ws, "ping", rid="p")
        assert (pong["success"], pong["ret_msg"], pong["op"]) == (True, "pong", "ping")
        refused = await send(ws, "subscribe", "orderbook.1.BTCUSDT", "orderbook.1.FOOUSDT", rid="2")
        assert refused["success"] is False and refused["req_id"] == "2"
        assert refused["ret_msg"] == "Invalid symbol :[orderbook.1.FOOUSDT]"
        assert (await send(ws, "subscribe", "tickers.BTCUSDT"))["success"] is False  # linear topic
        many = [f"orderbook.1.{s}" for s in ["BTCUSDT", "ETHUSDT"] * 6]
        assert (await send(ws, "subscribe", *many))["ret_msg"] == "error:args size >10"
        assert (await send(ws, "subscribe", "orderbook.1.BTCUSDT"))["success"] is True
        await next_json(ws)  # its snapshot
        again = await answer(ws, "subscribe", "orderbook.1.BTCUSDT")
        assert "already subscribed" in again["ret_msg"]
        sim.error_req_id = False
        refused = await answer(ws, "subscribe", "orderbook.1.FOOUSDT", rid="9")
        assert refused["success"] is False and "req_id" not in refused
    assert sim.pings_received == 1 and sim.stats.errors_sent == 5


async def test_client_that_stops_pinging_is_cut(http: aiohttp.ClientSession) -> None:
    """With ping_timeout_s set, a client that never pings is closed and counted."""
    venue = BybitSim(PRICES, ping_timeout_s=0.3)
    async with venue, http.ws_connect(f"{venue.ws_url}/v5/public/linear") as ws:
        async with asyncio.timeout(3.0):
            while (await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                pass
        assert ws.closed and venue.stats.pong_timeouts == 1


async def test_rest_tickers_per_category(sim: BybitSim, http: aiohttp.ClientSession) -> None:
    """REST lists a category's tickers with bid1/ask1 and time; errors come as HTTP 200 codes."""
    url = f"{sim.rest_url}/v5/market/tickers"
    async with http.get(url, params={"category": "spot"}) as resp:
        body = await resp.json()
    assert body["retCode"] == 0 and body["result"]["category"] == "spot"
    assert [r["symbol"] for r in body["result"]["list"]] == ["BTCUSDT", "ETHUSDT"]
    row = body["result"]["list"][0]
    assert float(row["bid1Price"]) < float(row["ask1Price"]) and body["time"] > 1e12
    async with http.get(url, params={"category": "linear", "symbol": "ETHUSDT"}) as resp:
        rows = (await resp.json())["result"]["list"]
    assert [r["symbol"] for r in rows] == ["ETHUSDT"] and "markPrice" in rows[0]
    async with http.get(url, params={"category": "linear", "symbol": "FOOUSDT"}) as resp:
        assert resp.status == 200 and (await resp.json())["retCode"] == 10001
    async with http.get(url, params={"category": "options"}) as resp:
        assert (await resp.json())["retMsg"] == "Illegal category"
    sim.rest_status = 503
    async with http.get(url, params={"category": "spot"}) as resp:
        assert resp.status == 503


async def test_rest_rate_limit_is_a_code_inside_http_200_with_the_reset_ahead(
    sim: BybitSim, http: aiohttp.ClientSession
) -> None:
    """A 429 is said as the v5 rate-limit page says it: retCode 10006 "Too many visits!" under
    HTTP 200, ``X-Bapi-Limit-Status`` 0 and ``X-Bapi-Limit-Reset-Timestamp`` the epoch ms
    `rate_limit_reset_ms` ahead (the current time on other answers); `rate_limit_code` sends
    10018 instead, and `reset` puts 10006 back."""
    url = f"{sim.rest_url}/v5/market/tickers"
    async with http.get(url, params={"category": "spot"}) as resp:
        before = int(resp.headers["X-Bapi-Limit-Reset-Timestamp"])
        assert int(resp.headers["X-Bapi-Limit-Status"]) > 0
        assert abs(before - (await resp.json())["time"]) <= 1
    sim.rest_status, sim.rate_limit_reset_ms = 429, 30_000
    async with http.get(url, params={"category": "spot"}) as resp:
        body = await resp.json()
        assert resp.status == 200 and "Retry-After" not in resp.headers
        assert (body["retCode"], body["retMsg"]) == (10006, "Too many visits!")
        assert resp.headers["X-Bapi-Limit-Status"] == "0"
        reset = int(resp.headers["X-Bapi-Limit-Reset-Timestamp"])
        assert reset - body["time"] == 30_000
    sim.rate_limit_code = 10018
    async with http.get(url, params={"category": "linear"}) as resp:
        assert resp.status == 200 and (await resp.json())["retCode"] == 10018
    sim.reset()
    sim.rest_status = 429
    async with http.get(url, params={"category": "linear"}) as resp:
        assert (await resp.json())["retCode"] == 10006


async def test_rest_ip_ban_is_http_403_access_too_frequent(
    sim: BybitSim, http: aiohttp.ClientSession
) -> None:
    """`rest_status` 403 answers as the v5 rate-limit page words an IP ban: HTTP 403, "access
    too frequent", on both categories; `reset` lifts it."""
    url = f"{sim.rest_url}/v5/market/tickers"
    sim.rest_status = 403
    for category in ("spot", "linear"):
        async with http.get(url, params={"category": category}) as resp:
            assert resp.status == 403 and await resp.text() == "access too frequent"
    sim.reset()
    async with http.get(url, params={"category": "spot"}) as resp:
        assert resp.status == 200 and (await resp.json())["retCode"] == 0


async def test_categories_have_their_own_price_paths(sim: BybitSim) -> None:
    """Path keys are "<category>:<SYMBOL>": a spike on linear leaves spot alone."""
    assert set(sim.paths) == {"spot:BTCUSDT", "spot:ETHUSDT", "linear:BTCUSDT", "linear:ETHUSDT"}
    spot_bid, _ = sim.book("spot:BTCUSDT")
    sim.spike("linear:BTCUSDT", 2.0, None)
    assert sim.book("spot:BTCUSDT")[0] == spot_bid
    assert sim.book("linear:BTCUSDT")[0] > 1.9 * spot_bid


async def test_every_linear_symbol_gets_price_deltas() -> None:
    """Every symbol's deltas carry prices three times in four, however many symbols there are.

    With one count for all symbols, four symbols in turn would give the price-less deltas always
    to the same one, whose price would then never move.
    """
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]
    venue = BybitSim(dict.fromkeys(symbols, 100.0), seed=3, categories=("linear",))
    priced: dict[str, int] = dict.fromkeys(symbols, 0)
    for _ in range(8):
        for symbol in symbols:
            key = f"linear:{symbol}"
            frame = json.loads(venue.data_frame(key, venue.paths[key], 0.0))
            priced[symbol] += "bid1Price" in frame["data"]
    assert priced == dict.fromkeys(symbols, 6)


async def test_a_frozen_spot_book_is_pushed_again_with_its_update_id_and_engine_time(
    http: aiohttp.ClientSession,
) -> None:
    """Spot frames carry `cts`, the book's matching-engine time, a little before `ts`; a book
    that does not change (here: frozen) is pushed again every `repush_s` as a snapshot with the
    same `u`, prices and `cts` and a later `ts`, as Bybit does every 3 s; linear sends nothing."""
    venue = BybitSim(PRICES, seed=4, rate_hz=50.0, repush_s=0.1)
    async with venue, http.ws_connect(f"{venue.ws_url}/v5/public/spot") as ws:
        await send(ws, "subscribe", "orderbook.1.BTCUSDT")
        frames = [await next_json(ws) for _ in range(3)]
        assert all(f["cts"] < f["ts"] for f in frames)
        venue.freeze(None)
        # Every level-1 frame is a snapshot: the first push again is the first frame with the
        # `u` of the one before it (frames sent before the freeze may still be in flight).
        prev = await next_json(ws)
        while (last := await next_json(ws))["data"]["u"] != prev["data"]["u"]:
            prev = last
        again = [await next_json(ws) for _ in range(2)]
    assert [f["type"] for f in again] == ["snapshot", "snapshot"]
    assert {f["data"]["u"] for f in (last, *again)} == {last["data"]["u"]}
    assert {f["cts"] for f in (last, *again)} == {last["cts"]}
    assert {json.dumps(f["data"]) for f in again} == {json.dumps(last["data"])}
    assert last["ts"] < again[0]["ts"] < again[1]["ts"]
    assert venue.repushed >= 3
