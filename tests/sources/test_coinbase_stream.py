"""The Coinbase adapter against its loopback simulator: streaming, faults, recovery, fallback.

The faults every venue shares (disconnect, silence, garbage, burst, replay, absurd prices, REST
fallback, rotation) run for this venue too, from test_stream_faults.py; this file holds the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from oracled.clock import SystemClock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sim.coinbase import CoinbaseSim
from oracled.sources import ConnState, Source, SourceStats, build_source

PRICES = {"BTC-USD": 67_000.0, "ETH-USD": 3_500.0}
PAIRS: list[tuple[str, Kind]] = [("BTC/USD", "spot"), ("ETH/USD", "spot")]
Wait = Callable[..., Any]


@dataclass
class Running:
    source: Source
    stats: SourceStats
    quotes: list[Quote] = field(default_factory=list)


def pairs_seen(run: Running, since: int = 0) -> set[str]:
    return {q.pair for q in run.quotes[since:]}


def state(run: Running) -> ConnState:
    """The state now (a call, so that type narrowing from earlier asserts does not stick)."""
    return run.stats.state


@pytest.fixture
async def sim() -> AsyncIterator[CoinbaseSim]:
    venue = CoinbaseSim(PRICES, seed=5, rate_hz=40.0, heartbeat_s=0.1)
    async with venue:
        yield venue


@pytest.fixture
def cfg(sim: CoinbaseSim) -> Callable[..., SourceConfig]:
    """A config pointing at the simulator, with test-sized timings and overrides."""

    def make(**overrides: Any) -> SourceConfig:
        values: dict[str, Any] = {
            "type": "coinbase",
            "ws_url": sim.ws_url,
            "rest_url": sim.rest_url,
            "liveness_timeout_s": 0.5,
            "rest_poll_interval_s": 0.1,
            "reconnect_max_s": 0.2,
        }
        values.update(overrides)
        return SourceConfig(**values)

    return make


@pytest.fixture
async def start() -> AsyncIterator[Callable[..., Running]]:
    """Factory: run a coinbase source; each is cancelled at teardown and must not have crashed."""
    tasks: list[asyncio.Task[None]] = []
    async with aiohttp.ClientSession() as http:

        def _start(cfg: SourceConfig, pairs: list[tuple[str, Kind]] = PAIRS) -> Running:
            stats, quotes = SourceStats("coinbase"), list[Quote]()
            source = build_source("coinbase", cfg, pairs, quotes.append, SystemClock(), http, stats)
            run = Running(source, stats, quotes)
            tasks.append(asyncio.create_task(run.source.run(), name="test:coinbase"))
            return run

        yield _start
        for task in tasks:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if not task.cancelled():
                task.result()


async def test_streams_quotes_after_acked_subscriptions(
    sim: CoinbaseSim, start: Any, cfg: Any, wait: Wait
) -> None:
    """Heartbeats and tickers are subscribed and acked; quotes carry the venue's time."""
    run = start(cfg())
    await wait(lambda: pairs_seen(run) == {"BTC/USD", "ETH/USD"})
    assert run.stats.state is ConnState.STREAMING
    await wait(lambda: run.source._pending == {})  # both acks arrived
    assert sim.stats.requests == 2  # heartbeats, then one ticker request for both products
    quote = run.quotes[-1]
    assert quote.source == "coinbase" and quote.kind == "spot"
    assert quote.venue_ts is not None and abs(quote.venue_ts - quote.recv_ts) < 2_000
    assert quote.bid is not None and quote.ask is not None and 0 < quote.bid <= quote.ask
    assert run.stats.failed_instruments == {}


async def test_heartbeats_keep_a_quiet_market_alive(
    start: Any, cfg: Any, sim: CoinbaseSim, wait: Wait
) -> None:
    """With no ticker updates for longer than the liveness timeout, heartbeats keep the socket."""
    async with CoinbaseSim(PRICES, rate_hz=0.01, heartbeat_s=0.1) as quiet:
        run = start(cfg(ws_url=quiet.ws_url, rest_url=quiet.rest_url))
        await wait(lambda: run.stats.state is ConnState.STREAMING)  # from the snapshots
        await asyncio.sleep(1.2)  # more than twice the liveness timeout
        assert quiet.stats.heartbeats_sent >= 5
        assert quiet.stats.frames_sent == 2  # only the two snapshots
        assert run.stats.reconnects == 0 and quiet.stats.connections == 1
        assert run.stats.state is ConnState.STREAMING


async def test_unknown_product_fails_alone_without_reconnecting(
    sim: CoinbaseSim, start: Any, cfg: Any, wait: Wait
) -> None:
    """The refused batch is split; only the unknown product fails, the rest stream on."""
    run = start(cfg(), [*PAIRS, ("FOO/USD", "spot")])
    await wait(lambda: "FOO-USD" in run.stats.failed_instruments)
    assert "not a valid product" in run.stats.failed_instruments["FOO-USD"]
    seen = len(run.quotes)
    await wait(lambda: pairs_seen(run, seen) == {"BTC/USD", "ETH/USD"})
    await asyncio.sleep(0.3)
    assert sim.stats.connections == 1 and run.stats.reconnects == 0
    assert sim.stats.requests == 5  # heartbeats, the batch, then one request per product
    assert sim.stats.errors_sent == 2 and sim.stats.rate_limited == 0
    assert run.source._pending == {}


async def test_rest_errors_and_slow_answers_while_down_then_recovery(
    sim: CoinbaseSim, start: Any, cfg: Any, wait: Wait
) -> None:
    """429, 5xx and timeouts are counted, state stays down, polls go on; answers bring quotes."""
    sim.ws_enabled = False
    sim.rest_status = 429
    run = start(cfg())
    await wait(lambda: run.stats.dropped["rest_error"] >= 3)
    assert run.stats.state is ConnState.DOWN and run.quotes == []
    sim.rest_status = 503
    errors = run.stats.dropped["rest_error"]
    await wait(lambda: run.stats.dropped["rest_error"] >= errors + 3)
    assert run.stats.state is ConnState.DOWN
    sim.rest_status = None
    sim.rest_delay_s = 1.5  # past the one-second request timeout
    errors = run.stats.dropped["rest_error"]
    await wait(lambda: run.stats.dropped["rest_error"] > errors)
    assert run.quotes == []
    sim.rest_delay_s = 0.0
    await wait(lambda: pairs_seen(run) == {"BTC/USD", "ETH/USD"})
    assert state(run) is ConnState.POLLING
    assert all(q.venue_ts is None for q in run.quotes)


async def test_rest_polls_are_paced_inside_the_public_limit(
    sim: CoinbaseSim, start: Any, cfg: Any, wait: Wait
) -> None:
    """With a very short poll interval, REST calls stay at or under 8 a second after the burst."""
    sim.ws_enabled = False
    start(cfg(rest_poll_interval_s=0.001))
    await wait(lambda: sim.stats.rest_requests >= 8)
    first = sim.stats.rest_requests
    await asyncio.sleep(1.0)
    assert sim.stats.rest_requests - first <= 9
