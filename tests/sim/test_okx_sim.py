"""The OKX simulator speaks the venue's v5 public protocol and injects its faults on demand."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from oracled.sim.okx import OkxSim

PRICES = {"BTC-USDT": 67_000.0, "ETH-USDT": 3_500.0, "BTC-USDT-SWAP": 67_020.0}
TICKER_KEYS = {
    "instType", "instId", "last", "lastSz", "askPx", "askSz", "bidPx", "bidSz", "open24h",
    "high24h", "low24h", "sodUtc0", "sodUtc8", "volCcy24h", "vol24h", "ts",
}  # fmt: skip


@pytest.fixture
async def sim() -> AsyncIterator[OkxSim]:
    venue = OkxSim(PRICES, seed=3, rate_hz=50.0, volatility=0.0)
    async with venue:
        yield venue


async def next_text(ws: aiohttp.ClientWebSocketResponse, within_s: float = 2.0) -> Any:
    async with asyncio.timeout(within_s):
        msg = await ws.receive()
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    return msg.data if msg.data == "pong" else json.loads(msg.data)


def tickers(*inst: str, rid: str | None = None) -> str:
    req: dict[str, Any] = {
        "op": "subscribe",
        "args": [{"channel": "tickers", "instId": i} for i in inst],
    }
    if rid is not None:
        req["id"] = rid
    return json.dumps(req)


async def test_each_arg_is_acked_with_the_echoed_id_then_tickers_flow(
    sim: OkxSim, http: aiohttp.ClientSession
) -> None:
    """Subscribe gets one ack per arg carrying the id and connId; pushes have the recorded shape."""
    async with http.ws_connect(f"{sim.ws_url}/ws/v5/public") as ws:
        await ws.send_str(tickers("BTC-USDT", "BTC-USDT-SWAP", rid="12"))
        first, second = await next_text(ws), await next_text(ws)
        assert first["id"] == "12" and first["event"] == "subscribe"
        assert first["arg"] == {"channel": "tickers", "instId": "BTC-USDT"}
        assert second["arg"]["instId"] == "BTC-USDT-SWAP"
        assert len(first["connId"]) == 8
        pushes = [await next_text(ws) for _ in range(4)]
    for push in pushes:
        row = push["data"][0]
        assert set(row) == TICKER_KEYS
        assert push["arg"] == {"channel": "tickers", "instId": row["instId"]}
        assert row["instType"] == ("SWAP" if row["instId"].endswith("-SWAP") else "SPOT")
        assert all(isinstance(v, str) for v in row.values())
        assert 0 < float(row["bidPx"]) < float(row["askPx"])


async def test_a_subscription_is_answered_after_its_acks_with_each_instruments_ticker(
    http: aiohttp.ClientSession,
) -> None:
    """As the venue does (the 2022 recording), each newly subscribed instrument gets its current
    ticker right after the request's acks, in the push's shape, even on a market that never
    moved: stamped with the book's last change (here the venue's opening, before the request),
    not when sent. Then nothing until the book changes; the same arg asked again on the
    connection is acked with no second ticker."""
    async with (
        OkxSim(PRICES, rate_hz=0.01) as idle,  # no tick for 100 s: a market that never moves
        http.ws_connect(f"{idle.ws_url}/ws/v5/public") as ws,
    ):
        await asyncio.sleep(0.05)
        asked_ms = time.time() * 1000
        await ws.send_str(tickers("BTC-USDT", "BTC-USDT-SWAP", rid="4"))
        frames = [await next_text(ws) for _ in range(4)]
        await ws.send_str(tickers("BTC-USDT", rid="5"))
        again = await next_text(ws)
        await ws.send_str("ping")
        assert await next_text(ws) == "pong"  # nothing between the ack and the pong
    assert [f.get("event") for f in frames] == ["subscribe", "subscribe", None, None]
    assert again["event"] == "subscribe" and again["id"] == "5"
    expected = [("BTC-USDT", 67_000), ("BTC-USDT-SWAP", 67_020)]
    for push, (inst, price) in zip(frames[2:], expected, strict=True):
        assert push["arg"] == {"channel": "tickers", "instId": inst}
        (row,) = push["data"]
        assert set(row) == TICKER_KEYS and row["instId"] == inst
        assert float(row["bidPx"]) < price < float(row["askPx"])
        assert int(row["ts"]) < asked_ms
    assert idle.stats.frames_sent == 2


async def test_a_new_subscribers_ticker_is_the_last_one_pushed_time_included(
    sim: OkxSim, http: aiohttp.ClientSession
) -> None:
    """A book that stopped changing: a client subscribing later gets, byte for byte, the ticker
    the first client was last pushed, its ts that push's, however long ago."""
    async with http.ws_connect(f"{sim.ws_url}/ws/v5/public") as first:
        await first.send_str(tickers("ETH-USDT"))
        assert (await next_text(first))["event"] == "subscribe"
        for _ in range(3):
            last = (await first.receive(timeout=2.0)).data  # the snapshot, then pushes
        sim.freeze(None)
        with contextlib.suppress(TimeoutError):
            while True:
                last = (await first.receive(timeout=0.2)).data  # every push sent before it
        assert json.loads(last)["arg"]["instId"] == "ETH-USDT"
        await asyncio.sleep(0.1)  # the held ticker ages
        async with http.ws_connect(f"{sim.ws_url}/ws/v5/public") as second:
            await second.send_str(tickers("ETH-USDT"))
            assert (await next_text(second))["event"] == "subscribe"
            snapshot = await second.receive(timeout=2.0)
    assert snapshot.data == last


async def test_unknown_instrument_gets_60018_and_the_rest_is_subscribed(
    sim: OkxSim, http: aiohttp.ClientSession
) -> None:
    """An unknown instId is refused alone (other args still acked); junk gets 60012."""
    async with http.ws_connect(f"{sim.ws_url}/ws/v5/public") as ws:
        await ws.send_str(tickers("FOO-USDT", "ETH-USDT"))
        error, ack = await next_text(ws), await next_text(ws)
        assert error["event"] == "error" and error["code"] == "60018"
        assert "instId:FOO-USDT doesn't exist" in error["msg"]
        assert "id" not in error  # no id sent, none echoed
        assert ack["event"] == "subscribe" and ack["arg"]["instId"] == "ETH-USDT"
        await ws.send_str("{not json")
        junk = await next_text(ws)
        while "event" not in junk:  # skip pushes for the instrument already subscribed
            junk = await next_text(ws)
        assert junk["code"] == "60012"
    assert sim.stats.errors_sent == 2


async def test_text_ping_is_answered_with_pong(sim: OkxSim, http: aiohttp.ClientSession) -> None:
    """The venue answers the text ``ping`` with the text ``pong`` and counts it."""
    async with http.ws_connect(f"{sim.ws_url}/ws/v5/public") as ws:
        await ws.send_str("ping")
        assert await next_text(ws) == "pong"
    assert sim.pings_received == 1


async def test_notice_reaches_every_client(sim: OkxSim, http: aiohttp.ClientSession) -> None:
    """notice() sends the 64008 service-upgrade event."""
    async with http.ws_connect(f"{sim.ws_url}/ws/v5/public") as ws:
        await asyncio.sleep(0.05)
        sim.notice()
        frame = await next_text(ws)
    assert frame["event"] == "notice" and frame["code"] == "64008"


async def test_rest_tickers_by_type_and_single_ticker(
    sim: OkxSim, http: aiohttp.ClientSession
) -> None:
    """Tickers by instType list that type only; a single ticker; an unknown instrument is
    code 51001 under HTTP 200 and an unknown type 51000 under 400, as the docs' error table
    has them; `rest_status` 429 is code 50011."""
    url = f"{sim.rest_url}/api/v5/market"
    async with http.get(f"{url}/tickers", params={"instType": "SPOT"}) as resp:
        body = await resp.json()
    assert body["code"] == "0" and [r["instId"] for r in body["data"]] == ["BTC-USDT", "ETH-USDT"]
    async with http.get(f"{url}/tickers", params={"instType": "SWAP"}) as resp:
        assert [r["instId"] for r in (await resp.json())["data"]] == ["BTC-USDT-SWAP"]
    async with http.get(f"{url}/ticker", params={"instId": "ETH-USDT"}) as resp:
        row = (await resp.json())["data"][0]
    assert set(row) == TICKER_KEYS
    async with http.get(f"{url}/ticker", params={"instId": "FOO-USDT"}) as resp:
        assert resp.status == 200 and (await resp.json())["code"] == "51001"
    async with http.get(f"{url}/tickers", params={"instType": "NOPE"}) as resp:
        assert resp.status == 400 and (await resp.json())["code"] == "51000"
    sim.rest_status = 429
    async with http.get(f"{url}/tickers", params={"instType": "SPOT"}) as resp:
        assert resp.status == 429 and (await resp.json())["code"] == "50011"
    assert sim.stats.rest_requests == 6


async def test_a_delisted_instrument_is_left_out_and_refused_until_listed_again(
    sim: OkxSim, http: aiohttp.ClientSession
) -> None:
    """`delist`: the tickers of its type leave the instrument out, its own ticker is 51001 and a
    subscription to it 60018, as for one never listed; `relist` and `reset` list it again."""
    url = f"{sim.rest_url}/api/v5/market"

    async def spot() -> list[str]:
        async with http.get(f"{url}/tickers", params={"instType": "SPOT"}) as resp:
            return [r["instId"] for r in (await resp.json())["data"]]

    sim.delist("ETH-USDT")
    assert await spot() == ["BTC-USDT"]
    async with http.get(f"{url}/ticker", params={"instId": "ETH-USDT"}) as resp:
        assert (await resp.json())["code"] == "51001"
    async with http.ws_connect(f"{sim.ws_url}/ws/v5/public") as ws:
        await ws.send_str(tickers("ETH-USDT"))
        assert (await next_text(ws))["code"] == "60018"
    sim.relist("ETH-USDT")
    assert sorted(await spot()) == ["BTC-USDT", "ETH-USDT"]
    sim.delist("ETH-USDT")
    sim.reset()
    assert sorted(await spot()) == ["BTC-USDT", "ETH-USDT"]


@pytest.mark.parametrize(
    ("status", "code", "msg"),
    [
        (429, "50011", "Rate limit reached. Please refer to API documentation and throttle "
         "requests accordingly."),
        (503, "50001", "Service temporarily unavailable. Try again later"),
        (500, "50026", "System error. Try again later"),
    ],
)  # fmt: skip
async def test_rest_failures_carry_the_documented_code_under_their_status_or_the_one_set(
    sim: OkxSim, http: aiohttp.ClientSession, status: int, code: str, msg: str
) -> None:
    """A failed call answers OKX's body with the code and message of the docs' error table,
    under the status the table gives it (no Retry-After: the docs name none); `code_status`
    sends every coded answer under another status (here 200), and `reset` puts it back."""
    url = f"{sim.rest_url}/api/v5/market"
    sim.rest_status = status
    for path, query in (("tickers", {"instType": "SPOT"}), ("ticker", {"instId": "BTC-USDT"})):
        async with http.get(f"{url}/{path}", params=query) as resp:
            assert resp.status == status and "Retry-After" not in resp.headers
            assert await resp.json() == {"code": code, "msg": msg, "data": []}
    sim.code_status = 200
    async with http.get(f"{url}/ticker", params={"instId": "BTC-USDT"}) as resp:
        assert resp.status == 200 and (await resp.json())["code"] == code
    sim.rest_status = None
    async with http.get(f"{url}/ticker", params={"instId": "FOO-USDT"}) as resp:
        assert resp.status == 200 and (await resp.json())["code"] == "51001"
    async with http.get(f"{url}/tickers", params={"instType": "NOPE"}) as resp:
        assert resp.status == 200 and (await resp.json())["code"] == "51000"
    sim.reset()
    async with http.get(f"{url}/tickers", params={"instType": "NOPE"}) as resp:
        assert resp.status == 400 and (await resp.json())["code"] == "51000"


async def test_event_times_strictly_increase_per_instrument(sim: OkxSim) -> None:
    """Even frames made at one instant (a burst) carry distinct, increasing ts."""
    path = sim.paths["BTC-USDT"]
    frames = [json.loads(sim.data_frame("BTC-USDT", path, sim.now())) for _ in range(5)]
    stamps = [int(f["data"][0]["ts"]) for f in frames]
    assert stamps == sorted(set(stamps))


async def test_client_over_the_message_limit_is_closed(
    sim: OkxSim, http: aiohttp.ClientSession
) -> None:
    """More than 3 messages in a second closes the connection with 1008."""
    async with http.ws_connect(f"{sim.ws_url}/ws/v5/public") as ws:
        for _ in range(4):
            await ws.send_str("ping")
        async with asyncio.timeout(2.0):
            while (await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                pass
        assert ws.close_code == 1008
    assert sim.stats.rate_limited == 1
