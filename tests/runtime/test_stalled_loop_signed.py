"""A stuck round loop is told to the streams' signed subscribers signed, and a client takes a
`stalled` frame only when it is its daemon's signed word.

The stall is the one of test_stalled_rounds.py: the wall clock of a real daemon (`Service`,
signing its rounds) steps back an hour and its round loop waits for it. Its API is read over
loopback by raw WebSocket and SSE subscribers, by a real nats-server's subscriber, and by
`OracleClient.watch_ws`, a consumer that trusts signed reports for 60 s, far past the daemon's
limit (0.4 s here), and takes stall notices of rounds 0.3 s old (that limit, less a margin).
A relay on loopback (`StreamRelay`) stands on the way between the client and the daemon, as a
proxy or a man in the middle would, and puts its own `stalled` frames on the client's stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
from aiohttp import web
from one_venue import (
    SteppedClock,
    bus_messages,
    serving_api,
    signing_table,
    stalling_config,
)
from structlog.testing import capture_logs
from test_stalled_signed_stream import first_event, reading, stalls

from oracled.client import STALLED_REFUSED, OracleClient
from oracled.publish.signer import RoundSigner, SigningKey
from oracled.publish.signstall import StallNotice, stall_notice
from oracled.service import Service
from oracled.sim import BinanceSim

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "publish"))
from publish_rig import NatsServer, assert_stall_signed, until  # the publishing tests' parts

SAFETY_S = 20.0  # guards against hangs only
MARKET = "BTC/USDT"
NOTICE_MIN_AGE_MS = 300  # the client's: the daemon's stall limit here (0.4 s), less a margin


def watching_client(address: str) -> OracleClient:
    """A client of the daemon's key that trusts its reports for 60 s."""
    return OracleClient(
        {address},
        deployment="test",
        max_age_ms=60_000,
        stall_notice_min_age_ms=NOTICE_MIN_AGE_MS,
    )


@contextlib.asynccontextmanager
async def watching(client: OracleClient, base: str) -> AsyncIterator[None]:
    """`client.watch_ws(base)` for MARKET, for the block's length."""
    watcher = asyncio.create_task(client.watch_ws(base, [MARKET]), name="test-client")
    try:
        yield
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


class StreamRelay:
    """`WS /v1/stream` relayed on loopback to the daemon's: every frame both ways, unless
    `holding` (the daemon's frames are then dropped, as a relay that hides them would); and
    `inject` puts a frame of its own on every client connection."""

    def __init__(self, upstream: str, http: aiohttp.ClientSession) -> None:
        self.upstream = upstream
        self.http = http
        self.holding = False
        self.clients: list[web.WebSocketResponse] = []
        self.url = ""
        app = web.Application()
        app.router.add_get("/v1/stream", self._stream)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)

    async def __aenter__(self) -> StreamRelay:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()

    async def _stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async with self.http.ws_connect(self.upstream + "/v1/stream") as up:

            async def down() -> None:
                async for msg in up:
                    if not self.holding:
                        await ws.send_str(msg.data)

            relaying = asyncio.create_task(down(), name="test-relay-down")
            self.clients.append(ws)
            try:
                async for msg in ws:
                    await up.send_str(msg.data)
            finally:
                relaying.cancel()
                await asyncio.gather(relaying, return_exceptions=True)
        return ws

    async def inject(self, frame: bytes) -> None:
        for ws in self.clients:
            await ws.send_str(frame.decode())


async def test_a_stuck_round_loop_is_told_to_signed_subscribers_signed_as_on_the_bus(
    tmp_path: Path,
) -> None:
    """With the wall clock stepped back the loop publishes no round. A signed subscriber is
    told with the very bytes the bus gets on `oracled.stalled` (the stream's words, the round
    that is no current price, signed by the rounds' key); a report subscriber gets the
    documented `stalled` frame, the same words and nothing more. `OracleClient.watch_ws`
    verifies the signed one and takes it: the signer's reports are left out (`unknown`, the
    stall named) instead of priced from the stalled round for 60 s. A signed subscribe while it
    lasts (WebSocket or SSE) gets that notice in place of a snapshot. With the clock back,
    rounds come, signed frames follow and the client prices again. Before, the signed
    subscribers got the unsigned frame, which the client took from anyone on the way."""
    server = NatsServer(tmp_path / "nats", jetstream=False)
    await server.start()
    key, signing = signing_table(tmp_path, tmp_path / "signing-lease.json")
    try:
        async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
            bus_table = {"enabled": True, "servers": [server.url]}
            clock = SteppedClock()
            service = Service(stalling_config(sim, signing=signing, nats=bus_table), clock=clock)
            service.ready_min_s, service.alive_min_s = 0.4, 60.0  # a stall limit of 0.4 s
            bus, on_bus = await bus_messages(server.url, "oracled.stalled")
            client = watching_client(key.address)
            raw: list[bytes] = []
            signed_request = {"op": "subscribe", "markets": [MARKET], "signed": True}
            plain_request = {"op": "subscribe", "markets": [MARKET]}
            try:
                async with (
                    serving_api(service, SAFETY_S) as (http, base),
                    watching(client, base),
                    reading(http, base, signed_request, raw) as signed,
                    reading(http, base, plain_request) as plain,
                ):
                    await until(lambda: client.price(MARKET).price is not None, "a price")
                    await until(lambda: any(f["type"] == "report" for f in plain), "a report")
                    clock.back_ms = 3_600_000
                    await until(
                        lambda: stalls(signed) and stalls(plain) and on_bus and client.stalled,
                        "everyone told",
                    )
                    told = stalls(signed)[0]
                    frame = raw[signed.index(told)]
                    view = client.price(MARKET)
                    (stall,) = client.stalled.values()
                    # a signed subscribe while it lasts: the notice, not the stalled round
                    async with reading(http, base, signed_request) as late:
                        await until(lambda: len(late) >= 2, "the late ack and its frame")
                        assert late[0]["type"] == "subscribed"
                        assert late[1] == told
                        query = "/v1/events?markets=BTC-USDT&signed=true"
                        assert await first_event(http, base + query) == told
                    clock.back_ms = 0
                    await until(
                        lambda: client.price(MARKET).price is not None and not client.stalled,
                        "the client prices again",
                    )
                    await until(lambda: signed[-1]["type"] == "signed", "signed frames again")
            finally:
                await bus.close()
        assert on_bus == [frame]  # the same bytes, once
        assert list(told) == list(StallNotice.__struct_fields__)
        assert_stall_signed(told, key.address)
        last = [f["data"] for f in signed[: signed.index(told)] if f["type"] == "signed"][-1]
        assert (told["ts"], told["round"]) == (last["ts"], last["round"])
        assert "(limit 0.4 s): rounds have stalled" in told["message"]
        (told_plain,) = stalls(plain)
        assert told_plain == {"type": "error", "code": "stalled", "message": told["message"]}
        assert (view.status, view.price) == ("unknown", None)
        assert view.stalled == (stall,)
        assert (stall.signer, stall.ts, stall.message, stall.source) == (
            key.address,
            last["ts"],
            told["message"],
            base,
        )
        assert dict(client.stream_errors) == {"stalled": 1}
        assert len(stalls(signed)) == 1  # once per stalled round
    finally:
        server.stop()


async def test_a_stalled_frame_the_daemon_did_not_sign_freezes_nothing(tmp_path: Path) -> None:
    """A relay between the client and a signing daemon holds the daemon's frames back, long
    enough that a notice would be plausible (the client's newest round older than its least
    age), and sends `stalled` frames of its own: the documented unsigned frame, one naming the
    daemon's key without a signature, one with a signature that is none, one signed by another
    key, one whose words are not those the daemon's key signed. Each is refused, counted in
    `stream_errors["stalled_refused"]` and logged (one line per kind), and the client's price
    stays (60 s of trust): none freezes the signer. The same notice signed by the daemon's key,
    sent at that moment, is taken. Before, the client took any `stalled` frame for the signer
    it last heard there: a relay hid a daemon's prices with one line of JSON."""
    key, signing = signing_table(tmp_path, tmp_path / "signing-lease.json")
    other = SigningKey.generate()
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        service = Service(stalling_config(sim, signing=signing))
        service.ready_min_s, service.alive_min_s = 0.4, 60.0
        client = watching_client(key.address)
        with capture_logs() as logs:
            async with (
                serving_api(service, SAFETY_S) as (http, base),
                StreamRelay(base, http) as relay,
                watching(client, relay.url),
            ):
                await until(lambda: client.price(MARKET).price is not None, "a price")
                relay.holding = True
                newest = client.price(MARKET).ts
                assert newest is not None
                await until(
                    lambda: time.time() * 1000 - newest > 2 * NOTICE_MIN_AGE_MS,
                    "the client's newest round older than its least age",
                )
                newest = client.price(MARKET).ts  # a frame may have been on its way
                assert newest is not None
                message = "the latest round is 9.9 s old (limit 0.4 s): rounds have stalled"
                forged = [
                    msgspec.json.encode({"type": "error", "code": "stalled", "message": message}),
                    stall_notice(message, newest, 1, None, (key.address, "test")),
                    with_signature(
                        stall_notice(message, newest, 1, None, (key.address, "test")), "0x12"
                    ),
                    named(stall_notice(message, newest, 1, RoundSigner(other, "test")), key),
                    stall_notice(message, newest, 1, RoundSigner(key, "test")).replace(
                        b"9.9 s", b"1.0 s"
                    ),
                ]
                for refused, frame in enumerate(forged, 1):
                    await relay.inject(frame)
                    await until(
                        lambda n=refused: client.stream_errors[STALLED_REFUSED] == n,
                        f"frame {refused} refused",
                    )
                assert not client.stalled
                assert client.price(MARKET).price is not None
                await relay.inject(stall_notice(message, newest, 1, RoundSigner(key, "test")))
                await until(lambda: bool(client.stalled), "the daemon's signed notice taken")
                view = client.price(MARKET)
    assert (view.status, view.price) == ("unknown", None)
    assert dict(client.stream_errors) == {"stalled_refused": 5, "stalled": 1}
    unattributed = [e for e in logs if e["event"] == "client stream stalled"]
    assert [(e["signer"], e["source"]) for e in unattributed] == [(None, relay.url)]
    unverified = [e for e in logs if e["event"] == "client stream notice not verified"]
    assert [(e["reason"], e["signer"]) for e in unverified] == [
        ("unsigned", key.address),
        ("bad_signature", key.address),
        ("forged", key.address),  # the second forged one is counted, its line held back
    ]


def with_signature(notice: bytes, signature: str) -> bytes:
    """`notice` carrying `signature` instead of its own."""
    decoded = msgspec.json.decode(notice)
    decoded["signature"] = signature
    return msgspec.json.encode(decoded)


def named(notice: bytes, key: SigningKey) -> bytes:
    """`notice` naming `key`'s address as its signer, whoever signed it."""
    decoded = msgspec.json.decode(notice)
    decoded["signer"] = key.address
    return msgspec.json.encode(decoded)
