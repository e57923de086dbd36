"""The Gemini adapter on its loopback simulator: the book, heartbeats, replayed
diffs, REST failures and pacing. The faults all venues share run from test_stream_faults.py."""

from __future__ import annotations

import asyncio

from venue_cases import CASE, Start, Wait, book_matches

from oracled.sim.gemini import GeminiSim
from oracled.sources import ConnState

VENUE = CASE["gemini"]  # what `sim` and `start` build (conftest.py)
PRICES = {"BTCUSD": 67_000.0, "ETHUSD": 3_500.0}  # what VENUE's simulator starts from


async def test_streams_top_of_book_after_snapshots(
    sim: GeminiSim, start: Start, wait: Wait
) -> None:
    """One subscribe, a snapshot per symbol (the ack), then quotes that match the venue's book."""
    run = await start()
    await wait(lambda: run.pairs() == {"BTC/USD", "ETH/USD"})
    assert run.stats.state is ConnState.STREAMING
    assert run.source._pending == {}
    assert sim.stats.requests == 1
    quote = run.quotes[-1]
    assert quote.source == "gemini" and quote.venue_ts is None
    assert quote.bid is not None and quote.ask is not None and 0 < quote.bid <= quote.ask
    await wait(lambda: book_matches(run, sim, "BTCUSD"))


async def test_heartbeats_keep_a_quiet_market_alive(start: Start, wait: Wait) -> None:
    """With no book changes for longer than the liveness timeout, heartbeats keep the socket."""
    quiet = GeminiSim(PRICES, rate_hz=0.01, heartbeat_s=0.1)
    async with quiet:
        run = await start(quiet)
        await wait(lambda: run.stats.state is ConnState.STREAMING)
        await asyncio.sleep(1.2)
        assert quiet.stats.heartbeats_sent >= 5
        assert quiet.stats.frames_sent == 2  # the two snapshots only
        assert run.stats.reconnects == 0 and quiet.stats.connections == 1


async def test_replayed_diffs_never_leave_a_stale_book_behind(
    sim: GeminiSim, start: Start, wait: Wait
) -> None:
    """Gemini diffs carry no sequence or time: replays after a move cross the book, which is
    dropped and rebuilt; no crossed quote is emitted and the book returns to the venue's."""
    run = await start()
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
    sim: GeminiSim, start: Start, wait: Wait
) -> None:
    """429, 5xx and timeouts are counted, state stays down, polls go on; answers bring quotes."""
    sim.ws_enabled = False
    sim.rest_status = 429
    run = await start()
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
    await wait(lambda: run.pairs() == {"BTC/USD", "ETH/USD"})
    assert run.state() is ConnState.POLLING


async def test_rest_polls_keep_to_one_a_second_after_the_burst(
    sim: GeminiSim, start: Start, wait: Wait
) -> None:
    """Gemini asks for at most one public request a second: five at once, then one a second."""
    sim.ws_enabled = False
    await start(rest_poll_interval_s=0.001)
    await wait(lambda: sim.stats.rest_requests >= 5)
    first = sim.stats.rest_requests
    await asyncio.sleep(1.0)
    assert sim.stats.rest_requests - first <= 2
