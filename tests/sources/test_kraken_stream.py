"""The Kraken adapter on its loopback simulator: an unknown pair over REST. The faults all venues
share (first connection, heartbeats, REST fallback among them): test_stream_faults.py."""

from __future__ import annotations

from venue_cases import CASE, Start, Wait

from oracled.sim.kraken import KrakenSim
from oracled.sources import ConnState

VENUE = CASE["kraken"]  # what `sim` and `start` build (conftest.py)


async def test_rest_unknown_pair_fails_only_that_symbol(
    sim: KrakenSim, start: Start, wait: Wait
) -> None:
    """Kraken's HTTP 200 'Unknown asset pair' spoils the batch; the retry isolates the bad one."""
    sim.ws_enabled = False
    run = await start(pairs=[*VENUE.pairs, VENUE.unknown_pair])
    await wait(lambda: "FOO/USD" in run.stats.failed_instruments)
    assert run.stats.failed_instruments["FOO/USD"] == "EQuery:Unknown asset pair"
    seen = len(run.quotes)
    await wait(lambda: run.pairs(seen) == {"BTC/USD", "ETH/USD"})
    assert run.stats.state is ConnState.POLLING
