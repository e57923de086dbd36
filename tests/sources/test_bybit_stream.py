"""The Bybit spot and linear adapters against the loopback simulator: faults, pings, fallback.

The faults every venue shares (disconnect, silence, garbage, burst, replay, absurd prices, REST
fallback, rotation) run for this venue too, from test_stream_faults.py; this file holds the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import aiohttp
import pytest

from oracled.clock import SystemClock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sim.bybit import BybitSim
from oracled.sources import ConnState, SourceStats
from oracled.sources.bybit import BybitLinearSource

PRICES = {"BTCUSDT": 67_000.0, "ETHUSDT": 3_500.0}
BOTH = {"BTC/USDT", "ETH/USDT"}
KINDS: dict[str, Kind] = {"bybit_spot": "spot", "bybit_linear": "perp"}
CATEGORY = {"bybit_spot": "spot", "bybit_linear": "linear"}
Start = Callable[..., Any]
Wait = Callable[..., Any]


@pytest.fixture(params=["bybit_spot", "bybit_linear"])
def kind(request: pytest.FixtureRequest) -> str:
    """Each test runs once per category."""
    return str(request.param)


@pytest.fixture
async def venue() -> AsyncIterator[BybitSim]:
    sim = BybitSim(PRICES, seed=9, rate_hz=40.0)
    async with sim:
        yield sim


@pytest.fixture
def run_source(
    venue: BybitSim, kind: str, start: Start, config: Callable[..., SourceConfig]
) -> Callable[..., Any]:
    """Start the adapter of this category on the simulator, for the default or given pairs."""

    def _run(extra: tuple[str, ...] = (), **overrides: Any) -> Any:
        pairs = [(p, KINDS[kind]) for p in (*sorted(BOTH), *extra)]
        return start(config(venue.ws_url, venue.rest_url, type=kind, **overrides), pairs)

    return _run


def pairs_seen(run: Any, since: int = 0) -> set[str]:
    return {q.pair for q in run.quotes[since:]}


async def test_streams_quotes_after_one_acked_subscribe(
    venue: BybitSim, kind: str, run_source: Any, wait: Wait
) -> None:
    """One subscribe is acked, the snapshot then deltas give quotes with the venue's ts."""
    run = run_source()
    await wait(lambda: pairs_seen(run) == BOTH and len(run.quotes) > 10)
    assert run.stats.state is ConnState.STREAMING
    assert venue.stats.requests == 1 and run.source._pending == {}
    assert run.stats.malformed == 0 and run.stats.failed_instruments == {}
    for q in run.quotes:
        assert q.kind == KINDS[kind] and q.venue_ts is not None and q.venue_ts > 1e12
        assert q.bid is not None and q.ask is not None and 0 < q.bid <= q.ask


async def test_client_pings_keep_a_strict_venue_happy(
    config: Callable[..., SourceConfig], wait: Wait
) -> None:
    """The adapter's JSON pings arrive on schedule: a venue that cuts non-pingers keeps it."""

    class QuickPings(BybitLinearSource):
        app_ping_interval_s: ClassVar[float | None] = 0.1

    venue = BybitSim(PRICES, ping_timeout_s=0.4)
    async with venue, aiohttp.ClientSession() as http:
        stats = SourceStats("bl")
        quotes: list[Quote] = []
        cfg = config(venue.ws_url, venue.rest_url, type="bybit_linear", liveness_timeout_s=2.0)
        pairs: list[tuple[str, Kind]] = [("BTC/USDT", "perp")]
        source = QuickPings("bl", cfg, pairs, quotes.append, SystemClock(), http, stats)
        task = asyncio.create_task(source.run())
        try:
            await wait(lambda: venue.pings_received >= 8)
            assert venue.stats.pong_timeouts == 0 and venue.stats.connections == 1
            assert stats.reconnects == 0 and stats.malformed == 0
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("with_req_id", [True, False])
async def test_unknown_symbol_fails_alone_without_reconnects(
    venue: BybitSim, run_source: Any, wait: Wait, with_req_id: bool
) -> None:
    """A refusal fails only the unknown symbol, with or without a req_id in the refusal."""
    venue.error_req_id = with_req_id
    run = run_source(("FOO/USDT",))
    await wait(lambda: "FOOUSDT" in run.stats.failed_instruments)
    assert "FOOUSDT" in run.stats.failed_instruments["FOOUSDT"]
    seen = len(run.quotes)
    await wait(lambda: pairs_seen(run, seen) == BOTH)
    await asyncio.sleep(0.3)
    assert venue.stats.connections == 1 and run.stats.reconnects == 0
    assert venue.stats.requests == 4  # the batch, then one per symbol
    assert run.stats.dropped["venue_error"] == 0


async def test_rest_failures_are_counted_and_polling_recovers(
    venue: BybitSim, run_source: Any, wait: Wait
) -> None:
    """With the stream refused, 429, 5xx and slow REST answers keep the source down and polling."""
    venue.ws_enabled = False
    venue.rest_status = 429
    run = run_source()
    await wait(lambda: run.stats.dropped["rest_error"] >= 3)
    assert run.stats.state.value == "down" and run.quotes == []
    venue.rest_status = 502
    errors = run.stats.dropped["rest_error"]
    await wait(lambda: run.stats.dropped["rest_error"] >= errors + 3)
    venue.rest_status = None
    venue.rest_delay_s = 1.1  # longer than the request timeout (1 s)
    errors, polls = run.stats.dropped["rest_error"], venue.stats.rest_requests
    await wait(lambda: run.stats.dropped["rest_error"] > errors)
    assert venue.stats.rest_requests > polls and run.quotes == []
    venue.rest_delay_s = 0.0
    await wait(lambda: run.stats.state is ConnState.POLLING and pairs_seen(run) == BOTH)
    venue.ws_enabled = True
    await wait(lambda: run.stats.state is ConnState.STREAMING)
