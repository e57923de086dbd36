"""The Gemini adapter on its loopback simulator: replayed diffs, REST pacing at one request a
second, shared with `gemini_ws` on one host, as is a 429. The faults all venues share (first
connection and its book, heartbeats, REST fallback among them): test_stream_faults.py."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
from structlog.testing import capture_logs
from venue_cases import CASE, SPOT_USD, Start, Wait, book_matches, running

from oracled.model import Kind
from oracled.sim.gemini import GeminiSim
from oracled.sources import ConnState
from oracled.sources.hostrests import HostRests, rest_host

VENUE = CASE["gemini"]  # what `sim` and `start` build (conftest.py)


async def test_replayed_diffs_never_leave_a_stale_book_behind(
    sim: GeminiSim, start: Start, wait: Wait
) -> None:
    """Gemini diffs carry no sequence or time: replays after a move cross the book, which is
    dropped and rebuilt; no crossed quote is emitted and the book returns to the venue's."""
    run = await start()
    await wait(lambda: len(run.quotes) >= 20)
    sim.set_price("BTCUSD", 67_000.0 * 1.01)
    sim.set_price("ETHUSD", 3_500.0 * 1.01)
    await wait(lambda: any(q.pair == "BTC/USD" and (q.bid or 0) > 67_500 for q in run.quotes))
    await wait(lambda: book_matches(run, sim, "BTCUSD") and book_matches(run, sim, "ETHUSD"))
    sim.replay_stale(len(sim._recent_frames))
    await wait(lambda: run.stats.dropped["crossed"] >= 1)
    await wait(lambda: book_matches(run, sim, "BTCUSD") and book_matches(run, sim, "ETHUSD"))
    assert all(q.bid is not None and q.ask is not None and q.bid <= q.ask for q in run.quotes)


async def test_rest_polls_keep_to_one_a_second_after_the_burst(
    sim: GeminiSim, start: Start, wait: Wait
) -> None:
    """Gemini asks for at most one public request a second: five at once, then one a second."""
    sim.ws_enabled = False
    await start(rest_poll_interval_s=0.001)
    await wait(lambda: sim.stats.rest_requests >= 5)
    first = sim.stats.rest_requests
    await asyncio.sleep(1.0)
    assert sim.stats.rest_requests - first <= 2


async def test_gemini_and_gemini_ws_polling_one_host_share_its_pacing(
    http: aiohttp.ClientSession, wait: Wait
) -> None:
    """Gemini's public limit (120 requests a minute, at most one a second asked) counts our IP,
    no key being sent, and `gemini` and `gemini_ws` both poll `/v1/pubticker` on one default
    host. Two such sources on one simulator, sharing a `HostRests` as the service's sources do,
    take their turns from one pacer (five at once, then one a second between them): they stay
    under a test-sized limit of 8 requests in 2 s (the shared pacing's 7 at most) and both are
    quoted. Before, each had a pacer of its own, and the two sent ten at once, past it."""
    rests = HostRests()
    async with GeminiSim(
        {"BTCUSD": 67_000.0, "ETHUSD": 3_500.0}, rate_hz=0.1, rest_limit=(8, 2.0)
    ) as venue:
        venue.ws_enabled = False  # no stream: both sources poll
        async with contextlib.AsyncExitStack() as stack:
            runs = [
                await stack.enter_async_context(
                    running(vid, CASE[vid].make_config(venue), SPOT_USD, http, host_rests=rests)
                )
                for vid in ("gemini", "gemini_ws")
            ]
            await wait(lambda: venue.stats.rest_requests >= 9, within_s=10.0)
            assert venue.rest_limited == 0
            await wait(lambda: all(len(run.pairs()) == 2 for run in runs))
            assert venue.rest_limited == 0


async def test_a_429_met_by_one_source_rests_every_source_of_the_host(
    http: aiohttp.ClientSession, wait: Wait
) -> None:
    """Gemini's public limit counts our IP, no key being sent, and answers 429 to every request
    until the rate drops. On a simulator allowing one request a minute, a `gemini` source polls
    (every 10 s here) and meets the 429 on its second request, which rests the host for its poll
    interval; a `gemini_ws` source on the same host, sharing a `HostRests` as the service's
    sources do, then starts polling: it sends nothing, says so once (`rest host rested`, naming
    the first) and is down, without a refused request of its own. Before, the 429 rested only
    the source that met it, and the other polled into the limit (a second 429)."""
    rests = HostRests()
    async with GeminiSim(
        {"BTCUSD": 67_000.0, "ETHUSD": 3_500.0}, rate_hz=0.1, rest_limit=(1, 60.0)
    ) as venue:
        venue.ws_enabled = False  # no stream: the sources poll
        with capture_logs() as logs:
            async with contextlib.AsyncExitStack() as stack:
                cfg = CASE["gemini"].make_config(venue, rest_poll_interval_s=10.0)
                met = await stack.enter_async_context(
                    running("gemini", cfg, SPOT_USD, http, host_rests=rests)
                )
                await wait(lambda: venue.rest_limited == 1)
                cfg = CASE["gemini_ws"].make_config(venue)
                rested = await stack.enter_async_context(
                    running("gemini_ws", cfg, SPOT_USD, http, host_rests=rests)
                )
                await wait(lambda: any(e["event"] == "rest host rested" for e in logs))
                assert venue.stats.rest_requests == 2 and venue.rest_limited == 1
                assert met.stats.dropped["rest_error"] == 1
                assert rested.stats.dropped["rest_error"] == 0
                assert rested.state() is ConnState.DOWN and met.state() is ConnState.DOWN
    said = [(e["source"], e["by"], e["delay_s"]) for e in logs if e["event"] == "rest host rested"]
    assert len(said) == 1 and said[0][:2] == ("gemini_ws", "gemini")
    assert 0.0 < said[0][2] <= 10.0  # the poll interval of the source that met it, less since


async def test_a_rest_learnt_during_a_round_stops_its_later_requests(
    http: aiohttp.ClientSession, wait: Wait
) -> None:
    """A `gemini_ws` source polls its seven symbols one request each: five at once (the host
    pacer's burst), then one a second. After the five another source of the host learns a
    limit on our IP (set here as that source's 429 would set it): the sixth request is not
    sent, and the source says at once that the host rests, naming who learnt it. Before, a
    round checked the host's rest only when it started: the last two requests went into the
    limit, and the rest was heard of only a poll interval later."""
    rests = HostRests()
    coins = ("BTC", "ETH", "SOL", "LTC", "LINK", "AVAX", "DOGE")
    pairs: list[tuple[str, Kind]] = [(f"{coin}/USD", "spot") for coin in coins]
    async with GeminiSim({f"{coin}USD": 100.0 for coin in coins}, rate_hz=0.1) as venue:
        venue.ws_enabled = False  # no stream: the source polls
        cfg = CASE["gemini_ws"].make_config(venue, rest_poll_interval_s=10.0)
        with capture_logs() as logs:
            async with running("gemini_ws", cfg, pairs, http, host_rests=rests) as run:
                await wait(lambda: venue.stats.rest_requests == 5)
                host = rest_host(run.source.rest_url)
                assert host is not None
                rests.rest(host, time.monotonic() + 60.0, "gemini", "HTTP 429: too many")
                await wait(lambda: any(e["event"] == "rest host rested" for e in logs))
                assert venue.stats.rest_requests == 5
                assert run.stats.dropped["rest_error"] == 0
                assert run.state() is ConnState.DOWN
    (said,) = [e for e in logs if e["event"] == "rest host rested"]
    assert said["by"] == "gemini"
