"""`oracled audit --replay`: the trail's reports against what the core computes from the trail.

A report in the trail is the daemon's word; this checks it against its inputs. For each daemon
start (a `configs` row, event `start`) whose rounds the window holds, the config of that start
(a file whose sha256 is the one stored: given with `--config`, or at the path the trail names)
drives the core (`oracled.replay.replay`, the replay of `oracled replay`) over the quotes
stored from that start on, round by round at the trail's own round numbers and times, with the
manual pauses and resumes at the rounds they first applied to and each reload's config swapped
in at its stored time. Rounds before the window are replayed, not compared: the gates remember.

The schedule comes from the stored rounds, not from the interval: a blocked loop computes the
rounds it missed late and unpublished, and a full queue drops rounds from the trail, so between
two stored rounds numbered n1 < n2 at t1 < t2 the core ran n2 - n1 - 1 rounds. When they fill
the ticks between, those are their times. A catch-up past `service.MAX_CATCH_UP_ROUNDS` never
runs the oldest ticks, and a loop slower than its clock does so again before it publishes:
skipped ticks with rounds among them have no stored times, and the start is replayed up to them.

Each report is compared byte for byte with its stored body (the msgpack the writer stored,
inflated), and where it differs the fields that differ are named.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TextIO

import msgspec

from oracled.core import PRICING_REVISION
from oracled.errors import ConfigError
from oracled.publish.audit import AuditReader, AuditRound, ConfigLoad, ConfigText, iso_time
from oracled.reload import running_config

if TYPE_CHECKING:
    from oracled.config import Config
    from oracled.core import RoundResult
    from oracled.model import Report
    from oracled.tape import TapeLineError

__all__ = [
    "EXIT_EMPTY",
    "EXIT_MISMATCH",
    "EXIT_OK",
    "EXIT_REVISION",
    "EXIT_UNREPRODUCIBLE",
    "Mismatch",
    "ReplaySummary",
    "cmd_replay",
    "print_summary",
    "replay_trail",
]

EXIT_OK: Final = 0  # every report compared is the one the core computes
EXIT_EMPTY: Final = 1  # no round to compare in the window
EXIT_MISMATCH: Final = 3  # a stored report differs from the core's, under this pricing revision
#: no mismatch, but rounds of the window could not be replayed (no config with the stored
#: sha256, no config loads in the trail, stored quotes missing, a schedule that does not add up)
#: or stored lines were unreadable and skipped, whether or not reports of another pricing
#: revision differ too
EXIT_UNREPRODUCIBLE: Final = 4
#: no mismatch under this revision and every round replayed, but reports of rounds computed
#: under another revision differ
EXIT_REVISION: Final = 5
_LAST: Final = 1 << 62
_KEPT: Final = 1000  # mismatches kept for the output (all are counted)
_FIELDS: Final = 3  # differing fields named per mismatch
_encoder = msgspec.msgpack.Encoder()  # the writer's: a report's body is its msgpack


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A stored report the replay does not give: its round and the first fields that differ
    (`field`, stored value, replayed value)."""

    market: str
    round: int
    ts: int
    revision: int | None  # the round's stored pricing revision
    fields: list[tuple[str, Any, Any]]


@dataclass(slots=True)
class ReplaySummary:
    rounds: int = 0  # stored rounds of the window compared
    reports: int = 0  # reports compared
    equal: int = 0
    mismatched: int = 0  # reports that differ, in rounds of this pricing revision (or unknown)
    other_revision: int = 0  # reports that differ, in rounds stored under another revision
    revision_rounds: int = 0  # rounds compared that were stored under another revision
    revisions: set[int] = field(default_factory=set)  # those other revisions
    unrecorded: int = 0  # rounds compared whose revision the trail does not hold (schema < 6)
    unreproducible: int = 0  # stored rounds of the window not replayed
    problems: list[str] = field(default_factory=list)  # why, one line each
    #: stored quote (or command) lines the replay could not read and skipped: the core ran
    #: without them, so an equal report proves less, and an unequal one may be their doing
    skipped: int = 0
    starts: list[str] = field(default_factory=list)  # what was replayed, one line per start
    mismatches: list[Mismatch] = field(default_factory=list)  # the first _KEPT

    def exit_code(self) -> int:
        """3 a mismatch, then 4 rounds not replayed or stored lines skipped, then 5 only
        other-revision differences: 5 says everything else was equal, which rounds not replayed
        leave unknown, and so do inputs the core never got."""
        if self.mismatched:
            return EXIT_MISMATCH
        if self.unreproducible or self.skipped or (self.problems and not self.reports):
            return EXIT_UNREPRODUCIBLE
        if self.other_revision:
            return EXIT_REVISION
        return EXIT_OK if self.reports else EXIT_EMPTY

    def as_dict(self) -> dict[str, Any]:
        return {
            "exit": self.exit_code(),
            "pricing_revision": PRICING_REVISION,
            "rounds": self.rounds,
            "reports": self.reports,
            "equal": self.equal,
            "mismatches": self.mismatched,
            "other_revision_mismatches": self.other_revision,
            "other_revision_rounds": self.revision_rounds,
            "other_revisions": sorted(self.revisions),
            "revision_not_recorded_rounds": self.unrecorded,
            "unreproducible_rounds": self.unreproducible,
            "skipped_lines": self.skipped,
            "problems": self.problems,
            "starts": self.starts,
            "first_mismatches": [
                {
                    "market": m.market,
                    "round": m.round,
                    "ts": m.ts,
                    "time": iso_time(m.ts),
                    "revision": m.revision,
                    "fields": [{"field": f, "stored": a, "replayed": b} for f, a, b in m.fields],
                }
                for m in self.mismatches
            ],
        }


class _Unreproducible(Exception):
    """Why the rounds of a start (from `ts` on, None: all of them) cannot be replayed: the
    replay stopped before `ts`."""

    def __init__(self, what: str, ts: int | None = None) -> None:
        super().__init__(what)
        self.what, self.ts = what, ts


class _Configs:
    """The configs of the trail's loads: the text the trail stores (schema version 7), else the
    file an auditor gave or the trail names whose sha256 is the one stored."""

    def __init__(self, reader: AuditReader, given: list[str]) -> None:
        self._reader = reader
        self._given = given
        self._read: dict[str, tuple[Config, str] | str] = {}  # path -> (config, sha256), or why
        self._stored: dict[str, Config | str] = {}  # sha256 -> its stored text's config, or why
        self.whence: dict[str, str] = {}  # sha256 -> where its config was found

    def _load(self, path: str) -> tuple[Config, str] | str:
        if path not in self._read:
            from oracled.config import read_config

            try:
                self._read[path] = read_config(path)
            except ConfigError as exc:
                self._read[path] = "; ".join(exc.problems)
        return self._read[path]

    def _from_text(self, sha256: str) -> Config | str | None:
        """The config of the stored text of `sha256` (None: none stored), or why it is none."""
        if sha256 not in self._stored:
            kept = self._reader.config_text(sha256)
            if kept is None:
                return None
            self._stored[sha256] = _checked(kept, sha256)
        return self._stored[sha256]

    def find(self, load: ConfigLoad) -> Config:
        """The config `load` stored the sha256 of: its stored text's, else a given file's,
        else the stored path's."""
        at = load.ts if load.event == "reload" else None
        what = (
            f"the config of the {load.event} at {iso_time(load.ts)} (by {load.actor}, sha256"
            f" {load.sha256[:12]}"
        )
        stored = self._from_text(load.sha256)
        if isinstance(stored, str):
            redacted = self._reader.config_text(load.sha256)
            kind = "redacted text" if redacted is not None and redacted.redacted else "text"
            raise _Unreproducible(
                f"{what}): its {kind} stored in the trail is not the one the daemon loaded:"
                f" {stored}",
                at,
            )
        if stored is not None:
            self.whence[load.sha256] = "the trail's stored text"
            return stored
        paths = [*self._given, *([] if load.path is None else [load.path])]
        for path in paths:
            read = self._load(path)
            if not isinstance(read, str) and read[1] == load.sha256:
                self.whence[load.sha256] = path
                return read[0]
        tried = "; ".join(
            f"{p}: {r if isinstance(r, str) else 'sha256 ' + r[1][:12]}"
            for p in dict.fromkeys(paths)
            for r in (self._load(p),)
        )
        if load.path is None:
            raise _Unreproducible(
                f"{what}) is stored without a file path or its text (a daemon given its config"
                " in process, not from a file: its sha256 is of the settings, which no file"
                f" has){'; none of the files given has it (' + tried + ')' if tried else ''}",
                at,
            )
        raise _Unreproducible(
            f"{what}, {load.path}) is none of the files at hand"
            f" ({tried or 'none given'}): give it with --config",
            at,
        )


def _checked(kept: ConfigText, sha256: str) -> Config | str:
    """A stored text's config, or why it is not the one the daemon loaded: an exact text whose
    bytes do not hash to `sha256`, one that does not load, or one that prices otherwise than
    the config the daemon loaded (its stored pricing digest)."""
    from oracled.config import parse_config_text
    from oracled.publish.audit_config import text_problem
    from oracled.tape import pricing_digest

    problem = text_problem(kept, sha256)
    if problem is not None:
        return problem
    try:
        cfg = parse_config_text(kept.text, "the stored text")
    except ConfigError as exc:
        return f"it does not load here ({'; '.join(exc.problems)})"
    digest = pricing_digest(cfg)
    if digest != kept.pricing:
        return (
            f"it prices otherwise here (pricing digest {digest[:12]}, the daemon's"
            f" {kept.pricing[:12]}): changed after it was written, or an environment variable"
            " it names (a chain's rpc_urls_env) set otherwise here"
        )
    return cfg


def _schedule(rounds: Iterable[AuditRound], interval: int) -> Iterator[tuple[int, int]]:
    """Every round the core ran up to the last stored one, (number, time), from the stored
    ones: the rounds between two stored ones ran at the ticks between them, which they fill;
    `_Unreproducible` where they do not (ticks skipped beside them, or rows changed).
    Made as the replay takes them: a list of a start's rounds held 89 MB at two days."""
    number, ts = 0, None
    for stored in rounds:
        gap = stored.round - number
        if gap < 1 or (ts is not None and stored.ts - gap * interval < ts):
            was = "no round" if ts is None else f"round {number} at {iso_time(ts)}"
            raise _Unreproducible(
                f"round {stored.round} at {iso_time(stored.ts)} cannot follow {was} at an interval"
                f" of {interval} ms (a start missing from the trail, or rows changed)",
                stored.ts,
            )
        if gap > 1 and ts is not None and stored.ts - ts > gap * interval:
            # Ticks were skipped (a catch-up past its limit) and rounds ran between: where is
            # not stored. One catch-up skips only before the rounds it runs, but a loop slower
            # than its clock skips again before publishing, and the gates of a guess differ.
            raise _Unreproducible(
                f"round {stored.round} at {iso_time(stored.ts)} follows round {number} at"
                f" {iso_time(ts)} after {gap - 1} round(s) computed unpublished and"
                f" {(stored.ts - ts) // interval - gap} tick(s) skipped (a loop blocked past its"
                " catch-up limit): the trail does not say which ticks those rounds ran at",
                stored.ts,
            )
        for k in range(gap - 1, -1, -1):
            yield stored.round - k, stored.ts - k * interval
        number, ts = stored.round, stored.ts


def _diff(stored: Any, replayed: Any, path: str, out: list[tuple[str, Any, Any]]) -> None:
    """The paths where two decoded reports differ, depth first, at most _FIELDS of them."""
    if len(out) >= _FIELDS or stored == replayed:
        return
    if isinstance(stored, dict) and isinstance(replayed, dict):
        for key in dict.fromkeys([*stored, *replayed]):
            _diff(stored.get(key), replayed.get(key), f"{path}.{key}" if path else key, out)
    elif isinstance(stored, list) and isinstance(replayed, list) and len(stored) == len(replayed):
        for k, (a, b) in enumerate(zip(stored, replayed, strict=True)):
            _diff(a, b, f"{path}[{k}]", out)
    else:
        out.append((path or "report", stored, replayed))


class _Comparer:
    """Takes the replay's rounds and compares the window's stored ones as they come."""

    def __init__(
        self, summary: ReplaySummary, stored: Iterator[Any], start: int, market: str | None
    ) -> None:
        self.summary, self.start, self.market = summary, start, market
        self._stored = stored
        self._next = next(stored, None)

    def on_round(self, result: RoundResult) -> None:
        while self._next is not None and self._next[0].ts < result.ts:
            self._next = next(self._stored, None)  # a schedule never skips a stored round
        if self._next is None or self._next[0].ts != result.ts or result.ts < self.start:
            return
        held, bodies, unreadable = self._next
        self._next = next(self._stored, None)
        s = self.summary
        s.rounds += 1
        other = held.revision is not None and held.revision != PRICING_REVISION
        if held.revision is None:
            s.unrecorded += 1
        elif other:
            s.revision_rounds += 1
            s.revisions.add(held.revision)
        stored = {report.market: (report, body) for report, body in bodies}
        index = {m: i for i, m in enumerate(result.layout.markets)}
        markets = [self.market] if self.market is not None else [*index, *stored]
        for market in dict.fromkeys(markets):
            fields = self._fields(result, index.get(market), stored.get(market), unreadable)
            if fields is None:
                continue
            s.reports += 1
            if not fields:
                s.equal += 1
                continue
            if other:
                s.other_revision += 1
            else:
                s.mismatched += 1
            if len(s.mismatches) < _KEPT:
                s.mismatches.append(Mismatch(market, held.round, held.ts, held.revision, fields))

    def _fields(
        self,
        result: RoundResult,
        i: int | None,
        stored: tuple[Report, bytes] | None,
        unreadable: list[str],
    ) -> list[tuple[str, Any, Any]] | None:
        """What differs ([] nothing), or None when neither side has the market."""
        if stored is None:
            market = None if i is None else result.layout.markets[i]
            bad = [w for w in unreadable if market is not None and w.startswith(f"{market}:")]
            if bad:
                return [("report", bad[0], "(replayed)")]
            return None if i is None else [("report", "(not stored)", "(replayed)")]
        if i is None:
            return [("report", "(stored)", "(not in the replayed config)")]
        replayed = result.report(i)
        if _encoder.encode(replayed) == stored[1]:
            return []
        out: list[tuple[str, Any, Any]] = []
        _diff(msgspec.to_builtins(stored[0]), msgspec.to_builtins(replayed), "", out)
        return out or [("report", "(its stored bytes)", "(the replayed bytes)")]


def replay_trail(
    reader: AuditReader,
    start: int,
    end: int,
    market: str | None,
    configs: list[str],
    on_skipped: Callable[[str], None] | None = None,
) -> ReplaySummary:
    """Replay every daemon start the window's rounds belong to and compare the window's;
    `on_skipped` gets where each stored line the replay could not read is and why, as it is
    met (counted in `skipped` either way)."""
    summary = ReplaySummary()
    reader.check_round_times()  # a round in no window would be left out unsaid
    if not reader.round_span(start, end)[0]:
        return summary
    if reader.version < 3:
        summary.unreproducible = reader.round_span(start, end)[0]
        summary.problems.append(
            f"the trail is of schema version {reader.version}: it stores no config loads"
            " (version 3 on), so no replay knows the config its rounds were computed under"
        )
        return summary
    # The window's rounds are counted by SQLite and read as they are replayed: a list of them
    # (two days of the shipped interval: 691,200) held 325 MB, and each start's another.
    loads = reader.configs(0, _LAST)
    starts = [load for load in loads if load.event == "start"]
    times = [load.ts for load in starts]
    before = reader.round_span(start, min(end, times[0] - 1) if times else end)[0]
    if before:
        summary.unreproducible += before
        summary.problems.append(
            f"{before} round(s) of the window are older than the trail's first config load"
            " (stored before schema version 3, or its row lost): no config is known for them"
        )
    files = _Configs(reader, configs)
    for k, load in enumerate(starts):
        until = times[k + 1] - 1 if k + 1 < len(times) else _LAST
        low, high = max(start, load.ts), min(end, until)
        _, _, last = reader.round_span(low, high)
        if last is None:
            continue
        reloads = [c for c in loads if c.event == "reload" and load.ts < c.ts <= until]
        try:
            limit = _replay_start(
                reader, summary, files, load, reloads, last, (start, end, market), on_skipped
            )
        except _Unreproducible as exc:
            # the rounds from exc.ts on were not replayed: counted below (a round at exc.ts
            # was in neither count, a window ending on it exit 0 with its problem said)
            limit = load.ts - 1 if exc.ts is None else exc.ts - 1
            summary.problems.append(exc.what)
        left, first, _ = reader.round_span(max(low, limit + 1), high)
        if left:
            summary.unreproducible += left
            summary.problems.append(
                f"{left} round(s) of the start at {iso_time(load.ts)} not replayed"
                f" (from {iso_time(first)} on)"
            )
    return summary


def _replay_start(
    reader: AuditReader,
    summary: ReplaySummary,
    files: _Configs,
    load: ConfigLoad,
    reloads: list[ConfigLoad],
    last: int,
    asked: tuple[int, int, str | None],
    on_skipped: Callable[[str], None] | None = None,
) -> int:
    """Replay one start up to `last` (the time of the window's last round of it) and compare
    the window's rounds; return the time up to which it was replayed (a reload without its
    config ends it there)."""
    from oracled.replay import replay

    start, end, market = asked
    cfg = files.find(load)
    interval = cfg.oracle.round_interval_ms
    limit = last
    swaps: list[tuple[int, Config]] = []
    current = cfg
    problem: _Unreproducible | None = None
    for reload in reloads:
        if reload.ts > limit:
            break
        try:
            current = running_config(current, files.find(reload))
        except _Unreproducible as exc:
            problem, limit = exc, reload.ts - 1
            break
        swaps.append((reload.ts, current))
    if not reader.actions_on_tape:
        acted = reader.actions(None, load.ts, limit)
        if acted:
            limit = acted[0].ts
            problem = _Unreproducible(
                f"an operator action at {iso_time(acted[0].ts)} ({acted[0].action}"
                f" {acted[0].market}) is stored without its round (schema version"
                f" {reader.version}, before 5): no replay knows which round it first applied to",
                acted[0].ts + 1,  # the rounds up to its time are replayed
            )
    first = next(reader.each_round(load.ts, limit), None)
    oldest = reader.first_round_id() if first is not None and first.round != 1 else None
    if first is not None and oldest is not None and oldest != 1 and first.id == oldest:
        # Rows were deleted before this start's oldest round, and none of an earlier start is
        # left: retention (or a full disk) deleted the start's first rounds, with the quotes
        # the gates of every round after them were built from. Replayed from round 1 without
        # them, its stored rounds differed from it as if the daemon had priced them wrongly.
        raise _Unreproducible(
            f"the start at {iso_time(load.ts)} lost its first rounds to the trail's retention"
            f" (its oldest stored round is round {first.round} at {iso_time(first.ts)}, and the"
            " trail keeps none before it): the quotes its gates were built from are gone"
        )
    try:  # read once to find where the round numbers stop adding up, if they do
        for _ in _schedule(reader.each_round(load.ts, limit), interval):
            pass
    except _Unreproducible as exc:  # replayed up to the round that does not add up
        assert exc.ts is not None
        problem, limit = exc, exc.ts - 1
    gone = reader.missing_tapes(load.ts, limit)
    if gone:
        raise _Unreproducible(
            f"{gone} round(s) of the start at {iso_time(load.ts)} say they were given quotes"
            " and have no stored tape row: stored quotes are missing"
        )

    #: The time of the stored round the daemon ran last before it took the quote being read:
    #: the quotes stored with a round were taken after the stored round before it, also one
    #: stored without quotes (no block of its own), whatever a wall clock stepped back stamped
    #: them. Those rounds are read in step with the blocks.
    ran = 0
    each = reader.each_round(load.ts, limit)
    after = next(each, None)  # the first stored round not known to have run yet
    # The block being read: the replay's line number of its first line, and its round's time
    # (None: the header, or the commands after the last round). The replay judges a line
    # before it reads the next, so a line it skips is one of this block's.
    block_at: tuple[int, int | None] = (1, None)

    def lines() -> Iterator[bytes]:
        nonlocal ran, after, block_at
        number = 1
        for block, _, ts in reader.tape_blocks(load.ts, limit):
            while ts is not None and after is not None and after.ts < ts:
                ran, after = after.ts, next(each, None)
            block_at = (number, ts)
            for line in block.splitlines(keepends=True):
                yield line
                number += 1
            ran = ran if ts is None else ts

    def skipped(error: TapeLineError) -> None:
        summary.skipped += 1
        if on_skipped is not None:
            on_skipped(_skipped_text(reader, error, *block_at))

    def ran_through() -> int:
        return ran

    stored = reader.round_bodies(max(start, load.ts), min(end, limit))
    comparer = _Comparer(summary, stored, start, market)
    compared = summary.rounds
    stats = replay(
        cfg,
        lines(),
        None,
        on_round=comparer.on_round,
        max_gap_ms=None,
        schedule=_schedule(reader.each_round(load.ts, limit), interval),
        reloads=swaps,
        back_in_time=True,  # stored as the daemon took them: after a wall clock stepped back
        ran_through=ran_through,
        on_error=skipped,  # said as met, not held: a damaged trail may hold many
    )
    held = reader.round_span(max(start, load.ts), min(end, limit))[0]
    missed = held - (summary.rounds - compared)
    if missed:  # never expected: a stored round the schedule did not run is said, not skipped
        summary.unreproducible += missed
        summary.problems.append(
            f"{missed} stored round(s) of the start at {iso_time(load.ts)} were not met by the"
            " replay's schedule"
        )
    summary.starts.append(
        f"start at {iso_time(load.ts)} (config sha256 {load.sha256[:12]}, from"
        f" {files.whence[load.sha256]}): {stats.rounds}"
        f" round(s) replayed from round {1 if stats.rounds else '-'},"
        f" {len(swaps)} reload(s) applied, {stats.quotes} quote(s)"
    )
    if problem is not None:
        raise problem
    return limit


def _skipped_text(reader: AuditReader, error: TapeLineError, first: int, ts: int | None) -> str:
    """Where a skipped line is stored, and why it was skipped: the round its quotes were stored
    with and the line among them (`first`: the replay's line number of their first line)."""
    if ts is None or error.line < first:  # the commands after the last round's quotes
        return f"the replayed tape's line {error.line}: skipped: {error.message}"
    held = next(reader.each_round(ts, ts), None)
    which = f"round at {iso_time(ts)}" if held is None else f"round {held.round} at {iso_time(ts)}"
    return f"{which}, line {error.line - first + 1} of its stored quotes: skipped: {error.message}"


def _value(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))[:120]


def print_summary(summary: ReplaySummary, out: TextIO) -> None:
    """The result in words: what was replayed, the counts, then each mismatch kept."""
    for line in summary.starts:
        print(f"replayed the {line}", file=out)
    for problem in summary.problems:
        print(f"not reproducible: {problem}", file=out)
    for m in summary.mismatches:
        fields = "; ".join(f"{f}: stored {_value(a)}, replayed {_value(b)}" for f, a, b in m.fields)
        other = m.revision is not None and m.revision != PRICING_REVISION
        kind = f"DIFFERS (pricing revision {m.revision})" if other else "MISMATCH"
        print(f"{kind} {m.market} round {m.round} at {iso_time(m.ts)}: {fields}", file=out)
    if summary.revision_rounds and not summary.other_revision:
        print(
            f"{summary.revision_rounds} round(s) were computed under pricing revision(s)"
            f" {', '.join(map(str, sorted(summary.revisions)))}: this oracled (revision"
            f" {PRICING_REVISION}) reproduces them",
            file=out,
        )
    if summary.mismatched + summary.other_revision > len(summary.mismatches):
        print(f"(the first {len(summary.mismatches)} differing reports shown)", file=out)
    print(
        f"compared {summary.rounds} round(s), {summary.reports} report(s): {summary.equal}"
        f" equal, {summary.mismatched} mismatch(es)"
        + (
            f", {summary.other_revision} differ in rounds computed under pricing revision(s)"
            f" {', '.join(map(str, sorted(summary.revisions)))} (this oracled prices under"
            f" {PRICING_REVISION}: CHANGELOG.md, Pricing revisions)"
            if summary.other_revision
            else ""
        )
        + (
            f"; {summary.unreproducible} round(s) not reproducible"
            if summary.unreproducible
            else ""
        )
        + (
            f"; {summary.skipped} stored line(s) unreadable, skipped (the replay ran without them)"
            if summary.skipped
            else ""
        )
        + (
            f"; {summary.unrecorded} round(s) without a recorded pricing revision"
            if summary.unrecorded
            else ""
        ),
        file=out,
    )


def cmd_replay(reader: AuditReader, args: Any, out: TextIO) -> int:
    """`oracled audit --replay`: the summary (or `--json`) on `out`; the exit code."""

    def skipped(where: str) -> None:  # each as met, as `oracled replay` says a skipped line
        print(f"{args.db}: {where}", file=sys.stderr)

    summary = replay_trail(
        reader, args.start, args.end, args.market, list(args.config or ()), skipped
    )
    if args.json:
        out.write(json.dumps(summary.as_dict(), indent=2) + "\n")
    else:
        if not summary.reports and not summary.problems:
            where = "" if args.market is None else f" holding {args.market}"
            print(f"no round{where} is stored in this window", file=out)
        print_summary(summary, out)
    return summary.exit_code()
