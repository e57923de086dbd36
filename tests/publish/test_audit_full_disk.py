"""The audit trail on a real full filesystem (docs/publishing.md, *A full disk*).

Each test runs full_disk_run.py in a user and mount namespace of its own (`unshare`, util-linux;
root is not needed where the kernel allows user namespaces, and this works as root too), where it
mounts a 32 MiB tmpfs: SQLite meets the kernel's ENOSPC on its database, `-wal` and `-shm` files,
not its own max_page_count (which no deployment sets and which a delete can always get under).
The mount ends with the process; nothing is left mounted on the host."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
MIB = 1024 * 1024
FULL = "audit disk full: the reserve is given up and the oldest rounds deleted; the trail goes on inside its file"  # noqa: E501


def run(scenario: str, tmp_path: Path) -> dict[str, Any]:
    fs = tmp_path / "fs"
    fs.mkdir()
    script = HERE / "full_disk_run.py"
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", sys.executable, script, scenario, fs],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    # the last line: what the script saw (log lines outside its captures come before it)
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


def test_a_trail_that_fills_the_disk_gives_up_its_reserve_and_writes_on_inside_its_file(
    tmp_path: Path,
) -> None:
    """The trail fills the disk (its max_bytes far above it): it gives its 8 MiB reserve back,
    deletes its oldest rounds and checkpoints, and writes every round; then another file takes
    every free byte and still no round is lost, the trail's files not growing by one byte; once
    that file goes, the reserve is held again. Logged once each way; the database checks whole,
    its rounds without a gap up to the last, every report and quote reads back."""
    out = run("trail-fills-it", tmp_path)
    assert out["reserve_at_start"] == 8 * MIB
    assert out["full_at"] > 5  # the trail did fill the disk
    assert out["after_full"][1:] == [0, True]
    assert out["room_when_filled"] == 0
    assert out["when_filled"][1:] == [0, True]
    assert out["trail_grew_when_filled"] == 0
    assert out["reserve_after"] == [8 * MIB, 8 * MIB]
    assert out["closed"] is True
    assert out["stats"] == [out["total"], 0, 0]  # written, lost, dropped
    assert out["logs"] == [
        ["info", "audit trail writing"],
        ["warning", FULL],
        ["info", "audit reserve held again: the disk has room"],
    ]
    stored = out["stored"]
    assert stored["integrity"] == [["ok"]]
    assert stored["gapless"] and stored["last"] == out["total"]
    assert stored["first"] > 1  # the oldest rounds made the room
    assert stored["reports"] == 30 * stored["rounds"]
    assert stored["quotes"] == stored["quotes_expected"] == 90 * stored["rounds"]


def test_a_disk_full_before_the_trail_opens_is_down_counted_then_writes_once_there_is_room(
    tmp_path: Path,
) -> None:
    """With no byte free before the first open there is no reserve to give and nothing to
    delete: every round is lost and counted, the trail reads down (oldest_up's stats.ok) and
    says so once; once room comes it writes again without a restart and makes its reserve."""
    out = run("full-at-start", tmp_path)
    assert out["full"] == [0, 40, False]
    assert out["reserve_when_full"] == [0, False]
    assert out["room"] == [40, 40, True]
    assert out["reserve_after"] == [8 * MIB, 8 * MIB]
    assert out["logs"] == [
        ["error", "audit trail not written; prices go on without it"],
        ["info", "audit trail writing"],
    ]
    stored = out["stored"]
    assert stored["integrity"] == [["ok"]]
    assert (stored["rounds"], stored["first"], stored["last"]) == (40, 41, 80)


def test_a_daemon_started_again_onto_a_full_disk_gives_up_its_reserve_and_writes(
    tmp_path: Path,
) -> None:
    """A stopped trail keeps its reserve; started again once the disk has filled meanwhile,
    SQLite cannot even make its -shm file (a "disk I/O error", SQLITE_IOERR_SHMSIZE, where the
    ENOSPC does not come through): the writer gives the reserve up at the open and writes every
    round into the room it made, and holds it again once the disk has room."""
    out = run("restart-full", tmp_path)
    assert out["first_closed"] is True
    assert out["files_after_stop"] == [
        "audit.sqlite3",
        "audit.sqlite3.lock",
        "audit.sqlite3.reserve",
    ]
    assert out["written"] == [300, 0, True]
    assert out["reserve"] == [0, False]
    assert out["reserve_after"] == [8 * MIB, 8 * MIB]
    assert out["closed"] is True
    assert out["logs"] == [
        ["warning", "audit disk full at open: the reserve is given up"],
        ["info", "audit trail writing"],
        ["info", "audit reserve held again: the disk has room"],
    ]
    stored = out["stored"]
    assert stored["integrity"] == [["ok"]]
    assert stored["rounds"] == 50 + 305 and stored["reports"] == 30 * 355
