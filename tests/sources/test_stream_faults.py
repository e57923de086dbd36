"""Every venue adapter against its loopback simulator: what all venues share, written once (the
first connection, a quiet market, the REST fallback, and the faults).

Each test runs for every case of `venue_cases.CASES` (a real simulator, a real aiohttp client, the
real adapter); what differs between venues is a fact in the case, not a second copy of the test.
Behaviours only one venue has stay in `test_<venue>_stream.py`.
"""

from __future__ import annotations

import asyncio
import math

import pytest
from structlog.testing import capture_logs
from venue_cases import CASES, Case, Running, Start, Wait, control_requests, quoting_again

from oracled.clock import SystemClock
from oracled.sim._base import VenueSim
from oracled.sources import ConnState


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    """Each test runs once per venue (Bybit once per category); `sim` and `start` follow it."""
    return request.param  # type: ignore[no-any-return]


async def settled(case: Case, run: Running, sim: VenueSim, wait: Wait) -> None:
    """Wait for the case's own sign of a full recovery (a rebuilt book, a second feed)."""
    if case.settled is not None:
        done = case.settled(run, sim)
        await wait(done)


async def no_socket_leaked(case: Case, sim: VenueSim, wait: Wait) -> None:
    """The venue holds exactly the sockets the source keeps: a cut one was closed, not leaked."""
    if case.active_lags:  # this venue may count a dropped socket until its handler sees it close
        await wait(lambda: sim.stats.active == case.sockets)
    else:
        assert sim.stats.active == case.sockets


async def test_first_connection_streams_every_instrument(
    case: Case, sim: VenueSim, start: Start, wait: Wait
) -> None:
    """The first connection subscribes everything in the venue's few control messages, every
    one acknowledged; quotes for every instrument follow (the snapshot, then updates), sound,
    near the venue's prices and stamped (or not) with the venue's time; nothing failed, dropped
    or polled."""
    run = await start()
    await wait(lambda: run.keys() == case.keys and len(run.quotes) > 10)
    assert run.state() is ConnState.STREAMING
    await wait(lambda: run.source._pending == {})  # every subscribe was acknowledged
    await settled(case, run, sim, wait)
    assert sim.stats.connections == case.sockets
    assert control_requests(sim) == case.sockets * case.subscribes
    assert sim.stats.rest_requests == 0
    assert run.stats.failed_instruments == {}
    assert run.stats.malformed == 0 and not any(run.stats.dropped.values())
    assert run.stats.quotes == len(run.quotes)
    assert run.stats.last_quote_ms == run.quotes[-1].recv_ts
    for q in run.quotes:
        assert q.source == case.id and (q.pair, q.kind) in case.keys
        assert q.bid is not None and q.ask is not None and 0 < q.bid <= q.ask
        reference = case.reference[q.pair, q.kind]
        assert abs(q.bid / reference - 1) < 0.05 and abs(q.ask / reference - 1) < 0.05
        if case.venue_lag_ms is None:
            assert q.venue_ts is None
        else:
            assert q.venue_ts is not None and abs(q.recv_ts - q.venue_ts) < case.venue_lag_ms
    if case.on_streaming is not None:
        case.on_streaming(run, sim)


async def test_reconnects_and_resubscribes_after_disconnect(
    case: Case, sim: VenueSim, start: Start, wait: Wait
) -> None:
    """Dropped TCP connections are replaced, everything resubscribed, and quotes resume."""
    run = await start()
    await wait(lambda: run.state() is ConnState.STREAMING)
    await wait(lambda: control_requests(sim) == case.sockets * case.subscribes)  # all sent
    assert sim.disconnect() == case.sockets
    await wait(lambda: run.stats.reconnects >= 1 and sim.stats.connections >= 2 * case.sockets)
    done = case.settled(run, sim) if case.settled is not None else None
    seen = len(run.quotes)
    await wait(lambda: run.keys(seen) == case.keys)
    await wait(lambda: run.state() is ConnState.STREAMING)
    if done is not None:
        await wait(done)
    # Subscribed again on each new connection, once: the same requests as on the first. A
    # loaded machine may cut a new connection as silent and open one more, which subscribes
    # once too: the requests are counted per connection the venue accepted.
    assert sim.stats.connections >= 2 * case.sockets
    await wait(lambda: control_requests(sim) == sim.stats.connections * case.subscribes)
    if case.after_reconnect is not None:
        case.after_reconnect(run, sim)
    await no_socket_leaked(case, sim, wait)


async def test_silent_open_socket_is_replaced(
    case: Case, sim: VenueSim, start: Start, wait: Wait
) -> None:
    """A socket that stays open but carries nothing (no data, pings, heartbeats or pongs) is cut
    by the watchdog and replaced; once the venue talks again the source streams, nothing failed."""
    run = await start()
    await wait(lambda: run.state() is ConnState.STREAMING)
    sim.silence(None)
    feeds = case.feeds(run) if case.feeds is not None else [run.stats]
    await wait(lambda: all(f.reconnects >= 1 for f in feeds))
    await wait(lambda: sim.stats.connections >= 2 * case.sockets)
    assert run.state() in (ConnState.DOWN, ConnState.POLLING)
    sim.reset()  # a request sent while silent was swallowed: it is retried once overdue
    await wait(lambda: run.state() is ConnState.STREAMING)
    await settled(case, run, sim, wait)
    await no_socket_leaked(case, sim, wait)
    assert run.stats.failed_instruments == {}


async def test_garbage_is_counted_and_no_bad_price_escapes(
    case: Case, sim: VenueSim, start: Start, wait: Wait
) -> None:
    """Every malformed frame counts once, by reason; no NaN, infinite, zero, negative or crossed
    price leaves; the connection survives (or resyncs once for a crossed book) and streams on."""
    run = await start()
    await wait(lambda: run.state() is ConnState.STREAMING)
    malformed, garbage_sent = run.stats.malformed, sim.stats.garbage_sent
    n = case.garbage_rounds * len(sim.GARBAGE)
    sent = case.send_garbage(sim, n) if case.send_garbage is not None else sim.garbage(n)
    assert sent == n
    await wait(lambda: sim.stats.garbage_sent - garbage_sent == sent)
    await wait(lambda: run.stats.malformed - malformed == sent)
    dropped = run.stats.dropped
    assert sum(case.garbage_reasons.values()) == sent  # the table names every frame's reason
    for reason, count in case.garbage_reasons.items():
        assert dropped[reason] == count, reason
    if case.garbage_resyncs:
        await wait(lambda: sim.stats.connections == case.sockets + case.garbage_resyncs)
    else:
        assert sim.stats.connections == case.sockets
    seen = len(run.quotes)  # the kept state (sequence, book, last stamp) was not poisoned
    await wait(lambda: run.keys(seen) == case.keys)
    await settled(case, run, sim, wait)
    for q in run.quotes:
        assert q.bid is not None and q.ask is not None
        assert math.isfinite(q.bid) and math.isfinite(q.ask) and 0 < q.bid <= q.ask
        assert abs(q.bid / case.reference[q.pair, q.kind] - 1) < 0.05


async def test_burst_is_processed_in_full(
    case: Case, sim: VenueSim, start: Start, wait: Wait
) -> None:
    """A burst of fresh frames is decoded frame by frame: every one becomes a quote, none is
    dropped for any reason."""
    run = await start()
    await wait(lambda: run.state() is ConnState.STREAMING and run.keys() == case.keys)
    frames, quotes = run.stats.frames, run.stats.quotes
    queued = sim.burst(case.burst)
    assert queued == case.burst * len(case.keys)
    await wait(lambda: run.stats.quotes - quotes >= queued)
    assert run.stats.frames - frames >= queued
    assert run.stats.malformed == 0 and not any(run.stats.dropped.values())
    await settled(case, run, sim, wait)


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c.replay_dropped is not None],
    ids=[c.id for c in CASES if c.replay_dropped is not None],
    indirect=True,
)
async def test_replayed_frames_never_override_newer_prices(
    case: Case, sim: VenueSim, start: Start, wait: Wait
) -> None:
    """Duplicated and older frames sent again are dropped (by sequence, update id or venue
    time); the venue times of emitted quotes never go back."""
    assert case.replay_dropped is not None
    replay_dropped = case.replay_dropped
    run = await start()
    await wait(lambda: run.state() is ConnState.STREAMING and len(run.quotes) >= 30)
    queued = sim.replay_stale(case.replay)
    if case.replay_exact:
        assert queued == case.replay
    else:
        assert queued > 0
    await wait(lambda: replay_dropped(run.stats.dropped, queued))
    await asyncio.sleep(0.1)  # any replayed frame still in flight lands
    last: dict[tuple[str, str], int] = {}
    for q in run.quotes:
        assert q.venue_ts is not None and q.venue_ts >= last.get((q.pair, q.kind), 0)
        last[q.pair, q.kind] = q.venue_ts
    assert run.stats.malformed == 0


async def test_absurd_price_is_passed_on_for_the_core_to_judge(
    case: Case, sim: VenueSim, start: Start, wait: Wait
) -> None:
    """A finite, positive but wrong price (1000x, or a plausible 1.5x) is not the source's call:
    the quote carries it and nothing counts as malformed; the core decides."""
    run = await start()
    await wait(lambda: run.state() is ConnState.STREAMING)
    symbol, key, factor, floor = case.spike
    sim.spike(symbol, factor, None)
    await wait(lambda: any((q.pair, q.kind) == key and (q.bid or 0) > floor for q in run.quotes))
    assert run.stats.malformed == 0


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c.unknown is not None],
    ids=[c.id for c in CASES if c.unknown is not None],
    indirect=True,
)
async def test_unknown_symbol_fails_alone_without_reconnecting(
    case: Case, sim: VenueSim, start: Start, wait: Wait
) -> None:
    """A symbol the venue does not list is refused: it alone fails, with the venue's words, on
    every connection that asked for it; the rest stream on the same sockets, with no reconnect,
    no retry storm, nothing left pending and nothing dropped."""
    unknown = case.unknown
    assert unknown is not None
    run = await start(pairs=[*case.pairs, case.unknown_pair])
    feeds = case.feeds(run) if case.feeds is not None else [run.stats]
    await wait(lambda: all(unknown.symbol in f.failed_instruments for f in feeds))
    for feed in feeds:
        assert feed.failed_instruments == {unknown.symbol: unknown.says}
    seen = len(run.quotes)
    await wait(lambda: run.keys(seen) == case.keys)
    await asyncio.sleep(0.5)  # long enough for a late retry or reconnect to show
    assert sim.stats.connections == case.sockets and run.stats.reconnects == 0
    assert control_requests(sim) == unknown.requests
    assert sim.stats.errors_sent == unknown.errors and sim.stats.rate_limited == 0
    assert run.source._pending == {}
    assert run.stats.malformed == 0 and not any(run.stats.dropped.values())


async def test_refused_stream_falls_back_to_rest_through_failures_then_streams_again(
    case: Case, sim: VenueSim, start: Start, wait: Wait
) -> None:
    """While handshakes are refused: failing REST answers (rate limits, server errors) are
    counted one a request, keep the source down, blame no instrument and do not speed polling
    up; answers (slow ones too, inside the request timeout) bring quotes for every instrument
    (polling); one past the timeout is an error that brings none and puts the source down again;
    once the stream is back the source streams and polling stops."""
    sim.ws_enabled = False
    run = await start()
    dropped = run.stats.dropped
    for failing in case.rest_failures:
        sim.rest_status = failing.status
        errors, polls = dropped["rest_error"], sim.stats.rest_requests
        if failing.window is not None:
            # Polling goes on at its interval, no faster: at least `fewest` requests, and at most
            # `most` per `window_s` seconds. A loaded machine stretches the sleep and the
            # polls (the first window also holds the start and the first refused handshake), so
            # the fewest are waited for and the most counted per window the time truly spanned
            # (on the loop's clock); a poller that sped up still sends far more.
            window_s, fewest, most = failing.window
            began = asyncio.get_running_loop().time()
            await asyncio.sleep(window_s)
            await wait(lambda floor=polls + fewest: sim.stats.rest_requests >= floor)
            windows = (asyncio.get_running_loop().time() - began) / window_s  # 1 when unloaded
            assert sim.stats.rest_requests - polls <= most * windows, (failing, windows)
        await wait(lambda floor=errors + failing.errors: dropped["rest_error"] >= floor)
        assert run.state() is ConnState.DOWN and run.quotes == []
        # Every request was answered (with an error) before the next one went out.
        assert sim.stats.rest_requests - polls <= dropped["rest_error"] - errors + 1
        assert run.state() is ConnState.DOWN and run.quotes == []
        assert run.stats.failed_instruments == {}
    sim.rest_status, sim.rest_delay_s = None, case.rest_slow_s  # inside the request timeout
    await wait(lambda: run.state() is ConnState.POLLING and run.keys() == case.keys)
    assert sim.stats.connections == 0 and sim.stats.refused >= 1
    # Every request was answered, with quotes or an error, before the next one went out.
    assert sim.stats.rest_requests <= run.stats.frames + dropped["rest_error"]
    sim.rest_delay_s = 1.2  # past the request timeout
    polls = sim.stats.rest_requests
    await wait(lambda: sim.stats.rest_requests > polls)  # earlier answers are all in
    errors, seen = dropped["rest_error"], len(run.quotes)
    await wait(lambda: dropped["rest_error"] > errors)
    assert run.state() is ConnState.DOWN and len(run.quotes) == seen
    sim.rest_delay_s = 0.0
    await wait(lambda: run.state() is ConnState.POLLING and run.keys(seen) == case.keys)
    assert all((q.venue_ts is not None) is case.rest_venue_time for q in run.quotes)
    assert run.stats.failed_instruments == {}
    sim.ws_enabled = True
    await wait(lambda: run.state() is ConnState.STREAMING)
    await asyncio.sleep(0.2)  # a poll already in flight may still land
    polls = sim.stats.rest_requests
    await asyncio.sleep(0.5)  # five poll intervals
    assert sim.stats.rest_requests == polls


def newest_stamps(run: Running) -> dict[tuple[str, str], int]:
    """Each instrument's newest quote time as the core ages it: venue time, else receipt."""
    newest: dict[tuple[str, str], int] = {}
    for q in run.quotes:
        stamp = q.recv_ts if q.venue_ts is None else q.venue_ts
        key = (q.pair, q.kind)
        newest[key] = max(stamp, newest.get(key, stamp))
    return newest


async def test_a_frozen_book_polled_over_rest_grows_no_younger(
    case: Case, sim: VenueSim, start: Start, wait: Wait
) -> None:
    """While the stream is refused and the venue's books stop changing (its servers still
    answer), polls bring nothing newer: each instrument's newest quote time (the venue's where a
    REST answer carries a time of its book, else the receipt) stays where the first answer of
    the frozen book put it, and the source goes on polling. Before, a REST quote without a time
    of its book was stamped at every poll with its receipt, or with the server's clock (Bybit's
    `time`, Bitstamp's `timestamp`, KuCoin's allTickers `time`), so a book that no longer
    changed looked fresh for ever."""
    sim.ws_enabled = False
    run = await start()
    await wait(lambda: run.state() is ConnState.POLLING and run.keys() == case.keys)
    sim.freeze(None)
    polls = sim.stats.rest_requests
    # Polls go one at a time: once a request is counted, the one before it was read, and the
    # first request counted after the freeze was answered with the frozen books.
    await wait(lambda: sim.stats.rest_requests >= polls + 2 * len(case.keys), within_s=10.0)
    stamps = newest_stamps(run)
    assert stamps.keys() == case.keys
    await wait(lambda: sim.stats.rest_requests >= polls + 6 * len(case.keys), within_s=15.0)
    assert newest_stamps(run) == stamps
    assert run.state() is ConnState.POLLING


def hold_still(sim: VenueSim) -> None:
    """Stop the books moving: every later frame and answer shows the books as they are now."""
    for path in sim.paths.values():
        path.volatility = 0.0  # the test venues have no basis: the mid no longer changes


UNTIMED_REST = [c for c in CASES if not c.rest_venue_time]


@pytest.mark.parametrize("case", UNTIMED_REST, ids=[c.id for c in UNTIMED_REST], indirect=True)
async def test_the_first_poll_after_the_stream_drops_keeps_an_unchanged_books_age(
    case: Case, sim: VenueSim, start: Start, wait: Wait
) -> None:
    """A venue whose REST answers carry no time of their book, its books still: the stream
    drops and the polls that follow show the books the stream last quoted. None of them is
    quoted (each is dropped as `unchanged`), so each instrument's newest quote time stays the
    stream's last, and the source polls. Before, the first poll of the outage was quoted with
    its receipt: a book frozen just as the stream dropped looked fresh for one more age limit."""
    hold_still(sim)
    run = await start()
    await wait(lambda: run.state() is ConnState.STREAMING and run.keys() == case.keys)
    await settled(case, run, sim, wait)
    sim.rest_delay_s = 0.2  # the first answer lands after the stream's last frame was read
    sim.ws_enabled = False
    sim.disconnect()
    await wait(lambda: run.state() is not ConnState.STREAMING)
    stamps, seen, polls = newest_stamps(run), len(run.quotes), sim.stats.rest_requests
    await wait(lambda: sim.stats.rest_requests >= polls + 3 * len(case.keys), within_s=10.0)
    assert run.quotes[seen:] == []
    assert newest_stamps(run) == stamps
    assert run.stats.dropped["unchanged"] >= 2 * len(case.keys)
    assert run.state() is ConnState.POLLING


SNAPSHOTS = [c for c in CASES if c.snapshots]


def latency_counted(run: Running) -> int:
    """Quotes counted in the latency histogram (those with a venue time, when none was lost)."""
    return sum(run.stats.latency_buckets)


@pytest.mark.parametrize("case", SNAPSHOTS, ids=[c.id for c in SNAPSHOTS], indirect=True)
async def test_a_new_connections_snapshot_of_a_still_book_is_not_a_new_quote(
    case: Case, sim: VenueSim, start: Start, wait: Wait
) -> None:
    """A venue that answers each subscription with the symbol's state, its books held still and
    frozen, REST off: the connection drops, and its successor's snapshots, repeating the books
    last quoted, are each dropped as `unchanged`. No quote is emitted, each instrument's newest
    quote time stays where it was (a snapshot is stamped when sent, or not at all), the dropped
    quotes are not counted (quotes, latency), the source streams again, and once every
    instrument has had its first quote the filter is off (quotes go straight to the emitter).
    Then the books move while the source is away: the next connection's snapshots are quoted at
    once. Before, every reconnect re-quoted a frozen book with a fresh time (Gemini +473 ms,
    Bybit linear +956 ms, Kraken +336 ms in the probe; Coinbase had a fix of its own)."""
    hold_still(sim)
    run = await start()
    await wait(lambda: run.state() is ConnState.STREAMING and run.keys() == case.keys)
    await settled(case, run, sim, wait)
    sim.freeze(None)  # no more updates: a snapshot is all a connection will get
    await asyncio.sleep(0.1)  # updates sent before the freeze are read
    stamps, seen = newest_stamps(run), len(run.quotes)
    unchanged, opened = run.stats.dropped["unchanged"], sim.stats.connections
    timed = latency_counted(run)
    sim.rest_enabled = False  # only the stream can quote
    sim.disconnect()
    await wait(lambda: sim.stats.connections >= opened + case.sockets)
    await wait(lambda: run.state() is ConnState.STREAMING)
    heard = lambda: len(run.quotes) - seen + run.stats.dropped["unchanged"] - unchanged  # noqa: E731
    await wait(lambda: heard() >= len(case.keys))  # each instrument, quoted or dropped
    await asyncio.sleep(0.1)  # anything else the new connection sends is read
    assert newest_stamps(run) == stamps
    assert run.quotes[seen:] == []
    assert run.stats.dropped["unchanged"] == unchanged + len(case.keys)
    assert run.stats.quotes == len(run.quotes) and latency_counted(run) == timed
    assert run.source._emit is run.source._sink and run.source._direct
    # The books move while the source is away: the venue's ticks carry them to its own state.
    sim.reset()
    sim.ws_enabled = sim.rest_enabled = False
    sim.disconnect()
    for symbol, path in sim.paths.items():
        sim.set_price(symbol, path.mid * 1.01)
    await asyncio.sleep(0.2)
    sim.freeze(None)
    sim.ws_enabled = True
    await wait(lambda: run.keys(seen) == case.keys)
    moved = newest_stamps(run)
    assert all(moved[key] > stamps[key] for key in case.keys)
    await wait(lambda: run.source._emit is run.source._sink)
    assert run.state() is ConnState.STREAMING


# Venues that push changes only, with no snapshot on subscribing (Pyth Hermes aside: its SSE
# session is its own and never ran the first-quote filter).
CHANGES_ONLY = [c for c in CASES if not c.adapter.snapshot_on_subscribe and c.id != "pyth_hermes"]


@pytest.mark.parametrize("case", CHANGES_ONLY, ids=[c.id for c in CHANGES_ONLY], indirect=True)
async def test_a_changes_only_venues_first_push_on_a_new_connection_is_quoted_at_the_same_prices(
    case: Case, sim: VenueSim, start: Start, wait: Wait
) -> None:
    """A venue that sends no snapshot on subscribing, only changes, its books held still (each
    push changes the sizes alone): the connection is replaced (a shutdown notice, as planned, so
    that no REST poll runs), and the new connection's first push of each instrument, at the bid
    and ask last quoted, is a new event and is quoted. None is dropped as `unchanged`, each
    instrument's newest quote time moves on, and no first-quote filter stands in front of the
    emitter. Before, the filter ran on every venue and dropped each of them (Binance, Binance
    USD-M, Bitstamp and KuCoin alike), holding the instrument's freshness back until its next
    push."""
    hold_still(sim)
    run = await start()
    await wait(lambda: run.state() is ConnState.STREAMING and run.keys() == case.keys)
    await settled(case, run, sim, wait)
    books = {(q.pair, q.kind): (q.bid, q.ask) for q in run.quotes}
    unchanged, opened = run.stats.dropped["unchanged"], sim.stats.connections
    run.source._rotate("server_shutdown")
    await wait(lambda: sim.stats.connections >= opened + case.sockets)
    stamps, seen = newest_stamps(run), len(run.quotes)
    await wait(lambda: run.keys(seen) == case.keys)  # pushed on the new connection
    assert run.stats.dropped["unchanged"] == unchanged
    assert all((q.bid, q.ask) == books[q.pair, q.kind] for q in run.quotes[seen:])
    moved = newest_stamps(run)
    assert all(moved[key] > stamps[key] for key in case.keys)
    assert run.source._emit is run.source._sink and run.source._direct
    assert run.stats.reconnects == 1 and run.state() is ConnState.STREAMING
    assert run.stats.quotes == len(run.quotes) and sim.stats.rest_requests == 0


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c.rotation],
    ids=[c.id for c in CASES if c.rotation],
    indirect=True,
)
async def test_connection_is_rotated_before_its_maximum_age(
    case: Case, sim: VenueSim, start: Start, wait: Wait
) -> None:
    """Past max_connection_age_s the sockets are replaced at once, without going down or polling."""
    run = await start(max_connection_age_s=0.3)
    await wait(lambda: sim.stats.connections >= 3 * case.sockets)
    assert run.stats.reconnects >= 2
    assert sim.stats.rest_requests == 0 and "rest_error" not in run.stats.dropped
    await wait(lambda: run.state() is ConnState.STREAMING)


async def test_an_instrument_the_venue_stops_sending_is_listed_silent_until_it_quotes_again(
    case: Case, sim: VenueSim, start: Start, wait: Wait
) -> None:
    """A venue that keeps the subscription but sends nothing for one symbol (as Binance does for
    a symbol it does not list) on a connection that stays healthy: past the symbol's limit it is
    listed in silent_instruments and a warning names it, while the other instruments quote on
    and the connection is neither cut nor down; once the venue sends it again it leaves the list
    with an info line. Nothing else is ever listed."""
    symbol, key = case.spike[0], case.spike[1]
    listed: set[str] = set()
    with capture_logs() as logs:
        run = await start()
        run.source.silent_after_ms = lambda: dict.fromkeys(case.keys, 400)
        await wait(lambda: run.keys() == case.keys)
        await settled(case, run, sim, wait)
        sim.mute(symbol)
        await wait(lambda: listed.update(run.stats.silent_instruments) or bool(listed))
        (silent,) = run.stats.silent_instruments
        assert run.source.instruments[silent] == key
        seen = len(run.quotes)
        await asyncio.sleep(0.6)  # past the limit again: still silent, the others still quote
        assert run.keys(seen) == case.keys - {key}
        assert run.stats.silent_instruments.keys() == {silent}
        assert run.state() is ConnState.STREAMING and run.stats.reconnects == 0
        sim.unmute(symbol)
        # (Gemini's book of the symbol is out of date by then: it reconnects for a fresh one.)
        await wait(lambda: listed.update(run.stats.silent_instruments) or quoting_again(logs))
        assert run.stats.silent_instruments == {} and key in run.keys(seen)
    assert listed == {silent}
    said = [(e["event"], e["symbols"]) for e in logs if e["event"].startswith("instruments ")]
    assert said == [("instruments silent", [silent]), ("instruments quoting again", [silent])]


LEAVING_OUT = [c for c in CASES if c.rest_leaves_out]


@pytest.mark.parametrize("case", LEAVING_OUT, ids=[c.id for c in LEAVING_OUT], indirect=True)
async def test_a_symbol_the_rest_answers_leave_out_is_listed_silent_until_listed_again(
    case: Case, sim: VenueSim, start: Start, wait: Wait
) -> None:
    """With the stream refused, the venue stops listing one symbol, and its REST answer of
    every symbol (of a type, of a category) just leaves it out: past the symbol's limit it is
    listed in silent_instruments and a warning names it, once however many polls leave it out,
    while the others price on, the source polls and nothing fails; once the venue lists it again
    it leaves the list with an info line. Before, the silent scan ran only while streaming: the
    symbol showed nowhere, and its slot went stale in the core without a word."""
    symbol, key = case.spike[0], case.spike[1]
    sim.ws_enabled = False
    listed: set[str] = set()

    def noting(done: bool) -> bool:
        """`done`, with every symbol listed silent on the way kept in `listed`."""
        listed.update(run.stats.silent_instruments)
        return done

    with capture_logs() as logs:
        run = await start()
        run.source.silent_after_ms = lambda: dict.fromkeys(case.keys, 400)
        await wait(lambda: run.state() is ConnState.POLLING and run.keys() == case.keys)
        sim.delist(symbol)
        await wait(lambda: noting(bool(run.stats.silent_instruments)))
        (silent,) = run.stats.silent_instruments
        assert run.source.instruments[silent] == key
        seen, floor = len(run.quotes), sim.stats.rest_requests + 6  # three of each type on OKX
        await wait(lambda: noting(sim.stats.rest_requests >= floor))
        assert run.keys(seen) == case.keys - {key}
        assert run.stats.silent_instruments.keys() == {silent}
        assert run.state() is ConnState.POLLING and run.stats.failed_instruments == {}
        sim.relist(symbol)
        await wait(lambda: noting(quoting_again(logs)))
        assert run.stats.silent_instruments == {} and key in run.keys(seen)
    assert listed == {silent}
    said = [(e["event"], e["symbols"]) for e in logs if e["event"].startswith("instruments ")]
    assert said == [("instruments silent", [silent]), ("instruments quoting again", [silent])]


# Venues that do not quote every symbol at each subscription; a symbol never sent needs the
# REST fallback off, which KuCoin cannot connect without.
SILENCES = [(c, True) for c in CASES if not c.snapshots] + [
    (c, False) for c in CASES if not c.snapshots and not c.rest_connects
]


@pytest.mark.parametrize(
    ("case", "quoted"),
    SILENCES,
    ids=[f"{c.id}-{'muted' if quoted else 'never_sent'}" for c, quoted in SILENCES],
    indirect=["case"],
)
async def test_an_instrument_silent_across_frequent_reconnects_keeps_counting(
    case: Case, sim: VenueSim, start: Start, wait: Wait, quoted: bool
) -> None:
    """A symbol the venue stops sending (or never sends), on a source whose connection drops
    every 250 ms, more often than the symbol's 500 ms limit: its silence counts across the
    reconnects from its last quote (or, never quoted, from the first connection's opening, before
    any quote of the others), so it is listed on connection after connection, always with that
    same time, and never while the stream is down; it leaves the list once it quotes. (Counted
    from each connection's opening it was never listed: a delisted symbol hidden for as long as
    the source kept reconnecting.) Venues that answer each subscription with a snapshot quote
    every symbol at every reconnect: not here."""
    symbol, key = case.spike[0], case.spike[1]
    if not quoted:
        sim.mute(symbol)
        sim.rest_enabled = False  # nor answered by the REST fallback while the stream is down
    before_ms = SystemClock().now_ms()
    # Muted: REST polls once, in the first outage (KuCoin's socket address is a REST answer).
    run = await start(rest_poll_interval_s=60.0)
    run.source.silent_after_ms = lambda: dict.fromkeys(case.keys, 500)
    await wait(lambda: run.keys() | {key} == case.keys)
    if quoted:
        await wait(lambda: key in run.keys(0))
        await settled(case, run, sim, wait)
        sim.mute(symbol)
    listed: dict[int, dict[str, int]] = {}  # reconnects so far -> the list seen on that connection
    listed_down: list[dict[str, int]] = []

    def listed_on_three_connections() -> bool:
        silent = run.stats.silent_instruments
        if silent and run.state() is not ConnState.STREAMING:
            listed_down.append(dict(silent))
        if silent:
            listed.setdefault(run.stats.reconnects, {}).update(silent)
        return len(listed) >= 3

    async def drop_every_250_ms() -> None:
        while True:
            await asyncio.sleep(0.25)
            sim.disconnect()

    churn = asyncio.create_task(drop_every_250_ms(), name="test:churn")
    try:
        # A bound on waiting, not on speed: under load a connection can take seconds to come.
        await wait(listed_on_three_connections, within_s=20.0)
    finally:
        churn.cancel()
        await asyncio.wait((churn,))
    (silent,) = {s for seen in listed.values() for s in seen}
    (since,) = {seen[silent] for seen in listed.values()}
    assert run.source.instruments[silent] == key
    if quoted:
        assert since == max(q.recv_ts for q in run.quotes if (q.pair, q.kind) == key)
    else:
        assert key not in run.keys(0)
        assert before_ms <= since <= run.quotes[0].recv_ts
    assert listed_down == []
    sim.unmute(symbol)
    sim.rest_enabled = True
    seen = len(run.quotes)
    await wait(lambda: key in run.keys(seen) and run.state() is ConnState.STREAMING)
    await wait(lambda: run.stats.silent_instruments == {})


RESTLESS = [c for c in CASES if not c.snapshots and not c.rest_connects]


@pytest.mark.parametrize("case", RESTLESS, ids=[c.id for c in RESTLESS], indirect=True)
async def test_an_outage_longer_than_the_limit_is_not_counted_as_silence(
    case: Case, sim: VenueSim, start: Start, wait: Wait
) -> None:
    """The stream down for 1.5 s, longer than a symbol's 1 s limit, and REST answering nothing:
    once the stream is back, a symbol that quoted just before the outage is not listed silent at
    the next scans although its last quote is older than its limit, for it has had no time to
    quote on the new connection (a venue subscribing many symbols in paced batches takes
    seconds); if it still sends nothing, it is listed once silent for its limit while streaming,
    with its last quote's time. (Counting the outage, every symbol not yet quoted again would be
    listed at the first scan, half a limit after the stream came back.) The listing is seen
    after it happened, so it is seen a whole limit or more after the source saw the stream back,
    on the source's clock, however late the test looks."""
    symbol, key = case.spike[0], case.spike[1]
    run = await start()
    run.source.silent_after_ms = lambda: dict.fromkeys(case.keys, 1000)
    await wait(lambda: run.keys() == case.keys)
    await settled(case, run, sim, wait)
    sim.rest_enabled = sim.ws_enabled = False
    sim.mute(symbol)  # a symbol whose first quote on the next connection is late
    sim.disconnect()
    await wait(lambda: run.state() is not ConnState.STREAMING)
    await asyncio.sleep(1.5)
    sim.ws_enabled = True
    await wait(lambda: run.state() is ConnState.STREAMING)
    clock, back = run.source._clock, run.source._outage[1]  # the stream back, on the source's clock
    seen_after: list[float] = []

    def listed() -> bool:
        if run.stats.silent_instruments and not seen_after:
            seen_after.append(clock.monotonic() - back)
        return bool(run.stats.silent_instruments)

    await wait(listed)
    assert seen_after[0] > 1.0, seen_after  # the symbol's limit, streaming
    last_quote = max(q.recv_ts for q in run.quotes if (q.pair, q.kind) == key)
    assert {run.source.instruments[s]: t for s, t in run.stats.silent_instruments.items()} == {
        key: last_quote
    }


QUIET = [c for c in CASES if c.quiet is not None]


@pytest.mark.parametrize("case", QUIET, ids=[c.id for c in QUIET], indirect=True)
async def test_quiet_market_is_kept_alive_by_keepalives(
    case: Case, start: Start, wait: Wait
) -> None:
    """With no market data for more than twice the liveness timeout, the venue's heartbeats (or
    its answers to the client's pings) alone keep the one connection streaming: every one is
    read, nothing is cut, dropped or polled."""
    quiet = case.quiet
    assert quiet is not None
    async with quiet.sim() as venue:
        run = await start(venue, cls=quiet.cls, **quiet.config)
        await wait(lambda: venue.stats.connections == 1)
        if quiet.data_frames:  # the snapshots, each quoted: streaming, then nothing more
            snapshots = quiet.data_frames
            await wait(lambda: run.state() is ConnState.STREAMING and run.stats.quotes == snapshots)
        state, quotes = run.state(), run.stats.quotes  # no data at all: still connecting
        await asyncio.sleep(1.2)  # more than twice the 0.5 s liveness timeout
        await wait(lambda: quiet.keepalives(venue) >= quiet.at_least)
        assert venue.stats.frames_sent == quiet.data_frames and run.stats.quotes == quotes
        assert run.stats.reconnects == 0 and venue.stats.connections == 1
        assert run.state() is state
        sent = quiet.keepalives(venue)
        await wait(lambda: run.stats.frames >= sent)  # every one was read (pyth: a comment line)
        assert run.stats.malformed == 0 and venue.stats.rest_requests == 0
