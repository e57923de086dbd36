"""The audit trail under failure: a writer killed with SIGKILL mid-batch, and a daemon whose
audit directory is read-only (it keeps pricing and says what is wrong)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import aiohttp
import pytest
from audit_rig import audit_config, recorded
from children import stop
from ports import free_port
from publish_rig import Rounds, make_config
from structlog.testing import capture_logs

from oracled.publish.audit import AuditReader, AuditTrail
from oracled.sim import BinanceSim

ROOT = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent(
    """
    import sys
    from oracled.config import AuditConfig, parse_config
    from oracled.core import Core
    from oracled.model import Quote
    from oracled.publish.audit import AuditTrail

    markets = [f"M{i}/USD" for i in range(300)]
    cfg = parse_config(
        {
            "sources": {s: {"type": "binance"} for s in ("a", "b")},
            "markets": [
                {"symbol": m, "min_sources": 1,
                 "sources": [{"source": s, "pair": m} for s in ("a", "b")]}
                for m in markets
            ],
        },
        env={},
    )
    core = Core(cfg)
    audit = AuditTrail(
        AuditConfig(
            enabled=True, path=sys.argv[1], queue=10_000, batch_rounds=64, reserve_bytes=65_536
        )
    )
    audit.start()
    now = 1_700_000_000_000
    while True:  # until killed
        now += 250
        for m in markets:
            for s in ("a", "b"):
                q = Quote(s, m, now - 5, price=100.0)
                audit.add_quote(q)
                core.ingest(q)
        audit.submit(core.run_round(now))
        if audit._queue.qsize() > 500:
            import time
            time.sleep(0.01)
    """
)


def test_a_writer_killed_mid_batch_leaves_whole_rounds_only(tmp_path: Path) -> None:
    """SIGKILL while batches of 64 rounds x 300 markets are being written: the database opens,
    passes SQLite's integrity check, and every stored round has all its reports and its block
    of quotes (all of them); a new writer goes on appending to it."""
    db = tmp_path / "audit.sqlite3"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(db)], cwd=ROOT)
    try:
        # A hang guard, not a speed claim: on a loaded machine (the suite runs on several
        # workers) the writer's start and first 150 rounds took more than 30 s.
        deadline = time.monotonic() + 120
        rounds = 0
        while rounds < 150 and time.monotonic() < deadline:
            time.sleep(0.05)
            if db.exists():
                try:
                    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                        rounds = con.execute("SELECT count(*) FROM rounds").fetchone()[0]
                except sqlite3.OperationalError:  # schema not there yet
                    continue
        assert rounds >= 150, "the writer did not get going"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        stop(proc)
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        torn = con.execute(
            "SELECT count(*) FROM rounds o WHERE o.markets != "
            "(SELECT count(*) FROM reports r WHERE r.round_id = o.id)"
        ).fetchone()[0]
        # a round's quotes are one deflated block of tape lines
        blocks = con.execute(
            "SELECT o.quotes, t.lines FROM rounds o LEFT JOIN tapes t ON t.round_id = o.id"
        ).fetchall()
        stored = con.execute("SELECT count(*), max(round) FROM rounds").fetchone()
    assert torn == 0
    assert all(
        n == (0 if lines is None else zlib.decompress(lines, wbits=-15).count(b"\n"))
        for n, lines in blocks
    )
    assert stored[0] == stored[1] >= rounds  # rounds 1..n, none missing in between
    audit = AuditTrail(audit_config(db))
    audit.start()
    audit.close()
    assert audit.stats.write_errors == 0
    reader = AuditReader(db)
    assert reader.span() is not None
    reader.close()


#: As root, file modes bind only a process without these capabilities: the daemon runs without.
_CAPS = "-dac_override,-dac_read_search"
_NO_OVERRIDE = (
    ["setpriv", f"--inh-caps={_CAPS}", f"--bounding-set={_CAPS}", "--"] if os.geteuid() == 0 else []
)


async def test_a_read_only_audit_directory_is_reported_and_prices_go_on(tmp_path: Path) -> None:
    """`oracled run` with its audit database in a read-only directory (without the capability
    to override file modes when the tests run as root): the market goes live and stays served,
    /metrics shows the audit down with rounds counted as write errors, and the log names the
    path and the error."""
    shared_dir = tmp_path
    audit_dir = shared_dir / "audit"
    audit_dir.mkdir()
    audit_dir.chmod(0o555)
    port = free_port()
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=20.0) as sim:
        config = shared_dir / "oracled.toml"
        config.write_text(
            textwrap.dedent(
                f"""
                [oracle]
                round_interval_ms = 100
                resume_rounds = 1
                [api]
                admin_token_env = "ORACLED_UNSET_TOKEN_FOR_THIS_TEST"
                [log]
                format = "json"
                [audit]
                enabled = true
                path = "{audit_dir / "audit.sqlite3"}"
                reserve_bytes = 65_536
                [sources.venue]
                type = "binance"
                ws_url = "{sim.ws_url}"
                rest_url = "{sim.rest_url}"
                [[markets]]
                symbol = "BTC/USDT"
                min_sources = 1
                sources = [{{ source = "venue", pair = "BTC/USDT" }}]
                """
            )
        )
        log_path = shared_dir / "oracled.log"
        env = {k: v for k, v in os.environ.items() if k != "ORACLED_UNSET_TOKEN_FOR_THIS_TEST"}
        with log_path.open("wb") as log:
            argv = [*_NO_OVERRIDE, sys.executable, "-m", "oracled.cli", "run"]
            argv += ["--config", str(config), "--listen", f"127.0.0.1:{port}"]
            proc = subprocess.Popen(  # noqa: ASYNC220 - starting it, not waiting for it
                argv,
                cwd=shared_dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            metrics = await _wait_live_and_audit_down(port)
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 10)
        finally:
            stop(proc)
    assert "oracled_audit_up 0.0" in metrics
    errors = next(
        line for line in metrics.splitlines() if line.startswith("oracled_audit_write_errors_total")
    )
    assert float(errors.split()[-1]) >= 1
    text = log_path.read_text()
    # the first thing the writer makes there, its lock beside the database, is refused
    assert "audit trail not written" in text and "Permission denied" in text
    assert str(audit_dir / "audit.sqlite3") in text
    assert list(audit_dir.iterdir()) == []


async def _wait_live_and_audit_down(port: int) -> str:
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(20):
            while True:
                await asyncio.sleep(0.1)
                try:
                    async with http.get(f"{base}/v1/prices/BTC-USDT") as resp:
                        body = await resp.json() if resp.status == 200 else {}
                    async with http.get(f"{base}/metrics") as resp:
                        metrics = await resp.text()
                except aiohttp.ClientError:
                    continue
                # one source at its minimum: degraded ("thin"), which still carries a price
                live = body.get("status") in ("active", "degraded") and body.get("price")
                if live and "oracled_audit_write_errors_total 0.0" not in metrics:
                    return metrics


def test_a_stopped_trail_in_a_directory_the_reader_cannot_write_is_read(tmp_path: Path) -> None:
    """`oracled audit` on a trail whose writer has stopped, in a directory the reader may not
    write (another user's state directory, a copy on read-only media): SQLite needs to make the
    `-wal` and `-shm` files beside a WAL database to read it, and answered "attempt to write a
    readonly database" (exit 2); the reader now reads the file as it is, answers, and leaves the
    directory as it was."""
    db = tmp_path / "trail" / "audit.sqlite3"
    db.parent.mkdir()
    audit = AuditTrail(audit_config(db))
    audit.start()
    rounds = Rounds(make_config())
    for _ in range(3):
        audit.submit(rounds.step())
    assert audit.close()
    assert sorted(p.name for p in db.parent.iterdir()) == [
        "audit.sqlite3",
        "audit.sqlite3.lock",
        "audit.sqlite3.reserve",
    ]
    db.chmod(0o444)
    db.parent.chmod(0o555)
    try:
        done = subprocess.run(
            [*_NO_OVERRIDE, sys.executable, "-m", "oracled.cli", "audit", "--db", str(db)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (done.returncode, done.stderr) == (0, "")
        assert done.stdout.startswith(f"{db}: 3 round(s) from ")
        assert sorted(p.name for p in db.parent.iterdir()) == [
            "audit.sqlite3",
            "audit.sqlite3.lock",
            "audit.sqlite3.reserve",
        ]
    finally:
        db.parent.chmod(0o755)


def test_a_stored_dictionary_changed_to_another_type_gives_way_to_a_new_one(
    tmp_path: Path,
) -> None:
    """The writer deflates reports against the newest stored dictionary, read back at each
    open. Its `data` changed in the file to text (SQLite keeps any value in any column) made
    zlib raise TypeError in the writer thread: the thread ended with a traceback, nothing was
    logged or counted, and no round was written again until a restart. The row is now passed
    over with a warning and the next round makes a new dictionary: the trail goes on."""
    path = tmp_path / "audit.sqlite3"
    first = recorded(path, 3)
    assert first.audit.stats.rounds == 3
    db = sqlite3.connect(path)
    db.execute("UPDATE dictionaries SET data = 'not bytes'")
    db.commit()
    db.close()
    died: list[BaseException | None] = []
    hook, threading.excepthook = threading.excepthook, lambda args: died.append(args.exc_value)
    try:
        with capture_logs() as logs:
            second = recorded(path, 3, after=first)
    finally:
        threading.excepthook = hook
    assert died == []
    assert (second.audit.stats.rounds, second.audit.stats.write_errors) == (3, 0)
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "audit dictionary changed after it was written: a new one is made"
    ]
    reader = AuditReader(path)
    try:
        later = list(reader.reports("BTC/USD", second.kept[0][0].ts, 1 << 62))
    finally:
        reader.close()
    assert [s.report.ts for s in later] == [result.ts for result, _ in second.kept]


@pytest.mark.parametrize("value", ["9223372036854775807", "'soon'"])
def test_a_round_time_changed_in_the_file_neither_ends_the_writer_nor_deletes_the_history(
    tmp_path: Path, value: str
) -> None:
    """Retention deletes the rounds older than `retention_days` before the newest round time
    stored. With the newest round's time changed in the file to 2**63 - 1, every round before
    it was past that age, and the restarted daemon's writer deleted the trail's whole history;
    changed to text, `max(ts)` was the text and the writer thread ended in a TypeError,
    unlogged, no round written again. Only a round time the writer can have stored counts
    now: the history stays, the new rounds are written."""
    path = tmp_path / "audit.sqlite3"
    first = recorded(path, 3)
    db = sqlite3.connect(path)
    db.execute(f"UPDATE rounds SET ts = {value} WHERE id = 3")
    db.commit()
    db.close()
    died: list[BaseException | None] = []
    hook, threading.excepthook = threading.excepthook, lambda args: died.append(args.exc_value)
    try:
        second = recorded(path, 3, after=first, retention_days=30)
    finally:
        threading.excepthook = hook
    assert died == []
    assert (second.audit.stats.rounds, second.audit.stats.write_errors) == (3, 0)
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT id FROM rounds ORDER BY id").fetchall() == [
            (k,) for k in range(1, 7)
        ]
    finally:
        db.close()
