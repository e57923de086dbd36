"""Connections that never complete a request (slowloris) against the daemon's listening socket.

aiohttp reads a request's headers with no deadline, and the connection cap was counted only
when a request arrived: a few hundred sockets each sending a header line now and then held
every descriptor, uncounted, and every new client, probes included, was reset.
"""

from __future__ import annotations

import asyncio

from api_rig import TOKEN, Conn, Rig, make_config, raw_get, reloaded, serve_guarded, until
from structlog.testing import capture_logs

from oracled.api.limits import ACCEPT_MARGIN


async def _slow(port: int) -> Conn:
    """A connection that sends a request line and then nothing more of its headers."""
    conn = await asyncio.open_connection("127.0.0.1", port)
    conn[1].write(b"GET /v1/info HTTP/1.1\r\nHost: t\r\n")
    await conn[1].drain()
    return conn


async def _closed_by_server(conn: Conn) -> bool:
    """True once the server has closed the connection (bounded: a failure, not a hang)."""
    try:
        async with asyncio.timeout(5):
            return await conn[0].read() == b""
    except ConnectionResetError:  # aborted with unread bytes: a reset is a close too
        return True


async def test_a_connection_without_a_complete_request_is_closed_at_the_deadline() -> None:
    """Connections whose headers never end, one of them trickling a header line past the
    deadline, are aborted at the first-request deadline, counted as `first_request_timeout`
    and logged once (`api_first_request_timeout`, with the number since the last line). A
    connection that made its request in time stays open past the deadline (keep-alive)."""
    rig = Rig(make_config())
    rig.step()
    async with serve_guarded(rig, first_request_timeout=0.3) as (port, limits):
        served = await asyncio.open_connection("127.0.0.1", port)
        assert (await raw_get(served, "/v1/info"))[0] == 200
        with capture_logs() as logs:
            slow = [await _slow(port) for _ in range(3)]
            for _ in range(4):  # a header line every 0.1 s: the deadline is not a read timeout
                await asyncio.sleep(0.1)
                slow[0][1].write(b"X-Slow: 1\r\n")
            for conn in slow:
                assert await _closed_by_server(conn)
        events = [e for e in logs if e["event"] == "api_first_request_timeout"]
        assert len(events) == 1
        assert events[0]["closed"] == 1 and events[0]["timeout_s"] == 0.3
        assert events[0]["remote"] == "127.0.0.1" and events[0]["log_level"] == "warning"
        assert rig.hub.api_closed["first_request_timeout"] == 3
        assert (await raw_get(served, "/v1/prices"))[0] == 200  # well past its own deadline
        assert limits.accepted == 1
        served[1].close()
        await until(lambda: limits.accepted == 0, "the server saw the close")
        for _, writer in slow:
            writer.close()


async def test_a_flood_of_slow_connections_cannot_keep_out_a_probe() -> None:
    """With `api.max_connections = 1`, at most 1 + ACCEPT_MARGIN connections are open: each
    slow connection beyond that closes the oldest one still waiting for its first request
    (counted as `accept_limit`, logged once), and `/healthz` on a new connection is answered
    in the middle of the flood, long before any first-request deadline."""
    rig = Rig(make_config(max_connections=1))
    rig.step()
    room = 1 + ACCEPT_MARGIN
    async with serve_guarded(rig, first_request_timeout=60.0) as (port, limits):
        with capture_logs() as logs:
            slow = [await _slow(port) for _ in range(room + 3)]
            await until(lambda: rig.hub.api_closed["accept_limit"] == 3, "three evicted")
            probe = await asyncio.open_connection("127.0.0.1", port)
            status, _, _ = await raw_get(probe, "/healthz")
        assert status == 200
        for conn in slow[:4]:  # the oldest waiting ones, the last evicted for the probe
            assert await _closed_by_server(conn)
        assert rig.hub.api_closed["accept_limit"] == 4
        assert limits.accepted == room
        events = [e for e in logs if e["event"] == "api_accept_limit"]
        assert len(events) == 1 and events[0]["closed"] == 1
        assert rig.hub.api_closed["first_request_timeout"] == 0
        for _, writer in [*slow, probe]:
            writer.close()


async def test_with_every_place_held_by_served_connections_a_new_one_is_closed_at_accept() -> None:
    """When the cap plus the margin are all connections that made a request (none waiting to
    evict), a newly accepted connection is closed at once and counted as `accept_limit`; the
    connections already served keep their places."""
    rig = reloaded(lambda data: data["api"].update(max_connections=1))
    rig.step()
    room = 1 + ACCEPT_MARGIN
    async with serve_guarded(rig, first_request_timeout=60.0) as (port, limits):
        served = [await asyncio.open_connection("127.0.0.1", port) for _ in range(room)]
        for conn in served:
            assert (await raw_get(conn, "/v1/info"))[0] == 200
        reload = (
            "POST /v1/admin/reload HTTP/1.1\r\nHost: t\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n"
        )
        served[0][1].write(reload.encode())
        assert (await served[0][0].readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        assert rig.core.config.api.max_connections == 1
        late = await asyncio.open_connection("127.0.0.1", port)
        assert await _closed_by_server(late)
        assert rig.hub.api_closed["accept_limit"] == 1
        assert limits.accepted == room
        assert (await raw_get(served[1], "/healthz"))[0] == 200  # over the new cap: answered
        for _, writer in [*served, late]:
            writer.close()
