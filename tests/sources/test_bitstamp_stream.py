"""The Bitstamp adapter against the loopback Bitstamp simulator: streaming, faults, fallback."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import aiohttp
import pytest

from oracled.clock import SystemClock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sim.bitstamp import GARBAGE, BitstampSim
from oracled.sources import ConnState, SourceStats
from oracled.sources.bitstamp import BitstampSource

PRICES = {"BTC/USD": 67_000.0, "ETH/USD": 3_500.0}
PAIRS: list[tuple[str, Kind]] = [("BTC/USD", "spot"), ("ETH/USD", "spot")]
Start = Callable[..., Any]
Wait = Callable[..., Any]


def pairs_seen(running: Any, since: int = 0) -> set[str]:
    return {q.pair for q in running.quotes[since:]}


def state(running: Any) -> ConnState:
    """The source's state now (a call, so that type checkers do not pin it between awaits)."""
    return running.stats.state  # type: ignore[no-any-return]


@pytest.fixture
async def sim() -> AsyncIterator[BitstampSim]:
    venue = BitstampSim(PRICES, seed=5, rate_hz=40.0)
    async with venue:
        yield venue


@pytest.fixture
def cfg(sim: BitstampSim, config: Callable[..., SourceConfig]) -> Callable[..., SourceConfig]:
    """A bitstamp config pointing at the simulator, with overrides."""
    return lambda **overrides: config(sim.ws_url, sim.rest_url, type="bitstamp", **overrides)


async def test_streams_quotes_after_one_acked_subscribe_per_channel(
    sim: BitstampSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """One bts:subscribe per pair, each acked; quotes carry the book's microtimestamp."""
    run = start(cfg(), PAIRS)
    await wait(lambda: pairs_seen(run) == {"BTC/USD", "ETH/USD"})
    assert state(run) is ConnState.STREAMING
    assert sim.stats.requests == 2
    await wait(lambda: run.source._pending == {})
    quote = run.quotes[-1]
    assert quote.venue_ts is not None and abs(quote.recv_ts - quote.venue_ts) < 1_000
    assert quote.bid is not None and quote.ask is not None and 0 < quote.bid <= quote.ask
    assert run.stats.malformed == 0 and run.stats.failed_instruments == {}


class _FastHeartbeat(BitstampSource):
    """The real adapter with a heartbeat interval that fits a half-second liveness window."""

    app_ping_interval_s: ClassVar[float | None] = 0.1


async def test_quiet_book_stays_alive_on_heartbeat_answers(
    config: Callable[..., SourceConfig], http: aiohttp.ClientSession, wait: Wait
) -> None:
    """No book changes at all: the answers to our bts:heartbeat keep the connection alive."""
    async with BitstampSim(PRICES, rate_hz=0.1) as venue:
        cfg = config(venue.ws_url, venue.rest_url, type="bitstamp", liveness_timeout_s=0.5)
        stats, quotes = SourceStats("bitstamp"), list[Quote]()
        source = _FastHeartbeat("bitstamp", cfg, PAIRS, quotes.append, SystemClock(), http, stats)
        task = asyncio.create_task(source.run(), name="test:bitstamp")
        try:
            await wait(lambda: venue.stats.requests >= 12)  # 2 subscribes, then 10 heartbeats
            await asyncio.sleep(0.6)  # more than one liveness window
            assert venue.stats.frames_sent == 0 and quotes == []
            assert stats.reconnects == 0 and venue.stats.connections == 1
            assert stats.frames >= venue.stats.requests - 2  # every heartbeat was answered
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_unknown_market_fails_alone_without_reconnecting(
    sim: BitstampSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """bts:error for one channel fails that symbol only; the others stream on one connection."""
    pairs: list[tuple[str, Kind]] = [*PAIRS, ("FOO/USD", "spot")]
    run = start(cfg(), pairs)
    await wait(lambda: "foousd" in run.stats.failed_instruments)
    assert run.stats.failed_instruments == {"foousd": "Bad subscription string."}
    seen = len(run.quotes)
    await wait(lambda: pairs_seen(run, seen) == {"BTC/USD", "ETH/USD"})
    await asyncio.sleep(0.3)
    assert sim.stats.connections == 1 and run.stats.reconnects == 0
    assert sim.stats.requests == 3 and sim.stats.rate_limited == 0


async def test_reconnect_request_rotates_at_once_without_going_down(
    sim: BitstampSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """bts:request_reconnect: a new connection at once, resubscribed, never down, no polling."""
    run = start(cfg(), PAIRS)
    await wait(lambda: state(run) is ConnState.STREAMING)
    assert sim.request_reconnect() == 1
    await wait(lambda: sim.stats.connections == 2 and sim.stats.active == 1)
    seen = len(run.quotes)
    await wait(lambda: pairs_seen(run, seen) == {"BTC/USD", "ETH/USD"})
    assert run.stats.reconnects == 1 and sim.stats.requests == 4
    assert sim.stats.rest_requests == 0 and state(run) is ConnState.STREAMING


async def test_reconnects_and_resubscribes_after_disconnect(
    sim: BitstampSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """A dropped TCP connection is replaced, the channels resubscribed, and quotes resume."""
    run = start(cfg(), PAIRS)
    await wait(lambda: state(run) is ConnState.STREAMING)
    assert sim.disconnect() == 1
    await wait(lambda: run.stats.reconnects >= 1 and sim.stats.connections >= 2)
    seen = len(run.quotes)
    await wait(lambda: pairs_seen(run, seen) == {"BTC/USD", "ETH/USD"})
    assert sim.stats.requests >= 4 and sim.stats.active == 1


async def test_half_open_socket_is_replaced_by_the_watchdog(
    sim: BitstampSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """A socket that stays open but carries nothing is cut and replaced."""
    run = start(cfg(liveness_timeout_s=0.5), PAIRS)
    await wait(lambda: state(run) is ConnState.STREAMING)
    sim.silence(None)
    await wait(lambda: run.stats.reconnects >= 1 and sim.stats.connections >= 2)
    assert state(run) in (ConnState.DOWN, ConnState.POLLING)
    sim.reset()
    await wait(lambda: state(run) is ConnState.STREAMING)
    assert sim.stats.active == 1


async def test_garbage_is_counted_and_no_bad_price_escapes(
    sim: BitstampSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """Every malformed frame is counted once by reason; no NaN/zero/negative/crossed leaves."""
    run = start(cfg(), PAIRS)
    await wait(lambda: state(run) is ConnState.STREAMING)
    before = run.stats.malformed
    sent = sim.garbage(2 * len(GARBAGE))
    await wait(lambda: run.stats.malformed - before == sent)
    dropped = run.stats.dropped
    assert dropped["not_finite"] == 4 and dropped["non_positive"] == 4
    assert dropped["bad_number"] == 2 and dropped["crossed"] == 2
    for q in run.quotes:
        assert q.bid is not None and q.ask is not None
        assert math.isfinite(q.bid) and math.isfinite(q.ask) and 0 < q.bid <= q.ask
        assert abs(q.bid / PRICES[q.pair] - 1) < 0.05
    assert sim.stats.connections == 1
    seen = len(run.quotes)  # the future-stamped garbage did not freeze the stream
    await wait(lambda: pairs_seen(run, seen) == {"BTC/USD", "ETH/USD"})


async def test_burst_is_processed_in_full(
    sim: BitstampSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """A burst of books is decoded frame by frame: every one becomes a quote."""
    run = start(cfg(), PAIRS)
    await wait(lambda: state(run) is ConnState.STREAMING)
    quotes = run.stats.quotes
    queued = sim.burst(200)
    assert queued == 400
    await wait(lambda: run.stats.quotes - quotes >= queued)
    assert run.stats.malformed == 0 and run.stats.dropped["out_of_order"] == 0


async def test_replayed_stale_books_never_override_newer_prices(
    sim: BitstampSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """Duplicated, older books are dropped by microtimestamp; emitted times only move forward."""
    run = start(cfg(), PAIRS)
    await wait(lambda: run.stats.quotes >= 20)
    assert sim.replay_stale(20) > 0
    await wait(lambda: run.stats.dropped["out_of_order"] >= 10)
    await asyncio.sleep(0.1)
    for pair in ("BTC/USD", "ETH/USD"):
        stamps = [q.venue_ts or 0 for q in run.quotes if q.pair == pair]
        assert stamps == sorted(stamps)


async def test_thousandfold_jump_is_passed_on_for_the_core_to_judge(
    sim: BitstampSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """A finite, positive but absurd price is emitted as is; excluding it is the core's job."""
    run = start(cfg(), PAIRS)
    await wait(lambda: state(run) is ConnState.STREAMING)
    sim.spike("btcusd", 1000.0, None)
    await wait(lambda: any((q.bid or 0) > 900 * 67_000 for q in run.quotes))
    assert run.stats.malformed == 0


async def test_rest_failures_while_down_are_counted_and_polling_goes_on(
    sim: BitstampSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """429, 400, 5xx and timeouts are counted, the state is down, and nothing is failed."""
    sim.ws_enabled = False
    sim.rest_status = 429
    run = start(cfg(), PAIRS)
    await wait(lambda: run.stats.dropped["rest_error"] >= 3)
    assert state(run) is ConnState.DOWN and run.quotes == []
    for status in (400, 503):
        sim.rest_status = status
        errors, polls = run.stats.dropped["rest_error"], sim.stats.rest_requests
        await wait(lambda floor=errors + 3: run.stats.dropped["rest_error"] >= floor)
        assert sim.stats.rest_requests - polls <= run.stats.dropped["rest_error"] - errors + 1
        assert state(run) is ConnState.DOWN
    sim.rest_status = None
    await wait(lambda: state(run) is ConnState.POLLING)
    await wait(lambda: pairs_seen(run) == {"BTC/USD", "ETH/USD"})
    sim.rest_delay_s = 1.2  # longer than the request timeout (1 s)
    errors = run.stats.dropped["rest_error"]
    await wait(lambda: run.stats.dropped["rest_error"] > errors)
    assert state(run) is ConnState.DOWN
    sim.rest_delay_s = 0.0
    await wait(lambda: state(run) is ConnState.POLLING)
    assert run.stats.failed_instruments == {}  # a 400 on the all-pairs request blames nobody


async def test_refused_stream_falls_back_to_rest_then_resumes(
    sim: BitstampSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """While handshakes are refused one all-pairs REST request per poll delivers quotes."""
    sim.ws_enabled = False
    run = start(cfg(), PAIRS)
    await wait(lambda: pairs_seen(run) == {"BTC/USD", "ETH/USD"})
    assert state(run) is ConnState.POLLING
    assert sim.stats.connections == 0 and sim.stats.refused >= 1
    assert sim.stats.rest_requests <= run.stats.frames  # one request per poll, all pairs in it
    sim.ws_enabled = True
    await wait(lambda: state(run) is ConnState.STREAMING)
    await asyncio.sleep(0.2)  # a poll already in flight may still land
    polls = sim.stats.rest_requests
    await asyncio.sleep(0.4)
    assert sim.stats.rest_requests == polls


async def test_connection_is_rotated_before_its_maximum_age(
    sim: BitstampSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """Past max_connection_age_s the socket is replaced at once, without going down or polling."""
    run = start(cfg(max_connection_age_s=0.3), PAIRS)
    await wait(lambda: sim.stats.connections >= 3)
    assert run.stats.reconnects >= 2 and sim.stats.rest_requests == 0
    await wait(lambda: state(run) is ConnState.STREAMING)
