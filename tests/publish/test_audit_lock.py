"""The audit trail's one-writer lock (`<db>.lock`) in two daemon processes: a lock file removed
under a writing daemon, or its directory removed and made again, lets a second daemon lock a
new one and write the same trail; the first then writes no more."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from lease_rig import Daemon, lease_config

from oracled.publish.audit import AuditReader
from oracled.sim import BinanceSim

pytestmark = pytest.mark.integration

LOST = "audit trail lock lost: no round is written until a restart"


def _above(daemon: Daemon, name: str, value: float) -> Any:
    async def check() -> bool:
        return await daemon.counter(name) > value

    return check


@pytest.mark.parametrize("lost", ["lock file removed", "directory made again"])
async def test_a_second_daemon_let_in_by_a_removed_lock_file_is_the_trails_only_writer(
    tmp_path: Path, lost: str
) -> None:
    """The first daemon finds its lock file gone at its next batch's commit and writes no more
    round (logged once as an error naming the lock, counted as write errors, `oracled_audit_up`
    0) while it goes on publishing; the second writes the trail alone. Before, the first went on
    writing its rounds into the trail the second wrote (the lock file removed), or into the new
    database once its retry opened it (the directory made again): two daemons' rounds in one
    trail."""
    state = tmp_path / "state"
    state.mkdir()
    db = state / "audit.sqlite3"
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=50.0) as sim:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        first = Daemon(lease_config(sim, tmp_path / "a", "lease.json", audit=db), name="a")
        second = Daemon(lease_config(sim, tmp_path / "b", "lease.json", audit=db), name="b")
        written = "oracled_audit_rounds_total"
        async with first.running():
            await first.until("10 rounds stored", _above(first, written, 10))
            if lost == "lock file removed":
                db.with_name(db.name + ".lock").unlink()
            else:
                shutil.rmtree(state)
                state.mkdir()
            async with second.running():
                await second.until("10 rounds stored", _above(second, written, 10))
                stored = await first.counter(written)
                errors = await first.counter("oracled_audit_write_errors_total")
                rounds = await first.counter("oracled_rounds_total")
                await first.until(  # 6 s: past the 5 s retry of a database that failed
                    "60 rounds more", _above(first, "oracled_rounds_total", rounds + 60)
                )
                assert await first.counter(written) == stored
                assert await first.counter("oracled_audit_write_errors_total") > errors
                assert await first.counter("oracled_audit_up") == 0
                assert await second.counter("oracled_audit_up") == 1
    (event,) = first.events(LOST)
    assert event["lock"] == f"{db}.lock" and event["level"] == "error"
    assert not second.events(LOST)
    reader = AuditReader(db)
    try:
        times = [r.ts for r in reader.rounds(0, 2**62)]
    finally:
        reader.close()
    assert times == sorted(set(times))  # in the order written, each round time once
