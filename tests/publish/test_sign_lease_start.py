"""When a daemon takes its signing lease (oracled/publish/sign_lease.py): at the end of its start,
once nothing else can refuse it, so that a start refused on the way (its port in use, a sink that
cannot start, the lease held by another daemon) leaves the lease and its lock as they were; and a
daemon that signed nothing puts the lease back as it found it when it stops.

Real services on one lease file, in this process: the lock beside the file is a `flock`, which
two opens of the file conflict on within one process as between two."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from publish_rig import one_venue_config

from oracled.errors import ConfigError
from oracled.lockfile import lock_beside
from oracled.publish.sign_lease import FORMAT
from oracled.publish.signer import SigningKey
from oracled.service import Service

KEY = SigningKey.from_hex("0x" + "57" * 32)
SAFETY_S = 30.0  # guards against hangs only
DEAD_VENUE = ("ws://127.0.0.1:9/ws", "http://127.0.0.1:9")  # refused: rounds go on, unknown


def _config(tmp_path: Path, lease: Path, **extra: Any) -> Any:
    """A signing daemon on a free port, its venue unreachable, rounds every 50 ms, its lease at
    `lease` and an audit trail of its own (`extra`: more tables, or ones replaced)."""
    key = tmp_path / "signing.key"
    key.write_text(KEY.hex() + "\n")
    key.chmod(0o600)
    signing = {"enabled": True, "key_file": str(key), "deployment": "test"}
    return one_venue_config(
        *DEAD_VENUE,
        tmp_path / f"audit-{len(list(tmp_path.iterdir()))}.sqlite3",
        signing={**signing, "lease_file": str(lease)},
        **extra,
    )


def _leases(path: Path) -> dict[str, int]:
    data = json.loads(path.read_text())
    assert (data["format"], data["version"]) == (FORMAT, 1)
    return dict(data["leases"])


def _lock_is_free(path: Path) -> bool:
    """Nobody holds the lease's lock: this process can take it (and lets it go at once)."""
    try:
        fd = lock_beside(path)
    except OSError:
        return False
    os.close(fd)
    return True


async def _until(check: Any, what: str) -> None:
    try:
        async with asyncio.timeout(SAFETY_S):
            while not check():  # noqa: ASYNC110 - state of the service's own tasks
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def _signs(service: Service, rounds: int) -> int:
    """Run `service` until it has signed `rounds` rounds, stop it; the newest round time it
    handed to its signer."""
    task = asyncio.create_task(service.run())
    try:
        assert service.signer is not None
        signed = service.signer.stats
        await _until(lambda: signed.signed >= rounds or task.done(), f"{rounds} signed rounds")
    finally:
        service.stop()
        await task
    assert service._signer_worker is not None and service._signer_worker.floor is not None
    return service._signer_worker.floor


async def test_starts_refused_before_the_lease_leave_it_to_the_daemon_that_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two daemons on one lease file, one at a time. The first signs and stops (its lease
    written down to its last round). The second is refused twice: its NATS sink cannot start
    (a token variable that is not set), then its port is in use. Neither start moves the lease
    or keeps its lock, so the first daemon starts again at once and signs from its first
    round, none held back under a floor. Before, the lease was taken when the daemon was made:
    the refused construction left the lease a window ahead and its lock held for as long as
    the process lived, and the first daemon's restart was refused as held by another."""
    lease = tmp_path / "lease.json"
    last = await _signs(Service(_config(tmp_path, lease)), 3)
    assert _leases(lease) == {KEY.address: last}
    written = lease.read_bytes()

    monkeypatch.delenv("ORACLED_TEST_UNSET_NATS_TOKEN", raising=False)
    nats = {"enabled": True, "token_env": "ORACLED_TEST_UNSET_NATS_TOKEN"}
    with pytest.raises(ConfigError, match="ORACLED_TEST_UNSET_NATS_TOKEN"):
        Service(_config(tmp_path, lease, nats=nats))
    assert lease.read_bytes() == written and _lock_is_free(lease)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = Service(_config(tmp_path, lease, api={"listen": f"127.0.0.1:{port}"}))
        with pytest.raises(OSError):
            await refused.run()
    assert not refused.started.is_set()
    assert lease.read_bytes() == written and _lock_is_free(lease)

    again = Service(_config(tmp_path, lease))
    await _signs(again, 3)
    assert again.signer is not None
    errors = again.signer.stats.errors
    # `busy` (a round skipped while the one before was still being signed) is the machine's
    # load, not the lease: it was 1 once on a CI at a load average of 20.
    assert (errors["error"], errors["floor"], errors["lease"]) == (0, 0, 0), errors


async def test_a_first_start_refused_on_its_port_leaves_no_lease(tmp_path: Path) -> None:
    """A first start (no lease file yet) whose port is in use writes no lease. Before, it left
    one a window ahead of its clock, which the next start had to wait out before signing."""
    lease = tmp_path / "lease.json"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            await Service(_config(tmp_path, lease, api={"listen": f"127.0.0.1:{port}"})).run()
    assert not lease.exists() and _lock_is_free(lease)


async def test_a_second_daemon_on_a_held_lease_is_refused_and_the_first_signs_on(
    tmp_path: Path,
) -> None:
    """Two daemons on one lease file at once: the second, on a port of its own, is refused
    (ConfigError naming the lease and its lock) at the end of its start, before its first round
    and its `oracled started`, and stops whole (its API closed); the first signs on, every round
    inside its lease."""
    lease = tmp_path / "lease.json"
    first = Service(_config(tmp_path, lease))
    running = asyncio.create_task(first.run())
    try:
        assert first.signer is not None
        stats = first.signer.stats
        await _until(lambda: stats.signed >= 2 or running.done(), "the first daemon signing")
        second = Service(_config(tmp_path, lease))
        with pytest.raises(ConfigError, match=r"held by another process .*lease\.json\.lock"):
            await second.run()
        assert not second.started.is_set() and second.rounds_published == 0
        signed = stats.signed
        await _until(lambda: stats.signed >= signed + 3 or running.done(), "signing on")
        assert stats.errors["lease"] == 0
    finally:
        first.stop()
        await running


class _JustPastARound:
    """The system clock, shifted so that the daemon's start falls 1 ms past a round time of a
    60 s interval: its first round is a minute away."""

    def __init__(self) -> None:
        now = time.time_ns() // 1_000_000
        self.offset_ms = 60_000 - now % 60_000 + 1

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms

    def monotonic(self) -> float:
        return time.monotonic()


@pytest.mark.parametrize("found", [None, 1_700_000_000_000], ids=["no-lease", "a-floor"])
async def test_a_daemon_stopped_before_its_first_round_puts_the_lease_back(
    tmp_path: Path, found: int | None
) -> None:
    """A daemon that took the lease and stopped before signing anything (here, before its first
    round) writes it back to what it found: no entry for its key, or the floor. Before, a lease
    without a floor was left a window ahead, for the next start to wait out."""
    lease = tmp_path / "lease.json"
    if found is not None:
        body = {"format": FORMAT, "version": 1, "leases": {KEY.address: found}}
        lease.write_text(json.dumps(body))
    cfg = _config(tmp_path, lease, oracle={"round_interval_ms": 60_000, "resume_rounds": 1})
    service = Service(cfg, clock=_JustPastARound())
    task = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(SAFETY_S):
            await service.started.wait()
        ahead = _leases(lease)[KEY.address]  # taken: a window ahead of the clock
        assert ahead > service.clock.now_ms()
    finally:
        service.stop()
        await task
    assert service.rounds_published == 0
    assert _leases(lease) == ({} if found is None else {KEY.address: found})
    assert _lock_is_free(lease)
