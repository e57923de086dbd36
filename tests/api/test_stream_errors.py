"""Every error code of the two streams, from the one table of them in docs/contracts.md (*Stream
errors*): each is produced here and arrives in its documented shape, and the table, the OpenAPI
document and these tests name the same codes."""

from __future__ import annotations

import asyncio
import json
import re
import struct
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient
from api_rig import (
    TOKEN,
    ClientFactory,
    DaemonServer,
    Rig,
    openapi_doc,
    rig_whose_reload_removes_sol,
)
from raw_ws import RawWebSocket
from stream_wire import SAFETY_S, ask, next_event, recv
from structlog.testing import capture_logs

from oracled.api import build_app
from oracled.publish.hub import DROP_BAD_FRAME, DROP_PING_TIMEOUT, DROP_SHUTDOWN, DROP_SLOW

Client = TestClient[web.Request, web.Application]
CONTRACTS = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"
ERROR_KEYS = {"type", "code", "message"}

#: Requests a WebSocket client can get wrong, and the code of the error frame each gets.
BAD_REQUESTS: list[tuple[str, str]] = [
    ("{not json", "bad_request"),
    ("[1]", "bad_request"),
    ("{}", "bad_request"),
    ('{"op": 5}', "bad_request"),
    ('{"op": "dance"}', "bad_request"),
    ('{"op": "subscribe", "market": "ETH/USD"}', "bad_request"),
    ('{"op": "subscribe", "markets": "ETH/USD"}', "bad_request"),
    ('{"op": "subscribe", "markets": [1]}', "bad_request"),
    ('{"op": "subscribe", "deviation": 1}', "bad_request"),
    ('{"op": "subscribe", "deviation": "0.1"}', "bad_request"),
    ('{"op": "subscribe", "heartbeat_ms": 0}', "bad_request"),
    ('{"op": "subscribe", "heartbeat_ms": 1.5}', "bad_request"),
    ('{"op": "subscribe", "batch": 1}', "bad_request"),
    ('{"op": "subscribe", "markets": ["ETH"]}', "bad_query"),
    (json.dumps({"op": "subscribe", "markets": [f"A{i}/USD" for i in range(257)]}), "bad_query"),
    ('{"op": "subscribe", "markets": ["DOGE/USD"]}', "unknown_market"),
    ('{"op": "subscribe", "markets": ["ETH/USD", "DOGE/USD"]}', "unknown_market"),
    ('{"op": "unsubscribe", "markets": ["BTC/USD", "DOGE/USD"]}', "unknown_market"),
    ('{"op": "subscribe", "signed": true}', "signing_disabled"),
]
#: `GET /v1/events` queries and the HTTP error each gets (its subscription is its query).
BAD_QUERIES: list[tuple[str, int, str]] = [
    ("markets=ETH", 400, "bad_query"),
    ("deviation=1", 400, "bad_query"),
    ("markets=DOGE-USD", 404, "unknown_market"),
    ("signed=true", 400, "signing_disabled"),
]
#: The codes the tests of this file produce, and the one produced elsewhere (a consumer that
#: stops reading: tests/api/test_stream.py and test_sse.py, slow by nature).
PRODUCED = {code for _, code in BAD_REQUESTS} | {
    "stalled",
    "market_removed",
    DROP_SHUTDOWN,
    DROP_BAD_FRAME,
    DROP_PING_TIMEOUT,
}
PRODUCED_ELSEWHERE = {DROP_SLOW}


def table() -> dict[str, list[str]]:
    """The *Stream errors* table of docs/contracts.md: code -> its other cells."""
    text = CONTRACTS.read_text(encoding="utf-8")
    section = text[text.index("### Stream errors") :]
    section = section[: section.index("\n## ")]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        row = re.fullmatch(r"\| `([a-z_]+)` \| (.+) \|", line)
        if row:
            rows[row[1]] = [cell.strip() for cell in row[2].split(" | ")]
    return rows


def is_error(frame: dict[str, Any], code: str) -> bool:
    return frame["type"] == "error" and frame["code"] == code and bool(frame["message"])


def test_the_table_names_every_code_and_only_those() -> None:
    """The table's codes are those the streams give (each produced by a test), and the frame
    codes in it (an error frame on the WebSocket) are those the OpenAPI document names."""
    rows = table()
    assert set(rows) == PRODUCED | PRODUCED_ELSEWHERE
    frames = {code for code, cells in rows.items() if cells[0].startswith("error frame")}
    (error,) = [
        v
        for v in openapi_doc()["components"]["schemas"]["StreamMessage"]["oneOf"]
        if "code" in v["properties"]
    ]
    named = set(
        re.findall(r"\b[a-z]+_[a-z_]+\b|\bstalled\b", error["properties"]["code"]["description"])
    )
    assert frames == named
    closes = {code: cells[0] for code, cells in rows.items() if cells[0].startswith("close")}
    assert closes == {
        DROP_SLOW: "close 1008",
        DROP_SHUTDOWN: "close 1001",
        DROP_BAD_FRAME: "close 1009, 1007 or 1002 (no reason)",
    }
    assert rows[DROP_PING_TIMEOUT][0] == "connection cut, no close frame (the client sees 1006)"


async def test_each_bad_request_gets_its_error_frame_and_changes_nothing(
    client: Client, rig: Rig
) -> None:
    """Each bad request in BAD_REQUESTS (and a binary frame: `bad_request`) is answered by one
    error frame of exactly `type`, `code` and `message`, with its code; the connection stays
    open and its subscription as it was."""
    rig.step()
    async with client.ws_connect("/v1/stream") as ws:
        await ask(ws, {"op": "subscribe", "markets": ["BTC/USD"]})
        assert (await recv(ws))["data"]["market"] == "BTC/USD"  # the snapshot
        for text, code in BAD_REQUESTS:
            frame = await ask(ws, text)
            assert set(frame) == ERROR_KEYS and is_error(frame, code), (text, frame)
        await ws.send_bytes(b"\x00\x01")
        frame = await recv(ws)
        assert set(frame) == ERROR_KEYS and is_error(frame, "bad_request"), frame
        rig.step()
        frame = await recv(ws)
        assert (frame["type"], frame["data"]["market"]) == ("report", "BTC/USD")


async def test_batch_with_signed_is_a_bad_request_on_a_signing_daemon(
    client: Client, rig: Rig
) -> None:
    """Where the daemon signs, `batch` with `signed` is refused `bad_request` (not
    `signing_disabled`, which only a daemon without a key says)."""
    rig.hub.signer = "0x" + "ab" * 20
    async with client.ws_connect("/v1/stream") as ws:
        frame = await ask(ws, {"op": "subscribe", "signed": True, "batch": True})
        assert set(frame) == ERROR_KEYS and is_error(frame, "bad_request"), frame
        assert frame["message"] == "batch: report frames only; not with signed frames"


async def test_the_codes_that_answer_no_request_keep_the_error_shape(
    make_client: ClientFactory,
) -> None:
    """`market_removed` (after a reload) is the error frame with `markets` added, `stalled`
    (after an ack, while the round loop is stalled) the plain error frame; neither answers a
    request, and the connection stays open."""
    rig = rig_whose_reload_removes_sol()
    client = await make_client(rig)
    rig.step()
    async with client.ws_connect("/v1/stream") as ws:
        await ask(ws, {"op": "subscribe", "markets": ["SOL/USD"]})
        await recv(ws)  # the snapshot
        resp = await client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.status == 200
        rig.step()
        frame = await recv(ws)
        assert set(frame) == ERROR_KEYS | {"markets"} and is_error(frame, "market_removed")
        assert frame["markets"] == ["SOL/USD"]
        rig.clock.advance(5_001)
        assert (await ask(ws, {"op": "subscribe", "markets": ["BTC/USD"]}))["type"] == "subscribed"
        frame = await recv(ws)
        assert set(frame) == ERROR_KEYS and is_error(frame, "stalled"), frame


async def test_the_event_streams_query_errors_are_http_errors(client: Client) -> None:
    """Over SSE a subscription is its query: what a WebSocket request is told in an error frame
    is told by the HTTP error answer, with the same code (and for `signing_disabled` the same
    words: they differed, 'reports' and 'rounds')."""
    told: dict[str, str] = {}
    for query, status, code in BAD_QUERIES:
        async with client.get(f"/v1/events?{query}") as resp:
            assert resp.status == status, query
            error = (await resp.json())["error"]
            assert error["code"] == code, query
            told[code] = error["message"]
    async with client.ws_connect("/v1/stream") as ws:
        frame = await ask(ws, {"op": "subscribe", "signed": True})
    assert frame["message"] == told["signing_disabled"] == "this daemon does not sign its rounds"


async def test_shutdown_ends_both_streams_with_its_code(client: Client, rig: Rig) -> None:
    """On shutdown a WebSocket is closed 1001 with the reason `shutdown: ...`, and an event
    stream ends with an `event: error` of code `shutdown`: the same code either way."""
    rig.step()
    events = await client.get("/v1/events?markets=BTC-USD")
    await next_event(events)  # the snapshot
    ws = await client.ws_connect("/v1/stream")
    await ask(ws, {"op": "subscribe", "markets": ["BTC/USD"]})
    await recv(ws)  # the snapshot
    await rig.hub.close()
    msg = await ws.receive(timeout=SAFETY_S)
    assert (msg.type, msg.data, msg.extra) == (
        WSMsgType.CLOSE,
        1001,
        "shutdown: server shutting down",
    )
    name, frame = await next_event(events)
    assert name == "error" and set(frame) == ERROR_KEYS and is_error(frame, DROP_SHUTDOWN)
    events.close()


async def test_a_frame_the_server_cannot_read_closes_with_its_code_counted_as_bad_frame(
    client: Client, rig: Rig
) -> None:
    """A frame with a reserved bit set is not answered: the connection is closed 1002, with no
    reason (aiohttp closes it before the handler sees the frame; the docs said "with aiohttp's
    reason", which none of 12 malformed frames of the API fuzz's probe ever got), and the drop
    counted with the reason `bad_frame`."""
    host, port = client.server.host, client.server.port
    assert port is not None
    raw = await RawWebSocket.connect(host, port, "/v1/stream")
    try:
        await raw.send_frame(0x1, b'{"op":"subscribe"}', rsv=0x40)
        frames = await raw.read_to_eof()
    finally:
        raw.close()
    opcode, payload = frames[-1]
    assert opcode == 0x8 and payload == struct.pack("!H", 1002)  # the code alone
    assert rig.hub.dropped_subscribers[DROP_BAD_FRAME] == 1


#: The test server's ping interval: a pong is due within half of it (aiohttp's rule).
SHORT_HEARTBEAT_S = 1.0


async def test_a_client_that_stops_answering_pings_is_cut_off_as_ping_timeout(
    aiohttp_client: Any, rig: Rig
) -> None:
    """A client that answers no ping is cut off without a close frame (it sees 1006) and counted
    as a `ping_timeout` drop, not a `bad_frame` (it sent no frame the server refused), with a
    `stream_ping_timeout` warning naming its address; a client that answers pings, connected
    as long, stays subscribed."""
    app = build_app(rig.context(), stream_heartbeat=SHORT_HEARTBEAT_S)
    client: Client = await aiohttp_client(DaemonServer(app))
    host, port = client.server.host, client.server.port
    assert port is not None
    with capture_logs() as logs:
        async with client.ws_connect("/v1/stream") as answering:  # aiohttp pongs while reading
            reading = asyncio.create_task(answering.receive())
            raw = await RawWebSocket.connect(host, port, "/v1/stream")
            try:
                async with asyncio.timeout(SAFETY_S + 2 * SHORT_HEARTBEAT_S):
                    frames = await raw.read_to_eof()
            finally:
                raw.close()
            assert frames and {op for op, _ in frames} == {0x9}, frames  # pings, then cut off
            async with asyncio.timeout(SAFETY_S):
                while rig.hub.subscribers > 1:  # noqa: ASYNC110 - the hub exposes no event
                    await asyncio.sleep(0.01)
            await asyncio.sleep(SHORT_HEARTBEAT_S)  # one more round of pings for the other
            assert not reading.done() and not answering.closed and rig.hub.subscribers == 1
            reading.cancel()
    assert rig.hub.dropped_subscribers == {
        DROP_SLOW: 0,
        DROP_SHUTDOWN: 0,
        DROP_BAD_FRAME: 0,
        DROP_PING_TIMEOUT: 1,
    }
    timeouts = [e for e in logs if e["event"].startswith("stream_")]
    assert [(e["event"], e["remote"], e["closed"]) for e in timeouts] == [
        ("stream_ping_timeout", "127.0.0.1", 1)
    ]


async def test_an_unmasked_client_frame_is_read_like_a_masked_one(client: Client) -> None:
    """RFC 6455 5.1 has a server close the connection on a client frame without a mask;
    aiohttp reads it like a masked one and has no hook to refuse it (its frame reader is
    internal, and a message does not say whether it was masked), so the API answers it: the
    documented exception (docs/contracts.md), pinned here so that the docs follow aiohttp if
    it starts to refuse such frames."""
    host, port = client.server.host, client.server.port
    assert port is not None
    raw = await RawWebSocket.connect(host, port, "/v1/stream")
    try:
        await raw.send_unmasked(0x1, b'{"op":"subscribe","markets":["BTC/USD"]}')
        ((opcode, payload),) = await raw.read_frames(1)
    finally:
        raw.close()
    assert opcode == 0x1
    assert json.loads(payload) == {"type": "subscribed", "markets": ["BTC/USD"]}
