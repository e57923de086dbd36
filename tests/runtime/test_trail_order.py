"""`oracled audit --replay` puts what the daemon did between two rounds in the order it did it.

A daemon on a clock that moves only when told, fed its quotes by the test (`Service.on_quote`,
the sources' own hand-off) and its manual pauses as the admin endpoint hands them over
(`Service.on_manual`): the trail it writes is then the same in every run, and so is the replay
of it that each test checks.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from inert_source import InertSource

from oracled.clock import ManualClock
from oracled.config import load_config
from oracled.model import Quote
from oracled.publish.audit import AuditReader
from oracled.publish.audit_replay import replay_trail
from oracled.service import Service
from oracled.sources import Source

#: The loop sleeps towards its next tick in real time (`tick - now`): short enough that a test
#: of a few rounds takes about a second, long enough that a test acts between two rounds.
INTERVAL = 200
T0 = 1_800_000_000_000  # a multiple of INTERVAL: the first round's tick
END = 1 << 62


def _toml(audit: Path) -> str:
    return f"""
[oracle]
round_interval_ms = {INTERVAL}
resume_rounds = 1

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


class _Idle(InertSource):
    """A source that quotes nothing: the test hands the service its quotes itself."""

    async def run(self) -> None:
        await asyncio.Event().wait()


def _idle(sid: str, *args: Any) -> Source:
    return _Idle(sid, *args)


async def _round(service: Service, number: int) -> None:
    """Until the service has published round `number`."""
    async with asyncio.timeout(10):
        while True:
            result = service.hub.latest_result
            if result is not None and result.round >= number:
                return
            await asyncio.sleep(0.005)


def _quote(ts: int, price: float) -> Quote:
    return Quote("good", "BTC/USDT", ts, price=price)


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
    trail = tmp_path / "audit.sqlite3"
    path = tmp_path / "oracled.toml"
    path.write_text(_toml(trail))
    clock = ManualClock(T0)
    service = Service(
        load_config(path),
        clock=clock,
        source_factory=_idle,
        config_path=path,
        config_text=path.read_bytes(),
    )
    async with asyncio.timeout(30):
        task = asyncio.create_task(service.run())
        try:
            await service.started.wait()
            service.on_quote(_quote(T0, 64_000.0))
            clock.advance(1)  # past the first tick: round 1
            await _round(service, 1)
            service.on_quote(_quote(T0 + 10, 64_001.0))
            service.on_manual("BTC/USDT", True, "alice")  # first applied to round 2
            clock.advance(INTERVAL)
            await _round(service, 2)
            clock.advance(-100)  # stepped back: the rounds wait for it to pass round 2 again
            service.on_quote(_quote(clock.now_ms(), 64_002.0))  # stored with round 3
            clock.advance(INTERVAL + 100)
            await _round(service, 3)
            service.on_quote(_quote(clock.now_ms(), 64_003.0))
            clock.advance(INTERVAL)
            await _round(service, 4)
        finally:
            service.stop()
            await task
    reader = AuditReader(trail)
    try:
        rounds = {r.round: r for r in reader.rounds(0, END)}
        statuses = {s.report.round: s.report.status for s in reader.reports("BTC/USDT", 0, END)}
        blocks = {ts: b for b, _, ts in reader.tape_blocks(0, END) if ts is not None}
        summary = replay_trail(reader, 0, END, None, [])
    finally:
        reader.close()
    assert [statuses[n] for n in (1, 2, 3, 4)] == ["degraded", "paused", "paused", "paused"]
    third = blocks[rounds[3].ts].splitlines()
    assert b'"ts":%d' % (T0 + INTERVAL - 99) in third[0]  # taken after round 2, stamped before
    assert summary.exit_code() == 0, (summary.problems, summary.mismatches[:3])
    assert summary.rounds == 4 and summary.equal == summary.reports == 4
