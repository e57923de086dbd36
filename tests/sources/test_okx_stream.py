"""The OKX adapter on its loopback simulator: acks, text pings and pongs,
upgrade notices, REST failures, a lost subscribe. Shared faults: test_stream_faults.py."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import ClassVar

from venue_cases import CASE, FastPingOkx, Start, Wait

from oracled.sim._base import Client
from oracled.sim.okx import OkxSim
from oracled.sources import ConnState
from oracled.sources.okx import OkxSource

# What `sim` and `start` build (conftest.py), with the registered adapter's own ping interval: the
# shared suite's faster pinger only where a test asks for it by `cls`.
VENUE = replace(CASE["okx"], cls=None)
PRICES = {"BTC-USDT": 67_000.0, "ETH-USDT": 3_500.0, "BTC-USDT-SWAP": 67_020.0}  # as VENUE's
ALL = {("BTC/USDT", "spot"), ("ETH/USDT", "spot"), ("BTC/USDT", "perp")}


class RapidPingOkx(OkxSource):
    """Pings ten times a second, for a quiet-market test that must not take long."""

    app_ping_interval_s: ClassVar[float | None] = 0.1
    max_messages_per_s: ClassVar[int] = 30


async def test_streams_spot_and_swap_after_acked_subscribe(
    sim: OkxSim, start: Start, wait: Wait
) -> None:
    """One subscribe is acked arg by arg; spot and swap quotes flow with the venue's event time."""
    run = await start()
    await wait(lambda: run.keys() == ALL)
    assert run.state() is ConnState.STREAMING
    assert sim.stats.requests == 1
    assert run.source._pending == {}
    assert run.stats.failed_instruments == {}
    for q in run.quotes:
        assert q.source == "okx" and q.venue_ts is not None and q.venue_ts <= q.recv_ts + 5_000
        assert q.bid is not None and q.ask is not None and 0 < q.bid <= q.ask
    perp = [q for q in run.quotes if q.kind == "perp"]
    assert perp and all(abs((q.bid or 0) / 67_020.0 - 1) < 0.01 for q in perp)


async def test_sends_text_pings_and_reads_pongs(sim: OkxSim, start: Start, wait: Wait) -> None:
    """The client pings with the text ``ping``, paced under the venue's limit; pongs are life."""
    run = await start(cls=FastPingOkx, liveness_timeout_s=2.0)
    await wait(lambda: sim.pings_received >= 3)
    assert run.stats.malformed == 0
    assert sim.stats.rate_limited == 0
    assert sim.stats.connections == 1 and run.stats.reconnects == 0


async def test_quiet_market_stays_connected_on_pongs_alone(start: Start, wait: Wait) -> None:
    """With no price updates at all, pong replies keep the connection alive past the watchdog."""
    quiet = OkxSim(PRICES, rate_hz=0.01, message_limit=30)
    async with quiet:
        run = await start(quiet, cls=RapidPingOkx, liveness_timeout_s=0.4)
        await wait(lambda: quiet.pings_received >= 10)  # about 1 s: 2.5 liveness periods
        assert quiet.stats.connections == 1
        assert run.stats.reconnects == 0


async def test_upgrade_notice_rotates_without_going_down(
    sim: OkxSim, start: Start, wait: Wait
) -> None:
    """Notice 64008 makes the client reconnect at once; the stream never counts as down."""
    run = await start()
    await wait(lambda: run.state() is ConnState.STREAMING)
    sim.notice()
    await wait(lambda: sim.stats.connections >= 2 and run.stats.reconnects == 1)
    seen = len(run.quotes)
    await wait(lambda: run.keys(seen) == ALL)
    assert sim.stats.rest_requests == 0
    assert run.state() is ConnState.STREAMING


async def test_rest_failures_are_counted_and_polling_recovers(
    sim: OkxSim, start: Start, wait: Wait
) -> None:
    """With the stream refused, 429, 503 and slow REST answers are counted, state stays down,
    polling goes on at its interval, and quotes resume as soon as REST answers again."""
    sim.ws_enabled = False
    sim.rest_status = 429
    run = await start()
    await wait(lambda: run.stats.dropped["rest_error"] >= 3)
    assert run.state() is ConnState.DOWN and run.quotes == []
    sim.rest_status = 503
    errors = run.stats.dropped["rest_error"]
    await wait(lambda: run.stats.dropped["rest_error"] >= errors + 3)
    calls = sim.stats.rest_requests
    await asyncio.sleep(0.55)
    assert 2 <= sim.stats.rest_requests - calls <= 7  # one request per 0.1 s interval
    sim.rest_status = None
    sim.rest_delay_s = 0.3
    await wait(lambda: run.state() is ConnState.POLLING)
    await wait(lambda: run.keys() == ALL)
    sim.rest_delay_s = 0.0
    sim.ws_enabled = True
    await wait(lambda: run.state() is ConnState.STREAMING)


class DeafOkxSim(OkxSim):
    """A venue that loses the first subscribe request it receives (no ack, no error)."""

    lost = 0

    def on_text(self, client: Client, text: str) -> None:
        if text != "ping" and not self.lost:
            self.lost += 1
            return
        super().on_text(client, text)


async def test_unacknowledged_subscription_is_not_kept_alive_by_pongs(
    start: Start, wait: Wait
) -> None:
    """A subscribe the venue never answers is noticed at a pong; the connection is replaced."""
    deaf = DeafOkxSim(PRICES, rate_hz=40.0, message_limit=30)
    async with deaf:
        run = await start(cls=RapidPingOkx, liveness_timeout_s=5.0, ws_url=deaf.ws_url)
        await wait(lambda: run.state() is ConnState.STREAMING)  # on a second connection
        seen = len(run.quotes)
        await wait(lambda: run.keys(seen) == ALL)
        assert deaf.lost == 1
        assert deaf.stats.connections == 2 and run.stats.reconnects == 1
