"""Clients that come and go by the hundred, each asking for something else, leave nothing behind.

A daemon serves for months; its API state per connection (the hub's subscriptions and
snapshots under way, the stream handlers' sets of live subscriptions, the connection guard's
tables) must go with each connection, however it ends: closed politely, reset in the middle of
a snapshot, cut for a bad frame, an event stream dropped. Real aiohttp clients against the API
as the daemon serves it (`serve_guarded`), rounds fanned out meanwhile.
"""

from __future__ import annotations

import random
import socket
import struct
from collections import Counter
from typing import Any

import aiohttp
from aiohttp import web
from api_rig import PRICES, Rig, make_config, serve_guarded, until
from stream_wire import SAFETY_S

from oracled.api.sse import SseHandler
from oracled.api.stream import StreamHandler
from oracled.publish.hub import DROP_BAD_FRAME

MARKETS = list(PRICES)
CLIENTS = 240
CAP = 40


def _handlers(app: web.Application) -> tuple[StreamHandler, SseHandler]:
    """The stream and event-stream handlers behind the app's routes."""
    found: dict[str, Any] = {}
    for route in app.router.routes():
        owner = getattr(route.handler, "__self__", None)
        if isinstance(owner, StreamHandler | SseHandler):
            found[type(owner).__name__] = owner
    return found["StreamHandler"], found["SseHandler"]


def _reset(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Hang up with a TCP reset, no close frame: the server finds out when it next writes."""
    conn = ws._response.connection
    assert conn is not None and conn.transport is not None
    sock = conn.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.transport.abort()


async def _one_client(session: aiohttp.ClientSession, base: str, rng: random.Random, n: int) -> str:
    """One client of a kind drawn by `rng`, asking for markets known and made up; its kind."""
    kind = rng.choice(["polite", "reset", "bad_frame", "events"])
    wanted = rng.sample(MARKETS, rng.randint(1, len(MARKETS)))
    if kind == "events":
        query = ",".join([*wanted, f"MADE{n}/UP"] if rng.random() < 0.3 else wanted)
        async with session.get(f"{base}/v1/events", params={"markets": query}) as resp:
            if resp.status == 200:
                await resp.content.readline()  # the stream has started: then hang up
        return kind
    async with session.ws_connect(f"{base}/v1/stream", heartbeat=None) as ws:
        await ws.send_json({"op": "subscribe", "markets": [f"MADE{n}/UP"]})  # refused
        await ws.send_json({"op": "subscribe", "markets": wanted, "batch": rng.random() < 0.5})
        await ws.send_json({"op": f"op{n}", "markets": wanted})  # refused
        if kind == "reset":
            _reset(ws)
            return kind
        if kind == "bad_frame":
            await ws.send_bytes(b"\x00" * 8)  # answered, then a frame aiohttp cannot read:
            await ws._writer.send_frame(b"\xff\xfe", aiohttp.WSMsgType.TEXT)
        for _ in range(3):  # the three answers, the snapshot between them
            msg = await ws.receive(timeout=SAFETY_S)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
    return kind


async def test_hundreds_of_clients_that_come_and_go_leave_no_state_behind() -> None:
    """240 clients, each of one kind drawn at random: a WebSocket that subscribes (to markets
    known and made up, asks an unknown op) and closes politely, one reset mid-snapshot, one cut
    for an invalid UTF-8 frame, an event stream dropped once started; a round published every
    ten clients. Once they are gone: no subscription, no snapshot under way, no live
    subscription in either stream handler, no connection held by the guard or counted against
    the cap; and with `max_connections` at 40, every one of them was served."""
    # A cap below the number of clients: its table (which keeps closed connections until it
    # nears the cap) must let go of the closed ones, or later clients would be refused.
    rig = Rig(make_config(max_connections=CAP))
    rig.step()
    rng = random.Random(7)
    async with serve_guarded(rig) as (port, limits):
        assert rig.app is not None
        stream, sse = _handlers(rig.app)
        base = f"http://127.0.0.1:{port}"
        timeout = aiohttp.ClientTimeout(total=SAFETY_S)
        kinds: Counter[str] = Counter()
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for n in range(CLIENTS):
                kinds[await _one_client(session, base, rng, n)] += 1
                if n % 10 == 9:
                    rig.step()
        await until(lambda: limits.accepted == 0, "every connection closed")
        await until(lambda: rig.hub.subscribers == 0, "every subscription gone")
        held = {
            "hub._subs": len(rig.hub._subs),
            "hub._snapshots": len(rig.hub._snapshots),
            "stream._active": len(stream._active),
            "sse._active": len(sse._active),
            "limits._live": len(limits._live),
            "limits._waiting": len(limits._waiting),
            "limits.connections": limits.connections,
        }
        assert held == dict.fromkeys(held, 0)
        assert min(kinds.values()) > 0 and len(kinds) == 4, kinds
        assert rig.hub.dropped_subscribers[DROP_BAD_FRAME] == kinds["bad_frame"]
