"""The Binance adapter against the loopback simulator: streaming, faults, recovery, fallback."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import pytest

from oracled.config import SourceConfig
from oracled.model import Kind
from oracled.sim import GARBAGE, BinanceSim
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


async def test_reconnects_and_resubscribes_after_disconnect(
    sim: BinanceSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """A dropped TCP connection is replaced, the symbols resubscribed, and quotes resume."""
    run = start(cfg())
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    assert sim.disconnect() == 1
    await wait(lambda: run.stats.reconnects >= 1 and sim.stats.connections >= 2)
    seen = len(run.quotes)
    await wait(lambda: pairs_seen(run, seen) == {"BTC/USDT", "ETH/USDT"})
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    assert sim.stats.requests >= 2  # subscribed again on the new connection
    assert sim.stats.active == 1


async def test_silent_open_socket_is_detected_and_replaced(
    sim: BinanceSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """A venue that keeps its socket open but sends nothing, not even pings, is cut off."""
    run = start(cfg(liveness_timeout_s=0.5))
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    sim.silence(None)
    await wait(lambda: run.stats.reconnects >= 1 and sim.stats.connections >= 2)
    assert run.stats.state in (ConnState.DOWN, ConnState.POLLING)
    sim.reset()
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    assert sim.stats.active == 1  # the silent socket was closed, not leaked


async def test_rest_polling_covers_a_refused_stream_and_stops_after(
    sim: BinanceSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """While WebSocket handshakes are refused, REST polls deliver quotes; streaming ends polling."""
    sim.ws_enabled = False
    run = start(cfg())
    await wait(lambda: run.stats.state is ConnState.POLLING)
    await wait(lambda: pairs_seen(run) == {"BTC/USDT", "ETH/USDT"})
    assert sim.stats.connections == 0 and sim.stats.refused >= 1
    assert sim.stats.rest_requests >= 1
    sim.ws_enabled = True
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    await asyncio.sleep(0.2)  # a poll already in flight may still land
    polls = sim.stats.rest_requests
    await asyncio.sleep(0.5)  # five poll intervals
    assert sim.stats.rest_requests == polls


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


async def test_garbage_is_counted_as_malformed_and_no_bad_price_escapes(
    sim: BinanceSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """Every malformed frame is counted once; no NaN, zero, negative or crossed price is emitted."""
    run = start(cfg())
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    before = run.stats.malformed
    sent = sim.garbage(3 * len(GARBAGE))
    assert sent == 36
    await wait(lambda: sim.stats.garbage_sent == sent)
    await wait(lambda: run.stats.malformed - before == sent)
    for q in run.quotes:
        assert q.bid is not None and q.ask is not None
        assert math.isfinite(q.bid) and math.isfinite(q.ask) and 0 < q.bid <= q.ask
        start_price = PRICES[q.pair.replace("/", "")]
        assert abs(q.bid / start_price - 1) < 0.05
    assert sim.stats.connections == 1  # garbage is survived without a reconnect


async def test_connection_is_rotated_before_its_maximum_age(
    sim: BinanceSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """Past max_connection_age_s the socket is replaced at once, without going down or polling."""
    run = start(cfg(max_connection_age_s=0.3))
    await wait(lambda: sim.stats.connections >= 3)
    assert run.stats.reconnects >= 2
    assert sim.stats.rest_requests == 0
    assert "rest_error" not in run.stats.dropped
    await wait(lambda: run.stats.state is ConnState.STREAMING)


async def test_spiked_venue_price_is_passed_on_for_the_core_to_judge(
    sim: BinanceSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """A plausible but wrong price is not the source's call: it is emitted, the core decides."""
    run = start(cfg())
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    sim.spike("BTCUSDT", 1.5, None)
    await wait(
        lambda: any(q.pair == "BTC/USDT" and (q.bid or 0) > 1.4 * 67_000 for q in run.quotes)
    )
    assert run.stats.malformed == 0
