"""The Binance USD-M adapter against its loopback simulator: both connections, faults, fallback.

The faults every venue shares (disconnect, silence, garbage, burst, replay, absurd prices, REST
fallback, rotation) run for this venue too, from test_stream_faults.py; this file holds the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from oracled.config import SourceConfig
from oracled.model import Kind
from oracled.sim.binance_usdm import BinanceUsdmSim
from oracled.sources import ConnState
from oracled.sources.binance_usdm import BinanceUsdmSource

PRICES = {"BTCUSDT": 67_000.0, "ETHUSDT": 3_500.0}
PAIRS: list[tuple[str, Kind]] = [("BTC/USDT", "perp"), ("ETH/USDT", "perp")]
BOTH = {"BTC/USDT", "ETH/USDT"}
Start = Callable[..., Any]
Wait = Callable[..., Any]


@pytest.fixture
async def venue() -> AsyncIterator[BinanceUsdmSim]:
    sim = BinanceUsdmSim(PRICES, seed=5, rate_hz=40.0, ping_interval_s=1.0, mark_interval_s=0.05)
    async with sim:
        yield sim


@pytest.fixture
def cfg(venue: BinanceUsdmSim, config: Callable[..., SourceConfig]) -> Callable[..., SourceConfig]:
    return lambda **kw: config(venue.ws_url, venue.rest_url, type="binance_usdm", **kw)


def pairs_seen(run: Any, since: int = 0) -> set[str]:
    return {q.pair for q in run.quotes[since:]}


async def test_streams_perp_quotes_and_mark_prices_on_two_connections(
    venue: BinanceUsdmSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """Book tickers arrive on /public with event times; mark prices fill the feed on /market."""
    run = start(cfg(), PAIRS)
    source: BinanceUsdmSource = run.source
    await wait(lambda: pairs_seen(run) == BOTH and set(source.mark_feed.marks) == BOTH)
    assert run.stats.state is ConnState.STREAMING
    assert source.mark_feed.stats.state is ConnState.STREAMING
    assert venue.stats.connections == 2 and venue.stats.requests == 2  # one SUBSCRIBE each
    assert source._pending == {} and source.mark_feed._pending == {}
    quote = run.quotes[-1]
    assert quote.kind == "perp" and quote.venue_ts is not None and quote.venue_ts > 1e12
    assert quote.bid is not None and quote.ask is not None and 0 < quote.bid <= quote.ask
    mark = source.mark_feed.marks["BTC/USDT"]
    assert mark.mark == pytest.approx(mark.index * 1.0003)
    assert source.mark_feed.stats.quotes >= 2 and run.stats.malformed == 0


async def test_answers_protocol_pings_on_both_connections(
    start: Start, config: Callable[..., SourceConfig], wait: Wait
) -> None:
    """Server pings get pongs on both sockets; nothing is timed out or rate limited."""
    async with BinanceUsdmSim(PRICES, ping_interval_s=0.2, pong_timeout_s=0.5) as venue:
        run = start(config(venue.ws_url, venue.rest_url, type="binance_usdm"), PAIRS)
        await wait(lambda: venue.stats.pongs_received >= 6)
        assert venue.stats.pong_timeouts == 0 and venue.stats.rate_limited == 0
        assert venue.stats.connections == 2 and run.stats.reconnects == 0


async def test_unknown_symbol_fails_alone_without_reconnects(
    venue: BinanceUsdmSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """An error frame for one symbol fails it on both connections; the others keep streaming."""
    run = start(cfg(), [*PAIRS, ("FOO/USDT", "perp")])
    marks = run.source.mark_feed
    await wait(
        lambda: (
            "FOOUSDT" in run.stats.failed_instruments
            and "FOOUSDT" in marks.stats.failed_instruments
        )
    )
    seen = len(run.quotes)
    await wait(lambda: pairs_seen(run, seen) == BOTH)
    await asyncio.sleep(0.3)
    assert venue.stats.connections == 2 and run.stats.reconnects == 0
    assert venue.stats.rate_limited == 0
    assert venue.stats.requests == 8  # per connection: the batch, then one per symbol


async def test_rest_failures_are_counted_and_polling_recovers(
    venue: BinanceUsdmSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """With the stream refused, 429, 5xx and slow REST answers keep the source down and polling."""
    venue.ws_enabled = False
    venue.rest_status = 429
    run = start(cfg(), PAIRS)
    await wait(lambda: run.stats.dropped["rest_error"] >= 3)
    assert run.stats.state.value == "down" and run.quotes == []
    venue.rest_status = 503
    errors = run.stats.dropped["rest_error"]
    await wait(lambda: run.stats.dropped["rest_error"] >= errors + 3)
    assert run.stats.state.value == "down"
    venue.rest_status = None
    venue.rest_delay_s = 1.1  # longer than the request timeout (1 s)
    errors, polls = run.stats.dropped["rest_error"], venue.stats.rest_requests
    await wait(lambda: run.stats.dropped["rest_error"] > errors)
    assert venue.stats.rest_requests > polls and run.quotes == []
    venue.rest_delay_s = 0.0
    await wait(lambda: run.stats.state is ConnState.POLLING and pairs_seen(run) == BOTH)
    venue.ws_enabled = True
    await wait(lambda: run.stats.state is ConnState.STREAMING)
