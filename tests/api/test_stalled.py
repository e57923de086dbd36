"""What the API serves from the latest round while the round loop is stalled (not crashed): the
round is old, and what comes from it would be read as current. The price endpoints answer 503
`stalled` then; the streams send an error frame `stalled` in place of the snapshot and go on with
the next round; a market's sources and /v1/info say `stalled` next to the round they name.

The stall is the rig's round loop not stepping while the clock runs on, past the limit of 3
intervals and at least 5 s (`ready_min_s`), as in tests/api/test_http.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from api_rig import ContractRecorder, Rig, SigningRig, make_config
from stream_wire import ask, next_event, recv

from oracled.api import ApiContext
from oracled.publish.signer import recover_signer, stall_digest
from oracled.publish.signstall import StallNotice

Client = TestClient[web.Request, web.Application]
STALL_MS = 5_001  # past the 5 s floor of the readiness limit (3 intervals are 750 ms)


def is_stalled(frame: dict[str, Any]) -> bool:
    """A `stalled` error frame, in the error frame's shape and nothing more."""
    assert set(frame) == {"type", "code", "message"}, frame
    return frame["type"] == "error" and frame["code"] == "stalled"


def is_signed_stall(frame: dict[str, Any], rig: SigningRig, round_no: int) -> bool:
    """A signed subscriber's `stalled` frame: the error frame's words plus the round that is no
    current price (`round_no`), its signer and deployment, and that key's signature over them,
    which a client verifies before it lets the frame freeze the signer."""
    assert list(frame) == list(StallNotice.__struct_fields__), frame
    assert (frame["signer"], frame["deployment"], frame["round"]) == (
        rig.KEY.address,
        "test",
        round_no,
    )
    digest = stall_digest(frame["ts"], frame["round"], frame["message"], "test")
    assert recover_signer(digest, bytes.fromhex(frame["signature"][2:])) == rig.KEY.address
    return frame["type"] == "error" and frame["code"] == "stalled"


def report(frame: dict[str, Any]) -> tuple[str, int]:
    assert frame["type"] == "report", frame
    return frame["data"]["market"], frame["data"]["round"]


async def test_a_subscribe_while_rounds_have_stalled_gets_stalled_instead_of_a_snapshot(
    client: Client, rig: Rig, contract: ContractRecorder
) -> None:
    """At the limit the snapshot is sent as before; past it, a subscribe that adds markets gets
    its ack and then one `stalled` error frame (with the same words as the 503 `stalled` of
    /v1/prices at that moment) and no report of the old round; a request that adds nothing gets
    its ack alone. The markets are subscribed: the next round's reports flow, and once rounds
    come again a subscribe gets its snapshot. (A connection of its own for each side of the
    limit: one subscribed when the stall begins is told of it, tested below.)"""
    rig.step()
    rig.clock.advance(5_000)  # at the limit: still current
    async with client.ws_connect("/v1/stream") as ws:
        assert (await ask(ws, {"op": "subscribe", "markets": ["SOL/USD"]}))["type"] == "subscribed"
        assert report(await recv(ws)) == ("SOL/USD", 1)
    rig.clock.advance(1)
    async with client.get("/v1/prices") as resp:
        assert resp.status == 503
        refused = (await resp.json())["error"]
    assert refused["code"] == "stalled"
    async with client.ws_connect("/v1/stream") as ws:
        ack = await ask(ws, {"op": "subscribe", "markets": ["BTC-USD", "ETH-USD"]})
        assert ack == {"type": "subscribed", "markets": ["BTC/USD", "ETH/USD"]}
        stalled = await recv(ws)
        assert is_stalled(stalled), stalled
        contract.validator("/components/schemas/StreamMessage").validate(stalled)
        # Both say how old the round is, against which limit, in the same words.
        assert stalled["message"].split(", so ")[0] == refused["message"].split(", so ")[0]
        assert stalled["message"] == (
            "the latest round is 5.0 s old (limit 5 s): rounds have stalled, so its reports"
            " are not current; reports follow with the next round"
        )
        # Nothing added: its ack alone (the next frame is the next request's ack).
        ack = await ask(ws, {"op": "subscribe", "markets": ["BTC/USD"]})
        assert ack["type"] == "subscribed"
        assert (await ask(ws, {"op": "unsubscribe", "markets": ["ETH/USD"]}))["markets"] == [
            "BTC/USD"
        ]
        rig.step()  # the loop is back: round 2 flows to the whole set
        assert report(await recv(ws)) == ("BTC/USD", 2)
        await ask(ws, {"op": "subscribe", "markets": ["ETH/USD"]})
        assert report(await recv(ws)) == ("ETH/USD", 2)  # a snapshot again


async def test_a_subscribe_to_every_market_while_stalled_gets_stalled_once(
    client: Client, rig: Rig
) -> None:
    """`subscribe` without markets (every market) on a new connection while stalled: the ack,
    one `stalled` frame, and none of the old round's reports, in batches neither."""
    rig.step()
    rig.clock.advance(STALL_MS)
    async with client.ws_connect("/v1/stream") as ws:
        ack = await ask(ws, {"op": "subscribe", "batch": True})
        assert ack["markets"] == ["BTC/USD", "ETH/USD", "SOL/USD"] and ack["batch"] is True
        assert is_stalled(await recv(ws))
        rig.step()
        batch = await recv(ws)
        assert (batch["type"], batch["round"], len(batch["data"])) == ("reports", 2, 3)


async def test_a_switch_to_signed_frames_while_stalled_gets_stalled_not_the_old_signatures(
    make_client: Any,
) -> None:
    """A switch to signed frames sends the latest signed round of the set; while stalled it is
    the `stalled` frame instead (though the connection was told of the stall already), in its
    signed form (the plain frame to a report subscription, the signed notice of that stall to a
    signed one: the same bytes however often asked), and the next round comes signed; a stall
    after it is told to the signed subscription signed too."""
    rig = SigningRig()
    client = await make_client(rig)
    rig.step()
    async with client.ws_connect("/v1/stream") as ws:
        await ask(ws, {"op": "subscribe", "markets": ["BTC/USD"]})
        assert report(await recv(ws)) == ("BTC/USD", 1)
        rig.clock.advance(STALL_MS)
        assert is_stalled(await recv(ws))  # told, as every subscriber is, when it began
        # The same market again: nothing added, only the switch would have had a snapshot.
        ack = await ask(ws, {"op": "subscribe", "markets": ["BTC/USD"], "signed": True})
        assert (ack["markets"], ack["signed"]) == (["BTC/USD"], True)
        notice = await recv(ws)
        assert is_signed_stall(notice, rig, 1)
        await ask(ws, {"op": "subscribe", "markets": ["BTC/USD"], "signed": False})
        assert is_stalled(await recv(ws))
        await ask(ws, {"op": "subscribe", "markets": ["BTC/USD"], "signed": True})
        assert await recv(ws) == notice
        rig.step()
        signed = await recv(ws)
        assert (signed["type"], signed["data"]["round"]) == ("signed", 2)
        rig.clock.advance(STALL_MS)
        assert is_signed_stall(await recv(ws), rig, 2)
        # A switch that leaves no market would have had no snapshot: its ack alone.
        ack = await ask(ws, {"op": "unsubscribe", "signed": False})
        assert (ack["type"], ack["markets"], ack["signed"]) == ("unsubscribed", [], False)
        assert (await ask(ws, {"op": "unsubscribe"}))["type"] == "unsubscribed"


async def test_server_sent_events_while_stalled_start_with_stalled_not_the_old_round(
    client: Client, rig: Rig
) -> None:
    """GET /v1/events while stalled: its first event is the `stalled` frame (a plain data event,
    not `event: error`: the stream goes on), never the old round's report; then the next
    round. Before the stall the first event is the snapshot."""
    rig.step()
    async with client.get("/v1/events?markets=BTC-USD") as resp:
        name, frame = await next_event(resp)
        assert (name, report(frame)) == ("message", ("BTC/USD", 1))
    rig.clock.advance(STALL_MS)
    async with client.get("/v1/events?markets=BTC-USD") as resp:
        assert resp.status == 200
        name, frame = await next_event(resp)
        assert name == "message" and is_stalled(frame), frame
        rig.step()
        name, frame = await next_event(resp)
        assert (name, report(frame)) == ("message", ("BTC/USD", 2))


async def test_no_stalled_frame_before_the_first_round(client: Client, rig: Rig) -> None:
    """Before the first round there is no snapshot to hold back and no `stalled` frame (the
    price endpoints say `not_ready`): the first frame after the ack is the first round's."""
    rig.round_at = rig.clock.monotonic()  # the loop started...
    rig.clock.advance(STALL_MS)  # ...and has published nothing for longer than the limit
    async with client.ws_connect("/v1/stream") as ws:
        await ask(ws, {"op": "subscribe", "markets": ["BTC/USD"]})
        rig.step()
        assert report(await recv(ws)) == ("BTC/USD", 1)


async def ok_json(client: Client, path: str) -> dict[str, Any]:
    """The 200 answer's body."""
    async with client.get(path) as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def stalled_past_the_limit(
    client: Client, rig: Rig, path: str, refusing: str
) -> dict[str, Any]:
    """`path`'s body 1 ms past the 5 s limit after the first round; on the way, its `stalled`
    is null before the first round and at the limit, and past it is the words that begin the
    503 which `refusing` answers then."""
    assert (await ok_json(client, path))["stalled"] is None  # no round yet
    rig.step()
    rig.clock.advance(5_000)
    assert (await ok_json(client, path))["stalled"] is None  # at the limit
    rig.clock.advance(1)
    body = await ok_json(client, path)
    async with client.get(refusing) as resp:
        refused = (await resp.json())["error"]["message"]
    assert body["stalled"] == "the latest round is 5.0 s old (limit 5 s): rounds have stalled"
    assert refused.startswith(body["stalled"] + ", so ")
    return body


async def test_a_markets_sources_say_when_their_round_is_no_current_round(
    client: Client, rig: Rig
) -> None:
    """/v1/markets/{market}/sources serves the latest round's parts (used, reason, value) with
    the live quotes: `stalled` is null before the first round and while rounds come, and past
    the limit the 503's words, for as long as the loop stays stuck."""
    path = "/v1/markets/BTC-USD/sources"
    body = await stalled_past_the_limit(client, rig, path, "/v1/prices/BTC-USD")
    assert body["round"] == 1 and body["sources"][0]["used"] is True  # still served
    rig.step()
    assert (await ok_json(client, path))["stalled"] is None


async def test_info_says_when_its_latest_round_is_no_current_round(
    client: Client, rig: Rig
) -> None:
    """/v1/info names the latest round and its `ts` whatever the loop does: `stalled` is null
    before the first round and while rounds come, and past the limit the words of the 503
    `stalled` that /v1/prices answers then (the round is still named); null once a round
    comes again."""
    body = await stalled_past_the_limit(client, rig, "/v1/info", "/v1/prices")
    assert (body["round"], body["ts"]) == (1, rig.hub.latest_result.ts)  # type: ignore[union-attr]
    rig.step()
    assert (await ok_json(client, "/v1/info"))["stalled"] is None


class QuickRig(Rig):
    """The rig with a readiness floor of 0.5 s: the limit is 3 intervals, 750 ms, and the stall
    watch looks every 75 ms."""

    LIMIT_MS = 750

    def context(self) -> ApiContext:
        return dataclasses.replace(super().context(), ready_min_s=0.5)


async def test_subscribers_are_told_once_when_the_round_loop_stalls(
    make_client: Any,
) -> None:
    """A subscriber with a `deviation` filter hears nothing while its price does not move, so a
    stall looked like a steady price: once the loop stalls, every subscriber gets one `stalled`
    frame (a WebSocket one and an event stream alike), not one per look; rounds come again and
    flow; the next stall is told again."""
    rig = QuickRig(make_config())
    client = await make_client(rig)
    rig.step()
    events = await client.get("/v1/events?markets=BTC-USD&deviation=0.05")
    assert report((await next_event(events))[1]) == ("BTC/USD", 1)
    async with client.ws_connect("/v1/stream") as ws:
        await ask(ws, {"op": "subscribe", "markets": ["BTC/USD"], "deviation": 0.05})
        assert report(await recv(ws)) == ("BTC/USD", 1)
        rig.step()  # the same price: nothing sent, as while stalled
        rig.clock.advance(rig.LIMIT_MS + 1)
        told = await recv(ws)
        assert is_stalled(told), told
        assert told["message"].startswith("the latest round is 0.8 s old (limit 0.75 s)")
        assert told["message"].endswith(
            ", so its reports are not current; reports follow with the next round"
        )
        name, frame = await next_event(events)
        assert name == "message" and frame == told
        await asyncio.sleep(0.4)  # five looks more: still one frame
        assert (await ask(ws, {"op": "subscribe", "markets": ["BTC/USD"]}))["type"] == "subscribed"
        rig.step({"BTC/USD": 70_000.0})  # rounds again, and a move past the filter
        assert report(await recv(ws)) == ("BTC/USD", 3)
        assert report((await next_event(events))[1]) == ("BTC/USD", 3)
        rig.clock.advance(rig.LIMIT_MS + 1)
        assert is_stalled(await recv(ws))  # a second stall, told again
        assert is_stalled((await next_event(events))[1])
    events.close()


async def test_a_filtered_subscriber_told_of_a_stall_gets_the_next_round_unmoved(
    make_client: Any,
) -> None:
    """A `deviation` filter holds back a price that did not move; once the subscriber was told
    that the round it holds is no current price, the next round's report of each of its
    markets comes, moved or not (a WebSocket and an event stream alike): else a consumer that
    froze the market on `stalled` would wait for a move to learn that rounds came again. Once
    sent, the filter holds back an unmoved price as before."""
    rig = QuickRig(make_config())
    client = await make_client(rig)
    rig.step()
    events = await client.get("/v1/events?markets=BTC-USD&deviation=0.05")
    assert report((await next_event(events))[1]) == ("BTC/USD", 1)
    async with client.ws_connect("/v1/stream") as ws:
        await ask(ws, {"op": "subscribe", "markets": ["BTC/USD"], "deviation": 0.05})
        assert report(await recv(ws)) == ("BTC/USD", 1)
        rig.clock.advance(rig.LIMIT_MS + 1)
        assert is_stalled(await recv(ws))
        assert is_stalled((await next_event(events))[1])
        rig.step()  # rounds again, the same price
        assert report(await recv(ws)) == ("BTC/USD", 2)
        assert report((await next_event(events))[1]) == ("BTC/USD", 2)
        rig.step()  # unmoved, not after a stall: held back
        assert (await ask(ws, {"op": "subscribe", "markets": ["BTC/USD"]}))["type"] == "subscribed"
    events.close()


async def test_no_stall_is_told_before_the_first_round(make_client: Any) -> None:
    """A loop that has run for longer than the limit without a first round has nothing that
    could be taken for current: no `stalled` frame (the price endpoints say `not_ready`)."""
    rig = QuickRig(make_config())
    client = await make_client(rig)
    rig.round_at = rig.clock.monotonic()
    rig.clock.advance(rig.LIMIT_MS + 1)
    async with client.ws_connect("/v1/stream") as ws:
        await ask(ws, {"op": "subscribe", "markets": ["BTC/USD"]})
        await asyncio.sleep(0.4)  # five looks
        assert (await ask(ws, {"op": "unsubscribe"}))["type"] == "unsubscribed"


async def test_a_stall_is_told_once_whether_a_request_or_the_watch_meets_it_first(
    make_client: Any,
) -> None:
    """A subscribe that meets the stall tells every subscriber of it (or, when the watch told
    them first, gets the frame alone): either way a connection streaming since before the
    stall gets one `stalled` frame for the stalled round, never two."""
    rig = QuickRig(make_config())
    client = await make_client(rig)
    rig.step()
    async with client.ws_connect("/v1/stream") as before, client.ws_connect("/v1/stream") as new:
        await ask(before, {"op": "subscribe", "markets": ["BTC/USD"]})
        assert report(await recv(before)) == ("BTC/USD", 1)
        rig.clock.advance(rig.LIMIT_MS + 1)
        await ask(new, {"op": "subscribe", "markets": ["ETH/USD"]})
        assert is_stalled(await recv(new))
        assert is_stalled(await recv(before))
        await asyncio.sleep(0.4)  # five looks of the watch
        for ws in (before, new):
            assert (await ask(ws, {"op": "unsubscribe"}))["type"] == "unsubscribed"
