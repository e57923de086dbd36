"""WS /v1/stream: subscriptions, pre-encoded report frames, errors, and slow-consumer drops."""

from __future__ import annotations

import asyncio
import copy
import json
import struct
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient
from api_rig import (
    CONFIG,
    PRICES,
    TOKEN,
    ClientFactory,
    Rig,
    make_config,
    rig_whose_reload_removes_sol,
)
from raw_ws import RawWebSocket
from stream_wire import SAFETY_S, ask, recv
from structlog.testing import capture_logs

from oracled.config import parse_config
from oracled.publish import DROP_SHUTDOWN, DROP_SLOW
from oracled.publish.hub import DROP_BAD_FRAME, DROP_PING_TIMEOUT

Client = TestClient[web.Request, web.Application]


def report(msg: dict[str, Any]) -> tuple[str, int]:
    assert msg["type"] == "report", msg
    return msg["data"]["market"], msg["data"]["round"]


async def reload(client: Client) -> dict[str, Any]:
    """POST /v1/admin/reload as an operator; the changes it answers with."""
    resp = await client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


async def test_stream_sends_only_subscribed_markets(client: Client, rig: Rig) -> None:
    """Reports arrive for the subscribed markets only, each round, after the ack and a snapshot."""
    async with client.ws_connect("/v1/stream") as ws:
        ack = await ask(ws, {"op": "subscribe", "markets": ["BTC-USD"]})
        assert ack == {"type": "subscribed", "markets": ["BTC/USD"]}
        rig.step()
        assert report(await recv(ws)) == ("BTC/USD", 1)
        rig.step()
        assert report(await recv(ws)) == ("BTC/USD", 2)
        # The next message is the ack: no other market's report slipped in.
        ack = await ask(ws, {"op": "subscribe", "markets": ["SOL/USD"]})
        assert ack == {"type": "subscribed", "markets": ["BTC/USD", "SOL/USD"]}
        assert report(await recv(ws)) == ("SOL/USD", 2)  # snapshot of the added market
        rig.step()
        assert [report(await recv(ws)) for _ in range(2)] == [("BTC/USD", 3), ("SOL/USD", 3)]
        ack = await ask(ws, {"op": "unsubscribe", "markets": ["BTC/USD"]})
        assert ack == {"type": "unsubscribed", "markets": ["SOL/USD"]}


async def test_stream_frames_are_the_hub_bytes(client: Client, rig: Rig) -> None:
    """The frame on the wire is the hub's pre-encoded report wrapped once, byte for byte."""
    async with client.ws_connect("/v1/stream") as ws:
        await ask(ws, {"op": "subscribe", "markets": ["ETH/USD"]})
        rig.step()
        async with asyncio.timeout(SAFETY_S):
            msg = await ws.receive()
        expected = b'{"type":"report","data":' + rig.hub.encoded("ETH/USD") + b"}"
        assert msg.data.encode() == expected


async def test_subscribe_without_markets_means_all(client: Client, rig: Rig) -> None:
    """No markets = every market; unsubscribe without markets = none; reports follow the set."""
    rig.step()
    async with client.ws_connect("/v1/stream") as ws:
        ack = await ask(ws, {"op": "subscribe"})
        assert ack["markets"] == ["BTC/USD", "ETH/USD", "SOL/USD"]
        snapshot = [report(await recv(ws)) for _ in range(3)]
        assert snapshot == [("BTC/USD", 1), ("ETH/USD", 1), ("SOL/USD", 1)]
        assert (await ask(ws, {"op": "unsubscribe"})) == {"type": "unsubscribed", "markets": []}
        rig.step()
        await asyncio.sleep(0)
        ack = await ask(ws, {"op": "subscribe", "markets": []})
        assert ack["type"] == "subscribed"  # round 2 sent nothing while unsubscribed
        assert [report(await recv(ws))[1] for _ in range(3)] == [2, 2, 2]


async def test_bad_requests_get_error_frames_and_keep_the_connection(
    client: Client, rig: Rig
) -> None:
    """Bad JSON, unknown ops, fields or markets, binary frames: an error each, nothing changes."""
    async with client.ws_connect("/v1/stream") as ws:
        await ask(ws, {"op": "subscribe", "markets": ["BTC/USD"]})
        cases: list[tuple[dict[str, Any] | str, str]] = [
            ("{not json", "bad_request"),
            ({"op": "dance"}, "bad_request"),
            ({"op": "subscribe", "market": "ETH/USD"}, "bad_request"),
            ({"op": "subscribe", "markets": ["DOGE/USD"]}, "unknown_market"),
            ({"op": "subscribe", "markets": ["ETH/USD", "DOGE/USD"]}, "unknown_market"),
            ({"op": "subscribe", "markets": ["BTC"]}, "bad_query"),
        ]
        for request, code in cases:
            err = await ask(ws, request)
            assert (err["type"], err["code"]) == ("error", code), request
            assert err["message"]
        await ws.send_bytes(b"\x00\x01")
        err = await recv(ws)
        assert err["type"] == "error"
        rig.step()
        assert report(await recv(ws)) == ("BTC/USD", 1)  # still subscribed to BTC only
        ack = await ask(ws, {"op": "subscribe", "markets": ["ETH/USD"]})
        assert ack["markets"] == ["BTC/USD", "ETH/USD"]


async def test_paused_market_streams_null_price_with_last_good(client: Client, rig: Rig) -> None:
    """A manually paused market streams price null and keeps last_good_price apart."""
    rig.step()
    good = rig.hub.report("ETH/USD")
    assert good is not None and good.price is not None
    rig.on_manual("ETH/USD", True, "test")
    async with client.ws_connect("/v1/stream") as ws:
        await ask(ws, {"op": "subscribe", "markets": ["ETH/USD"]})
        await recv(ws)  # snapshot of round 1
        rig.step()
        data = (await recv(ws))["data"]
        assert (data["status"], data["price"], data["reasons"]) == ("paused", None, ["manual"])
        assert data["last_good_price"] == good.price


async def test_disconnect_removes_the_subscriber(client: Client, rig: Rig) -> None:
    """A client that leaves is unsubscribed from the hub, and not counted as a drop."""
    ws = await client.ws_connect("/v1/stream")
    await ask(ws, {"op": "subscribe"})
    assert rig.hub.subscribers == 1
    await ws.close()
    async with asyncio.timeout(SAFETY_S):
        while rig.hub.subscribers:  # noqa: ASYNC110 - the hub exposes no event to wait on
            await asyncio.sleep(0.01)
    assert sum(rig.hub.dropped_subscribers.values()) == 0


async def test_server_shutdown_closes_streams_with_1001(client: Client, rig: Rig) -> None:
    """A graceful shutdown closes each stream with code 1001 instead of waiting on it."""
    ws = await client.ws_connect("/v1/stream")
    await ask(ws, {"op": "subscribe"})
    async with asyncio.timeout(SAFETY_S):
        closing = asyncio.create_task(client.server.close())
        msg = await ws.receive()
        await closing
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
    assert rig.hub.subscribers == 0


async def test_hub_close_closes_streams_with_1001(client: Client, rig: Rig) -> None:
    """Closing the hub first (the runtime's shutdown order) also ends streams with 1001."""
    ws = await client.ws_connect("/v1/stream")
    await ask(ws, {"op": "subscribe", "markets": ["BTC/USD"]})
    await rig.hub.close()
    async with asyncio.timeout(SAFETY_S):
        msg = await ws.receive()
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
    assert msg.extra == "shutdown: server shutting down"  # the code, as the SSE's error event
    assert rig.hub.dropped_subscribers[DROP_SHUTDOWN] == 1


async def test_slow_consumer_is_closed_1008_while_others_keep_receiving(
    make_client: ClientFactory, rig: Rig
) -> None:
    """A client that stops reading is dropped (1008, reason given); memory stays bounded."""
    client = await make_client(rig, small_send_buffer=True)
    host, port = client.server.host, client.server.port
    assert port is not None
    stuck = await RawWebSocket.connect(host, port, "/v1/stream")
    try:
        await stuck.send_text('{"op":"subscribe"}')
        async with client.ws_connect("/v1/stream") as good:
            await ask(good, {"op": "subscribe", "markets": ["BTC/USD"]})
            bound = 2 * max(rig.cfg.api.stream_queue, len(rig.cfg.markets))
            rounds = 0
            async with asyncio.timeout(60):  # a hang guard only: the loop ends on the drop
                while rig.hub.dropped_subscribers[DROP_SLOW] == 0:
                    rig.step()
                    rounds += 1
                    assert report(await recv(good)) == ("BTC/USD", rounds)
                    assert rig.hub.pending_frames <= bound  # memory never grows with the backlog
            assert rig.hub.dropped_subscribers == {
                DROP_SLOW: 1,
                DROP_SHUTDOWN: 0,
                DROP_BAD_FRAME: 0,
                DROP_PING_TIMEOUT: 0,
            }
            rig.step()
            assert report(await recv(good)) == ("BTC/USD", rounds + 1)
            async with asyncio.timeout(SAFETY_S):
                frames = await stuck.read_to_eof()
        opcode, payload = frames[-1]
        assert opcode == 0x8  # close
        (code,) = struct.unpack_from("!H", payload)
        assert code == 1008
        assert payload[2:] == b"slow_consumer: fell more than 4 reports behind"
        assert all(op == 0x1 for op, _ in frames[:-1])
        assert rig.hub.subscribers == 0
    finally:
        stuck.close()


async def test_slow_consumer_drops_are_logged_at_most_once_a_minute(
    make_client: ClientFactory,
) -> None:
    """Each slow consumer closed 1008 wrote a `stream_dropped` line, so a client that reconnects
    and stalls on purpose could flood the log; every drop is still counted, but a line is
    written at most once a minute, with the `remote` of its first drop and `dropped`, the
    number since the last line."""
    rig = Rig(make_config(stream_queue=2))
    client = await make_client(rig)
    with capture_logs() as logs:
        for _ in range(3):
            async with client.ws_connect("/v1/stream") as ws:
                await ask(ws, {"op": "subscribe", "markets": ["BTC/USD"]})
                sub = next(iter(rig.hub._subs))
                for _ in range(10):  # frames faster than this client reads: it is dropped
                    rig.step()
                    sub._offer((b'{"type":"report"}',) * 3)
                async with asyncio.timeout(SAFETY_S):
                    while (msg := await ws.receive()).type is not WSMsgType.CLOSE:
                        pass
                assert msg.data == 1008
            async with asyncio.timeout(SAFETY_S):
                while rig.hub.subscribers:  # noqa: ASYNC110 - the hub exposes no event for it
                    await asyncio.sleep(0.01)
    assert rig.hub.dropped_subscribers[DROP_SLOW] == 3
    dropped = [e for e in logs if e["event"] == "stream_dropped"]
    assert [(e["reason"], e["remote"], e["dropped"]) for e in dropped] == [
        (DROP_SLOW, "127.0.0.1", 1)
    ]


async def test_every_market_includes_a_market_a_reload_adds(make_client: ClientFactory) -> None:
    """A subscription to every market (no `markets`) follows the config, as the event stream's
    default does: a market a reload adds is streamed to it without a new request, and an
    explicit unsubscribe still works on the set of the moment."""
    rig = Rig(make_config())
    data = copy.deepcopy(CONFIG)
    data["markets"].append(
        {
            "symbol": "DOGE/USD",
            "min_sources": 1,
            "max_age_ms": 1_000,
            "sources": [{"source": "alpha", "pair": "DOGE/USD"}],
        }
    )
    rig.next_config = parse_config(data, env={"ORACLED_ADMIN_TOKEN": TOKEN})
    client = await make_client(rig)
    async with client.ws_connect("/v1/stream") as ws:
        ack = await ask(ws, {"op": "subscribe"})
        assert ack["markets"] == ["BTC/USD", "ETH/USD", "SOL/USD"]
        assert (await reload(client))["markets_added"] == ["DOGE/USD"]
        rig.step({**PRICES, "DOGE/USD": 0.38})
        got = [report(await recv(ws)) for _ in range(4)]
        assert got == [("BTC/USD", 1), ("ETH/USD", 1), ("SOL/USD", 1), ("DOGE/USD", 1)]
        ack = await ask(ws, {"op": "unsubscribe", "markets": ["BTC/USD"]})
        assert ack["markets"] == ["ETH/USD", "SOL/USD", "DOGE/USD"]


async def test_a_request_of_16_kib_or_more_closes_the_stream_with_1009(
    client: Client, rig: Rig
) -> None:
    """A request frame under 16 KiB is read; one of 16 KiB or more closes the connection with
    1009 (message too big) instead of being buffered, and its subscription goes, counted as a
    `bad_frame` drop and logged with the close code."""
    with capture_logs() as logs:
        async with client.ws_connect("/v1/stream") as ws:
            request = '{"op":"subscribe","markets":["BTC/USD"]}'
            largest = request[:-1] + " " * (16 * 1024 - 1 - len(request)) + "}"
            assert len(largest) == 16 * 1024 - 1
            assert (await ask(ws, largest))["type"] == "subscribed"
            await ws.send_str(largest[:-1] + " }")
            async with asyncio.timeout(SAFETY_S):
                msg = await ws.receive()
            assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1009)
        async with asyncio.timeout(SAFETY_S):
            while rig.hub.subscribers:  # noqa: ASYNC110 - the hub exposes no event to wait on
                await asyncio.sleep(0.01)
    assert rig.hub.dropped_subscribers == {
        DROP_SLOW: 0,
        DROP_SHUTDOWN: 0,
        DROP_BAD_FRAME: 1,
        DROP_PING_TIMEOUT: 0,
    }
    bad = [e for e in logs if e["event"] == "stream_bad_frame"]
    assert [(e["code"], e["log_level"]) for e in bad] == [(1009, "warning")]


async def test_a_frame_the_server_cannot_read_closes_with_its_rfc_6455_code_logged_and_counted(
    client: Client, rig: Rig
) -> None:
    """Text that is not UTF-8 closes the connection with 1007, a frame with reserved bits set
    with 1002 (protocol error), instead of a silent 1000: each is a `bad_frame` drop and a
    `stream_bad_frame` warning naming the code."""
    host, port = client.server.host, client.server.port
    assert port is not None
    cases = [((0x1, b'{"op":"\xff"}', 0), 1007), ((0x1, b"{}", 0x40), 1002)]
    with capture_logs() as logs:
        for (opcode, payload, rsv), expected in cases:
            raw = await RawWebSocket.connect(host, port, "/v1/stream")
            try:
                await raw.send_frame(opcode, payload, rsv)
                async with asyncio.timeout(SAFETY_S):
                    frames = await raw.read_to_eof()
            finally:
                raw.close()
            assert [op for op, _ in frames] == [0x8], frames  # a close, no error frame first
            assert struct.unpack_from("!H", frames[0][1]) == (expected,)
        async with asyncio.timeout(SAFETY_S):
            while rig.hub.subscribers:  # noqa: ASYNC110 - the hub exposes no event to wait on
                await asyncio.sleep(0.01)
    assert rig.hub.dropped_subscribers[DROP_BAD_FRAME] == 2
    bad = [e for e in logs if e["event"] == "stream_bad_frame"]
    assert [e["code"] for e in bad] == [1007, 1002]


async def test_bad_frames_are_logged_at_most_once_a_minute_per_close_code(
    client: Client, rig: Rig
) -> None:
    """Each connection that sent a frame the server cannot read wrote a `stream_bad_frame`
    warning, so any client could flood the log by reconnecting (found sending broken frames to a
    running demo); every one is still counted as a `bad_frame` drop, but a code is logged once a
    minute, with `closed`, the number since its last line."""
    host, port = client.server.host, client.server.port
    assert port is not None
    with capture_logs() as logs:
        for rsv in (0x40, 0x20, 0x10, 0x40, 0x20):  # reserved bits set: 1002 every time
            raw = await RawWebSocket.connect(host, port, "/v1/stream")
            try:
                await raw.send_frame(0x1, b"{}", rsv)
                async with asyncio.timeout(SAFETY_S):
                    await raw.read_to_eof()
            finally:
                raw.close()
        async with asyncio.timeout(SAFETY_S):
            while rig.hub.subscribers:  # noqa: ASYNC110 - the hub exposes no event to wait on
                await asyncio.sleep(0.01)
    assert rig.hub.dropped_subscribers[DROP_BAD_FRAME] == 5
    bad = [e for e in logs if e["event"] == "stream_bad_frame"]
    assert [(e["code"], e["closed"]) for e in bad] == [(1002, 1)]


async def test_a_subscription_to_a_market_a_reload_removed_can_still_change(
    make_client: ClientFactory,
) -> None:
    """A client subscribed to SOL/USD when a reload removes it: its next request is answered,
    with the removed market gone from the set, where the connection used to close (1000, no
    frame, nothing logged) on the removed market's lookup."""
    rig = rig_whose_reload_removes_sol()
    client = await make_client(rig)
    rig.step()
    async with client.ws_connect("/v1/stream") as ws:
        assert (await ask(ws, {"op": "subscribe", "markets": ["SOL/USD"]}))["markets"] == [
            "SOL/USD"
        ]
        assert report(await recv(ws)) == ("SOL/USD", 1)
        assert (await reload(client))["markets_removed"] == ["SOL/USD"]
        ack = await ask(ws, {"op": "subscribe", "markets": ["BTC/USD"]})
        assert ack == {"type": "subscribed", "markets": ["BTC/USD"]}
        assert report(await recv(ws)) == ("BTC/USD", 1)
        ack = await ask(ws, {"op": "unsubscribe", "markets": ["ETH/USD"]})
        assert ack == {"type": "unsubscribed", "markets": ["BTC/USD"]}


async def test_subscribers_of_a_market_a_reload_removed_are_told_so(
    make_client: ClientFactory,
) -> None:
    """When a reload removes SOL/USD, the first round after it sends each connection that was
    receiving SOL/USD (named, or as every market) an error frame `market_removed` naming it,
    before that round's reports; a connection without it gets nothing of the kind, and SOL/USD
    never appears again."""
    rig = rig_whose_reload_removes_sol()
    client = await make_client(rig)
    rig.step()
    async with (
        client.ws_connect("/v1/stream") as named,
        client.ws_connect("/v1/stream") as every,
        client.ws_connect("/v1/stream") as other,
    ):
        await ask(named, {"op": "subscribe", "markets": ["SOL/USD", "BTC/USD"]})
        await ask(every, {"op": "subscribe"})
        await ask(other, {"op": "subscribe", "markets": ["ETH/USD"]})
        for ws, count in ((named, 2), (every, 3), (other, 1)):
            for _ in range(count):  # the snapshots
                await recv(ws)
        assert (await reload(client))["markets_removed"] == ["SOL/USD"]
        rig.step()
        for ws in (named, every):
            notice = await recv(ws)
            assert (notice["type"], notice["code"], notice["markets"]) == (
                "error",
                "market_removed",
                ["SOL/USD"],
            )
            assert "SOL/USD" in notice["message"]
        assert report(await recv(named)) == ("BTC/USD", 2)
        assert [report(await recv(every)) for _ in range(2)] == [("BTC/USD", 2), ("ETH/USD", 2)]
        assert report(await recv(other)) == ("ETH/USD", 2)
        rig.step()
        assert report(await recv(named)) == ("BTC/USD", 3)
        assert [report(await recv(every)) for _ in range(2)] == [("BTC/USD", 3), ("ETH/USD", 3)]
        assert report(await recv(other)) == ("ETH/USD", 3)
        ack = await ask(named, {"op": "subscribe", "markets": ["ETH/USD"]})
        assert ack["markets"] == ["BTC/USD", "ETH/USD"]


async def test_a_request_between_a_reload_and_its_round_leaves_the_removed_market_to_be_told(
    make_client: ClientFactory,
) -> None:
    """A connection receiving SOL/USD asks for another market after a reload removed SOL/USD,
    before the next round: its ack lists its set without SOL/USD, and the first round after the
    reload still tells it `market_removed` naming SOL/USD, as every connection that was
    receiving it. Before, the request took SOL/USD out of the set silently, and the round told
    it nothing: a consumer (the margin service, which freezes such a market at once) kept its
    last report as current until it went stale, and never asked for it again."""
    rig = rig_whose_reload_removes_sol()
    client = await make_client(rig)
    rig.step()
    async with client.ws_connect("/v1/stream") as ws:
        await ask(ws, {"op": "subscribe", "markets": ["SOL/USD"]})
        assert report(await recv(ws)) == ("SOL/USD", 1)
        assert (await reload(client))["markets_removed"] == ["SOL/USD"]
        ack = await ask(ws, {"op": "subscribe", "markets": ["BTC/USD"]})
        assert ack == {"type": "subscribed", "markets": ["BTC/USD"]}
        assert report(await recv(ws)) == ("BTC/USD", 1)
        rig.step()
        notice = await recv(ws)
        assert (notice["type"], notice["code"], notice["markets"]) == (
            "error",
            "market_removed",
            ["SOL/USD"],
        )
        assert report(await recv(ws)) == ("BTC/USD", 2)
        ack = await ask(ws, {"op": "unsubscribe", "markets": ["ETH/USD"]})
        assert ack == {"type": "unsubscribed", "markets": ["BTC/USD"]}


async def test_an_unsubscribe_of_every_market_between_a_reload_and_its_round_tells_the_removal(
    make_client: ClientFactory,
) -> None:
    """A connection receiving every market (SOL/USD among them) unsubscribes ETH/USD after a
    reload removed SOL/USD, before the next round: its set becomes the markets it was
    receiving less ETH/USD, SOL/USD kept until the round tells it `market_removed`, as an
    explicit set keeps it. Before, the set was made from the reloaded config alone, which
    lacks SOL/USD: the round told the connection nothing of a market it had been receiving."""
    rig = rig_whose_reload_removes_sol()
    client = await make_client(rig)
    rig.step()
    async with client.ws_connect("/v1/stream") as ws:
        await ask(ws, {"op": "subscribe"})
        assert [report(await recv(ws)) for _ in range(3)] == [
            ("BTC/USD", 1),
            ("ETH/USD", 1),
            ("SOL/USD", 1),
        ]
        assert (await reload(client))["markets_removed"] == ["SOL/USD"]
        ack = await ask(ws, {"op": "unsubscribe", "markets": ["ETH/USD"]})
        assert ack == {"type": "unsubscribed", "markets": ["BTC/USD"]}
        rig.step()
        notice = await recv(ws)
        assert (notice["type"], notice.get("code"), notice.get("markets")) == (
            "error",
            "market_removed",
            ["SOL/USD"],
        )
        assert report(await recv(ws)) == ("BTC/USD", 2)


async def _frames_after(
    make_client: ClientFactory, rig: Rig, requests: tuple[str, ...], count: int
) -> list[dict[str, Any]]:
    """The first `count` frames the server sends for `requests`, written in one TCP write on a
    raw socket (so that the server reads them all at once), after one round."""
    rig.step()
    client = await make_client(rig)
    host, port = client.server.host, client.server.port
    assert port is not None
    ws = await RawWebSocket.connect(host, port, "/v1/stream")
    try:
        await ws.send_texts(*requests)
        async with asyncio.timeout(SAFETY_S):
            return [json.loads(payload) for _, payload in await ws.read_frames(count)]
    finally:
        ws.close()


_SUBSCRIBE_BTC = '{"op":"subscribe","markets":["BTC/USD"]}'
_UNSUBSCRIBE_BTC = '{"op":"unsubscribe","markets":["BTC/USD"]}'


async def test_an_ack_comes_after_the_frames_of_the_requests_before_it(
    make_client: ClientFactory, rig: Rig
) -> None:
    """The server answers requests in the order of its frames: a subscribe and an unsubscribe
    read at once give the ack, the snapshot, then the unsubscribe's ack, after which no report
    of the market comes. Found running the demo: the snapshot came after 'unsubscribed', because
    the ack was written at once while the snapshot waited in the subscription's buffer."""
    frames = await _frames_after(make_client, rig, (_SUBSCRIBE_BTC, _UNSUBSCRIBE_BTC), 3)
    assert [f["type"] for f in frames] == ["subscribed", "report", "unsubscribed"]
    assert report(frames[1]) == ("BTC/USD", 1)
    assert frames[2]["markets"] == []


async def test_answers_to_many_requests_read_at_once_keep_order_and_do_not_count_as_reports(
    make_client: ClientFactory, rig: Rig
) -> None:
    """Forty requests in one write (a consumer re-asking market by market) are answered in
    order, each subscribe's snapshot between its ack and the next, and the client is not
    dropped as slow: answers weigh nothing against the report bound (the rig's is 4), and the
    reader takes the next request only once the writer has taken the last answer."""
    frames = await _frames_after(make_client, rig, (_SUBSCRIBE_BTC, _UNSUBSCRIBE_BTC) * 20, 60)
    assert [f["type"] for f in frames] == ["subscribed", "report", "unsubscribed"] * 20
    assert all(report(f) == ("BTC/USD", 1) for f in frames[1::3])
