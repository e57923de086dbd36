"""Why a source does not count in a market, as the venue's side of it: GET
/v1/markets/{market}/sources shows, for each entry, whether the venue refused its instrument
(with the venue's message) or leaves it silent on a connection that streams. Before, the
endpoint showed neither (docs/sources.md said it showed the refusal): an entry's `reason` said
`no_quote` or `stale` for a symbol the venue had refused, a symbol it never quotes and a venue
that is down alike.

The sources are real adapters: one streams from a loopback Binance venue that refuses a symbol it
does not list and is made to stop quoting another; one is built with a configuration it refuses.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient
from api_rig import ClientFactory, Rig, make_config

from oracled.clock import SystemClock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sim import BinanceSim
from oracled.sources import SourceStats, build_source

Client = TestClient[web.Request, web.Application]
PAIRS: list[tuple[str, Kind]] = [("BTC/USD", "spot"), ("ETH/USD", "spot"), ("SOL/USD", "spot")]
FEED = "0x" + "e6" * 32


async def _entries(client: Client, market: str) -> dict[str, Any]:
    """Each entry's `instrument` in the market's sources, by source."""
    async with client.get(f"/v1/markets/{market}/sources") as resp:
        assert resp.status == 200
        body = await resp.json()
    return {row["source"]: row["instrument"] for row in body["sources"]}


async def _until(done: Any) -> None:
    async with asyncio.timeout(5):
        while not done():  # noqa: ASYNC110 - the source's own state, set by its tasks
            await asyncio.sleep(0.02)


async def test_a_markets_sources_show_a_refused_and_a_silent_instrument_per_entry(
    make_client: ClientFactory,
) -> None:
    """`alpha` streams BTCUSD and ETHUSD from the venue, which refuses SOLUSD (unlisted) and
    then stops quoting ETHUSD: SOL/USD's entry for alpha carries the venue's message, ETH/USD's
    the time its silence counts from, BTC/USD's neither; once ETHUSD quotes again its entry
    says so. Each entry shows its own instrument only, a source that is not running has none
    (null), and one whose stats have no adapter yet has no symbol."""
    rig = Rig(make_config())
    stats = rig.stats["alpha"] = SourceStats("alpha")
    client = await make_client(rig)
    quotes: list[Quote] = []
    async with BinanceSim({"BTCUSD": 64_000.0, "ETHUSD": 3_100.0}, rate_hz=20.0) as sim:
        cfg = SourceConfig(type="binance", ws_url=sim.ws_url, rest_url=sim.rest_url)
        async with aiohttp.ClientSession() as http:
            source = build_source("alpha", cfg, PAIRS, quotes.append, SystemClock(), http, stats)
            source.silent_after_ms = lambda: dict.fromkeys(PAIRS, 300)
            task = asyncio.create_task(source.run(), name="alpha")
            try:
                await _until(lambda: {q.pair for q in quotes} >= {"BTC/USD", "ETH/USD"})
                await _until(lambda: "SOLUSD" in stats.failed_instruments)
                sim.mute("ETHUSD")
                await _until(lambda: "ETHUSD" in stats.silent_instruments)
                refused = stats.failed_instruments["SOLUSD"]
                assert "invalid stream" in refused  # the venue's own words
                assert (await _entries(client, "SOL-USD"))["alpha"] == {
                    "symbol": "SOLUSD",
                    "refused": refused,
                    "silent_since": None,
                }
                eth = await _entries(client, "ETH-USD")
                since = stats.silent_instruments["ETHUSD"]
                assert eth["alpha"] == {"symbol": "ETHUSD", "refused": None, "silent_since": since}
                assert eth["beta"] == {"symbol": None, "refused": None, "silent_since": None}
                btc = await _entries(client, "BTC-USD")
                assert btc["alpha"] == {"symbol": "BTCUSD", "refused": None, "silent_since": None}
                assert btc["gamma"] is None  # no source running: nothing to say
                sim.unmute("ETHUSD")
                await _until(lambda: not stats.silent_instruments)
                eth = await _entries(client, "ETH-USD")
                assert eth["alpha"]["silent_since"] is None
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


async def test_an_instrument_refused_before_it_had_a_symbol_is_shown_by_its_pair(
    make_client: ClientFactory,
) -> None:
    """A Pyth source given one feed id for two pairs refuses the second when it is built, before
    it has a venue symbol (its refusal is keyed by the pair): the entry shows the refusal with
    no symbol, and the other pair's entry its feed id and no refusal."""
    rig = Rig(make_config())
    stats = rig.stats["beta"] = SourceStats("beta")
    client = await make_client(rig)
    cfg = SourceConfig(type="pyth_hermes", instruments={"BTC/USD": FEED, "ETH/USD": FEED})
    async with aiohttp.ClientSession() as http:
        build_source("beta", cfg, PAIRS[:2], lambda q: None, SystemClock(), http, stats)
    assert list(stats.failed_instruments) == ["ETH/USD"]
    eth = (await _entries(client, "ETH-USD"))["beta"]
    assert eth == {
        "symbol": None,
        "refused": stats.failed_instruments["ETH/USD"],
        "silent_since": None,
    }
    assert "already used by another pair" in eth["refused"]
    btc = (await _entries(client, "BTC-USD"))["beta"]
    assert (btc["symbol"] is not None, btc["refused"]) == (True, None)


async def test_a_source_serving_spot_and_perp_of_one_pair_shows_each_its_own_instrument(
    make_client: ClientFactory,
) -> None:
    """OKX names a pair's spot `BTC-USD` and its swap `BTC-USD-SWAP`: the spot entry shows the
    spot instrument and the source's map holds both. The base adapter keyed its map by the
    pair's spot name, so the swap took the spot's place: the spot entry showed no symbol (what
    the contract keeps for a refused one), the swap the spot's symbol, and neither its silence."""
    rig = Rig(make_config())
    stats = rig.stats["alpha"] = SourceStats("alpha")
    client = await make_client(rig)
    cfg = SourceConfig(type="okx")
    pairs: list[tuple[str, Kind]] = [("BTC/USD", "spot"), ("BTC/USD", "perp")]
    async with aiohttp.ClientSession() as http:
        build_source("alpha", cfg, pairs, lambda q: None, SystemClock(), http, stats)
    assert stats.symbol_of == {
        ("BTC/USD", "spot"): "BTC-USD",
        ("BTC/USD", "perp"): "BTC-USD-SWAP",
    }
    btc = (await _entries(client, "BTC-USD"))["alpha"]
    assert btc == {"symbol": "BTC-USD", "refused": None, "silent_since": None}
