"""The Coinbase adapter on its loopback simulator: REST pacing under the public limit. The faults
all venues share (first connection, heartbeats, REST fallback among them): test_stream_faults.py."""

from __future__ import annotations

import asyncio

from venue_cases import CASE, Start, Wait

from oracled.sim.coinbase import CoinbaseSim

VENUE = CASE["coinbase"]  # what `sim` and `start` build (conftest.py)


async def test_rest_polls_are_paced_inside_the_public_limit(
    sim: CoinbaseSim, start: Start, wait: Wait
) -> None:
    """With a very short poll interval, REST calls stay at or under 8 a second after the burst."""
    sim.ws_enabled = False
    await start(rest_poll_interval_s=0.001)
    await wait(lambda: sim.stats.rest_requests >= 8)
    first = sim.stats.rest_requests
    await asyncio.sleep(1.0)
    assert sim.stats.rest_requests - first <= 9
