"""The Pyth Hermes adapter on its loopback Hermes: unknown ids, error events, the 24 h notice,
non-stream answers, the rate limit's minute and its pacing, shared by the sources of a host.
Shared faults (the first stream, keep-alives, REST fallback among them): test_stream_faults.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs
from venue_cases import CASE, PYTH_BTC, PYTH_ETH, Running, Start, Wait, running

from oracled.clock import SystemClock
from oracled.sim.pyth_hermes import PythHermesSim
from oracled.sources import ConnState
from oracled.sources.hostrests import HostRests, rest_host

VENUE = CASE["pyth_hermes"]  # what `sim` and `start` build (conftest.py): the BTC and ETH feeds
BTC, ETH = PYTH_BTC, PYTH_ETH
UNKNOWN = "ab" * 32
PRICES = {BTC: 67_000.0, ETH: 3_500.0}  # what VENUE's simulator starts from
IDS = {"BTC/USD": "0x" + BTC, "ETH/USD": ETH, "FOO/USD": UNKNOWN}
BTC_ONLY: dict[str, Any] = {"pairs": [("BTC/USD", "spot")], "instruments": {"BTC/USD": BTC}}
FIXTURE = (
    Path(__file__).parent.parent / "fixtures" / "pyth_hermes" / "v2_latest_parsed_btc.json"
).read_text()


async def test_unknown_feed_id_fails_alone_without_reconnect_storm(
    sim: PythHermesSim, start: Start, wait: Wait
) -> None:
    """Hermes's 404 for one unknown id fails that id; the stream reopens once with the others."""
    run = await start(pairs=[*VENUE.pairs, ("FOO/USD", "spot")], instruments=IDS)
    await wait(lambda: run.pairs() == {"BTC/USD", "ETH/USD"})
    assert run.stats.failed_instruments[UNKNOWN] == f"Price ids not found: 0x{UNKNOWN}"
    await asyncio.sleep(0.5)
    assert sim.stats.errors_sent == 1 and sim.stats.connections == 1
    assert run.stats.reconnects == 0
    assert run.stats.state is ConnState.STREAMING


async def test_no_valid_feed_id_leaves_the_source_down_without_retrying(
    sim: PythHermesSim, start: Start, wait: Wait
) -> None:
    """When every id is refused there is nothing to stream: down, and no request loop."""
    run = await start(pairs=[("FOO/USD", "spot")], instruments={"FOO/USD": UNKNOWN})
    await wait(lambda: run.stats.state is ConnState.DOWN)
    await asyncio.sleep(0.5)
    assert sim.stats.errors_sent == 1 and sim.stats.connections == 0
    assert sim.stats.rest_requests == 0 and run.stats.reconnects == 0


async def test_hermes_error_events_are_counted_without_reconnecting(
    sim: PythHermesSim, start: Start, wait: Wait
) -> None:
    """``event:error`` (a lagging server) is a venue error: counted, the stream goes on."""
    run = await start()
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    assert sim.error_event("Lagged(3)") == 1
    await wait(lambda: run.stats.dropped["venue_error"] == 1)
    seen = len(run.quotes)
    await wait(lambda: len(run.quotes) > seen + 5)
    assert sim.stats.connections == 1 and run.stats.malformed == 0


async def test_rest_not_found_fails_the_unknown_id_and_polls_the_rest(
    sim: PythHermesSim, start: Start, wait: Wait
) -> None:
    """With the stream refused, a 404 naming one id fails it; the next poll serves the others."""
    sim.ws_enabled = False
    run = await start(pairs=[*VENUE.pairs, ("FOO/USD", "spot")], instruments=IDS)
    await wait(lambda: UNKNOWN in run.stats.failed_instruments)
    await wait(lambda: run.pairs() == {"BTC/USD", "ETH/USD"})
    assert run.stats.state is ConnState.POLLING


async def test_a_rate_limited_poll_waits_the_documented_minute(
    sim: PythHermesSim, start: Start, wait: Wait
) -> None:
    """Hermes answers 429 for the 60 s after a client went over its limit and names no
    Retry-After (docs): after one, no further poll in six poll intervals, the source down and
    no feed blamed. Before, the next poll went out one interval later, into the same ban."""
    sim.ws_enabled, sim.rest_status = False, 429  # no stream: the source polls
    run = await start()
    await wait(lambda: sim.stats.rest_requests >= 1)
    await asyncio.sleep(0.6)  # six poll intervals
    assert sim.stats.rest_requests == 1
    assert run.stats.dropped["rest_error"] == 1 and run.stats.state is ConnState.DOWN
    assert run.stats.failed_instruments == {} and run.quotes == []


async def test_polls_stay_under_the_public_rate_limit(start: Start, wait: Wait) -> None:
    """Hermes answers 429 for 60 s to a client past 30 requests in 10 s. Polls are paced, at
    most 2 at once and then 2 a second (22 in any 10 s), so 120 feeds (three requests a poll)
    polled every 0.1 s stay under a simulator holding a stricter, test-sized limit of 7 in 2 s
    (the pacing's 6 at most), every feed still quoted. Before, the polls went out unpaced, a
    round of three every 0.1 s, and passed the limit in well under a second."""
    feeds = {f"{i:064x}": 100.0 + i for i in range(1, 121)}
    pairs = [(f"F{i}/USD", "spot") for i in range(1, 121)]
    instruments = {pair: feed for (pair, _), feed in zip(pairs, feeds, strict=True)}
    async with PythHermesSim(feeds, rate_hz=0.1, rest_limit=(7, 2.0)) as venue:
        venue.ws_enabled = False  # no stream: the source polls
        run = await start(venue, pairs=pairs, instruments=instruments)
        await wait(lambda: venue.stats.rest_requests >= 8, within_s=10.0)
        assert venue.rest_limited == 0
        await wait(lambda: len(run.pairs()) == 120)


@contextlib.asynccontextmanager
async def _two_sources(
    venue: PythHermesSim, http: aiohttp.ClientSession, feeds: Sequence[Mapping[str, str]]
) -> AsyncIterator[list[Running]]:
    """Two `pyth_hermes` sources, `pyth_a` and `pyth_b`, each with its own pairs -> feed ids,
    polling one Hermes (one REST host) and sharing one `HostRests`, as the service's sources
    do."""
    rests = HostRests()
    async with contextlib.AsyncExitStack() as stack:
        runs = []
        for name, instruments in zip(("pyth_a", "pyth_b"), feeds, strict=True):
            cfg = VENUE.make_config(venue, instruments=dict(instruments))
            pairs = [(pair, "spot") for pair in instruments]
            run = running(name, cfg, pairs, http, host_rests=rests)
            runs.append(await stack.enter_async_context(run))
        yield runs


async def test_a_429_met_by_one_source_rests_every_source_of_the_host(
    http: aiohttp.ClientSession, wait: Wait
) -> None:
    """Hermes's limit counts our IP's requests, whichever source sends them, and answers 429 for
    the next 60 s. Two sources poll one Hermes, which allows one request a minute here: the
    second request, whichever source sends it, meets the 429; the other source then sends
    nothing, says so once (`rest host rested`, naming the first) and is down, without a refused
    request of its own. Before, the 429 rested only the source that met it, and the other polled
    on into the ban at its interval (a second 429, then its own minute)."""
    async with PythHermesSim(PRICES, rate_hz=0.1, rest_limit=(1, 60.0)) as venue:
        venue.ws_enabled = False  # no stream: the sources poll
        with capture_logs() as logs:
            async with _two_sources(venue, http, [{"BTC/USD": BTC}, {"ETH/USD": ETH}]) as runs:
                await wait(lambda: venue.rest_limited == 1)
                await wait(lambda: any(e["event"] == "rest host rested" for e in logs))
                sent = venue.stats.rest_requests
                await asyncio.sleep(0.5)  # five poll intervals
                assert venue.stats.rest_requests == sent and venue.rest_limited == 1
                (met,) = [run for run in runs if run.stats.dropped["rest_error"] == 1]
                (rested,) = [run for run in runs if run is not met]
                assert rested.stats.dropped["rest_error"] == 0
                assert rested.state() is ConnState.DOWN and met.state() is ConnState.DOWN
    said = [(e["source"], e["by"], e["delay_s"]) for e in logs if e["event"] == "rest host rested"]
    assert len(said) == 1 and said[0][:2] == (rested.source.source_id, met.source.source_id)
    assert 30.0 < said[0][2] <= 60.0  # the documented minute, less the moments since


async def test_a_429_on_the_stream_rests_the_host_for_the_stream_and_the_polls(
    http: aiohttp.ClientSession, wait: Wait
) -> None:
    """Hermes's limit counts every request of our IP, stream opens too, and answers 429 for the
    next 60 s. A stream open that meets it rests the host as a poll's 429 does: no poll is sent
    (the host rests for them), and the stream does not open again meanwhile. Before, the 429
    rested nothing: the stream reopened into the ban at its backoff (0.5 s doubling to 0.2 s
    here), and the first poll paid a refused request of its own."""
    async with PythHermesSim(PRICES, rate_hz=0.1, rest_limit=(0, 60.0)) as venue:
        with capture_logs() as logs:
            async with running("pyth_hermes", VENUE.make_config(venue), VENUE.pairs, http) as run:
                await wait(lambda: venue.stream_limited == 1)
                await asyncio.sleep(0.6)  # three reconnect backoffs, six poll intervals
                assert venue.stream_limited == 1 and venue.stats.rest_requests == 0
                assert run.state() is ConnState.DOWN and run.quotes == []
    (limited,) = [e for e in logs if e["event"] == "stream rate limited"]
    assert limited["delay_s"] == 60.0 and limited["error"].startswith("HTTP 429")
    (rested,) = [e for e in logs if e["event"] == "stream host rested"]
    assert rested["by"] == "pyth_hermes" and 30.0 < rested["delay_s"] <= 60.0


async def test_a_stream_waits_out_a_rest_of_its_host_before_opening(
    http: aiohttp.ClientSession, wait: Wait
) -> None:
    """A 429 another source of the host met (a poll's, here written as the service's registry
    holds it) rests the stream's open too: no request until the rest is over, the source down
    and saying once why. Before, the stream opened at once, one more request into the ban."""
    rests = HostRests()
    async with PythHermesSim(PRICES, rate_hz=0.1) as venue:
        host = rest_host(venue.rest_url)
        assert host is not None
        rests.rest(host, SystemClock().monotonic() + 1.0, "pyth_other", "HTTP 429: limited")
        with capture_logs() as logs:
            cfg = VENUE.make_config(venue)
            async with running("pyth_hermes", cfg, VENUE.pairs, http, host_rests=rests) as run:
                await wait(lambda: any(e["event"] == "stream host rested" for e in logs))
                assert venue.stats.connections == 0 and venue.stats.rest_requests == 0
                assert run.state() is ConnState.DOWN
                await wait(lambda: venue.stats.connections == 1)  # opened once it is over
    (rested,) = [e for e in logs if e["event"] == "stream host rested"]
    assert rested["by"] == "pyth_other" and rested["error"] == "HTTP 429: limited"


async def test_sources_of_one_host_share_its_pacing(
    http: aiohttp.ClientSession, wait: Wait
) -> None:
    """The public limit is the IP's, so two sources polling one Hermes take their turns from one
    pacer (2 at once, then 2 a second). 120 feeds in two sources of 60 (two requests a poll
    each), polled every 0.1 s, stay under a test-sized limit of 7 requests in 2 s (the shared
    pacing's 6 at most), and every feed is quoted. Before, each source had a pacer of its own,
    and the two together sent up to 12 in 2 s, past the limit."""
    feeds = [f"{i:064x}" for i in range(1, 121)]
    instruments = {f"F{i}/USD": feed for i, feed in enumerate(feeds, start=1)}
    halves = [dict(list(instruments.items())[:60]), dict(list(instruments.items())[60:])]
    async with PythHermesSim(
        {feed: 100.0 + i for i, feed in enumerate(feeds)}, rate_hz=0.1, rest_limit=(7, 2.0)
    ) as venue:
        venue.ws_enabled = False  # no stream: the sources poll
        async with _two_sources(venue, http, halves) as runs:
            await wait(lambda: venue.stats.rest_requests >= 8, within_s=10.0)
            assert venue.rest_limited == 0
            await wait(lambda: all(len(run.pairs()) == 60 for run in runs))
            assert venue.rest_limited == 0


async def test_hermes_time_limit_notice_is_a_planned_rotation(start: Start, wait: Wait) -> None:
    """Hermes's end-of-stream notice (24 h) reconnects at once: never down, never polling."""
    async with PythHermesSim(PRICES, rate_hz=40.0, max_stream_s=0.3) as short:
        run = await start(short, **BTC_ONLY)
        await wait(lambda: short.stats.connections >= 3)
        assert run.stats.reconnects >= 2
        assert short.stats.rest_requests == 0 and run.stats.malformed == 0
        await wait(lambda: run.stats.state is ConnState.STREAMING)


async def test_a_non_stream_answer_is_a_failed_connection(start: Start, wait: Wait) -> None:
    """A 200 that is not text/event-stream (e.g. a proxy's page) is refused and retried."""
    hits: list[str] = []

    async def page(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="<html>maintenance</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/v2/updates/price/stream", page)
    async with TestServer(app, host="127.0.0.1") as server:
        url = str(server.make_url("")).rstrip("/")
        with capture_logs() as logs:
            run = await start(ws_url=url, rest_url=url, **BTC_ONLY)
            await wait(lambda: len(hits) >= 3)
        assert run.stats.reconnects >= 2 and run.quotes == [] and run.stats.frames == 0
        assert run.stats.state is ConnState.DOWN
        down = [e for e in logs if e.get("state") == "down" and "reason" in e]
        assert down[0]["reason"] == "not an event stream (text/html)"


async def test_an_endless_line_is_cut_and_unknown_events_are_counted(
    start: Start, wait: Wait
) -> None:
    """A stream whose line never ends (not Hermes: a broken proxy, say) would grow the buffer
    without bound: past 4 MiB it is counted as line_too_long and the connection replaced. An
    event type Hermes does not send is counted and skipped. The next connection streams as
    usual."""
    update = json.dumps({"parsed": [json.loads(FIXTURE)["parsed"][0]]}, separators=(",", ":"))
    served: list[int] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        n = len(served)
        served.append(n)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if n == 0:
            await resp.write(b"event:price_feed\ndata:{}\n\n")
            await resp.write(b"data:")
            chunk = b"7" * 65_536
            for _ in range(5 * 1024 * 1024 // len(chunk)):
                await resp.write(chunk)
        else:
            await resp.write(f"data:{update}\n\n".encode())
            await asyncio.sleep(3600)  # hold the stream until the client leaves
        return resp

    app = web.Application()
    app.router.add_get("/v2/updates/price/stream", stream)
    async with TestServer(app, host="127.0.0.1") as server:
        url = str(server.make_url("")).rstrip("/")
        with capture_logs() as logs:
            run = await start(ws_url=url, rest_url=url, **BTC_ONLY)
            await wait(lambda: run.stats.state is ConnState.STREAMING)
        assert served == [0, 1] and run.stats.reconnects == 1
        assert run.stats.dropped["unknown_event"] == run.stats.dropped["line_too_long"] == 1
        down = [e for e in logs if e.get("state") == "down" and "reason" in e]
        assert [e["reason"] for e in down] == ["line too long"]
        assert [(q.pair, q.venue_ts) for q in run.quotes] == [("BTC/USD", 1_708_363_256_000)]


async def test_an_event_that_never_ends_is_cut_and_counted(start: Start, wait: Wait) -> None:
    """Short ``data:`` lines with never the blank line that ends the event (a broken proxy, a
    hostile server) would pile up in the parser without bound, each line looking like life to
    the watchdog: past 4 MiB of pending data the event is counted as event_too_long and the
    connection replaced; the next one streams as usual. Before, the data grew until memory ran
    out (found streaming such lines at a source: 5 MiB buffered, then more, never cut)."""
    update = json.dumps({"parsed": [json.loads(FIXTURE)["parsed"][0]]}, separators=(",", ":"))
    served: list[int] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        n = len(served)
        served.append(n)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if n == 0:
            chunk = b"data:7777777\n" * 5_000
            with contextlib.suppress(ConnectionError, RuntimeError):  # the client hung up
                for _ in range(16 * 1024 * 1024 // len(chunk)):  # 10 MB of data, no event
                    await resp.write(chunk)
            return resp
        await resp.write(f"data:{update}\n\n".encode())
        await asyncio.sleep(3600)  # hold the stream until the client leaves
        return resp

    app = web.Application()
    app.router.add_get("/v2/updates/price/stream", stream)
    async with TestServer(app, host="127.0.0.1") as server:
        url = str(server.make_url("")).rstrip("/")
        with capture_logs() as logs:
            run = await start(ws_url=url, rest_url=url, **BTC_ONLY)
            await wait(lambda: run.stats.state is ConnState.STREAMING)
        assert served == [0, 1] and run.stats.reconnects == 1
        assert run.stats.dropped["event_too_long"] == 1 and "line_too_long" not in run.stats.dropped
        down = [e for e in logs if e.get("state") == "down" and "reason" in e]
        assert [e["reason"] for e in down] == ["event too long"]
        assert [(q.pair, q.venue_ts) for q in run.quotes] == [("BTC/USD", 1_708_363_256_000)]


async def test_a_stream_redirected_to_another_host_is_a_failed_connection(
    start: Start, wait: Wait
) -> None:
    """The event stream's request answered 302 to a host the config does not name, which
    streams an update: the redirect is not followed, each attempt is a failed connection
    naming the status (`HTTP 302`), and the other host is never asked. Before, aiohttp
    followed it (its default) and the source quoted the other host's updates."""
    update = json.dumps({"parsed": [json.loads(FIXTURE)["parsed"][0]]}, separators=(",", ":"))
    hits: list[str] = []
    elsewhere_hits: list[str] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        elsewhere_hits.append(request.path)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(f"data:{update}\n\n".encode())
        await asyncio.sleep(3600)  # hold the stream until the client leaves
        return resp

    other = web.Application()
    other.router.add_get("/v2/updates/price/stream", stream)
    async with TestServer(other, host="127.0.0.1") as elsewhere:
        target = str(elsewhere.make_url("/v2/updates/price/stream"))

        async def moved(request: web.Request) -> web.Response:
            hits.append(request.path)
            raise web.HTTPFound(f"{target}?{request.query_string}")

        app = web.Application()
        app.router.add_get("/v2/updates/price/stream", moved)
        async with TestServer(app, host="127.0.0.1") as server:
            url = str(server.make_url("")).rstrip("/")
            with capture_logs() as logs:
                run = await start(ws_url=url, rest_url=url, **BTC_ONLY)
                await wait(lambda: len(hits) >= 3)
            assert run.quotes == [] and elsewhere_hits == []
            down = [e for e in logs if e.get("state") == "down" and "reason" in e]
            assert down[0]["reason"].startswith("HTTP 302"), down[0]
