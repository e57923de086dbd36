"""`GET /v1/events`: the report stream as Server-Sent Events."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

from aiohttp.test_utils import TestClient
from api_rig import ClientFactory, Rig, make_config, until
from stream_wire import next_event
from structlog.testing import capture_logs

from oracled.publish.hub import DROP_SHUTDOWN, DROP_SLOW

Client = TestClient[Any, Any]


async def test_events_carry_the_stream_frames_of_the_asked_markets(
    make_client: ClientFactory,
) -> None:
    """Only ETH/USD frames arrive, as the WebSocket stream's JSON, round after round."""
    rig = Rig(make_config())
    client = await make_client(rig)
    rig.step()
    resp = await client.get("/v1/events?markets=ETH-USD")
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    name, first = await next_event(resp)  # the latest report, at once
    assert (name, first["type"], first["data"]["market"]) == ("message", "report", "ETH/USD")
    rounds = [first["data"]["round"]]
    for _ in range(3):
        rig.step()
        _, frame = await next_event(resp)
        assert frame["data"]["market"] == "ETH/USD"
        rounds.append(frame["data"]["round"])
    assert rounds == [1, 2, 3, 4]  # every round, once, in order
    resp.close()


async def test_bad_queries_are_json_errors(client: Client) -> None:
    """Unknown markets are 404, bad options 400 bad_query, signed frames without signing 400
    signing_disabled."""
    assert (await client.get("/v1/events?markets=NOPE-USD")).status == 404
    cases = {"deviation=2": "bad_query", "heartbeat_ms=0": "bad_query", "signed=maybe": "bad_query"}
    cases |= {"colour=red": "bad_query", "signed=true": "signing_disabled"}
    for query, code in cases.items():
        resp = await client.get(f"/v1/events?{query}")
        assert resp.status == 400, query
        assert (await resp.json())["error"]["code"] == code, query


async def test_a_bad_option_is_named_with_the_value_given(client: Client) -> None:
    """The 400 for a numeric option names that option and what it was given, so that a client
    that sent both knows which to fix: every one said `deviation: a fraction in (0, 1);
    heartbeat_ms: 1 to 86400000`, for a good deviation beside a bad heartbeat_ms too."""
    cases = {
        "deviation=0.001&heartbeat_ms=1_000": "heartbeat_ms: an integer 1 to 86400000, not '1_000'",
        "deviation=2&heartbeat_ms=5000": "deviation: a fraction in (0, 1), not '2'",
        "deviation=nan": "deviation: a fraction in (0, 1), not 'nan'",
        "heartbeat_ms=0": "heartbeat_ms: an integer 1 to 86400000, not '0'",
        f"heartbeat_ms={'9' * 100}": f"heartbeat_ms: an integer 1 to 86400000, not '{'9' * 64}'",
    }
    for query, message in cases.items():
        resp = await client.get(f"/v1/events?markets=BTC-USD&{query}")
        assert resp.status == 400, query
        assert (await resp.json())["error"] == {"code": "bad_query", "message": message}, query


async def test_a_slow_consumer_gets_a_final_error_event(make_client: ClientFactory) -> None:
    """Past its queue the subscription is dropped: the stream ends with event: error, and the
    drop is logged with the consumer's address (`stream_dropped`, as on the WebSocket stream),
    so that an operator can tell which downstream keeps falling behind. Before, an SSE drop was
    counted only."""
    rig = Rig(make_config(stream_queue=2))
    client = await make_client(rig)
    rig.step()
    with capture_logs() as logs:
        resp = await client.get("/v1/events?markets=BTC-USD")
        await next_event(resp)
        sub = next(iter(rig.hub._subs))
        for _ in range(10):  # rounds arrive faster than this client reads: the hub drops it
            rig.step()
            sub._offer((b'{"type":"report"}',) * 3)
        events = []
        while True:
            name, data = await next_event(resp)
            events.append((name, data.get("code")))
            if name == "error":
                break
    assert events[-1] == ("error", "slow_consumer")
    assert rig.hub.dropped_subscribers["slow_consumer"] == 1
    dropped = [e for e in logs if e["event"] == "stream_dropped"]
    assert [(e["reason"], e["remote"]) for e in dropped] == [(DROP_SLOW, "127.0.0.1")]
    resp.close()


async def test_slow_consumer_drops_are_logged_at_most_once_a_minute(
    make_client: ClientFactory,
) -> None:
    """Each slow consumer's drop wrote a `stream_dropped` line, so a client that reconnects and
    stalls on purpose could flood the log; every drop is still counted, but a line is written
    at most once a minute, with the `remote` of its first drop and `dropped`, the number since
    the last line."""
    rig = Rig(make_config(stream_queue=2))
    client = await make_client(rig)
    rig.step()
    with capture_logs() as logs:
        for _ in range(3):
            resp = await client.get("/v1/events?markets=BTC-USD")
            await next_event(resp)
            sub = next(iter(rig.hub._subs))
            for _ in range(10):  # rounds arrive faster than this client reads: it is dropped
                rig.step()
                sub._offer((b'{"type":"report"}',) * 3)
            while (await next_event(resp))[0] != "error":
                pass
            resp.close()
            async with asyncio.timeout(5):
                while rig.hub.subscribers:  # noqa: ASYNC110 - the hub exposes no event for it
                    await asyncio.sleep(0.01)
    assert rig.hub.dropped_subscribers[DROP_SLOW] == 3
    dropped = [e for e in logs if e["event"] == "stream_dropped"]
    assert [(e["reason"], e["remote"], e["dropped"]) for e in dropped] == [
        (DROP_SLOW, "127.0.0.1", 1)
    ]


@contextlib.asynccontextmanager
async def _reader_that_stops(client: TestClient[Any, Any]) -> AsyncIterator[socket.socket]:
    """A raw /v1/events client with a 2 KiB receive buffer that never reads (closed after)."""
    loop = asyncio.get_running_loop()
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    stuck.setblocking(False)
    try:
        assert client.server.port is not None
        await loop.sock_connect(stuck, (client.server.host, client.server.port))
        await loop.sock_sendall(stuck, b"GET /v1/events HTTP/1.1\r\nHost: oracled\r\n\r\n")
        yield stuck
    finally:
        stuck.close()


async def _until_dropped_as_slow(rig: Rig) -> None:
    """Publish rounds until the hub drops a subscriber as slow (the handler writes until the
    socket is full)."""
    while rig.hub.dropped_subscribers[DROP_SLOW] == 0:
        rig.step()
        await asyncio.sleep(0.001)


async def test_a_consumer_that_stops_reading_is_cut_off_after_its_drop(
    make_client: ClientFactory,
) -> None:
    """An event stream whose client stops reading altogether is dropped by the hub and,
    send_timeout_s later, its connection is aborted (its buffered bytes freed) and the drop
    logged with its address, as the WebSocket stream closes such a consumer. Before, the handler
    waited in its write for as long as the client kept the socket open: the connection and its
    buffers were held for ever after the drop (no longer a subscriber in any metric), and the
    drop was logged only if the client ever read again. Found with a raw client that stopped
    reading /v1/events on a running demo: the server's send queue held 2 MB a minute later."""
    rig = Rig(make_config(stream_queue=2, send_timeout_s=0.2))
    client = await make_client(rig, small_send_buffer=True)
    server = client.server.runner.server
    assert server is not None and client.server.port is not None
    async with _reader_that_stops(client):
        with capture_logs() as logs:
            async with asyncio.timeout(60):  # a hang guard only: the loops end on their own
                await _until_dropped_as_slow(rig)
                while server.connections:  # noqa: ASYNC110 - aiohttp exposes no event for it
                    await asyncio.sleep(0.01)
                # The handler, woken by the abort, logs as it ends.
                while not any(e["event"] == "stream_dropped" for e in logs):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        dropped = [e for e in logs if e["event"] == "stream_dropped"]
        assert [(e["reason"], e["remote"]) for e in dropped] == [(DROP_SLOW, "127.0.0.1")]


async def test_a_consumer_that_resets_its_connection_mid_write_is_no_handler_error(
    make_client: ClientFactory,
) -> None:
    """A client that stopped reading and then resets its connection (closes it with data
    unread: a crash, a killed process) ends its stream quietly, like one that closes while the
    handler waits for a round. Before, aiohttp's ConnectionError("Connection lost") from the
    pending write was not caught: each such client wrote an api_handler_failed error with a
    traceback. Found on a running demo: two raw /v1/events clients that stopped reading and
    closed gave two tracebacks."""
    rig = Rig(make_config(stream_queue=2))
    client = await make_client(rig, small_send_buffer=True)
    server = client.server.runner.server if client.server.runner is not None else None
    assert server is not None and client.server.port is not None
    assert not server.handler_cancellation  # served as the daemon serves (conftest)
    async with _reader_that_stops(client) as stuck:
        with capture_logs() as logs:
            async with asyncio.timeout(60):  # a hang guard only: the loops end on their own
                await _until_dropped_as_slow(rig)
                # The handler now waits on a write: reset the connection under it.
                stuck.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                stuck.close()
                while server.connections:  # noqa: ASYNC110 - aiohttp exposes no event for it
                    await asyncio.sleep(0.01)
                while not any(e["event"] == "stream_dropped" for e in logs):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)  # the handler has ended
        assert [e["event"] for e in logs if e["log_level"] == "error"] == []


async def test_a_parameter_given_twice_is_refused_not_half_read(client: Client, rig: Rig) -> None:
    """`?markets=BTC-USD&markets=ETH-USD` is a 400 bad_query, as on /v1/prices, and so is any
    option given twice: the stream used to follow the first value alone (BTC/USD only, or
    deviation 0.5 with a second, invalid deviation never looked at), a subscription other than
    the one asked for with nothing to say so."""
    rig.step()
    for query in (
        "markets=BTC-USD&markets=ETH-USD",
        "markets=BTC-USD&deviation=0.5&deviation=7",
        "signed=false&signed=false",
        "heartbeat_ms=1000&heartbeat_ms=1000",
    ):
        resp = await client.get(f"/v1/events?{query}")
        assert resp.status == 400, query
        error = (await resp.json())["error"]
        assert error["code"] == "bad_query", query
        assert "once" in error["message"], query
    # One value each is still a stream.
    resp = await client.get("/v1/events?markets=BTC-USD,ETH-USD&deviation=0.5&heartbeat_ms=1000")
    assert resp.status == 200
    resp.close()


async def test_a_shutdown_ends_the_stream_with_an_error_event_coded_shutdown(
    make_client: ClientFactory,
) -> None:
    """A server shutdown and a closed hub (the runtime's two shutdown paths) both end the event
    stream with `event: error` coded `shutdown`, the code the hub counts it under; the server's
    own shutdown used to send the code `unsubscribed`, an internal word no document names."""
    for close_hub in (False, True):
        rig = Rig(make_config())
        client = await make_client(rig)
        rig.step()
        resp = await client.get("/v1/events?markets=BTC-USD")
        await next_event(resp)  # the snapshot: the subscription is in place
        closing = asyncio.create_task(rig.hub.close() if close_hub else client.server.close())
        name, frame = await next_event(resp)
        await closing
        assert (name, frame["type"], frame["code"]) == ("error", "error", "shutdown"), close_hub
        assert frame["message"] == "server shutting down"
        assert rig.hub.subscribers == 0
        resp.close()


async def test_numeric_options_are_plain_ascii_numbers(client: Client, rig: Rig) -> None:
    """heartbeat_ms and deviation take plain ASCII numbers only, as the document's integer and
    number types say: Python's own int() and float() also took `1_000`, ` 1000`, `+1000` and
    Arabic-Indic or full-width digits, so a typo or a mangled query became a subscription."""
    rig.step()
    refused = [
        "heartbeat_ms=1_000",
        "heartbeat_ms=%201000",
        "heartbeat_ms=%2B1000",
        "heartbeat_ms=%D9%A5",  # ARABIC-INDIC DIGIT FIVE
        "heartbeat_ms=%EF%BC%95",  # FULLWIDTH DIGIT FIVE
        "heartbeat_ms=5.0",
        "deviation=0.0_1",
        "deviation=%200.01",
        "deviation=%D9%A0.%D9%A1",
        "deviation=nan",
        "deviation=0x1p-4",
    ]
    for query in refused:
        resp = await client.get(f"/v1/events?markets=BTC-USD&{query}")
        assert resp.status == 400, query
        assert (await resp.json())["error"]["code"] == "bad_query", query
    for query in ("heartbeat_ms=1000", "deviation=0.01", "deviation=.5", "deviation=1e-3"):
        resp = await client.get(f"/v1/events?markets=BTC-USD&{query}")
        assert resp.status == 200, query
        resp.close()


async def test_a_consumer_gone_when_its_stream_ends_is_no_handler_error(
    make_client: ClientFactory,
) -> None:
    """A consumer whose connection is closing when the hub ends its stream (as a slow
    consumer, or at shutdown) is let go quietly: the final event's write to the closing
    connection raised out of the handler, which logged api_handler_failed with a traceback (an
    error for the operator about a consumer that left) and tried to answer a 500; found when a
    test's client and server closed together. Here the connection is closed from the server's
    side, as a peer's reset starts it, right after the drop and before the handler runs."""
    for reason in (DROP_SLOW, DROP_SHUTDOWN):
        rig = Rig(make_config())
        client = await make_client(rig)
        rig.step()
        resp = await client.get("/v1/events?markets=BTC-USD")
        await next_event(resp)
        server = client.server.runner.server
        assert server is not None
        (conn,) = server.connections
        (sub,) = rig.hub._subs
        assert conn.transport is not None
        with capture_logs() as logs:
            rig.hub.drop(sub, reason)
            conn.transport.close()
            await client.close()  # waits for the handler to finish
        assert rig.hub.subscribers == 0
        assert rig.hub.dropped_subscribers[reason] == 1
        assert [e for e in logs if e["log_level"] in ("error", "critical")] == [], reason


async def test_a_consumer_that_leaves_between_frames_frees_its_subscription_at_once(
    make_client: ClientFactory,
) -> None:
    """Twenty consumers of a quiet stream (`deviation=0.5`: the snapshot, then nothing while
    prices hold) that close their connections have their subscriptions freed within a second
    or so, not at the next keep-alive write. Served as the daemon serves (a lost connection
    does not cancel the handler), the handler learnt of the departure only when a write failed,
    up to 15 s later: meanwhile the subscription was held, fanned rounds out and was counted
    in `oracled_stream_subscribers`, though its connection no longer counted against
    `api.max_connections`, so a client opening and closing streams held many more than the cap
    (found fuzzing the event stream: tests/api/test_api_fuzz.py)."""
    rig = Rig(make_config())
    client = await make_client(rig)
    rig.step()
    for _ in range(20):
        resp = await client.get("/v1/events?deviation=0.5")
        assert resp.status == 200
        _, frame = await next_event(resp)  # subscribed: the snapshot came
        assert frame["type"] == "report"
        resp.close()  # the connection goes with it
    rig.step()  # prices hold: nothing is written to the streams
    await until(lambda: rig.hub.subscribers == 0, "the subscriptions freed")
