"""The Pyth Hermes simulator speaks Hermes v2 (SSE stream and latest REST) and injects faults."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from oracled.sim.pyth_hermes import GARBAGE, PythHermesSim

BTC = "e62df6c8b4a85fe1a67db44dc12de5db330f7ac66b72dc658afedf0f4a415b43"
ETH = "ff61491a931112ddf1bd8147cd1b641375f79f5825126d665480874634fd0ace"
PRICES = {"0x" + BTC.upper(): 67_000.0, ETH: 3_500.0}
STREAM = "/v2/updates/price/stream"
LATEST = "/v2/updates/price/latest"


@pytest.fixture
async def sim() -> AsyncIterator[PythHermesSim]:
    async with PythHermesSim(PRICES, seed=3, rate_hz=50.0, volatility=0.0) as venue:
        yield venue


def ids(*feeds: str, **extra: str) -> list[tuple[str, str]]:
    return [*(("ids[]", f) for f in feeds), *extra.items()]


async def next_block(resp: aiohttp.ClientResponse, within_s: float = 2.0) -> list[str]:
    """The lines of the next SSE block (up to the blank line), or [] at the end of the stream."""
    lines: list[str] = []
    async with asyncio.timeout(within_s):
        while True:
            raw = await resp.content.readline()
            if not raw:
                return lines
            line = raw.decode().rstrip("\n")
            if not line:
                return lines
            lines.append(line)


def ended(resp: aiohttp.ClientResponse, block: list[str]) -> bool:
    """`block` (from `next_block`) is no block but the clean end of the stream."""
    return not block and resp.content.at_eof()


async def next_update(resp: aiohttp.ClientResponse) -> Any:
    """The next ``data:`` event as JSON; the stream ending first fails the test (not a hang)."""
    while True:
        block = await next_block(resp)
        if ended(resp, block):
            pytest.fail("the stream ended before an update")
        if block and block[0].startswith("data:"):
            return json.loads(block[0].removeprefix("data:"))


async def test_stream_sends_v2_updates_for_the_requested_ids_only(
    sim: PythHermesSim, http: aiohttp.ClientSession
) -> None:
    """``data:`` events shaped like Hermes's v2 PriceUpdate, priced at the simulated book and
    stamped with the wall clock's second when sent."""
    asked = int(time.time())
    async with http.get(sim.ws_url + STREAM, params=ids("0x" + BTC, parsed="true")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        update = await next_update(resp)
    assert set(update) == {"binary", "parsed"}
    assert update["binary"]["encoding"] == "base64" and len(update["binary"]["data"]) == 1
    [feed] = update["parsed"]
    assert feed["id"] == BTC
    assert set(feed) == {"id", "price", "ema_price", "metadata"}
    assert set(feed["metadata"]) == {"slot", "proof_available_time", "prev_publish_time"}
    price = feed["price"]
    assert set(price) == {"price", "conf", "expo", "publish_time"}
    assert (
        price["expo"] == -8 and isinstance(price["price"], str) and isinstance(price["conf"], str)
    )
    assert asked <= price["publish_time"] <= int(time.time())  # seconds, made after the ask
    bid, ask = sim.book(BTC)
    mid, conf = int(price["price"]) / 1e8, int(price["conf"]) / 1e8
    assert mid - conf == pytest.approx(bid, rel=1e-9) and mid + conf == pytest.approx(ask, rel=1e-9)


async def test_slots_grow_with_every_update(
    sim: PythHermesSim, http: aiohttp.ClientSession
) -> None:
    """Each update carries a larger slot than the one before, as on Pythnet."""
    async with http.get(sim.ws_url + STREAM, params=ids(BTC, ETH)) as resp:
        slots = [(await next_update(resp))["parsed"][0]["metadata"]["slot"] for _ in range(6)]
    assert slots == sorted(slots) and len(set(slots)) == 6


async def test_keep_alive_comment_after_a_quiet_interval(http: aiohttp.ClientSession) -> None:
    """Without updates the stream sends the empty comment ``:``, as axum's keep-alive does."""
    async with (
        PythHermesSim(PRICES, rate_hz=0.1, keepalive_s=0.05) as quiet,
        http.get(quiet.ws_url + STREAM, params=ids(BTC)) as resp,
    ):
        assert await next_block(resp) == [":"]
        assert await next_block(resp) == [":"]
    assert quiet.stats.heartbeats_sent >= 2


async def test_unknown_ids_get_not_found_and_bad_requests_get_400(
    sim: PythHermesSim, http: aiohttp.ClientSession
) -> None:
    """Stream and REST refuse unknown ids with 404 naming them; malformed queries get 400."""
    unknown = "ab" * 32
    for path in (STREAM, LATEST):
        async with http.get(sim.rest_url + path, params=ids(BTC, unknown)) as resp:
            assert resp.status == 404
            assert await resp.text() == f"Price ids not found: 0x{unknown}"
    async with http.get(sim.rest_url + LATEST, params=ids("0x12")) as resp:
        assert resp.status == 400
    async with http.get(sim.rest_url + LATEST) as resp:
        assert resp.status == 400
        assert "missing field `ids`" in await resp.text()
    async with http.get(sim.rest_url + LATEST, params=ids(BTC, encoding="utf8")) as resp:
        assert resp.status == 400
    assert sim.stats.errors_sent == 5 and sim.stats.connections == 0


async def test_latest_answers_each_feeds_last_update(
    sim: PythHermesSim, http: aiohttp.ClientSession
) -> None:
    """REST latest serves the update the stream last carried, in the requested encoding."""
    async with http.get(sim.ws_url + STREAM, params=ids(ETH)) as resp:
        streamed = (await next_update(resp))["parsed"][0]
        sim.silence(None)  # freeze the feed so that latest cannot have moved on
        async with http.get(sim.rest_url + LATEST, params=ids(BTC, ETH)) as latest:
            body = await latest.json()
    assert body["binary"]["encoding"] == "hex"
    assert [f["id"] for f in body["parsed"]] == [BTC, ETH]
    assert body["parsed"][1]["metadata"]["slot"] >= streamed["metadata"]["slot"]
    query = ids(BTC, "ab" * 32, parsed="false", ignore_invalid_price_ids="true")
    async with http.get(sim.rest_url + LATEST, params=query) as resp:
        assert set(await resp.json()) == {"binary"}
    assert sim.stats.rest_requests == 2


async def test_rest_faults_answer_their_status(
    sim: PythHermesSim, http: aiohttp.ClientSession
) -> None:
    """rest_enabled off answers 503, rest_status answers that status; every call is counted."""
    sim.rest_enabled = False
    async with http.get(sim.rest_url + LATEST, params=ids(BTC)) as resp:
        assert resp.status == 503
    sim.reset()
    sim.rest_status = 429
    async with http.get(sim.rest_url + LATEST, params=ids(BTC)) as resp:
        assert resp.status == 429
    assert sim.stats.rest_requests == 2


async def test_refused_stream_while_disabled(
    sim: PythHermesSim, http: aiohttp.ClientSession
) -> None:
    """With ws_enabled off the stream request fails with 503 and is counted."""
    sim.ws_enabled = False
    async with http.get(sim.ws_url + STREAM, params=ids(BTC)) as resp:
        assert resp.status == 503
    assert sim.stats.refused == 1 and sim.stats.connections == 0


async def test_time_limit_sends_the_notice_then_ends_the_stream(
    http: aiohttp.ClientSession,
) -> None:
    """After max_stream_s the stream sends Hermes's error event and closes."""
    async with (
        PythHermesSim(PRICES, rate_hz=0.1, max_stream_s=0.1, keepalive_s=5.0) as short,
        http.get(short.ws_url + STREAM, params=ids(BTC)) as resp,
    ):
        assert await next_block(resp) == [
            "event:error",
            "data:Connection timeout reached (24h)",
        ]
        assert await next_block(resp) == []  # end of stream


async def test_silence_sends_nothing_until_reset(http: aiohttp.ClientSession) -> None:
    """While silent the stream stays open without updates or keep-alives; reset resumes both."""
    venue = PythHermesSim(PRICES, rate_hz=50.0, keepalive_s=0.05)
    async with venue, http.get(venue.ws_url + STREAM, params=ids(BTC)) as resp:
        await next_update(resp)
        venue.silence(None)
        async with asyncio.timeout(2.0):  # drain what was sent before the silence began
            while True:
                try:
                    await next_block(resp, within_s=0.1)
                except TimeoutError:
                    break
        with pytest.raises(TimeoutError):
            await next_block(resp, within_s=0.3)
        venue.reset()
        assert (await next_update(resp))["parsed"][0]["id"] == BTC


async def test_garbage_and_error_events_reach_every_client(
    sim: PythHermesSim, http: aiohttp.ClientSession
) -> None:
    """garbage(n) sends n ``data:`` events from the catalogue; error_event sends event:error."""
    async with http.get(sim.ws_url + STREAM, params=ids(ETH)) as resp:
        await next_update(resp)
        assert sim.garbage(len(GARBAGE)) == len(GARBAGE)
        assert sim.error_event("Lagged(2)") == 1
        seen: set[str] = set()
        async with asyncio.timeout(2.0):
            while True:
                block = await next_block(resp)
                if block[0] == "event:error":
                    assert block[1] == "data:Error receiving update: Lagged(2)"
                    break
                seen.add(block[0].removeprefix("data:"))
    assert set(GARBAGE) <= seen
    assert sim.stats.garbage_sent == len(GARBAGE) and sim.stats.errors_sent == 1


async def test_disconnect_drops_every_client(
    sim: PythHermesSim, http: aiohttp.ClientSession
) -> None:
    """disconnect() cuts each stream's TCP connection; the reader sees it fail."""
    async with (
        http.get(sim.ws_url + STREAM, params=ids(BTC)) as one,
        http.get(sim.ws_url + STREAM, params=ids(ETH)) as two,
    ):
        await next_update(one)
        await next_update(two)
        assert sim.stats.active == 2
        assert sim.disconnect() == 2
        for resp in (one, two):
            with pytest.raises(aiohttp.ClientPayloadError):  # not a clean end of the stream
                while not ended(resp, await next_block(resp)):
                    pass
    assert sim.stats.connections == 2


async def test_burst_and_replay_send_fresh_and_stale_updates(
    sim: PythHermesSim, http: aiohttp.ClientSession
) -> None:
    """burst(n) queues n fresh updates per subscribed feed; replay_stale repeats old ones."""
    async with http.get(sim.ws_url + STREAM, params=ids(BTC, ETH)) as resp:
        await next_update(resp)
        assert sim.burst(5) == 10
        assert sim.replay_stale(1) == 1  # the last burst update, once more
        slots: list[int] = []
        while len(slots) < 2 or slots[-1] != slots[-2]:
            slots.append((await next_update(resp))["parsed"][0]["metadata"]["slot"])
            assert len(slots) < 30, "the replayed update never arrived"
    burst = slots[-11:-1]
    assert burst == list(range(burst[0], burst[0] + 10))  # ten fresh, consecutive slots


async def test_spike_prints_a_wrong_price(sim: PythHermesSim) -> None:
    """A spike multiplies this venue's book for its duration, then the book returns."""
    bid, _ = sim.book(BTC)
    sim.spike(BTC, 2.0, 0.1)
    assert sim.book(BTC)[0] == pytest.approx(2 * bid)
    await asyncio.sleep(0.15)
    assert sim.book(BTC)[0] == pytest.approx(bid)


def test_feed_ids_must_be_hex() -> None:
    """A price map keyed by something other than a feed id is refused at construction."""
    with pytest.raises(ValueError, match="32 bytes"):
        PythHermesSim({"BTC/USD": 1.0})
