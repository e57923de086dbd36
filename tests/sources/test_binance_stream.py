"""The Binance adapter against the loopback simulator: streaming, faults, recovery, fallback.

The faults every venue shares (disconnect, silence, garbage, burst, replay, absurd prices, REST
fallback, rotation) run for this venue too, from test_stream_faults.py; this file holds the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from oracled.config import SourceConfig
from oracled.model import Kind
from oracled.sim import BinanceSim
from oracled.sources import ConnState

PRICES = {"BTCUSDT": 67_000.0, "ETHUSDT": 3_500.0}  # what the `sim` fixture starts from
PAIRS: list[tuple[str, Kind]] = [("BTC/USDT", "spot"), ("ETH/USDT", "spot")]
Start = Callable[..., Any]
Wait = Callable[..., Any]


def pairs_seen(running: Any, since: int = 0) -> set[str]:
    return {q.pair for q in running.quotes[since:]}


@pytest.fixture
def cfg(sim: BinanceSim, config: Callable[..., SourceConfig]) -> Callable[..., SourceConfig]:
    """A config pointing at the simulator, with overrides."""
    return lambda **overrides: config(sim.ws_url, sim.rest_url, **overrides)


async def test_streams_quotes_after_one_acked_subscribe(
    sim: BinanceSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """One SUBSCRIBE for all symbols is acked; quotes for every pair flow and state is streaming."""
    run = start(cfg())
    await wait(lambda: pairs_seen(run) == {"BTC/USDT", "ETH/USDT"})
    assert run.stats.state is ConnState.STREAMING
    assert sim.stats.requests == 1
    assert run.stats.failed_instruments == {}
    assert run.source._pending == {}  # the ack arrived and settled the request
    quote = run.quotes[-1]
    assert quote.source == "binance" and quote.kind == "spot" and quote.venue_ts is None
    assert quote.bid is not None and quote.ask is not None and 0 < quote.bid <= quote.ask
    assert run.stats.quotes == len(run.quotes)
    assert run.stats.last_quote_ms == run.quotes[-1].recv_ts


async def test_answers_server_pings_and_keeps_the_connection(
    start: Start, config: Callable[..., SourceConfig], wait: Wait
) -> None:
    """Every venue ping gets a pong; the venue never times the client out or rate-limits it."""
    async with BinanceSim(PRICES, ping_interval_s=0.3, pong_timeout_s=0.5) as venue:
        run = start(config(venue.ws_url, venue.rest_url, liveness_timeout_s=2.0))
        await wait(lambda: venue.stats.pongs_received >= 3)
        assert venue.stats.pongs_received >= venue.stats.pings_sent - 1  # one may be in flight
        assert venue.stats.pong_timeouts == 0
        assert venue.stats.rate_limited == 0
        assert venue.stats.connections == 1
        assert run.stats.reconnects == 0


async def test_unknown_symbol_is_marked_failed_without_reconnecting(
    sim: BinanceSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """An error frame for one symbol fails that symbol only; the rest stream on one connection."""
    pairs: list[tuple[str, Kind]] = [*PAIRS, ("FOO/USDT", "spot")]
    run = start(cfg(), pairs)
    await wait(lambda: "FOOUSDT" in run.stats.failed_instruments)
    assert "invalid stream" in run.stats.failed_instruments["FOOUSDT"]
    seen = len(run.quotes)
    await wait(lambda: pairs_seen(run, seen) == {"BTC/USDT", "ETH/USDT"})
    await asyncio.sleep(0.5)
    assert sim.stats.connections == 1
    assert run.stats.reconnects == 0
    assert sim.stats.rate_limited == 0  # the split retries were paced under 5 messages/s
    assert sim.stats.requests == 4  # the batch, then one request per symbol


async def test_rest_batch_refusal_isolates_the_bad_symbol(
    sim: BinanceSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """A REST 400 for a batch is retried per symbol; only the invalid one is marked failed."""
    sim.ws_enabled = False
    pairs: list[tuple[str, Kind]] = [*PAIRS, ("FOO/USDT", "spot")]
    run = start(cfg(), pairs)
    await wait(lambda: "FOOUSDT" in run.stats.failed_instruments)
    assert "-1121" in run.stats.failed_instruments["FOOUSDT"]
    seen = len(run.quotes)
    await wait(lambda: pairs_seen(run, seen) == {"BTC/USDT", "ETH/USDT"})
    assert run.stats.state is ConnState.POLLING
