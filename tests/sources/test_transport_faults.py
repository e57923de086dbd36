"""Hostile venue transports, each a real Binance source against a loopback server: what the
bytes carrying the messages do (pings, closes, handshakes, redirects, bodies), not what the
messages say (test_adapter_fuzz.py has that). Every test counts events, never times them."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from structlog.testing import capture_logs
from test_base_protocol import BOOK, MOVED, Venue, hold, launch, next_request

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
