"""The Gemini simulator speaks the v2 market-data protocol with a coherent book and its faults."""

from __future__ import annotations

import asyncio
import json
import statistics
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from oracled.clock import SystemClock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sim.gemini import GeminiSim
from oracled.sources import SourceStats
from oracled.sources.gemini import GeminiSource

PRICES = {"BTCUSD": 67_000.0, "ETHUSD": 3_500.0}
SUBSCRIBE = '{"type":"subscribe","subscriptions":[{"name":"l2","symbols":%s}]}'
# About one tick (1.0 at 67,000) per step: the mid moves the top in most frames, as a busy book's
# does, and not by many ticks at once (a real diff is one event, not a tick of a coarse walk).
TICK_VOLATILITY = 1.5e-5


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
    assert 1 <= len(bids) <= 2 * sim.depth and 1 <= len(asks) <= 2 * sim.depth
    assert (max(bids), min(asks)) == sim.top("BTCUSD") and max(bids) < min(asks)


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


# ----------------------------------------------------------------- diffs as small as real ones


def sides(sim: GeminiSim, symbol: str) -> tuple[dict[float, float], dict[float, float]]:
    """The simulator's published book of `symbol` as (bids, asks), price -> quantity."""
    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    for (side, price), qty in sim._books[symbol].items():
        (bids if side == "buy" else asks)[float(price)] = float(qty)
    return bids, asks


def publish(sim: GeminiSim, jumps: dict[str, float] | None = None) -> None:
    """One data frame per symbol: each path steps (or jumps to its price in `jumps`) first.
    After it the simulator's book must be sane: one to twice `depth` levels a side, no price
    twice (however written), not crossed, its top around the published mid (the spread is
    about 1 bp plus two ticks)."""
    for symbol, path in sim.paths.items():
        if jumps and symbol in jumps:
            sim.set_price(symbol, jumps[symbol])
        else:
            path.step(sim.now())
    sim.burst(1)
    for symbol, path in sim.paths.items():
        bids, asks = sides(sim, symbol)
        assert len(bids) + len(asks) == len(sim._books[symbol])
        assert 1 <= len(bids) <= 2 * sim.depth and 1 <= len(asks) <= 2 * sim.depth
        bid, ask = sim.top(symbol)
        assert (bid, ask) == (max(bids), min(asks))
        mid = path.published(sim.now())
        assert bid < mid < ask and (ask - bid) / mid < 5e-4, (symbol, bid, mid, ask)


async def diffs(ws: aiohttp.ClientWebSocketResponse, n: int) -> list[list[list[str]]]:
    """The changes of the next `n` l2_updates diffs (a snapshot is skipped)."""
    out: list[list[list[str]]] = []
    while len(out) < n:
        frame = await next_json(ws, "l2_updates")
        if "trades" not in frame:
            out.append(frame["changes"])
    return out


@pytest.fixture
async def driven() -> AsyncIterator[GeminiSim]:
    """A venue that publishes only when the test says (`publish`): its own loop would wait 100 s."""
    venue = GeminiSim(
        {"BTCUSD": 67_000.0}, seed=11, rate_hz=0.01, heartbeat_s=0.05, volatility=TICK_VOLATILITY
    )
    async with venue:
        yield venue


async def test_diffs_carry_about_two_changes_while_the_top_moves(
    driven: GeminiSim, http: aiohttp.ClientSession
) -> None:
    """With the mid moving about a tick a frame (the top changes in most frames), a diff carries
    a median of two changes and a mean under 2.5, as recorded Gemini diffs do (median 2, mean 3),
    not the shift of the whole grid; jumps of many ticks stay within twice `depth` plus three."""
    sim = driven
    async with http.ws_connect(f"{sim.ws_url}/v2/marketdata") as ws:
        await ws.send_str(SUBSCRIBE % '["BTCUSD"]')
        await next_json(ws, "l2_updates")
        tops, moved = [sim.top("BTCUSD")], 0
        for step in range(400):
            mid = sim.paths["BTCUSD"].mid
            jump = {50: mid + 9, 120: mid - 15, 200: mid * 1.01, 300: mid * 0.98}.get(step)
            publish(sim, None if jump is None else {"BTCUSD": jump})
            tops.append(sim.top("BTCUSD"))
            moved += tops[-1] != tops[-2]
        counts = [len(changes) for changes in await diffs(ws, 400)]
    assert moved >= 0.6 * 400  # the path really moves the top
    assert statistics.median(counts) <= 2 and statistics.mean(counts) < 2.5
    assert min(counts) >= 1 and max(counts) <= 2 * sim.depth + 3


async def test_a_long_trend_keeps_the_book_bounded(
    driven: GeminiSim, http: aiohttp.ClientSession
) -> None:
    """A side gains a level with every tick of a trend; far levels are trimmed so that no side
    ever holds more than twice `depth`, on the venue and in the book rebuilt from its frames."""
    sim = driven
    async with http.ws_connect(f"{sim.ws_url}/v2/marketdata") as ws:
        await ws.send_str(SUBSCRIBE % '["BTCUSD"]')
        snapshot = await next_json(ws, "l2_updates")
        book = {(s, p): q for s, p, q in snapshot["changes"]}
        largest = 0
        for step in range(240):
            mid = sim.paths["BTCUSD"].mid
            publish(sim, {"BTCUSD": mid + (3.0 if step < 120 else -2.0)})
        for changes in await diffs(ws, 240):
            for side, price, qty in changes:
                if qty == "0":
                    del book[side, price]
                else:
                    book[side, price] = qty
            largest = max(largest, *(sum(s == side for s, _ in book) for side in ("buy", "sell")))
    assert book == sim._books["BTCUSD"]
    assert largest == 2 * sim.depth  # reached in the trend, never passed


# ----------------------------------------------------------------- the adapter's book


async def test_the_adapter_top_is_the_venue_top_after_every_frame(
    http: aiohttp.ClientSession,
) -> None:
    """The Gemini adapter, fed snapshot then diffs over loopback through walks and jumps of many
    ticks up and down (a spike, a change of tick size both ways), quotes after every frame the
    very best bid and ask the venue holds; it never sees a crossed book and never resyncs, and
    its levels end equal to the venue's."""
    sim = GeminiSim(PRICES, seed=5, rate_hz=0.01, heartbeat_s=0.05, volatility=TICK_VOLATILITY)
    quotes: list[Quote] = []
    async with sim:
        cfg = SourceConfig(type="gemini", ws_url=sim.ws_url, rest_url=sim.rest_url)
        pairs: list[tuple[str, Kind]] = [("BTC/USD", "spot"), ("ETH/USD", "spot")]
        stats = SourceStats("gemini")
        source = GeminiSource("gemini", cfg, pairs, quotes.append, SystemClock(), http, stats)
        task = asyncio.create_task(source.run(), name="test:gemini")
        try:
            async with asyncio.timeout(5.0):
                while len(quotes) < 2:  # noqa: ASYNC110 - the adapter's own list
                    await asyncio.sleep(0.01)
            want = {"BTC/USD": [sim.top("BTCUSD")], "ETH/USD": [sim.top("ETHUSD")]}
            script: dict[int, dict[str, float]] = {
                30: {"BTCUSD": 67_007.0, "ETHUSD": 3_498.6},  # 7 and 14 ticks at once
                60: {"BTCUSD": 66_950.0, "ETHUSD": 3_503.3},
                90: {"BTCUSD": 69_000.0, "ETHUSD": 9_999.9},  # ETH near a new tick size
                120: {"ETHUSD": 10_004.0},  # tick 0.1 -> 1
                130: {"ETHUSD": 10_000.5},  # best bid "9999"
                131: {"ETHUSD": 9_999.55},  # best bid 9999.0 again, now written "9999.0"
                150: {"BTCUSD": 65_000.0, "ETHUSD": 9_990.05},  # and back
            }
            for step in range(240):
                if step == 180:
                    sim.spike("BTCUSD", 1.6, None)  # over 100,000: tick 1 -> 10
                if step == 200:
                    sim.reset()
                publish(sim, script.get(step))
                want["BTC/USD"].append(sim.top("BTCUSD"))
                want["ETH/USD"].append(sim.top("ETHUSD"))
                if step % 20 == 0:
                    await asyncio.sleep(0)
            async with asyncio.timeout(5.0):
                while len(quotes) < 2 + 2 * 240:  # noqa: ASYNC110 - the adapter's own list
                    await asyncio.sleep(0.01)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        got = {pair: [(q.bid, q.ask) for q in quotes if q.pair == pair] for pair in want}
        assert got == want
        assert all(q.bid is not None and q.ask is not None and q.bid < q.ask for q in quotes)
        assert stats.dropped["crossed"] == 0 and sim.stats.connections == 1
        for symbol in PRICES:
            book = source._books[symbol]
            assert (book.bids, book.asks) == sides(sim, symbol)
