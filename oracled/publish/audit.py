"""The audit trail: every round's inputs and outputs, appended to an embedded SQLite database.

What is kept, per round: the quotes that reached the core since the previous round (the inputs,
as quote-tape lines), every market's full report (each source's value, used or excluded and why,
the status and its reasons, the price), the status transitions, and the round's signature when
signing is on. That answers "why was this price what it was" and "why was it paused at 12:03"
(`oracled audit`), and the stored quotes make a tape that replays to the stored reports.

Writes never hold up a round: the round loop hands the `RoundResult` and the quote buffer to a
bounded queue (`submit` never blocks; a full queue drops the round and counts it), and one worker
thread builds the reports, encodes them (msgpack) and writes a batch of rounds per transaction.
SQLite runs in WAL mode, one transaction per batch, so a process killed at any moment leaves
whole rounds only. A failing database (full disk, read-only directory) is logged once per state
change, counted (`oracled_audit_write_errors_total`) and retried every few seconds; prices go on.

Retention: rounds older than `retention_days` are deleted, and the oldest rounds go while the
data is above `max_bytes` (SQLite reuses the freed pages, so the file stops growing there).
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

import msgspec
import structlog

from oracled.config import AuditConfig
from oracled.model import Quote, Report
from oracled.tape import header_line, quote_to_line

if TYPE_CHECKING:
    from oracled.core import RoundResult
    from oracled.publish.signer import SignedRound

__all__ = ["AuditReader", "AuditRound", "AuditStats", "AuditTrail", "StoredReport"]

SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    round INTEGER NOT NULL,
    markets INTEGER NOT NULL,
    quotes INTEGER NOT NULL,
    root BLOB,
    signature BLOB,
    signer TEXT
);
CREATE INDEX IF NOT EXISTS rounds_ts ON rounds (ts);
CREATE TABLE IF NOT EXISTS reports (
    round_id INTEGER NOT NULL,
    pos INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    market TEXT NOT NULL,
    status TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (round_id, pos)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reports_market_ts ON reports (market, ts);
CREATE TABLE IF NOT EXISTS quotes (
    round_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    line BLOB NOT NULL,
    PRIMARY KEY (round_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS transitions (
    round_id INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    market TEXT NOT NULL,
    old TEXT NOT NULL,
    new TEXT NOT NULL,
    reasons TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_market_ts ON transitions (market, ts);
"""
_RETRY_S: Final = 5.0  # a failed database is tried again after this long
_RETENTION_EVERY_S: Final = 30.0
_STOP: Final = object()

_encoder = msgspec.msgpack.Encoder()
_report_decoder = msgspec.msgpack.Decoder(Report)


@dataclass(slots=True)
class AuditStats:
    """Plain counters read by the metrics collector at scrape time."""

    rounds: int = 0  # rounds written
    dropped: int = 0  # rounds dropped because the queue was full
    write_errors: int = 0  # rounds lost to a database error
    ok: bool = False  # the last open/write succeeded
    last_error: str | None = None
    queued: int = 0  # rounds waiting for the worker
    bytes: int = 0  # data in the database (pages in use), after the last retention check


@dataclass(frozen=True, slots=True)
class _Item:
    result: RoundResult
    quotes: list[Quote]


@dataclass(frozen=True, slots=True)
class _Signed:
    ts: int
    round: int
    root: bytes
    signature: bytes
    signer: str


def _connect(path: Path, page_limit: int | None) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable against a killed process
        if page_limit is not None:
            db.execute(f"PRAGMA max_page_count={int(page_limit)}")
        db.executescript(_SCHEMA)
        db.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
        )
    except sqlite3.Error:
        db.close()
        raise
    return db


class AuditTrail:
    """The writer: `add_quote` and `submit` on the event loop, a worker thread does the rest."""

    def __init__(self, cfg: AuditConfig, *, page_limit: int | None = None) -> None:
        self.cfg = cfg
        self.path = Path(cfg.path)
        self.stats = AuditStats()
        self._page_limit = page_limit  # tests: SQLite's own "database or disk is full"
        self._queue: queue.Queue[object] = queue.Queue(cfg.queue)
        self._quotes: list[Quote] = []
        self._db: sqlite3.Connection | None = None
        self._retry_at = 0.0
        self._retention_at = 0.0
        self._retention_every_s = _RETENTION_EVERY_S
        self._dropping = False
        self._thread = threading.Thread(target=self._work, name="oracled-audit", daemon=True)
        self._log = structlog.get_logger("oracled").bind(component="audit")

    # -- the event-loop side ------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def add_quote(self, quote: Quote) -> None:
        """Keep a quote for the next round's inputs (the service's quote hook)."""
        self._quotes.append(quote)

    def submit(self, result: RoundResult) -> None:
        """Hand a round and its inputs to the worker; never blocks (a full queue drops it)."""
        quotes, self._quotes = self._quotes, []
        try:
            self._queue.put_nowait(_Item(result, quotes))
        except queue.Full:
            self.stats.dropped += 1
            if not self._dropping:
                self._dropping = True
                self._log.error(
                    "audit queue full: rounds are dropped from the trail",
                    queue=self.cfg.queue,
                    round=result.round,
                )
            return
        if self._dropping:
            self._dropping = False
            self._log.warning("audit queue has room again", dropped_total=self.stats.dropped)
        self.stats.queued = self._queue.qsize()

    def submit_signed(self, signed: SignedRound) -> None:
        """Attach a round's signature (it arrives after the round, from the signer thread)."""
        item = _Signed(signed.ts, signed.round, signed.root, signed.signature, signed.signer)
        with contextlib.suppress(queue.Full):  # the round itself was dropped too, then
            self._queue.put_nowait(item)

    def close(self, timeout_s: float = 3.0) -> None:
        """Write what is queued (within `timeout_s`) and stop the worker."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)

    # -- the worker thread --------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.cfg.batch_rounds:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in batch)
            items = [item for item in batch if item is not _STOP]
            if items:
                self._write(items)
            self.stats.queued = self._queue.qsize()
            if stop:
                if self._db is not None:
                    self._db.close()
                    self._db = None
                return

    def _open(self) -> sqlite3.Connection | None:
        if self._db is not None:
            return self._db
        if time.monotonic() < self._retry_at:
            return None
        try:
            self._db = _connect(self.path, self._page_limit)
        except sqlite3.Error as exc:
            self._failed(exc, "open")
            return None
        return self._db

    def _write(self, items: list[object]) -> None:
        rounds = sum(1 for item in items if isinstance(item, _Item))
        db = self._open()
        if db is None:
            self.stats.write_errors += rounds
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            for item in items:
                if isinstance(item, _Item):
                    self._insert(db, item)
                elif isinstance(item, _Signed):
                    db.execute(
                        "UPDATE rounds SET root = ?, signature = ?, signer = ? "
                        "WHERE id = (SELECT max(id) FROM rounds WHERE ts = ? AND round = ?)",
                        (item.root, item.signature, item.signer, item.ts, item.round),
                    )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            self.stats.write_errors += rounds
            self._failed(exc, "write")
            return
        self.stats.rounds += rounds
        if not self.stats.ok:
            self.stats.ok, self.stats.last_error = True, None
            self._log.info("audit trail writing", path=str(self.path))
        if time.monotonic() >= self._retention_at:
            self._retention(db)

    def _insert(self, db: sqlite3.Connection, item: _Item) -> None:
        result = item.result
        cur = db.execute(
            "INSERT INTO rounds (ts, round, markets, quotes) VALUES (?, ?, ?, ?)",
            (result.ts, result.round, len(result.layout.markets), len(item.quotes)),
        )
        round_id = cur.lastrowid
        reports = result.reports()
        db.executemany(
            "INSERT INTO reports (round_id, pos, ts, market, status, body) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                (round_id, i, r.ts, r.market, r.status, _encoder.encode(r))
                for i, r in enumerate(reports)
            ],
        )
        if item.quotes:
            db.executemany(
                "INSERT INTO quotes (round_id, seq, line) VALUES (?, ?, ?)",
                [(round_id, i, quote_to_line(q)) for i, q in enumerate(item.quotes)],
            )
        if result.transitions:
            db.executemany(
                "INSERT INTO transitions (round_id, ts, market, old, new, reasons) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (round_id, result.ts, t.market, t.old, t.new, ",".join(t.reasons))
                    for t in result.transitions
                ],
            )

    def _failed(self, exc: sqlite3.Error, stage: str) -> None:
        message = f"{stage}: {exc}"
        if self.stats.ok or self.stats.last_error != message:
            self._log.error(
                "audit trail not written; prices go on without it",
                path=str(self.path),
                error=message,
                retry_s=_RETRY_S,
            )
        self.stats.ok, self.stats.last_error = False, message
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        self._retry_at = time.monotonic() + _RETRY_S

    def _retention(self, db: sqlite3.Connection) -> None:
        """Delete rounds past the age limit, then the oldest while above the size limit."""
        self._retention_at = time.monotonic() + self._retention_every_s
        try:
            if self.cfg.retention_days > 0:
                (newest,) = db.execute("SELECT max(ts) FROM rounds").fetchone()
                if newest is not None:
                    cutoff = newest - int(self.cfg.retention_days * 86_400_000)
                    (keep,) = db.execute(
                        "SELECT min(id) FROM rounds WHERE ts >= ?", (cutoff,)
                    ).fetchone()
                    if keep is not None:
                        self._delete_before(db, keep)
            used = self._used_bytes(db)
            while self.cfg.max_bytes and used > self.cfg.max_bytes:
                first, last = db.execute("SELECT min(id), max(id) FROM rounds").fetchone()
                if first is None or first >= last:
                    break
                # a tenth of the rounds at a time: each pass frees pages for the next batches
                self._delete_before(db, first + max(1, (last - first) // 10))
                used = self._used_bytes(db)
            self.stats.bytes = used
        except sqlite3.Error as exc:
            self._failed(exc, "retention")

    @staticmethod
    def _delete_before(db: sqlite3.Connection, round_id: int) -> None:
        db.execute("BEGIN IMMEDIATE")
        for table in ("reports", "quotes", "transitions"):
            db.execute(f"DELETE FROM {table} WHERE round_id < ?", (round_id,))
        db.execute("DELETE FROM rounds WHERE id < ?", (round_id,))
        db.execute("COMMIT")

    @staticmethod
    def _used_bytes(db: sqlite3.Connection) -> int:
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        (free,) = db.execute("PRAGMA freelist_count").fetchone()
        (size,) = db.execute("PRAGMA page_size").fetchone()
        return int((pages - free) * size)


# -- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditRound:
    id: int
    ts: int
    round: int
    markets: int
    quotes: int
    signature: bytes | None
    signer: str | None
    root: bytes | None


@dataclass(frozen=True, slots=True)
class StoredReport:
    """One market's report of one round, with the round's signature if it was signed."""

    report: Report
    body: bytes  # the stored msgpack, decoded into `report`
    signer: str | None
    signature: bytes | None


class AuditReader:
    """Read-only queries over an audit database (the `oracled audit` command, tests)."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such audit database")
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    def close(self) -> None:
        self._db.close()

    def span(self) -> tuple[int, int] | None:
        """(first, last) round time stored, or None when empty."""
        first, last = self._db.execute("SELECT min(ts), max(ts) FROM rounds").fetchone()
        return None if first is None else (int(first), int(last))

    def rounds(self, start_ms: int, end_ms: int) -> list[AuditRound]:
        rows = self._db.execute(
            "SELECT id, ts, round, markets, quotes, signature, signer, root FROM rounds "
            "WHERE ts >= ? AND ts <= ? ORDER BY id",
            (start_ms, end_ms),
        )
        return [AuditRound(*row) for row in rows]

    def reports(self, market: str, start_ms: int, end_ms: int) -> Iterator[StoredReport]:
        """One market's reports in time order."""
        rows = self._db.execute(
            "SELECT r.body, o.signer, o.signature FROM reports r "
            "JOIN rounds o ON o.id = r.round_id "
            "WHERE r.market = ? AND r.ts >= ? AND r.ts <= ? ORDER BY r.ts, r.round_id",
            (market, start_ms, end_ms),
        )
        for body, signer, signature in rows:
            yield StoredReport(_report_decoder.decode(body), body, signer, signature)

    def report_lines(self, start_ms: int, end_ms: int) -> Iterator[bytes]:
        """Every stored report as the JSON line `oracled replay` prints, in round and
        market order: the byte-for-byte reference for a replay of `tape()`."""
        encoder = msgspec.json.Encoder()
        rows = self._db.execute(
            "SELECT r.body FROM reports r JOIN rounds o ON o.id = r.round_id "
            "WHERE o.ts >= ? AND o.ts <= ? ORDER BY r.round_id, r.pos",
            (start_ms, end_ms),
        )
        for (body,) in rows:
            yield encoder.encode(_report_decoder.decode(body)) + b"\n"

    def markets(self) -> list[str]:
        return [m for (m,) in self._db.execute("SELECT DISTINCT market FROM transitions")]

    def transitions(self, market: str, start_ms: int, end_ms: int) -> list[tuple[int, str, str]]:
        """(ts, old, new) status changes of a market."""
        rows = self._db.execute(
            "SELECT ts, old, new FROM transitions WHERE market = ? AND ts >= ? AND ts <= ? "
            "ORDER BY ts",
            (market, start_ms, end_ms),
        )
        return [(int(ts), old, new) for ts, old, new in rows]

    def tape(self, out: IO[bytes], start_ms: int, end_ms: int) -> int:
        """Write the stored inputs of the rounds in the window as a quote tape; return quotes.

        Replaying it with the daemon's config gives the stored reports of those rounds, when
        the window starts at the daemon's first round that had quotes (replay numbers rounds
        from there) and no round was dropped from the trail (docs/publishing.md).
        """
        out.write(header_line())
        rows = self._db.execute(
            "SELECT q.line FROM quotes q JOIN rounds o ON o.id = q.round_id "
            "WHERE o.ts >= ? AND o.ts <= ? ORDER BY q.round_id, q.seq",
            (start_ms, end_ms),
        )
        count = 0
        for (line,) in rows:
            out.write(line)
            count += 1
        return count
