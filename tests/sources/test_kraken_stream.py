"""The Kraken adapter on its loopback simulator: an unknown pair (its one-pair requests paced)
and a rate limit over REST. The faults all venues share (first connection, heartbeats, REST
fallback among them): test_stream_faults.py."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import Any, ClassVar

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs
from venue_cases import CASE, SPOT_USD, Start, Wait, running

from oracled.config import SourceConfig
from oracled.sim.kraken import KrakenSim
from oracled.sources import ConnState, Source
from oracled.sources.hostrests import HostRests
from oracled.sources.kraken import KrakenSource

# What `sim` and `start` build (conftest.py), with the adapter's own rate-limit window: the
# shared suite's shorter one only where a test asks for it by `cls`.
VENUE = replace(CASE["kraken"], cls=None)


class SecondLimitKraken(KrakenSource):
    """Kraken resting 1 s after a rate limit, so that each wording is checked in a second."""

    rest_limit_window_s: ClassVar[float] = 1.0


@pytest.mark.parametrize(
    ("wording", "cls", "window_s"),
    [
        ("EAPI:Rate limit exceeded", None, 5.0),
        ("EGeneral:Too many requests", SecondLimitKraken, 1.0),
        ("EService:Throttled: 1764230400", SecondLimitKraken, 1.0),
    ],
)
async def test_a_rate_limit_error_rests_polls_for_the_window(
    sim: KrakenSim,
    start: Start,
    wait: Wait,
    wording: str,
    cls: type[Source] | None,
    window_s: float,
) -> None:
    """Kraken says a REST rate limit inside HTTP 200 (``{"error":["EAPI:Rate limit exceeded"],
    "result":{}}``) and names no wait; polling on extends the restriction, so polls rest for the
    window: one request, then none in five poll intervals, counted `rest_error` and logged
    `rest rate limited` with the wait; no symbol is blamed; after the window polls go on and
    price. Before, the error was a failed poll like any other and polled again every interval."""
    sim.ws_enabled, sim.rest_status, sim.rate_limit_error = False, 429, wording
    with capture_logs() as logs:
        run = await start(cls=cls)
        await wait(lambda: sim.stats.rest_requests >= 1)
        await asyncio.sleep(0.5)  # five poll intervals
        assert sim.stats.rest_requests == 1
        assert run.stats.dropped["rest_error"] == 1 and run.state() is ConnState.DOWN
        sim.rest_status = None
        await wait(lambda: run.state() is ConnState.POLLING, within_s=window_s + 5.0)
    assert run.stats.failed_instruments == {}
    limited = [e for e in logs if e["event"] == "rest rate limited"]
    assert [(e["status"], e["delay_s"]) for e in limited] == [(429, window_s)]


async def test_rest_unknown_pair_fails_only_that_symbol(
    sim: KrakenSim, start: Start, wait: Wait
) -> None:
    """Kraken's HTTP 200 'Unknown asset pair' spoils the batch; the retry isolates the bad one."""
    sim.ws_enabled = False
    run = await start(pairs=[*VENUE.pairs, VENUE.unknown_pair])
    await wait(lambda: "FOO/USD" in run.stats.failed_instruments)
    assert run.stats.failed_instruments["FOO/USD"] == "EQuery:Unknown asset pair"
    seen = len(run.quotes)
    await wait(lambda: run.pairs(seen) == {"BTC/USD", "ETH/USD"})
    assert run.stats.state is ConnState.POLLING


async def test_the_one_pair_requests_after_an_unknown_pair_are_paced(
    start: Start, wait: Wait
) -> None:
    """After a batch refused for an unknown pair, the base asks for each pair alone; those
    requests go through the adapter's pacer, one a second, as every request does. Against a
    simulator that refuses (``EAPI:Rate limit exceeded``) a fourth request within 2 s, the four
    good pairs and the bad one, asked last, are asked for one by one without a refusal: the bad
    pair is failed alone and the others quoted. Before, the five requests went out at once: the
    fourth was refused, the round ended, and the next round's batch failed again, so the bad
    pair was never reached."""
    prices = {"BTC/USD": 67_000.0, "ETH/USD": 3_500.0, "SOL/USD": 150.0, "LTC/USD": 80.0}
    async with KrakenSim(prices, rate_hz=0.1, rest_limit=(3, 2.0)) as venue:
        venue.ws_enabled = False  # no stream: the source polls
        run = await start(venue, pairs=[*((pair, "spot") for pair in prices), VENUE.unknown_pair])
        await wait(lambda: "FOO/USD" in run.stats.failed_instruments, within_s=15.0)
        assert run.stats.failed_instruments == {"FOO/USD": "EQuery:Unknown asset pair"}
        await wait(lambda: run.pairs() == set(prices))
        assert venue.rest_limited == 0 and run.stats.state is ConnState.POLLING


class QuickKraken(KrakenSource):
    """Kraken paced at 50 requests a second, so that a round of many one-pair answers is checked
    in a moment: the test counts the round's requests, not its seconds."""

    rest_rate_per_s: ClassVar[float | None] = 50.0


async def test_an_unknown_pair_among_many_is_found_by_halving_the_batch(
    start: Start, wait: Wait
) -> None:
    """32 pairs, the last one unknown: the batch is refused, then asked in halves, and a refused
    half halved again, so the bad pair is found alone in 1 + 2 x 5 requests (the halves that
    answer priced as they come), failed, and the next round asks the 31 others in one request.
    Before, the round after the refusal asked each pair alone: 32 requests, at Kraken's one a
    second 32 s, and pairs asked late aged past their markets' limits meanwhile."""
    prices = {f"T{chr(65 + i // 26)}{chr(65 + i % 26)}/USD": 10.0 + i for i in range(31)}
    bad = VENUE.unknown_pair
    async with KrakenSim(prices, rate_hz=0.1) as venue:
        venue.ws_enabled = False  # no stream: the source polls
        pairs = [*((pair, "spot") for pair in prices), bad]
        run = await start(venue, pairs=pairs, cls=QuickKraken)
        await wait(lambda: bad[0] in run.stats.failed_instruments)
        await wait(lambda: run.pairs() == set(prices))
        await wait(lambda: len(venue.rest_asked) >= 12)
    sizes = [len(asked) for asked in venue.rest_asked[:12]]
    assert sizes == [32, 16, 16, 8, 8, 4, 4, 2, 2, 1, 1, 31]
    assert venue.rest_asked[10] == ["FOOUSD"]
    assert "FOOUSD" not in venue.rest_asked[11]
    assert run.stats.failed_instruments == {bad[0]: "EQuery:Unknown asset pair"}
    assert run.stats.dropped["rest_error"] == 6  # the batch and the five halves refused


async def test_two_kraken_sources_polling_one_host_share_its_pacing(
    http: aiohttp.ClientSession, wait: Wait
) -> None:
    """Kraken's public guidance (about one call a second) can only count our IP, no key being
    sent: two Kraken sources polling one host, sharing a `HostRests` as the service's sources
    do, take their turns from one pacer (one a second between them) and stay under a
    simulator that refuses a fourth request within 2 s, both quoted. Before, each had a pacer
    of its own: two a second together, past it."""
    rests = HostRests()
    async with KrakenSim({"BTC/USD": 67_000.0, "ETH/USD": 3_500.0}, rest_limit=(3, 2.0)) as venue:
        venue.ws_enabled = False  # no stream: both sources poll
        async with contextlib.AsyncExitStack() as stack:
            runs = [
                await stack.enter_async_context(
                    running(sid, VENUE.make_config(venue), SPOT_USD, http, host_rests=rests)
                )
                for sid in ("kraken", "kraken")
            ]
            await wait(lambda: venue.stats.rest_requests >= 5, within_s=10.0)
            assert venue.rest_limited == 0
            await wait(lambda: all(len(run.pairs()) == 2 for run in runs))
            assert venue.rest_limited == 0


async def test_a_rate_limit_met_by_one_source_rests_every_kraken_source_of_the_host(
    http: aiohttp.ClientSession, wait: Wait
) -> None:
    """Kraken's public limit can only count our IP, no key being sent. On a simulator past its
    limit (it allows none), a kraken source polls (every 10 s here) and meets
    ``EAPI:Rate limit exceeded`` on its first request, which rests the host for its poll
    interval; a second kraken source on the same host, sharing a `HostRests` as the service's
    sources do, then starts polling: it sends nothing, says so once (`rest host rested`, naming
    the first) and is down, without a refused request of its own. Before, the error rested only
    the source that met it, and the other polled into the limit (a second refusal)."""
    rests = HostRests()
    async with KrakenSim(
        {"BTC/USD": 67_000.0, "ETH/USD": 3_500.0}, rate_hz=0.1, rest_limit=(0, 60.0)
    ) as venue:
        venue.ws_enabled = False  # no stream: the sources poll
        with capture_logs() as logs:
            async with contextlib.AsyncExitStack() as stack:
                cfg = VENUE.make_config(venue, rest_poll_interval_s=10.0)
                met = await stack.enter_async_context(
                    running("kraken_a", cfg, SPOT_USD, http, KrakenSource, host_rests=rests)
                )
                await wait(lambda: venue.rest_limited == 1)
                cfg = VENUE.make_config(venue)
                rested = await stack.enter_async_context(
                    running("kraken_b", cfg, SPOT_USD, http, KrakenSource, host_rests=rests)
                )
                await wait(lambda: any(e["event"] == "rest host rested" for e in logs))
                assert venue.stats.rest_requests == 1 and venue.rest_limited == 1
                assert met.stats.dropped["rest_error"] == 1
                assert rested.stats.dropped["rest_error"] == 0
                assert rested.state() is ConnState.DOWN and met.state() is ConnState.DOWN
    said = [(e["source"], e["by"], e["delay_s"]) for e in logs if e["event"] == "rest host rested"]
    assert len(said) == 1 and said[0][:2] == ("kraken_b", "kraken_a")
    assert 0.0 < said[0][2] <= 10.0  # the poll interval of the source that met it, less since


async def test_an_unreadable_rest_answer_is_counted_as_a_bad_body_not_a_failed_request(
    aiohttp_server: Any, start_config: Any, wait: Wait
) -> None:
    """An HTTP 200 whose body is not Kraken's JSON (a proxy's page, say) carries no error list
    to read: the poll counts the body as undecodable (decode), not as a refused request, and
    fails no symbol; no quote comes of it."""
    polls: list[str] = []

    async def ticker(request: web.Request) -> web.Response:
        polls.append(request.query["pair"])
        return web.Response(text="<html>maintenance</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/0/public/Ticker", ticker)  # and no stream: the source polls
    server = await aiohttp_server(app)
    base = str(server.make_url("")).rstrip("/")
    run = await start_config(
        SourceConfig(
            type="kraken",
            ws_url=base.replace("http://", "ws://"),
            rest_url=base,
            liveness_timeout_s=0.5,
            rest_poll_interval_s=0.05,
            reconnect_max_s=0.1,
        ),
        [("BTC/USD", "spot")],
    )
    await wait(lambda: run.stats.dropped["decode"] >= 2)
    assert polls[0] == "XBTUSD"
    assert run.stats.dropped["rest_error"] == 0
    assert run.stats.failed_instruments == {} and run.quotes == []
