"""MarginService against a real aiohttp server on loopback that closes the stream on it. The
server stands in for the daemon's API, so it serves as the daemon does (api_rig.DaemonServer)."""

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
from api_rig import DaemonServer

from oracled.margin import MarginEngine
from oracled.margin.service import MarginService

SAFETY_S = 15.0  # guards against hangs only


async def test_a_stream_the_daemon_closes_is_logged_with_its_close_code() -> None:
    """The daemon closing the stream (1008: the consumer fell too far behind) is logged with
    that code in the `disconnected` warning, so an operator can tell a slow engine from a
    daemon that went away; the service then connects again."""
    connections: list[int] = []

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive_json()  # the subscription
        connections.append(1)
        await ws.close(code=1008, message=b"slow consumer")
        return ws

    app = web.Application()
    app.router.add_get("/v1/stream", stream)
    engine = MarginEngine(spec([{"id": "a", "collateral": {"USD": 1_000}}]))
    with capture_logs() as logs:
        async with DaemonServer(app, host="127.0.0.1") as server:
            url = str(server.make_url("/v1/stream")).replace("http://", "ws://")
            service = MarginService(engine, url, io.BytesIO(), reconnect_max_s=0.1)
            task = asyncio.create_task(service.run())
            try:
                async with asyncio.timeout(SAFETY_S):
                    while len(connections) < 2:  # noqa: ASYNC110 - the server counts them
                        await asyncio.sleep(0.01)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    gone = [e for e in logs if e["event"] == "disconnected"]
    assert gone and gone[0]["code"] == 1008 and gone[0]["log_level"] == "warning"


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
