"""The Kraken adapter on its loopback simulator: per-symbol acks, heartbeats, an unknown pair
over REST, REST failures. The faults all venues share: test_stream_faults.py."""

from __future__ import annotations

from venue_cases import CASE, Start, Wait

from oracled.sim.kraken import KrakenSim
from oracled.sources import ConnState

VENUE = CASE["kraken"]  # what `sim` and `start` build (conftest.py)
PRICES = {"BTC/USD": 67_000.0, "ETH/USD": 3_500.0}  # what VENUE's simulator starts from


async def test_streams_quotes_after_per_symbol_acks(
    sim: KrakenSim, start: Start, wait: Wait
) -> None:
    """One subscribe for both symbols, one ack each; quotes carry the venue's event time."""
    run = await start()
    await wait(lambda: run.pairs() == {"BTC/USD", "ETH/USD"})
    assert run.stats.state is ConnState.STREAMING
    assert sim.stats.requests == 1
    await wait(lambda: run.source._pending == {})  # both acks arrived and settled the request
    assert run.stats.failed_instruments == {}
    quote = run.quotes[-1]
    assert quote.kind == "spot" and quote.venue_ts is not None
    assert abs(quote.recv_ts - quote.venue_ts) < 1_000
    assert quote.bid is not None and quote.ask is not None and 0 < quote.bid <= quote.ask
    assert run.stats.malformed == 0


async def test_quiet_market_stays_alive_on_heartbeats(start: Start, wait: Wait) -> None:
    """With no ticker update for seconds, venue heartbeats alone keep the connection alive."""
    async with KrakenSim(PRICES, rate_hz=0.1, heartbeat_s=0.1) as venue:
        run = await start(venue)
        await wait(lambda: run.stats.state is ConnState.STREAMING)  # the snapshots
        quotes, frames = run.stats.quotes, venue.stats.frames_sent
        await wait(lambda: venue.stats.heartbeats_sent >= 10)  # 1 s, two liveness windows
        assert venue.stats.frames_sent == frames == 2  # the two snapshots, then heartbeats only
        assert run.stats.quotes == quotes
        assert run.stats.reconnects == 0 and venue.stats.connections == 1
        assert run.stats.state is ConnState.STREAMING


async def test_rest_failures_while_down_are_counted_and_polling_goes_on(
    sim: KrakenSim, start: Start, wait: Wait
) -> None:
    """429, 5xx and timeouts are counted with the state down; the next good answer recovers."""
    sim.ws_enabled = False
    sim.rest_status = 429
    run = await start()
    await wait(lambda: run.stats.dropped["rest_error"] >= 3)
    assert run.state() is ConnState.DOWN and run.quotes == []
    sim.rest_status = 502
    errors = run.stats.dropped["rest_error"]
    await wait(lambda: run.stats.dropped["rest_error"] >= errors + 3)
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
    assert run.stats.failed_instruments == {}


async def test_rest_unknown_pair_fails_only_that_symbol(
    sim: KrakenSim, start: Start, wait: Wait
) -> None:
    """Kraken's HTTP 200 'Unknown asset pair' spoils the batch; the retry isolates the bad one."""
    sim.ws_enabled = False
    run = await start(pairs=[*VENUE.pairs, VENUE.unknown_pair])
    await wait(lambda: "FOO/USD" in run.stats.failed_instruments)
    assert run.stats.failed_instruments["FOO/USD"] == "EQuery:Unknown asset pair"
    seen = len(run.quotes)
    await wait(lambda: run.pairs(seen) == {"BTC/USD", "ETH/USD"})
    assert run.stats.state is ConnState.POLLING
