"""What every venue simulator does alike, written once and run for each venue.

garbage(n) puts the whole garbage catalogue, verbatim, on a connected client's socket and counts
it; silence(None) keeps the socket open with nothing on it (no data, no heartbeats, no pings, no
answers) until reset() resumes the stream. A `SimCase` holds how to reach a venue's socket and
what its stream looks like; Pyth's SSE stream has its own tests in test_pyth_sim.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import pytest
from sim_wire import WS, drain, next_json

from oracled.sim import GARBAGE as BINANCE_GARBAGE
from oracled.sim import BinanceSim
from oracled.sim._base import VenueSim
from oracled.sim.binance_usdm import GARBAGE as BINANCE_USDM_GARBAGE
from oracled.sim.binance_usdm import BinanceUsdmSim
from oracled.sim.bitstamp import GARBAGE as BITSTAMP_GARBAGE
from oracled.sim.bitstamp import BitstampSim
from oracled.sim.coinbase import GARBAGE as COINBASE_GARBAGE
from oracled.sim.coinbase import CoinbaseSim
from oracled.sim.gemini import GARBAGE as GEMINI_GARBAGE
from oracled.sim.gemini import GeminiSim
from oracled.sim.gemini_ws import GARBAGE as GEMINI_WS_GARBAGE
from oracled.sim.gemini_ws import GeminiWsSim
from oracled.sim.kraken import GARBAGE as KRAKEN_GARBAGE
from oracled.sim.kraken import KrakenSim
from oracled.sim.kucoin import GARBAGE as KUCOIN_GARBAGE
from oracled.sim.kucoin import KucoinSim
from oracled.sim.okx import GARBAGE as OKX_GARBAGE
from oracled.sim.okx import OkxSim

BINANCE_PRICES = {"BTCUSDT": 67_000.0, "ETHUSDT": 3_500.0}


async def _binance_subscribe(ws: WS) -> bool:
    await ws.send_str('{"method":"SUBSCRIBE","params":["btcusdt@bookTicker"],"id":1}')
    return bool(await next_json(ws, pings=True) == {"result": None, "id": 1})


async def _binance_streams(ws: WS) -> bool:
    return bool((await next_json(ws, pings=True))["data"]["s"] == "BTCUSDT")


async def _bitstamp_subscribe(ws: WS) -> bool:
    await ws.send_str('{"event":"bts:subscribe","data":{"channel":"order_book_btcusd"}}')
    return bool((await next_json(ws))["event"] == "bts:subscription_succeeded")


async def _bitstamp_streams(ws: WS) -> bool:
    return bool((await next_json(ws))["channel"] == "order_book_btcusd")


async def _coinbase_heartbeats(ws: WS) -> bool:
    await ws.send_str('{"type":"subscribe","channel":"heartbeats"}')
    return bool((await next_json(ws, pings=True))["channel"] == "subscriptions")


async def _coinbase_beats(ws: WS) -> bool:
    return bool((await next_json(ws, pings=True))["channel"] == "heartbeats")


async def _kraken_ticker(ws: WS, within_s: float = 2.0) -> bool:
    """The next BTC/USD ticker update (the status, acks and heartbeats are passed over); none
    within `within_s` fails, though heartbeats keep coming."""
    async with asyncio.timeout(within_s):
        while True:
            frame = await next_json(ws)
            if frame.get("channel") == "ticker" and frame.get("type") == "update":
                return bool(frame["data"][0]["symbol"] == "BTC/USD")


async def _kraken_subscribe(ws: WS) -> bool:
    params = {"channel": "ticker", "symbol": ["BTC/USD"]}
    await ws.send_str(json.dumps({"method": "subscribe", "params": params}))
    return await _kraken_ticker(ws)


async def _kucoin_connect(sim: VenueSim, http: aiohttp.ClientSession) -> WS:
    async with http.post(f"{sim.rest_url}/api/v1/bullet-public") as resp:
        data = (await resp.json())["data"]
    endpoint = data["instanceServers"][0]["endpoint"]
    return await http.ws_connect(f"{endpoint}?token={data['token']}&connectId=abc123")


async def _kucoin_welcome(ws: WS) -> bool:
    return bool((await next_json(ws))["type"] == "welcome")


async def _gemini_ws_subscribe(ws: WS) -> bool:
    await ws.send_str('{"id":1,"method":"SUBSCRIBE","params":["btcusd@bookTicker"]}')
    return bool(await next_json(ws) == {"id": 1, "status": 200, "result": None})


async def _gemini_ws_streams(ws: WS) -> bool:
    return bool((await next_json(ws))["s"] == "btcusd")


async def _settle(ws: WS) -> bool:
    """Nothing to ask for: give the simulator a moment to register the client."""
    await asyncio.sleep(0.05)
    return True


def _path(path: str) -> Callable[[VenueSim, aiohttp.ClientSession], Awaitable[WS]]:
    async def connect(sim: VenueSim, http: aiohttp.ClientSession) -> WS:
        return await http.ws_connect(sim.ws_url + path, autoping=False)

    return connect


@dataclass(frozen=True)
class SimCase:
    """One venue simulator as the shared tests drive it."""

    id: str
    sim: Callable[[], VenueSim]  # pings, heartbeats and keep-alives a few times a 0.3 s wait
    garbage: tuple[str, ...]  # its garbage catalogue
    connect: Callable[[VenueSim, aiohttp.ClientSession], Awaitable[WS]]  # autoping off
    ready: Callable[[WS], Awaitable[bool]]  # subscribe (or read the greeting): true if answered
    streams: Callable[[WS], Awaitable[bool]] | None = None  # the stream is back: None, no test
    poke: str | None = None  # a request sent while silent, which must go unanswered too


CASES = (
    SimCase(
        id="binance",
        sim=lambda: BinanceSim(BINANCE_PRICES, rate_hz=50.0, ping_interval_s=0.05),
        garbage=BINANCE_GARBAGE,
        connect=_path("/stream"),
        ready=_binance_subscribe,
        streams=_binance_streams,
    ),
    SimCase(
        id="binance_usdm",
        sim=lambda: BinanceUsdmSim(BINANCE_PRICES, seed=3, rate_hz=50.0),
        garbage=BINANCE_USDM_GARBAGE,
        connect=_path("/public/stream"),
        ready=_binance_subscribe,
    ),
    SimCase(
        id="bitstamp",
        sim=lambda: BitstampSim({"BTC/USD": 67_000.0, "ETH/USD": 3_500.0}, rate_hz=50.0),
        garbage=BITSTAMP_GARBAGE,
        connect=_path("/"),
        ready=_bitstamp_subscribe,
        streams=_bitstamp_streams,
        poke='{"event":"bts:heartbeat"}',
    ),
    SimCase(
        id="coinbase",
        sim=lambda: CoinbaseSim({"BTC-USD": 67_000.0}, rate_hz=50.0, heartbeat_s=0.05),
        garbage=COINBASE_GARBAGE,
        connect=_path(""),
        ready=_coinbase_heartbeats,
        streams=_coinbase_beats,
    ),
    SimCase(
        id="gemini",
        sim=lambda: GeminiSim({"BTCUSD": 67_000.0}, rate_hz=50.0, heartbeat_s=0.05),
        garbage=GEMINI_GARBAGE,
        connect=_path("/v2/marketdata"),
        ready=_settle,
    ),
    SimCase(
        id="gemini_ws",
        sim=lambda: GeminiWsSim({"btcusd": 67_000.0}, rate_hz=50.0),
        garbage=GEMINI_WS_GARBAGE,
        connect=_path("/"),
        ready=_gemini_ws_subscribe,
        streams=_gemini_ws_streams,
        poke='{"id":"ping","method":"ping"}',
    ),
    SimCase(
        id="kraken",
        sim=lambda: KrakenSim({"BTC/USD": 67_000.0}, rate_hz=50.0, heartbeat_s=0.05),
        garbage=KRAKEN_GARBAGE,
        connect=_path("/v2"),
        ready=_kraken_subscribe,
        streams=_kraken_ticker,
    ),
    SimCase(
        id="kucoin",
        sim=lambda: KucoinSim({"BTC-USDT": 67_000.0}, rate_hz=50.0),
        garbage=KUCOIN_GARBAGE,
        connect=_kucoin_connect,
        ready=_kucoin_welcome,
    ),
    SimCase(
        id="okx",
        sim=lambda: OkxSim({"BTC-USDT": 67_000.0}, rate_hz=50.0),
        garbage=OKX_GARBAGE,
        connect=_path("/ws/v5/public"),
        ready=_settle,
    ),
)
SILENT = [c for c in CASES if c.streams is not None]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_garbage_reaches_the_client_verbatim_and_is_counted(
    case: SimCase, http: aiohttp.ClientSession
) -> None:
    """garbage(n) with n the catalogue's size sends every catalogue frame, byte for byte, to a
    connected client and counts n frames sent."""
    async with case.sim() as sim:
        ws = await case.connect(sim, http)
        async with ws:
            assert await case.ready(ws)
            assert sim.garbage(len(case.garbage)) == len(case.garbage)
            seen: set[str] = set()
            async with asyncio.timeout(2.0):
                while not set(case.garbage) <= seen:
                    msg = await ws.receive()
                    if msg.type is aiohttp.WSMsgType.TEXT:
                        seen.add(msg.data)
        assert sim.stats.garbage_sent == len(case.garbage)


@pytest.mark.parametrize("case", SILENT, ids=[c.id for c in SILENT])
async def test_silence_sends_nothing_at_all_until_reset(
    case: SimCase, http: aiohttp.ClientSession
) -> None:
    """While silent the socket stays open and nothing arrives on it for 0.3 s (no data, no
    heartbeat, no ping, no answer to a request); reset() resumes the stream."""
    assert case.streams is not None
    async with case.sim() as sim:
        ws = await case.connect(sim, http)
        async with ws:
            assert await case.ready(ws)
            sim.silence(None)
            await drain(ws)
            if case.poke is not None:
                await ws.send_str(case.poke)
            with pytest.raises(TimeoutError):
                await ws.receive(timeout=0.3)
            assert not ws.closed
            sim.reset()
            assert await case.streams(ws)


async def test_a_frozen_venue_sends_no_data_but_keeps_its_heartbeats_and_books(
    http: aiohttp.ClientSession,
) -> None:
    """freeze(None) holds the books: no data frames (heartbeats go on), `book` answers the held
    prices and `book_ms` the moment of the freeze; reset() lets the books move and stream again."""
    async with KrakenSim({"BTC/USD": 67_000.0}, rate_hz=50.0, heartbeat_s=0.05) as sim:
        ws = await _path("/v2")(sim, http)
        async with ws:
            assert await _kraken_subscribe(ws)
            assert await _kraken_ticker(ws)
            sim.freeze(None)
            held, held_ms = sim.book("BTC/USD"), sim.book_ms()
            await asyncio.sleep(0.1)  # frames queued before the freeze are written
            frames, beats = sim.stats.frames_sent, sim.stats.heartbeats_sent
            async with asyncio.timeout(10.0):  # a bound on waiting, not on speed
                while sim.stats.heartbeats_sent < beats + 3:  # noqa: ASYNC110 - no event for it
                    await asyncio.sleep(0.05)
            assert sim.stats.frames_sent == frames  # three heartbeats went out, no data frame
            assert sim.book("BTC/USD") == held and sim.book_ms() == held_ms
            sim.reset()
            assert await _kraken_ticker(ws)
            assert sim.book("BTC/USD") != held and sim.book_ms() > held_ms
