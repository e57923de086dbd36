"""WS /v1/stream with "batch": true: one frame per round holding all its reports."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from api_rig import ClientFactory, Rig
from stream_wire import SAFETY_S, ask, recv

from oracled.api.stream import WRITE_SLICE
from oracled.config import Config, parse_config
from oracled.publish.hub import SLICE

Client = TestClient[web.Request, web.Application]


def batch_of(msg: dict[str, Any]) -> tuple[int, list[tuple[str, int]]]:
    assert msg["type"] == "reports", msg
    reports = [(r["market"], r["round"]) for r in msg["data"]]
    assert all(rnd == msg["round"] for _, rnd in reports)
    return msg["round"], reports


async def test_batch_subscriber_gets_one_frame_per_round(client: Client, rig: Rig) -> None:
    """The ack echoes "batch"; the snapshot and every round come as one `reports` frame with
    the subscribed markets in market order and the round's time."""
    result = rig.step()
    async with client.ws_connect("/v1/stream") as ws:
        ack = await ask(ws, {"op": "subscribe", "markets": ["SOL/USD", "BTC/USD"], "batch": True})
        assert ack == {"type": "subscribed", "markets": ["BTC/USD", "SOL/USD"], "batch": True}
        snapshot = await recv(ws)
        assert batch_of(snapshot) == (1, [("BTC/USD", 1), ("SOL/USD", 1)])
        assert snapshot["round_ts"] == result.ts
        rig.step()
        assert batch_of(await recv(ws)) == (2, [("BTC/USD", 2), ("SOL/USD", 2)])
        # Adding a market: its snapshot is a batch of its own, then rounds carry all three.
        ack = await ask(ws, {"op": "subscribe", "markets": ["ETH/USD"]})
        assert ack["markets"] == ["BTC/USD", "ETH/USD", "SOL/USD"] and "batch" not in ack
        assert batch_of(await recv(ws)) == (2, [("ETH/USD", 2)])
        rig.step()
        _, reports = batch_of(await recv(ws))
        assert [m for m, _ in reports] == ["BTC/USD", "ETH/USD", "SOL/USD"]


async def test_batch_frame_is_the_hub_reports_joined(client: Client, rig: Rig) -> None:
    """On the wire the batch holds the hub's encoded reports byte for byte."""
    async with client.ws_connect("/v1/stream") as ws:
        await ask(ws, {"op": "subscribe", "markets": ["ETH/USD", "BTC/USD"], "batch": True})
        result = rig.step()
        async with asyncio.timeout(SAFETY_S):
            msg = await ws.receive()
        hub = rig.hub
        body = hub.encoded("BTC/USD") + b"," + hub.encoded("ETH/USD")
        head = b'{"type":"reports","round":%d,"round_ts":%d,"data":[' % (result.round, result.ts)
        assert msg.data.encode() == head + body + b"]}"


async def test_batch_can_be_switched_off_again(client: Client, rig: Rig) -> None:
    """Asking with "batch": false goes back to one `report` frame per market."""
    async with client.ws_connect("/v1/stream") as ws:
        await ask(ws, {"op": "subscribe", "markets": ["BTC/USD", "ETH/USD"], "batch": True})
        rig.step()
        assert batch_of(await recv(ws))[0] == 1
        ack = await ask(ws, {"op": "subscribe", "markets": ["BTC/USD"], "batch": False})
        assert ack["batch"] is False
        rig.step()
        first, second = await recv(ws), await recv(ws)
        assert (first["type"], second["type"]) == ("report", "report")
        assert [first["data"]["market"], second["data"]["market"]] == ["BTC/USD", "ETH/USD"]


async def test_batch_with_signed_frames_is_an_error(client: Client, rig: Rig) -> None:
    """Batches carry reports only: asking for both (at once or one after the other) gets a
    `bad_request` error frame and changes nothing; a non-boolean batch is refused too."""
    rig.hub.signer = "0x" + "ab" * 20  # the daemon signs (no signed round is published here)
    async with client.ws_connect("/v1/stream") as ws:
        err = await ask(ws, {"op": "subscribe", "signed": True, "batch": True})
        assert (err["type"], err["code"]) == ("error", "bad_request")
        assert "batch" in err["message"]
        ack = await ask(ws, {"op": "subscribe", "markets": ["BTC/USD"], "batch": True})
        assert ack["batch"] is True
        err = await ask(ws, {"op": "subscribe", "signed": True})
        assert (err["type"], err["code"]) == ("error", "bad_request")
        err = await ask(ws, {"op": "subscribe", "batch": "yes"})
        assert (err["type"], err["code"]) == ("error", "bad_request")
        rig.step()
        assert batch_of(await recv(ws)) == (1, [("BTC/USD", 1)])  # still reports, batched


def wide_config(n: int) -> Config:
    """`n` markets quoted by two sources each."""
    return parse_config(
        {
            "oracle": {"round_interval_ms": 250, "resume_rounds": 1},
            "sources": {"alpha": {"type": "binance"}, "beta": {"type": "binance"}},
            "markets": [
                {
                    "symbol": f"C{i:04d}/USD",
                    "min_sources": 1,
                    "max_age_ms": 1_000,
                    "sources": [{"source": s, "pair": f"C{i:04d}/USD"} for s in ("alpha", "beta")],
                }
                for i in range(n)
            ],
        },
        env={},
    )


async def test_a_round_larger_than_a_write_slice_arrives_whole_and_in_order(
    make_client: ClientFactory,
) -> None:
    """A round of more single frames than WRITE_SLICE (written in slices with turns of the loop
    between them, encoded in slices too) reaches the client whole, in market order, and the
    next round follows it; a batch subscriber gets each round as one frame."""
    n = 2 * max(WRITE_SLICE, SLICE) + 7
    rig = Rig(wide_config(n))
    client = await make_client(rig)
    prices = {m: 10.0 + i for i, m in enumerate(rig.core.markets)}
    async with client.ws_connect("/v1/stream") as ws, client.ws_connect("/v1/stream") as wb:
        await ask(ws, {"op": "subscribe"})
        await ask(wb, {"op": "subscribe", "batch": True})
        for rnd in (1, 2):
            rig.step(prices)
            got = [await recv(ws) for _ in range(n)]
            assert [(m["data"]["market"], m["data"]["round"]) for m in got] == [
                (m, rnd) for m in rig.core.markets
            ]
            assert batch_of(await recv(wb)) == (rnd, [(m, rnd) for m in rig.core.markets])


async def test_a_large_snapshot_follows_its_ack_and_precedes_the_next_one(
    make_client: ClientFactory,
) -> None:
    """A subscribe of more markets than a slice (its snapshot encoded in slices), then at once
    an unsubscribe of them all, then a subscribe of every market as a batch: the client reads
    the first ack, the whole snapshot in market order, the second ack and nothing of the
    markets it removed after it, then the third ack and its snapshot as one frame."""
    n = 2 * SLICE + 7
    rig = Rig(wide_config(n))
    client = await make_client(rig)
    result = rig.step({m: 10.0 + i for i, m in enumerate(rig.core.markets)})
    markets = list(rig.core.markets)
    async with client.ws_connect("/v1/stream") as ws:
        await ws.send_json({"op": "subscribe"})
        await ws.send_json({"op": "unsubscribe"})
        await ws.send_json({"op": "subscribe", "batch": True})
        assert (await recv(ws))["type"] == "subscribed"
        got = [await recv(ws) for _ in range(n)]
        assert [(m["type"], m["data"]["market"]) for m in got] == [("report", m) for m in markets]
        assert await recv(ws) == {"type": "unsubscribed", "markets": []}
        ack = await recv(ws)
        assert (ack["type"], ack["batch"]) == ("subscribed", True)
        assert batch_of(await recv(ws)) == (result.round, [(m, result.round) for m in markets])
