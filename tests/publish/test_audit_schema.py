"""The audit database's schema (version 2 brought reports deflated against a stored dictionary, a
round's quotes in one block): what it gives back is exactly what the rounds made, it reads like a
version 1 database, the writer leaves a version 1 database alone, and a round takes a fraction of
its raw size."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import msgspec
import pytest
from audit_rig import Feed, audit_config, trail, wait_for
from publish_rig import T0, make_config
from structlog.testing import capture_logs

from oracled import __version__
from oracled.cli import main
from oracled.core import PRICING_REVISION, RoundResult
from oracled.model import Quote
from oracled.publish.audit import SCHEMA_VERSION, AuditReader, AuditSchemaError, AuditTrail
from oracled.tape import header_line, quote_to_line

END = T0 * 2

#: The version 1 layout as it shipped: raw msgpack reports, one row per quote line.
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE rounds (
    id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, round INTEGER NOT NULL,
    markets INTEGER NOT NULL, quotes INTEGER NOT NULL, root BLOB, signature BLOB, signer TEXT
);
CREATE INDEX rounds_ts ON rounds (ts);
CREATE TABLE reports (
    round_id INTEGER NOT NULL, pos INTEGER NOT NULL, ts INTEGER NOT NULL, market TEXT NOT NULL,
    status TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY (round_id, pos)
) WITHOUT ROWID;
CREATE INDEX reports_market_ts ON reports (market, ts);
CREATE TABLE quotes (
    round_id INTEGER NOT NULL, seq INTEGER NOT NULL, line BLOB NOT NULL,
    PRIMARY KEY (round_id, seq)
) WITHOUT ROWID;
CREATE TABLE transitions (
    round_id INTEGER NOT NULL, ts INTEGER NOT NULL, market TEXT NOT NULL, old TEXT NOT NULL,
    new TEXT NOT NULL, reasons TEXT NOT NULL
);
CREATE INDEX transitions_market_ts ON transitions (market, ts);
INSERT INTO meta (key, value) VALUES ('schema', '1');
"""


def write_v1(path: Path, kept: list[tuple[RoundResult, list[Quote]]]) -> None:
    """A version 1 database of these rounds, written the way version 1 wrote them."""
    with sqlite3.connect(path) as db:
        db.executescript(V1_SCHEMA)
        for result, quotes in kept:
            cur = db.execute(
                "INSERT INTO rounds (ts, round, markets, quotes) VALUES (?, ?, ?, ?)",
                (result.ts, result.round, len(result.layout.markets), len(quotes)),
            )
            rid = cur.lastrowid
            db.executemany(
                "INSERT INTO reports VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (rid, i, r.ts, r.market, r.status, msgspec.msgpack.encode(r))
                    for i, r in enumerate(result.reports())
                ],
            )
            db.executemany(
                "INSERT INTO quotes VALUES (?, ?, ?)",
                [(rid, i, quote_to_line(q)) for i, q in enumerate(quotes)],
            )
            db.executemany(
                "INSERT INTO transitions VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (rid, result.ts, t.market, t.old, t.new, ",".join(t.reasons))
                    for t in result.transitions
                ],
            )
    sqlite3.connect(path).close()


def run(feed: Feed, rounds: int, *, silent_until: int = 0, pause: range = range(0)) -> None:
    """`rounds` rounds: every source silent before `silent_until`, two silent in `pause`."""
    start = len(feed.kept)
    for n in range(start, start + rounds):
        if n < silent_until:
            feed.silent = {"alpha", "beta", "gamma"}
        elif n in pause:
            feed.silent = {"beta", "gamma"}
        else:
            feed.silent = set()
        feed.round()


def test_reports_and_quotes_come_back_exactly_as_the_rounds_made_them(tmp_path: Path) -> None:
    """A database started while every source is silent (its first dictionary made from reports
    without prices), then live, then written by a restarted writer: every stored report equals
    the round's report and its msgpack, the tape is the quotes' lines byte for byte, and the
    dictionaries are two (the start-up one, then one from the first live round; a restart
    makes none)."""
    db = tmp_path / "audit.sqlite3"
    feed = Feed(make_config(), trail(db))
    run(feed, 30, silent_until=4, pause=range(15, 20))
    feed.audit.close()
    feed.audit = trail(db)  # the restarted daemon's writer appends to the same database
    run(feed, 10)
    feed.audit.close()
    assert feed.audit.stats.rounds == 10 and feed.audit.stats.ok

    reader = AuditReader(db)
    assert reader.version == SCHEMA_VERSION == 7
    for market in feed.prices:
        stored = list(reader.reports(market, 0, END))
        expected = [r for result, _ in feed.kept for r in result.reports() if r.market == market]
        assert [s.report for s in stored] == expected
        assert [s.body for s in stored] == [msgspec.msgpack.encode(r) for r in expected]
    assert expected[0].status == "unknown" and expected[-1].status == "active"
    out = io.BytesIO()
    count = reader.tape(out, 0, END)
    lines = b"".join(quote_to_line(q) for _, quotes in feed.kept for q in quotes)
    first = next(result for result, quotes in feed.kept if quotes)
    header = header_line(
        first_round=first.round,
        first_round_ts=first.ts,
        pricing_revision=PRICING_REVISION,
        software_version=__version__,
    )
    assert out.getvalue() == header + lines
    assert count == sum(len(quotes) for _, quotes in feed.kept) == lines.count(b"\n")
    reader.close()

    with sqlite3.connect(db) as con:
        dicts = con.execute("SELECT id, markets, priced FROM dictionaries ORDER BY id").fetchall()
        used = con.execute("SELECT dict, count(*) FROM reports GROUP BY dict").fetchall()
        silent = con.execute("SELECT count(*) FROM rounds WHERE quotes = 0").fetchone()[0]
        tapes = con.execute("SELECT count(*) FROM tapes").fetchone()[0]
    assert dicts == [(1, 3, 0), (2, 3, 3)]
    assert used == [(1, 3 * 4), (2, 3 * 36)]  # the silent start, then the live dictionary
    assert silent == 4 and tapes == 36  # a round without quotes has no block


def test_a_version_1_database_answers_exactly_as_version_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same rounds in a version 1 database (written here as version 1 wrote them) and in a
    version 2 one: the summary, timeline, --at, CSV and tape of `oracled audit` are the same
    (the tape's header but for the rounds' pricing revision, which version 1 did not keep)."""
    v2, v1 = tmp_path / "v2.sqlite3", tmp_path / "v1.sqlite3"
    feed = Feed(make_config(), trail(v2), start=False)  # version 1 keeps no config load
    run(feed, 50, silent_until=2, pause=range(8, 38))
    feed.audit.close()
    write_v1(v1, feed.kept)
    reader = AuditReader(v1)
    assert reader.version == 1
    reader.close()
    capsys.readouterr()  # the writer's log lines

    at = str(T0 + 35 * 250)
    answers: dict[Path, list[str]] = {}
    for db in (v2, v1):
        got: list[str] = []
        for extra in (
            [],
            ["--market", "BTC/USD"],
            ["--market", "SOL/USD", "--from", str(T0 + 5 * 250), "--to", str(T0 + 45 * 250)],
            ["--market", "ETH/USD", "--at", at],
            ["--market", "BTC/USD", "--csv", str(db.with_suffix(".csv"))],
            ["--tape", str(db.with_suffix(".tape"))],
        ):
            assert main(["audit", "--db", str(db), *extra]) == 0
            got.append(capsys.readouterr().out.replace(str(db), "DB"))
        got.append(db.with_suffix(".csv").read_text())
        got.append(db.with_suffix(".tape").read_text())
        answers[db] = got
    # The tapes but for their header's pricing revision, which the newer trail keeps with each
    # round (schema version 6) and version 1 did not: its tape names none.
    (head1, body1), (head2, body2) = (answers[db].pop().split("\n", 1) for db in (v1, v2))
    assert body1 == body2
    revision = {"pricing_revision": PRICING_REVISION}
    assert msgspec.json.decode(head2) == msgspec.json.decode(head1) | revision
    # --at names the revision its round was computed under where the trail kept it (088edcb):
    # one line more, after the report's heading, and nothing else different.
    said = f"computed under pricing revision {PRICING_REVISION}\n"
    heading, rest = answers[v2][3].split("\n", 1)
    assert said not in answers[v1][3] and rest.startswith(said)
    answers[v2][3] = heading + "\n" + rest.removeprefix(said)
    assert answers[v1] == answers[v2]
    assert "paused [" in answers[v2][1] and "excluded: stale" in answers[v2][3]
    assert body2.count("\n") == 2 * 0 + 30 * 3 + 18 * 9


def test_the_writer_leaves_a_version_1_database_alone_and_prices_go_on(tmp_path: Path) -> None:
    """A version 1 file at audit.path: every round is counted lost with an error naming the file
    and what to do, and the file is not changed; once it is moved aside the running writer makes
    a new database there at its next try, and the moved file still reads. The lost rounds'
    quotes, kept for the next round written, are dropped past the carry cap, counted with
    `reason="write_error"` and logged once."""
    db, aside = tmp_path / "audit.sqlite3", tmp_path / "audit-v1.sqlite3"
    first = Feed(make_config(), trail(tmp_path / "scratch.sqlite3"))
    run(first, 5)
    first.audit.close()
    write_v1(db, first.kept)
    before = db.read_bytes()

    audit = AuditTrail(audit_config(db))
    audit._retry_s = 0.0  # every batch tries the file again (5 s in the daemon)
    audit.carry_max = 20  # quotes kept at most; a round brings 9
    audit.start()
    feed = Feed(make_config(), audit)
    with capture_logs() as logs:
        run(feed, 3)
        wait_for(lambda: audit.stats.write_errors == 3)
    assert audit.stats.rounds == 0 and not audit.stats.ok
    # 9 kept, 18 kept, then 27 > 20: all dropped, however the writer batched the three rounds
    assert audit.stats.dropped_quotes == {"writer_behind": 0, "lock_away": 0, "write_error": 27}
    told = "audit trail not written: quotes of the rounds lost are dropped from the tape"
    assert [e["quotes"] for e in logs if e["event"] == told] == [27]
    error = audit.stats.last_error
    assert error is not None
    assert str(db) in error and "schema version 1" in error and "move the file aside" in error
    assert db.read_bytes() == before
    # nothing made beside it but the writer's lock (no journal, no second database)
    assert sorted(p.name for p in tmp_path.glob("audit*")) == [
        "audit.sqlite3",
        "audit.sqlite3.lock",
    ]

    db.rename(aside)
    run(feed, 4)
    audit.close()
    assert audit.stats.ok and audit.stats.rounds == 4 and audit.stats.write_errors == 3
    assert feed.core.rounds == 7  # the core never waited for the trail
    reader = AuditReader(db)
    assert reader.version == 7 and [r.round for r in reader.rounds(0, END)] == [4, 5, 6, 7]
    reader.close()
    reader = AuditReader(aside)
    assert reader.version == 1 and len(reader.rounds(0, END)) == 5
    reader.close()


def used_bytes(path: Path) -> int:
    """Bytes in the database's pages in use (what retention counts against max_bytes)."""
    with sqlite3.connect(path) as db:
        pages, free, size = (
            db.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("page_count", "freelist_count", "page_size")
        )
    return int((pages - free) * size)


def test_a_round_takes_under_a_quarter_of_what_version_1_took(tmp_path: Path) -> None:
    """1,000 rounds of 3 markets x 3 sources: version 2 takes under a quarter of the bytes that
    version 1 takes for the same rounds (measured: ~510 B a round against ~2,550 B; a sanity
    bound on the layout, not a benchmark)."""
    v2, v1 = tmp_path / "v2.sqlite3", tmp_path / "v1.sqlite3"
    feed = Feed(make_config(), trail(v2, queue=2_000))
    run(feed, 1_000)
    feed.audit.close()
    assert feed.audit.stats.rounds == 1_000
    write_v1(v1, feed.kept)
    per_round_v2, per_round_v1 = used_bytes(v2) / 1_000, used_bytes(v1) / 1_000
    assert per_round_v2 * 4 < per_round_v1
    assert per_round_v2 < 700


@pytest.mark.parametrize(
    "schema",
    [
        "CREATE TABLE users (name TEXT)",  # another program's database
        "CREATE TABLE meta (key TEXT, value TEXT); INSERT INTO meta VALUES ('schema', 'two')",
    ],
    ids=["foreign-tables", "unreadable-version"],
)
def test_a_database_of_unknown_schema_is_left_alone_and_its_failure_logged_once(
    tmp_path: Path, schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """audit.path naming a SQLite file that is no audit database: the writer never touches it,
    counts every round lost, and logs the failure once however often it retries; the reader
    and `oracled audit` refuse it (exit 2) with the schema version unknown."""
    db = tmp_path / "other.sqlite3"
    with sqlite3.connect(db) as con:
        con.executescript(schema)
    before = db.read_bytes()
    audit = AuditTrail(audit_config(db, batch_rounds=1))
    audit._retry_s = 0.0  # every batch tries the file again (5 s in the daemon)
    with capture_logs() as logs:
        audit.start()
        feed = Feed(make_config(), audit)
        for _ in range(3):
            feed.round()
            wait_for(lambda: audit.stats.write_errors == feed.core.rounds)
        audit.close()
    assert audit.stats.rounds == 0 and feed.core.rounds == 3
    assert "schema version unknown" in (audit.stats.last_error or "")
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "audit trail not written; prices go on without it"
    ]
    assert db.read_bytes() == before
    with pytest.raises(AuditSchemaError, match="schema version unknown"):
        AuditReader(db)
    capsys.readouterr()
    assert main(["audit", "--db", str(db)]) == 2
    assert "not an audit database" in capsys.readouterr().err


def test_a_second_writer_of_the_same_trail_waits_until_the_first_lets_go(tmp_path: Path) -> None:
    """Two trails on one file (a second daemon, or `oracled record` beside one, on the same
    config): the second writes nothing, counts its rounds lost with an error naming the file and
    what to do, while the first goes on; once the first closes, the second takes over."""
    db = tmp_path / "audit.sqlite3"
    first = Feed(make_config(), trail(db))
    run(first, 3)
    wait_for(lambda: first.audit.stats.rounds == 3)
    audit = AuditTrail(audit_config(db))
    audit._retry_s = 0.0  # every batch tries the file again (5 s in the daemon)
    audit.start()
    second = Feed(make_config(), audit)
    second.now += 60_000  # its rounds are a minute later: told apart in the trail below
    run(second, 2)
    wait_for(lambda: audit.stats.write_errors == 2)
    error = audit.stats.last_error
    assert error is not None and not audit.stats.ok
    assert str(db) in error and "written by another process" in error and "audit.path" in error
    run(first, 2)
    first.audit.close()
    assert first.audit.stats.rounds == 5 and first.audit.stats.ok
    run(second, 2)
    audit.close()
    assert audit.stats.rounds == 2 and audit.stats.ok
    reader = AuditReader(db)
    assert [r.round for r in reader.rounds(0, END)] == [1, 2, 3, 4, 5, 3, 4]
    reader.close()
