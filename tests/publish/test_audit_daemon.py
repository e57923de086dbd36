"""The trail a running daemon writes (a real Service on a loopback venue), and what its tape
replays to: the promise docs/publishing.md makes about `oracled audit --tape`."""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import Iterable
from pathlib import Path

import msgspec
from publish_rig import one_venue_config

from oracled.config import Config
from oracled.publish.audit import AuditReader
from oracled.replay import replay
from oracled.service import Service
from oracled.sim import BinanceSim
from oracled.tape import read_header

_ROUND = re.compile(rb'"round":(\d+),')


async def _audited(service: Service, rounds: int) -> None:
    """Until the service's audit writer has stored `rounds` rounds."""
    while service.audit is None or service.audit.stats.rounds < rounds:  # noqa: ASYNC110 - a counter of the writer thread
        await asyncio.sleep(0.05)


async def _run_until_audited(tmp_path: Path, record: Path | None = None) -> Config:
    """A daemon on one loopback venue, its audit trail in `tmp_path`, until it stored 40
    rounds; its config."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=50.0, volatility=0.001) as sim:
        cfg = one_venue_config(sim.ws_url, sim.rest_url, tmp_path / "audit.sqlite3")
        service = Service(cfg, record=record)
        task = asyncio.create_task(service.run())
        try:
            async with asyncio.timeout(20):
                await _audited(service, 40)
        finally:
            service.stop()
            await task
    return cfg


def _by_round(lines: Iterable[bytes]) -> dict[int, bytes]:
    """Report lines by their round number."""
    return {int(_ROUND.search(line)[1]): line for line in lines}  # type: ignore[index]


def _assert_replayed_as_stored(out: bytes, stored: dict[int, bytes], at_least: int) -> None:
    """Every replayed report of a round the trail stored is that stored report byte for byte,
    and at least `at_least` are: a round missing from the trail is one the daemon ran late and
    left out (docs/runbook.md), or one after its last stored round."""
    same = 0
    for line in out.splitlines(keepends=True):
        kept = stored.get(int(_ROUND.search(line)[1]))  # type: ignore[index]
        if kept is None:
            continue
        assert line == kept
        same += 1
    assert same >= at_least


async def test_a_daemons_tape_replays_to_its_stored_reports_byte_for_byte(
    tmp_path: Path,
) -> None:
    """A daemon's trail, exported with `--tape` and replayed with its config, gives every stored
    report byte for byte, `round` included: the daemon numbers its rounds from its start, the
    first of them before any venue had answered (so without quotes, and not on the tape), and
    the tape's header carries the number of the round its first quote went into, from which
    replay numbers its own (before, they differed by that many rounds less one)."""
    cfg = await _run_until_audited(tmp_path)
    reader = AuditReader(cfg.audit.path)
    stored = _by_round(reader.report_lines(0, 1 << 62))
    first_quoted = min(r.round for r in reader.rounds(0, 1 << 62) if r.quotes)
    tape = io.BytesIO()
    reader.tape(tape, 0, 1 << 62)
    reader.close()
    assert read_header(tape.getvalue().split(b"\n", 1)[0]).first_round == first_quoted
    out = io.BytesIO()
    stats = replay(cfg, io.BytesIO(tape.getvalue()), out)
    assert stats.errors == [] and stats.rounds >= 30
    _assert_replayed_as_stored(out.getvalue(), stored, at_least=30)
    assert b'"status":"degraded","reasons":["thin"],"price":"' in b"".join(stored.values())


async def test_a_recorded_tape_replays_to_the_published_reports_round_numbers_included(
    tmp_path: Path,
) -> None:
    """`oracled record`'s tape, replayed with the daemon's config, gives the reports the daemon
    published (its audit trail's) byte for byte, `round` included. The bug: the tape's header
    named no round, so replay numbered its first round 1 where the daemon, whose first rounds
    ran before any venue answered, had published it as round 2 or later: every report differed
    in `round`. The recorder now writes the number and time of the daemon's first round into
    the header (`first_round`, `first_round_ts`), as `oracled audit --tape` does."""
    tape = tmp_path / "tape.jsonl"
    cfg = await _run_until_audited(tmp_path, record=tape)
    reader = AuditReader(cfg.audit.path)
    stored = _by_round(reader.report_lines(0, 1 << 62))
    first = reader.rounds(0, 1 << 62)[0]
    reader.close()
    header = read_header(tape.read_bytes().split(b"\n", 1)[0])
    assert header.first_round is not None and header.first_round_ts is not None
    assert header.first_round + (first.ts - header.first_round_ts) // 50 == first.round
    out = io.BytesIO()
    stats = replay(cfg, io.BytesIO(tape.read_bytes()), out)
    assert stats.errors == [] and stats.rounds >= 30
    _assert_replayed_as_stored(out.getvalue(), stored, at_least=30)


class _HeldClock:
    """The real clock, held at its first reading until `release`, which moves it `ahead_ms`
    past that reading: the round loop's first round comes due while quotes arrive, and is
    then late by that much, as after a start-up stall."""

    def __init__(self) -> None:
        self.held: int | None = None
        self.offset_ms: int | None = None

    def now_ms(self) -> int:
        real = time.time_ns() // 1_000_000
        if self.offset_ms is not None:
            return real + self.offset_ms
        if self.held is None:
            self.held = real
        return self.held

    def monotonic(self) -> float:
        return time.monotonic()

    def release(self, ahead_ms: int) -> None:
        assert self.held is not None
        self.offset_ms = self.held + ahead_ms - time.time_ns() // 1_000_000


async def test_a_tape_whose_first_round_was_late_replays_to_every_published_report(
    tmp_path: Path,
) -> None:
    """A daemon whose first round came late computes the rounds it missed (unpublished, with
    the quotes that had come) before it publishes one, and its tape's header names that
    published round. The replay of the tape still runs the caught-up rounds (it starts at the
    round of the first quote; the header's round only numbers them), so it gives every report
    the daemon published byte for byte, the first ones included: a replay that began at the
    header's round would build the gates' resume streak later and differ from round 5 on."""
    tape = tmp_path / "tape.jsonl"
    clock = _HeldClock()
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=50.0, volatility=0.001) as sim:
        oracle = {"round_interval_ms": 50, "resume_rounds": 5}  # a streak the late rounds build
        cfg = one_venue_config(sim.ws_url, sim.rest_url, tmp_path / "audit.sqlite3", oracle=oracle)
        service = Service(cfg, record=tape, clock=clock)
        task = asyncio.create_task(service.run())
        try:
            async with asyncio.timeout(20):
                while service.source_stats["venue"].quotes < 3:  # noqa: ASYNC110 - a plain counter
                    await asyncio.sleep(0.005)
                assert service.rounds_published == 0 and service.rounds_caught_up == 0
                clock.release(ahead_ms=200)
                await _audited(service, 40)
        finally:
            service.stop()
            await task
    assert service.rounds_caught_up >= 3  # the first round was late: rounds were caught up
    header_line, first_quote = tape.read_bytes().split(b"\n", 2)[:2]
    header = read_header(header_line)
    assert header.first_round_ts is not None
    assert msgspec.json.decode(first_quote)["ts"] < header.first_round_ts  # in a caught-up round
    reader = AuditReader(cfg.audit.path)
    stored = _by_round(reader.report_lines(0, 1 << 62))
    reader.close()
    out = io.BytesIO()
    stats = replay(cfg, io.BytesIO(tape.read_bytes()), out)
    assert stats.errors == []
    replayed = _by_round(out.getvalue().splitlines(keepends=True))
    first = min(stored)
    assert first > 1  # caught-up rounds came before it
    for number in sorted(stored)[:30]:
        assert replayed.get(number) == stored[number], number
