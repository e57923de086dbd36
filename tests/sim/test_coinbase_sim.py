"""The Coinbase simulator speaks the Advanced Trade market-data protocol and injects its faults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from sim_wire import next_json

from oracled.sim.coinbase import CoinbaseSim

PRICES = {"BTC-USD": 67_000.0, "ETH-USD": 3_500.0}


@pytest.fixture
async def sim() -> AsyncIterator[CoinbaseSim]:
    venue = CoinbaseSim(PRICES, seed=3, rate_hz=50.0, volatility=0.0, heartbeat_s=0.05)
    async with venue:
        yield venue


async def test_ticker_subscribe_is_acked_then_snapshot_then_updates(
    sim: CoinbaseSim, http: aiohttp.ClientSession
) -> None:
    """A ticker subscribe gets a subscriptions ack, a snapshot, then updates with rising seq."""
    async with http.ws_connect(sim.ws_url) as ws:
        await ws.send_str('{"type":"subscribe","product_ids":["BTC-USD"],"channel":"ticker"}')
        ack = await next_json(ws, pings=True)
        assert ack["channel"] == "subscriptions"
        assert ack["events"] == [{"subscriptions": {"ticker": ["BTC-USD"]}}]
        snapshot, update = await next_json(ws, pings=True), await next_json(ws, pings=True)
    assert snapshot["events"][0]["type"] == "snapshot"
    assert update["events"][0]["type"] == "update"
    assert ack["sequence_num"] < snapshot["sequence_num"] < update["sequence_num"]
    row = update["events"][0]["tickers"][0]
    assert row["product_id"] == "BTC-USD"
    assert {"price", "best_bid", "best_ask", "best_bid_quantity", "best_ask_quantity"} <= set(row)
    assert 0 < float(row["best_bid"]) < 67_000.0 < float(row["best_ask"])
    assert update["timestamp"].endswith("Z")


async def test_heartbeats_go_only_to_subscribers(
    sim: CoinbaseSim, http: aiohttp.ClientSession
) -> None:
    """The heartbeats channel needs no products; unsubscribed connections get no heartbeats."""
    async with http.ws_connect(sim.ws_url) as beating, http.ws_connect(sim.ws_url) as quiet:
        await beating.send_str('{"type":"subscribe","channel":"heartbeats"}')
        ack = await next_json(beating, pings=True)
        assert ack["events"] == [{"subscriptions": {"heartbeats": ["heartbeats"]}}]
        beat = await next_json(beating, pings=True)
        assert beat["channel"] == "heartbeats"
        assert beat["events"][0]["heartbeat_counter"] >= 1
        with pytest.raises(TimeoutError):
            await quiet.receive(timeout=0.2)


async def test_unknown_product_is_refused_whole_with_an_error_frame(
    sim: CoinbaseSim, http: aiohttp.ClientSession
) -> None:
    """A subscribe naming an unknown product gets an error frame and subscribes nothing."""
    async with http.ws_connect(sim.ws_url) as ws:
        await ws.send_str(
            '{"type":"subscribe","product_ids":["BTC-USD","FOO-USD"],"channel":"ticker"}'
        )
        error = await next_json(ws, pings=True)
        assert error == {
            "type": "error",
            "message": "Failed to subscribe",
            "reason": "FOO-USD is not a valid product",
        }
        await ws.send_str("{not json")
        assert (await next_json(ws, pings=True))["type"] == "error"
        with pytest.raises(TimeoutError):
            await ws.receive(timeout=0.1)
    assert sim.stats.errors_sent == 2


async def test_rest_ticker_answers_the_public_shape(
    sim: CoinbaseSim, http: aiohttp.ClientSession
) -> None:
    """The public product ticker gives trades plus best bid/ask; unknown products get 400."""
    base = f"{sim.rest_url}/api/v3/brokerage/market/products"
    async with http.get(f"{base}/ETH-USD/ticker", params={"limit": "1"}) as resp:
        body = await resp.json()
    assert set(body) == {"trades", "best_bid", "best_ask"}
    assert body["trades"][0]["product_id"] == "ETH-USD"
    assert float(body["best_bid"]) < float(body["best_ask"])
    async with http.get(f"{base}/FOO-USD/ticker") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "INVALID_ARGUMENT"
    sim.rest_status = 429
    async with http.get(f"{base}/ETH-USD/ticker") as resp:
        assert resp.status == 429
    assert sim.stats.rest_requests == 3


async def test_client_over_the_message_limit_is_closed(
    sim: CoinbaseSim, http: aiohttp.ClientSession
) -> None:
    """More than 8 messages in a second closes the connection with 1008."""
    async with http.ws_connect(sim.ws_url) as ws:
        for _ in range(9):
            await ws.send_str('{"type":"subscribe","channel":"heartbeats"}')
        async with asyncio.timeout(2.0):
            while (await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                pass
        assert ws.close_code == 1008
    assert sim.stats.rate_limited == 1


async def test_usdc_as_usd_serves_a_usdc_product_with_its_usd_twin_under_the_twin_name(
    http: aiohttp.ClientSession,
) -> None:
    """With `usdc_as_usd`, a -USDC product whose -USD twin is listed is subscribed, acknowledged,
    ticked and answered on REST as the twin (one of the two namings the docs leave open); a
    -USDC product without a listed twin is unknown as before."""
    async with CoinbaseSim(PRICES, seed=3, rate_hz=50.0, usdc_as_usd=True) as venue:
        assert venue.served("BTC-USDC") == "BTC-USD" and venue.served("SOL-USDC") == "SOL-USDC"
        async with http.ws_connect(venue.ws_url) as ws:
            await ws.send_str('{"type":"subscribe","product_ids":["BTC-USDC"],"channel":"ticker"}')
            ack = await next_json(ws, pings=True)
            assert ack["events"] == [{"subscriptions": {"ticker": ["BTC-USD"]}}]
            snapshot = await next_json(ws, pings=True)
            assert snapshot["events"][0]["tickers"][0]["product_id"] == "BTC-USD"
        base = f"{venue.rest_url}/api/v3/brokerage/market/products"
        async with http.get(f"{base}/BTC-USDC/ticker", params={"limit": "1"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["trades"][0]["product_id"] == "BTC-USD"
        async with http.get(f"{base}/SOL-USDC/ticker") as resp:
            assert resp.status == 400


async def test_unknown_status_404_answers_an_unknown_product_not_found(
    http: aiohttp.ClientSession,
) -> None:
    """With `unknown_status=404`, an unknown product's REST ticker is a 404 NOT_FOUND in the
    venue's error envelope; listed products answer as usual."""
    async with CoinbaseSim(PRICES, seed=3, unknown_status=404) as venue:
        base = f"{venue.rest_url}/api/v3/brokerage/market/products"
        async with http.get(f"{base}/FOO-USD/ticker", params={"limit": "1"}) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"] == "NOT_FOUND"
        async with http.get(f"{base}/BTC-USD/ticker", params={"limit": "1"}) as resp:
            assert resp.status == 200
