"""The Binance USD-M adapter on its loopback simulator: book and mark connections, pings on both,
REST failures. The faults all venues share run from test_stream_faults.py."""

from __future__ import annotations

import pytest
from venue_cases import CASE, Start, Wait

from oracled.sim.binance_usdm import BinanceUsdmSim
from oracled.sources import ConnState
from oracled.sources.binance_usdm import BinanceUsdmSource

VENUE = CASE["binance_usdm"]  # what `sim` and `start` build (conftest.py)
PRICES = {"BTCUSDT": 67_000.0, "ETHUSDT": 3_500.0}  # what VENUE's simulator starts from
BOTH = {"BTC/USDT", "ETH/USDT"}


async def test_streams_perp_quotes_and_mark_prices_on_two_connections(
    sim: BinanceUsdmSim, start: Start, wait: Wait
) -> None:
    """Book tickers arrive on /public with event times; mark prices fill the feed on /market."""
    run = await start()
    source: BinanceUsdmSource = run.source
    await wait(lambda: run.pairs() == BOTH and set(source.mark_feed.marks) == BOTH)
    assert run.stats.state is ConnState.STREAMING
    assert source.mark_feed.stats.state is ConnState.STREAMING
    assert sim.stats.connections == 2 and sim.stats.requests == 2  # one SUBSCRIBE each
    assert source._pending == {} and source.mark_feed._pending == {}
    quote = run.quotes[-1]
    assert quote.kind == "perp" and quote.venue_ts is not None and quote.venue_ts > 1e12
    assert quote.bid is not None and quote.ask is not None and 0 < quote.bid <= quote.ask
    mark = source.mark_feed.marks["BTC/USDT"]
    assert mark.mark == pytest.approx(mark.index * 1.0003)
    assert source.mark_feed.stats.quotes >= 2 and run.stats.malformed == 0


async def test_answers_protocol_pings_on_both_connections(start: Start, wait: Wait) -> None:
    """Server pings get pongs on both sockets; nothing is timed out or rate limited."""
    async with BinanceUsdmSim(PRICES, ping_interval_s=0.2, pong_timeout_s=0.5) as venue:
        run = await start(venue)
        await wait(lambda: venue.stats.pongs_received >= 6)
        assert venue.stats.pong_timeouts == 0 and venue.stats.rate_limited == 0
        assert venue.stats.connections == 2 and run.stats.reconnects == 0


async def test_rest_failures_are_counted_and_polling_recovers(
    sim: BinanceUsdmSim, start: Start, wait: Wait
) -> None:
    """With the stream refused, 429, 5xx and slow REST answers keep the source down and polling."""
    sim.ws_enabled = False
    sim.rest_status = 429
    run = await start()
    await wait(lambda: run.stats.dropped["rest_error"] >= 3)
    assert run.stats.state.value == "down" and run.quotes == []
    sim.rest_status = 503
    errors = run.stats.dropped["rest_error"]
    await wait(lambda: run.stats.dropped["rest_error"] >= errors + 3)
    assert run.stats.state.value == "down"
    sim.rest_status = None
    sim.rest_delay_s = 1.1  # longer than the request timeout (1 s)
    errors, polls = run.stats.dropped["rest_error"], sim.stats.rest_requests
    await wait(lambda: run.stats.dropped["rest_error"] > errors)
    assert sim.stats.rest_requests > polls and run.quotes == []
    sim.rest_delay_s = 0.0
    await wait(lambda: run.stats.state is ConnState.POLLING and run.pairs() == BOTH)
    sim.ws_enabled = True
    await wait(lambda: run.stats.state is ConnState.STREAMING)
