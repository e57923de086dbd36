"""The audit trail: every round's inputs and outputs, appended to an embedded SQLite database.

What is kept, per round: the quotes that reached the core since the previous round (the inputs,
as quote-tape lines, one compressed block per round), every market's full report (each source's
value, used or excluded and why, the status and its reasons, the price), the status transitions,
and the round's signature when signing is on. That answers "why was this price what it was" and
"why was it paused at 12:03" (`oracled audit`), and the stored quotes make a tape that replays to
the stored reports.

Writes never hold up a round: the round loop hands the `RoundResult` and the quote buffer to a
bounded queue (`submit` never blocks; a full queue drops the round and counts it, and its quotes
go in with the next round queued, up to `carry_max` of them, so the tape stays whole), and one
worker thread builds the reports, encodes them (msgpack, then deflate with a preset dictionary) and
writes a batch of rounds per transaction.
SQLite runs in WAL mode, one transaction per batch, so a process killed at any moment leaves
whole rounds only. A failing database (full disk, read-only directory) is logged once per state
change, counted (`oracled_audit_write_errors_total`) and retried every few seconds; prices go on.
A full disk is met first with the reserve (`<db>.reserve`, audit_reserve.py): given back to the
filesystem, it makes the room to checkpoint the `-wal` and delete the oldest rounds, after which
the trail writes inside its own file until the disk has room for the reserve again.

Retention: rounds older than `retention_days` are deleted, and the oldest rounds go while the
data is above `max_bytes` less the reserve (SQLite reuses the freed pages, so the file stops
growing there).

Size (schema version 2): a report is ~1 kB of msgpack, most of it the same keys, market, source
and pair names round after round, so each body is deflated against a dictionary made from a
round's report bodies and stored in the database (`dictionaries`; each report row names its
dictionary, so a newer one never strands old rows). One compressor primed with the dictionary
is made once and copied per row: a copy costs a fraction of priming a new one. A round's quote
lines go in as one deflated block (`tapes`), one row instead of one per quote. The reader
reads version 1 databases too; the writer refuses them (`AuditSchemaError`, handled like any
other database it cannot write: logged, counted, tried again, prices go on).

Version 3 adds what an operator did (`actions`: a manual pause or resume, its actor and time)
and the config in force (`configs`: each load and reload, the sha256 of its text and what the
reload changed), so "who paused BTC/USD at 14:02, under which config" is answered by the trail
alone, and an index on `transitions (round_id)` for retention's deletes. They travel through the
same queue and thread as the rounds. A version 2 database is brought to version 3 in place, in
one transaction that only adds (its rows stay as they are).

Version 4 records the signed format (the EIP-712 domain version) each signed round was signed
in (`rounds.format`), so that `oracled audit --verify` checks a round in its own format across
upgrades of it. A version 2 or 3 database is brought to version 4 in place the same way; its
rounds keep a null format, which the verifier reads as format 1 (the only one released before).

Version 5 records, with each operator action, the round the live core first applied it to (its
number and time: `actions.round`, `actions.round_ts`; null for an action no round followed, the
daemon stopped first), so that `--tape` writes it as a manual command (tape version 2) where a
replay applies it before exactly that round. Older actions keep null: their tapes have no
command. A version 2 to 4 database is brought to version 5 in place the same way.

Version 6 records, with each round, the pricing revision it was computed under
(`rounds.revision`, `oracled.core.PRICING_REVISION`), so that `--tape` names it in the tape's
header and a replay by an oracled of another revision says why its reports may differ from the
stored ones. Older rounds keep null (unrecorded): their tapes name no revision. A version 2 to 5
database is brought to version 6 in place the same way.

Version 7 keeps the text of each config the daemon loaded (`configs.text`, on the first load
of each sha256: a reload back to an earlier config keeps none again), so that `oracled audit
--replay` needs no copy of the file. A URL's user part, path and query may hold a secret, and
are replaced in what is kept (audit_config.py); the text is kept with the loaded config's
pricing digest, which a replay checks. A version 2 to 6 database is brought to version 7 in
place the same way; its config loads have no text (the replay looks for their files as before).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import queue
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

import msgspec
import structlog

from oracled import __version__
from oracled.config import AuditConfig, Config
from oracled.errors import ConfigError, OracledError, described
from oracled.files import NotRegularFileError, require_regular
from oracled.lockfile import (
    LockChange,
    LockHeldError,
    LockState,
    LockWatch,
    beside_target,
    lock_beside,
    lock_path,
    lock_state,
)
from oracled.model import Quote, Report
from oracled.publish.audit_reserve import DiskReserve
from oracled.tape import command_to_line, header_line, line_ts, quote_to_line

if TYPE_CHECKING:
    from oracled.core import RoundResult
    from oracled.publish.signer import SignedRound

__all__ = [
    "DROP_REASONS",
    "QUOTE_DROP_REASONS",
    "SCHEMA_VERSION",
    "AuditDataError",
    "AuditReader",
    "AuditRound",
    "AuditSchemaError",
    "AuditStats",
    "AuditTrail",
    "ConfigLoad",
    "ConfigText",
    "OperatorAction",
    "StoredReport",
    "check_audit_path",
    "iso_time",
]

SCHEMA_VERSION: Final = 7
#: No round time is past this (year 146 million): the end of `oracled audit`'s default window.
#: A stored one that is (or is text or bytes, which SQLite sorts above every number) was
#: changed in the file.
_LAST_TIME: Final = 1 << 62
#: What version 3 adds to version 2 (also the migration of a version 2 database). Operator
#: actions and config loads are a few rows a day: read without an index, and never deleted by
#: retention (the config in force at an old round is the last one loaded before it).
_V3_TABLES: Final = """
CREATE TABLE actions (
    ts INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    market TEXT NOT NULL
);
CREATE TABLE configs (
    ts INTEGER NOT NULL,
    event TEXT NOT NULL,
    actor TEXT NOT NULL,
    path TEXT,
    sha256 TEXT NOT NULL,
    changes TEXT NOT NULL
);
CREATE INDEX transitions_round ON transitions (round_id);
"""
#: What version 4 adds to version 3: the signed format of each signed round (null: stored
#: before it was recorded, or not signed).
_V4_COLUMNS: Final = "ALTER TABLE rounds ADD COLUMN format INTEGER;"
#: What version 5 adds to version 4: the round each operator action first applied to (null:
#: recorded before, or no round followed it).
_V5_COLUMNS: Final = (
    "ALTER TABLE actions ADD COLUMN round INTEGER;ALTER TABLE actions ADD COLUMN round_ts INTEGER;"
)
#: What version 6 adds to version 5: the pricing revision each round was computed under (null:
#: stored before it was recorded).
_V6_COLUMNS: Final = "ALTER TABLE rounds ADD COLUMN revision INTEGER;"
#: What version 7 adds to version 6: a config load's text, on the first row of its sha256 only
#: (null on the others, and for a load from no file), with the number of URLs redacted in it
#: (0: the file's bytes as they are) and the loaded config's pricing digest
#: (`tape.pricing_digest`). Columns, not a table: no page more in a small trail.
_V7_COLUMNS: Final = (
    "ALTER TABLE configs ADD COLUMN text BLOB;ALTER TABLE configs ADD COLUMN redacted INTEGER;"
    "ALTER TABLE configs ADD COLUMN pricing TEXT;"
)
#: Version 7, created in one transaction, so a database either has all of it or none.
_SCHEMA: Final = f"""
BEGIN;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE dictionaries (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    markets INTEGER NOT NULL,
    priced INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE rounds (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    round INTEGER NOT NULL,
    markets INTEGER NOT NULL,
    quotes INTEGER NOT NULL,
    root BLOB,
    signature BLOB,
    signer TEXT,
    format INTEGER,
    revision INTEGER
);
CREATE INDEX rounds_ts ON rounds (ts);
CREATE TABLE reports (
    round_id INTEGER NOT NULL,
    pos INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    market TEXT NOT NULL,
    status TEXT NOT NULL,
    dict INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (round_id, pos)
) WITHOUT ROWID;
CREATE INDEX reports_market_ts ON reports (market, ts);
CREATE TABLE tapes (round_id INTEGER PRIMARY KEY, lines BLOB NOT NULL);
CREATE TABLE transitions (
    round_id INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    market TEXT NOT NULL,
    old TEXT NOT NULL,
    new TEXT NOT NULL,
    reasons TEXT NOT NULL
);
CREATE INDEX transitions_market_ts ON transitions (market, ts);
{_V3_TABLES}
{_V5_COLUMNS}
{_V7_COLUMNS}
INSERT INTO meta (key, value) VALUES ('schema', '{SCHEMA_VERSION}');
COMMIT;
"""
#: Raw deflate: no zlib header or checksum (6 bytes a row); a body still has to decode into a
#: typed Report to be read at all.
_WBITS: Final = -15
#: Measured on a soak's reports (~980 B of msgpack): level 1 ~190 B, 3 ~154 B, 6 ~140 B, at
#: ~12, ~15 and ~21 us a report; level 6 adds ~4 ms a round at 1,000 markets for ~4 % less disk.
_REPORT_LEVEL: Final = 3
_TAPE_LEVEL: Final = 1  # a round's quote lines: ~5.4x at level 1; level 6 gains 17 % at 3x the time
#: zlib looks back 32 KiB, so a longer dictionary is never used.
_DICT_BYTES: Final = 32 * 1024
_RETRY_S: Final = 5.0  # a failed database is tried again after this long
#: How often a writer whose lock file is away looks whether it is back (a few system calls).
_AWAY_POLL_S: Final = 0.25
_RETENTION_EVERY_S: Final = 30.0
#: Deleted per transaction at most, about: ~0.6 s of the writer thread on a disk that deleted
#: 570 MB in 11.7 s, with the queue (64 rounds, 16 s at 4 a second) far from full.
_RETENTION_STEP_BYTES: Final = 32 * 1024 * 1024
_STOP: Final = object()
#: Quotes of dropped rounds kept for the next queued round at most (~200 B each: ~20 MB); past
#: it a stuck writer would grow them without end, so they are dropped, counted and logged.
_CARRY_MAX: Final = 100_000
#: Why a round, its signature or an operator event was left out of the trail (`AuditStats`, the
#: `reason` label): the writer was behind the rounds (a slow disk, another process holding the
#: database's write lock) and its queue full, or it held its rounds while its lock file was away
#: with its directory and the queue filled meanwhile. They call for different acts (a faster
#: disk; putting the directory back), so they are told apart when the item is dropped.
DROP_REASONS: Final = ("writer_behind", "lock_away")
#: ... and for quotes past the carry cap, also those kept from rounds a failed write lost.
QUOTE_DROP_REASONS: Final = (*DROP_REASONS, "write_error")

_encoder = msgspec.msgpack.Encoder()
_report_decoder = msgspec.msgpack.Decoder(Report)


class AuditSchemaError(OracledError):
    """The database is of a schema version this code does not write (or does not know)."""


class AuditDataError(OracledError):
    """A stored row that does not read back as the writer wrote it (bytes overwritten, a
    dictionary id changed, a column given a value of another type): the file was changed or
    damaged after it was written. `round` and `ts` are its round's (None: the round row itself is
    the one), `what` names the row and why (the CLI formats the time)."""

    def __init__(self, round_no: int | None, ts: int | None, what: str) -> None:
        self.round, self.ts, self.what = round_no, ts, what
        super().__init__(what if round_no is None else f"round {round_no} at {ts}: {what}")


class AuditInUseError(OracledError):
    """Another process writes this database: one trail, one writer."""


def check_audit_path(path: Path) -> None:
    """ConfigError if `path` names something no trail can be kept in (a directory, a FIFO, a
    device): the writer's retries would log that it cannot open it every few seconds for the
    daemon's whole life, and no round would ever be kept. A mistake no retry mends, refused at
    start like the daemon's other files; a missing file is made, and a failing disk is retried
    while prices go on (docs/publishing.md)."""
    try:
        require_regular(path)
    except NotRegularFileError as exc:
        raise ConfigError(
            [f"audit.path: {path} is {exc.kind}, not a file: no audit trail could be kept in it"]
        ) from None
    except OSError:  # missing (made at the first write), or unreachable: the writer retries
        return


def _lock(path: Path) -> int:
    """Take the writer's lock, a file beside the database (`<db>.lock`), and return its
    descriptor, to keep open while writing. Two writers would interleave two daemons' rounds in
    one trail (a second daemon, or `oracled record`, on the same config); the lock is released
    by the kernel with the process, so a killed writer never leaves it stuck."""
    try:
        return lock_beside(path)
    except LockHeldError as exc:
        raise AuditInUseError(
            f"{path} is written by another process (it holds {exc.lock}): a second daemon, or "
            "`oracled record` beside one, needs an audit.path of its own"
        ) from None


def _make_dictionary(bodies: list[bytes]) -> bytes:
    """A preset dictionary from one round's report bodies: evenly spread bodies (every market's
    when they fit), the last 32 KiB of them, so that many markets still give one of each kind."""
    total = sum(len(body) for body in bodies)
    step = max(1, -(-total // _DICT_BYTES))
    return b"".join(bodies[::step])[-_DICT_BYTES:]


class _Packer:
    """Deflates report bodies against one stored dictionary: primed once, copied per body."""

    __slots__ = ("_primed", "id", "provisional")

    def __init__(self, dict_id: int, data: bytes, *, provisional: bool) -> None:
        self.id = dict_id
        self.provisional = provisional  # made from a round where most markets had no price
        # memLevel 8 is zlib's default; the copy per body is of this primed state
        self._primed = zlib.compressobj(_REPORT_LEVEL, zlib.DEFLATED, _WBITS, 8, zdict=data)

    def pack(self, body: bytes) -> bytes:
        compressor = self._primed.copy()
        return compressor.compress(body) + compressor.flush()


def _provisional(markets: int, priced: int) -> bool:
    return priced * 2 < markets


@dataclass(slots=True)
class AuditStats:
    """Plain counters read by the metrics collector at scrape time."""

    rounds: int = 0  # rounds written
    #: rounds dropped because the queue was full, by `DROP_REASONS`
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    #: quotes of dropped or lost rounds past the carry cap (the tape lacks them from there), by
    #: `QUOTE_DROP_REASONS`
    dropped_quotes: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(QUOTE_DROP_REASONS, 0)
    )
    #: operator actions and config loads dropped (the queue was full), by `DROP_REASONS`
    dropped_events: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    write_errors: int = 0  # rounds lost to a database error
    ok: bool = False  # the last open/write succeeded
    last_error: str | None = None
    #: signatures lost to a full queue while their round was queued (it reads as unsigned), by
    #: `DROP_REASONS`
    signatures_dropped: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(DROP_REASONS, 0)
    )
    queued: int = 0  # rounds waiting for the worker
    bytes: int = 0  # data in the database (pages in use), after the last retention check
    reserve: int = 0  # bytes of disk reserve held beside the database (0: given up or none)


@dataclass(frozen=True, slots=True)
class _Item:
    result: RoundResult
    quotes: list[Quote]


@dataclass(frozen=True, slots=True)
class _Action:
    ts: int
    actor: str
    action: str  # pause, resume or restore
    market: str
    round: int | None  # the round it first applied to, and its time (None: no round followed)
    round_ts: int | None


@dataclass(frozen=True, slots=True)
class _Config:
    ts: int
    event: str  # start or reload
    actor: str
    path: str | None
    sha256: str
    changes: str  # JSON: what a reload changed, {} at start
    text: bytes | None = None  # the file's bytes (None: loaded from no file)
    loaded: Config | None = None  # what they parsed to, for the text's pricing digest


@dataclass(frozen=True, slots=True)
class _Signed:
    ts: int
    round: int
    root: bytes
    signature: bytes
    signer: str
    format: int  # the signed format (domain version) it was signed in


def _full(exc: sqlite3.Error) -> bool:
    """SQLite's "database or disk is full" (a full filesystem, or `max_page_count`), or its
    "disk I/O error" of a `-shm` file it could not extend: what opening a WAL database on a
    full filesystem answers (measured on a full tmpfs), where the ENOSPC does not come through."""
    return exc.sqlite_errorcode in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR_SHMSIZE)


def _checkpoint(db: sqlite3.Connection) -> None:
    """Copy the `-wal` into the database file and have the next write start the `-wal` again
    from its beginning: its file keeps its size and is written over, never grown. A reader in
    the way (`oracled audit`) is waited for up to the connection's timeout, then left for later."""
    db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()


def _schema_version(db: sqlite3.Connection) -> int | None:
    """The database's schema version; None for a database with no tables yet (a new file)."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_schema WHERE type='table'")}
    if not tables:
        return None
    row = None
    if "meta" in tables:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if row is None:  # version 1 made its tables before writing its version
        return 1 if "quotes" in tables else 0
    try:
        return int(row[0])
    except ValueError:
        return 0


def _connect(path: Path, page_limit: int | None) -> sqlite3.Connection:
    """Open (or create) a version 7 database for writing, bringing a version 2 to 6 one to
    version 7; refuse any other version."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        version = _schema_version(db)  # before any pragma: another version's file stays as it is
        if version is not None and version not in (2, 3, 4, 5, 6, SCHEMA_VERSION):
            raise AuditSchemaError(
                f"{path} is an audit database of schema version {version or 'unknown'}; "
                f"this oracled writes version {SCHEMA_VERSION} and leaves it as it is: move the "
                "file aside (`oracled audit --db` still reads it) and a new database is made at "
                "audit.path on the next try"
            )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable against a killed process
        if page_limit is not None:
            db.execute(f"PRAGMA max_page_count={int(page_limit)}")
        if version is None:
            db.executescript(_SCHEMA)
        elif version in (2, 3, 4, 5, 6):  # only adds: its rows stay, all of it or none committed
            db.executescript(
                f"BEGIN IMMEDIATE;{_V3_TABLES if version == 2 else ''}"
                f"{_V4_COLUMNS if version < 4 else ''}{_V5_COLUMNS if version < 5 else ''}"
                f"{_V6_COLUMNS if version < 6 else ''}{_V7_COLUMNS}"
                f"UPDATE meta SET value = '{SCHEMA_VERSION}' WHERE key = 'schema';COMMIT;"
            )
    except (sqlite3.Error, AuditSchemaError):
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
        self._packer: _Packer | None = None  # the newest stored dictionary, primed
        self._retry_at = 0.0
        self._retention_at = 0.0
        self._retention_every_s = _RETENTION_EVERY_S
        self._retention_step_bytes = _RETENTION_STEP_BYTES
        self._retry_s = _RETRY_S
        # `reserve_bytes`, or an eighth of `max_bytes` when that is less: room for the `-wal`
        # (~4 MB between checkpoints, SQLite's default) to be checkpointed and the oldest rounds
        # deleted once the disk is full (docs/publishing.md, *A full disk*)
        reserve = cfg.reserve_bytes
        if cfg.max_bytes:
            reserve = min(reserve, cfg.max_bytes // 8)
        # beside the file SQLite opens (a link followed), on the filesystem it reserves room on
        self.reserve = DiskReserve(beside_target(self.path, ".reserve"), reserve)
        self._reserve_state: str | None = None  # held, released or missing, as last logged
        #: the data kept while the reserve is given up after a full disk: the database's pages
        #: in use then, so that the trail goes on inside its file (None: `max_bytes` only)
        self._cap: int | None = None
        self._lock_fd: int | None = None  # the writer lock (`_lock`), held while writing
        self._lock_watch = LockWatch()  # what became of `<db>.lock`, as `_lock_now` last saw
        self._away_poll_s = _AWAY_POLL_S
        self._closing = threading.Event()  # `close` was called: a writer held back gives up
        #: what `close` measures its budget on (tests: a wait for room that took all of it)
        self._close_clock: Callable[[], float] = time.monotonic
        self._gave_up = False  # stopped while the lock file was away (said once)
        self._dropping = False
        self._dropping_quotes = False
        #: quotes of dropped rounds carried to the next queued round at most (tests lower it)
        self.carry_max = _CARRY_MAX
        self._dropped_recently: collections.deque[tuple[int, int]] = collections.deque(maxlen=8)
        self._dropping_signatures = False
        #: quotes of rounds a failed write lost, for the next round written (the writer's own)
        self._lost: list[Quote] = []
        self._losing_quotes = False
        self._thread = threading.Thread(target=self._work, name="oracled-audit", daemon=True)
        self._log = structlog.get_logger("oracled").bind(component="audit")
        from oracled.core import PRICING_REVISION  # the writer's: `oracled audit` loads no core

        #: the pricing revision stored with every round this writer stores
        self.revision = PRICING_REVISION

    # -- the event-loop side ------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def add_quote(self, quote: Quote) -> None:
        """Keep a quote for the next round's inputs (the service's quote hook)."""
        self._quotes.append(quote)

    def newest_quote_ms(self) -> int:
        """The latest receive time of the quotes kept since the last round submitted (0: none),
        that of the newest the core took while the round loop is not late: a reload is stored
        at a millisecond after it (`Service._parting_time`). The latest, not the last one's: a
        wall clock stepped back stamps a quote taken after another before it. A scan, read once
        a reload, not kept per quote."""
        return max((q.recv_ts for q in self._quotes), default=0)

    def submit(self, result: RoundResult) -> None:
        """Hand a round and its inputs to the worker; never blocks. A full queue drops the
        round, not its quotes: they go in with the next round queued (a later price may rest on
        them, and the tape replays to it only with them), up to `carry_max` quotes."""
        quotes, self._quotes = self._quotes, []
        try:
            self._queue.put_nowait(_Item(result, quotes))
        except queue.Full:
            reason = self._drop_reason()
            self.stats.dropped[reason] += 1
            if len(quotes) <= self.carry_max:
                self._quotes = quotes  # the next round's quotes are appended after them
            else:
                self.stats.dropped_quotes[reason] += len(quotes)
                if not self._dropping_quotes:
                    self._dropping_quotes = True
                    self._log.error(
                        "audit queue full: quotes of dropped rounds are dropped from the tape",
                        carry_max=self.carry_max,
                        quotes=len(quotes),
                        round=result.round,
                        reason=reason,
                    )
            self._dropped_recently.append((result.ts, result.round))
            if not self._dropping:
                self._dropping = True
                self._log.error(
                    "audit queue full: rounds are dropped from the trail",
                    queue=self.cfg.queue,
                    round=result.round,
                    reason=reason,
                )
            return
        self._dropping_quotes = False
        if self._dropping:
            self._dropping = False
            dropped = sum(self.stats.dropped.values())
            self._log.warning("audit queue has room again", dropped_total=dropped)
        self.stats.queued = self._queue.qsize()

    def submit_signed(self, signed: SignedRound) -> None:
        """Attach a round's signature (it arrives after the round, from the signer thread)."""
        item = _Signed(
            signed.ts, signed.round, signed.root, signed.signature, signed.signer, signed.format
        )
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            if (signed.ts, signed.round) in self._dropped_recently:
                return  # the round itself was dropped too, and counted
            # its round is stored (or queued) and will read as unsigned in `oracled audit`
            reason = self._drop_reason()
            self.stats.signatures_dropped[reason] += 1
            if not self._dropping_signatures:
                self._dropping_signatures = True
                self._log.error(
                    "audit queue full: a stored round's signature is dropped from the trail",
                    queue=self.cfg.queue,
                    round=signed.round,
                    reason=reason,
                )
            return
        self._dropping_signatures = False

    def record_action(
        self,
        ts: int,
        actor: str,
        action: str,
        market: str,
        round_no: int | None = None,
        round_ts: int | None = None,
    ) -> None:
        """Keep an operator's manual pause or resume (done at `ts`) with the round the core
        first applied it to, its number and time (None: no round followed it); never blocks (a
        full queue drops it, counted in `stats.dropped_events` by reason and logged)."""
        self._put_event(_Action(ts, actor, action, market, round_no, round_ts))

    def record_config(
        self,
        ts: int,
        event: str,
        actor: str,
        path: str | None,
        sha256: str,
        changes: str,
        *,
        text: bytes | None = None,
        loaded: Config | None = None,
    ) -> None:
        """Keep a config load (`start`) or reload: the sha256 of its text and, for a reload,
        what it changed (JSON); with `text` (the file's bytes) and `loaded` (what they parsed
        to) the text too, once per sha256 (the worker redacts it); never blocks."""
        self._put_event(_Config(ts, event, actor, path, sha256, changes, text, loaded))

    def record_start(self, ts: int, cfg: Config, path: str | None, text: bytes | None) -> None:
        """Keep the config a daemon starts with, first in its trail: the sha256 and text of
        the file it was read from (`text`), or, started without one (a library's service, a
        test), the sha256 of its settings' JSON, no file or text to keep."""
        if text is not None:
            digest = hashlib.sha256(text).hexdigest()
        else:
            digest = hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()
        self.record_config(ts, "start", "start", path, digest, "{}", text=text, loaded=cfg)

    def _put_event(self, event: _Action | _Config) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            reason = self._drop_reason()
            self.stats.dropped_events[reason] += 1
            # Its fields in words: `event=` would clash with the line's own event (a TypeError
            # on the round loop's path), and a repr is Python's, not the operator's.
            told: dict[str, str | None]
            if isinstance(event, _Action):
                told = {"what": event.action, "market": event.market}
            else:
                told = {"what": f"config {event.event}", "path": event.path}
            self._log.error(
                "audit queue full: an operator event is dropped",
                actor=event.actor,
                ts=event.ts,
                reason=reason,
                **told,
            )

    def _drop_reason(self) -> str:
        """Why the queue is full, for the item it drops now: `lock_away` while the writer holds
        its rounds for its lock file (as the worker thread last saw it), else `writer_behind`."""
        return "lock_away" if self.lock_away else "writer_behind"

    def close(self, timeout_s: float = 3.0) -> bool:
        """Write what is queued (within `timeout_s`) and stop the worker; False if it has not
        finished by then (it goes on, but a process that exits now loses what it still had).
        The wait for room in a full queue and the wait for the worker share `timeout_s`: each
        had its own, so a stop could spend twice the time its budget gives the trail."""
        if not self._thread.is_alive():
            return True
        deadline = self._close_clock() + timeout_s
        self._closing.set()  # a writer waiting for its lock file stops waiting
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            return False
        self._thread.join(max(0.0, deadline - self._close_clock()))
        return not self._thread.is_alive()

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
                self._write_when_held(items, stop=stop)
            self.stats.queued = self._queue.qsize()
            if stop:
                if self._db is not None and (self.lock_lost or self.lock_away):
                    self._db.close()  # no room kept beside a trail another writer may hold
                    self._db = None
                if self._db is not None:
                    self._close_keeping_room(self._db)
                    self._db = None
                if self._lock_fd is not None:
                    os.close(self._lock_fd)  # releases the lock: the next writer may start
                    self._lock_fd = None
                return

    def _open(self) -> sqlite3.Connection | None:
        if self._db is not None:
            return self._db
        if time.monotonic() < self._retry_at:
            return None
        released = 0
        # a reopen after a failure goes by name: the directory may be a new one, or away
        if self._lock_now() is not LockState.HELD:
            return None
        try:
            if self._lock_fd is None:
                self._lock_fd = _lock(self.path)
            try:
                db = _connect(self.path, self._page_limit)
            except sqlite3.Error as exc:
                if not _full(exc):
                    raise
                released = self.reserve.release()
                if not released:
                    raise
                self._reserve_state, self.stats.reserve = "released", 0
                self._cap = None  # set below, from the room the reserve gave
                db = _connect(self.path, self._page_limit)
        except (sqlite3.Error, AuditSchemaError, AuditInUseError, OSError) as exc:
            self._failed(exc, "open")
            return None
        self._db = db
        try:
            self._packer = self._load_packer(db)
            if self._cap is None:
                error = self._hold_reserve()
                if not self.reserve.held and self.reserve.size > 0:
                    self._cap_at_open(db, released, error)
        except sqlite3.Error as exc:
            self._failed(exc, "open")
            return None
        return db

    def _cap_at_open(self, db: sqlite3.Connection, released: int, error: str | None) -> None:
        """Opened without a reserve (given up at this open, or no room to make one): the trail
        starts as it goes on after a full disk, inside its files, its data capped at what it
        holds and half the room the filesystem has (the other half for the `-wal` and the
        checkpoints that copy it into the database file). Uncapped, it wrote until the `-wal`
        took the last byte, and then no checkpoint could make the room to delete old rounds
        (measured on a full 32 MiB tmpfs: some 320 rounds written after the start, then the
        trail down for every round after them)."""
        try:
            room = self.reserve.room()
        except OSError:
            room = 0
        used = self._used_bytes(db)
        self._cap = used + room // 2
        self._retention_at = 0.0  # retention after every batch from the first one
        if released:
            self._log.warning(
                "audit disk full at open: the reserve is given up",
                path=str(self.path),
                reserve_bytes=released,
                kept_bytes=used,
                cap_bytes=self._cap,
            )
        elif self._reserve_state is None:  # once: a later reopen in this state says nothing
            self._reserve_state = "missing"
            self._log.warning(
                "audit reserve not made: the trail writes inside its files until the disk has "
                "room for it",
                path=str(self.reserve.path),
                reserve_bytes=self.reserve.size,
                error=error or "the disk has too little room",
                kept_bytes=used,
                cap_bytes=self._cap,
            )

    def _load_packer(self, db: sqlite3.Connection) -> _Packer | None:
        """The newest stored dictionary's packer; None without one, or when its row is not as
        written (a value of another type, changed in the file): the next round makes a new one,
        where deflating against it raised in this thread and ended the trail unlogged."""
        row = db.execute(
            "SELECT id, markets, priced, data FROM dictionaries ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        dict_id, markets, priced, data = row
        if type(data) is not bytes or type(markets) is not int or type(priced) is not int:
            self._log.warning(
                "audit dictionary changed after it was written: a new one is made",
                path=str(self.path),
                dictionary=dict_id,
            )
            return None
        return _Packer(dict_id, data, provisional=_provisional(markets, priced))

    def _with_lost(self, items: list[object]) -> list[object]:
        """`items` with the quotes of rounds lost to failed writes put before the first round's
        own: a later price may rest on them, and the tape replays to it only with them."""
        for k, item in enumerate(items):
            if isinstance(item, _Item):
                lost, self._lost = self._lost, []
                return [*items[:k], _Item(item.result, lost + item.quotes), *items[k + 1 :]]
        return items

    def _keep_lost(self, items: list[object]) -> None:
        """A write failed: its rounds are lost, their quotes kept for the next round written
        (as a full queue's are), up to `carry_max`; past it they are dropped and counted."""
        lost = self._lost + [q for item in items if isinstance(item, _Item) for q in item.quotes]
        if len(lost) <= self.carry_max:
            self._lost = lost
            return
        self._lost = []
        self.stats.dropped_quotes["write_error"] += len(lost)
        if not self._losing_quotes:
            self._losing_quotes = True
            self._log.error(
                "audit trail not written: quotes of the rounds lost are dropped from the tape",
                carry_max=self.carry_max,
                quotes=len(lost),
            )

    def _write_when_held(self, items: list[object], *, stop: bool) -> None:
        """Write `items`, waiting while the lock file is away (`_lock_now`): the rounds after
        them wait in the queue meanwhile (a full queue drops and counts as ever), and they go
        in first, in order, once the very lock file is back. A stop while it is away (nothing
        could be written) counts the rounds held back as not written."""
        held = self._write(items)
        while held is not None:
            while self._lock_now() is LockState.MOVED:
                self.stats.queued = self._queue.qsize()
                if stop or self._closing.wait(self._away_poll_s):
                    self.stats.write_errors += sum(1 for item in held if isinstance(item, _Item))
                    if not self._gave_up:  # once: the batches still queued end here too
                        self._gave_up = True
                        self._log.error(
                            "audit trail stopped with its lock file away: rounds held back are "
                            "not written",
                            lock=str(lock_path(self.path)),
                        )
                    return
            held = self._write(held)

    def _lock_now(self) -> LockState:
        """Whether `<db>.lock` is still the file this writer locked (`lockfile.lock_state`;
        HELD while none is taken yet). Asked by the worker thread before each batch's commit and
        each reopen, never on the round loop.

        LOST (removed, a clean-up of lock files; or the directory removed and made again):
        it excludes nobody, a second daemon or `oracled record` locks a new one and writes the
        same trail, its rounds among this one's. So the trail is lost for good (logged once):
        nothing is written until a restart, which takes the lock again or is refused while the
        other writer holds it.

        MOVED (the directory moved away with it, a volume gone): it still excludes everyone,
        and the rounds wait in the queue until the very file is back (said once each way).
        They do not go in meanwhile through the connection's open descriptors, though those
        still reach the moved database: SQLite also reaches the trail's files by name (a
        reopen after a failed write opens whatever is at the path), and a directory moved away
        (to copy or archive it, or on its way to being deleted) is expected to stay as it was
        moved: a database copied while it is written is torn."""
        if self.lock_lost:
            return LockState.LOST
        if self._lock_fd is None:
            return LockState.HELD
        state = lock_state(self.path, self._lock_fd)
        change = self._lock_watch.update(state)
        lock = lock_path(self.path)
        if change is LockChange.BACK:
            self._log.info("audit trail lock file back: rounds are written again")
        elif change is LockChange.AWAY:
            self._log.error(
                "audit trail lock file missing: rounds wait in the queue until it is back",
                lock=str(lock),
                queue=self.cfg.queue,
            )
            self.stats.ok, self.stats.last_error = False, f"lock file away: {lock}"
        elif change is LockChange.LOST:
            self._log.error(
                "audit trail lock lost: no round is written until a restart", lock=str(lock)
            )
            self.stats.ok, self.stats.last_error = False, f"lock lost: {lock}"
            self._packer = None
        return state

    @property
    def lock_lost(self) -> bool:
        """`<db>.lock` is no longer the file locked: no round is written till a restart."""
        return self._lock_watch.lost

    @property
    def lock_away(self) -> bool:
        """`<db>.lock` is not at its path (its directory moved away): rounds wait till it is
        back."""
        return self._lock_watch.away

    def _write(self, items: list[object], *, made_room: bool = False) -> list[object] | None:
        """Write `items` in one transaction; the items to write again once the lock file is
        back if it was found away (nothing of them written), else None (written, or counted
        as not written)."""
        rounds = sum(1 for item in items if isinstance(item, _Item))
        if self.lock_lost:  # counted, not carried: no round of this writer goes in again
            self.stats.write_errors += rounds
            return None
        if self._lost and not made_room:
            items = self._with_lost(items)
        db = self._open()
        if db is None:
            if self.lock_away:
                return items
            self.stats.write_errors += rounds
            self._keep_lost(items)
            return None
        try:
            db.execute("BEGIN IMMEDIATE")
            for item in items:
                if isinstance(item, _Item):
                    self._insert(db, item)
                elif isinstance(item, _Action):
                    db.execute(
                        "INSERT INTO actions (ts, actor, action, market, round, round_ts) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (item.ts, item.actor, item.action, item.market, item.round, item.round_ts),
                    )
                elif isinstance(item, _Config):
                    kept = self._kept_text(db, item)
                    db.execute(
                        "INSERT INTO configs (ts, event, actor, path, sha256, changes, text,"
                        " redacted, pricing) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (item.ts, item.event, item.actor, item.path, item.sha256, item.changes)
                        + ((None, None, None) if kept is None else kept.row()),
                    )
                elif isinstance(item, _Signed):
                    db.execute(
                        "UPDATE rounds SET root = ?, signature = ?, signer = ?, format = ? "
                        "WHERE id = (SELECT max(id) FROM rounds WHERE ts = ? AND round = ?)",
                        (item.root, item.signature, item.signer, item.format, item.ts, item.round),
                    )
            # looked at holding SQLite's write lock: none commits between
            state = self._lock_now()
            if state is not LockState.HELD:
                db.execute("ROLLBACK")
                if state is LockState.LOST:
                    self.stats.write_errors += rounds
                    return None
                self._packer = self._load_packer(db)  # one this batch made is rolled back
                return items
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            if not made_room and _full(exc) and self._make_room(db):
                return self._write(items, made_room=True)  # once: into the room made, or it failed
            self.stats.write_errors += rounds
            self._keep_lost(items)
            self._failed(exc, "write")
            return None
        self.stats.rounds += rounds
        if rounds:
            self._losing_quotes = False
        if not self.stats.ok:
            self.stats.ok, self.stats.last_error = True, None
            self._log.info("audit trail writing", path=str(self.path))
        if time.monotonic() >= self._retention_at:
            self._retention(db)
        return None

    def _kept_text(self, db: sqlite3.Connection, item: _Config) -> ConfigText | None:
        """The text to keep with a config load: none when its sha256 has one already (a
        reload back to an earlier config) or it came from no file; one that cannot be kept
        safely (a URL written with escapes, or holding a quote) is logged, and its replay
        needs the file as before version 7. A few rows a day: read without an index."""
        if item.text is None or item.loaded is None:
            return None
        held = "SELECT 1 FROM configs WHERE sha256 = ? AND text IS NOT NULL LIMIT 1"
        if db.execute(held, (item.sha256,)).fetchone():
            return None
        from oracled.publish.audit_config import kept_text

        kept = kept_text(item.text, item.loaded, os.environ)
        if isinstance(kept, str):
            self._log.warning(
                "audit: a config's text is not kept: a replay of its rounds needs the file",
                path=item.path,
                sha256=item.sha256,
                why=kept,
            )
            return None
        return kept

    def _insert(self, db: sqlite3.Connection, item: _Item) -> None:
        result = item.result
        cur = db.execute(
            "INSERT INTO rounds (ts, round, markets, quotes, revision) VALUES (?, ?, ?, ?, ?)",
            (result.ts, result.round, len(result.layout.markets), len(item.quotes), self.revision),
        )
        round_id = cur.lastrowid
        reports = result.reports()
        if reports:
            bodies = [_encoder.encode(r) for r in reports]
            packer = self._packer_for(db, result.ts, reports, bodies)
            pack, dict_id = packer.pack, packer.id
            db.executemany(
                "INSERT INTO reports (round_id, pos, ts, market, status, dict, body) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (round_id, i, r.ts, r.market, r.status, dict_id, pack(body))
                    for i, (r, body) in enumerate(zip(reports, bodies, strict=True))
                ],
            )
        if item.quotes:
            lines = b"".join([quote_to_line(q) for q in item.quotes])
            db.execute(
                "INSERT INTO tapes (round_id, lines) VALUES (?, ?)",
                (round_id, zlib.compress(lines, _TAPE_LEVEL, wbits=_WBITS)),
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

    def _packer_for(
        self, db: sqlite3.Connection, ts: int, reports: list[Report], bodies: list[bytes]
    ) -> _Packer:
        """The packer in use, or a new dictionary from this round: the first round of a new
        database, and once more at the first round where most markets have a price if the
        dictionary was made while most had none (a start-up round of `unknown` reports)."""
        packer = self._packer
        if packer is not None and not packer.provisional:
            return packer
        priced = sum(1 for r in reports if r.price is not None)
        if packer is not None and _provisional(len(reports), priced):
            return packer
        data = _make_dictionary(bodies)
        cur = db.execute(
            "INSERT INTO dictionaries (ts, markets, priced, data) VALUES (?, ?, ?, ?)",
            (ts, len(reports), priced, data),
        )
        assert cur.lastrowid is not None
        # in use from here on; a rolled back batch drops it again (_failed forgets the packer)
        self._packer = _Packer(cur.lastrowid, data, provisional=_provisional(len(reports), priced))
        return self._packer

    def _make_room(self, db: sqlite3.Connection) -> bool:
        """After a write found the disk full: give the reserve back to the filesystem, checkpoint
        the `-wal` (the database file may have to grow for it), delete the oldest rounds until
        the file has free pages for the next batches (the reserve's size, or half the data when
        that is less; the newest round stays), checkpoint again, and cap the data at what is
        left until the reserve is held again: from here the trail writes inside its own file.
        False when SQLite failed on the way (the caller's usual failure path follows)."""
        released = self.reserve.release()
        self.stats.reserve = 0
        capped = self._cap is not None
        deleted = 0
        try:
            self._packer = self._load_packer(db)  # the rolled back batch may have made one
            _checkpoint(db)
            first, last = db.execute("SELECT min(id), max(id) FROM rounds").fetchone()
            used, size = self._used_bytes(db), self._file_bytes(db)
            per_round = used // (last - first + 1) if first is not None else 0
            headroom = max(min(self.reserve.size, used // 2), 2 * self.cfg.batch_rounds * per_round)
            # each delete is a write to the -wal (1 MiB of rounds deleted wrote ~1.3 MB of it,
            # 4 MiB ~4.6 MB, measured on a 45 MB trail): half the reserve's bytes at a time fit
            # in what the reserve gave and the -wal file already had
            step_max = max(
                1, (self.reserve.size // 2 or self._retention_step_bytes) // max(per_round, 1)
            )
            while first is not None and first < last and size - used < headroom:
                want = -(-(headroom - (size - used)) // max(per_round, 1))
                step = min(last - first, step_max, max(1, want))
                self._delete_before(db, first + step)
                _checkpoint(db)
                deleted, first = deleted + step, first + step
                used = self._used_bytes(db)
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            error: str | None = str(exc)  # the write's own failure is logged by the caller
        else:
            error = None
            self._cap = self.stats.bytes = used
            self._retention_at = 0.0
        # once a state: the reserve given up, or the data capped (a failure is the caller's to say)
        if released or (error is None and not capped):
            self._reserve_state = "released"
            self._log.warning(
                "audit disk full: the reserve is given up and the oldest rounds deleted; the "
                "trail goes on inside its file",
                path=str(self.path),
                reserve_bytes=released,
                rounds_deleted=deleted,
                kept_bytes=None if error else used,
                error=error,
            )
        return error is None

    def _hold_reserve(self) -> str | None:
        """Allocate the reserve: at open, and after it was given up once the filesystem has room
        for it and as much again (a reserve that took the last free bytes would fill the disk
        it is there to clear). Held, the cap goes: retention keeps to `max_bytes` again. The
        error that kept it from being made, if one did (`_cap_at_open` says it)."""
        reserve = self.reserve
        if reserve.held or reserve.size <= 0:
            return None
        error: str | None = None
        try:
            # a whole file is kept (its holes filled); a part of one (the room a stop on a full
            # disk kept) is made whole once the disk has room for the rest and a reserve more
            missing = reserve.size - reserve.allocated()
            held = (missing <= 0 or reserve.room() >= missing + reserve.size) and reserve.hold()
        except OSError as exc:  # no file can be made beside the database: it fails on its own
            held, error = False, str(exc)
        if held:
            self.stats.reserve = reserve.size
            self._cap = None
            if self._reserve_state is not None and self._reserve_state != "held":
                self._log.info(
                    "audit reserve held again: the disk has room",
                    path=str(reserve.path),
                    reserve_bytes=reserve.size,
                )
            self._reserve_state = "held"
        return error

    def _close_keeping_room(self, db: sqlite3.Connection) -> None:
        """Close the database at a stop. Closing deletes the `-wal` and `-shm` files; without its
        reserve (given up on a full disk) they were the trail's room, and a start onto a disk
        still full could not make them again (SQLite: `disk I/O error`), so the trail would stay
        down until someone freed space. What closing gave back, up to the reserve's size, is
        kept in the reserve's file, which that start gives up at its open like a whole one."""
        reserve = self.reserve
        if reserve.held or reserve.size <= 0:
            db.close()
            return
        try:
            before = reserve.room()
        except OSError:
            db.close()
            return
        db.close()
        try:
            freed = reserve.room() - before
            if freed <= 0:
                return
            kept = reserve.grow(freed)
        except OSError as exc:  # no file can be made beside the database: nothing to keep
            self._log.warning(
                "audit room not kept at stop", path=str(reserve.path), error=described(exc)
            )
            return
        if kept:
            self._log.warning(
                "audit stopped without its reserve: the room its -wal gave back is kept for "
                "the next start",
                path=str(reserve.path),
                reserve_bytes=kept,
                freed_bytes=freed,
            )

    def _failed(self, exc: sqlite3.Error | OracledError | OSError, stage: str) -> None:
        message = f"{stage}: {described(exc) if isinstance(exc, OSError) else exc}"
        if self.stats.ok or self.stats.last_error != message:
            self._log.error(
                "audit trail not written; prices go on without it",
                path=str(self.path),
                error=message,
                retry_s=self._retry_s,
            )
        self.stats.ok, self.stats.last_error = False, message
        self._packer = None  # reloaded from the database at the next open
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        self._retry_at = time.monotonic() + self._retry_s

    def _retention(self, db: sqlite3.Connection) -> None:
        """Delete rounds past the age limit, then the oldest while above the size limit, about
        `_retention_step_bytes` of rounds a call: a large excess (a lowered limit, a daemon back
        after days) goes a step after each batch, not in one transaction that holds the writer
        (at 10 GiB ~20 s: the queue fills and rounds are dropped) and leaves a `-wal` file as big
        as what it deleted (SQLite keeps the file)."""
        self._retention_at = time.monotonic() + self._retention_every_s
        if not self.reserve.held:
            self._hold_reserve()  # once the disk has room for it again; lifts the cap
        limit = self._data_limit()
        try:
            used = self._used_bytes(db)
            # Only a round time the writer can have stored counts as the newest: text sorts
            # above every number in SQLite, and a time changed to 2**63 - 1 would have made the
            # age limit delete every round before that row.
            first, last, newest = db.execute(
                "SELECT min(id), max(id), max(CASE WHEN typeof(ts) = 'integer' AND ts <= ?1"
                " THEN ts END) FROM rounds",
                (_LAST_TIME,),
            ).fetchone()
            if first is not None:
                # the number of rounds of about one step's bytes, at the trail's mean round
                budget = max(1, (last - first + 1) * self._retention_step_bytes // max(used, 1))
                target = first  # rounds with an id below it are past the age limit
                if self.cfg.retention_days > 0 and newest is not None:
                    cutoff = newest - int(self.cfg.retention_days * 86_400_000)
                    (target,) = db.execute(
                        "SELECT min(id) FROM rounds WHERE ts >= ? AND ts <= ?",
                        (cutoff, _LAST_TIME),
                    ).fetchone()
                end = min(target, first + budget)
                if end > first:
                    self._delete_before(db, end)
                    used = self._used_bytes(db)
                    budget, first = budget - (end - first), end
                more = target > first
                while not more and limit and used > limit:
                    if first >= last:
                        break  # the newest round stays
                    if budget <= 0:
                        more = True
                        break
                    # a tenth of the rounds at a time: each pass frees pages for the next batches;
                    # without the reserve only the excess (about the last batch), so that the
                    # delete's -wal frames fit in the -wal file as it is
                    step = max(1, (last - first) // 10)
                    if self._cap is not None:
                        step = -(-(used - limit) * (last - first + 1) // used)
                    step = min(budget, step)
                    self._delete_before(db, first + step)
                    used = self._used_bytes(db)
                    budget, first = budget - step, first + step
                if more:
                    self._retention_at = 0.0  # the next step after the next batch
            self.stats.bytes = used
            if self._cap is not None:
                # Without its reserve the trail stays inside its files: retention after every
                # batch gives back the pages the next one takes, and a checkpoint after it
                # has the next write start the -wal from its beginning, so that it is written
                # over, never grown (SQLite's own checkpoint comes only every ~4 MB, and the
                # write that crosses the file's end then finds the disk full). Passive: a
                # reader in the way (`oracled audit`) is not waited for at every batch.
                self._retention_at = 0.0
                db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            if not (_full(exc) and self._make_room(db)):
                self._failed(exc, "retention")

    def _data_limit(self) -> int:
        """The data retention keeps to (0: none): `max_bytes` less the reserve, and no more
        than the cap while the reserve is given up."""
        limit = max(1, self.cfg.max_bytes - self.reserve.size) if self.cfg.max_bytes else 0
        if self._cap is not None:
            limit = min(limit, self._cap) if limit else self._cap
        return limit

    @staticmethod
    def _delete_before(db: sqlite3.Connection, round_id: int) -> None:
        db.execute("BEGIN IMMEDIATE")
        for table in ("reports", "tapes", "transitions"):
            db.execute(f"DELETE FROM {table} WHERE round_id < ?", (round_id,))
        db.execute("DELETE FROM rounds WHERE id < ?", (round_id,))
        db.execute("COMMIT")

    @staticmethod
    def _file_bytes(db: sqlite3.Connection) -> int:
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        (size,) = db.execute("PRAGMA page_size").fetchone()
        return int(pages * size)

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
    #: the signed format the round was signed in; None when the trail did not record it (schema
    #: before version 4, or a round not signed)
    format: int | None = None
    #: the pricing revision the round was computed under; None: not recorded (before version 6)
    revision: int | None = None


@dataclass(frozen=True, slots=True)
class StoredReport:
    """One market's report of one round, with the round's signature if it was signed."""

    report: Report
    body: bytes  # the stored msgpack, decoded into `report`
    signer: str | None
    signature: bytes | None
    #: the pricing revision the round was computed under (None: not recorded, schema before 6)
    revision: int | None = None


#: A round row's columns (`AuditReader._round_columns`) and the one type each holds as written;
#: SQLite keeps a value of any type in any column, so a changed row is checked before use.
_ROUND_TYPES: Final[tuple[tuple[str, type, bool], ...]] = (
    ("id", int, False),
    ("ts", int, False),
    ("round", int, False),
    ("markets", int, False),
    ("quotes", int, False),
    ("signature", bytes, True),
    ("signer", str, True),
    ("root", bytes, True),
    ("format", int, True),
    ("revision", int, True),
)


def _round_row(row: tuple[object, ...] | list[object]) -> AuditRound:
    """A round row as the writer wrote it, or AuditDataError naming the column that is not."""
    for (name, kind, nullable), value in zip(_ROUND_TYPES, row, strict=True):
        if type(value) is not kind and not (nullable and value is None):
            what = f"rounds row {row[0]}: {name} holds {type(value).__name__} {value!r:.40}"
            raise AuditDataError(None, None, f"{what}: changed after it was written")
    return AuditRound(*row)


def _round_time(value: object) -> int:
    """A round time read by itself (a bound of the span, a header's), checked as in a row."""
    if type(value) is not int:
        what = f"rounds: a round time {value!r:.40} is no integer: changed after it was written"
        raise AuditDataError(None, None, what)
    return value


def _revision(round_id: object, value: object) -> int | None:
    """A round's stored pricing revision, checked as in a row (null: not recorded)."""
    if value is not None and (type(value) is not int or value < 1):
        what = f"rounds row {round_id}: revision holds {type(value).__name__} {value!r:.40}"
        raise AuditDataError(None, None, f"{what}: changed after it was written")
    return value


def iso_time(ms: object) -> str:
    """A stored time (ms) as ISO 8601 UTC for `oracled audit`'s output. A time changed after it
    was written may be no integer or lie past the calendar (year 9999): it is shown as stored,
    since the message that names the damaged row must not itself end in a traceback."""
    if isinstance(ms, int | float) and not isinstance(ms, bool):
        try:
            moment = datetime.fromtimestamp(ms / 1000, UTC)
        except (ValueError, OverflowError, OSError):
            pass
        else:
            return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return f"{ms!r:.40} (no time)"


def _with_commands(
    lines: bytes, commands: collections.deque[tuple[int, bytes]], round_ts: int, ran_ts: int
) -> bytes:
    """The quote lines stored with the round at `round_ts` with the commands due among them
    (taken from the front of `commands`): each before the first quote later than its round's
    time, which a replay must not read before applying it, and those of this round or an
    earlier one at the end at the latest. The quotes stored with a round were taken after the
    stored round before it (at `ran_ts`, one stored without quotes too) ran, whatever their
    stamps: after a wall clock stepped back they are stamped before it, and a command placed
    by time alone went after them, where a replay has run its round already. So the commands
    of that round or an earlier one go first. A block that none is due in (the next command's
    round is later, and so is it than the block's last quote) is returned as it is, read no
    further."""
    out: list[bytes] = []
    while commands and commands[0][0] <= ran_ts:
        out.append(commands.popleft()[1])
    if not commands or (
        commands[0][0] > round_ts
        and (not lines or line_ts(lines[lines.rfind(b"\n", 0, -1) + 1 :]) <= commands[0][0])
    ):
        return b"".join(out) + lines if out else lines
    for line in lines.splitlines(keepends=True):
        ts = line_ts(line)
        while commands and commands[0][0] < ts:
            out.append(commands.popleft()[1])
        out.append(line)
    while commands and commands[0][0] <= round_ts:
        out.append(commands.popleft()[1])
    return b"".join(out)


def _open_read_only(path: Path) -> sqlite3.Connection:
    """Open for reading only. The path goes into the URI quoted: a `#` or `?` in a file name
    would otherwise end the path there, and SQLite open (and make) another file read-write.

    Reading a WAL database needs its `-wal` and `-shm` files, which SQLite makes when they are
    missing (after its writer stopped); in a directory the reader may not write (another user's
    state directory, read-only media), or on a full disk (the daemon's start reads its signing
    floor here), it cannot, so a stopped trail, whose `-wal` is gone or empty and whose every
    round is in the file itself, is read as it is (`immutable`)."""
    uri = path.resolve().as_uri()
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True)
    try:
        db.execute("SELECT count(*) FROM sqlite_schema").fetchone()
    except sqlite3.Error as exc:
        db.close()
        wal = path.with_name(path.name + "-wal")
        unwritten = wal.exists() and wal.stat().st_size > 0  # rounds not yet in the file
        if unwritten or not (
            exc.sqlite_errorcode == sqlite3.SQLITE_READONLY_DIRECTORY or _full(exc)
        ):
            raise
        db = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True)
    return db


@dataclass(frozen=True, slots=True)
class OperatorAction:
    """A manual pause or resume (schema version 3); from version 5 with the round the core
    first applied it to, its number and time (None: before version 5, or no round followed)."""

    ts: int
    actor: str
    action: str
    market: str
    round: int | None = None
    round_ts: int | None = None


@dataclass(frozen=True, slots=True)
class ConfigLoad:
    """A config the daemon loaded at start or on a reload (schema version 3)."""

    ts: int
    event: str
    actor: str
    path: str | None
    sha256: str
    changes: str


@dataclass(frozen=True, slots=True)
class ConfigText:
    """A loaded config's stored text (schema version 7): the file's bytes, or them with
    `redacted` URLs' user parts, paths and queries replaced (audit_config.py), and the pricing
    digest of the config the daemon loaded from the file."""

    text: bytes
    redacted: int
    pricing: str

    def row(self) -> tuple[bytes, int, str]:
        return self.text, self.redacted, self.pricing


class AuditReader:
    """Read-only queries over an audit database of schema version 1 to 7 (the `oracled audit`
    command, tests): the same answers from each; operator actions and config loads are in
    version 3 on (older ones answer none), a signed round's format in version 4 on (None), the
    round an action first applied to in version 5 on (None), and only then are actions on its
    tapes (`actions_on_tape`); a round's pricing revision in version 6 on (None); a config's
    text in version 7 on (None)."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        try:  # SQLite's open of a FIFO nobody writes would wait for ever: NotRegularFileError
            require_regular(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such audit database") from None
        self._db = _open_read_only(path)
        try:
            version = _schema_version(self._db)
            if version not in (1, 2, 3, 4, 5, 6, SCHEMA_VERSION):
                raise AuditSchemaError(
                    f"{path}: not an audit database this oracled reads "
                    f"(schema version {version or 'unknown'}; it reads 1 to {SCHEMA_VERSION})"
                )
        except (sqlite3.Error, AuditSchemaError):
            self._db.close()
            raise
        self.version: int = version
        #: whether `tape` writes the operator actions, as manual commands (version 5 on)
        self.actions_on_tape = version >= 5
        self._action_columns = "ts, actor, action, market" + (
            ", round, round_ts" if version >= 5 else ""
        )
        self._dicts: dict[int, bytes] = {}
        # version 1 kept the msgpack as it is and a row per quote
        self._body_column = "NULL, r.body" if version == 1 else "r.dict, r.body"
        # before version 4 no round says its signed format
        self._round_columns = (
            "o.id, o.ts, o.round, o.markets, o.quotes, o.signature, o.signer, o.root, "
            + ("o.format" if version >= 4 else "NULL")
            + (", o.revision" if version >= 6 else ", NULL")
        )

    def close(self) -> None:
        self._db.close()

    def _unpack(self, dict_id: int | None, body: bytes) -> bytes:
        if dict_id is None:
            return body
        data = self._dicts.get(dict_id)
        if data is None:  # a dictionary the writer added since: load them again
            self._dicts = dict(self._db.execute("SELECT id, data FROM dictionaries"))
            data = self._dicts.get(dict_id)
            if data is None:
                raise ValueError(f"dictionary {dict_id} is not stored")
        return zlib.decompressobj(_WBITS, zdict=data).decompress(body)

    def _decode(
        self, dict_id: int | None, stored: bytes, round_no: int, ts: int, market: str, at: int
    ) -> tuple[Report, bytes]:
        """A stored report and its msgpack, found as `market`'s at `at` (the row's columns) in
        round `round_no` at `ts`; AuditDataError naming the row if it does not read back (a
        traceback told an auditor nothing about which row), or if its body is another market's,
        round's or time's: the columns a row is found by are not signed, so a relabelled row
        would show a signed report as another market's."""
        try:
            body = self._unpack(dict_id, stored)
            report = _report_decoder.decode(body)
        except (zlib.error, msgspec.DecodeError, ValueError, TypeError, RecursionError) as exc:
            what = f"{market}: its stored report cannot be read ({exc})"
            raise AuditDataError(round_no, ts, what) from None
        if (report.market, report.round, report.ts) != (market, round_no, ts) or at != ts:
            what = (
                f"{market}: the row holds {report.market}'s report of round {report.round} at"
                f" {iso_time(report.ts)}, found as {market}'s at {iso_time(at)} in this round:"
                " changed after it was written"
            )
            raise AuditDataError(round_no, ts, what)
        return report, body

    def span(self) -> tuple[int, int] | None:
        """(first, last) round time stored, or None when empty."""
        first, last = self._db.execute("SELECT min(ts), max(ts) FROM rounds").fetchone()
        return None if first is None else (_round_time(first), _round_time(last))

    def last_signed_ts(self, signer: str) -> int | None:
        """The newest round time `signer` (an address, any case) signed, or None: the floor
        under which a restarted daemon signs nothing (`SignerWorker`). Walks the time index from
        the newest round, so it stops at once when the newest rounds are this signer's. A time
        past 2**62 is no round time (changed in the file, as text would be): as the floor it
        left the key unable to sign, every round skipped, until the year 292 million."""
        row = self._db.execute(
            "SELECT ts FROM rounds WHERE signature IS NOT NULL AND lower(signer) = ? "
            "AND typeof(ts) = 'integer' AND ts <= ? ORDER BY ts DESC LIMIT 1",
            (signer.lower(), _LAST_TIME),
        ).fetchone()
        return None if row is None else int(row[0])

    def check_round_times(self) -> None:
        """AuditDataError naming a round row whose time no window holds: below 0, past 2**62
        (the end of `oracled audit`'s default window), or text or bytes (which SQLite sorts
        above every number). The writer never stores one; a round moved there by a change to
        the file would otherwise leave `--verify` unseen, the rest counted as matching, and
        `--tape` without its quotes."""
        row = self._db.execute(  # no ORDER BY: the time index finds both ends at once
            "SELECT id, ts FROM rounds WHERE ts < 0 OR ts > ? LIMIT 1", (_LAST_TIME,)
        ).fetchone()
        if row is not None:
            what = (
                f"rounds row {row[0]}: ts holds {type(row[1]).__name__} {row[1]!r:.40}, no round"
                " time (no window holds it): changed after it was written"
            )
            raise AuditDataError(None, None, what)

    def _check_report_times(self, market: str) -> None:
        """AuditDataError naming a report row of `market` whose time no window holds (as
        `check_round_times` for rounds): the timeline, `--at` and `--csv` find a market's
        reports by that time, and would otherwise leave its round out without a word."""
        row = self._db.execute(  # two seeks on the (market, ts) index, no scan of the market
            "SELECT round_id, ts FROM reports WHERE market = ?1 AND ts < 0 UNION ALL "
            "SELECT round_id, ts FROM reports WHERE market = ?1 AND ts > ?2 LIMIT 1",
            (market, _LAST_TIME),
        ).fetchone()
        if row is not None:
            what = (
                f"{market}: its report row in rounds row {row[0]}: ts holds"
                f" {type(row[1]).__name__} {row[1]!r:.40}, no round time (no window holds it):"
                " changed after it was written"
            )
            raise AuditDataError(None, None, what)

    def round_count(self) -> int:
        """Rounds stored, counted by SQLite (a month's trail holds millions)."""
        (count,) = self._db.execute("SELECT count(*) FROM rounds").fetchone()
        return int(count)

    def first_round_id(self) -> int | None:
        """The row id of the oldest round stored (None: none). Ids only grow and retention
        deletes the oldest rounds (and keeps the newest), so one above 1 says rounds before
        it were deleted."""
        (first,) = self._db.execute("SELECT min(id) FROM rounds").fetchone()
        return None if first is None else int(first)

    def rounds(self, start_ms: int, end_ms: int) -> list[AuditRound]:
        return list(self.each_round(start_ms, end_ms))

    def each_round(self, start_ms: int, end_ms: int) -> Iterator[AuditRound]:
        """`rounds` read as they are used: a start's rounds (two days of the shipped interval
        are 691,200) held 325 MB as a list."""
        rows = self._db.execute(
            f"SELECT {self._round_columns} FROM rounds o WHERE o.ts >= ? AND o.ts <= ? "
            "ORDER BY o.id",
            (start_ms, end_ms),
        )
        for row in rows:
            yield _round_row(row)

    def round_span(self, start_ms: int, end_ms: int) -> tuple[int, int | None, int | None]:
        """The rounds stored in the window: how many, the first and the last time (None: none),
        counted by SQLite."""
        if start_ms > end_ms:
            return 0, None, None
        count, first, last = self._db.execute(
            "SELECT count(*), min(ts), max(ts) FROM rounds WHERE ts >= ? AND ts <= ?",
            (start_ms, end_ms),
        ).fetchone()
        return int(count), first, last

    def round_reports(
        self, start_ms: int, end_ms: int
    ) -> Iterator[tuple[AuditRound, list[Report], list[str]]]:
        """Every round in the window with its reports in tree order (`oracled audit --verify`),
        read in one pass: a round without reports comes with an empty list. The third item names
        each stored report of the round that does not read back (left out of the list), so that
        the check goes on to the next round."""
        for stored, reports, unreadable in self.round_bodies(start_ms, end_ms):
            yield stored, [report for report, _ in reports], unreadable

    def round_bodies(
        self, start_ms: int, end_ms: int
    ) -> Iterator[tuple[AuditRound, list[tuple[Report, bytes]], list[str]]]:
        """`round_reports` with each report's stored msgpack, the bytes `--replay` compares."""
        rows = self._db.execute(
            f"SELECT {self._round_columns}, {self._body_column}, r.market, r.ts FROM rounds o "
            "LEFT JOIN reports r ON r.round_id = o.id "
            "WHERE o.ts >= ? AND o.ts <= ? ORDER BY o.id, r.pos",
            (start_ms, end_ms),
        )
        current: AuditRound | None = None
        reports: list[tuple[Report, bytes]] = []
        unreadable: list[str] = []
        for *head, dict_id, stored, market, at in rows:
            if current is None or current.id != head[0]:
                if current is not None:
                    yield current, reports, unreadable
                current, reports, unreadable = _round_row(head), [], []
            if stored is not None:
                try:
                    reports.append(
                        self._decode(dict_id, stored, current.round, current.ts, market, at)
                    )
                except AuditDataError as exc:
                    unreadable.append(exc.what)
        if current is not None:
            yield current, reports, unreadable

    def reports(self, market: str, start_ms: int, end_ms: int) -> Iterator[StoredReport]:
        """One market's reports in time order."""
        return self._reports(market, start_ms, end_ms, newest_first=False)

    def reports_before(self, market: str, end_ms: int) -> Iterator[StoredReport]:
        """One market's reports at or before `end_ms`, newest first (read lazily: the report
        in force at a time costs one row, not the whole history)."""
        return self._reports(market, 0, end_ms, newest_first=True)

    def _reports(
        self, market: str, start_ms: int, end_ms: int, *, newest_first: bool
    ) -> Iterator[StoredReport]:
        self._check_report_times(market)
        order = "r.ts DESC, r.round_id DESC" if newest_first else "r.ts, r.round_id"
        rows = self._db.execute(
            f"SELECT {self._round_columns}, {self._body_column}, r.ts "
            "FROM reports r JOIN rounds o ON o.id = r.round_id "
            f"WHERE r.market = ? AND r.ts >= ? AND r.ts <= ? ORDER BY {order}",
            (market, start_ms, end_ms),
        )
        for *head, dict_id, stored, at in rows:
            held = _round_row(head)
            report, body = self._decode(dict_id, stored, held.round, held.ts, market, at)
            yield StoredReport(report, body, held.signer, held.signature, held.revision)

    def report_lines(self, start_ms: int, end_ms: int) -> Iterator[bytes]:
        """Every stored report as the JSON line `oracled replay` prints, in round and
        market order: the byte-for-byte reference for a replay of `tape()`."""
        encoder = msgspec.json.Encoder()
        rows = self._db.execute(
            f"SELECT {self._body_column}, o.round, o.ts, r.market, r.ts FROM reports r "
            "JOIN rounds o ON o.id = r.round_id "
            "WHERE o.ts >= ? AND o.ts <= ? ORDER BY r.round_id, r.pos",
            (start_ms, end_ms),
        )
        for dict_id, stored, round_no, ts, market, at in rows:
            report = self._decode(dict_id, stored, round_no, ts, market, at)[0]
            yield encoder.encode(report) + b"\n"

    def actions(self, market: str | None, start_ms: int, end_ms: int) -> list[OperatorAction]:
        """A market's (None: every market's) manual pauses and resumes in the window, oldest
        first."""
        if self.version < 3:
            return []
        rows = self._db.execute(
            f"SELECT {self._action_columns} FROM actions "
            "WHERE (market = ? OR ? IS NULL) AND ts >= ? AND ts <= ? ORDER BY ts, rowid",
            (market, market, start_ms, end_ms),
        )
        return [OperatorAction(*row) for row in rows]

    def configs(self, start_ms: int, end_ms: int) -> list[ConfigLoad]:
        """The config loads and reloads in the window, oldest first."""
        if self.version < 3:
            return []
        rows = self._db.execute(
            "SELECT ts, event, actor, path, sha256, changes FROM configs "
            "WHERE ts >= ? AND ts <= ? ORDER BY ts, rowid",
            (start_ms, end_ms),
        )
        return [ConfigLoad(*row) for row in rows]

    def config_text(self, sha256: str) -> ConfigText | None:
        """The stored text of the config whose sha256 is `sha256` (None: not stored, or a
        trail before schema version 7); AuditDataError for a row not as the writer wrote it."""
        if self.version < 7:
            return None
        row = self._db.execute(
            "SELECT text, redacted, pricing FROM configs WHERE sha256 = ? AND text IS NOT NULL"
            " ORDER BY ts, rowid LIMIT 1",
            (sha256,),
        ).fetchone()
        if row is None:
            return None
        text, redacted, pricing = row
        if type(text) is not bytes or type(redacted) is not int or type(pricing) is not str:
            what = f"configs: the text of sha256 {sha256[:12]} is not as written"
            raise AuditDataError(None, None, f"{what}: changed after it was written")
        return ConfigText(text, redacted, pricing)

    def config_at(self, ts: int) -> ConfigLoad | None:
        """The config in force at `ts`: the last one loaded at or before it."""
        if self.version < 3:
            return None
        row = self._db.execute(
            "SELECT ts, event, actor, path, sha256, changes FROM configs WHERE ts <= ? "
            "ORDER BY ts DESC, rowid DESC LIMIT 1",
            (ts,),
        ).fetchone()
        return None if row is None else ConfigLoad(*row)

    def action_at(self, market: str, ts: int) -> OperatorAction | None:
        """A market's last manual pause or resume at or before `ts`."""
        if self.version < 3:
            return None
        row = self._db.execute(
            f"SELECT {self._action_columns} FROM actions WHERE market = ? AND ts <= ? "
            "ORDER BY ts DESC, rowid DESC LIMIT 1",
            (market, ts),
        ).fetchone()
        return None if row is None else OperatorAction(*row)

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

    def first_quoted(self, start_ms: int, end_ms: int) -> tuple[int, int] | None:
        """The number and time of the window's first stored round with quotes, if any."""
        first = self._db.execute(
            "SELECT o.round, o.ts FROM rounds o WHERE o.ts >= ? AND o.ts <= ? AND o.quotes > 0 "
            "ORDER BY o.id LIMIT 1",
            (start_ms, end_ms),
        ).fetchone()
        return None if first is None else (_round_time(first[0]), _round_time(first[1]))

    def first_revision(self, start_ms: int, end_ms: int) -> int | None:
        """The pricing revision of the window's first stored round with quotes, the tape's
        (None: no such round, or its revision not recorded, before schema version 6)."""
        if self.version < 6:
            return None
        row = self._db.execute(
            "SELECT o.id, o.revision FROM rounds o WHERE o.ts >= ? AND o.ts <= ? AND o.quotes > 0"
            " ORDER BY o.id LIMIT 1",
            (start_ms, end_ms),
        ).fetchone()
        return None if row is None else _revision(row[0], row[1])

    def revision_change(self, start_ms: int, end_ms: int) -> tuple[int, int | None] | None:
        """The time and pricing revision of the first round after the window's first round with
        quotes that was computed under another revision than it (an upgrade between them: a
        replay by one oracled cannot give both), or None."""
        if self.version < 6:
            return None
        first = self._db.execute(
            "SELECT o.id, o.revision FROM rounds o WHERE o.ts >= ? AND o.ts <= ? AND o.quotes > 0"
            " ORDER BY o.id LIMIT 1",
            (start_ms, end_ms),
        ).fetchone()
        if first is None:
            return None
        row = self._db.execute(
            "SELECT id, ts, revision FROM rounds WHERE id > ? AND ts <= ? AND revision IS NOT ?"
            " ORDER BY id LIMIT 1",
            (first[0], end_ms, first[1]),
        ).fetchone()
        return None if row is None else (_round_time(row[1]), _revision(row[0], row[2]))

    def tape(self, out: IO[bytes], start_ms: int, end_ms: int) -> int:
        """Write the stored inputs of the rounds in the window as a quote tape; return quotes.

        Replaying it with the daemon's config gives the stored reports of those rounds byte for
        byte, when the window starts at the daemon's first round that had quotes
        (docs/publishing.md). The header names the first stored round with quotes, its number
        and time (`first_round`, `first_round_ts`): replay numbers its rounds from them, also
        when the rounds the first quotes went into were dropped from the trail and their quotes
        stored with that later round. The operator actions of the window's rounds go in as
        manual commands (schema version 5 on), each before the first quote later than its
        round's time and before the quotes stored with a later round: after the quotes of the
        rounds before it, as the replay needs. The header
        names the pricing revision that first round was computed under (schema version 6 on),
        and this oracled's version, the tape's writer.
        """
        count = 0
        for block, quotes, _ in self.tape_blocks(start_ms, end_ms):
            out.write(block)
            count += quotes
        return count

    def tape_blocks(self, start_ms: int, end_ms: int) -> Iterator[tuple[bytes, int, int | None]]:
        """`tape`'s bytes as they are read, each with the quotes it holds and the time of the
        stored round they were stored with (None: the header, the commands after the last
        one): the header, a round's lines at a time, and those commands (`oracled audit
        --replay` reads a trail's tape without writing it anywhere: a day's is gigabytes).
        The daemon took a round's quotes before it ran that round, and after the one before."""
        first = self.first_quoted(start_ms, end_ms)  # replay numbers its rounds from it
        first_round, first_ts = (None, None) if first is None else first
        header = header_line(
            first_round=first_round,
            first_round_ts=first_ts,
            pricing_revision=self.first_revision(start_ms, end_ms),
            software_version=__version__,
        )
        yield header, 0, None
        if self.version == 1:
            yield from self._tape_v1(start_ms, end_ms)
            return
        commands = self._commands(start_ms, end_ms)
        # With the time of the stored round before each (0: none), also one without quotes.
        rows = self._db.execute(
            "SELECT t.lines, o.round, o.ts, coalesce((SELECT p.ts FROM rounds p WHERE p.id < o.id"
            " ORDER BY p.id DESC LIMIT 1), 0) FROM tapes t JOIN rounds o ON o.id = t.round_id "
            "WHERE o.ts >= ? AND o.ts <= ? ORDER BY t.round_id",
            (start_ms, end_ms),
        )
        for block, round_no, ts, ran in rows:
            try:
                lines = zlib.decompress(block, wbits=_WBITS)
                count = lines.count(b"\n")
                if commands:
                    lines = _with_commands(lines, commands, ts, ran)
            except (zlib.error, TypeError, msgspec.DecodeError) as exc:  # overwritten: the tape
                what = f"its stored quotes cannot be read ({exc})"  # would be torn there
                raise AuditDataError(round_no, ts, what) from None
            yield lines, count, ts
        if commands:  # rounds after the last quote's
            yield b"".join(line for _, line in commands), 0, None

    def missing_tapes(self, start_ms: int, end_ms: int) -> int:
        """Rounds of the window that say they were given quotes and have no stored tape row
        (deleted from the file): their quotes are gone (0 before version 2, one row a quote)."""
        if self.version < 2:
            return 0
        (count,) = self._db.execute(
            "SELECT count(*) FROM rounds o WHERE o.ts >= ? AND o.ts <= ? AND o.quotes > 0"
            " AND NOT EXISTS (SELECT 1 FROM tapes t WHERE t.round_id = o.id)",
            (start_ms, end_ms),
        ).fetchone()
        return int(count)

    def _commands(self, start_ms: int, end_ms: int) -> collections.deque[tuple[int, bytes]]:
        """The operator actions first applied to a round of the window, as (round time, tape
        line), in the order they were applied; none before schema version 5."""
        if not self.actions_on_tape:
            return collections.deque()
        rows = self._db.execute(
            "SELECT round_ts, round, action, market, actor FROM actions "
            "WHERE round_ts >= ? AND round_ts <= ? ORDER BY round_ts, rowid",
            (start_ms, end_ms),
        )
        return collections.deque(
            (ts, command_to_line(ts, round_no, market, action != "resume", actor))
            for ts, round_no, action, market, actor in rows
        )

    def _tape_v1(self, start_ms: int, end_ms: int) -> Iterator[tuple[bytes, int, int | None]]:
        rows = self._db.execute(
            "SELECT q.line, o.ts FROM quotes q JOIN rounds o ON o.id = q.round_id "
            "WHERE o.ts >= ? AND o.ts <= ? ORDER BY q.round_id, q.seq",
            (start_ms, end_ms),
        )
        for line, ts in rows:
            yield line, 1, ts
