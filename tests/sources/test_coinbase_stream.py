"""The Coinbase adapter on its loopback simulator: REST pacing under the public limit. The faults
all venues share (first connection, heartbeats, REST fallback among them): test_stream_faults.py."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs
from venue_cases import CASE, Running, Start, Wait, quoting_again

from oracled.model import Kind
from oracled.sim.coinbase import CoinbaseSim
from oracled.sources import ConnState

VENUE = CASE["coinbase"]  # what `sim` and `start` build (conftest.py)


async def test_a_sequence_count_that_starts_over_replaces_the_connection(
    sim: CoinbaseSim, start: Start, wait: Wait
) -> None:
    """sequence_num going back to 1 on an open connection (the venue's count restarted) is no
    replay: the connection is replaced (counted as a sequence reset), and the new one quotes
    again. Before, every later message was dropped as stale_sequence while heartbeats kept the
    socket looking alive."""
    run = await start()
    await wait(lambda: run.state() is ConnState.STREAMING)
    sim.restart_sequence()
    await wait(lambda: sim.stats.connections >= 2 and run.stats.reconnects == 1)
    seen = len(run.quotes)
    await wait(lambda: len(run.quotes) > seen)
    assert run.stats.dropped["stale_sequence"] >= 1
    assert run.stats.sequence_resets == 1  # counted once, however many frames came before the cut
    assert run.state() is ConnState.STREAMING


async def test_a_sequence_reset_is_a_planned_replacement_not_a_failure(
    sim: CoinbaseSim, start: Start, wait: Wait
) -> None:
    """The connection replaced for a restarted sequence_num is replaced at once, like the
    rotation before max_connection_age_s: the source never goes down and never polls REST.
    Before, it went through the failure path: state down (OracledSourceDown's series), a
    reconnect backoff, and REST polls while it waited."""
    run = await start()
    await wait(lambda: run.state() is ConnState.STREAMING)
    states: list[ConnState] = []

    async def watch() -> None:
        while True:
            states.append(run.state())
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    try:
        sim.restart_sequence()
        await wait(lambda: run.stats.sequence_resets == 1 and sim.stats.connections >= 2)
        seen = len(run.quotes)
        await wait(lambda: len(run.quotes) > seen)
        await asyncio.sleep(0.05)  # a REST poll the failure path started would be in by now
    finally:
        watcher.cancel()
        await asyncio.wait((watcher,))
    assert set(states) == {ConnState.STREAMING}
    assert sim.stats.rest_requests == 0 and "rest_error" not in run.stats.dropped
    assert run.stats.reconnects == 1


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


async def test_a_snapshot_repeating_the_last_book_after_a_reconnect_is_not_a_new_quote(
    sim: CoinbaseSim, start: Start, wait: Wait
) -> None:
    """The ticker channel answers each subscription with a snapshot stamped when it is sent; the
    ticker has no time of its own. With the books still, a dropped connection's successor gets
    snapshots repeating the last quotes' books: each is dropped as `unchanged` (the quotes keep
    their time, which a frozen book must not lose) and the stream is streaming again all the
    same. Before, each reconnect (and each planned rotation) made a book that had stopped
    changing look fresh for one more age limit."""
    for path in sim.paths.values():
        path.volatility = 0.0  # the mid no longer changes (the test venue has no basis)
    run = await start()
    await wait(lambda: run.state() is ConnState.STREAMING and len(run.pairs()) == 2)
    sim.freeze(None)  # no more ticker updates: a snapshot is all a connection will get
    await asyncio.sleep(0.1)  # updates sent before the freeze are read
    stamps = {q.pair: q.venue_ts for q in run.quotes}
    seen, unchanged = len(run.quotes), run.stats.dropped["unchanged"]
    sim.rest_enabled = False  # only the stream can quote
    sim.disconnect()
    await wait(lambda: sim.stats.connections == 2 and run.state() is ConnState.STREAMING)
    await wait(lambda: run.stats.dropped["unchanged"] == unchanged + 2)
    assert run.quotes[seen:] == []
    assert {q.pair: q.venue_ts for q in run.quotes} == stamps
    sim.reset()  # the books move while the source is away (no tick runs before the freeze)
    for symbol, price in (("BTC-USD", 68_000.0), ("ETH-USD", 3_600.0)):
        sim.set_price(symbol, price)
    sim.freeze(None)
    sim.rest_enabled = False
    sim.disconnect()
    await wait(lambda: sim.stats.connections == 3 and len(run.quotes) == seen + 2)
    moved = run.quotes[seen:]  # the snapshots, quoted at the time they were sent
    assert sorted(round((q.bid or 0.0) + (q.ask or 0.0)) // 2 for q in moved) == [3_600, 68_000]
    assert all((q.venue_ts or 0) > max(s or 0 for s in stamps.values()) for q in moved)


USDC_PAIRS: list[tuple[str, Kind]] = [("BTC/USDC", "spot"), ("ETH/USD", "spot")]


async def _listed_over(run: Running, seconds: float) -> set[str]:
    """Every symbol listed silent at some moment over the next `seconds`."""
    listed: set[str] = set()
    for _ in range(round(seconds / 0.01)):
        listed.update(run.stats.silent_instruments)
        await asyncio.sleep(0.01)
    return listed


@pytest.mark.parametrize("usdc_as_usd", [False, True], ids=["named_usdc", "named_usd"])
async def test_a_usdc_pair_is_silent_only_when_it_gets_nothing_under_either_name(
    start: Start, wait: Wait, usdc_as_usd: bool
) -> None:
    """A BTC/USDC pair is subscribed as BTC-USDC and also takes frames of its -USD twin, whose
    data the venue serves for it. Quoted under one of the two names (its own, or the twin's),
    it is not silent however long the other name stays quiet, on the stream or on REST polls;
    muted, it is listed once, under BTC-USDC (the symbol the API's `instrument` names), and
    said silent and quoting again under that name. Before, the name it did not quote under was
    listed silent for ever while the pair quoted fine, and OracledSourceInstrumentsSilent fired
    for nothing."""
    prices = {"BTC-USD": 67_000.0, "BTC-USDC": 67_000.0, "ETH-USD": 3_500.0}
    keys = {(p, k) for p, k in USDC_PAIRS}
    with capture_logs() as logs:
        async with CoinbaseSim(
            prices, seed=5, rate_hz=40.0, heartbeat_s=0.1, usdc_as_usd=usdc_as_usd
        ) as venue:
            run = await start(venue=venue, pairs=USDC_PAIRS)
            run.source.silent_after_ms = lambda: dict.fromkeys(keys, 200)
            await wait(lambda: run.keys() == keys)
            seen = len(run.quotes)
            assert await _listed_over(run, 0.8) == set()  # four limits, the scan every 0.1 s
            assert run.keys(seen) == keys and run.state() is ConnState.STREAMING
            named = venue.served("BTC-USDC")
            assert named == ("BTC-USD" if usdc_as_usd else "BTC-USDC")

            venue.mute(named)  # the pair gets nothing under either name: silent
            await wait(lambda: bool(run.stats.silent_instruments))
            assert run.stats.silent_instruments.keys() == {"BTC-USDC"}
            venue.unmute(named)
            await wait(lambda: quoting_again(logs) and run.stats.silent_instruments == {})

            venue.ws_enabled = False  # polls ask for BTC-USDC by name; the stream is away
            venue.disconnect()
            await wait(lambda: run.state() is ConnState.POLLING)
            polls, seen = venue.stats.rest_requests, len(run.quotes)
            assert await _listed_over(run, 0.8) == set()
            assert venue.stats.rest_requests >= polls + 4 and run.keys(seen) == keys
            assert run.state() is ConnState.POLLING and run.stats.failed_instruments == {}
    said = [(e["event"], e["symbols"]) for e in logs if e["event"].startswith("instruments ")]
    assert said == [
        ("instruments silent", ["BTC-USDC"]),
        ("instruments quoting again", ["BTC-USDC"]),
    ]


@pytest.mark.parametrize("status", [400, 404])
async def test_an_unknown_product_on_rest_fails_alone_and_the_source_keeps_polling(
    start: Start, wait: Wait, status: int
) -> None:
    """With the stream refused, a product the venue does not list, answered 400
    INVALID_ARGUMENT or 404 NOT_FOUND (the docs name neither), is marked failed with the
    venue's answer and left out of later polls, while the other products price on and the
    source stays polling. A 404 without the venue's envelope (a wrong path, a proxy's page)
    still puts the source down and blames no product. Before, the 404 put the source down at
    every poll and back to polling at the next priced answer, and the product never failed."""
    prices = {"BTC-USD": 67_000.0, "ETH-USD": 3_500.0}
    async with CoinbaseSim(prices, seed=5, rate_hz=40.0, unknown_status=status) as venue:
        venue.ws_enabled = False
        run = await start(venue=venue, pairs=[*VENUE.pairs, VENUE.unknown_pair])
        await wait(lambda: "FOO-USD" in run.stats.failed_instruments)
        assert run.stats.failed_instruments["FOO-USD"].startswith(f"HTTP {status}: ")
        await wait(lambda: run.state() is ConnState.POLLING)
        states: list[ConnState] = []
        polls, seen = venue.stats.rest_requests, len(run.quotes)
        while venue.stats.rest_requests < polls + 6:  # three rounds of the two listed products
            states.append(run.state())
            await asyncio.sleep(0.005)
        assert set(states) == {ConnState.POLLING}
        assert run.keys(seen) == VENUE.keys
        assert run.stats.failed_instruments.keys() == {"FOO-USD"}

        venue.rest_status = 404  # every answer a bare 404: the request failed, not a product
        await wait(lambda: run.state() is ConnState.DOWN)
        assert run.stats.failed_instruments.keys() == {"FOO-USD"}
