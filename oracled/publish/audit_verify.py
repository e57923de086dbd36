"""`oracled audit --verify`: prove the stored rounds from the trail alone, or find what was changed.

The `rounds` table keeps each signed round's Merkle root, signature and signer; the `reports`
table keeps every market's report. None of those columns is evidence by itself: anyone who can
write the file can change a price, a status or the signer's address. This check trusts none of
them. For every stored round it rebuilds the leaves from the stored reports (status, price and
confidence at the market's exponent, and a perpetual's mark and its mode), folds them into the
root, recovers the address that made the stored signature over that root, and compares both
with what the round row says. The
signature is checked in the domain of the deployment the auditor names (`--deployment`, or the
`signing.deployment` of `--config`), never one the trail says: a round signed by the same key for
another deployment (staging) then does not recover the trail's signer.

Each round is checked in the signed format that signed it (signed_formats.py): the one the trail
recorded with its signature (schema version 4), else format 1, the only one released before the
trail recorded them. The column only chooses the domain and the leaves; the signature must still
recover the signer in it, so a format changed afterwards makes a mismatch, not a pass.

The exponent of a market is read from the report's own decimal strings (price, confidence, last
good price, a source's value: all are written at the market's places); a market with none of
them in a round (no quote since the start) needs it from the config (`--config`). A CLI mode only:
nothing here runs in the daemon.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TextIO

from oracled.model import Report
from oracled.publish.audit import AuditReader, AuditRound
from oracled.publish.audit import iso_time as _iso
from oracled.publish.signed_formats import (
    FORMAT_UNRECORDED,
    FORMATS,
    format_digest,
    needs_deployment,
    signs_mark,
)
from oracled.publish.signer import (
    MARK_MODES,
    STATUS_CODES,
    Leaf,
    SignatureError,
    decimal_to_int,
    leaf_hash,
    merkle_levels,
    recover_signer,
)

__all__ = [
    "EXIT_EMPTY",
    "EXIT_MISMATCH",
    "EXIT_OK",
    "EXIT_UNCHECKED",
    "RoundCheck",
    "VerifySummary",
    "check_round",
    "cmd_verify",
    "config_note",
    "deployment_of",
    "exponents_of",
    "format_of",
    "in_order",
    "print_summary",
    "trusted_check",
    "verify_trail",
]

EXIT_OK: Final = 0  # every signed round in range matched (unsigned ones are only counted)
EXIT_EMPTY: Final = 1  # no round in range
EXIT_MISMATCH: Final = 3  # at least one round is not what its signature says
EXIT_UNCHECKED: Final = 4  # no mismatch, but some signed rounds could not be rebuilt
_SHOWN: Final = 5  # mismatched and unchecked rounds listed in full


@dataclass(frozen=True, slots=True)
class RoundCheck:
    """The verdict on one stored round: `ok`, `unsigned`, `mismatch` or `unchecked`."""

    verdict: str
    signer: str | None = None  # recovered from the signature, when it recovers
    detail: str = ""
    format: int | None = None  # the signed format it was checked in (None: not signed)


def _decimals(text: str) -> int:
    return len(text.partition(".")[2])


def _exponent(report: Report, configured: Mapping[str, int]) -> int | None:
    """The market's exponent in this round: from any decimal string of the report, which the
    daemon writes at the market's places, else the config's; None when neither has it."""
    for text in (report.price, report.confidence, report.last_good_price):
        if text is not None:
            return -_decimals(text)
    for source in report.sources:
        if source.value is not None:
            return -_decimals(source.value)
    return configured.get(report.market)


def _leaf(report: Report, expo: int, fmt: int) -> Leaf:
    """The leaf the daemon signed for this report in signed format `fmt`; ValueError if the
    report cannot be one.

    From format 3, a report with a `mark` object is a perpetual market's: its leaf is a
    `PerpPrice`, with the mark price and the mode that made it (none without a price; perps when
    the perpetual median estimator had a value; the fallback otherwise), read from the same
    stored object. Formats 1 and 2 signed every market's leaf as a `Price`.
    """
    code = STATUS_CODES.get(report.status)
    if code is None:
        raise ValueError(f"{report.market}: unknown status {report.status!r}")
    price = confidence = 0
    if report.status in ("active", "degraded"):
        if report.price is None or report.confidence is None:
            raise ValueError(f"{report.market}: {report.status} without a price")
        price = decimal_to_int(report.price, -expo)
        confidence = decimal_to_int(report.confidence, -expo)
    if report.mark is None or not signs_mark(fmt):
        return Leaf(report.market, report.ts, code, price, confidence, expo)
    if report.mark.price is None:
        mark, mode = 0, "none"
    else:
        mark = decimal_to_int(report.mark.price, -expo)
        mode = "perps" if report.mark.estimators.perp_median is not None else "fallback"
    mode_code = MARK_MODES.index(mode)
    return Leaf(report.market, report.ts, code, price, confidence, expo, mark, mode_code)


NO_DEPLOYMENT: Final = (
    "no deployment to check the signature in: give --deployment (or a --config with "
    "signing.deployment)"
)


def format_of(stored: AuditRound) -> int:
    """The signed format to check a round in: the trail's record, else format 1."""
    return FORMAT_UNRECORDED if stored.format is None else stored.format


def check_round(
    stored: AuditRound,
    reports: list[Report],
    configured: Mapping[str, int],
    deployment: str | None,
    unreadable: Sequence[str] = (),
) -> RoundCheck:
    """Rebuild one round's root from its reports in the signed format that signed it and recover
    its signer in that format's domain for `deployment` (None: a round of a format that names a
    deployment is not checked); see the module doc. `unreadable` names the round's stored
    reports that do not read back: a signed round with one is a mismatch, since what it holds is
    no longer what was signed."""
    if stored.signature is None:
        return RoundCheck("unsigned")
    if unreadable:
        return RoundCheck("mismatch", detail="; ".join(unreadable), format=format_of(stored))
    fmt = format_of(stored)
    check = _check_signed(stored, stored.signature, reports, configured, deployment, fmt)
    if check.verdict == "mismatch" and stored.format is None:
        detail = f"{check.detail} (checked in signed format 1: the trail did not record one"
        later = _verifies_in(stored, stored.signature, reports, configured, deployment)
        if later is not None:  # a hint only: the round stays a mismatch
            detail += (
                f"; it would verify in signed format {later}, which no release signed in "
                "without recording it"
            )
        return RoundCheck("mismatch", check.signer, detail + ")", fmt)
    return check


def _verifies_in(
    stored: AuditRound,
    signature: bytes,
    reports: list[Report],
    configured: Mapping[str, int],
    deployment: str | None,
) -> int | None:
    """The later format a round stored without one would verify in, if any: a build between
    releases signed it (or the round was copied in), which is worth telling apart from a
    forgery even though it is not proved."""
    for fmt in FORMATS[1:]:
        if _check_signed(stored, signature, reports, configured, deployment, fmt).verdict == "ok":
            return fmt
    return None


def _check_signed(
    stored: AuditRound,
    signature: bytes,
    reports: list[Report],
    configured: Mapping[str, int],
    deployment: str | None,
    fmt: int,
) -> RoundCheck:
    if fmt > FORMATS[-1]:
        detail = f"signed format {fmt} is newer than this oracled knows: verify with its release"
        return RoundCheck("unchecked", detail=detail, format=fmt)
    if fmt < FORMATS[0]:
        return RoundCheck("mismatch", detail=f"no signed format {fmt} exists", format=fmt)
    if needs_deployment(fmt) and not deployment:
        return RoundCheck("unchecked", detail=NO_DEPLOYMENT, format=fmt)
    if stored.root is None or len(stored.root) != 32:
        return RoundCheck("mismatch", detail="signature stored without a 32-byte root", format=fmt)
    try:
        digest = format_digest(
            fmt, stored.ts, stored.round, stored.markets, stored.root, deployment
        )
        recovered = recover_signer(digest, signature)
    except SignatureError as exc:
        detail = f"the stored signature does not recover ({exc})"
        return RoundCheck("mismatch", detail=detail, format=fmt)
    problems = []
    if recovered.lower() != (stored.signer or "").lower():
        problems.append(f"signer column says {stored.signer}, the signature is by {recovered}")
    if len(reports) != stored.markets:
        problems.append(f"{len(reports)} report(s) stored for a round of {stored.markets}")
    leaves = []
    missing = []
    for report in reports:
        expo = _exponent(report, configured)
        if expo is None:
            missing.append(report.market)
            continue
        try:
            leaves.append(_leaf(report, expo, fmt))
        except ValueError as exc:
            problems.append(f"report not signable: {exc}")
    if missing and not problems:
        names = f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
        where = "not a market of --config" if configured else "give --config"
        return RoundCheck(
            "unchecked",
            recovered,
            f"no exponent for {names} (no decimal in its report): {where}",
            fmt,
        )
    if not problems and leaves:
        root = merkle_levels([leaf_hash(leaf) for leaf in leaves])[-1][0]
        if root != stored.root:
            problems.append(
                "the stored reports do not give the signed root: a status or price was changed"
            )
    if problems:
        return RoundCheck("mismatch", recovered, "; ".join(problems), fmt)
    return RoundCheck("ok", recovered, format=fmt)


def trusted_check(check: RoundCheck, signers: Iterable[str]) -> RoundCheck:
    """`check`, made a mismatch when it holds and `signers` (`--signer`) does not list the key
    that signed: whoever rewrote the reports could sign them again with a key of their own."""
    trusted = {s.lower() for s in signers}
    if check.verdict == "ok" and trusted and (check.signer or "").lower() not in trusted:
        detail = f"signed by {check.signer}, not by a --signer"
        return RoundCheck("mismatch", check.signer, detail, check.format)
    return check


def in_order(check: RoundCheck, stored: AuditRound, newest: dict[str, AuditRound]) -> RoundCheck:
    """`check`, made a mismatch when its key signed a round stored before it at the same or a
    later time: a key signs each round time once and in time order (its signing floor, the
    lease), so among one key's rounds in the trail's order the times grow; a row that breaks
    that was copied (within the trail, or from another trail of the key) or moved. `newest`
    holds each key's last round in order, updated here."""
    if check.verdict != "ok" or check.signer is None:
        return check
    key = check.signer.lower()
    before = newest.get(key)
    if before is not None and stored.ts <= before.ts:
        detail = (
            f"stored after round {before.round} at {_iso(before.ts)}, which the same key signed:"
            " a key signs each round time once and in time order, so this row is a copy or was"
            " moved"
        )
        return RoundCheck("mismatch", check.signer, detail, check.format)
    newest[key] = stored
    return check


@dataclass(slots=True)
class _Gaps:
    """The rounds missing between two stored rounds of one run: the round number goes up by
    more than one and the time by as many round intervals (the interval is learnt from the
    last two consecutive rounds seen; a restart numbers from 1 again and is no gap)."""

    last: AuditRound | None = None
    step: int | None = None

    def see(self, stored: AuditRound) -> tuple[AuditRound, AuditRound] | None:
        before, self.last = self.last, stored
        if before is None:
            return None
        rounds, ms = stored.round - before.round, stored.ts - before.ts
        if rounds == 1 and ms > 0:
            self.step = ms
        elif rounds > 1 and self.step is not None and ms == rounds * self.step:
            return before, stored
        return None


@dataclass(slots=True)
class VerifySummary:
    """Counts over the rounds checked, with the first few that failed."""

    rounds: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    signers: Counter[str] = field(default_factory=Counter)  # recovered, of matching rounds
    formats: Counter[int] = field(default_factory=Counter)  # signed formats of matching rounds
    untrusted: int = 0  # matching rounds by a key outside --signer
    #: the first few rounds of each verdict but `ok`, with what was found
    shown: dict[str, list[tuple[AuditRound, RoundCheck]]] = field(default_factory=dict)
    first: int | None = None
    last: int | None = None
    absent: int = 0  # rounds missing between two stored rounds of a run
    #: the gaps (the stored rounds on either side), the first few listed in full
    gaps: list[tuple[AuditRound, AuditRound]] = field(default_factory=list)
    gap_count: int = 0
    #: mismatched rounds whose signature recovered an address other than their signer column
    other_signer: int = 0

    def add_gap(self, before: AuditRound, after: AuditRound) -> None:
        self.absent += after.round - before.round - 1
        self.gap_count += 1
        if len(self.gaps) < _SHOWN:
            self.gaps.append((before, after))

    def add(self, stored: AuditRound, check: RoundCheck) -> None:
        self.rounds += 1
        self.first = stored.ts if self.first is None else self.first
        self.last = stored.ts
        self.verdicts[check.verdict] += 1
        if check.verdict == "ok" and check.signer is not None:
            self.signers[check.signer] += 1
        if check.verdict == "ok" and check.format is not None:
            self.formats[check.format] += 1
        recovered = (check.signer or "").lower()
        if check.verdict == "mismatch" and recovered not in ("", (stored.signer or "").lower()):
            self.other_signer += 1
        if check.verdict != "ok":
            shown = self.shown.setdefault(check.verdict, [])
            if len(shown) < _SHOWN:
                shown.append((stored, check))

    def exit_code(self) -> int:
        if not self.rounds:
            return EXIT_EMPTY
        if self.verdicts["mismatch"]:
            return EXIT_MISMATCH
        return EXIT_UNCHECKED if self.verdicts["unchecked"] else EXIT_OK


def verify_trail(
    reader: AuditReader,
    start_ms: int,
    end_ms: int,
    *,
    market: str | None = None,
    exponents: Mapping[str, int] | None = None,
    signers: Iterable[str] = (),
    deployment: str | None = None,
) -> VerifySummary:
    """Check every stored round in the window (with `market`, the rounds that hold it) in the
    domain of `deployment` (without one, signed rounds are counted as not checked);
    AuditDataError if a round row's time is in no window."""
    reader.check_round_times()  # a round moved out of every window is checked in none
    trusted = list(signers)
    summary = VerifySummary()
    gaps = _Gaps()
    newest: dict[str, AuditRound] = {}
    for stored, reports, unreadable in reader.round_reports(start_ms, end_ms):
        gap = gaps.see(stored)
        if gap is not None:
            summary.add_gap(*gap)
        check = check_round(stored, reports, exponents or {}, deployment, unreadable)
        if (
            market is not None
            and all(r.market != market for r in reports)
            and not unreadable
            and len(reports) == stored.markets  # one lost or moved away may have been it
            # the market count is a column too: a signed round is without the market only
            # once its signature (over the count and every leaf) says so
            and check.verdict != "mismatch"
        ):
            continue
        check = in_order(check, stored, newest)
        summary.add(stored, trusted_check(check, trusted))
    return summary


def print_summary(summary: VerifySummary, out: TextIO) -> None:
    """The report an auditor reads: counts, the keys that signed, the first rounds that failed."""
    if summary.first is None or summary.last is None:
        print("no round stored in this window", file=out)
        return
    v = summary.verdicts
    print(
        f"{summary.rounds} round(s) checked from {_iso(summary.first)} to {_iso(summary.last)}: "
        f"{v['ok']} signed and matching, {v['unsigned']} unsigned, {v['mismatch']} mismatched, "
        f"{v['unchecked']} not checked",
        file=out,
    )
    for signer, count in summary.signers.most_common():
        print(f"    signed by {signer}: {count} round(s)", file=out)
    for fmt, count in sorted(summary.formats.items()):
        print(f"    verified in signed format {fmt}: {count} round(s)", file=out)
    if summary.absent:
        print(
            f"absent: {summary.absent} round(s) in {summary.gap_count} gap(s) of a run: not in the"
            " trail (dropped from a full queue, oracled_audit_dropped_rounds_total; computed late"
            " by a blocked loop, oracled_rounds_caught_up_total; or deleted)",
            file=out,
        )
        for before, after in summary.gaps:
            missing = after.round - before.round - 1
            which = (
                f"round {before.round + 1}"
                if missing == 1
                else (f"round {before.round + 1} to {after.round - 1}")
            )
            print(
                f"absent: {which} ({missing} round{'s' if missing > 1 else ''}) between round"
                f" {before.round} at {_iso(before.ts)} and round {after.round} at"
                f" {_iso(after.ts)}",
                file=out,
            )
        if summary.gap_count > len(summary.gaps):
            print(f"absent: ... and {summary.gap_count - len(summary.gaps)} more gap(s)", file=out)
    for verdict in ("mismatch", "unchecked", "unsigned"):
        shown = summary.shown.get(verdict, [])
        for stored, check in shown:
            what = check.detail or "no signature stored: its reports are the trail's word only"
            print(f"{verdict}: round {stored.round} at {_iso(stored.ts)}: {what}", file=out)
        if v[verdict] > len(shown):
            print(f"{verdict}: ... and {v[verdict] - len(shown)} more", file=out)


def exponents_of(config_path: str) -> tuple[dict[str, int], str]:
    """Each configured market's exponent (`--config`) and the sha256 of the file's text, as the
    trail records a config the daemon loaded; ConfigError if the file cannot be used."""
    from oracled.config import read_config

    cfg, sha256 = read_config(config_path)
    return {m.symbol: m.price_exponent for m in cfg.markets}, sha256


def deployment_of(args: argparse.Namespace) -> str | None:
    """The deployment to check signatures in: `--deployment`, else `--config`'s
    `signing.deployment`, else None. Never the trail's: it is the auditor's to name."""
    if args.deployment is not None:
        return str(args.deployment)
    if args.config is None:
        return None
    from oracled.config import read_config

    return read_config(args.config)[0].signing.deployment


def config_note(reader: AuditReader, path: str, sha256: str) -> str:
    """A line when the trail recorded the configs the daemon loaded (schema 3) and `--config` is
    none of them: its exponents may not be the ones the daemon signed with; else ''."""
    loaded = reader.configs(0, 1 << 62)
    if not loaded or any(c.sha256 == sha256 for c in loaded):
        return ""
    return (
        f"note: --config {path} (sha256 {sha256[:12]}...) is none of the {len(loaded)} config(s) "
        "this trail recorded the daemon loading: an exponent taken from it may not be the one "
        "signed (a mismatch then is the file's, not the trail's)"
    )


def cmd_verify(reader: AuditReader, args: argparse.Namespace, out: TextIO) -> int:
    """`oracled audit --verify`: the summary on `out`, exit code as in the module constants."""
    exponents: dict[str, int] = {}
    if args.config is not None:
        exponents, sha256 = exponents_of(args.config)
        note = config_note(reader, args.config, sha256)
        if note:
            print(note, file=out)
    summary = verify_trail(
        reader,
        args.start,
        args.end,
        market=args.market,
        exponents=exponents,
        signers=args.signer or (),
        deployment=deployment_of(args),
    )
    if args.market is not None and not summary.rounds:
        print(f"{args.market}: no round that holds it is stored in this window", file=out)
    else:
        print_summary(summary, out)
        note = deployment_note(summary, deployment_of(args))
        if note:
            print(note, file=out)
    return summary.exit_code()


def deployment_note(summary: VerifySummary, deployment: str | None) -> str:
    """A line when no signed round matched and every mismatch is a signature recovering another
    address than its signer column: what a deployment other than the daemon's gives for every
    round, a typo of the auditor's as likely as a trail rewritten whole; else ''."""
    mismatched = summary.verdicts["mismatch"]
    if deployment is None or summary.verdicts["ok"] or not mismatched:
        return ""
    if summary.other_signer != mismatched:
        return ""
    return (
        f"note: no signed round matched, and every signature recovers another address than its"
        f" signer column in the deployment {deployment!r}: so does every round signed for another"
        " deployment. Check the name against the daemon's signing.deployment (GET /v1/info, its"
        " start-up log) before taking the trail as rewritten"
    )
