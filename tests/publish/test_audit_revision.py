"""The pricing revision in the audit trail (schema version 6): each round stores the revision it
was computed under, `oracled audit --tape` names it in the tape's header, and an upgrade in the
window is said; older trails read as before and are brought to version 6 (now 7) in place."""

from __future__ import annotations

import io
import shutil
import sqlite3
from pathlib import Path

import pytest
from audit_rig import Feed, recorded, sql, trail
from publish_rig import make_config

from oracled.cli import main
from oracled.core import PRICING_REVISION
from oracled.publish.audit import AuditReader, iso_time
from oracled.replay import replay
from oracled.tape import TapeHeader, read_header

END = 1 << 62
OLDER = PRICING_REVISION - 1
FIXTURES = Path(__file__).parent.parent / "fixtures" / "audit"


def _as_version_5(db: Path) -> None:
    """Take a version 7 database back to version 5's layout: its rounds without a revision, no
    config texts."""
    with sqlite3.connect(db) as con:
        con.executescript(
            "ALTER TABLE configs DROP COLUMN text; ALTER TABLE configs DROP COLUMN redacted;"
            "ALTER TABLE configs DROP COLUMN pricing;"
            "ALTER TABLE rounds DROP COLUMN revision;"
            "UPDATE meta SET value = '5' WHERE key = 'schema';"
        )
    con.close()


def _tape(db: Path, capsys: pytest.CaptureFixture[str], *window: str) -> tuple[bytes, str]:
    """`oracled audit --tape` of the trail at `db`: the tape and the command's stderr."""
    out = db.with_suffix(".jsonl")
    capsys.readouterr()
    assert main(["audit", "--db", str(db), "--tape", str(out), *window]) == 0
    return out.read_bytes(), capsys.readouterr().err


def test_each_round_stores_its_revision_and_the_tape_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every round is stored with the writer's PRICING_REVISION, and the tape's header names it
    with the exporting oracled's version; its replay by this oracled gives the stored reports
    without a warning."""
    db = tmp_path / "audit.sqlite3"
    recorded(db, 5)
    reader = AuditReader(db)
    assert [r.revision for r in reader.rounds(0, END)] == [PRICING_REVISION] * 5
    stored = b"".join(reader.report_lines(0, END))
    reader.close()
    tape, err = _tape(db, capsys)
    header = read_header(tape.split(b"\n", 1)[0])
    assert header.pricing_revision == PRICING_REVISION and header.software_version is not None
    assert "warning" not in err, err
    out = io.BytesIO()
    replay(make_config(), io.BytesIO(tape), out)
    assert out.getvalue() == stored


def test_a_version_5_trail_reads_as_before_and_is_brought_to_version_6_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A version 5 trail (before the revision was kept): its rounds read with none, and its
    tape's header names none (a replay says nothing of revisions); the writer brings it to
    version 6 (now 7) in place, the rounds before kept as they were (none) and the new ones
    with this revision; a tape of the old rounds still names none, one of the new rounds this
    one."""
    db = tmp_path / "audit.sqlite3"
    feed = recorded(db, 4)
    _as_version_5(db)
    reader = AuditReader(db)
    assert reader.version == 5 and [r.revision for r in reader.rounds(0, END)] == [None] * 4
    reader.close()
    tape, _ = _tape(db, capsys)
    assert b"pricing_revision" not in tape.split(b"\n", 1)[0]
    old_end = feed.now

    feed.audit = trail(db)
    for _ in range(3):
        feed.round()
    assert feed.audit.close() and feed.audit.stats.write_errors == 0
    reader = AuditReader(db)
    assert reader.version == 7
    assert [r.revision for r in reader.rounds(0, END)] == [None] * 4 + [PRICING_REVISION] * 3
    reader.close()
    before, _ = _tape(db, capsys, "--to", str(old_end))
    assert before == tape  # the same bytes as from the version 5 file
    after, _ = _tape(db, capsys, "--from", str(old_end + 1))
    assert read_header(after.split(b"\n", 1)[0]).pricing_revision == PRICING_REVISION


def test_a_release_before_the_revision_is_upgraded_keeping_its_rounds_unrecorded(
    tmp_path: Path,
) -> None:
    """The trail a release before this one wrote (tests/fixtures/audit, schema version 3) is
    brought to version 6 (now 7) by this writer: its five rounds stay without a revision, the rounds
    added have this one."""
    db = Path(shutil.copy(FIXTURES / "trail_format2.sqlite3", tmp_path / "trail.sqlite3"))
    feed = Feed(make_config(perps=("BTC/USD",)), trail(db))
    feed.now += 60_000
    feed.round()
    feed.round()
    assert feed.audit.close() and feed.audit.stats.write_errors == 0
    reader = AuditReader(db)
    assert reader.version == 7
    assert [r.revision for r in reader.rounds(0, END)] == [None] * 5 + [PRICING_REVISION] * 2
    reader.close()


def test_an_upgrade_in_the_window_is_said_and_the_tape_names_its_first_rounds_revision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rounds of an older revision, then of this one (an upgrade in the window): the tape's
    header names the older, the revision of its first round, and `--tape` warns from the
    first round of the newer on; the replay of a window of the older rounds names the older
    alone (no warning), and replays to the stored reports (here the rules did not change)."""
    db = tmp_path / "audit.sqlite3"
    feed = Feed(make_config(), trail(db))
    feed.audit.revision = OLDER  # as a daemon of the revision before wrote them
    for _ in range(4):
        feed.round()
    assert feed.audit.close()
    upgraded_at = feed.now + feed.cfg.oracle.round_interval_ms
    feed.audit = trail(db)
    for _ in range(3):
        feed.round()
    assert feed.audit.close()

    tape, err = _tape(db, capsys)
    assert read_header(tape.split(b"\n", 1)[0]).pricing_revision == OLDER
    assert (
        f"a replay may differ from the stored reports from {iso_time(upgraded_at)} on: rounds"
        f" computed under pricing revision {PRICING_REVISION} from here (the tape's header names"
        f" revision {OLDER})"
    ) in err, err

    old, err = _tape(db, capsys, "--to", str(upgraded_at - 1))
    assert "warning" not in err, err
    reader = AuditReader(db)
    stored = b"".join(reader.report_lines(0, upgraded_at - 1))
    reader.close()
    seen: list[TapeHeader] = []
    out = io.BytesIO()
    replay(make_config(), io.BytesIO(old), out, on_header=seen.append)
    assert [h.pricing_revision for h in seen] == [OLDER]  # `oracled replay` warns of it
    assert out.getvalue() == stored


def test_a_revision_changed_in_the_file_is_named_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A round's revision overwritten with text (the file changed after it was written) stops
    `--tape` with the row named (exit 2), as any stored value of the wrong type does."""
    db = tmp_path / "audit.sqlite3"
    recorded(db, 3)
    sql(db, "UPDATE rounds SET revision = 'sixteen' WHERE id = 1")
    capsys.readouterr()
    code = main(["audit", "--db", str(db), "--tape", str(tmp_path / "t.jsonl")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "rounds row 1: revision holds str 'sixteen'" in err and "Traceback" not in err


def test_at_names_the_revision_its_round_was_computed_under(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--at` says which rules made the report it shows (`computed under pricing revision N`),
    and says nothing of it for a round stored without one (before schema version 6)."""
    db = tmp_path / "audit.sqlite3"
    feed = recorded(db, 3)
    at = ["audit", "--db", str(db), "--market", "BTC/USD", "--at", str(feed.now)]
    capsys.readouterr()
    assert main(at) == 0
    assert f"\ncomputed under pricing revision {PRICING_REVISION}\n" in capsys.readouterr().out
    _as_version_5(db)
    assert main(at) == 0
    assert "pricing revision" not in capsys.readouterr().out
