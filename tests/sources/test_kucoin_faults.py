"""KuCoin faults the simulator does not stage, each against a tiny scripted venue on loopback:
a bullet-public answer that hands out no usable server, and a subscription the venue never
acknowledges on a socket it keeps alive with pongs."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from structlog.testing import capture_logs

from oracled.config import SourceConfig
from oracled.model import Kind
from oracled.sources import ConnState

PAIRS: list[tuple[str, Kind]] = [("BTC/USDT", "spot")]


def ticker(sequence: str, bid: str, ask: str) -> dict[str, Any]:
    """A ticker's data as KuCoin prints it (numbers as strings)."""
    return {
        "sequence": sequence,
        "bestBid": bid,
        "bestAsk": ask,
        "bestBidSize": "1",
        "price": bid,
        "time": 1_619_378_326_330,
    }


TICKER = {
    "type": "message",
    "topic": "/market/ticker:BTC-USDT",
    "subject": "trade.ticker",
    "data": ticker("1000", "100.0", "100.1"),
}
# The fallback's ticker: other prices, and a sequence older than the stream's.
LEVEL1 = {"code": "200000", "data": ticker("1", "99.0", "99.1")}

Script = Callable[[web.WebSocketResponse, int], Awaitable[None]]


class Venue:
    """Bullet answers from `bullet` (None: a good one naming this server), the socket handed to
    `script(ws, n)` for the n-th connection, a level-1 REST ticker for the fallback."""

    def __init__(self, script: Script | None = None, bullet: bytes | None = None) -> None:
        self.script, self.bullet = script, bullet
        self.bullets = self.connections = self.polls = 0
        self.base = ""
        self.ping_interval_ms = 200

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/v1/bullet-public", self._bullet)
        app.router.add_get("/endpoint", self._ws)
        app.router.add_get("/api/v1/market/orderbook/level1", self._level1)
        return app

    async def _bullet(self, request: web.Request) -> web.Response:
        self.bullets += 1
        if self.bullet is not None:
            return web.Response(body=self.bullet, content_type="application/json")
        server = {
            "endpoint": f"{self.base}/endpoint",
            "pingInterval": self.ping_interval_ms,
            "pingTimeout": 200,
        }
        data = {"token": "t0k3n", "instanceServers": [server]}
        return web.json_response({"code": "200000", "data": data})

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        n, self.connections = self.connections, self.connections + 1
        assert self.script is not None
        await self.script(ws, n)
        return ws

    async def _level1(self, request: web.Request) -> web.Response:
        self.polls += 1
        return web.json_response(LEVEL1)


async def launch(venue: Venue, aiohttp_server: Any, start_config: Any, **overrides: Any) -> Any:
    server = await aiohttp_server(venue.app())
    base = str(server.make_url("")).rstrip("/")
    venue.base = base.replace("http://", "ws://")
    values: dict[str, Any] = {
        "type": "kucoin",
        "rest_url": base,
        "liveness_timeout_s": 5.0,
        "rest_poll_interval_s": 0.05,
        "reconnect_max_s": 0.05,
        **overrides,
    }
    return await start_config(SourceConfig(**values), PAIRS)


@pytest.mark.parametrize(
    ("bullet", "why"),
    [
        (b"<html>busy</html>", "ClientError: bullet-public: unreadable answer: "),
        (b'{"code":"429000","msg":"Too Many Requests"}', "ClientError: bullet-public: refused: "),
        (
            b'{"code":"200000","data":{"token":"t","instanceServers":[]}}',
            "ClientError: bullet-public: refused: ",
        ),
        (
            b'{"code":"400100","data":{"token":"t","instanceServers":[{"endpoint":'
            b'"ws://127.0.0.1:9/endpoint","pingInterval":200,"pingTimeout":200}]}}',
            "ClientError: bullet-public: refused: ",
        ),
        (  # a token in Latin-1: UnicodeDecodeError, which crashed the source before
            b'{"code":"200000","data":{"token":"\xe9","instanceServers":[]}}',
            "ClientError: bullet-public: unreadable answer: ",
        ),
    ],
    ids=["unreadable", "error-code", "no-server", "error-code-with-a-server", "not-utf8"],
)
async def test_a_bullet_without_a_usable_server_is_a_failed_connection(
    bullet: bytes, why: str, aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """A bullet answered with HTTP 200 but unreadable, carrying an error code (whatever data
    comes with it), or naming no server is a failed connection, not a crash: the source goes
    down naming it, retries with backoff (a fresh bullet each time, never a socket) and prices
    from the REST fallback."""
    venue = Venue(bullet=bullet)
    with capture_logs() as logs:
        run = await launch(venue, aiohttp_server, start_config)
        await wait(lambda: run.stats.reconnects >= 3 and run.stats.state is ConnState.POLLING)
        await wait(lambda: len(run.quotes) >= 1)
    downs = [e for e in logs if e["event"] == "source state" and e["state"] == "down"]
    assert downs[0]["reason"].startswith(why), downs[0]
    assert venue.bullets >= run.stats.reconnects >= 3  # the newest may still be on its way
    assert venue.connections == 0
    assert {(q.pair, q.bid, q.ask) for q in run.quotes} == {("BTC/USDT", 99.0, 99.1)}
    assert not run.task.done()


@pytest.mark.parametrize("ping_ms", [0, -5, 1, 10**9])
async def test_a_bullet_ping_interval_beyond_reason_is_replaced_by_the_documented_one(
    ping_ms: int, aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """A bullet's pingInterval of 0 or less would mean no pings (the venue then drops the
    client), 1 ms a flood over the venue's message limit, a billion never a ping: the client
    pings every 18 s (the documented interval) instead, and says why."""

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await ws.send_str('{"id":"c0nn","type":"welcome"}')
        async for _ in ws:
            pass

    venue = Venue(script)
    venue.ping_interval_ms = ping_ms
    with capture_logs() as logs:
        run = await launch(venue, aiohttp_server, start_config)
        await wait(lambda: venue.connections >= 1)
    assert run.source.app_ping_interval_s == 18.0
    refused = [e for e in logs if e["event"] == "bullet ping interval refused"]
    assert refused and refused[0]["ping_interval_ms"] == ping_ms


async def test_a_subscription_never_acknowledged_replaces_a_socket_kept_alive_by_pongs(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """The first connection welcomes the client and answers its pings but never acknowledges
    the subscription (the venue lost it) nor sends data: pongs keep the socket alive, so the
    source itself replaces it, at a pong once the request is a ping interval old, well before
    the 5 s watchdog would; the next connection acknowledges and streams."""
    subscribes: list[list[str]] = [[], []]

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await ws.send_str('{"id":"c0nn","type":"welcome"}')
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            req = json.loads(msg.data)
            if req["type"] == "ping":
                await ws.send_str(json.dumps({"id": req["id"], "type": "pong"}))
            elif req["type"] == "subscribe":
                subscribes[min(n, 1)].append(req["topic"])
                if n > 0:
                    await ws.send_str(json.dumps({"id": str(req["id"]), "type": "ack"}))
                    await ws.send_str(json.dumps(TICKER))

    venue = Venue(script)
    with capture_logs() as logs:
        run = await launch(venue, aiohttp_server, start_config)
        await wait(lambda: run.stats.state is ConnState.STREAMING and venue.connections == 2)
    downs = [e for e in logs if e["event"] == "source state" and e["state"] == "down"]
    assert [e["reason"] for e in downs] == ["subscription not acknowledged"]
    assert subscribes == [["/market/ticker:BTC-USDT"]] * 2
    assert run.stats.reconnects == 1
    assert run.source._pending == {}
    assert [(q.pair, q.bid, q.ask) for q in run.quotes if q.bid == 100.0] == [
        ("BTC/USDT", 100.0, 100.1)
    ]


class MovedBullet(Venue):
    """A venue whose bullet-public answers 307 (the POST kept) to `target`'s."""

    target = ""

    async def _bullet(self, request: web.Request) -> web.Response:
        self.bullets += 1
        raise web.HTTPTemporaryRedirect(f"{self.target}/api/v1/bullet-public")


async def test_a_bullet_redirected_to_another_host_is_a_failed_connection(
    aiohttp_server: Any, start_config: Any, wait: Any
) -> None:
    """bullet-public answered with a 307 to a host the config does not name, whose bullet
    would hand out its own socket: the redirect is not followed, each bullet is a failed
    connection naming the status, retried with backoff, and the source prices from its own
    REST fallback; the other host is never asked. Before, aiohttp followed it (its default)
    and the source streamed from whatever socket the other host named."""
    elsewhere = Venue()
    server = await aiohttp_server(elsewhere.app())
    elsewhere.base = str(server.make_url("")).rstrip("/").replace("http://", "ws://")
    venue = MovedBullet()
    venue.target = str(server.make_url("")).rstrip("/")
    with capture_logs() as logs:
        run = await launch(venue, aiohttp_server, start_config)
        await wait(lambda: run.stats.reconnects >= 2 and run.stats.state is ConnState.POLLING)
    downs = [e for e in logs if e["event"] == "source state" and e["state"] == "down"]
    assert downs[0]["reason"].startswith("ClientError: bullet-public: HTTP 307"), downs[0]
    assert elsewhere.bullets == elsewhere.connections == 0 and venue.connections == 0
