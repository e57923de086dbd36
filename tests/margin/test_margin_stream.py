"""MarginService against the daemon's real API on loopback (api_rig's Rig: a real Core and Hub)
when the daemon closes the stream on it."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import sys
from pathlib import Path

from aiohttp import web
from margin_helpers import spec
from structlog.testing import capture_logs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
from api_rig import DaemonServer, Rig, make_config

from oracled.api import build_app
from oracled.margin import MarginEngine
from oracled.margin.service import MarginService
from oracled.publish.hub import DROP_SLOW

SAFETY_S = 15.0  # guards against hangs only


async def test_a_stream_the_daemon_closes_is_logged_with_its_close_code() -> None:
    """The daemon closing the stream (1008: the consumer fell too far behind its queue) is
    logged with that code in the `disconnected` warning, so an operator can tell a slow engine
    from a daemon that went away; the service then subscribes again."""
    rig = Rig(make_config())
    rig.step()
    engine = MarginEngine(spec([{"id": "a", "collateral": {"USD": 1_000, "BTC": 1}}]))
    with capture_logs() as logs:
        async with DaemonServer(build_app(rig.context()), host="127.0.0.1") as server:
            url = str(server.make_url("/v1/stream")).replace("http://", "ws://")
            service = MarginService(
                engine, url, io.BytesIO(), clock=rig.clock.now_ms, reconnect_max_s=0.1
            )
            task = asyncio.create_task(service.run())
            try:
                async with asyncio.timeout(SAFETY_S):
                    while "BTC/USD" not in engine.book.latest:  # noqa: ASYNC110 - no event
                        await asyncio.sleep(0.01)
                    # A round on a subscription whose queue is already full: the hub drops it
                    # as too slow (what a stalled engine leads to), as tests/api/test_stream.py does
                    (sub,) = rig.hub._subs
                    rig.step()
                    sub._offer((b'{"type":"report"}',) * (rig.cfg.api.stream_queue + 1))
                    # dropped, then subscribed again
                    while not (rig.hub.dropped_subscribers[DROP_SLOW] and rig.hub.subscribers):  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    gone = [e for e in logs if e["event"] == "disconnected"]
    assert [(e["code"], e["log_level"]) for e in gone] == [(1008, "warning")]
    assert rig.hub.dropped_subscribers[DROP_SLOW] == 1


async def test_a_password_in_the_daemons_url_is_sent_and_never_logged() -> None:
    """A daemon reached through a proxy that asks for a user and password (`--url
    ws://reader:<password>@host/...`): the service sends them (as Basic auth) and streams,
    and its `connected` and `disconnected` lines name the URL as `ws://***@host:port/...`.
    They named it whole, the password on every line."""
    password = "proxy-pass-8e1f2c"
    basic = "Basic " + base64.b64encode(f"reader:{password}".encode()).decode()
    connections: list[int] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != basic:  # the proxy's check
            raise web.HTTPUnauthorized()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive_json()  # the subscription
        connections.append(1)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/v1/stream", stream)
    engine = MarginEngine(spec([{"id": "a", "collateral": {"USD": 1_000}}]))
    with capture_logs() as logs:
        async with DaemonServer(app, host="127.0.0.1") as server:
            where = server.make_url("/v1/stream").with_scheme("ws")
            url = str(where.with_user("reader").with_password(password))
            service = MarginService(engine, url, io.BytesIO(), reconnect_max_s=0.1)
            task = asyncio.create_task(service.run())
            try:
                async with asyncio.timeout(SAFETY_S):
                    while len(connections) < 2:  # noqa: ASYNC110 - the server counts them
                        await asyncio.sleep(0.01)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    named = [e["url"] for e in logs if e["event"] in ("connected", "disconnected")]
    assert named and set(named) == {f"ws://***@{where.host}:{where.port}/v1/stream"}, named
    assert password not in json.dumps(logs)
