"""The Kraken adapter against the loopback Kraken simulator: streaming, faults, fallback."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from oracled.config import SourceConfig
from oracled.model import Kind
from oracled.sim.kraken import GARBAGE, KrakenSim
from oracled.sources import ConnState

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
async def sim() -> AsyncIterator[KrakenSim]:
    venue = KrakenSim(PRICES, seed=11, rate_hz=40.0, heartbeat_s=0.2)
    async with venue:
        yield venue


@pytest.fixture
def cfg(sim: KrakenSim, config: Callable[..., SourceConfig]) -> Callable[..., SourceConfig]:
    """A kraken config pointing at the simulator, with overrides."""
    return lambda **overrides: config(sim.ws_url, sim.rest_url, type="kraken", **overrides)


async def test_streams_quotes_after_per_symbol_acks(
    sim: KrakenSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """One subscribe for both symbols, one ack each; quotes carry the venue's event time."""
    run = start(cfg(), PAIRS)
    await wait(lambda: pairs_seen(run) == {"BTC/USD", "ETH/USD"})
    assert run.stats.state is ConnState.STREAMING
    assert sim.stats.requests == 1
    await wait(lambda: run.source._pending == {})  # both acks arrived and settled the request
    assert run.stats.failed_instruments == {}
    quote = run.quotes[-1]
    assert quote.kind == "spot" and quote.venue_ts is not None
    assert abs(quote.recv_ts - quote.venue_ts) < 1_000
    assert quote.bid is not None and quote.ask is not None and 0 < quote.bid <= quote.ask
    assert run.stats.malformed == 0


async def test_quiet_market_stays_alive_on_heartbeats(
    start: Start, config: Callable[..., SourceConfig], wait: Wait
) -> None:
    """With no ticker update for seconds, venue heartbeats alone keep the connection alive."""
    async with KrakenSim(PRICES, rate_hz=0.1, heartbeat_s=0.1) as venue:
        cfg = config(venue.ws_url, venue.rest_url, type="kraken", liveness_timeout_s=0.5)
        run = start(cfg, PAIRS)
        await wait(lambda: run.stats.state is ConnState.STREAMING)  # the snapshots
        quotes, frames = run.stats.quotes, venue.stats.frames_sent
        await wait(lambda: venue.stats.heartbeats_sent >= 10)  # 1 s, two liveness windows
        assert venue.stats.frames_sent == frames == 2  # the two snapshots, then heartbeats only
        assert run.stats.quotes == quotes
        assert run.stats.reconnects == 0 and venue.stats.connections == 1
        assert run.stats.state is ConnState.STREAMING


async def test_unknown_symbol_fails_alone_without_reconnecting(
    sim: KrakenSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """The venue refuses one symbol of the request; it alone fails, the others stream on."""
    pairs: list[tuple[str, Kind]] = [*PAIRS, ("FOO/USD", "spot")]
    run = start(cfg(), pairs)
    await wait(lambda: "FOO/USD" in run.stats.failed_instruments)
    assert run.stats.failed_instruments == {"FOO/USD": "Currency pair not supported FOO/USD"}
    seen = len(run.quotes)
    await wait(lambda: pairs_seen(run, seen) == {"BTC/USD", "ETH/USD"})
    await asyncio.sleep(0.3)
    assert sim.stats.connections == 1 and run.stats.reconnects == 0
    assert sim.stats.requests == 1  # no split, no retry storm
    assert run.source._pending == {}


async def test_reconnects_and_resubscribes_after_disconnect(
    sim: KrakenSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """A dropped TCP connection is replaced, the symbols resubscribed, and quotes resume."""
    run = start(cfg(), PAIRS)
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    assert sim.disconnect() == 1
    await wait(lambda: run.stats.reconnects >= 1 and sim.stats.connections >= 2)
    seen = len(run.quotes)
    await wait(lambda: pairs_seen(run, seen) == {"BTC/USD", "ETH/USD"})
    assert sim.stats.requests >= 2  # subscribed again on the new connection
    assert sim.stats.active == 1


async def test_half_open_socket_is_replaced_by_the_watchdog(
    sim: KrakenSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """A socket that stays open but carries nothing, not even heartbeats, is cut and replaced."""
    run = start(cfg(liveness_timeout_s=0.5), PAIRS)
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    sim.silence(None)
    await wait(lambda: run.stats.reconnects >= 1 and sim.stats.connections >= 2)
    assert run.stats.state in (ConnState.DOWN, ConnState.POLLING)
    sim.reset()
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    assert sim.stats.active == 1  # the silent socket was closed, not leaked


async def test_garbage_is_counted_and_no_bad_price_escapes(
    sim: KrakenSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """Every malformed frame is counted once by reason; no zero/negative/crossed price leaves."""
    run = start(cfg(), PAIRS)
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    before = run.stats.malformed
    sent = sim.garbage(2 * len(GARBAGE))
    await wait(lambda: run.stats.malformed - before == sent)
    dropped = run.stats.dropped
    assert dropped["non_positive"] == 4 and dropped["crossed"] == 2
    assert dropped["decode"] == 6 and dropped["shape"] == 14
    for q in run.quotes:
        assert q.bid is not None and q.ask is not None
        assert math.isfinite(q.bid) and math.isfinite(q.ask) and 0 < q.bid <= q.ask
        assert abs(q.bid / PRICES[q.pair] - 1) < 0.05
    assert sim.stats.connections == 1


async def test_burst_is_processed_in_full(
    sim: KrakenSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """A burst of updates is decoded frame by frame: every one becomes a quote."""
    run = start(cfg(), PAIRS)
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    frames, quotes = run.stats.frames, run.stats.quotes
    queued = sim.burst(200)
    assert queued == 400
    await wait(lambda: run.stats.frames - frames >= queued)
    await wait(lambda: run.stats.quotes - quotes >= queued)
    assert run.stats.malformed == 0 and run.stats.dropped["out_of_order"] == 0


async def test_replayed_stale_frames_never_override_newer_prices(
    sim: KrakenSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """Duplicated, older frames are dropped by venue time; emitted times only move forward."""
    run = start(cfg(), PAIRS)
    await wait(lambda: run.stats.quotes >= 20)
    assert sim.replay_stale(20) > 0
    await wait(lambda: run.stats.dropped["out_of_order"] >= 10)
    await asyncio.sleep(0.1)
    for pair in ("BTC/USD", "ETH/USD"):
        stamps = [q.venue_ts or 0 for q in run.quotes if q.pair == pair]
        assert stamps == sorted(stamps)


async def test_thousandfold_jump_is_passed_on_for_the_core_to_judge(
    sim: KrakenSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """A finite, positive but absurd price is not the source's call: it is emitted as is."""
    run = start(cfg(), PAIRS)
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    sim.spike("BTC/USD", 1000.0, None)
    await wait(lambda: any((q.bid or 0) > 900 * 67_000 for q in run.quotes))
    assert run.stats.malformed == 0


async def test_rest_failures_while_down_are_counted_and_polling_goes_on(
    sim: KrakenSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """429, 5xx and timeouts are counted with the state down; the next good answer recovers."""
    sim.ws_enabled = False
    sim.rest_status = 429
    run = start(cfg(), PAIRS)
    await wait(lambda: run.stats.dropped["rest_error"] >= 3)
    assert state(run) is ConnState.DOWN and run.quotes == []
    sim.rest_status = 502
    errors = run.stats.dropped["rest_error"]
    await wait(lambda: run.stats.dropped["rest_error"] >= errors + 3)
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
    assert run.stats.failed_instruments == {}


async def test_refused_stream_falls_back_to_rest_then_resumes(
    sim: KrakenSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """While handshakes are refused REST delivers quotes; streaming ends the polling."""
    sim.ws_enabled = False
    run = start(cfg(), PAIRS)
    await wait(lambda: run.stats.state is ConnState.POLLING)
    await wait(lambda: pairs_seen(run) == {"BTC/USD", "ETH/USD"})
    assert all(q.venue_ts is None for q in run.quotes)  # REST has no event time
    assert sim.stats.connections == 0 and sim.stats.refused >= 1
    sim.ws_enabled = True
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    await asyncio.sleep(0.2)  # a poll already in flight may still land
    polls = sim.stats.rest_requests
    await asyncio.sleep(0.4)
    assert sim.stats.rest_requests == polls


async def test_rest_unknown_pair_fails_only_that_symbol(
    sim: KrakenSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """Kraken's HTTP 200 'Unknown asset pair' spoils the batch; the retry isolates the bad one."""
    sim.ws_enabled = False
    pairs: list[tuple[str, Kind]] = [*PAIRS, ("FOO/USD", "spot")]
    run = start(cfg(), pairs)
    await wait(lambda: "FOO/USD" in run.stats.failed_instruments)
    assert run.stats.failed_instruments["FOO/USD"] == "EQuery:Unknown asset pair"
    seen = len(run.quotes)
    await wait(lambda: pairs_seen(run, seen) == {"BTC/USD", "ETH/USD"})
    assert run.stats.state is ConnState.POLLING


async def test_connection_is_rotated_before_its_maximum_age(
    sim: KrakenSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """Past max_connection_age_s the socket is replaced at once, without going down or polling."""
    run = start(cfg(max_connection_age_s=0.3), PAIRS)
    await wait(lambda: sim.stats.connections >= 3)
    assert run.stats.reconnects >= 2
    assert sim.stats.rest_requests == 0
    await wait(lambda: run.stats.state is ConnState.STREAMING)
