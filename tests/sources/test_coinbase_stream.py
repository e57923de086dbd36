"""The Coinbase adapter on its loopback simulator: acked subscriptions, heartbeats,
REST failures and pacing. The faults all venues share run from test_stream_faults.py."""

from __future__ import annotations

import asyncio

from venue_cases import CASE, Start, Wait

from oracled.sim.coinbase import CoinbaseSim
from oracled.sources import ConnState

VENUE = CASE["coinbase"]  # what `sim` and `start` build (conftest.py)
PRICES = {"BTC-USD": 67_000.0, "ETH-USD": 3_500.0}  # what VENUE's simulator starts from


async def test_streams_quotes_after_acked_subscriptions(
    sim: CoinbaseSim, start: Start, wait: Wait
) -> None:
    """Heartbeats and tickers are subscribed and acked; quotes carry the venue's time."""
    run = await start()
    await wait(lambda: run.pairs() == {"BTC/USD", "ETH/USD"})
    assert run.stats.state is ConnState.STREAMING
    await wait(lambda: run.source._pending == {})  # both acks arrived
    assert sim.stats.requests == 2  # heartbeats, then one ticker request for both products
    quote = run.quotes[-1]
    assert quote.source == "coinbase" and quote.kind == "spot"
    assert quote.venue_ts is not None and abs(quote.venue_ts - quote.recv_ts) < 2_000
    assert quote.bid is not None and quote.ask is not None and 0 < quote.bid <= quote.ask
    assert run.stats.failed_instruments == {}


async def test_heartbeats_keep_a_quiet_market_alive(
    start: Start, sim: CoinbaseSim, wait: Wait
) -> None:
    """With no ticker updates for longer than the liveness timeout, heartbeats keep the socket."""
    async with CoinbaseSim(PRICES, rate_hz=0.01, heartbeat_s=0.1) as quiet:
        run = await start(quiet)
        await wait(lambda: run.stats.state is ConnState.STREAMING)  # from the snapshots
        await asyncio.sleep(1.2)  # more than twice the liveness timeout
        assert quiet.stats.heartbeats_sent >= 5
        assert quiet.stats.frames_sent == 2  # only the two snapshots
        assert run.stats.reconnects == 0 and quiet.stats.connections == 1
        assert run.stats.state is ConnState.STREAMING


async def test_rest_errors_and_slow_answers_while_down_then_recovery(
    sim: CoinbaseSim, start: Start, wait: Wait
) -> None:
    """429, 5xx and timeouts are counted, state stays down, polls go on; answers bring quotes."""
    sim.ws_enabled = False
    sim.rest_status = 429
    run = await start()
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
    await wait(lambda: run.pairs() == {"BTC/USD", "ETH/USD"})
    assert run.state() is ConnState.POLLING
    assert all(q.venue_ts is None for q in run.quotes)


async def test_rest_polls_are_paced_inside_the_public_limit(
    sim: CoinbaseSim, start: Start, wait: Wait
) -> None:
    """With a very short poll interval, REST calls stay at or under 8 a second after the burst."""
    sim.ws_enabled = False
    await start(rest_poll_interval_s=0.001)
    await wait(lambda: sim.stats.rest_requests >= 8)
    first = sim.stats.rest_requests
    await asyncio.sleep(1.0)
    assert sim.stats.rest_requests - first <= 9
