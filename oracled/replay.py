"""Replay: run a quote tape through the same core the daemon uses.

Time is the tape's. Rounds run every `round_interval_ms`; the first at the first quote's `ts`
rounded up to a multiple of the interval; a quote takes part in every round at or after its `ts`;
the last round is the first one at or after the last quote. A manual command (tape version 2)
is applied before the round at its `ts`, the round the live core first applied it to, after
every round before it. Output is one report per market per round, JSON Lines, markets in config
order: the same tape and config give byte-identical output.

`oracled audit --replay` drives the same loop on a trail's own schedule instead: the round
numbers and times the live daemon ran (a blocked loop's late rounds and the ones it skipped are
in that schedule, not in an interval's), and its config reloads at the times the trail holds.

The quotes the core drops are counted by source and reason (`ReplayStats.drops`), the sources
named as the core's own counts name them (`Book.counted_as`): a tape naming a new source on
every line grows nothing but the counts.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import msgspec

from oracled.config import Config, load_config
from oracled.core import PRICING_REVISION, Core, RoundResult
from oracled.errors import ConfigError
from oracled.model import Quote
from oracled.tape import (
    DEFAULT_MAX_GAP_MS,
    ManualCommand,
    TapeGapError,
    TapeHeader,
    TapeLineError,
    pricing_digest,
    read_tape,
)

__all__ = ["ReplayStats", "chain_env_hint", "replay", "revision_warning"]


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


def revision_warning(header: TapeHeader) -> str | None:
    """Why a tape's reports may differ from this build's, if its header names another pricing
    revision (`oracled replay` and `oracled stress` each say it once), else None."""
    revision = header.pricing_revision
    if revision is None or revision == PRICING_REVISION:
        return None
    by = "" if header.software_version is None else f" (oracled {header.software_version})"
    return (
        f"recorded under pricing revision {revision}{by}, this oracled prices under revision"
        f" {PRICING_REVISION}: the reports may differ from the recorded ones where the rules"
        " changed in between (CHANGELOG.md, Pricing revisions)"
    )


#: The fix `chain_env_hint` gives a replay: it makes no call, so any URL will do.
REPLAY_FIX = "replay them (any URL: a replay makes no call)"


def chain_env_hint(config_path: Path, cfg: Config, recorded: str, fix: str = REPLAY_FIX) -> str:
    """What to add to the message of a tape recorded with another pricing config when the
    cause may be the environment, not the file: a chain whose `rpc_urls_env` is unset has its
    on-chain sources taken out of the markets at load, which changes the digest. When setting
    the unset ones gives the recorded digest, that is said, with `fix` (what setting it lets
    the command do: `replay` and `record --append` both say it); else, for a config naming
    such a variable, that it may be."""
    chains = {cid: ch.rpc_urls_env for cid, ch in cfg.chains.items() if ch.rpc_urls_env}
    if not chains:
        return ""
    unset = {cid: env for cid, env in chains.items() if not cfg.chains[cid].resolved_urls}
    if unset:
        lit = {**os.environ, **dict.fromkeys(unset.values(), "http://127.0.0.1")}
        try:
            same = pricing_digest(load_config(config_path, env=lit)) == recorded
        except (ConfigError, OSError):  # read again: changed or gone meanwhile
            same = False
        if same:
            named = ", ".join(f"${env} (chains.{cid}.rpc_urls_env)" for cid, env in unset.items())
            return (
                f"; it was recorded with {named} set, unset here, so the markets here lack the"
                f" on-chain sources of that chain: set it to {fix}"
            )
    return (
        "; or an environment variable it names (a chain's rpc_urls_env) was set otherwise where"
        " it was recorded"
    )


def replay(
    cfg: Config,
    lines: Iterable[bytes | str],
    out: IO[bytes] | None,
    *,
    on_quote: Callable[[Quote], None] | None = None,
    on_round: Callable[[RoundResult], None] | None = None,
    on_error: Callable[[TapeLineError], None] | None = None,
    on_header: Callable[[TapeHeader], None] | None = None,
    max_gap_ms: int | None = DEFAULT_MAX_GAP_MS,
    schedule: Iterable[tuple[int, int]] | None = None,
    reloads: Iterable[tuple[int, Config]] = (),
    back_in_time: bool = False,
    ran_through: Callable[[], int] | None = None,
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

    `schedule` (round number, round time), in order, replaces the interval's rounds: exactly
    those run, numbered so, the first ones before the first quote when earlier, the last one
    after the last quote (quotes after it are not read). `reloads` (time, config), in order,
    are swapped into the core (`Core.reconfigure`, as the daemon's reload) before the first
    quote and the first round later than their time. `out` None writes nothing (`on_round`
    sees the rounds). `back_in_time` (`read_tape`'s) feeds a quote earlier than the one before
    it to the core where it stands, before the next round, as the daemon took it after its
    wall clock stepped back. `ran_through`, with a `schedule`, is the time of the last round
    the daemon had run before it took the quote being read (the audit trail stores a round's
    quotes with it): those rounds run before that quote, even one stamped earlier (a wall clock
    stepped back after the round).
    """
    core = Core(cfg)
    ticks = None if schedule is None else iter(schedule)
    pending = list(reloads)[::-1]  # the next reload last: popped as its time passes
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
        if pending:
            reload_before(cmd.ts)  # a market a reload before its round added is one
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

    def reload_before(ts: int) -> None:
        """Swap in the reloads done before `ts` (a quote's time, or a round's)."""
        while pending and pending[-1][0] < ts:
            core.reconfigure(pending.pop()[1])

    def following() -> int | None:
        """The next round's time (None: the schedule is done), its number set in the core."""
        if ticks is None:
            assert next_round is not None
            return next_round + interval
        step = next(ticks, None)
        if step is None:
            return None
        core.rounds = step[0] - 1
        return step[1]

    def run_until(limit: int | None) -> None:
        nonlocal next_round
        while next_round is not None and (limit is None or next_round < limit):
            if pending:
                reload_before(next_round)
            if waiting:
                apply_due(next_round)
            result = core.run_round(next_round)
            stats.rounds += 1
            stats.reports += len(result.layout.markets)
            if out is not None:
                for report in result.reports():
                    encoder.encode_into(report, buffer, -1)
                    buffer.extend(b"\n")
                out.write(buffer)
                buffer.clear()
            if on_round is not None:
                on_round(result)
            next_round = following()
            if limit is None and ticks is None:
                return

    numbering: TapeHeader | None = None  # an audit tape's: number rounds as the daemon did

    def header_seen(header: TapeHeader) -> None:
        nonlocal numbering
        if header.first_round is not None and ticks is None:  # a schedule numbers its own
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
        lines,
        errors,
        on_header=header_seen,
        max_gap_ms=max_gap_ms,
        on_command=command,
        back_in_time=back_in_time,
    )
    if ticks is not None:
        next_round = following()
    try:
        for quote in quotes:
            if ticks is not None:
                run_until(
                    quote.recv_ts if ran_through is None else max(quote.recv_ts, ran_through() + 1)
                )
                if next_round is None:  # past the schedule's last round
                    break
            elif next_round is None:
                next_round = _round_up(quote.recv_ts, interval)
                first_round_at(next_round)
            elif quote.recv_ts > next_round:
                run_until(quote.recv_ts)
            if pending:
                reload_before(quote.recv_ts)
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
