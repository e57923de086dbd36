"""The OKX adapter on its loopback simulator: text pings and pongs, upgrade notices, a lost
subscribe, REST error codes read by their meaning. Shared faults (first connection, a quiet
market on pongs, REST fallback among them): test_stream_faults.py."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from aiohttp import web
from structlog.testing import capture_logs
from venue_cases import CASE, FastPingOkx, RapidPingOkx, Start, Wait, quoting_again

from oracled.sim._base import Client
from oracled.sim.okx import OkxSim
from oracled.sources import ConnState

# What `sim` and `start` build (conftest.py), with the registered adapter's own ping interval: the
# shared suite's faster pinger only where a test asks for it by `cls`.
VENUE = replace(CASE["okx"], cls=None)
PRICES = {"BTC-USDT": 67_000.0, "ETH-USDT": 3_500.0, "BTC-USDT-SWAP": 67_020.0}  # as VENUE's
ALL = {("BTC/USDT", "spot"), ("ETH/USDT", "spot"), ("BTC/USDT", "perp")}


async def test_sends_text_pings_and_reads_pongs(sim: OkxSim, start: Start, wait: Wait) -> None:
    """The client pings with the text ``ping``, paced under the venue's limit; pongs are life."""
    run = await start(cls=FastPingOkx, liveness_timeout_s=2.0)
    await wait(lambda: sim.pings_received >= 3)
    assert run.stats.malformed == 0
    assert sim.stats.rate_limited == 0
    assert sim.stats.connections == 1 and run.stats.reconnects == 0


async def test_pings_keep_a_quiet_connection_the_venue_would_close(
    start: Start, wait: Wait
) -> None:
    """OKX closes a connection with neither data nor a client message for 30 s; the client's
    pings, under that interval, keep a quiet one (books frozen: nothing pushed) open. At the
    registered interval (20 s) against a venue limit shorter than it, the venue cuts the
    connection: the simulator enforces the rule (it answered pings and never cut before)."""
    # A limit well above the pings' 0.3 s, so that a loop held up under load cannot make a
    # gap the venue cuts; the wait runs well past the limit, so the pings did keep it open.
    async with OkxSim(PRICES, idle_timeout_s=2.0) as venue:
        venue.freeze(None)
        run = await start(venue, cls=FastPingOkx, liveness_timeout_s=5.0)  # pings every 0.3 s
        await wait(lambda: venue.pings_received >= 14, within_s=20.0)
        assert venue.idle_cuts == 0 and venue.stats.connections == 1
        assert run.stats.reconnects == 0
    async with OkxSim(PRICES, idle_timeout_s=0.8) as venue:
        venue.freeze(None)
        run = await start(venue, liveness_timeout_s=5.0)  # the registered 20 s interval
        await wait(lambda: venue.idle_cuts >= 1 and run.stats.reconnects >= 1)
        assert venue.pings_received == 0


async def test_upgrade_notice_rotates_without_going_down(
    sim: OkxSim, start: Start, wait: Wait
) -> None:
    """Notice 64008 makes the client reconnect at once; the stream never counts as down."""
    run = await start()
    await wait(lambda: run.state() is ConnState.STREAMING)
    sim.notice()
    await wait(lambda: sim.stats.connections >= 2 and run.stats.reconnects == 1)
    seen = len(run.quotes)
    await wait(lambda: run.keys(seen) == ALL)
    assert sim.stats.rest_requests == 0
    assert run.state() is ConnState.STREAMING


class DeafOkxSim(OkxSim):
    """A venue that loses the first subscribe request it receives (no ack, no error)."""

    lost = 0

    def on_text(self, client: Client, text: str) -> None:
        if text != "ping" and not self.lost:
            self.lost += 1
            return
        super().on_text(client, text)


async def test_unacknowledged_subscription_is_not_kept_alive_by_pongs(
    start: Start, wait: Wait
) -> None:
    """A subscribe the venue never answers is noticed at a pong; the connection is replaced."""
    deaf = DeafOkxSim(PRICES, rate_hz=40.0, message_limit=30)
    async with deaf:
        run = await start(cls=RapidPingOkx, liveness_timeout_s=5.0, ws_url=deaf.ws_url)
        await wait(lambda: run.state() is ConnState.STREAMING)  # on a second connection
        seen = len(run.quotes)
        await wait(lambda: run.keys(seen) == ALL)
        assert deaf.lost == 1
        assert deaf.stats.connections == 2 and run.stats.reconnects == 1


async def test_a_swap_the_tickers_leave_out_stays_silent_through_polls_of_either_type(
    start: Start, wait: Wait
) -> None:
    """The venue stops listing one swap while the source streams: the stream's scan lists it
    silent. The stream then closes and is refused: the source polls, SPOT and SWAP tickers in
    turn, and the SWAP answers leave the swap out. It stays listed (no second warning), judged by
    the SWAP answers alone: the SPOT answers, which list no swap, clear it no more than they
    blame the swap still listed, although at one poll in 0.3 s each type is polled less often
    than the 400 ms limit. Once listed again it leaves the list with one info line, still
    polling. Before, the list was emptied when the stream went down and stayed empty."""
    gone = "ETH-USDT-SWAP"
    prices = {**PRICES, gone: 3_501.0}
    pairs = [*ALL, ("ETH/USDT", "perp")]
    keys = set(pairs)
    listed: set[str] = set()

    def noting(done: bool) -> bool:
        """`done`, with every symbol listed silent on the way kept in `listed`."""
        listed.update(run.stats.silent_instruments)
        return done

    async with OkxSim(prices, rate_hz=40.0) as venue:
        with capture_logs() as logs:
            run = await start(venue, pairs=pairs, rest_poll_interval_s=0.3)
            run.source.silent_after_ms = lambda: dict.fromkeys(keys, 400)
            await wait(lambda: run.state() is ConnState.STREAMING and run.keys() == keys)
            venue.delist(gone)
            await wait(lambda: noting(gone in run.stats.silent_instruments))
            venue.ws_enabled = False
            venue.disconnect()
            await wait(lambda: noting(run.state() is ConnState.POLLING))
            polls = venue.stats.rest_requests
            await wait(lambda: noting(venue.stats.rest_requests >= polls + 6), within_s=10.0)
            assert run.stats.silent_instruments.keys() == {gone}
            assert run.state() is ConnState.POLLING
            venue.relist(gone)
            await wait(lambda: noting(quoting_again(logs)), within_s=10.0)
            assert run.stats.silent_instruments == {} and run.state() is ConnState.POLLING
    assert listed == {gone}
    said = [(e["event"], e["symbols"]) for e in logs if e["event"].startswith("instruments ")]
    assert said == [("instruments silent", [gone]), ("instruments quoting again", [gone])]


async def test_a_type_the_venue_lists_none_of_is_silent_and_keeps_the_source_polling(
    start: Start, wait: Wait
) -> None:
    """With the stream refused, the one swap configured is one the venue does not list: every
    SWAP tickers answer prices nothing of ours while every SPOT answer prices both spots. The
    source polls on (one `source state` line for it, however many polls) and lists the swap
    silent with one warning once its limit has passed. Before, each SWAP answer put the source
    down and the next SPOT answer up again, a pair of state lines per two polls, and the swap
    was never judged."""
    pairs = [("BTC/USDT", "spot"), ("ETH/USDT", "spot"), ("FOO/USDT", "perp")]
    spot = {"BTC-USDT": 67_000.0, "ETH-USDT": 3_500.0}
    async with OkxSim(spot, rate_hz=40.0) as venue:
        venue.ws_enabled = False
        with capture_logs() as logs:
            run = await start(venue, pairs=pairs)
            run.source.silent_after_ms = lambda: dict.fromkeys(pairs, 400)
            await wait(lambda: "FOO-USDT-SWAP" in run.stats.silent_instruments)
            floor = venue.stats.rest_requests + 6  # three of each type
            await wait(lambda: venue.stats.rest_requests >= floor)
            assert run.stats.silent_instruments.keys() == {"FOO-USDT-SWAP"}
            assert run.state() is ConnState.POLLING and run.stats.failed_instruments == {}
    states = [e["state"] for e in logs if e["event"] == "source state"]
    assert states == ["down", "polling"]
    said = [(e["event"], e["symbols"]) for e in logs if e["event"].startswith("instruments ")]
    assert said == [("instruments silent", ["FOO-USDT-SWAP"])]


# Each REST test runs with the coded error under the status the docs give it (`code_status`
# None) and under another one: the adapter reads the code the same way under either.


@pytest.mark.parametrize("code_status", [None, 400])
async def test_an_unknown_instrument_polled_alone_is_marked_failed_once(
    sim: OkxSim, start: Start, wait: Wait, code_status: int | None
) -> None:
    """With the stream refused, a one-instrument source polls ``ticker?instId=``; the venue
    answers 51001 "Instrument ID does not exist" (under HTTP 200, as documented, or 400). The
    instrument is marked failed with the venue's code and message, logged once, and left out
    of later polls, as a refused subscription is. Before, a 200 was counted `venue_error`
    silently and polled again every interval, and a 400 failed it under the raw body."""
    sim.ws_enabled, sim.code_status = False, code_status
    with capture_logs() as logs:
        run = await start(pairs=[("FOO/USDT", "spot")])
        await wait(lambda: "FOO-USDT" in run.stats.failed_instruments)
        await asyncio.sleep(0.5)  # five poll intervals
    assert run.stats.failed_instruments == {"FOO-USDT": "51001: Instrument ID does not exist"}
    assert sim.stats.rest_requests == 1 and run.stats.dropped["rest_error"] == 1
    assert [e["symbol"] for e in logs if e["event"] == "instrument failed"] == ["FOO-USDT"]
    assert run.state() is ConnState.DOWN and run.quotes == []


class RestUnlistedOkxSim(OkxSim):
    """REST answers 51001 for the instruments in `unlisted` while the stream lists them all: a
    REST view of the venue that lags a listing (or a 51001 given in error)."""

    unlisted: frozenset[str] = frozenset()

    async def _ticker(self, request: web.Request) -> web.Response:
        if request.query.get("instId") not in self.unlisted:
            return await super()._ticker(request)
        refused = await self.rest_gate()
        return refused or self._rest_error(200, "51001", "Instrument ID does not exist")


@pytest.mark.parametrize("code_status", [None, 400])
async def test_an_instrument_failed_by_a_rest_51001_recovers_when_the_stream_acks_it(
    start: Start, wait: Wait, code_status: int | None
) -> None:
    """A 51001 on a one-instrument poll (under HTTP 200, as documented, or 400) marks the
    instrument failed, but it is no verdict for good: once the stream is back the instrument is
    subscribed alone, the venue's ack brings it back (``failed_instruments`` empty, one
    `instrument recovered` line) and it streams again. So a REST answer that lags the venue's
    listing cannot shut an instrument out of a stream that serves it."""
    async with RestUnlistedOkxSim(PRICES, rate_hz=40.0) as venue:
        venue.unlisted, venue.code_status = frozenset({"BTC-USDT"}), code_status
        venue.ws_enabled = False
        with capture_logs() as logs:
            run = await start(venue, pairs=[("BTC/USDT", "spot")])
            await wait(lambda: "BTC-USDT" in run.stats.failed_instruments)
            assert run.quotes == [] and run.state() is ConnState.DOWN
            venue.ws_enabled = True
            await wait(lambda: run.state() is ConnState.STREAMING and len(run.quotes) >= 3)
        assert run.stats.failed_instruments == {}
        assert venue.stats.rest_requests == 1  # left out of the polls once failed
        said = [(e["event"], e["symbol"]) for e in logs if e["event"].startswith("instrument")]
        assert said == [("instrument failed", "BTC-USDT"), ("instrument recovered", "BTC-USDT")]


@pytest.mark.parametrize("code_status", [None, 200])
async def test_a_rate_limit_code_rests_polls_for_the_limit_window(
    sim: OkxSim, start: Start, wait: Wait, code_status: int | None
) -> None:
    """50011 "Rate limit reached" (HTTP 429 without a Retry-After, as documented, or inside a
    200) rests polls for the market data limit's 2 s window: one request, then none in five
    poll intervals; no instrument is blamed; once the window is over polls go on and price.
    Before, a 429 naming no wait was polled again every interval, and a 200 was counted
    `venue_error` and polled again as if nothing had been said."""
    sim.ws_enabled, sim.rest_status, sim.code_status = False, 429, code_status
    with capture_logs() as logs:
        run = await start()
        await wait(lambda: sim.stats.rest_requests >= 1)
        await asyncio.sleep(0.5)  # five poll intervals
        assert sim.stats.rest_requests == 1
        assert run.stats.dropped["rest_error"] == 1 and run.state() is ConnState.DOWN
        sim.rest_status = None
        await wait(lambda: run.state() is ConnState.POLLING)
    assert run.stats.failed_instruments == {}
    limited = [e for e in logs if e["event"] == "rest rate limited"]
    assert [(e["status"], e["delay_s"]) for e in limited] == [(429, 2.0)]


@pytest.mark.parametrize("code_status", [None, 200])
async def test_another_error_code_is_a_failed_poll_logged_with_its_code_at_a_bounded_rate(
    sim: OkxSim, start: Start, wait: Wait, code_status: int | None
) -> None:
    """50001 "Service temporarily unavailable" (HTTP 503, as documented, or inside a 200) is a
    failed request: counted `rest_error` each time, the source down, polls at their interval,
    no instrument blamed, and one `rest error` line with the status, code and message however
    many polls it answers (at most one a minute). Before, a 200 was counted `venue_error` and
    said nowhere, and a 503 was logged only in the state change, without the venue's words."""
    sim.ws_enabled, sim.rest_status, sim.code_status = False, 503, code_status
    with capture_logs() as logs:
        run = await start()
        await wait(lambda: run.stats.dropped["rest_error"] >= 4)
    assert run.state() is ConnState.DOWN and run.quotes == []
    assert run.stats.failed_instruments == {} and run.stats.dropped["venue_error"] == 0
    said = [e for e in logs if e["event"] == "rest error"]
    status = code_status or 503
    assert [e["message"] for e in said] == [
        f"HTTP {status}, 50001: Service temporarily unavailable. Try again later"
    ]


class DeepOkxSim(OkxSim):
    """A venue whose REST answers are nested past any JSON decoder's depth."""

    async def _tickers(self, request: web.Request) -> web.Response:
        self.stats.rest_requests += 1
        deep = "[" * 100_000 + "]" * 100_000
        return web.Response(text='{"code":"0","x":' + deep + "}", content_type="application/json")


async def test_a_rest_answer_nested_past_the_decoder_depth_is_a_bad_frame_not_a_crash(
    start: Start, wait: Wait
) -> None:
    """The error-code read of each REST answer meets JSON nested deeper than the decoder goes
    (RecursionError, not DecodeError): the answer goes on to be judged as before, a malformed
    `decode` frame, polls go on, and the source does not crash (`start` fails a test whose
    source crashed)."""
    async with DeepOkxSim(PRICES) as venue:
        venue.ws_enabled = False
        run = await start(venue)
        await wait(lambda: run.stats.dropped["decode"] >= 2)
        assert run.state() is ConnState.DOWN and run.quotes == []


class CountingOkxSim(OkxSim):
    """Counts the two REST endpoints apart: every ticker of a type, and one instrument's."""

    def __init__(self, prices: dict[str, float]) -> None:
        super().__init__(prices)
        self.all_asked = 0
        self.one_asked: list[str] = []

    async def _tickers(self, request: web.Request) -> web.Response:
        self.all_asked += 1
        return await super()._tickers(request)

    async def _ticker(self, request: web.Request) -> web.Response:
        self.one_asked.append(request.query.get("instId", ""))
        return await super()._ticker(request)


async def test_a_refused_poll_of_every_ticker_is_asked_again_symbol_by_symbol(
    start: Start, wait: Wait
) -> None:
    """OKX's request for several instruments (``tickers?instType=SPOT``) names none of them, so
    half of a refused batch is the same request: a 400 on it is asked again instrument by
    instrument (N + 1 requests for N), not halved (2N - 1, most of them the refused request
    again: 3 of 7 for four instruments)."""
    prices = {"BTC-USDT": 67_000.0, "ETH-USDT": 3_500.0, "SOL-USDT": 150.0, "XRP-USDT": 0.5}
    async with CountingOkxSim(prices) as venue:
        venue.ws_enabled, venue.rest_status = False, 400
        pairs = [(symbol.replace("-", "/"), "spot") for symbol in prices]
        run = await start(venue, pairs=pairs)
        await wait(lambda: len(run.stats.failed_instruments) == len(prices))
        await asyncio.sleep(0.5)  # five poll intervals: nothing is left to ask
    assert venue.all_asked == 1
    assert sorted(venue.one_asked) == sorted(prices)
