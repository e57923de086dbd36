"""Operator actions (manual pause, resume) and config loads in the audit trail (schema version
3; the round each action first applied to from version 5): a real Service on a loopback venue
writes them, `oracled audit` shows them and writes the actions on its tapes as manual commands,
and a version 2 or 4 database is brought to the current version (5) in place."""

from __future__ import annotations

import asyncio
import hashlib
import io
import sqlite3
from pathlib import Path

import pytest
from audit_rig import Feed, recorded, trail
from publish_rig import T0, make_config

from oracled.cli import main
from oracled.config import read_config_text
from oracled.publish.audit import SCHEMA_VERSION, AuditReader, iso_time
from oracled.replay import replay
from oracled.service import Service
from oracled.sim import BinanceSim

_CONFIG = """
[oracle]
round_interval_ms = 50
resume_rounds = 1

[api]
listen = "127.0.0.1:0"

[audit]
enabled = true
path = "{db}"
reserve_bytes = 65_536

[sources.venue]
type = "binance"
ws_url = "{ws}"
rest_url = "{rest}"

[[markets]]
symbol = "BTC/USDT"
min_sources = 1
max_deviation = {deviation}
sources = [{{ source = "venue", pair = "BTC/USDT" }}]
"""


async def _rounds_written(service: Service, more: int) -> None:
    assert service.audit is not None
    target = service.audit.stats.rounds + more
    async with asyncio.timeout(20):
        while service.audit.stats.rounds < target:  # noqa: ASYNC110 - a counter of the writer thread
            await asyncio.sleep(0.02)


async def test_who_paused_a_market_and_under_which_config_is_answered_by_the_trail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A running daemon pauses and resumes a market by hand (actor `alice`) and reloads its config
    (actor `bob`): the trail keeps each action with its actor and time, and the config in force
    from the start with the sha256 of its file and then the reload's with what it changed. The
    timeline shows them among the status changes, and `--at` a time after the pause names the
    config in force then and who paused the market."""
    db = tmp_path / "audit.sqlite3"
    path = tmp_path / "oracled.toml"
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=50.0, volatility=0.001) as sim:
        fields = {"db": db, "ws": sim.ws_url, "rest": sim.rest_url}
        first = _CONFIG.format(deviation=0.02, **fields)
        second = _CONFIG.format(deviation=0.03, **fields)
        path.write_text(first)
        cfg, text = read_config_text(path, env={})
        service = Service(cfg, config_path=path, config_text=text)
        task = asyncio.create_task(service.run())
        try:
            await _rounds_written(service, 10)
            service.on_manual("BTC/USDT", True, "alice")
            await _rounds_written(service, 5)
            path.write_text(second)
            await service.reload("bob")
            await _rounds_written(service, 5)
            service.on_manual("BTC/USDT", False, "alice")
            await _rounds_written(service, 5)
        finally:
            service.stop()
            await task
    reader = AuditReader(db)
    actions = reader.actions("BTC/USDT", 0, 1 << 62)
    configs = reader.configs(0, 1 << 62)
    paused = [
        r.report for r in reader.reports("BTC/USDT", 0, 1 << 62) if "manual" in r.report.reasons
    ]
    reader.close()
    assert [(a.actor, a.action) for a in actions] == [("alice", "pause"), ("alice", "resume")]
    assert paused[0].round == actions[0].round and paused[0].ts == actions[0].round_ts
    sha = [hashlib.sha256(text.encode()).hexdigest() for text in (first, second)]
    assert [(c.event, c.actor, c.sha256) for c in configs] == [
        ("start", "start", sha[0]),
        ("reload", "bob", sha[1]),
    ]
    assert "BTC/USDT" in configs[1].changes and configs[0].path == str(path)
    assert paused and actions[0].ts <= paused[0].ts

    assert main(["audit", "--db", str(db), "--market", "BTC/USDT"]) == 0
    timeline = capsys.readouterr().out
    assert f"config start by start: sha256 {sha[0]}" in timeline
    assert "operator alice: pause BTC/USDT" in timeline
    assert f"config reload by bob: sha256 {sha[1]}" in timeline
    assert timeline.index("operator alice: pause") < timeline.index("paused [manual")
    assert timeline.index("config reload by bob") < timeline.index("operator alice: resume")

    assert main(["audit", "--db", str(db), "--market", "BTC/USDT", "--at", str(paused[0].ts)]) == 0
    at = capsys.readouterr().out
    assert f"config in force: config start by start: sha256 {sha[0]}" in at
    assert "last operator action: operator alice: pause BTC/USDT" in at


def _as_version_2(db: Path) -> None:
    """Take a version 7 database back to version 2's layout: what a daemon before version 3
    left on disk (the same tables but the two of version 3 and the rounds' signed format of
    version 4, the same rows)."""
    with sqlite3.connect(db) as con:
        con.executescript(
            "DROP TABLE actions; DROP TABLE configs; DROP INDEX transitions_round;"
            "ALTER TABLE rounds DROP COLUMN format; ALTER TABLE rounds DROP COLUMN revision;"
            "UPDATE meta SET value = '2' WHERE key = 'schema';"
        )
    con.close()


def _as_version_4(db: Path) -> None:
    """Take a version 7 database back to version 4's layout: its actions without the round
    each first applied to, its rounds without their pricing revision, no config texts."""
    with sqlite3.connect(db) as con:
        con.executescript(
            "ALTER TABLE configs DROP COLUMN text; ALTER TABLE configs DROP COLUMN redacted;"
            "ALTER TABLE configs DROP COLUMN pricing;"
            "ALTER TABLE actions DROP COLUMN round; ALTER TABLE actions DROP COLUMN round_ts;"
            "ALTER TABLE rounds DROP COLUMN revision;"
            "UPDATE meta SET value = '4' WHERE key = 'schema';"
        )
    con.close()


def test_a_version_2_database_is_read_and_brought_to_version_5_in_place(tmp_path: Path) -> None:
    """A version 2 trail (a daemon before version 3) is read as it is (no actions, no configs,
    no signed format), and the writer brings it to version 5 without losing a round: it keeps
    appending, records actions, the index on transitions (round_id) retention deletes by is
    there, and so is the rounds' signed format column (null for the rounds before)."""
    db = tmp_path / "audit.sqlite3"
    feed = recorded(db, 6)
    _as_version_2(db)
    reader = AuditReader(db)
    assert reader.version == 2 and len(reader.rounds(0, 1 << 62)) == 6
    assert {r.format for r in reader.rounds(0, 1 << 62)} == {None}
    assert reader.actions("BTC/USD", 0, 1 << 62) == [] and reader.config_at(1 << 62) is None
    reader.close()

    audit = trail(db)
    feed.audit = audit
    feed.round()
    audit.record_action(feed.now, "carol", "pause", "BTC/USD")
    assert audit.close()
    assert audit.stats.ok and audit.stats.write_errors == 0
    reader = AuditReader(db)
    assert reader.version == SCHEMA_VERSION == 7 and len(reader.rounds(0, 1 << 62)) == 7
    assert [r.format for r in reader.rounds(0, 1 << 62)] == [None] * 7  # none of them signed
    assert [(a.actor, a.action) for a in reader.actions("BTC/USD", 0, 1 << 62)] == [
        ("carol", "pause")
    ]
    reader.close()
    with sqlite3.connect(db) as con:
        indexes = {
            name for (name,) in con.execute("SELECT name FROM sqlite_schema WHERE type='index'")
        }
    con.close()
    assert "transitions_round" in indexes


def _exported(db: Path, capsys: pytest.CaptureFixture[str], *window: str) -> str:
    """`oracled audit --tape` of the trail at `db`: its stderr."""
    capsys.readouterr()
    assert main(["audit", "--db", str(db), "--tape", str(db.with_suffix(".jsonl")), *window]) == 0
    return capsys.readouterr().err


def test_a_version_4_database_is_read_and_brought_to_version_5_keeping_its_actions(
    tmp_path: Path,
) -> None:
    """A version 4 trail (before the round of an action was kept) reads its actions without
    a round and writes none on its tapes; the writer brings it to version 5 in place, the
    actions before it kept as they were (no round) and the new ones with theirs."""
    db = tmp_path / "audit.sqlite3"
    feed = Feed(make_config(), trail(db))
    feed.round()
    feed.manual("ETH/USD", True)
    feed.round()
    feed.audit.close()
    _as_version_4(db)
    reader = AuditReader(db)
    assert reader.version == 4 and not reader.actions_on_tape
    assert [(a.action, a.round) for a in reader.actions(None, 0, 1 << 62)] == [("pause", None)]
    tape = io.BytesIO()
    reader.tape(tape, 0, 1 << 62)
    assert b'"manual"' not in tape.getvalue()
    reader.close()
    feed.audit = trail(db)
    feed.manual("ETH/USD", False)
    feed.round()
    assert feed.audit.close() and feed.audit.stats.write_errors == 0
    reader = AuditReader(db)
    assert reader.version == 7 and reader.actions_on_tape
    actions = reader.actions(None, 0, 1 << 62)
    assert [(a.action, a.round, a.round_ts) for a in actions] == [
        ("pause", None, None),
        ("resume", 3, feed.now),
    ]
    reader.close()


def test_a_trails_tape_carries_its_manual_commands_and_replays_to_every_stored_report(
    tmp_path: Path,
) -> None:
    """A pause of ETH/USD before round 4 and its resume before round 8, stored with the rounds
    they first applied to: `--tape` writes each as a manual command before the first quote later
    than its round (round 4's quotes come before the pause, round 5's after), and the replay
    of the tape gives every stored report byte for byte, the paused rounds and those after the
    resume among them."""
    db = tmp_path / "audit.sqlite3"
    feed = Feed(make_config(), trail(db))
    for _ in range(3):
        feed.round()
    feed.manual("ETH/USD", True)
    for _ in range(4):
        feed.round()
    feed.manual("ETH/USD", False, "bob")
    for _ in range(6):
        feed.round()
    feed.audit.close()
    reader = AuditReader(db)
    tape = io.BytesIO()
    reader.tape(tape, 0, 1 << 62)
    stored = b"".join(reader.report_lines(0, 1 << 62))
    reader.close()
    lines = tape.getvalue().splitlines(keepends=True)
    commands = [n for n, line in enumerate(lines) if b'"manual"' in line]
    rounds = [result for result, _ in feed.kept]
    assert [lines[n] for n in commands] == [
        b'{"ts":%d,"manual":"pause","market":"ETH/USD","actor":"alice","round":4}\n' % rounds[3].ts,
        b'{"ts":%d,"manual":"resume","market":"ETH/USD","actor":"bob","round":8}\n' % rounds[7].ts,
    ]
    assert commands[0] == 1 + 9 * 4  # after the header and the quotes of rounds 1 to 4
    assert b'"reasons":["manual"]' in stored
    out = io.BytesIO()
    stats = replay(make_config(), io.BytesIO(tape.getvalue()), out)
    assert stats.errors == [] and stats.commands == 2
    assert out.getvalue() == stored


def test_a_tape_of_a_window_with_an_operator_action_a_reload_or_a_restart_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tape holds no reload or restart, so its replay differs from the stored reports from
    one in its window (docs/publishing.md, `--tape`): `oracled audit --tape` warns on stderr,
    naming the first of them and its time, and how many there are. A manual pause is on the
    tape (schema version 5), and not warned of; on a version 4 trail, which has no round for
    it, it is, as the first. Before, it wrote the tape without a word, and the replay differed
    from the stored reports with nothing to say why. The start of the window's first run (a
    window from the restart on) and a window that ends before the action give no warning."""
    db = tmp_path / "audit.sqlite3"
    feed = Feed(make_config(), trail(db))
    feed.audit.record_config(T0 - 1_000, "start", "start", "oracled.toml", "a" * 64, "{}")
    for _ in range(6):
        feed.round()
    paused_at = feed.now + 1
    feed.manual("ETH/USD", True)
    for _ in range(4):
        feed.round()
    reloaded = feed.now + 10
    feed.audit.record_config(reloaded, "reload", "SIGHUP", "oracled.toml", "b" * 64, "{}")
    feed.round()
    restarted = feed.now + 10
    feed.audit.record_config(restarted, "start", "start", "oracled.toml", "b" * 64, "{}")
    feed.round()
    feed.audit.close()

    err = _exported(db, capsys)
    assert (
        f"warning: {db.with_suffix('.jsonl')}: a replay may differ from the stored reports from"
        f" {iso_time(reloaded)} on: config reload by SIGHUP: sha256 {'b' * 64} oracled.toml"
        " changes {} (a tape holds quotes and manual commands; 2 such event(s) in the window,"
        " each in the timeline)"
    ) in err, err
    _as_version_4(db)
    err = _exported(db, capsys)
    assert (
        f"warning: {db.with_suffix('.jsonl')}: a replay may differ from the stored reports from"
        f" {iso_time(paused_at)} on: operator alice: pause ETH/USD (a tape of this trail holds"
        " quotes only; 3 such event(s) in the window, each in the timeline)"
    ) in err, err
    late = _exported(db, capsys, "--from", iso_time(reloaded + 1))
    assert f"from {iso_time(restarted)} on: config start by start" in late, late
    assert "warning" not in _exported(db, capsys, "--from", iso_time(restarted + 1))
    assert "warning" not in _exported(db, capsys, "--to", iso_time(paused_at - 1))
