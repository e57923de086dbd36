"""The Binance USD-M adapter on its loopback simulator: protocol pings on both its connections.
The faults all venues share (first connection, mark feed and REST fallback among them) run from
test_stream_faults.py."""

from __future__ import annotations

from venue_cases import CASE, Start, Wait

from oracled.sim.binance_usdm import BinanceUsdmSim

VENUE = CASE["binance_usdm"]  # what `sim` and `start` build (conftest.py)
PRICES = {"BTCUSDT": 67_000.0, "ETHUSDT": 3_500.0}  # what VENUE's simulator starts from


async def test_answers_protocol_pings_on_both_connections(start: Start, wait: Wait) -> None:
    """Server pings get pongs on both sockets; nothing is timed out or rate limited."""
    async with BinanceUsdmSim(PRICES, ping_interval_s=0.2, pong_timeout_s=0.5) as venue:
        run = await start(venue)
        await wait(lambda: venue.stats.pongs_received >= 6)
        assert venue.stats.pong_timeouts == 0 and venue.stats.rate_limited == 0
        assert venue.stats.connections == 2 and run.stats.reconnects == 0
