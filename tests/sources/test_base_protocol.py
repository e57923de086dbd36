"""Protocol edge cases of the base, each against a tiny scripted WebSocket server on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from structlog.testing import capture_logs

from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sources import BinanceSource, ConnState
from oracled.sources._base import MAX_REST_BODY, VENUE_TEXT_KEPT
from oracled.sources.binance_usdm import BinanceUsdmSource

Handler = Callable[[web.WebSocketResponse, int], Awaitable[None]]
PAIRS: list[tuple[str, Kind]] = [("BTC/USDT", "spot"), ("ETH/USDT", "spot")]
BOOK = (
    '{{"stream":"{lower}@bookTicker","data":{{"u":1,"s":"{sym}","b":"100.00000000",'
    '"B":"1.00000000","a":"100.10000000","A":"1.00000000"}}}}'
)
# The book moved: a new connection's first quote repeating the last book would be dropped.
MOVED = BOOK.replace('"b":"100.00000000"', '"b":"100.05000000"')


class SnapshotBinance(BinanceSource):
    """Binance's wire on a venue that answers each subscription with the book, as the scripts
    of the first-quote filter's tests do (real Binance pushes changes only)."""

    snapshot_on_subscribe = True


class SnapshotBinanceUsdm(BinanceUsdmSource):
    """Binance USD-M's wire on a venue that answers each subscription with the book."""

    snapshot_on_subscribe = True


class Venue:
    """A scripted venue: `handler(ws, n)` runs for the n-th connection (0-based)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.refuse = False
        self.rest_requests = 0
        self.rest_status = 200  # what every REST request is answered with
        self.rest_asked: list[list[str]] = []  # the symbols of each REST request, in order
        self.rest_rows: list[dict[str, str]] = []  # the body of a successful answer
        self.rest_text: str | None = None  # set: a successful answer's body instead of the rows
        self.retry_after: str | None = None  # the Retry-After header of a failing answer
        self.rest_held: asyncio.Event | None = None  # set: REST answers wait until it is set
        self.rest_answered = 0
        self.rest_endless = False  # set: a 200 whose chunked body never ends
        self.rest_sent = 0  # bytes of endless bodies the client took before hanging up

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/stream", self._ws)
        app.router.add_get("/public/stream", self._ws)  # Binance USD-M's book tickers
        app.router.add_get("/api/v3/ticker/bookTicker", self._rest)
        return app

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if self.refuse:
            self.connections += 1
            return web.Response(status=404)
        ws = web.WebSocketResponse(autoping=False, timeout=0.5)
        await ws.prepare(request)
        n = self.connections
        self.connections += 1
        await self.handler(ws, n)
        return ws

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        self.rest_requests += 1
        self.rest_asked.append(json.loads(request.query["symbols"]))
        if self.rest_held is not None:
            await self.rest_held.wait()
        self.rest_answered += 1
        if self.rest_status != 200:
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else None
            body = {"code": -1, "msg": "refused"}
            return web.json_response(body, status=self.rest_status, headers=headers)
        if self.rest_text is not None:
            return web.Response(text=self.rest_text, content_type="text/html")
        if self.rest_endless:
            return await self._endless(request)
        return web.json_response(self.rest_rows)

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        """A JSON array that never closes, written as fast as the client takes it."""
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        await resp.prepare(request)
        row = b'{"symbol":"BTCUSDT","bidPrice":"1","bidQty":"1","askPrice":"1","askQty":"1"},'
        chunk = b"[" + row * (65_536 // len(row))
        try:
            while True:
                await resp.write(chunk)
                self.rest_sent += len(chunk)
        except (ConnectionError, RuntimeError):
            return resp  # the client hung up


async def next_request(ws: web.WebSocketResponse) -> dict[str, Any]:
    """The next SUBSCRIBE (or other text message) from the client."""
    while True:
        msg = await ws.receive()
        if msg.type is WSMsgType.TEXT:
            req: dict[str, Any] = json.loads(msg.data)
            return req
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
            raise ConnectionError("client went away")


async def requests_of(ws: web.WebSocketResponse) -> AsyncIterator[dict[str, Any]]:
    """The client's requests on this connection, until it goes away."""
    while True:
        try:
            yield await next_request(ws)
        except ConnectionError:
            return


async def hold(ws: web.WebSocketResponse) -> None:
    """Keep the connection open, reading whatever comes, until the client leaves."""
    async for _ in ws:
        pass


async def hold_script(ws: web.WebSocketResponse, n: int) -> None:
    """A venue that only holds each connection open."""
    await hold(ws)


def heard_quotes(source: BinanceSource) -> dict[str, Quote]:
    """Each symbol's newest quote handed on, as the silent scan reads it (without its stamp)."""
    return {symbol: quote for symbol, (quote, _) in source._heard.items()}


async def launch(
    venue: Venue,
    aiohttp_server: Any,
    start: Callable[..., Any],
    cls: type[BinanceSource] | None = None,
    **overrides: Any,
) -> Any:
    """The Binance adapter (or `cls`) on `venue`, with test-sized timings and `overrides`."""
    server = await aiohttp_server(venue.app())
    base = str(server.make_url("")).rstrip("/")
    values: dict[str, Any] = {
        "type": "binance",
        "ws_url": base.replace("http://", "ws://"),
        "rest_url": base,
        "liveness_timeout_s": 0.5,
        "rest_poll_interval_s": 0.1,
        "reconnect_max_s": 0.2,
    }
    values.update(overrides)
    return await start(SourceConfig(**values), PAIRS, cls)


async def test_pong_echoes_the_ping_payload(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """The adapter answers a venue ping with a pong carrying the same bytes, as Binance requires."""
    echoed: list[bytes] = []

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        req = await next_request(ws)
        await ws.send_str(json.dumps({"result": None, "id": req["id"]}))
        await ws.ping(b"venue-1795")
        async for msg in ws:
            if msg.type is WSMsgType.PONG:
                echoed.append(msg.data)  # noqa: PERF401 (must fill while the socket is open)

    await launch(Venue(script), aiohttp_server, start_config, liveness_timeout_s=5.0)
    await wait(lambda: echoed == [b"venue-1795"])


async def test_a_venue_s_words_are_kept_and_logged_to_a_bound_however_long(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """A venue refuses ETHUSDT with a 1 MB message, then sends 40 error frames naming no
    request, each with 100 KB of words of its own. The source keeps (and the API serves, as
    `refused`) the first VENUE_TEXT_KEPT characters of the refusal and logs no more than that
    of either; the other frames are counted, one line said. Before, the whole message was kept
    for as long as the instrument stayed refused, and each line carried all of it."""
    huge = "x" * 1_000_000

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        async for req in requests_of(ws):
            if req["params"] == ["btcusdt@bookTicker"]:
                await ws.send_str(json.dumps({"result": None, "id": req["id"]}))
                await ws.send_str(BOOK.format(lower="btcusdt", sym="BTCUSDT"))
            elif req["params"] == ["ethusdt@bookTicker"]:
                await ws.send_str(json.dumps({"code": 2, "msg": huge, "id": req["id"]}))
                for k in range(40):
                    said = f"{k} " + "y" * 100_000
                    await ws.send_str(json.dumps({"code": 3, "msg": said, "id": 999_999}))
            else:
                await ws.send_str(json.dumps({"code": 2, "msg": "batch refused", "id": req["id"]}))

    with capture_logs() as logs:
        run = await launch(Venue(script), aiohttp_server, start_config, liveness_timeout_s=5.0)
        await wait(lambda: run.stats.dropped["venue_error"] == 40)
    assert run.stats.failed_instruments == {"ETHUSDT": f"2: {huge}"[:VENUE_TEXT_KEPT]}
    failed = [e for e in logs if e["event"] == "instrument failed"]
    errors = [e for e in logs if e["event"] == "venue error"]
    assert [len(e["message"]) for e in failed] == [VENUE_TEXT_KEPT]
    assert len(errors) == 1 and len(errors[0]["message"]) <= VENUE_TEXT_KEPT


async def test_flat_error_frames_isolate_the_bad_symbol(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """The docs' flat error shape refuses a batch; per-symbol retries fail only ETHUSDT."""
    requests: list[list[str]] = []

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        async for req in requests_of(ws):
            requests.append(req["params"])
            if req["params"] == ["btcusdt@bookTicker"]:
                await ws.send_str(json.dumps({"result": None, "id": req["id"]}))
                await ws.send_str(BOOK.format(lower="btcusdt", sym="BTCUSDT"))
            else:
                bad = {"code": 2, "msg": "Invalid request: invalid stream", "id": req["id"]}
                await ws.send_str(json.dumps(bad))

    venue = Venue(script)
    run = await launch(venue, aiohttp_server, start_config, liveness_timeout_s=5.0)
    await wait(lambda: "ETHUSDT" in run.stats.failed_instruments)
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    assert run.stats.failed_instruments == {"ETHUSDT": "2: Invalid request: invalid stream"}
    assert requests == [
        ["btcusdt@bookTicker", "ethusdt@bookTicker"],
        ["btcusdt@bookTicker"],
        ["ethusdt@bookTicker"],
    ]
    assert venue.connections == 1 and run.stats.reconnects == 0


@pytest.mark.parametrize(
    "notice",
    [
        '{"e":"serverShutdown","E":1795660000000}',
        '{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1795660000000}}',
        '{"event":{"e":"serverShutdown","E":1795660000000}}',
    ],
    ids=["bare", "combined", "event_envelope"],
)
async def test_server_shutdown_event_rotates_without_going_down(
    aiohttp_server: Any, start_config: Any, wait: Any, notice: str
) -> None:
    """A serverShutdown notice makes the adapter reconnect at once; REST polling never starts.
    The streams page shows no frame of it, so each shape Binance uses for it is read: bare, in a
    combined stream's data, and in the WebSocket API's `event` envelope (its documented form,
    counted as a malformed frame and ignored before)."""

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        req = await next_request(ws)
        await ws.send_str(json.dumps({"result": None, "id": req["id"]}))
        await ws.send_str((MOVED if n else BOOK).format(lower="btcusdt", sym="BTCUSDT"))
        if n == 0:
            await ws.send_str(notice)
        await hold(ws)

    venue = Venue(script)
    run = await launch(venue, aiohttp_server, start_config, liveness_timeout_s=5.0)
    await wait(lambda: venue.connections == 2 and run.stats.reconnects == 1)
    await wait(lambda: run.stats.quotes >= 2)
    assert run.stats.state is ConnState.STREAMING
    assert venue.rest_requests == 0
    assert run.stats.malformed == 0


async def test_a_rotations_first_quote_repeating_the_last_book_is_dropped_and_the_filter_ends(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """A planned rotation (serverShutdown): the new connection's first BTC quote repeats the book
    the old one last quoted and is dropped as `unchanged`, leaving no trace (quote count, the
    source's newest quote time, BTC's newest quote, which its silence counts from); the source
    never goes down. ETH never quotes on the new connection, so the filter waits for it, but only
    for one liveness period: then quotes go straight to the emitter again, on a connection kept
    alive by BTC's later books, which are quoted. Before, the repeated book was quoted with a
    fresh receipt time."""

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        req = await next_request(ws)
        await ws.send_str(json.dumps({"result": None, "id": req["id"]}))
        await ws.send_str(BOOK.format(lower="btcusdt", sym="BTCUSDT"))
        if n == 0:
            await ws.send_str(BOOK.format(lower="ethusdt", sym="ETHUSDT"))
            await ws.send_str('{"e":"serverShutdown","E":1795660000000}')
            await hold(ws)
            return
        await asyncio.sleep(0.3)
        while not ws.closed:  # BTC moves on; ETH stays silent
            await ws.send_str(MOVED.format(lower="btcusdt", sym="BTCUSDT"))
            await asyncio.sleep(0.1)

    venue = Venue(script)
    run = await launch(
        venue, aiohttp_server, start_config, liveness_timeout_s=1.0, cls=SnapshotBinance
    )
    src = run.source
    await wait(lambda: run.stats.dropped["unchanged"] == 1)
    btc, eth = run.quotes
    assert run.stats.quotes == 2 and run.stats.last_quote_ms == eth.recv_ts
    assert heard_quotes(src) == {"BTCUSDT": btc, "ETHUSDT": eth}
    assert src._emit is not src._sink and not src._direct  # ETH has not quoted yet
    assert run.stats.state is ConnState.STREAMING and run.stats.reconnects == 1
    await wait(lambda: src._emit is src._sink)  # one liveness period after the connection opened
    assert src._direct and venue.connections == 2
    await wait(lambda: len(run.quotes) >= 4)
    assert {(q.pair, q.bid) for q in run.quotes[2:]} == {("BTC/USDT", 100.05)}
    assert run.stats.quotes == len(run.quotes) and venue.rest_requests == 0


async def test_a_rotations_first_push_repeating_the_last_prices_is_quoted_on_a_changes_only_venue(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """Binance sends no snapshot on subscribing, only changes: after a planned rotation
    (serverShutdown), the new connection's first BTC push has the bid and ask the old one last
    quoted, with another size. It is a new event (the sizes changed just now) and is quoted, its
    receipt the source's and BTC's newest; nothing is dropped as `unchanged`, and no first-quote
    filter ever stands in front of the emitter. Before, the filter ran on every venue and dropped
    it, holding BTC's freshness back until its next change."""
    sized = BOOK.replace('"B":"1.00000000"', '"B":"2.50000000"')  # a size-only change

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        req = await next_request(ws)
        await ws.send_str(json.dumps({"result": None, "id": req["id"]}))
        if n == 0:
            await ws.send_str(BOOK.format(lower="btcusdt", sym="BTCUSDT"))
            await ws.send_str(BOOK.format(lower="ethusdt", sym="ETHUSDT"))
            await ws.send_str('{"e":"serverShutdown","E":1795660000000}')
        else:
            await ws.send_str(sized.format(lower="btcusdt", sym="BTCUSDT"))
        await hold(ws)

    venue = Venue(script)
    run = await launch(venue, aiohttp_server, start_config, liveness_timeout_s=5.0)
    src = run.source
    await wait(lambda: len(run.quotes) == 3)
    btc, eth, again = run.quotes
    assert (again.pair, again.bid, again.ask) == (btc.pair, btc.bid, btc.ask)
    assert again.recv_ts >= eth.recv_ts and run.stats.last_quote_ms == again.recv_ts
    assert heard_quotes(src) == {"BTCUSDT": again, "ETHUSDT": eth}
    assert run.stats.dropped["unchanged"] == 0 and run.stats.quotes == 3
    assert src._emit is src._sink and src._direct  # ETH never quoted again: no filter waits
    assert venue.connections == 2 and run.stats.reconnects == 1
    assert run.stats.state is ConnState.STREAMING and venue.rest_requests == 0


async def test_a_dropped_first_quote_older_than_the_top_latency_bucket_leaves_the_histogram(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """A first quote on a new connection that repeats the last book and carries a venue time
    more than the top latency bound (10 s) old (a snapshot stamped with the book's last change,
    the book having moved and moved back while the source was away) is dropped as `unchanged`
    and leaves the latency histogram exactly as it was: its count is taken back from the +Inf
    bucket it was counted in. Before, the restore took it from the 10 s bucket, which went to
    -1 while +Inf kept the dropped quote (found reading the restore against
    SourceStats.observe_latency)."""
    book = (
        '{{"stream":"btcusdt@bookTicker","data":{{"e":"bookTicker","u":{u},"E":{e},'
        '"s":"BTCUSDT","b":"100.0","B":"1","a":"100.1","A":"1"}}}}'
    )

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        req = await next_request(ws)
        await ws.send_str(json.dumps({"result": None, "id": req["id"]}))
        now_ms = int(time.time() * 1000)
        await ws.send_str(book.format(u=10 + n, e=now_ms - 30_000 + 10_000 * n))
        if n == 0:
            await ws.send_str('{"e":"serverShutdown","E":1795660000000}')
        await hold(ws)

    venue = Venue(script)
    server = await aiohttp_server(venue.app())
    base = str(server.make_url("")).rstrip("/")
    cfg = SourceConfig(
        type="binance_usdm",
        ws_url=base.replace("http://", "ws://"),
        rest_url=base,
        liveness_timeout_s=5.0,
        rest_poll_interval_s=0.1,
        reconnect_max_s=0.2,
    )
    run = await start_config(cfg, [("BTC/USDT", "perp")], cls=SnapshotBinanceUsdm)
    await wait(lambda: run.stats.dropped["unchanged"] == 1)
    assert venue.connections == 2 and len(run.quotes) == 1 and run.stats.quotes == 1
    latency = run.quotes[0].recv_ts - (run.quotes[0].venue_ts or 0)
    assert latency > 10_000
    assert run.stats.latency_buckets == [0] * 11 + [1]  # the first quote alone, in +Inf
    assert run.stats.latency_sum_ms == latency and run.stats.latency_ahead == 0


async def test_venue_close_frame_leads_to_a_reconnect(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """A clean close from the venue (e.g. the 24 h limit) is followed by a new connection, and
    the log says the venue closed it, with its code."""

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        req = await next_request(ws)
        await ws.send_str(json.dumps({"result": None, "id": req["id"]}))
        await ws.send_str((MOVED if n else BOOK).format(lower="btcusdt", sym="BTCUSDT"))
        if n == 0:
            await ws.close(code=1001, message=b"going away")
            return
        await hold(ws)

    venue = Venue(script)
    with capture_logs() as logs:
        run = await launch(venue, aiohttp_server, start_config, liveness_timeout_s=5.0)
        await wait(lambda: venue.connections == 2 and run.stats.quotes >= 2)
    assert run.stats.reconnects == 1
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    reasons = {e["reason"] for e in logs if "reason" in e}
    assert "closed by venue (1001)" in reasons, reasons


async def test_refused_handshakes_are_retried_with_backoff_not_in_a_hot_loop(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """A venue refusing every handshake sees bounded retries, not a reconnect storm."""

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await hold(ws)

    venue = Venue(script)
    venue.refuse = True
    run = await launch(venue, aiohttp_server, start_config, reconnect_max_s=0.2)
    await asyncio.sleep(1.0)
    # Full jitter capped at 0.2 s averages 0.1 s a wait: about ten tries a second, never hundreds.
    assert 3 <= venue.connections <= 40
    # The source counts a reconnect as the attempt starts, the venue when its handshake arrives:
    # between the two the newest attempt is in flight, so read them again while the source
    # waits out a backoff, where they must agree (a flaky CI run compared them mid-attempt).
    assert venue.connections - 1 <= run.stats.reconnects <= venue.connections
    await wait(lambda: run.stats.reconnects == venue.connections - 1)
    assert run.stats.state in (ConnState.DOWN, ConnState.POLLING)


async def test_ack_never_arriving_leaves_symbols_pending_not_failed(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """Data without an ack still streams; a missing ack alone does not fail an instrument."""

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await next_request(ws)
        await ws.send_str(BOOK.format(lower="ethusdt", sym="ETHUSDT"))
        await hold(ws)

    run = await launch(Venue(script), aiohttp_server, start_config, liveness_timeout_s=5.0)
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    assert run.stats.failed_instruments == {}
    assert run.quotes[0].pair == "ETH/USDT"


async def test_rate_limited_rest_batch_is_never_split(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """A rate limit (429, or Binance's 418 ban) on a poll of every symbol is not a refused batch:
    it is never retried symbol by symbol, which would multiply requests into the limit, and it
    fails no symbol; a 400 for the same batch is split (the log tells the two apart)."""
    venue = Venue(hold_script)
    venue.refuse = True  # no stream: the source polls
    both = ["BTCUSDT", "ETHUSDT"]
    run = await launch(venue, aiohttp_server, start_config)
    for status in (429, 418):
        venue.rest_status, asked = status, len(venue.rest_asked)
        await wait(lambda floor=asked + 4: len(venue.rest_asked) >= floor)
        assert venue.rest_asked[asked + 1 :] == [both] * len(venue.rest_asked[asked + 1 :])
        assert run.stats.failed_instruments == {}
        assert run.stats.state is ConnState.DOWN
    venue.rest_status, asked = 400, len(venue.rest_asked)
    await wait(lambda: ["BTCUSDT"] in venue.rest_asked[asked:])
    # ETHUSDT is asked alone once BTCUSDT's answer is read: it may not have gone out yet.
    await wait(lambda: ["ETHUSDT"] in venue.rest_asked[asked:])


async def test_a_rate_limit_answer_is_obeyed_for_as_long_as_it_says(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """A 429 or a 418 (Binance's ban) with Retry-After: no further request until that many
    seconds have passed, though polls are due every 0.1 s: the venue's docs make backing off the
    client's duty, and polling on through a ban lengthens it. Before, polling went on at its
    interval (found by reading Binance's rate-limit rules against the poll loop)."""
    venue = Venue(hold_script)
    venue.refuse = True  # no stream: the source polls
    for status in (429, 418):
        venue.rest_status, venue.retry_after = status, "30"
        asked = venue.rest_requests
        run = await launch(venue, aiohttp_server, start_config)
        await wait(lambda floor=asked + 1: venue.rest_requests >= floor)
        await asyncio.sleep(0.6)  # six poll intervals
        assert venue.rest_requests == asked + 1, status
        assert run.stats.dropped["rest_error"] == 1 and run.stats.state is ConnState.DOWN


@pytest.mark.parametrize("text", ["inf", "nan", "-5", "1e9", "1e400", "1.5", "+5", "1_000", "١٢٣"])
async def test_a_retry_after_that_is_no_count_of_seconds_names_no_wait(
    aiohttp_server: Any, start_config: Any, wait: Any, text: str
) -> None:
    """A 429 whose Retry-After is not delay-seconds (RFC 9110: ASCII digits) names no wait:
    the poller keeps its default (the next poll at its interval: three polls come), records no
    wait, and logs the text once as `header refused` (then at most a line a minute). Before,
    float() read "inf", "1e9" and "1e400" as a 3-day ban, "1_000" and "١٢٣" as that many
    seconds, "+5" and "1.5" as 5 and 1.5 s, and "nan" and "-5" passed without a word."""
    venue = Venue(hold_script)
    venue.refuse = True  # no stream: the source polls
    venue.rest_status, venue.retry_after = 429, text
    with capture_logs() as logs:
        run = await launch(venue, aiohttp_server, start_config)
        await wait(lambda: venue.rest_requests >= 3)
    assert run.source._retry_after_s == 0.0
    refused = [(e["header"], e["text"]) for e in logs if e["event"] == "header refused"]
    assert refused == [("Retry-After", repr(text))]
    assert [e for e in logs if e["event"] == "rest rate limited"] == []


async def test_rest_answers_without_a_quote_leave_the_source_down_not_polling(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """An HTTP 200 that gives no quote (a proxy's HTML page, an empty body, a list without our
    symbols) is no working fallback: the source stays down (oracled_source_up 0) with the body
    counted, instead of claiming to poll; the first answer with quotes makes it polling, and
    answers without a quote put it down again. Before, any 200 meant polling (found by
    pointing a source at a REST server that answered a maintenance page)."""
    venue = Venue(hold_script)
    venue.refuse = True  # no stream: the source polls
    venue.rest_text = "<html>maintenance</html>"
    run = await launch(venue, aiohttp_server, start_config)
    for text in ("<html>maintenance</html>", "", "[]"):
        venue.rest_text, answered = text, venue.rest_answered
        await wait(lambda floor=answered + 3: venue.rest_answered >= floor)
        assert run.stats.state is ConnState.DOWN and run.quotes == []
    assert run.stats.dropped == {"decode": run.stats.malformed}
    venue.rest_text = None
    venue.rest_rows = [
        {"symbol": s, "bidPrice": "50.0", "bidQty": "1", "askPrice": "50.1", "askQty": "1"}
        for s in ("BTCUSDT", "ETHUSDT")
    ]
    await wait(lambda: run.stats.state is ConnState.POLLING)
    venue.rest_text = "<html>maintenance</html>"
    await wait(lambda: run.stats.state is ConnState.DOWN)


async def test_rest_answer_landing_after_the_stream_is_back_is_not_quoted(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """A poll sent while the stream was down, answered only once the stream is back, is older
    than the streamed prices: it is not quoted and does not put the source back to polling."""

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        req = await next_request(ws)
        await ws.send_str(json.dumps({"result": None, "id": req["id"]}))
        await ws.send_str(BOOK.format(lower="btcusdt", sym="BTCUSDT"))
        await hold(ws)

    venue = Venue(script)
    venue.refuse, venue.rest_held = True, asyncio.Event()
    venue.rest_rows = [
        {"symbol": s, "bidPrice": "50.0", "bidQty": "1", "askPrice": "50.1", "askQty": "1"}
        for s in ("BTCUSDT", "ETHUSDT")
    ]
    run = await launch(venue, aiohttp_server, start_config, liveness_timeout_s=5.0)
    await wait(lambda: venue.rest_requests == 1)  # the poll is out, its answer held
    venue.refuse = False
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    venue.rest_held.set()
    await wait(lambda: venue.rest_answered == 1)
    await asyncio.sleep(0.3)  # the held answer lands; no further poll goes out
    assert [(q.pair, q.bid) for q in run.quotes] == [("BTC/USDT", 100.0)]
    assert run.stats.state is ConnState.STREAMING
    assert venue.rest_requests == 1


async def test_a_failed_symbol_is_asked_for_alone_on_the_next_connection(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """After a symbol failed, a new connection asks for the healthy symbols in one batch and
    for the failed one alone, so that it cannot spoil the batch (the venue refuses a whole
    batch for one bad stream) and the healthy ones are never asked for one by one."""
    eth, btc = "ethusdt@bookTicker", "btcusdt@bookTicker"
    requests: list[list[list[str]]] = [[], []]  # per connection

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        async for req in requests_of(ws):
            requests[min(n, 1)].append(req["params"])
            if eth in req["params"]:
                bad = {"code": 2, "msg": "Invalid request: invalid stream", "id": req["id"]}
                await ws.send_str(json.dumps(bad))
                if n == 0 and req["params"] == [eth]:
                    await ws.close(code=1001, message=b"going away")
                    return
            else:
                await ws.send_str(json.dumps({"result": None, "id": req["id"]}))
                await ws.send_str(BOOK.format(lower="btcusdt", sym="BTCUSDT"))

    venue = Venue(script)
    run = await launch(venue, aiohttp_server, start_config, liveness_timeout_s=5.0)
    await wait(lambda: len(requests[1]) >= 2)
    assert requests[0] == [[btc, eth], [btc], [eth]]
    assert requests[1] == [[btc], [eth]]
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    assert run.stats.failed_instruments == {"ETHUSDT": "2: Invalid request: invalid stream"}


async def test_an_unsolicited_pong_is_life_not_a_frame_nor_a_close(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """A venue may send a pong nobody asked for (RFC 6455 allows it as a heartbeat): it is not
    a data frame and, unlike a close, does not end the connection; quotes go on on the same
    socket."""

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        req = await next_request(ws)
        await ws.send_str(json.dumps({"result": None, "id": req["id"]}))
        await ws.send_str(BOOK.format(lower="btcusdt", sym="BTCUSDT"))
        for _ in range(3):
            await ws.pong(b"unsolicited")
        await ws.send_str(BOOK.format(lower="ethusdt", sym="ETHUSDT"))
        await hold(ws)

    venue = Venue(script)
    run = await launch(venue, aiohttp_server, start_config, liveness_timeout_s=5.0)
    await wait(lambda: run.stats.quotes == 2)
    assert [q.pair for q in run.quotes] == ["BTC/USDT", "ETH/USDT"]
    assert run.stats.frames == 3  # the ack and two books; the pongs are not frames
    assert venue.connections == 1 and run.stats.reconnects == 0
    assert run.stats.state is ConnState.STREAMING and run.stats.malformed == 0


def _rows(btc_bid: float) -> list[dict[str, str]]:
    """A bookTicker REST answer: BTC bid at `btc_bid` (ask 0.1 above), ETH at 50.0/50.1."""
    btc = {"bidPrice": f"{btc_bid:.2f}", "askPrice": f"{btc_bid + 0.1:.2f}"}
    eth = {"bidPrice": "50.00", "askPrice": "50.10"}
    return [
        {"symbol": symbol, "bidQty": "1", "askQty": "1", **prices}
        for symbol, prices in (("BTCUSDT", btc), ("ETHUSDT", eth))
    ]


async def test_a_poll_repeating_the_last_polled_book_is_not_a_new_quote(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """REST answers carry no time of their book (Binance's bookTicker has none), so an answer
    repeating the book the last poll showed is dropped as `unchanged` and the quote keeps the
    age of the first answer that showed it, while a changed book is quoted; the source goes on
    polling. Once the stream has streamed again, the first poll of the next outage is quoted
    even if it repeats a book polled before the stream came back (the stream moved the book
    meanwhile). Before, every poll was a quote stamped with its receipt: a book that had
    stopped changing looked fresh for ever."""
    venue: Venue

    async def stream_once(ws: web.WebSocketResponse, n: int) -> None:
        await next_request(ws)  # the subscription
        for symbol in ("BTCUSDT", "ETHUSDT"):
            await ws.send_str(BOOK.format(lower=symbol.lower(), sym=symbol))
        venue.refuse = True  # the next connection is refused: polling again
        await asyncio.sleep(0.05)
        await ws.close()

    venue = Venue(stream_once)
    venue.refuse = True
    venue.rest_rows = _rows(100.0)
    run = await launch(venue, aiohttp_server, start_config)
    await wait(lambda: venue.rest_answered >= 4)
    assert [(q.pair, q.bid) for q in run.quotes] == [("BTC/USDT", 100.0), ("ETH/USDT", 50.0)]
    assert run.stats.dropped["unchanged"] >= 4 and run.stats.state is ConnState.POLLING
    venue.rest_rows = _rows(101.0)
    await wait(lambda: len(run.quotes) == 3)
    answered = venue.rest_answered
    await wait(lambda: venue.rest_answered >= answered + 3)
    assert [(q.pair, q.bid) for q in run.quotes[2:]] == [("BTC/USDT", 101.0)]
    venue.refuse = False  # the stream comes back (both at 100.0), and goes again
    await wait(lambda: venue.connections >= 2 and len(run.quotes) >= 5)
    await wait(lambda: len(run.quotes) >= 7)  # the next outage's first poll: 101.0 and 50.0
    assert [(q.pair, q.bid) for q in run.quotes[3:7]] == [
        ("BTC/USDT", 100.0),
        ("ETH/USDT", 100.0),
        ("BTC/USDT", 101.0),
        ("ETH/USDT", 50.0),
    ]
    assert run.stats.state is ConnState.POLLING


async def test_a_poll_repeating_the_streams_last_book_is_not_a_new_quote_and_leaves_no_trace(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """The stream quotes BTC and ETH at 100.00/100.10 and drops; the polls that follow show BTC
    at that same book and ETH at 50.00/50.10. The first poll's BTC is dropped as `unchanged` (the
    stream's quote keeps its age), its ETH is quoted, and every later poll is dropped. A dropped
    poll leaves no trace of a quote: the source's quote count is the quotes handed on, its
    newest quote time is the newest handed on, each symbol's newest quote (which its silence is
    counted from) is the one handed on; and only a REST read goes through the filter, stream
    quotes go straight to the emitter. Before, the first poll of an outage was always quoted."""
    venue: Venue

    async def stream_once(ws: web.WebSocketResponse, n: int) -> None:
        await next_request(ws)  # the subscription
        for symbol in ("BTCUSDT", "ETHUSDT"):
            await ws.send_str(BOOK.format(lower=symbol.lower(), sym=symbol))
        venue.refuse = True  # the next connection is refused: polling
        await asyncio.sleep(0.05)
        await ws.close()

    venue = Venue(stream_once)
    venue.rest_rows = _rows(100.0)  # BTC: the stream's book
    run = await launch(venue, aiohttp_server, start_config)
    # BTC dropped from four answers, ETH from all but the first.
    await wait(lambda: run.stats.dropped["unchanged"] >= 7)
    assert run.stats.state is ConnState.POLLING
    assert [(q.pair, q.bid, q.venue_ts) for q in run.quotes] == [
        ("BTC/USDT", 100.0, None),
        ("ETH/USDT", 100.0, None),
        ("ETH/USDT", 50.0, None),
    ]
    btc, _, eth = run.quotes
    assert run.stats.quotes == 3 and run.stats.last_quote_ms == eth.recv_ts
    assert heard_quotes(run.source) == {"BTCUSDT": btc, "ETHUSDT": eth}
    assert run.source._emit is run.source._sink


async def test_a_rest_answer_that_never_ends_is_cut_at_the_size_limit(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """A REST answer is read no further than `MAX_REST_BODY` (16 MiB): a venue (or a proxy in
    the way) answering 200 with a chunked body that never ends costs one counted ``rest_error``
    naming the limit, and the client hangs up, instead of the poll buffering everything the
    server can send until its timeout (found by pointing a polling source at such a server:
    the whole body was read, several hundred MB a second on loopback, before the timeout)."""
    venue = Venue(hold_script)
    venue.refuse = True  # no stream: the source polls
    venue.rest_endless = True
    with capture_logs() as logs:
        run = await launch(venue, aiohttp_server, start_config, rest_poll_interval_s=5.0)
        await wait(lambda: run.stats.dropped["rest_error"] >= 1)
    assert run.stats.state is ConnState.DOWN and run.quotes == []
    errors = [e["error"] for e in logs if e["event"] == "rest answer too large"]
    assert errors == [f"BodyTooLarge: REST answer over {MAX_REST_BODY >> 20} MiB"]
    await wait(lambda: venue.rest_requests == 1 and venue.rest_sent > 0)
    # What the client took, give or take the socket buffers on both sides: Linux grows a loopback
    # receive buffer up to tcp_rmem's maximum (32 MiB on some hosts), so a busy machine can have
    # that much in flight when the client hangs up. Uncapped, the body is read until the timeout.
    assert venue.rest_sent < MAX_REST_BODY + (40 << 20)


async def test_an_oversized_message_or_deflate_bomb_replaces_the_connection(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """A WebSocket message over 4 MiB is refused before it is buffered: one 5 MiB text frame,
    then a permessage-deflate message of 32 MiB inflated (32 KB on the wire), each closes its
    connection with 1009 (message too big), logged as the reason (closed by oracled, not by
    the venue) and counted as a reconnect;
    the third connection streams. The limit is aiohttp's default max_msg_size, which it also
    applies while inflating (docs/sources.md, *Limits on what a venue sends*)."""

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        req = await next_request(ws)
        await ws.send_str(json.dumps({"result": None, "id": req["id"]}))
        if n == 0:
            await ws.send_str("7" * (5 << 20))
        elif n == 1:
            assert ws.compress, "the client offers permessage-deflate"
            await ws.send_str("7" * (32 << 20))
        else:
            await ws.send_str(BOOK.format(lower="btcusdt", sym="BTCUSDT"))
        await hold(ws)

    venue = Venue(script)
    with capture_logs() as logs:
        run = await launch(venue, aiohttp_server, start_config, liveness_timeout_s=5.0)
        await wait(lambda: run.stats.state is ConnState.STREAMING)
    assert venue.connections == 3 and run.stats.reconnects == 2
    down = [e["reason"] for e in logs if e.get("state") == "down" and "reason" in e]
    assert down == ["closed by oracled (1009)"]  # the second cut finds the source still down
    assert run.stats.malformed == 0 and len(run.quotes) == 1


async def test_json_nested_past_the_decoder_depth_is_a_malformed_frame_not_a_crash(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """A frame nested deeper than msgspec's limit (200 KB of brackets in a field the decoder
    skips, well under the message limit) makes the decoder raise RecursionError, not
    DecodeError: the source counts it as a
    malformed `decode` frame and goes on reading the same connection. Before, the error left
    the adapter and crashed the whole source (the service's supervisor restarted it after a
    backoff, a traceback each time), so a venue could hold a source down with one frame every
    few seconds (found sending such frames to every adapter)."""
    deep = "[" * 100_000 + "]" * 100_000

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        req = await next_request(ws)
        await ws.send_str(json.dumps({"result": None, "id": req["id"]}))
        await ws.send_str('{"x":' + deep + "}")  # an unknown field: skipped, depth and all
        book = BOOK.format(lower="btcusdt", sym="BTCUSDT")
        await ws.send_str(book.removesuffix("}}") + ',"x":' + deep + "}}")
        await ws.send_str(BOOK.format(lower="btcusdt", sym="BTCUSDT"))
        await hold(ws)

    venue = Venue(script)
    run = await launch(venue, aiohttp_server, start_config, liveness_timeout_s=5.0)
    await wait(lambda: len(run.quotes) == 1)
    assert venue.connections == 1 and run.stats.reconnects == 0
    assert run.stats.malformed == 2 and run.stats.dropped == {"decode": 2}


async def test_a_binary_frame_that_is_not_utf8_is_a_malformed_frame_not_a_crash(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """A binary frame with a Latin-1 byte inside a string (the price here) makes the decoder
    raise UnicodeDecodeError, not DecodeError: the source counts a malformed `decode` frame and
    reads on, on the same connection, while streaming and before. Before, the error crashed the
    source (found by test_adapter_fuzz)."""
    book = BOOK.format(lower="btcusdt", sym="BTCUSDT")
    latin1 = book.encode().replace(b'"100.00000000"', b'"100.0000000\xe9"')

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        req = await next_request(ws)
        await ws.send_str(json.dumps({"result": None, "id": req["id"]}))
        await ws.send_bytes(latin1)  # not streaming yet: the connection's first frame
        await ws.send_str(book)
        await ws.send_bytes(latin1)  # streaming: straight to the adapter
        await ws.send_str(MOVED.format(lower="btcusdt", sym="BTCUSDT"))
        await hold(ws)

    venue = Venue(script)
    run = await launch(venue, aiohttp_server, start_config, liveness_timeout_s=5.0)
    await wait(lambda: len(run.quotes) == 2)
    assert venue.connections == 1 and run.stats.reconnects == 0
    assert run.stats.malformed == 2 and run.stats.dropped == {"decode": 2}
