"""The signing lease (oracled/publish/sign_lease.py) in real daemon processes: a key never signs
a round time twice, even after a `kill -9` without the audit trail and a restart with the clock
behind; a lease that cannot be read stops the start; one that cannot be written leaves rounds
unsigned and counted while they go on."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from lease_rig import KEY, ROUND_MS, Daemon, key_file, lease_config, remove_dir

from oracled.publish.sign_lease import FORMAT
from oracled.sim import BinanceSim

pytestmark = pytest.mark.integration

#: The restart's clock starts this far behind the newest round the killed daemon signed.
BEHIND_MS = 3_000
FLOOR_EVENT = "round not signed: this key signed up to a later round time before"


def _lease_on_disk(path: Path) -> int:
    data = json.loads(path.read_text())
    assert (data["format"], data["version"]) == (FORMAT, 1)
    return int(data["leases"][KEY.address])


async def _crash_and_restart_behind(
    tmp_path: Path, lose_lease: bool = False
) -> tuple[Daemon, Daemon]:
    """A signing daemon (audit trail off) killed with SIGKILL after 40 signed rounds (4 s),
    started again on the same key with its clock BEHIND_MS behind the newest round the first one
    signed, until it has signed a round past that one. `lose_lease`: the lease file is gone
    before the restart, as with a lease kept off persistent storage."""
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=50.0) as sim:
        config = lease_config(sim, tmp_path, "signing-lease.json")
        first = Daemon(config)
        async with first.running():
            await first.until("40 signed rounds", _enough(first, 40))
            first.kill9()
        if lose_lease:
            (tmp_path / "signing-lease.json").unlink()
        newest = max(s["ts"] for s in first.signed)
        second = Daemon(config, newest - BEHIND_MS)
        async with second.running():
            await second.until("a round past the first run's", _past(second, newest))
            second.floor_count = await second.counter('oracled_signer_errors_total{reason="floor"}')
    return first, second


def _past(daemon: Daemon, ts: int) -> Any:
    async def check() -> bool:
        return any(s["ts"] > ts for s in daemon.signed)

    return check


def _enough(daemon: Daemon, count: int) -> Any:
    async def check() -> bool:
        return len(daemon.signed) >= count

    return check


async def test_a_daemon_killed_without_its_audit_trail_and_restarted_behind_signs_no_time_twice(
    tmp_path: Path,
) -> None:
    """`kill -9` of a signing daemon whose audit trail is off, then a start with the clock 3 s
    behind: every time the first run signed was inside its lease on disk; the second start reads
    that lease as its floor, leaves every round up to it unsigned (counted `floor`, logged once
    with the floor and the wait, from its very first round), and signs only times after it: no
    round time is signed by both runs."""
    first, second = await _crash_and_restart_behind(tmp_path)
    stored = _lease_on_disk(tmp_path / "signing-lease.json")
    firsts = {s["ts"] for s in first.signed}
    seconds = {s["ts"] for s in second.signed}
    assert all(s["signer"] == KEY.address for s in (*first.signed, *second.signed))
    assert first.events("no signing lease file yet: a first start")
    (leased,) = second.events("signing lease")
    floor = leased["floor"]
    assert max(firsts) <= floor  # each time signed was leased first
    assert min(seconds) > floor and not firsts & seconds
    (held,) = second.events(FLOOR_EVENT)
    assert held["floor"] == floor and held["ts"] <= max(firsts)  # from the first round on
    assert held["resumes_in_ms"] == floor - held["ts"] + 1
    (resumed,) = second.events("signing resumed past the floor")
    assert resumed["ts"] == min(seconds) > floor
    assert second.floor_count >= (max(firsts) - held["ts"]) // ROUND_MS
    assert stored >= max(seconds)  # the second run's lease, on disk where it died


async def test_a_lease_lost_before_the_same_crash_and_restart_lets_it_sign_times_twice(
    tmp_path: Path,
) -> None:
    """The same crash and restart with the lease file gone in between (and no audit trail), as
    when it is kept on storage that dies with the process: the second run signs round times the
    first one signed, each with another round: equivocation to every client. What the lease
    prevents, why it must be on persistent storage, and proof that the test above can fail.
    (Signing without any lease file is refused at start: test_sign_lease.py.)"""
    first, second = await _crash_and_restart_behind(tmp_path, lose_lease=True)
    both = {s["ts"] for s in first.signed} & {s["ts"] for s in second.signed}
    assert len(both) >= 10 and second.floor_count == 0
    again = {s["ts"]: s["root"] for s in second.signed if s["ts"] in both}
    assert any(s["root"] != again[s["ts"]] for s in first.signed if s["ts"] in both)
    assert second.events("no signing lease file yet: a first start")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"\x00\x17garbage", "not a signing lease"),
        (
            b'{"format": "oracled-signing-lease", "version": 1, "leases": {"0x12',
            "not a signing lease",
        ),
        (
            f'{{"format": "oracled-signing-lease", "version": 1, "leases": {{"{KEY.address}": '
            "1700000000}}".encode(),
            f"lease 1700000000 of '{KEY.address}' is no round time in milliseconds",
        ),
    ],
    ids=["garbage", "truncated", "in-seconds"],
)
def test_a_lease_file_that_cannot_be_read_stops_the_start_naming_it(
    tmp_path: Path, body: bytes, problem: str
) -> None:
    """`oracled run` over a lease file that is not one refuses to start (exit code 2) and names
    the setting, the file and the key, rather than signing with no floor; the file is left as
    it was. A lease in seconds too: read as milliseconds it was a floor below every round."""
    lease = tmp_path / "signing-lease.json"
    lease.write_bytes(body)
    config = tmp_path / "oracled.toml"
    config.write_text(
        f'[signing]\nenabled = true\ndeployment = "test"\nkey_file = "{key_file(tmp_path)}"\n'
        f'lease_file = "{lease}"\n'
        '[sources.venue]\ntype = "binance"\nws_url = "ws://127.0.0.1:9"\n'
        'rest_url = "http://127.0.0.1:9"\n'
        '[[markets]]\nsymbol = "BTC/USDT"\nmin_sources = 1\n'
        'sources = [{ source = "venue", pair = "BTC/USDT" }]\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "oracled.cli", "run", "--config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "oracled: refusing to start: 1 config problem(s)" in done.stderr
    assert f"signing.lease_file: {lease} (signer {KEY.address}): {problem}" in done.stderr
    assert lease.read_bytes() == body


async def test_a_lease_that_cannot_be_written_leaves_rounds_unsigned_and_counted(
    tmp_path: Path,
) -> None:
    """The lease's directory turned read-only under a running daemon (without the capability to
    override file modes when the tests run as root): rounds go on being published, the lease
    runs out and the rounds past it are left unsigned and counted (`lease`), logged once each
    way with the error; once the directory is writable again, signing resumes by itself."""
    leases = tmp_path / "state"
    leases.mkdir()
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=50.0) as sim:
        config = lease_config(sim, tmp_path, str(leases / "signing-lease.json"), window_ms=1_000)
        daemon = Daemon(config, no_override=True)
        signed = "oracled_signed_rounds_total"
        unleased = 'oracled_signer_errors_total{reason="lease"}'
        async with daemon.running():
            await daemon.until("10 signed rounds", _enough(daemon, 10))
            leases.chmod(0o555)
            try:
                await daemon.until("rounds unsigned", _above(daemon, unleased, 10))
                rounds = await daemon.counter("oracled_rounds_total")
                stopped = await daemon.counter(signed)
                await daemon.until(
                    "rounds go on", _above(daemon, "oracled_rounds_total", rounds + 10)
                )
                assert await daemon.counter(signed) == stopped  # none signed meanwhile
            finally:
                leases.chmod(0o755)
            await daemon.until("signing again", _above(daemon, signed, stopped + 5))
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(daemon.proc.wait, 10) == 0
    (failed,) = daemon.events("signing lease not written: rounds past it go unsigned")
    assert "Permission denied" in failed["error"]
    assert (
        len(daemon.events("round not signed: the signing lease on disk does not reach its time"))
        == 1
    )
    assert len(daemon.events("signing lease written again")) == 1
    assert len(daemon.events("signing resumed: the lease covers the rounds again")) == 1
    # the stop wrote it down to the last round handed to the signer
    assert _lease_on_disk(leases / "signing-lease.json") == max(s["ts"] for s in daemon.signed)


def _above(daemon: Daemon, name: str, value: float) -> Any:
    async def check() -> bool:
        return await daemon.counter(name) > value

    return check


async def test_a_second_daemon_let_in_by_a_removed_lock_file_signs_no_time_the_first_signed(
    tmp_path: Path,
) -> None:
    """Two daemon processes on one key and one lease file: the lease's directory removed and
    made again under the first (its lock file with it), the second starts, locks a new lock
    file and signs. The first sees its lock gone before its next signature and signs no more
    (`signing lease lock lost`, logged once), so no round time is signed by both; it goes on
    running and publishing, unsigned. Before, both signed the same times with other rounds."""
    state = tmp_path / "state"
    state.mkdir()
    lease = state / "signing-lease.json"
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=50.0) as sim:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        first = Daemon(lease_config(sim, tmp_path / "a", str(lease)), name="a")
        second = Daemon(lease_config(sim, tmp_path / "b", str(lease)), name="b")
        async with first.running():
            await first.until("10 signed rounds", _enough(first, 10))
            remove_dir(state)
            state.mkdir()
            async with second.running():
                await second.until("10 signed rounds", _enough(second, 10))
                rounds = await first.counter("oracled_rounds_total")
                await first.until(
                    "the first runs on", _above(first, "oracled_rounds_total", rounds + 5)
                )
    firsts = {s["ts"] for s in first.signed}
    seconds = {s["ts"] for s in second.signed}
    assert not firsts & seconds and max(firsts) < min(seconds)
    (lost,) = first.events("signing lease lock lost: no round is signed until a restart")
    assert lost["lock"] == f"{lease}.lock"
    assert second.events("no signing lease file yet: a first start")
