"""The OKX adapter on its loopback simulator: text pings and pongs, upgrade notices, a lost
subscribe. Shared faults (first connection, a quiet market on pongs, REST fallback among them):
test_stream_faults.py."""

from __future__ import annotations

from dataclasses import replace

from venue_cases import CASE, FastPingOkx, RapidPingOkx, Start, Wait

from oracled.sim._base import Client
from oracled.sim.okx import OkxSim
from oracled.sources import ConnState

# What `sim` and `start` build (conftest.py), with the registered adapter's own ping interval: the
# shared suite's faster pinger only where a test asks for it by `cls`.
VENUE = replace(CASE["okx"], cls=None)
PRICES = {"BTC-USDT": 67_000.0, "ETH-USDT": 3_500.0, "BTC-USDT-SWAP": 67_020.0}  # as VENUE's
ALL = {("BTC/USDT", "spot"), ("ETH/USDT", "spot"), ("BTC/USDT", "perp")}


async def test_sends_text_pings_and_reads_pongs(sim: OkxSim, start: Start, wait: Wait) -> None:
    """The client pings with the text ``ping``, paced under the venue's limit; pongs are life."""
    run = await start(cls=FastPingOkx, liveness_timeout_s=2.0)
    await wait(lambda: sim.pings_received >= 3)
    assert run.stats.malformed == 0
    assert sim.stats.rate_limited == 0
    assert sim.stats.connections == 1 and run.stats.reconnects == 0


async def test_pings_keep_a_quiet_connection_the_venue_would_close(
    start: Start, wait: Wait
) -> None:
    """OKX closes a connection with neither data nor a client message for 30 s; the client's
    pings, under that interval, keep a quiet one (books frozen: nothing pushed) open. At the
    registered interval (20 s) against a venue limit shorter than it, the venue cuts the
    connection: the simulator enforces the rule (it answered pings and never cut before)."""
    async with OkxSim(PRICES, idle_timeout_s=0.8) as venue:
        venue.freeze(None)
        run = await start(venue, cls=FastPingOkx, liveness_timeout_s=5.0)  # pings every 0.3 s
        await wait(lambda: venue.pings_received >= 8)
        assert venue.idle_cuts == 0 and venue.stats.connections == 1
        assert run.stats.reconnects == 0
    async with OkxSim(PRICES, idle_timeout_s=0.8) as venue:
        venue.freeze(None)
        run = await start(venue, liveness_timeout_s=5.0)  # the registered 20 s interval
        await wait(lambda: venue.idle_cuts >= 1 and run.stats.reconnects >= 1)
        assert venue.pings_received == 0


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
