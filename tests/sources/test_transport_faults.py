"""Hostile venue transports, each a real Binance source against a loopback server: what the
bytes carrying the messages do (pings, closes, handshakes, redirects, bodies), not what the
messages say (test_adapter_fuzz.py has that). Every test counts events, never times them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs
from test_base_protocol import BOOK, MOVED, Venue, hold, hold_script, launch, next_request

from oracled.sources import BinanceSource, ConnState


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
