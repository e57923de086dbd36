"""Operator pauses kept across restarts: the file itself, and a real service stopped and started."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from one_venue import service_running
from oracled_cli import run_oracled
from pydantic import SecretStr
from structlog.testing import capture_logs

from oracled.config import Config, parse_config
from oracled.errors import ConfigError
from oracled.manual import FORMAT, ManualPauses, Pause
from oracled.publish.audit import AuditReader
from oracled.service import Service
from oracled.sim import BinanceSim

MARKETS = ("BTC/USDT", "ETH/USDT")


def test_pauses_are_written_whole_and_read_back(tmp_path: Path) -> None:
    """A save replaces the file at once (no temporary file left beside it) and load returns
    exactly what was saved; a later save with fewer markets forgets the others."""
    path = tmp_path / "pauses.json"
    pauses = ManualPauses(path)
    kept = {"ETH/USDT": Pause("ops@desk", 1_700_000_000_000), "BTC/USDT": Pause("risk", 5)}
    pauses.save(kept).result()
    assert json.loads(path.read_text())["format"] == FORMAT
    assert ManualPauses(path).load() == kept
    pauses.save({"BTC/USDT": Pause("risk", 5)}).result()
    pauses.close()
    assert ManualPauses(path).load() == {"BTC/USDT": Pause("risk", 5)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pauses.json", "pauses.json.lock"]


_KILLED_MID_WRITE = """
import resource, signal, sys
from pathlib import Path
from oracled.manual import ManualPauses, Pause
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it: a write past the limit kills
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
ManualPauses(Path(sys.argv[1])).save({"BTC/USDT": Pause("ops", 1)}).result()
"""


def test_a_pauses_file_that_is_a_symbolic_link_is_written_where_it_points(tmp_path: Path) -> None:
    """`oracle.manual_pauses_file` a symbolic link to a file on a volume that outlives the
    process: a save renamed its new file over the link itself, so the file it pointed at kept
    the pauses of the start, and a start whose link was made again (a new container over the
    same volume) put the markets paused since back live. A save writes where the link points,
    and the lock is taken beside the file written."""
    volume = tmp_path / "volume"
    volume.mkdir()
    path = tmp_path / "pauses.json"
    path.symlink_to(volume / "pauses.json")
    pauses = ManualPauses(path)
    assert pauses.claim()
    kept = {"ETH/USDT": Pause("ops@desk", 1_700_000_000_000)}
    assert pauses.save(kept).result() is None
    pauses.close()
    assert path.is_symlink()
    assert ManualPauses(volume / "pauses.json").load() == kept
    # no temporary file left; the lock beside the file written, none beside the link
    assert sorted(p.name for p in volume.iterdir()) == ["pauses.json", "pauses.json.lock"]
    assert not (tmp_path / "pauses.json.lock").exists()


def test_a_writer_killed_mid_write_leaves_a_temporary_file_the_next_writer_removes(
    tmp_path: Path,
) -> None:
    """A daemon killed while it rewrites the file (here by the kernel, at the first byte past a
    file-size limit of 0: after its temporary file exists, before the rename) leaves that
    temporary file beside it, and nothing removed it: one more after each such death. The next
    writer removes it once it holds the lock, and logs it; files that only look alike stay."""
    path = tmp_path / "pauses.json"
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_MID_WRITE, str(path)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr
    (left,) = [p.name for p in tmp_path.iterdir() if p.name.startswith(".pauses.json.")]
    assert re.fullmatch(r"\.pauses\.json\.[a-z0-9_]{8}", left)
    assert not path.exists()  # it died before the rename
    alike = [".pauses.json.short", ".pauses.json.abcdefghi", ".other.json.abcdefgh"]
    for name in alike:
        (tmp_path / name).write_text("not ours")
    pauses = ManualPauses(path)
    with capture_logs() as logs:
        assert pauses.claim()
    assert pauses.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*alike, "pauses.json.lock"])
    (removed,) = [e for e in logs if e["event"].startswith("manual pauses: removed")]
    assert (removed["files"], removed["log_level"]) == ([left], "warning")


def test_no_file_is_a_first_start_and_an_unreadable_file_stops_the_start(tmp_path: Path) -> None:
    """A missing file means nothing was paused; a file that is not a pause file, another format
    or version, or not a file at all is a config error naming the path: the daemon cannot know
    what was meant to stay paused."""
    assert ManualPauses(tmp_path / "none.json").load() == {}
    cases = {
        "garbage.json": b"{not json",
        "shape.json": b'{"format": "oracled-manual-pauses", "version": 1, "paused": []}',
        "format.json": b'{"format": "other", "version": 1, "paused": {}}',
        "version.json": b'{"format": "oracled-manual-pauses", "version": 9, "paused": {}}',
    }
    for name, body in cases.items():
        (tmp_path / name).write_bytes(body)
        with pytest.raises(ConfigError) as caught:
            ManualPauses(tmp_path / name).load()
        assert str(tmp_path / name) in caught.value.problems[0], name
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(ConfigError, match="cannot read"):
        ManualPauses(tmp_path / "dir.json").load()


def test_a_file_in_a_directory_that_does_not_exist_stops_the_start(tmp_path: Path) -> None:
    """No pause could ever be saved there: it once started fine and said so only when an
    operator paused a market during an incident ("a restart would lift them")."""
    gone = tmp_path / "gone" / "pauses.json"
    with pytest.raises(ConfigError) as caught:
        ManualPauses(gone).load()
    assert caught.value.problems == [
        f"oracle.manual_pauses_file: {gone}: directory {gone.parent} does not exist"
    ]


def test_a_failed_write_is_logged_and_the_last_good_file_stays(tmp_path: Path) -> None:
    """A save that cannot be written (its directory is gone) is logged as an error that says a
    restart would lift the pause; it raises nowhere and leaves the previous file as it was."""
    path = tmp_path / "pauses.json"
    pauses = ManualPauses(path)
    pauses.save({"BTC/USDT": Pause("ops", 1)}).result()
    lost = ManualPauses(tmp_path / "gone" / "pauses.json")
    with capture_logs() as logs:
        lost.save({"BTC/USDT": Pause("ops", 2)}).result()
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "manual pauses not saved: a restart would lift them"
    ]
    assert ManualPauses(path).load() == {"BTC/USDT": Pause("ops", 1)}


def _config(sim: BinanceSim, pauses: Path, audit: Path | None = None) -> Config:
    """One venue quoting MARKETS, pauses kept in `pauses`; with `audit`, a trail there."""
    trail = {} if audit is None else {"audit": {"enabled": True, "path": str(audit)}}
    return parse_config(
        {
            **trail,
            "oracle": {
                "round_interval_ms": 50,
                "resume_rounds": 2,
                "manual_pauses_file": str(pauses),
            },
            "api": {"listen": "127.0.0.1:0", "admin_token_env": None},
            "sources": {"v": {"type": "binance", "ws_url": sim.ws_url, "rest_url": sim.rest_url}},
            "markets": [
                {"symbol": m, "min_sources": 1, "sources": [{"source": "v", "pair": m}]}
                for m in MARKETS
            ],
        },
        env={},
    )


async def _statuses(service: Service, rounds: int) -> list[tuple[str, str, list[str]]]:
    """(market, status, reasons) of every market in each of the next `rounds` rounds."""
    seen: list[tuple[str, str, list[str]]] = []
    last = None
    async with asyncio.timeout(10):
        while len(seen) < rounds * len(MARKETS):
            await asyncio.sleep(0.01)
            result = service.hub.latest_result
            if result is None or result.round == last:
                continue
            last = result.round
            for m in MARKETS:
                report = service.hub.report(m)
                assert report is not None
                seen.append((m, report.status, report.reasons))
    return seen


async def test_a_paused_market_stays_paused_across_a_restart(tmp_path: Path) -> None:
    """BTC/USDT paused by an operator, the daemon stopped and started again: the new process
    restores the pause before its first round (logged with the actor), so BTC/USDT never goes
    live while ETH/USDT does (degraded: `thin`, one source); a resume then empties the file."""
    path = tmp_path / "pauses.json"
    async with BinanceSim({"BTCUSDT": 50_000.0, "ETHUSDT": 3_000.0}, rate_hz=40.0) as sim:
        first = Service(_config(sim, path))
        task = asyncio.create_task(first.run())
        await first.started.wait()
        first.on_manual("BTC/USDT", True, "ops@desk")
        first.stop()
        await task
        assert set(ManualPauses(path).load()) == {"BTC/USDT"}

        with capture_logs() as logs:
            second = Service(_config(sim, path))
        restored = [e for e in logs if e["event"] == "manual pause restored"]
        assert [(e["market"], e["actor"]) for e in restored] == [("BTC/USDT", "ops@desk")]
        async with service_running(second) as task:
            seen = await _statuses(second, 8)
            assert any(m == "ETH/USDT" and status == "degraded" for m, status, _ in seen)
            btc = [(status, reasons) for m, status, reasons in seen if m == "BTC/USDT"]
            assert all(status not in ("active", "degraded") for status, _ in btc), btc
            assert all("manual" in reasons for _, reasons in btc), btc
            second.on_manual("BTC/USDT", False, "ops@desk")
    assert ManualPauses(path).load() == {}


async def test_a_kept_pause_of_a_market_no_longer_configured_is_dropped(tmp_path: Path) -> None:
    """The file names a market the config no longer has: start-up warns, pauses the markets it
    knows, and rewrites the file without the stranger."""
    path = tmp_path / "pauses.json"
    saver = ManualPauses(path)
    saver.save({"DOGE/USDT": Pause("ops", 1), "ETH/USDT": Pause("ops", 2)}).result()
    saver.close()  # the previous run's writer, gone
    async with BinanceSim({"BTCUSDT": 50_000.0, "ETHUSDT": 3_000.0}) as sim:
        with capture_logs() as logs:
            service = Service(_config(sim, path))
        assert service.manual_pauses is not None
        service.manual_pauses.close()  # the rewrite it asked for is on disk
    warned = [e["market"] for e in logs if e["event"].startswith("manual pause of a market")]
    assert warned == ["DOGE/USDT"]
    assert bool(service.core.gates.manual[service.core.index["ETH/USDT"]])
    assert not bool(service.core.gates.manual[service.core.index["BTC/USDT"]])
    assert set(ManualPauses(path).load()) == {"ETH/USDT"}


async def test_a_kept_pause_naming_a_market_as_the_admin_api_takes_it_is_restored(
    tmp_path: Path,
) -> None:
    """A pauses file written by hand names its market as the admin API's path does
    (`btc-usdt`, `ETH-USDT`): start-up took it for a market no longer configured, dropped it
    from the file and let the market go live. It now pauses that market, and the file is
    rewritten with its canonical name."""
    path = tmp_path / "pauses.json"
    path.write_text(
        json.dumps(
            {
                "format": FORMAT,
                "version": 1,
                "paused": {
                    "btc-usdt": {"actor": "ops", "ts": 1},
                    "DOGE/USDT": {"actor": "x", "ts": 2},
                },
            }
        )
    )
    async with BinanceSim({"BTCUSDT": 50_000.0, "ETHUSDT": 3_000.0}) as sim:
        with capture_logs() as logs:
            service = Service(_config(sim, path))
        assert service.manual_pauses is not None
        service.manual_pauses.close()  # the rewrite it asked for is on disk
    restored = [(e["market"], e["actor"]) for e in logs if e["event"] == "manual pause restored"]
    assert restored == [("BTC/USDT", "ops")]
    warned = [e["market"] for e in logs if e["event"].startswith("manual pause of a market")]
    assert warned == ["DOGE/USDT"]
    assert bool(service.core.gates.manual[service.core.index["BTC/USDT"]])
    assert not bool(service.core.gates.manual[service.core.index["ETH/USDT"]])
    assert ManualPauses(path).load() == {"BTC/USDT": Pause("ops", 1)}


async def test_a_second_daemon_on_the_same_pauses_file_cannot_lift_the_first_ones_pause(
    tmp_path: Path,
) -> None:
    """Two daemons started on one config (one pauses file): alice pauses BTC/USDT on the first,
    bob ETH/USDT on the second. The file keeps alice's pause and the second daemon logs that it
    keeps none; it used to rewrite the file with bob's pause alone, so that a restart of the
    first lifted alice's pause behind her back (found by running two daemons on one state
    directory)."""
    path = tmp_path / "pauses.json"
    async with BinanceSim({"BTCUSDT": 50_000.0, "ETHUSDT": 3_000.0}, rate_hz=40.0) as sim:
        first = Service(_config(sim, path))
        with capture_logs() as start_logs:
            second = Service(_config(sim, path))
        tasks = [asyncio.create_task(s.run()) for s in (first, second)]
        with capture_logs() as logs:  # until both stopped: their writes are done then
            try:
                await first.started.wait()
                await second.started.wait()
                first.on_manual("BTC/USDT", True, "alice")
                second.on_manual("ETH/USDT", True, "bob")
            finally:
                first.stop()
                second.stop()
                await asyncio.gather(*tasks)
        third = Service(_config(sim, path))  # the first, restarted
        assert third.manual_pauses is not None
        third.manual_pauses.close()
    assert ManualPauses(path).load() == {"BTC/USDT": first._paused["BTC/USDT"]}
    assert bool(third.core.gates.manual[third.core.index["BTC/USDT"]])
    warned = [e for e in start_logs if e["event"] == "manual pauses will not be kept"]
    assert [e["log_level"] for e in warned] == ["warning"]
    assert "written by another process" in warned[0]["error"]
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [e["event"] for e in errors] == ["manual pauses not saved: a restart would lift them"]
    assert "written by another process" in errors[0]["error"]


def test_a_writer_refused_at_its_claim_never_writes_once_the_holder_is_gone(
    tmp_path: Path,
) -> None:
    """The second daemon's saves are refused while the first holds the file; once the first
    lets it go (stopped first), the second must still not write: its pauses are its own, and a
    rewrite with them alone would lift the pauses the first made since the second started (the
    daemon test above caught it as a race under load)."""
    path = tmp_path / "pauses.json"
    first, second = ManualPauses(path), ManualPauses(path)
    try:
        assert first.claim()
        assert not second.claim()
        alice = {"BTC/USDT": Pause("alice", 1)}
        assert first.save(alice).result() is None
        assert first.close()
        error = second.save({"ETH/USDT": Pause("bob", 2)}).result()
        assert error is not None and "written by another process" in error
        assert second.stats.kept is False and second.stats.failures == 1
        assert ManualPauses(path).load() == alice
    finally:
        first.close()
        second.close()


def test_a_writer_whose_lock_file_went_goes_on_only_if_nobody_wrote_the_file_since(
    tmp_path: Path,
) -> None:
    """The lock file removed under the writer: with nobody else about, its next save locks the
    new one and writes (a clean-up of lock files costs nothing); after a second writer locked
    the new one, wrote its pauses and let go, the first writes no more (one error naming the
    lock, each save refused and counted), so it never lifts the second's pauses."""
    path = tmp_path / "pauses.json"
    lock = path.with_name(path.name + ".lock")
    first = ManualPauses(path)
    try:
        assert first.claim()
        alice = {"BTC/USDT": Pause("alice", 1)}
        assert first.save(alice).result() is None
        lock.unlink()
        assert first.save({**alice, "SOL/USDT": Pause("alice", 2)}).result() is None
        lock.unlink(missing_ok=True)  # made and locked again by that save
        second = ManualPauses(path)
        assert set(second.load()) == {"BTC/USDT", "SOL/USDT"}
        assert second.claim()
        bob = {"ETH/USDT": Pause("bob", 3)}
        assert second.save(bob).result() is None
        assert second.close()
        with capture_logs() as logs:
            for k in range(2):
                error = first.save({**alice, "XRP/USDT": Pause("alice", 4 + k)}).result()
                assert error is not None and f"its lock file {lock} is gone" in error
        assert [(e["event"], e.get("lock")) for e in logs if e["log_level"] == "error"][:1] == [
            ("manual pauses lock lost: no pause is kept until a restart", str(lock))
        ]
        assert [e["event"] for e in logs].count(
            "manual pauses lock lost: no pause is kept until a restart"
        ) == 1
        assert first.stats.kept is False and first.stats.failures == 2
        assert ManualPauses(path).load() == bob
    finally:
        first.close()


def test_a_writer_whose_directory_moved_away_keeps_its_lock_and_writes_once_it_is_back(
    tmp_path: Path,
) -> None:
    """The pauses file's directory moved away for a while: saves fail meanwhile (counted, no
    lock lost), the moved file is left as it was, no second writer can take the file (the
    very lock is kept, not let go), and once the directory is back the next save writes there.
    Before, the lock was let go at the first save that found it away."""
    state, away = tmp_path / "state", tmp_path / "away"
    state.mkdir()
    path = state / "pauses.json"
    alice, bob = {"BTC/USDT": Pause("alice", 1)}, {"ETH/USDT": Pause("bob", 2)}
    first = ManualPauses(path)
    try:
        assert first.claim()
        assert first.save(alice).result() is None
        lock = os.stat(path.with_name(path.name + ".lock")).st_ino
        with capture_logs() as logs:
            state.rename(away)
            assert first.save({**alice, **bob}).result() is not None
            assert ManualPauses(away / "pauses.json").load() == alice
            away.rename(state)
            second = ManualPauses(path)
            assert not second.claim()  # the first still holds the very lock file
            second.close()
            assert first.save(bob).result() is None
        assert ManualPauses(path).load() == bob
        assert os.stat(path.with_name(path.name + ".lock")).st_ino == lock
        assert first.stats.kept and first.stats.failures == 1
        assert not [e for e in logs if "lock lost" in e["event"]]
    finally:
        first.close()


def test_a_writer_whose_directory_moved_away_for_good_writes_into_the_one_made_again(
    tmp_path: Path,
) -> None:
    """The directory moved away and a new one made at its path (a volume mounted again
    empty): nobody holds a lock there and no pauses file was written there, so the next save
    locks the new lock file and writes the daemon's whole state into it; the moved lock is let
    go. The appending writers would stop here; a whole-file rewrite loses nothing."""
    state, away = tmp_path / "state", tmp_path / "away"
    state.mkdir()
    path = state / "pauses.json"
    alice = {"BTC/USDT": Pause("alice", 1)}
    first = ManualPauses(path)
    try:
        assert first.claim()
        assert first.save(alice).result() is None
        state.rename(away)
        state.mkdir()
        kept = {**alice, "ETH/USDT": Pause("alice", 2)}
        assert first.save(kept).result() is None
        assert ManualPauses(path).load() == kept
        assert ManualPauses(away / "pauses.json").load() == alice
        moved = ManualPauses(away / "pauses.json")
        assert moved.claim()  # the moved lock was let go
        moved.close()
        second = ManualPauses(path)
        assert not second.claim()  # the new one is held
        second.close()
    finally:
        first.close()


TOKEN = "pauses-token-0123456789"


def _admin_service(sim: BinanceSim, pauses: Path) -> Service:
    cfg = _config(sim, pauses)
    return Service(cfg.model_copy(update={"admin_token": SecretStr(TOKEN)}))


async def _admin(http: aiohttp.ClientSession, service: Service, action: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{service.bound_port}/v1/admin/markets/BTC-USDT/{action}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with http.post(url, headers=auth, json={"actor": "ops"}) as response:
        return response.status, await response.text()


async def _metric(http: aiohttp.ClientSession, service: Service, name: str) -> float:
    async with http.get(f"http://127.0.0.1:{service.bound_port}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not exposed")


async def test_an_admin_pause_is_on_disk_when_it_is_answered(tmp_path: Path) -> None:
    """Each admin pause and resume is in the pauses file by the time its 200 arrives, so a
    kill -9 right after the answer cannot lift it. The handler used to answer at once while
    the worker thread still wrote and fsynced the file: the file lagged the answers (found
    reading the handler while exploring the daemon's lifecycle)."""
    path = tmp_path / "pauses.json"
    async with BinanceSim({"BTCUSDT": 50_000.0, "ETHUSDT": 3_000.0}) as sim:
        service = _admin_service(sim, path)
        async with service_running(service):
            await service.started.wait()
            async with aiohttp.ClientSession() as http:
                for _ in range(5):
                    assert (await _admin(http, service, "pause"))[0] == 200
                    assert set(ManualPauses(path).load()) == {"BTC/USDT"}
                    assert (await _admin(http, service, "resume"))[0] == 200
                    assert ManualPauses(path).load() == {}


async def test_a_pause_with_a_wrong_token_is_refused_and_counted_by_the_daemon(
    tmp_path: Path,
) -> None:
    """The running daemon answers a pause with a wrong token 401, pauses nothing, writes no
    pauses file, and its own `/metrics` counts the refusal under `wrong` (the service reads the
    API's counter at scrape time), the other reasons at 0."""
    path = tmp_path / "pauses.json"
    async with BinanceSim({"BTCUSDT": 50_000.0, "ETHUSDT": 3_000.0}) as sim:
        service = _admin_service(sim, path)
        async with service_running(service):
            await service.started.wait()
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{service.bound_port}/v1/admin/markets/BTC-USDT/pause"
                wrong = {"Authorization": f"Bearer {TOKEN[::-1]}"}
                async with http.post(url, headers=wrong) as response:
                    assert response.status == 401
                name = "oracled_admin_requests_refused_total"
                counts = {
                    r: await _metric(http, service, f'{name}{{reason="{r}"}}')
                    for r in ("disabled", "missing", "malformed", "wrong")
                }
            assert counts == {"disabled": 0.0, "missing": 0.0, "malformed": 0.0, "wrong": 1.0}
            assert not bool(service.core.gates.manual[service.core.index["BTC/USDT"]])
    assert not path.exists()


async def test_a_pause_that_cannot_be_saved_is_an_error_counted_and_shown(
    tmp_path: Path,
) -> None:
    """The pauses file's directory is gone (a lost volume): an admin pause is still applied,
    but answered 500 `not_saved` with a message saying it holds only until a restart; the
    failure is counted and `oracled_manual_pauses_kept` is 0 until a pause is written again.
    It used to be answered 200, with only an error log line."""
    state = tmp_path / "state"
    state.mkdir()
    path = state / "pauses.json"
    async with BinanceSim({"BTCUSDT": 50_000.0, "ETHUSDT": 3_000.0}) as sim:
        service = _admin_service(sim, path)
        async with service_running(service):
            await service.started.wait()
            async with aiohttp.ClientSession() as http:
                assert await _metric(http, service, "oracled_manual_pauses_kept") == 1.0
                shutil.rmtree(state)
                with capture_logs() as logs:
                    status, body = await _admin(http, service, "pause")
                assert status == 500, body
                error = json.loads(body)["error"]
                assert error["code"] == "not_saved"
                assert error["message"].startswith("BTC/USDT is paused in this process")
                assert error["message"].endswith("a restart would lift the pause")
                assert bool(service.core.gates.manual[service.core.index["BTC/USDT"]])
                assert [e["event"] for e in logs if e["log_level"] == "error"] == [
                    "manual pauses not saved: a restart would lift them"
                ]
                failures = "oracled_manual_pauses_save_failures_total"
                assert await _metric(http, service, failures) == 1.0
                assert await _metric(http, service, "oracled_manual_pauses_kept") == 0.0
                state.mkdir()
                assert (await _admin(http, service, "pause"))[0] == 200
                assert await _metric(http, service, "oracled_manual_pauses_kept") == 1.0
                assert set(ManualPauses(path).load()) == {"BTC/USDT"}


async def test_a_save_that_hangs_is_answered_not_saved_in_time_and_the_stop_does_not_wait(
    tmp_path: Path,
) -> None:
    """A write of the pauses file that never returns (a hung network mount; here the kernel
    holds the open of the lock file behind a lease the test keeps) once held the admin call
    forever, and the stop too (it joined the writer thread on the loop). The call is now
    answered 500 `not_saved` after `save_timeout_s`, counted and logged, and the daemon still
    stops within its budget, leaving the stuck write behind."""
    path = tmp_path / "pauses.json"
    lock = tmp_path / "pauses.json.lock"
    lock.mkdir()  # the start cannot open the lock file: the first save opens it again
    sigio = signal.signal(signal.SIGIO, signal.SIG_IGN)  # the lease's break notice
    holder: int | None = None
    try:
        async with BinanceSim({"BTCUSDT": 50_000.0, "ETHUSDT": 3_000.0}) as sim:
            service = _admin_service(sim, path)
            assert service.manual_pauses is not None
            service.manual_pauses.save_timeout_s = 0.5
            service.shutdown_budget_s = 2.0
            task = asyncio.create_task(service.run())
            try:
                await service.started.wait()
                lock.rmdir()
                lock.touch()
                holder = os.open(lock, os.O_RDONLY)
                fcntl.fcntl(holder, fcntl.F_SETLEASE, fcntl.F_RDLCK)  # opens for write wait
                async with aiohttp.ClientSession() as http:
                    with capture_logs() as logs:
                        async with asyncio.timeout(5):
                            status, body = await _admin(http, service, "pause")
                    assert status == 500, body
                    error = json.loads(body)["error"]
                    assert error["code"] == "not_saved"
                    assert "did not finish within 0.5 s" in error["message"]
                    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
                        "manual pauses not saved: a restart would lift them"
                    ]
                    failures = "oracled_manual_pauses_save_failures_total"
                    assert await _metric(http, service, failures) == 1.0
                    assert await _metric(http, service, "oracled_manual_pauses_kept") == 0.0
                assert bool(service.core.gates.manual[service.core.index["BTC/USDT"]])
            finally:
                service.stop()
                with capture_logs() as logs:
                    async with asyncio.timeout(service.shutdown_budget_s + 1.0):
                        await task
            assert "manual pauses file not closed: a write is stuck" in [e["event"] for e in logs]
    finally:
        if holder is not None:
            os.close(holder)  # ends the lease: the stuck open goes on, and its thread ends
        signal.signal(signal.SIGIO, sigio)


def test_a_pauses_file_that_is_a_fifo_stops_the_start_without_waiting(tmp_path: Path) -> None:
    """A FIFO nobody writes at the pauses file's path: the start's read of it waited for ever
    (before the first round, so the daemon never priced); it is a config error naming what the
    path is."""
    fifo = tmp_path / "pauses.json"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as caught:
        ManualPauses(fifo).load()
    assert caught.value.problems == [
        f"oracle.manual_pauses_file: cannot read {fifo} (a FIFO, not a regular file)"
    ]


def test_a_pauses_file_nested_past_the_decoders_depth_stops_the_start_with_a_config_error(
    tmp_path: Path,
) -> None:
    """A pause entry may carry keys this build does not know (they are skipped); one holding
    arrays nested 100 000 deep made msgspec raise RecursionError, which `load` did not catch:
    `oracled check-config --as-daemon` and the daemon's start ended in a traceback, not the config
    error that names the file. Now it is that error, exit 2."""
    pauses = tmp_path / "pauses.json"
    deep = b"[" * 100_000 + b"]" * 100_000
    pauses.write_bytes(
        b'{"format": "oracled-manual-pauses", "version": 1, "paused": {"BTC/USDT": '
        b'{"actor": "ops", "ts": 1700000000000, "note": ' + deep + b"}}}"
    )
    with pytest.raises(ConfigError) as caught:
        ManualPauses(pauses).load()
    assert caught.value.problems[0].startswith(
        f"oracle.manual_pauses_file: {pauses} is not a pause file (maximum recursion depth"
    ), caught.value.problems
    config = tmp_path / "oracled.toml"
    config.write_text(
        f'[oracle]\nmanual_pauses_file = "{pauses}"\n\n[sources.binance]\ntype = "binance"\n\n'
        '[[markets]]\nsymbol = "BTC/USDT"\nmin_sources = 1\n'
        'sources = [{ source = "binance", pair = "BTC/USDT" }]\n'
    )
    done = run_oracled(["check-config", "--as-daemon", str(config)])
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert f"{pauses} is not a pause file" in done.stdout + done.stderr, done.stderr


def _tape(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A recorded tape's header and lines, decoded."""
    header, *lines = path.read_bytes().splitlines()
    return json.loads(header), [json.loads(line) for line in lines]


async def test_a_pause_kept_across_a_restart_is_on_the_tape_and_in_the_trail_at_round_1(
    tmp_path: Path,
) -> None:
    """A pause the file kept is applied before the restarted daemon's first round, so that is
    the round it first applied to: `record`'s tape holds it as a manual command for the run's
    first round (the header's `first_round` and `first_round_ts`), before any quote later than
    that round, and the trail's `restore` action names the same round."""
    path, tape, db = tmp_path / "pauses.json", tmp_path / "tape.jsonl", tmp_path / "a.sqlite3"
    ManualPauses(path).save({"BTC/USDT": Pause("ops@desk", 1)}).result(5)
    async with BinanceSim({"BTCUSDT": 50_000.0, "ETHUSDT": 3_000.0}, rate_hz=40.0) as sim:
        service = Service(_config(sim, path, db), record=tape)
        async with service_running(service):
            await _statuses(service, 6)
    header, lines = _tape(tape)
    command = {"manual": "pause", "market": "BTC/USDT", "actor": "ops@desk"}
    (at,) = [n for n, line in enumerate(lines) if "manual" in line]
    assert lines[at] == {"ts": header["first_round_ts"], **command, "round": 1}
    assert header["first_round"] == 1
    assert all(line["ts"] <= header["first_round_ts"] for line in lines[:at])
    reader = AuditReader(db)
    (restore,) = reader.actions("BTC/USDT", 0, 1 << 62)
    reader.close()
    assert (restore.action, restore.round, restore.round_ts) == ("restore", 1, lines[at]["ts"])


async def test_a_version_1_tape_continued_gets_no_manual_command_and_the_log_says_so(
    tmp_path: Path,
) -> None:
    """`record --append` on a version 1 tape keeps it version 1, which has no manual commands:
    a pause while recording is left off it (a replay of it differs from that round on) and
    the log says so with the round; the quotes go on being appended."""
    tape = tmp_path / "tape.jsonl"
    old = b'{"format": "oracled-tape", "version": 1}\n'
    tape.write_bytes(old)
    async with BinanceSim({"BTCUSDT": 50_000.0, "ETHUSDT": 3_000.0}, rate_hz=40.0) as sim:
        service = Service(_config(sim, tmp_path / "pauses.json"), record=tape, record_append=True)
        with capture_logs() as logs:
            async with service_running(service):
                await _statuses(service, 2)
                service.on_manual("BTC/USDT", True, "ops@desk")
                await _statuses(service, 6)
    data = tape.read_bytes()
    assert data.startswith(old) and b'"manual"' not in data and data.count(b"\n") > 10
    (warned,) = [e for e in logs if e["event"].startswith("tape: a version 1 tape continued")]
    assert warned["market"] == "BTC/USDT" and warned["action"] == "pause" and warned["round"] > 2
