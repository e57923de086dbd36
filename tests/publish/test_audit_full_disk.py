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


def _restarted_onto_a_full_disk(out: dict[str, Any], kept: list[str]) -> None:
    """What both ways of stopping share: the start reads the signing floor, writes every round,
    trims the oldest to stay inside its room, and holds its reserve once there is room."""
    assert out["first"][1] == 0
    assert out["room_at_start"] == 0
    assert sorted(out["files_after_stop"]) == sorted(
        ["audit.sqlite3", "audit.sqlite3.lock", "more", "other", *kept]
    )
    assert out["floor"] == out["now"]  # the newest round the key signed, read off a full disk
    assert out["written"] == [1500, 0, True]
    assert out["reserve"] == 0
    assert out["reserve_after"] == [8 * MIB, 8 * MIB]
    assert out["closed"] is True
    stored = out["stored"]
    assert stored["integrity"] == [["ok"]]
    assert stored["gapless"] and stored["last"] == 1505  # this run's 1,505, none lost...
    assert stored["first"] > 6  # ...its oldest trimmed to make room (the first run's too)
    assert stored["reports"] == 30 * stored["rounds"]
    assert stored["quotes"] == stored["quotes_expected"] == 90 * stored["rounds"]


def test_a_daemon_stopped_without_its_reserve_starts_again_onto_a_disk_still_full(
    tmp_path: Path,
) -> None:
    """A trail that gave its reserve up is stopped while the disk is full: closing deletes its
    -wal and -shm, and it keeps that room in its reserve file (~4 MB); another file takes the
    rest, so the start finds not one byte free. The start still reads the signing floor (the
    reader opens the stopped database as it is), gives the kept room up at the open, caps the
    data at what it holds and half that room, and writes 1,500 rounds (~5 MB) with none lost,
    trimming its oldest; once the disk has room it makes its 8 MiB reserve again. Before, the
    floor read failed ("disk I/O error": the key could sign a time again) and every round of
    the start was lost until someone freed space."""
    out = run("restart-still-full", tmp_path)
    assert out["first_closed"] is True
    assert out["first_logs"][-1] == [
        "warning",
        "audit stopped without its reserve: the room its -wal gave back is kept for the next start",
    ]
    assert 3 * MIB < out["files_after_stop"]["audit.sqlite3.reserve"] < 8 * MIB
    _restarted_onto_a_full_disk(out, ["audit.sqlite3.reserve"])
    assert out["logs"] == [
        ["info", "signing floor"],
        ["warning", "audit disk full at open: the reserve is given up"],
        ["info", "audit trail writing"],
        ["info", "audit reserve held again: the disk has room"],
    ]


def test_a_daemon_killed_without_its_reserve_starts_again_onto_a_disk_still_full(
    tmp_path: Path,
) -> None:
    """The same trail killed (SIGKILL) instead: its -wal and -shm stay, and no reserve file.
    The start reads the floor, opens in that room, says the reserve is not made, caps the data
    at what it holds (no byte free) and writes all 1,500 rounds inside its files, trimming its
    oldest; once the disk has room it makes its reserve. Before, it wrote until its -wal took
    the last byte, after which no checkpoint could make room and the trail went down."""
    out = run("killed-still-full", tmp_path)
    _restarted_onto_a_full_disk(out, ["audit.sqlite3-shm", "audit.sqlite3-wal"])
    assert out["logs"] == [
        ["info", "signing floor"],
        [
            "warning",
            "audit reserve not made: the trail writes inside its files until the disk has room "
            "for it",
        ],
        ["info", "audit trail writing"],
        ["info", "audit reserve held again: the disk has room"],
    ]
