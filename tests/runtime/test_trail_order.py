"""`oracled audit --replay` puts what the daemon did between two rounds in the order it did it.

A daemon on a clock that moves only when told, fed its quotes by the test (`Service.on_quote`,
the sources' own hand-off) and its manual pauses as the admin endpoint hands them over
(`Service.on_manual`): the trail it writes is then the same in every run, and so is the replay
of it that each test checks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inert_source import idle_source, published_round
from one_venue import service_running

from oracled.clock import Clock, ManualClock, SystemClock
from oracled.config import load_config
from oracled.model import Quote
from oracled.publish.audit import AuditReader, ConfigLoad
from oracled.publish.audit_replay import ReplaySummary, replay_trail
from oracled.service import Service

#: The loop sleeps towards its next tick in real time (`tick - now`): short enough that a test
#: of a few rounds takes about a second, long enough that a test acts between two rounds.
INTERVAL = 200
T0 = 1_800_000_000_000  # a multiple of INTERVAL: the first round's tick
END = 1 << 62


def _toml(audit: Path, skew_ms: int = 2_000) -> str:
    return f"""
[oracle]
round_interval_ms = {INTERVAL}
resume_rounds = 1
max_clock_skew_ms = {skew_ms}

[api]
listen = "127.0.0.1:0"

[sources.good]
type = "binance"
ws_url = "ws://127.0.0.1:9"
rest_url = "http://127.0.0.1:9"

[[markets]]
symbol = "BTC/USDT"
min_sources = 1
max_age_ms = 10_000
sources = [{{ source = "good", pair = "BTC/USDT" }}]

[audit]
enabled = true
path = "{audit}"
reserve_bytes = 65_536
"""


def _quote(ts: int, price: float, ahead_ms: int | None = None) -> Quote:
    """A quote received at `ts`; with `ahead_ms`, its venue's time that much later."""
    venue = None if ahead_ms is None else ts + ahead_ms
    return Quote("good", "BTC/USDT", ts, price=price, venue_ts=venue)


def _service(path: Path, clock: Clock) -> Service:
    return Service(
        load_config(path),
        clock=clock,
        source_factory=idle_source,
        config_path=path,
        config_text=path.read_bytes(),
    )


async def _reload(service: Service, clock: ManualClock) -> None:
    """`service.reload`, the clock moving on a millisecond every 5 ms (real time) until it is
    done, as a wall clock does (this one stands still unless told)."""
    reloading = asyncio.create_task(service.reload("test"))
    while not reloading.done():
        await asyncio.sleep(0.005)
        if not reloading.done():
            clock.advance(1)
    await reloading


@dataclass
class _Daemon:
    """A test's daemon (`_past_round_one`): its service, its clock, its config file, its trail."""

    service: Service
    clock: ManualClock
    path: Path
    trail: Path

    def take(self, price: float, ts: int | None = None, ahead_ms: int | None = None) -> None:
        """The service takes a quote stamped `ts`, by default the clock's time (`_quote`)."""
        self.service.on_quote(_quote(self.clock.now_ms() if ts is None else ts, price, ahead_ms))

    def take_too_far_ahead(self, ts: int | None = None) -> None:
        """A quote at 64,100 whose venue time is 1 s ahead: past the 100 ms clock skew bound
        the reload tests start under, within the 5 s they raise it to."""
        self.take(64_100.0, ts, ahead_ms=1_000)

    async def reload(self, skew_ms: int) -> None:
        """The config file rewritten with that clock skew bound, and reloaded (`_reload`)."""
        self.path.write_text(_toml(self.trail, skew_ms))
        await _reload(self.service, self.clock)


@contextlib.asynccontextmanager
async def _past_round_one(tmp_path: Path, skew_ms: int = 2_000) -> AsyncIterator[_Daemon]:
    """A daemon with its trail and config in `tmp_path`, on a manual clock, running for the
    block (30 s at most), which starts once round 1, priced from a quote at T0, is published."""
    trail = tmp_path / "audit.sqlite3"
    path = tmp_path / "oracled.toml"
    path.write_text(_toml(trail, skew_ms))
    clock = ManualClock(T0)
    service = _service(path, clock)
    async with asyncio.timeout(30), service_running(service):
        await service.started.wait()
        service.on_quote(_quote(T0, 64_000.0))
        clock.advance(1)  # past the first tick: round 1
        await published_round(service, 1)
        yield _Daemon(service, clock, path, trail)


def _replayed(trail: Path) -> tuple[dict[int, str | None], ReplaySummary]:
    """BTC/USDT's stored price by round number, and `audit --replay` of the whole trail."""
    reader = AuditReader(trail)
    try:
        prices = {s.report.round: s.report.price for s in reader.reports("BTC/USDT", 0, END)}
        return prices, replay_trail(reader, 0, END, None, [])
    finally:
        reader.close()


def _last_config(trail: Path) -> ConfigLoad:
    """The trail's newest config load."""
    reader = AuditReader(trail)
    try:
        return reader.configs(0, END)[-1]
    finally:
        reader.close()


@dataclass
class _Stepped:
    """What `_pause_then_step_back` left in the trail."""

    rounds: dict[int, Any]  # stored rounds by number
    statuses: dict[int, str]  # BTC/USDT's stored status by round number
    blocks: dict[int, bytes]  # stored quote blocks by their round's time
    summary: ReplaySummary  # `audit --replay` of the whole trail


async def _pause_then_step_back(tmp_path: Path, quote_before_pause: bool) -> _Stepped:
    """Round 1; a pause first applied to round 2 (with or without a quote taken before it);
    round 2; the wall clock stepped back 100 ms, a quote taken then (stored with round 3,
    stamped before round 2); rounds 3 and 4 with a quote each."""
    async with _past_round_one(tmp_path) as run:
        if quote_before_pause:
            run.take(64_001.0, ts=T0 + 10)
        run.service.on_manual("BTC/USDT", True, "alice")  # first applied to round 2
        run.clock.advance(INTERVAL)
        await published_round(run.service, 2)
        run.clock.advance(-100)  # stepped back: the rounds wait for it to pass round 2 again
        run.take(64_002.0)  # stored with round 3
        run.clock.advance(INTERVAL + 100)
        await published_round(run.service, 3)
        run.take(64_003.0)
        run.clock.advance(INTERVAL)
        await published_round(run.service, 4)
    reader = AuditReader(run.trail)
    try:
        return _Stepped(
            rounds={r.round: r for r in reader.rounds(0, END)},
            statuses={s.report.round: s.report.status for s in reader.reports("BTC/USDT", 0, END)},
            blocks={ts: b for b, _, ts in reader.tape_blocks(0, END) if ts is not None},
            summary=replay_trail(reader, 0, END, None, []),
        )
    finally:
        reader.close()


async def test_a_pause_before_a_round_after_which_the_clock_stepped_back_replays_at_its_round(
    tmp_path: Path,
) -> None:
    """An operator pauses BTC/USDT before round 2; right after round 2 the wall clock steps back
    100 ms, so the next quotes the daemon takes, stored with round 3, are stamped before round
    2. The trail's tape puts the pause in the quotes of round 2, before the quotes taken after
    that round, and `audit --replay` pauses round 2 as the daemon did: every report equal.
    Before, the pause went before the first quote later than its round, after the quotes of
    the wait: the replay ran round 2 unpaused at the first of them (it was taken after round
    2) and paused from round 3 on, a mismatch at round 2."""
    run = await _pause_then_step_back(tmp_path, quote_before_pause=True)
    assert [run.statuses[n] for n in (1, 2, 3, 4)] == ["degraded", "paused", "paused", "paused"]
    third = run.blocks[run.rounds[3].ts].splitlines()
    assert b'"ts":%d' % (T0 + INTERVAL - 99) in third[0]  # taken after round 2, stamped before
    assert run.summary.exit_code() == 0, (run.summary.problems, run.summary.mismatches[:3])
    assert run.summary.rounds == 4 and run.summary.equal == run.summary.reports == 4


async def test_a_pause_before_a_round_without_quotes_replays_at_it_after_the_clock_stepped_back(
    tmp_path: Path,
) -> None:
    """As above, but no quote comes in between round 1 and the pause, so round 2 is stored
    without quotes; right after it the wall clock steps back 100 ms, and the next quote,
    stored with round 3, is stamped before round 2. The trail's tape puts the pause before
    that quote, since it was taken after round 2 ran, and `audit --replay` pauses round 2 as
    the daemon did. Before, the pause went at the end of round 3's quotes (none later than
    its round), after the quote at which the replay runs round 2 (`ran_through`): round 2
    replayed unpaused, a mismatch."""
    run = await _pause_then_step_back(tmp_path, quote_before_pause=False)
    assert run.rounds[2].ts not in run.blocks  # stored without quotes
    assert [run.statuses[n] for n in (1, 2, 3, 4)] == ["degraded", "paused", "paused", "paused"]
    third = run.blocks[run.rounds[3].ts].splitlines()
    assert b'"manual":"pause"' in third[0] and b'"ts":%d' % (T0 + INTERVAL - 99) in third[1]
    assert run.summary.exit_code() == 0, (run.summary.problems, run.summary.mismatches[:3])
    assert run.summary.rounds == 4 and run.summary.equal == run.summary.reports == 4


async def test_a_reload_in_the_millisecond_of_a_quote_parts_the_quotes_as_the_daemon_did(
    tmp_path: Path,
) -> None:
    """A quote taken, a reload raising the clock skew bound asked for in that millisecond, and a
    quote taken right after the reload, in the millisecond it was applied in: the daemon drops
    the first (its venue time is past the bound then in force) and prices the second. The
    reload waits for the clock to pass the millisecond of the quote it took, and the trail
    stores it a millisecond before the one it was applied in, so it parts the quotes as the
    daemon took them and `audit --replay` gives every report. Before, the reload was applied
    at once and stored at the millisecond it shares with both quotes, and the replay, which
    takes a reload after every quote stamped at or before its time, dropped the second quote
    too: a mismatch at round 2."""
    async with _past_round_one(tmp_path, skew_ms=100) as run:
        run.clock.advance(50)
        run.take_too_far_ahead()
        await run.reload(skew_ms=5_000)
        second = run.clock.now_ms()
        run.take(64_200.0, ahead_ms=1_000)  # within it now
        run.clock.advance(INTERVAL)
        await published_round(run.service, 2)
    prices, summary = _replayed(run.trail)
    reload = _last_config(run.trail)
    # Between the two quotes' stamps: at the first one's millisecond, or later when the clock
    # (moved on in real time by `_reload`) turned more than once while the reload looked.
    assert reload.event == "reload" and T0 + 51 <= reload.ts < second
    assert [prices[1], prices[2]] == ["64000.00", "64200.00"]
    assert summary.exit_code() == 0, (summary.problems, summary.mismatches[:3])
    assert "1 reload(s) applied" in summary.starts[0]
    assert summary.rounds == 2 and summary.equal == summary.reports == 2


async def test_a_reload_after_the_clock_stepped_back_waits_past_the_newest_quote_it_took(
    tmp_path: Path,
) -> None:
    """A quote taken at 51 ms past round 1, the wall clock stepped back 3 ms, a second quote
    taken at 48 ms, then a reload raising the clock skew bound: the daemon drops the first
    (its venue time is past the bound then in force) and prices the second. The reload waits
    for the clock to pass the newest quote the core took, not the one taken last, and is
    stored at 51 ms: `audit --replay`, which reads the quotes as the daemon took them and
    takes a reload before the first one stamped later than it, drops the first quote too.
    Before, the reload was stored at 48 ms, past the quote taken last alone, and the replay
    took the first quote under the new bound and priced it: a mismatch at round 2."""
    async with _past_round_one(tmp_path, skew_ms=100) as run:
        run.clock.advance(50)
        run.take_too_far_ahead()
        run.clock.advance(-3)  # stepped back, still after round 1
        run.take(64_050.0)
        await run.reload(skew_ms=5_000)
        run.clock.advance(INTERVAL)
        await published_round(run.service, 2)
    prices, summary = _replayed(run.trail)
    reload = _last_config(run.trail)
    # Past the newest quote's millisecond (51), before round 2: at 51, or later when the clock
    # (moved on in real time by `_reload`) turned more than once while the reload looked.
    assert reload.event == "reload" and T0 + 51 <= reload.ts < T0 + INTERVAL
    assert [prices[1], prices[2]] == ["64000.00", "64050.00"]
    assert summary.exit_code() == 0, (summary.problems, summary.mismatches[:3])
    assert summary.rounds == 2 and summary.equal == summary.reports == 2


async def test_reloads_under_a_quote_in_every_millisecond_part_the_quotes_as_the_daemon_did(
    tmp_path: Path,
) -> None:
    """On the system's clock, a source hands over a quote at every turn of the event loop,
    its venue time 1 s ahead, each at its own price; the clock skew bound is lowered from 5 s
    to 100 ms (the quotes dropped from then on) and raised again, a round between, four
    times. Every reload parts the quotes as the daemon took them: the round after a lowering
    shows the last quote taken before it (not fresh under the new bound), and `audit --replay`
    gives every report. Before, the reload waited for a millisecond in which the core took no
    quote yet, which a busy loop seldom has: after 50 ms it was applied all the same (`config
    reload applied with the wall clock standing still or stepped back`) and stored a
    millisecond before quotes the core took under the old bound, which the replay took under
    the new one and dropped: a mismatch in the round after (an older quote's value)."""
    trail = tmp_path / "audit.sqlite3"
    path = tmp_path / "oracled.toml"
    path.write_text(_toml(trail, skew_ms=5_000))
    clock = SystemClock()
    service = _service(path, clock)
    feeding = True

    async def feed() -> None:
        price = 64_000.0
        while feeding:
            price += 0.01
            service.on_quote(_quote(clock.now_ms(), round(price, 2), ahead_ms=1_000))
            await asyncio.sleep(0)

    async with asyncio.timeout(60), service_running(service):
        await service.started.wait()
        feeder = asyncio.create_task(feed())
        await published_round(service, 2)
        for k in range(4):
            path.write_text(_toml(trail, skew_ms=100))
            await service.reload("test")
            await published_round(service, 3 + 2 * k)
            path.write_text(_toml(trail, skew_ms=5_000))
            await service.reload("test")
            await published_round(service, 4 + 2 * k)
        feeding = False
        await feeder
    prices, summary = _replayed(trail)
    assert summary.exit_code() == 0, (summary.problems, summary.mismatches[:3])
    assert "8 reload(s) applied" in summary.starts[0]
    # Every round the daemon published was stored and replays equal. A round the loop ran
    # late (a loaded machine) is computed unpublished (`_catch_up`): not in the trail.
    assert summary.equal == summary.reports == summary.rounds == service.rounds_published
    assert service.rounds_published + service.rounds_caught_up >= 10
    assert None in prices.values() and len(set(prices.values())) > 4  # lowered, raised


async def test_a_quote_stamped_at_the_tick_of_a_late_round_is_taken_under_its_reload(
    tmp_path: Path,
) -> None:
    """The round loop late (the wall clock past round 2's tick, its round not run yet): a quote
    stamped at that very tick comes in, then a reload raising the clock skew bound. Round 2 is
    computed under the reload (docs/publishing.md), and so is the quote: the core takes a quote
    stamped at or after the next tick only right before that round, as the replay does (a
    reload a millisecond before the tick, the quote after it). Before, the core took it at once
    under the bound then in force and dropped it, while the replay took it after the reload and
    priced it: a mismatch at round 2."""
    async with _past_round_one(tmp_path, skew_ms=100) as run:
        run.clock.advance(INTERVAL + 10)  # round 2's tick passed; the loop sleeps on
        run.take_too_far_ahead(ts=T0 + INTERVAL)
        await run.reload(skew_ms=5_000)
        await published_round(run.service, 2)
    prices, summary = _replayed(run.trail)
    assert [prices[1], prices[2]] == ["64000.00", "64100.00"]
    assert summary.exit_code() == 0, (summary.problems, summary.mismatches[:3])
    assert "1 reload(s) applied" in summary.starts[0]
    assert summary.rounds == 2 and summary.equal == summary.reports == 2


async def test_quotes_taken_after_a_round_without_quotes_replay_after_it_though_stamped_before(
    tmp_path: Path,
) -> None:
    """No quote comes in between rounds 1 and 2, so round 2 is stored without quotes; right
    after it the wall clock steps back 100 ms, and the next quote, stored with round 3, is
    stamped before round 2. The daemon priced round 2 from round 1's quote and took the new one
    after it; `audit --replay` reads the quotes stored with round 3 after round 2, the stored
    round before them, and every report is equal. Before, it read them after round 1, the
    round of the block before, ran round 2 only at a quote later than it, and priced round 2
    from the new quote: a mismatch."""
    async with _past_round_one(tmp_path) as run:
        run.clock.advance(INTERVAL)  # no quote: round 2 is stored without any
        await published_round(run.service, 2)
        run.clock.advance(-100)  # stepped back: the rounds wait for it to pass round 2 again
        run.take(65_000.0)  # stored with round 3
        run.clock.advance(INTERVAL + 100)
        await published_round(run.service, 3)
    prices, summary = _replayed(run.trail)
    assert [prices[1], prices[2], prices[3]] == ["64000.00", "64000.00", "65000.00"]
    assert summary.exit_code() == 0, (summary.problems, summary.mismatches[:3])
    assert summary.rounds == 3 and summary.equal == summary.reports == 3
