"""A daemon whose key has signed no round since its start tells its signed subscribers and the
bus as one that stopped signing later does, naming the key's floor.

A real daemon (`Service`) signs for a while and stops; `OracleClient.watch_ws`, trusting signed
reports for 60 s (far past the daemon's limit, 0.4 s here), holds its last one. The same key
starts again on the same signing lease, and signs nothing for a while: held at its floor (the
lease a window ahead, as a `kill -9` leaves it), or with its round loop stuck before its first
round (the wall clock stepped back an hour just as the loop took its first tick). Its API is
read over loopback by raw WebSocket subscribers, by a real nats-server's subscriber and by the
client, which reconnects to it as to a restarted daemon.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import msgspec
from one_venue import (
    SteppedClock,
    bus_messages,
    reading,
    serving_api,
    signing_table,
    stalling_config,
    stalls,
)
from test_stalled_loop_signed import watching, watching_client

from oracled.client import OracleClient
from oracled.service import Service
from oracled.sim import BinanceSim

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "publish"))
from publish_rig import NatsServer, assert_stall_signed, until  # the publishing tests' parts

SAFETY_S = 20.0  # guards against hangs only
MARKET = "BTC/USDT"
SIGNED = {"op": "subscribe", "markets": [MARKET], "signed": True}


class BackAtFirstTick(SteppedClock):
    """The real clock until the round loop (the service's task `round-loop`) has taken its
    first tick and reads the clock again to see it passed, then an hour behind, as NTP or an
    operator steps it: the loop waits for the clock to pass that tick again, stuck before its
    first round, until `back_ms` is 0 again. Keyed to the tick being set (`service._tick`),
    not to a count of reads: the loop reads the clock before it takes a tick too (cbd9e1e added
    one, which made an earlier version of this clock step back before the tick, so rounds ran
    an hour behind instead of none)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = True
        self.service: Service | None = None

    def now_ms(self) -> int:
        service = self.service
        if (
            self.armed
            and service is not None
            and service._tick < 1 << 62  # the first tick is taken
            and _task_name() == "round-loop"
        ):
            self.armed = False
            self.back_ms = 3_600_000
        return super().now_ms()


def _task_name() -> str | None:
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no loop in this thread
        return None
    return None if task is None else task.get_name()


async def _first_run(sim: BinanceSim, signing: dict[str, Any], client: OracleClient) -> int:
    """A daemon of the key, run until `client` prices from its signed frames, then stopped as
    SIGTERM stops it; the newest round time the client holds of it."""
    service = Service(stalling_config(sim, signing=signing), clock=SteppedClock())
    async with serving_api(service, SAFETY_S) as (_, base), watching(client, base):
        await until(lambda: client.price(MARKET).price is not None, "a price")
    newest = client.price(MARKET).ts
    assert newest is not None
    return newest


def _lease(path: Path, address: str) -> int:
    return int(json.loads(path.read_text())["leases"][address])


async def test_a_restart_held_at_its_floor_is_told_naming_the_floor(tmp_path: Path) -> None:
    """Restarted with its wall clock an hour behind, the daemon runs its rounds but leaves them
    unsigned (`floor`: the lease holds the last round time the key signed) until the clock
    passes that time. Once it has done so past the stall limit, its signed subscribers and the
    bus get one signed `stalled` notice naming the floor, round 0 (none of this run signed),
    and the client, which still held the run before's last signed price as current, leaves
    the signer out (`unknown`, the stall named); this run's rounds, an hour older than that
    price, would have been old news to it. With the clock right the rounds are signed and
    the client prices again from them. Before, nothing was told before a run's first signed
    round: the subscribers got silence, and the client priced from the run before's report."""
    server = NatsServer(tmp_path / "nats", jetstream=False)
    await server.start()
    lease_file = tmp_path / "signing-lease.json"
    key, signing = signing_table(tmp_path, lease_file)
    client = watching_client(key.address)
    try:
        async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
            newest = await _first_run(sim, signing, client)
            floor = _lease(lease_file, key.address)  # a clean stop: the last round handed over
            bus_table = {"enabled": True, "servers": [server.url]}
            clock = SteppedClock()
            clock.back_ms = 3_600_000
            service = Service(stalling_config(sim, signing=signing, nats=bus_table), clock=clock)
            clock.service = service
            service.ready_min_s, service.alive_min_s = 0.4, 60.0  # a stall limit of 0.4 s
            assert service.signer is not None
            bus, on_bus = await bus_messages(server.url, "oracled.stalled")
            raw: list[bytes] = []
            try:
                async with (
                    serving_api(service, SAFETY_S) as (http, base),
                    watching(client, base),
                    reading(http, base, SIGNED, raw) as signed,
                ):
                    await until(lambda: stalls(signed) and on_bus and client.stalled, "told")
                    told = stalls(signed)[0]
                    frame = raw[signed.index(told)]
                    before = [f["type"] for f in signed[: signed.index(told)]]
                    view = client.price(MARKET)
                    (stall,) = client.stalled.values()
                    assert service.signer.stats.errors["floor"] > 0
                    clock.back_ms = 0  # the clock set right: past the floor
                    await until(
                        lambda: client.price(MARKET).price is not None and not client.stalled,
                        "the client prices again",
                    )
                    assert (client.price(MARKET).ts or 0) > floor
            finally:
                await bus.close()
    finally:
        server.stop()
    assert before == ["subscribed"]  # nothing signed in this run before it
    assert on_bus == [frame]  # the same bytes, once
    assert (told["ts"], told["round"]) == (floor, 0)
    assert_stall_signed(told, key.address)
    assert told["message"].startswith("no round signed since the start, for "), told
    assert "the signer skips its rounds: floor" in told["message"]
    assert (view.status, view.price) == ("unknown", None)
    assert (stall.ts, stall.message, stall.source) == (newest, told["message"], base)
    assert client.stream_errors["stalled"] == 1


async def test_a_round_loop_stuck_before_its_first_round_is_told_naming_the_floor(
    tmp_path: Path,
) -> None:
    """A restart whose round loop is stuck before its first round (the wall clock stepped back
    an hour as it took its first tick) publishes nothing at all. Past the stall limit its
    signed subscribers and the bus get the stall watch's signed notice naming the key's floor
    (the newest round time it signed, from the lease), round 0, a report subscriber the same
    words unsigned, and a signed subscribe while it lasts gets the notice in place of a
    snapshot. The client, holding the run before's last signed price, leaves the signer out.
    With the clock back the first round is signed and the client prices again. Before, a loop
    stuck before its first round told no one: silence, read as a price that does not move."""
    server = NatsServer(tmp_path / "nats", jetstream=False)
    await server.start()
    lease_file = tmp_path / "signing-lease.json"
    key, signing = signing_table(tmp_path, lease_file)
    client = watching_client(key.address)
    try:
        async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
            newest = await _first_run(sim, signing, client)
            floor = _lease(lease_file, key.address)  # a clean stop: the last round handed over
            bus_table = {"enabled": True, "servers": [server.url]}
            clock = BackAtFirstTick()
            service = Service(stalling_config(sim, signing=signing, nats=bus_table), clock=clock)
            clock.service = service
            service.ready_min_s, service.alive_min_s = 0.4, 60.0  # a stall limit of 0.4 s
            bus, on_bus = await bus_messages(server.url, "oracled.stalled")
            raw: list[bytes] = []
            try:
                async with (
                    serving_api(service, SAFETY_S) as (http, base),
                    watching(client, base),
                    reading(http, base, SIGNED, raw) as signed,
                    reading(http, base, {"op": "subscribe", "markets": [MARKET]}) as plain,
                ):
                    await until(
                        lambda: stalls(signed) and stalls(plain) and on_bus and client.stalled,
                        "everyone told",
                    )
                    told = stalls(signed)[0]
                    frame = raw[signed.index(told)]
                    async with reading(http, base, SIGNED) as late:
                        await until(lambda: len(late) >= 2, "the late ack and its frame")
                    view = client.price(MARKET)
                    (stall,) = client.stalled.values()
                    assert service.rounds_published == 0  # stuck before its first round
                    clock.back_ms = 0
                    await until(
                        lambda: client.price(MARKET).price is not None and not client.stalled,
                        "the client prices again",
                    )
                    assert (client.price(MARKET).ts or 0) > floor
            finally:
                await bus.close()
    finally:
        server.stop()
    assert on_bus == [frame]  # the same bytes, once
    assert (told["ts"], told["round"]) == (floor, 0)
    assert_stall_signed(told, key.address)
    assert told["message"].startswith("no round since the round loop started "), told
    words = f"(limit 0.4 s): rounds have stalled, so this key's reports, up to round time {floor},"
    assert words in told["message"], told
    assert stalls(plain) == [{"type": "error", "code": "stalled", "message": told["message"]}]
    assert [f["type"] for f in late[:2]] == ["subscribed", "error"] and late[1] == told
    assert msgspec.json.decode(frame) == told
    assert (view.status, view.price) == ("unknown", None)
    assert (stall.ts, stall.message, stall.source) == (newest, told["message"], base)
    assert client.stream_errors["stalled"] == 1
