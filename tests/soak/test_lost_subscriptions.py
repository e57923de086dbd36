"""A venue that swallows some subscribe requests (it stalled while they arrived) and answers the
rest: the source notices the unanswered ones and subscribes again on a fresh connection.

Found by the soak: after a quorum loss, Bitstamp's first channels were subscribed while the venue
was silent; the later ones streamed, so the connection looked alive and those markets went
without Bitstamp for minutes, with the source reported as streaming.
"""

from __future__ import annotations

import asyncio

import aiohttp

from oracled.clock import SystemClock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sim.bitstamp import BitstampSim
from oracled.sources import SourceStats, build_source

# More channels than the source sends in its first second (one per message, 9 a second), so
# that the venue can swallow the first ones and still answer the later ones.
BASES = tuple(f"C{i:02d}" for i in range(16))


async def test_requests_swallowed_by_a_stalled_venue_are_sent_again() -> None:
    """Every channel streams again after the venue dropped the first subscribe requests."""
    pairs: list[tuple[str, Kind]] = [(f"{b}/USD", "spot") for b in BASES]
    sim = BitstampSim({p: 100.0 + i for i, (p, _) in enumerate(pairs)}, rate_hz=20.0)
    await sim.start()
    quotes: list[Quote] = []
    stats = SourceStats("bitstamp")
    cfg = SourceConfig(
        type="bitstamp",
        ws_url=sim.ws_url,
        rest_url=sim.rest_url,
        liveness_timeout_s=2.0,
        rest_poll_interval_s=0.5,
        reconnect_max_s=0.2,
    )
    try:
        async with aiohttp.ClientSession() as http:
            source = build_source("bitstamp", cfg, pairs, quotes.append, SystemClock(), http, stats)
            sim.silence(None)  # stalled: requests arrive and are dropped unanswered
            sim.rest_enabled = False  # no REST help: the stream alone must bring every pair back
            task = asyncio.create_task(source.run(), name="bitstamp")
            try:
                async with asyncio.timeout(5.0):
                    while sim.stats.requests < 5:  # noqa: ASYNC110 - a counter of the venue
                        await asyncio.sleep(0.005)
                sim.silence(0.0)  # the venue answers again: the later requests succeed
                async with asyncio.timeout(10.0):
                    while {q.pair for q in quotes} != {p for p, _ in pairs}:  # noqa: ASYNC110
                        await asyncio.sleep(0.02)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        await sim.stop()
    assert sim.stats.connections >= 2  # the pairs came back on a fresh connection
    assert stats.failed_instruments == {}
