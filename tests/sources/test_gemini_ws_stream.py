"""The adapter of Gemini's current WebSocket API on its loopback simulator: the subscribe flow,
venue times, an unknown symbol over REST. The faults all venues share (the quiet market kept alive
by the answers to the source's pings among them) run from test_stream_faults.py."""

from __future__ import annotations

import time

from venue_cases import CASE, Start, Wait

from oracled.sim.gemini_ws import GeminiWsSim
from oracled.sources import ConnState

VENUE = CASE["gemini_ws"]  # what `sim` and `start` build (conftest.py)


async def test_one_request_subscribes_every_symbol_and_quotes_carry_event_times(
    sim: GeminiWsSim, start: Start, wait: Wait
) -> None:
    """One SUBSCRIBE, acknowledged, brings both symbols; every quote's venue time is its frame's
    `E` in ms, at or before its receipt."""
    run = await start()
    await wait(lambda: run.state() is ConnState.STREAMING and run.pairs() == {"BTC/USD", "ETH/USD"})
    assert sim.stats.requests == 1 and sim.stats.errors_sent == 0
    assert run.source._pending == {}
    now_ms = time.time_ns() // 1_000_000
    assert all(q.venue_ts is not None and q.venue_ts <= q.recv_ts <= now_ms for q in run.quotes)


async def test_an_unknown_symbol_over_rest_fails_alone(
    sim: GeminiWsSim, start: Start, wait: Wait
) -> None:
    """With the stream refused, REST polls each symbol; the one pubticker does not know answers
    400 and is counted, the others quote."""
    sim.ws_enabled = False
    run = await start(pairs=[*VENUE.pairs, VENUE.unknown_pair])
    await wait(lambda: run.pairs() == {"BTC/USD", "ETH/USD"})
    await wait(lambda: run.stats.dropped["rest_error"] >= 1)
    assert run.stats.state is ConnState.POLLING
