"""Hostile venue transports, each a real Binance source against a loopback server: what the
bytes carrying the messages do (pings, closes, handshakes, redirects, bodies), not what the
messages say (test_adapter_fuzz.py has that). Every test counts events, never times them."""

from __future__ import annotations

import asyncio
import gzip
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs
from test_base_protocol import (
    BOOK,
    MOVED,
    PAIRS,
    Venue,
    hold,
    hold_script,
    launch,
    next_request,
)

from oracled.config import SourceConfig
from oracled.sources import BinanceSource, ConnState
from oracled.sources._base import MAX_REST_BODY

BTC = BOOK.format(lower="btcusdt", sym="BTCUSDT").encode()
BTC_MOVED = MOVED.format(lower="btcusdt", sym="BTCUSDT")


def ws_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One unmasked server frame, written by hand: bytes aiohttp's server would not send."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", first, n) + payload
    if n < 65_536:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


class RawVenue(Venue):
    """A scripted venue whose connection n runs `raw(write, n)` once subscribed: `write` puts
    bytes on the socket as they are (None: the venue just closed it), then, from connection 1
    on, the venue quotes a moved book and holds the connection."""

    def __init__(self, raw: Callable[[Callable[[bytes], bool], int], Awaitable[None]]) -> None:
        super().__init__(self._script)
        self.raw = raw
        self._request: web.Request | None = None

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        self._request = request
        return await super()._ws(request)

    async def _script(self, ws: web.WebSocketResponse, n: int) -> None:
        req = await next_request(ws)
        await ws.send_str(json.dumps({"result": None, "id": req["id"]}))
        transport = self._request.transport if self._request is not None else None
        assert transport is not None

        def write(data: bytes) -> bool:
            """Write `data`; False once the client has hung up."""
            if transport.is_closing():
                return False
            transport.write(data)
            return True

        if n == 0:
            await self.raw(write, n)
            if transport.is_closing():
                return
        await ws.send_str(BTC_MOVED)
        await hold(ws)


async def recovered(run: Any, venue: Venue, wait: Any) -> None:
    """The second connection streams the moved book."""
    await wait(lambda: any(q.bid == 100.05 for q in run.quotes) and venue.connections == 2)
    assert run.stats.state is ConnState.STREAMING


async def test_a_ping_flood_is_answered_without_growing_memory(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """A venue sending 20,000 pings in a row on a streaming connection: each is answered, the
    connection stays, and what the source keeps of its sent messages (the pacer's window) stays
    at the venue's message limit. Before, each pong added an entry that only the subscription
    writer's pacer ever took out, and it waits idle once everything is subscribed: one entry a
    ping for the connection's life (50,000 pings left 50,001 entries, about 1.6 MB)."""
    pings = 20_000
    ponged = 0

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        nonlocal ponged
        req = await next_request(ws)
        await ws.send_str(json.dumps({"result": None, "id": req["id"]}))
        await ws.send_str(BOOK.format(lower="btcusdt", sym="BTCUSDT"))
        for _ in range(pings):
            await ws.ping(b"x")
        await ws.send_str(MOVED.format(lower="btcusdt", sym="BTCUSDT"))
        async for msg in ws:
            ponged += msg.type is web.WSMsgType.PONG

    venue = Venue(script)
    run = await launch(venue, aiohttp_server, start_config, liveness_timeout_s=5.0)
    await wait(lambda: run.stats.quotes == 2 and ponged == pings, within_s=30.0)
    assert len(run.source._sent) <= BinanceSource.max_messages_per_s
    assert venue.connections == 1 and run.stats.reconnects == 0
    assert run.stats.state is ConnState.STREAMING and run.stats.malformed == 0


async def test_a_shutdown_notice_on_every_new_connection_is_backed_off_not_a_hot_loop(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """A venue that announces its shutdown (Binance's serverShutdown) as soon as each connection
    is subscribed: the first cuts are planned rotations, but on connections younger than
    `healthy_after_s` each waits its backoff, the attempt growing (0, 1, 2, ...), never down
    and never polling; once the venue stops announcing, the source streams. Before, a planned
    cut always reconnected at once: about 120 connections a second on loopback, without a log
    line (the state stayed `connecting`), the handshake's round trip the only brake."""
    announcing = 5

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        req = await next_request(ws)
        await ws.send_str(json.dumps({"result": None, "id": req["id"]}))
        if n < announcing:
            await ws.send_str('{"e":"serverShutdown","E":1795660000000}')
        else:
            await ws.send_str(BOOK.format(lower="btcusdt", sym="BTCUSDT"))
        await hold(ws)

    venue = Venue(script)
    with capture_logs() as logs:
        run = await launch(venue, aiohttp_server, start_config, liveness_timeout_s=5.0)
        await wait(lambda: run.stats.state is ConnState.STREAMING)
    assert venue.connections == announcing + 1 and run.stats.reconnects == announcing
    attempts = [e["attempt"] for e in logs if e["event"] == "reconnect backoff"]
    assert attempts == list(range(announcing))
    states = [e["state"] for e in logs if e["event"] == "source state"]
    assert states == ["streaming"] and venue.rest_requests == 0


def elsewhere_app(asked: list[str]) -> web.Application:
    """A host the config does not name, serving Binance's REST and stream with prices of 5:
    `asked` lists what reached it."""

    async def rest(request: web.Request) -> web.Response:
        asked.append("rest")
        return web.json_response([{"symbol": "BTCUSDT", "bidPrice": "5.0", "askPrice": "5.1"}])

    async def stream(request: web.Request) -> web.WebSocketResponse:
        asked.append("handshake")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            asked.append("subscribe")
            req = json.loads(msg.data)
            await ws.send_str(json.dumps({"result": None, "id": req["id"]}))
            await ws.send_str(BOOK.replace("100.", "5.").format(lower="btcusdt", sym="BTCUSDT"))
        return ws

    app = web.Application()
    app.router.add_get("/api/v3/ticker/bookTicker", rest)
    app.router.add_get("/stream", stream)
    return app


class Redirecting(Venue):
    """A venue whose REST answers (or stream handshakes, with `stream`) redirect to `target`."""

    def __init__(self, status: int, target: str, stream: bool = False) -> None:
        super().__init__(hold_script)
        self.status, self.target, self.stream = status, target, stream

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/stream", self._moved if self.stream else self._ws)
        app.router.add_get("/api/v3/ticker/bookTicker", self._moved)
        return app

    async def _moved(self, request: web.Request) -> web.Response:
        if request.path == "/stream":
            self.connections += 1
        else:
            self.rest_requests += 1
        where = f"{self.target}{request.path}?{request.query_string}"
        return web.Response(status=self.status, headers={"Location": where})


@pytest.mark.parametrize("status", [301, 302, 307])
async def test_a_rest_redirect_to_another_host_is_a_failed_poll_not_followed(
    aiohttp_server: Any, start_config: Any, wait: Any, status: int
) -> None:
    """The REST fallback answered with a redirect to a host (here a port) the config does not
    name, which serves prices: the redirect is not followed, each poll is a counted
    `rest_error`, the source is down, one `rest error` line names the target, and nothing
    from the other host is quoted. Before, aiohttp followed it (its default) and the source
    polled and quoted whatever the other host said."""
    asked: list[str] = []
    elsewhere = await aiohttp_server(elsewhere_app(asked))
    target = str(elsewhere.make_url("")).rstrip("/")
    venue = Redirecting(status, target)
    venue.refuse = True  # no stream: the source polls
    with capture_logs() as logs:
        run = await launch(venue, aiohttp_server, start_config)
        await wait(lambda: venue.rest_requests >= 3 and run.stats.dropped["rest_error"] >= 3)
    assert asked == [] and run.quotes == [] and run.stats.quotes == 0
    assert run.stats.state is ConnState.DOWN
    (said,) = [e["message"] for e in logs if e["event"] == "rest error"]  # one a minute
    assert said.startswith(f"HTTP {status}: redirect to {target}/api/v3/ticker/bookTicker?")


async def test_a_stream_handshake_redirected_to_another_host_is_refused(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """The stream's handshake answered 302 to a host the config does not name: aiohttp follows
    it (its WebSocket client has no switch), and the source hangs up before subscribing there,
    the connection's end logged as `redirected to` that URL and backed off as a failure.
    Before, the source subscribed on the other host and quoted its prices."""
    asked: list[str] = []
    elsewhere = await aiohttp_server(elsewhere_app(asked))
    target = str(elsewhere.make_url("")).rstrip("/")
    venue = Redirecting(302, target, stream=True)
    with capture_logs() as logs:
        run = await launch(venue, aiohttp_server, start_config)
        await wait(lambda: venue.connections >= 3 and run.stats.reconnects >= 2)
    assert run.quotes == [] and "subscribe" not in asked and "handshake" in asked
    reasons = {e["reason"] for e in logs if e["event"] == "source state" and "reason" in e}
    assert reasons == {f"redirected to {target}/stream"}
    assert [e["attempt"] for e in logs if e["event"] == "reconnect backoff"][:2] == [0, 1]


@pytest.mark.parametrize("status", [429, 503])
async def test_a_failing_rest_fallback_says_why_once_a_minute(
    aiohttp_server: Any, start_config: Any, wait: Any, status: int
) -> None:
    """The stream refused, and every poll answered 429 (naming no wait) or 503: each counts a
    `rest_error`, and one `rest error` line gives the status and the body however many polls
    fail (then at most one a minute, `suppressed` saying how many more came). Before, nothing
    was said: the source was down already (its stream's reason), so the failing polls changed
    no state and left no line, and the runbook's "429 in the error of `source state`" never
    showed (only OKX, logging its own codes, said its REST errors)."""
    venue = Venue(hold_script)
    venue.refuse = True  # no stream: the source polls
    venue.rest_status = status
    with capture_logs() as logs:
        run = await launch(venue, aiohttp_server, start_config)
        await wait(lambda: run.stats.dropped["rest_error"] >= 4)
    assert run.stats.state is ConnState.DOWN and run.quotes == []
    said = [e["message"] for e in logs if e["event"] == "rest error"]
    assert said == [f'HTTP {status}: {{"code": -1, "msg": "refused"}}']


async def _slowloris(write: Callable[[bytes], bool], n: int) -> None:
    """A book frame a byte at a time, never finished: the watchdog must cut it."""
    for byte in ws_frame(1, BTC)[:-1]:
        if not write(bytes([byte])):
            return
        await asyncio.sleep(0.02)


async def _endless_fragments(write: Callable[[bytes], bool], n: int) -> None:
    """A text message started, then a continuation frame of one space at a time, never the
    last: each frame complete, the message never."""
    write(ws_frame(1, BTC[:20], fin=False))
    for _ in range(1000):  # 20 s: far past the liveness timeout
        if not write(ws_frame(0, b" ", fin=False)):
            return
        await asyncio.sleep(0.02)


async def _oversized_fragments(write: Callable[[bytes], bool], n: int) -> None:
    """Continuation frames of 64 KiB each, past the 4 MiB message limit in total."""
    write(ws_frame(1, b"[", fin=False))
    for _ in range(80):
        if not write(ws_frame(0, b" " * 65_536, fin=False)):
            return
        await asyncio.sleep(0)


async def _tcp_drop(write: Callable[[bytes], bool], n: int) -> None:
    """A book, then the socket closed without a close frame."""
    write(ws_frame(1, BTC))
    await asyncio.sleep(0.05)
    write(b"")
    raise ConnectionResetError  # the venue's handler ends; aiohttp closes the socket


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (_slowloris, "silent"),
        (_endless_fragments, "silent"),
        (_oversized_fragments, "closed by oracled (1009)"),
    ],
    ids=["slowloris", "endless_fragments", "oversized_fragments"],
)
async def test_a_message_that_never_completes_is_cut_and_the_source_recovers(
    aiohttp_server: Any, start_config: Any, wait: Any, raw: Any, reason: str
) -> None:
    """A frame trickled a byte at a time, or a message whose continuation frames never end
    (each complete, the message not): no message is read, so nothing is life for the watchdog,
    which cuts the connection one liveness period on (`silent`); continuation frames past the
    4 MiB message limit are cut at it (1009). Nothing is quoted from it, and the next
    connection streams."""
    venue = RawVenue(raw)
    with capture_logs() as logs:
        run = await launch(venue, aiohttp_server, start_config, liveness_timeout_s=0.5)
        await recovered(run, venue, wait)
    assert [q.bid for q in run.quotes] == [100.05] and run.stats.malformed == 0
    downs = [e["reason"] for e in logs if e.get("state") == "down" and "reason" in e]
    assert downs == [reason] and run.stats.reconnects == 1


def _closing(payload: bytes) -> Callable[[Callable[[bytes], bool], int], Awaitable[None]]:
    async def raw(write: Callable[[bytes], bool], n: int) -> None:
        write(ws_frame(1, BTC) + ws_frame(8, payload))
        await asyncio.sleep(0.2)  # the client answers the close and hangs up

    return raw


def _fragmented(write: Callable[[bytes], bool], n: int) -> Awaitable[None]:
    """A book in three frames (text, continuation, continuation) with a ping between, then a
    close."""
    write(ws_frame(1, BTC[:10], fin=False) + ws_frame(0, BTC[10:30], fin=False))
    write(ws_frame(9, b"p") + ws_frame(0, BTC[30:]) + ws_frame(8, struct.pack("!H", 1000)))
    return asyncio.sleep(0.2)


def _binary(write: Callable[[bytes], bool], n: int) -> Awaitable[None]:
    """The book as a binary frame, then a close."""
    write(ws_frame(2, BTC) + ws_frame(8, struct.pack("!H", 1000)))
    return asyncio.sleep(0.2)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (_closing(struct.pack("!H", 1000)), "closed by venue (1000)"),
        (_closing(struct.pack("!H", 1001) + b"going away"), "closed by venue (1001)"),
        (_closing(struct.pack("!H", 1008) + b"policy"), "closed by venue (1008)"),
        (_closing(struct.pack("!H", 4000) + b"x"), "closed by venue (4000)"),
        (_closing(b""), "closed by venue ("),  # no code: aiohttp says 1000 or 1006
        (_closing(struct.pack("!H", 1000) + b"r" * 200), "closed by oracled (1002)"),
        (_closing(struct.pack("!H", 1005)), "closed by oracled (1002)"),  # never on the wire
        (_closing(b"\x03"), "closed by oracled (1002)"),  # half a code
        (_tcp_drop, "closed by venue (1006)"),
        (_fragmented, "closed by venue (1000)"),
        (_binary, "closed by venue (1000)"),
    ],
    ids=[
        "1000",
        "1001",
        "1008",
        "4000",
        "no_code",
        "overlong_reason",
        "1005",
        "one_byte",
        "tcp_without_close",
        "fragmented",
        "binary",
    ],
)
async def test_a_book_then_any_close_is_quoted_then_backed_off_and_recovered(
    aiohttp_server: Any, start_config: Any, wait: Any, raw: Any, reason: str
) -> None:
    """A book (whole, fragmented with a ping inside, or binary), then the connection closed by
    the venue in any way: a close frame with a usual code, a private one (4000), none, or one
    the protocol forbids (a reason over the 125-byte control frame, 1005, half a code: a
    protocol error, 1002), or the socket closed without a close frame. The book is quoted
    once, the close is one `source state` line naming how it ended and a backoff, and the
    next connection streams."""
    venue = RawVenue(raw)
    with capture_logs() as logs:
        run = await launch(venue, aiohttp_server, start_config, liveness_timeout_s=5.0)
        await recovered(run, venue, wait)
    assert [q.bid for q in run.quotes] == [100.0, 100.05] and run.stats.malformed == 0
    (down,) = [e["reason"] for e in logs if e.get("state") == "down" and "reason" in e]
    assert down.startswith(reason), down
    assert [e["attempt"] for e in logs if e["event"] == "reconnect backoff"] == [0]


Handle = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(handle: Handle) -> AsyncIterator[tuple[str, dict[str, int]]]:
    """A loopback server speaking bytes: `handle(request head, writer)` answers each connection
    (the stream's handshakes and the REST polls alike), which is closed after it. Yields its
    base URL and the count of handshakes and polls."""
    counts = {"handshakes": 0, "polls": 0}
    writers: set[asyncio.StreamWriter] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            counts["handshakes" if b"upgrade: websocket" in head.lower() else "polls"] += 1
            await handle(head, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            writers.discard(writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}", counts
    finally:
        server.close()
        for writer in list(writers):
            writer.close()
        await server.wait_closed()


def raw_config(address: str, **overrides: Any) -> SourceConfig:
    values: dict[str, Any] = {
        "type": "binance",
        "ws_url": f"ws://{address}",
        "rest_url": f"http://{address}",
        "liveness_timeout_s": 0.3,
        "rest_poll_interval_s": 0.1,
        "reconnect_max_s": 60.0,  # the attempts show the backoff; its cap would hide it
    }
    values.update(overrides)
    return SourceConfig(**values)


class QuickBackoff(BinanceSource):
    """Binance with a test-sized backoff base: attempt n waits at most 0.01 * 2**n s."""

    backoff_base_s = 0.01


async def _silent(head: bytes, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(3600)  # accepts the connection, answers nothing


async def _wrong_accept(head: bytes, writer: asyncio.StreamWriter) -> None:
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"
    )
    await asyncio.sleep(3600)


async def _hang_up(head: bytes, writer: asyncio.StreamWriter) -> None:
    pass  # accepts the connection and closes it at once


@pytest.mark.parametrize(
    ("handle", "reason"),
    [
        (_silent, "TimeoutError"),
        (_wrong_accept, "WSServerHandshakeError: 101, message='Invalid challenge response'"),
        (_hang_up, "ServerDisconnectedError"),
    ],
    ids=["never_answers", "wrong_accept", "accepts_and_closes"],
)
async def test_a_handshake_that_fails_is_retried_with_a_growing_backoff(
    start_config: Any, wait: Any, handle: Handle, reason: str
) -> None:
    """A stream host that accepts TCP and answers nothing (the handshake is cut at the
    liveness timeout), answers 101 with a wrong Sec-WebSocket-Accept, or closes each
    connection at once (and every REST poll the same way): each failed handshake waits a
    backoff one attempt longer than the last (0, 1, 2, 3 in the log lines, the delay's
    ceiling doubling), the source is down with the failure as its one `source state` reason,
    and nothing is quoted. Counted, never timed: a hot loop would show attempt 0 each time."""
    async with raw_server(handle) as (address, counts):
        with capture_logs() as logs:
            run = await start_config(raw_config(address), PAIRS, QuickBackoff)
            await wait(lambda: run.stats.reconnects >= 4, within_s=20.0)
        attempts = [e["attempt"] for e in logs if e["event"] == "reconnect backoff"]
        assert attempts[:4] == [0, 1, 2, 3]
        assert counts["handshakes"] >= 4 and run.quotes == []
        (down,) = [e["reason"] for e in logs if e.get("state") == "down" and "reason" in e]
        assert down.startswith(reason), down


ROWS = b'[{"symbol":"BTCUSDT","bidPrice":"100.0","askPrice":"100.1"}]'
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


def polls(answer: Callable[[asyncio.StreamWriter], Awaitable[None]]) -> Handle:
    """A host refusing the stream's handshake (404) and answering each poll with `answer`."""

    async def handle(head: bytes, writer: asyncio.StreamWriter) -> None:
        if b"upgrade: websocket" in head.lower():
            writer.write(NOT_FOUND)
        else:
            await answer(writer)
        await writer.drain()

    return handle


async def _drip(writer: asyncio.StreamWriter) -> None:
    """A chunked 200 whose body never ends, a byte at a time: far under the size cap."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    writer.write(b"Transfer-Encoding: chunked\r\n\r\n1\r\n[\r\n")
    while True:
        await writer.drain()
        writer.write(b"1\r\n \r\n")
        await asyncio.sleep(0.02)


async def _gzip_bomb(writer: asyncio.StreamWriter) -> None:
    """64 KB on the wire inflating to 64 MiB of JSON whitespace, past `MAX_REST_BODY`."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n")
    writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(GZIP_BOMB), GZIP_BOMB))


GZIP_BOMB = gzip.compress(b"[" + b" " * (4 * MAX_REST_BODY) + b"]", compresslevel=9)


async def test_a_rest_answer_that_never_ends_under_the_cap_times_out_and_polling_goes_on(
    start_config: Any, wait: Any
) -> None:
    """A 200 whose chunked body drips a byte at a time and never ends, far under the size cap:
    each poll is cut at its time limit (a `rest_error`, said once as `rest error`
    `TimeoutError`), and the next poll goes out: the poller is never stuck on one answer."""
    async with raw_server(polls(_drip)) as (address, counts):
        with capture_logs() as logs:
            run = await start_config(raw_config(address, rest_poll_interval_s=0.5), PAIRS)
            await wait(lambda: counts["polls"] >= 3 and run.stats.dropped["rest_error"] >= 2)
        assert run.quotes == [] and run.stats.state is ConnState.DOWN
        assert [e["message"] for e in logs if e["event"] == "rest error"] == ["TimeoutError"]


async def test_a_gzip_bomb_is_refused_at_the_size_cap(start_config: Any, wait: Any) -> None:
    """A REST answer of 64 KB gzip inflating to 64 MiB: refused once 16 MiB are inflated,
    counted `rest_error` and logged `rest answer too large` (each poll alike), nothing quoted."""
    assert len(GZIP_BOMB) < 100_000
    async with raw_server(polls(_gzip_bomb)) as (address, _):
        with capture_logs() as logs:
            run = await start_config(raw_config(address), PAIRS)
            await wait(lambda: run.stats.dropped["rest_error"] >= 2)
        assert run.quotes == [] and run.stats.state is ConnState.DOWN
        said = {e["error"] for e in logs if e["event"] == "rest answer too large"}
        assert said == {f"BodyTooLarge: REST answer over {MAX_REST_BODY >> 20} MiB"}


def _answer(head: bytes, body: bytes) -> Callable[[asyncio.StreamWriter], Awaitable[None]]:
    async def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(head + b"\r\n" + body)

    return answer


@pytest.mark.parametrize(
    ("head", "body", "quoted"),
    [
        (b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n", ROWS, True),
        (b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 60\r\n", ROWS, True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", b"", False),
    ],
    ids=["http10_without_length", "wrong_content_type", "empty_200"],
)
async def test_an_answer_is_judged_by_its_body(
    start_config: Any, wait: Any, head: bytes, body: bytes, quoted: bool
) -> None:
    """An HTTP/1.0 answer without Content-Length (the body ends with the connection) is read
    to its end and quoted; a Content-Type that is not JSON does not matter, the body is read
    as the venue's JSON all the same (a proxy's page fails there); an empty 200 is a `decode`
    drop, and the source stays down, not polling."""
    assert len(ROWS) == 60
    async with raw_server(polls(_answer(head, body))) as (address, counts):
        run = await start_config(raw_config(address), PAIRS)
        await wait(lambda: counts["polls"] >= 3)
        if quoted:
            await wait(lambda: run.stats.state is ConnState.POLLING)
            assert [q.bid for q in run.quotes] == [100.0]  # then `unchanged`
        else:
            await wait(lambda: run.stats.dropped["decode"] >= 2)
            assert run.quotes == [] and run.stats.state is ConnState.DOWN


async def test_each_cut_of_an_outage_is_said_with_its_reason(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """An outage of several cuts for different causes: the first connection goes silent, the
    second sends a 5 MiB message (refused, 1009), the third streams. `source state` says the
    first cause only (the source is down already at the second), and each `reconnect backoff`
    line names the cut it follows. Before, the backoff line had no reason: a stream failing
    on for a new cause (oversized messages after a silence, say) showed nowhere in the log."""

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        req = await next_request(ws)
        await ws.send_str(json.dumps({"result": None, "id": req["id"]}))
        if n == 1:
            await ws.send_str("7" * (5 << 20))
        elif n == 2:
            await ws.send_str(BTC_MOVED)
        await hold(ws)

    venue = Venue(script)
    with capture_logs() as logs:
        run = await launch(venue, aiohttp_server, start_config, liveness_timeout_s=0.5)
        await wait(lambda: run.stats.state is ConnState.STREAMING)
    downs = [e["reason"] for e in logs if e.get("state") == "down" and "reason" in e]
    assert downs == ["silent"]
    said = [e["reason"] for e in logs if e["event"] == "reconnect backoff"]
    assert said == ["silent", "closed by oracled (1009)"]
