"""Rounds that go unsigned are told on the streams' signed frames as on NATS: a signed `stalled`
frame once no round has been signed for longer than the stall limit, the round loop running.

A real daemon (`Service`) signs its rounds with a signing lease whose directory is then moved
away, so that the rounds past the lease go unsigned (`lease`), as in test_stalled_rounds_nats.py.
Its API is read over loopback by raw WebSocket and SSE subscribers and by `OracleClient.watch_ws`,
a consumer that trusts signed reports for 60 s, far past the daemon's limit.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import msgspec
from one_venue import (
    MovableLease,
    SteppedClock,
    bus_messages,
    first_event,
    reading,
    serving_api,
    stalling_config,
    stalls,
)
from structlog.testing import capture_logs

from oracled.client import OracleClient
from oracled.service import Service
from oracled.sim import BinanceSim

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "publish"))
from publish_rig import NatsServer, assert_stall_signed, until  # the publishing tests' parts

SAFETY_S = 20.0  # guards against hangs only
MARKET = "BTC/USDT"


async def test_rounds_that_go_unsigned_past_the_limit_are_told_to_signed_subscribers(
    tmp_path: Path,
) -> None:
    """Signing on, its lease's directory moved away: the rounds past the lease go unsigned, the
    round loop running. Once no round has been signed for longer than the stall limit, a signed
    subscriber gets one `stalled` frame, signed by the rounds' key, naming the last signed round
    it got, in words that say why (`lease`); a report subscriber is not told and its reports
    go on. A signed subscribe while it lasts (WebSocket or SSE) gets that frame instead of a
    snapshot of the frozen round. `OracleClient.watch_ws`, trusting reports for 60 s, leaves
    the signer out (`unknown`, the stall named) instead of pricing from the frozen round. With
    the directory back rounds are signed again: signed frames follow, the client prices again,
    and no further `stalled` frame comes. Before, a signed subscriber got silence."""
    lease = MovableLease(tmp_path)
    key = lease.key
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        cfg = stalling_config(sim, signing=lease.signing)
        service = Service(cfg, clock=SteppedClock())
        service.ready_min_s, service.alive_min_s = 0.4, 60.0  # a stall limit of 0.4 s
        assert service.signer is not None
        signer = service.signer.stats
        # Notices taken from a round 0.3 s old: the daemon's limit here (0.4 s), less a margin.
        client = OracleClient(
            {key.address}, deployment="test", max_age_ms=60_000, stall_notice_min_age_ms=300
        )
        async with serving_api(service, SAFETY_S) as (http, base):
            watcher = asyncio.create_task(client.watch_ws(base, [MARKET]), name="test-client")
            try:
                signed_request = {"op": "subscribe", "markets": [MARKET], "signed": True}
                async with (
                    reading(http, base, signed_request) as signed,
                    reading(http, base, {"op": "subscribe", "markets": [MARKET]}) as plain,
                ):
                    await until(lambda: client.price(MARKET).price is not None, "a price")
                    lease.move_away()  # the lease can no longer be written
                    try:
                        await until(lambda: stalls(signed), "the signed stalled frame")
                        told = stalls(signed)[0]
                        before = [f for f in signed[: signed.index(told)] if f["type"] == "signed"]
                        assert signer.errors["lease"] > 0
                        assert (told["ts"], told["round"]) == (
                            before[-1]["data"]["ts"],
                            before[-1]["data"]["round"],
                        )
                        assert told["message"].startswith(
                            f"no round signed since round {told['round']} for "
                        )
                        assert "the signer skips its rounds: lease" in told["message"]
                        assert_stall_signed(told, key.address)
                        await until(lambda: bool(client.stalled), "the client told")
                        view = client.price(MARKET)
                        assert (view.status, view.price) == ("unknown", None)
                        assert [s.ts for s in view.stalled] == [told["ts"]]
                        # the report subscriber: its rounds go on, untold
                        newest = max(f["data"]["round"] for f in plain if f["type"] == "report")
                        await until(
                            lambda: plain[-1].get("data", {}).get("round", 0) > newest + 3,
                            "reports go on",
                        )
                        assert not stalls(plain)
                        # a signed subscribe while it lasts: the frame, not the frozen round
                        async with reading(http, base, signed_request) as late:
                            await until(lambda: len(late) >= 2, "the late ack and its frame")
                            assert late[0]["type"] == "subscribed"
                            assert late[1] == told
                            query = "/v1/events?markets=BTC-USDT&signed=true"
                            assert await first_event(http, base + query) == told
                        assert len(stalls(signed)) == 1  # once per stall
                    finally:
                        lease.bring_back()
                    await until(
                        lambda: client.price(MARKET).price is not None and not client.stalled,
                        "the client prices again",
                    )
                    assert (client.price(MARKET).ts or 0) > told["ts"]
                    resumed = signed[signed.index(told) + 1 :]
                    assert resumed and all(f["type"] == "signed" for f in resumed)
                    assert resumed[0]["data"]["ts"] > told["ts"]
                    assert client.stream_errors["stalled"] == 1
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)


async def test_the_bus_and_the_signed_streams_get_the_same_notice_decided_once(
    tmp_path: Path,
) -> None:
    """With NATS on as well, rounds left unsigned past the limit are told by one rule, once: the
    bus's notice on `oracled.stalled` is the very bytes of the signed subscriber's `stalled`
    frame (same words, same round, same signature), one log line names both outlets, and one
    more says signed rounds came again to both. Before, the sink and the service each kept
    their own rule fed the same rounds, each wrote and signed its own notice and logged it
    apart: two decisions that nothing held to the same words or the same moment."""
    server = NatsServer(tmp_path / "nats", jetstream=False)
    await server.start()
    lease = MovableLease(tmp_path)
    key = lease.key
    try:
        async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
            bus_table = {"enabled": True, "servers": [server.url]}
            service = Service(stalling_config(sim, signing=lease.signing, nats=bus_table))
            service.ready_min_s, service.alive_min_s = 0.4, 60.0  # a stall limit of 0.4 s
            bus, on_bus = await bus_messages(server.url, "oracled.stalled")
            on_stream: list[bytes] = []
            signed_request = {"op": "subscribe", "markets": [MARKET], "signed": True}
            try:
                async with (
                    serving_api(service, SAFETY_S) as (http, base),
                    reading(http, base, signed_request, on_stream) as signed,
                ):
                    await until(lambda: any(f["type"] == "signed" for f in signed), "signed")
                    with capture_logs() as logs:
                        lease.move_away()  # the lease can no longer be written
                        try:
                            await until(lambda: stalls(signed) and on_bus, "both told")
                        finally:
                            lease.bring_back()
                        told = stalls(signed)[0]
                        await until(
                            lambda: (
                                signed[-1]["type"] == "signed"
                                and signed[-1]["data"]["ts"] > told["ts"]
                            ),
                            "signed rounds again",
                        )
            finally:
                await bus.close()
        frame = on_stream[signed.index(told)]
        assert on_bus == [frame]  # the same bytes, once
        assert_stall_signed(msgspec.json.decode(frame), key.address)
        assert len(stalls(signed)) == 1
        notices = [e for e in logs if e["event"] == "stall notice: no round signed"]
        assert [(e["outlets"], e["ts"], e["round"]) for e in notices] == [
            (["streams", "nats"], told["ts"], told["round"])
        ]
        again = [e for e in logs if e["event"] == "signed rounds again"]
        assert [e["outlets"] for e in again] == [["streams", "nats"]]
        assert not [e for e in logs if "stall notice" in e["event"] and e not in notices]
    finally:
        server.stop()


async def test_a_wall_clock_stepped_forward_is_no_stall_of_the_signed_rounds(
    tmp_path: Path,
) -> None:
    """The wall clock stepped 8 s forward (NTP putting a slow clock right), past the signing
    lease (a 1 s window) and the stall limit (5 s): the round after the step goes unsigned
    (`lease`) while the lease is written ahead, and the next ones are signed. The round loop
    never stopped (the 160 rounds the step skipped are computed late, in a moment), so signed
    subscribers get no `stalled` frame and no stall is logged. The time without a signed round
    was measured between the rounds' times, so the step read as 8 s of rounds left unsigned,
    and every signed subscriber and NATS were told a stall."""
    lease = MovableLease(tmp_path)
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        clock = SteppedClock()
        service = Service(stalling_config(sim, signing=lease.signing), clock=clock)
        assert service.signer is not None
        signer = service.signer.stats
        signed_request = {"op": "subscribe", "markets": [MARKET], "signed": True}
        with capture_logs() as logs:
            async with (
                serving_api(service, SAFETY_S) as (http, base),
                reading(http, base, signed_request) as signed,
            ):

                def signed_after(ts: int) -> list[dict[str, Any]]:
                    return [f for f in signed if f["type"] == "signed" and f["data"]["ts"] > ts]

                await until(lambda: len(signed_after(0)) >= 3, "signed rounds")
                stepped = clock.now_ms() + 8_000
                clock.back_ms = -8_000  # 8 s forward
                await until(lambda: len(signed_after(stepped)) >= 3, "signed after the step")
        assert signer.errors["lease"] >= 1  # the round after the step: past the lease
        assert not stalls(signed), stalls(signed)
        assert "stall notice: no round signed" not in [e["event"] for e in logs]
