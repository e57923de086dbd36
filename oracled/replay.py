"""Replay: run a quote tape through the same core the daemon uses.

Time is the tape's. Rounds run every `round_interval_ms`; the first at the first quote's `ts`
rounded up to a multiple of the interval; a quote takes part in every round at or after its `ts`;
the last round is the first one at or after the last quote. A manual command (tape version 2)
is applied before the round at its `ts`, the round the live core first applied it to, after
every round before it. Output is one report per market per round, JSON Lines, markets in config
order: the same tape and config give byte-identical output.

The quotes the core drops are counted by source and reason (`ReplayStats.drops`), the sources
named as the core's own counts name them (`Book.counted_as`): a tape naming a new source on
every line grows nothing but the counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO

import msgspec

from oracled.config import Config
from oracled.core import Core, RoundResult
from oracled.model import Quote
from oracled.tape import (
    DEFAULT_MAX_GAP_MS,
    ManualCommand,
    TapeGapError,
    TapeHeader,
    TapeLineError,
    read_tape,
)

__all__ = ["ReplayStats", "replay"]


@dataclass(slots=True)
class ReplayStats:
    quotes: int = 0
    dropped: int = 0
    drops: Counter[tuple[str, str]] = field(default_factory=Counter)  # (source, reason) -> n
    rounds: int = 0
    reports: int = 0
    commands: int = 0  # manual commands applied (each before its round)
    malformed: int = 0  # lines skipped; kept in `errors` unless an `on_error` hook took them
    errors: list[TapeLineError] = field(default_factory=list)


@dataclass(slots=True)
class _Errors:
    """Counts the skipped lines, and keeps them or hands them to the caller's hook."""

    stats: ReplayStats
    hook: Callable[[TapeLineError], None] | None

    def append(self, error: TapeLineError, /) -> None:
        self.stats.malformed += 1
        if self.hook is None:
            self.stats.errors.append(error)
        else:
            self.hook(error)


def _round_up(ts: int, interval: int) -> int:
    return -(-ts // interval) * interval


def replay(
    cfg: Config,
    lines: Iterable[bytes | str],
    out: IO[bytes],
    *,
    on_quote: Callable[[Quote], None] | None = None,
    on_round: Callable[[RoundResult], None] | None = None,
    on_error: Callable[[TapeLineError], None] | None = None,
    on_header: Callable[[TapeHeader], None] | None = None,
    max_gap_ms: int | None = DEFAULT_MAX_GAP_MS,
) -> ReplayStats:
    """Feed the tape to a fresh core and write every round's reports to `out`.

    The hooks let a caller (the stress simulator) watch the same run: `on_quote` sees every
    readable quote before the core does, `on_round` every round's result after its reports.
    `on_error` gets each skipped line when it is met, instead of `stats.errors` keeping it: a
    long tape of bad lines would otherwise be held in memory to the end. `on_header` sees the
    tape's header first.

    A gap longer than `max_gap_ms` (None or 0: no limit) between consecutive quotes ends the
    replay as if the tape ended before it (its last round is written), then raises
    TapeGapError: nothing past the gap is written.
    """
    core = Core(cfg)
    interval = cfg.oracle.round_interval_ms
    stats = ReplayStats()
    encoder = msgspec.json.Encoder()
    buffer = bytearray()
    next_round: int | None = None
    errors = _Errors(stats, on_error)
    #: Manual commands read whose round has not run yet, in tape order: each is applied right
    #: before the first round at or after its `ts` (one past the last round: never applied,
    #: as it moved nothing the replay outputs).
    waiting: list[ManualCommand] = []

    def command(cmd: ManualCommand) -> None:
        """Keep a command for its round, or report a market or a round time this config does
        not have. Its round has not run: `read_tape` reports one whose `ts` is before the quote
        above it, and replay runs no round past the last quote's."""
        problem = None
        if cmd.market not in core.index:
            problem = f"{cmd.market} is no market of this config"
        elif cmd.ts % interval:
            problem = f"ts {cmd.ts} is no round time (a multiple of round_interval_ms {interval})"
        if problem is None:
            waiting.append(cmd)
        else:
            errors.append(TapeLineError(cmd.line, f"manual command: {problem}"))

    def apply_due(tick: int) -> None:
        """Apply the commands whose round is the one at `tick` (or one before the replay's
        first, which runs no earlier round), in tape order."""
        due = [c for c in waiting if c.ts <= tick]
        if due:
            waiting[:] = [c for c in waiting if c.ts > tick]
            for cmd in due:
                core.set_manual(cmd.market, cmd.paused)
                stats.commands += 1

    def run_until(limit: int | None) -> None:
        nonlocal next_round
        assert next_round is not None
        while limit is None or next_round < limit:
            if waiting:
                apply_due(next_round)
            result = core.run_round(next_round)
            stats.rounds += 1
            for report in result.reports():
                encoder.encode_into(report, buffer, -1)
                buffer.extend(b"\n")
                stats.reports += 1
            out.write(buffer)
            buffer.clear()
            if on_round is not None:
                on_round(result)
            next_round += interval
            if limit is None:
                return

    numbering: TapeHeader | None = None  # an audit tape's: number rounds as the daemon did

    def header_seen(header: TapeHeader) -> None:
        nonlocal numbering
        if header.first_round is not None:
            numbering = header
            core.rounds = header.first_round - 1
        if on_header is not None:
            on_header(header)

    def first_round_at(tick: int) -> None:
        """Number the replay's first round (at `tick`) as the daemon numbered the round then:
        the header's round may come later (its quotes include those of dropped rounds)."""
        if numbering is None or numbering.first_round_ts is None:
            return
        assert numbering.first_round is not None
        number = numbering.first_round + (tick - numbering.first_round_ts) // interval
        core.rounds = max(1, number) - 1  # below 1: a config with another interval

    quotes = read_tape(
        lines, errors, on_header=header_seen, max_gap_ms=max_gap_ms, on_command=command
    )
    try:
        for quote in quotes:
            if next_round is None:
                next_round = _round_up(quote.recv_ts, interval)
                first_round_at(next_round)
            elif quote.recv_ts > next_round:
                run_until(quote.recv_ts)
            stats.quotes += 1
            if on_quote is not None:
                on_quote(quote)
            reason = core.ingest(quote)
            if reason is not None:
                stats.dropped += 1
                stats.drops[(core.book.counted_as(quote.source), str(reason))] += 1
    except TapeGapError:
        if next_round is not None:
            run_until(None)
        raise
    if next_round is not None:
        run_until(None)
    return stats
