"""The Bitstamp adapter on its loopback simulator: a subscribe per channel, heartbeats,
reconnect requests, REST failures. The faults all venues share: test_stream_faults.py."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from venue_cases import CASE, Start, Wait

from oracled.sim.bitstamp import BitstampSim
from oracled.sources import ConnState
from oracled.sources.bitstamp import BitstampSource

VENUE = CASE["bitstamp"]  # what `sim` and `start` build (conftest.py)
PRICES = {"BTC/USD": 67_000.0, "ETH/USD": 3_500.0}  # what VENUE's simulator starts from


async def test_streams_quotes_after_one_acked_subscribe_per_channel(
    sim: BitstampSim, start: Start, wait: Wait
) -> None:
    """One bts:subscribe per pair, each acked; quotes carry the book's microtimestamp."""
    run = await start()
    await wait(lambda: run.pairs() == {"BTC/USD", "ETH/USD"})
    assert run.state() is ConnState.STREAMING
    assert sim.stats.requests == 2
    await wait(lambda: run.source._pending == {})
    quote = run.quotes[-1]
    assert quote.venue_ts is not None and abs(quote.recv_ts - quote.venue_ts) < 1_000
    assert quote.bid is not None and quote.ask is not None and 0 < quote.bid <= quote.ask
    assert run.stats.malformed == 0 and run.stats.failed_instruments == {}


class _FastHeartbeat(BitstampSource):
    """The real adapter with a heartbeat interval that fits a half-second liveness window."""

    app_ping_interval_s: ClassVar[float | None] = 0.1


async def test_quiet_book_stays_alive_on_heartbeat_answers(start: Start, wait: Wait) -> None:
    """No book changes at all: the answers to our bts:heartbeat keep the connection alive."""
    async with BitstampSim(PRICES, rate_hz=0.1) as venue:
        run = await start(venue, cls=_FastHeartbeat)
        await wait(lambda: venue.stats.requests >= 12)  # 2 subscribes, then 10 heartbeats
        await asyncio.sleep(0.6)  # more than one liveness window
        assert venue.stats.frames_sent == 0 and run.quotes == []
        assert run.stats.reconnects == 0 and venue.stats.connections == 1
        assert run.stats.frames >= venue.stats.requests - 2  # every heartbeat was answered


async def test_reconnect_request_rotates_at_once_without_going_down(
    sim: BitstampSim, start: Start, wait: Wait
) -> None:
    """bts:request_reconnect: a new connection at once, resubscribed, never down, no polling."""
    run = await start()
    await wait(lambda: run.state() is ConnState.STREAMING)
    assert sim.request_reconnect() == 1
    await wait(lambda: sim.stats.connections == 2 and sim.stats.active == 1)
    seen = len(run.quotes)
    await wait(lambda: run.pairs(seen) == {"BTC/USD", "ETH/USD"})
    assert run.stats.reconnects == 1 and sim.stats.requests == 4
    assert sim.stats.rest_requests == 0 and run.state() is ConnState.STREAMING


async def test_rest_failures_while_down_are_counted_and_polling_goes_on(
    sim: BitstampSim, start: Start, wait: Wait
) -> None:
    """429, 400, 5xx and timeouts are counted, the state is down, and nothing is failed."""
    sim.ws_enabled = False
    sim.rest_status = 429
    run = await start()
    await wait(lambda: run.stats.dropped["rest_error"] >= 3)
    assert run.state() is ConnState.DOWN and run.quotes == []
    for status in (400, 503):
        sim.rest_status = status
        errors, polls = run.stats.dropped["rest_error"], sim.stats.rest_requests
        await wait(lambda floor=errors + 3: run.stats.dropped["rest_error"] >= floor)
        assert sim.stats.rest_requests - polls <= run.stats.dropped["rest_error"] - errors + 1
        assert run.state() is ConnState.DOWN
    sim.rest_status = None
    await wait(lambda: run.state() is ConnState.POLLING)
    await wait(lambda: run.pairs() == {"BTC/USD", "ETH/USD"})
    sim.rest_delay_s = 1.2  # longer than the request timeout (1 s)
    errors = run.stats.dropped["rest_error"]
    await wait(lambda: run.stats.dropped["rest_error"] > errors)
    assert run.state() is ConnState.DOWN
    sim.rest_delay_s = 0.0
    await wait(lambda: run.state() is ConnState.POLLING)
    assert run.stats.failed_instruments == {}  # a 400 on the all-pairs request blames nobody
