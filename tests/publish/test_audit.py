"""The audit trail: what it stores, the questions `oracled audit` answers, and the tape it gives
back, all from a real core's rounds written by the real writer thread into SQLite."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import re
import sqlite3
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from audit_rig import Feed, audit_config, recorded, trail
from publish_rig import INTERVAL, SOURCES, T0, Rounds, make_config
from pydantic import ValidationError
from structlog.testing import capture_logs

from oracled import __version__
from oracled.cli import main
from oracled.config import AuditConfig, parse_config
from oracled.core import PRICING_REVISION
from oracled.publish.audit import AuditReader, AuditTrail
from oracled.publish.audit_cli import parse_time
from oracled.publish.signer import RoundSigner, SigningKey, recover_signer, round_digest
from oracled.replay import replay


def test_rounds_are_stored_with_reports_quotes_transitions_and_signature(tmp_path: Path) -> None:
    """Each round: one report per market, the quotes it saw, its transitions and signature."""
    db = tmp_path / "audit.sqlite3"
    audit = trail(db)
    feed = Feed(make_config(), audit)
    signer = RoundSigner(SigningKey.generate(), "test")
    for _ in range(4):
        feed.round(signer)
    audit.close()
    assert audit.stats.rounds == 4
    assert audit.stats.ok
    reader = AuditReader(db)
    rounds = reader.rounds(0, T0 * 2)
    assert [r.round for r in rounds] == [1, 2, 3, 4]
    assert all(r.markets == 3 and r.quotes == 9 for r in rounds)
    last = rounds[-1]
    assert last.signature is not None and last.root is not None
    digest = round_digest(last.ts, last.round, last.markets, last.root, "test")
    assert recover_signer(digest, last.signature) == signer.address == last.signer
    stored = list(reader.reports("BTC/USD", 0, T0 * 2))
    assert [s.report.status for s in stored] == ["active"] * 4
    assert {s.id for s in stored[-1].report.sources} == set(SOURCES)
    assert reader.transitions("BTC/USD", 0, T0 * 2) == [(T0 + INTERVAL, "unknown", "active")]
    reader.close()


def test_replaying_the_exported_tape_reproduces_the_stored_reports_byte_for_byte(
    tmp_path: Path,
) -> None:
    """`oracled audit --tape` then `oracled replay`: the same JSON lines the trail holds, through
    a pause (two sources silent) and its recovery."""
    db = tmp_path / "audit.sqlite3"
    audit = trail(db)
    feed = Feed(make_config(), audit)
    for n in range(60):
        feed.silent = {"beta", "gamma"} if 20 <= n < 50 else set()
        feed.round()
    audit.close()
    tape = tmp_path / "tape.jsonl"
    assert main(["audit", "--db", str(db), "--tape", str(tape)]) == 0
    out = io.BytesIO()
    with tape.open("rb") as lines:
        stats = replay(make_config(), lines, out)
    assert stats.errors == [] and stats.rounds == 60
    reader = AuditReader(db)
    stored = b"".join(reader.report_lines(0, T0 * 2))
    reader.close()
    assert b'"status":"paused"' in stored and b'"status":"active"' in stored
    assert out.getvalue() == stored


def test_the_timeline_says_when_and_why_a_market_paused_with_its_sources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two sources go silent: the timeline shows active, then paused with the quorum reason and
    each source's fate (stale), then active again; --at shows the report in force."""
    db = tmp_path / "audit.sqlite3"
    audit = trail(db)
    feed = Feed(make_config(), audit)
    for n in range(80):
        feed.silent = {"beta", "gamma"} if 10 <= n < 60 else set()
        feed.round()
    audit.close()
    assert main(["audit", "--db", str(db), "--market", "BTC/USD"]) == 0
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if "round " in line and "Z  round" in line]
    statuses = [line.split("  ")[2].split(" ")[0] for line in lines]
    assert statuses[0] == "active" and statuses[-1] == "active"
    assert "paused" in statuses
    paused = next(i for i, line in enumerate(text.splitlines()) if "paused [" in line)
    paused_line, sources_line = text.splitlines()[paused : paused + 2]
    assert "quorum" in paused_line and "last good 64006.40" in paused_line
    assert (
        "alpha 64000.00 used" in sources_line and "beta 64006.40 excluded (stale)" in sources_line
    )
    when = paused_line.split("  ")[0]
    assert main(["audit", "--db", str(db), "--market", "BTC/USD", "--at", when[:-1]]) == 0
    detail = capsys.readouterr().out
    assert "paused" in detail and "excluded: stale" in detail


def test_the_report_at_a_time_the_trail_has_no_round_for_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A daemon killed and started again a minute later: `--at` a moment in between prints the
    last report before it with a warning that nothing is stored from that round to the next
    one, so an auditor never takes a dead daemon's last price for the one in force; a moment
    inside a run prints no warning."""
    db = tmp_path / "audit.sqlite3"
    first = recorded(db, 10)
    second = recorded(db, 10, after=first, gap_ms=60_000)
    at = ["audit", "--db", str(db), "--market", "BTC/USD", "--at"]
    assert main([*at, str(first.now + 30_000)]) == 0
    out = capsys.readouterr().out
    assert "the report of round 10" in out
    assert (
        "warning: nothing is stored from round 10 at 2023-11-14T22:13:22.500Z to round 1 at "
        "2023-11-14T22:14:22.750Z" in out
    )
    assert main([*at, str(first.now - INTERVAL // 2)]) == 0
    out = capsys.readouterr().out
    assert "the report of round 9" in out and "warning" not in out
    assert main([*at, str(second.now + 30_000)]) == 0
    out = capsys.readouterr().out
    assert "the report of round 10" in out
    assert "warning: nothing is stored after round 10 at 2023-11-14T22:14:25.000Z" in out


def test_csv_export_has_one_row_per_round_with_sources_and_reasons(tmp_path: Path) -> None:
    """The compliance export: every stored round of the market, in time order."""
    db = tmp_path / "audit.sqlite3"
    recorded(db, 5)
    out = tmp_path / "btc.csv"
    start, end = str(T0 + 2 * INTERVAL), str(T0 + 4 * INTERVAL)
    args = ["audit", "--db", str(db), "--market", "BTC/USD", "--csv", str(out)]
    assert main([*args, "--from", start, "--to", end]) == 0
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["ts_ms"]) for r in rows] == [T0 + k * INTERVAL for k in (2, 3, 4)]
    assert rows[0]["status"] == "active" and rows[0]["price"] == "64006.40"
    assert rows[0]["sources_used"] == "3" and "gamma 64012.80 used" in rows[0]["sources"]
    assert rows[0]["time"].endswith("Z")


def test_a_full_queue_drops_rounds_and_counts_them_without_blocking(tmp_path: Path) -> None:
    """No writer running and a queue of 2: the third and later rounds are dropped, counted as
    `writer_behind` (the writer is not holding its rounds for its lock file)."""
    audit = AuditTrail(audit_config(tmp_path / "a.sqlite3", queue=2))
    feed = Feed(make_config(), audit, start=False)
    for _ in range(5):
        feed.round()
    assert audit.stats.dropped == {"writer_behind": 3, "lock_away": 0}
    audit.start()
    audit.close()
    assert audit.stats.rounds == 2


def test_a_dropped_rounds_quotes_go_into_the_next_stored_round_so_the_tape_keeps_them(
    tmp_path: Path,
) -> None:
    """No writer running and a queue of 2: rounds 3 to 6 are dropped, but their quotes are not;
    they go in with the next round that is queued, so the exported tape holds every quote fed,
    in order, and a replay of it gives the rounds after the gap as they were published (a later
    round's price may rest on a quote that arrived in a dropped round)."""
    db = tmp_path / "a.sqlite3"
    audit = AuditTrail(audit_config(db, queue=2))
    feed = Feed(make_config(), audit, start=False)
    for _ in range(6):
        feed.round()
    assert audit.stats.dropped == {"writer_behind": 4, "lock_away": 0}
    audit.start()
    while audit.stats.rounds < 2:  # the writer empties the queue
        time.sleep(0.01)
    feed.round()  # fits again
    audit.close()
    fed = [q for _, quotes in feed.kept for q in quotes]
    reader = AuditReader(db)
    tape = io.BytesIO()
    assert reader.tape(tape, 0, T0 * 2) == len(fed)
    assert [r.quotes for r in reader.rounds(0, T0 * 2)] == [9, 9, 45]
    last = reader.report_lines(feed.kept[-1][0].ts, T0 * 2)
    stored_last = b"".join(last)
    reader.close()
    out = io.BytesIO()
    stats = replay(make_config(), io.BytesIO(tape.getvalue()), out)
    assert stats.errors == [] and stats.quotes == len(fed) and stats.rounds == 7
    assert out.getvalue().endswith(stored_last)


def test_a_tape_whose_first_quoted_rounds_were_dropped_replays_with_the_daemons_round_numbers(
    tmp_path: Path,
) -> None:
    """The first two rounds with quotes find the queue full (two silent rounds hold it): their
    quotes are stored with round 5, the first stored round with quotes. The exported tape's
    header names round 5 and its time, and the replay numbers the round its first quote went
    into 3, as the daemon did: every replayed report equals the one published live, and those
    of round 5 the stored ones, byte for byte (before, the header said 5 and the replay
    numbered rounds 3 to 5 as 5 to 7). The two silent rounds, before any quote, have no replay."""
    db = tmp_path / "a.sqlite3"
    audit = AuditTrail(audit_config(db, queue=2))
    feed = Feed(make_config(), audit, start=False)
    feed.silent = set(SOURCES)
    feed.round()
    feed.round()  # rounds 1 and 2, without quotes, fill the queue
    feed.silent = set()
    feed.round()
    feed.round()  # rounds 3 and 4 are dropped; their quotes are carried
    assert audit.stats.dropped == {"writer_behind": 2, "lock_away": 0}
    audit.start()
    while audit.stats.rounds < 2:  # the writer empties the queue
        time.sleep(0.01)
    feed.round()  # round 5: stored with the quotes of rounds 3, 4 and 5
    audit.close()
    reader = AuditReader(db)
    assert [(r.round, r.quotes) for r in reader.rounds(0, T0 * 2)] == [(1, 0), (2, 0), (5, 27)]
    stored = b"".join(reader.report_lines(feed.kept[4][0].ts, T0 * 2))
    reader.close()
    tape = tmp_path / "tape.jsonl"
    assert main(["audit", "--db", str(db), "--tape", str(tape)]) == 0
    header = tape.read_bytes().split(b"\n", 1)[0]
    assert msgspec.json.decode(header) == {
        "format": "oracled-tape",
        "version": 2,
        "pricing_revision": PRICING_REVISION,  # the stored round's, schema version 6
        "software_version": __version__,
        "first_round": 5,
        "first_round_ts": feed.kept[4][0].ts,
    }
    out = io.BytesIO()
    with tape.open("rb") as lines:
        stats = replay(make_config(), lines, out)
    encoder = msgspec.json.Encoder()
    live = b"".join(
        encoder.encode(r) + b"\n" for result, _ in feed.kept[2:] for r in result.reports()
    )
    assert stats.errors == [] and stats.rounds == 3
    assert out.getvalue() == live
    assert out.getvalue().endswith(stored) and b'"round":5,' in stored


def test_quotes_carried_past_dropped_rounds_are_capped_counted_and_logged(tmp_path: Path) -> None:
    """A writer that stays stuck must not grow the carried quotes without limit: past the cap
    they are dropped, counted in `stats.dropped_quotes` (as `writer_behind`, their rounds'
    reason) and logged once per episode with it, and the next stored round holds only what came
    after."""
    audit = AuditTrail(audit_config(tmp_path / "a.sqlite3", queue=1))
    audit.carry_max = 20  # quotes carried at most; a round brings 9
    feed = Feed(make_config(), audit, start=False)
    with capture_logs() as logs:
        for _ in range(4):  # 1 queued; 9 carried, 18, then 27 > 20: all 27 dropped
            feed.round()
    assert audit.stats.dropped == {"writer_behind": 3, "lock_away": 0}
    assert audit.stats.dropped_quotes == {"writer_behind": 27, "lock_away": 0, "write_error": 0}
    carry_lines = [e for e in logs if e["event"].startswith("audit queue full: quotes")]
    assert len(carry_lines) == 1 and carry_lines[0]["log_level"] == "error"
    assert carry_lines[0]["reason"] == "writer_behind"
    audit.start()
    audit.close()
    assert audit.stats.rounds == 1


def test_a_database_at_its_page_limit_deletes_its_oldest_rounds_and_writes_every_round(
    tmp_path: Path,
) -> None:
    """SQLite says the database is full (its max_page_count here; a real full filesystem in
    test_audit_full_disk.py): the writer deletes the oldest rounds into free pages of the file,
    writes the batch that failed, and goes on; the newest rounds stay, none is lost, and the
    core's rounds are untouched. Before, every round from the first full write on was lost."""
    db = tmp_path / "full.sqlite3"
    audit = AuditTrail(audit_config(db, queue=1000), page_limit=24)
    audit.start()
    feed = Feed(make_config(), audit)
    for _ in range(200):
        feed.round()
    assert audit.close()
    assert feed.core.rounds == 200
    assert (audit.stats.rounds, audit.stats.write_errors, audit.stats.ok) == (200, 0, True)
    reader = AuditReader(db)
    kept = [r.round for r in reader.rounds(0, T0 * 2)]
    reader.close()
    assert kept == list(range(kept[0], 201)) and kept[0] > 1


def test_retention_keeps_the_database_under_its_size_limit(tmp_path: Path) -> None:
    """With max_bytes and a retention check at every batch, the oldest rounds are deleted, and
    the rounds kept still decode (dictionaries outlive the rounds they were made from)."""
    db = tmp_path / "small.sqlite3"
    audit = AuditTrail(audit_config(db, max_bytes=60_000, batch_rounds=1, queue=1000))
    audit._retention_every_s = 0.0
    audit.start()
    feed = Feed(make_config(), audit)
    for _ in range(300):
        feed.round()
    audit.close()
    assert audit.stats.rounds == 300
    assert 0 < audit.stats.bytes <= 60_000
    reader = AuditReader(db)
    kept = reader.rounds(0, T0 * 2)
    decoded = sum(1 for _ in reader.report_lines(0, T0 * 2))
    reader.close()
    assert 0 < len(kept) < 300
    assert kept[-1].round == 300  # the newest stay
    # the dictionary was made from round 1, long deleted: the rows that use it still read
    assert decoded == 3 * len(kept)


def test_retention_by_age_deletes_rounds_older_than_the_window(tmp_path: Path) -> None:
    """retention_days counts from the newest round: older rounds go, newer stay."""
    db = tmp_path / "age.sqlite3"
    window_ms = 10 * INTERVAL
    audit = AuditTrail(audit_config(db, retention_days=window_ms / 86_400_000, queue=1000))
    audit._retention_every_s = 0.0
    audit.start()
    feed = Feed(make_config(), audit)
    for _ in range(30):
        feed.round()
    audit.close()
    with sqlite3.connect(db) as con:
        newest, oldest = con.execute("SELECT max(ts), min(ts) FROM rounds").fetchone()
        orphans = con.execute(
            "SELECT count(*) FROM reports WHERE round_id NOT IN (SELECT id FROM rounds)"
        ).fetchone()[0]
    assert newest == T0 + 30 * INTERVAL
    assert newest - window_ms - INTERVAL * audit.cfg.batch_rounds <= oldest
    assert oldest > T0 + INTERVAL
    assert orphans == 0


def test_audit_answers_nothing_found_with_exit_1_and_bad_requests_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`oracled audit` says so when there is nothing to show (exit 1: an empty database, a
    window without rounds, a time before the first round) and refuses what it cannot read
    (exit 2: no such file, a time that is no time), so scripts can tell them apart."""
    db = tmp_path / "audit.sqlite3"
    empty = AuditTrail(audit_config(db))
    empty.start()
    empty.submit_signed(
        RoundSigner(SigningKey.generate(), "test").sign(Rounds(make_config()).step())
    )
    empty.close()  # a database with its tables made and no round in it
    capsys.readouterr()
    assert main(["audit", "--db", str(db)]) == 1
    assert capsys.readouterr().out.strip() == f"{db}: empty"

    recorded(db, 3)
    market = ["audit", "--db", str(db), "--market", "BTC/USD"]
    assert main([*market, "--from", str(T0 + 10 * INTERVAL)]) == 1
    assert "no rounds stored in this window" in capsys.readouterr().out
    assert main([*market, "--at", str(T0)]) == 1
    assert "nothing stored at or before 2023-11-14T22:13:20.000Z" in capsys.readouterr().out

    assert main(["audit", "--db", str(tmp_path / "missing.sqlite3")]) == 2
    assert "no such audit database" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*market, "--from", "yesterday"])
    assert exc.value.code == 2
    assert "'yesterday' is neither milliseconds nor an ISO 8601 time" in capsys.readouterr().err


def test_times_with_an_offset_are_read_in_that_offset() -> None:
    """An ISO time with an offset is that instant; without one it is UTC."""
    assert parse_time("2023-11-14T22:13:20Z") == T0
    assert parse_time("2023-11-15T00:13:20+02:00") == T0
    assert parse_time("2023-11-14T22:13:20") == T0
    assert parse_time(f" {T0} ") == T0


def test_the_report_at_a_time_shows_the_rounds_signature(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--at` on a signed round names the signer recovered (and checked against the round) and
    prints the signature that recovers to it, then the signed format it was verified in."""
    db = tmp_path / "audit.sqlite3"
    audit = trail(db)
    feed = Feed(make_config(), audit)
    key = SigningKey.generate()
    for _ in range(2):
        feed.round(RoundSigner(key, "test"))
    audit.close()
    capsys.readouterr()
    at = ["audit", "--db", str(db), "--deployment", "test", "--market", "ETH/USD", "--at"]
    assert main([*at, str(feed.now)]) == 0
    *_, line, signed_format = capsys.readouterr().out.splitlines()
    signer, signature = (
        line.strip().removeprefix("signed by ").split(" (verified against the round): ")
    )
    assert signer == key.address and len(bytes.fromhex(signature.removeprefix("0x"))) == 65
    assert signed_format == "    verified in signed format 3"


def test_a_drop_episode_is_logged_once_and_its_end_once(tmp_path: Path) -> None:
    """While the queue is full the first dropped round is logged, not every one; the first
    round that fits again says the queue has room, with the total dropped."""
    audit = AuditTrail(audit_config(tmp_path / "a.sqlite3", queue=1))
    feed = Feed(make_config(), audit, start=False)
    with capture_logs() as logs:
        for _ in range(4):
            feed.round()  # no writer yet: one queued, three dropped
        audit.start()
        audit.close()  # the writer empties the queue
        feed.round()
    assert audit.stats.dropped == {"writer_behind": 3, "lock_away": 0}
    assert [(e["log_level"], e["event"]) for e in logs] == [
        ("error", "audit queue full: rounds are dropped from the trail"),
        ("info", "audit trail writing"),
        ("warning", "audit queue has room again"),
    ]
    assert logs[0]["reason"] == "writer_behind" and logs[-1]["dropped_total"] == 3


def test_an_operator_event_that_finds_the_queue_full_is_counted_and_named_in_words(
    tmp_path: Path,
) -> None:
    """A manual pause and a config reload that find the queue full are dropped, counted and
    logged with their fields as plain values. The line used to pass the event as `event=`,
    which clashes with the log line's own event: a TypeError, raised on the round loop's path
    (the service records a pause just before the round it applies to)."""
    audit = AuditTrail(audit_config(tmp_path / "a.sqlite3", queue=1))
    feed = Feed(make_config(), audit, start=False)
    with capture_logs() as logs:
        feed.round()  # no writer yet: the round fills the queue
        audit.record_action(T0 + 1, "alice", "pause", "BTC/USD", 2, T0 + INTERVAL)
        audit.record_config(T0 + 2, "reload", "SIGHUP", "oracled.toml", "ab" * 32, "{}")
    assert audit.stats.dropped_events == {"writer_behind": 2, "lock_away": 0}
    dropped = [
        {k: e.get(k) for k in ("what", "actor", "ts", "market", "path", "reason")}
        for e in logs
        if e["event"] == "audit queue full: an operator event is dropped"
    ]
    assert dropped == [
        {"what": "pause", "actor": "alice", "ts": T0 + 1, "market": "BTC/USD", "path": None,
         "reason": "writer_behind"},
        {"what": "config reload", "actor": "SIGHUP", "ts": T0 + 2, "market": None,
         "path": "oracled.toml", "reason": "writer_behind"},
    ]  # fmt: skip
    audit.start()
    audit.close()


def test_a_signature_that_finds_the_queue_full_is_counted_and_logged_not_silently_lost(
    tmp_path: Path,
) -> None:
    """A round queued, then its signature arriving at a full queue: the round is stored but
    unsigned. That used to be dropped in silence (as if the round had been dropped too); now it
    is counted and logged once. A signature of a round that was itself dropped stays silent
    (the round is counted)."""
    audit = AuditTrail(audit_config(tmp_path / "a.sqlite3", queue=1))
    feed = Feed(make_config(), audit, start=False)
    signer = RoundSigner(SigningKey.generate(), "test")
    with capture_logs() as logs:
        feed.round(signer)  # no writer yet: the round is queued, its signature finds it full
        feed.round(signer)  # this round is dropped, and so is its signature
        audit.start()
        audit.close()
    assert audit.stats.dropped == {"writer_behind": 1, "lock_away": 0}
    assert audit.stats.signatures_dropped == {"writer_behind": 1, "lock_away": 0}
    lost = [e for e in logs if "signature" in e["event"]]
    assert [(e["event"], e["round"], e["reason"]) for e in lost] == [
        (
            "audit queue full: a stored round's signature is dropped from the trail",
            1,
            "writer_behind",
        )
    ]
    reader = AuditReader(tmp_path / "a.sqlite3")
    assert [(r.round, r.signature) for r in reader.rounds(0, T0 * 2)] == [(1, None)]
    reader.close()


def test_zero_turns_the_age_limit_off_and_a_tiny_size_limit_keeps_the_newest_round(
    tmp_path: Path,
) -> None:
    """retention_days = 0 deletes nothing for its age; a max_bytes no round fits under deletes
    down to the newest round and stops there (it never empties the trail or spins)."""
    rounds_of = {}
    for name, settings in (("ageless", {"retention_days": 0}), ("tiny", {"max_bytes": 1})):
        db = tmp_path / f"{name}.sqlite3"
        audit = AuditTrail(audit_config(db, batch_rounds=1, queue=100, **settings))
        audit._retention_every_s = 0.0  # a retention check after every batch
        audit.start()
        feed = Feed(make_config(), audit)
        for _ in range(6):
            feed.round()
        audit.close()
        assert audit.stats.rounds == 6 and audit.stats.ok, name
        reader = AuditReader(db)
        rounds_of[name] = [r.round for r in reader.rounds(0, T0 * 2)]
        assert sum(1 for _ in reader.report_lines(0, T0 * 2)) == 3 * len(rounds_of[name])
        reader.close()
    assert rounds_of == {"ageless": [1, 2, 3, 4, 5, 6], "tiny": [6]}


@contextlib.contextmanager
def writer_stuck_on_a_lock(db: Path, audit: AuditTrail, feed: Feed) -> Iterator[None]:
    """Inside: the writer holds a round and waits on another connection's exclusive lock (5 s
    busy timeout), its queue empty; on leaving, the lock goes."""
    feed.round()
    deadline = time.monotonic() + 4.0  # hang guard, inside the writer's 5 s busy timeout
    while audit.stats.rounds < 1:  # the database exists with its tables
        assert time.monotonic() < deadline
        time.sleep(0.01)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # the writer waits on this lock (5 s busy timeout)
    try:
        feed.round()
        while not audit._queue.empty():  # the writer took it and waits on the lock
            assert time.monotonic() < deadline
            time.sleep(0.01)
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_the_quotes_of_rounds_a_failed_write_lost_go_in_with_the_next_round_written(
    tmp_path: Path,
) -> None:
    """The bug: a batch the database refused (locked by another connection past the 5 s busy
    timeout here; a read-only directory or a full disk alike) lost its rounds, counted as write
    errors, and their quotes with them, uncounted: the exported tape had a hole no replay could
    see, and a later price resting on one of those quotes replayed differently. Now they are
    carried to the next round written, as the quotes of rounds dropped from a full queue are:
    the tape holds every quote fed, in order, and the rounds after the outage replay as stored."""
    db = tmp_path / "a.sqlite3"
    audit = trail(db)
    audit._retry_s = 0.0  # the writer opens the database again at once after its failure
    feed = Feed(make_config(), audit)
    with writer_stuck_on_a_lock(db, audit, feed):
        feed.round()  # queued behind the round the writer holds
        deadline = time.monotonic() + 15.0  # hang guard, past the writer's 5 s busy timeout
        while audit.stats.write_errors < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    lost = audit.stats.write_errors
    for _ in range(3):
        feed.round()
    assert audit.close()
    assert audit.stats.rounds == len(feed.kept) - lost
    assert audit.stats.dropped_quotes == {"writer_behind": 0, "lock_away": 0, "write_error": 0}
    fed = [q for _, quotes in feed.kept for q in quotes]
    reader = AuditReader(db)
    tape = io.BytesIO()
    assert reader.tape(tape, 0, T0 * 2) == len(fed)
    stored = b"".join(reader.report_lines(feed.kept[-3][0].ts, T0 * 2))
    reader.close()
    out = io.BytesIO()
    stats = replay(make_config(), io.BytesIO(tape.getvalue()), out)
    assert stats.errors == [] and stats.quotes == len(fed)
    assert out.getvalue().endswith(stored)


def test_closing_while_the_writer_is_stuck_returns_and_a_later_close_finishes(
    tmp_path: Path,
) -> None:
    """Shutdown with the database locked by someone else and the queue full: close gives up
    after its timeout instead of raising or hanging; once the lock goes, closing again writes
    what was queued."""
    db = tmp_path / "locked.sqlite3"
    audit = AuditTrail(audit_config(db, queue=1, batch_rounds=1))
    audit.start()
    feed = Feed(make_config(), audit, start=False)
    with writer_stuck_on_a_lock(db, audit, feed):
        feed.round()  # queued: the queue is full
        audit.close(timeout_s=0.05)  # returns: no room for the stop, the writer is stuck
    audit.close()
    assert audit.stats.rounds == feed.core.rounds == 3
    assert audit.stats.write_errors == 0
    assert audit.stats.dropped == {"writer_behind": 0, "lock_away": 0}


def test_close_waits_for_room_and_for_the_writer_within_one_timeout(tmp_path: Path) -> None:
    """The stop gives the trail one timeout. A writer held by another connection's lock, with
    the queue full: room comes when SQLite's 5 s busy wait ends (the round fails and the writer
    takes the next, where it waits again). On the close's clock that wait took its whole
    budget, so the close returns then, not free to wait a whole timeout more for the writer
    (which, given it, would fail its round too, take the stop and finish). The lock gone, a
    later close writes the round."""
    db = tmp_path / "locked.sqlite3"
    audit = AuditTrail(audit_config(db, queue=1, batch_rounds=1))
    audit._retry_s = 0.0  # the writer opens the database again at once after its failure
    budget_s = 60.0  # far more than the writer needs for its two failed rounds
    readings = iter((0.0, budget_s))  # when the close starts, and once it has room
    audit._close_clock = lambda: next(readings)
    audit.start()
    feed = Feed(make_config(), audit, start=False)
    with writer_stuck_on_a_lock(db, audit, feed):
        feed.round()  # queued: the queue is full
        assert not audit.close(timeout_s=budget_s)
        assert audit.stats.write_errors == 1  # room came: the first round failed meanwhile
    audit._close_clock = time.monotonic
    assert audit.close()
    assert audit.stats.rounds == 2
    assert audit.stats.dropped == {"writer_behind": 0, "lock_away": 0}


def test_a_damaged_database_is_reported_with_exit_2_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file whose reports pages are damaged (a disk fault, a bad copy) still opens; the
    question that reads them answers exit 2 with SQLite's verdict and the file's name."""
    db = tmp_path / "audit.sqlite3"
    audit = trail(db)
    feed = Feed(make_config(), audit)
    for _ in range(5):
        feed.round()
    audit.close()
    with sqlite3.connect(db) as con:
        (root,) = con.execute(
            "SELECT rootpage FROM sqlite_schema WHERE name = 'reports'"
        ).fetchone()
        (size,) = con.execute("PRAGMA page_size").fetchone()
    with db.open("r+b") as handle:  # the reports table's root page: garbage
        handle.seek((root - 1) * size)
        handle.write(b"\xff" * size)
    capsys.readouterr()
    assert main(["audit", "--db", str(db), "--market", "BTC/USD"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"oracled audit: {db}: database disk image is malformed"
    )


def test_the_market_may_be_named_as_in_the_api_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--market btc-usd` (the runbook's path form, any case) finds BTC/USD's rounds, where it
    used to answer 'no rounds stored in this window'; a market the trail never held is named
    as such, not as an empty window."""
    db = tmp_path / "audit.sqlite3"
    recorded(db, 3)
    capsys.readouterr()  # the writer's log lines
    market = ["audit", "--db", str(db), "--market"]
    assert main([*market, "BTC/USD"]) == 0
    expected = capsys.readouterr().out
    assert main([*market, "btc-usd"]) == 0
    assert capsys.readouterr().out == expected
    assert main([*market, "DOGE-USD"]) == 1
    assert "DOGE/USD: no round of this market is stored at all" in capsys.readouterr().out
    with pytest.raises(SystemExit) as bad:  # not a market name at all: a usage error
        main([*market, "BTC USD"])
    assert bad.value.code == 2
    assert "'BTC USD' is not a market name like BTC/USD" in capsys.readouterr().err


def test_options_that_would_be_ignored_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--at` without `--market` used to print the database's span, `--at` with `--csv` wrote
    the CSV, `--tape` with `--market` wrote every market: each option one of them ignored is
    now a usage error (exit 2) that says which. So is a `--from` after `--to` (swapped), which
    answered `no rounds stored in this window` (exit 1) of a trail that holds the window."""
    db = tmp_path / "audit.sqlite3"
    audit = trail(db)
    feed = Feed(make_config(), audit)
    feed.round()
    audit.close()
    capsys.readouterr()
    base = ["audit", "--db", str(db)]
    csv_file, tape = str(tmp_path / "out.csv"), str(tmp_path / "out.jsonl")
    for extra, says in (
        (["--at", str(T0)], "add --market"),
        (["--csv", csv_file], "add --market"),
        (["--market", "BTC/USD", "--at", str(T0), "--csv", csv_file], "--at shows one moment"),
        (["--market", "BTC/USD", "--at", str(T0), "--from", str(T0)], "--at shows one moment"),
        (["--market", "BTC/USD", "--tape", tape], "not with --market or --csv"),
        (["--market", "BTC/USD", "--from", str(T0 + 1), "--to", str(T0)], "the window is empty"),
        (["--from", str(T0 + 1), "--to", str(T0), "--tape", tape], "the window is empty"),
    ):
        assert main([*base, *extra]) == 2, extra
        assert says in capsys.readouterr().err, extra
    assert not Path(csv_file).exists() and not Path(tape).exists()


def test_the_trail_keeps_the_leg_of_routed_slots_and_the_timeline_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """BTC/USD quoted only in BTC/USDT through USDT/USD: the stored reports keep each slot's
    `via`, the timeline's sources say `(via USDT/USD)` (also while the leg has no price and the
    slots are excluded as `route`), and `--at` prints it; a direct slot names no leg."""
    cfg = parse_config(
        {
            "oracle": {"round_interval_ms": INTERVAL, "resume_rounds": 1},
            "sources": {name: {"type": "binance"} for name in SOURCES},
            "routes": [{"from": "USDT", "to": "USD", "via": "USDT/USD"}],
            "markets": [
                {
                    "symbol": "USDT/USD",
                    "price_exponent": -4,
                    "min_sources": 2,
                    "sources": [{"source": s, "pair": "USDT/USD"} for s in SOURCES],
                },
                {
                    "symbol": "BTC/USD",
                    "min_sources": 2,
                    "sources": [{"source": s, "pair": "BTC/USDT"} for s in SOURCES],
                },
            ],
        },
        env={},
    )
    db = tmp_path / "audit.sqlite3"
    audit = trail(db)
    feed = Feed(cfg, audit)
    feed.prices = {"BTC/USDT": 64_000.0}  # no leg yet: every slot blocked
    feed.round()
    feed.prices = {"USDT/USD": 0.999, "BTC/USDT": 64_000.0}
    for _ in range(3):
        feed.round()
    audit.close()
    reader = AuditReader(db)
    stored = [s.report for s in reader.reports("BTC/USD", 0, T0 * 2)]
    legs = [s.report for s in reader.reports("USDT/USD", 0, T0 * 2)]
    reader.close()
    assert {s.via for r in stored for s in r.sources} == {"USDT/USD"}
    assert {s.via for r in legs for s in r.sources} == {None}
    assert [r.status for r in stored] == ["unknown", "active", "active", "active"]
    assert main(["audit", "--db", str(db), "--market", "BTC/USD"]) == 0
    text = capsys.readouterr().out
    assert "alpha (via USDT/USD) route" in text
    assert re.search(r"; gamma \(via USDT/USD\) 639\d\d\.\d\d used", text)
    last = stored[-1].ts
    assert main(["audit", "--db", str(db), "--market", "BTC/USD", "--at", str(last)]) == 0
    assert "used  via USDT/USD" in capsys.readouterr().out
    assert main(["audit", "--db", str(db), "--market", "USDT/USD"]) == 0
    assert "via" not in capsys.readouterr().out


def test_the_summary_counts_rounds_without_reading_them_all_into_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`oracled audit --db FILE` on a long trail (here 30,000 rounds; two days of the shipped
    config are 690,000) counts in SQLite: it used to build an object per round to take the
    list's length, megabytes here and gigabytes for a month's trail."""
    db = tmp_path / "audit.sqlite3"
    recorded(db, 3)
    assert main(["audit", "--db", str(db)]) == 0  # what a first call imports is not measured
    extra = 30_000
    with sqlite3.connect(db) as con:
        con.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO rounds (ts, round, markets, quotes) "
            "SELECT ? + i * ?, 3 + i, 3, 0 FROM n",
            (extra, T0 + 3 * INTERVAL, INTERVAL),
        )
    capsys.readouterr()
    tracemalloc.start()
    try:
        assert main(["audit", "--db", str(db)]) == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert capsys.readouterr().out.startswith(f"{db}: {3 + extra} round(s) from ")
    assert peak < 1_000_000


def test_a_database_whose_name_holds_a_hash_or_question_mark_is_the_one_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--db 'trail#2?.sqlite3'`: the name went into SQLite's URI as it was, so `#` ended the
    path there and the reader opened (and made, read-write, since `?mode=ro` was cut off with
    it) a file named `trail`, then called the real trail no audit database."""
    db = tmp_path / "trail#2?.sqlite3"
    recorded(db, 3)
    capsys.readouterr()
    assert main(["audit", "--db", str(db)]) == 0
    assert capsys.readouterr().out.startswith(f"{db}: 3 round(s) from ")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(db.name)) == []


def test_retention_cuts_a_large_excess_a_step_at_a_time_between_batches(tmp_path: Path) -> None:
    """A trail far above its limits (a lowered max_bytes, a daemon back after days) is cut in
    transactions of about a retention step's bytes, one after each batch of new rounds, until
    under the limit: one transaction deleting it all held the writer thread for as long (at the
    shipped 10 GiB about 20 s, past the 64-round queue: rounds dropped) and left a `-wal` file as
    big as what it deleted, which SQLite keeps, beyond max_bytes."""
    db = tmp_path / "audit.sqlite3"
    feed = Feed(make_config(), trail(db, queue=1600))  # all 1,500 kept: the size is the same
    for _ in range(1500):  # each run, well above what the tables themselves take
        feed.round()
    assert feed.audit.close(30.0) and feed.audit.stats.rounds == 1500
    with sqlite3.connect(db) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (pages,) = con.execute("PRAGMA page_count").fetchone()
        (size,) = con.execute("PRAGMA page_size").fetchone()
    limit, step = pages * size // 5, pages * size // 20
    sizes = []
    for _ in range(30):  # a batch of one round, then its retention step, each time
        audit = AuditTrail(audit_config(db, max_bytes=limit))
        audit._retention_step_bytes = step
        audit.start()
        feed.audit = audit
        feed.round()
        assert audit.close()
        assert audit.stats.rounds == 1
        sizes.append(audit.stats.bytes)
        if sizes[-1] <= limit:
            break
    assert sizes[0] > limit  # not all at once
    assert 0 < sizes[-1] <= limit  # but there in the end
    assert sizes == sorted(sizes, reverse=True)


def test_a_time_in_seconds_or_microseconds_is_refused_not_read_as_milliseconds() -> None:
    """`--from 1700000000` (seconds, as `date +%s` prints) was read as milliseconds: 1970-01-20,
    a window that silently held the whole trail; microseconds were a time past 50,000 AD. Whole
    numbers other than 13-digit milliseconds (and 0, the start of the trail) are refused with a
    message that says so, as the quote tape refuses such a `ts`."""
    assert parse_time("0") == 0
    assert parse_time(str(T0)) == T0
    for text in ("1700000000", "1700000000000000", "170000000000"):
        with pytest.raises(argparse.ArgumentTypeError) as exc:
            parse_time(text)
        assert str(exc.value) == (
            f"{text!r} is not milliseconds since the epoch (13 digits; seconds have 10, "
            "microseconds 16): give milliseconds or an ISO 8601 time"
        )


def test_an_output_that_is_the_database_itself_is_refused_and_the_trail_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--tape` or `--csv` naming the trail (a slip of the shell history, `--db` and the output
    swapped) opened it for writing, which empties it: the trail, a live daemon's too, was gone
    (2.8 MB to 38 bytes) and the command answered "database disk image is malformed". It is
    refused with exit 2 before anything is opened for writing, also for the database's `-wal`,
    and the trail reads as before."""
    db = tmp_path / "audit.sqlite3"
    recorded(db, 3)
    size = db.stat().st_size
    for option in (["--tape"], ["--market", "BTC/USD", "--csv"]):
        for target in (db, tmp_path / "." / db.name, db.with_name(db.name + "-wal")):
            capsys.readouterr()
            assert main(["audit", "--db", str(db), *option, str(target)]) == 2
            assert capsys.readouterr().err == (
                f"oracled audit: {option[-1]} {target} is the database {db} or one of its "
                "files: nothing written\n"
            )
    assert db.stat().st_size == size
    assert main(["audit", "--db", str(db)]) == 0


def test_an_output_that_cannot_be_written_is_named_with_its_option_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--tape` or `--csv` in a directory that does not exist ended in the daemon's `fatal` log
    line and exit 1, which `oracled audit` answers when it finds no round: a script took an
    output it could not write for an empty window. It is one line naming the option, the file
    and the reason, exit 2 (a bad request), also for a write that fails once the file is open
    (a full disk: /dev/full), and the trail reads as before."""
    db = tmp_path / "audit.sqlite3"
    recorded(db, 3)
    missing = tmp_path / "missing" / "out"
    for option in (["--tape"], ["--market", "BTC/USD", "--csv"]):
        for target, why in ((missing, "No such file or directory"), ("/dev/full", "No space")):
            capsys.readouterr()
            assert main(["audit", "--db", str(db), *option, str(target)]) == 2
            said = capsys.readouterr().err
            assert said.startswith(f"oracled audit: {option[-1]} {target}: {why}"), said
            assert said.count("\n") == 1, said
    assert main(["audit", "--db", str(db)]) == 0


def test_the_reserve_is_as_configured_within_its_range_and_an_eighth_of_a_small_max_bytes(
    tmp_path: Path,
) -> None:
    """`audit.reserve_bytes` sizes the reserve file beside the database (it was a constant
    8 MiB, also in every test's tmp dir); an eighth of `max_bytes` still caps it; below 64 KiB
    or above 1 GiB is refused, and the default is the shipped 8 MiB."""
    assert AuditConfig().reserve_bytes == 8 * 1024 * 1024
    for bad in (64 * 1024 - 1, 1024**3 + 1):
        with pytest.raises(ValidationError, match="reserve_bytes"):
            AuditConfig(reserve_bytes=bad)
    for settings, size in (
        ({"reserve_bytes": 200_000}, 200_000),
        ({"reserve_bytes": 200_000, "max_bytes": 800_000}, 100_000),
    ):
        db = tmp_path / f"{size}.sqlite3"
        feed = recorded(db, 3, **settings)
        assert feed.audit.stats.reserve == size
        assert db.with_name(db.name + ".reserve").stat().st_size == size


def test_the_reserve_of_a_database_named_by_a_link_is_beside_the_file_the_link_leads_to(
    tmp_path: Path,
) -> None:
    """Found reviewing the reserve: it was made beside the configured name, while SQLite writes
    the database (and its -wal) where a symbolic link leads; a link into a volume put the
    reserve on another filesystem than the room it is there to give back. It now follows the
    link as the lock file does, a link to a file not made yet included."""
    volume, config_dir = tmp_path / "volume", tmp_path / "etc"
    volume.mkdir()
    config_dir.mkdir()
    for name in ("made.sqlite3", "not-yet.sqlite3"):
        real, link = volume / name, config_dir / name
        if name == "made.sqlite3":
            recorded(real, 1, reserve_bytes=100_000)
            (volume / (name + ".reserve")).unlink()
        link.symlink_to(real)
        feed = recorded(link, 3, reserve_bytes=100_000)
        assert feed.audit.stats.reserve == 100_000
        assert (volume / (name + ".reserve")).stat().st_size == 100_000
        assert not (config_dir / (name + ".reserve")).exists()
        assert real.is_file() and link.is_symlink()


def test_a_part_of_a_reserve_left_by_a_stop_on_a_full_disk_is_made_whole_once_there_is_room(
    tmp_path: Path,
) -> None:
    """A stop on a full disk may leave less than a whole reserve file (the room its -wal gave
    back); a start with room makes it whole, says nothing of it, and retention keeps to
    max_bytes (no cap: every round stays)."""
    db = tmp_path / "audit.sqlite3"
    part = db.with_name(db.name + ".reserve")
    part.write_bytes(b"\0" * 20_000)
    with capture_logs() as logs:
        feed = recorded(db, 5, reserve_bytes=100_000)
    assert part.stat().st_size == feed.audit.stats.reserve == 100_000
    assert [e["event"] for e in logs] == ["audit trail writing"]
    reader = AuditReader(db)
    assert reader.round_count() == 5
    reader.close()
