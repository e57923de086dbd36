"""OracleClient.watch_ws against a real aiohttp server on loopback that misbehaves on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from publish_rig import Rounds, make_config
from structlog.testing import capture_logs

from oracled.api import ApiContext, build_app
from oracled.client import OracleClient
from oracled.clock import ManualClock
from oracled.publish import Hub
from oracled.publish.signer import RoundSigner, SigningKey

KEY = SigningKey.from_hex("0x" + "44" * 32)
SAFETY_S = 15.0  # guards against hangs only
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def stream_app(handler: Handler) -> web.Application:
    """A scripted daemon: `handler` serves every connection to /v1/stream."""
    app = web.Application()
    app.router.add_get("/v1/stream", handler)
    return app


async def watch_until(
    client: OracleClient,
    app: web.Application,
    done: Callable[[], bool],
    *args: Any,
    **kwargs: Any,
) -> None:
    """Run `client.watch_ws` (with `args`, `kwargs`) against `app` on loopback until `done()`
    holds, then stop it; a wait that outlasts SAFETY_S fails the test instead of hanging."""
    async with TestServer(app, host="127.0.0.1") as server:
        watcher = asyncio.create_task(client.watch_ws(str(server.make_url("/")), *args, **kwargs))
        try:
            async with asyncio.timeout(SAFETY_S):
                while not done():  # noqa: ASYNC110 - the conditions have no event to wait on
                    await asyncio.sleep(0.01)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)


async def test_a_binary_frame_makes_the_client_reconnect_and_ask_again() -> None:
    """A frame that is not JSON text ends that connection: the client reconnects, sends its
    subscription (every market, signed) again, and what follows the bad frame on the old
    connection is never read."""
    signed = RoundSigner(KEY).sign(Rounds(make_config()).step())
    requests: list[dict[str, Any]] = []

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        requests.append(await ws.receive_json())
        index = min(len(requests) - 1, 1)  # BTC/USD on the first connection, then ETH/USD
        await ws.send_str('{"type":"signed","data":' + signed.envelope(index).decode() + "}")
        await ws.send_bytes(b"\x00binary")
        await ws.send_str('{"type":"signed","data":' + signed.envelope(2).decode() + "}")
        await ws.receive()  # until the client goes
        return ws

    client = OracleClient({KEY.address}, now_ms=lambda: signed.ts)

    def replayed() -> bool:  # the third connection's ETH/USD is a duplicate: the client read it
        return len(requests) >= 3 and client.duplicates > 0

    await watch_until(client, stream_app(stream), replayed, reconnect_s=0)
    assert requests[:3] == [{"op": "subscribe", "signed": True}] * 3
    assert client.markets == ["BTC/USD", "ETH/USD"]  # SOL/USD came after a binary frame only
    assert client.accepted == 2


def _daemon_app(signing: bool) -> web.Application:
    """The daemon's real API on one round of a real core, signed or not."""
    cfg = make_config()
    rounds = Rounds(cfg)
    hub = Hub(64)
    hub.signer = KEY.address if signing else None
    result = rounds.step()
    hub.publish(result)
    if signing:
        hub.publish_signed(RoundSigner(KEY).sign(result))
    context = ApiContext(
        hub=hub,
        core=rounds.core,
        config=cfg,
        source_stats={},
        clock=ManualClock(rounds.now),
        render_metrics=lambda: (b"", "text/plain"),
        on_manual=lambda market, paused, actor: None,
        version="test",
    )
    return build_app(context)


@pytest.mark.parametrize(
    ("signing", "markets", "code"),
    [(False, None, "signing_disabled"), (True, ["BTC/USD", "NOPE/USD"], "unknown_market")],
)
async def test_a_refused_subscription_is_counted_not_silently_ignored(
    signing: bool, markets: list[str] | None, code: str
) -> None:
    """A daemon that refuses the client's subscription (it does not sign; a market it does not
    have) answers with an error frame and then sends nothing: the client counts the error by
    its code in `stream_errors` instead of waiting for prices in silence."""
    client = OracleClient({KEY.address})
    await watch_until(client, _daemon_app(signing), lambda: bool(client.stream_errors), markets)
    assert dict(client.stream_errors) == {code: 1}
    assert client.accepted == 0 and client.markets == []


async def test_an_unreadable_error_frame_is_counted_as_malformed() -> None:
    """An error frame that is cut short or of the wrong shape still counts, as `malformed`, and
    the client keeps reading the connection."""
    signed = RoundSigner(KEY).sign(Rounds(make_config()).step())

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive_json()
        await ws.send_str('{"type":"error","code":"bad_req')
        await ws.send_str('{"type":"error","code":7}')
        await ws.send_str('{"type":"signed","data":' + signed.envelope(0).decode() + "}")
        await ws.receive()  # until the client goes
        return ws

    client = OracleClient({KEY.address}, now_ms=lambda: signed.ts)
    # the frame after the bad ones
    await watch_until(client, stream_app(stream), lambda: bool(client.accepted), reconnect_s=9)
    assert dict(client.stream_errors) == {"malformed": 2}
    assert list(client.prices()) == ["BTC/USD"]


async def test_a_connection_the_daemon_closes_is_logged_with_its_close_code() -> None:
    """A daemon that closes the stream (1008: the client fell too far behind) is named in a
    warning with the close code before the client reconnects, not passed over in silence."""
    connections: list[int] = []

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive_json()
        connections.append(1)
        await ws.close(code=1008, message=b"slow consumer")
        return ws

    client = OracleClient({KEY.address})
    with capture_logs() as logs:
        await watch_until(client, stream_app(stream), lambda: len(connections) >= 2, reconnect_s=0)
    closed = [e for e in logs if e["event"] == "client stream closed"]
    assert closed and closed[0]["code"] == 1008 and closed[0]["log_level"] == "warning"


async def test_a_daemon_that_stops_answering_is_left_and_connected_again() -> None:
    """A connection whose daemon no longer answers pings (a host gone, a network cut that sent
    no close frame) is dropped after the heartbeat and made again, instead of being waited on
    forever while every market of the client goes unknown."""
    connections: list[int] = []
    release = asyncio.Event()

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)  # deaf: never answers a ping
        await ws.prepare(request)
        connections.append(1)
        await release.wait()
        return ws

    client = OracleClient({KEY.address})
    try:
        await watch_until(
            client,
            stream_app(stream),
            lambda: len(connections) >= 2,
            reconnect_s=0,
            heartbeat_s=0.2,
        )
    finally:
        release.set()
    assert len(connections) >= 2
