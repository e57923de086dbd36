"""Requests whose body never ends, against the daemon's listening socket (a `GuardedSite`).

The first-request deadline covered a request's headers only, and aiohttp sets no deadline on a
body: an admin POST with `Content-Length: 1000000` and a byte a second held its connection, and
its place under `api.max_connections`, for good (the handler waited in `request.read()`), on a
new connection as on a keep-alive one after a good request; a GET whose announced body never
came was answered, then drained for 10 s more, uncounted. And `Expect: 100-continue` invited the
body of an admin request whose token was wrong before refusing it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from api_rig import TOKEN, Conn, HeldMetricsRig, Rig, make_config, serve_guarded, until
from stream_wire import ask, next_event, recv
from structlog.testing import capture_logs

AUTH = f"Authorization: Bearer {TOKEN}\r\n"


async def _answer(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    """One answer: its status line, headers (names in lower case) and body."""
    async with asyncio.timeout(5):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status, *lines = head.rstrip("\r\n").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def _closed_by_server(conn: Conn) -> bool:
    """True once the server has closed the connection (bounded: a failure, not a hang)."""
    try:
        async with asyncio.timeout(5):
            while await conn[0].read(65536):
                pass  # an answer given before the close
            return True
    except ConnectionResetError:  # aborted with unread bytes: a reset is a close too
        return True


async def _trickle(writer: asyncio.StreamWriter, data: bytes, pause: float) -> None:
    """Send `data` a few bytes at a time, `pause` seconds apart."""
    for i in range(0, len(data), 16):
        writer.write(data[i : i + 16])
        await writer.drain()
        await asyncio.sleep(pause)


async def _drip(writer: asyncio.StreamWriter) -> None:
    """A body a byte every 0.05 s, until the server closes the connection."""
    while not writer.is_closing():
        writer.write(b"a")
        try:
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(0.05)


async def _drip_line_ends(writer: asyncio.StreamWriter) -> None:
    """An empty line every 0.1 s, until the server closes the connection (5 s at most)."""
    for _ in range(50):
        if writer.is_closing():
            return
        writer.write(b"\r\n")
        try:
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(0.1)


def _round(frame: dict[str, Any]) -> int:
    return int(frame["data"]["round"])


async def test_a_request_whose_body_does_not_end_is_closed_at_the_request_deadline() -> None:
    """Three connections whose request's body does not end within the deadline are aborted at
    it, counted as `request_timeout` and logged once (`api_request_timeout`, with the path and
    the deadline): an admin POST of `Content-Length: 1000000` trickled a byte at a time (its
    handler was waiting for the body), a GET whose announced body never comes (answered, then
    cut instead of drained), and the same admin POST on a keep-alive connection after a good
    request. Nothing was paused, and none of them holds a place under the cap any more."""
    rig = Rig(make_config())
    rig.step()
    async with serve_guarded(rig, request_timeout=0.5, first_request_timeout=60.0) as (
        port,
        limits,
    ):
        big = (
            f"POST /v1/admin/markets/BTC-USD/pause HTTP/1.1\r\nHost: t\r\n{AUTH}"
            "Content-Length: 1000000\r\n\r\n"
        )
        with capture_logs() as logs:
            fresh = await asyncio.open_connection("127.0.0.1", port)
            fresh[1].write(big.encode())
            unsent = await asyncio.open_connection("127.0.0.1", port)
            unsent[1].write(b"GET /v1/info HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
            assert (await _answer(unsent[0]))[0] == "HTTP/1.1 200 OK"
            kept = await asyncio.open_connection("127.0.0.1", port)
            kept[1].write(b"GET /v1/info HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await _answer(kept[0]))[0] == "HTTP/1.1 200 OK"
            kept[1].write(big.encode())
            drips = [asyncio.create_task(_drip(c[1])) for c in (fresh, kept)]
            for conn in (fresh, unsent, kept):
                assert await _closed_by_server(conn)
            await asyncio.gather(*drips)
        assert rig.hub.api_closed["request_timeout"] == 3
        assert rig.manual == []
        events = [e for e in logs if e["event"] == "api_request_timeout"]
        assert len(events) == 1, events
        assert events[0]["closed"] == 1 and events[0]["timeout_s"] == 0.5
        assert events[0]["path"] == "/v1/admin/markets/BTC-USD/pause"
        assert events[0]["remote"] == "127.0.0.1"
        assert events[0]["log_level"] == "warning"
        assert [e["event"] for e in logs if e["event"] == "api_handler_failed"] == []
        await until(lambda: limits.accepted == 0, "the server saw the closes")
        assert limits.connections == 0
        for _, writer in (fresh, unsent, kept):
            writer.close()


async def test_slow_requests_in_time_and_long_streams_are_not_cut() -> None:
    """The deadline bounds each request, not the connection, and is no read timeout: an admin
    pause sent 16 bytes every 0.03 s (headers and body), then, after the connection sat idle
    past the deadline, a resume sent the same way, are both applied on the one connection. A
    WebSocket subscriber that sends a request and a ping now and then, and an event stream,
    stay open for two deadlines and get the next round. Nothing is counted as
    `request_timeout`."""
    rig = Rig(make_config())
    rig.step()
    deadline = 1.0
    async with (
        serve_guarded(rig, request_timeout=deadline, first_request_timeout=60.0) as (port, _),
        aiohttp.ClientSession() as session,
    ):
        ws = await session.ws_connect(f"http://127.0.0.1:{port}/v1/stream")
        await ask(ws, {"op": "subscribe", "markets": ["BTC-USD"]})
        await recv(ws)  # the snapshot
        sse = await session.get(f"http://127.0.0.1:{port}/v1/events?markets=ETH-USD")
        await next_event(sse)  # the snapshot
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for actor, path in (("slow1", "pause"), ("slow2", "resume")):
            if actor == "slow2":
                await asyncio.sleep(deadline * 1.2)  # idle keep-alive: no request under way
                await ws.send_json({"op": "subscribe", "markets": ["BTC-USD"]})
                await ws.ping()
            body = json.dumps({"actor": actor})
            request = (
                f"POST /v1/admin/markets/SOL-USD/{path} HTTP/1.1\r\nHost: t\r\n{AUTH}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
            )
            await _trickle(writer, request.encode(), 0.03)
            status, _, answer = await _answer(reader)
            assert status == "HTTP/1.1 200 OK", answer
        assert rig.manual == [("SOL/USD", True, "slow1"), ("SOL/USD", False, "slow2")]
        rig.step()
        while not ((frame := await recv(ws))["type"] == "report" and _round(frame) == 2):
            pass  # acks, and the snapshots of round 1
        assert frame["data"]["market"] == "BTC/USD"
        name, event = await next_event(sse)
        assert (name, event["data"]["market"], _round(event)) == ("message", "ETH/USD", 2)
        await ws.close()
        sse.close()
        writer.close()
    assert rig.hub.api_closed["request_timeout"] == 0


async def test_an_admin_request_without_a_valid_token_is_refused_before_its_body() -> None:
    """The token is checked before the body is read: a request announcing a megabyte and
    sending none of it is answered 401 at once. Asking `Expect: 100-continue`, a client with a
    wrong or no token, or any client of a daemon without a token, is refused (401, 403) in
    place of the `100 Continue` that invited its body, with `Connection: close`; with the
    token, the 100 comes. A refused client that neither sends its body nor closes is closed
    by the server soon after its answer: aiohttp waited 10 s for the body (its lingering
    close) and the request deadline cut it first, counted as `request_timeout`. With both
    deadlines of the daemon (10 s) at 60 s here, the server still closes both connections
    within the 5 s `_closed_by_server` waits, and counts them as `expect_refused`, neither as
    `request_timeout` nor as connections that never made a request (`first_request_timeout`,
    at 0.5 s here, shorter than the wait after a refusal: no deadline of its own)."""
    rig = Rig(make_config())
    async with serve_guarded(rig, request_timeout=60.0, first_request_timeout=0.5) as (
        port,
        limits,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/admin/reload HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer nope\r\n"
            b"Content-Length: 1000000\r\n\r\n"
        )
        status, headers, body = await _answer(reader)
        assert status == "HTTP/1.1 401 Unauthorized", body
        assert headers["www-authenticate"] == 'Bearer realm="oracled-admin"'
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST /v1/admin/reload HTTP/1.1\r\nHost: t\r\n{AUTH}"
            "Content-Length: 2\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        async with asyncio.timeout(5):
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.close()
        refused = []
        for auth in ("", "Authorization: Bearer x\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"POST /v1/admin/markets/BTC-USD/pause HTTP/1.1\r\nHost: t\r\n{auth}"
                "Content-Length: 2\r\nExpect: 100-continue\r\n\r\n".encode()
            )
            status, headers, body = await _answer(reader)
            assert status == "HTTP/1.1 401 Unauthorized", status
            assert json.loads(body)["error"]["code"] == "unauthorized"
            assert headers["connection"] == "close" and headers["cache-control"] == "no-store"
            assert "www-authenticate" in headers
            refused.append((reader, writer))
        for conn in refused:
            assert await _closed_by_server(conn)
            conn[1].close()
        # Seen closed before the runner's cleanup, which waits for a connection still open.
        await until(lambda: limits.accepted == 0, "the server saw the closes")
    assert rig.manual == []
    assert rig.hub.api_closed["expect_refused"] == 2
    assert rig.hub.api_closed["request_timeout"] == 0
    assert rig.hub.api_closed["first_request_timeout"] == 0
    # The first wrong token's refusal, and each refused in place of 100 Continue, counted once.
    assert {r: n for r, n in rig.hub.admin_refused.items() if n} == {"missing": 1, "wrong": 2}
    disabled = Rig(make_config(token=None))
    async with serve_guarded(disabled, request_timeout=10.0, first_request_timeout=60.0) as (
        port,
        limits,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST /v1/admin/reload HTTP/1.1\r\nHost: t\r\n{AUTH}"
            "Content-Length: 2\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        status, headers, body = await _answer(reader)
        assert status == "HTTP/1.1 403 Forbidden"
        assert json.loads(body)["error"]["code"] == "admin_disabled"
        assert headers["connection"] == "close"
        writer.close()
        await until(lambda: limits.accepted == 0, "the server saw the close")
    assert disabled.hub.api_closed["expect_refused"] == 1
    assert {r: n for r, n in disabled.hub.admin_refused.items() if n} == {"disabled": 1}


async def test_a_body_sent_after_a_refused_expectation_is_no_late_request() -> None:
    """A client may send its body after all once its expectation is refused: a 401 in place of
        `100 Continue`, or the 417 of an expectation the API cannot meet. Its bytes, a byte every
        0.05 s from the answer on, are the refused request's body, not a next request: they start
        no request deadline (0.2 s here, passed four times over while the bytes come), the server
        closes the connection of its own, and each is counted once, as `expect_refused`; nothing
        is paused and nothing is logged as a handler's failure (the wrong token's refusal is logged,
    as any is)."""
    rig = Rig(make_config())
    async with serve_guarded(rig, request_timeout=0.2, first_request_timeout=60.0) as (
        port,
        limits,
    ):
        with capture_logs() as logs:
            for expect, auth, code in (
                ("100-continue", "Authorization: Bearer nope\r\n", "unauthorized"),
                ("bogus", AUTH, "expectation_failed"),
            ):
                conn = await asyncio.open_connection("127.0.0.1", port)
                conn[1].write(
                    f"POST /v1/admin/markets/BTC-USD/pause HTTP/1.1\r\nHost: t\r\n{auth}"
                    f"Content-Length: 100000\r\nExpect: {expect}\r\n\r\n".encode()
                )
                status, headers, body = await _answer(conn[0])
                assert json.loads(body)["error"]["code"] == code, (status, body)
                assert headers["connection"] == "close"
                drip = asyncio.create_task(_drip(conn[1]))
                assert await _closed_by_server(conn)
                await drip
                conn[1].close()
        await until(lambda: limits.accepted == 0, "the server saw the closes")
    assert rig.hub.api_closed["expect_refused"] == 2
    assert rig.hub.api_closed["request_timeout"] == 0
    assert rig.manual == []
    # The one line is the wrong token's refusal (oracled/api/admin.py), no handler's failure.
    warned = [(e["event"], e.get("reason")) for e in logs if e["log_level"] in ("warning", "error")]
    assert warned == [("api_admin_refused", "wrong")]


async def test_a_line_end_after_a_request_starts_no_deadline() -> None:
    """A server ignores an empty line before a request (RFC 9112 2.2), and clients have sent one
    after a POST's body, a segment of its own once the answer is in. Taken for the first byte of
    a request, it started the deadline, and the keep-alive connection, idle after it, was
    aborted at the deadline and counted as `request_timeout` (nothing was late). Now bytes that
    are only line ends begin no request: the connection answers a request sent after two
    deadlines, and nothing is counted. Nor do they hold it open: line ends sent every 0.1 s
    after that request do not keep the keep-alive timer (2 s here, `api.idle_timeout_s` in the
    daemon) from closing it.

    The keep-alive only has to outlast the line ends and the wait past the deadline (0.9 s
    unloaded; a loaded machine stretches both, which once outran a 1 s keep-alive): its width
    proves nothing else, so it is 2 s; the drip still outlasts it by far (5 s)."""
    rig = Rig(make_config())
    rig.step()
    deadline = 0.5
    async with serve_guarded(
        rig, request_timeout=deadline, first_request_timeout=60.0, keepalive_timeout=2.0
    ) as (port, limits):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = json.dumps({"actor": "crlf"})
        writer.write(
            f"POST /v1/admin/markets/SOL-USD/pause HTTP/1.1\r\nHost: t\r\n{AUTH}"
            f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        assert (await _answer(reader))[0] == "HTTP/1.1 200 OK"
        for end in (b"\r\n", b"\n", b"\r\n"):  # each a segment of its own, after the answer
            writer.write(end)
            await writer.drain()
            await asyncio.sleep(0.05)
        await asyncio.sleep(deadline * 1.5)  # past the deadline, within the keep-alive
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, _ = await _answer(reader)
        assert status == "HTTP/1.1 200 OK"
        drip = asyncio.create_task(_drip_line_ends(writer))
        assert await _closed_by_server((reader, writer))
        await drip
        await until(lambda: limits.accepted == 0, "the server saw the close")
        writer.close()
    assert rig.manual == [("SOL/USD", True, "crlf")]
    assert rig.hub.api_closed["request_timeout"] == 0


STALLED = b"GET /v1/info HTTP/1.1\r\nHost: t\r\n"  # a request whose headers never end
GET = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


async def test_a_pipelined_request_whose_headers_stall_is_cut_at_the_request_deadline() -> None:
    """A request's deadline began with a byte that came when no request was under way, so a
    request pipelined behind another, its first bytes in the same segment as the request before
    or sent while that one was answered, had none: with headers that never end it held its
    connection until the keep-alive timer (75 s here) closed it, uncounted. Its deadline now
    runs from its turn, the answer before it: after one request, after two complete ones in
    the same segment, and sent while a `/metrics` render is held for more than the deadline,
    each stalled request is cut at the deadline (0.5 s) once the answers before it are out,
    and counted as `request_timeout`, all three logged as one line without a path (its
    headers never came)."""
    rig = HeldMetricsRig(lambda _: b"up 1\n")
    rig.step()
    async with serve_guarded(rig, request_timeout=0.5, first_request_timeout=60.0) as (
        port,
        limits,
    ):
        with capture_logs() as logs:
            behind_one = await asyncio.open_connection("127.0.0.1", port)
            behind_one[1].write(GET + STALLED)
            behind_two = await asyncio.open_connection("127.0.0.1", port)
            behind_two[1].write(GET + GET + STALLED)
            while_busy = await asyncio.open_connection("127.0.0.1", port)
            while_busy[1].write(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            await until(lambda: rig.calls == 1, "the render began")
            while_busy[1].write(STALLED)
            await asyncio.sleep(0.75)  # past the deadline, while the answer before is made
            rig.release.set()
            for conn, answers in ((behind_one, 1), (behind_two, 2), (while_busy, 1)):
                for _ in range(answers):
                    assert (await _answer(conn[0]))[0] == "HTTP/1.1 200 OK"
                assert await _closed_by_server(conn)
                conn[1].close()
        await until(lambda: limits.accepted == 0, "the server saw the closes")
    assert rig.hub.api_closed["request_timeout"] == 3
    events = [e for e in logs if e["event"] == "api_request_timeout"]
    assert [(e["closed"], e["timeout_s"], "path" in e) for e in events] == [(1, 0.5, False)]


async def test_pipelined_requests_that_are_complete_start_no_deadline() -> None:
    """The deadline of a next request begins only where the bytes received end inside one: two
    complete requests in one segment, and a request whose empty line came in a segment of its
    own, are answered, and their connections, idle past two deadlines, serve a next request.
    Nothing is counted as `request_timeout`."""
    rig = Rig(make_config())
    rig.step()
    deadline = 0.3
    async with serve_guarded(rig, request_timeout=deadline, first_request_timeout=60.0) as (
        port,
        limits,
    ):
        pipelined = await asyncio.open_connection("127.0.0.1", port)
        pipelined[1].write(GET + GET)
        split = await asyncio.open_connection("127.0.0.1", port)
        split[1].write(GET[:-2])
        await split[1].drain()
        await asyncio.sleep(0.05)
        split[1].write(b"\r\n")
        for conn, answers in ((pipelined, 2), (split, 1)):
            for _ in range(answers):
                assert (await _answer(conn[0]))[0] == "HTTP/1.1 200 OK"
        await asyncio.sleep(deadline * 2)
        for conn in (pipelined, split):
            conn[1].write(GET)
            assert (await _answer(conn[0]))[0] == "HTTP/1.1 200 OK"
            conn[1].close()
        await until(lambda: limits.accepted == 0, "the server saw the closes")
    assert rig.hub.api_closed["request_timeout"] == 0
