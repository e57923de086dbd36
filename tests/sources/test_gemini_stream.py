"""The Gemini adapter against its loopback simulator: book, faults, recovery, fallback.

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
from oracled.sim.gemini import GeminiSim
from oracled.sources import ConnState, Source, SourceStats, build_source

PRICES = {"BTCUSD": 67_000.0, "ETHUSD": 3_500.0}
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
async def sim() -> AsyncIterator[GeminiSim]:
    venue = GeminiSim(PRICES, seed=5, rate_hz=40.0, heartbeat_s=0.1)
    async with venue:
        yield venue


@pytest.fixture
def cfg(sim: GeminiSim) -> Callable[..., SourceConfig]:
    """A config pointing at the simulator, with test-sized timings and overrides."""

    def make(**overrides: Any) -> SourceConfig:
        values: dict[str, Any] = {
            "type": "gemini",
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
    """Factory: run a gemini source; each is cancelled at teardown and must not have crashed."""
    tasks: list[asyncio.Task[None]] = []
    async with aiohttp.ClientSession() as http:

        def _start(cfg: SourceConfig, pairs: list[tuple[str, Kind]] = PAIRS) -> Running:
            stats, quotes = SourceStats("gemini"), list[Quote]()
            source = build_source("gemini", cfg, pairs, quotes.append, SystemClock(), http, stats)
            run = Running(source, stats, quotes)
            tasks.append(asyncio.create_task(run.source.run(), name="test:gemini"))
            return run

        yield _start
        for task in tasks:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if not task.cancelled():
                task.result()


async def test_streams_top_of_book_after_snapshots(
    sim: GeminiSim, start: Any, cfg: Any, wait: Wait
) -> None:
    """One subscribe, a snapshot per symbol (the ack), then quotes that match the venue's book."""
    run = start(cfg())
    await wait(lambda: pairs_seen(run) == {"BTC/USD", "ETH/USD"})
    assert run.stats.state is ConnState.STREAMING
    assert run.source._pending == {}
    assert sim.stats.requests == 1
    quote = run.quotes[-1]
    assert quote.source == "gemini" and quote.venue_ts is None
    assert quote.bid is not None and quote.ask is not None and 0 < quote.bid <= quote.ask
    await wait(lambda: book_matches(run, sim, "BTCUSD"))


def book_matches(run: Running, sim: GeminiSim, symbol: str) -> bool:
    """The adapter's latest quote equals the top of the simulator's published book."""
    levels = sim._books.get(symbol, {})
    bids = [float(p) for side, p in levels if side == "buy"]
    asks = [float(p) for side, p in levels if side == "sell"]
    pair = f"{symbol[:-3]}/{symbol[-3:]}"
    last = [q for q in run.quotes if q.pair == pair][-1:]
    return bool(last and bids and asks) and (last[0].bid, last[0].ask) == (max(bids), min(asks))


async def test_heartbeats_keep_a_quiet_market_alive(start: Any, cfg: Any, wait: Wait) -> None:
    """With no book changes for longer than the liveness timeout, heartbeats keep the socket."""
    quiet = GeminiSim(PRICES, rate_hz=0.01, heartbeat_s=0.1)
    async with quiet:
        run = start(cfg(ws_url=quiet.ws_url, rest_url=quiet.rest_url))
        await wait(lambda: run.stats.state is ConnState.STREAMING)
        await asyncio.sleep(1.2)
        assert quiet.stats.heartbeats_sent >= 5
        assert quiet.stats.frames_sent == 2  # the two snapshots only
        assert run.stats.reconnects == 0 and quiet.stats.connections == 1


async def test_unknown_symbol_fails_alone_without_reconnecting(
    sim: GeminiSim, start: Any, cfg: Any, wait: Wait
) -> None:
    """The refused batch is split; only the unknown symbol fails, the rest stream on."""
    run = start(cfg(), [*PAIRS, ("FOO/USD", "spot")])
    await wait(lambda: "FOOUSD" in run.stats.failed_instruments)
    assert "InvalidSymbol" in run.stats.failed_instruments["FOOUSD"]
    seen = len(run.quotes)
    await wait(lambda: pairs_seen(run, seen) == {"BTC/USD", "ETH/USD"})
    await asyncio.sleep(0.3)
    assert sim.stats.connections == 1 and run.stats.reconnects == 0
    assert sim.stats.requests == 4 and sim.stats.errors_sent == 2
    assert sim.stats.rate_limited == 0 and run.source._pending == {}


async def test_replayed_diffs_never_leave_a_stale_book_behind(
    sim: GeminiSim, start: Any, cfg: Any, wait: Wait
) -> None:
    """Gemini diffs carry no sequence or time: replays after a move cross the book, which is
    dropped and rebuilt; no crossed quote is emitted and the book returns to the venue's."""
    run = start(cfg())
    await wait(lambda: len(run.quotes) >= 20)
    sim.set_price("BTCUSD", 67_000.0 * 1.01)
    sim.set_price("ETHUSD", 3_500.0 * 1.01)
    await wait(lambda: any(q.pair == "BTC/USD" and (q.bid or 0) > 67_500 for q in run.quotes))
    await wait(lambda: book_matches(run, sim, "BTCUSD") and book_matches(run, sim, "ETHUSD"))
    sim.replay_stale(len(sim._recent_frames))
    await wait(lambda: run.stats.dropped["crossed"] >= 1)
    await wait(lambda: book_matches(run, sim, "BTCUSD") and book_matches(run, sim, "ETHUSD"))
    assert all((q.bid or 0) <= (q.ask or 0) for q in run.quotes)


async def test_rest_errors_and_slow_answers_while_down_then_recovery(
    sim: GeminiSim, start: Any, cfg: Any, wait: Wait
) -> None:
    """429, 5xx and timeouts are counted, state stays down, polls go on; answers bring quotes."""
    sim.ws_enabled = False
    sim.rest_status = 429
    run = start(cfg())
    await wait(lambda: run.stats.dropped["rest_error"] >= 2)
    assert run.stats.state is ConnState.DOWN and run.quotes == []
    sim.rest_status = 502
    errors = run.stats.dropped["rest_error"]
    await wait(lambda: run.stats.dropped["rest_error"] > errors)
    assert run.stats.state is ConnState.DOWN
    sim.rest_status = None
    sim.rest_delay_s = 1.2  # past the one-second request timeout
    errors = run.stats.dropped["rest_error"]
    await wait(lambda: run.stats.dropped["rest_error"] > errors)
    assert run.quotes == []
    sim.rest_delay_s = 0.0
    await wait(lambda: pairs_seen(run) == {"BTC/USD", "ETH/USD"})
    assert state(run) is ConnState.POLLING


async def test_rest_polls_keep_to_one_a_second_after_the_burst(
    sim: GeminiSim, start: Any, cfg: Any, wait: Wait
) -> None:
    """Gemini asks for at most one public request a second: five at once, then one a second."""
    sim.ws_enabled = False
    start(cfg(rest_poll_interval_s=0.001))
    await wait(lambda: sim.stats.rest_requests >= 5)
    first = sim.stats.rest_requests
    await asyncio.sleep(1.0)
    assert sim.stats.rest_requests - first <= 2
