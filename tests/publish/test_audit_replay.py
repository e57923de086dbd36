"""`oracled audit --replay`: a trail's stored reports against what the core computes from the
trail's own stored quotes, manual pauses, round times and configs (docs/publishing.md).

One real daemon (`oracled run` on five loopback venues, a perpetual and a USDT-quoted one among
them) writes the trail the first tests read: its round loop stopped for a moment (SIGSTOP: the
rounds it missed are computed late and never stored), the trail held by another writer until
rounds are dropped from it, a manual pause and resume, and a reload of how BTC/USD is priced.
The others write small trails the way the daemon writes them (`audit_rig.Feed`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import sqlite3
import sys
import tomllib
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import msgspec
import pytest
import tomli_w
from audit_rig import Feed, daemon_config, rewrite_report, sql, trail
from publish_rig import INTERVAL, T0, make_config
from test_audit_schema import write_v1

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from daemon import ADMIN_TOKEN, Daemon

from oracled.cli import main
from oracled.core import PRICING_REVISION, Core
from oracled.model import Report
from oracled.publish.audit import AuditReader, iso_time
from oracled.publish.audit_replay import replay_trail
from oracled.publish.signer import RoundSigner, SigningKey
from oracled.sim.venues import simulate
from oracled.tape import header_line, quote_to_line, read_tape

_LIVE = {"active", "degraded"}
_END = 1 << 62


class LiveTrail:
    """What the daemon left: its trail, the config file it started with (the daemon's own file
    holds the reloaded one now), and the times of its stored events."""

    def __init__(self, db: Path, started: Path, reloaded: Path) -> None:
        self.db, self.started, self.reloaded = db, started, reloaded
        reader = AuditReader(db)
        try:
            self.loads = reader.configs(0, _END)
            self.actions = reader.actions(None, 0, _END)
            self.rounds = reader.rounds(0, _END)
        finally:
            reader.close()

    def copy(self, to: Path) -> Path:
        """A copy of the trail to change (the daemon stopped: its `-wal` is checkpointed)."""
        shutil.copyfile(self.db, to)
        return to


async def _run_daemon(tmp: Path) -> LiveTrail:
    cfg, venues = await simulate(
        daemon_config(tmp / "audit.sqlite3"),
        rate_hz=10.0,
        liveness={"liveness_timeout_s": 1.0, "rest_poll_interval_s": 0.5, "reconnect_max_s": 0.5},
    )
    dump = cfg.model_dump(by_alias=True, exclude={"admin_token"}, exclude_none=True)
    daemon = Daemon(tomli_w.dumps(dump), tmp)
    started = tmp / "started.toml"
    shutil.copyfile(daemon.config, started)
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def rounds(n: int) -> None:
        first = int((await daemon.report("BTC/USD"))["round"])

        async def later() -> bool:
            return int((await daemon.report("BTC/USD"))["round"]) >= first + n

        await daemon.wait_for(later, 10.0, f"{n} more rounds")

    try:
        await daemon.start()
        await daemon.wait_status("BTC/USD", _LIVE, limit_s=20.0)
        await rounds(3)
        assert daemon.proc is not None
        os.kill(daemon.proc.pid, signal.SIGSTOP)  # its loop computes the missed rounds late
        await asyncio.sleep(0.6)
        os.kill(daemon.proc.pid, signal.SIGCONT)
        await rounds(3)
        held = sqlite3.connect(tmp / "audit.sqlite3", timeout=10.0)  # its queue fills: dropped
        held.execute("BEGIN IMMEDIATE")
        await asyncio.sleep(1.5)
        held.rollback()
        held.close()
        await rounds(3)
        status, body = await daemon.post("/v1/admin/markets/BTC-USD/pause", headers=auth)
        assert status == 200, body
        await daemon.wait_status("BTC/USD", {"paused"})
        await rounds(3)
        status, body = await daemon.post("/v1/admin/markets/BTC-USD/resume", headers=auth)
        assert status == 200, body
        await daemon.wait_status("BTC/USD", _LIVE)
        await rounds(3)
        reloaded = tomllib.loads(daemon.config.read_text())
        reloaded["markets"][1]["price_exponent"] = -1
        daemon.config.write_text(tomli_w.dumps(reloaded))
        status, body = await daemon.post("/v1/admin/reload", headers=auth)
        assert status == 200 and body["markets_changed"] == ["BTC/USD"], body
        await rounds(6)
        assert await asyncio.to_thread(daemon.terminate) == 0, daemon.logs()[-3000:]
        assert daemon.events("audit queue full: rounds are dropped from the trail")
    finally:
        await daemon.close()
        for venue in venues:
            await venue.sim.stop()
    return LiveTrail(tmp / "audit.sqlite3", started, daemon.config)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> LiveTrail:
    """The trail of one daemon run, shared by the tests that only read it or change a copy."""
    return asyncio.run(_run_daemon(tmp_path_factory.mktemp("live")))


def _replay(
    capsys: pytest.CaptureFixture[str], db: Path, *args: str, json_out: bool = True
) -> tuple[int, Any]:
    """`oracled audit --db DB --replay ARGS` (`--json`): its exit code and what it printed."""
    capsys.readouterr()
    code = main(["audit", "--db", str(db), "--replay", *args, *(["--json"] if json_out else [])])
    out = capsys.readouterr()
    return code, json.loads(out.out) if json_out else out.out + out.err


@pytest.mark.integration
def test_a_live_trail_replays_equal_across_late_rounds_a_pause_and_a_reload(
    live: LiveTrail, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every report a running daemon stored is what the core computes from the trail alone,
    byte for byte: its rounds at their own times (the late ones a stopped loop computed are in
    the trail's schedule, not in its rows), the manual pause and resume at the rounds they first
    applied to, and the reloaded price exponent of BTC/USD from the reload's stored time; the
    start's config found by its sha256 among the files given, the reload's at the path the
    trail names. The same holds from a window after the reload (the rounds before it replayed,
    not compared) and for one market."""
    assert [c.event for c in live.loads] == ["start", "reload"]
    assert [a.action for a in live.actions] == ["pause", "resume"]
    numbers = [r.round for r in live.rounds]
    assert any(b - a > 1 for a, b in itertools.pairwise(numbers))  # rounds not stored
    code, result = _replay(capsys, live.db, "--config", str(live.started))
    assert code == 0, result
    assert result["rounds"] == len(live.rounds) and result["rounds"] >= 25
    assert result["reports"] == 2 * result["rounds"] == result["equal"]
    assert result["mismatches"] == 0 and result["problems"] == []
    assert len(result["starts"]) == 1 and "1 reload(s) applied" in result["starts"][0]
    reload_ts = live.loads[1].ts
    after = [r for r in live.rounds if r.ts > reload_ts]
    assert len(after) >= 5
    code, result = _replay(
        capsys, live.db, "--config", str(live.started), "--from", str(reload_ts + 1)
    )
    assert code == 0 and result["rounds"] == len(after) and result["equal"] == 2 * len(after)
    code, text = _replay(
        capsys, live.db, "--config", str(live.started), "--market", "btc-usd", json_out=False
    )
    assert code == 0
    assert text.splitlines()[-1] == (
        f"compared {len(live.rounds)} round(s), {len(live.rounds)} report(s):"
        f" {len(live.rounds)} equal, 0 mismatch(es)"
    )


@pytest.mark.integration
def test_a_live_trail_replays_from_its_stored_config_texts_alone(
    live: LiveTrail, capsys: pytest.CaptureFixture[str]
) -> None:
    """The daemon kept the text of the config it started with and of the one it reloaded
    (schema version 7), its bytes as they are (no URL in them to redact): without `--config`,
    and with the start's file no longer at the path the trail names, the replay takes both
    texts from the trail and every report is equal."""
    reader = AuditReader(live.db)
    try:
        texts = [reader.config_text(load.sha256) for load in live.loads]
    finally:
        reader.close()
    assert [t.text for t in texts if t is not None] == [
        live.started.read_bytes(),
        live.reloaded.read_bytes(),
    ]
    assert all(t is not None and t.redacted == 0 for t in texts)
    code, result = _replay(capsys, live.db)
    assert code == 0, result
    assert result["rounds"] == len(live.rounds) and result["equal"] == result["reports"]
    assert result["problems"] == []
    assert "from the trail's stored text)" in result["starts"][0]


@pytest.mark.integration
def test_a_stored_config_text_changed_in_the_file_is_not_reproducible_and_named(
    live: LiveTrail, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The start's stored text changed after it was written (its resume rule): its bytes no
    longer hash to the stored sha256, so nothing of that start is replayed, even with the
    right file given, and the line names the start, its sha256 and what its text hashes to
    (exit 4)."""
    db = live.copy(tmp_path / "text.sqlite3")
    sql(
        db,
        "UPDATE configs SET text = CAST(replace(CAST(text AS TEXT), 'resume_rounds = 3',"
        " 'resume_rounds = 4') AS BLOB) WHERE event = 'start'",
    )
    code, text = _replay(capsys, db, "--config", str(live.started), json_out=False)
    assert code == 4, text
    start = live.loads[0]
    assert (
        f"not reproducible: the config of the start at {iso_time(start.ts)} (by start, sha256"
        f" {start.sha256[:12]}): its text stored in the trail is not the one the daemon loaded:"
        " its bytes hash to sha256 "
    ) in text
    assert f"{len(live.rounds)} round(s) not reproducible" in text


@pytest.mark.integration
def test_a_trail_without_its_start_config_at_hand_is_not_reproducible(
    live: LiveTrail, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without stored texts (a trail before schema version 7: cleared here) and without
    `--config`, the start's config is looked for at the path the trail names, which holds the
    reloaded text now: no file has the stored sha256, so no round is replayed (exit 4) and the
    line names the start, its sha256 and what to give."""
    db = live.copy(tmp_path / "v6.sqlite3")
    sql(db, "UPDATE configs SET text = NULL, redacted = NULL, pricing = NULL")
    code, text = _replay(capsys, db, json_out=False)
    assert code == 4, text
    start = live.loads[0]
    assert (
        f"not reproducible: the config of the start at {iso_time(start.ts)} (by start, sha256"
        f" {start.sha256[:12]}, {start.path}) is none of the files at hand ({start.path}: sha256"
    ) in text
    assert "give it with --config" in text
    assert f"{len(live.rounds)} round(s) not reproducible" in text


@pytest.mark.integration
def test_an_altered_stored_report_is_a_mismatch_naming_its_market_round_and_fields(
    live: LiveTrail, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stored BTC/USD price rewritten in the file (its row deflated again as the writer does)
    is the one mismatch: exit 3, the market, round number and time, and the field with both
    values; every other report is still equal."""
    db = live.copy(tmp_path / "altered.sqlite3")
    priced = [r for r in live.rounds if r.round > live.rounds[0].round + 10]
    target = priced[len(priced) // 2]
    stored: list[Report] = []

    def change(report: Report) -> Report:
        stored.append(report)
        return msgspec.structs.replace(report, price="1.00")

    rewrite_report(db, target.id, "BTC/USD", change)
    code, text = _replay(capsys, db, "--config", str(live.started), json_out=False)
    assert code == 3, text
    (line,) = [x for x in text.splitlines() if x.startswith("MISMATCH")]
    assert line == (
        f"MISMATCH BTC/USD round {target.round} at {iso_time(target.ts)}: price: stored"
        f' "1.00", replayed {json.dumps(stored[0].price)}'
    )
    code, result = _replay(capsys, db, "--config", str(live.started))
    assert code == 3 and result["mismatches"] == 1
    assert result["equal"] == result["reports"] - 1
    (first,) = result["first_mismatches"]
    assert (first["market"], first["round"], first["ts"]) == ("BTC/USD", target.round, target.ts)


@pytest.mark.integration
def test_a_trail_of_another_pricing_revision_is_told_as_such(
    live: LiveTrail, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rounds stored under another pricing revision whose reports differ are a revision
    difference (exit 5, `DIFFERS (pricing revision N)`), not a bare mismatch; the same rounds
    all reproduced say which revision they were stored under and exit 0."""
    db = live.copy(tmp_path / "older.sqlite3")
    sql(db, f"UPDATE rounds SET revision = {PRICING_REVISION - 1}")
    code, text = _replay(capsys, db, "--config", str(live.started), json_out=False)
    assert code == 0, text
    assert (
        f"{len(live.rounds)} round(s) were computed under pricing revision(s)"
        f" {PRICING_REVISION - 1}: this oracled (revision {PRICING_REVISION}) reproduces them"
    ) in text
    target = live.rounds[-3]
    rewrite_report(db, target.id, "USDT/USD", lambda r: msgspec.structs.replace(r, status="stale"))
    code, text = _replay(capsys, db, "--config", str(live.started), json_out=False)
    assert code == 5, text
    assert (
        f"DIFFERS (pricing revision {PRICING_REVISION - 1}) USDT/USD round {target.round} at"
        f' {iso_time(target.ts)}: status: stored "stale"'
    ) in text
    assert "0 mismatch(es), 1 differ in rounds computed under pricing revision(s)" in text


@pytest.mark.integration
def test_rounds_after_a_reload_without_its_config_are_not_reproducible_the_rest_are_equal(
    live: LiveTrail, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reload whose config no file at hand has (its stored sha256 changed here, its text
    cleared as in a trail before schema version 7): the rounds before it are replayed and
    equal, the ones after it are counted not reproducible, and the line names the reload and
    what to give (exit 4)."""
    db = live.copy(tmp_path / "reload.sqlite3")
    sql(
        db,
        "UPDATE configs SET sha256 = '00' || substr(sha256, 3), text = NULL WHERE event = 'reload'",
    )
    code, result = _replay(capsys, db, "--config", str(live.started))
    assert code == 4, result
    reload_ts = live.loads[1].ts
    before = [r for r in live.rounds if r.ts <= reload_ts]
    after = len(live.rounds) - len(before)
    assert after >= 5
    assert result["rounds"] == len(before) and result["equal"] == 2 * len(before)
    assert result["mismatches"] == 0 and result["unreproducible_rounds"] == after
    assert result["problems"][0].startswith(
        f"the config of the reload at {iso_time(reload_ts)} (by api, sha256 00"
    )
    assert "give it with --config" in result["problems"][0]


def _feed_trail(tmp_path: Path) -> tuple[Path, Path, Feed]:
    """A trail written as a daemon writes it, the config's load first; its config file."""
    config = tmp_path / "feed.toml"
    db = tmp_path / "feed.sqlite3"
    return db, config, Feed(make_config(), trail(db), config_file=config)


def _late(feed: Feed, rounds: int) -> None:
    """Rounds a blocked loop computes late: run, never stored; their quotes go with the next."""
    for _ in range(rounds):
        for source in ("alpha", "beta"):
            for market in feed.prices:
                feed.quote(source, market, 30)
        feed.now += INTERVAL
        feed.core.run_round(feed.now)


def test_the_trail_s_own_round_times_are_replayed_not_the_interval_s(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rounds computed late and not stored, ticks a loop blocked past its catch-up limit never
    ran (their numbers not taken), and a pause: `--replay` runs the rounds the daemon ran, as
    their numbers and times in the trail say, and every report is equal; `oracled replay` of
    the trail's tape, which runs a round every interval, is not (the round numbers move at
    the skipped ticks), which is why the trail's schedule is used."""
    db, config, feed = _feed_trail(tmp_path)
    for _ in range(4):
        feed.round()
    _late(feed, 3)
    feed.round()
    feed.now += 7 * INTERVAL  # ticks never run: the catch-up limit skips the oldest
    feed.manual("BTC/USD", True)
    for _ in range(3):
        feed.round()
    feed.manual("BTC/USD", False)
    for _ in range(4):
        feed.round()
    feed.audit.close()
    code, result = _replay(capsys, db)
    assert code == 0, result
    assert result["rounds"] == 12 and result["equal"] == result["reports"] == 36
    assert "15 round(s) replayed from round 1" in result["starts"][0]
    tape = tmp_path / "feed.jsonl"
    assert main(["audit", "--db", str(db), "--tape", str(tape)]) == 0
    out = tmp_path / "replayed.jsonl"
    assert main(["replay", "--config", str(config), str(tape), "--out", str(out)]) == 0
    reader = AuditReader(db)
    try:
        stored = set(reader.report_lines(0, _END))
    finally:
        reader.close()
    assert not stored <= set(out.read_bytes().splitlines(keepends=True))


def test_each_start_of_a_restarted_daemon_replays_from_its_own_first_round(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A daemon stopped and started again on its trail numbers its rounds from 1 and its gates
    start afresh: each start is replayed from its own first round with its own config, and a
    window that begins inside the second start still replays that start from its beginning."""
    db, _, first = _feed_trail(tmp_path)
    for _ in range(5):
        first.round()
    first.audit.close()
    cfg = make_config(oracle={"round_interval_ms": INTERVAL, "resume_rounds": 3})
    second = Feed(cfg, trail(db), now=first.now + 10 * INTERVAL, config_file=tmp_path / "2.toml")
    second.silent = {"beta", "gamma"}  # paused for its quorum, then resuming under its own rule
    for _ in range(2):
        second.round()
    second.silent = set()
    for _ in range(4):
        second.round()
    second.audit.close()
    code, result = _replay(capsys, db)
    assert code == 0, result
    assert result["rounds"] == 11 and result["equal"] == result["reports"] == 33
    assert len(result["starts"]) == 2
    assert all("from round 1," in line for line in result["starts"])
    late = str(second.now - 2 * INTERVAL)  # the last three rounds: the start's first three run
    code, result = _replay(capsys, db, "--from", late)
    assert code == 0 and result["rounds"] == 3 and result["equal"] == 9
    assert "6 round(s) replayed from round 1" in result["starts"][0]


def test_a_start_whose_first_rounds_retention_deleted_is_not_reproducible(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A daemon that ran past `retention_days` keeps only its newest rounds: the quotes its
    gates were built from went with the oldest. Its start cannot be replayed (exit 4, the line
    naming the retention), while a later start the retention left whole replays equal. Before,
    the first start was replayed from round 1 over the deleted rounds with no quotes, its
    gates were still resuming when the stored rounds came, and every report of them that was
    active was a MISMATCH (exit 3): the daemon accused for inputs the trail had let go."""
    config = tmp_path / "resume3.toml"
    cfg = make_config(oracle={"round_interval_ms": INTERVAL, "resume_rounds": 3})
    db = tmp_path / "kept.sqlite3"
    first = Feed(cfg, trail(db), config_file=config)
    for _ in range(10):
        first.round()
    first.audit.close()
    # The second start's writer keeps 20 intervals of rounds: the first start's last five
    # (and the second start whole, six rounds 10 intervals later) are left.
    keeping = trail(db, retention_days=20 * INTERVAL / 86_400_000)
    keeping._retention_every_s = 0.0  # a retention pass after every batch
    second = Feed(cfg, keeping, now=first.now + 10 * INTERVAL, config_file=config)
    for _ in range(6):
        second.round()
    second.audit.close()
    reader = AuditReader(db)
    try:
        kept = [r.round for r in reader.rounds(0, _END)]
    finally:
        reader.close()
    assert kept == [6, 7, 8, 9, 10, 1, 2, 3, 4, 5, 6]
    code, result = _replay(capsys, db)
    assert code == 4, result
    assert result["mismatches"] == 0 and result["unreproducible_rounds"] == 5
    assert result["rounds"] == 6 and result["equal"] == result["reports"] == 18
    assert len(result["starts"]) == 1 and "6 round(s) replayed from round 1" in result["starts"][0]
    assert result["problems"][0] == (
        f"the start at {iso_time(T0 - 5)} lost its first rounds to the trail's retention (its"
        f" oldest stored round is round 6 at {iso_time(T0 + 6 * INTERVAL)}, and the trail keeps"
        " none before it): the quotes its gates were built from are gone"
    )


def test_the_round_where_the_numbers_stop_adding_up_is_counted_not_reproducible(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last stored round's number changed to its predecessor's: the four rounds before it
    replay equal and it is counted not reproducible, exit 4. Before, the replay stopped short
    of it and the count of rounds left out started after it: it was in neither count, and
    the run ended exit 0 (all equal) with its problem line printed above."""
    db, _, feed = _feed_trail(tmp_path)
    for _ in range(5):
        feed.round()
    feed.audit.close()
    sql(db, "UPDATE rounds SET round = 4 WHERE id = 5")
    code, result = _replay(capsys, db)
    assert code == 4, result
    assert (result["rounds"], result["equal"], result["unreproducible_rounds"]) == (4, 12, 1)
    assert result["problems"][0].startswith(f"round 4 at {iso_time(feed.now)} cannot follow")


def test_rounds_computed_beside_skipped_ticks_are_not_reproducible_not_a_mismatch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A loop slower than its clock skips ticks past its catch-up limit, computes rounds
    unpublished, and skips again before it publishes: the trail holds no time of those rounds.
    Run at the last ticks before the next stored round, the replay's first two of them found
    only quotes older than `max_age_ms` and paused every market, and the stored rounds, right
    as the daemon computed them, were mismatches (exit 3). They are not reproducible (exit 4),
    the rounds before them equal."""
    db = tmp_path / "skips.sqlite3"
    cfg = make_config(oracle={"round_interval_ms": INTERVAL, "resume_rounds": 5})
    feed = Feed(cfg, trail(db), config_file=tmp_path / "skips.toml")
    for _ in range(3):
        feed.round()
    for _ in range(2):
        feed.now += 30 * INTERVAL  # more than max_age_ms: the quotes before are stale
        _late(feed, 2)
    feed.round()
    feed.round()
    feed.audit.close()
    assert {r.status for r in feed.kept[-1][0].reports()} == {"active"}
    code, result = _replay(capsys, db)
    assert code == 4, result
    assert (result["mismatches"], result["equal"], result["unreproducible_rounds"]) == (0, 9, 2)
    assert result["problems"][0] == (
        f"round 8 at {iso_time(feed.now - INTERVAL)} follows round 3 at"
        f" {iso_time(T0 + 3 * INTERVAL)} after 4 round(s) computed unpublished and 60 tick(s)"
        " skipped (a loop blocked past its catch-up limit): the trail does not say which ticks"
        " those rounds ran at"
    )


def test_quotes_and_reports_rewritten_together_replay_equal_only_the_signature_tells(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What docs/publishing.md says `--replay` cannot prove: whoever can write the file can
    change a round's stored quotes and its reports together, as the core computes them from
    the changed quotes, and `--replay` finds every report equal (exit 0). The round's signature
    is what tells: `--verify` finds it a mismatch (exit 3)."""
    db, _, feed = _feed_trail(tmp_path)
    signer = RoundSigner(SigningKey.generate(), "test")
    for _ in range(4):
        feed.round(signer)
    feed.audit.close()
    forged = Core(feed.cfg)  # the daemon's inputs, BTC/USD quoted 1 % higher in round 4
    for result, quotes in feed.kept:
        for quote in quotes:
            if result.round == 4 and quote.pair == "BTC/USD":
                assert quote.price is not None
                quote = msgspec.structs.replace(quote, price=quote.price * 1.01)
            forged.ingest(quote)
        rebuilt = forged.run_round(result.ts)
    db_file = sqlite3.connect(db)
    (block,) = db_file.execute("SELECT lines FROM tapes WHERE round_id = 4").fetchone()
    tape = (header_line() + zlib.decompress(block, wbits=-15)).splitlines(keepends=True)
    lines = [
        quote_to_line(msgspec.structs.replace(q, price=q.price * 1.01))
        if q.pair == "BTC/USD" and q.price is not None
        else quote_to_line(q)
        for q in read_tape(tape, [])
    ]
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    changed = packer.compress(b"".join(lines)) + packer.flush()
    db_file.execute("UPDATE tapes SET lines = ? WHERE round_id = 4", (changed,))
    db_file.commit()
    db_file.close()
    for i, market in enumerate(rebuilt.layout.markets):
        rewrite_report(db, 4, market, lambda _, i=i: rebuilt.report(i))
    code, result = _replay(capsys, db)
    assert code == 0, result
    assert result["equal"] == result["reports"] == 12
    capsys.readouterr()
    assert main(["audit", "--db", str(db), "--verify", "--deployment", "test"]) == 3
    assert "round 4 at" in capsys.readouterr().out


def test_rounds_not_reproducible_beside_other_revision_differences_exit_4_not_5(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both at once: every round stored under the revision before this one, a report of round
    2 that differs (a revision difference, exit 5 alone), and the last round's number changed to
    its predecessor's (not reproducible, exit 4 alone). Exit 4: 5 says every other report was
    equal, which a round not replayed leaves unknown. Before, 5 won. A mismatch under this
    revision (3) still wins over both."""
    db, _, feed = _feed_trail(tmp_path)
    for _ in range(5):
        feed.round()
    feed.audit.close()
    sql(db, f"UPDATE rounds SET revision = {PRICING_REVISION - 1}")
    rewrite_report(db, 2, "BTC/USD", lambda r: msgspec.structs.replace(r, status="stale"))
    code, result = _replay(capsys, db)
    assert code == 5, result  # the revision difference alone
    sql(db, "UPDATE rounds SET round = 4 WHERE id = 5")
    code, result = _replay(capsys, db)
    assert code == 4, result
    assert (result["mismatches"], result["other_revision_mismatches"]) == (0, 1)
    assert result["unreproducible_rounds"] == 1 and result["exit"] == 4
    code, text = _replay(capsys, db, json_out=False)
    assert code == 4, text
    assert "1 differ in rounds computed under pricing revision(s)" in text
    assert "; 1 round(s) not reproducible" in text
    sql(db, f"UPDATE rounds SET revision = {PRICING_REVISION} WHERE id = 3")
    rewrite_report(db, 3, "BTC/USD", lambda r: msgspec.structs.replace(r, status="stale"))
    code, result = _replay(capsys, db)
    assert code == 3, result
    assert (result["mismatches"], result["other_revision_mismatches"]) == (1, 1)
    assert result["unreproducible_rounds"] == 1


def test_the_rounds_of_a_long_trail_are_read_as_replayed_not_held_in_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """200,000 stored rounds, half older than the trail's first config load and half after a
    round number that does not add up, around a start of three good rounds: the three are
    replayed equal and the rest counted not reproducible, without the rounds held in memory
    (the window's and the start's were lists: 37 MB at 100,000 here, 325 MB for the 691,200
    of a two-day trail at the shipped interval, plus 89 MB of its schedule). The peak traced
    here is the replay's own, about 17 MB at any number of rounds."""
    db, config, feed = _feed_trail(tmp_path)
    for _ in range(3):
        feed.round()
    feed.audit.close()
    n = 100_000
    db_rows = sqlite3.connect(db)
    db_rows.executemany(
        "INSERT INTO rounds (ts, round, markets, quotes, revision) VALUES (?, ?, 3, 0, ?)",
        [(T0 - 10 - k, k, PRICING_REVISION) for k in range(n, 0, -1)]
        + [(feed.now + INTERVAL * k, 3, PRICING_REVISION) for k in range(1, n + 1)],
    )
    db_rows.commit()
    db_rows.close()
    reader = AuditReader(db)
    try:
        tracemalloc.start()
        try:
            summary = replay_trail(reader, 0, _END, None, [str(config)])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    finally:
        reader.close()
    assert (summary.rounds, summary.equal, summary.mismatched) == (3, 9, 0)
    assert summary.unreproducible == 2 * n
    assert peak < 30_000_000, peak


def test_a_trail_whose_stored_quotes_are_gone_is_not_reproducible(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The stored quotes of a round deleted from the file: the round says it was given quotes
    and has no tape row, so nothing is compared and the line says why (exit 4)."""
    db, _, feed = _feed_trail(tmp_path)
    for _ in range(5):
        feed.round()
    feed.audit.close()
    sql(db, "DELETE FROM tapes WHERE round_id = 3")
    code, text = _replay(capsys, db, json_out=False)
    assert code == 4, text
    assert "1 round(s) of the start at" in text and "have no stored tape row" in text
    assert "stored quotes are missing" in text and "compared 0 round(s)" in text


def test_a_trail_before_config_loads_were_stored_is_not_reproducible(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A schema version 1 trail (quotes and reports, no config loads): exit 4, saying the
    trail stores no config; an empty window is exit 1."""
    feed = Feed(make_config(), trail(tmp_path / "unused.sqlite3"))
    for _ in range(3):
        feed.round()
    feed.audit.close()
    db = tmp_path / "v1.sqlite3"
    write_v1(db, feed.kept)
    code, text = _replay(capsys, db, json_out=False)
    assert code == 4, text
    assert "the trail is of schema version 1: it stores no config loads" in text
    code, text = _replay(capsys, db, "--to", str(T0 - 1000), json_out=False)
    assert code == 1 and "no round is stored in this window" in text


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--replay", "--tape", "x.jsonl"], "--replay compares rounds: not with --verify"),
        (["--replay", "--verify"], "--replay compares rounds: not with --verify"),
        (["--replay", "--deployment", "d"], "--signer and --deployment go with --verify or --at"),
        (["--json"], "--json goes with --replay"),
        (["--verify", "--config", "a.toml", "--config", "b.toml"], "--config once with --verify"),
        (["--config", "a.toml"], "--config goes with --verify, --at or --replay"),
    ],
)
def test_bad_replay_requests_are_refused_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], said: str
) -> None:
    """An option `--replay` would ignore, or one that needs it, is refused before the trail
    is read: exit 2 and the reason."""
    db, _, feed = _feed_trail(tmp_path)
    feed.audit.close()
    capsys.readouterr()
    assert main(["audit", "--db", str(db), *args]) == 2
    assert f"oracled audit: {said}" in capsys.readouterr().err


def test_a_stored_quote_line_the_replay_cannot_read_is_named_counted_and_exits_4(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line of a round's stored quotes damaged after it was written (one that no reader of
    the tape can read, beside quotes left as they were): the replay skips it, its reports come
    out equal all the same, and `--replay` still says so, on stderr with the round and the
    line, in its counts, and with exit 4 (the check ran without an input), not 0."""
    db, _, feed = _feed_trail(tmp_path)
    for _ in range(5):
        feed.round()
    feed.audit.close()
    db_file = sqlite3.connect(db)
    (block,) = db_file.execute("SELECT lines FROM tapes WHERE round_id = 3").fetchone()
    lines = zlib.decompress(block, wbits=-15).splitlines(keepends=True)
    damaged = [*lines[:1], b'{"src":"alpha","ts":\n', *lines[1:]]  # its second line
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    changed = packer.compress(b"".join(damaged)) + packer.flush()
    db_file.execute("UPDATE tapes SET lines = ? WHERE round_id = 3", (changed,))
    (ts,) = db_file.execute("SELECT ts FROM rounds WHERE id = 3").fetchone()
    db_file.commit()
    db_file.close()
    capsys.readouterr()
    code = main(["audit", "--db", str(db), "--replay", "--json"])
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert code == 4 and result["exit"] == 4, result
    assert result["skipped_lines"] == 1 and result["mismatches"] == 0, result
    assert result["equal"] == result["reports"] > 0
    (said,) = out.err.splitlines()
    assert said.startswith(f"{db}: round 3 at {iso_time(ts)}, line 2 of its stored quotes: ")
    assert "skipped:" in said
    code, text = _replay(capsys, db, json_out=False)
    assert code == 4, text
    assert "1 stored line(s) unreadable, skipped" in text
