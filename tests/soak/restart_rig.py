"""What a restart after `kill -9` is checked against: the audit trail it left, opened as the next
daemon opens it (test_restart.py, test_restart_fuzz.py)."""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from oracled.model import Report
from oracled.publish.audit import AuditReader

__all__ = ["first_live", "reports_after", "whole_rounds"]


def _lines(block: bytes | None) -> int:
    return 0 if block is None else zlib.decompress(block, wbits=-15).count(b"\n")


def whole_rounds(path: Path, markets: int) -> tuple[int, int]:
    """Open the trail as the next daemon would and check that it holds whole rounds only:
    every round row has all its reports (`markets` of them) and quotes, nothing points at a
    missing round, every report decodes. Returns (rounds, highest round id)."""
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        torn = db.execute(  # a round's quotes: one deflated block of tape lines (schema 2)
            "SELECT o.id, o.markets, o.quotes, "
            "(SELECT count(*) FROM reports r WHERE r.round_id = o.id), "
            "(SELECT t.lines FROM tapes t WHERE t.round_id = o.id) FROM rounds o"
        ).fetchall()
        assert [row for row in torn if row[1] != row[3] or row[2] != _lines(row[4])] == []
        for table in ("reports", "tapes", "transitions"):
            orphans = db.execute(
                f"SELECT count(*) FROM {table} WHERE round_id NOT IN (SELECT id FROM rounds)"
            ).fetchone()
            assert orphans == (0,), table
        count, last = db.execute("SELECT count(*), max(id) FROM rounds").fetchone()
    finally:
        db.close()
    if count:
        reader = AuditReader(path)
        try:
            span = reader.span()
            assert span is not None
            decoded = sum(1 for _ in reader.report_lines(*span))
        finally:
            reader.close()
        assert decoded == count * markets
    return int(count), int(last or 0)


def reports_after(
    path: Path, round_id: int, markets: Iterable[str], upto: int | None = None
) -> Iterator[tuple[int, Report]]:
    """(round id, report) of each of `markets` for the rounds after `round_id` (up to round id
    `upto`, if given), market by market, in round order."""
    last = 2**62 if upto is None else upto
    db = sqlite3.connect(path)
    try:
        window = "FROM rounds WHERE id > ? AND id <= ?"
        (first_ts,) = db.execute(f"SELECT min(ts) {window}", (round_id, last)).fetchone()
        ids = {ts: rid for rid, ts in db.execute(f"SELECT id, ts {window}", (round_id, last))}
    finally:
        db.close()
    if first_ts is None:
        return
    reader = AuditReader(path)
    try:
        for market in sorted(markets):
            for stored in reader.reports(market, first_ts, max(ids)):
                yield ids[stored.report.ts], stored.report
    finally:
        reader.close()


def first_live(rows: Sequence[tuple[int, Report]], quorum: int, resume_rounds: int) -> int | None:
    """The index of a market's first live report among `rows` (its stored reports of one run,
    in round order), checked to start safe: it ends a run of `resume_rounds` rounds with a
    quorum of used sources, so its round number is at least `resume_rounds` (a run numbers its
    rounds from 1) and each stored report of those rounds has the quorum (a round the loop
    computed late is counted by the gates, as a replay counts it, but not stored: the trail
    cannot show it); every live one has its quorum and a price, no paused or unknown one has a
    price. None if none is live."""
    market = rows[0][1].market if rows else None
    statuses = [r.status for _, r in rows]
    used = [sum(s.used for s in r.sources) for _, r in rows]
    numbers = [r.round for _, r in rows]
    live = [i for i, s in enumerate(statuses) if s in ("active", "degraded")]
    assert all(r.price is None for _, r in rows if r.status in ("paused", "unknown")), market
    if not live:
        return None
    start = live[0]
    last = numbers[start]
    assert last >= resume_rounds, (market, list(zip(numbers, statuses, strict=True))[: start + 1])
    streak = [i for i, n in enumerate(numbers) if last - resume_rounds < n <= last]
    assert all(used[i] >= quorum for i in streak), (market, used[: start + 1])
    assert all(used[i] >= quorum for i in live), market
    assert all(rows[i][1].price is not None for i in live), market
    return start
