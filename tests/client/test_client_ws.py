"""OracleClient.watch_ws against a real aiohttp server on loopback that misbehaves on purpose."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from hostile_rig import redirecting, scripted_stream
from publish_rig import Rounds, make_config
from structlog.testing import capture_logs

from oracled.api import ApiContext, build_app
from oracled.client import OracleClient
from oracled.clock import ManualClock
from oracled.config import parse_config
from oracled.publish import Hub
from oracled.publish.signer import RoundSigner, SigningKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
import api_rig  # the API tests' rig: a core, a hub and a reload, wired by hand

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
    async with api_rig.DaemonServer(app, host="127.0.0.1") as server:
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
    signed = RoundSigner(KEY, "test").sign(Rounds(make_config()).step())
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

    client = OracleClient({KEY.address}, deployment="test", now_ms=lambda: signed.ts)

    def replayed() -> bool:  # the third connection's ETH/USD is a duplicate: the client read it
        return len(requests) >= 3 and client.duplicates > 0

    await watch_until(client, stream_app(stream), replayed, [], reconnect_s=0)
    assert requests[:3] == [{"op": "subscribe", "signed": True}] * 3  # [] is every market
    assert client.markets == ["BTC/USD", "ETH/USD"]  # SOL/USD came after a binary frame only
    assert client.accepted == 2


def _daemon_app(signing: bool, rounds: Rounds | None = None) -> web.Application:
    """The daemon's real API on one round of a real core, signed or not."""
    cfg = make_config()
    rounds = rounds or Rounds(cfg)
    hub = Hub(64)
    hub.signer = KEY.address if signing else None
    result = rounds.step()
    hub.publish(result)
    if signing:
        hub.publish_signed(RoundSigner(KEY, "test").sign(result))
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


async def test_a_refused_subscription_is_counted_not_silently_ignored() -> None:
    """A daemon that refuses the client's subscription (it does not sign) answers with an error
    frame and then sends nothing: the client counts the error by its code in `stream_errors`
    instead of waiting for prices in silence."""
    client = OracleClient({KEY.address}, deployment="test")
    await watch_until(client, _daemon_app(False), lambda: bool(client.stream_errors))
    assert dict(client.stream_errors) == {"signing_disabled": 1}
    assert client.accepted == 0 and client.markets == []


async def test_one_market_the_daemon_does_not_have_costs_the_client_only_that_market() -> None:
    """The daemon refuses a whole request for one unknown market: the client asks for each
    market alone, verifies BTC/USD and ETH/USD, and names NOPE/USD in `unavailable`, in
    `stream_errors` (once) and in one warning; its retries, refused again, add nothing."""
    rounds = Rounds(make_config())
    app = _daemon_app(True, rounds)
    client = OracleClient({KEY.address}, deployment="test", now_ms=lambda: rounds.now)
    wanted = ["BTC/USD", "NOPE/USD", "ETH/USD"]
    with capture_logs() as logs:

        def done() -> bool:
            retried = sum(e["event"] == "client subscribe retry" for e in logs)
            return client.markets == ["BTC/USD", "ETH/USD"] and retried >= 3

        await watch_until(client, app, done, wanted, retry_s=0.01)
    [url] = client.unavailable
    assert client.unavailable[url] == {"NOPE/USD": "unknown_market"}
    assert dict(client.stream_errors) == {"unknown_market": 1}
    assert client.price("BTC/USD").status == "active"
    named = [e for e in logs if e["event"] == "client market unavailable"]
    assert [(e["market"], e["code"], e["log_level"]) for e in named] == [
        ("NOPE/USD", "unknown_market", "warning")
    ]


async def test_an_unreadable_error_frame_is_counted_as_malformed() -> None:
    """An error frame that is cut short or of the wrong shape still counts, as `malformed`, and
    the client keeps reading the connection."""
    signed = RoundSigner(KEY, "test").sign(Rounds(make_config()).step())

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive_json()
        await ws.send_str('{"type":"error","code":"bad_req')
        await ws.send_str('{"type":"error","code":7}')
        await ws.send_str('{"type":"signed","data":' + signed.envelope(0).decode() + "}")
        await ws.receive()  # until the client goes
        return ws

    client = OracleClient({KEY.address}, deployment="test", now_ms=lambda: signed.ts)
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

    client = OracleClient({KEY.address}, deployment="test")
    with capture_logs() as logs:
        await watch_until(client, stream_app(stream), lambda: len(connections) >= 2, reconnect_s=0)
    closed = [e for e in logs if e["event"] == "client stream closed"]
    assert closed and closed[0]["code"] == 1008 and closed[0]["log_level"] == "warning"


async def test_a_daemon_that_stops_answering_is_left_and_connected_again() -> None:
    """A connection whose daemon no longer answers pings (a host gone, a network cut that sent
    no close frame) is dropped after the heartbeat and made again, instead of being waited on
    forever while every market of the client goes unknown."""
    connections: list[int] = []

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)  # deaf: never answers a ping
        await ws.prepare(request)
        connections.append(1)
        # Reads (pings too) until the client leaves: a handler that waited past the server's
        # close would hold it, as the daemon's close waits for its handlers.
        async for _ in ws:
            pass
        return ws

    client = OracleClient({KEY.address}, deployment="test")
    await watch_until(
        client, stream_app(stream), lambda: len(connections) >= 2, reconnect_s=0, heartbeat_s=0.2
    )
    assert len(connections) >= 2


async def test_a_market_a_reload_removes_and_adds_back_comes_back_to_the_client() -> None:
    """A reload that removes SOL/USD sends `market_removed`: the client lists it in
    `unavailable` and logs it; the daemon never says it came back, so the client asks again,
    and once a reload adds it back its signed prices arrive on the same connection."""
    rig = api_rig.Rig(api_rig.make_config())
    rig.hub.signer = KEY.address
    full = rig.cfg
    data = copy.deepcopy(api_rig.CONFIG)
    data["markets"] = [m for m in data["markets"] if m["symbol"] != "SOL/USD"]
    rig.next_config = parse_config(data, env={"ORACLED_ADMIN_TOKEN": api_rig.TOKEN})
    signer = RoundSigner(KEY, "test")

    def step() -> None:
        rig.hub.publish_signed(signer.sign(rig.step()))

    step()
    client = OracleClient({KEY.address}, deployment="test", now_ms=rig.clock.now_ms)
    auth = {"Authorization": f"Bearer {api_rig.TOKEN}"}
    with capture_logs() as logs:
        async with api_rig.DaemonServer(build_app(rig.context()), host="127.0.0.1") as server:
            url = str(server.make_url("/"))
            watcher = asyncio.create_task(
                client.watch_ws(url, ["BTC/USD", "SOL/USD"], retry_s=0.01)
            )
            try:
                async with asyncio.timeout(SAFETY_S), aiohttp.ClientSession() as http:
                    while client.markets != ["BTC/USD", "SOL/USD"]:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                    async with http.post(server.make_url("/v1/admin/reload"), headers=auth):
                        pass
                    step()
                    while "SOL/USD" not in client.unavailable[url]:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                    rig.next_config = full
                    async with http.post(server.make_url("/v1/admin/reload"), headers=auth):
                        pass
                    step()
                    while client.unavailable[url]:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                    while client.price("SOL/USD").ts != rig.clock.now_ms():  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
    assert client.price("SOL/USD").price is not None
    events = [(e["event"], e.get("market")) for e in logs if "market" in e["event"]]
    assert events == [
        ("client market unavailable", "SOL/USD"),
        ("client market available", "SOL/USD"),
    ]
    assert dict(client.stream_errors) == {"market_removed": 1}


async def test_a_market_unknown_at_first_comes_once_a_reload_adds_it_however_it_was_spelled() -> (
    None
):
    """Asked for as `sol-usd` before the daemon has it, SOL/USD is listed in `unavailable` under
    its canonical name; once a reload adds it, a retry subscribes it, it leaves `unavailable`
    and its signed prices arrive, on the same connection."""
    data = copy.deepcopy(api_rig.CONFIG)
    data["markets"] = [m for m in data["markets"] if m["symbol"] != "SOL/USD"]
    rig = api_rig.Rig(parse_config(data, env={"ORACLED_ADMIN_TOKEN": api_rig.TOKEN}))
    rig.hub.signer = KEY.address
    rig.next_config = api_rig.make_config()
    signer = RoundSigner(KEY, "test")
    rig.hub.publish_signed(signer.sign(rig.step()))
    client = OracleClient({KEY.address}, deployment="test", now_ms=rig.clock.now_ms)
    auth = {"Authorization": f"Bearer {api_rig.TOKEN}"}
    async with api_rig.DaemonServer(build_app(rig.context()), host="127.0.0.1") as server:
        url = str(server.make_url("/"))
        watcher = asyncio.create_task(client.watch_ws(url, ["BTC/USD", "sol-usd"], retry_s=0.01))
        try:
            async with asyncio.timeout(SAFETY_S), aiohttp.ClientSession() as http:
                while client.unavailable.get(url) != {"SOL/USD": "unknown_market"}:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                async with http.post(server.make_url("/v1/admin/reload"), headers=auth):
                    pass
                rig.hub.publish_signed(signer.sign(rig.step()))
                while client.unavailable[url] or "SOL/USD" not in client.markets:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    assert client.markets == ["BTC/USD", "SOL/USD"]


async def test_a_market_refused_again_after_a_reconnect_is_not_logged_or_counted_again() -> None:
    """A daemon that refuses NOPE/USD on every connection: the client lists it as unavailable,
    logs and counts it once, not once per connection (it stays unavailable across them). A new
    connection's first request leaves it out (no second split); its retry asks for it alone."""
    connections: list[list[list[str]]] = []  # per connection, the markets of each request
    refused = '{"type":"error","code":"unknown_market","message":"not configured"}'
    acked = '{"type":"subscribed","markets":["BTC/USD"]}'

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        asked: list[list[str]] = []
        connections.append(asked)
        # The first connection: the request of two, then each alone; later ones: BTC/USD, then
        # the retry of NOPE/USD. Answered by what is asked, as the daemon does.
        for _ in range(3 if len(connections) == 1 else 2):
            asked.append(markets := (await ws.receive_json())["markets"])
            await ws.send_str(acked if markets == ["BTC/USD"] else refused)
        await ws.close()
        return ws

    client = OracleClient({KEY.address}, deployment="test")
    with capture_logs() as logs:
        await watch_until(
            client,
            stream_app(stream),
            lambda: len(connections) >= 3,
            ["BTC/USD", "NOPE/USD"],
            reconnect_s=0,
            retry_s=0.05,
        )
    # The third connection ended the wait, so two were read to their end.
    assert connections[:2] == [
        [["BTC/USD", "NOPE/USD"], ["BTC/USD"], ["NOPE/USD"]],
        [["BTC/USD"], ["NOPE/USD"]],
    ]
    [url] = client.unavailable
    assert client.unavailable[url] == {"NOPE/USD": "unknown_market"}
    assert dict(client.stream_errors) == {"unknown_market": 1}
    named = [e["market"] for e in logs if e["event"] == "client market unavailable"]
    assert named == ["NOPE/USD"]


async def test_frames_nested_past_the_decoders_depth_leave_the_watch_running() -> None:
    """A peer on the stream's path sending JSON nested a hundred thousand levels deep, as a
    signed frame, an ack, an error frame and a `stalled` frame: the decoder's RecursionError
    ended `watch_ws` at the first. Each is refused and counted now (the signed frame in
    `rejected`, the two error frames in `stream_errors`, as `malformed`), and the genuine signed
    frame after them is accepted on the same connection."""
    signed = RoundSigner(KEY, "test").sign(Rounds(make_config()).step())
    deep = "[" * 100_000 + "]" * 100_000
    connections: list[int] = []

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive_json()
        connections.append(1)
        for kind in ('"signed","data"', '"subscribed","markets"', '"error","code"'):
            await ws.send_str('{"type":' + kind + ":" + deep + "}")
        await ws.send_str('{"type":"error","code":"stalled","message":' + deep + "}")
        await ws.send_str('{"type":"signed","data":' + signed.envelope(0).decode() + "}")
        await ws.receive()  # until the client goes
        return ws

    client = OracleClient({KEY.address}, deployment="test", now_ms=lambda: signed.ts)
    await watch_until(client, stream_app(stream), lambda: bool(client.accepted), reconnect_s=9)
    assert connections == [1]
    assert client.rejected["malformed"] == 1
    assert dict(client.stream_errors) == {"malformed": 2}
    assert client.price("BTC/USD").status == "active"


async def test_error_frames_of_made_up_codes_and_markets_are_counted_in_bounds() -> None:
    """A peer on the stream's path sending 2,000 error frames, each with a code of its own, and
    a `market_removed` frame naming 2,000 made-up markets: `stream_errors` kept a counter per
    code (2,000, and on without bound), each frame was its own warning, and each made-up market
    was kept unavailable and logged by name. Codes the contract does not list count as
    `unknown` now, logged once per `log_every_ms`; the made-up markets are none the client gets,
    so that frame is one error, counted and logged once, and nothing is unavailable."""
    frames = 2_000
    made_up = [f"X{n}/USD" for n in range(frames)]

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive_json()
        for n in range(frames):
            await ws.send_str(f'{{"type":"error","code":"made_up_{n}","message":"no"}}')
        removed = {"type": "error", "code": "market_removed", "message": "x", "markets": made_up}
        await ws.send_str(msgspec.json.encode(removed).decode())
        await ws.receive()  # until the client goes
        return ws

    client = OracleClient({KEY.address}, deployment="test")
    with capture_logs() as logs:
        await watch_until(
            client, stream_app(stream), lambda: client.stream_errors.total() > frames, []
        )
    assert dict(client.stream_errors) == {"unknown": frames, "market_removed": 1}
    assert [dict(v) for v in client.unavailable.values()] == [{}]
    told = [(e["event"], e.get("code")) for e in logs if e["event"] != "client subscribed"]
    assert told == [("client stream error", "made_up_0"), ("client stream error", "market_removed")]


async def test_frames_a_relay_writes_its_own_way_are_read_not_dropped_unseen() -> None:
    """A relay or proxy that decodes and re-encodes JSON (spaces after the separators, `data`
    before `type`) had every frame dropped unread and uncounted, since the client told frames
    apart by their first bytes as the daemon writes them: its markets stayed unknown without a
    word. Such frames are read by their `type` now: the ack, the signed price (verified and
    accepted), the error frame (counted); a frame that is no JSON is refused as `malformed`."""
    signed = RoundSigner(KEY, "test").sign(Rounds(make_config()).step())
    price = json.loads(signed.envelope(0))

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive_json()
        await ws.send_str(json.dumps({"markets": ["BTC/USD"], "type": "subscribed"}))
        await ws.send_str("not json")
        await ws.send_str(json.dumps({"type": "error", "code": "bad_request", "message": "x"}))
        await ws.send_str(json.dumps({"data": price, "type": "signed"}))
        await ws.receive()  # until the client goes
        return ws

    client = OracleClient({KEY.address}, deployment="test", now_ms=lambda: signed.ts)
    await watch_until(client, stream_app(stream), lambda: bool(client.accepted), reconnect_s=9)
    assert client.price("BTC/USD").status == "active"
    assert client.rejected["malformed"] == 1
    assert dict(client.stream_errors) == {"bad_request": 1}


async def test_a_stream_that_cannot_connect_is_said_once_per_log_every_ms_not_every_retry() -> None:
    """A daemon whose stream refuses every handshake (503 here, as while it starts or behind a
    proxy whose backend is down): the client retries every `reconnect_s` and says so at most
    once per `log_every_ms`, the next line counting the ones held back. Before, every retry was
    a warning: a daemon down for an hour was 3,600 lines at the default `reconnect_s`."""
    now = [1_800_000_000_000]
    client = OracleClient({KEY.address}, deployment="test", now_ms=lambda: now[0])
    asked: list[int] = []

    async def refused(request: web.Request) -> web.Response:
        asked.append(1)
        if len(asked) == 5:
            now[0] += client.log_every_ms  # the next failure is due again
        return web.Response(status=503, text="starting")

    app = web.Application()
    app.router.add_get("/v1/stream", refused)
    with capture_logs() as logs:
        await watch_until(client, app, lambda: len(asked) >= 6, reconnect_s=0)
    failed = [e for e in logs if e["event"] == "client stream failed"]
    assert [e["suppressed"] for e in failed] == [0, 3], failed  # the 2nd to 4th held back
    assert all("503" in e["error"] for e in failed)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_handshake_redirected_to_another_host_is_refused_and_nothing_is_taken_from_it(
    status: int,
) -> None:
    """The daemon's address answers the stream's handshake with a redirect to another host
    serving genuine signed frames. aiohttp followed it: the client subscribed there and took
    its prices, from a host the operator never named. The handshake is refused now, before
    subscribing (`client stream failed`, naming where it pointed), and tried again later; the
    other host is asked for nothing and no price is taken."""
    signed = RoundSigner(KEY, "test").sign(Rounds(make_config()).step())
    frames = [
        '{"type":"signed","data":' + signed.envelope(i).decode() + "}"
        for i in range(len(signed.leaves))
    ]
    subscribed: list[int] = []  # subscriptions the other host got
    elsewhere = stream_app(scripted_stream(frames, '{"type":"subscribed"}', subscribed))
    client = OracleClient({KEY.address}, deployment="test", now_ms=lambda: signed.ts)
    asked: list[int] = []
    with capture_logs() as logs:
        async with api_rig.DaemonServer(elsewhere, host="127.0.0.1") as other:
            target = str(other.make_url("/v1/stream"))

            def settled() -> bool:  # prices taken there (the old way), or refused twice
                failed = [e for e in logs if e["event"] == "client stream failed"]
                return client.accepted > 0 or (len(asked) >= 2 and len(failed) >= 1)

            app = redirecting(status, target, asked)
            await watch_until(client, app, settled, reconnect_s=0)
    assert client.accepted == 0 and client.markets == [] and not client.stream_errors
    assert subscribed == []
    failed = [e for e in logs if e["event"] == "client stream failed"]
    assert failed[0]["error"] == f"handshake redirected to {target}"
    assert failed[0]["log_level"] == "warning"
    assert not any(e["event"] == "client subscribed" for e in logs)


async def test_a_password_in_the_daemons_url_is_sent_and_never_logged() -> None:
    """A daemon reached through a proxy that asks for a user and password
    (`http://reader:<password>@host/`): the client sends them (aiohttp makes them Basic auth)
    and verifies the prices, and its log lines (`client subscribed`, bound to every line of
    the watch) name the URL as `http://***@host:port/`. They named it whole, the password
    with it."""
    password = "proxy-pass-5d0a71"
    basic = "Basic " + base64.b64encode(f"reader:{password}".encode()).decode()
    rounds = Rounds(make_config())
    app = _daemon_app(True, rounds)

    @web.middleware
    async def proxy(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.headers.get("Authorization") != basic:
            raise web.HTTPUnauthorized()
        return await handler(request)

    app.middlewares.insert(0, proxy)
    client = OracleClient({KEY.address}, deployment="test", now_ms=lambda: rounds.now)
    with capture_logs() as logs:
        async with api_rig.DaemonServer(app, host="127.0.0.1") as server:
            where = server.make_url("/")
            url = str(where.with_user("reader").with_password(password))
            watcher = asyncio.create_task(client.watch_ws(url, ["BTC/USD"]))
            try:
                async with asyncio.timeout(SAFETY_S):
                    while not client.accepted:  # noqa: ASYNC110 - no event to wait on
                        await asyncio.sleep(0.01)
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
    named = {e["url"] for e in logs if "url" in e}
    assert named == {f"http://***@{where.host}:{where.port}/"}, named
    assert password not in json.dumps(logs)


async def test_one_cancellation_ends_a_watch_connecting_to_an_address_that_hangs_up() -> None:
    """Every connection to the daemon's address is closed at once (a proxy with no daemon behind
    it): `watch_ws` retries every `reconnect_s`. Cancelled once, 0 to 11 loop turns after a
    connection was taken, it ends, every time. `watch_nats` could miss such a cancellation (the
    NATS library waited on each step of a connection through `asyncio.wait_for`, which drops one
    that comes as the step completes under Python 3.11; docs/publishing.md); aiohttp's connect
    and handshake do not go through it, and this test keeps it so."""
    taken = asyncio.Event()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        taken.set()
        writer.transport.abort()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        for turns in range(12):
            client = OracleClient({KEY.address}, deployment="test")
            taken.clear()
            watcher = asyncio.create_task(client.watch_ws(url, ["BTC/USD"], reconnect_s=0.05))
            try:
                async with asyncio.timeout(SAFETY_S):
                    await taken.wait()
                for _ in range(turns):
                    await asyncio.sleep(0)
                watcher.cancel()
                await asyncio.wait({watcher}, timeout=SAFETY_S)
                assert watcher.cancelled(), f"the watch went on after its cancellation ({turns})"
            finally:  # a failure leaves nothing running
                while not watcher.done():
                    watcher.cancel()
                    await asyncio.wait({watcher}, timeout=0.1)
    finally:
        server.close()
        await server.wait_closed()
