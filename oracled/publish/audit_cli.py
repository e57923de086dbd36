"""`oracled audit`: questions to the audit trail, answered from its SQLite database.

    oracled audit --db FILE                                  what the database holds
    oracled audit --db FILE --market BTC/USD [--from T] [--to T]
                                             status changes with their reasons and sources
    oracled audit --db FILE --market BTC/USD --at T          the full report in force at T
    oracled audit --db FILE --market BTC/USD --csv OUT       every round of the market as CSV
    oracled audit --db FILE --tape OUT [--from T] [--to T]   the stored inputs as a quote tape
    oracled audit --db FILE --verify --deployment NAME [--config FILE] [--signer ADDR]
                                             [--from T] [--to T]
                                             prove every stored round against its signature
    oracled audit --db FILE --replay [--config FILE ...] [--market M] [--from T] [--to T]
                  [--json]                   recompute the stored reports from the stored
                                             quotes and configs, compare them byte for byte

Times are milliseconds since the Unix epoch (13 digits; seconds are refused) or ISO 8601
(`2026-11-26T12:03`, UTC unless an offset is given). Databases of schema version 1 to 6
give the same answers; version 3 adds operator actions (manual pause, resume) and config loads
to the timeline and `--at`, version 4 the signed format of each round `--verify` checks,
version 5 the round each operator action first applied to, which `--tape` writes as a manual
command, version 6 the pricing revision of each round, which `--tape` names in its header.
"""

from __future__ import annotations

import argparse
import csv
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from oracled.errors import ConfigError, described, shown
from oracled.files import NotRegularFileError
from oracled.model import Report, market_name
from oracled.publish.audit import (
    AuditDataError,
    AuditReader,
    AuditSchemaError,
    ConfigLoad,
    OperatorAction,
    StoredReport,
)
from oracled.publish.audit import iso_time as _iso

if TYPE_CHECKING:  # the check (eth-account, coincurve) is imported only when a command needs it
    from oracled.publish.audit_verify import RoundCheck

__all__ = ["add_parser", "cmd_audit", "parse_time"]

_FAR_FUTURE = 1 << 62


def parse_time(text: str) -> int:
    """Milliseconds since the epoch from an integer or an ISO 8601 time (UTC if naive)."""
    text = text.strip()
    if text.isdigit():
        # 13 digits from 2001 to 2286; `date +%s` seconds would be read as a day in 1970
        if text != "0" and len(text.lstrip("0")) != 13:
            raise argparse.ArgumentTypeError(
                f"{shown(text)} is not milliseconds since the epoch (13 digits; seconds have 10, "
                "microseconds 16): give milliseconds or an ISO 8601 time"
            )
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{shown(text)} is neither milliseconds nor an ISO 8601 time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _market(text: str) -> str:
    """`--market`: `BTC/USD`, also as the API's paths write it (`BTC-USD`) or in lower case; the
    trail stores the canonical form."""
    name = market_name(text)
    if name is None:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a market name like BTC/USD")
    return name


def _address(text: str) -> str:
    """`--signer`: an Ethereum address (0x and 40 hex digits, any case); a typo would otherwise
    make every round a mismatch."""
    body = text.strip().removeprefix("0x")
    if len(body) != 40 or any(c not in "0123456789abcdefABCDEF" for c in body):
        raise argparse.ArgumentTypeError(f"{shown(text)} is not an address (0x and 40 hex digits)")
    return "0x" + body


def add_parser(sub: Any) -> None:
    """Add the `audit` subcommand to the CLI's subparsers."""
    p = sub.add_parser(
        "audit",
        help="query the audit trail: timelines, a report at a time (--at), CSV, quote tape,"
        " signatures (--verify), reports recomputed from the stored quotes (--replay)",
    )
    p.add_argument("--db", type=Path, required=True, help="audit database (audit.path)")
    p.add_argument("--market", type=_market, help="market symbol, e.g. BTC/USD or BTC-USD")
    p.add_argument("--from", dest="start", type=parse_time, default=0, help="window start")
    p.add_argument("--to", dest="end", type=parse_time, default=_FAR_FUTURE, help="window end")
    p.add_argument("--at", type=parse_time, help="show the market's full report in force then")
    p.add_argument("--csv", type=Path, help="write the market's rounds as CSV to this file")
    p.add_argument(
        "--tape",
        type=Path,
        help="write the stored quotes, and the manual pauses and resumes, as a quote tape",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="rebuild every stored round's Merkle root from its reports and recover its signer "
        "(exit 0 all signed rounds match, 1 no round, 2 bad request, 3 a mismatch, "
        "4 rounds not checkable: give --config or --deployment)",
    )
    p.add_argument(
        "--replay",
        action="store_true",
        help="recompute the window's reports from the trail's stored quotes, manual pauses and"
        " the configs of its starts and reloads, and compare them with the stored ones (exit 0"
        " all equal, 1 no round, 2 bad request, 3 a mismatch, else 4 rounds not reproducible:"
        " no stored text or file with the stored sha256, quotes missing, stored lines"
        " unreadable; else 5 reports of another pricing revision differ, every round"
        " replayed)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="with --replay: print the result as one JSON object",
    )
    p.add_argument(
        "--deployment",
        help="with --verify or --at: the deployment the rounds were signed for (the daemon's "
        "signing.deployment; default: --config's)",
    )
    p.add_argument(
        "--config",
        action="append",
        help="with --verify or --at: the daemon's config (the exponent of a market that had no "
        "price; its signing.deployment); with --replay, repeatable: the config files of the "
        "trail's starts and reloads whose text it does not keep, found by their sha256"
        " (default: the paths the trail names)",
    )
    p.add_argument(
        "--signer",
        action="append",
        type=_address,
        help="with --verify or --at: an address you trust (repeatable); a round by another key "
        "mismatches",
    )


def _sources(report: Report) -> str:
    parts = []
    for s in report.sources:
        name = s.id if s.via is None else f"{s.id} (via {s.via})"
        if s.used:
            parts.append(f"{name} {s.value} used")
        elif s.value is not None:
            parts.append(f"{name} {s.value} excluded ({s.reason})")
        else:
            parts.append(f"{name} {s.reason or 'no value'}")
    return "; ".join(parts)


def _line(report: Report) -> str:
    if report.price is not None:
        what = f"price {report.price} ±{report.confidence}"
    elif report.last_good_price is not None and report.last_good_ts is not None:
        what = f"no price (last good {report.last_good_price} at {_iso(report.last_good_ts)})"
    else:
        what = "no price"
    reasons = f" [{', '.join(report.reasons)}]" if report.reasons else ""
    return (
        f"{_iso(report.ts)}  round {report.round}  {report.status}{reasons}  {what}\n"
        f"    sources: {_sources(report)}"
    )


def _config_text(load: ConfigLoad) -> str:
    where = "" if load.path is None else f" {load.path}"
    text = f"config {load.event} by {load.actor}: sha256 {load.sha256}{where}"
    return text if load.event == "start" else f"{text} changes {load.changes}"


#: What a tape of the trail holds, by whether it holds the operator actions.
_HOLDS = {
    False: "a tape of this trail holds quotes only",
    True: "a tape holds quotes and manual commands",
}


def _action_text(action: OperatorAction) -> str:
    return f"operator {action.actor}: {action.action} {action.market}"


def _not_on_tape(
    reader: AuditReader, start: int, end: int, first_ts: int | None
) -> list[tuple[int, str]]:
    """What moved the window's stored reports besides what the tape holds, oldest first:
    reloads, a start after the tape's first round (`first_ts`: the restarted daemon numbered
    its rounds from 1 again, gates afresh), the operator actions of a trail before schema
    version 5 (which has no round for them: the tape cannot carry them), and the first round
    computed under another pricing revision than the tape's first (an upgrade: the header
    names one). A replay of the tape may differ from the first of them on (docs/publishing.md,
    `--tape`)."""
    events = []
    if not reader.actions_on_tape:
        events = [(a.ts, _action_text(a)) for a in reader.actions(None, start, end)]
    events += [
        (c.ts, _config_text(c))
        for c in reader.configs(start, end)
        if c.event != "start" or (first_ts is not None and c.ts > first_ts)
    ]
    change = reader.revision_change(start, end)
    if change is not None:
        ts, revision = change
        named = "no recorded revision" if revision is None else f"pricing revision {revision}"
        tape = reader.first_revision(start, end)
        told = "names none" if tape is None else f"names revision {tape}"
        events.append((ts, f"rounds computed under {named} from here (the tape's header {told})"))
    return sorted(events, key=lambda event: event[0])


def _events(reader: AuditReader, args: argparse.Namespace) -> list[tuple[int, str]]:
    """The market's operator actions and every config load in the window, in time order."""
    events = [(a.ts, _action_text(a)) for a in reader.actions(args.market, args.start, args.end)]
    events += [(c.ts, _config_text(c)) for c in reader.configs(args.start, args.end)]
    return sorted(events, key=lambda event: event[0])


def _timeline(reader: AuditReader, args: argparse.Namespace, out: TextIO) -> int:
    rounds, changes, shown = 0, 0, 0
    previous: tuple[str, tuple[str, ...]] | None = None
    events = _events(reader, args)
    for stored in reader.reports(args.market, args.start, args.end):
        rounds += 1
        report = stored.report
        while events and events[0][0] < report.ts:  # done before this round was computed
            ts, text = events.pop(0)
            print(f"{_iso(ts)}  {text}", file=out)
        state = (report.status, tuple(report.reasons))
        if state != previous:
            if previous is not None:
                changes += 1
            print(_line(report), file=out)
            shown += 1
            previous = state
    for ts, text in events:
        print(f"{_iso(ts)}  {text}", file=out)
    if not rounds:
        if next(iter(reader.reports(args.market, 0, _FAR_FUTURE)), None) is None:
            print(f"{args.market}: no round of this market is stored at all", file=out)
        else:
            print(f"{args.market}: no rounds stored in this window", file=out)
        return 1
    print(f"{args.market}: {rounds} round(s), {changes} change(s) of status or reasons", file=out)
    return 0


def _gap_warning(
    reader: AuditReader, market: str, at: int, found: Report, before: int | None
) -> str:
    """Why the report before `at` may not have been in force at `at`: no round is stored from it
    to the next one (a restart numbers rounds from 1 again, a dropped round skips a number), or
    it is the newest stored and `at` lies beyond the next round it would have had; else ''."""
    after = next(iter(reader.reports(market, found.ts + 1, _FAR_FUTURE)), None)
    if after is None:
        interval = None if before is None else found.ts - before
        if interval is not None and at < found.ts + 2 * interval:
            return ""
        return f"warning: nothing is stored after round {found.round} at {_iso(found.ts)}"
    if after.report.round == found.round + 1:
        return ""
    return (
        f"warning: nothing is stored from round {found.round} at {_iso(found.ts)} to round "
        f"{after.report.round} at {_iso(after.report.ts)}: the daemon was not running or its "
        "rounds were not written; this is the last report before that time, not one known "
        "to be in force then"
    )


def _at(reader: AuditReader, args: argparse.Namespace, out: TextIO) -> int:
    newest = reader.reports_before(args.market, args.at)
    found: StoredReport | None = next(newest, None)
    previous = next(newest, None)
    before: int | None = None  # the time of the round just before `found`, if consecutive
    if (
        found is not None
        and previous is not None
        and previous.report.round + 1 == found.report.round
    ):
        before = previous.report.ts
    if found is None:
        print(f"{args.market}: nothing stored at or before {_iso(args.at)}", file=out)
        return 1
    report = found.report
    print(f"{args.market} at {_iso(args.at)}: the report of round {report.round}", file=out)
    warning = _gap_warning(reader, args.market, args.at, report, before)
    if warning:
        print(warning, file=out)
    config = reader.config_at(report.ts)
    if config is not None:
        print(f"config in force: {_config_text(config)} at {_iso(config.ts)}", file=out)
    if found.revision is not None:  # the rules it was computed under (CHANGELOG.md)
        print(f"computed under pricing revision {found.revision}", file=out)
    action = reader.action_at(args.market, report.ts)
    if action is not None:
        print(f"last operator action: {_action_text(action)} at {_iso(action.ts)}", file=out)
    print(_line(report), file=out)
    for s in report.sources:
        verdict = "used" if s.used else f"excluded: {s.reason}"
        age = "-" if s.age_ms is None else f"{s.age_ms} ms"
        via = "" if s.via is None else f"  via {s.via}"
        print(
            f"    {s.id:<16} {s.pair:<12} {s.value or '-':>20}  weight {s.weight:g}  "
            f"age {age}  {verdict}{via}",
            file=out,
        )
    if found.signature is None:
        print("    not signed", file=out)
        return 0
    check = _check_at(reader, args, report)
    signature = f"0x{found.signature.hex()}"
    if check.verdict == "ok":
        print(f"    {_proves(report, check)}", file=out)
        print(f"    signed by {check.signer} (verified against the round): {signature}", file=out)
        print(f"    verified in signed format {check.format}", file=out)
        return 0
    if check.verdict == "unchecked":
        print(f"    signature {signature} not checked: {check.detail}", file=out)
        return 0
    print(f"    SIGNATURE MISMATCH: {check.detail} (signature {signature})", file=out)
    return 3


def _proves(report: Report, check: RoundCheck) -> str:
    """What of the report above a verified signature proves: its leaf's fields only, so that
    the reasons and sources printed with it are not taken for signed."""
    from oracled.publish.signed_formats import signs_mark

    mark = report.mark is not None and check.format is not None and signs_mark(check.format)
    return (
        f"the signature proves its status, price{',' if mark else ' and'} confidence"
        f"{' and mark' if mark else ''}; its reasons, sources and last good price are the"
        " trail's word"
    )


def _check_at(reader: AuditReader, args: argparse.Namespace, report: Report) -> RoundCheck:
    """The `--verify` check of the round `report` belongs to: a signer column is no proof."""
    from oracled.publish.audit_verify import (
        RoundCheck,
        check_round,
        deployment_of,
        exponents_of,
        trusted_check,
    )

    exponents = {} if args.config is None else exponents_of(args.config)[0]
    deployment = deployment_of(args)
    for stored, reports, unreadable in reader.round_reports(report.ts, report.ts):
        if stored.round == report.round:
            check = check_round(stored, reports, exponents, deployment, unreadable)
            return trusted_check(check, args.signer or ())
    return RoundCheck("unchecked", detail="its round row is gone")


def _csv(reader: AuditReader, args: argparse.Namespace) -> int:
    columns = [
        *("ts_ms", "time", "round", "market", "status", "reasons", "price", "confidence"),
        *("last_good_price", "last_good_ts", "sources_used", "sources", "signer", "signature"),
    ]
    rows = 0
    with args.csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for stored in reader.reports(args.market, args.start, args.end):
            r = stored.report
            writer.writerow(
                [
                    r.ts,
                    _iso(r.ts),
                    r.round,
                    r.market,
                    r.status,
                    " ".join(r.reasons),
                    r.price or "",
                    r.confidence or "",
                    r.last_good_price or "",
                    "" if r.last_good_ts is None else r.last_good_ts,
                    sum(1 for s in r.sources if s.used),
                    _sources(r),
                    stored.signer or "",
                    "" if stored.signature is None else "0x" + stored.signature.hex(),
                ]
            )
            rows += 1
    print(f"{args.csv}: {rows} round(s) of {args.market}", file=sys.stderr)
    return 0 if rows else 1


def _usage_problem(args: argparse.Namespace) -> str | None:
    """A combination of options one of which would be silently ignored, or a window that holds
    nothing by its bounds, or None."""
    window = args.start != 0 or args.end != _FAR_FUTURE
    if args.replay and (
        args.verify or args.at is not None or args.csv is not None or args.tape is not None
    ):
        return "--replay compares rounds: not with --verify, --at, --csv or --tape"
    if args.replay and (args.signer or args.deployment is not None):
        return "--signer and --deployment go with --verify or --at, not --replay"
    if args.json and not args.replay:
        return "--json goes with --replay"
    if not args.replay and args.config is not None and len(args.config) > 1:
        return "--config once with --verify or --at (repeat it with --replay only)"
    if args.verify and (args.at is not None or args.csv is not None or args.tape is not None):
        return "--verify checks rounds: not with --at, --csv or --tape"
    if not (args.verify or args.at is not None or args.replay) and args.config is not None:
        return "--config goes with --verify, --at or --replay"
    if not (args.verify or args.at is not None) and (args.signer or args.deployment is not None):
        return "--signer and --deployment go with --verify or --at"
    if args.market is None and (args.at is not None or args.csv is not None):
        return "--at and --csv are about one market: add --market"
    if args.at is not None and (window or args.csv is not None or args.tape is not None):
        return "--at shows one moment: not with --from, --to, --csv or --tape"
    if args.start > args.end:  # swapped: "no rounds stored" would say the trail has none
        return f"--from {_iso(args.start)} is after --to {_iso(args.end)}: the window is empty"
    if args.tape is not None and (args.csv is not None or args.market is not None):
        return (
            "--tape writes every market's quotes of the window (routes need the other "
            "markets): not with --market or --csv"
        )
    return None


def _overwrites_database(args: argparse.Namespace) -> str | None:
    """An output (`--tape`, `--csv`) that is the database or a file SQLite keeps beside it:
    opening it for writing would empty the trail, a live daemon's too."""
    flag, out = ("--tape", args.tape) if args.tape is not None else ("--csv", args.csv)
    if out is None:
        return None
    db = args.db.resolve()
    files = {db.with_name(db.name + end) for end in ("", "-wal", "-shm", "-journal", ".lock")}
    same = out.exists() and args.db.exists() and out.samefile(args.db)  # a hard link too
    if same or out.resolve() in files:
        return f"{flag} {out} is the database {args.db} or one of its files: nothing written"
    return None


def cmd_audit(args: argparse.Namespace) -> int:
    """Run `oracled audit`; 0 when something was found, 1 when not, 2 on a bad request
    (`--verify`: 3 when a round does not match its signature, 4 when some could not be checked;
    `--replay`: 3 a mismatch, else 4 rounds not reproducible, else 5 reports of another
    pricing revision differ)."""
    problem = _usage_problem(args) or _overwrites_database(args)
    if problem is not None:
        print(f"oracled audit: {problem}", file=sys.stderr)
        return 2
    if not args.replay:  # --verify and --at read one config
        args.config = None if args.config is None else args.config[0]
    try:
        reader = AuditReader(args.db)
    except (FileNotFoundError, AuditSchemaError) as exc:  # their messages name the file
        print(f"oracled audit: {exc}", file=sys.stderr)
        return 2
    except NotRegularFileError as exc:  # a FIFO, a device, a directory
        print(f"oracled audit: {args.db}: cannot read ({exc.strerror})", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:  # SQLite's verdict alone does not say which file
        print(f"oracled audit: {args.db}: {exc}", file=sys.stderr)
        return 2
    try:
        if args.verify:
            from oracled.publish.audit_verify import cmd_verify

            return cmd_verify(reader, args, sys.stdout)
        if args.replay:  # loads the core: imported only here
            from oracled.publish.audit_replay import cmd_replay

            return cmd_replay(reader, args, sys.stdout)
        if args.tape is not None:
            reader.check_round_times()  # a round in no window: its quotes left out unsaid
            with args.tape.open("wb") as out:
                quotes = reader.tape(out, args.start, args.end)
            print(f"{args.tape}: {quotes} quote(s)", file=sys.stderr)
            first = reader.first_quoted(args.start, args.end)  # where the tape's rounds begin
            moved = _not_on_tape(reader, args.start, args.end, None if first is None else first[1])
            if moved:
                print(
                    f"warning: {args.tape}: a replay may differ from the stored reports from"
                    f" {_iso(moved[0][0])} on: {moved[0][1]} ({_HOLDS[reader.actions_on_tape]};"
                    f" {len(moved)} such event(s) in the window, each in the timeline)",
                    file=sys.stderr,
                )
            return 0
        if args.market is None:
            span = reader.span()
            if span is None:
                print(f"{args.db}: empty", file=sys.stdout)
                return 1
            count = reader.round_count()
            print(f"{args.db}: {count} round(s) from {_iso(span[0])} to {_iso(span[1])}")
            return 0
        if args.csv is not None:
            return _csv(reader, args)
        if args.at is not None:
            return _at(reader, args, sys.stdout)
        return _timeline(reader, args, sys.stdout)
    except sqlite3.Error as exc:
        print(f"oracled audit: {args.db}: {exc}", file=sys.stderr)
        return 2
    except AuditDataError as exc:  # a row changed or damaged after it was written
        written = ""
        if args.tape is not None and exc.round is not None:  # found while writing OUT
            written = f" ({args.tape} holds the rounds before it)"
        where = (
            "" if exc.round is None or exc.ts is None else f"round {exc.round} at {_iso(exc.ts)}: "
        )
        print(f"oracled audit: {args.db}: {where}{exc.what}{written}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"oracled audit: --config: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of stdout went away: the command line's to answer
        raise
    except OSError as exc:  # OUT of --tape or --csv not written: not 1, which says "no round"
        flag, out = ("--tape", args.tape) if args.tape is not None else ("--csv", args.csv)
        if out is None or exc.filename not in (None, str(out)):  # another file's: not ours
            raise
        print(f"oracled audit: {flag} {out}: {exc.strerror or described(exc)}", file=sys.stderr)
        return 2
    finally:
        reader.close()
