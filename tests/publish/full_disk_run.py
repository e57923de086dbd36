"""The audit trail on a real full filesystem: a script that test_audit_full_disk.py runs in a
mount namespace of its own (`unshare --user --map-root-user --mount`), where it mounts a small
tmpfs at the directory it is given, so that SQLite meets a real ENOSPC, not SQLite's
max_page_count. The mount goes with the process. Prints what it saw as one JSON object.

    python full_disk_run.py SCENARIO DIR

SCENARIO: trail-fills-it, full-at-start, restart-full, restart-still-full or killed-still-full.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# The folder of the tests' shared helpers, which pytest puts on the path (publish_rig imports
# ports.py from it); this folder is there already, as the script's own.
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
from audit_rig import Feed
from publish_rig import make_config
from structlog.testing import capture_logs

from oracled.config import AuditConfig
from oracled.publish.audit import AuditReader, AuditTrail
from oracled.publish.signer import RoundSigner, SigningKey
from oracled.service import Service

MARKETS = {f"M{i}/USD": 100.0 + i for i in range(30)}  # ~3.5 KB a round stored
FS_BYTES = 32 * 1024 * 1024
FILE = "audit.sqlite3"
KEY = SigningKey.from_hex("0x" + "33" * 32)


def fill(path: Path, leave: int = 0) -> int:
    """Write `path` until the filesystem has `leave` bytes left (or none); its size."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    block = b"x" * 4096
    try:
        while True:
            st = os.statvfs(path)
            if st.f_bavail * st.f_frsize <= leave:
                break
            os.write(fd, block)
    except OSError:
        pass  # ENOSPC: full
    finally:
        os.close(fd)
    return path.stat().st_size


def trail_bytes(fs: Path) -> int:
    """Bytes the trail's files take: the database and its -wal and -shm."""
    return sum(p.stat().st_size for p in fs.iterdir() if p.name.startswith(FILE + "-")) + (
        (fs / FILE).stat().st_size
    )


class Run:
    def __init__(self, fs: Path, **settings: Any) -> None:
        self.fs = fs
        self.audit = AuditTrail(
            AuditConfig(enabled=True, path=str(fs / FILE), queue=100_000, **settings)
        )
        self.audit._retry_s = 0.2
        self.feed = Feed(make_config(MARKETS), self.audit)
        self.feed.prices = dict(MARKETS)

    def rounds(self, count: int) -> None:
        """`count` rounds, each handed over once the writer has nearly caught up (none is
        dropped for a full queue), then until it has written them all."""
        for _ in range(count):
            self.feed.round()
            while self.audit._queue.qsize() > 32:
                time.sleep(0.001)
        while self.audit._queue.qsize() > 0 or self.audit.stats.queued:
            time.sleep(0.001)
        time.sleep(0.05)  # the batch taken off the queue last


def stored(db: Path) -> dict[str, Any]:
    """What the closed database holds: SQLite's integrity check, the rounds and whether they
    follow one another without a gap, and the reports and quotes that read back."""
    with sqlite3.connect(db) as check:
        integrity = check.execute("PRAGMA integrity_check").fetchall()
    reader = AuditReader(db)
    try:
        rounds = reader.rounds(0, 2**62)
        reports = sum(1 for _ in reader.report_lines(0, 2**62))
        with open(os.devnull, "wb") as sink:
            quotes = reader.tape(sink, 0, 2**62)
    finally:
        reader.close()
    numbers = [r.round for r in rounds]
    return {
        "integrity": integrity,
        "rounds": len(rounds),
        "first": numbers[0],
        "last": numbers[-1],
        "gapless": numbers == list(range(numbers[0], numbers[-1] + 1)),
        "reports": reports,
        "quotes": quotes,
        "quotes_expected": sum(r.quotes for r in rounds),
    }


def trail_fills_it(fs: Path) -> dict[str, Any]:
    """The trail (max_bytes far above the disk) fills what other files left of the disk; then
    another file takes every free byte; then that file goes."""
    out: dict[str, Any] = {}
    run = Run(fs)
    audit = run.audit
    with capture_logs() as logs:
        audit.start()
        run.rounds(5)
        out["reserve_at_start"] = (fs / f"{FILE}.reserve").stat().st_size
        fill(fs / "other", leave=4 * 1024 * 1024)
        while audit.stats.reserve and run.feed.core.rounds < 20_000:
            run.rounds(20)
        out["full_at"] = run.feed.core.rounds
        run.rounds(200)
        out["after_full"] = audit.stats.rounds, audit.stats.write_errors, audit.stats.ok
        fill(fs / "more")
        out["room_when_filled"] = os.statvfs(fs).f_bavail
        before = trail_bytes(fs)
        run.rounds(300)
        out["trail_grew_when_filled"] = trail_bytes(fs) - before
        out["when_filled"] = audit.stats.rounds, audit.stats.write_errors, audit.stats.ok
        os.unlink(fs / "other")
        os.unlink(fs / "more")
        run.rounds(5)
        out["reserve_after"] = audit.stats.reserve, (fs / f"{FILE}.reserve").stat().st_size
        out["closed"] = audit.close()
    out["total"] = run.feed.core.rounds
    out["stats"] = audit.stats.rounds, audit.stats.write_errors, sum(audit.stats.dropped.values())
    out["logs"] = [(e["log_level"], e["event"]) for e in logs]
    out["stored"] = stored(fs / FILE)
    return out


def full_at_start(fs: Path) -> dict[str, Any]:
    """The disk is full before the trail opens: no database, no reserve; then room comes."""
    out: dict[str, Any] = {}
    fill(fs / "other")
    run = Run(fs)
    audit = run.audit
    with capture_logs() as logs:
        audit.start()
        run.rounds(20)
        time.sleep(0.5)  # the writer tries again (every 0.2 s here) and fails again, unsaid
        run.rounds(20)
        out["full"] = audit.stats.rounds, audit.stats.write_errors, audit.stats.ok
        out["reserve_when_full"] = audit.stats.reserve, (fs / f"{FILE}.reserve").exists()
        os.unlink(fs / "other")
        time.sleep(0.3)  # past the writer's retry time (0.2 s here)
        run.rounds(40)
        out["room"] = audit.stats.rounds, audit.stats.write_errors, audit.stats.ok
        out["reserve_after"] = audit.stats.reserve, (fs / f"{FILE}.reserve").stat().st_size
        out["closed"] = audit.close()
    out["logs"] = [(e["log_level"], e["event"]) for e in logs]
    out["stored"] = stored(fs / FILE)
    return out


def restart_full(fs: Path) -> dict[str, Any]:
    """A daemon stopped and started again onto a disk that filled meanwhile, its reserve still
    beside the database (a stopped trail keeps it)."""
    out: dict[str, Any] = {}
    first = Run(fs)
    first.audit.start()
    first.rounds(50)
    out["first_closed"] = first.audit.close()
    out["files_after_stop"] = sorted(p.name for p in fs.iterdir())
    fill(fs / "other")
    run = Run(fs)
    run.feed.now = first.feed.now
    audit = run.audit
    audit._retention_every_s = 0.0  # where the reserve is made again: every batch, not 30 s
    with capture_logs() as logs:
        audit.start()
        run.rounds(300)
        out["written"] = audit.stats.rounds, audit.stats.write_errors, audit.stats.ok
        out["reserve"] = audit.stats.reserve, (fs / f"{FILE}.reserve").exists()
        os.unlink(fs / "other")
        run.rounds(5)
        out["reserve_after"] = audit.stats.reserve, (fs / f"{FILE}.reserve").stat().st_size
        out["closed"] = audit.close()
    out["logs"] = [(e["log_level"], e["event"]) for e in logs]
    out["stored"] = stored(fs / FILE)
    return out


def _floor(fs: Path, signer: RoundSigner) -> int | None:
    reader = AuditReader(fs / FILE)
    try:
        return reader.last_signed_ts(signer.address)
    finally:
        reader.close()


def _fill_and_stop(fs: Path, signer: RoundSigner, *, kill: bool) -> dict[str, Any]:
    """A trail that fills the disk and gives its reserve up, then another file takes every free
    byte, its newest round signed; stopped, or killed with SIGKILL (run in a child process)."""
    if not kill:
        return _fill(fs, signer, close=True)
    read, write = os.pipe()
    if os.fork() == 0:  # the child: no thread started yet in this process
        os.close(read)
        os.write(write, json.dumps(_fill(fs, signer, close=False)).encode())
        os.kill(os.getpid(), signal.SIGKILL)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.wait()
    return dict(json.loads(data))


def _fill(fs: Path, signer: RoundSigner, *, close: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    first = Run(fs)
    with capture_logs() as logs:
        first.audit.start()
        first.rounds(5)
        fill(fs / "other", leave=4 * 1024 * 1024)
        while first.audit.stats.reserve and first.feed.core.rounds < 20_000:
            first.rounds(20)
        first.rounds(100)
        fill(fs / "more")
        first.feed.round(signer)  # the newest round signed: the floor the next start needs
        first.rounds(0)
        out["first"] = first.audit.stats.rounds, first.audit.stats.write_errors
        out["now"] = first.feed.now
        deadline = time.monotonic() + 20
        while not close and _floor(fs, signer) != out["now"] and time.monotonic() < deadline:
            time.sleep(0.01)  # killed only once the signature is stored (the writer has no ack)
        out["first_closed"] = first.audit.close() if close else None
    out["first_logs"] = [(e["log_level"], e["event"]) for e in logs]
    return out


def restart_still_full(fs: Path, *, kill: bool) -> dict[str, Any]:
    """A trail that gave its reserve up on a full disk is stopped (or killed), the disk stays
    full (another file takes what the stop gave back), and the daemon starts again onto it: its
    start reads the signing floor, then the trail writes 1,500 rounds (~5 MB, more than any room
    it has); then the disk gets room."""
    signer = RoundSigner(KEY, "test")
    out = _fill_and_stop(fs, signer, kill=kill)
    out["files_after_stop"] = {p.name: p.stat().st_size for p in fs.iterdir()}
    fill(fs / "rest")  # what the stop gave back and the trail did not keep
    out["room_at_start"] = os.statvfs(fs).f_bavail
    cfg = make_config(MARKETS, audit={"enabled": True, "path": str(fs / FILE)})
    run = Run(fs)
    run.feed.now = out["now"]
    audit = run.audit
    with capture_logs() as logs:
        out["floor"] = Service._signing_floor(cfg, signer)
        audit.start()
        run.rounds(1500)
        out["written"] = audit.stats.rounds, audit.stats.write_errors, audit.stats.ok
        out["reserve"] = audit.stats.reserve
        for name in ("other", "more", "rest"):
            os.unlink(fs / name)
        audit._retention_at = 0.0  # the next batch looks for room for the reserve (30 s)
        run.rounds(5)
        reserve = fs / f"{FILE}.reserve"
        out["reserve_after"] = audit.stats.reserve, reserve.exists() and reserve.stat().st_size
        out["closed"] = audit.close()
    out["logs"] = [(e["log_level"], e["event"]) for e in logs]
    out["stored"] = stored(fs / FILE)
    return out


def main() -> None:
    scenario, directory = sys.argv[1], Path(sys.argv[2])
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs", str(directory)], check=True
    )
    run = {
        "trail-fills-it": trail_fills_it,
        "full-at-start": full_at_start,
        "restart-full": restart_full,
        "restart-still-full": functools.partial(restart_still_full, kill=False),
        "killed-still-full": functools.partial(restart_still_full, kill=True),
    }[scenario]
    print(json.dumps(run(directory)))


if __name__ == "__main__":
    main()
