"""The Binance USD-M adapter against its loopback simulator: both connections, faults, fallback."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from oracled.config import SourceConfig
from oracled.model import Kind
from oracled.sim import Out
from oracled.sim.binance_usdm import GARBAGE, BinanceUsdmSim
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


def inject(venue: BinanceUsdmSim, frame: str) -> None:
    """Send one raw frame to every connected client, as the venue would."""
    for client in venue.clients:
        client.send(frame, Out.GARBAGE)


def book_frame(symbol: str, bid: str, ask: str, u: int = 9_000_000_000_000) -> str:
    return (
        f'{{"stream":"{symbol.lower()}@bookTicker","data":{{"e":"bookTicker","u":{u},'
        f'"E":1,"T":1,"s":"{symbol}","b":"{bid}","B":"1","a":"{ask}","A":"1"}}}}'
    )


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


async def test_reconnects_and_resubscribes_after_disconnect(
    venue: BinanceUsdmSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """Dropped sockets are replaced and resubscribed; quotes and marks resume."""
    run = start(cfg(), PAIRS)
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    assert venue.disconnect() == 2
    await wait(lambda: run.stats.reconnects >= 1 and venue.stats.connections >= 4)
    seen, marks = len(run.quotes), run.source.mark_feed.stats.quotes
    await wait(lambda: pairs_seen(run, seen) == BOTH)
    await wait(lambda: run.source.mark_feed.stats.quotes > marks)
    assert venue.stats.requests >= 4
    await wait(lambda: venue.stats.active == 2)  # the venue may still count a dropped socket


async def test_half_open_socket_is_replaced_by_the_watchdog(
    venue: BinanceUsdmSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """A silent venue (no data, no pings) is cut after the liveness timeout and replaced."""
    run = start(cfg(), PAIRS)
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    venue.silence(None)
    await wait(lambda: run.stats.reconnects >= 1 and run.source.mark_feed.stats.reconnects >= 1)
    assert run.stats.state in (ConnState.DOWN, ConnState.POLLING)
    venue.reset()
    # Each connection has its own watchdog and backoff: the mark feed may come back after the
    # book connection, and the venue may count a cut socket until its handler has seen it close.
    marks = run.source.mark_feed
    await wait(
        lambda: (
            run.stats.state is ConnState.STREAMING
            and marks.stats.state is ConnState.STREAMING
            and venue.stats.active == 2
        )
    )


async def test_garbage_is_counted_and_no_bad_price_escapes(
    venue: BinanceUsdmSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """Every malformed frame counts once on the book connection; no bad price is emitted."""
    run = start(cfg(), PAIRS)
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    book_client = next(c for c in venue.clients if c.request.path.startswith("/public"))
    for frame in GARBAGE * 2:
        book_client.send(frame, Out.GARBAGE)
    await wait(lambda: run.stats.malformed == 2 * len(GARBAGE))
    for q in run.quotes:
        assert q.bid is not None and q.ask is not None
        assert math.isfinite(q.bid) and 0 < q.bid <= q.ask
        assert abs(q.bid / PRICES[q.pair.replace("/", "")] - 1) < 0.05
    assert venue.stats.connections == 2


async def test_absurd_values_dropped_with_reasons_but_a_1000x_jump_passes(
    venue: BinanceUsdmSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """Zero, negative and NaN prices stop at the source; a 1000x print is the core's call."""
    run = start(cfg(), PAIRS)
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    inject(venue, book_frame("BTCUSDT", "0", "0"))
    inject(venue, book_frame("BTCUSDT", "-1.5", "-1.0"))
    inject(venue, book_frame("BTCUSDT", "NaN", "NaN"))
    await wait(lambda: run.stats.malformed == 3)
    assert run.stats.dropped["non_positive"] == 2 and run.stats.dropped["not_finite"] == 1
    venue.spike("BTCUSDT", 1000.0, None)
    await wait(lambda: any((q.bid or 0) > 900 * 67_000 for q in run.quotes))
    assert run.stats.malformed == 3


async def test_burst_is_processed_in_full(
    venue: BinanceUsdmSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """A burst of frames is decoded and emitted without loss."""
    run = start(cfg(), PAIRS)
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    before = run.stats.quotes
    queued = venue.burst(200)
    assert queued == 400
    await wait(lambda: run.stats.quotes - before >= queued)
    assert run.stats.malformed == 0


async def test_replayed_frames_never_override_newer_prices(
    venue: BinanceUsdmSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """Duplicated and out-of-order frames are dropped by update id; event times never go back."""
    run = start(cfg(), PAIRS)
    await wait(lambda: run.stats.state is ConnState.STREAMING and len(run.quotes) > 20)
    queued = venue.replay_stale(20)
    assert queued == 20
    await wait(lambda: run.stats.dropped["stale"] == queued)
    for pair in BOTH:
        times = [q.venue_ts or 0 for q in run.quotes if q.pair == pair]
        assert times == sorted(times)


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


async def test_refused_stream_falls_back_to_rest_then_streams_again(
    venue: BinanceUsdmSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """REST polls (all symbols in one request) cover a refused stream; streaming ends polling."""
    venue.ws_enabled = False
    run = start(cfg(), PAIRS)
    await wait(lambda: run.stats.state is ConnState.POLLING and pairs_seen(run) == BOTH)
    assert venue.stats.connections == 0 and venue.stats.refused >= 1
    assert all(q.venue_ts is not None for q in run.quotes)  # the REST row's transaction time
    venue.ws_enabled = True
    await wait(lambda: run.stats.state is ConnState.STREAMING)
    await asyncio.sleep(0.2)  # a poll already in flight may still land
    polls = venue.stats.rest_requests
    await asyncio.sleep(0.4)
    assert venue.stats.rest_requests == polls


async def test_connections_rotate_before_their_maximum_age(
    venue: BinanceUsdmSim, start: Start, cfg: Any, wait: Wait
) -> None:
    """Past max_connection_age_s both sockets are replaced at once, without polling REST."""
    run = start(cfg(max_connection_age_s=0.3), PAIRS)
    await wait(lambda: venue.stats.connections >= 6)
    assert run.stats.reconnects >= 2 and venue.stats.rest_requests == 0
    await wait(lambda: run.stats.state is ConnState.STREAMING)
