"""The Bitstamp adapter on its loopback simulator: the venue's reconnect request, a lost
subscribe. The faults all venues share (first connection, heartbeats, REST fallback among them):
test_stream_faults.py."""

from __future__ import annotations

from venue_cases import CASE, Start, Wait

from oracled.sim._base import Client
from oracled.sim.bitstamp import BitstampSim
from oracled.sources import ConnState

VENUE = CASE["bitstamp"]  # what `sim` and `start` build (conftest.py)


async def test_reconnect_request_rotates_at_once_without_going_down(
    sim: BitstampSim, start: Start, wait: Wait
) -> None:
    """bts:request_reconnect: a new connection at once, resubscribed, never down, no polling."""
    run = await start()
    await wait(lambda: run.state() is ConnState.STREAMING)
    assert sim.request_reconnect() == 1
    await wait(lambda: sim.stats.connections == 2 and sim.stats.active == 1)
    seen = len(run.quotes)
    await wait(lambda: run.pairs(seen) == {"BTC/USD", "ETH/USD"})
    assert run.stats.reconnects == 1 and sim.stats.requests == 4
    assert sim.stats.rest_requests == 0 and run.state() is ConnState.STREAMING


class DeafBitstampSim(BitstampSim):
    """A venue that loses the first subscribe request it receives (no ack, no error), as a
    stalling venue swallows what it is sent, and answers every later one."""

    lost = 0

    def on_text(self, client: Client, text: str) -> None:
        if "bts:subscribe" in text and not self.lost:
            self.lost += 1
            return
        super().on_text(client, text)


async def test_subscribe_lost_while_a_later_one_is_answered_is_noticed(
    start: Start, wait: Wait
) -> None:
    """A subscribe never answered, while the next one is acknowledged and its pair streams (which
    alone would keep the socket alive for ever), is noticed within a liveness period: the
    connection is replaced and, resubscribed, streams both pairs."""
    deaf = DeafBitstampSim({"BTC/USD": 67_000.0, "ETH/USD": 3_500.0}, seed=5, rate_hz=40.0)
    async with deaf:
        run = await start(deaf)
        await wait(lambda: run.pairs() == {"ETH/USD"} and len(run.quotes) >= 5)
        await wait(lambda: deaf.stats.connections == 2)
        seen = len(run.quotes)
        await wait(lambda: run.pairs(seen) == {"BTC/USD", "ETH/USD"})
        await wait(lambda: run.state() is ConnState.STREAMING)
        assert deaf.lost == 1 and run.stats.reconnects == 1
        assert run.stats.failed_instruments == {}
