"""The Gemini adapter on its loopback simulator: replayed diffs, REST pacing at one request a
second. The faults all venues share (first connection and its book, heartbeats, REST fallback
among them): test_stream_faults.py."""

from __future__ import annotations

import asyncio

from venue_cases import CASE, Start, Wait, book_matches

from oracled.sim.gemini import GeminiSim

VENUE = CASE["gemini"]  # what `sim` and `start` build (conftest.py)


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
    assert all(q.bid is not None and q.ask is not None and q.bid <= q.ask for q in run.quotes)


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
