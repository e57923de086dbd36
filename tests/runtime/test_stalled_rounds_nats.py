"""A stuck round loop of `Service` is told on NATS as on the streams: one stall notice per
stalled round, from the stall watch that sends the streams' frame.

The stall is the one of test_stalled_rounds.py: the wall clock steps back an hour and the round
loop waits for it to pass its last round again. The sink signs and publishes to a real
nats-server on loopback; the test reads the bus as any consumer would.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import msgspec
import nats
from one_venue import MovableLease, SteppedClock, service_running, signing_table, stalling_config

from oracled.service import Service
from oracled.sim import BinanceSim

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "publish"))
from publish_rig import (  # the publishing tests' real nats-server, and their checks
    NatsServer,
    assert_stall_signed,
    stalled_in,
    until,
)

SAFETY_S = 15.0  # guards against hangs only


async def at_least(box: list[Any], count: int) -> None:
    """Poll a list the bus's callbacks fill (bounded by the test's own timeout)."""
    while len(box) < count:  # noqa: ASYNC110 - polled: the lists have no event of their own
        await asyncio.sleep(0.02)


async def test_a_stuck_round_loop_publishes_one_stall_notice_per_stalled_round(
    tmp_path: Path,
) -> None:
    """With the wall clock stepped back the loop publishes no round, and the bus gets one notice
    on `oracled.stalled` naming the last round it published (its `ts` and `round`, as the round
    subject had them), the signer and deployment, in the streams' words, signed by the rounds'
    key; however long the stall lasts, no second one. With the clock back, rounds come again; a
    second stall, a second notice. Before, the bus only went quiet, as for a market that does
    not move."""
    server = NatsServer(tmp_path / "nats", jetstream=False)
    await server.start()
    key, signing = signing_table(tmp_path, tmp_path / "signing-lease.json")
    try:
        async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
            bus_table = {"enabled": True, "servers": [server.url]}
            cfg = stalling_config(sim, signing=signing, nats=bus_table)
            clock = SteppedClock()
            service = Service(cfg, clock=clock)
            service.ready_min_s, service.alive_min_s = 0.4, 60.0  # a stall after 0.4 s
            bus = await nats.connect(server.url, allow_reconnect=False)
            rounds: list[dict[str, Any]] = []
            notices: list[dict[str, Any]] = []

            async def keep(msg: Any) -> None:
                box = notices if msg.subject == "oracled.stalled" else rounds
                box.append(msgspec.json.decode(msg.data))

            await bus.subscribe("oracled.rounds", cb=keep)
            await bus.subscribe("oracled.stalled", cb=keep)
            await bus.flush()
            try:
                async with service_running(service), asyncio.timeout(SAFETY_S):
                    await service.started.wait()
                    for stall in (1, 2):
                        await at_least(rounds, 3 * stall)  # signed rounds on the bus
                        clock.back_ms = 3_600_000
                        await at_least(notices, stall)
                        await asyncio.sleep(0.5)  # the stall watch looks five more times
                        held = len(rounds)
                        clock.back_ms = 0
                        await at_least(rounds, held + 1)  # rounds again
                        assert len(notices) == stall  # one per stalled round
                        last = rounds[held - 1]  # the round published before the stall
                        notice = notices[-1]
                        assert (notice["ts"], notice["round"]) == (last["ts"], last["round"])
                        assert (notice["type"], notice["code"]) == ("error", "stalled")
                        assert "(limit 0.4 s): rounds have stalled" in notice["message"]
                        assert_stall_signed(notice, key.address)
            finally:
                await bus.close()
            assert service.nats is not None
            assert service.nats.stats.unpublished["error"] == 0
    finally:
        server.stop()


async def _stalled_in(url: str) -> list[dict[str, Any]]:
    """The stall notices the JetStream stream `ORACLED` holds, decoded, oldest first."""
    reader = await nats.connect(url, allow_reconnect=False)
    try:
        return await stalled_in(reader.jetstream(), "ORACLED")
    finally:
        await reader.close()


async def _newest_round_ts(url: str) -> int | None:
    """The `ts` of the newest round message the stream holds, or None."""
    reader = await nats.connect(url, allow_reconnect=False)
    try:
        try:
            last = await reader.jetstream().get_last_msg("ORACLED", "oracled.rounds")
        except nats.js.errors.NotFoundError:
            return None
        return int(msgspec.json.decode(last.data)["ts"])
    finally:
        await reader.close()


async def test_rounds_that_go_unsigned_end_the_stall_and_the_bus_is_told_why(
    tmp_path: Path,
) -> None:
    """Signing on, its lease's directory moved away (every lease write fails, so the rounds
    past the lease go unsigned, counted `lease`), then the loop stalls: one signed notice in the
    stall's words. With the clock back the round loop runs again, its rounds still unsigned:
    the stall is over, and since no round has been signed for longer than the stall limit, the
    bus gets a signed notice naming the last signed round, in words that say its rounds go
    unsigned (`lease`); the NATS server restarts and the sink sends that one again, never the
    stall's. The unsigned rounds are not published (never an unsigned report on a signed
    deployment's subjects) and are counted `unsigned`. With the directory back, signed rounds
    come again and no notice follows them. Before, only a signed round ended the stall in the
    sink: it told the bus again, after each reconnection, that rounds had stalled while they
    ran, and said nothing of rounds that went unsigned."""
    server = NatsServer(tmp_path / "nats")  # JetStream on: the test reads what was stored
    await server.start()
    lease = MovableLease(tmp_path)
    key = lease.key
    try:
        async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
            bus_table = {"enabled": True, "servers": [server.url], "jetstream": True}
            cfg = stalling_config(sim, signing=lease.signing, nats=bus_table)
            clock = SteppedClock()
            service = Service(cfg, clock=clock)
            service.ready_min_s, service.alive_min_s = 0.4, 60.0  # a stall after 0.4 s
            assert service.signer is not None and service.nats is not None
            signer, sink = service.signer.stats, service.nats
            async with service_running(service), asyncio.timeout(SAFETY_S):
                await service.started.wait()
                await until(lambda: signer.signed >= 3, "signed rounds")
                lease.move_away()  # the lease can no longer be written
                try:
                    await until(lambda: signer.errors["lease"] >= 3, "rounds past the lease")
                    last_signed = await _newest_round_ts(server.url)
                    published = sink.stats.published
                    clock.back_ms = 3_600_000
                    await until(lambda: sink.stats.published > published, "the stall notice")
                    clock.back_ms = 0
                    ran, unleased = service.rounds_published, signer.errors["lease"]
                    await until(
                        lambda: (
                            service.rounds_published > ran + 5
                            and signer.errors["lease"] > unleased + 5
                        ),
                        "rounds again, unsigned",
                    )
                    server.stop()
                    await until(lambda: not sink.stats.connected, "the sink disconnected")
                    await server.start()
                    await until(lambda: sink.stats.reconnects == 1, "the sink reconnected")
                    ran = service.rounds_published
                    await until(lambda: service.rounds_published > ran + 5, "rounds go on")
                    assert sink.stats.unpublished["unsigned"] > 0
                finally:
                    lease.bring_back()
                signed = signer.signed
                await until(lambda: signer.signed > signed + 2, "signed rounds again")
                stored = 0
                while stored <= (last_signed or 0):  # signed rounds again on the bus
                    stored = await _newest_round_ts(server.url) or 0
                    await asyncio.sleep(0.05)
            told = await _stalled_in(server.url)
            stalls = [n for n in told if "rounds have stalled" in n["message"]]
            (stall,) = stalls  # the stall's words once: never after it
            after = told[told.index(stall) + 1 :]
            assert len(after) == 2  # once the loop ran again, and after the reconnection
            assert after[0] == after[1]  # the same notice, kept
            assert (after[0]["ts"], after[0]["round"]) < (stall["ts"], stall["round"])
            assert after[0]["ts"] == last_signed  # the last signed round, what the bus holds
            assert after[0]["message"].startswith(
                f"no round signed since round {after[0]['round']}"
            )
            assert "the signer skips its rounds: lease" in after[0]["message"]
            for notice in told:  # every one signed by the key
                assert_stall_signed(notice, key.address)
            assert sink.stats.unpublished["error"] == 0
    finally:
        server.stop()
