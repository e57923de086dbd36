"""WS /v1/stream with signed frames and per-subscriber filters, on a real aiohttp server."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import WSMsgType, web
from aiohttp.client_ws import ClientWebSocketResponse
from aiohttp.test_utils import TestClient
from publish_rig import Rounds, make_config

from oracled.api import ApiContext, build_app
from oracled.client import OracleClient
from oracled.clock import ManualClock
from oracled.core import RoundResult
from oracled.publish import DROP_SLOW, Hub
from oracled.publish.signer import RoundSigner, SignedPrice, SigningKey
from oracled.publish.signstall import stall_notice

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
from stream_wire import SAFETY_S, next_event, recv  # the stream tests' frame reader

Client = TestClient[web.Request, web.Application]
KEY = SigningKey.from_hex("0x" + "33" * 32)


class Daemonish:
    """The round side of a daemon: a core's rounds into a hub, each signed right after."""

    def __init__(self, signing: bool = True, perps: tuple[str, ...] = ()) -> None:
        self.cfg = make_config(perps=perps)
        self.rounds = Rounds(self.cfg)
        self.hub = Hub(64)
        self.signer = RoundSigner(KEY, "test") if signing else None
        self.hub.signer = KEY.address if signing else None

    def step(self, **moves: float) -> RoundResult:
        result = self.rounds.step(**moves)
        self.hub.publish(result)
        if self.signer is not None:
            self.hub.publish_signed(self.signer.sign(result))
        return result

    def context(self) -> ApiContext:
        return ApiContext(
            hub=self.hub,
            core=self.rounds.core,
            config=self.cfg,
            source_stats={},
            clock=ManualClock(self.rounds.now),
            render_metrics=lambda: (b"", "text/plain"),
            on_manual=lambda market, paused, actor: None,
            version="test",
        )


@pytest.fixture
def daemon() -> Daemonish:
    return Daemonish()


@pytest.fixture
async def client(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]], daemon: Daemonish
) -> Client:
    return await aiohttp_client(build_app(daemon.context()))


async def recv_raw(ws: ClientWebSocketResponse) -> str:
    async with asyncio.timeout(SAFETY_S):
        msg = await ws.receive()
    assert msg.type is WSMsgType.TEXT, msg
    return str(msg.data)


async def fanned_out() -> None:
    """Let the hub's fan-out callbacks run (rounds published without a yield coalesce)."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_info_serves_the_signing_address(client: Client) -> None:
    """GET /v1/info names the address whose key signs the rounds."""
    async with client.get("/v1/info") as resp:
        assert (await resp.json())["signer"] == KEY.address


async def test_signed_subscribers_get_signed_frames_that_verify(
    client: Client, daemon: Daemonish
) -> None:
    """A signed subscription gets a snapshot and then every round as verifiable signed frames."""
    daemon.step()
    verifier = OracleClient({KEY.address}, deployment="test", now_ms=lambda: daemon.rounds.now)
    async with client.ws_connect("/v1/stream") as ws:
        await ws.send_json({"op": "subscribe", "markets": ["BTC/USD"], "signed": True})
        ack = await recv(ws)
        assert ack == {"type": "subscribed", "markets": ["BTC/USD"], "signed": True}
        snapshot = await recv_raw(ws)
        assert verifier.feed(snapshot).round == 1
        daemon.step()
        assert verifier.feed(await recv_raw(ws)).round == 2
    assert verifier.price("BTC/USD").status == "active"


async def test_signed_server_sent_events_start_with_a_signed_snapshot(
    client: Client, daemon: Daemonish
) -> None:
    """GET /v1/events?signed=true after a round: the very first event is the signed frame of
    that round (never its unsigned report), then each round's signed frame, all verifying."""
    daemon.step()
    verifier = OracleClient({KEY.address}, deployment="test", now_ms=lambda: daemon.rounds.now)
    async with client.get("/v1/events?markets=BTC-USD&signed=true") as resp:
        assert resp.status == 200
        for expected in (1, 2):
            data = ""
            async with asyncio.timeout(SAFETY_S):
                while not data:
                    line = (await resp.content.readline()).decode()
                    assert line, "the event stream ended"
                    data = line[6:].strip() if line.startswith("data: ") else ""
            assert json.loads(data)["type"] == "signed", data
            assert verifier.feed(data).round == expected
            daemon.step()
    assert verifier.price("BTC/USD").status == "active"


async def test_report_and_signed_subscribers_each_get_their_kind(
    client: Client, daemon: Daemonish
) -> None:
    """One connection receives reports, the other signed frames; neither gets the other kind."""
    async with client.ws_connect("/v1/stream") as plain, client.ws_connect("/v1/stream") as signed:
        await plain.send_json({"op": "subscribe", "markets": ["ETH/USD"]})
        await signed.send_json({"op": "subscribe", "markets": ["ETH/USD"], "signed": True})
        await recv(plain), await recv(signed)
        daemon.step()
        assert (await recv(plain))["type"] == "report"
        assert (await recv(signed))["type"] == "signed"
        daemon.step()
        assert (await recv(plain))["data"]["round"] == 2
        assert (await recv(signed))["data"]["round"] == 2


async def test_deviation_filter_sends_only_moves_and_status_changes(
    client: Client, daemon: Daemonish
) -> None:
    """With deviation 1 %, a 0.1 % drift is held back, a 2 % move is sent, and so is a change
    of status that comes without any move (a manual pause)."""
    daemon.step()
    async with client.ws_connect("/v1/stream") as ws:
        request = {"op": "subscribe", "markets": ["BTC/USD"], "signed": True, "deviation": 0.01}
        await ws.send_json(request)
        assert (await recv(ws))["deviation"] == 0.01
        first = (await recv(ws))["data"]
        for _ in range(3):
            daemon.step(BTC_USD=1.001)  # 0.1 % a round: under the threshold
            await fanned_out()
        daemon.step(BTC_USD=1.02)
        moved = (await recv(ws))["data"]
        assert moved["round"] == first["round"] + 4  # the three small moves were not sent
        assert int(moved["price"]) > int(first["price"]) * 1.01
        daemon.step()  # unmoved: held back
        await fanned_out()
        daemon.rounds.core.set_manual("BTC/USD", True)
        daemon.step()
        paused = (await recv(ws))["data"]
        assert (paused["round"], paused["status"]) == (moved["round"] + 2, "paused")


@pytest.mark.parametrize("signed", [False, True])
async def test_a_move_of_exactly_the_deviation_is_sent(
    client: Client, daemon: Daemonish, signed: bool
) -> None:
    """BTC at 1,000 under a 0.1 % filter: 1,000.5 is held back, 1,001 (exactly 0.1 %) is
    sent, and so is 999.999 after it (0.1 % of 1,001 down, which binary cannot hold).
    Measured as |1001 / 1000 - 1|, the division rounded to 0.00099999999999989, under the
    filter, and such a move waited for the next one."""
    daemon.rounds.prices["BTC/USD"] = 1_000.0  # before the first round: no jump to hold
    daemon.step()
    async with client.ws_connect("/v1/stream") as ws:
        request = {"op": "subscribe", "markets": ["BTC/USD"], "signed": signed, "deviation": 0.001}
        await ws.send_json(request)
        await recv(ws)
        first = (await recv(ws))["data"]
        daemon.rounds.prices["BTC/USD"] = 1_000.5
        daemon.step()
        await fanned_out()
        daemon.rounds.prices["BTC/USD"] = 1_001.0
        daemon.step()
        up = (await recv(ws))["data"]
        assert up["round"] == first["round"] + 2
        daemon.rounds.prices["BTC/USD"] = 999.999
        daemon.step()
        down = (await recv(ws))["data"]
        assert down["round"] == up["round"] + 1


async def test_heartbeat_filter_sends_unmoved_markets_at_least_that_often(
    client: Client, daemon: Daemonish
) -> None:
    """With a deviation nothing reaches and a 1 s heartbeat, a flat market comes every 4 rounds."""
    daemon.step()
    async with client.ws_connect("/v1/stream") as ws:
        await ws.send_json(
            {"op": "subscribe", "markets": ["SOL/USD"], "deviation": 0.5, "heartbeat_ms": 1000}
        )
        await recv(ws)
        start = (await recv(ws))["data"]["round"]
        for _ in range(8):  # 250 ms rounds
            daemon.step()
            await fanned_out()
        rounds = [(await recv(ws))["data"]["round"] for _ in range(2)]
        assert rounds == [start + 4, start + 8]


@pytest.mark.parametrize("signed", [False, True])
async def test_a_filtered_subscriber_gets_a_market_subscribed_again_at_once(
    client: Client, daemon: Daemonish, signed: bool
) -> None:
    """With a deviation filter, unsubscribing a market and subscribing it again sends its
    latest frame again: the filter forgets a market it no longer serves, so the re-added one
    does not wait, priceless, for a move past the threshold or a change of status."""
    daemon.step()
    kind = "signed" if signed else "report"
    async with client.ws_connect("/v1/stream") as ws:
        request = {"op": "subscribe", "markets": ["BTC/USD"], "signed": signed, "deviation": 0.5}
        await ws.send_json(request)
        await recv(ws)  # ack
        first = await recv(ws)
        assert (first["type"], first["data"]["round"]) == (kind, 1)
        await ws.send_json({"op": "unsubscribe", "markets": ["BTC/USD"]})
        assert (await recv(ws))["markets"] == []
        await ws.send_json({"op": "subscribe", "markets": ["BTC/USD"]})
        assert (await recv(ws))["markets"] == ["BTC/USD"]
        again = await recv(ws)
        assert (again["type"], again["data"]["round"]) == (kind, 1), again


async def test_a_heartbeat_alone_is_a_floor_not_a_throttle(
    client: Client, daemon: Daemonish
) -> None:
    """`heartbeat_ms` without a `deviation` only promises a frame at least that often: every
    round still comes, so a 5 % move is not held back until the heartbeat runs out."""
    daemon.step()
    async with client.ws_connect("/v1/stream") as ws:
        await ws.send_json({"op": "subscribe", "markets": ["SOL/USD"], "heartbeat_ms": 60_000})
        assert (await recv(ws))["heartbeat_ms"] == 60_000
        start = (await recv(ws))["data"]
        for move in (1.0, 1.05):  # unmoved, then 5 % up
            daemon.step(SOL_USD=move)
            await fanned_out()
        frames = [(await recv(ws))["data"] for _ in range(2)]
        assert [f["round"] for f in frames] == [start["round"] + 1, start["round"] + 2]
        assert float(frames[1]["price"]) > float(start["price"]) * 1.04


async def test_signed_request_to_a_daemon_without_a_key_is_an_error(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
) -> None:
    """Asking for signed frames where signing is off gets `signing_disabled`; the socket stays."""
    plain = Daemonish(signing=False)
    client = await aiohttp_client(build_app(plain.context()))
    async with client.ws_connect("/v1/stream") as ws:
        await ws.send_json({"op": "subscribe", "signed": True})
        error = await recv(ws)
        assert (error["type"], error["code"]) == ("error", "signing_disabled")
        await ws.send_json({"op": "subscribe", "markets": ["BTC/USD"]})
        assert (await recv(ws))["type"] == "subscribed"


@pytest.mark.parametrize(
    "request_",
    [
        {"op": "subscribe", "deviation": 0},
        {"op": "subscribe", "deviation": 1.5},
        {"op": "subscribe", "heartbeat_ms": 0},
        {"op": "subscribe", "signed": "yes"},
    ],
)
async def test_bad_filter_values_get_error_frames(client: Client, request_: dict[str, Any]) -> None:
    """Out-of-range filters and a non-boolean `signed` are refused with an error frame."""
    async with client.ws_connect("/v1/stream") as ws:
        await ws.send_json(request_)
        assert (await recv(ws))["type"] == "error"


def test_the_openapi_signed_price_schema_lists_the_struct_fields() -> None:
    """The OpenAPI SignedPrice schema names exactly the fields of the wire struct, all required
    but a perpetual market's `mark` and `mark_mode`, which go together."""
    doc = json.loads(resources.files("oracled.api").joinpath("openapi.json").read_text())
    schema = doc["components"]["schemas"]["SignedPrice"]
    fields = {f.encode_name for f in msgspec.structs.fields(SignedPrice)}
    assert set(schema["properties"]) == fields
    assert set(schema["required"]) == fields - {"mark", "mark_mode"}
    assert schema["dependentRequired"] == {"mark": ["mark_mode"], "mark_mode": ["mark"]}


@pytest.mark.parametrize(
    "text", ["0", "5", "-5", "6400012", "-6400012", "05", "-0", "+5", " 5", "5_0", "", "-", "1.5"]
)
def test_the_openapi_integer_patterns_accept_what_the_client_verifies(text: str) -> None:
    """The schema's `price` and `confidence` patterns match a string exactly when the client
    reads it as a signed integer: the schema let '05' and '-0' through, which no daemon writes
    and the client refuses (found comparing the two after making the client strict)."""
    doc = json.loads(resources.files("oracled.api").joinpath("openapi.json").read_text())
    props = doc["components"]["schemas"]["SignedPrice"]["properties"]
    (signed,) = [RoundSigner(SigningKey.generate(), "test").sign(Rounds(make_config()).step())]
    base = msgspec.json.decode(signed.envelope(0))
    for field, pattern in (
        ("price", props["price"]["pattern"]),
        ("confidence", props["confidence"]["pattern"]),
    ):
        sp = msgspec.convert(dict(base, **{field: text}), SignedPrice)
        try:
            sp.leaf()
            reads = not (field == "confidence" and text.startswith("-"))
        except ValueError:
            reads = False
        assert (re.fullmatch(pattern, text) is not None) == reads, (field, text)


async def test_unfiltered_signed_subscribers_of_one_market_set_share_the_frames() -> None:
    """Signed frames are encoded once a round: equal subscriptions get the same bytes objects."""
    d = Daemonish()
    subs = [d.hub.subscribe(frozenset({"BTC/USD", "ETH/USD"})) for _ in range(2)]
    for sub in subs:
        d.hub.configure(sub, signed=True)
    d.step()
    await fanned_out()
    first, second = ([sub.get_nowait() for _ in range(2)] for sub in subs)
    assert all(a is b for a, b in zip(first, second, strict=True))
    assert all(frame is not None and frame.startswith(b'{"type":"signed"') for frame in first)


async def test_a_signed_subscriber_that_falls_behind_is_dropped_as_slow() -> None:
    """A signed subscriber that does not read is dropped (counted `slow_consumer`) when a
    round's signed frames do not fit; a signed subscriber that reads keeps receiving."""
    d = Daemonish()
    d.hub = Hub(queue_size=3)
    d.hub.signer = KEY.address
    slow, fast = d.hub.subscribe(None), d.hub.subscribe(None)
    for sub in (slow, fast):
        d.hub.configure(sub, signed=True)
    rounds = []
    for _ in range(3):
        rounds.append(d.step().round)
        await fanned_out()
        got = [fast.get_nowait() or b"" for _ in range(3)]
        assert {msgspec.json.decode(f)["data"]["round"] for f in got} == {rounds[-1]}
    assert slow.closed_reason == DROP_SLOW and slow.pending == 0
    assert d.hub.dropped_subscribers[DROP_SLOW] == 1 and d.hub.subscribers == 1


async def test_switching_to_signed_frames_that_do_not_fit_drops_the_subscriber() -> None:
    """The snapshot of signed frames sent on switching to them counts against the bound: a
    subscriber with an unread backlog that cannot take it is dropped as slow."""
    d = Daemonish()
    d.hub = Hub(queue_size=3)
    d.hub.signer = KEY.address
    d.step()
    await fanned_out()
    sub = d.hub.subscribe(None)  # three report frames, never read
    d.hub.configure(sub, signed=True)  # three signed frames more
    assert sub.closed_reason == DROP_SLOW and d.hub.dropped_subscribers[DROP_SLOW] == 1


def test_signed_rounds_fan_out_at_once_without_a_running_loop() -> None:
    """A synchronous caller (no event loop) gets the signed fan-out inline; a signed round
    without the RoundResult its filters read is refused."""
    d = Daemonish()
    sub = d.hub.subscribe(frozenset({"ETH/USD"}))
    d.hub.configure(sub, signed=True)
    d.step()
    frame = sub.get_nowait()
    assert frame is not None and frame.startswith(b'{"type":"signed"')
    assert msgspec.json.decode(frame)["data"]["market"] == "ETH/USD"
    assert d.signer is not None
    bare = d.signer.sign_leaves(1, 1, d.signer.leaves(d.rounds.step()))
    with pytest.raises(ValueError, match="RoundResult"):
        d.hub.publish_signed(bare)


async def test_a_market_subscribed_again_gets_its_signed_snapshot_again(
    client: Client, daemon: Daemonish
) -> None:
    """Unsubscribing a market and subscribing it again on a signed stream sends its latest
    signed frame again, as it does for report frames: the re-added market is not left without
    a price until the next round."""
    daemon.step()
    async with client.ws_connect("/v1/stream") as ws:
        await ws.send_json({"op": "subscribe", "markets": ["BTC/USD"], "signed": True})
        await recv(ws)  # ack
        assert (await recv(ws))["data"]["round"] == 1
        await ws.send_json({"op": "unsubscribe", "markets": ["BTC/USD"]})
        assert (await recv(ws))["markets"] == []
        await ws.send_json({"op": "subscribe", "markets": ["BTC/USD"]})
        assert (await recv(ws))["markets"] == ["BTC/USD"]
        frame = await recv(ws)
        assert frame["type"] == "signed" and frame["data"]["round"] == 1, frame


@pytest.mark.parametrize("to_signed", [True, False])
async def test_an_unsubscribe_that_switches_the_frame_kind_sends_no_frame_of_what_it_dropped(
    client: Client, daemon: Daemonish, to_signed: bool
) -> None:
    """`unsubscribe` with `signed` set to the other kind: the snapshot of the switch covers the
    markets that remain, never the one just unsubscribed (the switch was applied before the
    unsubscribe, so after `"unsubscribed", "markets": ["ETH/USD"]` came a BTC/USD frame; found
    by hand on a running daemon, unsubscribing every market with `signed: true`)."""
    daemon.step()
    kind = "signed" if to_signed else "report"
    async with client.ws_connect("/v1/stream") as ws:
        markets = ["BTC/USD", "ETH/USD"]
        await ws.send_json({"op": "subscribe", "markets": markets, "signed": not to_signed})
        assert (await recv(ws))["type"] == "subscribed"
        assert {(await recv(ws))["data"]["market"] for _ in markets} == set(markets)
        await ws.send_json({"op": "unsubscribe", "markets": ["BTC/USD"], "signed": to_signed})
        assert (await recv(ws))["markets"] == ["ETH/USD"]
        daemon.step()
        frames = [await recv(ws), await recv(ws)]  # the switch's snapshot, then round 2
        assert [(f["type"], f["data"]["market"], f["data"]["round"]) for f in frames] == [
            (kind, "ETH/USD", 1),
            (kind, "ETH/USD", 2),
        ]


async def test_a_round_signed_after_a_reload_removed_a_market_sends_no_frame_of_it() -> None:
    """A round signed late (the signer thread finished it after the next round, made after a
    reload that removed SOL/USD) brings no SOL/USD frame after the `market_removed` error:
    the contract says no report of a removed market follows. Its markets that remain come in
    the next signed round. Found reading the hub after the unsubscribe bug: signed rounds
    were fanned out whatever layout they were made in."""
    d = Daemonish()
    sub = d.hub.subscribe(None)
    d.hub.configure(sub, signed=True)
    before = d.rounds.step()  # three markets, still being signed...
    d.hub.publish(before)
    await fanned_out()
    after = Rounds(make_config({"BTC/USD": 64_000.12, "ETH/USD": 3_100.5}))
    after.now = d.rounds.now
    d.hub.publish(after.step())  # ...when the reloaded config's first round is published
    assert d.signer is not None
    d.hub.publish_signed(d.signer.sign(before))  # the late signature of the old round
    await fanned_out()
    frames = []
    while (frame := sub.get_nowait()) is not None:
        frames.append(json.loads(frame))
    assert [f["code"] for f in frames if f["type"] == "error"] == ["market_removed"]
    assert [f["data"]["market"] for f in frames if f["type"] == "signed"] == []
    assert d.hub.latest_signed is None or d.hub.latest_signed.result is not before


async def test_a_deviation_filter_sends_a_perpetuals_mark_that_changed_mode_or_moved(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
) -> None:
    """Margin engines liquidate on the mark, which moves apart from the index (the perpetuals'
    basis) and changes mode (`fallback` once they go quiet, which a consumer may freeze on):
    a `deviation` subscriber of a perpetual market gets a round whose mark changed mode or
    moved by its fraction, in report and signed frames alike, though the index did not move;
    a round where neither moved is held back."""
    daemon = Daemonish(perps=("BTC/USD",))
    client = await aiohttp_client(build_app(daemon.context()))
    daemon.step()
    async with client.ws_connect("/v1/stream") as plain, client.ws_connect("/v1/stream") as signed:
        request = {"op": "subscribe", "markets": ["BTC/USD"], "deviation": 0.01}
        await plain.send_json(request)
        await signed.send_json({**request, "signed": True})

        def mark(frame: dict[str, Any]) -> tuple[int, str, str]:
            data = frame["data"]
            if frame["type"] == "signed":
                return data["round"], data["mark_mode"], data["mark"]
            perps = data["mark"]["estimators"]["perp_median"] is not None
            mantissa = data["mark"]["price"].replace(".", "")
            return data["round"], "perps" if perps else "fallback", mantissa

        async def both() -> list[tuple[int, str, str]]:
            return [mark(await recv(plain)), mark(await recv(signed))]

        for ws in (plain, signed):
            assert (await recv(ws))["type"] == "subscribed"
        first = await both()
        assert [m[:2] for m in first] == [(1, "perps")] * 2
        daemon.rounds.perps_quiet = True  # the perpetual's last quote ages out
        while (result := daemon.step()).mark.values[0].mode == "perps":  # type: ignore[union-attr]
            pass  # the index and the mark stand still
        fallback = await both()
        assert [m[:2] for m in fallback] == [(result.round, "fallback")] * 2
        # Another mode, the mark all but where it was (the basis decays): not a move.
        assert abs(int(fallback[0][2]) / int(first[0][2]) - 1) < 0.001
        assert fallback[0][2] == fallback[1][2]
        daemon.rounds.perps_quiet = False
        daemon.rounds.perp_premium = 0.04  # the perpetual 4 % above an index that stands still
        moved = daemon.step()
        assert moved.price[0] == result.price[0]
        again = await both()
        assert [m[:2] for m in again] == [(moved.round, "perps")] * 2
        assert int(again[0][2]) > int(first[0][2]) * 1.01
        daemon.step()  # the mark all but where it was: held back
        daemon.rounds.perp_premium = -0.01  # the perpetual turns to a discount: the same mode
        moved = daemon.step()
        assert moved.price[0] == result.price[0]
        down = await both()
        assert [m[:2] for m in down] == [(moved.round, "perps")] * 2
        assert int(down[0][2]) < int(again[0][2]) * 0.99


async def test_a_filtered_signed_subscriber_gets_the_next_signed_round_after_a_signing_stall(
    client: Client, daemon: Daemonish
) -> None:
    """A signed subscriber with a `deviation` filter told that no round has been signed past
    the limit gets the next signed round's frame though its price did not move: it holds the
    signer stalled until a later round of it comes, which the filter would otherwise hold
    back until the price moved."""
    daemon.step()
    assert daemon.signer is not None
    last = daemon.hub.latest_signed
    assert last is not None
    async with client.ws_connect("/v1/stream") as ws:
        request = {"op": "subscribe", "markets": ["BTC/USD"], "signed": True, "deviation": 0.05}
        await ws.send_json(request)
        assert (await recv(ws))["type"] == "subscribed"
        assert (await recv(ws))["data"]["round"] == 1
        frame = stall_notice("no round signed since round 1", last.ts, last.round, daemon.signer)
        daemon.hub.signed_stalled(frame)
        assert (await recv(ws))["code"] == "stalled"
        daemon.step()  # signed again, the same price
        again = await recv(ws)
        assert (again["type"], again["data"]["round"]) == ("signed", 2)


async def test_signed_subscribers_are_told_when_no_round_is_signed_and_report_ones_are_not(
    client: Client, daemon: Daemonish
) -> None:
    """The daemon's word that no round has been signed past the stall limit while its rounds
    run (`Hub.signed_stalled`, the signed notice): a signed connection gets the frame once, a
    report connection does not and keeps its rounds; a signed subscribe while it lasts gets its
    ack and the frame instead of a snapshot of the frozen round (an SSE stream too, as its first
    event); the next signed round ends it: signed frames again, and a snapshot on subscribe."""
    daemon.step()
    assert daemon.signer is not None
    last = daemon.hub.latest_signed
    assert last is not None
    async with client.ws_connect("/v1/stream") as plain, client.ws_connect("/v1/stream") as signed:
        await plain.send_json({"op": "subscribe", "markets": ["BTC/USD"]})
        await signed.send_json({"op": "subscribe", "markets": ["BTC/USD"], "signed": True})
        assert (await recv(plain))["type"] == "subscribed"
        assert (await recv(plain))["type"] == "report"  # the snapshot
        assert (await recv(signed))["type"] == "subscribed"
        assert (await recv(signed))["type"] == "signed"
        frame = stall_notice("no round signed since round 1", last.ts, last.round, daemon.signer)
        daemon.hub.signed_stalled(frame)
        daemon.hub.publish(daemon.rounds.step())  # a round the signer left unsigned
        told = await recv(signed)
        assert (told["type"], told["code"], told["round"]) == ("error", "stalled", 1)
        assert told["signer"] == KEY.address and told["signature"].startswith("0x")
        report = await recv(plain)
        assert (report["type"], report["data"]["round"]) == ("report", 2)  # not told
        async with client.ws_connect("/v1/stream") as late:
            await late.send_json({"op": "subscribe", "markets": ["BTC/USD"], "signed": True})
            assert (await recv(late))["type"] == "subscribed"
            assert await recv(late) == told  # in place of the snapshot
            async with client.get("/v1/events?markets=BTC-USD&signed=true") as resp:
                assert (await next_event(resp)) == ("message", told)
            daemon.step()  # signed again
            again = await recv(signed)
            assert (again["type"], again["data"]["round"]) == ("signed", 3)
            assert (await recv(late))["data"]["round"] == 3
        assert daemon.hub.signed_stall is None
        async with client.ws_connect("/v1/stream") as after:
            await after.send_json({"op": "subscribe", "markets": ["BTC/USD"], "signed": True})
            assert (await recv(after))["type"] == "subscribed"
            snapshot = await recv(after)
            assert (snapshot["type"], snapshot["data"]["round"]) == ("signed", 3)
