"""The Bitstamp adapter on its loopback simulator: the venue's reconnect request. The faults all
venues share (first connection, heartbeats, REST fallback among them): test_stream_faults.py."""

from __future__ import annotations

from venue_cases import CASE, Start, Wait

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
